"""`minigpt4` CLI as users run it: real subprocesses, real image files, piped stdin."""
from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from html.parser import HTMLParser
from pathlib import Path

import pytest
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]


def run(*args, stdin: str | None = None, timeout: float = 180) -> subprocess.CompletedProcess:
    env = dict(os.environ, HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1", PYTHONPATH=str(ROOT))
    return subprocess.run([sys.executable, "-m", "minigpt4", *args], input=stdin, capture_output=True,
                          text=True, timeout=timeout, cwd=ROOT, env=env)


@pytest.fixture(scope="module")
def images(tmp_path_factory) -> list[Path]:
    d = tmp_path_factory.mktemp("imgs")
    out = []
    for i, color in enumerate([(220, 40, 40), (40, 220, 40), (40, 40, 220)]):
        p = d / f"img{i}.png"
        Image.new("RGB", (80, 60), color).save(p)
        out.append(p)
    return out


def test_help_is_fast_and_lists_verbs():
    t = time.time()
    r = run("--help")
    assert r.returncode == 0 and time.time() - t < 10
    for verb in ("chat", "describe", "ask", "alt-text", "recipe", "prompt", "website", "serve", "convert", "info"):
        assert f"  {verb}" in r.stdout
    r = run("poem", "x.png")
    assert r.returncode == 2 and "error: unknown verb 'poem'" in r.stderr and "Traceback" not in r.stderr


def test_describe_batch_with_jsonl_and_a_bad_image(images, tmp_path):
    bad = tmp_path / "broken.png"
    bad.write_bytes(b"not an image")
    out = tmp_path / "out.jsonl"
    r = run("describe", str(images[0]), str(bad), str(images[1]), str(images[2]), "--jsonl", str(out),
            "--batch-size", "2", "--max-new-tokens", "4", "--seed", "0", "--device", "cpu", "--model", "tiny")
    assert r.returncode == 2, r.stderr  # one image failed -> non-zero, the others still answered
    assert "error: 'broken.png'" in r.stderr.replace(str(tmp_path) + "/", "") or "broken.png" in r.stderr
    assert "Traceback" not in r.stderr
    recs = [json.loads(line) for line in out.read_text().splitlines()]
    assert sorted(Path(x["image"]).name for x in recs) == ["broken.png", "img0.png", "img1.png", "img2.png"]
    ok = [x for x in recs if "error" not in x]
    assert len(ok) == 3 and all(x["task"] == "describe" and x["completion_tokens"] <= 4 for x in ok)
    assert all(x["finish_reason"] in ("stop", "length") for x in ok)
    assert "not an image" in next(x for x in recs if "error" in x)["error"]
    for x in ok:
        assert f"== {x['image']}" in r.stdout


def test_website_writes_html_files(images, tmp_path, capsys):
    # In-process (same code path as the console script) to spare a second model load.
    from minigpt4.cli import main
    rc = main(["website", str(images[0]), str(images[1]), "--out-dir", str(tmp_path / "site"),
               "--max-new-tokens", "6", "--device", "cpu", "--quiet", "--model", "tiny"])
    assert rc == 0
    for img in images[:2]:
        page = tmp_path / "site" / f"{img.stem}.html"
        tags = []
        parser = HTMLParser()
        parser.handle_starttag = lambda tag, attrs: tags.append(tag)
        parser.feed(page.read_text())
        assert {"html", "head", "body"} <= set(tags)


def test_interactive_chat_through_stdin(images):
    script = "\n".join(["What is this?", f"/image {images[1]}", "And this one?", "/image /no/such.png",
                        "/bogus", "/reset", "Hello again", "/quit", "never sent"]) + "\n"
    r = run("chat", "--image", str(images[0]), "--max-new-tokens", "3", "--greedy", "--device", "cpu", "--model", "tiny",
            stdin=script)
    assert r.returncode == 0, r.stderr
    assert r.stdout.count("assistant: ") == 3  # three questions before /quit; nothing after it
    assert f"[image {images[1]} added to the next message]" in r.stdout
    assert "[conversation reset]" in r.stdout
    assert "error: image '/no/such.png' does not exist" in r.stderr
    assert "error: unknown command '/bogus'" in r.stderr


def test_bad_flags_are_one_line_errors(images, capsys):
    from minigpt4.cli import main
    assert main(["describe", str(images[0]), "--quantize", "8bit", "--device", "cpu"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and err.count("\n") == 1
    assert "needs a CUDA GPU" in err or "pip install bitsandbytes" in err
    assert main(["ask", str(images[0]), "--question", " ", "--device", "cpu"]) == 2
    assert "needs a question" in capsys.readouterr().err
    assert main(["describe", str(images[0]), "--batch-size", "0"]) == 2
    assert "--batch-size must be >= 1" in capsys.readouterr().err
    assert main(["describe", str(images[0]), "--abstain", "0.7"]) == 2  # the tiny model has no word readout
    assert "--abstain acts on a word readout's names; this model has none" in capsys.readouterr().err
    assert main(["describe", str(images[0]), "--ground-sure", "0.9"]) == 2
    assert "--ground-sure acts on a word readout's names; this model has none" in capsys.readouterr().err
    assert main(["describe", str(images[0]), "--always", "color"]) == 2
    assert "--always acts on a word readout's attributes; this model has none" in capsys.readouterr().err

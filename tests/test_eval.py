"""minigpt4 eval: scorers against ground truth, the broken-output detector, the bare-LLM path,
and whole runs (report, comparison table) with the tiny random model."""
from __future__ import annotations

import json
import random

import pytest
import torch

from minigpt4.chat.engine import ChatEngine
from minigpt4.cli import main
from minigpt4.eval import EvalConfig, broken_reasons, qa_scores, run_eval, write_report
from minigpt4.eval.broken import BrokenConfig
from minigpt4.eval.runner import build_items
from minigpt4.eval.scoring import answer_correct
from minigpt4.model.minigpt4 import IMAGE_TOKEN_ID
from minigpt4.world import (KINDS, chair_i, generate, ingredient_recall, object_recall, prompt_similarity,
                            structure_match)

FAST = dict(n=2, qa_per_image=2, max_new_tokens=6, speed_runs=1, speed_tokens=8, progress=False, batch_size=4)


# --- scorers --------------------------------------------------------------------------------------
def test_scorers_give_full_marks_for_ground_truth_and_low_marks_for_wrong_answers():
    samples = {k: [generate(k, s, "test", 96) for s in range(6)] for k in KINDS}
    for k, ss in samples.items():
        for s in ss:
            assert qa_scores([q["answer"] for q in s.qa], s.qa)["all"] == 1.0, s.image_id
    scenes, dishes, sketches = samples["scene"], samples["dish"], samples["sketch"]
    for s in scenes:
        assert chair_i(s.description, s.truth) == 0.0 and object_recall(s.description, s.truth) == 1.0
    for s in dishes:
        assert ingredient_recall(s.recipe, s.truth) == 1.0
    for s in sketches:
        assert structure_match(s.html, s.html) == 1.0
    for s in samples["prompt"]:
        assert prompt_similarity(s.prompt, s.prompt) > 0.99

    # wrong answers: another image's answers to these questions, descriptions of other scenes
    wrong = {"yes": "no", "no": "yes"}
    qa = [q for s in scenes for q in s.qa]
    flipped = [wrong.get(q["answer"], "purple" if q["type"] == "color" else "nine" if q["type"] == "count"
                         else "bottom right" if q["answer"] != "bottom right" else "top left") for q in qa]
    assert qa_scores(flipped, qa)["all"] < 0.2
    other = [chair_i(scenes[(i + 1) % 6].description, s.truth) for i, s in enumerate(scenes)]
    assert sum(other) / len(other) > 0.5
    assert sum(ingredient_recall("Boil water. Add salt.", d.truth) for d in dishes) / len(dishes) < 0.2
    # every test dish holds a held-out ingredient: a recipe naming every seen one gets them all, and no more
    from minigpt4.world.metrics import ingredient_hits
    for d in dishes:
        seen = [i["name"] for i in d.truth["ingredients"] if not i["heldout"]]
        hits = ingredient_hits("Ingredients: " + ", ".join(seen), d.truth)
        assert any(h for _, h, _ in hits) and all(ok != held for _, held, ok in hits), hits
        assert ingredient_recall("Ingredients: " + ", ".join(seen), d.truth) == len(seen) / len(hits) < 1

    # Over a set of descriptions CHAIR_i pools the mentions: a text that names nothing adds nothing (a per-text mean
    # would count it as a perfect 0 and flatter a model that says "some things" everywhere)
    from minigpt4.chat.engine import Result
    from minigpt4.eval.runner import Item, score_items
    from minigpt4.world.metrics import truth_names
    from minigpt4.world.vocab import objects
    s = scenes[0]
    mine = sorted(truth_names(s.truth))[0]
    absent = next(o.name for o in objects() if o.name not in truth_names(s.truth) and " " not in o.name)
    texts = [f"A {mine}, a {absent} and a {absent}.", f"A {absent}.", "Some things on a background."]
    items = [Item("describe", s, "", None, result=Result(t, "stop", 0, 0)) for t in texts]
    m = score_items(items)
    assert m["chair_i"] == pytest.approx(3 / 4) and m["no_objects_named"] == pytest.approx(1 / 3)
    assert [it.scores["chair_i"] for it in items] == pytest.approx([2 / 3, 1.0, 0.0])
    assert sum(structure_match("<html><body><p>hi</p></body></html>", s.html) for s in sketches) / 6 < 0.6


def test_attribute_accuracy_splits_by_whether_training_showed_the_asked_kind():
    """attribute:seen / attribute:heldout: the test split's questions about held-out kinds are scored apart, so a
    model right only about the kinds it was shown scores 100% seen, 0% held-out (and the split covers every one)."""
    from minigpt4.world.vocab import heldout_names
    held = heldout_names()
    qa = [q for seed in range(12) for q in generate("scene", seed, "test", 96).qa if q["type"] == "presence"]
    about_held = [q["target"] in held for q in qa]
    assert any(about_held) and not all(about_held)
    preds = [("maybe" if h else q["answer"]) for q, h in zip(qa, about_held)]
    scores = qa_scores(preds, qa, held)
    assert scores["attribute:seen"] == 1.0 and scores["attribute:heldout"] == 0.0
    assert scores["attribute"] == pytest.approx(1 - sum(about_held) / len(qa))
    assert "attribute:seen" not in qa_scores(preds, qa)  # no held-out set given: no split


@pytest.mark.parametrize("pred, answer, qtype, ok", [
    ("There are 3 circles.", "three", "count", True),
    ("Three.", "three", "count", True),
    ("There is a single sun.", "one", "count", True),
    ("I count 4 of them.", "three", "count", False),
    ("None.", "zero", "count", True),
    ("Yes, I can see one.", "yes", "presence", True),
    ("Yeah", "yes", "presence", True),
    ("There is a coconut in the picture.", "yes", "presence", True),
    ("No, there isn't.", "no", "presence", True),
    ("I can't see a ladder.", "no", "presence", True),
    ("There is no ladder.", "no", "presence", True),
    ("Yes.", "no", "presence", False),
    ("In the upper-left corner.", "top left", "position", True),
    ("upper left", "top left", "position", True),
    ("It is on the right side.", "middle right", "position", True),
    ("bottom right", "top left", "position", False),
    ("They are grey.", "gray", "color", True),
    ("The circles are blue.", "red", "color", False),
    ("Pizzas", "pizza", "dish", True),
])
def test_qa_answers_are_normalised_fairly(pred, answer, qtype, ok):
    assert answer_correct(pred, answer, qtype) is ok


# --- broken-output detector -------------------------------------------------------------------------
BROKEN = {
    "repetition": [
        "The image shows a cat sitting on a mat. The image shows a cat sitting on a mat. The image shows a cat.",
        "There is a red red red red apple on the table.",
        "The picture shows a dog and a ball and a dog and a ball and a dog and a ball and a dog and a ball",
        "Century Century Century Century Century Century Century Century",
    ],
    "gibberish": [
        "Thexq vorbl znikt prrmf wubbazoid glorpt snarfle the qwijibo.",
        "Comm unfblk itzzer ogrvth plmqa xxtrn.",
    ],
    "non_ascii": [
        "The picture shows a cat \ufffd\ufffd on a mat.",
        "这是一张图片。图片里有一只猫。",
    ],
    "cut_off": ["The image shows a bowl of soup with carrots and"],
    "empty": ["", "   ", " ... "],
}
CLEAN = [
    "The image shows three coconuts and a sun on a green background.",
    "A small red car is parked in front of a brick wall. It looks old but well kept!",
    "Easy pasta\n\nIngredients:\n- 200 g pasta\n- 2 tomatoes, diced\n\nSteps:\n1. Boil the pasta.\n2. Add the sauce.",
    "Yes.",
    "Three.",
    "It's a picture of Mount Fuji in Japan, seen from the lake at sunset.",
]


@pytest.mark.parametrize("reason, text", [(r, t) for r, ts in BROKEN.items() for t in ts])
def test_broken_outputs_are_caught_and_named(reason, text):
    assert reason in broken_reasons(text, "stop")


@pytest.mark.parametrize("text", CLEAN)
def test_clean_texts_are_not_broken(text):
    assert broken_reasons(text, "stop") == []


def test_hitting_the_token_limit_mid_sentence_is_a_cut_off():
    assert broken_reasons("A cat sits on the mat next to", "length") == ["cut_off"]
    assert broken_reasons("A cat sits on the mat.", "length") == []
    # prompts are comma-separated phrases: no period needed unless the limit was hit
    assert broken_reasons("a cat on a mat, watercolor", "stop", BrokenConfig(prose=False)) == []
    assert broken_reasons("a cat on a mat, water", "length", BrokenConfig(prose=False)) == ["cut_off"]


def test_no_false_positives_on_200_ground_truth_descriptions():
    rng = random.Random(0)
    flagged = []
    for i in range(200):
        kind, split = KINDS[i % 4], ("train", "val", "test", "heldout")[rng.randrange(4)]
        s = generate(kind, 1000 + i, split, 64)
        for text, cfg in [(s.description, BrokenConfig()), (s.recipe, BrokenConfig()),
                          (s.prompt, BrokenConfig(prose=False))]:
            if text and broken_reasons(text, "stop", cfg):
                flagged.append((s.image_id, broken_reasons(text, "stop", cfg), text[:120]))
    assert flagged == []


# --- the bare-LLM path ------------------------------------------------------------------------------
def test_no_image_sends_no_image(tiny_model, monkeypatch):
    engine = ChatEngine(tiny_model)
    with_img = build_items(tiny_model, EvalConfig(n=1, tasks=("qa", "describe")), "qa")
    bare = build_items(tiny_model, EvalConfig(n=1, tasks=("qa", "describe"), no_image=True), "qa")
    assert [i.prompt for i in with_img] == [i.prompt for i in bare]
    ids_img = engine.build_prompt(with_img[0].request.messages).ids
    ids_bare = engine.build_prompt(bare[0].request.messages).ids
    assert ids_img.count(IMAGE_TOKEN_ID) == tiny_model.cfg.num_image_tokens
    assert IMAGE_TOKEN_ID not in ids_bare

    def no_encoding(*a, **k):
        raise AssertionError("the bare-LLM run encoded an image")
    monkeypatch.setattr(tiny_model, "encode_images", no_encoding)
    report = run_eval(tiny_model, EvalConfig(**{**FAST, "tasks": ("qa", "describe", "speed")}, no_image=True))
    assert report["no_image"] and report["items"]
    assert all(r["prompt_tokens"] < len(ids_img) for r in report["items"] if r["task"] == "qa")


def test_identical_greedy_requests_are_generated_once(tiny_model, monkeypatch):
    # without an image every describe request is the same prompt: one generation serves all
    sent = []
    real = ChatEngine.generate

    def counting(self, requests, on_text=None):
        sent.extend(requests)
        return real(self, requests, on_text)
    monkeypatch.setattr(ChatEngine, "generate", counting)
    cfg = dict(FAST, n=3, tasks=("describe",))
    bare = run_eval(tiny_model, EvalConfig(**cfg, no_image=True))
    assert len(sent) == 1 and len(bare["items"]) == 3
    sent.clear()
    run_eval(tiny_model, EvalConfig(**cfg))  # three different images: three generations
    assert len(sent) == 3


# --- whole runs -------------------------------------------------------------------------------------
def test_eval_end_to_end_writes_a_report_with_every_metric(tiny_model, tmp_path):
    report = run_eval(tiny_model, EvalConfig(**FAST), name="tiny")
    m = report["metrics"]
    for path in [("qa", "all"), ("qa", "attribute"), ("describe", "chair_i"), ("describe", "object_recall"),
                 ("broken", "rate"), ("sketch", "structure_match"), ("recipe", "ingredient_recall"),
                 ("prompt", "prompt_similarity"), ("speed", "seconds"), ("speed", "tokens_per_s"),
                 ("recipe", "ingredient_recall:seen"), ("recipe", "ingredient_recall:best_without_heldout")]:
        value = m[path[0]][path[1]]
        assert isinstance(value, float) and value >= 0, path
    assert m["speed"]["tokens"] == 8  # exactly the asked length: EOS does not end the timed answer
    assert set(m["broken"]["by_reason"]) == {"empty", "repetition", "gibberish", "non_ascii", "cut_off"}
    assert m["broken"]["checked"] == 6  # describe, recipe, prompt x 2 images
    assert 0 < m["recipe"]["ingredient_recall:best_without_heldout"] < 1  # test dishes each hold a held-out one
    md = write_report(report, tmp_path)
    saved = json.loads((tmp_path / "report.json").read_text())
    assert saved["metrics"] == json.loads(json.dumps(m)) and "_items" not in saved
    text = md.read_text()
    assert "attribute Q&A accuracy" in text and "CHAIR_i" in text and "## Examples" in text
    thumbs = list((tmp_path / "thumbs").glob("*.png"))
    assert thumbs and all(f"thumbs/{t.name}" in text for t in thumbs)
    # deterministic: the same config gives the same answers
    again = run_eval(tiny_model, EvalConfig(**{**FAST, "tasks": ("qa",), "n": 1}), name="tiny")
    first = [r for r in report["items"] if r["task"] == "qa"][: len(again["items"])]
    assert [r["output"] for r in again["items"]] == [r["output"] for r in first]


def test_cli_compare_writes_side_by_side_table(tmp_path, capsys):
    out = tmp_path / "cmp"
    rc = main(["eval", "--compare", "tiny", "tiny:no-image", "--n", "1", "--tasks", "qa,describe",
               "--qa-per-image", "2", "--max-new-tokens", "4", "--out", str(out), "--quiet"])
    assert rc == 0
    table = (out / "compare.md").read_text()
    header = next(line for line in table.splitlines() if line.startswith("| metric"))
    assert "tiny" in header and "tiny (no image)" in header
    assert "CHAIR_i" in table and "| Q&A: " in table
    both = json.loads((out / "compare.json").read_text())
    assert [r["no_image"] for r in both] == [False, True]
    assert (out / "1-tiny" / "report.md").exists() and (out / "2-tiny-no-image" / "report.md").exists()


def test_compare_specs_name_the_bare_llm_and_the_int8_llm():
    import argparse

    from minigpt4.eval.cli import _load, parse_spec
    from minigpt4.model.quantize import Int8Linear
    assert parse_spec("runs/s2") == ("runs/s2", False, False)
    assert parse_spec("runs/s2:no-image") == ("runs/s2", True, False)
    assert parse_spec("default@stage2:int8") == ("default@stage2", False, True)
    assert parse_spec("x:int8:no-image") == parse_spec("x:no-image:int8") == ("x", True, True)
    args = argparse.Namespace(model="tiny", llm=None, device="cpu", dtype=None, quantize=None)
    assert any(isinstance(m, Int8Linear) for m in _load(args, "tiny", int8=True).modules())
    assert not any(isinstance(m, Int8Linear) for m in _load(args, "tiny").modules())


@pytest.mark.parametrize("argv, message", [
    (["--tasks", "qa,translate"], "unknown eval task"),
    (["--model", "no/such/folder"], "no/such/folder"),
    (["--model", "nosuchpreset"], "unknown model"),
    (["--n", "0"], "must be >= 1"),
])
def test_cli_errors_are_clear(argv, message, tmp_path, capsys):
    rc = main(["eval", *argv, "--out", str(tmp_path), "--quiet"])
    assert rc == 2
    assert message in capsys.readouterr().err


def test_image_signal_share_separates_constant_from_image_specific_tokens(tiny_model, capsys):
    from minigpt4.eval.image_signal import main as signal_main, measure, specific_share
    g = torch.Generator().manual_seed(0)
    const = torch.randn(1, 4, 8, generator=g).expand(16, 4, 8)
    noise = torch.randn(16, 4, 8, generator=g)
    assert specific_share(const) == pytest.approx(0.0, abs=1e-9)
    assert specific_share(noise - noise.mean(0)) == pytest.approx(1.0, abs=1e-9)
    assert specific_share(3 * const + noise) < 0.2 < specific_share(const + noise)  # the constant's weight counts
    images = [generate("scene", i, "val", 64).image for i in range(4)]
    r = measure(tiny_model, images)
    assert 0 < r["queries"] < 1 and 0 < r["tokens"] < 1 and r["token_norm"] > 0 and r["text_norm"] > 0
    assert signal_main(["tiny", "--n", "3"]) == 0
    assert "| tiny |" in capsys.readouterr().out


def test_image_signal_reliance_is_zero_when_the_tokens_ignore_the_image(tiny_model, capsys):
    import copy
    from minigpt4.eval.image_signal import answer_reliance, main as signal_main
    samples = [generate("scene", i, "val", 64) for i in range(3)]
    reads = answer_reliance(tiny_model, samples)
    n_questions = sum(len(s.qa) for s in samples)
    assert reads["all"]["n"] == n_questions and {q["type"] for s in samples for q in s.qa} <= set(reads)
    assert abs(reads["all"]["gap"]) > 1e-4  # random tokens differ per image, so the answers' loss does
    blind = copy.deepcopy(tiny_model)
    with torch.no_grad():
        blind.proj.weight.zero_()  # every image now gives the bias: nothing to read
    ignores = answer_reliance(blind, samples)
    assert all(abs(r["gap"]) < 1e-6 for r in ignores.values())
    assert ignores["all"]["matched"] == pytest.approx(ignores["all"]["shuffled"])
    assert signal_main(["tiny", "--n", "2", "--reliance"]) == 0
    out = capsys.readouterr().out
    assert "Answer loss" in out and out.count("| tiny |") == 2

"""Training end to end on tiny real datasets: recipe checking, the schedule, a full run and what
it leaves behind, bad images, feature cache == pixels, stage 2 + LoRA, exact resume after SIGKILL,
and torchrun with 2 processes == 1 process at the same global batch."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from minigpt4.train import ConfigError, Trainer, load_config, train
from minigpt4.train.cli import main as train_main
from minigpt4.train.loop import FAULT_ENV
from minigpt4.train.schedule import lr_at
from minigpt4.train.tinydata import make_tiny_datasets

ROOT = Path(__file__).resolve().parents[1]
RECIPES = ROOT / "recipes"


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    # The tiny model is far faster single-threaded on a shared 2-core machine; subprocesses match.
    old = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(old)


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    return make_tiny_datasets(tmp_path_factory.mktemp("data"), n=16, bad=3)


def recipe(ds, out, **kw) -> dict:
    d = {"model": "tiny", "stage": 1, "data": [{"type": "webdataset", "path": str(ds["shards"]), "weight": 3},
                                               {"type": "folder", "path": str(ds["folder"])}],
         "output_dir": str(out), "batch_size": 4, "max_steps": 4, "checkpoint_every": 2, "log_every": 1,
         "optim": {"lr": 1e-3, "min_lr": 1e-4, "warmup_steps": 1}, "progress": False, "tensorboard": False}
    d.update(kw)
    return d


def params(out: Path, step: int | None = None) -> dict[str, torch.Tensor]:
    d = out / "checkpoints" / (f"step_{step}" if step else (out / "checkpoints" / "latest").read_text())
    return load_file(str(d / "trainable.safetensors"))


def assert_same(a: dict, b: dict, atol=1e-6):
    assert a.keys() == b.keys()
    for k in a:
        torch.testing.assert_close(a[k], b[k], atol=atol, rtol=0, msg=k)


def env1() -> dict:
    return {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1", "PYTHONPATH": str(ROOT)}


def count_bad(cfg, n: int) -> int:
    """Independent count of the unreadable images among the first n samples of a recipe's stream."""
    from minigpt4.data.datasets import DataStream, build_source
    from minigpt4.data.image import ImageError, load_image
    stream = DataStream([build_source(d.type, d.name, Path(d.path), weight=d.weight, seed=cfg.seed)
                         for d in cfg.data], seed=cfg.seed)
    bad = 0
    for _ in range(n):
        _, rec = next(stream)
        try:
            load_image(rec.images[0]())
        except ImageError:
            bad += 1
    return bad


# --- recipes ---------------------------------------------------------------------------------
def test_config_errors_name_the_field_and_line(tmp_path, data, capsys):
    def load(text, *ov):
        p = tmp_path / "r.yaml"
        p.write_text(text)
        return load_config(p, list(ov))
    base = f"model: tiny\noutput_dir: out\nmax_steps: 3\ndata:\n  - {{type: folder, path: {data['folder']}}}\n"
    with pytest.raises(ConfigError, match=r"'batch_szie'.*r\.yaml:6.*unknown field.*batch_size"):
        load(base + "batch_szie: 4\n")
    with pytest.raises(ConfigError, match=r"'max_steps'.*r\.yaml:3.*expected int, got str 'ten'"):
        load(base.replace("max_steps: 3", "max_steps: ten"))
    with pytest.raises(ConfigError, match=r"'output_dir'.*missing required"):
        load(base.replace("output_dir: out\n", ""))
    with pytest.raises(ConfigError, match=r"'data\.0\.path'.*does not exist.*relative to the recipe"):
        load(base.replace(str(data["folder"]), "nowhere/x.jsonl"))
    with pytest.raises(ConfigError, match=r"'optim\.lr'.*expected float"):
        load(base + "optim: {lr: fast}\n")
    with pytest.raises(ConfigError, match=r"'amp'.*not one of"):
        load(base, "amp=fp8")
    with pytest.raises(ConfigError, match=r"'feature_cache'.*frozen vision"):
        load(base + "trainable: [proj, qformer]\nfeature_cache: on\n")
    with pytest.raises(ConfigError, match=r"'trainable'"):
        load(base + "trainable: [projection]\n")
    with pytest.raises(ConfigError, match=r"'word_dropout'.*probability in \[0, 1\), got 1.5"):
        load(base + "word_dropout: 1.5\n")
    with pytest.raises(ConfigError, match=r"'word_dropout': this model has no word readout"):
        Trainer(load(base + "word_dropout: 0.2\n", f"output_dir={tmp_path}/wd"))
    cfg = load(base, "optim.lr=2e-4", "data.0.weight=3", f"output_dir={tmp_path}/o")
    assert cfg.optim.lr == 2e-4 and cfg.data[0].weight == 3.0 and cfg.output_dir == f"{tmp_path}/o"
    assert cfg.data[0].name == "folder0"
    # The CLI fails before any work: exit code 2, message names the field, nothing written.
    (tmp_path / "bad.yaml").write_text(base.replace("out\n", f"{tmp_path}/never\n") + "seed: one\n")
    from minigpt4.cli import main as minigpt4_main
    assert minigpt4_main(["train", str(tmp_path / "bad.yaml")]) == 2
    assert "config field 'seed'" in capsys.readouterr().err and not (tmp_path / "never").exists()


def test_recipes_keep_the_original_numbers(tmp_path):
    for name in ("tiny_stage1", "tiny_stage2"):
        cfg = load_config(RECIPES / f"{name}.yaml")
        assert Path(cfg.data[0].path).exists()  # relative to the recipe file, from any cwd
    dummy = tmp_path / "w"
    dummy.write_text("x")
    with pytest.raises(ConfigError, match=r"weights\.(llm|eva)"):
        load_config(RECIPES / "minigpt4_stage1_vicuna7b.yaml")
    for llm in ("vicuna7b", "vicuna13b", "llama2_7b"):
        ov = [f"weights.{k}={dummy}" for k in ("llm", "eva", "blip2")]
        s1 = load_config(RECIPES / f"minigpt4_stage1_{llm}.yaml", ov)
        s2 = load_config(RECIPES / f"minigpt4_stage2_{llm}.yaml", ov + [f"data.0.path={tmp_path}"])
        assert (s1.stage, s1.batch_size, s1.total_steps, s1.optim.warmup_steps) == (1, 256, 20000, 5000)
        assert (s1.optim.lr, s1.optim.min_lr, s1.optim.warmup_lr, s1.optim.weight_decay) == (1e-4, 8e-5, 1e-6, 0.05)
        assert s1.max_txt_len == 32 and s1.amp is not None and s1.trainable == ["proj"]
        assert (s2.stage, s2.batch_size, s2.total_steps, s2.optim.warmup_steps) == (2, 12, 400, 200)
        assert (s2.optim.lr, s2.optim.min_lr, s2.max_txt_len) == (3e-5, 1e-5, 160)
        assert s2.data[0].type == "cc_sbu_align"


def test_lr_schedule_linear_warmup_from_warmup_lr_then_cosine_to_min_lr():
    from minigpt4.train.config import OptimConfig
    o = OptimConfig(lr=1e-4, min_lr=8e-5, warmup_lr=1e-6, warmup_steps=5000)
    assert lr_at(0, o, 20000) == pytest.approx(1e-6)
    assert lr_at(2500, o, 20000) == pytest.approx((1e-6 + 1e-4) / 2)
    assert lr_at(5000, o, 20000) == pytest.approx(1e-4)
    assert lr_at(12500, o, 20000) == pytest.approx(9e-5, rel=1e-3)
    assert lr_at(19999, o, 20000) == pytest.approx(8e-5)
    lrs = [lr_at(s, o, 20000) for s in range(5000, 20000, 500)]
    assert all(a >= b for a, b in zip(lrs, lrs[1:]))


# --- runs ------------------------------------------------------------------------------------
def test_tiny_stage1_run_leaves_checkpoints_logs_plot_and_summary(data, tmp_path, capsys):
    out = tmp_path / "run"
    rc = train_main([str(RECIPES / "tiny_stage1.yaml"), f"output_dir={out}", "max_steps=6", "checkpoint_every=3",
                     "keep_checkpoints=1", f"data.0.path={data['shards']}", f"data.1.path={data['folder']}",
                     "optim.lr=5e-3", "optim.grad_clip=0.5"])
    assert rc == 0
    bad = count_bad(load_config(RECIPES / "tiny_stage1.yaml", [f"data.0.path={data['shards']}",
                                                                f"data.1.path={data['folder']}"]), 48)
    printed = capsys.readouterr().out
    assert "samples/s" in printed and "final loss" in printed and f"skipped {bad} bad sample" in printed
    assert sorted(p.name for p in (out / "checkpoints").iterdir()) == ["latest", "step_6"]  # keep 1
    ckpt = params(out)
    assert set(ckpt) == {"proj.weight", "proj.bias"}  # trainable only, not the LLM
    log = [json.loads(l) for l in (out / "log.jsonl").read_text().splitlines()]
    assert [r["step"] for r in log] == list(range(1, 7))
    assert log[0]["lr"] == pytest.approx(1e-6) and log[3]["lr"] == pytest.approx(5e-3)  # warmup_steps 3
    assert log[-1]["loss"] < log[0]["loss"]
    assert (out / "loss.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert list((out / "tensorboard").glob("events.out.tfevents.*"))
    summary = json.loads((out / "summary.json").read_text())
    assert summary["steps"] == 6 and summary["samples"] + summary["skipped"] == 48
    assert bad > 0 and summary["skipped"] == bad and len(summary["skipped_examples"]) == bad
    assert summary["feature_cache"]["bad"] > 0 and summary["feature_cache"]["new"] > 16


def test_feature_cache_trains_like_the_encoders_and_bad_images_are_skipped(data, tmp_path):
    runs = {}
    for mode in ("on", "off"):
        s = train(load_config(recipe(data, tmp_path / mode, feature_cache=mode, max_steps=3,
                                     data=[{"type": "folder", "path": str(data["folder"])}], batch_size=8)))
        assert s["skipped"] == 6  # 3 bad of 16, seen twice in 24 samples; never a crash
        assert {x["key"] for x in s["skipped_examples"]} == {"folder0:captions.jsonl:1", "folder0:captions.jsonl:2",
                                                              "folder0:captions.jsonl:3"}
        runs[mode] = params(tmp_path / mode)
    assert_same(runs["on"], runs["off"], atol=1e-5)


@pytest.mark.parametrize("side", ["like the main one", "of its own build"])
def test_a_readout_on_its_own_vision_side_trains_from_cached_features_like_from_pixels(data, tmp_path, side,
                                                                                    word_side_cfg):
    """A model with a word vision side (both halves cached in one feature row per image, the narrower zero-padded):
    the projection trains the same from the cache as from pixels, the frozen readout rides along unchanged."""
    from minigpt4.config import get_config
    from minigpt4.model.minigpt4 import build_model
    from minigpt4.weights.pretrained import save_pretrained
    cfg = get_config("tiny")
    cfg.proj_words, cfg.word_layout, cfg.word_vision = ["cat", "dog", "red"], "pair", True
    if side == "of its own build":
        cfg = word_side_cfg
        cfg.proj_words = ["cat", "dog", "red"]
    base = build_model(cfg)
    save_pretrained(base, tmp_path / "dual")
    runs = {}
    for mode in ("on", "off"):
        train(load_config(recipe(data, tmp_path / mode, model=str(tmp_path / "dual"), feature_cache=mode, max_steps=2,
                                 data=[{"type": "folder", "path": str(data["folder"])}], batch_size=8)))
        runs[mode] = params(tmp_path / mode)
    assert_same(runs["on"], runs["off"], atol=1e-5)
    assert runs["on"]["proj.weight"].ne(base.proj.weight).any()
    assert torch.equal(runs["on"]["word_proj.classify.weight"], base.word_proj.classify.weight)
    # word dropout (how unseen kinds look to the readout) changes what the projection learns, not the readout
    train(load_config(recipe(data, tmp_path / "drop", model=str(tmp_path / "dual"), max_steps=2, word_dropout=0.5,
                             data=[{"type": "folder", "path": str(data["folder"])}], batch_size=8)))
    dropped = params(tmp_path / "drop")
    assert not torch.allclose(dropped["proj.weight"], runs["on"]["proj.weight"], atol=1e-6)
    assert torch.equal(dropped["word_proj.classify.weight"], base.word_proj.classify.weight)
    # word_dropout_to names a readout word; one it does not have, or without word_dropout, is refused by name
    trainer = Trainer(load_config(recipe(data, tmp_path / "to", model=str(tmp_path / "dual"), max_steps=1,
                                         word_dropout=0.5, word_dropout_to="red")))
    assert trainer.model.word_dropout_to == 3
    with pytest.raises(ConfigError, match="'thing' is not one of the readout's 3 words"):
        Trainer(load_config(recipe(data, tmp_path / "to2", model=str(tmp_path / "dual"), max_steps=1,
                                   word_dropout=0.5, word_dropout_to="thing")))
    with pytest.raises(ConfigError, match="set word_dropout too"):
        Trainer(load_config(recipe(data, tmp_path / "to3", model=str(tmp_path / "dual"), max_steps=1,
                                   word_dropout_to="red")))


def test_unnamed_regions_in_the_data_reach_the_readout_as_its_unknown_word(data, tmp_path):
    """Records with "unnamed" regions (python -m minigpt4.world unname) read word_dropout_to there and nothing dropped
    elsewhere; records without the field drop at random (-1 rows). Without word_dropout_to such data is refused."""
    from minigpt4.config import get_config
    from minigpt4.model.minigpt4 import build_model
    from minigpt4.weights.pretrained import save_pretrained
    cfg = get_config("tiny")
    cfg.proj_words, cfg.word_layout, cfg.word_vision = ["cat", "dog", "thing"], "pair", True
    save_pretrained(build_model(cfg), tmp_path / "dual")
    convs = json.loads(Path(data["llava"]).read_text())
    unnamed = data["llava"].parent / "unnamed.jsonl"  # beside the images
    unnamed.write_text("".join(json.dumps(dict(c, unnamed=[0, 2]) if i % 2 == 0 else c) + "\n"
                               for i, c in enumerate(convs)))
    trainer = Trainer(load_config(recipe(data, tmp_path / "u", model=str(tmp_path / "dual"), max_steps=1,
                                         stage=2, batch_size=4, word_dropout=0.5, word_dropout_to="thing",
                                         data=[{"type": "llava", "path": str(unnamed)}])))
    calls = []
    trainer.model.word_proj.register_forward_hook(lambda mod, args, out: calls.append((args[3], out)))
    trainer.train_step()
    rows = torch.cat([u for u, _ in calls])
    words = torch.cat([o[:, :, -1] for _, o in calls])  # each query's name word
    q = cfg.num_word_queries
    fixed = torch.zeros(q, dtype=torch.long)
    fixed[[0, 2]] = 1
    # conv0 (two images) and conv2 unnamed; conv1 and conv3 (two images) say nothing
    assert sorted(r.tolist() for r in rows) == sorted([fixed.tolist()] * 3 + [[-1] * q] * 3)
    thing = trainer.model.word_proj.table[3, 0]
    for r, w in zip(rows, words):
        if r[0] == 1:
            assert torch.equal(w[0], thing) and torch.equal(w[2], thing) and not torch.equal(w[1], thing)
    plain = Trainer(load_config(recipe(data, tmp_path / "u2", model=str(tmp_path / "dual"), max_steps=1, stage=2,
                                       batch_size=4, data=[{"type": "llava", "path": str(unnamed)}])))
    with pytest.raises(ConfigError, match="word_dropout_to is not set"):
        plain.train_step()


def test_stage2_with_lora_starts_from_stage1_and_saves_only_adapters(data, tmp_path):
    s1 = tmp_path / "s1"
    train(load_config(recipe(data, s1, max_steps=2)))
    cfg = load_config(str(RECIPES / "tiny_stage2.yaml"),
                      [f"output_dir={tmp_path / 's2'}", f"init={s1}", "max_steps=2", "trainable=[proj, lora]",
                       "lora={r: 4, alpha: 8}", "amp=bf16", f"data.0.path={data['cc_sbu_align']}", f"data.1.path={data['llava']}",
                       "progress=false", "tensorboard=false"])
    t = Trainer(cfg, resume="no")
    torch.testing.assert_close(dict(t.model.named_parameters())["proj.weight"], params(s1)["proj.weight"])
    frozen = {n: p.detach().clone() for n, p in t.model.llm.named_parameters() if "lora_" not in n}
    t.run()
    saved = params(tmp_path / "s2")
    assert "proj.weight" in saved and any("lora_A" in k for k in saved) and any("lora_B" in k for k in saved)
    assert all(k.startswith("proj.") or "lora_" in k for k in saved)
    assert saved["proj.weight"].ne(params(s1)["proj.weight"]).any()
    for n, p in t.model.llm.named_parameters():
        if "lora_" not in n:
            assert torch.equal(p, frozen[n]), n

    # A list of inits loads each in turn: the stage-1 projection, then the stage-2 run's adapters
    # (later files win where both hold a weight); a missing one is named.
    cfg = load_config(str(RECIPES / "tiny_stage2.yaml"),
                      [f"output_dir={tmp_path / 's2b'}", f"init=[{s1}, {tmp_path / 's2'}]", "trainable=[proj, lora]",
                       "lora={r: 4, alpha: 8}", f"data.0.path={data['cc_sbu_align']}", f"data.1.path={data['llava']}"])
    warm = dict(Trainer(cfg, resume="no").model.named_parameters())
    for k, v in saved.items():
        torch.testing.assert_close(warm[k], v.to(warm[k].dtype), msg=k)
    with pytest.raises(ConfigError, match="nope.*does not exist"):
        load_config(str(RECIPES / "tiny_stage2.yaml"), [f"init=[{s1}, {tmp_path / 'nope'}]"])


def test_sample_averaged_loss_gives_the_same_update_in_any_micro_batch_split(data, tmp_path):
    """loss_average=sample weights micro-batches by their samples, so 1 x 4 == 4 x 1 (bad images
    skipped), and it trains differently from the token average on answers of different lengths."""
    def run(name, **kw):
        cfg = load_config(str(RECIPES / "tiny_stage2.yaml"),
                          [f"output_dir={tmp_path / name}", "max_steps=2", "batch_size=4", "checkpoint_every=2",
                           f"data.0.path={data['cc_sbu_align']}", f"data.1.path={data['llava']}",
                           "progress=false", "tensorboard=false"] + [f"{k}={v}" for k, v in kw.items()])
        summary = train(cfg)
        return params(tmp_path / name), summary
    whole, s1 = run("whole", loss_average="sample")
    split, s4 = run("split", loss_average="sample", micro_batch_size=1)
    assert_same(whole, split)
    assert s1["final_loss"] == pytest.approx(s4["final_loss"], abs=1e-5)
    by_token, _ = run("token")
    assert any(not torch.allclose(whole[k], by_token[k]) for k in whole)


def test_micro_batches_are_grouped_by_length_without_changing_the_update(data, tmp_path):
    """A step's examples are sorted by length before they are split into micro-batches (less
    padding); the token-averaged update is the same as with one micro-batch per sample."""
    def cfg(name, **kw):
        return load_config(str(RECIPES / "tiny_stage2.yaml"),
                           [f"output_dir={tmp_path / name}", "max_steps=2", "batch_size=4", "checkpoint_every=2",
                            f"data.0.path={data['cc_sbu_align']}", f"data.1.path={data['llava']}",
                            "progress=false", "tensorboard=false"] + [f"{k}={v}" for k, v in kw.items()])
    t = Trainer(cfg("look", micro_batch_size=2))
    micro = [m for m in t._step_micro_batches() if m is not None]
    assert len(micro) == 2
    short, long = (m.batch.attention_mask.sum(1).tolist() for m in micro)
    assert max(short) <= min(long)
    assert [len(m.batch.keys) for m in micro] == [2, 2]
    train(cfg("grouped", micro_batch_size=2))
    train(cfg("single", micro_batch_size=1))
    assert_same(params(tmp_path / "grouped"), params(tmp_path / "single"), atol=1e-5)


def test_sigkill_mid_epoch_then_resume_gives_the_uninterrupted_result(data, tmp_path):
    kw = dict(max_steps=6, checkpoint_every=2, batch_size=4)
    train(load_config(recipe(data, tmp_path / "ref", **kw)))
    out = tmp_path / "killed"
    (tmp_path / "r.yaml").write_text(json.dumps(recipe(data, out, **kw)))
    proc = subprocess.run([sys.executable, "-m", "minigpt4.train.cli", str(tmp_path / "r.yaml")], cwd=ROOT,
                          env={**env1(), FAULT_ENV: "5"}, capture_output=True, text=True, timeout=240)
    assert proc.returncode == -signal.SIGKILL, proc.stderr[-2000:]
    done = sorted(p.name for p in (out / "checkpoints").iterdir())
    assert done == ["latest", "step_2", "step_4"]  # killed in step 5: mid-epoch (20 of 32 samples)
    s = train(load_config(tmp_path / "r.yaml"))  # auto-resumes from step_4
    assert s["resumed_from"].endswith("step_4") and s["steps_this_run"] == 2
    assert_same(params(out), params(tmp_path / "ref"))
    log = [json.loads(l)["step"] for l in (out / "log.jsonl").read_text().splitlines()]
    assert log == [1, 2, 3, 4, 5, 6]  # the lost step 5 line is not duplicated


def test_time_boxed_chunks_stop_with_a_checkpoint_and_add_up_to_the_whole_run(data, tmp_path, capsys):
    """`minigpt4 train --minutes M`: a chunk that runs out of time saves where it is (off the
    checkpoint grid) and stops; chunk after chunk gives the uninterrupted run's weights."""
    kw = dict(max_steps=5, checkpoint_every=4, batch_size=4)
    train(load_config(recipe(data, tmp_path / "ref", **kw)))
    (tmp_path / "r.yaml").write_text(json.dumps(recipe(data, tmp_path / "chunks", **kw)))
    runs = []
    while not runs or runs[-1]["stopped"] == "time":  # a budget that is over after each chunk's first step
        runs.append(train(load_config(tmp_path / "r.yaml"), minutes=1e-9))
    assert [r["steps"] for r in runs] == [1, 2, 3, 4, 5] and runs[-1]["stopped"] == "done"
    assert runs[0]["checkpoint"].endswith("step_1") and runs[2]["resumed_from"].endswith("step_2")
    assert_same(params(tmp_path / "chunks"), params(tmp_path / "ref"))
    assert train_main([str(tmp_path / "r.yaml"), "--minutes", "0"]) == 2
    assert "--minutes must be > 0" in capsys.readouterr().err


def test_torchrun_two_processes_equal_one_process_ddp_and_fsdp(data, tmp_path):
    # Global batch 4 = 2 processes x 2. Bad images make the ranks' token counts differ (and leave a
    # rank with nothing to do): the loss weighting must still give exactly the one-process update.
    kw = dict(max_steps=3, checkpoint_every=3, batch_size=4)
    train(load_config(recipe(data, tmp_path / "one", **kw)))
    one = json.loads((tmp_path / "one" / "summary.json").read_text())
    for strategy in ("ddp", "fsdp"):  # fsdp: FSDP2 shards the frozen LLM layers (gloo on CPU)
        out = tmp_path / strategy
        (tmp_path / "r.yaml").write_text(json.dumps(recipe(data, out, micro_batch_size=2, distributed=strategy, **kw)))
        proc = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2",
                               "-m", "minigpt4.train.cli", str(tmp_path / "r.yaml")],
                              cwd=ROOT, env=env1(), capture_output=True, text=True, timeout=300)
        assert proc.returncode == 0, proc.stderr[-3000:]
        two = json.loads((out / "summary.json").read_text())
        assert two["world_size"] == 2 and two["samples"] == one["samples"] and two["skipped"] == one["skipped"]
        assert two["final_loss"] == pytest.approx(one["final_loss"], abs=1e-5)
        assert_same(params(out), params(tmp_path / "one"))


def test_resume_onto_a_changed_vision_side_is_refused(data, tmp_path):
    """A new stage 0 under an old output_dir: the projection was fit to other features."""
    out = tmp_path / "run"
    train(load_config(recipe(data, out, max_steps=2)))
    assert ckpt_meta(out)["vision"]  # every checkpoint records the frozen vision side it trained on
    train(load_config(recipe(data, out, max_steps=3)))  # same vision side: resumes
    with pytest.raises(ConfigError, match="another frozen vision side.*new output_dir"):
        Trainer(load_config(recipe(data, out, max_steps=4, seed=7)))  # the tiny preset's vision is seeded


def ckpt_meta(out: Path) -> dict:
    from minigpt4.train.checkpoint import latest_checkpoint, read_meta
    return read_meta(latest_checkpoint(out))


def test_conditioned_projection_starts_at_text_norm_saves_a_plain_linear_and_resumes_exactly(data, tmp_path):
    kw = dict(max_steps=4, checkpoint_every=2, proj_conditioning=True)
    with pytest.raises(ConfigError, match="proj_conditioning.*feature_cache"):
        Trainer(load_config(recipe(data, tmp_path / "x", feature_cache="off", **kw)))
    t = Trainer(load_config(recipe(data, tmp_path / "ref", **kw)))
    t.build_cache()
    feats = torch.from_numpy(t.cache.rows(64))
    raw_w = t.model.proj.weight.detach().clone()
    t.condition_projection()
    text = t.model.llm.get_input_embeddings().weight.norm(dim=-1).mean()
    with torch.no_grad():
        assert t.model.project(feats).norm(dim=-1).mean() == pytest.approx(float(text), rel=0.1)
    assert not torch.equal(t.model.proj.weight, raw_w)  # a fresh start: re-initialised
    t.run()
    # The checkpoint is the plain Linear on raw features that the conditioned one computes.
    saved = params(tmp_path / "ref")
    with torch.no_grad():
        torch.testing.assert_close(torch.nn.functional.linear(feats, saved["proj.weight"], saved["proj.bias"]),
                                   t.model.project(feats), atol=1e-4, rtol=1e-4)
    # Stopped after 2 steps, then resumed to 4: the same weights as one run.
    stopped = Trainer(load_config(recipe(data, tmp_path / "two", **kw)))
    stopped.build_cache()
    stopped.condition_projection()
    stopped.train_step(), stopped.train_step(), stopped.save()
    s = train(load_config(recipe(data, tmp_path / "two", **kw)))
    assert s["resumed_from"].endswith("step_2")
    assert_same(params(tmp_path / "two"), saved)
    # A given projection (init) keeps its outputs: conditioning re-expresses it, it does not re-initialise.
    t2 = Trainer(load_config(recipe(data, tmp_path / "init", init=str(tmp_path / "ref"), **kw)))
    t2.build_cache()
    with torch.no_grad():
        before = t2.model.project(feats)
        t2.condition_projection()
        torch.testing.assert_close(t2.model.project(feats), before, atol=1e-4, rtol=1e-4)

"""Stage 0 (minigpt4/pretrain): tiny runs of the real loop on real world images."""
from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch

from minigpt4.config import LLMConfig, TINY_LLAMA, get_config
from minigpt4.model.llm import build_random_llm
from minigpt4.model.minigpt4 import MiniGPT4, build_model
from minigpt4.pretrain.export import stored
from minigpt4.pretrain import Stage0Config, Stage0ConfigError, load_recipe, load_vision, train
from minigpt4.pretrain.loop import Run, open_run, read_log


def tiny_cfg(tmp_path, name: str, **kw) -> Stage0Config:
    d = dict(model="tiny", batch_size=8, total_steps=200, warmup_steps=2, lr=3e-3, min_lr=1e-4,
             text=dict(width=32, heads=2, encoder_layers=1, decoder_layers=1, max_len=48, embed_dim=16),
             vocab_scan=40, probe_n=8, probe_qa=2, log_every=2,
             output_dir=str(tmp_path / name), export_dir=str(tmp_path / f"{name}-export"))
    d.update(kw)
    return Stage0Config.from_dict(d)


def small_model(**qformer) -> MiniGPT4:
    """The `small` preset's vision + Q-Former (with these Q-Former fields changed); a small random
    LLM of SmolLM2's width stands in for the GGUF (only the vision side matters here)."""
    import dataclasses
    cfg = get_config("small")
    cfg.qformer = dataclasses.replace(cfg.qformer, **qformer)
    cfg.llm = LLMConfig(source="random", hidden_size=576,
                        arch=dict(TINY_LLAMA, hidden_size=576, num_attention_heads=4, vocab_size=512))
    return MiniGPT4(cfg, build_random_llm(cfg.llm.arch), tokenizer=None)


def params(model) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def export_without(src: Path, dest: Path, prefix: str) -> dict:
    """A copy of the stage-0 export `src` whose heads file lacks every key starting with `prefix` (an export
    made before that head existed); returns the full heads."""
    from safetensors.torch import load_file, save_file
    dest.mkdir()
    for name in ("vision.safetensors", "stage0.json"):
        (dest / name).write_bytes((src / name).read_bytes())
    heads = load_file(src / "heads.safetensors")
    save_file({k: v for k, v in heads.items() if not k.startswith(prefix)}, dest / "heads.safetensors")
    return heads


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """One 16-step chunk with probe, plot and export (shared: it is the slow part)."""
    tmp_path = tmp_path_factory.mktemp("stage0")
    return tmp_path, train(tiny_cfg(tmp_path, "run"), max_steps=16, progress=False)


def test_loss_drops_and_chunk_writes_everything(trained):
    tmp_path, summary = trained
    rows = [json.loads(line) for line in (tmp_path / "run" / "log.jsonl").read_text().splitlines()]
    losses = [r["loss"] for r in rows if "loss" in r]
    assert len(losses) == 8
    assert sum(losses[-2:]) / 2 < sum(losses[:2]) / 2 - 0.3, losses
    # The chunk end wrote the state, the probe, the plot and the export.
    assert summary["step"] == 16 and summary["images"] == 128
    probe = summary["probe"]
    assert 0.0 <= probe["itc_r1"] <= 1.0 and "qa" in probe and "aux_f1_obj" in probe
    assert 0.0 <= probe["cell_count"] <= 1.0  # colour/size only when the 8 probe images have them
    assert "cell" in rows[0] and rows[0]["cell"] > 0
    assert rows[-1]["probe"] == probe
    exp = tmp_path / "run-export"
    for name in ("vision.safetensors", "heads.safetensors", "stage0.json", "loss.png", "log.jsonl"):
        assert (exp / name).stat().st_size > 0, name
    assert (exp / "loss.png").read_bytes()[:4] == b"\x89PNG"
    assert json.loads((exp / "stage0.json").read_text())["step"] == 16


def test_probe_export_runs_on_any_split_and_leaves_out_heads_the_export_lacks(trained, tmp_path):
    import shutil
    from safetensors.torch import load_file, save_file
    from minigpt4.pretrain.probe import probe_export, _probe_samples
    run_dir, summary = trained
    val = probe_export(run_dir / "run-export", "val")
    assert val.keys() == summary["probe"].keys()
    # fp16 export vs the fp32 model: the same answers on the same 8 val images, up to a rare near-tie
    assert abs(val["qa"] - summary["probe"]["qa"]) <= 0.25 and val["itc_r1"] == pytest.approx(summary["probe"]["itc_r1"], abs=0.25)
    test_ids = {s.image_id for s in _probe_samples(8, ("scene",), 32, "test")}
    assert not test_ids & {s.image_id for s in _probe_samples(8, ("scene",), 32, "val")}
    assert 0.0 <= probe_export(run_dir / "run-export", "test", n=4)["qa"] <= 1.0
    # An export made before the name head existed: its metric is left out, not reported as noise.
    old = tmp_path / "old-export"
    shutil.copytree(run_dir / "run-export", old)
    heads = {k: v for k, v in load_file(old / "heads.safetensors").items() if not k.startswith("cell_name")}
    save_file(heads, old / "heads.safetensors")
    assert "cell_name" not in probe_export(old, "val") and "cell_count" in probe_export(old, "val")
    with pytest.raises(FileNotFoundError, match="not a stage-0 export"):
        probe_export(tmp_path)


def test_resume_matches_uninterrupted_run(tmp_path):
    """...and batches drawn by worker processes (workers > 0, the GPU setting) are the same stream
    as the helper thread's."""
    whole = train(tiny_cfg(tmp_path, "whole"), max_steps=4, progress=False, run_probe=False)
    train(tiny_cfg(tmp_path, "parts"), max_steps=2, progress=False, run_probe=False)
    parts = train(tiny_cfg(tmp_path, "parts", workers=2), max_steps=2, progress=False, run_probe=False)
    assert parts["step"] == whole["step"] == 4 and parts["steps_this_chunk"] == 2
    a, b = params(whole["model"]), params(parts["model"])
    assert a.keys() == b.keys()
    for k in a:
        torch.testing.assert_close(a[k], b[k], rtol=0, atol=1e-6, msg=k)
    # The log of the resumed run has each step once.
    steps = [json.loads(l)["step"] for l in (tmp_path / "parts" / "log.jsonl").read_text().splitlines()]
    assert steps == [2, 4]


def test_export_loads_into_minigpt4_and_gives_the_same_features(trained):
    tmp_path, summary = trained
    stage0 = summary["model"].eval()
    model = build_model(get_config("tiny"), seed=1)
    meta = load_vision(model, tmp_path / "run-export")
    assert meta["step"] == 16 and meta["preset"] == "tiny"
    pixels = torch.randn(2, 3, 56, 56)
    with torch.no_grad():
        torch.testing.assert_close(model.vision_features(pixels), stage0.queries(pixels), atol=2e-2, rtol=1e-2)
    # A model with other vision sizes is refused by the strict key/shape check.
    with pytest.raises(ValueError, match="does not match"):
        load_vision(small_model(), tmp_path / "run-export")


def test_small_preset_export_loads_strictly(tmp_path):
    """The default recipe's export (small preset sizes) loads into build_model(small)."""
    cfg = load_recipe("recipes/default/stage0.yaml", [f"output_dir={tmp_path}/r", f"export_dir={tmp_path}/e",
                                                      "init_from=null"])
    from minigpt4.pretrain.data import Vocab
    from minigpt4.pretrain.export import export
    run = Run(cfg, Vocab([5, 6, 7], ["obj:cat"]))
    export(run, tmp_path / "e")
    model = small_model(**(cfg.qformer or {}))  # what the export records, as the default model does
    load_vision(model, tmp_path / "e")
    for k, v in run.model.vision_state_dict().items():  # stored fp16, loaded into fp32
        assert model.state_dict()[k].dtype == v.dtype and torch.equal(model.state_dict()[k], stored(v).to(v.dtype)), k


def test_bad_recipes_get_clear_errors(tmp_path):
    with pytest.raises(Stage0ConfigError, match="unknown field"):
        Stage0Config.from_dict({"batch_sise": 8})
    with pytest.raises(Stage0ConfigError, match="choose from"):
        Stage0Config.from_dict({"kinds": ["cats"]})
    with pytest.raises(Stage0ConfigError, match="does not exist"):
        load_recipe(tmp_path / "nope.yaml")
    with pytest.raises(Stage0ConfigError, match="not cpu, cuda"):
        Stage0Config.from_dict({"device": "gpu"})
    if not torch.cuda.is_available():  # the GPU recipe names the overrides that run it here
        with pytest.raises(Stage0ConfigError, match="device=cpu amp=null workers=0"):
            load_recipe("recipes/default/stage0-gpu.yaml")
    with pytest.raises(Stage0ConfigError, match="workers must be"):
        Stage0Config.from_dict({"workers": -1})
    with pytest.raises(FileNotFoundError, match="pretrain-vision"):
        load_vision(build_model(get_config("tiny")), tmp_path)


def test_warm_restart_from_the_committed_export(trained, tmp_path):
    """No runs/ state: init_from loads weights, vocab and step from an export and continues."""
    src, summary = trained
    cfg = tiny_cfg(tmp_path, "warm", init_from=str(src / "run-export"))
    run = open_run(cfg)
    assert run.step == 16
    before = params(summary["model"])
    for k, v in run.model.state_dict().items():  # the fp16-stored values
        assert torch.equal(v, stored(before[k]).to(v.dtype)), k
    assert run.scheduler.get_last_lr()[0] == pytest.approx(cfg.lr * run.lr_factor(16))
    out = train(cfg, max_steps=1, progress=False, run_probe=False)
    assert out["step"] == 17
    # The new run's log starts with the export's history, so its plot covers steps 1-17.
    steps = [r["step"] for r in read_log(Path(cfg.output_dir) / "log.jsonl") if "loss" in r]
    assert steps[0] < 16 and steps[-1] == 17
    assert steps == [r["step"] for r in read_log(src / "run-export" / "log.jsonl") if "loss" in r] + [17]


def test_warm_restart_schedule_reruns_warmup_and_cosine_from_restart_step(tmp_path):
    plain = Run.__new__(Run)
    plain.cfg = tiny_cfg(tmp_path, "a", total_steps=100, warmup_steps=10)
    restarted = Run.__new__(Run)
    restarted.cfg = tiny_cfg(tmp_path, "b", total_steps=300, warmup_steps=10, restart_step=100)
    # Up to the restart it is exactly the shorter run's schedule (the shipped first segment).
    assert [restarted.lr_factor(s) for s in range(100)] == [plain.lr_factor(s) for s in range(100)]
    low = min(plain.cfg.min_lr / plain.cfg.lr + 0.01, 0.1)
    assert restarted.lr_factor(99) < low                                       # the first segment ends,
    assert restarted.lr_factor(100) == pytest.approx(1 / 11)                   # warmup again ...
    assert restarted.lr_factor(110) == pytest.approx(1.0)                      # ... to the peak
    assert restarted.lr_factor(299) < low
    with pytest.raises(Stage0ConfigError, match="restart_step"):
        tiny_cfg(tmp_path, "c", total_steps=100, restart_step=100)


def test_position_table_starts_as_sincos_at_step_0_and_at_the_restart_only(trained, tmp_path):
    from minigpt4.pretrain.model import sincos_pos_embed
    def is_sincos(run):
        pe = run.model.visual_encoder.pos_embed.detach()
        table = sincos_pos_embed(int((pe.shape[1] - 1) ** 0.5), pe.shape[2])
        scale = float(pe[0, 1:].std())
        return torch.allclose(pe, table * scale, atol=1e-5) and scale > 0.05
    assert is_sincos(open_run(tiny_cfg(tmp_path, "fresh")))   # far above the 0.02 of a plain ViT init
    assert not is_sincos(open_run(tiny_cfg(tmp_path, "off", pos_embed_scale=0)))
    # A warm start re-seeds only a table too weak to matter (an export from before the seeding);
    # a trained table is kept as it is.
    from safetensors.torch import load_file, save_file
    src, _ = trained
    kept = open_run(tiny_cfg(tmp_path, "kept", init_from=str(src / "run-export")))
    assert not is_sincos(kept) and kept.step == 16
    weak = tmp_path / "weak-export"
    weak.mkdir()
    for name in ("heads.safetensors", "stage0.json"):
        (weak / name).write_bytes((src / "run-export" / name).read_bytes())
    vision = load_file(src / "run-export" / "vision.safetensors")
    vision["visual_encoder.pos_embed"] = torch.randn_like(vision["visual_encoder.pos_embed"]) * 1e-3
    save_file(vision, weak / "vision.safetensors")
    assert is_sincos(open_run(tiny_cfg(tmp_path, "weak", init_from=str(weak))))


def test_cell_targets_tie_each_object_to_its_cell_and_count():
    from minigpt4.pretrain.data import CELL_FIELDS, CELL_NAMES, IGNORE, Vocab
    from minigpt4.world import mixture
    samples = list(mixture(3, 24, "train", ("scene", "dish"), None, 64))
    labels = sorted({f"{g}:{v}" for s in samples if s.kind == "scene" for o in s.truth["objects"]
                     for g, v in (("color", o.get("color")), ("size", o.get("size"))) if v})
    vocab = Vocab([1, 2], labels)
    seen = 0
    for s in samples:
        t = vocab.cells.targets(s)
        assert t.shape == (9, len(CELL_FIELDS))
        if s.kind != "scene":
            assert (t == IGNORE).all()
            continue
        objects = {o["position"]: o for o in s.truth["objects"]}
        for cell, name in enumerate(CELL_NAMES):
            o = objects.get(name)
            count, color = int(t[cell, 0]), int(t[cell, 1])
            if o is None:  # empty cell: count 0, nothing else to learn there
                assert count == 0 and (t[cell, 1:] == IGNORE).all()
            else:
                assert count == o["count"]
                assert (color == IGNORE) if o.get("color") is None else vocab.cells.classes["color"][color] == o["color"]
                seen += 1
    assert seen > 10


def test_cell_name_targets_name_each_cells_object_and_the_head_learns_them(trained, tmp_path):
    """stage0-names.yaml's head: every scene cell's target is "empty" or the name of the one group
    there (non-scene images are ignored), and with cell_name > 0 its loss falls on a repeated batch
    while the same steps at cell_name = 0 leave it where it was."""
    from minigpt4.pretrain.data import CELL_NAMES, IGNORE, train_samples
    src, _ = trained
    # the export's vocab comes from a 40-image scan: scenes and dishes, 24 a batch, so some of their names are in it
    run = open_run(tiny_cfg(tmp_path, "names", init_from=str(src / "run-export"), lr=3e-3, warmup_steps=0,
                            kinds=["scene", "dish"], batch_size=24, loss_weights=dict(cell_name=1.0, cell_occupied=4.0)))
    cells = run.vocab.cells
    assert cells.names[0] == "empty" and len(cells.names) > 10
    batch = run.batch(16)
    seen = 0
    for s, row in zip(train_samples(16, run.cfg, run.size), batch.cell_names):
        if s.kind != "scene":
            assert (row == IGNORE).all()
            continue
        where = {o["position"]: o["name"] for o in s.truth["objects"]}
        for cell, pos in enumerate(CELL_NAMES):
            if pos not in where:
                assert int(row[cell]) == 0
            elif int(row[cell]) != IGNORE:
                assert cells.names[int(row[cell])] == where[pos]
                seen += 1
    assert seen >= 3

    def name_loss(model):
        torch.manual_seed(0)
        with torch.no_grad():
            return float(model.eval().losses(batch)["cell_name"])
    start = name_loss(run.model)
    for _ in range(12):
        run.train_step(batch)
    assert name_loss(run.model) < 0.7 * start
    off = open_run(tiny_cfg(tmp_path, "names-off", init_from=str(src / "run-export"), lr=3e-3, warmup_steps=0,
                            kinds=["scene", "dish"], batch_size=24))
    off_start = name_loss(off.model)
    for _ in range(3):
        off.train_step(batch)
    assert name_loss(off.model) > 0.9 * off_start


def test_query_name_reads_each_name_from_one_query_and_zero_weights_skip_their_losses(trained, tmp_path):
    """query_name scores a name by its best single query, each present name against all names with the
    image's other present names masked; a warm start adds the head; weight 0 skips ITC/ITG entirely."""
    from minigpt4.pretrain.data import IGNORE
    src, _ = trained
    run = open_run(tiny_cfg(tmp_path, "qname", init_from=str(src / "run-export"), warmup_steps=0,
                            kinds=["scene"], batch_size=16,
                            loss_weights=dict(itc=0.0, itg=0.0, query_name=1.0, cell_occupied=4.0)))
    model = run.model.eval()
    head = model.query_name
    names, hidden = head.out_features, head.in_features
    assert names >= 4
    # Two queries, each showing one name (ids 1 and 2) through its own feature; two objects present.
    with torch.no_grad():
        head.weight.zero_(), head.bias.zero_()
        head.weight[1, 0] = head.weight[2, 1] = 20.0
    q = torch.zeros(1, 2, hidden)
    q[0, 0, 0] = q[0, 1, 1] = 1.0
    cells = torch.full((1, 9), IGNORE)
    cells[0, :3] = torch.tensor([1, 2, 0])
    with torch.no_grad():
        assert float(model.query_name_loss(q, cells)) < 0.01   # unmasked, each positive would cost log 2
        only_second = q.clone()
        only_second[0, 0] = 0
        assert float(model.query_name_loss(only_second, cells)) > 1.0   # name 1 is in no query
        swapped = q.flip(1)  # which query shows it does not matter
        assert torch.isclose(model.query_name_loss(swapped, cells), model.query_name_loss(q, cells))
        assert float(model.query_name_loss(q, torch.zeros(1, 9, dtype=torch.long))) == 0.0  # nothing present
    # Real training: the fresh head learns, and the skipped losses are not even computed.
    batch = run.batch(16)
    torch.nn.init.normal_(head.weight, std=0.02)
    rows = [run.train_step(batch) for _ in range(12)]
    assert "itc" not in rows[0] and "itg" not in rows[0] and "query_name" in rows[0]
    assert rows[-1]["query_name"] < 0.7 * rows[0]["query_name"], [r["query_name"] for r in rows]


def test_head_warmup_fits_only_the_new_head_first_and_survives_a_resume(trained, tmp_path):
    """head_warmup_steps (LP-FT): after a warm start from an export without the query_name head, the first
    steps move only that head (at head_lr); the vision side and the export's own heads stay bit-equal; then
    everything trains. A chunk boundary inside the warm-up keeps both the new-head list and its optimizer."""
    src, _ = trained
    old = tmp_path / "no-qname"
    export_without(src / "run-export", old, "query_name")
    cfg = lambda name: tiny_cfg(tmp_path, name, init_from=str(old), restart_step=16, head_warmup_steps=3, head_lr=1e-2,
                                kinds=["scene"], loss_weights=dict(query_name=1.0))
    run = open_run(cfg("lpft"))
    assert sorted(run.fresh) == ["query_name.bias", "query_name.weight"]
    start = params(run.model)
    run.train_step(run.batch(run.step))
    state = Path(run.cfg.output_dir) / "state.pt"
    state.parent.mkdir(parents=True, exist_ok=True)
    run.save(state)
    resumed = Run.resume(run.cfg, state)
    assert resumed.fresh == run.fresh and resumed.head_optimizer is not None
    for r in (run, resumed):
        for _ in range(2):
            assert r.heads_only()
            r.train_step(r.batch(r.step))
        now = params(r.model)
        moved = {k for k in now if not torch.equal(now[k], start[k])}
        assert moved == {"query_name.weight", "query_name.bias"}, sorted(moved)[:5]
    assert torch.equal(resumed.model.query_name.weight, run.model.query_name.weight)
    assert not run.heads_only()
    run.train_step(run.batch(run.step))
    now = params(run.model)
    assert not torch.equal(now["visual_encoder.patch_embed.proj.weight"], start["visual_encoder.patch_embed.proj.weight"])
    assert not torch.equal(now["cell_head.weight"], start["cell_head.weight"])
    with pytest.raises(ValueError, match="added no new head"):
        stale = open_run(tiny_cfg(tmp_path, "nothing-new", init_from=str(src / "run-export"), restart_step=16,
                                  head_warmup_steps=2))
        stale.train_step(stale.batch(stale.step))


def test_warm_start_adds_heads_the_export_predates_and_refuses_other_gaps(trained, tmp_path):
    """An export from before the per-cell heads still warm-starts (they start fresh); an export
    missing anything else is refused by name."""
    from safetensors.torch import save_file
    src, _ = trained
    old = tmp_path / "old-export"
    heads = export_without(src / "run-export", old, "cell_")
    run = open_run(tiny_cfg(tmp_path, "from-old", init_from=str(old)))
    assert run.step == 16 and run.model.cell_head.out_features % 9 == 0
    # ... and so does one whose head has an older shape
    save_file({**heads, "cell_head.weight": torch.zeros(3, 5)}, old / "heads.safetensors")
    assert open_run(tiny_cfg(tmp_path, "from-older", init_from=str(old))).step == 16
    save_file({k: v for k, v in heads.items() if not k.startswith(("cell_", "aux."))}, old / "heads.safetensors")
    with pytest.raises(ValueError, match=r"does not fit this model \(missing \['aux"):
        open_run(tiny_cfg(tmp_path, "from-broken", init_from=str(old)))


def test_binding_options_prefer_questions_weigh_occupied_cells_and_grow_the_text_table(trained, tmp_path):
    """stage0-binding.yaml's knobs: ITG draws the preferred question types first; the cell loss
    weighs occupied cells up (and only that changes it); a warm start with a longer text.max_len
    keeps the trained position rows; bf16 autocast trains."""
    import random
    from minigpt4.pretrain.data import SEP, itg_sequence
    from minigpt4.world import mixture
    src, summary = trained
    run = open_run(tiny_cfg(tmp_path, "bind", init_from=str(src / "run-export")))
    scene = next(s for s in mixture(11, 20, "train", ("scene",), None, 64)
                 if sum(q["type"] == "presence" for q in s.qa) >= 2 and sum(q["type"] == "position" for q in s.qa) >= 2)
    def asked(seed, prefer=()):  # the types of the questions whose token ids open the sequence's lines
        ids = itg_sequence(run.vocab, scene, random.Random(seed), 2, 512, prefer)[0]
        lines = [[]]
        for i in ids:
            lines[-1].append(i)
            if i == SEP:
                lines.append([])
        qs = run.vocab.encode([q["question"] for q in scene.qa])
        return [next(q["type"] for q, enc in zip(scene.qa, qs) if line[:len(enc)] == enc) for line in lines[:2]]
    assert all(asked(seed, ("position",)) == ["position", "position"] for seed in range(10))
    assert {t for seed in range(30) for t in asked(seed)} >= {"presence", "position"}
    # Occupied cells weighted up: the same batch, a different cell loss, the other losses equal.
    batch = run.batch(16)
    model = run.model.eval()
    torch.manual_seed(0)
    plain = model.losses(batch)
    torch.manual_seed(0)
    weighted = model.losses(batch, cell_occupied=4.0)
    assert all(torch.equal(plain[k], weighted[k]) for k in ("itc", "itg", "aux"))
    assert not torch.isclose(plain["cell"], weighted["cell"])
    # A longer decoder sequence keeps the export's position rows.
    longer = open_run(tiny_cfg(tmp_path, "long", init_from=str(src / "run-export"),
                               text=dict(width=32, heads=2, encoder_layers=1, decoder_layers=1, max_len=64,
                                         embed_dim=16, qa_pairs=4, qa_prefer=["position", "count"])))
    old_rows = run.model.text.pos.shape[1]
    assert longer.model.text.pos.shape[1] == old_rows + 16
    assert torch.equal(longer.model.text.pos[:, :old_rows], run.model.text.pos)
    bf16 = tiny_cfg(tmp_path, "bf16", init_from=str(src / "run-export"), amp="bf16",
                    loss_weights=dict(cell_occupied=4.0))
    out = train(bf16, max_steps=2, progress=False, run_probe=False)
    assert out["step"] == 18 and all(torch.isfinite(p).all() for p in open_run(bf16).model.parameters())
    # Resuming that run's state with another text length is refused by name, not a torch size error.
    with pytest.raises(ValueError, match=r"text.pos.*another shape.*recipe that run was started with"):
        open_run(tiny_cfg(tmp_path, "bf16", init_from=str(src / "run-export"), amp="bf16",
                          text=dict(width=32, heads=2, encoder_layers=1, decoder_layers=1, max_len=64, embed_dim=16)))
    # An export already past a recipe's last step is finished for that recipe: said, not retrained.
    with pytest.raises(ValueError, match="already past this recipe's total_steps=10"):
        open_run(tiny_cfg(tmp_path, "done", init_from=str(src / "run-export"), total_steps=10))
    with pytest.raises(Stage0ConfigError, match="amp 'fp8'"):
        tiny_cfg(tmp_path, "bad", amp="fp8")


def test_second_chunk_on_the_same_run_is_refused(tmp_path):
    cfg = tiny_cfg(tmp_path, "locked")
    (tmp_path / "locked").mkdir()
    (tmp_path / "locked" / ".lock").write_text("1")  # pid 1 is always alive
    with pytest.raises(RuntimeError, match="another stage-0 chunk"):
        train(cfg, max_steps=1, progress=False)


def test_linear_probe_finds_what_features_hold_and_not_what_they_lack():
    from minigpt4.pretrain.linear_probe import probe_attribute, run, run_cells
    g = torch.Generator().manual_seed(0)
    labels = [["a", "b", "c"][i % 3] for i in range(300)]
    signal = torch.nn.functional.one_hot(torch.tensor([i % 3 for i in range(300)]), 3).float()
    noise = torch.randn(300, 20, generator=g)
    held = probe_attribute(torch.cat([signal + 0.3 * noise[:, :3], noise], 1), labels)
    absent = probe_attribute(noise, labels)
    assert held["probe"] > 0.9 and absent["probe"] < 0.6 and held["majority"] == pytest.approx(1 / 3, abs=0.02)
    model = build_model(get_config("tiny"), seed=0)
    for where in ("queries", "vit"):  # real world scenes through a real (random) model
        out = run(model, n=120, where=where)
        assert set(out) >= {"position", "count"} and all(0 <= r["probe"] <= 1 and r["n"] >= 8 for r in out.values())
    # Multi-object binding: per region, the colour / count of the group there. Most regions of a
    # scene are empty, so the majority class ("none" / 0) holds well over half of each region's rows.
    cells = run_cells(model, n=60)
    assert set(cells) == {"color", "count", "color, coloured groups", "count, occupied regions"}
    for attr, subset in (("color", "coloured groups"), ("count", "occupied regions")):
        whole, occupied = cells[attr], cells[f"{attr}, {subset}"]
        assert whole["n"] > 9 * 40 and 0.5 < whole["majority"] < 1 and 0 <= whole["probe"] <= 1
        # scored on the test rows that are not "empty": far fewer, and no empty majority to lean on
        assert 0 < occupied["n"] < whole["n"] / 2 and 0 < occupied["majority"] < 1 and 0 <= occupied["probe"] <= 1
    # The occupied score tells a probe that only knows "empty" from one that knows the objects.
    region = ["none"] * 200 + ["red"] * 50 + ["blue"] * 50
    order = torch.randperm(300, generator=g)
    region = [region[i] for i in order]
    empty_bit = torch.tensor([[float(v == "none")] for v in region])
    colour_bits = torch.tensor([[float(v == "red"), float(v == "blue")] for v in region])
    knows_empty = probe_attribute(torch.cat([empty_bit, noise], 1), region, blank=("none",))
    knows_colour = probe_attribute(torch.cat([colour_bits, noise], 1), region, blank=("none",))
    assert knows_empty["probe"] > 0.6 and knows_empty["occupied"]["probe"] < 0.75
    assert knows_colour["occupied"]["probe"] > 0.9 and knows_colour["occupied"]["n"] == 100


def test_word_readout_finds_names_one_query_shows_and_not_names_spread_over_queries():
    """--words: a shared per-query linear map recovers names that a single query encodes, fails on the same
    information spread over all queries (what a per-query projection cannot gather), and runs on a model."""
    from minigpt4.pretrain.linear_probe import run_llm_read, run_words, word_readout
    g = torch.Generator().manual_seed(0)
    n, queries, hidden, names = 1200, 8, 16, 40
    words = torch.randn(names, 24, generator=g)
    present = [[i % names] for i in range(n)]
    code = torch.randn(names, hidden, generator=g)[[p[0] for p in present]]
    one_query = 0.3 * torch.randn(n, queries, hidden, generator=g)  # the whole code in one random query
    one_query[torch.arange(n), torch.randint(0, queries, (n,), generator=g)] += code
    spread = 0.3 * torch.randn(n, queries, hidden, generator=g)     # query q holds dims 2q, 2q+1 of it
    for q in range(queries):
        spread[:, q, :2] += code[:, 2 * q:2 * q + 2]
    held = word_readout(one_query, present, words, steps=600, batch=64)
    lost = word_readout(spread, present, words, steps=600, batch=64)
    assert held["objects"] == 240 and held["chance"] == pytest.approx(1 / names)
    assert held["recall"] > 0.6 and lost["recall"] < 0.1, (held, lost)
    tiny = build_model(get_config("tiny"), seed=0)
    out = run_words(tiny, n=60, steps=5)
    assert out["names"] > 100 and 0 <= out["recall"] <= 1 and out["n"] == 12
    read = run_llm_read(tiny, n=6, batch_size=4)  # the LLM's own reading, end to end through the chat template
    assert read["n"] == 6 and read["objects"] >= 6 and 0 <= read["recall"] <= 1


def test_qformer_image_position_table_is_optional_and_recorded_with_the_export(tmp_path):
    """BLIP-2 presets have none; with image_pos_embed the queries see where tokens are (the
    output changes when the table does), and a stage-0 export records the setting so the default
    model is built with the same Q-Former."""
    from minigpt4.config import QFormerConfig
    from minigpt4.model.qformer import QFormer
    assert not hasattr(QFormer(QFormerConfig(hidden=32, layers=2, heads=2, intermediate=64, num_query_tokens=4), 16),
                       "image_pos")
    qf = QFormer(QFormerConfig(hidden=32, layers=2, heads=2, intermediate=64, num_query_tokens=4,
                               image_pos_embed=True), 16, num_image_tokens=5).eval()
    x = torch.randn(2, 5, 16)
    before = qf(x)
    with torch.no_grad():
        qf.image_pos.normal_()
    assert not torch.allclose(before, qf(x))
    with pytest.raises(ValueError, match="num_image_tokens"):
        QFormer(QFormerConfig(image_pos_embed=True), 16)
    out = train(tiny_cfg(tmp_path, "pos", qformer={"image_pos_embed": True}), max_steps=1, progress=False,
                run_probe=False)
    assert out["model"].qformer.image_pos.abs().sum() > 0  # seeded as sin-cos, not left at zero
    meta = json.loads((tmp_path / "pos-export" / "stage0.json").read_text())
    assert meta["qformer_config"]["image_pos_embed"] is True
    from minigpt4.weights.default import default_config
    root = tmp_path / "root"
    (root / "stage0").mkdir(parents=True)
    (root / "stage0" / "stage0.json").write_text(json.dumps(meta))
    assert default_config(get_config("small"), root).qformer.image_pos_embed is True
    assert default_config(get_config("small"), tmp_path / "nothing").qformer.image_pos_embed is False
    with pytest.raises(Stage0ConfigError, match="qformer has unknown"):
        tiny_cfg(tmp_path, "bad", qformer={"image_pos": True})


def test_query_word_puts_one_query_per_object_on_the_llms_own_word_embedding(trained, tmp_path):
    """query_word: targets are the word LLM's input embeddings of each name's first token; objects and queries
    are matched one-to-one (so two objects never share a query); a token on its word costs ~0, a token in the
    right direction at the wrong norm still costs; unmatched queries are pushed toward zero; tau adds a softmax
    over all names; a warm start adds the map and its targets as new heads, training lowers the loss, and the
    export carries the map as a projection."""
    from minigpt4.model.llm import build_random_llm, load_tokenizer, save_llm_folder
    from minigpt4.pretrain.data import IGNORE
    from minigpt4.pretrain.loop import name_word_targets
    src, _ = trained
    arch = get_config("tiny").llm
    llm_dir = tmp_path / "word-llm"
    torch.manual_seed(0)
    save_llm_folder(build_random_llm(arch.arch), load_tokenizer(arch.tokenizer), llm_dir)
    run = open_run(tiny_cfg(tmp_path, "qword", init_from=str(src / "run-export"), warmup_steps=0, kinds=["scene"],
                            batch_size=16, word_llm=str(llm_dir),
                            loss_weights=dict(itc=0.0, itg=0.0, query_word=1.0, word_rest=0.1, cell_occupied=4.0)))
    model = run.model.eval()
    assert {"query_word.weight", "query_word.bias", "word_targets"} <= set(run.fresh)
    names = run.vocab.cells.names
    targets = name_word_targets(names, str(llm_dir))
    assert torch.equal(model.word_targets, targets) and float(targets[0].abs().sum()) == 0.0
    assert not torch.equal(targets[1], targets[2])
    # A hand-built map: the identity into the token's first dims; names 1 and 2 lie on dims 0 and 1.
    hidden, width = model.query_word.in_features, model.query_word.out_features
    with torch.no_grad():
        model.word_targets.zero_()
        model.word_targets[1, 0] = model.word_targets[2, 1] = 2.0
        model.query_word.weight.zero_(), model.query_word.bias.zero_()
        model.query_word.weight[:hidden, :hidden] = torch.eye(min(hidden, width))[:hidden, :hidden]
    q = torch.zeros(1, 3, hidden)
    q[0, 0, 1] = 2.0  # query 0 shows name 2, query 1 shows name 1, query 2 is empty
    q[0, 1, 0] = 2.0
    cells = torch.full((1, 9), IGNORE)
    cells[0, :3] = torch.tensor([1, 2, 0])
    with torch.no_grad():
        b, qi, ni = model.query_word_match(model.query_word(q), cells)
        assert sorted(zip(qi.tolist(), ni.tolist())) == [(0, 2), (1, 1)]
        assert float(model.query_word_loss(q, cells)) < 1e-4
        assert float(model.query_word_loss(q * 3, cells)) > 1.0          # right direction, 3x a word's norm
        both_on_one = q.clone()
        both_on_one[0, 1] = both_on_one[0, 0]  # one query cannot serve two objects
        assert float(model.query_word_loss(both_on_one, cells)) > 0.49   # one pair at cosine 0
        noisy_rest = q.clone()
        noisy_rest[0, 2, 3] = 2.0  # the unmatched query's token: rest x its squared norm over a word's
        word_sq = float(model.word_targets[1:].pow(2).sum(-1).mean())
        assert abs(float(model.query_word_loss(noisy_rest, cells)) - 0.1 * 4 / word_sq) < 1e-4
        # tau: a softmax over all names. On its own word a token wins it; at the centroid of the two names it has
        # cosine 0.71 to both (1 - cos alone costs 0.29 there) and the softmax adds ~log 2 per object.
        model.word_targets[3:] = 0  # only names 1 and 2 compete (the others have no direction)
        on_word = float(model.query_word_loss(q, cells, tau=0.05))
        centroid = q.clone()
        centroid[0, :2] = 0
        centroid[0, :2, :2] = 2 ** 0.5  # norm 2, a word's
        generic = float(model.query_word_loss(centroid, cells, tau=0.05)) - float(model.query_word_loss(centroid, cells))
        assert on_word < 0.01 and abs(generic - math.log(2)) < 0.05, (on_word, generic)
    # Real training from the warm start: the loss drops and the skipped losses are not computed.
    with torch.no_grad():
        model.word_targets.copy_(targets)
    torch.nn.init.normal_(model.query_word.weight, std=0.02)
    batch = run.batch(16)
    rows = [run.train_step(batch) for _ in range(12)]
    assert "itc" not in rows[0] and "query_word" in rows[0]
    assert rows[-1]["query_word"] < 0.7 * rows[0]["query_word"], [r["query_word"] for r in rows]
    # The export carries the map as the projection of `default@stage0-NAME` (MiniGPT4 key names, fp32).
    from safetensors.torch import load_file
    from minigpt4.pretrain.export import export
    export(run, tmp_path / "qword-export")
    proj = load_file(tmp_path / "qword-export" / "proj.safetensors")
    assert sorted(proj) == ["proj.bias", "proj.weight"]
    assert torch.equal(proj["proj.weight"], model.query_word.weight.detach())
    assert not (src / "run-export" / "proj.safetensors").exists()  # no map, no projection

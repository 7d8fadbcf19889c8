"""Training data: streamed sources, their weighted mix, and the examples built from them.

Four source kinds, all read lazily (image bytes are read only when a sample is used):
  webdataset     tar shards of image + caption (LAION / CC / SBU, original stage 1)
  folder         a folder of images + a JSONL file of {"image": ..., "caption": ...}
  cc_sbu_align   the original stage-2 set: image/{image_id}.jpg + filter_cap.json
  llava          LLaVA conversation JSON (multi-turn, one or several images per conversation)

`DataStream` mixes the sources by weight (like the original's sample ratios). Which source
sample i comes from is a pure function of (seed, i), and each source's position is (epoch,
offset), so the stream's whole state is a few integers: resuming replays nothing at random.

`ExampleBuilder` turns a record into (input_ids, labels):
  stage 1: [BOS][image slots][caption + "\\n"], loss on the caption only (original layout);
  stage 2 and conversations: `minigpt4.chat.templates.encode_conversation`, the same builder
  chat uses, so training and chat prompts can never disagree.
"""
from __future__ import annotations

import json
import random
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterator, Sequence

import numpy as np
import torch

from minigpt4.chat.templates import IMAGE_TAG, Message, Template, encode_conversation, tokenize
from minigpt4.data.webdataset import expand_shards, iter_shard
from minigpt4.model.minigpt4 import IGNORE_INDEX, IMAGE_TOKEN_ID

ImageReader = Callable[[], bytes]

# The original stage-2 instruction list (MiniGPT-4 `prompts/alignment.txt`). The image tag is
# stripped here: in our Message form the image comes from `Message.images`.
ALIGNMENT_INSTRUCTIONS = [
    "<Img><ImageHere></Img> Describe this image in detail.",
    "<Img><ImageHere></Img> Take a look at this image and describe what you notice.",
    "<Img><ImageHere></Img> Please provide a detailed description of the picture.",
    "<Img><ImageHere></Img> Could you describe the contents of this image for me?",
]


def clean_caption(caption: str, max_words: int = 50) -> str:
    """BLIP's `pre_caption` as used by the original stage 1: lower-case, drop punctuation
    . ! " ( ) * # : ; ~, squeeze spaces, keep at most `max_words` words."""
    caption = re.sub(r"([.!\"()*#:;~])", " ", caption.lower())
    caption = re.sub(r"\s{2,}", " ", caption).rstrip("\n").strip(" ")
    words = caption.split(" ")
    return " ".join(words[:max_words]) if len(words) > max_words else caption


# --- records and sources ---------------------------------------------------------------------
@dataclass
class Record:
    """One raw sample. `turns` (conversations) is [(role, text, n_images)]; captions use `caption`."""
    source: str
    key: str
    images: list[ImageReader]
    caption: str | None = None
    turns: list[tuple[str, str, int]] | None = None
    unnamed: list[int] | None = None  # word-readout regions its images read as the unknown word (world.regions)


def _file_reader(path: Path) -> ImageReader:
    def read() -> bytes:
        try:
            return path.read_bytes()
        except OSError as e:
            # Missing files are bad images, not crashes: the trainer skips and counts them.
            from minigpt4.data.image import ImageError
            raise ImageError(f"image '{path}' cannot be read ({e.strerror or e}); check the data folder") from None
    return read


class Source:
    """A named, weighted, re-iterable stream of Records. `epoch(e)` must be deterministic."""
    kind = "base"

    def __init__(self, name: str, weight: float = 1.0, clean: bool | None = None):
        self.name, self.weight, self.clean = name, weight, clean

    def epoch(self, epoch: int) -> Iterator[Record]:
        raise NotImplementedError


class WebDatasetSource(Source):
    kind = "webdataset"

    def __init__(self, name, shards: list[Path], seed: int = 0, shuffle_shards: bool = True, **kw):
        super().__init__(name, **kw)
        self.shards, self.seed, self.shuffle_shards = shards, seed, shuffle_shards

    def epoch(self, epoch):
        order = list(self.shards)
        if self.shuffle_shards:
            random.Random(f"{self.seed}:{epoch}").shuffle(order)
        for shard in order:
            for s in iter_shard(shard):
                yield Record(self.name, f"{Path(s.shard).name}/{s.key}",
                             [s.read_image] if s.read_image else [], s.caption)


class FolderSource(Source):
    """Images + JSONL (`{"image": "a.jpg", "caption": "..."}` per line; "text" also accepted),
    image paths relative to the JSONL file's folder. Read line by line."""
    kind = "folder"

    def __init__(self, name, path: Path, **kw):
        super().__init__(name, **kw)
        if path.is_dir():
            found = sorted(path.glob("*.jsonl"))
            if len(found) != 1:
                raise FileNotFoundError(f"folder source '{path}' must hold exactly one .jsonl file "
                                        f"(found {len(found)}); or point path at the .jsonl file")
            path = found[0]
        if not path.exists():
            raise FileNotFoundError(f"folder source file '{path}' does not exist; check the data path")
        self.path = path

    def epoch(self, epoch):
        with open(self.path, encoding="utf-8") as f:
            for lineno, line in enumerate(f, 1):
                if not line.strip():
                    continue
                try:
                    obj = json.loads(line)
                    image, caption = obj["image"], obj.get("caption", obj.get("text"))
                except (json.JSONDecodeError, KeyError, TypeError):
                    obj, image, caption = None, None, None
                if image is None or caption is None:
                    # A broken line is a bad sample (counted), like a broken image.
                    yield Record(self.name, f"{self.path.name}:{lineno}", [], None)
                    continue
                yield Record(self.name, f"{self.path.name}:{lineno}",
                             [_file_reader(self.path.parent / image)], caption)


def _unnamed_field(obj: dict, where: Path, key) -> list[int] | None:
    """A record's "unnamed" regions (minigpt4.world.regions), checked."""
    unnamed = obj.get("unnamed")
    if unnamed is not None and not (isinstance(unnamed, list) and all(type(r) is int and r >= 0 for r in unnamed)):
        raise ValueError(f"{where}: record {key}: 'unnamed' must be a list of region indices (0, 1, ...), not "
                         f"{unnamed!r}; write it with python -m minigpt4.world unname")
    return unnamed


class CCSBUAlignSource(Source):
    """The original stage-2 set: `filter_cap.json` = {"annotations": [{"image_id", "caption"}]}
    with images at `image/{image_id}.jpg` (3,500 entries: the annotation list is small)."""
    kind = "cc_sbu_align"

    def __init__(self, name, path: Path, **kw):
        super().__init__(name, **kw)
        self.ann_file = path / "filter_cap.json"
        if not self.ann_file.exists():
            raise FileNotFoundError(f"cc_sbu_align folder '{path}' has no filter_cap.json; point path at "
                                    f"the folder that holds filter_cap.json and image/")
        self.image_dir = path / "image"

    def epoch(self, epoch):
        anns = json.loads(self.ann_file.read_text(encoding="utf-8"))["annotations"]
        for ann in anns:
            img = self.image_dir / f"{ann['image_id']}.jpg"
            yield Record(self.name, str(ann["image_id"]), [_file_reader(img)], ann["caption"],
                         unnamed=_unnamed_field(ann, self.ann_file, ann["image_id"]))


def iter_json_array(path: Path, chunk_size: int = 1 << 20) -> Iterator[dict]:
    """Objects of a top-level JSON array, parsed incrementally (LLaVA files are hundreds of MB)."""
    decoder = json.JSONDecoder()
    buf, pos, started = "", 0, False
    with open(path, encoding="utf-8") as f:
        while True:
            chunk = f.read(chunk_size)
            buf = buf[pos:] + chunk
            pos = 0
            while True:
                while pos < len(buf) and buf[pos] in " \t\r\n,":
                    pos += 1
                if not started and pos < len(buf):
                    if buf[pos] != "[":
                        raise ValueError(f"'{path}' is not a JSON array of conversations")
                    started, pos = True, pos + 1
                    continue
                if pos < len(buf) and buf[pos] == "]":
                    return
                try:
                    obj, end = decoder.raw_decode(buf, pos)
                except json.JSONDecodeError:
                    if not chunk:
                        if buf[pos:].strip():
                            raise ValueError(f"'{path}' ends in the middle of a JSON object") from None
                        return
                    break  # need more text
                yield obj
                pos = end
            if not chunk:
                return


class LlavaSource(Source):
    """LLaVA conversation JSON: [{"id", "image": "a.jpg" | [..], "conversations": [{"from":
    "human"|"gpt", "value": "<image>\\nWhat is ..."}]}]. Each `<image>` in a human turn takes the
    next image of the sample; it becomes that Message's image (the tag is written by the template)."""
    kind = "llava"
    ROLES = {"human": "user", "user": "user", "gpt": "assistant", "assistant": "assistant"}

    def __init__(self, name, path: Path, image_folder: Path | None = None, tasks: Sequence[str] | None = None,
                 **kw):
        super().__init__(name, **kw)
        if not path.exists():
            raise FileNotFoundError(f"LLaVA file '{path}' does not exist; check the data path")
        self.path, self.image_folder = path, image_folder or path.parent
        self.tasks = set(tasks) if tasks else None

    def epoch(self, epoch):
        objects = (json.loads(l) for l in open(self.path, encoding="utf-8") if l.strip()) \
            if self.path.suffix == ".jsonl" else iter_json_array(self.path)
        for i, obj in enumerate(objects):
            if self.tasks is not None and obj.get("task") not in self.tasks:
                continue
            images = obj.get("image") or []
            images = [images] if isinstance(images, str) else list(images)
            turns, bad = [], False
            for t in obj.get("conversations", []):
                role = self.ROLES.get(t.get("from"))
                if role is None:
                    bad = True
                    break
                text = t.get("value", "")
                n = text.count("<image>")
                text = re.sub(r"\s*<image>\s*", " ", text).strip()
                turns.append((role, text, n))
            n_tags = sum(n for _, _, n in turns)
            if n_tags == 0 and images:  # LLaVA text had no tag: the image goes with the first turn
                if turns:
                    turns[0] = (turns[0][0], turns[0][1], len(images))
                n_tags = len(images)
            unnamed = _unnamed_field(obj, self.path, obj.get("id", i))
            if bad or n_tags != len(images) or not turns:
                turns = None  # malformed: counted as a bad sample
            yield Record(self.name, str(obj.get("id", i)),
                         [_file_reader(self.image_folder / p) for p in images], None, turns, unnamed)


# --- the mix ---------------------------------------------------------------------------------
@dataclass
class SourcePosition:
    epoch: int = 0
    offset: int = 0  # records of this epoch already taken


class DataStream:
    """Infinite weighted mix of sources. Sample i comes from the source drawn with
    `default_rng([seed, i])`, so the mix needs no RNG state: (i, per-source positions) is all."""

    def __init__(self, sources: Sequence[Source], seed: int = 0, state: dict | None = None):
        if not sources:
            raise ValueError("no data sources configured; add at least one entry under data:")
        self.sources = list(sources)
        w = np.array([s.weight for s in self.sources], dtype=np.float64)
        if (w <= 0).any():
            raise ValueError("data source weights must be > 0")
        self.probs = w / w.sum()
        self.seed = seed
        self.index = 0
        self.positions = {s.name: SourcePosition() for s in self.sources}
        self._iters: dict[str, Iterator[Record]] = {}
        if state:
            self.load_state_dict(state)

    def _open(self, src: Source) -> Iterator[Record]:
        pos = self.positions[src.name]
        it = src.epoch(pos.epoch)
        for _ in range(pos.offset):  # fast-forward: metadata only, images are never read here
            next(it)
        return it

    def _next_from(self, src: Source) -> Record:
        if src.name not in self._iters:
            self._iters[src.name] = self._open(src)
        pos = self.positions[src.name]
        for _ in range(2):
            try:
                rec = next(self._iters[src.name])
                pos.offset += 1
                return rec
            except StopIteration:
                if pos.offset == 0:
                    raise ValueError(f"data source '{src.name}' has no samples; check its path (and its tasks filter)") from None
                pos.epoch, pos.offset = pos.epoch + 1, 0
                self._iters[src.name] = src.epoch(pos.epoch)
        raise AssertionError("unreachable")

    def choose(self, i: int) -> Source:
        if len(self.sources) == 1:
            return self.sources[0]
        return self.sources[int(np.random.default_rng([self.seed, i]).choice(len(self.sources), p=self.probs))]

    def __iter__(self):
        return self

    def __next__(self) -> tuple[int, Record]:
        i = self.index
        rec = self._next_from(self.choose(i))
        self.index += 1
        return i, rec

    def state_dict(self) -> dict:
        return {"index": self.index,
                "positions": {k: [p.epoch, p.offset] for k, p in self.positions.items()}}

    def load_state_dict(self, state: dict) -> None:
        self.index = int(state["index"])
        for name, (e, o) in state["positions"].items():
            if name not in self.positions:
                raise ValueError(f"checkpoint has data source '{name}' which this recipe does not; "
                                 f"resume with the recipe the run started with")
            self.positions[name] = SourcePosition(int(e), int(o))
        self._iters.clear()


# --- examples --------------------------------------------------------------------------------
@dataclass
class Example:
    input_ids: list[int]
    labels: list[int]
    images: list[ImageReader]
    key: str = ""
    unnamed: list[int] | None = None  # Record.unnamed, for each of its images


class SkipSample(Exception):
    """The record cannot become a training example (reason in the message); it is counted."""


@dataclass
class ExampleBuilder:
    tokenizer: object
    template: Template
    num_image_tokens: int
    stage: int = 1
    system: str | None = None
    max_txt_len: int = 32
    max_len: int = 2048
    max_words: int = 50
    instructions: list[str] = field(default_factory=lambda: list(ALIGNMENT_INSTRUCTIONS))
    seed: int = 0

    def build(self, index: int, rec: Record, clean: bool | None = None) -> Example:
        if rec.turns is not None:
            return self._conversation(rec)
        if rec.caption is None or not rec.images:
            raise SkipSample("no caption or no image")
        if self.stage == 1:
            return self._stage1(rec, self.stage == 1 if clean is None else clean)
        return self._stage2(index, rec, bool(clean))

    def _stage1(self, rec: Record, clean: bool) -> Example:
        caption = clean_caption(rec.caption, self.max_words) if clean else rec.caption.strip()
        if not caption:
            raise SkipSample("empty caption")
        # [BOS][image slots][caption\n]: the original stage-1 layout, no template around it.
        prefix = tokenize(self.tokenizer, "<ImageHere>", self.num_image_tokens, bos=True)
        text = self.tokenizer(caption + "\n", add_special_tokens=False).input_ids[: self.max_txt_len]
        return Example(prefix + text, [IGNORE_INDEX] * len(prefix) + text, rec.images[:1], rec.key, rec.unnamed)

    def instruction(self, index: int) -> str:
        # Drawn from (seed, index): the same sample gets the same instruction on every resume/rank.
        pick = self.instructions[int(np.random.default_rng([self.seed, index, 2]).integers(len(self.instructions)))]
        return pick.replace(IMAGE_TAG, "").strip()

    def _stage2(self, index: int, rec: Record, clean: bool) -> Example:
        caption = clean_caption(rec.caption, self.max_words) if clean else rec.caption.strip()
        if not caption:
            raise SkipSample("empty caption")
        msgs = [Message("user", self.instruction(index), images=rec.images[:1]),
                Message("assistant", caption)]
        ids, labels = encode_conversation(self.tokenizer, self.template, msgs, self.num_image_tokens,
                                          system=self.system)
        first = next(i for i, l in enumerate(labels) if l != IGNORE_INDEX)
        cut = first + self.max_txt_len  # like the original: max_txt_len counts answer tokens
        return Example(ids[:cut], labels[:cut], rec.images[:1], rec.key, rec.unnamed)

    def _conversation(self, rec: Record) -> Example:
        msgs, it = [], iter(rec.images)
        for role, text, n in rec.turns:
            msgs.append(Message(role, text, images=[next(it) for _ in range(n)]))
        ids, labels = encode_conversation(self.tokenizer, self.template, msgs, self.num_image_tokens,
                                          system=self.system)
        images = list(rec.images)
        if len(ids) > self.max_len:
            ids, labels = ids[: self.max_len], labels[: self.max_len]
            slots = sum(1 for t in ids if t == IMAGE_TOKEN_ID)
            whole, partial = divmod(slots, self.num_image_tokens)
            if partial:  # never keep half an image: cut before the image that was split
                start = [i for i, t in enumerate(ids) if t == IMAGE_TOKEN_ID][whole * self.num_image_tokens]
                ids, labels = ids[:start], labels[:start]
            images = images[:whole]
        if all(l == IGNORE_INDEX for l in labels[1:]):
            raise SkipSample(f"no answer tokens within max_len={self.max_len}")
        return Example(ids, labels, images, rec.key, rec.unnamed)


@dataclass
class Batch:
    input_ids: torch.Tensor       # (B, T) right-padded
    attention_mask: torch.Tensor  # (B, T) 1 = real token
    labels: torch.Tensor          # (B, T) IGNORE_INDEX on prompt, image and padding
    keys: list[str]

    @property
    def num_label_tokens(self) -> int:
        # The model predicts labels[:, 1:] (shifted), so that is what the loss averages over.
        return int((self.labels[:, 1:] != IGNORE_INDEX).sum())

    def loss_units(self, average: str) -> int:
        """What the loss averages over (MiniGPT4.forward's `average`): label tokens, or samples with any."""
        if average == "token":
            return self.num_label_tokens
        return int((self.labels[:, 1:] != IGNORE_INDEX).any(1).sum())


def collate(examples: Sequence[Example], pad_id: int) -> Batch:
    """Right padding: pad id, label IGNORE_INDEX, attention 0. One tensor fill, no model-side loops."""
    T = max(len(e.input_ids) for e in examples)
    ids = torch.full((len(examples), T), pad_id, dtype=torch.long)
    labels = torch.full((len(examples), T), IGNORE_INDEX, dtype=torch.long)
    mask = torch.zeros((len(examples), T), dtype=torch.long)
    for i, e in enumerate(examples):
        n = len(e.input_ids)
        ids[i, :n] = torch.tensor(e.input_ids)
        labels[i, :n] = torch.tensor(e.labels)
        mask[i, :n] = 1
    return Batch(ids, mask, labels, [e.key for e in examples])


def build_source(kind: str, name: str, path: Path, *, weight: float = 1.0, clean: bool | None = None,
                 seed: int = 0, image_folder: Path | None = None, tasks: Sequence[str] | None = None) -> Source:
    kw = dict(weight=weight, clean=clean)
    if tasks and kind != "llava":
        raise ValueError(f"data source '{name}': 'tasks' selects conversations of a llava source, not {kind}")
    if kind == "webdataset":
        return WebDatasetSource(name, expand_shards(str(path)), seed=seed, **kw)
    if kind == "folder":
        return FolderSource(name, path, **kw)
    if kind == "cc_sbu_align":
        return CCSBUAlignSource(name, path, **kw)
    if kind == "llava":
        return LlavaSource(name, path, image_folder=image_folder, tasks=tasks, **kw)
    raise ValueError(f"unknown data source type '{kind}'; use webdataset, folder, cc_sbu_align or llava")

"""Stage-0 data: world images made on the fly, their texts as compact token ids, and labels.

Batches are addressed by step: batch `step` is `world.mixture(seed=base + step, n=batch_size,
split="train")`, so a resumed run sees exactly the batches it would have seen, with no data
position to replay. Only split="train" is used for training (held-out object kinds never
appear); the probe uses split="val".

The text tower uses the bundled SmolLM2 tokenizer, but only the few thousand token ids the
world's texts use (`Vocab`): a 49k-way softmax would cost more than the ViT on a CPU.
"""
from __future__ import annotations

import dataclasses
import random
from dataclasses import dataclass
from functools import lru_cache

import torch

from minigpt4.config import BUNDLED_TOKENIZER, CLIP_MEAN, CLIP_STD
from minigpt4.data.image import preprocess
from minigpt4.world.textgen import POSITIONS

PAD, UNK, SEP = 0, 1, 2   # compact ids; SEP ends an answer line and the whole sequence
SPECIALS = 3
IGNORE = -100


def world_texts(sample) -> list[str]:
    return [sample.caption] + [f"{q['question']} {q['answer']}" for q in sample.qa]


def labels_of(sample) -> set[str]:
    """Ground-truth attribute labels of one sample (the auxiliary heads' multi-label targets):
    object/ingredient names, colours, counts, positions, kind, background, style, page blocks."""
    t = sample.truth
    out = {f"kind:{sample.kind}"}
    if t.get("background"):
        out.add(f"bg:{t['background']}")
    if sample.kind == "scene":
        for o in t["objects"]:
            out |= {f"obj:{o['name']}", f"count:{o['count']}", f"pos:{o['position']}"}
            if o.get("color"):
                out.add(f"color:{o['color']}")
            if o.get("size"):
                out.add(f"size:{o['size']}")
    elif sample.kind == "dish":
        out |= {f"dish:{t['dish']}", f"container:{t['container']}"}
        out |= {f"obj:{i['name']}" for i in t["ingredients"]}
    elif sample.kind == "sketch":
        out |= {f"block:{b['type']}" for b in t["blocks"]}
    elif sample.kind == "prompt":
        out.add(f"style:{t['style']}")
        for s in t["subjects"]:
            out |= {f"obj:{s['noun']}", f"count:{s['count']}"}
            if s.get("color"):
                out.add(f"color:{s['color']}")
    return out


def load_tokenizer():
    from transformers import AutoTokenizer
    return AutoTokenizer.from_pretrained(BUNDLED_TOKENIZER)


@lru_cache(maxsize=1)
def _tokenizer():
    return load_tokenizer()


@lru_cache(maxsize=8)
def _scan(n: int, kinds: tuple, weights: tuple | None, size: int, seed: int) -> tuple[tuple, tuple]:
    """Token ids and labels used by `n` train samples (deterministic, so cached per process)."""
    from minigpt4.world import mixture
    tok = _tokenizer()
    ids: set[int] = set()
    labels: set[str] = set()
    # A seed stream of its own (negative), so the scan never overlaps training batches.
    for s in mixture(-1 - seed, n, "train", kinds, weights, size):
        for enc in tok(world_texts(s), add_special_tokens=False)["input_ids"]:
            ids.update(enc)
        labels |= labels_of(s)
    return tuple(sorted(ids)), tuple(sorted(labels))


class Vocab:
    """Compact token ids (PAD, UNK, SEP, then the SmolLM2 ids seen in world texts) and the label
    set of the aux heads. Built once from a deterministic scan and saved with the checkpoint."""

    def __init__(self, token_ids: list[int], labels: list[str], tokenizer=None):
        self.token_ids = list(token_ids)
        self.labels = list(labels)
        self.to_compact = {t: i + SPECIALS for i, t in enumerate(self.token_ids)}
        self.label_index = {name: i for i, name in enumerate(self.labels)}
        self.tokenizer = tokenizer or _tokenizer()
        self.cells = CellClasses(self.labels)

    @property
    def size(self) -> int:
        return len(self.token_ids) + SPECIALS

    @classmethod
    def scan(cls, n: int, kinds, weights, size: int, seed: int = 0) -> "Vocab":
        ids, labels = _scan(n, tuple(kinds), None if weights is None else tuple(weights), size, seed)
        return cls(list(ids), list(labels), _tokenizer())

    def state(self) -> dict:
        return {"token_ids": self.token_ids, "labels": self.labels}

    @classmethod
    def from_state(cls, state: dict) -> "Vocab":
        return cls(state["token_ids"], state["labels"])

    def encode(self, texts: list[str]) -> list[list[int]]:
        enc = self.tokenizer(texts, add_special_tokens=False)["input_ids"]
        return [[self.to_compact.get(t, UNK) for t in ids] for ids in enc]

    def decode(self, ids: list[int]) -> str:
        real = [self.token_ids[i - SPECIALS] for i in ids if i >= SPECIALS]
        return self.tokenizer.decode(real)

    def label_vector(self, names: set[str]) -> torch.Tensor:
        v = torch.zeros(len(self.labels))
        for name in names:
            if name in self.label_index:
                v[self.label_index[name]] = 1.0
        return v


# Scenes put each object group in one cell of a 3x3 grid (world.textgen.POSITIONS, row-major).
CELL_NAMES = [p for row in POSITIONS for p in row]
CELL_FIELDS = ("count", "color", "size")  # per-cell targets, in this order


class CellClasses:
    """Class lists of the per-cell heads, taken from the vocab's label set (so an export's vocab
    fixes them): count 0 (empty) to MAX_COUNT, colours, sizes, and the object name ("empty" first,
    then every `obj:` label; its own low-rank head, model.cell_name_logits)."""
    MAX_COUNT = 4
    EMPTY = "empty"

    def __init__(self, labels: list[str]):
        group = lambda g: [name.split(":", 1)[1] for name in labels if name.startswith(g + ":")]
        self.classes = {"count": [str(i) for i in range(self.MAX_COUNT + 1)],
                        "color": group("color"), "size": group("size")}
        self.index = {f: {c: i for i, c in enumerate(cs)} for f, cs in self.classes.items()}
        self.names = [self.EMPTY] + group("obj")
        self.name_index = {n: i for i, n in enumerate(self.names)}

    def name_targets(self, sample) -> torch.Tensor:
        """(9,) class ids of the object name in each cell (0 = empty); IGNORE on non-scene images,
        on a cell holding two groups, and for names outside the vocab's labels."""
        out = torch.full((len(CELL_NAMES),), IGNORE, dtype=torch.long)
        if sample.kind != "scene":
            return out
        out[:] = 0
        seen: set[int] = set()
        for o in sample.truth["objects"]:
            cell = CELL_NAMES.index(o["position"])
            out[cell] = IGNORE if cell in seen else self.name_index.get(o["name"], IGNORE)
            seen.add(cell)
        return out

    @property
    def sizes(self) -> list[int]:
        return [len(self.classes[f]) for f in CELL_FIELDS]

    def targets(self, sample) -> torch.Tensor:
        """(9, 3) class ids per cell: count (0 = empty), colour, size; IGNORE where a
        field does not apply (empty cell, no colour) and on every cell of non-scene images."""
        out = torch.full((len(CELL_NAMES), len(CELL_FIELDS)), IGNORE, dtype=torch.long)
        if sample.kind != "scene":
            return out
        out[:, 0] = 0
        for o in sample.truth["objects"]:
            cell = CELL_NAMES.index(o["position"])
            values = {"count": str(min(o["count"], self.MAX_COUNT)),
                      "color": o.get("color"), "size": o.get("size") if o["count"] == 1 else None}
            for j, f in enumerate(CELL_FIELDS):
                if values[f] is not None and values[f] in self.index[f]:
                    out[cell, j] = self.index[f][values[f]]
        return out


@dataclass
class Batch:
    pixels: torch.Tensor       # (B, 3, S, S)
    caption_ids: torch.Tensor  # (B, T) ITC text, PAD-padded
    itg_ids: torch.Tensor      # (B, T) decoder input: QA lines then caption, SEP-terminated
    itg_labels: torch.Tensor   # (B, T) next-token targets (IGNORE on questions and padding)
    labels: torch.Tensor       # (B, L) aux multi-label targets
    cells: torch.Tensor        # (B, 9, 3) per-cell targets (CellClasses.targets)
    cell_names: torch.Tensor   # (B, 9) per-cell object name ids (CellClasses.name_targets)

    def _map(self, fn) -> "Batch":
        return Batch(**{f.name: fn(getattr(self, f.name)) for f in dataclasses.fields(self)})

    def to(self, device) -> "Batch":
        return self._map(lambda t: t.to(device, non_blocking=True))

    def pin_memory(self) -> "Batch":  # DataLoader(pin_memory=True) calls this on custom batch types
        return self._map(lambda t: t.pin_memory())


def _pad(rows: list[list[int]], value: int) -> torch.Tensor:
    width = max(1, max(len(r) for r in rows))
    return torch.tensor([r + [value] * (width - len(r)) for r in rows], dtype=torch.long)


def itg_sequence(vocab: Vocab, sample, rng: random.Random, qa_pairs: int, max_len: int,
                 prefer: tuple[str, ...] = ()):
    """[q1 a1 SEP q2 a2 SEP caption SEP]: loss on answers and caption, not on questions (the
    questions are the prompt, as in MiniGPT-4's instruction data). Question types in `prefer` are
    drawn before the others (random order within each group)."""
    if prefer:
        shuffled = rng.sample(sample.qa, len(sample.qa))
        picked = sorted(shuffled, key=lambda q: q["type"] not in prefer)[:qa_pairs]
    else:  # the draw the shipped stage 0 was trained with
        picked = rng.sample(sample.qa, min(qa_pairs, len(sample.qa)))
    questions = vocab.encode([q["question"] for q in picked])
    answers = vocab.encode([" " + q["answer"] for q in picked])
    caption = vocab.encode([sample.caption])[0]
    ids, train = [], []
    for q, a in zip(questions, answers):
        ids += q + a + [SEP]
        train += [False] * len(q) + [True] * (len(a) + 1)
    ids += caption + [SEP]
    train += [True] * (len(caption) + 1)
    ids, train = ids[:max_len], train[:max_len]
    # labels[t] is the token at t, predicted from positions < t (the model shifts).
    labels = [i if keep else IGNORE for i, keep in zip(ids, train)]
    return ids, labels


def make_batch(vocab: Vocab, samples, size: int, qa_pairs: int, max_len: int, seed: int,
               mean=CLIP_MEAN, std=CLIP_STD, prefer: tuple[str, ...] = ()) -> Batch:
    rng = random.Random(f"stage0-itg:{seed}")
    pixels = preprocess([s.image for s in samples], size, mean, std)
    captions = [c[:max_len] for c in vocab.encode([s.caption for s in samples])]
    seqs = [itg_sequence(vocab, s, rng, qa_pairs, max_len, prefer) for s in samples]
    return Batch(pixels=pixels, caption_ids=_pad(captions, PAD),
                 itg_ids=_pad([ids for ids, _ in seqs], PAD),
                 itg_labels=_pad([lab for _, lab in seqs], IGNORE),
                 labels=torch.stack([vocab.label_vector(labels_of(s)) for s in samples]),
                 cells=torch.stack([vocab.cells.targets(s) for s in samples]),
                 cell_names=torch.stack([vocab.cells.name_targets(s) for s in samples]))


def train_batch(vocab: Vocab, step: int, cfg, size: int) -> Batch:
    """Batch number `step` of the training stream (deterministic in (cfg.seed, step))."""
    return make_batch(vocab, train_samples(step, cfg, size), size, cfg.text.qa_pairs, cfg.text.max_len,
                      train_seed(step, cfg), prefer=tuple(cfg.text.qa_prefer))


class StepBatches(torch.utils.data.Dataset):
    """Training batches `start`, `start + 1`, ... as a dataset, so a DataLoader's worker processes
    draw the world in parallel (item i is train_batch(start + i): the same stream as one thread)."""

    def __init__(self, vocab: Vocab, cfg, size: int, start: int, stop: int):
        self.vocab, self.cfg, self.size, self.start, self.stop = vocab, cfg, size, start, stop

    def __len__(self) -> int:
        return self.stop - self.start

    def __getitem__(self, i: int) -> Batch:
        return train_batch(self.vocab, self.start + i, self.cfg, self.size)


def train_seed(step: int, cfg) -> int:
    return cfg.seed * 100_000_000 + step


def train_samples(step: int, cfg, size: int) -> list:
    """The world samples of training batch `step`."""
    from minigpt4.world import mixture
    return list(mixture(train_seed(step, cfg), cfg.batch_size, "train", cfg.kinds, cfg.weights, size))

"""Chunk-end probe on held-out val images (split="val": train object kinds, unseen seeds).

  * itc_r1   - image -> caption retrieval top-1 among the probe images (chance 1/n)
  * qa_<type> - greedy answers of the stage-0 decoder to the world's questions, exact match,
                per question type (presence, count, color, position, ...) and overall `qa`
  * aux_f1_<group> - F1 of the aux heads (threshold 0.5) per label group (obj, color, count, pos)
  * cell_<field> - accuracy of the per-cell heads on scene cells: count (every cell, 0 = empty),
                colour / size (occupied cells); cell_name: the object kind of occupied cells
These say whether the query outputs carry identity, colour, count and position before any LLM
sees them; the stage-0 decoder is far weaker than the LLM, so they are lower bounds.
"""
from __future__ import annotations

import json
import random
from collections import defaultdict
from functools import lru_cache
from pathlib import Path

import torch
import torch.nn.functional as F

from minigpt4.pretrain.data import CELL_FIELDS, IGNORE, PAD, SEP, Vocab, labels_of, make_batch
from minigpt4.pretrain.model import recall_at_k


@lru_cache(maxsize=4)
def _probe_samples(n: int, kinds: tuple, size: int, split: str = "val"):
    from minigpt4.world import mixture
    return list(mixture(0, n, split, kinds, None, size))


@torch.no_grad()
def greedy_answers(model, queries: torch.Tensor, prompts: list[list[int]], max_new: int = 6) -> list[list[int]]:
    """Greedy continuation of each prompt until SEP, one question per query row. Prompts are
    left-aligned and decoded in lockstep; each row reads its own last real position."""
    B = len(prompts)
    lengths = torch.tensor([len(p) for p in prompts])
    width = int(lengths.max()) + max_new
    ids = torch.full((B, width), PAD, dtype=torch.long)
    for i, p in enumerate(prompts):
        ids[i, : len(p)] = torch.tensor(p)
    done = torch.zeros(B, dtype=torch.bool)
    out: list[list[int]] = [[] for _ in range(B)]
    cur = lengths.clone()
    for _ in range(max_new):
        logits = model.text.decode(queries, ids[:, : int(cur.max())])
        nxt = logits[torch.arange(B), cur - 1].argmax(-1)
        for i in range(B):
            if not done[i]:
                if int(nxt[i]) == SEP:
                    done[i] = True
                else:
                    out[i].append(int(nxt[i]))
                    ids[i, cur[i]] = nxt[i]
        cur = torch.where(done, cur, cur + 1)
        if done.all():
            break
    return out


def _f1(pred: torch.Tensor, gold: torch.Tensor) -> float:
    tp = float((pred * gold).sum())
    denom = float(pred.sum() + gold.sum())
    return 2 * tp / denom if denom else 1.0


@torch.no_grad()
def probe(model, vocab: Vocab, cfg, size: int, mean, std, split: str = "val") -> dict[str, float]:
    was_training = model.training
    model.eval()
    samples = _probe_samples(cfg.probe_n, tuple(cfg.kinds), size, split)
    batch = make_batch(vocab, samples, size, cfg.text.qa_pairs, cfg.text.max_len, seed=0, mean=mean, std=std)
    q = model.queries(batch.pixels)
    metrics: dict[str, float] = {}
    # Retrieval: max-over-queries similarity, as in training.
    img = F.normalize(model.itc_image(q), dim=-1)
    txt = F.normalize(model.itc_text(model.text.encode(batch.caption_ids)), dim=-1)
    sim = torch.einsum("iqd,jd->ijq", img, txt).amax(-1)
    metrics["itc_r1"] = float((sim.argmax(1) == torch.arange(len(samples))).float().mean())
    # QA: up to probe_qa questions per image, each asked on its own ("question" -> " answer").
    rng = random.Random("stage0-probe")
    rows, prompts, golds, types = [], [], [], []
    for i, s in enumerate(samples):
        for qa in rng.sample(s.qa, min(cfg.probe_qa, len(s.qa))):
            rows.append(i)
            prompts.append(vocab.encode([qa["question"]])[0][: cfg.text.max_len - 8])
            golds.append(qa["answer"].strip().lower())
            types.append(qa["type"])
    correct: dict[str, list[bool]] = defaultdict(list)
    for start in range(0, len(rows), 128):
        sl = slice(start, start + 128)
        answers = greedy_answers(model, q[rows[sl]], prompts[sl])
        for ans, gold, typ in zip(answers, golds[sl], types[sl]):
            ok = vocab.decode(ans).strip().lower() == gold
            correct[typ].append(ok)
            correct["all"].append(ok)
    for typ, oks in sorted(correct.items()):
        metrics["qa" if typ == "all" else f"qa_{typ}"] = sum(oks) / len(oks)
    # Aux heads, F1 per label group.
    pred = (model.aux(q.mean(1)).sigmoid() > 0.5).float()
    groups = defaultdict(list)
    for j, name in enumerate(vocab.labels):
        groups[name.split(":", 1)[0]].append(j)
    for g in ("obj", "color", "count", "pos"):
        if groups.get(g):
            idx = torch.tensor(groups[g])
            metrics[f"aux_f1_{g}"] = _f1(pred[:, idx], batch.labels[:, idx])
    for j, (field, logits) in enumerate(zip(CELL_FIELDS, model.cell_logits(q))):
        gold = batch.cells[..., j]
        keep = gold != IGNORE
        if keep.any():
            metrics[f"cell_{field}"] = float((logits.argmax(-1)[keep] == gold[keep]).float().mean())
    occupied = batch.cell_names > 0  # the name head on cells holding one group ("empty" is easy)
    if occupied.any():
        metrics["cell_name"] = float((model.cell_name_logits(q).argmax(-1)[occupied]
                                      == batch.cell_names[occupied]).float().mean())
        # Names read from single queries (what a per-query projection can pass on): recall@k, k = objects present;
        # query_word: the same through the map onto the LLM's word embeddings.
        present = [{int(c) for c in cells if 0 < int(c) != IGNORE} for cells in batch.cell_names]
        heads = {"query_name": model.query_name_scores}
        if hasattr(model, "query_word"):
            heads["query_word"] = model.query_word_scores
        for key, name_scores in heads.items():
            scores = name_scores(q)
            scores[:, 0] = float("-inf")  # "empty" is no object
            hit, total = recall_at_k(scores, present)
            metrics[key] = hit / total
    model.train(was_training)
    return {k: round(v, 4) for k, v in metrics.items()}


__all__ = ["probe", "greedy_answers", "labels_of"]


# Metrics that a head the export predates would report as noise (see loop.NEW_HEADS).
HEAD_METRICS = {"cell_name": ("cell_name",), "cell_head": ("cell_count", "cell_color", "cell_size"),
                "query_name": ("query_name",), "query_word": ("query_word",)}


def probe_export(export_dir, split: str = "val", n: int | None = None) -> dict[str, float]:
    """The chunk-end probe of a committed export, on any world split: `test` has an object kind never
    seen in training in every image (what `minigpt4 eval` scores), `val` only unseen seeds. Runs on
    the CPU; metrics of heads the export predates are left out."""
    from minigpt4.pretrain.config import Stage0Config
    from minigpt4.pretrain.loop import Run
    export_dir = Path(export_dir)
    if not (export_dir / "stage0.json").is_file():
        raise FileNotFoundError(f"'{export_dir}' is not a stage-0 export (no stage0.json); pass a folder "
                                f"written by `minigpt4 pretrain-vision`, e.g. checkpoints/default/stage0-gpu")
    meta = json.loads((export_dir / "stage0.json").read_text())
    cfg = Stage0Config.from_dict({**meta["config"], "device": "cpu", "amp": None, "workers": 0,
                                  "init_from": None, "export_dir": None, "probe_n": n or meta["config"]["probe_n"]})
    run = Run(cfg, Vocab.from_state(meta["vocab"]))
    fresh = run.load_export_weights(export_dir)
    absent = [p for p in HEAD_METRICS if any(k.startswith(p) for k in fresh)]
    rest = [k for k in fresh if not k.startswith(tuple(HEAD_METRICS))]
    if rest:  # its own recipe builds these, so the export must hold them
        raise ValueError(f"export '{export_dir}' lacks {rest[:5]}, which its own recipe's model has")
    metrics = probe(run.model, run.vocab, cfg, run.size, run.preset.image_mean, run.preset.image_std, split)
    dropped = {m for p in absent for m in HEAD_METRICS[p]}
    return {k: v for k, v in metrics.items() if k not in dropped}


def main(argv: list[str] | None = None) -> int:
    import argparse
    ap = argparse.ArgumentParser(prog="python -m minigpt4.pretrain.probe",
                                 description="Probe a stage-0 export on a world split (val: training object "
                                             "kinds; test: held-out kinds, as minigpt4 eval).")
    ap.add_argument("export", help="a stage-0 export folder, e.g. checkpoints/default/stage0-gpu")
    ap.add_argument("--split", default="val", choices=["val", "test"])
    ap.add_argument("--n", type=int, help="images (default: the recipe's probe_n)")
    a = ap.parse_args(argv)
    print(json.dumps(probe_export(a.export, a.split, a.n), indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

"""What do the frozen query outputs hold? Linear probes on a model's vision features.

    python -m minigpt4.pretrain.linear_probe default@stage0 --n 3000

Scenes with exactly one kind of object (val split) are encoded once; for each attribute (position,
colour, count, size) a logistic regression on the flattened Q-Former outputs is fit on 75% of them
and scored on the rest, next to the majority-class baseline. An attribute whose probe is no better
than the majority is not in the features: no projection or LLM adapter trained later can recover it,
only stage 0 can (the default model's session-3 finding: position 14% vs 14% majority).
`--features vit` probes the ViT tokens the Q-Former reads instead: session 4 found position there
(73%) but not in the queries (28%), which is why the Q-Former got an image position table.
`--cells` probes binding in multi-object scenes (the colour / count of the group in each region):
session 5 found the queries at the empty-region majority (colour 78%, count 77% vs 76%) where the
ViT tokens held more (82%, 85%). Session 6's continued stage 0 (checkpoints/default/stage0-binding)
raised the occupied-region rows: colour of coloured groups 17% -> 30%, count 24% -> 39%.
`--words` asks what MiniGPT-4's projection can pass on about WHAT is in a scene: one linear map shared by
all queries (the projection's shape) is fit to put, for every object present, some query's token near
the LLM's own input embedding of the object's name; scored as recall@k of the names present on held-out
scenes. Session 16 (defaults): stage0-gpu 29.1%, after stage0-query.yaml's 20 CPU minutes 49.7% (chance 0.55%).
`--llm-read` asks what the model's own LLM reads, with nothing fit: "What is in this image?", the answer begun
with "The image shows a", recall@k of the names present over the next-token scores of all names' first tokens.
Session 17 (300 val scenes): shipped default 1.3%, default@stage1 0.4%, default@stage0-word 3.3% (frozen LLM).
"""
from __future__ import annotations

import argparse
from collections import Counter

import torch
import torch.nn.functional as F

from minigpt4.pretrain.model import present_ce, recall_at_k

ATTRIBUTES = ("position", "color", "count", "size")


@torch.no_grad()
def encode(model, samples, batch_size: int = 64, where: str = "queries") -> torch.Tensor:
    """Flattened features per image: the Q-Former outputs ("queries", what the LLM gets) or the
    ViT's patch tokens after ln_vision ("vit", what the Q-Former reads)."""
    def feats(pixels):
        if where == "queries":
            return model.vision_features(pixels)
        return model.ln_vision(model.visual_encoder(pixels))[:, 1:]
    out = [feats(model.preprocess([s.image for s in samples[i:i + batch_size]])).flatten(1)
           for i in range(0, len(samples), batch_size)]
    return torch.cat(out).float()


def probe_attribute(feats: torch.Tensor, labels: list[str], steps: int = 300, seed: int = 0,
                    blank: tuple[str, ...] = ()) -> dict:
    """Logistic regression (standardised inputs, Adam) on the first 75%, scored on the last 25%.
    With `blank` (labels such as "empty region"), also scored on the test rows with another label:
    most region rows are empty, a majority a probe reaches knowing nothing of the objects."""
    classes = sorted(set(labels))
    y = torch.tensor([classes.index(v) for v in labels])
    cut = int(len(y) * 0.75)
    mu, sd = feats[:cut].mean(0), feats[:cut].std(0) + 1e-5
    x = (feats - mu) / sd
    g = torch.Generator().manual_seed(seed)
    w = (torch.randn(x.shape[1], len(classes), generator=g) * 1e-3).requires_grad_()
    b = torch.zeros(len(classes), requires_grad=True)
    opt = torch.optim.Adam([w, b], lr=1e-2, weight_decay=1e-3)
    with torch.enable_grad():
        for _ in range(steps):
            opt.zero_grad()
            F.cross_entropy(x[:cut] @ w + b, y[:cut]).backward()
            opt.step()
    with torch.no_grad():
        hit = (x[cut:] @ w + b).argmax(1) == y[cut:]
    test = labels[cut:]
    majority = Counter(test).most_common(1)[0][1] / max(1, len(test))
    out = {"n": len(labels), "classes": len(classes), "probe": round(float(hit.float().mean()), 3),
           "majority": round(majority, 3)}
    if blank:
        occupied = torch.tensor([v not in blank for v in test])
        if occupied.any():
            filled = [v for v in test if v not in blank]
            out["occupied"] = {"n": sum(v not in blank for v in labels),
                               "probe": round(float(hit[occupied].float().mean()), 3),
                               "majority": round(Counter(filled).most_common(1)[0][1] / len(filled), 3)}
    return out


def run(model, n: int = 3000, seed: int = 7, size: int | None = None, where: str = "queries") -> dict[str, dict]:
    from minigpt4.world import mixture
    size = size or model.cfg.vision.image_size
    single = [s for s in mixture(seed, n, "val", ("scene",), None, size)
              if len([o for o in s.truth["objects"] if o.get("type") != "text"]) == 1]
    if len(single) < 8:
        raise ValueError(f"only {len(single)} single-object scenes in {n} images: pass a larger --n")
    feats = encode(model.eval(), single, where=where)
    out = {}
    for attr in ATTRIBUTES:
        rows = [(f, str(o[attr])) for f, s in zip(feats, single)
                for o in s.truth["objects"] if o.get("type") != "text" and o.get(attr) is not None]
        if len({v for _, v in rows}) > 1:
            out[attr] = probe_attribute(torch.stack([f for f, _ in rows]), [v for _, v in rows])
    return out


def run_cells(model, n: int = 3000, seed: int = 7, size: int | None = None, where: str = "queries") -> dict[str, dict]:
    """Binding in multi-object scenes: for each of the 9 regions, a probe for the colour and the
    count of the object group there ("none" / 0 where the region is empty), on all val scenes.
    The single-object probes above cannot tell whether the features keep which colour goes with
    which object; a question like "What color is the car?" needs exactly that. Scores are averaged
    over the regions, weighted by their samples (scenes with two groups in one region are left out
    of that region's probe); each attribute has a second row scored only where the region holds a
    (coloured) group."""
    from minigpt4.world import mixture
    from minigpt4.world.textgen import POSITION_NAMES
    size = size or model.cfg.vision.image_size
    scenes = list(mixture(seed, n, "val", ("scene",), None, size))
    feats = encode(model.eval(), scenes, where=where)
    # occupants[i][cell]: the object groups scene i has in that region
    occupants = [{cell: [o for o in sc.truth["objects"] if o.get("type") != "text" and o.get("position") == cell]
                  for cell in POSITION_NAMES} for sc in scenes]
    out = {}
    # The second row of each attribute: regions holding a group (for colour: a coloured one; emoji
    # have no colour and are most groups, so "uncoloured" would be the majority there).
    for attr, blank, subset in (("color", ("none", "uncoloured"), "coloured groups"),
                                ("count", ("0",), "occupied regions")):
        empty = blank[0]  # the label of an empty region
        per_cell = []
        for cell in POSITION_NAMES:
            rows = [(f, str(occ[cell][0].get(attr) or "uncoloured") if occ[cell] else empty)  # emoji: no colour
                    for f, occ in zip(feats, occupants) if len(occ[cell]) <= 1]
            if len({v for _, v in rows}) > 1:
                per_cell.append(probe_attribute(torch.stack([f for f, _ in rows]), [v for _, v in rows],
                                                blank=blank))
        if per_cell:
            out[attr] = _mean_over_regions(per_cell)
            filled = [r["occupied"] for r in per_cell if "occupied" in r]
            if filled:  # the same probes, scored on the occupied regions only
                out[f"{attr}, {subset}"] = _mean_over_regions(filled, classes=out[attr]["classes"])
    return out


def _mean_over_regions(rows: list[dict], classes: int | None = None) -> dict:
    """Region probes -> one row: samples summed, accuracies averaged (sample-weighted)."""
    n = sum(r["n"] for r in rows)
    return {"n": n, "classes": classes or max(r["classes"] for r in rows),
            "probe": round(sum(r["probe"] * r["n"] for r in rows) / n, 3),
            "majority": round(sum(r["majority"] * r["n"] for r in rows) / n, 3)}


def word_readout(feats: torch.Tensor, present: list[list[int]], words: torch.Tensor, steps: int = 2000,
                 batch: int = 256, lr: float = 2e-3, holdout: float = 0.2, seed: int = 0) -> dict:
    """Fit one Linear(H -> D) shared by all queries so that each image's present words (ids into `words`,
    (K, D) target vectors) are found by some query: score(image, word) = max over queries of the cosine,
    a softmax over all K words per word present (the image's other present words masked out). Trained
    on the first (1 - holdout) of the images; returns recall@k on the rest (k = words present there)."""
    g = torch.Generator().manual_seed(seed)
    n, _, hidden = feats.shape
    cut = int(n * (1 - holdout))
    targets = F.normalize(words.float(), dim=-1)
    present_mask = torch.zeros(n, len(words), dtype=torch.bool)
    for i, ids in enumerate(present):
        present_mask[i, ids] = True
    torch.manual_seed(seed)
    lin = torch.nn.Linear(hidden, words.shape[1])
    log_scale = torch.nn.Parameter(torch.tensor(3.0))
    opt = torch.optim.AdamW([*lin.parameters(), log_scale], lr=lr, weight_decay=0.01)

    def scores(x):
        return torch.einsum("bqd,kd->bkq", F.normalize(lin(x), dim=-1), targets).amax(-1)
    train = [i for i in range(cut) if present[i]]
    if not train:
        raise ValueError("no training image has a word present: draw more images")
    with torch.enable_grad():
        for _ in range(steps):
            rows = torch.tensor(train)[torch.randint(0, len(train), (batch,), generator=g)]
            loss = present_ce(scores(feats[rows].float()) * log_scale.exp(), present_mask[rows])
            opt.zero_grad()
            loss.backward()
            opt.step()
    hit = total = 0
    with torch.no_grad():
        for start in range(cut, n, 512):
            h, t = recall_at_k(scores(feats[start:start + 512].float()), present[start:start + 512])
            hit, total = hit + h, total + t
    if not total:
        raise ValueError("no held-out image has a word present: draw more images")
    return {"n": n - cut, "objects": total, "recall": round(hit / total, 3),
            "chance": round(sum(len(p) for p in present[cut:]) / max(1, n - cut) / len(words), 4)}


def val_scenes_with_names(n: int, seed: int, size: int) -> tuple[list[str], list, list[list[int]]]:
    """(names, scenes, present): every object name of the val split's kinds (sorted), `n` val scenes, and per
    scene the ids into `names` of the objects it holds. Shared by --words and --llm-read."""
    from minigpt4.world import mixture
    from minigpt4.world.vocab import object_kinds
    names = sorted({o.name for o in object_kinds("val")})
    index = {name: i for i, name in enumerate(names)}
    scenes = list(mixture(seed, n, "val", ("scene",), None, size))
    present = [sorted({index[o["name"]] for o in s.truth["objects"] if o.get("name") in index}) for s in scenes]
    return names, scenes, present


def run_words(model, n: int = 10000, seed: int = 7, size: int | None = None, steps: int = 2000) -> dict:
    """word_readout on the Q-Former outputs of `n` val scenes (object kinds seen in training), against the
    mean input embedding of the tokens of each object name (" name") in the model's own LLM."""
    names, scenes, present = val_scenes_with_names(n, seed, size or model.cfg.vision.image_size)
    table = model.llm.get_input_embeddings().weight.detach().float()
    words = torch.stack([table[model.tokenizer(" " + name, add_special_tokens=False)["input_ids"]].mean(0)
                         for name in names])
    feats = encode(model.eval(), scenes).unflatten(1, (-1, model.proj.in_features))  # (n, queries, hidden)
    return {"names": len(names), **word_readout(feats, present, words, steps=steps)}


@torch.no_grad()
def run_llm_read(model, n: int = 300, seed: int = 7, size: int | None = None, batch_size: int = 20) -> dict:
    """Does the model's LLM read the names from the image tokens, as it is (no fitting)? For `n` val scenes, the
    user asks "What is in this image?" and the answer starts "The image shows a"; the LLM's next-token scores over
    the first tokens of all object names (" name") give recall@k of the names present (k = how many)."""
    from minigpt4.chat.templates import Message, encode_conversation, get_template
    from minigpt4.model.minigpt4 import first_token_ids
    names, scenes, present = val_scenes_with_names(n, seed, size or model.cfg.vision.image_size)
    tok = model.tokenizer
    first = torch.tensor(first_token_ids(tok, names))
    ids, _ = encode_conversation(tok, get_template(model.cfg.template, tokenizer=tok),
                                 [Message("user", "What is in this image?", images=["image"])],
                                 model.cfg.num_image_tokens)
    ids = torch.tensor([ids + tok("The image shows a", add_special_tokens=False)["input_ids"]])
    model.eval()
    scores = []
    for i in range(0, n, batch_size):
        chunk = scenes[i:i + batch_size]
        tokens = model.encode_pixels(model.preprocess([s.image for s in chunk]))
        embeds = model.embed(ids.expand(len(chunk), -1), tokens)
        scores.append(model.llm(inputs_embeds=embeds).logits[:, -1].float()[:, first])
    hit, total = recall_at_k(torch.cat(scores), present)
    return {"n": n, "objects": total, "recall": hit / max(1, total)}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="python -m minigpt4.pretrain.linear_probe", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("model", nargs="?", default="default@stage0", help="model spec (default: default@stage0)")
    ap.add_argument("--n", type=int, default=3000, help="val scenes to draw (about 1 in 4 has one object kind)")
    ap.add_argument("--features", choices=("queries", "vit"), default="queries",
                    help="probe the Q-Former outputs (default) or the ViT tokens they are read from")
    ap.add_argument("--cells", action="store_true",
                    help="multi-object scenes: colour and count of the group in each of the 9 regions")
    ap.add_argument("--words", action="store_true",
                    help="object names read from single queries by one shared linear map into the LLM's word "
                         "embeddings (what the projection can pass on); --n scenes, 80%% fit, 20%% scored")
    ap.add_argument("--llm-read", action="store_true",
                    help="names the model's own LLM reads from the image as it is (no fitting): recall@k of the "
                         "first token after \"The image shows a\" over all names; --n scenes (default here 300)")
    a = ap.parse_args(argv)
    from minigpt4.weights import load_model
    if a.llm_read:
        r = run_llm_read(load_model(a.model, quantize=None), a.n if a.n != ap.get_default("n") else 300)
        print(f"| model | val scenes | objects | names read (recall@k) |\n|---|---:|---:|---:|\n"
              f"| {a.model} | {r['n']} | {r['objects']} | {r['recall']:.1%} |")
        return 0
    if a.words:
        r = run_words(load_model(a.model, quantize=None), a.n)
        print(f"| names | held-out scenes | objects | recall@k | chance |\n|---:|---:|---:|---:|---:|\n"
              f"| {r['names']} | {r['n']} | {r['objects']} | {r['recall']:.1%} | {r['chance']:.2%} |")
        return 0
    results = (run_cells if a.cells else run)(load_model(a.model), a.n, where=a.features)
    print(f"| attribute | {'region samples' if a.cells else 'scenes'} | classes | linear probe | majority class |\n"
          f"|---|---:|---:|---:|---:|")
    for attr, r in results.items():
        print(f"| {attr} | {r['n']} | {r['classes']} | {r['probe']:.0%} | {r['majority']:.0%} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

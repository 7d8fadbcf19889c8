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
"""
from __future__ import annotations

import argparse
from collections import Counter

import torch
import torch.nn.functional as F

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


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="python -m minigpt4.pretrain.linear_probe", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("model", nargs="?", default="default@stage0", help="model spec (default: default@stage0)")
    ap.add_argument("--n", type=int, default=3000, help="val scenes to draw (about 1 in 4 has one object kind)")
    ap.add_argument("--features", choices=("queries", "vit"), default="queries",
                    help="probe the Q-Former outputs (default) or the ViT tokens they are read from")
    ap.add_argument("--cells", action="store_true",
                    help="multi-object scenes: colour and count of the group in each of the 9 regions")
    a = ap.parse_args(argv)
    from minigpt4.weights import load_model
    results = (run_cells if a.cells else run)(load_model(a.model), a.n, where=a.features)
    print(f"| attribute | {'region samples' if a.cells else 'scenes'} | classes | linear probe | majority class |\n"
          f"|---|---:|---:|---:|---:|")
    for attr, r in results.items():
        print(f"| {attr} | {r['n']} | {r['classes']} | {r['probe']:.0%} | {r['majority']:.0%} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

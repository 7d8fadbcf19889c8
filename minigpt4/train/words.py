"""Fit the word readout (`MiniGPT4.word_proj`) on frozen vision features from the image world's ground truth.

    minigpt4 fit-words default@stage0-word --out checkpoints/default/stage0-word

Each of the Q-Former's queries becomes one of the world's object names or "none": a linear classifier per query,
trained DETR-style (per image, the queries are matched one-to-one to the names present by the Hungarian algorithm on
the classifier's own log-probabilities; matched queries learn their name, the rest learn "none"). No LLM runs: the
readout's tokens are the LLM's own word embeddings, so the frozen LLM reads them as words from the start (stage 1 and
2 may then train it further, with the projection beside it). The fit standardises the features and folds that into
the classifier, keeps the epoch with the best held-out F1 of the names an image shows, raises "none" by the margin that
best trades the names found against false ones on the same held-out images, and writes `proj.safetensors`
(the readout, the plain projection zeroed unless `--keep-proj`) with the word list and the vision side in its metadata.

`--targets regions` (a vision side with one token per region of the world's 3x3 grid, e.g. default@stage0-effnet):
each token's targets are the object group in its region of a scene (the world's truth names the region of each
group), no matching. `--attributes count,size,color` fits a classifier per attribute beside the name's, so a region
reads "two small red apple" (MiniGPT4Config.word_attributes), each with one hidden layer given `--attribute-hidden`
(session 32: colour 66 -> 86% of coloured validation regions at 1024); `--unknown thing` adds a word for kinds the
readout never learned: in each batch a random share of the kinds (`--unknown-share`) loses its own class on its
regions and learns the unknown word there instead (session 23: 81% of the regions showing a held-out kind say "thing",
and 7% of the seen kinds' regions lose their name to it). `--phrases picture,page` adds phrases for the whole picture
before the regions, each slot a classifier on all nine region features side by side (PHRASE_GROUPS;
MiniGPT4Config.image_phrases): "picture: vegetable soup;" and a web page sketch's blocks, "page: <nav 3 <a <header <h1
<row 2 <col <img <footer;" in the HTML's own tokens (sessions 25-26: dish names 99% on the test split, sketch blocks
60-91% per slot).
"""
from __future__ import annotations

import argparse
import copy
import json
import math
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn
from tqdm import tqdm

from minigpt4.model.minigpt4 import WORD_LAYOUTS
from minigpt4.world.regions import region_groups

KINDS = ("scene", "dish")  # images whose truth names objects: scene objects, dish ingredients


def image_kind(index: int, dish_every: int) -> str:
    """The world kind of the fit's `index`-th image: every `dish_every`-th a dish, the rest scenes (0: scenes only)."""
    return KINDS[int(dish_every > 0 and index % dish_every == 0)]


def truth_names(truth: dict) -> list[str]:
    """The object names an image shows, once each (a kind drawn twice is one object with a count)."""
    if truth["kind"] == "dish":
        return list(dict.fromkeys(i["name"] for i in truth["ingredients"]))
    return list(dict.fromkeys(o["name"] for o in truth.get("objects", []) if o.get("name")))


@torch.no_grad()
def extract(model, n: int, split: str, seed: int, batch_size: int = 64, dish_every: int = 5,
            desc: str = "features") -> tuple[torch.Tensor, list[list[str]]]:
    """(n, queries, hidden) frozen features and each image's names, for world images `seed`.. of `split`
    (kinds by `image_kind`)."""
    from minigpt4.world import generate
    feats, names = [], []
    size = model.cfg.input_size
    for start in tqdm(range(seed, seed + n, batch_size), desc=desc, unit="batch"):
        samples = [generate(image_kind(i, dish_every), i, split, size)
                   for i in range(start, min(start + batch_size, seed + n))]
        pixels = model.preprocess([s.image for s in samples])
        feats.append(model.split_features(model.vision_features(pixels))[1].float().cpu())  # what the readout reads
        names += [truth_names(s.truth) for s in samples]
    return torch.cat(feats), names


def match_targets(logp: torch.Tensor, present: list[list[int]]) -> torch.Tensor:
    """(B, Q) class ids: each image's present classes on the queries that score them best one-to-one, 0 elsewhere."""
    from scipy.optimize import linear_sum_assignment
    target = torch.zeros(logp.shape[:2], dtype=torch.long)
    cost = -logp.detach().cpu()
    for b, ids in enumerate(present):
        ids = ids[:logp.shape[1]]
        if ids:
            q, j = linear_sum_assignment(cost[b][:, ids].numpy())
            target[b, torch.as_tensor(q)] = torch.tensor([ids[k] for k in j])
    return target


def name_scores(pred: torch.Tensor, present: list[list[int]]) -> dict:
    """Image-level: recall of the names present, false names per image and F1, from (B, Q) predicted classes."""
    hit = total = false = 0
    for row, ids in zip(pred.tolist(), present):
        said = set(row) - {0}
        hit += len(said & set(ids))
        total += len(ids)
        false += len(said - set(ids))
    recall = hit / max(1, total)
    precision = hit / max(1, hit + false)
    return {"recall": recall, "false_per_image": false / max(1, len(present)),
            "f1": 2 * recall * precision / max(1e-9, recall + precision)}


def linear_classifier(x: torch.Tensor, classes: int, epochs: int, lr: float, batch_size: int, hidden: int = 0):
    """A Linear over x's last dimension (or, with `hidden`, one GELU layer of that many units then a Linear:
    model.minigpt4.attribute_head), AdamW and a cosine schedule over `epochs` passes of `batch_size`, and the
    standardisation (mean, std over every dimension but the last) the classifier reads its inputs through."""
    from minigpt4.model.minigpt4 import attribute_head
    dims = tuple(range(x.dim() - 1))
    mean, std = x.mean(dims), x.std(dims) + 1e-5
    head = attribute_head(x.shape[-1], classes, hidden)
    if hidden:  # the hidden layer's width overfits the 1e-4 decay the linear heads use (session 32: 1e-2, lr 1e-3)
        opt = torch.optim.AdamW(head.parameters(), lr / 3, weight_decay=1e-2)
    else:
        opt = torch.optim.AdamW(head.parameters(), lr, weight_decay=1e-4)
    steps = epochs * -(-len(x) // batch_size)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda i: 0.5 * (1 + math.cos(math.pi * min(i, steps) / steps)))
    return head, opt, sched, mean, std


@torch.no_grad()
def folded(head: nn.Module, mean: torch.Tensor, std: torch.Tensor) -> dict[str, torch.Tensor]:
    """The head's state dict reading raw features: its first Linear's W (x - m) / s + b = (W / s) x + (b - W m / s);
    keys as the head's own ("weight"/"bias" for a Linear, "0.weight" ... for attribute_head's MLP)."""
    state = {k: v.detach().clone() for k, v in head.state_dict().items()}
    first = "0." if isinstance(head, nn.Sequential) else ""
    w = state[first + "weight"] / std
    state[first + "weight"], state[first + "bias"] = w, state[first + "bias"] - w @ mean
    return state


def fit(train_x: torch.Tensor, train_ids: list[list[int]], val_x: torch.Tensor, val_ids: list[list[int]],
        classes: int, epochs: int = 6, none_weight: float = 0.2, lr: float = 3e-3, batch_size: int = 256,
        seed: int = 0, log=print) -> tuple[dict, list[dict]]:
    """Train the classifier; returns the best epoch's {weight, bias} (standardisation folded in) and the history."""
    g = torch.Generator().manual_seed(seed)
    head, opt, sched, mean, std = linear_classifier(train_x, classes, epochs, lr, batch_size)
    standard = lambda x: (x - mean) / std
    weight = torch.ones(classes)
    weight[0] = none_weight  # most queries show nothing; at weight 1 the fit learns to say "none" everywhere
    best, history = None, []
    vx = standard(val_x)
    for epoch in range(epochs):
        order = torch.randperm(len(train_x), generator=g)
        for i in range(0, len(order), batch_size):
            idx = order[i:i + batch_size]
            logp = head(standard(train_x[idx])).log_softmax(-1)
            target = match_targets(logp, [train_ids[j] for j in idx.tolist()])
            loss = F.nll_loss(logp.flatten(0, 1), target.flatten(), weight=weight)
            opt.zero_grad()
            loss.backward()
            opt.step()
            sched.step()
        with torch.no_grad():
            scores = name_scores(head(vx).argmax(-1), val_ids)
        history.append({"epoch": epoch + 1, "loss": loss.item(), **scores})
        log(f"epoch {epoch + 1}: loss {loss.item():.3f}, held-out names recall {scores['recall']:.1%}, "
            f"false names per image {scores['false_per_image']:.2f}, F1 {scores['f1']:.3f}")
        if best is None or scores["f1"] > best[0]:
            best = (scores["f1"], folded(head, mean, std))
    # Then raise "none" by the margin that gives the best held-out F1: a false name is a hallucination to come.
    with torch.no_grad():
        logits = val_x @ best[1]["weight"].T + best[1]["bias"]
        margin, scores = max(((m, name_scores((logits + torch.eye(classes)[0] * m).argmax(-1), val_ids))
                              for m in torch.arange(0, 6.01, 0.5).tolist()), key=lambda ms: ms[1]["f1"])
        best[1]["bias"][0] += margin
    history.append({"epoch": "none margin", "margin": margin, **scores})
    log(f"'none' raised by {margin:g}: held-out names recall {scores['recall']:.1%}, false names per image "
        f"{scores['false_per_image']:.2f}, F1 {scores['f1']:.3f}")
    return best[1], history


# --- region targets (--targets regions) ----------------------------------------------------------------------------
NUMBER_WORDS = ("one", "two", "three", "four", "five", "six")


def region_attribute_words() -> dict[str, list[str]]:
    """Each region attribute's words, in the order they are read before the name: "two small red apple"."""
    from minigpt4.world.vocab import COLORS
    return {"count": list(NUMBER_WORDS), "size": ["small", "medium", "large"], "color": list(COLORS)}


def region_value(group: dict | None, attr: str) -> str | None:
    if group is None:
        return None
    if attr == "count":
        n = group.get("count")
        return NUMBER_WORDS[n - 1] if isinstance(n, int) and 1 <= n <= len(NUMBER_WORDS) else None
    return group.get(attr)


def region_targets(rows: list[list[dict | None]], attr: str, words: list[str]) -> torch.Tensor:
    """(images * regions,) class ids of `attr` (0: an empty region or a value not among `words`)."""
    index = {w: i + 1 for i, w in enumerate(words)}
    return torch.tensor([index.get(region_value(g, attr), 0) for row in rows for g in row])


def picture_phrase(truth: dict) -> str:
    """What a world image is as a whole: a dish's name, a prompt picture's style, "web page sketch", or "objects" for a
    scene."""
    kind = truth["kind"]
    if kind == "dish":
        return truth["dish"]
    if kind == "prompt":
        return truth.get("style") or "illustration"
    return {"sketch": "web page sketch", "scene": "objects"}[kind]


def block_phrase(block: dict) -> str:
    """A web page sketch's block as the structure its HTML needs, in the HTML's own tokens: "<nav <img 3 <a" (a nav bar
    with a logo and 3 links), "<header <h1 <p", "<row 2 <col <img <button", "<form 2 <input <textarea", "<div 2
    <button", "<img", "<p", "<footer". Read mid-sentence, " <nav" is the " <" and "nav" the page's "<nav>" is written
    with, so the LLM copies what it sees; as words ("nav 3 links") the same phrases went unread by the page's tags
    (session 26: after 10 website steps the first tag followed the phrase on 16 of 16 test sketches, against the
    prior on the words)."""
    t = block["type"]
    if t == "nav":
        return "<nav" + (" <img" if block["logo"] else "") + f" {len(block['links'])} <a"
    if t == "header":
        return "<header <h1" + (" <p" if block.get("subtitle") else "")
    if t == "columns":
        first = block["columns"][0]
        return f"<row {len(block['columns'])} <col" + (" <img" if first["image"] else "") + \
            (" <button" if first["button"] else "")
    if t == "form":
        return f"<form {len(block['fields'])} <input" + (" <textarea" if block["textarea"] else "")
    if t == "buttons":
        return f"<div {len(block['buttons'])} <button"
    return {"image": "<img", "paragraph": "<p", "footer": "<footer"}[t]


PAGE_SLOTS = 6  # a sketch's blocks: nav, header, up to three body blocks, footer


def page_phrases(truth: dict) -> list[str | None]:
    """A web page sketch's blocks top to bottom as block_phrase()s, None past its last (and for any other image)."""
    blocks = [block_phrase(b) for b in truth.get("blocks", [])] if truth["kind"] == "sketch" else []
    return (blocks + [None] * PAGE_SLOTS)[:PAGE_SLOTS]


# MiniGPT4Config.image_phrases groups fit-words can fit: name -> (phrases of an image's truth, one per slot)
PHRASE_GROUPS = {"picture": lambda truth: [picture_phrase(truth)], "page": page_phrases}
PHRASE_ENDS = {"page": ["<footer"]}  # a group's slots are a list that ends at an empty slot or one of these


def phrase_ends(group: str, words: list[str]) -> list[str]:
    """The PHRASE_ENDS of `group` that are among its fitted `words` (MiniGPT4Config.add_image_phrases' ends)."""
    return [w for w in PHRASE_ENDS.get(group, []) if w in words]


@torch.no_grad()
def extract_regions(model, n: int, split: str, seed: int, batch_size: int = 64, dish_every: int = 5,
                    desc: str = "features", kind_of=None) -> tuple[torch.Tensor, list[list[dict | None]], list[dict]]:
    """(n, 9, hidden) frozen features the readout reads, for world images `seed`.. of `split` (kinds by
    `image_kind`, or `kind_of(index)`), each image's groups by region and its truth."""
    from minigpt4.world import generate
    from minigpt4.world.textgen import POSITION_NAMES
    if model.cfg.num_word_queries != len(POSITION_NAMES):
        raise ValueError(f"--targets regions needs one token per region of the world's 3x3 grid, but this model's "
                         f"readout reads {model.cfg.num_word_queries} tokens: use a grid vision side such as "
                         f"default@stage0-effnet, or --targets matched")
    kind_of = kind_of or (lambda i: image_kind(i, dish_every))
    feats, rows, truths = [], [], []
    for start in tqdm(range(seed, seed + n, batch_size), desc=desc, unit="batch"):
        samples = [generate(kind_of(i), i, split, model.cfg.input_size)
                   for i in range(start, min(start + batch_size, seed + n))]
        feats.append(model.split_features(model.vision_features(model.preprocess([s.image for s in samples])))[1]
                     .float().cpu())
        rows += [region_groups(s.truth) for s in samples]
        truths += [s.truth for s in samples]
    return torch.cat(feats), rows, truths


def fit_head(x: torch.Tensor, y: torch.Tensor, val_x: torch.Tensor, val_y: torch.Tensor, classes: int,
             epochs: int = 12, lr: float = 3e-3, batch_size: int = 512, unknown: int | None = None,
             unknown_share: float = 0.15, seed: int = 0, name: str = "head", log=print,
             hidden: int = 0) -> tuple[dict, list[dict]]:
    """A linear classifier (with `hidden`: attribute_head's MLP) on (N, features) region features with direct targets;
    returns the best epoch's state (folded(): the standardisation folded in) and the history. "Best" is held-out
    accuracy over all regions: over the regions with a word alone ("occupied" in the history), an epoch that colours
    every uncoloured emoji would win. With `unknown` (a class id): each batch draws `unknown_share` of the other
    classes, and their regions learn `unknown` with their own class masked out, so an object the classifier cannot place
    says `unknown` rather than a wrong name; the held-out score counts it as wrong on seen kinds (it is the price)."""
    g = torch.Generator().manual_seed(seed)
    head, opt, sched, mean, std = linear_classifier(x, classes, epochs, lr, batch_size, hidden)
    xs, vx = (x - mean) / std, (val_x - mean) / std
    occupied = val_y > 0  # regions whose truth is one of the words
    best, history = None, []
    for epoch in range(epochs):
        for idx in torch.randperm(len(x), generator=g).split(batch_size):
            logits, target = head(xs[idx]), y[idx].clone()
            if unknown is not None:
                masked = torch.rand(classes, generator=g) < unknown_share
                masked[0] = masked[unknown] = False
                hit = masked[target]  # regions whose class is masked this batch: their class is gone, say unknown
                logits = logits.masked_fill(hit[:, None] & masked[None], -1e4)
                target[hit] = unknown
            loss = F.cross_entropy(logits, target)
            opt.zero_grad()
            loss.backward()
            opt.step()
            sched.step()
        with torch.no_grad():
            pred = head(vx).argmax(-1)
        row = {"epoch": epoch + 1, "loss": round(loss.item(), 4),
               "accuracy": round((pred == val_y).float().mean().item(), 4),
               "occupied": round((pred[occupied] == val_y[occupied]).float().mean().item(), 4) if occupied.any() else None}
        if unknown is not None:
            row["unknown_on_seen"] = round((pred[occupied] == unknown).float().mean().item(), 4)
        history.append(row)
        log(f"{name} epoch {epoch + 1}: loss {row['loss']:.3f}, held-out regions {row['accuracy']:.1%}, "
            f"regions with a word {row['occupied'] or 0:.1%}")
        if best is None or row["accuracy"] >= best[0]:
            best = (row["accuracy"], folded(head, mean, std), row)
    best[2]["kept"] = True  # the epoch whose weights are returned
    return best[1], history


def parse_attributes(text: str) -> list[str]:
    """--attributes "count,size,color" -> the names, each one of region_attribute_words()."""
    attrs = [t for t in text.split(",") if t]
    known = region_attribute_words()
    bad = [t for t in attrs if t not in known]
    if bad:
        raise ValueError(f"unknown --attributes {bad}: choose from {list(known)}")
    return attrs


def fit_regions(a, model, attrs: list[str]) -> tuple[dict[str, torch.Tensor], dict[str, str], dict]:
    """--targets regions: the name classifier and each of `attrs`' classifiers on direct region targets; returns the
    readout's tensors, its metadata and the fit's record."""
    known = region_attribute_words()
    train_x, train_rows, train_truths = extract_regions(model, a.images, "train", 500_000 + a.seed,
                                                         dish_every=a.dish_every, desc="train features")
    val_x, val_rows, val_truths = extract_regions(model, a.val, "val", 0, dish_every=a.dish_every,
                                                   desc="val features")
    names = sorted({g["name"] for row in train_rows for g in row if g and g.get("name")})
    if a.unknown and a.unknown in names:
        raise ValueError(f"--unknown {a.unknown!r} is also an object name of the world: pick another word")
    words = names + ([a.unknown] if a.unknown else [])
    flat, vflat = train_x.flatten(0, 1), val_x.flatten(0, 1)
    tensors, record = {}, {}
    for attr, vocab in [("name", words)] + [(t, known[t]) for t in attrs]:
        head, history = fit_head(flat, region_targets(train_rows, attr, vocab), vflat,
                                 region_targets(val_rows, attr, vocab), len(vocab) + 1, a.epochs, seed=a.seed,
                                 unknown=len(vocab) if attr == "name" and a.unknown else None,
                                 unknown_share=a.unknown_share, name=attr,
                                 hidden=a.attribute_hidden if attr != "name" else 0)
        key = "word_proj.classify" if attr == "name" else f"word_proj.attributes.{attr}"
        tensors.update({f"{key}.{k}": v.contiguous() for k, v in head.items()})
        record[attr] = history
    meta = {"proj_words": json.dumps(words)}
    if a.unknown:
        meta["word_unknown"] = a.unknown
    if attrs:
        meta["word_attributes"] = json.dumps({t: known[t] for t in attrs})
        if a.attribute_hidden:
            meta["word_attribute_hidden"] = str(a.attribute_hidden)
    fitted = {"words": len(words), "unknown": a.unknown, "attributes": attrs,
              "attribute_hidden": a.attribute_hidden, "history": record}
    if a.phrases:
        groups, phrase_history = fit_image_phrases(a, model, (train_x, train_truths), (val_x, val_truths), tensors)
        record.update(phrase_history)  # "picture.0", "page.0" ... "page.5": one classifier per slot
        cfg = copy.deepcopy(model.cfg)
        cfg.proj_words = words
        for name, phrases, slots in groups:
            cfg.add_image_phrases(name, phrases, model.tokenizer, slots,
                                  ends=phrase_ends(name, phrases))
        meta["image_phrases"] = cfg.readout_meta()["image_phrases"]
        fitted["image_phrases"] = {name: phrases for name, phrases, _ in groups}
    return tensors, meta, fitted


def parse_phrase_groups(text: str) -> list[str]:
    """--phrases "picture,page" -> the group names, each one of PHRASE_GROUPS."""
    names = [t for t in text.split(",") if t]
    bad = [t for t in names if t not in PHRASE_GROUPS]
    if bad:
        raise ValueError(f"unknown --phrases {bad}: choose from {list(PHRASE_GROUPS)}")
    return names


def fit_image_phrases(a, model, train: tuple[torch.Tensor, list[dict]], val: tuple[torch.Tensor, list[dict]],
                      tensors: dict[str, torch.Tensor]) -> tuple[list[tuple[str, list[str], int]], dict]:
    """Each --phrases group's slot classifiers (PHRASE_GROUPS) on all region features side by side, into `tensors`
    (word_proj.phrases.NAME: the slots' classifiers stacked); trained on the scenes and dishes the regions were fit
    on plus half as many web page sketches and prompt pictures (alternating). Returns (name, phrases, slots)
    per group and the fit's history."""
    def others(n: int, split: str, seed: int):
        kinds = lambda i: ("sketch", "prompt")[i % 2]
        x, _, truths = extract_regions(model, max(2, n // 2), split, seed, kind_of=kinds,
                                       desc=f"{split} sketches, prompt pictures")
        return x, truths
    x, truths = others(a.images, "train", 700_000 + a.seed)
    vx, vtruths = others(a.val, "val", 50_000)
    x, vx = torch.cat([train[0], x]).flatten(1), torch.cat([val[0], vx]).flatten(1)
    truths, vtruths = train[1] + truths, val[1] + vtruths
    groups, history = [], {}
    for name in parse_phrase_groups(a.phrases):
        label = PHRASE_GROUPS[name]
        rows, vrows = [label(t) for t in truths], [label(t) for t in vtruths]
        phrases = sorted({p for r in rows for p in r if p})
        index = {p: i + 1 for i, p in enumerate(phrases)}  # class 0: none (its table row is zero)
        heads = []
        for k in range(len(rows[0])):
            ids = lambda rs: torch.tensor([index.get(r[k], 0) for r in rs])
            head, history[f"{name}.{k}"] = fit_head(x, ids(rows), vx, ids(vrows), len(phrases) + 1, a.epochs,
                                                     seed=a.seed, name=f"{name} {k}")
            heads.append(head)
        for part in ("weight", "bias"):
            tensors[f"word_proj.phrases.{name}.{part}"] = torch.cat([h[part] for h in heads]).contiguous()
        groups.append((name, phrases, len(heads)))
    return groups, history


def register(subparsers) -> None:
    p = subparsers.add_parser("fit-words", help="fit the word readout on frozen vision features (no LLM runs)",
                              description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_arguments(p)
    p.set_defaults(func=run)


def add_arguments(ap: argparse.ArgumentParser) -> None:
    ap.add_argument("model", help="model spec whose frozen vision side to read (e.g. default@stage0-word)")
    ap.add_argument("--out", required=True, help="folder for proj.safetensors and fit.json (e.g. the stage-0 "
                                                 "export's folder, so default@stage0-NAME loads it)")
    ap.add_argument("--images", type=int, default=30000, help="training images (default 30000)")
    ap.add_argument("--val", type=int, default=2000, help="held-out val images scored after each epoch")
    ap.add_argument("--epochs", type=int, default=20, help="passes over the training features (cosine learning rate)")
    ap.add_argument("--none-weight", type=float, default=0.2, help="loss weight of 'none' (default 0.2)")
    ap.add_argument("--keep-proj", action="store_true",
                    help="keep the model's plain projection beside the readout (default: zero it; a stage-0 "
                         "export's word map adds tokens the LLM reads as noise)")
    ap.add_argument("--layout", choices=list(WORD_LAYOUTS), default="sum",
                    help="how the LLM gets each query's word: 'sum' (added to its projection, one slot), 'pair' (a slot "
                         "each, word first) or 'append' (all the projection's tokens, then all the words); pair and "
                         "append double the image tokens (MiniGPT4Config.word_layout)")
    ap.add_argument("--targets", choices=["matched", "regions"], default="matched",
                    help="'matched': each image's names matched to the queries (any vision side); 'regions': each of "
                         "a grid side's nine tokens learns the group in its region of a scene, or a dish's main "
                         "ingredient there")
    ap.add_argument("--attributes", default="",
                    help="with --targets regions: comma-separated region attributes read before each name "
                         "(count, size, color)")
    ap.add_argument("--attribute-hidden", type=int, default=0,
                    help="with --attributes: hidden units of each attribute's classifier, one GELU layer (default 0: "
                         "linear; session 32: 1024 reads colour 86%% vs 66%%, count 93%% vs 89%% on validation images)")
    ap.add_argument("--unknown", default="",
                    help="with --targets regions: a word for objects of kinds the readout never learned (e.g. thing)")
    ap.add_argument("--unknown-share", type=float, default=0.15,
                    help="share of the kinds whose class is masked per batch to teach --unknown (default 0.15)")
    ap.add_argument("--phrases", default="",
                    help="with --targets regions: comma-separated phrase groups read before the regions, each from "
                         "classifiers on all the region features: 'picture' (a dish's name, a prompt picture's "
                         "style, 'web page sketch', 'objects' for a scene: \"picture: pasta;\"), 'page' (a web page "
                         "sketch's blocks in order in the HTML's tokens: \"page: <nav 3 <a <header <h1 <footer;\") "
                         "(MiniGPT4Config.image_phrases)")
    ap.add_argument("--dish-every", type=int, default=5,
                    help="every N-th image is a dish, the rest scenes (default 5; 0: scenes only)")
    ap.add_argument("--seed", type=int, default=0)


def run(a) -> int:
    from minigpt4.utils import atomic_save_safetensors, atomic_write_json
    from minigpt4.weights import load_model
    from minigpt4.weights.default import DEFAULT_DIR, copy_vision_side, is_vision_stage
    torch.manual_seed(a.seed)
    if a.targets == "matched" and (a.attributes or a.unknown or a.phrases):
        raise ValueError("--attributes, --unknown and --phrases need --targets regions (the world's truth by region)")
    if not 0 <= a.unknown_share < 1:
        raise ValueError(f"--unknown-share must be in [0, 1), not {a.unknown_share}")
    if a.attribute_hidden < 0 or (a.attribute_hidden and not a.attributes):
        raise ValueError(f"--attribute-hidden is the hidden units of the --attributes classifiers (0: linear), "
                         f"not {a.attribute_hidden}" + ("" if a.attributes else " without --attributes"))
    if a.dish_every < 0:
        raise ValueError(f"--dish-every must be 0 (scenes only) or more, not {a.dish_every}")
    attrs = parse_attributes(a.attributes)  # refused before the model loads
    parse_phrase_groups(a.phrases)
    model = load_model(a.model, quantize=None).eval()
    t0 = time.time()
    if a.targets == "regions":
        tensors, meta, record = fit_regions(a, model, attrs)
        history = record.pop("history")
    else:
        train_x, train_names = extract(model, a.images, "train", 500_000 + a.seed, dish_every=a.dish_every,
                                       desc="train features")
        val_x, val_names = extract(model, a.val, "val", 0, dish_every=a.dish_every, desc="val features")
        words = sorted({w for ws in train_names for w in ws})  # object kinds, shapes, "sign", ingredients
        index = {w: i + 1 for i, w in enumerate(words)}  # class 0: none
        to_ids = lambda rows: [[index[w] for w in ws if w in index] for ws in rows]
        head, history = fit(train_x, to_ids(train_names), val_x, to_ids(val_names), len(words) + 1, a.epochs,
                            a.none_weight, seed=a.seed)
        tensors = {"word_proj.classify.weight": head["weight"].contiguous(),
                   "word_proj.classify.bias": head["bias"].contiguous()}
        meta, record = {"proj_words": json.dumps(words)}, {"words": len(words)}
    proj = model.proj
    tensors["proj.weight"] = proj.weight.detach().float().clone() if a.keep_proj else torch.zeros_like(proj.weight)
    tensors["proj.bias"] = proj.bias.detach().float().clone() if a.keep_proj else torch.zeros_like(proj.bias)
    meta.update(word_layout=a.layout, fit="minigpt4 fit-words")
    spec = a.model.split("@")
    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    if len(spec) == 2 and spec[0] == "default" and is_vision_stage(spec[1]):  # default@stage0-NAME: that export
        meta["vision"] = spec[1]
        if is_vision_stage(out.name) and not (out / "stage0.json").exists():  # a new stage-0 folder loads by itself
            copy_vision_side(DEFAULT_DIR / spec[1], out)
    atomic_save_safetensors(tensors, out / "proj.safetensors", metadata=meta)
    atomic_write_json(out / "fit.json", {"model": a.model, "images": a.images, "val": a.val, "targets": a.targets,
                                         "dish_every": a.dish_every, **record, "none_weight": a.none_weight,
                                         "minutes": (time.time() - t0) / 60, "history": history})
    if a.targets == "regions":
        kept = {k: next(r for r in v if r.get("kept")) for k, v in history.items()}
        print(f"wrote {out / 'proj.safetensors'}: {record['words']} words; held-out regions with a word: " +
              ", ".join(f"{k} {v['occupied'] or 0:.1%}" for k, v in kept.items()))
        return 0
    final = history[-1]
    print(f"wrote {out / 'proj.safetensors'}: {record['words']} words; held-out names recall {final['recall']:.1%}, "
          f"false names per image {final['false_per_image']:.2f}, F1 {final['f1']:.3f}")
    return 0


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="minigpt4 fit-words", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    add_arguments(ap)
    return run(ap.parse_args(argv))


if __name__ == "__main__":
    raise SystemExit(main())

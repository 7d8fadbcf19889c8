"""Scenes of everyday objects on a 3x3 grid: truth, rendering and texts."""

from __future__ import annotations

import random

from PIL import Image, ImageDraw

from . import render
from .backgrounds import BACKGROUNDS, SCENE_BACKGROUNDS, background, dominant_colors
from .textgen import (NUMBER_WORDS, POSITION_PHRASES, POSITIONS, a, cap, count_phrase, join_list, pick)
from .vocab import COLORS, SHAPES, by_name, object_kinds

SIGN_WORDS = ["OPEN", "STOP", "SALE", "HELLO", "EXIT", "CAFE", "HOME", "GO", "SHOP", "WELCOME", "YES", "NO",
              "PARK", "HI", "FOOD", "BOOKS", "ZOO", "MENU", "SUN", "FRESH"]
SIZE_WORDS = {"small": ["small", "little", "tiny"], "medium": ["medium-sized", "mid-sized"],
              "large": ["large", "big"]}


def _group_noun(g: dict, n: int | None = None) -> tuple[str, str]:
    """(singular, plural) noun phrase, with colour for shapes."""
    if g["type"] == "shape":
        return f'{g["color"]} {g["name"]}', f'{g["color"]} {g["plural"]}'
    if g["type"] == "text":
        return "sign", "signs"
    return g["name"], g["plural"]


def _overlap(b1, b2) -> float:
    x0, y0 = max(b1[0], b2[0]), max(b1[1], b2[1])
    x1, y1 = min(b1[2], b2[2]), min(b1[3], b2[3])
    if x1 <= x0 or y1 <= y0:
        return 0.0
    return (x1 - x0) * (y1 - y0) / max(1, (b1[2] - b1[0]) * (b1[3] - b1[1]))


def make_truth(rng: random.Random, split: str, S: int, max_groups: int = 4) -> dict:
    bg = pick(rng, SCENE_BACKGROUNDS)
    n_groups = rng.choices([1, 2, 3, 4], weights=[3, 4, 3, 2])[0]
    n_groups = min(n_groups, max_groups)
    cells = rng.sample(range(9), n_groups)
    kinds = object_kinds(split)
    heldout = [k for k in kinds if k.heldout]
    used_names: set[str] = set()
    avoid = dominant_colors(bg)
    groups = []
    have_text = False
    for gi, cell in enumerate(cells):
        r = rng.random()
        if split == "test" and gi == 0:
            r = 1.0  # the first group is a held-out object kind
        if r < 0.18:
            shape = pick(rng, [s for s in SHAPES if s not in used_names] or list(SHAPES))
            color = pick(rng, [c for c in COLORS if c not in avoid])
            g = {"type": "shape", "name": shape, "plural": SHAPES[shape], "category": "shape",
                 "color": color, "heldout": False}
        elif r < 0.24 and not have_text:
            have_text = True
            g = {"type": "text", "name": "sign", "plural": "signs", "category": "text",
                 "text": pick(rng, SIGN_WORDS), "color": None, "heldout": False}
        else:
            # on the test split make sure at least one held-out kind appears
            pool = heldout if (split == "test" and gi == 0 and heldout) else kinds
            k = pick(rng, pool)
            while k.name in used_names:
                k = pick(rng, pool)
            g = {"type": "object", "name": k.name, "plural": k.plural, "category": k.category,
                 "codepoint": k.codepoint, "color": k.color, "heldout": k.heldout}
        used_names.add(g["name"])
        if g["type"] == "text":
            count = 1
        else:
            count = rng.choices([1, 2, 3, 4], weights=[10, 5, 3, 1])[0]
        size = pick(rng, ["small", "medium", "large", "medium"]) if count == 1 else "small"
        g.update(count=count, size=size, position=POSITIONS[cell // 3][cell % 3], cell=cell)
        groups.append(g)
    _place(groups, rng, S)
    return {"kind": "scene", "background": bg, "groups": groups}


def _place(groups: list[dict], rng: random.Random, S: int) -> None:
    """Choose instance boxes (centres stay inside their cell) and compute occlusion."""
    c = S / 3
    for g in groups:
        row, col = divmod(g["cell"], 3)
        cx, cy = (col + 0.5) * c, (row + 0.5) * c
        n = g["count"]
        if g["type"] == "text":
            w = int(c * rng.uniform(0.85, 1.0))
            h = int(c * 0.5)
            g["instances"] = [{"bbox": [int(cx - w / 2), int(cy - h / 2), int(cx - w / 2) + w, int(cy - h / 2) + h]}]
            continue
        if n == 1:
            px = int(c * {"small": 0.48, "medium": 0.78, "large": 1.25}[g["size"]] * rng.uniform(0.92, 1.05))
            offs = [(rng.uniform(-0.08, 0.08) * c, rng.uniform(-0.08, 0.08) * c)]
        else:
            px = int(c * (0.5 if n == 2 else 0.44))
            d = c * 0.25
            offs = {2: [(-d, 0), (d, 0)], 3: [(-d, d * 0.8), (d, d * 0.8), (0, -d * 0.8)],
                    4: [(-d, -d), (d, -d), (-d, d), (d, d)]}[n]
            if n == 2 and rng.random() < 0.5:
                offs = [(0, -d), (0, d)]
            offs = [(x + rng.uniform(-2, 2), y + rng.uniform(-2, 2)) for x, y in offs]
        px = max(12, px)
        g["px"] = px
        insts = []
        for ox, oy in offs:
            x0 = int(cx + ox - px / 2)
            y0 = int(cy + oy - px / 2)
            x0 = min(max(x0, -px // 6), S - px + px // 6)
            y0 = min(max(y0, -px // 6), S - px + px // 6)
            if g["type"] == "object":
                bx0, by0, bx1, by1 = render.glyph_bbox(g["codepoint"], px)
            else:
                bx0, by0, bx1, by1 = 0, 0, px, px
            bb = [max(0, x0 + bx0), max(0, y0 + by0), min(S, x0 + bx1), min(S, y0 + by1)]
            insts.append({"xy": [x0, y0], "bbox": bb})
        g["instances"] = insts
    # draw order: smaller objects last so they stay visible; compute occlusion
    order = sorted(range(len(groups)), key=lambda i: -groups[i].get("px", 0))
    for rank, i in enumerate(order):
        groups[i]["z"] = rank
    for g in groups:
        for inst in g["instances"]:
            occ, by = 0.0, []
            for h in groups:
                if h["z"] <= g["z"]:
                    continue
                for other in h["instances"]:
                    o = _overlap(inst["bbox"], other["bbox"])
                    if o > 0.08:
                        by.append(h["name"])
                    occ += o
            inst["occlusion"] = round(min(1.0, occ), 3)
            inst["occluded_by"] = sorted(set(by))


def render_scene(truth: dict, S: int) -> Image.Image:
    im = background(truth["background"], S)
    for g in sorted(truth["groups"], key=lambda g: g["z"]):
        if g["type"] == "text":
            x0, y0, x1, y1 = g["instances"][0]["bbox"]
            d = ImageDraw.Draw(im)
            d.rounded_rectangle((x0, y0, x1, y1), radius=max(2, S // 60), fill=(252, 250, 240),
                                outline=(60, 60, 60), width=max(1, S // 120))
            text = g["text"]
            fs = max(8, int(min((y1 - y0) * 0.62, (x1 - x0) * 0.9 / max(1, len(text)) * 1.6)))
            tw, th = render.text_size(text, fs)
            while tw > (x1 - x0) * 0.9 and fs > 8:
                fs -= 1
                tw, th = render.text_size(text, fs)
            bb = render.font(fs).getbbox(text)
            d.text(((x0 + x1 - tw) / 2 - bb[0], (y0 + y1 - th) / 2 - bb[1]), text, font=render.font(fs),
                   fill=(20, 20, 20))
            continue
        for inst in g["instances"]:
            tile = (render.glyph(g["codepoint"], g["px"]) if g["type"] == "object"
                    else render.shape_tile(g["name"], g["color"], g["px"]))
            render.paste(im, tile, *inst["xy"])
    return im


# ----------------------------------------------------------------------------- texts

def _noun_phrase(g: dict, rng: random.Random, with_color: bool = False, with_size: bool = False) -> str:
    if g["type"] == "text":
        return f'a sign that says "{g["text"]}"'
    sing, plur = _group_noun(g)
    adj = ""
    if with_size and g["count"] == 1 and g["size"] != "medium":
        adj = pick(rng, SIZE_WORDS[g["size"]])
    if with_color and g["type"] == "object" and g["color"] and rng.random() < 0.5:
        adj = (adj + " " + g["color"]).strip()
    return count_phrase(g["count"], sing, plur, adj=adj)


def caption(truth: dict, rng: random.Random) -> str:
    gs = truth["groups"][:]
    rng.shuffle(gs)
    items = [_noun_phrase(g, rng, with_color=True) for g in gs]
    bg = pick(rng, BACKGROUNDS[truth["background"]][0])
    lead = pick(rng, ["", "", "a picture of ", "an image of ", "a photo of ", "an illustration of ",
                      "a drawing of ", "there is "])
    if lead == "there is " and gs[0]["count"] > 1:
        lead = "there are "
    link = pick(rng, [" on ", " against ", " in front of ", " with "])
    if link == " with ":
        text = f"{lead}{bg} with {join_list(items)}"
    else:
        text = f"{lead}{join_list(items)}{link}{bg}"
    return " ".join(text.lower().split()[:50])


def description(truth: dict, rng: random.Random) -> str:
    gs = truth["groups"][:]
    rng.shuffle(gs)
    bg = pick(rng, BACKGROUNDS[truth["background"]][0])
    total = sum(g["count"] for g in gs if g["type"] != "text")
    sents = []
    opener = pick(rng, [
        f"The image shows {join_list([_noun_phrase(g, rng) for g in gs])} on {bg}.",
        f"This is a picture of {bg} with {join_list([_noun_phrase(g, rng) for g in gs])}.",
        f"In this image there {'is' if total == 1 else 'are'} {NUMBER_WORDS[min(total, 10)] if total != 1 else 'one'} "
        f"{'item' if total == 1 else 'items'} placed on {bg}." if total else f"This picture shows {bg}.",
        f"The background of this picture is {bg}.",
    ])
    sents.append(opener)
    for g in gs:
        pos = pick(rng, POSITION_PHRASES[g["position"]])
        if g["type"] == "text":
            sents.append(pick(rng, [f'{cap(pos)}, there is a sign that reads "{g["text"]}".',
                                    f'A sign with the word "{g["text"]}" is {pos}.',
                                    f'There is a white sign {pos} with the text "{g["text"]}" written on it.']))
            continue
        sing, plur = _group_noun(g)
        n = g["count"]
        np_ = _noun_phrase(g, rng, with_size=True)
        verb = "is" if n == 1 else "are"
        opts = [f"{cap(np_)} {verb} {pos}.",
                f"{cap(pos)}, there {verb} {np_}.",
                f"You can see {np_} {pos}.",
                f"{cap(np_)} can be seen {pos}."]
        s = pick(rng, opts)
        if g["type"] == "object" and g["color"] and rng.random() < 0.6:
            s += " " + pick(rng, [f"{'It is' if n == 1 else 'They are'} mostly {g['color']}.",
                                  f"The {sing if n == 1 else plur} {'is' if n == 1 else 'are'} {g['color']}.",
                                  f"{'Its' if n == 1 else 'Their'} main color is {g['color']}."])
        if n > 1 and rng.random() < 0.5:
            s += " " + pick(rng, [f"There are exactly {NUMBER_WORDS[n]} of them.",
                                  f"In total there are {NUMBER_WORDS[n]} {plur}.",
                                  f"They are grouped close together."])
        sents.append(s)
        occ = [i for i in g["instances"] if i["occlusion"] > 0.12]
        if occ:
            others = sorted({o for i in occ for o in i["occluded_by"]})
            onames = [h for h in truth["groups"] if h["name"] in others]
            if onames:
                oname = _group_noun(onames[0])[0] if onames[0]["count"] == 1 else _group_noun(onames[0])[1]
                sents.append(pick(rng, [
                    f"{'The' if n == 1 else 'One of the'} {sing if n == 1 else plur} {'is' if n == 1 else 'is'} "
                    f"partly hidden behind the {oname}.",
                    f"The {oname} partly covers {'the ' + sing if n == 1 else 'one of the ' + plur}."]))
    if bg not in opener and rng.random() < 0.7:
        sents.append(pick(rng, [f"The background is {bg}.", f"Everything is set against {bg}.",
                                f"Behind them is {bg}." if total > 1 else f"Behind it is {bg}."]))
    body = sents[:1] + sents[1:]
    if rng.random() < 0.4:
        body.append(pick(rng, ["Overall, the picture is simple and clear.",
                               "The composition is clean and uncluttered.",
                               "Nothing else is visible in the picture."]))
    return " ".join(body)


def alt_text(truth: dict, rng: random.Random, limit: int = 125) -> str:
    gs = sorted(truth["groups"], key=lambda g: g["cell"])
    bg = BACKGROUNDS[truth["background"]][0][-1]
    items = [_noun_phrase(g, rng) for g in gs]
    for k in range(len(items), 0, -1):
        shown = items[:k] + (["other items"] if k < len(items) else [])
        s = cap(f"{join_list(shown)} on {bg}.")
        if len(s) <= limit:
            return s
        s = cap(f"{join_list(shown)}.")
        if len(s) <= limit:
            return s
    return cap(items[0])[: limit - 1] + "."


def qa(truth: dict, rng: random.Random, split: str) -> list[dict]:
    out = []
    gs = truth["groups"]
    objs = [g for g in gs if g["type"] != "text"]
    present = {g["name"] for g in gs}
    for g in objs:
        sing, plur = _group_noun(g)
        noun = g["name"]
        out.append({"question": pick(rng, [f"Is there {a(noun)} in the image?", f"Can you see {a(noun)}?",
                                            f"Does the picture contain {a(noun)}?"]),
                    "answer": "yes", "type": "presence", "target": g["name"]})
        out.append({"question": pick(rng, [f"How many {g['plural']} are there?",
                                            f"How many {g['plural']} can you see in the picture?",
                                            f"Count the {g['plural']} in the image."]),
                    "answer": NUMBER_WORDS[g["count"]], "type": "count", "target": g["name"]})
        if g["color"]:
            q = (f"What color is the {noun}?" if g["count"] == 1 else f"What color are the {g['plural']}?")
            out.append({"question": q, "answer": g["color"], "type": "color", "target": g["name"]})
        where = "is the " + noun if g["count"] == 1 else "are the " + g["plural"]
        out.append({"question": pick(rng, [f"Where {where}?", f"In which part of the image {where}?",
                                            f"Where in the picture {where} located?"]),
                    "answer": g["position"], "type": "position", "target": g["name"]})
        if g["count"] == 1:
            out.append({"question": f"Is the {noun} small, medium or large?", "answer": g["size"],
                        "type": "size", "target": g["name"]})
    for g in gs:
        if g["type"] == "text":
            out.append({"question": pick(rng, ["What does the sign say?", "What word is written on the sign?"]),
                        "answer": g["text"].lower(), "type": "text", "target": "sign"})
    # absent objects (negatives), from the same split's vocabulary
    kinds = object_kinds(split)
    for _ in range(max(1, len(objs) // 2 + 1)):
        k = pick(rng, kinds)
        if k.name in present:
            continue
        present.add(k.name)
        out.append({"question": pick(rng, [f"Is there {a(k.name)} in the image?", f"Can you see {a(k.name)}?",
                                            f"Does the picture contain {a(k.name)}?"]),
                    "answer": "no", "type": "presence", "target": k.name})
    rng.shuffle(out)
    return out


def mentioned_names(truth: dict) -> set[str]:
    """Canonical object/shape names that are present (for CHAIR)."""
    return {g["name"] for g in truth["groups"] if g["type"] != "text"}


def clean_truth(truth: dict) -> dict:
    """JSON-friendly truth without render-only fields."""
    t = {"kind": "scene", "background": truth["background"], "objects": []}
    for g in truth["groups"]:
        d = {k: g[k] for k in ("type", "name", "plural", "category", "color", "count", "size", "position",
                               "heldout") if k in g}
        if g["type"] == "text":
            d["text"] = g["text"]
        d["instances"] = [{"bbox": i["bbox"], "occlusion": i.get("occlusion", 0.0),
                           "occluded_by": i.get("occluded_by", [])} for i in g["instances"]]
        t["objects"].append(d)
    return t


_ = by_name  # re-export convenience


def sample(seed: int, split: str, S: int):
    from .core import Sample, rng_for
    rng = rng_for("scene", split, seed)
    truth = make_truth(rng, "train" if split == "val" else split, S)
    image = render_scene(truth, S)
    t = clean_truth(truth)
    t.update(split=split, seed=seed, size=S)
    trng = rng_for("scene", split, seed, "text")
    return Sample(kind="scene", seed=seed, split=split, image=image, truth=t,
                  caption=caption(truth, trng), description=description(truth, trng),
                  qa=qa(truth, trng, "train" if split == "val" else split), alt_text=alt_text(truth, trng))

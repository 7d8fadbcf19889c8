"""Text-to-image style prompts: a tiny grammar, a deterministic renderer and a similarity score.

Grammar (case-insensitive, what ``make_prompt`` writes and ``parse_prompt`` reads)::

    PROMPT  := SUBJECTS [" " PLACE] [", " STYLE]
    SUBJECTS:= SUBJECT ((", " | " and ") SUBJECT)*
    SUBJECT := ("a" | "an" | "one" | "two" | "three") [SIZE] [COLOR] NOUN
    SIZE    := "small" | "big"     COLOR := red | orange | ... (11 names)
    NOUN    := an object name/synonym of the vocabulary, or a shape (circle, square, ...)
    PLACE   := e.g. "on a sunset beach", "in outer space"      STYLE := e.g. "flat illustration"
"""

from __future__ import annotations

import random
import re
import zlib
from functools import lru_cache

import numpy as np
from PIL import Image, ImageFilter, ImageOps

from . import render
from .backgrounds import background
from .textgen import NUMBER_WORDS, a, cap, join_list, pick
from .vocab import COLOR_SYNONYMS, COLORS, SHAPES, by_name, find_mentions, object_kinds

PLACES = {
    "sunset beach": ["on a sunset beach", "on the beach at sunset"],
    "beach": ["on a sandy beach", "at the beach"],
    "grass field": ["in a green meadow", "on a grassy field"],
    "snowy hills": ["on snowy hills", "in a snowy landscape"],
    "night sky": ["under a night sky", "at night"],
    "underwater": ["underwater", "under the sea"],
    "outer space": ["in outer space", "in space"],
    "city street": ["on a city street at night", "in a city at night"],
    "wooden table": ["on a wooden table"],
    "brick wall": ["in front of a brick wall"],
    "plain white": ["on a plain white background", "on a white background"],
    "plain pink": ["on a pink background"],
    "plain yellow": ["on a yellow background"],
    "plain blue": ["on a blue background"],
}
STYLES = {"flat illustration": ["flat illustration", "flat vector art", "minimal flat design"],
          "sticker": ["sticker art", "die-cut sticker", "sticker style"],
          "pixel art": ["pixel art", "8-bit pixel art", "retro pixel art"],
          "pencil sketch": ["pencil sketch", "black and white pencil drawing", "graphite sketch"],
          "watercolor": ["watercolor painting", "soft watercolor", "watercolor illustration"]}
TINTS = ["red", "orange", "yellow", "green", "blue", "purple", "pink"]
_NUM = {"a": 1, "an": 1, "one": 1, "two": 2, "three": 3, "four": 4, "some": 2, "several": 3, "many": 3}


def make_spec(rng: random.Random, split: str) -> dict:
    n = rng.choices([1, 2, 3], weights=[3, 4, 2])[0]
    kinds = object_kinds(split)
    subjects, used = [], set()
    for i in range(n):
        if rng.random() < 0.25:
            noun = pick(rng, list(SHAPES))
            color = pick(rng, list(COLORS))
        else:
            pool = [k for k in kinds if k.heldout] if (split == "test" and i == 0) else kinds
            noun = pick(rng, pool).name
            color = pick(rng, TINTS) if rng.random() < 0.35 else None
        if noun in used:
            continue
        used.add(noun)
        subjects.append({"noun": noun, "count": rng.choices([1, 2, 3], weights=[6, 2, 1])[0],
                         "size": pick(rng, [None, None, "small", "big"]), "color": color})
    return {"subjects": subjects, "background": pick(rng, list(PLACES)), "style": pick(rng, list(STYLES))}


def _plural(noun: str) -> str:
    if noun in SHAPES:
        return SHAPES[noun]
    return by_name()[noun].plural if noun in by_name() else noun + "s"


def spec_to_prompt(spec: dict, rng: random.Random | None = None) -> str:
    rng = rng or random.Random(0)
    parts = []
    for s in spec["subjects"]:
        words = [w for w in (s["size"], s["color"]) if w]
        noun = s["noun"] if s["count"] == 1 else _plural(s["noun"])
        phrase = " ".join(words + [noun])
        parts.append(a(phrase) if s["count"] == 1 else f"{NUMBER_WORDS[s['count']]} {phrase}")
    text = join_list(parts).replace(", and ", " and ") if len(parts) > 2 else join_list(parts)
    return f"{text} {pick(rng, PLACES[spec['background']])}, {pick(rng, STYLES[spec['style']])}"


def parse_prompt(prompt: str) -> dict:
    """Parse any prompt (ours or a model's) into a spec; unknown words are ignored."""
    low = " " + " ".join(re.sub(r"[^a-z0-9 ,'-]", " ", (prompt or "").lower()).split()) + " "
    style = None
    for key, phrases in STYLES.items():
        for ph in sorted(phrases + [key], key=len, reverse=True):
            if f" {ph}" in low or f",{ph}" in low:
                style = style or key
                low = low.replace(ph, " ")
    bg = None
    best = 0
    for key, phrases in PLACES.items():
        for ph in phrases:
            if ph in low and len(ph) > best:
                bg, best = key, len(ph)
    if bg:
        for ph in PLACES[bg]:
            low = low.replace(ph, " ")
    subjects, seen = [], set()
    for m in _forms_regex().finditer(low):
        form = m.group(1)
        names = _forms()[form]
        if not names:
            continue
        noun = sorted(names)[0]
        if noun in seen:
            continue
        seen.add(noun)
        before = low[:m.start()].split()[-3:]
        count, size, color = 1, None, None
        for w in before:
            w = w.strip(",")
            if w in _NUM or w.isdigit():
                count = int(w) if w.isdigit() else _NUM[w]
                size, color = None, None
            elif w in ("small", "tiny", "little"):
                size = "small"
            elif w in ("big", "large", "huge"):
                size = "big"
            elif w in COLORS or w in COLOR_SYNONYMS:
                color = COLOR_SYNONYMS.get(w, w)
            elif w in ("and",) or w.endswith(","):
                count, size, color = 1, None, None
        if form != noun and form == _plural(noun) and count == 1:
            count = 2
        subjects.append({"noun": noun, "count": max(1, min(count, 4)), "size": size, "color": color})
    return {"subjects": subjects, "background": bg, "style": style}


_FORMS: dict | None = None


def _forms() -> dict:
    global _FORMS
    if _FORMS is None:
        from .vocab import mention_table
        _FORMS = dict(mention_table())
    return _FORMS


@lru_cache(maxsize=1)
def _forms_regex() -> re.Pattern:
    return re.compile(r"(?<![\w-])(" + "|".join(re.escape(f) for f in sorted(_forms(), key=len, reverse=True))
                      + r")(?![\w-])")


def _stable_int(s: str) -> int:
    return zlib.crc32(s.encode())


def render_spec(spec: dict, seed: int = 0, size: int = 224) -> Image.Image:
    S = size
    rng = random.Random(f"minigpt4-world-render-prompt:{seed}")
    im = background(spec.get("background") or "plain white", S)
    insts = []
    for s in spec["subjects"]:
        for _ in range(s["count"]):
            insts.append(s)
    n = max(1, len(insts))
    slots = n if n <= 3 else (n + 1) // 2
    rows = 1 if n <= 3 else 2
    style = spec.get("style") or "flat illustration"
    for i, s in enumerate(insts):
        r, c = divmod(i, slots)
        base = S / max(slots, 1.6) * (0.85 if rows == 1 else 0.7)
        px = int(base * {"small": 0.6, "big": 1.2, None: 0.9}[s["size"]] * rng.uniform(0.95, 1.05))
        px = max(12, min(px, int(S * 0.6)))
        cx = (c + 0.5) * S / slots + rng.uniform(-S * 0.03, S * 0.03)
        cy = S * (0.6 if rows == 1 else (0.4 + 0.3 * r)) + rng.uniform(-S * 0.04, S * 0.04)
        noun = s["noun"]
        if noun in SHAPES:
            color = s["color"] or list(COLORS)[_stable_int(noun) % len(COLORS)]
            tile = render.shape_tile(noun, color, px)
        elif noun in by_name():
            tile = render.glyph(by_name()[noun].codepoint, px, s["color"])
        else:
            continue
        if style == "sticker":
            a_ = tile.getchannel("A").filter(ImageFilter.MaxFilter(5 if px > 40 else 3))
            st = Image.new("RGBA", tile.size, (255, 255, 255, 0))
            st.putalpha(a_)
            st.alpha_composite(tile)
            tile = st
        render.paste(im, tile, int(cx - px / 2), int(cy - px / 2))
    if style == "pixel art":
        k = max(8, S // 4)
        im = im.resize((k, k), Image.BILINEAR).quantize(24, method=Image.Quantize.MEDIANCUT).convert("RGB")
        im = im.resize((S, S), Image.NEAREST)
    elif style == "pencil sketch":
        g = ImageOps.grayscale(im)
        edges = ImageOps.invert(g.filter(ImageFilter.FIND_EDGES)).point(lambda v: 255 if v > 235 else v * 0.8)
        im = Image.blend(Image.merge("RGB", [edges] * 3), Image.merge("RGB", [g.point(lambda v: 170 + v // 3)] * 3), 0.4)
    elif style == "watercolor":
        im = im.filter(ImageFilter.GaussianBlur(max(1, S // 110))).filter(ImageFilter.ModeFilter(5))
        im = Image.blend(im, Image.new("RGB", im.size, (250, 245, 230)), 0.18)
    return im


def render_prompt(prompt: str, seed: int = 0, size: int = 224) -> Image.Image:
    """Render a prompt of the world's grammar deterministically (unknown words are ignored)."""
    return render_spec(parse_prompt(prompt), seed, size)


def _attrs(spec: dict) -> set:
    out = set()
    for s in spec["subjects"]:
        out.add(("obj", s["noun"]))
        out.add(("count", s["noun"], s["count"]))
        if s["color"]:
            out.add(("color", s["noun"], s["color"]))
        if s["size"]:
            out.add(("size", s["noun"], s["size"]))
    if spec.get("background"):
        out.add(("bg", spec["background"]))
    if spec.get("style"):
        out.add(("style", spec["style"]))
    return out


def _img_sim(a_: Image.Image, b_: Image.Image) -> float:
    x = np.asarray(a_.resize((16, 16), Image.BILINEAR), dtype=np.float32).ravel()
    y = np.asarray(b_.resize((16, 16), Image.BILINEAR), dtype=np.float32).ravel()
    x, y = x - x.mean(), y - y.mean()
    cos = float(x @ y / (np.linalg.norm(x) * np.linalg.norm(y) + 1e-6))
    def hist(im):
        q = (np.asarray(im.resize((48, 48)), dtype=np.int32) // 64)
        h = np.bincount((q[..., 0] * 16 + q[..., 1] * 4 + q[..., 2]).ravel(), minlength=64).astype(np.float32)
        return h / h.sum()
    hi = float(np.minimum(hist(a_), hist(b_)).sum())
    return 0.5 * max(0.0, cos) + 0.5 * hi


def prompt_similarity(pred_prompt: str, true_prompt: str, seed: int = 0, size: int = 96) -> float:
    """Score in [0, 1]: half image similarity of both prompts re-rendered with the same seed
    (16x16 pixel cosine + colour histogram intersection), half F1 of parsed attributes
    (objects, counts, colours, sizes, background, style)."""
    ps, ts = parse_prompt(pred_prompt), parse_prompt(true_prompt)
    A, B = _attrs(ps), _attrs(ts)
    f1 = 1.0 if not A and not B else (2 * len(A & B) / (len(A) + len(B)))
    img = _img_sim(render_spec(ps, seed, size), render_spec(ts, seed, size))
    return round(min(1.0, max(0.0, 0.5 * img + 0.5 * f1)), 6)


# ----------------------------------------------------------------------------- texts

def _subject_phrase(s):
    noun = s["noun"] if s["count"] == 1 else _plural(s["noun"])
    words = [w for w in (s["size"], s["color"]) if w] + [noun]
    p = " ".join(words)
    return a(p) if s["count"] == 1 else f"{NUMBER_WORDS[s['count']]} {p}"


def caption(spec, rng) -> str:
    subj = join_list([_subject_phrase(s) for s in spec["subjects"]])
    sty = pick(rng, STYLES[spec["style"]])
    return " ".join(pick(rng, [f"{a(sty)} of {subj} {PLACES[spec['background']][0]}",
                               f"{subj} {PLACES[spec['background']][-1]}, {sty}",
                               f"{sty}: {subj} {PLACES[spec['background']][0]}"]).lower().split()[:50])


def description(spec, rng) -> str:
    sty = pick(rng, STYLES[spec["style"]])
    s = [f"This image is {a(sty)}.", f"It shows {join_list([_subject_phrase(x) for x in spec['subjects']])} "
                                      f"{pick(rng, PLACES[spec['background']])}."]
    for x in spec["subjects"]:
        if x["color"] and x["noun"] in by_name():
            s.append(f"The {x['noun'] if x['count'] == 1 else _plural(x['noun'])} "
                     f"{'is' if x['count'] == 1 else 'are'} colored {x['color']} instead of the usual colors.")
    s.append(pick(rng, ["The objects are arranged side by side.", "The composition is simple and centered."]))
    return " ".join(s)


def qa(spec, rng) -> list[dict]:
    out = [{"question": "What art style is this image?", "answer": spec["style"], "type": "style",
            "target": spec["style"]},
           {"question": "Where is the scene set?", "answer": spec["background"], "type": "background",
            "target": spec["background"]}]
    for s in spec["subjects"]:
        out.append({"question": f"Is there {a(s['noun'])} in the image?", "answer": "yes", "type": "object",
                    "target": s["noun"]})
        if s["color"]:
            out.append({"question": f"What color is the {s['noun']}?", "answer": s["color"], "type": "color",
                        "target": s["noun"]})
        out.append({"question": f"How many {_plural(s['noun'])} are there?", "answer": NUMBER_WORDS[s["count"]],
                    "type": "count", "target": s["noun"]})
    rng.shuffle(out)
    return out


def sample(seed: int, split: str, S: int):
    from .core import Sample, rng_for
    rng = rng_for("prompt", split, seed)
    spec = make_spec(rng, "train" if split == "val" else split)
    text = spec_to_prompt(spec, rng)
    spec = parse_prompt(text)  # the truth is exactly what the renderer reads from the prompt
    image = render_spec(spec, seed, S)
    trng = rng_for("prompt", split, seed, "text")
    truth = {"kind": "prompt", **spec, "split": split, "seed": seed, "size": S,
             "heldout": [s["noun"] for s in spec["subjects"] if s["noun"] in by_name() and by_name()[s["noun"]].heldout]}
    alt = cap(f"{a(STYLES[spec['style']][0]) if spec['style'] else 'an image'} of "
              f"{join_list([_subject_phrase(x) for x in spec['subjects']])}.")
    if len(alt) > 125:
        alt = alt[:122].rsplit(" ", 1)[0] + "..."
    return Sample(kind="prompt", seed=seed, split=split, image=image, truth=truth, caption=caption(spec, trng),
                  description=description(spec, trng), qa=qa(spec, trng), alt_text=alt, prompt=text)

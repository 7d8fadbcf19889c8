"""The world's vocabulary: real, nameable objects (emoji glyphs), drawn shapes, colours.

Object kinds are split deterministically into ``train`` kinds and ``heldout`` kinds
(about 10 %, chosen by a hash of the name, stratified by nothing but the hash so it
never changes when the table grows), so evaluation can use objects never seen in training.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
from dataclasses import dataclass, field
from functools import lru_cache

ASSETS = os.path.join(os.path.dirname(__file__), "assets")

# Named colours used for drawn shapes, tints and backgrounds.
COLORS: dict[str, tuple[int, int, int]] = {
    "red": (214, 40, 40),
    "orange": (245, 135, 30),
    "yellow": (248, 214, 40),
    "green": (46, 160, 67),
    "blue": (40, 100, 215),
    "purple": (128, 60, 175),
    "pink": (240, 120, 175),
    "brown": (135, 85, 45),
    "black": (25, 25, 25),
    "white": (250, 250, 250),
    "gray": (140, 140, 140),
}
COLOR_SYNONYMS = {"grey": "gray", "violet": "purple", "golden": "yellow", "gold": "yellow"}

SHAPES: dict[str, str] = {  # name -> plural
    "circle": "circles",
    "square": "squares",
    "triangle": "triangles",
    "star": "stars",
    "heart": "hearts",
}
SHAPE_SYNONYMS = {"dot": "circle", "disc": "circle", "disk": "circle", "rectangle": "square"}

# Hand-checked dominant colours of glyphs (only where one colour clearly dominates);
# colour questions about emoji objects are asked only for these.
OBJECT_COLORS: dict[str, str] = {}
for _c, _names in {
    "red": "apple strawberry tomato cherries rose balloon boxing glove|fire truck|toolbox|magnet|"
           "telephone|scarf|ladybug|lantern|chili pepper|high heel|car|pushpin",
    "yellow": "lemon banana corn taxi|lightning bolt|sun moon key ruler|money bag|sponge crown "
              "trumpet saxophone",
    "orange": "tangerine carrot pumpkin basketball fox giraffe shrimp tiger croissant",
    "green": "broccoli cucumber lettuce|bell pepper|pine tree|tree cactus|four leaf clover|dragon "
             "crocodile lizard|christmas tree|puzzle piece|seedling",
    "blue": "blueberries jeans dress dolphin bird|water drop|cap bucket couch|test tube|lotion bottle",
    "purple": "eggplant grapes",
    "pink": "pig flamingo|cherry blossom|tulip soap squid purse",
    "brown": "bear|teddy bear|chair bat boar dinosaur hedgehog otter ant canoe",
    "white": "snowman cloud sheep ghost toilet|toilet paper|snowflake|glass of milk|rice envelope "
             "baseball bathtub",
    "black": "top hat|skateboard|mobile phone",
    "gray": "elephant wolf koala rhinoceros wrench gear|shopping cart|flying saucer|mouse robot",
}.items():
    for _chunk in _names.split("|"):
        _chunk = _chunk.strip()
        # chunks are either one multi-word name (when delimited by |) or space-separated names
        for _n in ([_chunk] if " " in _chunk and _chunk.count(" ") == 1 and _chunk in (
                "boxing glove", "fire truck", "chili pepper", "high heel", "lightning bolt",
                "money bag", "bell pepper", "pine tree", "christmas tree", "puzzle piece",
                "water drop", "test tube", "lotion bottle", "cherry blossom", "teddy bear",
                "toilet paper", "top hat", "mobile phone", "shopping cart", "flying saucer")
                else _chunk.split()):
            OBJECT_COLORS[_n] = _c
# multi-word names that were split above by whitespace in the space-separated chunks
OBJECT_COLORS.update({"four leaf clover": "green", "glass of milk": "white"})
for _bad in ("four", "leaf", "clover", "glass", "of", "milk", "boxing", "glove"):
    OBJECT_COLORS.pop(_bad, None)


@dataclass(frozen=True)
class ObjectKind:
    name: str
    plural: str
    category: str
    codepoint: str = ""  # hex; "" for drawn shapes
    synonyms: tuple[str, ...] = ()
    color: str | None = None  # dominant colour if clear
    heldout: bool = False

    @property
    def is_shape(self) -> bool:
        return not self.codepoint


def _is_heldout(name: str) -> bool:
    h = int(hashlib.sha1(("minigpt4-world-split:" + name).encode()).hexdigest(), 16)
    return h % 10 == 0


@lru_cache(maxsize=None)
def objects() -> tuple[ObjectKind, ...]:
    """All emoji object kinds (train and held-out), in table order."""
    out = []
    seen = set()
    with open(os.path.join(ASSETS, "objects.tsv"), encoding="utf-8") as f:
        for line in f:
            if not line.strip() or line.startswith("#"):
                continue
            p = line.rstrip("\n").split("\t")
            cp, name, plural, cat = p[:4]
            if name in seen:
                continue
            seen.add(name)
            syn = tuple(s.strip() for s in p[4].split(",") if s.strip()) if len(p) > 4 else ()
            out.append(ObjectKind(name, plural, cat, cp, syn, OBJECT_COLORS.get(name),
                                  _is_heldout(name)))
    return tuple(out)


@lru_cache(maxsize=None)
def by_name() -> dict[str, ObjectKind]:
    return {o.name: o for o in objects()}


def object_kinds(split: str = "train", category: str | set | None = None) -> list[ObjectKind]:
    """Object kinds usable in ``split``: "train"/"val" -> train kinds; "heldout" -> held-out
    kinds only; "test"/"all" -> all kinds."""
    objs = objects()
    if split in ("train", "val"):
        objs = [o for o in objs if not o.heldout]
    elif split == "heldout":
        objs = [o for o in objs if o.heldout]
    elif split not in ("test", "all"):
        raise ValueError(f"unknown split {split!r}")
    if category is not None:
        cats = {category} if isinstance(category, str) else set(category)
        objs = [o for o in objs if o.category in cats]
    return list(objs)


def heldout_names() -> set[str]:
    """Names of the held-out object kinds (never used by split="train"/"val")."""
    return {o.name for o in objects() if o.heldout}


FOOD_CATEGORIES = {"fruit", "vegetable", "food"}


@lru_cache(maxsize=None)
def mention_table() -> dict[str, frozenset[str]]:
    """Surface form (lower-case, singular or plural, synonyms) -> canonical names it can mean.

    Canonical names are object names and shape names ("circle", ...)."""
    table: dict[str, set[str]] = {}

    def add(form: str, name: str) -> None:
        table.setdefault(form.lower(), set()).add(name)

    for o in objects():
        add(o.name, o.name)
        add(o.plural, o.name)
        for s in o.synonyms:
            add(s, o.name)
            add(_pluralize(s), o.name)
    for s, pl in SHAPES.items():
        add(s, s)
        add(pl, s)
    for s, n in SHAPE_SYNONYMS.items():
        add(s, n)
        add(_pluralize(s), n)
    from .textgen import COUNTED
    for name, (one, many) in COUNTED.items():
        if name in table:
            add(one, name)
            add(many, name)
    for name in DRAWN_INGREDIENTS:
        table[name] = {name}
    for ph in NON_OBJECT_PHRASES:
        table[ph] = set()
    return {k: frozenset(v) for k, v in table.items()}


# drawn dish ingredients: their own names (so "tomato sauce" is not the object "tomato")
DRAWN_INGREDIENTS = ("pasta", "tomato sauce", "broth", "olives", "green peas", "pepperoni", "pizza dough",
                     "melted cheese", "whipped cream", "chocolate sauce")
# phrases that contain an object word but do not name an object
NON_OBJECT_PHRASES = ("pencil sketch", "pencil drawing", "pencil wireframe", "pencil sketches",
                      "black and white pencil drawing", "black pepper", "bay leaf", "olive oil",
                      "soy sauce", "phone number", "phone numbers", "sesame oil", "vegetable stock", "powdered sugar")


def _pluralize(word: str) -> str:
    if word.endswith(("s", "x", "ch", "sh")):
        return word + "es"
    if word.endswith("y") and len(word) > 1 and word[-2] not in "aeiou":
        return word[:-1] + "ies"
    return word + "s"


@lru_cache(maxsize=None)
def _mention_regex() -> re.Pattern:
    forms = sorted(mention_table(), key=len, reverse=True)
    return re.compile(r"(?<![\w-])(" + "|".join(re.escape(f) for f in forms) + r")(?![\w-])")


# Names that are also common verbs or idioms ("what you saw", "it will die", "for the sake of"): such a form names an
# object only right after a word that starts a noun phrase ("a saw", "two red dice", "of trains").
_VERB_LIKE = frozenset({"saw", "die", "rose", "train", "trains", "ring", "rings", "bear", "bears", "duck", "ducks",
                        "fire", "sake"})


@lru_cache(maxsize=None)
def _noun_starts() -> frozenset[str]:
    """Words that start a noun phrase: articles and the like, the world's number, colour and size words."""
    from .scene import SIZE_WORDS  # scene imports this module
    from .textgen import NUMBER_WORDS
    return (frozenset("a an the this that these those some any each every its their his her my your our another no "
                      "many several few of with and or".split()) | frozenset(NUMBER_WORDS[1:]) | frozenset(COLORS)
            | frozenset(SIZE_WORDS) | {w for words in SIZE_WORDS.values() for w in words})


def is_object_use(text: str, start: int, end: int) -> bool:
    """Whether the mention at text[start:end] (lower case) names an object rather than a verb or an idiom."""
    form = text[start:end]
    if form not in _VERB_LIKE:
        return True
    if form == "sake" and re.match(r"\s+of\b", text[end:]):
        return False
    return any(w in _noun_starts() for w in re.findall(r"[\w-]+", text[max(0, start - 80):start])[-2:])  # two back


def find_mentions(text: str) -> list[tuple[str, frozenset[str]]]:
    """Object mentions in ``text`` (longest match first): list of (surface form, names).

    Quoted strings (titles, sign text), non-object phrases ("pencil sketch") and names used as verbs ("I saw")
    are skipped."""
    table = mention_table()
    text = re.sub(r'"[^"]*"', " ", text.lower())
    return [(m.group(1), table[m.group(1)]) for m in _mention_regex().finditer(text)
            if table[m.group(1)] and is_object_use(text, m.start(1), m.end(1))]


def atlas_index() -> dict:
    with open(os.path.join(ASSETS, "emoji_atlas.json"), encoding="utf-8") as f:
        return json.load(f)

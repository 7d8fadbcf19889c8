"""Small helpers to turn ground truth into varied, natural English (deterministic via rng)."""

from __future__ import annotations

import random

NUMBER_WORDS = ["zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine", "ten"]

POSITIONS = [
    ["top left", "top center", "top right"],
    ["middle left", "center", "middle right"],
    ["bottom left", "bottom center", "bottom right"],
]
POSITION_NAMES = [p for row in POSITIONS for p in row]

# ways to say each position inside a sentence
POSITION_PHRASES = {
    "top left": ["in the top left corner", "at the top left", "in the upper left", "in the upper-left corner"],
    "top center": ["at the top", "at the top center", "near the top in the middle", "in the upper middle"],
    "top right": ["in the top right corner", "at the top right", "in the upper right", "in the upper-right corner"],
    "middle left": ["on the left", "on the left side", "at the middle left", "along the left edge"],
    "center": ["in the center", "in the middle", "right in the center", "in the middle of the picture"],
    "middle right": ["on the right", "on the right side", "at the middle right", "along the right edge"],
    "bottom left": ["in the bottom left corner", "at the bottom left", "in the lower left", "in the lower-left corner"],
    "bottom center": ["at the bottom", "at the bottom center", "near the bottom in the middle", "in the lower middle"],
    "bottom right": ["in the bottom right corner", "at the bottom right", "in the lower right", "in the lower-right corner"],
}

# answer normalisation for position questions: free text -> canonical name
_POS_ALIASES = {
    "upper left": "top left", "top-left": "top left", "upper-left": "top left",
    "upper right": "top right", "top-right": "top right", "upper-right": "top right",
    "lower left": "bottom left", "bottom-left": "bottom left", "lower-left": "bottom left",
    "lower right": "bottom right", "bottom-right": "bottom right", "lower-right": "bottom right",
    "top middle": "top center", "upper middle": "top center", "top centre": "top center", "top": "top center",
    "bottom middle": "bottom center", "lower middle": "bottom center", "bottom centre": "bottom center",
    "bottom": "bottom center",
    "left": "middle left", "left side": "middle left", "center left": "middle left", "middle-left": "middle left",
    "right": "middle right", "right side": "middle right", "center right": "middle right",
    "middle-right": "middle right",
    "middle": "center", "centre": "center", "the center": "center", "the middle": "center",
}


def canonical_position(text: str) -> str | None:
    """Map a free-text position answer to one of the 9 grid names (None if none found)."""
    t = " ".join(text.lower().replace(".", " ").replace(",", " ").split())
    for name in sorted(POSITION_NAMES, key=len, reverse=True):
        if name in t:
            return name
    for alias in sorted(_POS_ALIASES, key=len, reverse=True):
        if f" {alias} " in f" {t} ":
            return _POS_ALIASES[alias]
    return None


def article(word: str) -> str:
    return "an" if word[:1].lower() in "aeiou" and not word.lower().startswith(("uni", "eu", "one")) else "a"


def a(word: str) -> str:
    return f"{article(word)} {word}"


# nouns that need a measure word when counted: name -> (one, many)
COUNTED = {
    "bread": ("loaf of bread", "loaves of bread"), "broccoli": ("head of broccoli", "heads of broccoli"),
    "lettuce": ("head of lettuce", "heads of lettuce"), "corn": ("ear of corn", "ears of corn"),
    "garlic": ("garlic bulb", "garlic bulbs"), "cheese": ("wedge of cheese", "wedges of cheese"),
    "meat": ("piece of meat", "pieces of meat"), "bacon": ("strip of bacon", "strips of bacon"),
    "popcorn": ("bucket of popcorn", "buckets of popcorn"), "salt": ("salt shaker", "salt shakers"),
    "rice": ("bowl of rice", "bowls of rice"), "spaghetti": ("plate of spaghetti", "plates of spaghetti"),
    "sushi": ("piece of sushi", "pieces of sushi"), "curry": ("plate of curry", "plates of curry"),
    "noodles": ("bowl of noodles", "bowls of noodles"), "dango": ("dango skewer", "dango skewers"),
    "sake": ("sake bottle", "sake bottles"), "cherries": ("pair of cherries", "pairs of cherries"),
    "blueberries": ("handful of blueberries", "handfuls of blueberries"),
    "grapes": ("bunch of grapes", "bunches of grapes"), "pancakes": ("stack of pancakes", "stacks of pancakes"),
    "peanuts": ("handful of peanuts", "handfuls of peanuts"), "fries": ("serving of fries", "servings of fries"),
    "headphones": ("pair of headphones", "pairs of headphones"), "glasses": ("pair of glasses", "pairs of glasses"),
    "sunglasses": ("pair of sunglasses", "pairs of sunglasses"), "jeans": ("pair of jeans", "pairs of jeans"),
    "socks": ("pair of socks", "pairs of socks"), "gloves": ("pair of gloves", "pairs of gloves"),
    "skis": ("pair of skis", "pairs of skis"), "scissors": ("pair of scissors", "pairs of scissors"),
    "champagne": ("champagne bottle", "champagne bottles"), "fried shrimp": ("fried shrimp", "fried shrimps"),
    "hibiscus": ("hibiscus flower", "hibiscus flowers"), "toilet paper": ("roll of toilet paper", "rolls of toilet paper"),
    "soap": ("bar of soap", "bars of soap"),
}


def count_phrase(n: int, singular: str, plural: str, rng: random.Random | None = None,
                 adj: str = "") -> str:
    """"a red circle" / "two red circles" / "three loaves of bread"."""
    if singular in COUNTED and not adj:
        singular, plural = COUNTED[singular]
    noun = singular if n == 1 else plural
    if adj:
        noun = f"{adj} {noun}"
    if n == 1:
        return a(noun)
    return f"{NUMBER_WORDS[n] if n < len(NUMBER_WORDS) else n} {noun}"


def join_list(items: list[str], conj: str = "and") -> str:
    if not items:
        return ""
    if len(items) == 1:
        return items[0]
    if len(items) == 2:
        return f"{items[0]} {conj} {items[1]}"
    return ", ".join(items[:-1]) + f", {conj} {items[-1]}"


def cap(s: str) -> str:
    return s[:1].upper() + s[1:]


def pick(rng: random.Random, options):
    return options[rng.randrange(len(options))]

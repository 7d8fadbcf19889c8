"""Named backgrounds (drawn procedurally, cached per size). Phrases avoid object words."""

from __future__ import annotations

import random
from functools import lru_cache

from PIL import Image, ImageDraw

from .render import mix, vgradient
from .vocab import COLORS

PLAIN = ["white", "gray", "pink", "yellow", "blue", "green", "purple", "orange", "black"]


def _sky_ground(S, sky_top, sky_bottom, ground_top, ground_bottom, horizon):
    im = vgradient((S, S), sky_top, sky_bottom)
    h = int(S * horizon)
    im.paste(vgradient((S, S - h), ground_top, ground_bottom), (0, h))
    return im


def _grass(S):
    im = _sky_ground(S, (120, 180, 240), (190, 225, 250), (110, 190, 80), (60, 140, 50), 0.42)
    d = ImageDraw.Draw(im)
    r = random.Random(1)
    for _ in range(S):
        x, y = r.randrange(S), r.randrange(int(S * 0.45), S)
        d.line((x, y, x + r.randint(-2, 2), y - r.randint(2, 5)), fill=(50, 120, 40))
    return im


def _beach(S):
    im = _sky_ground(S, (110, 180, 245), (200, 230, 250), (238, 214, 160), (220, 190, 130), 0.5)
    sea = vgradient((S, int(S * 0.13)), (40, 120, 190), (90, 170, 210))
    im.paste(sea, (0, int(S * 0.37)))
    return im


def _sunset_beach(S):
    im = _sky_ground(S, (250, 120, 80), (252, 200, 110), (230, 190, 130), (200, 160, 100), 0.55)
    im.paste(vgradient((S, int(S * 0.12)), (70, 60, 130), (120, 90, 150)), (0, int(S * 0.43)))
    return im


def _wood(S):
    im = Image.new("RGB", (S, S), (181, 128, 80))
    d = ImageDraw.Draw(im)
    r = random.Random(2)
    plank = max(8, S // 6)
    for i, y in enumerate(range(0, S, plank)):
        c = mix((181, 128, 80), (150, 100, 60), r.random() * 0.6)
        d.rectangle((0, y, S, y + plank), fill=c)
        d.line((0, y, S, y), fill=(110, 70, 40), width=max(1, S // 160))
        for _ in range(3):
            yy = y + r.randrange(plank)
            d.line((0, yy, S, yy + r.randint(-2, 2)), fill=mix(c, (120, 80, 45), 0.4))
    return im


def _bricks(S):
    im = Image.new("RGB", (S, S), (200, 190, 180))
    d = ImageDraw.Draw(im)
    r = random.Random(3)
    bh = max(6, S // 14)
    bw = bh * 2
    for row, y in enumerate(range(0, S, bh)):
        off = (bw // 2) * (row % 2)
        for x in range(-off, S, bw):
            c = mix((170, 70, 50), (140, 55, 40), r.random())
            d.rectangle((x + 1, y + 1, x + bw - 2, y + bh - 2), fill=c)
    return im


def _snow(S):
    return _sky_ground(S, (170, 190, 215), (215, 225, 240), (250, 250, 255), (225, 232, 245), 0.45)


def _night(S):
    return vgradient((S, S), (10, 15, 50), (40, 50, 110))


def _tiles(S):
    im = Image.new("RGB", (S, S), (235, 238, 240))
    d = ImageDraw.Draw(im)
    t = max(8, S // 7)
    for x in range(0, S, t):
        d.line((x, 0, x, S), fill=(200, 205, 210), width=max(1, S // 200))
        d.line((0, x, S, x), fill=(200, 205, 210), width=max(1, S // 200))
    return im


def _underwater(S):
    im = vgradient((S, S), (60, 170, 220), (10, 60, 120))
    d = ImageDraw.Draw(im)
    r = random.Random(4)
    for _ in range(12):
        x, y = r.randrange(S), r.randrange(S)
        rr = r.randint(1, max(2, S // 60))
        d.ellipse((x - rr, y - rr, x + rr, y + rr), outline=(170, 220, 245))
    return im


def _space(S):
    im = vgradient((S, S), (5, 5, 20), (25, 10, 45))
    d = ImageDraw.Draw(im)
    r = random.Random(5)
    for _ in range(S // 3):
        x, y = r.randrange(S), r.randrange(S)
        d.point((x, y), fill=(230, 230, 255))
    return im


def _street(S):
    im = vgradient((S, S), (25, 30, 70), (70, 60, 110))
    d = ImageDraw.Draw(im)
    r = random.Random(6)
    x = 0
    while x < S:
        w = r.randint(S // 10, S // 5)
        h = r.randint(S // 5, S // 2)
        d.rectangle((x, S * 0.7 - h, x + w - 2, S * 0.7), fill=(35, 35, 55))
        for wy in range(int(S * 0.7 - h + 4), int(S * 0.7) - 4, max(4, S // 30)):
            for wx in range(x + 3, x + w - 5, max(4, S // 30)):
                if r.random() < 0.4:
                    d.rectangle((wx, wy, wx + 1, wy + 1), fill=(250, 220, 120))
        x += w
    d.rectangle((0, S * 0.7, S, S), fill=(60, 60, 65))
    for x in range(0, S, S // 6):
        d.rectangle((x, S * 0.84, x + S // 12, S * 0.855), fill=(230, 230, 230))
    return im


def _hills(S):
    im = vgradient((S, S), (150, 190, 235), (220, 235, 250))
    d = ImageDraw.Draw(im)
    d.ellipse((-S * 0.3, S * 0.45, S * 0.7, S * 1.4), fill=(240, 244, 250))
    d.ellipse((S * 0.3, S * 0.5, S * 1.4, S * 1.5), fill=(225, 232, 245))
    return im


# name -> (phrases, drawer, main colour word or None)
BACKGROUNDS: dict[str, tuple[list[str], callable]] = {
    "grass field": (["a grassy field under a blue sky", "a green meadow", "a grassy field"], _grass),
    "beach": (["a sandy beach by the sea", "a beach", "the seaside with sand and water"], _beach),
    "sunset beach": (["a sunset beach", "a beach at sunset", "the seaside at sunset"], _sunset_beach),
    "wooden table": (["a wooden table", "a wooden tabletop", "brown wooden planks"], _wood),
    "brick wall": (["a red brick wall", "a brick wall", "a wall of red bricks"], _bricks),
    "snowy ground": (["snowy ground", "a snowy landscape", "white snow under a pale sky"], _snow),
    "night sky": (["a dark night sky", "a deep blue night sky", "the night sky"], _night),
    "kitchen tiles": (["white kitchen tiles", "a tiled wall", "light gray tiles"], _tiles),
    "underwater": (["an underwater scene", "deep blue water", "the bottom of the sea"], _underwater),
    "outer space": (["outer space", "the darkness of space", "a black space backdrop"], _space),
    "city street": (["a city street at night", "a street with buildings at night", "a night city street"], _street),
    "snowy hills": (["snowy hills", "white snowy hills", "hills covered in snow"], _hills),
}
for _c in PLAIN:
    BACKGROUNDS[f"plain {_c}"] = ([f"a plain {_c} background", f"a {_c} background",
                                  f"a solid {_c} backdrop"], None)

SCENE_BACKGROUNDS = [b for b in BACKGROUNDS if b not in ("sunset beach", "snowy hills")]


@lru_cache(maxsize=128)
def _cached(name: str, S: int) -> Image.Image:
    phrases, fn = BACKGROUNDS[name]
    if fn is None:
        return Image.new("RGB", (S, S), COLORS[name.split(" ", 1)[1]])
    return fn(S)


def background(name: str, S: int) -> Image.Image:
    """A fresh copy of the named background at S x S."""
    return _cached(name, S).copy()


def dominant_colors(name: str) -> set[str]:
    """Colour names a drawn shape should avoid on this background (for contrast)."""
    if name.startswith("plain "):
        c = name.split(" ", 1)[1]
        close = {"white": {"white", "yellow", "pink", "gray"}, "black": {"black", "purple", "brown", "blue"},
                 "yellow": {"yellow", "orange", "white"}, "orange": {"orange", "yellow", "red"},
                 "pink": {"pink", "white", "red"}, "gray": {"gray", "white"},
                 "blue": {"blue", "purple"}, "green": {"green"}, "purple": {"purple", "blue", "black"}}
        return close.get(c, {c})
    return {"grass field": {"green", "blue"}, "beach": {"yellow", "blue", "orange"},
            "sunset beach": {"orange", "pink", "yellow"}, "wooden table": {"brown", "orange"},
            "brick wall": {"red", "brown", "orange"}, "snowy ground": {"white", "gray"},
            "night sky": {"blue", "black", "purple"}, "kitchen tiles": {"white", "gray"},
            "underwater": {"blue"}, "outer space": {"black", "purple"},
            "city street": {"black", "gray", "purple", "blue"}, "snowy hills": {"white", "gray"}}.get(name, set())

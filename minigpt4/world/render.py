"""Low-level drawing: cached emoji glyphs, shapes, backgrounds, wobbly pencil lines."""

from __future__ import annotations

import math
import os
import random
from functools import lru_cache

from PIL import Image, ImageDraw, ImageFilter, ImageFont

from .vocab import ASSETS, COLORS, atlas_index


@lru_cache(maxsize=1)
def _atlas() -> tuple[Image.Image, dict, int]:
    idx = atlas_index()
    im = Image.open(os.path.join(ASSETS, "emoji_atlas.png"))
    im.load()
    return im.convert("RGBA"), idx["index"], idx["cell"]


@lru_cache(maxsize=4096)
def glyph(codepoint: str, px: int, tint: str | None = None) -> Image.Image:
    """The emoji for ``codepoint`` fitted in a ``px`` x ``px`` RGBA tile (cached).

    ``tint`` recolours it (luminance x colour), for prompts like "a blue cat"."""
    atlas, index, cell = _atlas()
    x, y = index[codepoint]
    g = atlas.crop((x, y, x + cell, y + cell))
    if px != cell:
        g = g.resize((px, px), Image.BILINEAR if px < cell // 2 else Image.LANCZOS)
    if tint is not None:
        r, gg, b = COLORS[tint]
        lum = g.convert("L").point(lambda v: min(255, int(v * 1.25 + 40)))
        col = Image.merge("RGB", [lum.point(lambda v, c=c: v * c // 255) for c in (r, gg, b)])
        col.putalpha(g.getchannel("A"))
        g = col
    return g


def glyph_bbox(codepoint: str, px: int) -> tuple[int, int, int, int]:
    """Opaque bounding box of the glyph tile (x0, y0, x1, y1) relative to its tile."""
    return _glyph_bbox(codepoint, px)


@lru_cache(maxsize=4096)
def _glyph_bbox(codepoint: str, px: int) -> tuple[int, int, int, int]:
    a = glyph(codepoint, px).getchannel("A").point(lambda v: 255 if v > 60 else 0)
    return a.getbbox() or (0, 0, px, px)


def _shape_points(shape: str, px: int) -> list[tuple[float, float]]:
    c = px / 2
    r = px / 2 * 0.95
    if shape == "triangle":
        return [(c, c - r), (c + r * 0.95, c + r * 0.8), (c - r * 0.95, c + r * 0.8)]
    if shape == "star":
        pts = []
        for i in range(10):
            a = -math.pi / 2 + i * math.pi / 5
            rr = r if i % 2 == 0 else r * 0.45
            pts.append((c + rr * math.cos(a), c + 0.08 * r + rr * math.sin(a)))
        return pts
    if shape == "diamond shape":
        return [(c, c - r), (c + r * 0.7, c), (c, c + r), (c - r * 0.7, c)]
    if shape == "heart":
        pts = []
        for i in range(40):
            t = 2 * math.pi * i / 40
            x = 16 * math.sin(t) ** 3
            y = -(13 * math.cos(t) - 5 * math.cos(2 * t) - 2 * math.cos(3 * t) - math.cos(4 * t))
            pts.append((c + x * r / 17, c + y * r / 17 + 0.05 * r))
        return pts
    raise ValueError(shape)


@lru_cache(maxsize=2048)
def shape_tile(shape: str, color: str, px: int, outline: bool = True) -> Image.Image:
    """A filled shape in a named colour, antialiased (drawn at 4x and reduced), cached."""
    s = 4
    big = Image.new("RGBA", (px * s, px * s), (0, 0, 0, 0))
    d = ImageDraw.Draw(big)
    fill = COLORS[color] + (255,)
    line = tuple(max(0, v - 70) for v in COLORS[color]) + (255,) if outline else None
    w = max(2, px * s // 28) if outline else 0
    m = w
    if shape == "circle":
        d.ellipse((m, m, px * s - m, px * s - m), fill=fill, outline=line, width=w)
    elif shape == "square":
        d.rectangle((m + px * s * 0.06, m + px * s * 0.06, px * s * 0.94 - m, px * s * 0.94 - m),
                    fill=fill, outline=line, width=w)
    else:
        pts = [(x * s, y * s) for x, y in _shape_points(shape, px)]
        d.polygon(pts, fill=fill, outline=line, width=w)
    return big.resize((px, px), Image.LANCZOS)


@lru_cache(maxsize=64)
def font(px: int) -> ImageFont.FreeTypeFont:
    """Pillow's built-in scalable font (no system font needed)."""
    return ImageFont.load_default(px)


def paste(canvas: Image.Image, tile: Image.Image, x: int, y: int) -> None:
    canvas.paste(tile, (x, y), tile)


def mix(c1, c2, t: float) -> tuple[int, int, int]:
    return tuple(int(a + (b - a) * t) for a, b in zip(c1, c2))


def vgradient(size: tuple[int, int], top, bottom) -> Image.Image:
    w, h = size
    col = Image.new("RGB", (1, h))
    for y in range(h):
        col.putpixel((0, y), mix(top, bottom, y / max(1, h - 1)))
    return col.resize((w, h))


def wobbly_line(draw: ImageDraw.ImageDraw, p0, p1, rng: random.Random, fill=(40, 40, 40),
                width: int = 2, amp: float = 1.5) -> None:
    """A hand-drawn looking line: slightly curved, jittered, overshooting ends."""
    (x0, y0), (x1, y1) = p0, p1
    L = math.hypot(x1 - x0, y1 - y0)
    n = max(2, int(L / 8))
    over = rng.uniform(-2, 3)
    ux, uy = ((x1 - x0) / L, (y1 - y0) / L) if L else (0.0, 0.0)
    x0, y0, x1, y1 = x0 - ux * over, y0 - uy * over, x1 + ux * rng.uniform(-2, 3), y1 + uy * rng.uniform(-2, 3)
    bow = rng.uniform(-amp, amp) * min(3.0, L / 40)
    ph = rng.uniform(0, 6.28)
    pts = []
    for i in range(n + 1):
        t = i / n
        off = bow * math.sin(math.pi * t) + amp * 0.5 * math.sin(ph + t * rng.uniform(5, 9))
        pts.append((x0 + (x1 - x0) * t - uy * off, y0 + (y1 - y0) * t + ux * off))
    draw.line(pts, fill=fill, width=width, joint="curve")


def wobbly_rect(draw, box, rng, fill=(40, 40, 40), width=2, amp=1.2) -> None:
    x0, y0, x1, y1 = box
    wobbly_line(draw, (x0, y0), (x1, y0), rng, fill, width, amp)
    wobbly_line(draw, (x1, y0), (x1, y1), rng, fill, width, amp)
    wobbly_line(draw, (x1, y1), (x0, y1), rng, fill, width, amp)
    wobbly_line(draw, (x0, y1), (x0, y0), rng, fill, width, amp)


def squiggle(draw, x0, y, x1, rng, fill=(60, 60, 60), width=1, height=3.0) -> None:
    """A scribbled line standing for a line of unreadable text."""
    pts = []
    x = x0
    while x < x1:
        pts.append((x, y + rng.uniform(-height, height)))
        x += rng.uniform(2.5, 4.5)
        if rng.random() < 0.08 and x < x1 - 10:  # word gaps
            draw.line(pts, fill=fill, width=width) if len(pts) > 1 else None
            pts = []
            x += rng.uniform(3, 6)
    if len(pts) > 1:
        draw.line(pts, fill=fill, width=width)


def handwritten_text(canvas: Image.Image, xy, text: str, px: int, rng: random.Random,
                     fill=(35, 35, 35)) -> tuple[int, int]:
    """Draw ``text`` letter by letter with jitter so it looks hand-written. Returns end (x, y)."""
    f = font(px)
    d = ImageDraw.Draw(canvas)
    x, y = xy
    for ch in text:
        dy = rng.uniform(-px * 0.08, px * 0.08)
        d.text((x, y + dy), ch, font=f, fill=fill)
        x += f.getlength(ch) * rng.uniform(0.92, 1.08)
    return int(x), y


def text_size(text: str, px: int) -> tuple[int, int]:
    f = font(px)
    b = f.getbbox(text)
    return int(b[2] - b[0]), int(b[3] - b[1])


def soft_shadow(size, box, radius=3, alpha=70) -> Image.Image:
    sh = Image.new("L", size, 0)
    ImageDraw.Draw(sh).ellipse(box, fill=alpha)
    return sh.filter(ImageFilter.GaussianBlur(radius))

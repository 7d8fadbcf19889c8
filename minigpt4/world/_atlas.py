"""Build the emoji glyph atlas shipped in ``assets/`` (maintainer tool).

The world never needs the emoji font at runtime: every object glyph is read from
``assets/emoji_atlas.png`` (rendered once from Debian's ``fonts-noto-color-emoji``,
Noto Color Emoji, SIL OFL 1.1 / Apache-2.0 images), so images are byte-identical on
every machine.  Rebuild with::

    python -m minigpt4.world._atlas /usr/share/fonts/truetype/noto/NotoColorEmoji.ttf
"""

from __future__ import annotations

import json
import os
import sys

from PIL import Image, ImageDraw, ImageFont

CELL = 96  # glyph cell size in the atlas (pixels)
ASSETS = os.path.join(os.path.dirname(__file__), "assets")
DEFAULT_FONT = "/usr/share/fonts/truetype/noto/NotoColorEmoji.ttf"


def _codepoints() -> list[str]:
    cps = []
    with open(os.path.join(ASSETS, "objects.tsv"), encoding="utf-8") as f:
        for line in f:
            if line.strip() and not line.startswith("#"):
                cps.append(line.split("\t")[0])
    return cps


def render_glyph(font: ImageFont.FreeTypeFont, cp: str) -> Image.Image:
    """Render one emoji at the font's native 109 px, crop to its alpha box, fit in CELL."""
    im = Image.new("RGBA", (160, 160), (0, 0, 0, 0))
    ImageDraw.Draw(im).text((8, 8), chr(int(cp, 16)), font=font, embedded_color=True)
    im = im.crop(im.getbbox())
    scale = CELL / max(im.size)
    w, h = max(1, round(im.width * scale)), max(1, round(im.height * scale))
    im = im.resize((w, h), Image.LANCZOS)
    cell = Image.new("RGBA", (CELL, CELL), (0, 0, 0, 0))
    cell.paste(im, ((CELL - w) // 2, (CELL - h) // 2))
    return cell


def build(font_path: str = DEFAULT_FONT) -> None:
    font = ImageFont.truetype(font_path, 109)
    cps = _codepoints()
    cols = 20
    rows = (len(cps) + cols - 1) // cols
    atlas = Image.new("RGBA", (cols * CELL, rows * CELL), (0, 0, 0, 0))
    index = {}
    for i, cp in enumerate(cps):
        x, y = (i % cols) * CELL, (i // cols) * CELL
        atlas.paste(render_glyph(font, cp), (x, y))
        index[cp] = [x, y]
    tmp = os.path.join(ASSETS, "emoji_atlas.png.tmp")
    # a 256-colour palette keeps the shipped file small (~0.6 MB) at little visual cost
    atlas = atlas.quantize(256, method=Image.Quantize.FASTOCTREE, dither=Image.Dither.NONE)
    atlas.save(tmp, format="PNG", optimize=True)
    os.replace(tmp, os.path.join(ASSETS, "emoji_atlas.png"))
    with open(os.path.join(ASSETS, "emoji_atlas.json.tmp"), "w") as f:
        json.dump({"cell": CELL, "index": index}, f, sort_keys=True)
    os.replace(os.path.join(ASSETS, "emoji_atlas.json.tmp"), os.path.join(ASSETS, "emoji_atlas.json"))


if __name__ == "__main__":
    build(sys.argv[1] if len(sys.argv) > 1 else DEFAULT_FONT)

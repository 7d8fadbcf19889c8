"""Image loading and preprocessing with clear errors for bad input.

Conversions (documented, tested): EXIF orientation is applied; CMYK, palette, greyscale and
16-bit images become 8-bit RGB; transparency is composited onto white; animated images use
their first frame. Errors (`ImageError`) name the problem and the fix: not an image, truncated
file, too small, too many pixels (decompression bomb).
"""
from __future__ import annotations

import io
import warnings
from pathlib import Path
from typing import Union

import numpy as np
import torch
from PIL import Image, ImageOps, UnidentifiedImageError

from minigpt4.config import CLIP_MEAN, CLIP_STD

ImageInput = Union[str, Path, bytes, Image.Image]

MIN_SIDE = 8
DEFAULT_MAX_PIXELS = 64_000_000  # ~8000x8000; larger is almost surely a mistake or a bomb


class ImageError(ValueError):
    """A user-facing problem with an input image."""


def _describe(src: ImageInput) -> str:
    if isinstance(src, (str, Path)):
        return f"'{src}'"
    if isinstance(src, bytes):
        return f"<{len(src)} bytes>"
    return "<PIL image>"


def load_image(src: ImageInput, max_pixels: int = DEFAULT_MAX_PIXELS) -> Image.Image:
    """Open `src` (path, bytes or PIL image) as an 8-bit RGB PIL image, or raise ImageError."""
    name = _describe(src)
    if isinstance(src, Image.Image):
        img = src
    else:
        if isinstance(src, (str, Path)):
            path = Path(src)
            if not path.exists():
                raise ImageError(f"image {name} does not exist; check the path")
            if path.is_dir():
                raise ImageError(f"image {name} is a directory; pass an image file")
            data = path.read_bytes()
        else:
            data = src
        if not data:
            raise ImageError(f"image {name} is empty (0 bytes); pass a PNG, JPEG, WebP, GIF or BMP file")
        # Check the header size before decoding, so a bomb never allocates its pixels.
        old_limit = Image.MAX_IMAGE_PIXELS
        try:
            Image.MAX_IMAGE_PIXELS = None
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                img = Image.open(io.BytesIO(data))
        except UnidentifiedImageError:
            raise ImageError(f"{name} is not an image Pillow can read; pass a PNG, JPEG, WebP, GIF or BMP file") from None
        except (OSError, SyntaxError) as e:  # a header cut short fails already in open()
            raise ImageError(f"image {name} is truncated or corrupt ({e}); re-export or re-download the file") from None
        finally:
            Image.MAX_IMAGE_PIXELS = old_limit
    w, h = img.size
    if w * h > max_pixels:
        raise ImageError(f"image {name} is {w}x{h} = {w * h / 1e6:.3g} Mpx, over the limit of "
                         f"{max_pixels / 1e6:.3g} Mpx (a possible decompression bomb); downscale it first "
                         f"or raise the limit (max_pixels / --max-pixels)")
    if min(w, h) < MIN_SIDE:
        raise ImageError(f"image {name} is {w}x{h} pixels; the model needs at least "
                         f"{MIN_SIDE}x{MIN_SIDE} to see anything - pass a larger image")
    try:
        if getattr(img, "is_animated", False):
            img.seek(0)  # animated GIF/WebP/APNG: the first frame stands for the image
        img.load()
    except (OSError, SyntaxError) as e:
        raise ImageError(f"image {name} is truncated or corrupt ({e}); re-export or re-download the file") from None
    img = ImageOps.exif_transpose(img)
    return to_rgb(img)


def to_rgb(img: Image.Image) -> Image.Image:
    if img.mode == "RGB":
        return img
    if img.mode in ("I;16", "I;16B", "I;16L", "I"):
        arr = np.asarray(img, dtype=np.float64)
        # 16-bit modes span 0..65535 whatever the content (a dark 16-bit image stays dark); plain
        # 32-bit "I" has no declared range, so values up to 255 are read as 8-bit.
        top = 65535.0 if img.mode.startswith("I;16") or arr.max() > 255 else 255.0
        img = Image.fromarray(np.clip(np.rint(arr / top * 255.0), 0, 255).astype(np.uint8), "L")
    if img.mode == "P":
        img = img.convert("RGBA")
    if img.mode in ("RGBA", "LA", "PA"):
        img = img.convert("RGBA")
        background = Image.new("RGBA", img.size, (255, 255, 255, 255))
        return Image.alpha_composite(background, img).convert("RGB")
    return img.convert("RGB")


def preprocess(images: list[Image.Image], size: int, mean=CLIP_MEAN, std=CLIP_STD) -> torch.Tensor:
    """Resize to size x size (bicubic, as the original), scale to [0,1], normalise -> (B,3,S,S)."""
    arrays = [np.asarray(im.resize((size, size), Image.BICUBIC), dtype=np.float32) for im in images]
    x = torch.from_numpy(np.stack(arrays)).permute(0, 3, 1, 2) / 255.0
    mean_t = torch.tensor(mean, dtype=torch.float32).view(1, 3, 1, 1)
    std_t = torch.tensor(std, dtype=torch.float32).view(1, 3, 1, 1)
    return (x - mean_t) / std_t


def adapt_pixels(pixels: torch.Tensor, size: int, mean, std, to_mean, to_std) -> torch.Tensor:
    """Pixels `preprocess` made (normalised with mean/std) as one vision side expects them: resized to `size` (bicubic
    with antialiasing, torch's match for PIL's resize) and renormalised with that side's to_mean/to_std. The same
    tensor when nothing differs, so a side built like the main one sees exactly what it always saw."""
    if pixels.shape[-1] != size or pixels.shape[-2] != size:
        pixels = torch.nn.functional.interpolate(pixels.float(), size=(size, size), mode="bicubic",
                                                 antialias=True, align_corners=False).to(pixels.dtype)
    if tuple(mean) != tuple(to_mean) or tuple(std) != tuple(to_std):
        shape = (1, 3, 1, 1)
        m, s = (torch.tensor(v, dtype=pixels.dtype, device=pixels.device).view(shape) for v in (mean, std))
        tm, ts = (torch.tensor(v, dtype=pixels.dtype, device=pixels.device).view(shape) for v in (to_mean, to_std))
        pixels = (pixels * s + m - tm) / ts
    return pixels

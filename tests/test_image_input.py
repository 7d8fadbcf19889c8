"""Bad and unusual image files, written for real with Pillow: each gets a clear ImageError or a
documented conversion (see minigpt4/data/image.py). Plus the content-hash cache of encode_images."""
from __future__ import annotations

import io
import struct
import zlib

import numpy as np
import pytest
import torch
from PIL import Image

from minigpt4.data.image import ImageError, load_image

RED, BLUE, WHITE = (255, 0, 0), (0, 0, 255), (255, 255, 255)


def png_bytes(img: Image.Image, **kw) -> bytes:
    buf = io.BytesIO()
    img.save(buf, format="PNG", **kw)
    return buf.getvalue()


def jpeg_bytes(img: Image.Image, **kw) -> bytes:
    buf = io.BytesIO()
    img.save(buf, format="JPEG", quality=95, **kw)
    return buf.getvalue()


def noise(w=64, h=48, seed=0) -> Image.Image:
    return Image.fromarray(np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8))


def near(a, b, tol=6):
    return all(abs(int(x) - int(y)) <= tol for x, y in zip(a, b))


# --- errors ---------------------------------------------------------------------------------


def test_not_an_image(tmp_path):
    p = tmp_path / "notes.png"
    p.write_text("this is a text file, not a picture\n")
    with pytest.raises(ImageError, match=r"notes.png' is not an image Pillow can read; pass a PNG, JPEG"):
        load_image(p)


def test_empty_file(tmp_path):
    p = tmp_path / "empty.jpg"
    p.write_bytes(b"")
    with pytest.raises(ImageError, match=r"is empty \(0 bytes\)"):
        load_image(p)


def test_missing_path_and_directory(tmp_path):
    with pytest.raises(ImageError, match="does not exist; check the path"):
        load_image(tmp_path / "nope.png")
    with pytest.raises(ImageError, match="is a directory"):
        load_image(tmp_path)


@pytest.mark.parametrize("fmt", ["png", "jpeg"])
def test_truncated_file(tmp_path, fmt):
    data = png_bytes(noise()) if fmt == "png" else jpeg_bytes(noise())
    p = tmp_path / f"cut.{fmt}"
    p.write_bytes(data[: len(data) // 2])
    with pytest.raises(ImageError, match=r"is truncated or corrupt .*re-export or re-download"):
        load_image(p)


def bomb_png(width: int, height: int) -> bytes:
    """A valid tiny PNG whose IHDR claims width x height: costs a few bytes, not 400M pixels."""
    data = bytearray(png_bytes(Image.new("RGB", (8, 8), RED)))
    assert data[12:16] == b"IHDR"
    data[16:24] = struct.pack(">II", width, height)
    data[29:33] = struct.pack(">I", zlib.crc32(bytes(data[12:29])) & 0xFFFFFFFF)
    return bytes(data)


def test_decompression_bomb_rejected_before_decoding(tmp_path):
    p = tmp_path / "bomb.png"
    p.write_bytes(bomb_png(20000, 20000))
    assert struct.unpack(">II", p.read_bytes()[16:24]) == (20000, 20000)  # the header really claims it
    with pytest.raises(ImageError, match=r"20000x20000 = 400 Mpx, over the limit of 64 Mpx .*decompression bomb.*max_pixels"):
        load_image(p)
    with pytest.raises(ImageError, match=r"64x48 = 0.00307 Mpx, over the limit of 0.0001 Mpx"):
        load_image(png_bytes(noise()), max_pixels=100)


def test_one_pixel_image():
    with pytest.raises(ImageError, match=r"is 1x1 pixels; the model needs at least 8x8"):
        load_image(png_bytes(Image.new("RGB", (1, 1), RED)))


# --- documented conversions -------------------------------------------------------------------


def test_cmyk_jpeg_becomes_rgb(tmp_path):
    p = tmp_path / "cmyk.jpg"
    Image.new("CMYK", (32, 32), (0, 255, 255, 0)).save(p, quality=95)  # pure red in CMYK
    assert Image.open(p).mode == "CMYK"
    img = load_image(p)
    assert img.mode == "RGB" and near(img.getpixel((16, 16)), RED, 10)


def test_rgba_is_composited_on_white():
    im = Image.new("RGBA", (16, 16), (255, 0, 0, 0))  # fully transparent red
    im.putpixel((0, 0), (255, 0, 0, 255))
    im.putpixel((1, 0), (0, 0, 0, 128))
    img = load_image(png_bytes(im))
    assert img.mode == "RGB"
    assert img.getpixel((5, 5)) == WHITE and img.getpixel((0, 0)) == RED
    assert near(img.getpixel((1, 0)), (127, 127, 127), 2)


def test_palette_with_and_without_transparency():
    im = Image.new("P", (16, 16), 0)
    im.putpalette([255, 0, 0, 0, 0, 255] + [0] * 762)
    im.putpixel((3, 3), 1)
    img = load_image(png_bytes(im))
    assert img.mode == "RGB" and img.getpixel((0, 0)) == RED and img.getpixel((3, 3)) == BLUE
    img = load_image(png_bytes(im, transparency=0))  # palette index 0 transparent -> white
    assert img.getpixel((0, 0)) == WHITE and img.getpixel((3, 3)) == BLUE


def test_16bit_png_scales_to_8bit():
    arr = np.zeros((16, 16), dtype=np.uint16)
    arr[0, 0], arr[0, 1], arr[0, 2] = 65535, 32768, 200
    im = Image.fromarray(arr)
    data = png_bytes(im)
    assert Image.open(io.BytesIO(data)).mode.startswith("I")
    img = load_image(data)
    assert img.mode == "RGB"
    assert img.getpixel((0, 0)) == WHITE and near(img.getpixel((1, 0)), (128, 128, 128), 1)
    # 200/65535 is nearly black, even though every value of this image is below 256
    dark = load_image(png_bytes(Image.fromarray(np.full((16, 16), 200, dtype=np.uint16))))
    assert dark.getpixel((0, 0)) == (1, 1, 1)


def test_animated_gif_uses_first_frame(tmp_path):
    p = tmp_path / "anim.gif"
    frames = [Image.new("RGB", (16, 16), RED), Image.new("RGB", (16, 16), BLUE)]
    frames[0].save(p, save_all=True, append_images=frames[1:], duration=100, loop=0)
    assert Image.open(p).n_frames == 2
    img = load_image(p)
    assert img.mode == "RGB" and near(img.getpixel((8, 8)), RED)


def test_exif_orientation_is_applied(tmp_path):
    im = Image.new("RGB", (40, 20), RED)
    im.paste(BLUE, (20, 0, 40, 20))  # left red, right blue
    exif = Image.Exif()
    exif[0x0112] = 6  # "rotate 90 CW to display"
    p = tmp_path / "phone.jpg"
    im.save(p, exif=exif, quality=95)
    img = load_image(p)
    assert img.size == (20, 40)
    assert near(img.getpixel((10, 5)), RED, 10) and near(img.getpixel((10, 35)), BLUE, 10)


def test_greyscale_and_pil_input():
    img = load_image(Image.new("L", (16, 16), 77))
    assert img.mode == "RGB" and img.getpixel((0, 0)) == (77, 77, 77)


# --- encode_images cache --------------------------------------------------------------------


def test_encode_images_cache_runs_encoder_once_per_content(tiny_model, monkeypatch, tmp_path):
    calls = []
    real = tiny_model.vision_features

    def counting(pixels):  # the frozen encoder
        calls.append(pixels.shape[0])
        return real(pixels)

    monkeypatch.setattr(tiny_model, "vision_features", counting)
    tiny_model.clear_cache()
    a, b = noise(seed=1), noise(seed=2)
    path = tmp_path / "a.png"
    path.write_bytes(png_bytes(a))
    try:
        first = tiny_model.encode_images([a])
        assert calls == [1]
        again = tiny_model.encode_images([path, png_bytes(a), a.copy()])  # same pixels, three input kinds
        assert calls == [1] and torch.equal(again[2], first[0]) and torch.equal(again[0], first[0])
        mixed = tiny_model.encode_images([b, a, b])  # only b is new, and encoded once
        assert calls == [1, 1]
        assert torch.equal(mixed[0], mixed[2]) and not torch.equal(mixed[0], mixed[1])
        fresh = tiny_model.encode_pixels(tiny_model.preprocess([b]))
        torch.testing.assert_close(mixed[0], fresh[0])
    finally:
        tiny_model.clear_cache()

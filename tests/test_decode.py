import io
import time

import numpy as np
import pytest
from PIL import Image
from skimage import data

from auditor.demo import synth
from auditor.io import decode


def _save(img: Image.Image, fmt: str, **kw) -> bytes:
    buf = io.BytesIO()
    img.save(buf, fmt, **kw)
    return buf.getvalue()


RGB = Image.fromarray(data.astronaut()[::4, ::4])


@pytest.mark.parametrize(
    "mode,fmt",
    [("1", "PNG"), ("L", "PNG"), ("LA", "PNG"), ("P", "PNG"), ("RGB", "PNG"), ("RGBA", "PNG"),
     ("CMYK", "JPEG"), ("L", "JPEG"), ("I;16", "PNG"), ("RGB", "BMP"), ("RGB", "GIF"),
     ("RGB", "TIFF"), ("RGB", "WEBP"), ("I", "TIFF"), ("F", "TIFF")],
)  # fmt: skip
def test_every_mode_decodes_to_rgb_uint8(mode, fmt):
    if mode == "I;16":
        arr = (np.asarray(RGB.convert("L"), dtype=np.uint16) * 257).astype(np.uint16)
        img = Image.fromarray(arr)
        assert img.mode == "I;16"
    else:
        img = RGB.convert(mode)
    res = decode.decode_bytes(_save(img, fmt))
    assert isinstance(res, decode.DecodedImage), res
    assert res.rgb.dtype == np.uint8 and res.rgb.shape == (128, 128, 3)
    assert res.format == fmt
    assert (res.width, res.height) == (128, 128)
    if mode in ("I;16",):
        assert res.bit_depth == 16
        # 16-bit values scaled down to 8 bits, not clipped
        assert abs(int(res.rgb[..., 0].mean()) - int(np.asarray(RGB.convert("L")).mean())) <= 2
    if mode in ("LA", "RGBA"):
        assert res.has_alpha


def test_alpha_composited_on_white():
    rgba = np.zeros((10, 10, 4), dtype=np.uint8)  # fully transparent black
    res = decode.decode_bytes(_save(Image.fromarray(rgba, "RGBA"), "PNG"))
    assert res.rgb.min() == 255 and res.alpha_fraction_transparent == 1.0


def test_exif_orientation_applied():
    img = Image.fromarray(np.zeros((20, 40, 3), dtype=np.uint8))  # 40 wide, 20 high
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 degrees
    res = decode.decode_bytes(_save(img, "JPEG", exif=exif.tobytes()))
    assert res.exif_rotated
    assert (res.width, res.height) == (20, 40)
    assert res.rgb.shape[:2] == (40, 20)


def test_bomb_refused_fast_without_allocating():
    t = time.perf_counter()
    res = decode.decode_bytes(synth.bomb_png(60_000, 60_000))
    assert isinstance(res, decode.DecodeError) and res.kind == "bomb"
    assert time.perf_counter() - t < 2


def test_pixel_limit_is_configurable():
    data_ = _save(RGB, "PNG")
    assert isinstance(decode.decode_bytes(data_, max_pixels=100), decode.DecodeError)
    assert isinstance(decode.decode_bytes(data_, max_pixels=128 * 128), decode.DecodedImage)


@pytest.mark.parametrize("keep", [0.3, 0.6, 0.9])
def test_truncated_jpeg_detected(keep):
    res = decode.decode_bytes(synth.truncated_jpeg(data.astronaut(), keep))
    assert isinstance(res, decode.DecodeError) and res.kind == "truncated", res


def test_truncated_png_detected():
    png = _save(RGB, "PNG")
    res = decode.decode_bytes(png[: len(png) // 2])
    assert isinstance(res, decode.DecodeError) and res.kind in ("truncated", "decode_failed")


def test_empty_and_random_bytes():
    assert decode.decode_bytes(b"").kind == "empty"
    assert decode.decode_bytes(synth.random_bytes(1000)).kind == "not_an_image"
    # a JPEG header followed by garbage
    bad = decode.decode_bytes(b"\xff\xd8\xff\xe0" + synth.random_bytes(1000))
    assert isinstance(bad, decode.DecodeError)


def test_sniff_format():
    for fmt in ("JPEG", "PNG", "GIF", "BMP", "TIFF", "WEBP"):
        assert decode.sniff_format(_save(RGB, fmt)[:16]) == fmt
    assert decode.sniff_format(b"hello world, not an image") is None


@pytest.mark.parametrize("quality", [40, 75, 95])
def test_jpeg_quality_estimate(quality):
    res = decode.decode_bytes(_save(RGB, "JPEG", quality=quality))
    assert abs(res.jpeg_quality - quality) <= 2


def test_large_jpeg_decoded_at_reduced_scale_keeps_full_size():
    big = Image.fromarray(np.tile(data.astronaut(), (6, 6, 1)))  # 3072 x 3072
    res = decode.decode_bytes(_save(big, "JPEG"), max_side=512)
    assert (res.width, res.height) == (3072, 3072)
    assert max(res.rgb.shape[:2]) < 3072 and max(res.rgb.shape[:2]) >= 512


def test_unreadable_file_reported(tmp_path):
    res, raw = decode.decode_file(str(tmp_path))  # a directory
    assert raw is None and res.kind == "unreadable"
    res, raw = decode.decode_file(str(tmp_path / "missing.jpg"))
    assert raw is None and res.kind == "unreadable"

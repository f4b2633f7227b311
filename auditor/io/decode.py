"""The one safe image decoder.

Every image the auditor looks at is opened here, exactly once per scan. The decoder

* recognises the format from the file's magic bytes, not its extension;
* refuses decompression bombs by a pixel limit checked from the header, before any pixel
  data is decoded;
* detects truncated files (Pillow's lenient loading is switched off);
* applies the EXIF orientation so that measurements see the image the way a person does;
* turns every mode (1, L, LA, P, RGB, RGBA, CMYK, YCbCr, I;16, I, F, 16-bit PNG) into an
  8-bit RGB array, remembering the source mode, bit depth and whether it had alpha.

Failures never raise out of :func:`decode_file`; they come back as a :class:`DecodeError`
value with a short machine-readable ``kind`` and a human message, which the scan turns
into a ``corrupt`` finding.
"""

from __future__ import annotations

import hashlib
import io
import os
import stat
import struct
import warnings
from dataclasses import dataclass, field
from typing import BinaryIO

import numpy as np
from PIL import Image, ImageFile, ImageOps

from auditor.core.errors import DatasetError

# Truncated files must fail loudly, never decode half an image silently.
ImageFile.LOAD_TRUNCATED_IMAGES = False

#: Default decompression-bomb limit: 100 megapixels (a 10000 x 10000 image).
DEFAULT_MAX_PIXELS = 100_000_000

#: Files larger than this are not read at all (a 1 GiB "image" is an attack or a mistake).
DEFAULT_MAX_FILE_BYTES = 1 << 30

# Magic bytes -> canonical format name. Order matters only for overlapping prefixes.
_MAGIC: tuple[tuple[bytes, int, str], ...] = (
    (b"\xff\xd8\xff", 0, "JPEG"),
    (b"\x89PNG\r\n\x1a\n", 0, "PNG"),
    (b"GIF87a", 0, "GIF"),
    (b"GIF89a", 0, "GIF"),
    (b"BM", 0, "BMP"),
    (b"II*\x00", 0, "TIFF"),
    (b"MM\x00*", 0, "TIFF"),
    (b"II+\x00", 0, "TIFF"),  # BigTIFF
    (b"MM\x00+", 0, "TIFF"),
)

#: File extensions (lower case, with dot) each format is normally stored under.
FORMAT_EXTENSIONS: dict[str, tuple[str, ...]] = {
    "JPEG": (".jpg", ".jpeg", ".jpe", ".jfif"),
    "PNG": (".png",),
    "GIF": (".gif",),
    "BMP": (".bmp", ".dib"),
    "TIFF": (".tif", ".tiff"),
    "WEBP": (".webp",),
}

#: Every extension that names an image format the auditor reads.
IMAGE_EXTENSIONS: frozenset[str] = frozenset(e for exts in FORMAT_EXTENSIONS.values() for e in exts)


def sniff_format(head: bytes) -> str | None:
    """Return the image format named by the first bytes of a file, or None.

    ``head`` should hold at least the first 16 bytes.
    """
    if len(head) >= 12 and head[:4] == b"RIFF" and head[8:12] == b"WEBP":
        return "WEBP"
    for magic, offset, name in _MAGIC:
        if head[offset : offset + len(magic)] == magic:
            return name
    return None


@dataclass(frozen=True)
class DecodeError:
    """Why a file could not be decoded. ``kind`` is stable: one of
    ``empty``, ``unreadable``, ``not_an_image``, ``too_large``, ``bomb``, ``truncated``,
    ``decode_failed``."""

    kind: str
    message: str


@dataclass
class DecodedImage:
    """A decoded image and what the decoder learnt about the file.

    ``rgb`` is a C-contiguous uint8 array (rows, cols, 3) after EXIF orientation, possibly
    decoded at a reduced scale (see ``max_side``). ``width``/``height`` are the full
    oriented image's, in pixels.
    """

    rgb: np.ndarray
    width: int
    height: int
    format: str
    mode: str
    bit_depth: int
    has_alpha: bool
    alpha_fraction_transparent: float
    n_frames: int
    exif_rotated: bool
    jpeg_quality: int | None
    info: dict = field(default_factory=dict)


class NotRegularFileError(OSError):
    """The path is a FIFO, socket, device or folder, not a regular file: reading it could
    block forever (a FIFO with no writer) or never end (``/dev/zero``)."""


_FILE_KINDS = ((stat.S_ISDIR, "a directory"), (stat.S_ISFIFO, "a FIFO (named pipe)"), (stat.S_ISSOCK, "a socket"),
               (stat.S_ISCHR, "a character device"), (stat.S_ISBLK, "a block device"))  # fmt: skip


def file_kind(mode: int) -> str:
    """What an ``st_mode`` is, in words: "a regular file", "a FIFO (named pipe)", ..."""
    if stat.S_ISREG(mode):
        return "a regular file"
    return next((name for test, name in _FILE_KINDS if test(mode)), "a special file")


def open_regular(path: str | os.PathLike) -> BinaryIO:
    """Open a regular file for binary reading, without ever blocking on something that is
    not one. Raises :class:`NotRegularFileError` for a FIFO, socket, device or folder (the
    path is checked with ``stat`` first and never opened), other ``OSError`` as ``open``.

    The open itself uses ``O_NONBLOCK`` and the opened file is checked again with ``fstat``:
    a regular file swapped for a FIFO between the two checks is refused, not waited on.
    """
    mode = os.stat(path).st_mode
    if not stat.S_ISREG(mode):
        raise NotRegularFileError(f"{file_kind(mode)}, not a regular file")
    fh = open(path, "rb", opener=_open_nonblocking)  # noqa: SIM115 (returned to the caller, who closes it)
    try:
        mode = os.fstat(fh.fileno()).st_mode
        if not stat.S_ISREG(mode):
            raise NotRegularFileError(f"{file_kind(mode)}, not a regular file")
        os.set_blocking(fh.fileno(), True)  # no effect on a regular file; plain reads from here on
        return fh
    except BaseException:
        fh.close()
        raise


def _open_nonblocking(path: str, flags: int) -> int:
    return os.open(path, flags | getattr(os, "O_NONBLOCK", 0))


def read_bytes(path: str, max_bytes: int = DEFAULT_MAX_FILE_BYTES) -> bytes | DecodeError:
    """Read a whole file of at most ``max_bytes`` bytes, or say why not. Never raises for
    I/O problems. Only regular files are opened; the size is checked (``fstat``) before a
    byte is read, so a huge file costs no memory and a FIFO cannot block."""
    try:
        with open_regular(path) as fh:
            size = os.fstat(fh.fileno()).st_size
            if size > max_bytes:
                return DecodeError("too_large", f"file is {size:,} bytes, over the {_size_text(max_bytes)} limit; "
                                                "not read")  # fmt: skip
            data = fh.read(max_bytes + 1)  # +1: a file that grew since fstat is still caught
    except NotRegularFileError as exc:
        return DecodeError("unreadable", str(exc))
    except PermissionError as exc:
        return DecodeError("unreadable", f"permission denied: {exc.strerror or exc}")
    except OSError as exc:
        return DecodeError("unreadable", f"cannot read file: {exc.strerror or exc}")
    if len(data) > max_bytes:
        return DecodeError("too_large", f"file is larger than the {_size_text(max_bytes)} limit; not read")
    return data


def _size_text(n: int) -> str:
    """A byte count for a message: ``1.5 GiB``, ``300 MiB``, ``12 bytes``."""
    for unit, size in (("GiB", 1 << 30), ("MiB", 1 << 20), ("KiB", 1 << 10)):
        if n >= size:
            return f"{n / size:.3g} {unit}"
    return f"{n} bytes"


def estimate_jpeg_quality(img: Image.Image) -> int | None:
    """Estimate the libjpeg quality (1..100) a JPEG was saved with, from its luminance
    quantisation table; None if the image is not a JPEG or has no table."""
    qt = getattr(img, "quantization", None)
    if not qt or 0 not in qt:
        return None
    table = np.asarray(qt[0], dtype=np.float64)
    # The IJG base luminance table, in the zig-zag order Pillow reports.
    base = np.array([
        16, 11, 12, 14, 12, 10, 16, 14, 13, 14, 18, 17, 16, 19, 24, 40,
        26, 24, 22, 22, 24, 49, 35, 37, 29, 40, 58, 51, 61, 60, 57, 51,
        56, 55, 64, 72, 92, 78, 64, 68, 87, 69, 55, 56, 80, 109, 81, 87,
        95, 98, 103, 104, 103, 62, 77, 113, 121, 112, 100, 120, 92, 101, 103, 99,
    ], dtype=np.float64)  # fmt: skip
    if table.size != 64:
        return None
    scale = float(np.median(table * 100.0 / base))  # percent scaling used by libjpeg
    if scale <= 0:
        return 100
    quality = (200.0 - scale) / 2.0 if scale <= 100 else 5000.0 / scale
    return int(np.clip(round(quality), 1, 100))


def _to_rgb(img: Image.Image) -> tuple[np.ndarray, bool, float, int]:
    """Convert any Pillow mode to uint8 RGB. Returns (rgb, has_alpha, transparent_frac, depth)."""
    mode = img.mode
    bit_depth = 8
    has_alpha = mode in ("RGBA", "LA", "PA", "La", "RGBa") or (mode == "P" and "transparency" in img.info)
    transparent = 0.0
    if mode in ("I;16", "I;16B", "I;16L", "I;16N", "I", "F"):
        arr = np.asarray(img, dtype=np.float64)
        bit_depth = 16 if mode.startswith("I;16") else 32
        if mode == "I" and arr.size and arr.max() <= 65535 and arr.min() >= 0:
            bit_depth = 16  # Pillow opens 16-bit grayscale PNGs as mode I
        hi = 65535.0 if bit_depth == 16 else max(float(arr.max()) if arr.size else 1.0, 1.0)
        lo = 0.0 if bit_depth == 16 else min(float(arr.min()) if arr.size else 0.0, 0.0)
        gray = np.clip((arr - lo) * (255.0 / max(hi - lo, 1e-12)) + 0.5, 0, 255).astype(np.uint8)
        return np.ascontiguousarray(np.repeat(gray[:, :, None], 3, axis=2)), False, 0.0, bit_depth
    if has_alpha:
        rgba = img.convert("RGBA")
        alpha = np.asarray(rgba)[:, :, 3]
        transparent = float(np.mean(alpha < 128)) if alpha.size else 0.0
        # Composite on white, the way browsers and most viewers show transparency.
        white = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        rgb_img = Image.alpha_composite(white, rgba).convert("RGB")
    elif mode == "RGB":
        rgb_img = img
    else:
        rgb_img = img.convert("RGB")  # 1, L, P, CMYK, YCbCr, LAB, HSV
    return np.ascontiguousarray(np.asarray(rgb_img, dtype=np.uint8)), has_alpha, transparent, bit_depth


def decode_bytes(
    data: bytes, max_pixels: int = DEFAULT_MAX_PIXELS, max_side: int | None = None, min_side: int | None = None
) -> DecodedImage | DecodeError:
    """Decode image bytes into RGB. Never raises; errors come back as :class:`DecodeError`.

    ``max_pixels`` bounds width*height (read from the header before decoding pixels).
    ``max_side``: for JPEGs larger than twice this, let libjpeg decode at a reduced scale
    (1/2, 1/4 or 1/8, never below ``max_side``), which is several times faster; the
    reported ``width``/``height`` stay those of the full image. ``min_side`` does the same
    but keeps the *shorter* side at least ``min_side`` (for a resize-then-crop consumer).
    """
    if not data:
        return DecodeError("empty", "file is empty (0 bytes)")
    fmt = sniff_format(data[:16])
    if fmt is None:
        return DecodeError("not_an_image", "content is not a JPEG, PNG, GIF, BMP, TIFF or WebP image")
    try:
        with warnings.catch_warnings():
            # Pillow warns between MAX_IMAGE_PIXELS and 2x; we enforce our own limit below.
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            img = Image.open(io.BytesIO(data), formats=[fmt])
            w, h = img.size
            if w <= 0 or h <= 0:
                return DecodeError("decode_failed", f"invalid dimensions {w}x{h}")
            if w * h > max_pixels:
                return DecodeError(
                    "bomb",
                    f"{w}x{h} = {w * h / 1e6:.0f} megapixels exceeds the limit of "
                    f"{max_pixels / 1e6:.0f} megapixels (possible decompression bomb)",
                )
            n_frames = int(getattr(img, "n_frames", 1) or 1)
            jpeg_quality = estimate_jpeg_quality(img) if fmt == "JPEG" else None
            if fmt == "JPEG" and min_side and min(w, h) > 2 * min_side:
                k = min(w, h) / min_side
                img.draft(img.mode if img.mode in ("L", "RGB") else "RGB",
                          (max(1, int(w / k)), max(1, int(h / k))))  # fmt: skip
            elif fmt == "JPEG" and max_side and max(w, h) > 2 * max_side:
                k = max(w, h) / max_side
                img.draft(img.mode if img.mode in ("L", "RGB") else "RGB",
                          (max(1, int(w / k)), max(1, int(h / k))))  # fmt: skip
            img.load()
            mode = img.mode
            orientation = 1
            try:
                orientation = int(img.getexif().get(0x0112, 1) or 1)
            except Exception:  # a broken EXIF block is not a broken image
                orientation = 1
            if orientation != 1:
                img = ImageOps.exif_transpose(img)
            if orientation in (5, 6, 7, 8):  # rotated by 90 degrees: the sides swap
                w, h = h, w
            rgb, has_alpha, transparent, bit_depth = _to_rgb(img)
    except Image.DecompressionBombError as exc:
        return DecodeError("bomb", f"decompression bomb refused: {exc}")
    except OSError as exc:
        text = str(exc)
        if "truncated" in text.lower() or "premature end" in text.lower():
            return DecodeError("truncated", f"file is truncated: {text}")
        return DecodeError("decode_failed", f"cannot decode {fmt}: {text}")
    except (SyntaxError, ValueError, TypeError, IndexError, KeyError, EOFError,
            MemoryError, ZeroDivisionError, struct.error) as exc:  # fmt: skip
        msg = str(exc) or exc.__class__.__name__
        kind = "truncated" if "truncat" in msg.lower() or isinstance(exc, EOFError) else "decode_failed"
        return DecodeError(kind, f"cannot decode {fmt}: {msg}")
    return DecodedImage(
        rgb=rgb,
        width=w,
        height=h,
        format=fmt,
        mode=mode,
        bit_depth=bit_depth,
        has_alpha=has_alpha,
        alpha_fraction_transparent=transparent,
        n_frames=n_frames,
        exif_rotated=orientation != 1,
        jpeg_quality=jpeg_quality,
    )


def image_size(path: str | os.PathLike, max_bytes: int = DEFAULT_MAX_FILE_BYTES) -> tuple[int, int] | None:
    """(width, height) of an image file from its header alone (no pixel is decoded), or None
    where :func:`decode_file` would not decode it (not a regular file, unreadable, over
    ``max_bytes``, not an image, a header Pillow refuses). Never raises."""
    try:
        with open_regular(path) as fh:
            if os.fstat(fh.fileno()).st_size > max_bytes:
                return None
            fmt = sniff_format(fh.read(16))
            if fmt is None:
                return None
            fh.seek(0)
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", Image.DecompressionBombWarning)
                with Image.open(fh, formats=[fmt]) as img:
                    return img.size
    except Exception:  # OSError, Pillow's header errors, a decompression bomb: no size
        return None


def decode_file(
    path: str,
    max_pixels: int = DEFAULT_MAX_PIXELS,
    max_bytes: int = DEFAULT_MAX_FILE_BYTES,
    max_side: int | None = None,
    min_side: int | None = None,
) -> tuple[DecodedImage | DecodeError, bytes | None]:
    """Read and decode a file. Returns (decoded-or-error, raw bytes or None if unreadable)."""
    data = read_bytes(path, max_bytes)
    if isinstance(data, DecodeError):
        return data, None
    return decode_bytes(data, max_pixels, max_side, min_side), data


def file_hash(data: bytes) -> str:
    """Content hash of a file's bytes (BLAKE2b, 128-bit, hex)."""
    return hashlib.blake2b(data, digest_size=16).hexdigest()


def file_digest(path: str | os.PathLike, digest_size: int = 16) -> str:
    """BLAKE2b of a file's bytes, read in chunks (for large files such as model weights)."""
    h = hashlib.blake2b(digest_size=digest_size)
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def open_text(path: os.PathLike, what: str, **kwargs) -> io.TextIOWrapper:
    """A regular file opened as text, or :class:`DatasetError` naming it (a FIFO, socket or
    device is refused without blocking). ``kwargs`` go to :class:`io.TextIOWrapper`."""
    try:
        return io.TextIOWrapper(open_regular(path), **kwargs)
    except OSError as exc:
        raise DatasetError(f"cannot read {what} {path}: {exc.strerror or exc}") from None

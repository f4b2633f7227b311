"""Calibration of ``box_style_shift`` (issue 8): false alarms between random halves of one
dataset, and detection of a split whose boxes were drawn 15% looser.

    python benchmarks/box_style_calibration.py [--seeds 100] [--images 400]

Synthetic annotations (no pixels are needed for this check): each image has a scale drawn
from a log-normal (sigma 0.4: some photos are close-ups, some wide shots), 1-6 boxes of one
of two classes whose sides are that scale x 0.15 x log-normal(0.2) with a log-normal aspect,
centres uniform. Images are split at random into train and val. "per box" is the naive test
that treats every box as an independent draw (what the check did first); "check" is
``box_style_shift`` as shipped (one value per image: the median of its boxes). A false alarm
is any finding on unpadded data; detection is a finding naming val on data whose val boxes
were padded by 15% on each side length.
"""

from __future__ import annotations

import argparse
import os
import platform

import numpy as np
import pandas as pd


def dataset(n_images: int, seed: int, pad: float) -> tuple[pd.DataFrame, pd.DataFrame]:
    rng = np.random.default_rng(seed)
    rows, images = [], []
    for i in range(n_images):
        split = "train" if rng.random() < 0.5 else "val"
        path = f"images/{split}/{i:05d}.jpg"
        images.append({"path": path, "split": split, "width": 640.0, "height": 480.0, "exists": True,
                       "annotated": True, "background": False, "where": path})  # fmt: skip
        scale = np.exp(rng.normal(0, 0.4))
        for k in range(int(rng.integers(1, 7))):
            side = min(0.9, 0.15 * scale * np.exp(rng.normal(0, 0.2)))
            aspect = np.exp(rng.normal(0, 0.2))
            w, h = min(0.95, side * aspect), min(0.95, side / aspect)
            if split == "val":
                w, h = min(0.99, w * (1 + pad)), min(0.99, h * (1 + pad))
            cx, cy = rng.uniform(w / 2, 1 - w / 2), rng.uniform(h / 2, 1 - h / 2)
            cls = "a" if rng.random() < 0.6 else "b"
            rows.append({"box_id": f"{path}:{k}", "path": path, "split": split, "category": cls, "category_id": cls,
                         "x": cx, "y": cy, "w": w, "h": h, "units": "norm", "source": None,
                         "where": f"{path}:{k}", "crowd": False})  # fmt: skip
    return pd.DataFrame(rows), pd.DataFrame(images)


def per_box_alarm(boxes: pd.DataFrame, alpha: float = 0.05, min_rel: float = 0.1) -> bool:
    """The naive variant: KS on all boxes, same properties, classes, Bonferroni, effect rule."""
    from scipy.stats import ks_2samp

    from auditor.checks.boxes import STYLE_PROPERTIES, style_values
    from auditor.io.annotations import geometry

    sizes = boxes.groupby("path").size().rename("n").reset_index().assign(width=640.0, height=480.0)
    b = geometry(boxes, sizes)
    v = style_values(b)
    tests = []
    for cls in ["(all)", "a", "b"]:
        sel = (b["category"] == cls) if cls != "(all)" else pd.Series(True, index=b.index)
        for prop, (kind, _) in STYLE_PROPERTIES.items():
            a, o = v.loc[sel & (b["split"] == "train"), prop], v.loc[sel & (b["split"] == "val"), prop]
            tests.append((kind, a.to_numpy(), o.to_numpy()))
    for kind, a, o in tests:
        p = ks_2samp(a, o).pvalue * len(tests)
        big = abs(np.median(o) / np.median(a) - 1) >= min_rel if kind == "size" else (
            abs(np.median(o) - np.median(a)) >= 0.05)  # fmt: skip
        if p < alpha and big:
            return True
    return False


def check_alarm(boxes: pd.DataFrame, images: pd.DataFrame) -> bool:
    from auditor.checks.boxes import box_style_shift
    from auditor.core.context import CheckContext
    from auditor.io.annotations import Annotations
    from auditor.policy.rules import load_rules

    ann = Annotations("yolo", [], boxes, images, {"a": "a", "b": "b"})
    table = images[["path", "split", "width", "height"]].assign(ok=True)
    ctx = CheckContext(table=table, annotations=ann)
    params = load_rules().checks["box_style_shift"].params
    return any(f.details["other"] == "val" for f in box_style_shift(ctx, params))


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--seeds", type=int, default=100)
    ap.add_argument("--images", type=int, default=400)
    args = ap.parse_args()
    print(f"machine: {platform.machine()}, {os.cpu_count()} CPUs, Python {platform.python_version()}")
    print(f"{args.images} images per dataset (about half train, half val), {args.seeds} seeds\n")
    print("| data | per box: datasets flagged | check (per-image medians): datasets flagged |")
    print("|---|---|---|")
    for name, pad in (("same distribution (false alarms)", 0.0), ("val padded 15% (detection)", 0.15)):
        naive = check = 0
        for seed in range(args.seeds):
            boxes, images = dataset(args.images, seed, pad)
            naive += per_box_alarm(boxes)
            check += check_alarm(boxes, images)
        print(f"| {name} | {naive}/{args.seeds} | {check}/{args.seeds} |")


if __name__ == "__main__":
    main()

"""The shift analysis on 10,000 vs 10,000 cached embeddings (issue 4: goal < 60 s).

    python benchmarks/bench_shift.py [--images 10000] [--work DIR]

Builds (once) two folders of real photo crops (96 px JPEGs, random crops of the photos
shipped in scikit-image/scikit-learn): a source, and a target in which 30% of the images
are darkened (a real, partial shift). Scans both once to fill the cache (measurements and
embeddings), then times, with everything cached:

* the whole shift analysis: :func:`auditor.report.build.shift_section` (MMD^2 with 500
  permutations and the classifier test on 2,000 per side, FID on all, KID, the support
  distances of all 10,000 target images to all 10,000 source images, property and label
  comparisons, class-conditional shift), the shift checks, the pretraining gap, and the
  UMAP projection (1,500 points per side);
* the complete cached ``audit scan TARGET --source SOURCE`` (every other check too).
"""

from __future__ import annotations

import argparse
import os
import platform
import time
from pathlib import Path

import numpy as np

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")


def build(folder: Path, n: int, seed: int, dark_share: float) -> Path:
    from auditor.demo import synth

    if folder.exists() and len(list(folder.glob("*.jpg"))) == n:
        return folder
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    for i, (name, rgb) in enumerate(synth.random_crops(n, 96, seed=seed)):
        if rng.random() < dark_share:
            rgb = synth.darken(rgb, 0.5)
        synth.write(folder / f"{i:05d}_{name}.jpg", synth.jpeg_bytes(rgb, 90))
    return folder


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--images", type=int, default=10_000)
    ap.add_argument("--work", type=Path, default=Path("benchmarks/out/shift"))
    args = ap.parse_args()
    from auditor.analysis.projection import project_pairs
    from auditor.pipeline import api
    from auditor.policy.rules import load_rules
    from auditor.report import build as shift

    cache = args.work / "cache"
    src = build(args.work / "source", args.images, 1, 0.0)
    tgt = build(args.work / "target", args.images, 2, 0.3)
    t = time.perf_counter()
    api.scan(tgt, write=False, source=src, cache_dir=cache, projection=False)
    fill = time.perf_counter() - t

    t = time.perf_counter()
    result = api.scan(tgt, write=False, source=src, cache_dir=cache, projection=True)
    full = time.perf_counter() - t

    rules = load_rules()
    ctx = api.check_context(result.table, rules, result.embeddings, result.source_table)
    timings = {}
    t = time.perf_counter()
    section = shift.shift_section(ctx)
    timings["shift analysis (tests, properties, support, classes)"] = time.perf_counter() - t
    t = time.perf_counter()
    for name in ("domain_shift", "property_shift", "label_shift", "pretraining_gap"):
        getattr(shift, name)(ctx, rules.checks[name].params)
    timings["shift checks + pretraining gap"] = time.perf_counter() - t
    t = time.perf_counter()
    proj = project_pairs(ctx)
    timings[f"UMAP projection ({len(proj)} points)"] = time.perf_counter() - t
    total = sum(timings.values())

    s = section[0]
    print(f"machine: {platform.machine()}, {os.cpu_count()} CPUs, {platform.python_version()}")
    print(f"images: {args.images} source + {args.images} target (96 px JPEG, 30% of target darkened)")
    print(f"first scan in this process, no projection (measures + embeds what the cache lacks): {fill:.1f} s")
    for k, v in timings.items():
        print(f"  {k}: {v:.1f} s")
    print(f"whole shift analysis, cached embeddings: {total:.1f} s (goal < 60 s)")
    print(f"complete cached scan with --source (all checks, projection): {full:.1f} s")
    print(f"verdict {s['verdict']}: drift {s['magnitude']:.3f}, AUC {s['auc']:.3f} {s['auc_ci']}, "
          f"MMD2 {s['mmd2']:.4f} p {s['p_value']:.4f}, FID {s['fid']:.1f}, n_sampled {s['n_sampled']}")  # fmt: skip
    for e in s["explanations"]:
        print("  -", e)


if __name__ == "__main__":
    main()

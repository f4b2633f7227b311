"""Label checks (issue 5): accuracy of ``label_issue`` on real digits with flipped labels,
and the time of all label checks on 10,000 cached embeddings.

    python benchmarks/bench_labels.py [--seeds 5] [--images 10000] [--work DIR]

Accuracy: scikit-learn's 1,797 digits (upscaled to 64 px) as class folders, 5% of them filed
under a wrong class (``auditor.demo.synth.digits_dataset``, one seed per run); the scan's own
``label_issue`` findings are compared with the flipped files.

Speed: 10,000 photo crops (96 px JPEG; the same folder as ``bench_shift.py``'s source,
built if missing) labeled by the photo they come from (9 classes) in a CSV manifest, 5% of
labels flipped; one scan fills the cache, then the label checks are timed on the cached
measurements and embeddings.
"""

from __future__ import annotations

import argparse
import os
import platform
import time
from pathlib import Path

import numpy as np

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
LABEL_CHECKS = ("label_conflict", "label_issue", "class_name_inconsistency", "class_imbalance", "unseen_class")


def accuracy(work: Path, seeds: int) -> None:
    from auditor.demo import synth
    from auditor.pipeline import api

    print("| seed | flipped | flagged | recall | precision | suggested = true digit |")
    print("|---|---|---|---|---|---|")
    from sklearn.datasets import load_digits

    target = load_digits().target
    rec, prec = [], []
    for seed in range(seeds):
        root = work / f"digits-{seed}"
        if not root.exists():
            synth.digits_dataset(root, flip_fraction=0.05, seed=seed)
        flipped = {p.relative_to(root).as_posix() for p in root.rglob("*.png")
                   if int(p.parent.name) != target[int(p.stem)]}  # fmt: skip
        r = api.scan(root, write=False, projection=False, cache_dir=work / "cache")
        found = [f for f in r.findings if f.check == "label_issue"]
        flagged = {f.paths[0] for f in found}
        hits = [f for f in found if f.paths[0] in flipped]
        right = sum(f.details["suggested_label"] == str(target[int(Path(f.paths[0]).stem)]) for f in hits)
        rec.append(len(hits) / len(flipped))
        prec.append(len(hits) / max(1, len(flagged)))
        print(f"| {seed} | {len(flipped)} | {len(flagged)} | {rec[-1]:.3f} | {prec[-1]:.3f} | "
              f"{right}/{len(hits)} |")  # fmt: skip
    print(f"mean recall {np.mean(rec):.3f} (min {min(rec):.3f}), mean precision {np.mean(prec):.3f} "
          f"(min {min(prec):.3f}); goal recall >= 0.8 at precision >= 0.7")  # fmt: skip


def speed(work: Path, n: int) -> None:
    from auditor.demo import synth
    from auditor.pipeline import api
    from auditor.pipeline.api import check_context, run_checks
    from auditor.policy.rules import load_rules

    folder = work / "crops"
    if not folder.exists() or len(list(folder.glob("*.jpg"))) != n:
        folder.mkdir(parents=True, exist_ok=True)
        for i, (name, rgb) in enumerate(synth.random_crops(n, 96, seed=1)):
            synth.write(folder / f"{i:05d}_{name}.jpg", synth.jpeg_bytes(rgb, 90))
    rng = np.random.default_rng(0)
    files = sorted(p.name for p in folder.glob("*.jpg"))
    classes = sorted({f.split("_", 1)[1][:-4] for f in files})
    rows = ["path,label"]
    for f in files:
        label = f.split("_", 1)[1][:-4]
        if rng.random() < 0.05:
            label = str(rng.choice([c for c in classes if c != label]))
        rows.append(f"{f},{label}")
    manifest = work / "crops.csv"
    manifest.write_text("\n".join(rows) + "\n")
    t = time.perf_counter()
    result = api.scan(folder, write=False, projection=False, manifest=manifest, cache_dir=work / "cache")
    first = time.perf_counter() - t
    rules = load_rules()
    ctx = check_context(result.table, rules, result.embeddings)
    timings = {}
    for name in LABEL_CHECKS:
        t = time.perf_counter()
        got = run_checks(ctx, rules, only=[name])
        timings[name] = (time.perf_counter() - t, len(got))
    print(f"\n{n} images, {len(classes)} classes, 5% of labels flipped; scan that filled the cache: {first:.1f} s")
    for name, (sec, k) in timings.items():
        print(f"  {name}: {sec:.2f} s ({k} findings)")
    print(f"all label checks on cached embeddings: {sum(s for s, _ in timings.values()):.1f} s")


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--seeds", type=int, default=5)
    ap.add_argument("--images", type=int, default=10_000)
    ap.add_argument("--work", type=Path, default=Path("benchmarks/out/labels"))
    args = ap.parse_args()
    print(f"machine: {platform.machine()}, {os.cpu_count()} CPUs, Python {platform.python_version()}\n")
    accuracy(args.work, args.seeds)
    speed(args.work, args.images)


if __name__ == "__main__":
    main()

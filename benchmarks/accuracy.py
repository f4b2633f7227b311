"""Detection accuracy of `audit scan` on the generated validation set.

    python benchmarks/make_validation_set.py        # once: ~1,000 real images, 2% of each defect
    python benchmarks/accuracy.py [--data benchmarks/data/validation]

Recall: injected files of a defect that appear in a finding of its check. Precision: flagged
paths of that check that are injected files of that defect, or the clean originals they copy
(a duplicate group or a leak names both sides). Goals (issue 2): recall >= 0.95 for corrupt,
exact_duplicate, leakage, dark and low_resolution (4x downscale); >= 0.9 for near_duplicate
(JPEG q40, 90%); >= 0.85 for blurry (radius >= 2) and noisy (sigma >= 20); precision >= 0.85.
"""

from __future__ import annotations

import argparse
import csv
import time
from collections import defaultdict
from pathlib import Path

from auditor.pipeline.api import scan

GOALS = {"corrupt": 0.95, "exact_duplicate": 0.95, "leakage": 0.95, "dark": 0.95, "low_resolution": 0.95,
         "near_duplicate": 0.9, "blurry": 0.85, "noisy": 0.85}  # fmt: skip


def evaluate(data: Path, workers: int | None = None) -> tuple[list[dict], dict]:
    with open(data / "truth.csv", newline="") as fh:
        truth = list(csv.DictReader(fh))
    injected: dict[str, set[str]] = defaultdict(set)
    related: dict[str, set[str]] = defaultdict(set)
    for row in truth:
        injected[row["defect"]].add(row["path"])
        related[row["defect"]].add(row["path"])
        if row["original"]:
            related[row["defect"]].add(row["original"])
    t = time.perf_counter()
    result = scan(data, write=False, use_cache=False, workers=workers)
    elapsed = time.perf_counter() - t
    flagged: dict[str, set[str]] = defaultdict(set)
    for f in result.findings:
        flagged[f.check].update(f.paths)
    rows = []
    for defect, goal in GOALS.items():
        inj, got = injected[defect], flagged[defect]
        recall = len(inj & got) / len(inj)
        precision = len(got & related[defect]) / len(got) if got else 1.0
        rows.append({"check": defect, "injected": len(inj), "flagged": len(got), "recall": recall,
                     "precision": precision, "recall_goal": goal,
                     "ok": recall >= goal and precision >= 0.85})  # fmt: skip
    every_injected = {r["path"] for r in truth} | {r["original"] for r in truth if r["original"]}
    clean = set(result.table["path"]) - every_injected
    alarms = {p for f in result.findings if f.severity != "info" for p in f.paths} & clean
    summary = {"images": len(result.table), "clean": len(clean), "clean_with_warning": len(alarms),
               "seconds": elapsed}  # fmt: skip
    return rows, summary


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--data", type=Path, default=Path("benchmarks/data/validation"))
    ap.add_argument("--workers", type=int, default=None)
    args = ap.parse_args()
    rows, summary = evaluate(args.data, args.workers)
    print("| check | injected | flagged | recall | precision | recall goal | met |")
    print("|---|---:|---:|---:|---:|---:|---|")
    for r in rows:
        print(
            f"| {r['check']} | {r['injected']} | {r['flagged']} | {r['recall']:.2f} | {r['precision']:.2f} "
            f"| {r['recall_goal']:.2f} | {'yes' if r['ok'] else 'NO'} |"
        )
    print(
        f"\n{summary['images']} images scanned in {summary['seconds']:.1f} s; "
        f"{summary['clean_with_warning']} of {summary['clean']} clean images carry a warning-level finding"
    )


if __name__ == "__main__":
    main()

"""First-scan time of this checkout against a baseline revision, in one run.

    /work/main/.venv/bin/python benchmarks/bench_first_scan.py                 # vs b49c7cf
    /work/main/.venv/bin/python benchmarks/bench_first_scan.py --baseline HEAD~3 --n-images 2000

The baseline is checked out with ``git worktree`` into a temporary folder and run with the
same interpreter and packages (``PYTHONPATH`` puts its ``auditor`` first; its rules presets
are found beside it). Both run ``audit scan DIR --no-embed --no-cache --out TMP -q`` (every run
a first scan, the full report written) on the images of ``bench_speed.py`` (``--n-images``
JPEG crops of real photos, 256-640 px), alternating baseline and current ``--repeats`` times;
the table gives the medians and the ratio. Issue 15 asks that the pixel verification of copy
candidates cost the first scan at most 20%.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))

from bench_speed import baseline_tree, machine, make_images, run_audit  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--baseline", default="b49c7cf")
    ap.add_argument("--current", default=None, help="a revision to run instead of the working tree")
    ap.add_argument("--n-images", type=int, default=10_000)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--workers", type=int, default=len(os.sched_getaffinity(0)))
    ap.add_argument("--data", type=Path, default=ROOT / "benchmarks" / "data" / "speed10k")
    args = ap.parse_args()
    make_images(args.data, args.n_images, args.seed)
    with tempfile.TemporaryDirectory() as tmp_name:
        tmp = Path(tmp_name)
        with baseline_tree(args.baseline, tmp, None, args.workers) as base, \
                baseline_tree(args.current, tmp, None, args.workers, name="current") as current:  # fmt: skip
            times: dict[str, list[float]] = {"baseline": [], "current": []}
            for r in range(args.repeats):
                times["baseline"].append(run_audit(args.data, args.workers, tmp, base))
                times["current"].append(run_audit(args.data, args.workers, tmp, current))
                print(f"repeat {r + 1}: baseline {times['baseline'][-1]:.1f} s, current {times['current'][-1]:.1f} s",
                      file=sys.stderr)  # fmt: skip
    b, c = statistics.median(times["baseline"]), statistics.median(times["current"])
    print(f"machine: {machine()}")
    print(f"{args.n_images} images, {args.workers} workers, median of {args.repeats}")
    print("| revision | first scan (s) |\n|---|---|")
    print(f"| {args.baseline} | {b:.1f} |\n| {args.current or 'working tree'} | {c:.1f} |")
    print(f"current / baseline: {c / b:.2f}x")


if __name__ == "__main__":
    main()

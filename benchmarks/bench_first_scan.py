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
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))

from bench_speed import machine, make_images  # noqa: E402

#: The entry point, wherever the revision has it (auditor.cli was one module before it was a package).
SCAN = ("try:\n    from auditor.cli.app import main\nexcept ImportError:\n    from auditor.cli import main\nmain()")


def run(pythonpath: str | None, folder: Path, out: Path, workers: int) -> float:
    env = dict(os.environ)
    if pythonpath:
        env["PYTHONPATH"] = pythonpath
    # -P: no current folder on sys.path (run from the repository root, it would shadow the baseline)
    cmd = [sys.executable, "-P", "-c", SCAN, "scan", str(folder), "--no-embed", "--no-cache", "--out", str(out), "-q",
           "--workers", str(workers)]  # fmt: skip
    t = time.perf_counter()
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True)
    elapsed = time.perf_counter() - t
    if proc.returncode != 0:
        raise SystemExit(f"scan failed ({pythonpath or 'current'}): {proc.stderr[-2000:]}")
    return elapsed


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
    with tempfile.TemporaryDirectory() as tmp:
        base = Path(tmp) / "baseline"
        subprocess.run(["git", "-C", str(ROOT), "worktree", "add", "--detach", str(base), args.baseline],
                       check=True, capture_output=True)  # fmt: skip
        current = None
        if args.current:
            current = Path(tmp) / "current"
            subprocess.run(["git", "-C", str(ROOT), "worktree", "add", "--detach", str(current), args.current],
                           check=True, capture_output=True)  # fmt: skip
        try:
            times: dict[str, list[float]] = {"baseline": [], "current": []}
            for r in range(args.repeats):
                times["baseline"].append(run(str(base), args.data, Path(tmp) / f"b{r}", args.workers))
                times["current"].append(run(current and str(current), args.data, Path(tmp) / f"c{r}", args.workers))
                print(f"repeat {r + 1}: baseline {times['baseline'][-1]:.1f} s, current {times['current'][-1]:.1f} s",
                      file=sys.stderr)  # fmt: skip
        finally:
            for tree in (base, current):
                if tree is not None:
                    subprocess.run(["git", "-C", str(ROOT), "worktree", "remove", "--force", str(tree)],
                                   capture_output=True)  # fmt: skip
    b, c = statistics.median(times["baseline"]), statistics.median(times["current"])
    print(f"machine: {machine()}")
    print(f"{args.n_images} images, {args.workers} workers, median of {args.repeats}")
    print("| revision | first scan (s) |\n|---|---|")
    print(f"| {args.baseline} | {b:.1f} |\n| {args.current or 'working tree'} | {c:.1f} |")
    print(f"current / baseline: {c / b:.2f}x")


if __name__ == "__main__":
    main()

"""First-scan time of this checkout against a baseline revision, in one run.

    /work/main/.venv/bin/python benchmarks/bench_first_scan.py                 # vs b49c7cf
    /work/main/.venv/bin/python benchmarks/bench_first_scan.py --baseline HEAD~3 --n-images 2000
    # issue 17 part 4a: the fixed cost of a 20-image scan with a new cache folder
    /work/main/.venv/bin/python benchmarks/bench_first_scan.py --baseline 3f9bac9 --current HEAD \
        --n-images 20 --kind png --repeats 7 --fresh-cache

The baseline is checked out with ``git worktree`` into a temporary folder and run with the
same interpreter and packages (``PYTHONPATH`` puts its ``auditor`` first; its rules presets
are found beside it). Both run ``audit scan DIR --no-embed --no-cache --out TMP -q`` (every run
a first scan, the full report written) on the images of ``bench_speed.py`` (``--n-images``
JPEG crops of real photos, 256-640 px; ``--kind png`` lossless PNGs of the same crops),
alternating baseline and current ``--repeats`` times; the table gives the medians and the
ratio. ``--fresh-cache``: each run gets a new, empty ``--cache-dir`` instead of ``--no-cache``
(nothing compiled yet: the numba kernels and the report template compile into it). Issue 15
asks that the pixel verification of copy candidates cost the first scan at most 20%.
"""

from __future__ import annotations

import argparse
import os
import resource
import statistics
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))

from bench_speed import baseline_tree, machine, make_images, run_audit  # noqa: E402


def _children_cpu() -> float:
    """User + sys CPU seconds of every finished child process so far (a scan and its workers)."""
    use = resource.getrusage(resource.RUSAGE_CHILDREN)
    return use.ru_utime + use.ru_stime


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--baseline", default="b49c7cf")
    ap.add_argument("--current", default=None, help="a revision to run instead of the working tree")
    ap.add_argument("--n-images", type=int, default=10_000)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--workers", type=int, default=len(os.sched_getaffinity(0)))
    ap.add_argument("--data", type=Path, default=None, help="default: benchmarks/data/first-KIND-N")
    ap.add_argument("--kind", choices=("jpeg", "png"), default="jpeg")
    ap.add_argument("--sides", type=int, nargs=2, default=(256, 640), metavar=("MIN", "MAX"))
    ap.add_argument("--fresh-cache", action="store_true", help="a new --cache-dir per run, not --no-cache")
    ap.add_argument("--pyc", action="store_true",
                    help="let the scans write and use the auditor's .pyc files, as an installed package has "
                         "them (with PYTHONDONTWRITEBYTECODE set, each run compiles the auditor: ~0.1 s)")  # fmt: skip
    ap.add_argument("--warm", action="store_true",
                    help="scan once with each worktree first (--no-cache runs then load its kernels)")  # fmt: skip
    args = ap.parse_args()
    if args.data is None:
        default = ("jpeg", (256, 640), 10_000)
        name = "speed10k" if (args.kind, tuple(args.sides), args.n_images) == default else None
        name = name or f"first-{args.kind}-{args.sides[0]}-{args.sides[1]}-{args.n_images}"
        args.data = ROOT / "benchmarks" / "data" / name
    make_images(args.data, args.n_images, args.seed, args.kind, tuple(args.sides))
    if args.pyc:  # the children inherit it (the first, or --warm, run writes them)
        os.environ.pop("PYTHONDONTWRITEBYTECODE", None)
    load = [os.getloadavg()[0]]
    with tempfile.TemporaryDirectory() as tmp_name:
        tmp = Path(tmp_name)
        warm = args.data if args.warm else None
        with baseline_tree(args.baseline, tmp, warm, args.workers) as base, \
                baseline_tree(args.current, tmp, warm, args.workers, name="current") as current:  # fmt: skip
            times: dict[str, list[float]] = {"baseline": [], "current": []}
            cpu: dict[str, list[float]] = {"baseline": [], "current": []}  # user + sys, the scan and its workers
            for r in range(args.repeats):
                for which, tree in (("baseline", base), ("current", current)):
                    before = _children_cpu()
                    times[which].append(run_audit(args.data, args.workers, tmp, tree, args.fresh_cache))
                    cpu[which].append(_children_cpu() - before)
                load.append(os.getloadavg()[0])
                print(f"repeat {r + 1}: baseline {times['baseline'][-1]:.2f} s, current {times['current'][-1]:.2f} s",
                      file=sys.stderr)  # fmt: skip
    b, c = statistics.median(times["baseline"]), statistics.median(times["current"])
    print(f"machine: {machine()}")
    print(f"1-minute load average during the runs: {min(load):.1f}-{max(load):.1f}")
    cache = "a new --cache-dir each run" if args.fresh_cache else "--no-cache"
    print(f"{args.n_images} {args.kind} images, {args.workers} workers, {cache}, median of {args.repeats}")
    print("| revision | first scan, wall (s) | runs | CPU, user + sys (s) | runs |\n|---|---|---|---|---|")
    for rev, key, median in ((args.baseline, "baseline", b), (args.current or "working tree", "current", c)):
        print(f"| {rev} | {median:.2f} | {', '.join(f'{t:.2f}' for t in times[key])} | "
              f"{statistics.median(cpu[key]):.2f} | {', '.join(f'{t:.2f}' for t in cpu[key])} |")  # fmt: skip
    print(f"current / baseline: {c / b:.2f}x")


if __name__ == "__main__":
    main()

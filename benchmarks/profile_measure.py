"""Per-image cost of one first scan's measurement, step by step, in this process.

    python benchmarks/profile_measure.py benchmarks/data/speed-png-112-112-1000 [--n 300]
    PYTHONPATH=/path/to/other/worktree python -P benchmarks/profile_measure.py DIR   # another revision

``measure_file`` on the first ``--n`` files of DIR after 10 warm-up ones (the compiled kernel
loaded first), timed with ``time.process_time`` (CPU of this process): once under cProfile for
the split by step (the profiler inflates Python-heavy steps), once without for the total.
"""

from __future__ import annotations

import argparse
import cProfile
import glob
import pstats
import time


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("folder")
    ap.add_argument("--n", type=int, default=300)
    args = ap.parse_args()
    import auditor
    from auditor.measure import batch

    files = sorted(glob.glob(args.folder + "/*"))[: args.n]
    batch.pixel_kernels()
    for f in files[:10]:
        batch.measure_file(f)
    profiler = cProfile.Profile(time.process_time)
    profiler.enable()
    for f in files:
        batch.measure_file(f)
    profiler.disable()
    t = time.process_time()
    for f in files:
        batch.measure_file(f)
    plain = (time.process_time() - t) / len(files) * 1e3
    stats = pstats.Stats(profiler).stats  # type: ignore[attr-defined]

    def cum(name: str, where: str = "") -> float:
        return sum(v[3] for k, v in stats.items() if k[2] == name and where in k[0]) / len(files) * 1e3

    print(f"auditor from {auditor.__file__}; {len(files)} files of {args.folder}; ms per image (CPU)")
    print("| step | ms/image |\n|---|---|")
    for label, name, where in (
        ("read + decode", "decode_file", ""),
        ("pixel kernel (numba)", "_measure", "kernels"),
        ("noise estimate's numpy part", "_noise", "kernels"),
        ("pHash + dHash", "perceptual_hashes", ""),
        ("thumbnail", "_thumbnail", ""),
        ("pixel hash", "pixel_hash", ""),
        ("total, profiled", "measure_file", ""),
    ):
        print(f"| {label} | {cum(name, where):.2f} |")
    print(f"| **total, not profiled** | {plain:.2f} |")


if __name__ == "__main__":
    main()

"""Benchmark ``auditor.measure.hashing.near_pairs`` on a million random 64-bit hashes.

Plants ``--pairs`` near pairs (copy a random hash, flip k random distinct bits, k uniform
in 0..radius) among ``--n`` uniformly random uint64 hashes, then times ``near_pairs`` at
each radius, and reports wall time, peak RSS (ru_maxrss, with the baseline measured just
before the call) and recall of the planted pairs (must be 1.0).

Each radius runs in its own child process so that the peak-RSS figures do not carry over
from one radius to the next, and so that a slow radius can be cut off (``--timeout``).

Run from the repository root:

    /work/main/.venv/bin/python benchmarks/bench_near_dup.py                 # radius 4, 6, 8
    /work/main/.venv/bin/python benchmarks/bench_near_dup.py --radii 6 --n 100000

Goal at the default radius (6, ``max_phash_distance`` in rules/default.yaml): < 60 s and
< 2 GB peak RSS for n = 1,000,000.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import subprocess
import sys
import time

import numpy as np


def make_hashes(n: int, n_pairs: int, radius: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """``n`` random uint64 hashes whose last ``n_pairs`` are near copies of earlier ones.

    Returns (hashes, planted) with planted int64 (n_pairs, 2) pairs (i < j)."""
    rng = np.random.default_rng(seed)
    h = rng.integers(0, 2**64, size=n, dtype=np.uint64, endpoint=False)
    src = rng.choice(n - n_pairs, size=n_pairs, replace=False)
    dst = np.arange(n - n_pairs, n)
    for s, d in zip(src, dst, strict=True):
        k = int(rng.integers(0, radius + 1))
        mask = 0
        for b in rng.choice(64, size=k, replace=False):
            mask |= 1 << int(b)
        h[d] = h[s] ^ np.uint64(mask)
    planted = np.stack([src, dst], axis=1).astype(np.int64)
    return h, planted


def maxrss_bytes() -> int:
    r = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return r if sys.platform == "darwin" else r * 1024  # Linux reports KiB


def run_one(n: int, n_pairs: int, radius: int, seed: int) -> dict:
    """Build the data, time one ``near_pairs`` call; returns the measurements."""
    from auditor.measure.hashing import _plan, near_pairs

    h, planted = make_hashes(n, n_pairs, radius, seed)
    base = maxrss_bytes()
    t0 = time.perf_counter()
    pairs, dist = near_pairs(h, radius)
    wall = time.perf_counter() - t0
    peak = maxrss_bytes()
    found = set(map(tuple, pairs.tolist()))
    hit = sum((int(i), int(j)) in found for i, j in planted)
    m, bits, t = _plan(n, radius)
    return {
        "radius": radius, "n": n, "planted": n_pairs, "wall_s": wall,
        "baseline_rss": base, "peak_rss": peak, "recall": hit / n_pairs,
        "pairs_found": int(len(pairs)), "max_dist": int(dist.max()) if len(dist) else -1,
        "plan": f"m={m} chunks {bits[0]}-{bits[-1]} bits, t={t}",
    }  # fmt: skip


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--n", type=int, default=1_000_000, help="number of hashes")
    ap.add_argument("--pairs", type=int, default=1_000, help="planted near pairs")
    ap.add_argument("--radii", type=int, nargs="+", default=[6, 4, 8])
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--timeout", type=float, default=300, help="seconds per radius")
    ap.add_argument("--child", type=int, default=None, help=argparse.SUPPRESS)
    args = ap.parse_args()

    if args.child is not None:  # one radius, in a fresh process
        print(json.dumps(run_one(args.n, args.pairs, args.child, args.seed)))
        return

    rows = []
    for r in args.radii:
        cmd = [sys.executable, __file__, "--n", str(args.n), "--pairs", str(args.pairs),
               "--seed", str(args.seed), "--child", str(r)]  # fmt: skip
        print(f"radius {r} ...", file=sys.stderr, flush=True)
        try:
            out = subprocess.run(cmd, capture_output=True, text=True, timeout=args.timeout)
        except subprocess.TimeoutExpired:
            rows.append({"radius": r, "timeout": True})
            continue
        if out.returncode != 0:
            print(out.stderr, file=sys.stderr)
            rows.append({"radius": r, "error": out.returncode})
            continue
        rows.append(json.loads(out.stdout.strip().splitlines()[-1]))

    mib = 1024 * 1024
    print(f"\nnear_pairs on n={args.n:,} random uint64 hashes, {args.pairs:,} planted pairs, seed {args.seed}\n")
    print(
        "| radius | plan | wall (s) | peak RSS (MiB) | baseline RSS (MiB) | peak - baseline (MiB) "
        "| recall | pairs found | goal (<60 s, <2 GB) |"
    )
    print("|---|---|---|---|---|---|---|---|---|")
    for row in rows:
        r = row["radius"]
        if row.get("timeout"):
            print(f"| {r} | | > {args.timeout:.0f} (killed) | | | | | | |")
            continue
        if "error" in row:
            print(f"| {r} | | error rc={row['error']} | | | | | | |")
            continue
        ok = row["wall_s"] < 60 and row["peak_rss"] < 2e9 and row["recall"] == 1.0
        print(
            f"| {r} | {row['plan']} | {row['wall_s']:.1f} | {row['peak_rss'] / mib:.0f} | "
            f"{row['baseline_rss'] / mib:.0f} | {(row['peak_rss'] - row['baseline_rss']) / mib:.0f} | "
            f"{row['recall']:.3f} | {row['pairs_found']:,} | {'yes' if ok else 'NO'} |"
        )
    print(f"\nmachine: {platform.platform()}, nproc={os.cpu_count()}, Python {platform.python_version()}, "
          f"numpy {np.__version__}")  # fmt: skip


if __name__ == "__main__":
    main()

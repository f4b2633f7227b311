"""Per-image cost of a scan's measurements, in one process: the numpy reference
(``measure.measure_pixels``) against the compiled kernels (``kernels.measure_rgb``), their
largest disagreement, each step of ``extract.measure_file``, and what loading the compiled
kernel costs a fresh process.

    /work/main/.venv/bin/python benchmarks/bench_kernels.py            # 300 images
    /work/main/.venv/bin/python benchmarks/bench_kernels.py --images 1000

Images: the JPEGs of ``benchmarks/bench_speed.py`` (``benchmarks/data/speed``; run that
script once to make them). Each timing is the mean over the images of one pass, after a
warm-up pass.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import time
from collections import defaultdict
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
LOAD_CHILD = """
import time
t0 = time.perf_counter()
from auditor.measure import kernels
t1 = time.perf_counter()
kernels.warm()
print(f"{t1 - t0:.3f} {time.perf_counter() - t1:.3f}")
"""


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--images", type=int, default=300)
    ap.add_argument("--data", type=Path, default=ROOT / "benchmarks" / "data" / "speed")
    args = ap.parse_args()
    from auditor.io import decode as dec
    from auditor.measure import batch as extract
    from auditor.measure import kernels
    from auditor.measure import pixels as measure
    from auditor.measure.hashing import perceptual_hashes, pixel_hash

    files = sorted(str(p) for p in args.data.glob("*.jpg"))[: args.images]
    if not files:
        sys.exit(f"no JPEGs in {args.data}: run benchmarks/bench_speed.py once to make them")
    images = [dec.decode_file(p)[0].rgb for p in files]
    kernels.warm()

    def per_image(fn) -> float:
        for rgb in images[:10]:
            fn(rgb)
        t0 = time.perf_counter()
        for rgb in images:
            fn(rgb)
        return 1000 * (time.perf_counter() - t0) / len(images)

    ref_ms, jit_ms = per_image(measure.measure_pixels), per_image(kernels.measure_rgb)
    worst: dict[str, float] = defaultdict(float)
    bits = 0
    for rgb in images:
        ref = measure.measure_pixels(rgb)
        got, gray_u8 = kernels.measure_rgb(rgb)
        bits += int((gray_u8 != np.clip(np.rint(measure.luminance(rgb)), 0, 255).astype(np.uint8)).sum())
        for k, v in ref.items():
            worst[k] = max(worst[k], abs(got[k] - v) / max(abs(v), 1e-9))
    mpx = np.mean([rgb.shape[0] * rgb.shape[1] for rgb in images]) / 1e6
    print(f"{len(images)} images, {mpx:.3f} Mpx on average\n")
    print(f"pixel properties, numpy reference: {ref_ms:.2f} ms/image")
    print(f"pixel properties, compiled kernel: {jit_ms:.2f} ms/image ({ref_ms / jit_ms:.1f}x)")
    print(f"luminance bits that differ: {bits}; largest relative difference: "
          + ", ".join(f"{k} {v:.1e}" for k, v in sorted(worst.items(), key=lambda kv: -kv[1])[:3]))  # fmt: skip

    steps: dict[str, float] = defaultdict(float)

    def timed(name, fn, *a):
        t0 = time.perf_counter()
        out = fn(*a)
        steps[name] += time.perf_counter() - t0
        return out

    for path in files:
        result, data = timed("read + decode", dec.decode_file, path, dec.DEFAULT_MAX_PIXELS,
                             dec.DEFAULT_MAX_FILE_BYTES, 2048)  # fmt: skip
        timed("file hash (BLAKE2b)", dec.file_hash, data)
        timed("pixel hash (BLAKE2b)", pixel_hash, result.rgb)
        work = measure.downscale_to(result.rgb, extract.ANALYSIS_MAX_SIDE)
        props, gray_u8 = timed("pixel properties (kernel)", kernels.measure_rgb, work)
        timed("pHash + dHash (Pillow Lanczos resizes)", perceptual_hashes, gray_u8)
        timed("thumbnail", extract._thumbnail, work)
    print("\nsteps of extract.measure_file, ms/image:")
    for name, total in sorted(steps.items(), key=lambda kv: -kv[1]):
        print(f"  {name:40s} {1000 * total / len(files):.2f}")
    print(f"  {'total':40s} {1000 * sum(steps.values()) / len(files):.2f}")

    out = subprocess.run([sys.executable, "-c", LOAD_CHILD], capture_output=True, text=True, check=True, cwd=ROOT)
    imp, warm = (float(v) for v in out.stdout.split())
    print(f"\nfresh process: import numba + kernels {imp:.2f} s, load the cached kernel {warm:.2f} s")


if __name__ == "__main__":
    main()

"""Embedding throughput: `audit embed` end to end versus bare `model.predict`, same run.

    python benchmarks/bench_embed.py [--images 800] [--rounds 2]

Builds (once) a folder of JPEG photos (random crops, 320..800 px, of the color photos
shipped in scikit-image/scikit-learn), then, alternating to even out machine noise:

* bare: ``model.predict`` at batch 32 on tensors decoded and resized beforehand (the
  model's ceiling: no file I/O, no decoding);
* end to end: :func:`auditor.pipeline.api.embed` on the folder with an empty cache (hash files,
  decode + resize in threads overlapped with inference, store float16 vectors), model
  already loaded (the one-off model load is timed separately);
* cached rescan: the same call again on the unchanged folder, and in a fresh process
  (`audit embed` as a user runs it: no TensorFlow import when nothing is missing).
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")


def build_folder(root: Path, n: int, seed: int = 0) -> Path:
    from auditor.demo import synth

    if root.exists() and len(list(root.glob("*.jpg"))) == n:
        return root
    root.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    photos = [synth.load_photo(p) for p in synth.COLOR_PHOTOS]
    for i in range(n):
        img = photos[i % len(photos)]
        h, w = img.shape[:2]
        side = int(rng.integers(min(320, min(h, w)), min(h, w) + 1))
        y, x = int(rng.integers(0, h - side + 1)), int(rng.integers(0, w - side + 1))
        crop = img[y : y + side, x : x + int(min(w - x, side * rng.uniform(1.0, 1.4)))]
        (root / f"img_{i:05d}.jpg").write_bytes(synth.jpeg_bytes(np.ascontiguousarray(crop), 90))
    return root


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--images", type=int, default=800)
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--data", type=Path, default=Path(tempfile.gettempdir()) / "auditor-bench-embed")
    args = ap.parse_args()

    from auditor.embed.backbones import get_backbone
    from auditor.embed.features import prepare_image
    from auditor.pipeline.api import embed

    folder = build_folder(args.data, args.images)
    files = sorted(str(p) for p in folder.glob("*.jpg"))
    n = len(files)
    t0 = time.perf_counter()
    embedder = get_backbone().embedder()
    load_s = time.perf_counter() - t0
    tensors = np.stack([prepare_image(f, 224) for f in files]).astype(np.float32)
    model = embedder.model
    model.predict(tensors[:64], batch_size=32, verbose=0)  # warm-up (tracing)

    bare, e2e, rescan = [], [], []
    for _ in range(args.rounds):
        t = time.perf_counter()
        model.predict(tensors, batch_size=32, verbose=0)
        bare.append(n / (time.perf_counter() - t))
        with tempfile.TemporaryDirectory() as cache:
            t = time.perf_counter()
            first = embed(folder, cache_dir=cache)
            e2e.append(n / (time.perf_counter() - t))
            assert first.embeddings.computed == len(first.embeddings.hashes) and not first.embeddings.failures
            t = time.perf_counter()
            again = embed(folder, cache_dir=cache)
            rescan.append(time.perf_counter() - t)
            assert again.embeddings.computed == 0
            # a fresh process, as a user reruns `audit embed`
            env = {**os.environ, "AUDITOR_CACHE_DIR": cache}
            t = time.perf_counter()
            subprocess.run([sys.executable, "-m", "auditor.cli.app", "embed", str(folder), "--out",
                            str(Path(cache) / "e.npz")], env=env, check=True, capture_output=True)  # fmt: skip
            cold_rescan = time.perf_counter() - t

    b, e = statistics.median(bare), statistics.median(e2e)
    print(f"machine: {platform.machine()}, {os.cpu_count()} CPUs, Python {platform.python_version()}")
    print(f"images: {n} JPEG photos, {folder}")
    print(f"model load (first, incl. TensorFlow import): {load_s:.1f} s")
    print(f"bare model.predict on decoded tensors: {b:.1f} img/s  (rounds: {', '.join(f'{x:.1f}' for x in bare)})")
    print(f"audit embed end to end (empty cache): {e:.1f} img/s  (rounds: {', '.join(f'{x:.1f}' for x in e2e)})")
    print(f"ratio end-to-end / bare: {e / b:.2f}  (goal >= 0.8)")
    first_s = n / e
    print(f"cached rescan in-process: {statistics.median(rescan):.2f} s -> {first_s / statistics.median(rescan):.0f}x "
          f"faster than the first embedding ({first_s:.1f} s)")  # fmt: skip
    print(f"cached rescan, fresh `audit embed` process (writes the .npz): {cold_rescan:.2f} s "
          f"-> {first_s / cold_rescan:.1f}x")  # fmt: skip


if __name__ == "__main__":
    main()

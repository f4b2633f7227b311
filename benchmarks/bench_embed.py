"""Embedding throughput of the default backbone: the Keras model versus the TFLite runtime,
bare and end to end, in one run.

    python benchmarks/bench_embed.py [--images 300] [--rounds 3]

Builds (once) a folder of JPEG photos (random crops, 320..800 px, of the color photos
shipped in scikit-image/scikit-learn), loads both runtimes (timing the one-off loads: Keras
build, TFLite conversion into an empty cache, TFLite load from that cache), then, alternating
within each round to even out machine noise (other processes on a shared machine):

* bare Keras: ``model.predict`` at batch 32 on tensors decoded and resized beforehand (no
  file I/O, no decoding);
* Keras end to end: :func:`auditor.pipeline.api.embed` on the folder with an empty cache
  and ``AUDITOR_EMBED_RUNTIME=keras`` (the path `audit embed` took before the TFLite
  runtime: hash files, decode + resize in threads overlapped with inference, store float16
  vectors), model already loaded;
* TFLite end to end: the same call with ``AUDITOR_EMBED_RUNTIME=lite`` (today's default);
* bare TFLite: the converted model's ``predict_on_batch`` on the same tensors, batch 32;

and last, the cached rescans: in process, and in a fresh process (`audit embed` as a user
runs it: no TensorFlow import when nothing is missing). Also prints the least per-image
cosine between the two runtimes' outputs on the benchmark images.
"""

from __future__ import annotations

import argparse
import datetime
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


def cpu_description() -> str:
    """The CPU model and its SIMD flags, from /proc/cpuinfo (Linux), else what platform says."""
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return platform.processor() or platform.machine()
    fields = dict(line.split(":", 1) for line in text.splitlines() if ":" in line)
    fields = {k.strip(): v.strip() for k, v in fields.items()}
    simd = ("sse4_2", "avx", "avx2", "fma", "f16c", "avx512", "avx_vnni", "amx")
    flags = [f for f in fields.get("flags", "").split() if f.startswith(simd)]
    return f"{fields.get('model name', platform.machine())}; SIMD flags: {' '.join(flags) or 'none'}"


def timed_embed(folder: Path, runtime: str, cache: str):
    from auditor.pipeline.api import embed

    saved = os.environ.get("AUDITOR_EMBED_RUNTIME")
    os.environ["AUDITOR_EMBED_RUNTIME"] = runtime
    try:
        t = time.perf_counter()
        result = embed(folder, cache_dir=cache)
        return time.perf_counter() - t, result
    finally:
        if saved is None:
            os.environ.pop("AUDITOR_EMBED_RUNTIME")
        else:
            os.environ["AUDITOR_EMBED_RUNTIME"] = saved


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--images", type=int, default=300)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--data", type=Path, default=Path(tempfile.gettempdir()) / "auditor-bench-embed")
    args = ap.parse_args()

    from auditor.embed.backbones import get_backbone
    from auditor.embed.backbones.lite_runtime import cpu_threads, interpreter_class, min_cosine
    from auditor.embed.features import prepare_image

    started = datetime.datetime.now(datetime.UTC)
    load_before = os.getloadavg()
    folder = build_folder(args.data, args.images)
    files = sorted(str(p) for p in folder.glob("*.jpg"))
    n = len(files)
    bb = get_backbone()
    with tempfile.TemporaryDirectory() as model_cache:
        t0 = time.perf_counter()
        keras_embedder = bb.embedder(model_cache, "keras")
        keras_load = time.perf_counter() - t0
        t0 = time.perf_counter()
        lite_embedder = bb.embedder(model_cache, "lite")
        lite_convert = time.perf_counter() - t0
        assert lite_embedder.runtime == "lite", "the TFLite runtime fell back to Keras"
        from auditor.embed import backbones

        backbones._LOADED.pop((bb.cache_key, "lite"))
        t0 = time.perf_counter()
        lite_embedder = bb.embedder(model_cache, "lite")
        lite_load = time.perf_counter() - t0
    tensors = np.stack([prepare_image(f, 224) for f in files]).astype(np.float32)
    model, lite_model = keras_embedder.model, lite_embedder.model
    model.predict(tensors[:64], batch_size=32, verbose=0)  # warm-up (tracing)
    keras_embedder.run(tensors[:32])  # predict_on_batch traces separately

    def bare_lite() -> list[np.ndarray]:
        return [np.concatenate(z) for z in zip(*(lite_model.predict_on_batch(tensors[s : s + 32])
                                                   for s in range(0, n, 32)), strict=True)]  # fmt: skip

    rates: dict[str, list[float]] = {"bare_keras": [], "e2e_keras": [], "e2e_lite": [], "bare_lite": []}
    rescan, cold_rescan = [], float("nan")
    for _ in range(args.rounds):
        t = time.perf_counter()
        ref = model.predict(tensors, batch_size=32, verbose=0)
        rates["bare_keras"].append(n / (time.perf_counter() - t))
        for runtime in ("keras", "lite"):
            with tempfile.TemporaryDirectory() as cache:
                seconds, first = timed_embed(folder, runtime, cache)
                rates[f"e2e_{runtime}"].append(n / seconds)
                assert first.embeddings.computed == len(first.embeddings.hashes) and not first.embeddings.failures
        t = time.perf_counter()
        got = bare_lite()
        rates["bare_lite"].append(n / (time.perf_counter() - t))
    with tempfile.TemporaryDirectory() as cache:
        timed_embed(folder, "lite", cache)
        t = time.perf_counter()
        again = timed_embed(folder, "lite", cache)[1]
        rescan.append(time.perf_counter() - t)
        assert again.embeddings.computed == 0
        # a fresh process, as a user reruns `audit embed`
        env = {**os.environ, "AUDITOR_CACHE_DIR": cache}
        t = time.perf_counter()
        subprocess.run([sys.executable, "-m", "auditor.cli.app", "embed", str(folder), "--out",
                        str(Path(cache) / "e.npz")], env=env, check=True, capture_output=True)  # fmt: skip
        cold_rescan = time.perf_counter() - t

    med = {k: statistics.median(v) for k, v in rates.items()}

    def row(label: str, key: str) -> str:
        rounds = ", ".join(f"{x:.1f}" for x in rates[key])
        return f"{label:<44} {med[key]:7.1f} img/s   (rounds: {rounds})"

    print(f"date: {started:%Y-%m-%d %H:%M} UTC; command: python benchmarks/bench_embed.py "
          f"--images {args.images} --rounds {args.rounds}")  # fmt: skip
    print(f"machine: {platform.machine()}, {os.cpu_count()} CPUs ({cpu_threads()} usable), "
          f"Python {platform.python_version()}, load average before/after: {load_before[0]:.1f}/"
          f"{os.getloadavg()[0]:.1f}")  # fmt: skip
    print(f"cpu: {cpu_description()}")
    import tensorflow as tf

    print(f"tensorflow {tf.__version__}; TFLite interpreter: {interpreter_class().__module__}, "
          f"{lite_model.interpreters} x {lite_model.threads} thread(s), batch {lite_model.batch} a call")  # fmt: skip
    print(f"images: {n} JPEG photos, {folder}")
    print(f"one-off loads: Keras model {keras_load:.1f} s (incl. TensorFlow import); TFLite conversion + "
          f"check into an empty cache {lite_convert:.1f} s; TFLite from the cache {lite_load:.2f} s")  # fmt: skip
    print(row("bare Keras model.predict (decoded tensors)", "bare_keras"))
    print(row("Keras end to end (AUDITOR_EMBED_RUNTIME=keras)", "e2e_keras"))
    print(row("TFLite end to end (default)", "e2e_lite"))
    print(row("bare TFLite (decoded tensors)", "bare_lite"))
    print(f"ratio TFLite end to end / Keras end to end: {med['e2e_lite'] / med['e2e_keras']:.2f}  (goal >= 3)")
    print(f"ratio TFLite end to end / bare Keras predict: {med['e2e_lite'] / med['bare_keras']:.2f}")
    print(f"ratio TFLite end to end / bare TFLite: {med['e2e_lite'] / med['bare_lite']:.2f}")
    per_round = [(e / k) for e, k in zip(rates["e2e_lite"], rates["e2e_keras"], strict=True)]
    print(f"per-round ratio TFLite/Keras end to end: {', '.join(f'{r:.2f}' for r in per_round)}")
    names = ("embedding", "probs", "bn_stats")
    cos = {k: min_cosine(g, r) for k, g, r in zip(names, got, ref, strict=True)}
    print("least per-image cosine TFLite vs Keras: " + ", ".join(f"{k} {v:.6f}" for k, v in cos.items()))
    first_s = n / med["e2e_lite"]
    print(f"cached rescan in-process: {statistics.median(rescan):.2f} s -> {first_s / statistics.median(rescan):.0f}x "
          f"faster than the first embedding ({first_s:.1f} s)")  # fmt: skip
    print(f"cached rescan, fresh `audit embed` process (writes the .npz): {cold_rescan:.2f} s "
          f"-> {first_s / cold_rescan:.1f}x")  # fmt: skip


if __name__ == "__main__":
    main()

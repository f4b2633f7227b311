"""The default backbone on the TensorFlow Lite interpreter (XNNPACK): the same network as the
Keras model, several times faster on a CPU.

The Keras model (:mod:`.efficientnet_lite` plus the embedding, probability and BatchNorm
statistics outputs) stays the reference and the fine-tuning model. For embedding, it is
converted once with ``tf.lite.TFLiteConverter`` and run by the TFLite interpreter with the
XNNPACK delegate, on all the process's cores. Conversion is checked before use: on a probe
batch the converted model must agree with Keras to cosine >= :data:`MIN_COSINE` per image on
every output, else it is not used.

**The converted-model cache.** Conversion costs seconds, so the model is kept at
``<cache>/models/<key>.tflite`` with a manifest ``<key>.json`` beside it, where ``key`` names
the backbone, the graph version, the TensorFlow and Keras versions and a hash of the weights
file: a change to any of them converts again. Both files are written atomically
(:func:`auditor.core.fsutil.write_files`). A file is loaded only if it is the one this code
wrote at that key: the manifest names the key and the SHA-256 of the model bytes, both files
belong to the current user and are not writable by others, and the bytes handed to the
interpreter are the bytes that were hashed. Anything else is ignored and rebuilt; a model file
found elsewhere is never loaded.

**Which runtime.** ``lite`` (default) or ``keras``: the ``runtime`` argument of
:meth:`auditor.embed.backbones.Backbone.embedder`, else ``$AUDITOR_EMBED_RUNTIME``. If the
conversion, the interpreter or the agreement check fails, the embedder falls back to Keras with
one :class:`EmbedRuntimeWarning`; it never fails a scan.

**Batches.** The interpreter runs a fixed batch of :data:`INVOKE_BATCH` images (one: each
image alone; a larger setting zero-pads the last chunk), so every image goes through the same
kernels whatever its neighbours: an image's outputs do not depend on the batch it sits in, nor
on which interpreter or how many threads ran it (tested).

TensorFlow is imported only inside the functions that convert or interpret.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import os
import sys
import warnings
from collections.abc import Callable
from pathlib import Path

import numpy as np

RUNTIME_ENV = "AUDITOR_EMBED_RUNTIME"
RUNTIMES = ("lite", "keras")
DEFAULT_RUNTIME = "lite"
#: Bump when the converted graph changes (outputs, statistics layers, conversion options).
GRAPH_VERSION = 1
#: Images per interpreter call. One is fastest: an image's activations (the stem's 1.6 MB the
#: largest) stay in the core's cache while the BatchNorm statistics read them again. Measured
#: (one thread, 64 photos, median of 5 alternating runs on a shared Xeon with AVX-512):
#: batch 1: 101, 2: 101, 4: 98, 8: 77 img/s. It also makes batch independence trivial.
INVOKE_BATCH = 1
#: Most interpreters run side by side (each holds its own activations and packed weights,
#: ~40 MB at batch 1); beyond that, each gets several threads.
MAX_INTERPRETERS = 8
#: Least per-image cosine between the converted model's outputs and Keras' on the probe batch.
MIN_COSINE = 0.999


class EmbedRuntimeWarning(UserWarning):
    """The fast embedding runtime could not be used; embedding went on with Keras."""


def resolve_runtime(runtime: str | None = None) -> str:
    """``runtime``, else ``$AUDITOR_EMBED_RUNTIME``, else ``"lite"``; ValueError if unknown."""
    value = (runtime or os.environ.get(RUNTIME_ENV) or DEFAULT_RUNTIME).strip().lower()
    if value not in RUNTIMES:
        source = "runtime" if runtime else RUNTIME_ENV
        raise ValueError(f"{source}={value!r}: use one of {', '.join(RUNTIMES)}")
    return value


def cpu_threads() -> int:
    """The cores this process may run on (its CPU affinity where the OS tells it)."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except (AttributeError, OSError):
        return max(1, os.cpu_count() or 1)


def _version(dist: str) -> str:
    from importlib import metadata  # ~25 ms to import; only the model cache key needs it

    try:
        return metadata.version(dist)
    except metadata.PackageNotFoundError:
        return "none"


def model_key(backbone_id: str, weights_digest: str) -> str:
    """The cache key of a converted model: backbone, graph version, TensorFlow and Keras
    versions (the converter's), weights hash. Read without importing TensorFlow."""
    return (f"{backbone_id}-g{GRAPH_VERSION}-tf{_version('tensorflow')}-keras{_version('keras')}"
            f"-w{weights_digest}")  # fmt: skip


def model_path(cache_dir: str | os.PathLike, key: str) -> Path:
    """Where the converted model for ``key`` lives in the cache folder."""
    return Path(cache_dir) / "models" / f"{key}.tflite"


@contextlib.contextmanager
def _silence():
    """Keep the converter's and the interpreter's chatter (Keras' export summary on stdout,
    TFLite's INFO lines written by C++ to file descriptors 1 and 2) off the terminal."""
    if os.environ.get("AUDITOR_TF_LOGS"):
        yield
        return
    for stream in (sys.stdout, sys.stderr):
        with contextlib.suppress(Exception):
            stream.flush()
    saved = []
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        for fd in (1, 2):
            saved.append((fd, os.dup(fd)))
            os.dup2(devnull, fd)
        os.close(devnull)
    except OSError:  # no real descriptors (an embedding host): only Python's streams
        pass
    try:
        with contextlib.redirect_stdout(io.StringIO()), warnings.catch_warnings():
            warnings.simplefilter("ignore")  # tf.lite.Interpreter's deprecation notice
            yield
    finally:
        for fd, copy in saved:
            os.dup2(copy, fd)
            os.close(copy)


def convert(keras_model) -> bytes:
    """The TFLite flatbuffer of ``keras_model`` (float32, dynamic batch, weights folded in)."""
    import tensorflow as tf

    with _silence():
        converter = tf.lite.TFLiteConverter.from_keras_model(keras_model)
        return converter.convert()


def _owned_by_me(path: Path) -> bool:
    st = path.stat()
    if hasattr(os, "geteuid") and st.st_uid != os.geteuid():
        return False
    return not st.st_mode & 0o022  # nobody else may have rewritten it


def save_model(path: Path, key: str, data: bytes, checks: dict[str, float]) -> bool:
    """Write the model and its manifest atomically (manifest last); False if the cache
    folder cannot be written (the model then lives for this process only)."""
    from auditor.core.fsutil import OutputError, write_files

    manifest = {"key": key, "sha256": hashlib.sha256(data).hexdigest(), "bytes": len(data),
                "min_cosine_vs_keras": checks}  # fmt: skip
    try:
        write_files({path: data, path.with_suffix(".json"): json.dumps(manifest, indent=1).encode()})
    except OutputError:
        return False
    return True


def load_trusted(path: Path, key: str) -> bytes | None:
    """The model bytes at ``path`` if this code wrote them for ``key`` (see the module
    docstring), else None. Never raises for a missing, foreign or damaged file."""
    manifest = path.with_suffix(".json")
    try:
        if not (path.is_file() and manifest.is_file() and _owned_by_me(path) and _owned_by_me(manifest)):
            return None
        meta = json.loads(manifest.read_text(encoding="utf-8"))
        if not isinstance(meta, dict) or meta.get("key") != key:
            return None
        data = path.read_bytes()
        if len(data) != meta.get("bytes") or hashlib.sha256(data).hexdigest() != meta.get("sha256"):
            return None
        return data
    except (OSError, ValueError):
        return None


def interpreter_class():
    """TFLite's interpreter: LiteRT's (``ai_edge_litert``) when installed (it needs no
    TensorFlow import), else the one TensorFlow ships as ``tf.lite.Interpreter``."""
    try:
        from ai_edge_litert.interpreter import Interpreter
    except ImportError:
        from tensorflow.lite.python.interpreter import Interpreter
    return Interpreter


def parallelism(cores: int | None = None) -> tuple[int, int]:
    """(interpreters, threads each) for ``cores``: up to :data:`MAX_INTERPRETERS` independent
    interpreters, the cores shared among them. Independent single-threaded interpreters keep
    every core busy where one multi-threaded interpreter waits, at each of its ~100 layers,
    for its slowest thread (a core taken by image decoding or another process)."""
    cores = cores or cpu_threads()
    interpreters = max(1, min(cores, MAX_INTERPRETERS))
    return interpreters, max(1, cores // interpreters)


class LiteModel:
    """A converted model behind Keras' ``predict_on_batch``: float32 (B, S, S, 3) in, the
    outputs as a list in ``outputs`` order. ``widths`` maps each output name to its width,
    which finds it among the interpreter's outputs (all widths must differ).

    Inputs are split into chunks of ``batch`` images, the last zero-padded, so each image
    goes through the same kernels; the chunks are spread over ``interpreters`` interpreters
    of ``threads`` threads each (default :func:`parallelism`), run side by side in Python
    threads (an interpreter call releases the GIL). Which interpreter runs a chunk does not
    change its numbers. One caller at a time."""

    def __init__(self, content: bytes, outputs: tuple[str, ...], widths: dict[str, int], input_size: int,
                 batch: int = INVOKE_BATCH, interpreters: int | None = None,
                 threads: int | None = None):  # fmt: skip
        if len(set(widths.values())) != len(widths):
            raise ValueError(f"outputs must have distinct widths to be told apart: {widths}")
        default_n, default_t = parallelism()
        self.outputs, self.batch, self.input_size = outputs, batch, input_size
        self.interpreters, self.threads = interpreters or default_n, threads or default_t
        self._runners = [self._interpreter(content, widths) for _ in range(self.interpreters)]
        self._pool = None
        # the first call plans XNNPACK's kernels; do it now, where a failure falls back to Keras
        self.predict_on_batch(np.zeros((batch * self.interpreters, input_size, input_size, 3), np.float32))

    def _interpreter(self, content: bytes, widths: dict[str, int]):
        size = self.input_size
        with _silence():
            interp = interpreter_class()(model_content=content, num_threads=self.threads)
            inp = interp.get_input_details()
            if len(inp) != 1 or tuple(inp[0]["shape"][1:]) != (size, size, 3):
                raise ValueError(f"converted model takes {[tuple(d['shape']) for d in inp]}, expected one "
                                 f"(batch, {size}, {size}, 3) input")  # fmt: skip
            interp.resize_tensor_input(inp[0]["index"], [self.batch, size, size, 3], strict=False)
            interp.allocate_tensors()
            by_width = {int(d["shape"][-1]): d["index"] for d in interp.get_output_details()}
        missing = {n: w for n, w in widths.items() if w not in by_width}
        if missing:
            raise ValueError(f"converted model lacks outputs {missing}; it has widths {sorted(by_width)}")
        return interp, inp[0]["index"], [by_width[widths[name]] for name in self.outputs]

    def _run_chunks(self, runner, chunks: list[np.ndarray]) -> list[list[np.ndarray]]:
        interp, inp, outs = runner
        results = []
        for chunk in chunks:
            interp.set_tensor(inp, chunk)
            interp.invoke()
            results.append([interp.get_tensor(i) for i in outs])
        return results

    def predict_on_batch(self, x: np.ndarray) -> list[np.ndarray]:
        x = np.ascontiguousarray(x, np.float32)
        n, b = len(x), self.batch
        chunks = [x[s : s + b] for s in range(0, n, b)]
        if len(chunks[-1]) < b:
            last = chunks[-1]
            chunks[-1] = np.concatenate([last, np.zeros((b - len(last), *last.shape[1:]), np.float32)])
        k = min(len(chunks), len(self._runners))
        shares = [chunks[i::k] for i in range(k)]  # interpreter i runs chunks i, i+k, ...
        if k == 1:
            done = [self._run_chunks(self._runners[0], shares[0])]
        else:
            if self._pool is None:
                from concurrent.futures import ThreadPoolExecutor

                self._pool = ThreadPoolExecutor(len(self._runners), thread_name_prefix="auditor-tflite")
            done = list(self._pool.map(self._run_chunks, self._runners[:k], shares))
        ordered = [done[j % k][j // k] for j in range(len(chunks))]
        return [np.concatenate([r[o] for r in ordered])[:n] for o in range(len(self.outputs))]


def probe_batch(size: int, n: int = 8, seed: int = 0) -> np.ndarray:
    """float32 (n, size, size, 3) pixels in 0..255 for the agreement check: smooth colour
    ramps with seeded texture and edges, so every layer sees photo-like, non-zero activity."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32) / size
    out = np.empty((n, size, size, 3), np.float32)
    for i in range(n):
        a, b, c = rng.uniform(0.5, 4.0, 3)
        base = np.stack([np.sin(a * np.pi * xx + i), np.cos(b * np.pi * yy), np.sin(c * np.pi * (xx + yy))], -1)
        blocks = np.kron(rng.uniform(-1, 1, (size // 16 + 1, size // 16 + 1, 3)), np.ones((16, 16, 1)))[:size, :size]
        noise = rng.normal(0, 0.15, (size, size, 3))
        out[i] = np.clip(127.5 + 90 * base + 40 * blocks + 40 * noise, 0, 255)
    return out


def min_cosine(a: np.ndarray, b: np.ndarray) -> float:
    """The least per-row cosine similarity between two (n, d) arrays."""
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    num = (a * b).sum(axis=1)
    den = np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1)
    return float(np.min(np.where(den > 0, num / np.maximum(den, 1e-300), np.where(num == 0, 1.0, 0.0))))


def agreement(reference, model, outputs: tuple[str, ...], batch: np.ndarray) -> dict[str, float]:
    """Per output, the least per-image cosine between ``model`` and ``reference`` (both with
    ``predict_on_batch``) on ``batch``."""
    ref = reference.predict_on_batch(batch)
    ref = ref if isinstance(ref, (list, tuple)) else [ref]
    got = model.predict_on_batch(batch)
    return {name: round(min_cosine(r, g), 6) for name, r, g in zip(outputs, ref, got, strict=True)}


def lite_model(
    key: str,
    cache_dir: str | os.PathLike,
    outputs: tuple[str, ...],
    widths: dict[str, int],
    input_size: int,
    keras_model: Callable[[], object],
) -> LiteModel:
    """The converted model for ``key``: from the cache when this code wrote it there, else
    converted from ``keras_model()``, checked against it and cached. Raises on any failure
    (the caller falls back to Keras)."""
    path = model_path(cache_dir, key)
    data = load_trusted(path, key)
    if data is not None:
        return LiteModel(data, outputs, widths, input_size)
    reference = keras_model()
    data = convert(reference)
    model = LiteModel(data, outputs, widths, input_size)
    checks = agreement(reference, model, outputs, probe_batch(input_size))
    bad = {k: v for k, v in checks.items() if not v >= MIN_COSINE}
    if bad:
        raise ValueError(f"converted model disagrees with Keras (least cosine {bad}, need {MIN_COSINE})")
    save_model(path, key, data, checks)
    return model


def load_lite0(backbone, cache_dir: str | None) -> tuple[LiteModel, tuple[str, ...], list, dict]:
    """EfficientNet-Lite0 on the TFLite interpreter: ``(model, outputs, stat layers, their
    ImageNet running statistics)``, the model from the cache or converted now from
    ``backbone``'s Keras embedder (``backbone.embedder(cache_dir, "keras")``, then kept for
    that runtime)."""
    from auditor.embed.backbones import efficientnet_lite as lite
    from auditor.io.decode import file_digest
    from auditor.io.store import default_cache_dir

    layers_info, reference = lite.reference_statistics()
    outputs = ("embedding", "probs", "bn_stats")
    widths = {"embedding": 1280, "probs": 1000, "bn_stats": 2 * sum(c for _, c in layers_info)}
    key = model_key(backbone.id, file_digest(lite.packaged_weights_path(), digest_size=8))

    def keras_model():
        return backbone.embedder(cache_dir, "keras").model

    model = lite_model(key, cache_dir or default_cache_dir(), outputs, widths, backbone.input_size, keras_model)
    return model, outputs, layers_info, reference

"""Embed images with a frozen backbone: decode overlapped with inference, cached by content.

:func:`embed_files` takes ``{content hash: path}`` (files the scan already decoded once and
accepted), returns the embeddings of all of them and computes only those the store does not
have for this backbone key. Decoding and resizing run in a bounded pool of threads (Pillow
releases the GIL while it decodes and resizes) a few batches ahead of the model, so the
model is never waiting on a file when there is work queued. Batches have a fixed size (the
last is padded), so the model is traced once and every image sees the same kernels: the same
input gives the same vector whatever else is in its batch. (The TFLite runtime pads to its
own smaller fixed size, so it is handed a short last batch as it is.)

Vectors are stored and returned as float16 (half the space; cosine similarities move by
less than 1e-3), so a fresh run and a cached rerun give identical numbers.
"""

from __future__ import annotations

import math
import os
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from itertools import islice

import numpy as np

from auditor.embed.backbones import CROP_FRACTION, Backbone, Embedder
from auditor.embed.blocks import BLOCK_ROWS, DiskMatrix
from auditor.io import decode as dec
from auditor.io.store import Store

#: Embeddings read from the store at a time when a scan gathers them.
ASSEMBLE_CHUNK = 2048


@dataclass
class Embeddings:
    """Embeddings of a set of files, one row per content hash.

    ``vectors``: float32 (n, dims) (values are float16-exact). ``probs``: (n, 1000) ImageNet
    softmax or None. ``bn_stats``: (n, 2*C) per-channel mean then std of the backbone's
    recorded BatchNorm inputs, or None; ``stat_layers`` names them with their channel counts
    and ``bn_reference`` holds each layer's ImageNet running (mean, variance).

    :func:`embed_files` gives the three matrices as :class:`auditor.embed.blocks.DiskMatrix`
    (float16 on disk, float32 rows on request: ``m[rows]``, ``m.blocks()``, ``np.asarray(m)``):
    16 kB an image that a scan never holds whole. Arrays work too (tests, users' own).
    """

    backbone: dict
    hashes: list[str]
    vectors: np.ndarray
    probs: np.ndarray | None = None
    bn_stats: np.ndarray | None = None
    stat_layers: list[tuple[str, int]] = field(default_factory=list)
    bn_reference: dict[str, tuple[np.ndarray, np.ndarray]] = field(default_factory=dict)
    failures: dict[str, str] = field(default_factory=dict)  # hash -> reason
    computed: int = 0
    cached: int = 0

    def index(self) -> dict[str, int]:
        return {h: i for i, h in enumerate(self.hashes)}

    def positions(self, hashes: Iterable[str | None]) -> np.ndarray:
        """Row of each hash in the matrices (int64; -1 where it has no embedding)."""
        idx = self.index()
        return np.array([idx.get(h, -1) if isinstance(h, str) else -1 for h in hashes], dtype=np.int64)

    def rows(self, hashes: Iterable[str | None]) -> tuple[np.ndarray, np.ndarray]:
        """(vectors for the given hashes, boolean mask of those that have one); rows
        without an embedding are zeros."""
        pos = self.positions(hashes)
        mask = pos >= 0
        out = np.zeros((len(pos), self.vectors.shape[1] if self.vectors.ndim == 2 else 0), np.float32)
        have = np.flatnonzero(mask)
        for start in range(0, len(have), BLOCK_ROWS):  # a block at a time: vectors on disk are read so
            rows = have[start : start + BLOCK_ROWS]
            out[rows] = self.vectors[pos[rows]]
        return out, mask


def prepare_image(path: str, size: int) -> np.ndarray | str:
    """Decode a file and produce the backbone input: shorter side scaled to
    ``size / 0.875`` then a centred ``size`` x ``size`` crop, uint8 (size, size, 3).
    Returns the reason as a string if the file cannot be decoded."""
    from PIL import Image

    short = math.ceil(size / CROP_FRACTION)
    result, _ = dec.decode_file(path, min_side=short)
    if isinstance(result, dec.DecodeError):
        return result.message
    img = Image.fromarray(result.rgb)
    w, h = img.size
    # the centred crop of the image scaled to shorter side `short`, as a box in the
    # original's pixels: one resampling step instead of resize-then-crop
    side = min(w, h) * size / short
    left, top = (w - side) / 2, (h - side) / 2
    img = img.resize((size, size), Image.Resampling.BILINEAR, box=(left, top, left + side, top + side),
                     reducing_gap=3.0)  # fmt: skip
    return np.asarray(img, dtype=np.uint8)


def _prefetch(fn: Callable, items: Iterable, workers: int, depth: int) -> Iterator:
    """``map(fn, items)`` in a thread pool, in order, at most ``depth`` items ahead."""
    with ThreadPoolExecutor(max_workers=workers, thread_name_prefix="auditor-decode") as pool:
        it = iter(items)
        pending = deque(pool.submit(fn, x) for x in islice(it, depth))
        while pending:
            done = pending.popleft().result()
            for x in islice(it, 1):
                pending.append(pool.submit(fn, x))
            yield done


def _pack(arrays: list[np.ndarray]) -> bytes:
    return np.concatenate([a.ravel() for a in arrays]).astype(np.float16).tobytes()


def embed_files(
    files: dict[str, str],
    backbone: Backbone,
    store: Store,
    *,
    batch_size: int = 32,
    workers: int | None = None,
    cache_dir: str | None = None,
    progress: Callable[[int], None] | None = None,
    write_every: int = 256,
    runtime: str | None = None,
) -> Embeddings:
    """Embed ``{content hash: path}``. Cached vectors are reused; the model is loaded only
    if something is missing from the cache (so an unchanged rescan does not import
    TensorFlow). ``progress(n)`` is called with the number of files just finished.
    ``runtime``: ``"lite"`` or ``"keras"`` for the default backbone (see
    :meth:`auditor.embed.backbones.Backbone.embedder`); both share the cache key."""
    key = backbone.cache_key
    hashes = sorted(files)
    known = store.embedded(hashes, key)
    todo = [h for h in hashes if h not in known]
    if progress and known:
        progress(len(known))
    del known
    embedder: Embedder | None = None
    failures: dict[str, str] = {}
    if todo:
        embedder = backbone.embedder(cache_dir, runtime)
        failures = _compute(embedder, todo, files, store, key, batch_size, workers, progress, write_every)
    # everything comes from the store's float16 bytes, a chunk at a time, onto disk
    return _assemble(backbone, hashes, store, key, failures, embedder, computed=len(todo) - len(failures))


def _compute(embedder, todo, files, store, key, batch_size, workers, progress, write_every) -> dict[str, str]:
    size = embedder.backbone.input_size
    workers = workers or max(1, min(4, os.cpu_count() or 1))
    failures: dict[str, str] = {}
    rows: list[tuple[str, bytes, bytes | None]] = []
    batch_hashes: list[str] = []
    batch = np.zeros((batch_size, size, size, 3), np.float32)

    def run_batch() -> None:
        n = len(batch_hashes)
        if n == 0:
            return
        out = embedder.run(batch if embedder.fixed_batch else batch[:n])
        extras = [k for k in embedder.outputs if k != "embedding"]
        for i, h in enumerate(batch_hashes):
            extra = _pack([out[k][i] for k in extras]) if extras else None
            rows.append((h, out["embedding"][i].astype(np.float16).tobytes(), extra))
        batch_hashes.clear()
        if progress:
            progress(n)

    def load(h: str):
        try:
            return h, prepare_image(files[h], size)
        except Exception as exc:  # a file that changed or vanished since the scan read it
            return h, f"{type(exc).__name__}: {exc}"

    for h, pixels in _prefetch(load, todo, workers, depth=3 * batch_size):
        if isinstance(pixels, str):
            failures[h] = pixels
            if progress:
                progress(1)
            continue
        batch[len(batch_hashes)] = pixels
        batch_hashes.append(h)
        if len(batch_hashes) == batch_size:
            run_batch()
        if len(rows) >= write_every:
            store.put_embeddings(rows, key)
            rows.clear()
    if batch_hashes:
        batch[len(batch_hashes) :] = 0
        run_batch()
    store.put_embeddings(rows, key)
    return failures


def _assemble(backbone, hashes, store: Store, key: str, failures, embedder, computed,
              chunk: int = ASSEMBLE_CHUNK) -> Embeddings:  # fmt: skip
    """The store's embeddings of ``hashes`` (those it has, in order), written a chunk at a
    time into :class:`DiskMatrix` files in the cache folder."""
    folder = None if store.path == ":memory:" else store.folder  # --no-cache: the system's temporary folder
    have: list[str] = []
    vectors: DiskMatrix | None = None
    extra: DiskMatrix | None = None
    with_extra = bool(backbone.has_head)
    for start in range(0, len(hashes), chunk):
        part = hashes[start : start + chunk]
        got = store.get_embeddings(part, key)
        rows = [h for h in part if h in got]
        if not rows:
            continue
        if vectors is None:
            vectors = DiskMatrix(len(got[rows[0]][0]) // 2, folder)
        vectors.append(b"".join(got[h][0] for h in rows))
        if with_extra and all(got[h][1] is not None for h in rows):
            if extra is None:
                extra = DiskMatrix(len(got[rows[0]][1]) // 2, folder)
            extra.append(b"".join(got[h][1] for h in rows))
        elif with_extra:  # a row without them: no probabilities for any
            with_extra = False
            if extra is not None:
                extra.close()
                extra = None
        have.extend(rows)
        del got
    info = backbone.to_dict()
    if vectors is None:
        matrix: np.ndarray | DiskMatrix = np.zeros((0, backbone.dims or 0), np.float32)
    else:
        matrix = vectors
        info["dims"] = int(vectors.shape[1])
    result = Embeddings(info, have, matrix, failures=failures, computed=computed, cached=len(have) - computed)
    if with_extra and extra is not None:
        result.probs = extra.columns(0, 1000)
        result.bn_stats = extra.columns(1000)
        result.stat_layers, result.bn_reference = _bn_layout(backbone, embedder)
    return result


def _bn_layout(backbone: Backbone, embedder: Embedder | None):
    """The recorded BatchNorm layers and their ImageNet running statistics; read from the
    weights without building the network when nothing had to be computed."""
    if embedder is not None:
        return embedder.stat_layers, embedder.bn_reference
    from auditor.embed.backbones import efficientnet_lite as lite

    return lite.reference_statistics()


def save_embeddings(path: str | os.PathLike, items, embeddings: Embeddings) -> int:
    """Write embeddings with their paths for users' own analysis; returns the row count.

    ``items``: a table with ``path``, ``split``, ``label``, ``content_hash`` (one row per
    image; images without an embedding are left out). ``.npz``: arrays ``paths``,
    ``splits``, ``labels``, ``content_hash``, ``vectors`` (float16, n x dims), ``probs``
    when the backbone has an ImageNet head, and ``backbone`` (JSON text); load it with
    ``numpy.load(path)`` (no pickle needed). ``.parquet``: one row per image with the same
    columns and ``embedding`` as a list of floats. Written atomically.
    """
    import io
    import json
    from pathlib import Path

    from auditor.core.fsutil import atomic_write_bytes

    path = Path(path)
    vectors, mask = embeddings.rows(items["content_hash"])
    rows = items[mask].reset_index(drop=True)
    vectors = vectors[mask].astype(np.float16)

    def text(col):
        return np.array([x if isinstance(x, str) else "" for x in rows[col]], dtype=str)

    buf = io.BytesIO()
    if path.suffix == ".npz":
        arrays = {"paths": text("path"), "splits": text("split"), "labels": text("label"),
                  "content_hash": text("content_hash"), "vectors": vectors,
                  "backbone": np.array(json.dumps(embeddings.backbone, sort_keys=True))}  # fmt: skip
        if embeddings.probs is not None:
            idx = embeddings.index()
            arrays["probs"] = embeddings.probs[[idx[h] for h in rows["content_hash"]]].astype(np.float16)
        np.savez_compressed(buf, **arrays)
    elif path.suffix == ".parquet":
        import pandas as pd

        frame = pd.DataFrame({"path": rows["path"], "split": rows["split"], "label": rows["label"],
                              "content_hash": rows["content_hash"],
                              "embedding": list(vectors.astype(np.float32))})  # fmt: skip
        frame.attrs["backbone"] = json.dumps(embeddings.backbone, sort_keys=True)
        frame.to_parquet(buf, index=False)
    else:
        raise ValueError(f"unsupported embeddings file type {path.suffix!r}: use .npz or .parquet")
    atomic_write_bytes(path, buf.getvalue())
    return len(rows)

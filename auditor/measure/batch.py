"""Measure every image: one decode per file, in parallel worker processes, through the store.

:func:`measure_file` is the per-file job (pure: path in, record out). :func:`measure_all`
streams files through a bounded pool of worker processes, writes results to the store in
batches, and survives workers that crash inside a native decoder (the file that killed the
worker becomes a ``corrupt`` record; the rest of the scan goes on). Workers end with their
parent, however it ends (``kill -9`` included).
"""

from __future__ import annotations

import dataclasses
import io
import os
import sys
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import FIRST_COMPLETED, Future, ProcessPoolExecutor, wait
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass

import numpy as np

from auditor.core.fsutil import readable
from auditor.io import decode as dec
from auditor.io.store import Store
from auditor.measure.hashing import perceptual_hashes, pixel_hash
from auditor.measure.pixels import (
    MEASURE_VERSION,
    REFERENCE_VERSION,
    downscale_to,
    luminance,
    measure_pixels,
    rgb_planes,
)

#: Longest side, in pixels, of the working copy the pixel properties are computed on.
ANALYSIS_MAX_SIDE = 1024
#: Longest side of the JPEG thumbnail kept for reports.
THUMBNAIL_SIDE = 128
#: Files per task sent to a worker (amortises inter-process overhead on small images).
TASK_SIZE = 8
#: A small data set is measured with the numpy reference, not the compiled kernels: making the
#: kernels ready (importing numba, which imports scipy.linalg, and loading their cached machine
#: code: 0.3-0.6 s; compiling them into a new cache folder: 5-8 s) costs more than the
#: reference's extra work on a few images: 40-100 ns a pixel of the working copy, and some 1 ms
#: an image for its many small numpy calls (counted as :data:`PER_IMAGE_PIXELS` pixels). Small:
#: at most :data:`SMALL_SCAN_IMAGES` files whose working copies hold at most
#: :data:`SMALL_SCAN_PIXELS` pixels together (their sizes read from the headers). Whole scans,
#: CPU seconds, kernels already in the cache: the reference saves 0.22 s at 3.4 M pixels (20
#: JPEGs of 256-640 px), 0.09 s at 6.8 M (20 skimage photos) and costs 0.58 s more at 15 M, so
#: the break-even is near 8 M and the limit half of it (e.g. 20 images of 430 x 430 px, 175 of
#: 112 px, 5 of 1024 x 768). Decided from the files alone, never from what the cache holds, so
#: a data set is always measured the same way (see :func:`store_version`).
#: benchmarks/RESULTS.md, "20-image scan".
SMALL_SCAN_IMAGES = 256
SMALL_SCAN_PIXELS = 4_000_000
PER_IMAGE_PIXELS = 10_000


@dataclass(frozen=True)
class ExtractOptions:
    max_pixels: int = dec.DEFAULT_MAX_PIXELS
    max_bytes: int = dec.DEFAULT_MAX_FILE_BYTES
    #: where the compiled kernels are cached (the store's cache folder; None: the default)
    cache_dir: str | None = None
    #: measure with the compiled kernels (where they load); False: the numpy reference
    compiled: bool = True


def options_for_files(options: ExtractOptions, paths: Sequence[str]) -> ExtractOptions:
    """``options`` for measuring the files ``paths`` (a data set): the numpy reference where
    they are small (see :data:`SMALL_SCAN_IMAGES`), the compiled kernels otherwise."""
    return dataclasses.replace(options, compiled=not _small(paths, options.max_bytes))


def _small(paths: Sequence[str], max_bytes: int) -> bool:
    if len(paths) > SMALL_SCAN_IMAGES:
        return False
    total = 0
    for p in paths:
        w, h = dec.image_size(p, max_bytes) or (0, 0)  # a file the scan will not decode: its own cost only
        scale = min(1.0, ANALYSIS_MAX_SIDE / max(w, h, 1))
        total += int(w * h * scale * scale) + PER_IMAGE_PIXELS
        if total > SMALL_SCAN_PIXELS:
            return False
    return True


DEFAULT_OPTIONS = ExtractOptions()


def _thumbnail(rgb: np.ndarray) -> bytes:
    from PIL import Image

    img = Image.fromarray(rgb)
    # reducing_gap=1: box-reduce by the whole factor first, then a short bilinear step
    # (half the time of the default 2.0; no visible difference at 128 px)
    img.thumbnail((THUMBNAIL_SIDE, THUMBNAIL_SIDE), Image.Resampling.BILINEAR, reducing_gap=1.0)
    buf = io.BytesIO()
    img.save(buf, "JPEG", quality=80)
    return buf.getvalue()


_KERNELS: list = []  # [module or None], once this process has tried to load the kernels


def pixel_kernels(cache_dir: str | None = None):
    """The compiled pixel measurements (:mod:`auditor.measure.kernels`), compiled or loaded from
    their cache in ``cache_dir`` (default: the user cache folder) on first use in a process;
    None to use the numpy reference instead: ``AUDITOR_NO_JIT`` is set, or numba cannot be
    imported or compile here (the scan still works, slower)."""
    if os.environ.get("AUDITOR_NO_JIT"):
        return None
    if not _KERNELS:
        try:
            from auditor.measure import kernels

            kernels.warm(cache_dir)
        except Exception:  # numba missing, built for another numpy, or no compiler
            kernels = None
        _KERNELS.append(kernels)
    return _KERNELS[0]


def store_version(options: ExtractOptions, load: bool = False) -> int:
    """The store's version of the measurements ``options`` make: :data:`MEASURE_VERSION` for
    the compiled kernels, :data:`REFERENCE_VERSION` for the numpy reference. The two agree
    to float32 rounding, not bit for bit (tests/test_kernels.py), so a row made by one never
    answers a scan that measures with the other: a data set's numbers are those of the path
    its scan takes, whatever the cache holds. ``load``: make the kernels ready to be sure
    they load (else, where numba is installed, assume they do; nothing is imported)."""
    if not options.compiled or os.environ.get("AUDITOR_NO_JIT"):
        return REFERENCE_VERSION
    if load or _KERNELS:
        return MEASURE_VERSION if pixel_kernels(options.cache_dir) is not None else REFERENCE_VERSION
    from importlib.util import find_spec

    return MEASURE_VERSION if find_spec("numba") is not None else REFERENCE_VERSION


def _pixel_properties(work: np.ndarray, options: ExtractOptions = DEFAULT_OPTIONS) -> tuple[dict, np.ndarray]:
    """(measure.measure_pixels of the working copy, its rounded uint8 luminance)."""
    kernels = pixel_kernels(options.cache_dir) if options.compiled else None
    if kernels is not None:
        return kernels.measure_rgb(work)
    planes = rgb_planes(work)
    gray = luminance(work, planes)
    gray_u8 = np.clip(np.rint(gray), 0, 255).astype(np.uint8)
    return measure_pixels(work, gray, planes, gray_u8), gray_u8


def measure_file(path: str, options: ExtractOptions = DEFAULT_OPTIONS) -> tuple[str | None, dict, bytes | None]:
    """Decode one file once and compute every property the checks need.

    Returns (content hash or None if unreadable, properties, thumbnail JPEG bytes or None).
    Never raises for a bad file: decoding problems are recorded as ``error_kind`` /
    ``error``.
    """
    result, data = dec.decode_file(path, options.max_pixels, options.max_bytes, ANALYSIS_MAX_SIDE * 2)
    if data is None:
        assert isinstance(result, dec.DecodeError)
        return None, {"error_kind": result.kind, "error": result.message}, None
    props: dict = {"file_size": len(data), "format": dec.sniff_format(data[:16])}
    chash = dec.file_hash(data)
    if isinstance(result, dec.DecodeError):
        props.update(error_kind=result.kind, error=result.message)
        return chash, props, None
    work = downscale_to(result.rgb, ANALYSIS_MAX_SIDE)
    pixel_props, gray_u8 = _pixel_properties(work, options)
    props.update(
        width=result.width,
        height=result.height,
        mode=result.mode,
        bit_depth=result.bit_depth,
        has_alpha=result.has_alpha,
        transparent_fraction=result.alpha_fraction_transparent,
        n_frames=result.n_frames,
        exif_rotated=result.exif_rotated,
        jpeg_quality=result.jpeg_quality,
        pixel_hash=pixel_hash(result.rgb),
        **perceptual_hashes(gray_u8),
        **pixel_props,
    )
    return chash, props, _thumbnail(work)


def _measure_task(paths: Sequence[str], options: ExtractOptions) -> list[tuple[str, str | None, dict, bytes | None]]:
    return [(p, *measure_file(p, options)) for p in paths]


def _crashed(path: str) -> tuple[str, str | None, dict, None]:
    return path, None, {"error_kind": "decoder_crash", "error": "the decoder crashed on this file"}, None


def _end_with(parent: int) -> None:
    """Worker initializer: end this worker when ``parent`` (the scan) dies, however it dies.
    A killed scan's workers would otherwise wait for tasks forever: each holds both ends of
    its task pipe, so it never sees the parent go. On Linux the kernel sends SIGKILL when
    the parent exits (prctl PR_SET_PDEATHSIG); everywhere, a thread checks every half
    second whether the worker was handed to another parent."""
    if sys.platform.startswith("linux"):
        try:
            import ctypes
            import signal

            pr_set_pdeathsig = 1
            ctypes.CDLL(None, use_errno=True).prctl(pr_set_pdeathsig, int(signal.SIGKILL), 0, 0, 0)
        except (OSError, AttributeError):  # no libc symbol: the thread below still watches
            pass
    if os.getppid() != parent:  # the parent died before the line above took effect
        os._exit(1)

    def watch() -> None:
        while os.getppid() == parent:
            time.sleep(0.5)
        os._exit(1)

    threading.Thread(target=watch, name="auditor-parent-watch", daemon=True).start()


#: Above this many files a scan's measure workers start as new interpreters ("spawn": about a
#: second each to import and load the cached kernels) instead of forks of the scan. A fork maps
#: the scan's whole heap at the moment it starts: with the items table and path list of a
#: million files, 515 MB a worker (measured), counted again in each worker's RSS.
SPAWN_ABOVE = 100_000


def _pool(workers: int, spawn: bool = False) -> ProcessPoolExecutor:
    """A pool of ``workers`` processes that end with this one (see :func:`_end_with`);
    ``spawn``: new interpreters, never forks of this process."""
    return ProcessPoolExecutor(max_workers=workers, mp_context=_mp_context(spawn), initializer=_end_with,
                               initargs=(os.getpid(),))  # fmt: skip


def _mp_context(spawn: bool = False):
    import multiprocessing as mp

    # fork is fastest, but must not copy a process that already runs TensorFlow threads.
    if not spawn and sys.platform.startswith("linux") and "tensorflow" not in sys.modules:
        return mp.get_context("fork")
    return mp.get_context("spawn")


class _Workers:
    """The worker pool of a scan's measurement: started on the first chunk that needs it and
    kept for every later chunk (:func:`measure_chunks`). Fork copies the parent's whole heap
    into each worker, so a pool started per chunk maps the table built so far, once more in
    every worker; started once, the workers hold little more than the interpreter and the
    kernels. After a worker dies the pool is replaced (:meth:`broken`). ``spawn``: the workers
    are new interpreters (:data:`SPAWN_ABOVE`), which map nothing of the scan's heap at all."""

    def __init__(self, workers: int, spawn: bool = False):
        self.workers = workers
        self.spawn = spawn
        self._pool: ProcessPoolExecutor | None = None

    def pool(self) -> ProcessPoolExecutor:
        if self._pool is None:
            self._pool = _pool(self.workers, self.spawn)
        return self._pool

    def broken(self) -> None:
        """A worker died: the pool cannot run tasks any more; the next :meth:`pool` is new."""
        if self._pool is not None:
            self._pool.shutdown(wait=False, cancel_futures=True)
            self._pool = None

    def close(self) -> None:
        if self._pool is not None:
            self._pool.shutdown(wait=True, cancel_futures=True)
            self._pool = None


def _iter_results(paths: list[str], workers: int, options: ExtractOptions, pool: _Workers | None = None):
    """Yield (path, hash, props, thumb) for each path, in any order. Bounded in flight.
    ``pool``: the workers to use (kept open afterwards); default a pool for these paths alone."""
    if workers <= 1 or len(paths) < 4 * TASK_SIZE:
        for p in paths:
            yield (p, *measure_file(p, options))
        return
    if options.compiled:  # compiled (or loaded) once here: forked workers inherit it, spawned ones load it
        pixel_kernels(options.cache_dir)
    own = pool is None
    workers_ = _Workers(workers) if pool is None else pool
    tasks = [paths[i : i + TASK_SIZE] for i in range(0, len(paths), TASK_SIZE)]
    pending_tasks = list(reversed(tasks))
    suspects: list[str] = []  # files of tasks that were in flight when a worker died
    try:
        while pending_tasks:
            in_flight: dict[Future, list[str]] = {}
            broken = False
            executor = workers_.pool()
            try:
                while pending_tasks or in_flight:
                    while pending_tasks and len(in_flight) < workers * 4 and not broken:
                        task = pending_tasks.pop()
                        in_flight[executor.submit(_measure_task, task, options)] = task
                    if not in_flight:
                        break
                    done, _ = wait(in_flight, return_when=FIRST_COMPLETED)
                    for fut in done:
                        task = in_flight.pop(fut)
                        try:
                            yield from fut.result()
                        except BrokenProcessPool:
                            broken = True
                            suspects.extend(task)
                    if broken:
                        for fut, task in in_flight.items():
                            fut.cancel()
                            suspects.extend(task)
                        in_flight.clear()
                        break
            finally:
                if broken:
                    workers_.broken()
            # Re-run each suspect alone in a fresh one-worker pool: only the real culprit fails.
            while suspects:
                path = suspects.pop()
                with _pool(1) as solo:
                    try:
                        yield from solo.submit(_measure_task, [path], options).result()
                    except BrokenProcessPool:
                        yield _crashed(path)
    finally:
        if own:
            workers_.close()


def _stat_known(
    paths: Sequence[str], store: Store
) -> tuple[dict[str, tuple[int, int]], dict[str, str], dict[str, str]]:
    """(path -> (size, mtime_ns), path -> why it cannot be read, path -> content hash the
    store knows for files unchanged since it saw them).

    A file this user cannot read is unreadable even when the store measured it earlier
    (chmod 000 since, or another user's cache): the cached numbers would report it as fine."""
    stats: dict[str, tuple[int, int]] = {}
    errors: dict[str, str] = {}
    for p in paths:
        try:
            st = os.stat(p)
        except OSError as exc:
            errors[p] = f"cannot stat: {exc.strerror}"
            continue
        if not readable(p):
            errors[p] = "permission denied: this user cannot read the file"
            continue
        stats[p] = (st.st_size, st.st_mtime_ns)
    return stats, errors, store.known_hashes((p, *stats[p]) for p in stats)


def measure_all(
    paths: Sequence[str],
    store: Store,
    workers: int | None = None,
    options: ExtractOptions = DEFAULT_OPTIONS,
    progress: Callable[[int], None] | None = None,
    batch_size: int = 64,
) -> dict[str, tuple[str | None, dict]]:
    """Measure every path (absolute), reusing the store; returns path -> (hash, props).
    Thumbnails go to the store only (fetch them with :meth:`Store.thumbnails`).

    Unchanged files (same size and mtime as when cached) are neither read nor decoded.
    ``progress(n)`` is called with the number of files just finished. A million files are
    better measured with :func:`measure_chunks` (a million dicts of properties is 4 GB).
    """
    workers = workers or os.cpu_count() or 1
    return _measure(paths, store, workers, _with_cache_dir(options, store), progress, batch_size, None)


def measure_chunks(
    paths: Sequence[str],
    store: Store,
    chunk: int,
    workers: int | None = None,
    options: ExtractOptions = DEFAULT_OPTIONS,
    progress: Callable[[int], None] | None = None,
    batch_size: int = 64,
) -> Iterator[tuple[Sequence[str], dict[str, tuple[str | None, dict]]]]:
    """:func:`measure_all` of ``paths[i : i + chunk]`` for i = 0, chunk, 2 chunk, ...: yields
    (those paths, their path -> (hash, props)) in order, one chunk's results alive at a time.

    One pool of worker processes serves every chunk: it starts with the first chunk that
    has files to decode (with a fresh cache, before the caller holds anything of the results)
    and ends when the iteration does (exhausted, closed, or an exception in the caller). Its
    workers are spawned, not forked, above :data:`SPAWN_ABOVE` paths.
    """
    workers = workers or os.cpu_count() or 1
    options = _with_cache_dir(options, store)
    pool = _Workers(workers, spawn=len(paths) > SPAWN_ABOVE)
    try:
        for start in range(0, len(paths), chunk):
            part = paths[start : start + chunk]
            yield part, _measure(part, store, workers, options, progress, batch_size, pool)
    finally:
        pool.close()


def _with_cache_dir(options: ExtractOptions, store: Store) -> ExtractOptions:
    if options.cache_dir is None:
        return dataclasses.replace(options, cache_dir=str(store.folder))
    return options


def _measure(
    paths: Sequence[str],
    store: Store,
    workers: int,
    options: ExtractOptions,
    progress: Callable[[int], None] | None,
    batch_size: int,
    pool: _Workers | None,
) -> dict[str, tuple[str | None, dict]]:
    stats, stat_errors, known = _stat_known(paths, store)
    version = store_version(options)
    results, todo = _cached(stats, stat_errors, known, store, version)
    if todo and version != store_version(options, load=True):  # the kernels failed to load here
        version = REFERENCE_VERSION
        results, todo = _cached(stats, stat_errors, known, store, version)
    if progress and results:
        progress(len(results))
    files_batch: list[tuple[str, int, int, str]] = []
    meas_batch: list[tuple[str, dict, bytes | None]] = []

    def flush() -> None:
        store.put_batch(files_batch, meas_batch, version)
        files_batch.clear()
        meas_batch.clear()

    for path, chash, props, thumb in _iter_results(todo, workers, options, pool):
        results[path] = (chash, props)
        # Only cache files we could read; unreadable ones are retried on every scan.
        if chash is not None and path in stats:
            files_batch.append((path, *stats[path], chash))
            meas_batch.append((chash, props, thumb))
        if len(files_batch) >= batch_size:
            flush()
        if progress:
            progress(1)
    flush()
    return results


def _cached(
    stats: dict[str, tuple[int, int]], stat_errors: dict[str, str], known: dict[str, str], store: Store, version: int
) -> tuple[dict[str, tuple[str | None, dict]], list[str]]:
    """(path -> (hash, props) for unreadable files and those the store measured at
    ``version``, the readable paths left to measure)."""
    results: dict[str, tuple[str | None, dict]] = {
        p: (None, {"error_kind": "unreadable", "error": err}) for p, err in stat_errors.items()
    }
    cached = store.get_measurements(known.values(), version, thumbnails=False)
    todo: list[str] = []
    for p in stats:
        chash = known.get(p)
        if chash is not None and chash in cached:
            results[p] = (chash, cached[chash][0])
        else:
            todo.append(p)
    return results, todo


def hash_all(paths: Sequence[str], store: Store, max_bytes: int = dec.DEFAULT_MAX_FILE_BYTES) -> dict[str, str | None]:
    """Content hash of every path (None if unreadable), without decoding: the store's
    answer for files unchanged since it saw them, else the file is read and hashed (and
    indexed, so a later scan does not read it again to hash it)."""
    stats, stat_errors, known = _stat_known(paths, store)
    out: dict[str, str | None] = dict.fromkeys(stat_errors)
    fresh: list[tuple[str, int, int, str]] = []
    for p in stats:
        if p in known:
            out[p] = known[p]
            continue
        data = dec.read_bytes(p, max_bytes)
        if isinstance(data, dec.DecodeError) or not data:
            out[p] = None
            continue
        out[p] = dec.file_hash(data)
        fresh.append((p, *stats[p], out[p]))
    store.put_batch(fresh, [], MEASURE_VERSION)
    return out

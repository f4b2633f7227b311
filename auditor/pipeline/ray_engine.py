"""``--engine ray``: the per-image work of a scan on a Ray cluster, through Ray Data.

The scan is the local one (:func:`auditor.pipeline.api.scan`); this engine only does its
per-image work first, on the cluster, and writes the results into the scan's store in the
store's own format. The local code then finds every image measured and embedded, exactly as
on a rescan, so the checks, the report and the cache are unchanged (and give the same bytes):

* measure: the files the store does not know go through ``map_batches`` over file paths
  (:func:`measure_records`: one decode, the measurements, the hashes and the thumbnail per
  file, the same :func:`auditor.measure.batch.measure_file` as the local pool), a task of
  :attr:`RayEngine.files_per_task` files at a time;
* embed: the distinct contents without a cached vector go to a pool of actors
  (:class:`EmbedActor`) that load the backbone once each (one GPU each where the cluster has
  GPUs) and run :func:`auditor.embed.features.embed_files` on their batch;
* the checks that need every image (copy graph, kNN, shift, labels) run on the driver, on the
  columnar results, as they always do.

Only the driver opens the SQLite store: the workers return rows and the driver writes them
as they stream in, one transaction per block. A block that failed is not in the store;
Ray retries a task whose worker died (:attr:`RayEngine.max_retries`), and a block that still
fails is left out rather than ending the scan: the local code then measures (or embeds) what
is missing on the driver, with the local pool's isolation of files that crash the decoder.
Writes are ``INSERT OR REPLACE`` keyed by path and content, so a file measured twice is one
row. Ray is imported only here, inside the functions that need it.
"""

from __future__ import annotations

import json
import logging
import math
import os
import socket
import warnings
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from auditor.core.fsutil import readable

if TYPE_CHECKING:
    from auditor.embed.backbones import Backbone
    from auditor.io.store import Store
    from auditor.measure.batch import ExtractOptions

#: The engines ``--engine`` takes.
ENGINES = ("local", "ray")
#: What to run where Ray is missing.
INSTALL_HINT = "pip install 'image-auditor[ray]'"

#: Environment variables that change what a worker computes (the numpy measurements instead of
#: the compiled ones; the embedding runtime): the workers get the driver's values.
RESULT_ENV = ("AUDITOR_NO_JIT", "AUDITOR_EMBED_RUNTIME")

#: One measured file, as a worker returns it: (path, content hash or None, properties, thumbnail).
Record = tuple[str, str | None, dict, bytes | None]
ProgressFn = Callable[[int], None]


class EngineError(RuntimeError):
    """The engine asked for cannot run here (Ray not installed, a cluster that cannot be
    reached, an unknown engine); the message says what to do."""


class EngineWarning(UserWarning):
    """Part of the per-image work failed on the cluster and was done on the driver instead."""


def require_ray():
    """Import Ray Data (the ``ray`` module), or raise :class:`EngineError` saying how to install it."""
    try:
        import ray
        import ray.data  # noqa: F401
    except ImportError as exc:
        raise EngineError(f"--engine ray needs Ray Data, which is not installed ({exc}): {INSTALL_HINT}") from None
    return ray


def measure_records(paths: list[str], options: ExtractOptions) -> list[Record]:
    """Measure files on a worker: :func:`auditor.measure.batch.measure_file` of each path."""
    from auditor.measure.batch import measure_file

    return [(p, *measure_file(p, options)) for p in paths]


def _measure_block(batch, options: ExtractOptions, measure: Callable[[list[str], ExtractOptions], list[Record]]):
    """``map_batches`` function: a pyarrow table of ``path`` in, of records out (properties
    as JSON text, which keeps their order and every bit of their numbers)."""
    import pyarrow as pa

    records = measure([str(p) for p in batch.column("path").to_pylist()], options)
    return pa.table({
        "path": pa.array([r[0] for r in records], pa.string()),
        "content_hash": pa.array([r[1] for r in records], pa.string()),
        "props": pa.array([json.dumps(r[2]) for r in records], pa.string()),
        "thumbnail": pa.array([r[3] for r in records], pa.binary()),
    })  # fmt: skip


class EmbedActor:
    """A Ray Data actor: loads the backbone once, then embeds batches of ``content_hash`` /
    ``path`` rows with :func:`auditor.embed.features.embed_files` into an in-memory store and
    returns the store's rows (float16 vector bytes, extra bytes) and the files that failed."""

    def __init__(self, backbone: Backbone, batch_size: int, cache_dir: str | None):
        self.backbone, self.batch_size, self.cache_dir = backbone, batch_size, cache_dir
        backbone.embedder(cache_dir)  # once per actor (kept by the backbone registry)

    def __call__(self, batch):
        import pyarrow as pa

        from auditor.embed.features import embed_files
        from auditor.io.store import Store

        files = dict(zip(batch.column("content_hash").to_pylist(), batch.column("path").to_pylist(), strict=True))
        with Store(None) as mem:
            emb = embed_files(files, self.backbone, mem, batch_size=self.batch_size, cache_dir=self.cache_dir)
            rows = mem.get_embeddings(list(files), self.backbone.cache_key)
        hashes = list(files)
        return pa.table({
            "content_hash": pa.array(hashes, pa.string()),
            "vector": pa.array([rows[h][0] if h in rows else None for h in hashes], pa.binary()),
            "extra": pa.array([rows[h][1] if h in rows else None for h in hashes], pa.binary()),
            "failure": pa.array([emb.failures.get(h) for h in hashes], pa.string()),
        })  # fmt: skip


@dataclass
class EmbedRun:
    """What the cluster embedded: ``computed`` vectors written to the store, ``failures``
    (content hash -> why the file could not be embedded)."""

    computed: int = 0
    failures: dict[str, str] = field(default_factory=dict)


@dataclass
class RayEngine:
    """Where and how the per-image work runs on Ray.

    ``address``: the cluster (default ``$RAY_ADDRESS``; ``"auto"``: the one ``ray start --head``
    started on this machine). ``workers``: with no address, the CPUs of a new local instance
    (``--workers``; without it, Ray's default: a cluster started on this machine, else a new
    instance of every CPU); with an address, the most measure tasks at a time.
    ``embed_actors`` / ``gpus_per_actor``: the embedding pool [default: one actor per GPU of
    the cluster with one GPU each; without GPUs one actor per 4 CPUs].
    ``measure``: the function the workers run on a list of paths (:func:`measure_records`).
    """

    address: str | None = None
    workers: int | None = None
    files_per_task: int = 64
    max_retries: int = 3
    embed_actors: int | None = None
    gpus_per_actor: float | None = None
    measure: Callable[[list[str], ExtractOptions], list[Record]] = measure_records
    _started: bool = field(default=False, init=False, repr=False)

    # -- the cluster ---------------------------------------------------------------------
    def connect(self) -> RayEngine:
        """Join the cluster (or start a local instance); a process already connected stays so."""
        ray = require_ray()
        if ray.is_initialized():
            return self
        address = self.address or os.environ.get("RAY_ADDRESS") or None
        kwargs: dict[str, Any] = dict(include_dashboard=False, log_to_driver=False, logging_level=logging.WARNING)
        if address is None and self.workers is not None:
            address, kwargs["num_cpus"] = "local", self.workers  # a new instance of that size
        if address is not None:
            _answers(address)
        try:
            ray.init(address=address, **kwargs)
        except (ConnectionError, ValueError, RuntimeError) as exc:
            raise EngineError(
                f"cannot start or join the Ray cluster {address or ''}: {exc}".replace("  ", " ")
            ) from None
        self._started = True
        return self

    def close(self) -> None:
        """Leave the cluster (a local instance this engine started ends with it)."""
        if self._started:
            import ray

            ray.shutdown()
            self._started = False

    def __enter__(self) -> RayEngine:
        return self.connect()

    def __exit__(self, *exc) -> None:
        self.close()

    def cpus(self) -> int:
        """CPUs of the cluster."""
        import ray

        return max(1, int(ray.cluster_resources().get("CPU", 1)))


def _runtime_env() -> dict | None:
    """The driver's :data:`RESULT_ENV` for the workers (None when it sets none of them)."""
    env = {k: os.environ[k] for k in RESULT_ENV if k in os.environ}
    return {"env_vars": env} if env else None


def _answers(address: str) -> None:
    """EngineError at once where nothing listens at a ``host:port`` address (Ray would keep
    trying to connect for minutes); other forms (``auto``, ``local``) are Ray's to resolve."""
    host, _, port = address.split("://", 1)[-1].rpartition(":")
    if not host or not port.isdigit():
        return
    try:
        socket.create_connection((host, int(port)), timeout=5).close()
    except OSError as exc:
        raise EngineError(f"no Ray cluster answers at {address} ({exc.strerror or exc}): start one with "
                          "`ray start --head`, or correct RAY_ADDRESS") from None  # fmt: skip


def _todo_files(paths: list[str], store: Store, version: int) -> tuple[list[str], dict[str, tuple[int, int]]]:
    """The readable files the store has no measurements for (as
    :func:`auditor.measure.batch.measure_all` would decide), and every file's (size, mtime_ns)."""
    stats: dict[str, tuple[int, int]] = {}
    for p in paths:
        try:
            st = os.stat(p)
        except OSError:
            continue  # the local pass reports it
        if readable(p):
            stats[p] = (st.st_size, st.st_mtime_ns)
    known = store.known_hashes((p, *s) for p, s in stats.items())
    done = store.measured(set(known.values()), version)
    return [p for p in stats if known.get(p) not in done], stats


@contextmanager
def _quiet_data(tolerate_failed_blocks: bool) -> Iterator[None]:
    """Ray Data without its progress bars and start-up lines (the CLI draws its own), and, with
    ``tolerate_failed_blocks``, going on past a block whose task failed for good."""
    from ray.data import DataContext

    ctx = DataContext.get_current()
    saved = {k: getattr(ctx, k) for k in ("enable_progress_bars", "print_on_execution_start", "max_errored_blocks")}
    ctx.enable_progress_bars = False
    ctx.print_on_execution_start = False
    if tolerate_failed_blocks:
        ctx.max_errored_blocks = -1
    log = logging.getLogger("ray.data")
    level = log.level
    log.setLevel(logging.CRITICAL if tolerate_failed_blocks else logging.ERROR)
    try:
        yield
    finally:
        for k, v in saved.items():
            setattr(ctx, k, v)
        log.setLevel(level)


@contextmanager
def _named_args_to_come() -> Iterator[None]:
    """Ray 2.60 warns that retry limits passed as remote arguments go in 2.64 but names no
    replacement yet (the ``ray`` extra stops below 2.64): not a line for the user."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="`ray_remote_args` is deprecated")
        yield


def measure_into_store(
    engine: RayEngine, paths: list[str], store: Store, options: ExtractOptions, progress: ProgressFn | None = None
) -> int:
    """Measure on the cluster every file of ``paths`` the store has no measurements for, and
    write them into ``store`` as :func:`auditor.measure.batch.measure_all` would (file index
    rows with this machine's size and mtime, measurement rows with thumbnails). Returns how
    many files the cluster measured; those left (unreadable ones, blocks that failed) are
    :func:`~auditor.measure.batch.measure_all`'s."""
    import ray

    from auditor.measure.batch import store_version

    version = store_version(options)
    todo, stats = _todo_files(paths, store, version)
    if not todo:
        return 0
    if progress:
        progress(len(paths) - len(todo))  # known already (the bar starts now)
    # compiled once here (unless the data set is small), so this machine's workers load them;
    # the reference's rows where they cannot load
    version = store_version(options, load=True)
    cpus = engine.cpus()
    per_task = max(1, min(engine.files_per_task, math.ceil(len(todo) / (2 * cpus))))
    done = 0
    with _quiet_data(tolerate_failed_blocks=True):
        ds = ray.data.from_items([{"path": p} for p in todo], override_num_blocks=math.ceil(len(todo) / per_task))
        # on a cluster joined by address, --workers caps the tasks at a time (a local instance has that many CPUs)
        joined = engine.address or os.environ.get("RAY_ADDRESS")
        with _named_args_to_come():
            ds = ds.map_batches(_measure_block, batch_size=None, batch_format="pyarrow", num_cpus=1,
                                concurrency=engine.workers if joined else None, max_retries=engine.max_retries,
                                runtime_env=_runtime_env(),
                                fn_kwargs={"options": options, "measure": engine.measure})  # fmt: skip
        try:
            for block in ds.iter_batches(batch_size=None, batch_format="pyarrow"):
                done += _write_measured(block, stats, store, version)
                if progress:
                    progress(block.num_rows)
        except Exception as exc:  # the cluster failed: the driver measures what is left
            _warn(f"Ray stopped measuring ({type(exc).__name__}: {exc})")
    if done < len(todo):
        _warn(f"{len(todo) - done} of {len(todo)} files were not measured on the Ray cluster; the driver measures "
              "them")  # fmt: skip
    return done


def _write_measured(block, stats: dict[str, tuple[int, int]], store: Store, version: int) -> int:
    files, rows = [], []
    for path, chash, props, thumb in zip(*(block.column(c).to_pylist() for c in
                                           ("path", "content_hash", "props", "thumbnail")), strict=True):  # fmt: skip
        if chash is not None and path in stats:  # an unreadable file is never cached (as measure_all)
            files.append((path, *stats[path], chash))
            rows.append((chash, json.loads(props), thumb))
    store.put_batch(files, rows, version)
    return len(files)


def embed_into_store(
    engine: RayEngine,
    files: dict[str, str],
    backbone: Backbone,
    store: Store,
    *,
    batch_size: int = 32,
    cache_dir: str | None = None,
    progress: ProgressFn | None = None,
) -> EmbedRun:
    """Embed on the cluster every ``{content hash: path}`` the store has no vector for (this
    backbone) and write the vectors into ``store``; returns how many and the files that could
    not be embedded (decoding failed on the worker). Hashes left out of both (a block that
    failed) are :func:`~auditor.embed.features.embed_files`'s on the driver."""
    import ray

    key = backbone.cache_key
    have = store.embedded(files, key)
    todo = sorted(h for h in files if h not in have)
    run = EmbedRun()
    if not todo:
        return run
    if progress:
        progress(len(files) - len(todo))
    gpus = float(ray.cluster_resources().get("GPU", 0))
    gpus_per_actor = engine.gpus_per_actor if engine.gpus_per_actor is not None else (1.0 if gpus >= 1 else 0.0)
    cpus = engine.cpus()
    cpus_per_actor = 1 if gpus_per_actor else min(4, cpus)
    actors = engine.embed_actors or (int(gpus // gpus_per_actor) if gpus_per_actor else max(1, cpus // cpus_per_actor))
    per_call = batch_size * 8
    with _quiet_data(tolerate_failed_blocks=True):
        ds = ray.data.from_items([{"content_hash": h, "path": files[h]} for h in todo],
                                 override_num_blocks=max(1, math.ceil(len(todo) / per_call)))  # fmt: skip
        with _named_args_to_come():
            ds = ds.map_batches(EmbedActor, batch_size=per_call, batch_format="pyarrow", concurrency=actors,
                                num_cpus=cpus_per_actor, num_gpus=gpus_per_actor or None, runtime_env=_runtime_env(),
                                fn_constructor_kwargs={"backbone": backbone, "batch_size": batch_size,
                                                       "cache_dir": cache_dir},
                                max_restarts=engine.max_retries, max_task_retries=engine.max_retries)  # fmt: skip
        try:
            for block in ds.iter_batches(batch_size=None, batch_format="pyarrow"):
                cols = (block.column(c).to_pylist() for c in ("content_hash", "vector", "extra", "failure"))
                rows = []
                for h, vec, extra, failure in zip(*cols, strict=True):
                    if vec is not None:
                        rows.append((h, vec, extra))
                    else:
                        run.failures[h] = failure or "not embedded"
                store.put_embeddings(rows, key)
                run.computed += len(rows)
                if progress:
                    progress(block.num_rows)
        except Exception as exc:
            _warn(f"Ray stopped embedding ({type(exc).__name__}: {exc})")
    left = len(todo) - run.computed - len(run.failures)
    if left:
        _warn(f"{left} of {len(todo)} images were not embedded on the Ray cluster; the driver embeds them")
    return run


def _warn(message: str) -> None:
    warnings.warn(message, EngineWarning, stacklevel=3)


def open_engine(engine: str | RayEngine, workers: int | None = None) -> RayEngine | None:
    """The engine named (``"local"``: None, the scan's own pool), connected; an
    :class:`EngineError` for an unknown name or a cluster that cannot be reached."""
    if isinstance(engine, RayEngine):
        return engine.connect()
    if engine == "local":
        return None
    if engine == "ray":
        return RayEngine(workers=workers).connect()
    raise EngineError(f"unknown engine {engine!r}: choose one of {', '.join(ENGINES)}")

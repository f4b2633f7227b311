"""The Python API pipelines import: :func:`scan` (and, as they land, gate/clean/finetune).

``scan`` runs discover -> measure (one decode per image, cached) -> embed (frozen
backbone, cached) -> checks -> rules -> outputs, and returns a :class:`ScanResult`. It
never prints; the CLI does.
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from auditor.checks.catalog import load_all
from auditor.core.context import CheckContext
from auditor.core.findings import Finding
from auditor.core.fsutil import check_cache_dir, check_output, output_folder
from auditor.core.types import ProgressFn, ScanResult
from auditor.embed.backbones import Backbone, get_backbone
from auditor.io.dataset import Discovery, discover, release_unused_memory
from auditor.io.store import Store
from auditor.measure.batch import ExtractOptions, measure_chunks
from auditor.pipeline.columns import MeasuredColumns
from auditor.policy.rules import Rules, apply_severities, load_rules
from auditor.report.build import build_report


def present_paths(disc: Discovery) -> list[str]:
    """Absolute paths of the discovered items whose file exists (manifest rows may not)."""
    return disc.items["abs_path"][~disc.missing_mask()].tolist()


#: Numeric per-image measurements the checks read (NaN where an image did not decode).
MEASURED_COLUMNS = (
    "width", "height", "file_size", "bit_depth", "n_frames", "jpeg_quality", "transparent_fraction",
    "brightness_mean", "brightness_p05", "brightness_p95", "contrast", "entropy", "sharpness", "fine_sharpness",
    "laplacian_var", "detail_ratio", "noise_sigma", "channel_spread", "colorfulness",
)  # fmt: skip


#: Per-image 64-bit perceptual hashes (unsigned Python ints; None where an image did not decode).
HASH_COLUMNS = ("phash", "dhash", "phash_mirror")


#: Files measured at a time by a scan: their results are dicts of properties (about 4 kB each)
#: until they are added to the table by column.
MEASURE_CHUNK = 20_000


#: What a row whose file does not exist (a manifest row) says, in place of measurements.
MISSING_FILE = {"error_kind": "missing", "error": "no such file"}


def build_table(disc: Discovery, measured: dict[str, tuple[str | None, dict]]) -> pd.DataFrame:
    """Join the items table with the measurements: one row per item, ``ok`` = decoded.

    Built by columns: the measured rows (and one row standing for every missing file, which
    all read the same) make a small frame, so its columns, their order and their dtypes are
    what one dict per item would give, and each item row takes its row of that frame. A
    manifest of a million missing files costs a few vectorised takes, not a million dicts.
    """
    builder = TableBuilder(disc)
    builder.add([measured[p] for p in builder.present_paths])
    return builder.table()


class TableBuilder:
    """:func:`build_table` fed a chunk of measurements at a time (``add``, in the order of
    ``present_paths``), each chunk kept by column (:class:`auditor.pipeline.columns.MeasuredColumns`):
    a scan of a million files never holds a million dicts of properties."""

    def __init__(self, disc: Discovery):
        self.items = disc.items.reset_index(drop=True)
        self.missing = disc.missing_mask()
        self.present = np.flatnonzero(~self.missing)
        self.present_paths: list[str] = self.items["abs_path"].iloc[self.present].tolist()
        # the stand-in goes where the first missing row is, so columns appear in row order
        self.at = int(np.argmax(self.missing)) if len(self.present) < len(self.items) else -1
        self.added = 0
        self.stand_in = self.at < 0  # whether the stand-in row is in (or none is needed)
        self.columns = MeasuredColumns()
        # 64-bit hashes stay Python ints (object column): with a missing value (an unreadable
        # file) pandas would make the column float64, which keeps only 53 of their 64 bits
        self.exact: dict[str, list[np.ndarray]] = {c: [] for c in HASH_COLUMNS}

    def add(self, measured: list[tuple[str | None, dict]]) -> None:
        """The measurements of the next ``len(measured)`` present paths."""
        rows = [{"content_hash": chash, **props} for chash, props in measured]
        if not self.stand_in and self.at <= self.added + len(rows):  # rows before it are all present: it is their count
            rows.insert(self.at - self.added, {"content_hash": None, **MISSING_FILE})
            self.stand_in = True
        self.added += len(measured)
        for c in HASH_COLUMNS:
            self.exact[c].append(_objects([r.pop(c, None) for r in rows]))
        self.columns.add(rows)

    def table(self) -> pd.DataFrame:
        items, missing, present = self.items, self.missing, self.present
        if self.added != len(present):
            raise ValueError(f"{self.added} measurements for {len(present)} present files")
        if not self.stand_in:  # every file is missing: the stand-in alone
            self.add([])
        take = np.empty(len(items), np.intp)
        take[present] = np.arange(len(present))
        if self.at >= 0:
            take[present[self.at :]] += 1
            take[missing] = self.at
        exact = {c: np.concatenate(v) if v else _objects([]) for c, v in self.exact.items()}
        self.exact = {}
        small = self.columns.frame()
        if not len(items):
            measured_cols = small.iloc[:0]
        elif self.at < 0:  # every row measured, in order: the frame as it is
            measured_cols = small
        else:
            measured_cols = small.take(take).reset_index(drop=True)
        del small
        table = pd.concat([items, measured_cols], axis=1) if len(measured_cols.columns) else items.copy()
        for col, values in exact.items():
            table[col] = pd.Series(values if self.at < 0 else values[take], index=table.index, dtype=object)
        for col in ("error_kind", "error", "format", "pixel_hash", "mode"):
            if col not in table:
                table[col] = None
        for col in MEASURED_COLUMNS:  # a dataset where nothing decodes still has every column
            if col not in table:
                table[col] = np.nan
        table["ok"] = table["error_kind"].isna()
        return table


def _objects(values: list) -> np.ndarray:
    """``values`` as a 1-D object array, each element as it is."""
    out = np.empty(len(values), dtype=object)
    out[:] = values
    return out


def check_context(
    table: pd.DataFrame,
    rules: Rules,
    embeddings: Any = None,
    reference: pd.DataFrame | None = None,
    annotations: Any = None,
    store: Store | None = None,
) -> CheckContext:
    """What the checks read: the dataset table, the embeddings, the source table (if any),
    the box annotations of a detection dataset (if any), and the store's thumbnails (the
    copy checks verify their candidates on them)."""
    shift_params = {n: rules.checks[n].params for n in ("domain_shift", "split_shift", "property_shift")}
    thumbnails = None
    if store is not None:
        from auditor.measure.pixels import THUMBNAIL_VERSIONS

        def thumbnails(hashes):
            if not store.closed:
                return dict(store.thumbnails(hashes, THUMBNAIL_VERSIONS))
            if store.path == ":memory:":  # a ScanResult's context after an uncached scan
                return {}
            with Store(store.path) as again:  # ... or after the scan closed the cache
                return dict(again.thumbnails(hashes, THUMBNAIL_VERSIONS))

    return CheckContext(table=table, settings=rules.settings, embeddings=embeddings, reference=reference,
                        shift_params=shift_params, annotations=annotations, thumbnails=thumbnails)  # fmt: skip


def run_checks(
    table: pd.DataFrame | CheckContext, rules: Rules, only: list[str] | None = None, embeddings: Any = None
) -> list[Finding]:
    """Run every enabled check (or those named in ``only``) and assign severities."""
    registry = load_all()
    ctx = table if isinstance(table, CheckContext) else check_context(table, rules, embeddings)
    findings: list[Finding] = []
    for name, spec in registry.items():
        rule = rules.checks[name]
        if not rule.enabled or (only is not None and name not in only):
            continue
        findings.extend(spec.fn(ctx, rule.params))
    return apply_severities(findings, rules)


def embed_table(
    table: pd.DataFrame,
    backbone: Backbone,
    store: Store,
    *,
    batch_size: int = 32,
    workers: int | None = None,
    cache_dir: str | os.PathLike | None = None,
    progress: ProgressFn | None = None,
    engine: Any = None,
):
    """Embed every decodable row (``ok``, with a ``content_hash``) of an items table, each
    distinct content once; ``workers`` decoding threads. With a Ray ``engine``
    (:class:`auditor.pipeline.ray_engine.RayEngine`) the vectors are computed on the cluster
    into the store first (what it could not decode is a failure, as here)."""
    from auditor.embed.features import embed_files

    ok = table[table["ok"] & table["content_hash"].notna()]
    files: dict[str, str] = {}
    for chash, path in zip(ok["content_hash"], ok["abs_path"], strict=True):
        files.setdefault(chash, path)
    cache = str(cache_dir) if cache_dir else None
    ran = None
    if engine is not None:
        from auditor.pipeline.ray_engine import embed_into_store

        ran = embed_into_store(engine, files, backbone, store, batch_size=batch_size, cache_dir=cache,
                               progress=_stage(progress, "embed on ray", len(files)))  # fmt: skip
        files = {h: p for h, p in files.items() if h not in ran.failures}
    if progress:
        progress("embed", 0, len(files))
    result = embed_files(files, backbone, store, batch_size=batch_size, workers=workers, cache_dir=cache,
                         progress=_stage(progress, "embed", len(files)))  # fmt: skip
    if ran is not None:  # counted as the local run counts: computed in this scan, failed
        result.failures.update(ran.failures)
        result.computed += ran.computed
        result.cached -= ran.computed
    return result


def _stage(progress: ProgressFn | None, stage: str, total: int):
    """``progress(stage, n, total)`` as a function of ``n`` (None without ``progress``)."""
    return (lambda n: progress(stage, n, total)) if progress else None


def scan(
    dataset: str | os.PathLike,
    out: str | os.PathLike | None = None,
    *,
    layout: str = "auto",
    manifest: str | os.PathLike | None = None,
    coco: str | os.PathLike | None = None,
    images: str | os.PathLike | None = None,
    source: str | os.PathLike | None = None,
    source_layout: str = "auto",
    source_manifest: str | os.PathLike | None = None,
    projection: bool = True,
    rules: str | os.PathLike | Rules | None = None,
    workers: int | None = None,
    embed: bool = True,
    backbone: str | Backbone | None = None,
    weights: str | None = None,
    layer: str | None = None,
    preprocess: str = "raw",
    batch_size: int = 32,
    cache_dir: str | os.PathLike | None = None,
    use_cache: bool = True,
    follow_symlinks: bool = False,
    max_pixels: int | None = None,
    write: bool = True,
    progress: ProgressFn | None = None,
    engine: Any = "local",
) -> ScanResult:
    """Audit an image dataset.

    Raises :class:`auditor.io.dataset.DatasetError`, :class:`auditor.policy.rules.RulesError` or
    :class:`auditor.embed.backbones.BackboneError` for input errors, and
    :class:`auditor.core.fsutil.OutputError` (before any work) for an ``out`` inside the dataset,
    naming a file, or in a folder that cannot be written. Writes ``report.json``,
    ``images.parquet`` and ``report.html`` into ``out`` (default ``reports/<dataset-name>/``;
    refused where that lies inside the dataset) unless ``write=False``. ``embed=False`` skips
    the backbone (no TensorFlow import) and the checks that need it;
    ``backbone``/``weights``/``layer``/``preprocess`` choose it (see
    :func:`auditor.embed.backbones.get_backbone`; default EfficientNet-Lite0).

    ``source``: a source-like reference set (a folder in any supported layout, see
    ``source_layout`` / ``source_manifest``; or a CSV manifest, whose folder is the root) the
    dataset is compared with (``domain_shift``); without it the dataset's splits are compared
    with ``train`` (``split_shift``). ``projection``: compute
    the 2-D UMAP projection of the compared sets for the report (needs embeddings).

    Detection datasets (COCO ``instances_*.json`` or YOLO ``images/`` + ``labels/``, found
    automatically; ``coco=FILE`` and ``images=DIR`` name them) also get the ``box_*``
    checks and a ``boxes`` report section.

    ``engine``: ``"local"`` (this machine's worker processes), ``"ray"`` (the per-image work on
    a Ray cluster: ``$RAY_ADDRESS``, a cluster started on this machine, or a local instance of
    ``workers`` CPUs), or a :class:`auditor.pipeline.ray_engine.RayEngine`; the same outputs
    either way. :class:`auditor.pipeline.ray_engine.EngineError` where Ray cannot run.
    """
    out_dir = output_folder(dataset, out, source, images) if write or out is not None else None
    check_cache_dir(cache_dir, dataset, source, images)  # the user's dataset is never written
    rules_obj = rules if isinstance(rules, Rules) else load_rules(rules)
    bb = None
    if embed:
        bb = backbone if isinstance(backbone, Backbone) else get_backbone(backbone, weights, layer, preprocess)
    disc = discover(dataset, layout=layout, manifest=manifest, follow_symlinks=follow_symlinks, coco=coco,
                    images=images)  # fmt: skip
    release_unused_memory()
    src_disc = None
    if source is not None:
        if source_manifest is None and Path(source).suffix.lower() == ".csv" and Path(source).is_file():
            source, source_manifest = Path(source).parent, Path(source)  # a manifest names its folder
        src_disc = discover(source, layout=source_layout, manifest=source_manifest, follow_symlinks=follow_symlinks)
    options = ExtractOptions(max_pixels=max_pixels) if max_pixels else ExtractOptions()
    runner = None
    if engine != "local":
        from auditor.pipeline.ray_engine import open_engine

        runner = open_engine(engine, workers)
    store = Store.open_default(cache_dir) if use_cache else Store(None)
    try:
        table = _measure_table(disc, store, workers, options, progress, "measure", runner)
        src_table = None
        if src_disc is not None:
            src_table = _measure_table(src_disc, store, workers, options, progress, "measure source", runner)
        embeddings = None
        if bb is not None:
            both = table if src_table is None else pd.concat([table, src_table], ignore_index=True)
            embeddings = embed_table(both, bb, store, batch_size=batch_size, cache_dir=cache_dir, progress=progress,
                                     engine=runner)  # fmt: skip
            for t in (table, src_table):
                if t is not None:
                    t["embedded"] = t["content_hash"].isin(set(embeddings.hashes))
        ctx = check_context(table, rules_obj, embeddings, src_table, disc.annotations, store)
        findings = run_checks(ctx, rules_obj)
        report = build_report(disc, table, findings, rules_obj, embeddings, ctx, src_disc)
        result = ScanResult(report, table, findings, disc, rules_obj, embeddings=embeddings, source_table=src_table,
                            context=ctx)  # fmt: skip
        if projection and embeddings is not None:
            from auditor.analysis.projection import project_pairs

            result.projection = project_pairs(ctx, store=store if use_cache else None)
            if result.projection is not None:
                report["projection"] = {"file": "projection.parquet", "method": result.projection.attrs["method"],
                                        "points": len(result.projection)}  # fmt: skip
        if write:
            from auditor.report import write_outputs

            result.out_dir = out_dir
            result.files = write_outputs(result, store)
    finally:
        store.close()
        if runner is not None:
            runner.close()
    return result


def _measure_table(disc: Discovery, store: Store, workers, options, progress: ProgressFn | None, stage: str,
                   engine: Any = None):  # fmt: skip
    from auditor.measure.batch import options_for_files

    present = present_paths(disc)
    # a small data set is measured with the numpy reference (on a cluster too: the same bytes)
    options = options_for_files(options, present)
    if engine is not None:  # the cluster measures into the store; measure_chunks then reads it as a rescan would
        from auditor.pipeline.ray_engine import measure_into_store

        if options.cache_dir is None:
            options = dataclasses.replace(options, cache_dir=str(store.folder))  # as measure_chunks'
        measure_into_store(engine, present, store, options, _stage(progress, f"{stage} on ray", len(present)))
    if progress:
        progress(stage, 0, len(present))
    del present
    builder = TableBuilder(disc)
    paths = builder.present_paths
    # a chunk's dicts of properties at a time, through one pool of workers started before the table grows
    chunks = measure_chunks(paths, store, MEASURE_CHUNK, workers=workers, options=options,
                            progress=(lambda n: progress(stage, n, len(paths))) if progress else None)  # fmt: skip
    with contextlib.closing(chunks):
        for chunk, measured in chunks:
            builder.add([measured[p] for p in chunk])
            del measured
    table = builder.table()
    release_unused_memory()
    return table


@dataclass
class EmbedResult:
    """What :func:`embed` wrote: ``paths`` embedded (relative), ``skipped`` unreadable images."""

    embeddings: Any
    paths: list[str]
    skipped: int
    out: Path | None


def embed(
    dataset: str | os.PathLike,
    out: str | os.PathLike | None = None,
    *,
    backbone: str | Backbone | None = None,
    weights: str | None = None,
    layer: str | None = None,
    preprocess: str = "raw",
    batch_size: int = 32,
    workers: int | None = None,
    layout: str = "auto",
    manifest: str | os.PathLike | None = None,
    cache_dir: str | os.PathLike | None = None,
    use_cache: bool = True,
    follow_symlinks: bool = False,
    progress: ProgressFn | None = None,
) -> EmbedResult:
    """Embed every decodable image of a dataset (through the cache) and, with ``out``,
    write them to a ``.npz`` or ``.parquet`` file (see :func:`auditor.embed.features.save_embeddings`).
    Files are hashed, not measured (the quality properties are the scan's job); unreadable
    or undecodable images are skipped and counted."""
    from auditor.embed.features import save_embeddings
    from auditor.measure.batch import hash_all

    if out is not None:
        check_output(out, dataset, folder=False)  # before the backbone loads
    bb = backbone if isinstance(backbone, Backbone) else get_backbone(backbone, weights, layer, preprocess)
    disc = discover(dataset, layout=layout, manifest=manifest, follow_symlinks=follow_symlinks)
    present = present_paths(disc)
    store = Store.open_default(cache_dir) if use_cache else Store(None)
    try:
        hashes = hash_all(present, store)
        table = disc.items.copy()
        table["content_hash"] = [hashes.get(p) for p in table["abs_path"]]
        table["ok"] = table["content_hash"].notna()
        embeddings = embed_table(table, bb, store, batch_size=batch_size, workers=workers, cache_dir=cache_dir,
                                 progress=progress)  # fmt: skip
    finally:
        store.close()
    have = table["content_hash"].isin(set(embeddings.hashes))
    if out is not None:
        save_embeddings(out, table, embeddings)
    return EmbedResult(embeddings, list(table.loc[have, "path"]), int((~have).sum()), Path(out) if out else None)

"""The Python API pipelines import: :func:`scan` (and, as they land, gate/clean/finetune).

``scan`` runs discover -> measure (one decode per image, cached) -> embed (frozen
backbone, cached) -> checks -> rules -> outputs, and returns a :class:`ScanResult`. It
never prints; the CLI does.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd

from . import __version__
from .backbones import Backbone, get_backbone
from .checks import CheckContext, Finding, load_all
from .dataset import Discovery, discover
from .extract import ExtractOptions, measure_all
from .rules import Rules, apply_severities, judge, load_rules
from .store import Store

ProgressFn = Callable[[str, int, int], None]  # (stage, advance, total)


@dataclass
class ScanResult:
    """What a scan found. ``report`` is the ``report.json`` document; ``table`` the per-image
    table (one row per item); ``out_dir`` where the files were written (None if not)."""

    report: dict
    table: pd.DataFrame
    findings: list[Finding]
    discovery: Discovery
    rules: Rules
    out_dir: Path | None = None
    files: dict[str, Path] = field(default_factory=dict)
    embeddings: Any = None  # auditor.embed.Embeddings when the scan embedded

    @property
    def passed(self) -> bool:
        return bool(self.report["gate"]["passed"])


def default_out_dir(dataset: str | os.PathLike) -> Path:
    """``reports/<dataset-name>/`` under the current directory."""
    name = Path(dataset).resolve().name or "dataset"
    return Path("reports") / name


def present_paths(disc: Discovery) -> list[str]:
    """Absolute paths of the discovered items whose file exists (manifest rows may not)."""
    missing = set(disc.missing)
    return [p for p, rel in zip(disc.items["abs_path"], disc.items["path"], strict=True) if rel not in missing]


def build_table(disc: Discovery, measured: dict[str, tuple[str | None, dict]]) -> pd.DataFrame:
    """Join the items table with the measurements: one row per item, ``ok`` = decoded."""
    rows = []
    missing = set(disc.missing)
    for item in disc.items.to_dict("records"):
        if item["path"] in missing:
            props: dict = {"error_kind": "missing", "error": "no such file"}
            chash = None
        else:
            chash, props = measured[item["abs_path"]]
        rows.append({**item, "content_hash": chash, **props})
    table = pd.DataFrame(rows)
    for col in ("error_kind", "error", "format", "pixel_hash", "phash", "dhash", "width", "height"):
        if col not in table:
            table[col] = None
    table["ok"] = table["error_kind"].isna()
    return table


def run_checks(
    table: pd.DataFrame, rules: Rules, only: list[str] | None = None, embeddings: Any = None
) -> list[Finding]:
    """Run every enabled check (or those named in ``only``) and assign severities."""
    registry = load_all()
    ctx = CheckContext(table=table, settings=rules.settings, embeddings=embeddings)
    findings: list[Finding] = []
    for name, spec in registry.items():
        rule = rules.checks[name]
        if not rule.enabled or (only is not None and name not in only):
            continue
        findings.extend(spec.fn(ctx, rule.params))
    return apply_severities(findings, rules)


def dataset_summary(disc: Discovery, table: pd.DataFrame) -> dict:
    labels = sorted({x for x in table["label"] if isinstance(x, str)})
    splits = {str(k): int(v) for k, v in table["split"].dropna().value_counts().sort_index().items()}
    return {
        "root": str(disc.root.resolve()),
        "images": int(len(table)),
        "unreadable": int((~table["ok"]).sum()),
        "classes": labels,
        "splits": splits,
        "layout": disc.layout,
        "skipped": dict(sorted(disc.skipped.items())),
    }


def backbone_summary(embeddings: Any) -> dict | None:
    """The report's ``backbone`` section: what embedded the images (no run-dependent counts,
    so a cached rescan writes the same report)."""
    if embeddings is None:
        return None
    return {**embeddings.backbone, "embedded": len(embeddings.hashes), "failed": len(embeddings.failures)}


def build_report(
    disc: Discovery, table: pd.DataFrame, findings: list[Finding], rules: Rules, embeddings: Any = None
) -> dict:
    registry = load_all()
    counts: dict[str, int] = {}
    for f in findings:
        counts[f.check] = counts.get(f.check, 0) + 1
    return {
        "schema": "auditor.report/1",
        "tool": {"name": "image-auditor", "version": __version__},
        "dataset": dataset_summary(disc, table),
        "backbone": backbone_summary(embeddings),
        "rules": {"source": rules.source},
        "checks": {
            name: {
                "enabled": rules.checks[name].enabled,
                "severity": rules.checks[name].severity,
                "findings": counts.get(name, 0),
            }
            for name in registry
        },  # fmt: skip
        "findings": [f.to_dict() for f in findings],
        "shift": [],
        "gate": judge(findings, rules, int(len(table))),
    }


def embed_table(
    table: pd.DataFrame,
    backbone: Backbone,
    store: Store,
    *,
    batch_size: int = 32,
    workers: int | None = None,
    cache_dir: str | os.PathLike | None = None,
    progress: ProgressFn | None = None,
):
    """Embed every decodable row (``ok``, with a ``content_hash``) of an items table, each
    distinct content once; ``workers`` decoding threads."""
    from .embed import embed_files

    ok = table[table["ok"] & table["content_hash"].notna()]
    files: dict[str, str] = {}
    for chash, path in zip(ok["content_hash"], ok["abs_path"], strict=True):
        files.setdefault(chash, path)
    if progress:
        progress("embed", 0, len(files))
    return embed_files(
        files, backbone, store, batch_size=batch_size, workers=workers,
        cache_dir=str(cache_dir) if cache_dir else None,
        progress=(lambda n: progress("embed", n, len(files))) if progress else None,
    )  # fmt: skip


def scan(
    dataset: str | os.PathLike,
    out: str | os.PathLike | None = None,
    *,
    layout: str = "auto",
    manifest: str | os.PathLike | None = None,
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
) -> ScanResult:
    """Audit an image dataset.

    Raises :class:`auditor.dataset.DatasetError`, :class:`auditor.rules.RulesError` or
    :class:`auditor.backbones.BackboneError` for input errors. Writes ``report.json``,
    ``images.parquet`` and ``report.html`` into ``out`` (default ``reports/<dataset-name>/``)
    unless ``write=False``. ``embed=False`` skips the backbone (no TensorFlow import) and the
    checks that need it; ``backbone``/``weights``/``layer``/``preprocess`` choose it (see
    :func:`auditor.backbones.get_backbone`; default EfficientNet-Lite0).
    """
    rules_obj = rules if isinstance(rules, Rules) else load_rules(rules)
    bb = None
    if embed:
        bb = backbone if isinstance(backbone, Backbone) else get_backbone(backbone, weights, layer, preprocess)
    disc = discover(dataset, layout=layout, manifest=manifest, follow_symlinks=follow_symlinks)
    present = present_paths(disc)
    options = ExtractOptions(max_pixels=max_pixels) if max_pixels else ExtractOptions()
    store = Store.open_default(cache_dir) if use_cache else Store(None)
    try:
        if progress:
            progress("measure", 0, len(present))
        measured = measure_all(
            present, store, workers=workers, options=options,
            progress=(lambda n: progress("measure", n, len(present))) if progress else None,
        )  # fmt: skip
        table = build_table(disc, measured)
        embeddings = None
        if bb is not None:
            embeddings = embed_table(table, bb, store, batch_size=batch_size, cache_dir=cache_dir, progress=progress)
            table["embedded"] = table["content_hash"].isin(set(embeddings.hashes))
        findings = run_checks(table, rules_obj, embeddings=embeddings)
        report = build_report(disc, table, findings, rules_obj, embeddings)
        result = ScanResult(report, table, findings, disc, rules_obj, embeddings=embeddings)
        if write:
            from .report import write_outputs

            result.out_dir = Path(out) if out is not None else default_out_dir(dataset)
            result.files = write_outputs(result, store)
    finally:
        store.close()
    return result


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
    write them to a ``.npz`` or ``.parquet`` file (see :func:`auditor.embed.save_embeddings`).
    Files are hashed, not measured (the quality properties are the scan's job); unreadable
    or undecodable images are skipped and counted."""
    from .embed import save_embeddings
    from .extract import hash_all

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

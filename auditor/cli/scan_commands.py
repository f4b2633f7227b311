"""``audit scan``, ``report``, ``gate`` and ``embed``: read a dataset (or a scan's report) and write
what was found, without training. Registered on the ``audit`` app by :mod:`auditor.cli.app`.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Annotated

import typer

from auditor.cli.feedback import engine_ready, fail, input_errors, progress
from auditor.cli.options import (
    BackboneOpt,
    BatchOpt,
    CacheDirOpt,
    CocoOpt,
    EngineOpt,
    FollowSymlinksOpt,
    ImagesOpt,
    LayerOpt,
    LayoutOpt,
    ManifestOpt,
    MaxPixelsOpt,
    NoCacheOpt,
    NoEmbedOpt,
    NoProjectionOpt,
    PreprocessOpt,
    RulesOpt,
    SourceLayoutOpt,
    SourceManifestOpt,
    SourceOpt,
    WeightsOpt,
    WorkersOpt,
    scan_options,
)
from auditor.cli.render import out_console, print_gate, print_summary, term
from auditor.core.fsutil import check_cache_dir, check_output


def scan(
    dataset: Annotated[Path, typer.Argument(help="Dataset folder.")],
    out: Annotated[
        Path | None, typer.Option("--out", "-o", help="Output folder [default: reports/<dataset-name>].")
    ] = None,
    no_embed: NoEmbedOpt = False,
    backbone: BackboneOpt = None,
    weights: WeightsOpt = None,
    layer: LayerOpt = None,
    preprocess: PreprocessOpt = "raw",
    batch_size: BatchOpt = 32,
    workers: WorkersOpt = None,
    engine: EngineOpt = "local",
    layout: LayoutOpt = "auto",
    manifest: ManifestOpt = None,
    coco: CocoOpt = None,
    images: ImagesOpt = None,
    source: SourceOpt = None,
    source_layout: SourceLayoutOpt = "auto",
    source_manifest: SourceManifestOpt = None,
    no_projection: NoProjectionOpt = False,
    rules: RulesOpt = None,
    cache_dir: CacheDirOpt = None,
    no_cache: NoCacheOpt = False,
    follow_symlinks: FollowSymlinksOpt = False,
    max_pixels: MaxPixelsOpt = None,
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="Print only the report path.")] = False,
) -> None:
    """Scan DATASET and write report.json, images.parquet and report.html.

    With --source, the dataset is compared with a source-like set (domain_shift); without,
    its splits are compared with train (split_shift)."""
    options = scan_options(locals())
    from auditor.pipeline.scan import scan as run_scan

    bar, update = progress()
    with input_errors(), bar:
        engine_ready(engine)
        result = run_scan(dataset, out, rules=rules, workers=workers, engine=engine, cache_dir=cache_dir,
                          use_cache=not no_cache, progress=update, **options)  # fmt: skip
    if not quiet:
        print_summary(result)
    out_console.print(f"Report: {term(str(result.files['html']))}", highlight=False, soft_wrap=True)


def report(
    report_json: Annotated[Path, typer.Argument(help="A scan's report.json (images.parquet beside it).")],
    out: Annotated[
        Path | None, typer.Option("--out", "-o", help="Folder for report.html [default: the report's folder].")
    ] = None,
    cache_dir: CacheDirOpt = None,
) -> None:
    """Draw report.html again from a scan's report.json and images.parquet (and
    projection.parquet): the same bytes as the scan's own page while the cache still holds
    the thumbnails (without them, the same page with fewer pictures)."""
    from auditor.io.store import Store
    from auditor.report import render_again

    with input_errors():
        folder = check_output(out, folder=True) if out is not None else report_json.parent
        store = Store.open_default(cache_dir)
        try:
            written = render_again(report_json, folder, store)
        except ValueError as exc:  # a parquet file that is not one
            fail(f"{report_json.parent}: cannot read the scan's files ({exc})")
        finally:
            store.close()
    out_console.print(f"Report: {term(str(written))}", highlight=False, soft_wrap=True)


def gate(
    dataset: Annotated[Path | None, typer.Argument(help="Dataset folder (omit with --from-report).")] = None,
    from_report: Annotated[
        Path | None, typer.Option("--from-report", help="Judge this report.json instead of scanning.")
    ] = None,
    junit: Annotated[Path | None, typer.Option(help="Write a JUnit XML file: one test case per rule.")] = None,
    out: Annotated[
        Path | None, typer.Option("--out", "-o", help="Report folder [default: reports/<dataset-name>].")
    ] = None,
    no_embed: NoEmbedOpt = False,
    backbone: BackboneOpt = None,
    weights: WeightsOpt = None,
    layer: LayerOpt = None,
    preprocess: PreprocessOpt = "raw",
    batch_size: BatchOpt = 32,
    workers: WorkersOpt = None,
    engine: EngineOpt = "local",
    layout: LayoutOpt = "auto",
    manifest: ManifestOpt = None,
    coco: CocoOpt = None,
    images: ImagesOpt = None,
    source: SourceOpt = None,
    source_layout: SourceLayoutOpt = "auto",
    source_manifest: SourceManifestOpt = None,
    no_projection: NoProjectionOpt = False,
    rules: RulesOpt = None,
    cache_dir: CacheDirOpt = None,
    no_cache: NoCacheOpt = False,
    follow_symlinks: FollowSymlinksOpt = False,
    max_pixels: MaxPixelsOpt = None,
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="Print only the verdict.")] = False,
) -> None:
    """Pass or fail DATASET against the rules: exit 0 when every error-level rule passes,
    1 when one fails, 2 on a usage or input error. Failing rules are printed first. With
    GITHUB_ACTIONS set, also prints ::error/::warning annotations."""
    from auditor.core.fsutil import OutputError, atomic_write_bytes
    from auditor.pipeline.gate import gate as run_gate
    from auditor.policy.gate import github_annotations, junit_xml

    if (dataset is None) == (from_report is None):
        fail("give a DATASET to scan, or --from-report report.json (not both)")
    bar, update = progress()
    with input_errors(), bar:
        if junit is not None:
            check_output(junit, dataset, source, images, folder=False, option="--junit")
        check_cache_dir(cache_dir, dataset, source, images)
        if from_report is not None:
            result = run_gate(from_report=from_report, rules=rules)
        else:  # a reused scan was judged under these rules (their files are fingerprinted)
            engine_ready(engine)
            options = scan_options(locals())
            result = run_gate(dataset, rules=rules, out=out, workers=workers, engine=engine, cache_dir=cache_dir,
                              use_cache=not no_cache, progress=update, **options)  # fmt: skip
    if junit is not None:
        try:
            atomic_write_bytes(junit, junit_xml(result).encode("utf-8"))
        except OutputError as exc:
            fail(f"cannot write the JUnit file: {exc}")
    if os.environ.get("GITHUB_ACTIONS") == "true":
        for line in github_annotations(result):
            print(line, flush=True)
    if not quiet:
        print_gate(result)
    verdict = "[bold green]Gate: passed[/]" if result.passed else "[bold red]Gate: failed[/]"
    where = term(f" (report: {result.report_path})") if result.report_path else ""
    out_console.print(verdict + where, highlight=False, soft_wrap=True)
    raise typer.Exit(0 if result.passed else 1)


def embed(
    dataset: Annotated[Path, typer.Argument(help="Dataset folder.")],
    out: Annotated[Path, typer.Option("--out", "-o", help="Output file: .npz or .parquet.")],
    backbone: BackboneOpt = None,
    weights: WeightsOpt = None,
    layer: LayerOpt = None,
    preprocess: PreprocessOpt = "raw",
    batch_size: BatchOpt = 32,
    workers: WorkersOpt = None,
    layout: LayoutOpt = "auto",
    manifest: ManifestOpt = None,
    cache_dir: CacheDirOpt = None,
    no_cache: NoCacheOpt = False,
) -> None:
    """Embed every decodable image of DATASET and write the vectors with their paths."""
    from auditor.pipeline.api import embed as run_embed

    if out.suffix not in (".npz", ".parquet"):
        fail(f"--out must end in .npz or .parquet, not {out.name!r}")
    bar, update = progress()
    with input_errors(), bar:
        check_output(out, dataset, folder=False)  # refused before the backbone loads
        check_cache_dir(cache_dir, dataset)
        result = run_embed(
            dataset, out, backbone=backbone, weights=weights, layer=layer, preprocess=preprocess,
            batch_size=batch_size, workers=workers, layout=layout, manifest=manifest, cache_dir=cache_dir,
            use_cache=not no_cache, progress=update,
        )  # fmt: skip
    emb = result.embeddings
    out_console.print(
        f"{len(result.paths)} images embedded with {term(emb.backbone['id'])} ({emb.backbone['dims']}-d; "
        f"{emb.computed} computed, {emb.cached} from cache; {result.skipped} unreadable skipped)",
        highlight=False,
    )
    out_console.print(f"Embeddings: {term(str(out))}", highlight=False, soft_wrap=True)

"""The ``audit`` command: thin. Parses arguments, calls :mod:`auditor.pipeline.api`, prints with rich.

Exit codes: 0 success (or gate passed), 1 gate failed, 2 usage or input error (one-line
reason on stderr). Everything that comes from the data (file and class names, messages,
paths) is printed through :func:`term`: as text, never as rich markup or terminal control.
"""

from __future__ import annotations

import os
import shutil
import sys
import warnings
from contextlib import contextmanager
from pathlib import Path
from typing import Annotated

import typer

from auditor.cli.options import (
    AugmentOpt,
    BackboneOpt,
    BatchOpt,
    BudgetOpt,
    CacheDirOpt,
    CocoOpt,
    EngineOpt,
    EpochsOpt,
    FollowSymlinksOpt,
    ImageSizeOpt,
    ImagesOpt,
    LayerOpt,
    LayoutOpt,
    LearningRateOpt,
    ManifestOpt,
    MaxPixelsOpt,
    NoCacheOpt,
    NoEmbedOpt,
    NoProjectionOpt,
    PreprocessOpt,
    RulesOpt,
    SeedOpt,
    SourceLayoutOpt,
    SourceManifestOpt,
    SourceOpt,
    TrialsOpt,
    TuneOpt,
    UnfreezeOpt,
    WeightsOpt,
    WorkersOpt,
    scan_options,
)
from auditor.cli.render import err_console, out_console, print_diagnosis, print_gate, print_summary, term
from auditor.core.fsutil import check_cache_dir, check_output

app = typer.Typer(
    name="audit",
    help="Audit an image dataset before fine-tuning a pretrained vision model.",
    no_args_is_help=True,
    add_completion=False,
    rich_markup_mode=None,
)


def _fail(message: str, code: int = 2) -> None:
    """One line on stderr (a multi-line reason, such as a YAML error, is joined) and exit."""
    one_line = " ".join(part.strip() for part in str(message).splitlines() if part.strip())
    err_console.print(f"error: {term(one_line)}", style="red", highlight=False, soft_wrap=True)
    raise typer.Exit(code)


def _progress():
    """A rich progress bar driven by the API's (stage, advance, total) callback."""
    from rich.progress import (
        BarColumn,
        MofNCompleteColumn,
        Progress,
        TextColumn,
        TimeRemainingColumn,
    )

    bar = Progress(
        TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(),
        TextColumn("{task.fields[rate]}"), TimeRemainingColumn(),
        console=err_console, transient=True, disable=not err_console.is_terminal,
    )  # fmt: skip
    tasks: dict[str, int] = {}

    def update(stage: str, advance: int, total: int) -> None:
        if stage not in tasks:
            tasks[stage] = bar.add_task(stage, total=total, rate="")
        task = bar.tasks[tasks[stage]]
        speed = task.speed
        bar.update(tasks[stage], advance=advance, rate=f"{speed:.0f} img/s" if speed else "")

    return bar, update


@app.command()
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

    bar, update = _progress()
    with _input_errors(), bar:
        _engine_ready(engine)
        result = run_scan(dataset, out, rules=rules, workers=workers, engine=engine, cache_dir=cache_dir,
                          use_cache=not no_cache, progress=update, **options)  # fmt: skip
    if not quiet:
        print_summary(result)
    out_console.print(f"Report: {term(str(result.files['html']))}", highlight=False, soft_wrap=True)


def _engine_ready(engine: str) -> None:
    """--engine ray: Ray Data must be importable, or exit 2 saying how to install it, before any work."""
    if engine != "local":
        from auditor.pipeline.ray_engine import require_ray

        require_ray()


def _warn(text: str) -> None:
    """One ``warning:`` line on stderr (terminal control characters escaped); the command goes on."""
    err_console.print(f"warning: {term(text)}", style="yellow", highlight=False, soft_wrap=True)


@contextmanager
def _input_errors():
    """Input errors (a missing or invalid input, an output that cannot be written) -> one
    line on stderr and exit 2; Ctrl-C -> exit 130, cache kept; a cache that cannot be used
    -> one ``warning:`` line, and the command goes on; so does an embedding runtime that fell
    back to Keras."""
    from auditor.core.fsutil import OutputError
    from auditor.embed.backbones import BackboneError
    from auditor.embed.backbones.lite_runtime import EmbedRuntimeWarning
    from auditor.embed.backbones.torch_state import ModelFileError
    from auditor.io.dataset import DatasetError
    from auditor.io.store import CacheWarning
    from auditor.pipeline.ray_engine import EngineError
    from auditor.policy.gate import ReportError
    from auditor.policy.rules import RulesError

    shown: set[str] = set()
    default_show = warnings.showwarning

    def show(message, category, *args, **kwargs) -> None:
        if not issubclass(category, (CacheWarning, EmbedRuntimeWarning)):
            return default_show(message, category, *args, **kwargs)
        if str(message) not in shown:  # each store warns once; several stores, one line
            shown.add(str(message))
            _warn(str(message))

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("always", CacheWarning)
            warnings.simplefilter("always", EmbedRuntimeWarning)
            warnings.showwarning = show
            yield
    except (DatasetError, RulesError, BackboneError, ModelFileError, FileNotFoundError, ReportError,
            OutputError, EngineError) as exc:  # fmt: skip
        _fail(str(exc))
    except KeyboardInterrupt:
        err_console.print("interrupted; the cache keeps what was finished so far", style="yellow")
        raise typer.Exit(130) from None


@app.command()
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

    with _input_errors():
        folder = check_output(out, folder=True) if out is not None else report_json.parent
        store = Store.open_default(cache_dir)
        try:
            written = render_again(report_json, folder, store)
        except ValueError as exc:  # a parquet file that is not one
            _fail(f"{report_json.parent}: cannot read the scan's files ({exc})")
        finally:
            store.close()
    out_console.print(f"Report: {term(str(written))}", highlight=False, soft_wrap=True)


@app.command()
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
        _fail("give a DATASET to scan, or --from-report report.json (not both)")
    bar, update = _progress()
    with _input_errors(), bar:
        if junit is not None:
            check_output(junit, dataset, source, images, folder=False, option="--junit")
        check_cache_dir(cache_dir, dataset, source, images)
        if from_report is not None:
            result = run_gate(from_report=from_report, rules=rules)
        else:  # a reused scan was judged under these rules (their files are fingerprinted)
            _engine_ready(engine)
            options = scan_options(locals())
            result = run_gate(dataset, rules=rules, out=out, workers=workers, engine=engine, cache_dir=cache_dir,
                              use_cache=not no_cache, progress=update, **options)  # fmt: skip
    if junit is not None:
        try:
            atomic_write_bytes(junit, junit_xml(result).encode("utf-8"))
        except OutputError as exc:
            _fail(f"cannot write the JUnit file: {exc}")
    if os.environ.get("GITHUB_ACTIONS") == "true":
        for line in github_annotations(result):
            print(line, flush=True)
    if not quiet:
        print_gate(result)
    verdict = "[bold green]Gate: passed[/]" if result.passed else "[bold red]Gate: failed[/]"
    where = term(f" (report: {result.report_path})") if result.report_path else ""
    out_console.print(verdict + where, highlight=False, soft_wrap=True)
    raise typer.Exit(0 if result.passed else 1)


@app.command()
def clean(
    dataset: Annotated[Path, typer.Argument(help="Dataset folder (read only: never modified).")],
    out: Annotated[
        Path | None, typer.Option("--out", "-o", help="Folder for the cleaned dataset and manifest.csv.")
    ] = None,
    dry_run: Annotated[bool, typer.Option("--dry-run", help="Decide and print; write nothing.")] = False,
    relabel: Annotated[
        bool,
        typer.Option(
            "--relabel", help="Move confident label issues to the suggested label instead of quarantining them."
        ),
    ] = False,
    rules: Annotated[str | None, typer.Option(help="Rules file (its 'clean' section), or a preset.")] = None,
    no_embed: Annotated[
        bool, typer.Option("--no-embed", help="Skip the backbone (no label issues or embedding duplicates).")
    ] = False,
    layout: LayoutOpt = "auto",
    manifest: ManifestOpt = None,
    coco: CocoOpt = None,
    images: ImagesOpt = None,
    workers: WorkersOpt = None,
    cache_dir: CacheDirOpt = None,
) -> None:
    """Decide keep / drop / quarantine / relabel for every image from the scan's findings and
    write CLEAN_DIR/manifest.csv plus the cleaned dataset (split/class layout, hard links
    where possible). Rerunning gives the same result."""
    from rich.table import Table

    from auditor.pipeline.clean import CleanError
    from auditor.pipeline.clean import clean as run_clean

    if out is None and not dry_run:
        _fail("give --out CLEAN_DIR, or --dry-run")
    bar, update = _progress()
    with _input_errors(), bar:
        check_cache_dir(cache_dir, dataset, images)
        try:
            result = run_clean(
                dataset, out, rules=rules, dry_run=dry_run, relabel=relabel, embed=not no_embed, layout=layout,
                manifest=manifest, coco=coco, images=images, workers=workers, cache_dir=cache_dir,
                progress=update,
            )  # fmt: skip
        except CleanError as exc:
            _fail(str(exc))
    m = result.manifest
    table = Table(title="Decisions")
    for col in ("action", "images", "why (first)"):
        table.add_column(col, overflow="fold")
    for action in ("drop", "quarantine", "relabel", "keep"):
        rows = m[m["action"] == action]
        if len(rows):
            why = "; ".join(sorted({r.split(":")[0] for r in rows["reason"] if r})[:6])
            table.add_row(action, str(len(rows)), term(why or "-"))
    out_console.print(table)
    if result.boxes is not None:
        b = result.boxes
        counts = ", ".join(f"{a} {int((b['action'] == a).sum())}" for a in ("keep", "clip", "drop"))
        why = "; ".join(sorted({r.split(":")[0] for r in b.loc[b["action"] != "keep", "reason"] if r})[:6])
        out_console.print(f"Boxes: {counts} ({term(why or 'nothing to fix')}); one row per box in boxes.csv",
                          highlight=False)  # fmt: skip
    if result.out_dir is not None:
        out_console.print(f"Cleaned dataset: {term(str(result.out_dir))} (manifest.csv)", highlight=False,
                          soft_wrap=True)  # fmt: skip
    else:
        out_console.print("Dry run: nothing written.")


@app.command()
def finetune(
    dataset: Annotated[Path, typer.Argument(help="A split/class dataset, e.g. the folder audit clean wrote.")],
    out: Annotated[Path, typer.Option("--out", "-o", help="Model folder: model.keras, history.json, ...")],
    epochs: EpochsOpt = 10,
    unfreeze: UnfreezeOpt = 3,
    learning_rate: LearningRateOpt = 1e-3,
    image_size: ImageSizeOpt = 224,
    batch_size: BatchOpt = 32,
    augment: AugmentOpt = True,
    augmentations: Annotated[
        str, typer.Option(help="Comma-separated: flip, rotation, zoom, translation, contrast, brightness.")
    ] = "flip,rotation,zoom,translation,contrast,brightness",
    seed: SeedOpt = 0,
    backbone: Annotated[
        str, typer.Option(help="efficientnet-lite0 (packaged weights) or a keras.applications name.")
    ] = "efficientnet-lite0",
    weights: Annotated[
        str | None, typer.Option(help="keras.applications weights: a local 'notop' file, imagenet (downloads), none.")
    ] = None,
    cache_dir: CacheDirOpt = None,
    tune: TuneOpt = False,
    trials: TrialsOpt = None,
    budget: BudgetOpt = None,
    report: Annotated[
        Path | None,
        typer.Option(
            help="The scan's report.json (images.parquet beside it): join the validation "
            "errors with its findings and update its diagnosis."
        ),
    ] = None,
    rules: RulesOpt = None,
) -> None:
    """Fine-tune EfficientNet-Lite0 on DATASET: head first with the backbone frozen, then the
    top blocks at a 10x lower learning rate with BatchNorm frozen; early stopping; class
    weights when imbalanced. Writes OUT/model.keras, history.json, evaluation.json and
    predictions.csv, and reads the training curves (overfitting, underfitting). With --tune, a
    seeded KerasTuner search picks learning rate, L2, dropout and unfrozen blocks first (the
    trial table goes into evaluation.json). With --report, the validation errors are joined
    with the scan's findings and the scan's diagnosis is updated (evaluation.json)."""
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn

    from auditor.pipeline.finetune import FinetuneError, FinetuneOptions
    from auditor.pipeline.finetune import finetune as run_finetune

    if not tune and (trials is not None or budget is not None):
        _fail("--trials and --budget set up the search: add --tune")
    opts = FinetuneOptions(
        epochs=epochs, unfreeze=unfreeze, learning_rate=learning_rate, image_size=image_size,
        batch_size=batch_size, seed=seed, backbone=backbone, weights=weights,
        augment=tuple(a.strip() for a in augmentations.split(",") if a.strip()) if augment else (),
        tune=tune, budget_minutes=budget, **({} if trials is None else {"trials": trials}),
    )  # fmt: skip
    bar = Progress(TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(),
                   TextColumn("{task.fields[logs]}"), console=err_console, transient=True,
                   disable=not err_console.is_terminal)  # fmt: skip
    tasks: dict[str, int] = {}

    def update(phase: str, epoch: int, total: int, logs: dict) -> None:
        if phase not in tasks:
            tasks[phase] = bar.add_task(phase, total=total, logs="")
        text = ", ".join(f"{k} {v:.3f}" for k, v in logs.items() if k in ("loss", "val_loss", "val_accuracy"))
        if "best" in logs:  # a search: trials done of total, the best score so far
            text = f"best val_crossentropy {logs['best']:.4f}"
        bar.update(tasks[phase], completed=epoch, logs=text)

    with _input_errors(), bar:
        check_output(out, dataset)  # as scan's --out: refused before the backbone loads
        check_cache_dir(cache_dir, dataset)
        if report is not None:  # refused before any training
            from auditor.policy.gate import ReportError, load_report
            from auditor.policy.rules import RulesError, load_rules

            try:
                load_report(report)
                load_rules(rules)
            except (FileNotFoundError, ReportError, RulesError) as exc:
                _fail(str(exc))
            if not report.with_name("images.parquet").is_file():
                _fail(f"{report.with_name('images.parquet')}: the scan's images.parquet (beside its report.json) "
                      "is needed with --report")  # fmt: skip
        try:
            result = run_finetune(dataset, out, opts, progress=update, cache_dir=cache_dir)
        except FinetuneError as exc:
            _fail(str(exc))
    ev = result.evaluation
    if ev.get("unreadable"):
        bad = ev["unreadable"]
        path, reason = next(iter(bad["examples"].items()))
        _warn(
            f"{bad['count']} file(s) could not be decoded and were left out of training and evaluation "
            f"(evaluation.json 'unreadable'), e.g. {path}: {reason}"
        )
    if "tuning" in ev:
        from auditor.pipeline.tune import describe

        out_console.print(term(describe(ev["tuning"])), highlight=False, soft_wrap=True)
    for phase, rows in result.history.items():
        last = rows[-1]
        out_console.print(f"{phase}: {len(rows)} epochs, val_loss {last['val_loss']:.3f}, "
                          f"val_accuracy {last['val_accuracy']:.3f}", highlight=False)  # fmt: skip
    from auditor.pipeline.run import diagnose_finetune
    from auditor.policy.gate import ReportError
    from auditor.policy.rules import RulesError

    try:
        added = diagnose_finetune(result, dataset, report, rules)
    except (FileNotFoundError, ReportError, RulesError) as exc:
        _fail(str(exc))
    print_diagnosis(added, out_console)
    out_console.print(f"validation accuracy {ev['val_accuracy']:.3f} on {ev['val_images']} images; "
                      f"model: {term(str(result.model_path))}", highlight=False, soft_wrap=True)  # fmt: skip


@app.command("run")
def run_pipeline(
    dataset: Annotated[Path, typer.Argument(help="Dataset folder (read only).")],
    out: Annotated[Path, typer.Option("--out", "-o", help="Run folder: report, clean/, model/.")],
    force: Annotated[bool, typer.Option("--force", help="Clean and fine-tune even when the gate fails.")] = False,
    relabel: Annotated[bool, typer.Option("--relabel", help="Relabel confident label issues.")] = False,
    epochs: EpochsOpt = 10,
    unfreeze: UnfreezeOpt = 3,
    learning_rate: LearningRateOpt = 1e-3,
    image_size: ImageSizeOpt = 224,
    augment: AugmentOpt = True,
    augmentations: Annotated[
        str | None,
        typer.Option(
            help="Comma-separated layers [default: chosen from the audit: flip, rotation, "
            "zoom, translation, plus brightness/contrast when property_shift found them]."
        ),
    ] = None,
    seed: SeedOpt = 0,
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
    tune: TuneOpt = False,
    trials: TrialsOpt = None,
    budget: BudgetOpt = None,
) -> None:
    """scan -> gate -> clean -> finetune, stopping at a failed gate unless --force, with one
    report (OUT/report.html) that shows what was found, what was removed and how training went.
    Exit 0 when it ran to the end, 1 when the gate stopped it, 2 on an input error."""
    from auditor.pipeline.clean import CleanError
    from auditor.pipeline.finetune import AUGMENTATIONS, FinetuneError, FinetuneOptions
    from auditor.pipeline.run import run

    if not tune and (trials is not None or budget is not None):
        _fail("--trials and --budget set up the search: add --tune")
    chosen = tuple(a.strip() for a in augmentations.split(",") if a.strip()) if augmentations else AUGMENTATIONS
    # a named backbone is also the base that is fine-tuned; a .keras model file only embeds for the audit
    base = {} if backbone is None or backbone.endswith(".keras") else {"backbone": backbone, "weights": weights}
    opts = FinetuneOptions(epochs=epochs, unfreeze=unfreeze, learning_rate=learning_rate, image_size=image_size,
                           batch_size=batch_size, seed=seed, augment=chosen if augment else (), tune=tune,
                           budget_minutes=budget, **base, **({} if trials is None else {"trials": trials}))  # fmt: skip
    bar, update = _progress()
    searches: dict[str, int] = {}

    def searched(phase: str, done: int, total: int, logs: dict) -> None:  # --tune: trials done, best score
        if not phase.startswith("search"):
            return
        if phase not in searches:
            searches[phase] = bar.add_task(phase, total=total, rate="")
        best = f"best val_crossentropy {logs['best']:.4f}" if "best" in logs else ""
        bar.update(searches[phase], completed=done, rate=best)

    with _input_errors(), bar:
        check_output(out, dataset, images, source)  # as scan's --out: refused before any work
        check_cache_dir(cache_dir, dataset, images, source)
        _engine_ready(engine)
        try:
            options = scan_options(locals())
            result = run(dataset, out, rules=rules, force=force, relabel=relabel, finetune_options=opts,
                         augment_from_audit=augment and not augmentations, progress=update, workers=workers,
                         engine=engine, finetune_progress=searched,
                         cache_dir=cache_dir, use_cache=not no_cache, **options)  # fmt: skip
        except (FinetuneError, CleanError) as exc:
            _fail(str(exc))
    print_summary(result.scan)
    if result.stopped:
        out_console.print("[bold red]Stopped: the gate failed[/] (use --force to clean and fine-tune anyway)")
    else:
        counts = ", ".join(f"{k} {v}" for k, v in result.clean.counts.items())
        out_console.print(f"clean: {term(counts)}", highlight=False)
        if result.finetune is None:
            out_console.print(f"fine-tune: skipped ({term(result.skipped or '')})", highlight=False)
        else:
            ev = result.finetune.evaluation
            if "tuning" in ev:
                from auditor.pipeline.tune import describe

                out_console.print(term(describe(ev["tuning"])), highlight=False, soft_wrap=True)
            out_console.print(f"fine-tune: validation accuracy {ev['val_accuracy']:.3f} on {ev['val_images']} "
                              "images", highlight=False)  # fmt: skip
    out_console.print(f"Report: {term(str(result.scan.files['html']))}", highlight=False, soft_wrap=True)
    raise typer.Exit(1 if result.stopped else 0)


@app.command()
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
        _fail(f"--out must end in .npz or .parquet, not {out.name!r}")
    bar, update = _progress()
    with _input_errors(), bar:
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


@app.command()
def demo(
    out: Annotated[Path, typer.Option("--out", "-o", help="Where to build the demo dataset and report.")] = Path(
        "reports/demo"
    ),
    workers: Annotated[int | None, typer.Option("--workers", "-j", min=1)] = None,
) -> None:
    """Build a small labeled dataset offline from images shipped in scikit-image and
    scikit-learn, inject one or more defect of every kind, scan it, and print the report path;
    then the same for a small COCO detection dataset with every box defect."""
    from auditor.demo.build import build_demo, make_coco
    from auditor.pipeline.api import scan as run_scan

    data_dir = out / "dataset"
    with _input_errors():
        check_output(out)  # the default, reports/demo, may be in a read-only folder
        injected = build_demo(data_dir)  # a full disk: one line, nothing half-built
    err_console.print(f"demo dataset: {term(str(data_dir))} ({injected['images']} images, "
                      f"{len(injected['defects'])} injected defects)", highlight=False)  # fmt: skip
    bar, update = _progress()
    with _input_errors(), bar:
        result = run_scan(data_dir, out, workers=workers, use_cache=False, progress=update)
    print_summary(result)
    hit = _injected_found(result.report, injected["defects"])
    out_console.print(f"Injected defects found: {hit}/{len(injected['defects'])}")
    out_console.print(f"Report: {term(str(result.files['html']))}", highlight=False, soft_wrap=True)

    # the detection part: a COCO dataset with every box defect (box checks need no embeddings)
    coco_dir = out / "detection" / "dataset"
    with _input_errors():
        if coco_dir.exists():
            try:
                shutil.rmtree(coco_dir)
            except OSError as exc:
                _fail(f"cannot replace the detection demo dataset {coco_dir}: {exc.strerror or exc}")
        boxes = make_coco(coco_dir)
    err_console.print(f"\ndetection demo (COCO): {term(str(coco_dir))} ({len(boxes)} injected box defects)",
                      highlight=False)  # fmt: skip
    bar, update = _progress()
    with _input_errors(), bar:
        det = run_scan(coco_dir, out / "detection", workers=workers, use_cache=False, embed=False, progress=update)
    print_summary(det)
    out_console.print(f"Injected box defects found: {_injected_found(det.report, boxes)}/{len(boxes)}")
    out_console.print(f"Report: {term(str(det.files['html']))}", highlight=False, soft_wrap=True)


def _injected_found(report: dict, injected: list[dict]) -> int:
    """How many injected ``{"check", "path"}`` defects the report has (path None: the check
    has a finding at all)."""
    found = {(f["check"], p) for f in report["findings"] for p in f["paths"]}
    checks = {f["check"] for f in report["findings"]}
    return sum(1 for d in injected if (d["check"], d["path"]) in found or (d["path"] is None and d["check"] in checks))


def main() -> None:
    try:
        app()
    except BrokenPipeError:  # `audit scan ... | head`
        sys.exit(0)
    finally:
        # Everything is written by now. Freezing the heap spares the interpreter's exit a
        # full garbage collection over numba's and pandas' objects (about 0.2 s).
        import gc

        gc.freeze()


if __name__ == "__main__":
    main()

"""``audit clean``, ``finetune`` and ``run``: act on what a scan found, then train. Registered on
the ``audit`` app by :mod:`auditor.cli.app`.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from auditor.cli.feedback import engine_ready, fail, input_errors, progress, warn
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
from auditor.cli.render import err_console, out_console, print_diagnosis, print_summary, term
from auditor.core.fsutil import check_cache_dir, check_output


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
        fail("give --out CLEAN_DIR, or --dry-run")
    bar, update = progress()
    with input_errors(), bar:
        check_cache_dir(cache_dir, dataset, images)
        try:
            result = run_clean(
                dataset, out, rules=rules, dry_run=dry_run, relabel=relabel, embed=not no_embed, layout=layout,
                manifest=manifest, coco=coco, images=images, workers=workers, cache_dir=cache_dir,
                progress=update,
            )  # fmt: skip
        except CleanError as exc:
            fail(str(exc))
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
        fail("--trials and --budget set up the search: add --tune")
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

    with input_errors(), bar:
        check_output(out, dataset)  # as scan's --out: refused before the backbone loads
        check_cache_dir(cache_dir, dataset)
        if report is not None:  # refused before any training
            from auditor.policy.gate import ReportError, load_report
            from auditor.policy.rules import RulesError, load_rules

            try:
                load_report(report)
                load_rules(rules)
            except (FileNotFoundError, ReportError, RulesError) as exc:
                fail(str(exc))
            if not report.with_name("images.parquet").is_file():
                fail(f"{report.with_name('images.parquet')}: the scan's images.parquet (beside its report.json) "
                      "is needed with --report")  # fmt: skip
        try:
            result = run_finetune(dataset, out, opts, progress=update, cache_dir=cache_dir)
        except FinetuneError as exc:
            fail(str(exc))
    ev = result.evaluation
    if ev.get("unreadable"):
        bad = ev["unreadable"]
        path, reason = next(iter(bad["examples"].items()))
        warn(
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
        fail(str(exc))
    print_diagnosis(added, out_console)
    out_console.print(f"validation accuracy {ev['val_accuracy']:.3f} on {ev['val_images']} images; "
                      f"model: {term(str(result.model_path))}", highlight=False, soft_wrap=True)  # fmt: skip


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
        fail("--trials and --budget set up the search: add --tune")
    chosen = tuple(a.strip() for a in augmentations.split(",") if a.strip()) if augmentations else AUGMENTATIONS
    # a named backbone is also the base that is fine-tuned; a .keras model file only embeds for the audit
    base = {} if backbone is None or backbone.endswith(".keras") else {"backbone": backbone, "weights": weights}
    opts = FinetuneOptions(epochs=epochs, unfreeze=unfreeze, learning_rate=learning_rate, image_size=image_size,
                           batch_size=batch_size, seed=seed, augment=chosen if augment else (), tune=tune,
                           budget_minutes=budget, **base, **({} if trials is None else {"trials": trials}))  # fmt: skip
    bar, update = progress()
    searches: dict[str, int] = {}

    def searched(phase: str, done: int, total: int, logs: dict) -> None:  # --tune: trials done, best score
        if not phase.startswith("search"):
            return
        if phase not in searches:
            searches[phase] = bar.add_task(phase, total=total, rate="")
        best = f"best val_crossentropy {logs['best']:.4f}" if "best" in logs else ""
        bar.update(searches[phase], completed=done, rate=best)

    with input_errors(), bar:
        check_output(out, dataset, images, source)  # as scan's --out: refused before any work
        check_cache_dir(cache_dir, dataset, images, source)
        engine_ready(engine)
        try:
            options = scan_options(locals())
            result = run(dataset, out, rules=rules, force=force, relabel=relabel, finetune_options=opts,
                         augment_from_audit=augment and not augmentations, progress=update, workers=workers,
                         engine=engine, finetune_progress=searched,
                         cache_dir=cache_dir, use_cache=not no_cache, **options)  # fmt: skip
        except (FinetuneError, CleanError) as exc:
            fail(str(exc))
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

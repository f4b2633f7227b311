"""``audit run``: scan -> gate -> clean -> finetune, with one report at the end.

The scan's report gains a ``clean`` section (decision counts, where the cleaned dataset and
its manifest are) and a ``finetune`` section (per-phase history, validation evaluation), and
``report.html`` shows them. A failed gate stops the run before cleaning unless ``force``.
"""

from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from auditor.core.findings import jsonable


@dataclass
class RunResult:
    scan: Any  # auditor.pipeline.api.ScanResult
    passed: bool
    stopped: bool  # True when the failed gate stopped the run
    clean: Any = None  # auditor.pipeline.clean.CleanResult
    finetune: Any = None  # auditor.pipeline.finetune.FinetuneResult
    report_path: Path | None = None
    skipped: str | None = None  # why fine-tuning did not run (detection datasets)


def after_training(result: Any, manifest: Any, tuned: Any, rules: Any, dataset: str | os.PathLike) -> dict:
    """The error analysis (validation predictions joined with the scan's findings, paths mapped
    back through the cleaned dataset's manifest) and the reading of the training curves; the
    scan's diagnosis is replaced by the one updated with both (training causes included).
    Returns the ``finetune`` section's ``errors`` and ``curves``."""
    import shlex

    from auditor.analysis.errors import error_analysis, outside_support, read_curves
    from auditor.policy.diagnosis import diagnose_after_training

    source = dict(zip(manifest["path"], manifest["source_path"], strict=True))
    pred = tuned.predictions.copy()
    pred["path"] = [source.get(p, p) for p in pred["path"]]
    ctx = getattr(result, "context", None)
    outside = outside_support(ctx, list(pred["path"])) if ctx is not None else None
    errors = error_analysis(pred, result.report["findings"], outside)
    curves = read_curves(tuned.history, rules.diagnosis["val_loss_rise"])
    ranked, summary = diagnose_after_training(result.report, result.table, rules.diagnosis, curves, errors,
                                              dataset=shlex.quote(str(dataset)))  # fmt: skip
    result.report["diagnosis"] = jsonable(ranked)
    result.report["diagnosis_summary"] = {**summary, "after_training": True}
    return {"errors": errors, "curves": curves}


def run(
    dataset: str | os.PathLike,
    out: str | os.PathLike,
    *,
    rules: Any = None,
    force: bool = False,
    relabel: bool = False,
    finetune_options: Any = None,
    augment_from_audit: bool = True,
    progress: Any = None,
    finetune_progress: Any = None,
    **scan_options: Any,
) -> RunResult:
    """Run the whole pipeline into ``out``: ``out/report.json`` + ``report.html`` (one report),
    ``out/clean/`` (the cleaned dataset and manifest), ``out/model/`` (the fine-tuned model).
    ``augment_from_audit``: pick the augmentation layers from the findings (geometric always;
    brightness/contrast when ``property_shift`` found that difference) instead of
    ``finetune_options.augment``; recorded with the reasons in the report."""
    from auditor.io.store import Store
    from auditor.pipeline.api import scan
    from auditor.pipeline.clean import clean
    from auditor.pipeline.finetune import FinetuneOptions, augmentations_from_audit, finetune
    from auditor.policy.rules import Rules, load_rules
    from auditor.report import write_outputs

    out = Path(out)
    rules_obj = rules if isinstance(rules, Rules) else load_rules(rules)
    result = scan(dataset, out, rules=rules_obj, write=False, progress=progress, **scan_options)
    result.out_dir = out
    passed = result.passed
    outcome = RunResult(result, passed, stopped=not passed and not force)
    if not outcome.stopped:
        cleaned = clean(dataset, out / "clean", rules=rules_obj, relabel=relabel, scan_result=result)
        outcome.clean = cleaned
        result.report["clean"] = {"counts": cleaned.counts, "folder": "clean", "manifest": "clean/manifest.csv"}
        if cleaned.boxes is not None:
            b = cleaned.boxes["action"]
            result.report["clean"]["boxes"] = {a: int((b == a).sum()) for a in ("keep", "clip", "drop")}
    if not outcome.stopped and result.discovery.annotations is not None:
        outcome.skipped = ("a detection dataset: the built-in fine-tuning stage trains image classifiers; the "
                           "cleaned dataset (same format, invalid boxes removed) is in clean/")  # fmt: skip
    elif not outcome.stopped:
        opts = finetune_options or FinetuneOptions()
        reasons: list[str] = []
        if augment_from_audit and opts.augment:
            chosen, reasons = augmentations_from_audit(result.report)
            opts = dataclasses.replace(opts, augment=chosen)
        tuned = finetune(out / "clean", out / "model", opts, progress=finetune_progress,
                         cache_dir=scan_options.get("cache_dir"),  # the scan's embeddings, when they fit
                         use_cache=scan_options.get("use_cache", True))  # fmt: skip
        outcome.finetune = tuned
        augmentation = {"layers": list(opts.augment), "reasons": reasons}
        section = {"model": "model/model.keras", "history": tuned.history, "evaluation": tuned.evaluation}
        result.report["finetune"] = jsonable(
            {
                **section,
                "augmentation": augmentation,
                **after_training(result, cleaned.manifest, tuned, rules_obj, dataset),
            }
        )
    result.report["run"] = {"gate_passed": passed, "forced": bool(force and not passed), "stopped": outcome.stopped,
                            "finetune_skipped": outcome.skipped}  # fmt: skip
    store = Store.open_default(scan_options.get("cache_dir"))
    try:
        result.files = write_outputs(result, store)
    finally:
        store.close()
    outcome.report_path = result.files.get("json")
    return outcome


def diagnose_finetune(
    tuned: Any, dataset: str | os.PathLike, report_path: str | os.PathLike | None = None, rules: Any = None
) -> dict:
    """What a standalone ``audit finetune`` adds to ``evaluation.json`` (rewritten atomically):
    ``curves`` (:func:`auditor.analysis.errors.read_curves`) and a ``diagnosis`` of the training
    (overfitting, underfitting, hyperparameters). With the scan's ``report_path`` (its
    ``images.parquet`` beside it), the validation predictions are joined with its findings
    (``errors``; paths mapped back through ``DATASET/manifest.csv`` when ``dataset`` is
    ``audit clean``'s output) and the diagnosis is the scan's, updated. Returns the additions."""
    import json
    import shlex

    import pandas as pd

    from auditor.analysis.errors import error_analysis, read_curves
    from auditor.core.fsutil import atomic_write_bytes
    from auditor.policy.diagnosis import diagnose_after_training
    from auditor.policy.gate import load_report
    from auditor.policy.rules import Rules, load_rules

    rules_obj = rules if isinstance(rules, Rules) else load_rules(rules)
    curves = read_curves(tuned.history, rules_obj.diagnosis["val_loss_rise"])
    report: dict = {"findings": [], "checks": {}}
    table = pd.DataFrame(
        {
            "path": pd.Series([], dtype=object),
            "split": pd.Series([], dtype=object),
            "label": pd.Series([], dtype=object),
            "ok": pd.Series([], dtype=bool),
        }
    )
    errors = None
    if report_path is not None:
        report = load_report(report_path)
        images = Path(report_path).with_name("images.parquet")
        if not images.is_file():
            raise FileNotFoundError(f"{images}: the scan's images.parquet (beside its report.json) is needed")
        table = pd.read_parquet(images, columns=["path", "split", "label", "ok"])
        pred = tuned.predictions.copy()
        manifest = Path(dataset) / "manifest.csv"
        if manifest.is_file():
            m = pd.read_csv(manifest, usecols=["path", "source_path"], dtype=str, keep_default_na=False)
            source = dict(zip(m["path"], m["source_path"], strict=True))
            pred["path"] = [source.get(p, p) for p in pred["path"]]
        errors = error_analysis(pred, report["findings"], None)
    root = (report.get("dataset") or {}).get("root") or str(dataset)
    ranked, summary = diagnose_after_training(report, table, rules_obj.diagnosis, curves, errors,
                                              dataset=shlex.quote(root))  # fmt: skip
    added = jsonable({"curves": curves, "errors": errors, "diagnosis": ranked,
                      "diagnosis_summary": {**summary, "after_training": True}})  # fmt: skip
    tuned.evaluation.update(added)
    path = tuned.files["evaluation"]
    document = json.loads(Path(path).read_text(encoding="utf-8"))
    document.update(added)
    atomic_write_bytes(path, (json.dumps(document, indent=2, allow_nan=False) + "\n").encode())
    return added

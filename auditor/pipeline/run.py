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


def _trained(
    report: dict,
    table: Any,
    tuned: Any,
    rules: Any,
    dataset: str,
    source: dict[str, str] | None = None,
    ctx: Any = None,
) -> dict:
    """What fine-tuning adds, for ``audit run`` and ``audit finetune`` alike: ``curves``
    (:func:`auditor.analysis.errors.read_curves`), ``errors`` (the validation predictions, their
    paths mapped back to the scanned dataset through ``source``, joined with the scan's findings;
    None without a scan: ``table`` None) and the ``diagnosis`` with its summary, updated."""
    import shlex

    from auditor.analysis.errors import error_analysis, outside_support, read_curves
    from auditor.policy.diagnosis import diagnose_after_training

    curves = read_curves(tuned.history, rules.diagnosis["val_loss_rise"])
    errors = None
    if table is not None:
        pred = tuned.predictions.copy()
        if source:
            pred["path"] = [source.get(p, p) for p in pred["path"]]
        outside = outside_support(ctx, list(pred["path"])) if ctx is not None else None
        errors = error_analysis(pred, report["findings"], outside)
    ranked, summary = diagnose_after_training(report, table, rules.diagnosis, curves, errors,
                                              dataset=shlex.quote(dataset))  # fmt: skip
    return jsonable({"curves": curves, "errors": errors, "diagnosis": ranked,
                     "diagnosis_summary": {**summary, "after_training": True}})  # fmt: skip


def after_training(result: Any, manifest: Any, tuned: Any, rules: Any, dataset: str | os.PathLike) -> dict:
    """:func:`_trained` for ``audit run`` (paths mapped through the cleaned dataset's manifest,
    outside-support from the scan's embeddings): the scan's diagnosis is replaced by the updated
    one; returns the ``finetune`` section's ``errors`` and ``curves``."""
    source = dict(zip(manifest["path"], manifest["source_path"], strict=True))
    added = _trained(result.report, result.table, tuned, rules, str(dataset), source,
                     getattr(result, "context", None))  # fmt: skip
    result.report["diagnosis"] = added["diagnosis"]
    result.report["diagnosis_summary"] = added["diagnosis_summary"]
    return {"errors": added["errors"], "curves": added["curves"]}


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

    import pandas as pd

    from auditor.core.fsutil import atomic_write_bytes
    from auditor.policy.gate import load_report
    from auditor.policy.rules import Rules, load_rules

    rules_obj = rules if isinstance(rules, Rules) else load_rules(rules)
    report: dict = {"findings": [], "checks": {}}
    table = source = None
    if report_path is not None:
        report = load_report(report_path)
        images = Path(report_path).with_name("images.parquet")
        if not images.is_file():
            raise FileNotFoundError(f"{images}: the scan's images.parquet (beside its report.json) is needed")
        table = pd.read_parquet(images, columns=["path", "split", "label", "ok"])
        manifest = Path(dataset) / "manifest.csv"
        if manifest.is_file():
            m = pd.read_csv(manifest, usecols=["path", "source_path"], dtype=str, keep_default_na=False)
            source = dict(zip(m["path"], m["source_path"], strict=True))
    root = (report.get("dataset") or {}).get("root") or str(dataset)
    added = _trained(report, table, tuned, rules_obj, root, source)
    tuned.evaluation.update(added)
    path = tuned.files["evaluation"]
    document = json.loads(Path(path).read_text(encoding="utf-8"))
    document.update(added)
    atomic_write_bytes(path, (json.dumps(document, indent=2, allow_nan=False) + "\n").encode())
    return added

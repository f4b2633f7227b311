"""The diagnosis: why validation accuracy is (or will be) low, ranked by estimated impact.

:func:`diagnose` reads what a scan found (the report's findings, its shift, pretraining-gap and
label-noise sections) and the per-image table, and returns one entry per *material* cause,
highest estimated impact first::

    {cause, rank, confidence, effect, evidence, fix}

``effect`` quantifies the cause on the evaluation split (``val``, else ``test``): a share with its
95% Wilson interval where the cause is a count of images, and ``points``, the accuracy points
the cause plausibly puts at stake (the ranking key; each cause's estimate and its method are in
``effect.method``). ``evidence`` names the checks, their counts and the worst paths; ``fix`` is a
command or an action with the reason. A cause is material when its measure reaches the rules'
``diagnosis`` thresholds (``min_*``); its confidence is ``high`` when the measure reaches the
``high_*`` threshold on at least ``min_evidence_images`` images and the evidence is direct,
``medium`` when material, ``low`` when the evidence is indirect. No threshold lives here.

A dataset with no material cause gets an empty list and a summary that says so: no trivial
finding is promoted to a cause.

The causes are estimated in :mod:`auditor.policy.mismatch_causes` (leakage, label_noise,
split_shift, domain_gap) and :mod:`auditor.policy.composition_causes` (small_dataset,
class_imbalance, image_quality, duplicates, annotation_style), on the :class:`Inputs` and
:class:`Cause` of :mod:`auditor.policy.cause`; here they are run, ranked and summarised, and
the training causes are read from the fine-tuning curves.
"""

from __future__ import annotations

import pandas as pd

from auditor.core.constraints import AT_LEAST_ONE, FRACTION, NON_NEGATIVE, Int, Real
from auditor.policy import composition_causes, mismatch_causes
from auditor.policy.cause import (
    BOX_CHECKS,
    DUPLICATE_CHECKS,
    LABEL_CHECKS,
    QUALITY_CHECKS,
    WORST_PATHS,
    Cause,
    Inputs,
    percent,
    wilson,
)

CAUSES = ("leakage", "label_noise", "split_shift", "domain_gap", "class_imbalance", "small_dataset", "image_quality",
          "duplicates", "annotation_style", "overfitting", "underfitting", "hyperparameters")  # fmt: skip

#: The rules' ``diagnosis`` section: its keys, each with its type and range.
DIAGNOSIS_PARAMS = {
    "min_evidence_images": AT_LEAST_ONE,
    "min_leaked_share": FRACTION, "high_leaked_share": FRACTION,
    "min_label_noise": FRACTION, "high_label_noise": FRACTION, "train_noise_weight": FRACTION,
    "min_estimated_noise": FRACTION, "estimate_weight": FRACTION, "quality_gap_alpha": FRACTION,
    "high_shift_magnitude": FRACTION, "min_quality_share": FRACTION, "high_quality_share": FRACTION,
    "quality_split_gap": FRACTION,
    "min_images_per_class": Int(1), "high_images_per_class": Int(1),
    "min_imbalance_ratio": Real(1), "high_imbalance_ratio": Real(1),
    "min_duplicate_share": FRACTION, "high_duplicate_share": FRACTION,
    "min_box_share": FRACTION, "high_box_share": FRACTION,
    "gap_points_far": FRACTION, "gap_points_moderate": FRACTION,
    "unfreeze_far": Int(0), "unfreeze_moderate": Int(0),
    "min_overfit_gap": FRACTION, "high_overfit_gap": FRACTION, "max_underfit_accuracy": FRACTION,
    "val_loss_rise": FRACTION, "min_phase_drop": FRACTION,
    "error_share_excess": NON_NEGATIVE,
}  # fmt: skip

NO_DATA_CAUSE = "no data cause found: look at the model and the training (see the fine-tuning section)"

#: Every cause estimator, in the order they run.
ESTIMATORS = mismatch_causes.ESTIMATORS + composition_causes.ESTIMATORS
_ORDER = {"high": 0, "medium": 1, "low": 2}


def rank(causes: list[Cause]) -> list[dict]:
    """Causes measured on this dataset first, then those whose points are a prior (domain_gap);
    within each, highest estimated impact first, ties by confidence, then by name."""
    ordered = sorted(causes, key=lambda c: (c.prior, -round(c.points, 6), _ORDER[c.confidence], c.cause))
    return [c.entry(i) for i, c in enumerate(ordered, 1)]


def diagnose(report: dict, table: pd.DataFrame, params: dict, dataset: str = "DATASET") -> tuple[list[dict], dict]:
    """The ranked causes and the summary (``verdict``, ``eval_split``, ``not_assessed``: cause -> why it
    could not be judged). ``report``: the scan's report.json content (findings, shift,
    pretraining_gap, label_noise, checks); ``table``: one row per image with path, split, label, ok."""
    return diagnose_after_training(report, table, params, None, None, dataset)


def summary(ranked: list[dict], eval_split: str | None, not_assessed: dict[str, str]) -> dict:
    if ranked:
        top = ranked[0]
        verdict = f"most likely: {top['cause']} ({top['confidence']} confidence): {top['effect']['text']}"
    elif not_assessed:
        verdict = (f"no data cause found among those assessed ({', '.join(sorted(not_assessed))} could not be; see "
                   "why below): look at those, then at the model and the training")  # fmt: skip
    else:
        verdict = NO_DATA_CAUSE
    return {"verdict": verdict, "eval_split": eval_split, "not_assessed": dict(sorted(not_assessed.items()))}


# -- after fine-tuning ---------------------------------------------------------------------------

#: Scan cause -> the kind of flagged image (:data:`auditor.analysis.errors.FLAG_KINDS`) whose share of
#: the validation errors confirms it.
ERROR_EVIDENCE = {"label_noise": "label_issue", "split_shift": "outside_support", "image_quality": "low_quality",
                  "duplicates": "duplicate", "leakage": "leaked_copy"}  # fmt: skip


def _training_causes(curves: dict | None, p: dict) -> list[Cause]:
    if not curves or curves.get("train_accuracy") is None or curves.get("val_accuracy") is None:
        return []
    out = []
    train, val = float(curves["train_accuracy"]), float(curves["val_accuracy"])
    phases = curves["phases"]
    rose = [name for name, ph in phases.items() if ph["val_loss_rose"]]
    gap = train - val
    if gap >= p["min_overfit_gap"]:
        high = gap >= p["high_overfit_gap"] and bool(rose)
        out.append(Cause(
            "overfitting", gap, "high" if high else "medium",
            {"train_accuracy": round(train, 4), "val_accuracy": round(val, 4), "gap": round(gap, 4),
             "val_loss_rose_in": rose,
             "text": f"train accuracy {train:.2f} against val {val:.2f} (gap {gap:.2f})"
                     + (f"; val loss rose after its minimum in {', '.join(rose)}" if rose else ""),
             "method": "train - val accuracy at the kept (best val loss) epoch of the last phase; early stopping "
                       "already keeps the best weights"},
            {"checks": {}, "paths": []},
            {"command": "audit finetune CLEAN --unfreeze 0 --tune",
             "text": "more augmentation, more L2 and dropout, fewer unfrozen blocks (--unfreeze), or more data; "
                     "--tune searches L2, dropout and the blocks"},
        ))  # fmt: skip
    if train < p["max_underfit_accuracy"]:
        out.append(Cause(
            "underfitting", p["max_underfit_accuracy"] - train, "medium",
            {"train_accuracy": round(train, 4), "val_accuracy": round(val, 4),
             "text": f"the model fits even the training images poorly (train accuracy {train:.2f})",
             "method": f"train accuracy under the rules' {p['max_underfit_accuracy']:.2f}"},
            {"checks": {}, "paths": []},
            {"command": "audit finetune CLEAN --unfreeze 6 --image-size 224",
             "text": "unfreeze more blocks, train longer or at a higher learning rate, use the backbone's native "
                     "input size (224 px)"},
        ))  # fmt: skip
    names = list(phases)
    if len(names) >= 2:
        first, second = phases[names[0]], phases[names[-1]]
        drop = first["best_val_accuracy"] - second["best_val_accuracy"]
        if drop >= p["min_phase_drop"]:
            out.append(Cause(
                "hyperparameters", drop, "medium",
                {"drop": round(drop, 4),
                 "text": f"unfreezing lowered the best val accuracy from {first['best_val_accuracy']:.2f} "
                         f"({names[0]}) to {second['best_val_accuracy']:.2f} ({names[-1]})",
                 "method": "best val accuracy of the last phase against the first"},
                {"checks": {}, "paths": []},
                {"command": "audit finetune CLEAN --tune",
                 "text": "a lower phase-2 learning rate or fewer unfrozen blocks; --tune searches both"},
            ))  # fmt: skip
    return out


def diagnose_after_training(
    report: dict,
    table: pd.DataFrame | None,
    params: dict,
    curves: dict | None,
    errors: dict | None,
    dataset: str = "DATASET",
) -> tuple[list[dict], dict]:
    """The diagnosis updated with what fine-tuning showed: the scan's causes, each confirmed (its
    confidence raised to high) when its flagged images take a share of the validation errors at
    least ``error_share_excess`` times their share of val; and the training causes read from the
    curves (overfitting, underfitting, hyperparameters). ``table`` None: no scan (``audit
    finetune`` without ``--report``), the training causes alone."""
    x = Inputs(report.get("findings") or [], table, report, params, dataset) if table is not None else None
    causes = [c for est in ESTIMATORS if (c := est(x)) is not None] if x is not None else []
    flags = (errors or {}).get("flags") or {}
    for c in causes:
        g = flags.get(ERROR_EVIDENCE.get(c.cause, ""))
        if not g or not g["images"]:
            continue
        c.effect["val_errors"] = {k: g[k] for k in ("images", "errors", "share_of_val", "share_of_errors", "excess")}
        c.effect["text"] += (f"; after fine-tuning, these images are {percent(g['share_of_val'])} of val and "
                             f"{percent(g['share_of_errors'])} of its errors")  # fmt: skip
        if (g["excess"] or 0) >= params["error_share_excess"] and g["errors"] >= params["min_evidence_images"]:
            c.confidence = "high"
    causes += _training_causes(curves, params)
    ranked = rank(causes)
    return ranked, summary(ranked, x.eval_split if x else None, x.not_assessed if x else {})


__all__ = [
    "BOX_CHECKS",
    "CAUSES",
    "DIAGNOSIS_PARAMS",
    "DUPLICATE_CHECKS",
    "ERROR_EVIDENCE",
    "ESTIMATORS",
    "LABEL_CHECKS",
    "NO_DATA_CAUSE",
    "QUALITY_CHECKS",
    "WORST_PATHS",
    "Cause",
    "Inputs",
    "diagnose",
    "diagnose_after_training",
    "rank",
    "summary",
    "wilson",
]

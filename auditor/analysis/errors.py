"""Error analysis after fine-tuning: which validation errors fall on images the scan flagged.

:func:`error_analysis` joins the validation predictions of a fine-tuned model (one row per
image: ``path`` relative to the scanned dataset, ``true``, ``predicted``) with the scan's
findings: for each kind of flag (label issue, leaked copy, outside the training set's
support, low quality, duplicate) it gives the flagged share of validation, the flagged share
of the *errors*, and their ratio (``excess``: above 1, flagged images are over-represented among
the errors). The most confused class pairs come with example paths and the findings that tie
the two classes together (a class-name inconsistency, copies or label issues between them).
:func:`read_curves` reads the training history for over- and underfitting. Plain results: the
diagnosis (:mod:`auditor.policy.diagnosis`) judges them with the rules' thresholds.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from auditor.core.context import CheckContext

#: Kind of flag -> the checks whose findings make an image flagged.
FLAG_KINDS = {
    "label_issue": ("label_issue", "label_conflict"),
    "leaked_copy": ("leakage",),
    "low_quality": ("blurry", "noisy", "dark", "bright", "low_contrast", "low_information", "low_resolution",
                    "odd_aspect_ratio"),
    "duplicate": ("exact_duplicate", "near_duplicate"),
}  # fmt: skip
TOP_PAIRS = 8
EXAMPLES = 4


def _share(k: int, n: int) -> float:
    return round(k / n, 4) if n else 0.0


def error_analysis(pred: pd.DataFrame, findings: list[dict], outside: set[str] | None = None) -> dict:
    """See the module docstring. ``outside``: the validation paths outside the training set's
    support in the embedding space (None when the scan had no embeddings)."""
    n = len(pred)
    wrong = (pred["true"] != pred["predicted"]).to_numpy()
    n_err = int(wrong.sum())
    flagged_by_kind = {kind: {p for f in findings if f["check"] in checks for p in f["paths"]}
                       for kind, checks in FLAG_KINDS.items()}  # fmt: skip
    if outside is not None:
        flagged_by_kind["outside_support"] = set(outside)
    paths = pred["path"].astype(str)
    flagged_by_kind["any_flag"] = set().union(*flagged_by_kind.values())
    groups = {}
    for kind, flagged in flagged_by_kind.items():
        m = paths.isin(flagged).to_numpy()
        k, e = int(m.sum()), int((m & wrong).sum())
        share_val, share_err = _share(k, n), _share(e, n_err)
        groups[kind] = {
            "images": k, "errors": e, "share_of_val": share_val, "share_of_errors": share_err,
            "error_rate": _share(e, k), "excess": round(share_err / share_val, 3) if share_val else None,
            "examples": [] if kind == "any_flag" else sorted(paths[m & wrong])[:EXAMPLES],
        }  # fmt: skip
    return {"val_images": n, "errors": n_err, "accuracy": _share(n - n_err, n), "flags": groups,
            "confused_pairs": confused_pairs(pred[wrong], findings)}  # fmt: skip


def _links(a: str, b: str, findings: list[dict]) -> dict[str, int]:
    """Findings that tie classes ``a`` and ``b`` together, counted per check."""
    out: dict[str, int] = {}
    pair = {a, b}
    for f in findings:
        d = f.get("details") or {}
        c = f["check"]
        if c == "class_name_inconsistency":
            hit = pair <= {str(x) for x in d.get("names") or []}
        elif c == "label_conflict":
            hit = pair <= {str(x) for x in d.get("labels") or []}
        elif c in ("near_duplicate", "exact_duplicate"):
            hit = pair <= {str(m.get("label")) for m in d.get("members") or []} or pair <= {
                str(x) for x in d.get("labels") or []}  # fmt: skip
        elif c == "label_issue":
            hit = {str(d.get("given_label")), str(d.get("suggested_label"))} == pair
        else:
            continue
        if hit:
            out[c] = out.get(c, 0) + 1
    return out


def confused_pairs(errors: pd.DataFrame, findings: list[dict], top: int = TOP_PAIRS) -> list[dict]:
    """The most frequent (true, predicted) pairs among the errors, with example paths and the
    findings that link the two classes."""
    if errors.empty:
        return []
    counts = errors.groupby(["true", "predicted"]).size().reset_index(name="n")
    counts = counts.sort_values(["n", "true", "predicted"], ascending=[False, True, True]).head(top)
    out = []
    for row in counts.itertuples():
        rows = errors[(errors["true"] == row.true) & (errors["predicted"] == row.predicted)]
        out.append({"true": str(row.true), "predicted": str(row.predicted), "errors": int(row.n),
                    "examples": sorted(rows["path"].astype(str))[:EXAMPLES],
                    "related_findings": _links(str(row.true), str(row.predicted), findings)})  # fmt: skip
    return out


def read_curves(history: dict[str, list[dict]], rise: float = 0.02) -> dict | None:
    """What the training curves say: per phase the best epoch (lowest val loss), the train and
    val accuracy there and at the end, and whether val loss rose after its minimum (the last
    epoch's more than ``rise`` above it, relative: the rules' ``val_loss_rise``); and the
    run's final train / val accuracy (the kept model's: early stopping restores the best
    weights of the last phase)."""
    phases = {}
    for phase, rows in history.items():
        if not rows or "val_loss" not in rows[0]:
            continue
        vl = np.array([r["val_loss"] for r in rows], float)
        best = int(np.argmin(vl))
        phases[phase] = {
            "epochs": len(rows), "best_epoch": best + 1,
            "train_accuracy": rows[best].get("accuracy"), "val_accuracy": rows[best].get("val_accuracy"),
            "last_train_accuracy": rows[-1].get("accuracy"), "last_val_accuracy": rows[-1].get("val_accuracy"),
            "best_val_accuracy": max(r.get("val_accuracy", 0.0) for r in rows),
            "val_loss_rose": bool(len(vl) > best + 1 and vl[-1] > vl[best] * (1 + rise)),
        }  # fmt: skip
    if not phases:
        return None
    last = phases[list(phases)[-1]]
    return {"phases": phases, "train_accuracy": last["train_accuracy"], "val_accuracy": last["val_accuracy"]}


def outside_support(ctx: CheckContext, paths: list[str], quantile: float = 0.95) -> set[str] | None:
    """The ``paths`` (validation images) whose nearest training image in the embedding space is
    further than ``quantile`` of the training images are from their own nearest neighbour
    (:func:`auditor.analysis.drift.support`); the training images are the other decoded rows
    of the train split (of the dataset, when it has no splits). None without embeddings."""
    from auditor.analysis.drift import support

    if ctx.embeddings is None:
        return None
    ok = ctx.ok
    wanted = set(paths)
    in_val = ok["path"].isin(wanted)
    ref = ok[~in_val & (ok["split"] == "train")] if (ok["split"] == "train").any() else ok[~in_val]
    tgt = ok[in_val]
    x, xm = ctx.embeddings.rows(ref["content_hash"])
    y, ym = ctx.embeddings.rows(tgt["content_hash"])
    if xm.sum() < 2 or ym.sum() < 1:
        return None
    res = support(x[xm], y[ym])
    return set(tgt["path"].to_numpy()[ym][res.target_distance > res.threshold])

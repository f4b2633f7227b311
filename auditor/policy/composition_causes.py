"""Causes in what the dataset is made of: too few images per class (small_dataset), classes of
very different sizes (class_imbalance), degraded images (image_quality), copies inside a split
(duplicates), box annotation problems (annotation_style). Each estimator reads :class:`Inputs`
and returns a :class:`Cause`, or None when the cause is not material.
"""

from __future__ import annotations

import pandas as pd

from auditor.policy.cause import (
    BOX_CHECKS,
    DUPLICATE_CHECKS,
    QUALITY_CHECKS,
    WORST_PATHS,
    Cause,
    Inputs,
    confidence_level,
    percent,
    quality_shares,
    wilson,
)


def _class_counts(x: Inputs) -> tuple[pd.Series, pd.Series]:
    t = x.labeled
    train = t[t["split"] == "train"] if x.eval_split else t
    ev = t[t["split"] == x.eval_split] if x.eval_split else t
    return train["label"].astype(str).value_counts(), ev["label"].astype(str).value_counts()


def _small_dataset(x: Inputs) -> Cause | None:
    p = x.params
    train, ev = _class_counts(x)
    if len(train) < 2:
        if "label" not in x.table or x.table["label"].isna().all():
            x.not_assessed["small_dataset"] = "the dataset is unlabeled"
        return None
    need = p["min_images_per_class"]
    unseen = pd.Series(0, index=sorted(set(ev.index) - set(train.index)), dtype=int)
    small = pd.concat([unseen, train[train < need]]).sort_values()
    if small.empty:
        return None
    # each class counts alike in per-class (macro) accuracy: a class far under the bar loses most of its own
    points = 0.5 * float((1 - small / need).sum()) / len(set(train.index) | set(small.index))
    worst = int(small.min())
    names = ", ".join(f"{c!r} ({n})" for c, n in small.head(5).items())
    n_classes = len(set(train.index) | set(small.index))
    everything = len(small) == n_classes
    return Cause(
        "small_dataset", points,
        "high" if worst < p["high_images_per_class"] else "medium",
        {"classes": {str(c): int(n) for c, n in small.items()}, "needed_per_class": need,
         "text": (f"every class has fewer than {need} training images (median {int(train.median())})"
                  if everything else f"{len(small)} of {n_classes} classes have fewer than {need} training "
                  f"images: {names}") + "; a frozen-backbone fine-tune typically needs that many per class",
         "method": f"classes under {need} train images (the rules' bar for a frozen-head fine-tune); points: half "
                   "of each such class's shortfall (1 - images/bar), averaged over the classes (per-class "
                   "accuracy counts every class alike)"},
        {"checks": {"class_imbalance": len(x.by_check.get("class_imbalance", []))}, "paths": []},
        {"command": "audit finetune CLEAN --unfreeze 0",
         "text": f"collect at least {need} images of {names}; until then keep the backbone frozen (--unfreeze 0) "
                 "with augmentation on, and read per-class accuracy rather than the mean"},
    )  # fmt: skip


def _class_imbalance(x: Inputs) -> Cause | None:
    p = x.params
    train, ev = _class_counts(x)
    train = train[train >= p["min_images_per_class"]]  # classes under the bar are small_dataset's
    if len(train) < 2:
        return None
    ratio = float(train.max() / train.min())
    if ratio < p["min_imbalance_ratio"]:
        return None
    minority = train[train * p["min_imbalance_ratio"] <= train.max()]
    ev_total = int(ev.sum())
    share = float(sum(ev.get(c, 0) for c in minority.index)) / ev_total if ev_total else 0.0
    names = ", ".join(f"{c!r} ({n})" for c, n in minority.sort_values().head(5).items())
    return Cause(
        "class_imbalance", 0.5 * share * (1 - p["min_imbalance_ratio"] / max(ratio, p["min_imbalance_ratio"]) / 2),
        "high" if ratio >= p["high_imbalance_ratio"] else "medium",
        {"ratio": round(ratio, 2), "minority": {str(c): int(n) for c, n in minority.items()},
         "eval_share": round(share, 4),
         "text": f"the largest train class has {ratio:.0f}x the images of the smallest; minority classes: {names} "
                 f"({percent(share)} of the evaluation images)",
         "method": "max/min train class counts among classes above the small-class bar; points: half the "
                   "evaluation share of minority classes, scaled by the imbalance"},
        {"checks": {"class_imbalance": len(x.by_check.get("class_imbalance", []))}, "paths": []},
        {"command": "audit finetune CLEAN",
         "text": f"class weights (audit finetune applies them past its balance ratio) and more images of {names}; "
                 "report per-class accuracy"},
    )  # fmt: skip


def _image_quality(x: Inputs) -> Cause | None:
    p = x.params
    shares, paths = quality_shares(x)
    # what is common to the splits: an excess in the evaluation split is split_shift's; the share,
    # its interval and its count are those of the split where the share is smallest
    s = min(shares, key=lambda k: (shares[k], k))
    share = shares[s]
    if share < p["min_quality_share"]:
        return None
    counts = {c: n for c in QUALITY_CHECKS if (n := sum(f.get("severity") != "info" for f in x.by_check.get(c, [])))}
    top = ", ".join(f"{c} {n}" for c, n in sorted(counts.items(), key=lambda kv: -kv[1])[:4])
    k = len(paths[s])
    n = len(x.split_paths(None if s == "all" else s))
    return Cause(
        "image_quality", 0.5 * share, confidence_level(share, p["high_quality_share"], k, p),
        {"share": round(share, 4), "by_split": {k2: round(v, 4) for k2, v in shares.items()},
         "interval": wilson(k, n),
         "text": f"{percent(share)} of the images have a quality finding" + (" in every split" if x.eval_split else "")
                 + f" ({top})",
         "method": "share of images with a per-image quality finding, the smaller over train and evaluation (an "
                   "excess in one split is split_shift); points: half of it (degraded images are the hard ones)"},
        {"checks": counts, "paths": sorted(paths[x.eval_split or "all"])[:WORST_PATHS]},
        {"command": f"audit clean {x.dataset} --out CLEAN",
         "text": "drop or quarantine the unreadable and degraded images (clean, by the rules' actions); when the "
                 "images the model will see look like them, keep them and augment (blur, noise, brightness) "
                 "instead"},
    )  # fmt: skip


def _duplicates(x: Inputs) -> Cause | None:
    p = x.params
    groups = [f for c in DUPLICATE_CHECKS for f in x.by_check.get(c, [])]
    if not groups:
        return None
    # an image counted once however many groups (exact and near) hold it
    first = {min(f["paths"]) for f in groups if f["paths"]}
    redundant = len({q for f in groups for q in f["paths"]} - first)
    n = int(x.table["ok"].sum()) if "ok" in x.table else len(x.table)
    redundant = min(redundant, n)
    share = redundant / n if n else 0.0
    if share < p["min_duplicate_share"]:
        return None
    return Cause(
        "duplicates", 0.1 * share, confidence_level(share, p["high_duplicate_share"], redundant, p),
        {"share": round(share, 4), "interval": wilson(redundant, n), "images": redundant,
         "text": f"{redundant} images ({percent(share)}) are copies of others in the same split: the dataset is "
                 f"effectively {n - redundant} images, and copies weigh their content more in training",
         "method": "images beyond the first of each verified copy group; points: a tenth of the share (copies "
                   "cost effective size and balance, rarely accuracy directly)"},
        {"checks": {c: len(x.by_check.get(c, [])) for c in DUPLICATE_CHECKS},
         "paths": [q for f in groups[:WORST_PATHS] for q in f["paths"][:1]]},
        {"command": f"audit clean {x.dataset} --out CLEAN", "text": "keep one image of each copy group (clean)"},
    )  # fmt: skip


def _annotation_style(x: Inputs) -> Cause | None:
    p = x.params
    boxes = x.report.get("boxes")
    if not boxes:
        return None
    hits = [f for c in BOX_CHECKS for f in x.by_check.get(c, [])]
    images = {q for f in hits for q in f["paths"]}
    n = len(x.table)
    share = len(images) / n if n else 0.0
    if share < p["min_box_share"]:
        return None
    counts = {c: len(x.by_check.get(c, [])) for c in BOX_CHECKS if x.by_check.get(c)}
    return Cause(
        "annotation_style", 0.5 * share, confidence_level(share, p["high_box_share"], len(images), p),
        {"share": round(share, 4), "interval": wilson(len(images), n), "images": len(images),
         "text": f"{len(images)} images ({percent(share)}) have box annotation problems ("
                 + ", ".join(f"{c} {k}" for c, k in counts.items()) + ")",
         "method": "share of images with a box finding; points: half of it"},
        {"checks": counts, "paths": sorted(images)[:WORST_PATHS]},
        {"command": f"audit clean {x.dataset} --out CLEAN",
         "text": "clip or drop the invalid boxes (clean); re-annotate the split whose box style differs with "
                 "one style guide"},
    )  # fmt: skip


#: This module's estimators, in the order :func:`auditor.policy.diagnosis.diagnose` runs them.
ESTIMATORS = (_small_dataset, _class_imbalance, _image_quality, _duplicates, _annotation_style)

"""Causes that come from a mismatch: evaluation images copied from train (leakage), labels that
disagree with the images (label_noise), an evaluation split unlike train (split_shift), images
unlike the backbone's pretraining data (domain_gap). Each estimator reads :class:`Inputs` and
returns a :class:`Cause`, or None when the cause is not material.
"""

from __future__ import annotations

from auditor.policy.cause import (
    LABEL_CHECKS,
    WORST_PATHS,
    Cause,
    Inputs,
    confidence_level,
    percent,
    quality_shares,
    wilson,
)


def _leakage(x: Inputs) -> Cause | None:
    if x.eval_split is None:
        x.not_assessed["leakage"] = "no train split and evaluation split to compare"
        return None
    why = x.skipped("leakage")
    if why:
        x.not_assessed["leakage"] = why
        return None
    p = x.params
    eval_paths = x.split_paths(x.eval_split)
    leaked: set[str] = set()
    for f in x.by_check.get("leakage", []):
        members = f["details"].get("members") or []
        if any(m.get("split") == "train" for m in members):
            leaked |= {m["path"] for m in members if m.get("split") == x.eval_split}
    n = len(eval_paths)
    if not leaked or not n:
        return None
    share = len(leaked) / n
    if share < p["min_leaked_share"]:
        return None
    s = x.eval_split
    return Cause(
        "leakage", share, confidence_level(share, p["high_leaked_share"], len(leaked), p),
        {"share": round(share, 4), "interval": wilson(len(leaked), n), "images": len(leaked), "of": n,
         "split": s,
         "text": f"{len(leaked)} of {n} {s} images ({percent(share)}) have a verified copy in train: {s} accuracy "
                 f"can be overstated by up to {100 * share:.0f} points, and it says little about new images",
         "method": "share of the evaluation split in a pixel-verified leakage group with a train image; a "
                   "memorised copy is always right, so the share bounds the inflation"},
        {"checks": {"leakage": len(x.by_check.get("leakage", []))}, "paths": sorted(leaked)[:WORST_PATHS]},
        {"command": f"audit clean {x.dataset} --out CLEAN",
         "text": f"drop the {s} copies of train images (clean's 'drop_from_eval'), then measure {s} accuracy "
                 "again: it is the honest figure"},
    )  # fmt: skip


def _label_noise(x: Inputs) -> Cause | None:
    why = x.skipped("label_issue")
    if why:
        x.not_assessed["label_noise"] = why
        return None
    p = x.params
    noise = (x.report.get("label_noise") or {}).get("splits") or {}
    flagged = {q for f in x.by_check.get("label_issue", []) for q in f["paths"]}
    conflicts = {q for f in x.by_check.get("label_conflict", []) for q in f["paths"]}
    s = x.eval_split

    def rate(split: str | None) -> tuple[int, int, float]:
        rows = x.labeled if split is None else x.labeled[x.labeled["split"] == split]
        k = int(rows["path"].isin(flagged).sum())
        return k, len(rows), (k / len(rows) if len(rows) else 0.0)

    k_eval, n_eval, r_eval = rate(s) if s else rate(None)
    k_train, n_train, r_train = rate("train") if s else (0, 0, 0.0)
    points = r_eval + p["train_noise_weight"] * r_train
    est = noise.get(s or "all", {}).get("estimated_rate") if noise else None
    # no image individually confident, but confident learning estimates many wrong labels: a
    # weaker signal (a split unlike train blurs every image's probabilities), reported as such
    estimate_only = max(r_eval, r_train) < p["min_label_noise"] and est is not None and est >= p["min_estimated_noise"]
    if max(r_eval, r_train) < p["min_label_noise"] and not conflicts and not estimate_only:
        return None
    where = s or "the dataset"
    lead = r_eval if r_eval >= r_train else r_train
    count = k_eval if r_eval >= r_train else k_train
    parts = []
    if estimate_only:
        points = p["estimate_weight"] * est
        parts.append(f"confident learning estimates {percent(est)} of {where} labels are wrong, though only {k_eval} "
                     f"of {n_eval} images are individually flagged: a split unlike train (see split_shift) blurs the "
                     "per-image evidence; check a sample of its labels by hand")  # fmt: skip
    elif max(r_eval, r_train) >= p["min_label_noise"] or not conflicts:
        parts.append(f"an estimated {percent(r_eval)} of {where} labels are wrong ({k_eval} of {n_eval} flagged"
                     + (f"; confident learning estimates {percent(est)}" if est is not None else "") + ")"
                     + (f": even a perfect model scores at most about {100 * (1 - r_eval):.0f}% on {s}"
                        if s and r_eval > 0 else ""))  # fmt: skip
    if s and r_train >= p["min_label_noise"]:
        parts.append(f"{percent(r_train)} of train labels too ({k_train} of {n_train}), which the model learns")
    if conflicts:
        parts.append(f"{len(conflicts)} images are copies that carry different labels")
    text = "; ".join(parts)
    confidence = "low" if estimate_only else confidence_level(lead, p["high_label_noise"], count, p)
    return Cause(
        "label_noise", points, confidence,
        {"share": round(r_eval, 4), "interval": wilson(k_eval, n_eval), "images": k_eval, "of": n_eval,
         "split": s, "train_share": round(r_train, 4) if s else None,
         "train_interval": wilson(k_train, n_train) if s else None,
         "estimated_rate": {k: v.get("estimated_rate") for k, v in noise.items()} or None,
         "accuracy_ceiling": round(1 - r_eval, 4), "text": text,
         "method": "share of labeled images that label_issue flags (given label's out-of-sample probability "
                   "under the rule's bound): wrong evaluation labels cap the measurable accuracy at 1 - share; "
                   f"train noise counts {p['train_noise_weight']:g}x"},
        {"checks": {c: len(x.by_check.get(c, [])) for c in LABEL_CHECKS},
         "paths": sorted((flagged & x.split_paths(s)) or flagged or conflicts)[:WORST_PATHS]},
        {"command": f"audit clean {x.dataset} --out CLEAN",
         "text": "review the flagged images first (report, label_issue: each names the label it looks like); "
                 f"fix the {where} labels before anything else: they cap the accuracy you can measure. "
                 "clean quarantines the confident ones (--relabel applies the suggested label instead)"},
    )  # fmt: skip


def _more_in(qpaths: dict[str, set[str]], x: Inputs, split: str, alpha: float) -> bool:
    """Fisher's exact test, one-sided: is the share of flagged images larger in ``split`` than in train?"""
    from scipy.stats import fisher_exact

    k1, n1 = len(qpaths.get(split, ())), len(x.split_paths(split))
    k0, n0 = len(qpaths.get("train", ())), len(x.split_paths("train"))
    return bool(fisher_exact([[k1, n1 - k1], [k0, n0 - k0]], alternative="greater")[1] < alpha)


def _split_shift(x: Inputs) -> Cause | None:
    p = x.params
    s = x.eval_split
    if s is None:
        x.not_assessed["split_shift"] = "no train split and evaluation split to compare"
        return None
    entry = next((e for e in x.report.get("shift") or [] if e.get("kind") == "split" and e.get("target") == s), None)
    props = [f for f in x.by_check.get("property_shift", []) if f["details"].get("target") == s]
    shares, qpaths = quality_shares(x)
    gap = shares.get(s, 0.0) - shares.get("train", 0.0)
    if gap >= p["quality_split_gap"] and not _more_in(qpaths, x, s, p["quality_gap_alpha"]):
        gap = 0.0  # a few flagged images in a small split: not evidence of another acquisition
    shifted = entry is not None and entry.get("verdict") == "shift"
    if not shifted and gap < p["quality_split_gap"] and not props:
        if entry is not None and entry.get("skipped"):
            x.not_assessed["split_shift"] = f"on the embeddings: {entry['skipped']} (property comparisons ran)"
        return None
    parts, points, direct = [], 0.0, shifted
    magnitude = entry.get("magnitude") if shifted else None
    if shifted:
        lo, hi = entry["auc_ci"]
        parts.append(f"a classifier tells train from {s} apart with AUC {entry['auc']:.2f} [{lo:.2f}, {hi:.2f}] "
                     f"(drift {magnitude:.2f})")  # fmt: skip
        points = max(points, 0.5 * magnitude)
        sup = entry.get("out_of_support") or {}
        if sup and sup.get("fraction") is not None:
            excess = max(0.0, sup["fraction"] - sup.get("expected", 0.0))
            parts.append(f"{percent(sup['fraction'])} of {s} lies outside train's support ({percent(sup['expected'])} "
                         "expected)")  # fmt: skip
            points = max(points, excess)
        moved = [c["class"] for c in entry.get("classes") or [] if c.get("significant")][:3]
        if moved:
            parts.append("classes that moved most: " + ", ".join(moved))
    if gap >= p["quality_split_gap"]:
        parts.append(f"{percent(shares[s])} of {s} images have a quality finding against {percent(shares['train'])} of "
                     "train")  # fmt: skip
        points = max(points, gap)
        direct = True
    if props:
        top = sorted(props, key=lambda f: -f["score"])[:3]
        parts.append("differs in " + ", ".join(f["details"].get("property", "?") +
                                             f" (KS {f['score']:.2f})" for f in top))  # fmt: skip
        points = max(points, 0.25 * max(f["score"] for f in props))
    high = (shifted and magnitude >= p["high_shift_magnitude"]) or gap >= p["high_quality_share"]
    n = len(x.split_paths(s))
    confidence = "high" if high and n >= p["min_evidence_images"] else ("medium" if direct else "low")
    augment = [f["details"].get("property") for f in props if f["details"].get("acquisition")]
    return Cause(
        "split_shift", points, confidence,
        {"magnitude": magnitude, "auc": entry.get("auc") if shifted else None,
         "auc_interval": entry.get("auc_ci") if shifted else None,
         "out_of_support": (entry.get("out_of_support") or {}).get("fraction") if shifted else None,
         "quality_share": {k: round(v, 4) for k, v in shares.items()}, "split": s,
         "text": f"{s} differs from train: " + "; ".join(parts),
         "method": "half the drift magnitude (2*AUC-1 of a train-vs-split classifier on the embeddings), the "
                   "excess share outside train's support, or the excess share of quality findings, whichever is "
                   "largest: images unlike anything in train are the ones a model gets wrong"},
        {"checks": {"split_shift": int(shifted), "property_shift": len(props)},
         "paths": sorted(qpaths.get(s, set()))[:WORST_PATHS] or
                  [i["path"] for i in ((entry or {}).get("out_of_support") or {}).get("images", [])[:WORST_PATHS]]},
        {"command": None,
         "text": f"make {s} and train come from the same acquisition: re-split at random (stratified) if the split "
                 f"follows a date, site or device; else add training images acquired like {s}"
                 + (f"; augment {', '.join(sorted(set(augment)))} (audit run adds brightness/contrast "
                    "augmentation from these findings)" if augment else "")},
    )  # fmt: skip


def _domain_gap(x: Inputs) -> Cause | None:
    p = x.params
    gap = x.report.get("pretraining_gap")
    if not gap:
        x.not_assessed["domain_gap"] = x.skipped("pretraining_gap") or "no embeddings (scan ran with --no-embed)"
        return None
    level = gap.get("level")
    if level not in ("moderate", "far"):
        return None
    n_unfreeze = p["unfreeze_far"] if level == "far" else p["unfreeze_moderate"]
    measures = []
    if gap.get("feature_gap") is not None:
        measures.append(f"feature gap {gap['feature_gap']:.2f}")
    if gap.get("head_confidence") is not None:
        measures.append(f"ImageNet head confidence {gap['head_confidence']:.2f}")
    return Cause(
        "domain_gap", p["gap_points_far"] if level == "far" else p["gap_points_moderate"],
        "medium" if level == "far" else "low",
        {"level": level, "feature_gap": gap.get("feature_gap"), "head_confidence": gap.get("head_confidence"),
         "text": f"the images are {level} from ImageNet ({', '.join(measures)}): frozen features transfer less "
                 "well, so a frozen-backbone model plateaus lower",
         "method": "BatchNorm activation statistics against the stored ImageNet ones, and the ImageNet head's "
                   "confidence; the points are the rules' prior for the level (not measured on this dataset)"},
        {"checks": {"pretraining_gap": len(x.by_check.get("pretraining_gap", []))}, "paths": []},
        {"command": f"audit finetune CLEAN --unfreeze {n_unfreeze}",
         "text": f"unfreeze the top {n_unfreeze} blocks in phase 2 (at the lower learning rate, BatchNorm frozen): "
                 "the more the domain differs, the more of the backbone must adapt"},
        prior=True,
    )  # fmt: skip


#: This module's estimators, in the order :func:`auditor.policy.diagnosis.diagnose` runs them.
ESTIMATORS = (_leakage, _label_noise, _split_shift, _domain_gap)

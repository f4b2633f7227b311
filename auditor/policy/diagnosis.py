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
"""

from __future__ import annotations

from dataclasses import dataclass, field

import pandas as pd

from auditor.core.constraints import AT_LEAST_ONE, FRACTION, NON_NEGATIVE, Int, Real
from auditor.core.paths import EVAL_SPLITS
from auditor.io.dataset import labeled

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

#: Per-image quality checks (image_quality), and the copy checks inside one split (duplicates).
QUALITY_CHECKS = ("blurry", "noisy", "dark", "bright", "low_contrast", "low_information", "low_resolution",
                  "odd_aspect_ratio", "corrupt", "truncated")  # fmt: skip
DUPLICATE_CHECKS = ("exact_duplicate", "near_duplicate")
LABEL_CHECKS = ("label_issue", "label_conflict")
#: Box checks whose findings are annotation-style problems (annotation_style).
BOX_CHECKS = ("box_out_of_bounds", "box_degenerate", "box_duplicate", "box_label_conflict", "box_tiny",
              "box_style_shift", "box_unknown_category", "box_image_size_mismatch")  # fmt: skip
WORST_PATHS = 5
NO_DATA_CAUSE = "no data cause found: look at the model and the training (see the fine-tuning section)"


def wilson(k: int, n: int) -> list[float] | None:
    """95% Wilson score interval of the share k/n (None when n == 0)."""
    if n <= 0:
        return None
    k = min(max(k, 0), n)
    z = 1.959963984540054
    p = k / n
    den = 1 + z * z / n
    mid = (p + z * z / (2 * n)) / den
    half = z * ((p * (1 - p) / n + z * z / (4 * n * n)) ** 0.5) / den
    return [round(max(0.0, mid - half), 4), round(min(1.0, mid + half), 4)]


def _pct(x: float) -> str:
    return f"{100 * x:.0f}%" if x >= 0.01 or x == 0 else f"{100 * x:.1f}%"


@dataclass
class Cause:
    cause: str
    points: float  # accuracy points at stake on the evaluation split (0..1): the ranking key
    confidence: str
    effect: dict
    evidence: dict
    fix: dict
    prior: bool = False  # the points are the rules' prior, not measured on this dataset: ranked after measured causes

    def entry(self, rank: int) -> dict:
        effect = {"points": round(float(self.points), 4), **self.effect}
        return {"cause": self.cause, "rank": rank, "confidence": self.confidence, "effect": effect,
                "evidence": self.evidence, "fix": self.fix}  # fmt: skip


@dataclass
class Inputs:
    """What the diagnosis reads, taken apart once."""

    findings: list[dict]
    table: pd.DataFrame  # path, split, label, ok
    report: dict
    params: dict
    dataset: str = "DATASET"
    by_check: dict[str, list[dict]] = field(default_factory=dict)
    eval_split: str | None = None
    not_assessed: dict[str, str] = field(default_factory=dict)
    labeled: pd.DataFrame = field(init=False, repr=False)  # the decoded rows with a label
    _paths: dict[str | None, set[str]] = field(default_factory=dict, repr=False)

    def __post_init__(self) -> None:
        for f in self.findings:
            self.by_check.setdefault(f["check"], []).append(f)
        splits = {str(s) for s in self.table["split"].dropna()} if "split" in self.table else set()
        self.eval_split = next((s for s in EVAL_SPLITS if s in splits), None)
        ok = self.table[self.table["ok"].astype(bool)] if "ok" in self.table else self.table
        self.labeled = labeled(ok) if "label" in ok else ok.iloc[:0]

    def split_paths(self, split: str | None) -> set[str]:
        """The paths of one split (every path for None), computed once per split."""
        if split not in self._paths:
            t = self.table
            self._paths[split] = set(t["path"]) if split is None else set(t.loc[t["split"] == split, "path"])
        return self._paths[split]

    def skipped(self, check: str) -> str | None:
        entry = (self.report.get("checks") or {}).get(check) or {}
        if not entry.get("enabled", True):
            return f"the {check} check is disabled in the rules"
        return entry.get("skipped")


def _confidence(value: float, high: float, count: int, p: dict) -> str:
    return "high" if value >= high and count >= p["min_evidence_images"] else "medium"


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
        "leakage", share, _confidence(share, p["high_leaked_share"], len(leaked), p),
        {"share": round(share, 4), "interval": wilson(len(leaked), n), "images": len(leaked), "of": n,
         "split": s,
         "text": f"{len(leaked)} of {n} {s} images ({_pct(share)}) have a verified copy in train: {s} accuracy "
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
        parts.append(f"confident learning estimates {_pct(est)} of {where} labels are wrong, though only {k_eval} of "
                     f"{n_eval} images are individually flagged: a split unlike train (see split_shift) blurs the "
                     "per-image evidence; check a sample of its labels by hand")  # fmt: skip
    elif max(r_eval, r_train) >= p["min_label_noise"] or not conflicts:
        parts.append(f"an estimated {_pct(r_eval)} of {where} labels are wrong ({k_eval} of {n_eval} flagged"
                     + (f"; confident learning estimates {_pct(est)}" if est is not None else "") + ")"
                     + (f": even a perfect model scores at most about {100 * (1 - r_eval):.0f}% on {s}"
                        if s and r_eval > 0 else ""))  # fmt: skip
    if s and r_train >= p["min_label_noise"]:
        parts.append(f"{_pct(r_train)} of train labels too ({k_train} of {n_train}), which the model learns")
    if conflicts:
        parts.append(f"{len(conflicts)} images are copies that carry different labels")
    text = "; ".join(parts)
    confidence = "low" if estimate_only else _confidence(lead, p["high_label_noise"], count, p)
    return Cause(
        "label_noise", points, confidence,
        {"share": round(r_eval, 4), "interval": wilson(k_eval, n_eval), "images": k_eval, "of": n_eval,
         "split": s, "train_share": round(r_train, 4) if s else None,
         "train_interval": wilson(k_train, n_train) if s else None,
         "estimated_rate": {k: v.get("estimated_rate") for k, v in noise.items()} or None,
         "accuracy_ceiling": round(1 - r_eval, 4), "text": text,
         "method": "share of labeled images that label_issue flags (confident learning, given-label probability "
                   "under the rule's bound): wrong evaluation labels cap the measurable accuracy at 1 - share; "
                   f"train noise counts {p['train_noise_weight']:g}x"},
        {"checks": {c: len(x.by_check.get(c, [])) for c in LABEL_CHECKS},
         "paths": sorted((flagged & x.split_paths(s)) or flagged or conflicts)[:WORST_PATHS]},
        {"command": f"audit clean {x.dataset} --out CLEAN",
         "text": "review the flagged images first (report, label_issue: each names the label it looks like); "
                 f"fix the {where} labels before anything else: they cap the accuracy you can measure. "
                 "clean quarantines the confident ones (--relabel applies the suggested label instead)"},
    )  # fmt: skip


def _quality_shares(x: Inputs) -> tuple[dict[str, float], dict[str, set[str]]]:
    flagged = {q for c in QUALITY_CHECKS for f in x.by_check.get(c, []) for q in f["paths"]
               if (f.get("details") or {}).get("scope") != "dataset"}  # fmt: skip
    shares, paths = {}, {}
    for split in ["train", x.eval_split] if x.eval_split else [None]:
        own = x.split_paths(split)
        hit = own & flagged
        shares[split or "all"] = len(hit) / len(own) if own else 0.0
        paths[split or "all"] = hit
    return shares, paths


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
    shares, qpaths = _quality_shares(x)
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
            parts.append(f"{_pct(sup['fraction'])} of {s} lies outside train's support ({_pct(sup['expected'])} "
                         "expected)")  # fmt: skip
            points = max(points, excess)
        moved = [c["class"] for c in entry.get("classes") or [] if c.get("significant")][:3]
        if moved:
            parts.append("classes that moved most: " + ", ".join(moved))
    if gap >= p["quality_split_gap"]:
        parts.append(f"{_pct(shares[s])} of {s} images have a quality finding against {_pct(shares['train'])} of "
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
                 f"({_pct(share)} of the evaluation images)",
         "method": "max/min train class counts among classes above the small-class bar; points: half the "
                   "evaluation share of minority classes, scaled by the imbalance"},
        {"checks": {"class_imbalance": len(x.by_check.get("class_imbalance", []))}, "paths": []},
        {"command": "audit finetune CLEAN",
         "text": f"class weights (audit finetune applies them past its balance ratio) and more images of {names}; "
                 "report per-class accuracy"},
    )  # fmt: skip


def _image_quality(x: Inputs) -> Cause | None:
    p = x.params
    shares, paths = _quality_shares(x)
    # what is common to the splits: an excess in the evaluation split is split_shift's; the share,
    # its interval and its count are those of the split where the share is smallest
    s = min(shares, key=lambda k: (shares[k], k))
    share = shares[s]
    if share < p["min_quality_share"]:
        return None
    counts = {c: len(x.by_check.get(c, [])) for c in QUALITY_CHECKS if x.by_check.get(c)}
    top = ", ".join(f"{c} {n}" for c, n in sorted(counts.items(), key=lambda kv: -kv[1])[:4])
    k = len(paths[s])
    n = len(x.split_paths(None if s == "all" else s))
    return Cause(
        "image_quality", 0.5 * share, _confidence(share, p["high_quality_share"], k, p),
        {"share": round(share, 4), "by_split": {k2: round(v, 4) for k2, v in shares.items()},
         "interval": wilson(k, n),
         "text": f"{_pct(share)} of the images have a quality finding" + (" in every split" if x.eval_split else "")
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
        "duplicates", 0.1 * share, _confidence(share, p["high_duplicate_share"], redundant, p),
        {"share": round(share, 4), "interval": wilson(redundant, n), "images": redundant,
         "text": f"{redundant} images ({_pct(share)}) are copies of others in the same split: the dataset is "
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
        "annotation_style", 0.5 * share, _confidence(share, p["high_box_share"], len(images), p),
        {"share": round(share, 4), "interval": wilson(len(images), n), "images": len(images),
         "text": f"{len(images)} images ({_pct(share)}) have box annotation problems ("
                 + ", ".join(f"{c} {k}" for c, k in counts.items()) + ")",
         "method": "share of images with a box finding; points: half of it"},
        {"checks": counts, "paths": sorted(images)[:WORST_PATHS]},
        {"command": f"audit clean {x.dataset} --out CLEAN",
         "text": "clip or drop the invalid boxes (clean); re-annotate the split whose box style differs with "
                 "one style guide"},
    )  # fmt: skip


ESTIMATORS = (_leakage, _label_noise, _split_shift, _domain_gap, _small_dataset, _class_imbalance, _image_quality,
              _duplicates, _annotation_style)  # fmt: skip
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
        c.effect["text"] += (f"; after fine-tuning, these images are {_pct(g['share_of_val'])} of val and "
                             f"{_pct(g['share_of_errors'])} of its errors")  # fmt: skip
        if (g["excess"] or 0) >= params["error_share_excess"] and g["errors"] >= params["min_evidence_images"]:
            c.confidence = "high"
    causes += _training_causes(curves, params)
    ranked = rank(causes)
    return ranked, summary(ranked, x.eval_split if x else None, x.not_assessed if x else {})

"""Distribution shift checks: ``domain_shift``, ``split_shift``, ``property_shift``,
``label_shift``, ``pretraining_gap``. They judge the numbers of :mod:`auditor.analysis.shift`
(computed once per scan) with the thresholds of the rules file.
"""

from __future__ import annotations

from auditor.analysis.shift import (
    analyse,
    analysis_params,
    dataset_gap,
    explanations,
    format_p,
    gap_level,
    pairs,
    rule_params,
    verdict,
)
from auditor.checks.registry import register
from auditor.core.constraints import FRACTION, NON_NEGATIVE, PROBABILITY_LEVEL, Int, Real
from auditor.core.context import NO_EMBEDDINGS, CheckContext
from auditor.core.findings import Finding

#: min_images: the embedding tests need a few rows a side (8 at least). class_*: the per-class
#: comparisons (images per side at least / at most, permutations, the family alpha Bonferroni
#: splits over the classes). support_excess_factor: the out-of-support share is explained when
#: it exceeds this many times the share expected of a same-distribution sample.
SHIFT_PARAMS = {"alpha": PROBABILITY_LEVEL, "min_magnitude": FRACTION, "min_images": Int(8),
                "max_samples": Int(8), "permutations": Int(10), "class_alpha": PROBABILITY_LEVEL,
                "class_min_images": Int(2), "class_max_samples": Int(2), "class_permutations": Int(10),
                "class_max_permutations": Int(10), "support_excess_factor": Real(1)}  # fmt: skip


def _shift_findings(ctx: CheckContext, params: dict, kind: str, check: str) -> list[Finding]:
    out = []
    mine = [p for p in pairs(ctx) if p.kind == kind]
    if not mine:
        if kind == "domain":
            return ctx.skip(check, "no --source given")
        if ctx.reference is not None:
            return ctx.skip(check, "the dataset is compared with --source instead (domain_shift)")
        return ctx.skip(check, "no train split and another split to compare")
    reasons = []
    for pair in mine:
        result = analyse(ctx, pair, params)
        if result["skipped"]:
            reasons.append(f"{pair.reference} vs {pair.target}: {result['skipped']}")
            ctx.skipped[check] = "; ".join(reasons)
        emb = result["embedding"]
        if verdict(emb, params) != "shift":
            continue
        lo, hi = emb["auc_ci"]
        why = explanations(result, rule_params(ctx, "property_shift"), analysis_params(ctx, result["kind"]))
        message = (f"{pair.target} differs from {pair.reference}: a domain classifier tells them apart with AUC "
                   f"{emb['auc']:.2f} [{lo:.2f}, {hi:.2f}] (drift {emb['magnitude']:.2f}, {format_p(emb['p_value'])}, "
                   f"MMD² {emb['mmd2']:.4f})" + (f"; {why[0]}" if why else ""))  # fmt: skip
        details = {k: emb[k] for k in ("auc", "auc_ci", "magnitude", "p_value", "mmd2", "fid", "kid", "n_sampled")}
        out.append(
            Finding(
                check,
                [],
                emb["magnitude"],
                message,
                {"reference": pair.reference, "target": pair.target, **details, "explanations": why},
            )
        )
    return out


@register("domain_shift", "shift", SHIFT_PARAMS)
def domain_shift(ctx: CheckContext, params: dict) -> list[Finding]:
    """The dataset is from a different distribution than the source set (``--source``):
    significant (p < alpha: MMD permutation test and held-out classifier test, Bonferroni) and large
    (drift magnitude 2*AUC-1 >= min_magnitude). Score: the drift magnitude (0..1)."""
    return _shift_findings(ctx, params, "domain", "domain_shift")


@register("split_shift", "shift", SHIFT_PARAMS)
def split_shift(ctx: CheckContext, params: dict) -> list[Finding]:
    """A split (val, test, ...) is from a different distribution than ``train``; same test
    and thresholds as ``domain_shift``. Score: the drift magnitude (0..1)."""
    return _shift_findings(ctx, params, "split", "split_shift")


@register("property_shift", "shift", {"alpha": PROBABILITY_LEVEL, "min_statistic": FRACTION})
def property_shift(ctx: CheckContext, params: dict) -> list[Finding]:
    """A measured property (brightness, contrast, sharpness, noise, resolution, aspect
    ratio, colour, colour mode, format, JPEG quality) is distributed differently on the two
    sides of a comparison: KS statistic (or total variation distance for categories) at
    least ``min_statistic`` with p < alpha. Works without embeddings. Score: the statistic."""
    out = []
    for pair in pairs(ctx):
        result = analyse(ctx, pair, analysis_params(ctx, pair.kind))
        for rank, p in enumerate(result["properties"], 1):
            if p["p_value"] >= params["alpha"] or p["statistic"] < params["min_statistic"]:
                continue
            tag = " (acquisition difference: can fake a shift)" if p["acquisition"] else ""
            details = {k: v for k, v in p.items() if k != "text"}
            out.append(
                Finding(
                    "property_shift",
                    [],
                    p["statistic"],
                    p["text"] + tag,
                    {"reference": pair.reference, "target": pair.target, "rank": rank, **details},
                )
            )
    return out


@register("label_shift", "shift", {"alpha": PROBABILITY_LEVEL, "min_tv_distance": FRACTION})
def label_shift(ctx: CheckContext, params: dict) -> list[Finding]:
    """Class proportions differ between the sides of a comparison (chi-square p < alpha and
    total variation distance >= ``min_tv_distance``), or, against ``--source``, a class is
    present on one side only (between splits that is ``unseen_class``). Skipped for
    unlabeled data. Score: the total variation distance (0..1)."""
    out = []
    for pair in pairs(ctx):
        labels = analyse(ctx, pair, analysis_params(ctx, pair.kind))["labels"]
        if labels is None:
            continue
        moved = labels["p_value"] < params["alpha"] and labels["tv_distance"] >= params["min_tv_distance"]
        # between splits, a class on one side only is unseen_class's finding: not counted twice
        one_sided = pair.kind == "domain" and bool(labels["only_reference"] or labels["only_target"])
        if not (moved or one_sided):
            continue
        parts = []
        if moved:
            top = ", ".join(f"{m['class']} {m['reference_share']:.0%} -> {m['target_share']:.0%}"
                            for m in labels["moved"][:3])  # fmt: skip
            parts.append(f"class proportions differ (total variation {labels['tv_distance']:.2f}, "
                         f"{format_p(labels['p_value'])}): {top}")  # fmt: skip
        if one_sided and labels["only_target"]:
            parts.append(f"only in {pair.target}: {', '.join(labels['only_target'][:5])}")
        if one_sided and labels["only_reference"]:
            parts.append(f"only in {pair.reference}: {', '.join(labels['only_reference'][:5])}")
        out.append(
            Finding(
                "label_shift",
                [],
                labels["tv_distance"],
                f"{pair.reference} vs {pair.target}: " + "; ".join(parts),
                {"reference": pair.reference, "target": pair.target, **labels},
            )
        )
    return out


GAP_PARAMS = {"min_images": Int(2), "moderate_feature_gap": NON_NEGATIVE, "far_feature_gap": NON_NEGATIVE,
              "moderate_confidence": FRACTION, "far_confidence": FRACTION}  # fmt: skip


@register("pretraining_gap", "shift", GAP_PARAMS)
def pretraining_gap(ctx: CheckContext, params: dict) -> list[Finding]:
    """The dataset is far from the backbone's pretraining domain (ImageNet): its activation
    statistics at the BatchNorm layers differ from the stored ones (feature gap) and/or the
    ImageNet head is unsure of it (mean max-softmax). One dataset-level finding when the
    level is ``moderate`` or ``far`` (bands in the rules). Score: the feature gap (or 1 -
    head confidence when the backbone records no BatchNorm statistics)."""
    gap = dataset_gap(ctx)
    if gap is None:
        emb = ctx.embeddings
        why = (NO_EMBEDDINGS if emb is None else
               "the backbone records neither BatchNorm statistics nor ImageNet probabilities"
               if emb.bn_stats is None and emb.probs is None else "no decoded image has an embedding")  # fmt: skip
        return ctx.skip("pretraining_gap", why)
    if gap["images"] < params["min_images"]:
        return ctx.skip("pretraining_gap", f"fewer than {params['min_images']} embedded images")
    level = gap_level(gap, params)
    if level == "near":
        return []
    parts = []
    if gap["feature_gap"] is not None:
        groups = ", ".join(f"{k} {v:.2f}" for k, v in gap["groups"].items())
        parts.append(f"feature gap {gap['feature_gap']:.2f} (by layer group: {groups})")
    if gap["head_confidence"] is not None:
        parts.append(f"ImageNet head confidence {gap['head_confidence']:.2f}")
    advice = ("expect to unfreeze more of the backbone" if level == "far"
              else "partial unfreezing should help")  # fmt: skip
    score = gap["feature_gap"] if gap["feature_gap"] is not None else 1.0 - gap["head_confidence"]
    return [
        Finding(
            "pretraining_gap",
            [],
            score,
            f"{level} from the pretraining domain: {'; '.join(parts)}; {advice}",
            {"level": level, **gap},
        )
    ]

"""Distribution shift: ``domain_shift``, ``split_shift``, ``property_shift``, ``label_shift``,
``pretraining_gap``.

What is compared (:func:`pairs`): with a source set (``audit scan TARGET --source SOURCE``)
the source against the whole dataset; without one, the ``train`` split against each other
split. Each comparison is analysed once per scan (:func:`analyse`, cached in the context):
two-sample tests on the embeddings (:mod:`auditor.drift`), property and label comparisons
(:mod:`auditor.explain`), class-conditional shift and the target images furthest outside
the reference's support. The checks turn those numbers into findings with the thresholds
of the rules file; :func:`shift_section` writes the numbers into ``report.json``.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd

from .. import drift
from ..constraints import FRACTION, NON_NEGATIVE, PROBABILITY_LEVEL, Int, Real
from ..core.findings import Finding
from ..core.paths import EVAL_SPLITS
from ..explain import compare_labels, compare_properties
from .context import NO_EMBEDDINGS, CheckContext
from .registry import register

#: Rows per side for FID (covariances are O(n d^2)).
FID_CAP = 10_000
#: Out-of-support target images listed per comparison; rows per side for the support
#: distances (exact nearest neighbours, O(n m d)).
SUPPORT_TOP, SUPPORT_CAP = 12, 20_000

#: min_images: the embedding tests need a few rows a side (8 at least). class_*: the per-class
#: comparisons (images per side at least / at most, permutations, the family alpha Bonferroni
#: splits over the classes). support_excess_factor: the out-of-support share is explained when
#: it exceeds this many times the share expected of a same-distribution sample.
SHIFT_PARAMS = {"alpha": PROBABILITY_LEVEL, "min_magnitude": FRACTION, "min_images": Int(8),
                "max_samples": Int(8), "permutations": Int(10), "class_alpha": PROBABILITY_LEVEL,
                "class_min_images": Int(2), "class_max_samples": Int(2), "class_permutations": Int(10),
                "class_max_permutations": Int(10), "support_excess_factor": Real(1)}  # fmt: skip


@dataclass
class Pair:
    kind: str  # "domain" (source vs dataset) or "split" (train vs another split)
    reference: str  # "source" or a split name
    target: str  # "dataset" or a split name
    ref_rows: pd.DataFrame  # decoded rows of the reference side
    tgt_rows: pd.DataFrame

    @property
    def key(self) -> tuple[str, str]:
        return self.reference, self.target


def pairs(ctx: CheckContext) -> list[Pair]:
    """The comparisons this scan makes (see the module docstring)."""
    if ctx.reference is not None:
        ref = ctx.reference[ctx.reference["ok"]]
        return [Pair("domain", "source", "dataset", ref, ctx.ok)]
    ok = ctx.ok
    splits = {str(s) for s in ok["split"].dropna()}
    if "train" not in splits:
        return []
    train = ok[ok["split"] == "train"]
    others = [s for s in EVAL_SPLITS if s in splits] + sorted(splits - set(EVAL_SPLITS) - {"train"})
    return [Pair("split", "train", s, train, ok[ok["split"] == s]) for s in others]


def _vectors(ctx: CheckContext, rows: pd.DataFrame) -> tuple[np.ndarray, pd.DataFrame]:
    vectors, mask = ctx.embeddings.rows(rows["content_hash"])
    return vectors[mask], rows[mask]


def _class_shift(
    x: np.ndarray, y: np.ndarray, xl: pd.Series, yl: pd.Series, bandwidth: float, params: dict
) -> list[dict]:
    """Per shared class with at least ``class_min_images`` images on both sides (at most
    ``class_max_samples`` drawn): MMD² and its permutation p-value; ``significant`` after a
    Bonferroni correction of ``class_alpha`` over the classes compared (enough permutations,
    40 a class between ``class_permutations`` and ``class_max_permutations``, that a
    corrected p can be reached)."""
    out = []
    shared = sorted({c for c in xl.dropna()} & {c for c in yl.dropna()})
    rng = np.random.default_rng(0)
    least, cap = params["class_min_images"], params["class_max_samples"]
    eligible = [c for c in shared if (xl == c).sum() >= least and (yl == c).sum() >= least]
    permutations = int(min(params["class_max_permutations"], max(params["class_permutations"], 40 * len(eligible))))
    for c in eligible:
        xi = np.flatnonzero((xl == c).to_numpy())
        yi = np.flatnonzero((yl == c).to_numpy())
        xi, yi = xi[drift.subsample(len(xi), cap, rng)], yi[drift.subsample(len(yi), cap, rng)]
        res = drift.mmd_test(drift.normalize(x[xi]), drift.normalize(y[yi]), permutations, 0, bandwidth)
        significant = res.p_value < params["class_alpha"] / len(eligible)
        out.append({"class": str(c), "mmd2": res.mmd2, "p_value": res.p_value, "n_reference": len(xi),
                    "n_target": len(yi), "significant": significant})  # fmt: skip
    return sorted(out, key=lambda d: (-d["mmd2"], d["class"]))


def _embedding_stats(x: np.ndarray, y: np.ndarray, xr: pd.DataFrame, yr: pd.DataFrame, params: dict) -> dict:
    rng = np.random.default_rng(0)
    cap = params["max_samples"]
    xi, yi = drift.subsample(len(x), cap, rng), drift.subsample(len(y), cap, rng)
    test = drift.two_sample(x[xi], y[yi], params["permutations"], seed=0)
    mmd, c2 = test.mmd, test.c2st
    fi, fj = drift.subsample(len(x), FID_CAP, rng), drift.subsample(len(y), FID_CAP, rng)
    kid_mean, kid_std = drift.kid(x[fi], y[fj], seed=0)
    si, sj = drift.subsample(len(x), SUPPORT_CAP, rng), drift.subsample(len(y), SUPPORT_CAP, rng)
    sup = drift.support(x[si], y[sj])
    order = sj[np.argsort(-sup.target_distance, kind="stable")[:SUPPORT_TOP]]
    dist_of = dict(zip(sj.tolist(), sup.target_distance.tolist(), strict=True))
    return {
        "n_sampled": [len(xi), len(yi)],
        "mmd2": mmd.mmd2, "mmd_p_value": mmd.p_value, "mmd_bandwidth": mmd.bandwidth,
        "permutations": mmd.permutations,
        "auc": c2.auc, "auc_ci": list(c2.auc_ci), "magnitude": c2.magnitude, "c2st_p_value": c2.p_value,
        "p_value": test.p_value,
        "fid": drift.fid(x[fi], y[fj]), "kid": kid_mean, "kid_std": kid_std,
        "out_of_support": {
            "fraction": sup.outside_fraction, "expected": 1.0 - sup.quantile, "threshold": sup.threshold,
            "images": [{"path": str(yr["path"].iloc[i]), "distance": dist_of[int(i)]} for i in order],
            "n_sampled": [len(si), len(sj)],
        },
        "classes": _class_shift(x, y, xr["label"].reset_index(drop=True), yr["label"].reset_index(drop=True),
                                mmd.bandwidth, params),
    }  # fmt: skip


def analyse(ctx: CheckContext, pair: Pair, params: dict) -> dict:
    """All numbers of one comparison (cached per context). ``embedding`` is None with a
    ``skipped`` reason when the scan has no embeddings or a side has too few images."""
    cache = ctx._cache.setdefault("shift", {})
    if pair.key in cache:
        return cache[pair.key]
    result: dict = {
        "kind": pair.kind, "reference": pair.reference, "target": pair.target,
        "n_reference": len(pair.ref_rows), "n_target": len(pair.tgt_rows),
        "properties": compare_properties(pair.ref_rows, pair.tgt_rows, pair.reference, pair.target),
        "labels": compare_labels(pair.ref_rows["label"], pair.tgt_rows["label"]),
        "embedding": None, "skipped": None,
    }  # fmt: skip
    if ctx.embeddings is None:
        result["skipped"] = NO_EMBEDDINGS
    else:
        x, xr = _vectors(ctx, pair.ref_rows)
        y, yr = _vectors(ctx, pair.tgt_rows)
        need = params["min_images"]
        if min(len(x), len(y)) < need:
            result["skipped"] = f"fewer than {need} embedded images on a side ({len(x)} vs {len(y)})"
        else:
            # at least the rows the tests need are drawn, whatever max_samples says
            result["embedding"] = _embedding_stats(x, y, xr, yr, {**params, "max_samples": max(params["max_samples"],
                                                                                                 need)})  # fmt: skip
    cache[pair.key] = result
    return result


def verdict(stats: dict | None, params: dict) -> str:
    """``shift`` when the difference is significant (p < alpha) *and* large (drift magnitude
    2*AUC-1 >= min_magnitude); ``minor`` when significant but small (expected on large
    samples); ``none``; ``skipped`` without embedding statistics."""
    if stats is None:
        return "skipped"
    if stats["p_value"] >= params["alpha"]:
        return "none"
    return "shift" if stats["magnitude"] >= params["min_magnitude"] else "minor"


def _p(p: float) -> str:
    return "p<0.001" if p < 0.001 else f"p={p:.3f}"


def explanations(result: dict, property_params: dict, analysis_params: dict, top: int = 3) -> list[str]:
    """The sentences that say what differs, most telling first: the properties that pass
    the ``property_shift`` thresholds (``property_params``), one-sided classes, the classes
    that moved (Bonferroni-significant), and the share of target images outside the support
    when it exceeds ``support_excess_factor`` (``analysis_params``) times the expected."""
    pp = property_params
    out = []
    props = [p for p in result["properties"] if p["p_value"] < pp["alpha"] and p["statistic"] >= pp["min_statistic"]]
    props = props[:top]
    for p in props:
        extra = " (an acquisition difference: it alone can make the sets look different)" if p["acquisition"] else ""
        out.append(p["text"] + extra)
    labels = result["labels"]
    if labels and (labels["only_reference"] or labels["only_target"]):
        if labels["only_target"]:
            out.append(f"classes only in {result['target']}: {', '.join(labels['only_target'][:5])}")
        if labels["only_reference"]:
            out.append(f"classes only in {result['reference']}: {', '.join(labels['only_reference'][:5])}")
    emb = result["embedding"]
    if emb:
        moved = [c for c in emb["classes"] if c["significant"]][:3]
        if moved:
            out.append("classes that moved most: " + ", ".join(f"{c['class']} (MMD² {c['mmd2']:.3f})" for c in moved))
        sup = emb["out_of_support"]
        if sup["fraction"] > analysis_params["support_excess_factor"] * sup["expected"]:
            out.append(f"{sup['fraction']:.0%} of {result['target']} images lie outside the {result['reference']}'s "
                       f"support (about {sup['expected']:.0%} expected)")  # fmt: skip
    return out


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
        why = explanations(result, rule_params(ctx, "property_shift"), _analysis_params(ctx, result["kind"]))
        message = (f"{pair.target} differs from {pair.reference}: a domain classifier tells them apart with AUC "
                   f"{emb['auc']:.2f} [{lo:.2f}, {hi:.2f}] (drift {emb['magnitude']:.2f}, {_p(emb['p_value'])}, "
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


def rule_params(ctx: CheckContext, name: str) -> dict:
    """The params of rule ``name`` for this scan (also when the rule is disabled: the
    comparisons still run for the report), from ``ctx.shift_params`` (filled from the rules by
    :func:`auditor.api.check_context`). No threshold lives in this module, and it never
    loads rules itself."""
    if name not in ctx.shift_params:
        raise KeyError(f"the check context carries no params of rule {name!r} (shift_params; see check_context)")
    return ctx.shift_params[name]


def _analysis_params(ctx: CheckContext, kind: str) -> dict:
    """The comparison parameters of the rule that owns this kind of pair."""
    return rule_params(ctx, "domain_shift" if kind == "domain" else "split_shift")


@register("property_shift", "shift", {"alpha": PROBABILITY_LEVEL, "min_statistic": FRACTION})
def property_shift(ctx: CheckContext, params: dict) -> list[Finding]:
    """A measured property (brightness, contrast, sharpness, noise, resolution, aspect
    ratio, colour, colour mode, format, JPEG quality) is distributed differently on the two
    sides of a comparison: KS statistic (or total variation distance for categories) at
    least ``min_statistic`` with p < alpha. Works without embeddings. Score: the statistic."""
    out = []
    for pair in pairs(ctx):
        result = analyse(ctx, pair, _analysis_params(ctx, pair.kind))
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
        labels = analyse(ctx, pair, _analysis_params(ctx, pair.kind))["labels"]
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
                         f"{_p(labels['p_value'])}): {top}")  # fmt: skip
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


def gap_level(gap: dict, params: dict) -> str:
    """``near``, ``moderate`` or ``far``: the worse of the feature-gap and head-confidence
    bands (each measure only when the backbone records it)."""
    levels = ["near"]
    fg, conf = gap.get("feature_gap"), gap.get("head_confidence")
    if fg is not None:
        levels.append("far" if fg >= params["far_feature_gap"] else
                      "moderate" if fg >= params["moderate_feature_gap"] else "near")  # fmt: skip
    if conf is not None:
        levels.append("far" if conf <= params["far_confidence"] else
                      "moderate" if conf <= params["moderate_confidence"] else "near")  # fmt: skip
    return max(levels, key=["near", "moderate", "far"].index)


def dataset_gap(ctx: CheckContext) -> dict | None:
    """The pretraining-gap measures of the dataset's decoded, embedded images (cached)."""
    if "gap" not in ctx._cache:
        gap = None
        emb = ctx.embeddings
        if emb is not None and (emb.bn_stats is not None or emb.probs is not None):
            from ..pretraining import pretraining_gap

            idx = emb.index()
            pos = sorted({idx[h] for h in ctx.ok["content_hash"] if isinstance(h, str) and h in idx})
            gap = pretraining_gap(
                emb.bn_stats[pos] if emb.bn_stats is not None else None, emb.stat_layers, emb.bn_reference,
                emb.probs[pos] if emb.probs is not None else None,
            )  # fmt: skip
        ctx._cache["gap"] = gap
    return ctx._cache["gap"]


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


#: Per shift entry, the report draws overlaid histograms of the numeric properties that differ
#: most (report.json keeps the bins, so that report.html can be drawn again from it alone).
MAX_HISTOGRAMS = 4
HIST_BINS = 24


def property_histograms(pair: Pair, properties: list[dict]) -> list[dict]:
    """Reference and target histograms (shares per bin, 4 decimals; common bins between the
    0.5% and 99.5% quantiles of both sides, log10 where the property is read on a log scale)
    of the first :data:`MAX_HISTOGRAMS` numeric ``properties`` (most different first)."""
    from ..explain import PROPERTIES

    by_name = {p.name: p for p in PROPERTIES}
    out = []
    for prop in [p for p in properties if p["kind"] == "numeric"][:MAX_HISTOGRAMS]:
        spec = by_name[prop["property"]]
        r = spec.values(pair.ref_rows).dropna().to_numpy(float)
        t = spec.values(pair.tgt_rows).dropna().to_numpy(float)
        if spec.log:
            r, t = np.log10(r[r > 0]), np.log10(t[t > 0])
        both = np.concatenate([r, t])
        if len(r) < 2 or len(t) < 2 or not np.isfinite(both).all():
            continue
        lo, hi = (float(x) for x in np.quantile(both, [0.005, 0.995]))
        if hi <= lo:
            lo, hi = lo - 0.5, hi + 0.5
        edges = np.linspace(lo, hi, HIST_BINS + 1)
        shares = [np.histogram(np.clip(x, lo, hi), edges)[0] / len(x) for x in (r, t)]
        unit = f" (log10 {spec.unit})" if spec.log and spec.unit else (" (log10)" if spec.log else "")
        out.append({"property": spec.name, "title": spec.title + unit, "ks": prop["statistic"], "lo": lo, "hi": hi,
                    "reference": [round(float(v), 4) for v in shares[0]],
                    "target": [round(float(v), 4) for v in shares[1]]})  # fmt: skip
    return out


def shift_section(ctx: CheckContext) -> list[dict]:
    """The ``shift`` section of ``report.json``: one entry per comparison, with the
    verdict under the owning rule's thresholds and the explanations."""
    out = []
    for pair in pairs(ctx):
        params = _analysis_params(ctx, pair.kind)
        result = analyse(ctx, pair, params)
        emb = result["embedding"] or {}
        entry = {k: result[k] for k in ("kind", "reference", "target", "n_reference", "n_target")}
        entry.update({k: emb.get(k) for k in ("mmd2", "p_value", "mmd_p_value", "c2st_p_value", "auc", "auc_ci",
                                              "magnitude", "fid", "kid", "kid_std", "n_sampled")})  # fmt: skip
        entry["fid_note"] = "backbone-specific: compare only between runs with the same backbone"
        entry["verdict"] = verdict(result["embedding"], params)
        entry["skipped"] = result["skipped"]
        entry["explanations"] = explanations(result, rule_params(ctx, "property_shift"), params)
        entry["properties"] = result["properties"]
        entry["labels"] = result["labels"]
        entry["classes"] = emb.get("classes", [])
        entry["out_of_support"] = emb.get("out_of_support")
        entry["histograms"] = property_histograms(pair, result["properties"])
        out.append(entry)
    return out

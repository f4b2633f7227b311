"""The shift analysis: what a scan compares and the numbers of each comparison.

What is compared (:func:`pairs`): with a source set (``audit scan TARGET --source SOURCE``)
the source against the whole dataset; without one, the ``train`` split against each other
split. Each comparison is analysed once per scan (:func:`analyse`, kept in
``ctx.analyses.shift``): two-sample tests on the embeddings (:mod:`auditor.analysis.drift`),
property and label comparisons (:mod:`auditor.analysis.explain`), class-conditional shift and
the target images furthest outside the reference's support. :func:`dataset_gap` measures the
distance from the backbone's pretraining domain. Plain results, no findings: the checks in
:mod:`auditor.checks.shift` judge them with the rules' thresholds and the report
(:mod:`auditor.report.build`) writes them out.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd

from auditor.analysis import drift
from auditor.analysis.explain import compare_labels, compare_properties
from auditor.core.context import NO_EMBEDDINGS, CheckContext
from auditor.core.paths import EVAL_SPLITS
from auditor.embed.blocks import RowSubset

#: Rows per side for FID (covariances are O(n d^2)).
FID_CAP = 10_000


#: Out-of-support target images listed per comparison; rows per side for the support
#: distances (exact nearest neighbours, O(n m d)).
SUPPORT_TOP, SUPPORT_CAP = 12, 20_000


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


def _vectors(ctx: CheckContext, rows: pd.DataFrame) -> tuple[RowSubset, pd.DataFrame]:
    """(the embeddings of ``rows`` that have one, those rows). Read on indexing: the tests
    draw samples (:func:`_embedding_stats`), and the train split of 100,000 images would
    hold 460 MB (twice over while masked)."""
    pos = ctx.embeddings.positions(rows["content_hash"])
    mask = pos >= 0
    return RowSubset(ctx.embeddings.vectors, pos[mask]), rows[mask]


def _class_shift(
    x: RowSubset, y: RowSubset, xl: pd.Series, yl: pd.Series, bandwidth: float, params: dict
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


def _embedding_stats(x: RowSubset, y: RowSubset, xr: pd.DataFrame, yr: pd.DataFrame, params: dict) -> dict:
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
    cache = ctx.analyses.shift
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


def format_p(p: float) -> str:
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


def rule_params(ctx: CheckContext, name: str) -> dict:
    """The params of rule ``name`` for this scan (also when the rule is disabled: the
    comparisons still run for the report), from ``ctx.shift_params`` (filled from the rules by
    :func:`auditor.pipeline.api.check_context`). No threshold lives in this module, and it never
    loads rules itself."""
    if name not in ctx.shift_params:
        raise KeyError(f"the check context carries no params of rule {name!r} (shift_params; see check_context)")
    return ctx.shift_params[name]


def analysis_params(ctx: CheckContext, kind: str) -> dict:
    """The comparison parameters of the rule that owns this kind of pair."""
    return rule_params(ctx, "domain_shift" if kind == "domain" else "split_shift")


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
    if not ctx.analyses.gap_done:
        gap = None
        emb = ctx.embeddings
        if emb is not None and (emb.bn_stats is not None or emb.probs is not None):
            from auditor.analysis.pretraining import pretraining_gap
            from auditor.embed.blocks import RowSubset

            idx = emb.index()
            pos = sorted({idx[h] for h in ctx.ok["content_hash"] if isinstance(h, str) and h in idx})
            # pooled a block at a time: the statistics are 12 kB an image, never held whole
            gap = pretraining_gap(
                RowSubset(emb.bn_stats, pos) if emb.bn_stats is not None else None, emb.stat_layers, emb.bn_reference,
                RowSubset(emb.probs, pos) if emb.probs is not None else None,
            )  # fmt: skip
        ctx.analyses.gap, ctx.analyses.gap_done = gap, True
    return ctx.analyses.gap

"""Checks in the backbone's feature space: ``outlier``.

Skipped (no findings) when the scan ran without embeddings.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from auditor.checks.quality import robust_z
from auditor.checks.registry import register
from auditor.core.constraints import AT_LEAST_ONE, POSITIVE, Real
from auditor.core.context import NO_EMBEDDINGS, CheckContext
from auditor.core.findings import Finding
from auditor.embed.neighbors import knn, ok_knn


def _class_distance(vectors: np.ndarray, labels: pd.Series, k: int) -> np.ndarray:
    """Mean cosine distance of each row to its ``k`` nearest rows of the same label
    (NaN for unlabeled rows and classes with at most ``k`` members)."""
    out = np.full(len(vectors), np.nan)
    for label in sorted({x for x in labels if isinstance(x, str)}):
        rows = np.flatnonzero((labels == label).to_numpy())
        if len(rows) <= k:
            continue
        _, sims = knn(vectors[rows], k)
        out[rows] = 1.0 - sims.mean(axis=1)
    return out


def above_gap(z: pd.Series, start: float, gap: float) -> pd.Series:
    """The rows of the upper tail that stand apart: sorted from the largest down, every value
    above the lowest one that exceeds ``start`` and is at least ``gap`` above the next value
    down. A smooth tail (no such gap) gives none; one image, or a small group, far beyond the
    rest gives those. NaN counts as low."""
    values = z.fillna(-np.inf).to_numpy(float)
    order = np.argsort(-values, kind="stable")
    ranked = values[order]
    top = 0
    for j in range(len(ranked) - 1):
        if ranked[j] <= start:
            break
        if ranked[j] - ranked[j + 1] >= gap:
            top = j + 1
    out = np.zeros(len(values), bool)
    out[order[:top]] = True
    return pd.Series(out, index=z.index)


@register(
    "outlier",
    "embeddings",
    {"neighbours": AT_LEAST_ONE, "robust_z": POSITIVE, "tail_z": POSITIVE, "tail_gap": POSITIVE,
     "class_robust_z": POSITIVE, "min_distance_ratio": Real(0, 100)},
)  # fmt: skip
def outlier(ctx: CheckContext, params: dict) -> list[Finding]:
    """Images far from everything else in the backbone's feature space: the mean cosine
    distance to their ``neighbours`` nearest images is ``robust_z`` robust SDs above the
    dataset's median, or more than ``tail_z`` and set apart from every image below it by a gap
    of ``tail_gap`` robust SDs (:func:`above_gap`: in a varied set of photos one digit stands
    2.8 SDs out, while the long smooth tail of a set of textures reaches 3.2 without any image
    standing apart); and at least ``min_distance_ratio`` x that median (a relative floor: a
    cosine distance means something else for 8-px digits than for photos). For labeled data
    also far from the nearest images of their own class (``class_robust_z`` above the class
    distances' median, the same floor): a wrong-class or off-topic image. Score: the distance
    (0..2, cosine distance)."""
    got = ctx.ok_vectors()
    if got is None:
        return ctx.skip("outlier", NO_EMBEDDINGS)
    t = ctx.ok.reset_index(drop=True)
    vectors, mask = got
    k = params["neighbours"]
    if not ctx.relative_ok(int(mask.sum())) or mask.sum() <= k:
        return ctx.skip("outlier", f"too few embedded images ({int(mask.sum())}) to say what is typical")
    _, sims = ok_knn(ctx, k)
    dist = pd.Series(np.where(mask, 1.0 - sims.mean(axis=1), np.nan))
    z = robust_z(dist)
    class_dist = pd.Series(_class_distance(vectors, t["label"].where(mask), k))
    class_z = robust_z(class_dist) if class_dist.notna().sum() >= 2 else pd.Series(np.nan, index=class_dist.index)
    floor = params["min_distance_ratio"] * float(dist.median())
    far = ((z > params["robust_z"]) | above_gap(z, params["tail_z"], params["tail_gap"])) & (dist > floor)
    far_class = (class_z > params["class_robust_z"]) & (class_dist > floor)
    flagged = np.flatnonzero((far | far_class).fillna(False).to_numpy())
    out = []
    for i in flagged:
        row = t.iloc[i]
        own = bool(far_class.iloc[i]) and not bool(far.iloc[i])
        score = float(class_dist.iloc[i] if own else dist.iloc[i])
        where = f"its class '{row['label']}'" if own else "the rest of the dataset"
        out.append(Finding(
            "outlier", [row["path"]], score,
            f"far from {where} in feature space (distance {score:.3f}, {float((class_z if own else z).iloc[i]):.1f} "
            "robust SD above typical)",
            {"knn_distance": float(dist.iloc[i]), "robust_z": float(z.iloc[i]),
             "class_knn_distance": None if np.isnan(class_dist.iloc[i]) else float(class_dist.iloc[i]),
             "class_robust_z": None if np.isnan(class_z.iloc[i]) else float(class_z.iloc[i]),
             "label": row["label"] if isinstance(row["label"], str) else None},
        ))  # fmt: skip
    return sorted(out, key=lambda f: (-f.score, f.paths[0]))

"""Class probabilities for the label checks and the label-noise estimate per split.

:func:`label_probabilities` computes, once per scan and parameter set, out-of-sample class
probabilities of every labeled, embedded image: a ``folds``-fold logistic regression on the
backbone's features (the BatchNorm statistics of its middle and late blocks where it records
them, else the embeddings) averaged with a leave-one-out vote of the nearest images. ``label_issue``
(:mod:`auditor.checks.labels`) turns them into findings with cleanlab; :func:`noise_by_split`
gives the report's ``label_noise`` section: cleanlab's estimate of the number of wrong labels
(``cleanlab.count.num_label_issues``) per split, which the diagnosis quotes beside the count of
flagged images.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd

from auditor.core.context import NO_EMBEDDINGS, CheckContext
from auditor.io.dataset import labeled

UNLABELED = "the dataset is unlabeled (no class folders or label column)"


def labeled_ok(ctx: CheckContext) -> pd.DataFrame:
    """Decoded rows with a label, positional index as in ``ctx.ok``."""
    return labeled(ctx.ok.reset_index(drop=True))


@dataclass
class LabelProbabilities:
    rows: pd.DataFrame  # the labeled, embedded rows of the classes kept (positional index into ctx.ok)
    classes: list[str]  # the kept classes; y codes index this list
    y: np.ndarray  # given label codes
    probs: np.ndarray  # (n, n_classes) out-of-sample probabilities
    quality: np.ndarray  # cleanlab's self-confidence label quality
    left_out: list[str]  # classes with too few images


#: Rows a fold's logistic regression is fitted on at most: above it, a class-stratified
#: sample of the fold's training rows (seeded). Every row still gets its out-of-fold
#: probabilities; up to this size nothing changes. Fitting on all of 100,000 embeddings
#: held them four times over in float64 (2 GB) and took the better part of an hour.
FIT_CAP = 20_000
#: Rows standardised and predicted at a time above :data:`FIT_CAP` (1280-wide embeddings;
#: wider features in proportionally fewer rows).
PREDICT_BLOCK = 8192
#: Values (rows x columns) a fold is fitted on at most: :data:`FIT_CAP` rows of a 1280-wide
#: embedding (205 MB as float64). The 3,328 BatchNorm statistics ``label_issue`` reads are fitted
#: on 7,692 rows a fold, so 100,000 images cost the same memory as with the embeddings.
FIT_VALUES = FIT_CAP * 1280
#: ``label_issue``'s ``features: depths``: the BatchNorm layers read are those with at least this
#: many channels, the last (the head, which the embedding already pools) left out: for
#: EfficientNet-Lite0 the projection BatchNorms of blocks 5-15 (1,664 channels, 1/16 and 1/32
#: of the input's resolution), their per-image means and standard deviations. Chosen on the tuning
#: half of benchmarks/validate.py (see rules/default.yaml's label_issue).
DEPTH_MIN_CHANNELS = 64


def out_of_fold_probabilities(
    vectors: np.ndarray,
    labels: np.ndarray,
    folds: int = 5,
    c: float = 0.1,
    seed: int = 0,
    fit_cap: int = FIT_CAP,
    unit: bool = True,
) -> np.ndarray:
    """Out-of-fold class probabilities (n, n_classes) of an L2-regularised logistic
    regression on the standardised rows of ``vectors`` (n, d; an array, a
    :class:`~auditor.embed.blocks.DiskMatrix` or a view of one), L2-normalised first when
    ``unit``, stratified ``folds``-fold. ``labels``: ints 0..n_classes-1, every class at least
    ``folds`` times. Each fold is fitted on at most ``fit_cap`` of its training rows and at
    most :data:`FIT_VALUES` values (see :data:`FIT_CAP`)."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.model_selection import StratifiedKFold
    from sklearn.preprocessing import StandardScaler

    n_classes = int(labels.max()) + 1
    width = max(1, int(vectors.shape[1]))
    fit_cap = min(fit_cap, max(1, FIT_VALUES // width))
    if len(vectors) > fit_cap:
        return _capped_out_of_fold(vectors, labels, folds, c, seed, fit_cap, n_classes, unit)
    z = StandardScaler().fit_transform(_prepared(vectors[:], unit))
    probs = np.zeros((len(z), n_classes))
    for train, test in StratifiedKFold(folds, shuffle=True, random_state=seed).split(z, labels):
        clf = LogisticRegression(C=c, max_iter=2000, tol=1e-3, random_state=seed).fit(z[train], labels[train])
        probs[np.ix_(test, clf.classes_)] = clf.predict_proba(z[test])
    return probs


def _prepared(rows: np.ndarray, unit: bool) -> np.ndarray:
    """float64 rows, L2-normalised first when ``unit``."""
    from auditor.embed.neighbors import normalize

    return (normalize(rows) if unit else np.asarray(rows, np.float32)).astype(np.float64)


def _capped_out_of_fold(vectors, labels, folds, c, seed, fit_cap, n_classes, unit=True) -> np.ndarray:
    """:func:`out_of_fold_probabilities` with each fold fitted on a class-stratified sample of
    ``fit_cap`` training rows; the standardisation (over all rows) and the predictions a
    block at a time, so no float64 copy of all rows is made."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.model_selection import StratifiedKFold

    n = len(vectors)
    block = max(1, min(PREDICT_BLOCK, PREDICT_BLOCK * 1280 // max(1, int(vectors.shape[1]))))
    total = np.zeros(vectors.shape[1])
    squares = np.zeros(vectors.shape[1])
    for start in range(0, n, block):
        x = _prepared(vectors[start : start + block], unit)
        total += x.sum(axis=0)
        squares += (x * x).sum(axis=0)
    mean = total / n
    scale = np.sqrt(np.maximum(squares / n - mean**2, 0.0))
    scale[scale == 0] = 1.0  # as StandardScaler: a constant column is centred, not scaled

    def z(rows: np.ndarray) -> np.ndarray:
        return (_prepared(vectors[rows], unit) - mean) / scale

    rng = np.random.default_rng(seed)
    probs = np.zeros((n, n_classes))
    for train, test in StratifiedKFold(folds, shuffle=True, random_state=seed).split(np.zeros((n, 1)), labels):
        fit = _stratified_sample(train, labels[train], fit_cap, rng)
        clf = LogisticRegression(C=c, max_iter=2000, tol=1e-3, random_state=seed).fit(z(fit), labels[fit])
        for start in range(0, len(test), block):
            rows = test[start : start + block]
            probs[np.ix_(rows, clf.classes_)] = clf.predict_proba(z(rows))
    return probs


def _stratified_sample(rows: np.ndarray, labels: np.ndarray, size: int, rng: np.random.Generator) -> np.ndarray:
    """About ``size`` of ``rows``, each class in proportion (at least one row of each), sorted."""
    share = size / len(rows)
    picked = []
    for cls in np.unique(labels):
        members = rows[labels == cls]
        take = min(len(members), max(1, int(round(len(members) * share))))
        picked.append(rng.choice(members, size=take, replace=False))
    return np.sort(np.concatenate(picked))


def knn_vote_probabilities(
    vectors: np.ndarray, labels: np.ndarray, k: int = 10, seed: int = 0, graph: tuple | None = None
) -> np.ndarray:
    """Leave-one-out class probabilities (n, n_classes) from the labels of each row's ``k``
    nearest other rows (cosine similarity of ``vectors``), weighted by similarity, with one
    pseudo-vote spread over the classes in proportion to their frequency (so that a row with
    unanimous neighbours is not certain). Where frozen ImageNet features are weak as a
    linear basis (silhouettes, glyphs), the nearest neighbours still agree with the label.
    ``graph``: ``knn(vectors, min(k, n - 1), seed)``'s ``(indices, sims)`` when the caller has it."""
    from auditor.embed.neighbors import knn

    n_classes = int(labels.max()) + 1
    idx, sims = graph if graph is not None else knn(vectors, min(k, len(vectors) - 1), seed=seed)
    w = np.clip(np.nan_to_num(sims, nan=0.0, neginf=0.0), 0.0, None)
    votes = np.zeros((len(vectors), n_classes))
    np.add.at(votes, (np.repeat(np.arange(len(vectors)), idx.shape[1]), labels[idx].ravel()), w.ravel())
    prior = np.bincount(labels, minlength=n_classes) / len(labels)
    votes += prior[None, :]
    return votes / votes.sum(axis=1, keepdims=True)


#: The parameters of ``label_issue`` that the probabilities depend on.
PROBABILITY_PARAMS = (
    "folds",
    "min_class_images",
    "regularization",
    "neighbours",
    "neighbour_weight",
    "features",
    "depth_regularization",
)
#: ``features`` of ``label_issue``: what the logistic regression reads.
FEATURES = ("depths", "embedding")


def label_probabilities(ctx: CheckContext, params: dict) -> LabelProbabilities | str:
    """The probabilities (see the module docstring), or why there are none (unlabeled, no
    embeddings, fewer than 2 classes with enough images). Kept in ``ctx.analyses.labels``."""
    key = tuple(params.get(k) for k in PROBABILITY_PARAMS)
    if key in ctx.analyses.labels:
        return ctx.analyses.labels[key]
    ctx.analyses.labels[key] = got = _label_probabilities(ctx, params)
    return got


def _label_probabilities(ctx: CheckContext, params: dict) -> LabelProbabilities | str:
    with_label = labeled_ok(ctx)
    if with_label.empty:
        return UNLABELED
    got = ctx.ok_vectors()
    if got is None:
        return NO_EMBEDDINGS
    vectors, mask = got
    counts = with_label["label"][mask[with_label.index]].value_counts()
    need = max(params["min_class_images"], params["folds"])
    keep_classes = sorted(c for c, n in counts.items() if n >= need)
    rows = with_label[mask[with_label.index] & with_label["label"].isin(keep_classes)]
    if len(keep_classes) < 2:
        return f"fewer than 2 classes with at least {need} embedded images"
    from cleanlab.rank import get_label_quality_scores

    code = {c: i for i, c in enumerate(keep_classes)}
    y = rows["label"].map(code).to_numpy()
    # one copy of the rows judged, none when they are all the rows (every image labeled and
    # embedded): each copy was 512 MB at 100,000 images
    positions = rows.index.to_numpy()
    whole = len(positions) == len(vectors) and bool((positions == np.arange(len(vectors))).all())
    judged = vectors if whole else vectors[positions]
    depths = depth_features(ctx.embeddings, rows["content_hash"]) if params.get("features") == "depths" else None
    if depths is not None:
        probs = out_of_fold_probabilities(depths, y, params["folds"], params["depth_regularization"], unit=False)
    else:
        probs = out_of_fold_probabilities(judged, y, params["folds"], params["regularization"])
    if params["neighbour_weight"] > 0:
        graph = _scan_graph(ctx, whole, params["neighbours"])
        vote = knn_vote_probabilities(judged, y, params["neighbours"], graph=graph)
        probs = (1.0 - params["neighbour_weight"]) * probs + params["neighbour_weight"] * vote
    quality = get_label_quality_scores(y, probs, method="self_confidence")
    left_out = sorted(set(counts.index) - set(keep_classes))
    return LabelProbabilities(rows, keep_classes, y, probs, quality, [str(c) for c in left_out])


def depth_features(embeddings, hashes: pd.Series):
    """The rows of ``hashes`` (all embedded) of the BatchNorm statistics ``label_issue`` reads
    (see :data:`DEPTH_MIN_CHANNELS`), a view that reads them a block at a time
    (:class:`~auditor.embed.blocks.ColumnSpans` of a
    :class:`~auditor.embed.blocks.RowSubset`), or None when the backbone records none.
    Where frozen ImageNet features are weak (glyphs, 8x8 digits, 32-px photos) these middle
    layers separate the classes better than the pooled embedding does."""
    from auditor.embed.blocks import ColumnSpans, RowSubset

    stats, layers = embeddings.bn_stats, embeddings.stat_layers
    if stats is None or not layers:
        return None
    total = sum(c for _, c in layers)
    spans, start = [], 0
    for i, (_, channels) in enumerate(layers):
        if i < len(layers) - 1 and channels >= DEPTH_MIN_CHANNELS:
            if spans and spans[-1][1] == start:
                spans[-1] = (spans[-1][0], start + channels)
            else:
                spans.append((start, start + channels))
        start += channels
    if not spans or stats.shape[1] != 2 * total:
        return None
    spans += [(total + a, total + b) for a, b in spans]  # the means, then the standard deviations
    return ColumnSpans(RowSubset(stats, embeddings.positions(hashes)), spans)


def _scan_graph(ctx: CheckContext, whole: bool, k: int) -> tuple[np.ndarray, np.ndarray] | None:
    """The scan's kNN graph (:func:`auditor.embed.neighbors.ok_knn`) where it is the graph the
    vote would build: the rows judged are all the ok rows, in order, and the graph is
    pynndescent's built with :data:`~auditor.embed.neighbors.APPROX_NEIGHBOURS` neighbours
    (whose first k are taken, for any k below that) from the same unit rows and seed. Building it
    twice cost a second 512 MB unit copy, pynndescent's own copy and about 45 s at 100,000
    images. The exact graph (up to ``EXACT_LIMIT`` rows) is built again: cheap there, and its
    ties at the k-th place are broken within the k asked."""
    from auditor.embed.neighbors import APPROX_NEIGHBOURS, EXACT_LIMIT, ok_knn

    n = len(ctx.ok)
    k = min(k, n - 1)
    cached = ctx.analyses.knn
    if not whole or n <= EXACT_LIMIT or not 0 < k < APPROX_NEIGHBOURS:
        return None
    if cached is not None and cached[0].shape[1] >= APPROX_NEIGHBOURS:  # built with more neighbours
        return None
    return ok_knn(ctx, k)


def noise_by_split(got: LabelProbabilities | str | None) -> dict | None:
    """The report's ``label_noise`` section: per split (``all`` without splits), the labeled
    images judged and cleanlab's estimate of the share with a wrong label
    (``num_label_issues``, the calibrated confident joint's off-diagonal mass), or None when
    the split has too few images of two classes for an estimate."""
    if got is None or isinstance(got, str):
        return None
    from cleanlab.count import num_label_issues

    split = got.rows["split"] if "split" in got.rows else pd.Series(None, index=got.rows.index)
    groups = {"all": np.ones(len(got.rows), bool)} if split.isna().all() else {
        str(s): (split == s).to_numpy() for s in sorted(split.dropna().unique())}  # fmt: skip
    out = {}
    for name, m in groups.items():
        y, probs = got.y[m], got.probs[m]
        present = np.unique(y)
        estimate = None
        if len(present) >= 2 and len(y) >= 10:
            # the split's own classes: cleanlab needs every class it scores to occur
            remap = {c: i for i, c in enumerate(present)}
            yy = np.array([remap[c] for c in y])
            pp = probs[:, present]
            pp = pp / pp.sum(axis=1, keepdims=True)
            estimate = round(float(num_label_issues(yy, pp)) / len(y), 4)
        out[name] = {"images": int(m.sum()), "estimated_rate": estimate}
    return {
        "method": "cleanlab.count.num_label_issues on the out-of-sample probabilities of label_issue",
        "splits": out,
    }

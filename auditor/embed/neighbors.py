"""k-nearest-neighbour graphs on embeddings (cosine similarity).

Exact search in blocks for up to :data:`EXACT_LIMIT` vectors (a few seconds for 20,000 x
1280 on two cores, and no approximation to explain); above that, an approximate graph from
``pynndescent`` (which umap-learn already depends on), seeded so it is repeatable.
"""

from __future__ import annotations

import numpy as np

from auditor.core.context import CheckContext
from auditor.embed.blocks import BLOCK_ROWS

EXACT_LIMIT = 20_000
BLOCK = 2048
#: Neighbours the approximate graph is built with (its first k are kept): on 100,000 embeddings
#: of 28-px digits and silhouettes (benchmarks/bench_scale.py) the 10 kept are 82% of the exact
#: 10 nearest when built with 11, 99% (the nearest: 89.3% -> 99.6%) with 30, in the same time.
APPROX_NEIGHBOURS = 30


def normalize(vectors: np.ndarray) -> np.ndarray:
    """Rows scaled to unit length (zero rows stay zero). float32 (n, d)."""
    v = np.asarray(vectors, np.float32)
    norms = np.linalg.norm(v, axis=1, keepdims=True)
    return np.divide(v, norms, out=np.zeros_like(v), where=norms > 0)


def knn(vectors: np.ndarray, k: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """The ``k`` nearest other rows of each row by cosine similarity.

    Returns ``(indices, similarities)``, both (n, k'), with k' = min(k, n - 1), sorted by
    decreasing similarity; similarities in [-1, 1]. A row never lists itself.
    """
    return unit_knn(normalize(vectors), k, seed)


def unit_knn(x: np.ndarray, k: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """:func:`knn` of rows already scaled to unit length (``normalize``'s float32 rows)."""
    n = len(x)
    k = min(k, n - 1)
    if k <= 0:
        return np.zeros((n, 0), np.int64), np.zeros((n, 0), np.float32)
    if n > EXACT_LIMIT:
        return _approximate(x, k, seed)
    return _exact_top_k(x, x, k, self_index=np.arange(n))


def _exact_top_k(
    q: np.ndarray, b: np.ndarray, k: int, self_index: np.ndarray | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """Exact top-``k`` inner products of unit rows, in blocks of :data:`BLOCK` queries.
    ``self_index``: each query's own row in ``b`` (never its neighbour), when the queries are
    rows of ``b``."""
    idx = np.empty((len(q), k), np.int64)
    sim = np.empty((len(q), k), np.float32)
    for start in range(0, len(q), BLOCK):
        s = q[start : start + BLOCK] @ b.T
        if self_index is not None:
            s[np.arange(s.shape[0]), self_index[start : start + len(s)]] = -np.inf  # not its own neighbour
        part = np.argpartition(-s, k - 1, axis=1)[:, :k]
        vals = np.take_along_axis(s, part, axis=1)
        order = np.lexsort((part, -vals), axis=1)  # by similarity, ties by index (deterministic)
        idx[start : start + len(s)] = np.take_along_axis(part, order, axis=1)
        sim[start : start + len(s)] = np.take_along_axis(vals, order, axis=1)
    return idx, sim


def nearest_similarity(q: np.ndarray, b: np.ndarray, self_index: np.ndarray | None = None) -> np.ndarray:
    """The largest inner product of each unit row of ``q`` with the unit rows of ``b`` (float32
    (n,)); ``self_index`` as in :func:`_exact_top_k`. The similarity :func:`_exact_top_k` gives
    with k=1 (the same blocks of products), without its (block, len(b)) index arrays."""
    out = np.empty(len(q), np.float32)
    for start in range(0, len(q), BLOCK):
        s = q[start : start + BLOCK] @ b.T
        if self_index is not None:
            s[np.arange(s.shape[0]), self_index[start : start + len(s)]] = -np.inf
        out[start : start + len(s)] = s.max(axis=1)
    return out


def cross_nearest(queries: np.ndarray, base: np.ndarray, k: int = 1, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """The ``k`` rows of ``base`` most cosine-similar to each row of ``queries``:
    ``(indices into base, similarities)``, both (n_queries, k), by decreasing similarity.
    Exact in blocks up to :data:`EXACT_LIMIT` base rows, a seeded pynndescent index above."""
    q = normalize(queries)
    b = normalize(base)
    k = min(k, len(b))
    if len(b) > EXACT_LIMIT:
        from pynndescent import NNDescent

        index = NNDescent(b, metric="cosine", n_neighbors=max(k, 15), random_state=seed, n_jobs=1)
        ids, dist = index.query(q, k=k)
        return ids.astype(np.int64), (1.0 - dist).astype(np.float32)
    return _exact_top_k(q, b, k)


def _approximate(x: np.ndarray, k: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    from pynndescent import NNDescent

    index = NNDescent(x, metric="cosine", n_neighbors=max(k + 1, APPROX_NEIGHBOURS), random_state=seed, n_jobs=1)
    ids, dist = index.neighbor_graph
    out_i = np.empty((len(x), k), np.int64)
    out_s = np.empty((len(x), k), np.float32)
    for r in range(len(x)):
        keep = ids[r] != r
        row_i, row_d = ids[r][keep][:k], dist[r][keep][:k]
        out_i[r, : len(row_i)] = row_i
        out_s[r, : len(row_i)] = 1.0 - row_d
        if len(row_i) < k:  # pynndescent may pad with -1
            out_i[r, len(row_i) :] = row_i[-1] if len(row_i) else r
            out_s[r, len(row_i) :] = -1.0
    return out_i, out_s


def recall(approx: np.ndarray, exact: np.ndarray) -> float:
    """Share of the exact neighbours (rows of ``exact``, (n, k) indices) that the rows of
    ``approx`` (the same rows' neighbours from an approximate index) also list."""
    if exact.size == 0:
        return 1.0
    hits = sum(len(np.intersect1d(a, e)) for a, e in zip(approx, exact, strict=True))
    return hits / exact.size


def sample_recall(vectors: np.ndarray, indices: np.ndarray, sample: int = 1000, seed: int = 0) -> float:
    """:func:`recall` of a kNN graph ``indices`` (n, k) of ``vectors`` against the exact
    neighbours of ``sample`` rows drawn with ``seed``."""
    x = normalize(vectors)
    rows = np.sort(np.random.default_rng(seed).choice(len(x), size=min(sample, len(x)), replace=False))
    exact, _ = _exact_top_k(x[rows], x, indices.shape[1], self_index=rows)
    return recall(indices[rows], exact)


def similar_pairs(indices: np.ndarray, sims: np.ndarray, min_similarity: float) -> tuple[np.ndarray, np.ndarray]:
    """Unique pairs (i < j) from a kNN graph with similarity >= ``min_similarity``:
    ``(pairs (m, 2), similarity (m,))``, sorted."""
    rows, cols = np.nonzero(sims >= min_similarity)
    if len(rows) == 0:
        return np.zeros((0, 2), np.int64), np.zeros(0, np.float32)
    a, b = rows, indices[rows, cols]
    s = sims[rows, cols]
    pairs = np.stack([np.minimum(a, b), np.maximum(a, b)], axis=1)
    pairs, first = np.unique(pairs, axis=0, return_index=True)
    return pairs, s[first]


def ok_knn(ctx: CheckContext, k: int) -> tuple[np.ndarray, np.ndarray] | None:
    """Cosine kNN graph over the ``ctx.ok`` rows that have an embedding: ``(indices, sims)``
    (n_ok, k), indices positional into ``ctx.ok``; rows without an embedding have no
    neighbours (similarity -inf). Computed once per context (for the largest k asked) and
    kept in ``ctx.analyses.knn``."""
    if ctx.embeddings is None:
        return None
    cached = ctx.analyses.knn
    if cached is None or cached[0].shape[1] < k:
        x, mask = _unit_ok_rows(ctx)
        have = np.flatnonzero(mask)
        kk = max(k, 10)
        sub_i, sub_s = unit_knn(x, kk)
        del x
        width = sub_i.shape[1]
        idx = np.zeros((len(mask), width), np.int64)
        sims = np.full((len(mask), width), -np.inf, np.float32)
        idx[have] = have[sub_i]
        sims[have] = sub_s
        cached = ctx.analyses.knn = (idx, sims)
    return cached[0][:, :k], cached[1][:, :k]


def _unit_ok_rows(ctx: CheckContext) -> tuple[np.ndarray, np.ndarray]:
    """(the embedded ``ctx.ok`` rows scaled to unit length, float32 (n_embedded, d); the mask of
    the ``ctx.ok`` rows that have one). ``normalize(ctx.ok_vectors()[0][mask])``, row for row
    the same bits (each row is scaled on its own), but read and scaled a block at a time
    when the context does not hold the vectors yet: the graph is the first to ask for them,
    and the raw float32 rows beside their unit copy were 512 MB more at 100,000 images."""
    if ctx.analyses.vectors is not None:
        vectors, mask = ctx.analyses.vectors
        return normalize(vectors if mask.all() else vectors[mask]), mask
    pos = ctx.embeddings.positions(ctx.ok["content_hash"])
    mask = pos >= 0
    rows = pos[mask]
    x = np.empty((len(rows), ctx.embeddings.vectors.shape[1] if len(rows) else 0), np.float32)
    for start in range(0, len(rows), BLOCK_ROWS):
        x[start : start + BLOCK_ROWS] = normalize(ctx.embeddings.vectors[rows[start : start + BLOCK_ROWS]])
    return x, mask

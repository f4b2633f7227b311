"""A 2-D map of the compared sets for the report: UMAP (umap-learn, seeded) of the
embeddings, subsampled per group.

umap-learn is imported here only (it pulls numba; importing costs seconds). Below
:data:`MIN_UMAP` points the projection is PCA (UMAP needs a neighbourhood to work with).
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from auditor.core.context import CheckContext
from auditor.embed.blocks import RowSubset

#: Points per group (source/dataset, or split) drawn into the projection.
MAX_PER_GROUP = 1500
MIN_UMAP = 30


def _import_umap():
    """umap-learn's UMAP class, without the TensorFlow import that ``import umap`` does for
    ParametricUMAP when TensorFlow is installed (seconds we do not need)."""
    import sys

    if "umap" not in sys.modules and "tensorflow" not in sys.modules:
        sys.modules.setdefault("umap.parametric_umap", None)  # -> ImportError, which umap handles
        try:
            import umap
        finally:
            if sys.modules.get("umap.parametric_umap", 0) is None:
                del sys.modules["umap.parametric_umap"]
    import umap

    return umap.UMAP


#: Bump when :func:`project` changes its output for the same input (cached projections).
PROJECTION_VERSION = 1


def project(vectors: np.ndarray, seed: int = 0) -> tuple[np.ndarray, str]:
    """(n, 2) coordinates of the rows of ``vectors`` (cosine geometry) and the method used."""
    from auditor.embed.neighbors import normalize

    x = normalize(vectors)
    if len(x) < MIN_UMAP:
        from sklearn.decomposition import PCA

        n_comp = min(2, len(x), x.shape[1])
        out = np.zeros((len(x), 2))
        if len(x) >= 2:
            out[:, :n_comp] = PCA(n_components=n_comp, random_state=seed).fit_transform(x)
        return out, "pca"
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # "n_jobs overridden by random_state", numba notices
        UMAP = _import_umap()
        reducer = UMAP(n_neighbors=15, min_dist=0.1, metric="cosine", random_state=seed, n_components=2)
        return np.asarray(reducer.fit_transform(x), dtype=np.float64), "umap"


def _versions() -> tuple[str, ...]:
    """Versions of what computes a projection (a cached one from another version is not reused)."""
    from importlib import metadata

    out = []
    for dist in ("umap-learn", "scikit-learn", "pynndescent", "numba"):
        try:
            out.append(f"{dist}={metadata.version(dist)}")
        except metadata.PackageNotFoundError:
            out.append(f"{dist}=none")
    return tuple(out)


def cached_project(vectors: np.ndarray, seed: int = 0, store=None) -> tuple[np.ndarray, str]:
    """:func:`project` through the store's results cache, keyed by the vectors' bytes and the
    seed: UMAP (seconds, plus numba's compile on first use in a process) runs once per
    distinct input, so an unchanged rescan does not pay for it again."""
    if store is None:
        return project(vectors, seed)
    import hashlib
    import io

    v = np.ascontiguousarray(vectors, dtype=np.float32)
    h = hashlib.blake2b(v.data, digest_size=16)
    h.update(repr((v.shape, seed, PROJECTION_VERSION, _versions())).encode())
    key = f"projection:{h.hexdigest()}"
    hit = store.get_result(key)
    if hit is not None:
        with np.load(io.BytesIO(hit)) as z:
            return z["xy"], str(z["method"])
    xy, method = project(vectors, seed)
    buf = io.BytesIO()
    np.savez(buf, xy=xy, method=np.array(method))
    store.put_result(key, buf.getvalue())
    return xy, method


def project_pairs(
    ctx: CheckContext, max_per_group: int = MAX_PER_GROUP, seed: int = 0, store=None
) -> pd.DataFrame | None:
    """The projection of every set this scan compares (source and dataset, or the splits):
    one row per drawn image with ``set`` ("source"/"dataset"), ``group`` (the side's name),
    ``path`` (relative to its set's root), ``content_hash`` (the report's hover thumbnails),
    ``x``, ``y``. Only comparisons the checks analysed on the embeddings are drawn; None
    when there are none. ``store``: reuse a cached projection of the same vectors
    (:func:`cached_project`)."""
    from auditor.analysis.shift import pairs

    if ctx.embeddings is None:
        return None
    groups: dict[str, tuple[str, pd.DataFrame]] = {}
    cache = ctx.analyses.shift
    for pair in pairs(ctx):
        if cache.get(pair.key, {}).get("embedding") is None:
            continue  # not compared on the embeddings (too few images): nothing to map
        ref_set = "source" if pair.kind == "domain" else "dataset"
        groups.setdefault(pair.reference, (ref_set, pair.ref_rows))
        groups.setdefault(pair.target, ("dataset", pair.tgt_rows))
    if not groups:
        return None
    rng = np.random.default_rng(seed)
    parts, vecs = [], []
    for name, (which, rows) in groups.items():
        # the drawn rows alone are read: all of a 90,000-image train split were 460 MB, twice
        pos = ctx.embeddings.positions(rows["content_hash"])
        mask = pos >= 0
        rows, pos = rows[mask], pos[mask]
        from auditor.analysis.drift import subsample

        keep = subsample(len(rows), max_per_group, rng)
        parts.append(pd.DataFrame({"set": which, "group": name, "path": rows["path"].to_numpy()[keep],
                                   "content_hash": rows["content_hash"].to_numpy()[keep]}))  # fmt: skip
        vecs.append(RowSubset(ctx.embeddings.vectors, pos)[keep])
    frame = pd.concat(parts, ignore_index=True)
    if len(frame) < 2:
        return None
    xy, method = cached_project(np.vstack(vecs), seed, store)
    frame["x"], frame["y"] = xy[:, 0], xy[:, 1]
    frame.attrs["method"] = method
    return frame

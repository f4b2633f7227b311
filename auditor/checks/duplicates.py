"""Duplicates and leakage: ``exact_duplicate``, ``near_duplicate``, ``leakage``.

Exact copies share decoded pixels (so a PNG and a BMP of the same picture match). Near
copies are found by multi-index hashing on the 64-bit pHash (:func:`auditor.measure.hashing.near_pairs`,
sub-quadratic) and confirmed by the dHash, then joined into groups (connected components).
Within a split a group is a duplicate; a group that spans splits is ``leakage``: the same
picture in train and in val makes validation accuracy a lie.
"""

from __future__ import annotations

from collections import defaultdict

import numpy as np
import pandas as pd

from auditor.checks.registry import register
from auditor.core.constraints import AT_LEAST_ONE, NON_NEGATIVE, Int, Real
from auditor.core.context import CheckContext
from auditor.core.findings import Finding
from auditor.embed.neighbors import ok_knn, similar_pairs
from auditor.measure.hashing import flip_distance, group_pairs, hamming, near_pairs, to_uint64, typical_nearest_distance
from auditor.measure.verify import ALIGNED, typical_difference, verify_pairs


def _split_key(split) -> str:
    return split if isinstance(split, str) else ""


#: Neighbours per image examined for embedding near duplicates.
EMBEDDING_NEIGHBOURS = 10
NEAR_PARAMS = {"max_phash_distance": Int(0, 64), "max_dhash_distance": Int(0, 64),
               "min_embedding_similarity": Real(-1, 1), "max_relative_distance": NON_NEGATIVE,
               "max_relative_phash_distance": NON_NEGATIVE, "max_mirror_phash_distance": Int(0, 64),
               "max_candidates_per_image": AT_LEAST_ONE, "max_pixel_difference": NON_NEGATIVE,
               "max_relative_pixel_difference": NON_NEGATIVE, "max_crop_difference": NON_NEGATIVE,
               "max_relative_crop_difference": NON_NEGATIVE, "min_pixel_difference": NON_NEGATIVE,
               "crop_neighbours": Int(0, EMBEDDING_NEIGHBOURS), "min_crop_sharpness": NON_NEGATIVE,
               "max_refined_crop_difference": NON_NEGATIVE,
               "max_relative_refined_crop_difference": NON_NEGATIVE}  # fmt: skip


def phash_radius(hashes: np.ndarray, params: dict) -> int:
    """The pHash distance a near duplicate may have: at most ``max_phash_distance`` bits, and
    at most ``max_relative_phash_distance`` times the dataset's typical distance from an
    image to its 5th nearest other hash (:func:`auditor.measure.hashing.typical_nearest_distance`).
    On photos (typical ~24 bits) the absolute limit decides; on upscaled 8x8 digits (typical
    14 bits, distinct digits often 4-6 apart) only copies within 3 bits count; a dataset made
    mostly of near copies keeps its radius (the 5th neighbour is another picture)."""
    typical = typical_nearest_distance(hashes, sample=500)
    radius = params["max_phash_distance"]
    if np.isfinite(typical):
        radius = min(radius, int(params["max_relative_phash_distance"] * typical))
    return radius


def embedding_threshold(sims: np.ndarray, params: dict) -> float:
    """The cosine similarity an embedding near duplicate needs: at least
    ``min_embedding_similarity``, and its distance (1 - cosine) at most
    ``max_relative_distance`` times the dataset's median nearest-neighbour distance, so that
    in a dataset where everything looks alike to the backbone (digits: every image has a
    neighbour at 0.9+) only pairs much closer than typical neighbours count."""
    typical = typical_embedding_distance(sims)
    if not np.isfinite(typical):
        return params["min_embedding_similarity"]
    return max(params["min_embedding_similarity"], 1.0 - params["max_relative_distance"] * typical)


def typical_embedding_distance(sims: np.ndarray) -> float:
    """Median cosine distance from an image to its nearest neighbour (NaN without any)."""
    top = sims[:, 0] if sims.ndim == 2 and sims.shape[1] else np.zeros(0)
    top = top[np.isfinite(top)]
    return float(np.median(1.0 - top)) if len(top) else float("nan")


def corroborated(t: pd.DataFrame, ph: np.ndarray, e_pairs: np.ndarray, params: dict) -> np.ndarray:
    """Which embedding matches to keep: those whose pixels agree too, pHash within
    ``max_mirror_phash_distance`` bits with a left-right mirror allowed. The backbone alone
    cannot tell a copy from another patch of the same texture: adjacent tiles of one gravel
    bed or brick wall score cosine 0.92-0.96, as close as a colour-jittered copy, but their
    pHashes are 16-38 bits apart, while mirrored copies are 0-2, colour-jittered 0-6 and
    80%-area crops 4-20 (17 of 21 photos within the default 14) bits apart. ``ph``: the
    rows' pHashes as uint64 (already converted by the caller)."""
    if not len(e_pairs):
        return np.zeros(0, dtype=bool)
    if "phash_mirror" not in t or t["phash_mirror"].isna().any():  # measured before mirror hashes
        return np.ones(len(e_pairs), dtype=bool)
    mirror = to_uint64(t["phash_mirror"])
    a, b = e_pairs[:, 0], e_pairs[:, 1]
    return flip_distance(ph[a], ph[b], mirror[b]) <= params["max_mirror_phash_distance"]


def near_graph(
    ctx: CheckContext, t: pd.DataFrame, params: dict, aligned_only: bool = False
) -> tuple[list[list[int]], dict]:
    """Groups of copies (positional indices into t = ctx.ok) and the evidence per pair (see
    :func:`_near_edges`; near_duplicate, leakage and label_conflict share the edges when
    their thresholds agree). ``aligned_only`` leaves out pairs that are copies only as a
    mirror image or a crop: those can change what the picture shows (b and d, p and q, a
    left and a right arrow; an I cut from an l), so they are no evidence that two labels
    conflict."""
    key = ("near_edges", *(params[k] for k in sorted(NEAR_PARAMS)))
    edges = ctx.analyses.near_edges
    if key not in edges:
        edges[key] = _near_edges(ctx, t, params)
    pairs, evidence, how = edges[key]
    if aligned_only:
        pairs = pairs[how == ALIGNED]
        evidence = {k: v for k, v in evidence.items() if v[3] == ALIGNED}
    pixel = t["pixel_hash"].to_numpy()
    # identical pixels are always one group, whatever their hashes
    by_pixels: dict[str, list[int]] = defaultdict(list)
    for pos, ph_ in enumerate(pixel):
        by_pixels[ph_].append(pos)
    exact = [(g[0], other) for g in by_pixels.values() for other in g[1:]]
    all_pairs = np.concatenate([pairs.reshape(-1, 2), np.asarray(exact, dtype=np.int64).reshape(-1, 2)])
    groups = group_pairs(len(t), all_pairs)
    if ctx.thumbnails is not None and any(len(g) > 2 for g in groups):
        groups = _unchain(ctx, t, params, groups, pairs.reshape(-1, 2), pixel, aligned_only)
    return groups, evidence


#: Verification pairs :func:`_unchain` may add per image of a chained group (a bound on a
#: group of thousands whose members are copies only of their neighbours).
UNCHAIN_PAIRS_PER_IMAGE = 50
#: Components of more distinct images than this stay one group (regrouping is quadratic).
UNCHAIN_MAX_GROUP = 1000


def _unchain(ctx, t, params, groups, pairs, pixel, aligned_only: bool) -> list[list[int]]:
    """Groups in which every member is a copy of one image, the group's centre, rather than
    connected components: copies are not transitive. Adjacent slices of an MRI volume are
    each a near copy of the next, and their component joined a whole volume (24 distinct
    slices, of which ``audit clean`` kept one). In a component that is not already one group of
    mutual copies, the image with most copies is the centre; every other member is verified
    against it at the pixel level (:func:`auditor.measure.verify.verify_pairs`, the same limits;
    ``aligned_only``: no mirrors or crops); those that match, with the centre, are a group, and
    the rest are grouped again the same way. Identical pixels always go together."""
    edges = {(int(a), int(b)) for a, b in pairs.tolist()}
    edges |= {(b, a) for a, b in edges}
    adjacent: dict[int, set[int]] = defaultdict(set)
    for a, b in edges:
        adjacent[a].add(b)
    thresholds = ctx.analyses.near_edges.get(("thresholds", *(params[k] for k in sorted(NEAR_PARAMS))))
    if thresholds is None:
        thresholds = pixel_thresholds(ctx, t, to_uint64(t["phash"]), params)
        ctx.analyses.near_edges[("thresholds", *(params[k] for k in sorted(NEAR_PARAMS)))] = thresholds
    _, aligned, crop, refined = thresholds
    keys = list(t["content_hash"])
    labels = t["label"].to_numpy() if "label" in t else np.full(len(t), None, object)
    out: list[list[int]] = []
    for group in groups:
        first: dict = {}
        same: dict[int, list[int]] = defaultdict(list)
        for m in sorted(group):
            same[first.setdefault(pixel[m], m)].append(m)
        reps = sorted(same)
        everyone = set(reps)
        mutual = all(len(adjacent[r] & everyone) == len(reps) - 1 for r in reps)
        if len(reps) <= 2 or len(reps) > UNCHAIN_MAX_GROUP or mutual:
            out.append(group)  # mutual copies already (or too many to regroup)
            continue
        left, budget = list(reps), UNCHAIN_PAIRS_PER_IMAGE * len(reps)
        while len(left) > 1:
            remaining = set(left)
            centre = min(left, key=lambda r: (-len(adjacent[r] & remaining), r))
            others = [r for r in left if r != centre]
            known = np.array([(centre, o) in edges for o in others], bool)
            ask = [o for o, k in zip(others, known, strict=True) if not k]
            matched = {o for o, k in zip(others, known, strict=True) if k}
            if ask and budget >= len(ask):
                budget -= len(ask)
                pairs_ = np.array([[centre, o] for o in ask], np.int64)
                no = -np.inf
                ok, _, how = verify_pairs(
                    ctx.thumbnails, keys, pairs_, aligned, no if aligned_only else crop, None,
                    params["min_crop_sharpness"], no if aligned_only else refined,
                )  # fmt: skip
                # a mirror or a crop between two labels is no copy (b and d), as in _near_edges
                same_label = np.array([labels[centre] == labels[o] or not isinstance(labels[o], str) for o in ask])
                ok &= (how == ALIGNED) | (same_label & (not aligned_only))
                matched |= {o for o, k in zip(ask, ok.tolist(), strict=True) if k}
            members = [centre, *sorted(matched)]
            if len(members) > 1:
                out.append(sorted(m for r in members for m in same[r]))
            elif len(same[centre]) > 1:
                out.append(sorted(same[centre]))
            left = [r for r in left if r not in set(members)]
        if left and len(same[left[0]]) > 1:
            out.append(sorted(same[left[0]]))
    return sorted(out, key=lambda g: g[0])


def pixel_thresholds(
    ctx: CheckContext, t: pd.DataFrame, ph: np.ndarray, params: dict
) -> tuple[float, float, float, float]:
    """(typical difference, aligned limit, crop limit, refined crop limit) for
    :func:`auditor.measure.verify.verify_pairs`: ``max_pixel_difference``,
    ``max_crop_difference`` and ``max_refined_crop_difference``, each at most its relative
    share of the dataset's typical difference between close distinct pictures
    (:func:`auditor.measure.verify.typical_difference`: on glyphs or silhouettes, distinct images
    differ far less than photos do); the first two at least ``min_pixel_difference``."""

    codes = pd.factorize(t["pixel_hash"])[0]
    typical = typical_difference(ctx.thumbnails, list(t["content_hash"]), ph, codes)
    aligned, crop = params["max_pixel_difference"], params["max_crop_difference"]
    refined = params["max_refined_crop_difference"]
    if np.isfinite(typical):
        aligned = min(aligned, params["max_relative_pixel_difference"] * typical)
        crop = min(crop, params["max_relative_crop_difference"] * typical)
        refined = min(refined, params["max_relative_refined_crop_difference"] * typical)
    # never below what a re-encoded copy differs by, whatever the dataset holds
    floor = params["min_pixel_difference"]
    return typical, max(aligned, floor), max(crop, floor), refined


def _cap_per_image(pairs: np.ndarray, dist: np.ndarray, cap: int) -> np.ndarray:
    """Mask keeping, for every image, only its ``cap`` closest candidates (a pair is kept when
    it is among the closest of either of its images): on low-diversity data an image can
    have hundreds of hash neighbours, and verification costs per pair."""
    if len(pairs) <= cap or cap <= 0:
        return np.ones(len(pairs), bool)
    keep = np.zeros(len(pairs), bool)
    for side in (0, 1):
        order = np.lexsort((dist, pairs[:, side]))  # by image, then by distance
        img = pairs[order, side]
        first = np.searchsorted(img, img, side="left")
        rank = np.arange(len(img)) - first
        keep[order[rank < cap]] = True
    return keep


def _near_edges(ctx: CheckContext, t: pd.DataFrame, params: dict) -> tuple[np.ndarray, dict, np.ndarray]:
    """Pairs (positional indices into t = ctx.ok, (m, 2), i < j) of images that are copies of
    one picture, the evidence per pair as ``{(i, j): (kind, value, pixel difference, mirror)}``,
    and a mask of the pairs that are copies only as a mirror image.

    Candidates: pHash within :func:`phash_radius` (confirmed by the dHash) as is or mirrored,
    and pairs of backbone neighbours at least :func:`embedding_threshold` similar whose pHashes
    (mirror allowed) are within ``max_mirror_phash_distance`` bits; at most
    ``max_candidates_per_image`` per image; and each image's ``crop_neighbours`` nearest
    backbone neighbours whatever their similarity (an 80%-area crop of a 28-px digit is its
    original's first to tenth neighbour at cosine 0.71-0.94, 4-20 pHash bits away), which pass
    only by their pixels like every candidate. A candidate is a copy only when its pixels agree
    (:func:`auditor.measure.verify.verify_pairs` with :func:`pixel_thresholds`). Evidence kinds:
    ``"phash"`` (value: bits), ``"embedding"`` (value: cosine, at least the limit) or
    ``"neighbour"`` (value: cosine, below the limit: a candidate only as one of the nearest
    backbone neighbours). Pairs of identical pixels
    are not listed (:func:`near_graph` joins them)."""

    ph = to_uint64(t["phash"])
    dh = to_uint64(t["dhash"])
    radius = phash_radius(ph, params)
    pairs, dist = near_pairs(ph, radius)
    if len(pairs):
        keep = hamming(dh[pairs[:, 0]], dh[pairs[:, 1]]) <= params["max_dhash_distance"]
        pairs, dist = pairs[keep], dist[keep]
    if "phash_mirror" in t and not t["phash_mirror"].isna().any():
        n = len(ph)
        m_pairs, m_dist = near_pairs(np.concatenate([ph, to_uint64(t["phash_mirror"])]), radius)
        cross = (m_pairs[:, 0] < n) & (m_pairs[:, 1] >= n) & (m_pairs[:, 0] != m_pairs[:, 1] - n)
        a, b = m_pairs[cross, 0], m_pairs[cross, 1] - n
        m_pairs = np.stack([np.minimum(a, b), np.maximum(a, b)], axis=1)
        pairs, dist = np.concatenate([pairs, m_pairs]), np.concatenate([dist, m_dist[cross]])
    kinds = np.zeros(len(pairs), np.int8)  # 0 phash, 1 embedding, 2 nearest neighbour (crop search only)
    values = dist.astype(np.float64)
    graph = ok_knn(ctx, EMBEDDING_NEIGHBOURS)
    if graph is not None:
        e_pairs, e_sims = similar_pairs(*graph, embedding_threshold(graph[1], params))
        keep = corroborated(t, ph, e_pairs, params)
        e_pairs, e_sims = e_pairs[keep], e_sims[keep]
        k = int(params["crop_neighbours"])
        if k > 0:  # crops of small images: far in pHash, below the similarity threshold, yet nearest
            c_pairs, c_sims = similar_pairs(graph[0][:, :k], graph[1][:, :k], -1.0)
        else:
            c_pairs, c_sims = np.zeros((0, 2), np.int64), np.zeros(0)
        pairs = np.concatenate([pairs, e_pairs, c_pairs])
        kinds = np.concatenate([kinds, np.ones(len(e_pairs), np.int8), np.full(len(c_pairs), 2, np.int8)])
        values = np.concatenate([values, e_sims.astype(np.float64), c_sims.astype(np.float64)])
    pixel = t["pixel_hash"].to_numpy()
    evidence: dict[tuple[int, int], tuple[str, float, float, int]] = {}
    how = np.zeros(0, np.int8)
    if len(pairs):
        # one row per pair, the strongest evidence first (hash beats embedding, closer first)
        rank = np.where(kinds == 0, values, 100.0 - values)
        order = np.lexsort((rank, kinds, pairs[:, 1], pairs[:, 0]))
        pairs, kinds, values, rank = pairs[order], kinds[order], values[order], rank[order]
        first = np.ones(len(pairs), bool)
        first[1:] = np.any(pairs[1:] != pairs[:-1], axis=1)
        # the crop search is for pairs the backbone put together (a pHash match that is also
        # a backbone neighbour may still be a crop: an 80%-area crop of a texture)
        by_backbone = np.maximum.reduceat(kinds, np.flatnonzero(first)) >= 1
        pairs, kinds, values, rank = pairs[first], kinds[first], values[first], rank[first]
        distinct = pixel[pairs[:, 0]] != pixel[pairs[:, 1]]  # identical pixels need no verifying
        pairs, kinds, values, rank = pairs[distinct], kinds[distinct], values[distinct], rank[distinct]
        by_backbone = by_backbone[distinct]
        keep = _cap_per_image(pairs, rank, int(params["max_candidates_per_image"]))
        pairs, kinds, values, by_backbone = pairs[keep], kinds[keep], values[keep], by_backbone[keep]
        if ctx.thumbnails is not None and len(pairs):
            _, aligned, crop, refined = pixel_thresholds(ctx, t, ph, params)
            ok, diff, how = verify_pairs(ctx.thumbnails, list(t["content_hash"]), pairs, aligned, crop, by_backbone,
                                         params["min_crop_sharpness"], refined)  # fmt: skip
            labels = t["label"].to_numpy()
            # a mirror or a crop can turn one class into another (b and d; an I cut from an
            # l): between labelled images, those are copies only under the same label
            same = np.array([not (isinstance(labels[a], str) and isinstance(labels[b], str)) or labels[a] == labels[b]
                             for a, b in pairs.tolist()], bool).reshape(-1)  # fmt: skip
            # and so does a pair that is only among the nearest neighbours (kind 2: neither
            # similar enough nor close in pHash): the backbone and the hashes both called it
            # two pictures (a sans-serif I and l of one font)
            ok &= ((how == ALIGNED) & (kinds != 2)) | same
            pairs, kinds, values, diff, how = pairs[ok], kinds[ok], values[ok], diff[ok], how[ok]
        else:
            diff, how = np.full(len(pairs), np.nan), np.zeros(len(pairs), np.int8)
            if len(pairs):
                ctx.notes.setdefault("near_duplicate", "copies not verified at the pixel level (no thumbnails)")
        rows = zip(pairs.tolist(), kinds.tolist(), values.tolist(), diff.tolist(), how.tolist(), strict=True)
        for (a, b), k, v, d, h in rows:
            evidence[(a, b)] = (EVIDENCE_KINDS[k], v, d, h)
    return pairs.reshape(-1, 2), evidence, how


def closest_evidence(
    evidence: dict, members: list[int], pixel: pd.Series, skip_identical: bool
) -> tuple[str, float, float, float | None]:
    """The strongest evidence among members: (kind, value, score in 0..1, pixel difference
    of that pair or None). A pHash match beats an embedding match; identical pairs are
    skipped when asked."""
    inside = sorted(members)
    best: tuple[str, float, float] | None = None
    for x, a in enumerate(inside):
        for b in inside[x + 1 :]:
            ev = evidence.get((a, b))
            if ev is None or (skip_identical and pixel.iloc[a] == pixel.iloc[b]):
                continue
            kind, value, diff = ev[:3]
            score = 1.0 - value / 64.0 if kind == "phash" else float(value)
            rank = (kind == "phash", score)
            if best is None or rank > (best[0] == "phash", best[2]):
                best = (kind, value, score, None if diff != diff else float(diff))
    return best or ("phash", 0, 1.0, None)


#: The evidence kind of a candidate pair by how it was found (``kinds`` in :func:`_near_edges`).
EVIDENCE_KINDS = ("phash", "embedding", "neighbour")


def kind_key(kind: str) -> str:
    return {"phash": "min_phash_distance", "embedding": "embedding_similarity",
            "neighbour": "embedding_similarity"}.get(kind, "distance")  # fmt: skip


def evidence_text(kind: str, value: float) -> str:
    if kind == "phash":
        return f"pHash distance {int(value)}"
    if kind == "neighbour":
        return f"nearest backbone neighbours at similarity {value:.3f}, matched by their pixels"
    return f"embedding similarity {value:.3f}"


def _group_details(t: pd.DataFrame, members: list[int]) -> list[dict]:
    return [{"path": t.iloc[m]["path"], "split": t.iloc[m]["split"], "label": t.iloc[m]["label"]} for m in members]


@register("exact_duplicate", "duplicates")
def exact_duplicate(ctx: CheckContext, params: dict) -> list[Finding]:
    """Groups of images with identical pixels within one split (across splits it is
    ``leakage``). Score 1; every member is listed."""
    t = ctx.ok.reset_index(drop=True)
    t = t[t["pixel_hash"].duplicated(keep=False)]  # only hashes seen twice can form a group
    out = []
    for _, g in t.groupby("pixel_hash", sort=False):
        for split, members in g.groupby(g["split"].map(_split_key), sort=True):
            if len(members) < 2:
                continue
            paths = sorted(members["path"])
            out.append(Finding(
                "exact_duplicate", paths, 1.0,
                f"{len(paths)} images are identical copies" + (f" in {split}" if split else ""),
                {"split": split or None, "pixel_hash": members["pixel_hash"].iloc[0],
                 "labels": sorted({str(x) for x in members["label"] if isinstance(x, str)})},
            ))  # fmt: skip
    return sorted(out, key=lambda f: f.paths[0])


@register("near_duplicate", "duplicates", NEAR_PARAMS)
def near_duplicate(ctx: CheckContext, params: dict) -> list[Finding]:
    """Groups of images that are the same picture re-encoded, resized or lightly edited
    (pHash within ``max_phash_distance`` bits and dHash within ``max_dhash_distance``), or
    flipped, cropped or color-jittered (embedding cosine similarity at least
    ``min_embedding_similarity``), within one split, excluding groups of only identical
    copies. Score: 1 - d/64 for a hash match, else the cosine similarity."""
    t = ctx.ok.reset_index(drop=True)
    if len(t) < 2:
        return []
    groups, evidence = near_graph(ctx, t, params)
    out = []
    for group in groups:
        by_split: dict[str, list[int]] = defaultdict(list)
        for m in group:
            by_split[_split_key(t.iloc[m]["split"])].append(m)
        for split, members in sorted(by_split.items()):
            if len(members) < 2 or t.iloc[members]["pixel_hash"].nunique() < 2:
                continue
            kind, value, score, diff = closest_evidence(evidence, members, t["pixel_hash"], skip_identical=True)
            paths = sorted(t.iloc[members]["path"])
            out.append(Finding(
                "near_duplicate", paths, score,
                f"{len(paths)} images are near duplicates ({evidence_text(kind, value)})"
                + (f" in {split}" if split else ""),
                {"split": split or None, "evidence": kind, kind_key(kind): value, "pixel_difference": diff,
                 "members": _group_details(t, sorted(members, key=lambda m: t.iloc[m]["path"]))},
            ))  # fmt: skip
    return sorted(out, key=lambda f: f.paths[0])


@register("leakage", "duplicates", NEAR_PARAMS)
def leakage(ctx: CheckContext, params: dict) -> list[Finding]:
    """The same or a near-same image in two or more splits (train and val/test): the
    evaluation is no longer on unseen data. Score 1 for identical copies, else 1 - d/64."""
    t = ctx.ok.reset_index(drop=True)
    out = []
    ann = ctx.annotations
    for p in ann.problems if ann is not None else []:  # one file listed in two COCO splits
        if p["kind"] == "shared_image" and len(p["splits"]) >= 2:
            out.append(Finding("leakage", [p["path"]], 1.0, f"one file in splits {', '.join(p['splits'])}: "
                               f"{p['message']}", {"splits": p["splits"], "identical": True,
                                                   "evidence": "same file", "where": p["where"]}))  # fmt: skip
    if t["split"].dropna().nunique() < 2:
        return out or ctx.skip("leakage", "the dataset has fewer than two splits")
    groups, evidence = near_graph(ctx, t, params)
    for group in groups:
        splits = {s for s in t.iloc[group]["split"] if isinstance(s, str)}
        if len(splits) < 2:
            continue
        identical = t.iloc[group]["pixel_hash"].nunique() == 1
        kind, value, score, diff = ("pixels", 0, 1.0, 0.0) if identical else closest_evidence(
            evidence, group, t["pixel_hash"], skip_identical=False)  # fmt: skip
        members = sorted(group, key=lambda m: (str(t.iloc[m]["split"]), t.iloc[m]["path"]))
        paths = [t.iloc[m]["path"] for m in members]
        what = "identical copies" if identical else f"near copies ({evidence_text(kind, value)})"
        out.append(Finding(
            "leakage", paths, score,
            f"{len(paths)} {what} across splits {', '.join(sorted(splits))}",
            {"splits": sorted(splits), "identical": identical, "evidence": kind, kind_key(kind): value,
             "pixel_difference": diff, "members": _group_details(t, members)},
        ))  # fmt: skip
    return sorted(out, key=lambda f: f.paths[0])

"""Duplicates and leakage: ``exact_duplicate``, ``near_duplicate``, ``leakage``.

Exact copies share decoded pixels (so a PNG and a BMP of the same picture match). Near
copies are found by multi-index hashing on the 64-bit pHash (:func:`auditor.hashing.near_pairs`,
sub-quadratic) and confirmed by the dHash, then joined into groups (connected components).
Within a split a group is a duplicate; a group that spans splits is ``leakage``: the same
picture in train and in val makes validation accuracy a lie.
"""

from __future__ import annotations

from collections import defaultdict

import numpy as np
import pandas as pd

from ..hashing import group_pairs, hamming, near_pairs, to_uint64
from . import CheckContext, Finding, register


def _split_key(split) -> str:
    return split if isinstance(split, str) else ""


def _near_graph(t: pd.DataFrame, max_phash: int, max_dhash: int) -> tuple[list[list[int]], dict]:
    """Groups (positional indices into t) of images within the hash radii, and the
    near pairs as an adjacency map i -> [(j, pHash distance)], i < j."""
    ph = to_uint64(t["phash"])
    dh = to_uint64(t["dhash"])
    pairs, dist = near_pairs(ph, max_phash)
    if len(pairs):
        keep = hamming(dh[pairs[:, 0]], dh[pairs[:, 1]]) <= max_dhash
        pairs, dist = pairs[keep], dist[keep]
    # identical pixels are always one group, whatever their hashes
    by_pixels: dict[str, list[int]] = defaultdict(list)
    for pos, ph_ in enumerate(t["pixel_hash"]):
        by_pixels[ph_].append(pos)
    exact = [(g[0], other) for g in by_pixels.values() for other in g[1:]]
    all_pairs = np.concatenate([pairs, np.asarray(exact, dtype=np.int64).reshape(-1, 2)])
    adjacency: dict[int, list[tuple[int, int]]] = defaultdict(list)
    for (a, b), d in zip(pairs.tolist(), dist.tolist(), strict=True):
        adjacency[a].append((b, d))
    return group_pairs(len(t), all_pairs), adjacency


def _min_distance(adjacency: dict, members: list[int], pixel: pd.Series, skip_identical: bool) -> int:
    """Smallest pHash distance between two members (0 if none recorded)."""
    inside = set(members)
    ds = [d for a in members for b, d in adjacency.get(a, ())
          if b in inside and not (skip_identical and pixel.iloc[a] == pixel.iloc[b])]  # fmt: skip
    return min(ds) if ds else 0


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


@register("near_duplicate", "duplicates", {"max_phash_distance": int, "max_dhash_distance": int})
def near_duplicate(ctx: CheckContext, params: dict) -> list[Finding]:
    """Groups of images that are the same picture re-encoded, resized or lightly edited
    (pHash within ``max_phash_distance`` bits and dHash within ``max_dhash_distance``),
    within one split, excluding groups of only identical copies. Score: 1 - d/64 for the
    closest non-identical pair."""
    t = ctx.ok.reset_index(drop=True)
    if len(t) < 2:
        return []
    groups, dist = _near_graph(t, params["max_phash_distance"], params["max_dhash_distance"])
    out = []
    for group in groups:
        by_split: dict[str, list[int]] = defaultdict(list)
        for m in group:
            by_split[_split_key(t.iloc[m]["split"])].append(m)
        for split, members in sorted(by_split.items()):
            if len(members) < 2 or t.iloc[members]["pixel_hash"].nunique() < 2:
                continue
            dmin = _min_distance(dist, members, t["pixel_hash"], skip_identical=True)
            paths = sorted(t.iloc[members]["path"])
            out.append(Finding(
                "near_duplicate", paths, 1.0 - dmin / 64.0,
                f"{len(paths)} images are near duplicates (pHash distance {dmin})"
                + (f" in {split}" if split else ""),
                {"split": split or None, "min_phash_distance": dmin,
                 "members": _group_details(t, sorted(members, key=lambda m: t.iloc[m]["path"]))},
            ))  # fmt: skip
    return sorted(out, key=lambda f: f.paths[0])


@register("leakage", "duplicates", {"max_phash_distance": int, "max_dhash_distance": int})
def leakage(ctx: CheckContext, params: dict) -> list[Finding]:
    """The same or a near-same image in two or more splits (train and val/test): the
    evaluation is no longer on unseen data. Score 1 for identical copies, else 1 - d/64."""
    t = ctx.ok.reset_index(drop=True)
    if t["split"].dropna().nunique() < 2:
        return []
    groups, dist = _near_graph(t, params["max_phash_distance"], params["max_dhash_distance"])
    out = []
    for group in groups:
        splits = {s for s in t.iloc[group]["split"] if isinstance(s, str)}
        if len(splits) < 2:
            continue
        identical = t.iloc[group]["pixel_hash"].nunique() == 1
        dmin = 0 if identical else _min_distance(dist, group, t["pixel_hash"], skip_identical=False)
        members = sorted(group, key=lambda m: (str(t.iloc[m]["split"]), t.iloc[m]["path"]))
        paths = [t.iloc[m]["path"] for m in members]
        kind = "identical copies" if identical else f"near copies (pHash distance {dmin})"
        out.append(Finding(
            "leakage", paths, 1.0 if identical else 1.0 - dmin / 64.0,
            f"{len(paths)} {kind} across splits {', '.join(sorted(splits))}",
            {"splits": sorted(splits), "identical": identical, "members": _group_details(t, members)},
        ))  # fmt: skip
    return sorted(out, key=lambda f: f.paths[0])

"""Box geometry: boxes as written (COCO pixels, YOLO normalised centre and size) -> normalised
corners once image sizes are known (:func:`geometry`), IoU (:func:`iou`, :func:`iou_matrix`), and
the overlapping pairs within each image without comparing every pair (:func:`overlapping_pairs`).
"""

from __future__ import annotations

import numpy as np
import pandas as pd


def geometry(boxes: pd.DataFrame, sizes: pd.DataFrame) -> pd.DataFrame:
    """``boxes`` with normalised corners ``x0 y0 x1 y1`` (0..1 inside the image), pixel size
    ``pw ph`` and the image ``width height`` used (``sizes``: path -> width, height; COCO's
    declared size wins over the measured one). Rows whose image size is unknown get NaN."""
    b = boxes.copy()
    wh = sizes.set_index("path")[["width", "height"]]
    b = b.join(wh, on="path")
    px = b["units"] == "px"
    W, H = b["width"].astype(float), b["height"].astype(float)
    x0 = np.where(px, b["x"] / W, b["x"] - b["w"] / 2)
    y0 = np.where(px, b["y"] / H, b["y"] - b["h"] / 2)
    nw = np.where(px, b["w"] / W, b["w"])
    nh = np.where(px, b["h"] / H, b["h"])
    b["x0"], b["y0"], b["x1"], b["y1"] = x0, y0, x0 + nw, y0 + nh
    b["pw"], b["ph"] = nw * W, nh * H
    return b


def iou(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """IoU of boxes given as x0, y0, x1, y1 on the last axis, broadcast like any numpy
    operation: ``iou(a, b)`` for pairs (n, 4) and (n, 4) -> (n,)."""
    ix = np.clip(np.minimum(a[..., 2], b[..., 2]) - np.maximum(a[..., 0], b[..., 0]), 0, None)
    iy = np.clip(np.minimum(a[..., 3], b[..., 3]) - np.maximum(a[..., 1], b[..., 1]), 0, None)
    inter = ix * iy
    area = lambda z: np.clip(z[..., 2] - z[..., 0], 0, None) * np.clip(z[..., 3] - z[..., 1], 0, None)  # noqa: E731
    union = area(a) + area(b) - inter
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(union > 0, inter / union, 0.0)


def iou_matrix(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """IoU between boxes (n, 4) and (m, 4) given as x0, y0, x1, y1: (n, m). Memory n x m:
    for many boxes, :func:`overlapping_pairs`."""
    return iou(a[:, None, :], b[None, :, :])


#: Candidate pairs examined at once by :func:`overlapping_pairs` (bounds its memory: about
#: 250 bytes a pair in temporaries, so 250 MB).
PAIR_CHUNK = 1_000_000


def overlapping_pairs(
    corners: np.ndarray, groups: np.ndarray, min_iou: float
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Every pair of boxes in the same group (image) with IoU >= ``min_iou``, without
    comparing every pair: ``(i, j, iou)``, ``i < j`` row numbers into ``corners`` ((n, 4)
    x0 y0 x1 y1), ordered by (group, i, j). ``groups``: (n,) group of each box as a code
    0..k (``Series.cat.codes``). The same pairs and values (:func:`iou`) as
    :func:`iou_matrix` over each group, in O(n log n + pairs examined).

    Why it may skip pairs: IoU >= t > 0 needs the intersection width >= t x the width of
    either box (intersection <= width x the shorter height, and >= t x either area), so the
    box with the smaller ``x0`` reaches at least t of its width past the other's ``x0``:
    ``x0_b - x0_a <= (1 - t) w_a``. Boxes sorted by ``x0`` within their group are compared
    only with those inside that window (plus a margin for rounding). With ``min_iou <= 0``
    every pair qualifies and every pair is examined. Boxes with a non-finite corner have a
    NaN IoU and never qualify.
    """
    empty = np.zeros(0, np.int64)
    corners = np.asarray(corners, np.float64)
    rows = np.flatnonzero(np.isfinite(corners).all(axis=1))
    if len(rows) < 2:
        return empty, empty.copy(), np.zeros(0)
    c, g = corners[rows], np.asarray(groups, np.int64)[rows]
    x0, x1 = c[:, 0], c[:, 2]
    if min_iou > 0:
        reach = max(0.0, 1.0 - min_iou) * np.clip(x1 - x0, 0, None) + 1e-9 * (np.abs(x0) + np.abs(x1) + 1e-9)
    else:
        reach = np.full(len(c), np.inf)
    order = np.lexsort((x0, g))  # by group, then x0
    xs, gs = x0[order], g[order]
    # End of each box's window in one searchsorted: rank x0 among all values, then key
    # (group, rank) rises monotonically through the sorted boxes.
    values = np.unique(xs)
    span = len(values) + 1
    key = gs * span + np.searchsorted(values, xs)
    last = np.searchsorted(values, xs + reach[order], side="right") - 1
    end = np.searchsorted(key, gs * span + last, side="right")
    count = end - np.arange(len(order)) - 1
    cum = np.cumsum(count)
    out_i, out_j, out_iou = [], [], []
    start, done = 0, 0  # done: candidates of the boxes before start
    while start < len(order):
        # boxes [start, stop) whose candidates fit in one chunk (at least one box)
        stop = max(start + 1, int(np.searchsorted(cum, done + PAIR_CHUNK, side="right")))
        n = count[start:stop]
        done = int(cum[stop - 1])
        total = int(n.sum())
        if total:
            p = np.repeat(np.arange(start, stop), n)
            first = np.repeat(np.cumsum(n) - n, n)
            q = p + 1 + (np.arange(total) - first)
            a, b = order[p], order[q]
            v = iou(c[a], c[b])
            hit = v >= min_iou
            a, b = a[hit], b[hit]
            out_i.append(rows[np.minimum(a, b)])
            out_j.append(rows[np.maximum(a, b)])
            out_iou.append(v[hit])
        start = stop
    if not out_i:
        return empty, empty.copy(), np.zeros(0)
    i, j, v = np.concatenate(out_i), np.concatenate(out_j), np.concatenate(out_iou)
    sort = np.lexsort((j, i, np.asarray(groups, np.int64)[i]))
    return i[sort], j[sort], v[sort]

"""File, pixel and perceptual hashes, and a sub-quadratic near-match search.

Perceptual hashes are 64-bit integers (imagehash's pHash and dHash packed big-endian), so
a dataset's hashes are one ``uint64`` array. :func:`near_pairs` finds every pair within a
Hamming radius with multi-index hashing (Norouzi et al., 2012): the 64 bits are cut into
``m`` chunks; two hashes within distance ``r`` agree to within ``r // m`` bits on at least
one chunk (pigeonhole), so it is enough to look up each chunk and its few bit-flipped
variants in a bucket table. With the chunk count picked from a cost model, a million
hashes at radius 5 need a few hundred million cheap lookups instead of 5 * 10^11 pairs.
"""

from __future__ import annotations

import hashlib
import itertools
import math

import numpy as np


def pixel_hash(rgb: np.ndarray) -> str:
    """Hash of decoded pixels and shape (BLAKE2b-128, hex): equal for the same picture
    stored in two lossless files (PNG vs BMP, or different metadata)."""
    h = hashlib.blake2b(digest_size=16)
    h.update(np.asarray(rgb.shape, dtype=np.int64).tobytes())
    h.update(np.ascontiguousarray(rgb).data)  # the buffer itself: no copy of the pixels
    return h.hexdigest()


def _pack(bits: np.ndarray) -> int:
    """Pack a boolean hash array (row-major) into a Python int, first bit most significant."""
    return int.from_bytes(np.packbits(bits.ravel()).tobytes(), "big")


#: The 8 lowest rows of the 32-point DCT-II in scipy.fftpack's convention (unnormalised:
#: 2 * sum_n x[n] cos(pi k (2n + 1) / 64)), so that D @ X @ D.T is the top-left 8 x 8 block of
#: ``fftpack.dct(fftpack.dct(X, axis=0), axis=1)``.
_DCT_8x32 = 2.0 * np.cos(np.pi * np.arange(8)[:, None] * (2 * np.arange(32)[None, :] + 1) / 64.0)


def perceptual_hashes(gray_u8: np.ndarray) -> dict[str, int]:
    """pHash and dHash (64 bits each) of a uint8 grayscale image, as unsigned ints, and
    ``phash_mirror``: the pHash of the left-right mirrored image (so a mirrored copy can be
    recognised by its pixels: see :func:`flip_distance`).

    The same bits as ``imagehash.phash`` / ``imagehash.dhash`` (hash_size 8; a test checks it
    on real photos): Lanczos resize to 32 x 32 (9 x 8 for the dHash), the low 8 x 8 DCT
    coefficients above their median (the dHash: each pixel brighter than its left
    neighbour). The DCT is two small matrix products instead of two FFT calls, a third of
    the cost, and no PyWavelets/scipy.fftpack import in the workers."""
    from PIL import Image

    img = Image.fromarray(gray_u8, mode="L")
    small = np.asarray(img.resize((32, 32), Image.Resampling.LANCZOS), dtype=np.float64)
    low = _DCT_8x32 @ small @ _DCT_8x32.T
    mirrored = _DCT_8x32 @ small[:, ::-1] @ _DCT_8x32.T
    row = np.asarray(img.resize((9, 8), Image.Resampling.LANCZOS))
    return {"phash": _pack(low > np.median(low)), "dhash": _pack(row[:, 1:] > row[:, :-1]),
            "phash_mirror": _pack(mirrored > np.median(mirrored))}  # fmt: skip


def flip_distance(phash_a: np.ndarray, phash_b: np.ndarray, mirror_b: np.ndarray) -> np.ndarray:
    """Elementwise pHash distance allowing a left-right mirror: min(d(a, b), d(a, mirror(b)))."""
    return np.minimum(hamming(phash_a, phash_b), hamming(phash_a, mirror_b))


def to_uint64(values) -> np.ndarray:
    """Convert a sequence of non-negative Python ints (< 2**64) to a uint64 array."""
    return np.fromiter((int(v) for v in values), dtype=np.uint64)


def hamming(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Elementwise Hamming distance between two uint64 arrays (int array)."""
    return np.bitwise_count(np.bitwise_xor(a, b)).astype(np.int64)


def _chunk_bits(m: int) -> list[int]:
    base, extra = divmod(64, m)
    return [base + (1 if i < extra else 0) for i in range(m)]


def _flip_masks(bits: int, radius: int) -> np.ndarray:
    """All integers of ``bits`` bits with at most ``radius`` bits set (uint64)."""
    masks = [0]
    for k in range(1, radius + 1):
        for combo in itertools.combinations(range(bits), k):
            masks.append(sum(1 << c for c in combo))
    return np.asarray(masks, dtype=np.uint64)


def _plan(n: int, radius: int) -> tuple[int, list[int], int]:
    """Pick the chunk count m minimising lookups + expected random candidates."""
    best = None
    for m in range(1, 9):
        bits = _chunk_bits(m)
        if max(bits) > 30:
            continue  # bucket table would not fit
        t = radius // m
        n_masks = sum(math.comb(min(bits), k) for k in range(t + 1))
        # Measured on 1M hashes: a bucket lookup (several array passes per flip mask) costs
        # about 4x a candidate check (gather, xor, popcount), so candidates weigh 0.25.
        cost = m * n_masks * (n + 0.25 * n * n / 2.0 ** min(bits))
        if best is None or cost < best[0]:
            best = (cost, m, bits, t)
    assert best is not None
    return best[1], best[2], best[3]


def typical_nearest_distance(hashes: np.ndarray, sample: int = 1000, seed: int = 0, k: int = 5) -> float:
    """Median, over up to ``sample`` images (seeded), of the Hamming distance to the ``k``-th
    nearest *different* hash in the set (identical hashes are copies, not neighbours; the
    ``k``-th rather than the nearest so that a dataset full of near copies still measures
    the distance between different pictures). Natural photos: about 24 bits; upscaled 8x8
    digits: 14. Exact for the sampled images: ``sample`` x n popcounts in chunks (a million
    hashes: a few seconds). NaN with at most ``k`` distinct hashes."""
    h = np.ascontiguousarray(hashes, dtype=np.uint64)
    if np.unique(h).size <= k:
        return float("nan")
    rng = np.random.default_rng(seed)
    q = h[np.sort(rng.choice(h.size, min(sample, h.size), replace=False))]
    best = np.full((q.size, k), 65, dtype=np.int64)
    chunk = max(k, (1 << 22) // q.size)
    for c0 in range(0, h.size, chunk):
        d = np.bitwise_count(q[:, None] ^ h[None, c0 : c0 + chunk]).astype(np.int64)
        d[d == 0] = 65
        both = np.concatenate([best, d], axis=1)
        best = np.partition(both, k - 1, axis=1)[:, :k]
    kth = best.max(axis=1)
    return float(np.median(kth[kth <= 64])) if (kth <= 64).any() else float("nan")


def near_pairs(hashes: np.ndarray, radius: int, block: int = 1 << 18) -> tuple[np.ndarray, np.ndarray]:
    """All pairs (i, j), i < j, with Hamming distance <= ``radius`` between 64-bit hashes.

    ``hashes``: uint64 array of shape (n,). Returns (pairs int64 (k, 2), distances int64
    (k,)), sorted by (i, j). Exact (no false negatives); memory is bounded by processing
    queries in blocks of ``block``.
    """
    h = np.ascontiguousarray(hashes, dtype=np.uint64)
    n = h.size
    empty = (np.zeros((0, 2), dtype=np.int64), np.zeros(0, dtype=np.int64))
    if n < 2 or radius < 0:
        return empty
    if n <= 2048:  # brute force is cheaper than building tables
        i, j = np.triu_indices(n, k=1)
        d = hamming(h[i], h[j])
        keep = d <= radius
        return np.stack([i[keep], j[keep]], axis=1).astype(np.int64), d[keep]
    m, bits, t = _plan(n, radius)
    found_i: list[np.ndarray] = []
    found_j: list[np.ndarray] = []
    shift = 64
    for b in bits:
        shift -= b
        keys = ((h >> np.uint64(shift)) & np.uint64((1 << b) - 1)).astype(np.int64)
        order = np.argsort(keys, kind="stable")
        # Dense bucket table: bucket k holds order[starts[k]:starts[k + 1]].
        starts = np.zeros((1 << b) + 1, dtype=np.int64)
        np.cumsum(np.bincount(keys, minlength=1 << b), out=starts[1:])
        for mask in _flip_masks(b, t).astype(np.int64):
            for q0 in range(0, n, block):
                qi = np.arange(q0, min(n, q0 + block), dtype=np.int64)
                q = keys[qi] ^ mask
                lo = starts[q]
                counts = starts[q + 1] - lo
                total = int(counts.sum())
                if total == 0:
                    continue
                ii = np.repeat(qi, counts)
                offs = np.arange(total, dtype=np.int64) - np.repeat(np.cumsum(counts) - counts, counts)
                jj = order[np.repeat(lo, counts) + offs]
                keep = ii < jj
                ii, jj = ii[keep], jj[keep]
                d = hamming(h[ii], h[jj])
                keep = d <= radius
                found_i.append(ii[keep])
                found_j.append(jj[keep])
    if not found_i:
        return empty
    i = np.concatenate(found_i)
    j = np.concatenate(found_j)
    key = np.unique(i * n + j)  # a pair can match on several chunks
    i, j = key // n, key % n
    return np.stack([i, j], axis=1), hamming(h[i], h[j])


def group_pairs(n: int, pairs: np.ndarray) -> list[list[int]]:
    """Connected components (size >= 2) of the graph on ``n`` nodes with edges ``pairs``,
    each sorted, the list sorted by first member.

    Vectorised minimum-label propagation with pointer jumping (numpy only: no scipy.sparse
    import, which costs a cached rescan more than the grouping itself)."""
    if len(pairs) == 0:
        return []
    a = np.asarray(pairs[:, 0], dtype=np.int64)
    b = np.asarray(pairs[:, 1], dtype=np.int64)
    label = np.arange(n, dtype=np.int64)
    while True:
        low = np.minimum(label[a], label[b])
        new = label.copy()
        np.minimum.at(new, a, low)
        np.minimum.at(new, b, low)
        new[new] = np.minimum(new[new], new)  # a root that lost its label passes it on
        while True:  # pointer jumping: every node straight to its current root
            jumped = new[new]
            if np.array_equal(jumped, new):
                break
            new = jumped
        if np.array_equal(new, label):
            break
        label = new
    nodes = np.unique(np.concatenate([a, b]))
    members: dict[int, list[int]] = {}
    for node in nodes.tolist():
        members.setdefault(int(label[node]), []).append(node)
    return sorted((sorted(g) for g in members.values() if len(g) > 1), key=lambda g: g[0])

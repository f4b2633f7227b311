"""Compiled versions of :mod:`auditor.measure.pixels`'s pixel measurements (numba).

:func:`auditor.measure.pixels.measure_pixels` is the reference: pure numpy, documented, unit
tested. Measured one function at a time it walks each image about thirty times (every
plane, difference and filter is a temporary array), which made it most of a scan's time.
:func:`measure_rgb` computes the same numbers in three passes over the pixels with
numba-compiled loops, about four times faster (``benchmarks/bench_kernels.py``); a test
checks that both agree on real photos (to float32 rounding) and that the luminance, and
with it the perceptual hashes, is bit-identical.

The kernel is compiled on first use and cached on disk by numba in the auditor's cache folder
(``<cache folder>/numba``; numba's own ``NUMBA_CACHE_DIR`` when the user set one), so only
the first scan on a machine pays the compilation (a few seconds). Never beside this file: an
installed package must stay as installed (it may be read-only, and a leftover
``__pycache__`` of compiled code turns ``site-packages/auditor`` into a namespace package
that shadows a later editable install). numba is a dependency (umap-learn's too); where it
cannot be imported, or with ``AUDITOR_NO_JIT=1``, the scan uses the numpy reference instead
(the same numbers to float32 rounding, slower), and so does a small data set, for which
importing numba and loading this kernel would cost more than it saves
(:data:`auditor.measure.batch.SMALL_SCAN_IMAGES`). Rows of the two are cached apart
(:func:`auditor.measure.batch.store_version`).
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
from numba import njit

from auditor.measure import pixels as m

# Rec. 601 luma weights as float32: numpy computes ``0.299 * r + ...`` on float32 planes in
# float32 (NEP 50), so these give the same bits.
_WR, _WG, _WB = np.float32(0.299), np.float32(0.587), np.float32(0.114)
#: The only fast-math freedom the reductions get: reordering sums (so they vectorise). The
#: luminance is computed without it, to stay bit-identical.
_REASSOC = {"reassoc"}


@njit(nogil=True)
def _reflect(k: int, n: int) -> int:
    """scipy.ndimage's ``mode="reflect"`` index (d c b a | a b c d | d c b a)."""
    period = 2 * n
    k %= period
    return period - 1 - k if k >= n else k


@njit(nogil=True)
def _first_pass(rgb, gray, gray_u8, hist, spread_hist, moments):
    """Luminance (float32, bit-identical to measure.luminance, and rounded to uint8), its
    histogram, the channel-spread histogram, and the colour moments in exact integers:
    ``moments`` int64[9] = sums of r, g, b, r*r, g*g, b*b, r*g, r*b, g*b."""
    h, w = gray.shape
    for i in range(h):
        s_r = s_g = s_b = s_rr = s_gg = s_bb = s_rg = s_rb = s_gb = 0
        for j in range(w):
            ri = np.int64(rgb[i, j, 0])
            gi = np.int64(rgb[i, j, 1])
            bi = np.int64(rgb[i, j, 2])
            y = _WR * np.float32(ri) + _WG * np.float32(gi) + _WB * np.float32(bi)
            gray[i, j] = y
            q = min(np.int64(np.rint(y)), 255)  # y >= 0 (positive weights), <= 255 + rounding
            gray_u8[i, j] = q
            hist[q] += 1
            spread_hist[max(ri, max(gi, bi)) - min(ri, min(gi, bi))] += 1
            s_r += ri
            s_g += gi
            s_b += bi
            s_rr += ri * ri
            s_gg += gi * gi
            s_bb += bi * bi
            s_rg += ri * gi
            s_rb += ri * bi
            s_gb += gi * bi
        moments[0] += s_r
        moments[1] += s_g
        moments[2] += s_b
        moments[3] += s_rr
        moments[4] += s_gg
        moments[5] += s_bb
        moments[6] += s_rg
        moments[7] += s_rb
        moments[8] += s_gb


@njit(nogil=True, fastmath=_REASSOC)
def _laplacian_sums(gray):
    """(sum, sum of squares, count) of the 4-neighbour Laplacian over interior pixels."""
    h, w = gray.shape
    s = 0.0
    ss = 0.0
    four = np.float32(4.0)
    for i in range(1, h - 1):
        for j in range(1, w - 1):
            v = gray[i, j - 1] + gray[i, j + 1] + gray[i - 1, j] + gray[i + 1, j] - four * gray[i, j]
            s += v
            ss += np.float64(v) * v
    return s, ss, (h - 2) * (w - 2)


@njit(nogil=True, fastmath=_REASSOC)
def _haar_energy(g, approx):
    """Mean detail energy per coefficient of one 2x2 Haar step (see measure._haar_level);
    writes the float32 approximation into ``approx`` (h // 2, w // 2)."""
    hh, ww = approx.shape
    quarter = np.float32(0.25)
    e = 0.0
    for i in range(hh):
        for j in range(ww):
            a = g[2 * i, 2 * j]
            b = g[2 * i, 2 * j + 1]
            c = g[2 * i + 1, 2 * j]
            d = g[2 * i + 1, 2 * j + 1]
            x1 = a - b + c - d
            x2 = a + b - c - d
            x3 = a - b - c + d
            e += np.float64(x1 * x1 + x2 * x2 + x3 * x3)
            approx[i, j] = (a + b + c + d) * quarter
    return e / (hh * ww) / 4.0


@njit(nogil=True, fastmath=_REASSOC)
def _blur_ratio_rows(gray, size):
    """Crété-Roffet kept fraction along axis 1 (within rows): sum(min(|d gray|, |d blur|))
    / sum(|d gray|), with blur a ``size``-wide box filter (reflect mode, float32 result)."""
    h, w = gray.shape
    half = size // 2
    m1 = 0.0
    kept = 0.0
    prev_blur = np.float32(0.0)
    for i in range(h):
        acc = 0.0
        for k in range(-half, half + 1):
            acc += gray[i, _reflect(k, w)]
        prev_blur = np.float32(acc / size)
        for j in range(1, w):
            add = j + half
            sub = j - half - 1
            acc += gray[i, add if add < w else _reflect(add, w)] - gray[i, sub if sub >= 0 else _reflect(sub, w)]
            cur = np.float32(acc / size)
            ds = abs(gray[i, j] - gray[i, j - 1])
            db = abs(cur - prev_blur)
            m1 += ds
            kept += min(ds, db)
            prev_blur = cur
    return m1, kept


@njit(nogil=True, fastmath=_REASSOC)
def _blur_ratio_cols(gray, size):
    """As :func:`_blur_ratio_rows`, along axis 0, a row of running column sums at a time."""
    h, w = gray.shape
    half = size // 2
    acc = np.zeros(w, np.float64)
    prev = np.empty(w, np.float32)
    for k in range(-half, half + 1):
        row = _reflect(k, h)
        for j in range(w):
            acc[j] += gray[row, j]
    for j in range(w):
        prev[j] = np.float32(acc[j] / size)
    m1 = 0.0
    kept = 0.0
    for i in range(1, h):
        add = _reflect(i + half, h)
        sub = _reflect(i - half - 1, h)
        for j in range(w):
            acc[j] += gray[add, j] - gray[sub, j]
            cur = np.float32(acc[j] / size)
            ds = abs(gray[i, j] - gray[i - 1, j])
            db = abs(cur - prev[j])
            m1 += ds
            kept += min(ds, db)
            prev[j] = cur
    return m1, kept


@njit(nogil=True, fastmath=_REASSOC)
def _noise_blocks(rgb, block, sig, mean):
    """Per channel, per ``block`` x ``block`` block of diagonal Haar coefficients (a
    2*block-pixel square): RMS of the coefficients and mean of the 2x2 approximations (see
    measure.noise_sigma). ``sig``, ``mean``: float64 (3, bh, bw)."""
    _, bh, bw = sig.shape
    n = block * block
    for c in range(3):
        for bi in range(bh):
            for bj in range(bw):
                s2 = 0.0
                sm = 0.0
                for u in range(block):
                    y = 2 * (bi * block + u)
                    for v in range(block):
                        x = 2 * (bj * block + v)
                        a = np.float32(rgb[y, x, c])
                        b = np.float32(rgb[y, x + 1, c])
                        cc = np.float32(rgb[y + 1, x, c])
                        d = np.float32(rgb[y + 1, x + 1, c])
                        hh = (a - b - cc + d) * np.float32(0.5)
                        s2 += hh * hh
                        sm += (a + b + cc + d) * np.float32(0.25)
                sig[c, bi, bj] = np.sqrt(s2 / n)
                mean[c, bi, bj] = sm / n


@njit(nogil=True)
def _pca_patches(rgb, step, x):
    """measure.pca_noise_sigma's patches of each channel, centred: ``x`` float64 (3, n, 16),
    row k of channel c the flattened 4x4 patch at the k-th point of the ``step`` grid. The
    same numbers as numpy's gather, mean and subtraction: the column sums are exact
    integers, divided once (as ``mean`` does)."""
    _, n, _ = x.shape
    h, w = rgb.shape[0], rgb.shape[1]
    sums = np.zeros(16, np.int64)
    for c in range(3):
        sums[:] = 0
        k = 0
        for y in range(0, h - 3, step):
            for xx in range(0, w - 3, step):
                for a in range(4):
                    for b in range(4):
                        v = rgb[y + a, xx + b, c]
                        x[c, k, 4 * a + b] = v
                        sums[4 * a + b] += v
                k += 1
        for col in range(16):
            mean = np.float64(sums[col]) / n
            for k in range(n):
                x[c, k, col] -= mean


def _jit_cached(fn, cache_dir: str | os.PathLike | None):
    """``njit`` with numba's on-disk cache under ``cache_dir`` (or the user's
    ``NUMBA_CACHE_DIR``); uncached where that cannot be written (then each process compiles,
    a few seconds, instead of using numpy). numba picks the cache folder when it decorates,
    from its ``config.CACHE_DIR``: set for this one decoration, so other numba users in the
    process (umap, pynndescent) keep their own settings."""
    import numba

    folder = numba.config.CACHE_DIR or (str(Path(cache_dir) / "numba") if cache_dir else "")
    if not folder:
        return njit(nogil=True)(fn)
    saved = numba.config.CACHE_DIR
    numba.config.CACHE_DIR = folder
    try:
        compiled = njit(cache=True, nogil=True)(fn)
    except RuntimeError:  # "cannot cache function ...: no locator available"
        return njit(nogil=True)(fn)
    finally:
        numba.config.CACHE_DIR = saved
    # numba tries the next place (beside this file) when the folder cannot be written
    where = os.path.abspath(getattr(getattr(compiled, "_cache", None), "cache_path", None) or "/")
    if not where.startswith(os.path.abspath(folder)):
        return njit(nogil=True)(fn)
    return compiled


def _measure(rgb, block, fine, pca_step):
    """Every compiled measurement of one image: (gray_u8, luma histogram, spread
    histogram, colour moments, [sharp m1, kept] per axis for the 11- and the ``fine``-pixel
    re-blur, Laplacian sums, Haar energies,
    noise block RMS and means, the centred PCA patches of each channel on the ``pca_step``
    grid (3, n, 16), n = 0 for images under 8 px a side). The one entry point, and the only
    function numba caches: the helpers are compiled into it."""
    h, w = rgb.shape[0], rgb.shape[1]
    gray = np.empty((h, w), np.float32)
    gray_u8 = np.empty((h, w), np.uint8)
    hist = np.zeros(256, np.int64)
    spread_hist = np.zeros(256, np.int64)
    moments = np.zeros(9, np.int64)
    _first_pass(rgb, gray, gray_u8, hist, spread_hist, moments)
    blur = np.zeros(8, np.float64)
    lap = np.zeros(3, np.float64)
    if min(h, w) >= 3:
        blur[0], blur[1] = _blur_ratio_cols(gray, 11)
        blur[2], blur[3] = _blur_ratio_rows(gray, 11)
        blur[4], blur[5] = _blur_ratio_cols(gray, fine)
        blur[6], blur[7] = _blur_ratio_rows(gray, fine)
        lap[0], lap[1], lap[2] = _laplacian_sums(gray)
    haar = np.zeros(2, np.float64)
    if min(h, w) >= 8:
        approx = np.empty((h // 2, w // 2), np.float32)
        haar[0] = _haar_energy(gray, approx)
        haar[1] = _haar_energy(approx, np.empty((h // 4, w // 4), np.float32))
    bh, bw = (h // 2) // block, (w // 2) // block
    sig = np.empty((3, bh, bw), np.float64)
    mean = np.empty((3, bh, bw), np.float64)
    _noise_blocks(rgb, block, sig, mean)
    n_pca = 0
    if min(h, w) >= 8:  # 2 * pixels.PCA_PATCH
        n_pca = ((h - 3 + pca_step - 1) // pca_step) * ((w - 3 + pca_step - 1) // pca_step)
    patches = np.empty((3, n_pca, 16), np.float64)
    if n_pca:
        _pca_patches(rgb, pca_step, patches)
    return gray_u8, hist, spread_hist, moments, blur, lap, haar, sig, mean, patches


_COMPILED: list = []  # [the compiled _measure], once this process has made it


def _kernel(cache_dir: str | os.PathLike | None = None):
    """The compiled :func:`_measure` (the one entry point, and the only function numba
    caches: the helpers are compiled into it), made on first use with its cache under
    ``cache_dir`` (default: the user cache folder)."""
    if not _COMPILED:
        if cache_dir is None:
            from auditor.io.store import default_cache_dir

            cache_dir = default_cache_dir()
        _COMPILED.append(_jit_cached(_measure, cache_dir))
    return _COMPILED[0]


def warm(cache_dir: str | os.PathLike | None = None) -> None:
    """Compile (or load from the cache in ``cache_dir``) the kernel now, on a tiny image, so
    that worker processes forked afterwards inherit it instead of each loading or compiling
    its own. A cache that cannot take the compiled code (a full disk) costs the cache, not
    the kernel."""
    image = np.zeros((40, 40, 3), np.uint8)
    kernel = _kernel(cache_dir)
    try:
        for writeable in (True, False):  # decoded images are read-only arrays: numba's other signature
            image.setflags(write=writeable)
            kernel(image, m.NOISE_BLOCK, m.FINE_BLUR_SIZE, 1)
    except OSError:
        _COMPILED[0] = njit(nogil=True)(_measure)
        warm()


def measure_rgb(rgb: np.ndarray) -> tuple[dict[str, float], np.ndarray]:
    """The properties of :func:`auditor.measure.pixels.measure_pixels` for one RGB uint8 image,
    and its rounded luminance (uint8, for the perceptual hashes)."""
    rgb = np.ascontiguousarray(rgb, dtype=np.uint8)
    h, w = rgb.shape[:2]
    n = h * w
    if not n:
        return m.measure_pixels(rgb), np.zeros((h, w), np.uint8)
    step = m.pca_step(h, w) if min(h, w) >= 2 * m.PCA_PATCH else 1  # (no patches below that)
    gray_u8, hist, spread_hist, moments, blur, lap, haar, sig, mean, patches = _kernel()(
        rgb, m.NOISE_BLOCK, m.FINE_BLUR_SIZE, step
    )
    mean_rgb, cov = _colour_stats(moments, n)
    luma = np.array([_WR, _WG, _WB], np.float64)
    out = {
        "brightness_mean": float(luma @ mean_rgb),
        "brightness_p05": m.hist_percentile(hist, 5),
        "brightness_p95": m.hist_percentile(hist, 95),
        "contrast": float(np.sqrt(max(luma @ cov @ luma, 0.0))),
        "entropy": m.entropy_bits(gray_u8, hist),
        "sharpness": 0.0,
        "fine_sharpness": 0.0,
        "laplacian_var": 0.0,
        "detail_ratio": 0.0,
    }
    if min(h, w) >= 3:
        out["sharpness"] = 1.0 - max(1.0 if m1 <= 1e-9 else kept / m1 for m1, kept in (blur[0:2], blur[2:4]))
        out["fine_sharpness"] = 1.0 - max(1.0 if m1 <= 1e-9 else kept / m1 for m1, kept in (blur[4:6], blur[6:8]))
        mean_lap = lap[0] / lap[2]
        out["laplacian_var"] = max(lap[1] / lap[2] - mean_lap * mean_lap, 0.0)
    if min(h, w) >= 8:
        out["detail_ratio"] = float(np.log((haar[0] + 1e-3) / (haar[1] + 1e-3)))
    out["noise_sigma"] = _noise(rgb, sig, mean, patches)
    out["channel_spread"] = m.hist_percentile(spread_hist, 99)
    rg, yb = np.array([1.0, -1.0, 0.0]), np.array([0.5, 0.5, -1.0])
    std_rg, std_yb = np.sqrt(max(rg @ cov @ rg, 0.0)), np.sqrt(max(yb @ cov @ yb, 0.0))
    out["colorfulness"] = float(np.hypot(std_rg, std_yb) + 0.3 * np.hypot(rg @ mean_rgb, yb @ mean_rgb))
    return {k: float(v) for k, v in out.items()}, gray_u8


def _colour_stats(moments: np.ndarray, n: int) -> tuple[np.ndarray, np.ndarray]:
    """Mean (3,) and covariance (3, 3) of the R, G, B values from their integer moments;
    the covariance is computed in exact integer arithmetic before the one division."""
    s = [int(v) for v in moments[:3]]
    second = [[int(moments[3]), int(moments[6]), int(moments[7])],
              [int(moments[6]), int(moments[4]), int(moments[8])],
              [int(moments[7]), int(moments[8]), int(moments[5])]]  # fmt: skip
    cov = np.array([[(n * second[a][b] - s[a] * s[b]) / (n * n) for b in range(3)] for a in range(3)])
    return np.array(s, np.float64) / n, cov


def _noise(rgb: np.ndarray, sig: np.ndarray, mean: np.ndarray, patches: np.ndarray) -> float:
    """measure.measure_pixels' noise sigma: per channel the smaller of the block estimate
    (from the compiled per-block values, their quantile as numpy's; images too small for it
    use the reference) and the patch-PCA estimate (from the compiled centred patches; the
    covariance and its eigenvalues in numpy, as the reference does), averaged over the
    channels."""
    # the patches are the reference's (their values are the planes' integers either way)
    pcas = m.pca_sigmas_of_patches(patches) if patches.shape[1] else [float("nan")] * 3
    if sig.shape[1] * sig.shape[2] < 16:
        planes = m.rgb_planes(rgb)
        return float(np.mean([m.smaller_noise(m.noise_sigma(p), pca) for p, pca in zip(planes, pcas, strict=True)]))
    values = []
    for c in range(3):
        usable = sig[c][(mean[c] > 8.0) & (mean[c] < 247.0)]
        if usable.size >= 8:
            block = float(m.quantile_linear(usable, m.NOISE_QUANTILE) / m.NOISE_CORRECTION)
        else:
            block = m.noise_sigma(np.ascontiguousarray(rgb[..., c], dtype=np.float32))
        values.append(m.smaller_noise(block, pcas[c]))
    return float(np.mean(values))

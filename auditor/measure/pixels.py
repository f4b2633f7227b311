"""Per-image properties: pure functions of a pixel array.

No thresholds live here (policy is in ``rules/``); each function returns a number with a
documented unit so that the same value serves the report, the checks and the shift
explanations. Inputs are numpy arrays: ``rgb`` is uint8 (H, W, 3); ``gray`` is float32
(H, W) luminance on the 0..255 scale.
"""

from __future__ import annotations

import math

import numpy as np

#: Bump when any measurement changes meaning, so cached values are recomputed.
MEASURE_VERSION = 6
#: The store's version of measurements made by this numpy reference rather than the compiled
#: kernels (the same numbers to float32 rounding, other bits): kept apart in the cache (see
#: auditor.measure.batch.store_version). Thumbnails are the same bytes either way.
REFERENCE_VERSION = -MEASURE_VERSION
#: Every version a current scan writes (where to look for a thumbnail).
THUMBNAIL_VERSIONS = (MEASURE_VERSION, REFERENCE_VERSION)


def rgb_planes(rgb: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The R, G, B planes of an RGB uint8 image as contiguous float32 (H, W) arrays."""
    rgb = np.asarray(rgb)
    return tuple(rgb[..., c].astype(np.float32) for c in range(3))  # type: ignore[return-value]


def luminance(rgb: np.ndarray, planes: tuple[np.ndarray, ...] | None = None) -> np.ndarray:
    """Rec. 601 luma of an RGB uint8 image: float32 (H, W), 0..255. ``planes``: the image's
    float32 planes if already made (see :func:`measure_pixels`)."""
    r, g, b = planes if planes is not None else rgb_planes(rgb)
    return 0.299 * r + 0.587 * g + 0.114 * b


def downscale_to(rgb: np.ndarray, max_side: int) -> np.ndarray:
    """Area-downscale an RGB uint8 image by an integer factor so its longer side is at most
    ``max_side`` pixels (unchanged when it already is). Integer block averaging keeps the
    result deterministic and alias-free."""
    h, w = rgb.shape[:2]
    factor = int(np.ceil(max(h, w) / max_side)) if max(h, w) > max_side else 1
    factor = min(factor, h, w)  # a 1 x 3000 strip stays one pixel wide
    if factor <= 1:
        return rgb
    hh, ww = (h // factor) * factor, (w // factor) * factor
    blocks = rgb[:hh, :ww].reshape(hh // factor, factor, ww // factor, factor, -1)
    return blocks.mean(axis=(1, 3)).round().astype(np.uint8)


def _histogram(values: np.ndarray) -> np.ndarray:
    """256-bin histogram of values on the 0..255 scale (rounded)."""
    v = np.clip(np.rint(values), 0, 255).astype(np.uint8)
    return np.bincount(v.ravel(), minlength=256)


def hist_percentile(hist: np.ndarray, q: float) -> float:
    """The q-th percentile (0..100) of integer values given their 256-bin histogram."""
    total = hist.sum()
    if total == 0:
        return 0.0
    return float(np.searchsorted(np.cumsum(hist), q / 100.0 * total, side="left"))


def brightness_stats(gray: np.ndarray, hist: np.ndarray | None = None) -> dict[str, float]:
    """Mean, 5th and 95th percentile of luminance (0..255). ``hist``: its 256-bin histogram
    if already made."""
    hist = _histogram(gray) if hist is None else hist
    return {
        "brightness_mean": float(gray.mean()) if gray.size else 0.0,
        "brightness_p05": hist_percentile(hist, 5),
        "brightness_p95": hist_percentile(hist, 95),
    }


def contrast(gray: np.ndarray) -> float:
    """RMS contrast: standard deviation of luminance, 0..255 units (0 = flat image)."""
    return float(gray.std()) if gray.size else 0.0


def entropy_bits(gray: np.ndarray, hist: np.ndarray | None = None) -> float:
    """Shannon entropy of the 256-bin luminance histogram, in bits (0 = one value, 8 = max)."""
    if not gray.size:
        return 0.0
    hist = _histogram(gray) if hist is None else hist
    p = hist[hist > 0] / gray.size
    return float(-(p * np.log2(p)).sum())


def laplacian_variance(gray: np.ndarray) -> float:
    """Variance of the 4-neighbour Laplacian (0..255 units squared). Grows with edges and
    with noise; content dependent, so it is compared across a dataset, not to a constant."""
    if min(gray.shape) < 3:
        return 0.0
    lap = gray[1:-1, :-2] + gray[1:-1, 2:] + gray[:-2, 1:-1] + gray[2:, 1:-1] - 4.0 * gray[1:-1, 1:-1]
    return float(lap.var())


def box_filter(gray: np.ndarray, size: int, axis: int) -> np.ndarray:
    """``scipy.ndimage.uniform_filter1d(gray, size, axis=axis, mode="reflect")`` of a float32
    (H, W) array, bit for bit (a test compares them), without importing scipy (0.1-0.3 s, more
    than a small scan spends measuring): scipy's running sum, in float64 (each step adds the
    entering value minus the leaving one), divided by ``size`` at each output and rounded to
    float32. ``np.cumsum`` adds in order along ``axis``, as scipy's loop does."""
    n = gray.shape[axis]
    half = size // 2
    # positions -half-1 .. n+size-half-2, reflected (d c b a | a b c d | d c b a): the first is
    # the value that leaves the window at the first step
    edges = np.r_[-half - 1 : 0, n : n + size - half - 1] % (2 * n)
    edges = np.where(edges >= n, 2 * n - 1 - edges, edges)
    ext = np.concatenate([np.take(gray, edges[: half + 1], axis), gray, np.take(gray, edges[half + 1 :], axis)], axis)

    def cut(start: int, stop: int | None) -> tuple[slice, slice]:
        return (slice(start, stop), slice(None)) if axis == 0 else (slice(None), slice(start, stop))

    sums = np.empty(gray.shape, np.float64)
    first = ext[cut(1, 2)].astype(np.float64)
    for k in range(2, size + 1):  # the first window, summed in order
        first += ext[cut(k, k + 1)]
    sums[cut(0, 1)] = first
    np.subtract(ext[cut(size + 1, None)], ext[cut(1, n)], out=sums[cut(1, None)], dtype=np.float64)
    np.cumsum(sums, axis=axis, out=sums)
    return np.divide(sums, size, out=np.empty(gray.shape, np.float32), casting="same_kind")


def sharpness(gray: np.ndarray, h_size: int = 11) -> float:
    """Sharpness in 0..1 (1 = sharp), one minus the no-reference blur metric of Crété-Roffet
    et al. (2007): how much of the image's edge contrast survives a further ``h_size``-pixel
    box blur. It falls monotonically as an image is blurred and, being a ratio, depends far
    less on content than a Laplacian variance does."""
    return sharpnesses(gray, (h_size,))[0]


def sharpnesses(gray: np.ndarray, sizes: tuple[int, ...]) -> list[float]:
    """:func:`sharpness` for each re-blur width in ``sizes`` (the same numbers), the image's own
    differences taken once per axis for all of them."""
    if min(gray.shape) < 3:
        return [0.0] * len(sizes)
    blur = [0.0] * len(sizes)
    for axis in (0, 1):
        d_sharp = np.abs(np.diff(gray, axis=axis))
        m1 = float(d_sharp.sum(dtype=np.float64))
        for i, size in enumerate(sizes):
            if m1 <= 1e-9:
                blur[i] = max(blur[i], 1.0)
                continue
            blurred = box_filter(gray, size, axis)
            d_blur = np.abs(np.diff(blurred, axis=axis), out=blurred[:-1] if axis == 0 else None)
            # m1 - sum(max(0, d_sharp - d_blur)) == sum(min(d_sharp, d_blur)): one pass, no temporary
            kept = float(np.minimum(d_sharp, d_blur, out=d_blur).sum(dtype=np.float64))
            blur[i] = max(blur[i], kept / m1)
    return [float(1.0 - b) for b in blur]


#: Box width of :func:`sharpness` for ``fine_sharpness``: a 3-pixel re-blur asks whether the
#: finest edges are still one or two pixels wide, which separates a slight blur (Gaussian
#: radius 1 px) from sharp content far better than the 11-pixel re-blur does on textures and
#: small images (benchmarks/validate.py, RESULTS.md).
FINE_BLUR_SIZE = 3


def _haar_level(gray: np.ndarray) -> tuple[np.ndarray, float]:
    """One 2x2 Haar step: (approximation at half size, mean detail energy per coefficient)."""
    h, w = gray.shape
    g = gray[: h - h % 2, : w - w % 2]
    a, b, c, d = g[0::2, 0::2], g[0::2, 1::2], g[1::2, 0::2], g[1::2, 1::2]
    detail = ((a - b + c - d) ** 2 + (a + b - c - d) ** 2 + (a - b - c + d) ** 2).mean() / 4.0
    return (a + b + c + d) * 0.25, float(detail)


def detail_ratio(gray: np.ndarray) -> float:
    """Natural log of the detail energy at the finest scale over the next coarser scale
    (Haar wavelets). Natural images are close to scale-invariant, so this ratio depends
    little on content; blurring removes the finest scale first and drives it down (about
    -0.5 for sharp photos, below -1.3 after a Gaussian blur of radius 2). Noise raises it.
    """
    if min(gray.shape) < 8:
        return 0.0
    approx, e1 = _haar_level(gray)
    _, e2 = _haar_level(approx)
    return float(np.log((e1 + 1e-3) / (e2 + 1e-3)))


def _block_quantile_correction(block: int, quantile: float) -> float:
    """The factor by which the ``quantile`` of per-block sigma estimates undershoots the true
    sigma for pure Gaussian noise with k = block**2 samples per block: sqrt(chi2_q(k) / k),
    with the chi-square quantile from the Wilson-Hilferty approximation (accurate to 1e-3
    for k >= 30; keeps scipy.stats, 0.6 s to import, out of every worker)."""
    from statistics import NormalDist

    k = block * block
    z = NormalDist().inv_cdf(quantile)
    chi2_q = k * (1.0 - 2.0 / (9.0 * k) + z * np.sqrt(2.0 / (9.0 * k))) ** 3
    return float(np.sqrt(chi2_q / k))


NOISE_BLOCK = 8
NOISE_QUANTILE = 0.1
NOISE_CORRECTION = _block_quantile_correction(NOISE_BLOCK, NOISE_QUANTILE)


def noise_sigma(gray: np.ndarray) -> float:
    """Estimated standard deviation of additive white noise, 0..255 units.

    The finest diagonal Haar detail coefficients (HH) of natural images are mostly noise
    except where there is texture or edges. Noise is everywhere; texture is not. So the
    HH plane is cut into 8x8 blocks, each block gives a sigma estimate (RMS), and the
    10th percentile over blocks is taken, corrected for the downward bias that picking a
    low percentile has on pure noise (chi distribution). Blocks that are clipped (mean
    luma below 8 or above 247) are ignored: saturation hides noise. Small images fall back
    to the median-absolute-deviation estimator of Donoho over all coefficients.
    """
    h, w = gray.shape
    h2, w2 = h - h % 2, w - w % 2
    if h2 < 2 or w2 < 2:
        return 0.0
    g = gray[:h2, :w2]
    a, b, c, d = g[0::2, 0::2], g[0::2, 1::2], g[1::2, 0::2], g[1::2, 1::2]
    hh = (a - b - c + d) * 0.5
    bs = NOISE_BLOCK
    bh, bw = hh.shape[0] // bs, hh.shape[1] // bs
    if bh * bw >= 16:
        blocks = hh[: bh * bs, : bw * bs].reshape(bh, bs, bw, bs)
        sig = np.sqrt((blocks**2).mean(axis=(1, 3)))
        mean = ((a + b + c + d) * 0.25)[: bh * bs, : bw * bs].reshape(bh, bs, bw, bs).mean(axis=(1, 3))
        usable = sig[(mean > 8.0) & (mean < 247.0)]
        if usable.size >= 8:
            return float(np.quantile(usable, NOISE_QUANTILE) / NOISE_CORRECTION)
    return float(np.median(np.abs(hh)) / 0.6745)


PCA_PATCH = 4
PCA_MAX_PATCHES = 4096


def pca_noise_sigma(plane: np.ndarray) -> float:
    """Estimated standard deviation of additive white noise from the patches' principal
    components, 0..255 units (after Liu, Tanaka & Okutomi 2013 and Chen et al. 2015).

    White noise adds the same variance to every direction of the 4x4-patch space; texture and
    edges live in a few directions (natural images are smooth at the pixel scale). So the
    smallest eigenvalue of the patch covariance is noise, even where every block is textured
    (gravel, foliage, a 32-px thumbnail), which :func:`noise_sigma`'s flattest-block estimate
    takes for noise. Binary ink on paper is the opposite case (every 4x4 patch across an edge
    is a new direction, flat paper is noise-free): there the block estimate is right. Both only
    ever over-read noise, so :func:`measure_pixels` takes the smaller. Patch positions are
    taken on a regular grid (at most ``PCA_MAX_PATCHES``); the smallest sample eigenvalue of
    n patches of pure noise is low by (1 - sqrt(16 / n)) squared (Marchenko-Pastur), undone.
    Images smaller than 2 patches a side: NaN (no estimate)."""
    p = PCA_PATCH
    h, w = plane.shape
    if h < 2 * p or w < 2 * p:
        return float("nan")
    step = pca_step(h, w)
    # every window (y, x, row, col) = plane[y + row, x + col]; the grid's, one per row of x
    windows = np.lib.stride_tricks.sliding_window_view(plane, (p, p))[::step, ::step]
    x = np.array(windows, dtype=np.float64).reshape(-1, p * p)
    x -= x.mean(axis=0)
    return pca_sigma_of_patches(x)


def pca_step(h: int, w: int) -> int:
    """The grid step of :func:`pca_noise_sigma`'s patches in an ``h`` x ``w`` plane (at most
    ``PCA_MAX_PATCHES`` of them)."""
    ny, nx = h - PCA_PATCH + 1, w - PCA_PATCH + 1
    return max(1, int(np.ceil(np.sqrt(ny * nx / PCA_MAX_PATCHES))))


def quantile_linear(values: np.ndarray, q: float) -> float:
    """``np.quantile(values, q)`` (the default "linear" method) for a 1-D float array without
    NaN, computed the way numpy does (same bits; a test compares them) in a fifth of the
    time on the few dozen values of an image's noise blocks."""
    s = np.sort(values)
    n = len(s)
    virtual = (n - 1) * q
    if virtual >= n - 1:
        return s[-1]
    i = math.floor(virtual)
    gamma = virtual - i
    a, b = s[i], s[i + 1]
    diff = b - a
    return b - diff * (1 - gamma) if gamma >= 0.5 else a + diff * gamma


def pca_sigmas_of_patches(x: np.ndarray) -> list[float]:
    """:func:`pca_sigma_of_patches` of each of a stack of patch sets, ``x`` (k, n, 16): one
    batched product and eigenvalue call, the same numbers (numpy runs the same BLAS and
    LAPACK routine on each matrix of a stack)."""
    n = x.shape[1]
    smallest = np.linalg.eigvalsh(np.matmul(x.transpose(0, 2, 1), x) / n)[:, 0]
    return [_pca_sigma(float(v), n) for v in smallest]


def pca_sigma_of_patches(x: np.ndarray) -> float:
    """:func:`pca_noise_sigma` from its patches: ``x`` float64 (n, 16), one flattened 4x4
    patch a row, each column minus its mean."""
    n = len(x)
    return _pca_sigma(float(np.linalg.eigvalsh(x.T @ x / n)[0]), n)


def _pca_sigma(smallest: float, n: int) -> float:
    """Noise sigma from the smallest eigenvalue of ``n`` patches' covariance, the
    Marchenko-Pastur bias of a finite sample undone."""
    return float(np.sqrt(max(smallest, 0.0)) / (1.0 - np.sqrt(PCA_PATCH * PCA_PATCH / n)))


def smaller_noise(block: float, pca: float) -> float:
    """One plane's noise sigma from its two estimates: the smaller, each over-reading a
    different kind of content as noise; the block one alone where the plane is too small for
    patches (``pca`` NaN)."""
    return block if np.isnan(pca) else min(block, pca)


def plane_noise_sigma(plane: np.ndarray) -> float:
    """The noise sigma of one plane: :func:`smaller_noise` of the flattest-block estimate
    (:func:`noise_sigma`) and the patch-PCA one (:func:`pca_noise_sigma`)."""
    return smaller_noise(noise_sigma(plane), pca_noise_sigma(plane))


def channel_spread(rgb: np.ndarray) -> float:
    """99th percentile over pixels of max(R,G,B) - min(R,G,B), 0..255. Near 0 means the
    image is grayscale even if it is stored as RGB (JPEG chroma noise stays below ~4)."""
    if rgb.ndim != 3 or rgb.shape[2] < 3 or not rgb.size:
        return 0.0
    r, g, b = rgb[..., 0], rgb[..., 1], rgb[..., 2]
    # Elementwise max/min of three planes is ~10x faster than a reduction over axis 2.
    spread = np.maximum(np.maximum(r, g), b) - np.minimum(np.minimum(r, g), b)  # uint8, >= 0
    return hist_percentile(np.bincount(spread.ravel(), minlength=256), 99)


def colorfulness(rgb: np.ndarray, planes: tuple[np.ndarray, ...] | None = None) -> float:
    """Hasler & Suesstrunk (2003) colorfulness, 0 (gray) to ~150 (very colorful)."""
    if not rgb.size:
        return 0.0
    r, g, b = planes if planes is not None else rgb_planes(rgb)
    rg = r - g
    yb = 0.5 * (r + g) - b
    return float(np.hypot(rg.std(), yb.std()) + 0.3 * np.hypot(rg.mean(), yb.mean()))


def measure_pixels(
    rgb: np.ndarray,
    gray: np.ndarray | None = None,
    planes: tuple[np.ndarray, ...] | None = None,
    gray_u8: np.ndarray | None = None,
) -> dict[str, float]:
    """All pixel properties of one (already downscaled) RGB uint8 image. ``gray``,
    ``planes``, ``gray_u8``: its :func:`luminance`, float planes and rounded luminance if
    the caller already has them. Each plane is converted to float once and each histogram
    made once (the same numbers as calling the measures one by one)."""
    planes = rgb_planes(rgb) if planes is None else planes
    gray = luminance(rgb, planes) if gray is None else gray
    hist = _histogram(gray) if gray_u8 is None else np.bincount(gray_u8.ravel(), minlength=256)
    out = brightness_stats(gray, hist)
    out["contrast"] = contrast(gray)
    out["entropy"] = entropy_bits(gray, hist)
    out["sharpness"], out["fine_sharpness"] = sharpnesses(gray, (11, FINE_BLUR_SIZE))
    out["laplacian_var"] = laplacian_variance(gray)
    out["detail_ratio"] = detail_ratio(gray)
    # Per channel, then averaged: sensor noise is independent per channel, and a user's
    # "sigma 20" means 20 on each channel's 0..255 scale (luma would show only ~0.67 of it).
    # Each plane's estimate is the smaller of two (see plane_noise_sigma).
    out["noise_sigma"] = float(np.mean([plane_noise_sigma(p) for p in planes]))
    out["channel_spread"] = channel_spread(rgb)
    out["colorfulness"] = colorfulness(rgb, planes)
    return out

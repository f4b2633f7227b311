"""Image quality: resolution, size, aspect, blur, noise, exposure, contrast, information,
color mode.

Thresholds come from the rules file. A per-image finding is for an image that differs from
its **content peers** (:func:`peer_stats`: its class, else the dataset), compared by a robust
z-score or a ratio to the peers' median (median and MAD, so the defects themselves do not
move the yardstick); an absolute bound keeps a uniformly fine dataset from producing flags.
When most of a dataset shares a property (every image 28 px, near-binary ink on paper, dark
micrographs), that is said once, as a dataset-level finding (no paths) with the share of
images and what it means for a 224-px ImageNet backbone, not as thousands of per-image
warnings. The only absolute per-image floor is physical: an image of (nearly) one value is
blank in any domain.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from auditor.checks.registry import register
from auditor.core.constraints import AT_LEAST_ONE, FRACTION, NON_NEGATIVE, POSITIVE, Int, Real
from auditor.core.context import CheckContext
from auditor.core.findings import Finding

_MAD_TO_SIGMA = 1.4826


def robust_z(values: pd.Series) -> pd.Series:
    """(x - median) / (1.4826 * MAD); 0 where the spread is zero."""
    v = values.astype(float)
    med = float(np.nanmedian(v))
    mad = float(np.nanmedian(np.abs(v - med))) * _MAD_TO_SIGMA
    if not np.isfinite(mad) or mad <= 1e-12:
        return pd.Series(0.0, index=v.index)
    return (v - med) / mad


def peer_stats(ctx: CheckContext, t: pd.DataFrame, values: pd.Series) -> tuple[pd.Series, pd.Series]:
    """What ``values`` (one per row of ``t`` = ``ctx.ok``) typically are for images of the same
    content, and how much they vary there: the median and the robust spread (1.4826 x MAD)
    over the image's class (labeled data, classes with at least ``min_images_per_peer_class``
    images; classes under ``min_images_for_relative`` images get the pooled spread of every
    image's difference from its class median), else over the whole dataset. A dark
    micrograph is compared with micrographs, a blurred digit with digits of its class.

    Not over embedding neighbours: the backbone groups defective images together (blurred
    images are each other's nearest neighbours), so their neighbours' median is blurred too
    (measured on the validation suite: recall of strong blur 0.0-0.5 with neighbours, 0.75-1.0
    with classes)."""
    v = values.astype(float)
    arr = v.to_numpy()
    med = float(np.nanmedian(arr)) if len(arr) else np.nan
    center = pd.Series(med, index=v.index)
    spread = pd.Series(float(np.nanmedian(np.abs(arr - med))) * _MAD_TO_SIGMA if len(arr) else np.nan, index=v.index)
    labels = t["label"].map(lambda x: x if isinstance(x, str) else None)
    if labels.notna().any():
        minimum = int(ctx.settings["min_images_per_peer_class"])
        use = labels.notna() & (labels.map(labels.value_counts()) >= minimum)
        c = v.groupby(labels).transform("median")
        center[use] = c[use]
        # a spread needs more images than a median: small classes get the pooled one
        sizes = labels.map(labels.value_counts())
        wide = use & (sizes >= int(ctx.settings["min_images_for_relative"]))
        local = (v - c).abs().groupby(labels).transform("median") * _MAD_TO_SIGMA
        pooled = float(np.nanmedian(np.abs(v - center))) * _MAD_TO_SIGMA
        spread[use] = pooled
        spread[wide] = local[wide]
    return center, spread


def peer_center(ctx: CheckContext, t: pd.DataFrame, values: pd.Series) -> pd.Series:
    """The content peers' median of ``values`` (:func:`peer_stats`)."""
    return peer_stats(ctx, t, values)[0]


def peer_z(
    ctx: CheckContext, t: pd.DataFrame, values: pd.Series, min_spread: float = 0.0, local: bool = True
) -> pd.Series:
    """Robust z-score of each value against its content peers (:func:`peer_stats`): the
    difference from the peers' median over their spread (``local``; else over the pooled
    spread of every image's difference from its peers), the spread at least a quarter of
    the dataset-wide spread of those differences and at least ``min_spread`` (so that peers
    that happen to agree closely do not make every small difference count); +-inf for any
    difference from peers that agree exactly."""
    center, spread = peer_stats(ctx, t, values)
    resid = values.astype(float) - center
    pooled = float(np.nanmedian(np.abs(resid))) * _MAD_TO_SIGMA if len(resid) else 0.0
    floor = max(0.25 * pooled if np.isfinite(pooled) else 0.0, min_spread)
    scale = spread.fillna(floor).clip(lower=floor) if local else pd.Series(max(pooled, min_spread), index=t.index)
    with np.errstate(divide="ignore", invalid="ignore"):
        # peers that agree exactly (every digit's highlights at 255): any difference counts
        z = np.where(scale > 1e-12, resid / scale, np.sign(resid) * np.inf)
    return pd.Series(np.nan_to_num(z, nan=0.0, posinf=np.inf, neginf=-np.inf), index=values.index)


def _findings(check: str, rows: pd.DataFrame, score: pd.Series, message, details) -> list[Finding]:
    """One finding per row, worst (highest score) first."""
    order = score.loc[rows.index].sort_values(ascending=False, kind="stable")
    # the rows as dicts once (a DataFrame row lookup per finding cost 0.7 s for 1,900 findings)
    records = rows.to_dict("index")
    out = []
    for idx, value in zip(order.index, order.to_numpy(), strict=True):
        row = records[idx]
        out.append(Finding(check, [row["path"]], float(value), message(row), details(row)))
    return out


@register(
    "low_resolution",
    "quality",
    {"min_side_px": AT_LEAST_ONE, "relative_factor": Real(1), "floor_relative_factor": Real(1)},
)
def low_resolution(ctx: CheckContext, params: dict) -> list[Finding]:
    """Images more than ``relative_factor`` times smaller (shorter side) than the dataset's
    median, or below ``min_side_px`` and ``floor_relative_factor`` times smaller than the
    median in a dataset that is mostly not (a 29-px copy among 32-px images is not a
    resolution problem of its own). A dataset whose median
    shorter side is below ``min_side_px`` gets one dataset-level finding instead. Score:
    median side / image side."""
    t = ctx.ok
    if t.empty:
        return []
    side = np.minimum(t["width"], t["height"]).astype(float)
    med = float(side.median())
    small_dataset = med < params["min_side_px"]
    flag = (side < params["min_side_px"]) & (side * params["floor_relative_factor"] < med) & ~small_dataset
    if ctx.relative_ok(len(t)):
        flag |= side * params["relative_factor"] < med
    score = med / side.clip(lower=1)
    out = _findings(
        "low_resolution", t[flag], score,
        lambda r: f"{r['path']}: {r['width']}x{r['height']} px, dataset median shorter side {med:.0f} px",
        lambda r: {"width": int(r["width"]), "height": int(r["height"]), "dataset_median_side": med},
    )  # fmt: skip
    if small_dataset:
        frac = float((side < params["min_side_px"]).mean())
        up = 224.0 / max(med, 1.0)
        out.append(_dataset_finding(
            "low_resolution",
            f"{100 * frac:.0f}% of the images are smaller than {params['min_side_px']} px (median shorter side "
            f"{med:.0f} px): a 224-px ImageNet backbone sees them upsampled {up:.0f}x, far from the scale of "
            "its pretraining objects; train at a smaller input size or expect to fine-tune more of the network",
            up, {"dataset_median_side": med, "fraction": frac, "upsampling_to_224": up},
        ))  # fmt: skip
    return out


@register("odd_size", "quality", {"relative_factor": Real(1)})
def odd_size(ctx: CheckContext, params: dict) -> list[Finding]:
    """Images more than ``relative_factor`` times larger (square root of area) than the
    dataset median; smaller ones are ``low_resolution``. Score: size ratio."""
    t = ctx.ok
    if not ctx.relative_ok(len(t)):
        return []
    size = np.sqrt(t["width"].astype(float) * t["height"].astype(float))
    med = float(size.median())
    ratio = size / max(med, 1.0)
    flag = ratio > params["relative_factor"]
    return _findings(
        "odd_size", t[flag], ratio,
        lambda r: f"{r['path']}: {r['width']}x{r['height']} px is much larger than the dataset's typical {med:.0f} px",
        lambda r: {"width": int(r["width"]), "height": int(r["height"]), "dataset_median_size": med},
    )  # fmt: skip


@register("odd_aspect_ratio", "quality", {"max_ratio": Real(1), "relative_factor": Real(1)})
def odd_aspect_ratio(ctx: CheckContext, params: dict) -> list[Finding]:
    """Images with long/short side ratio above ``max_ratio``, or whose aspect differs from
    the dataset median aspect by more than ``relative_factor``x. Where most of the dataset is
    beyond ``max_ratio`` (slices of a volume, text lines), one dataset-level finding says so
    and only the images far from the dataset's median aspect get one of their own. Score:
    the factor."""
    t = ctx.ok
    if t.empty:
        return []
    aspect = t["width"].astype(float) / t["height"].astype(float).clip(lower=1)
    elong = np.maximum(aspect, 1.0 / aspect)
    med = float(aspect.median())
    rel = np.exp(np.abs(np.log(aspect / med)))
    share = _share(elong > params["max_ratio"])
    flag = (elong > params["max_ratio"]) & (share <= 0.5)
    if ctx.relative_ok(len(t)):
        flag |= rel > params["relative_factor"]
    score = np.maximum(elong, rel)
    out = _findings(
        "odd_aspect_ratio", t[flag], score,
        lambda r: f"{r['path']}: aspect {r['width']}:{r['height']} vs dataset median {med:.2f}",
        lambda r: {"aspect": float(r["width"]) / max(float(r["height"]), 1.0), "dataset_median_aspect": med},
    )  # fmt: skip
    if share > 0.5:
        out.append(_dataset_finding(
            "odd_aspect_ratio", f"{100 * share:.0f}% of the images are more than {params['max_ratio']:g}x longer "
            f"than wide (median aspect {med:.2f}): resizing them to a square input distorts them; pad or tile "
            "instead", float(np.median(elong)), {"fraction": share, "dataset_median_aspect": med},
        ))  # fmt: skip
    return out


def _dataset_finding(check: str, message: str, score: float, details: dict) -> Finding:
    return Finding(check, [], score, message, {"scope": "dataset", **details})


def _share(flag: pd.Series) -> float:
    return float(flag.mean()) if len(flag) else 0.0


@register(
    "blurry",
    "quality",
    {
        "robust_z": POSITIVE,
        "confirm_z": NON_NEGATIVE,
        "always_below": FRACTION,
        "dataset_soft_below": FRACTION,
        "min_side_px": Int(3),
        "max_fine_ratio": Real(0, 1),
    },
)
def blurry(ctx: CheckContext, params: dict) -> list[Finding]:
    """Images blurrier than their content peers: the fine sharpness (0..1, how much edge
    contrast survives a further 3-pixel blur) more than ``robust_z`` robust SDs below its
    peers' (:func:`peer_z`) and the sharpness (the same with an 11-pixel blur) more than
    ``confirm_z`` below its peers' too: both scales must agree, so one smooth tile among
    textured ones is not called blurred; and the fine sharpness at most ``max_fine_ratio`` x
    the peers' median (where peers agree closely, as tiles of one lawn do, a 10% softer tile
    is many SDs off but not blurred). An image with sharpness below ``always_below`` is
    flagged unless the dataset's median sharpness is below ``dataset_soft_below``; such a
    dataset gets one dataset-level finding instead (uniformly soft, e.g. upscaled). Score:
    1 - fine sharpness. Images under ``min_side_px`` are not judged (no edges to measure)."""
    t = ctx.ok
    t = t[np.minimum(t["width"], t["height"]) >= params["min_side_px"]]
    if t.empty:
        return []
    s = t["sharpness"].astype(float)
    fine = t["fine_sharpness"].astype(float)
    med = float(s.median())
    flag = (s < params["always_below"]) & (med >= params["dataset_soft_below"])
    if ctx.relative_ok(len(t)):
        peers_fine = peer_center(ctx, t, fine)
        flag |= (
            (peer_z(ctx, t, fine) < -params["robust_z"])
            & (peer_z(ctx, t, s) < -params["confirm_z"])
            & (fine <= params["max_fine_ratio"] * peers_fine)
        )
    fine_med = float(fine.median())
    out = _findings(
        "blurry",
        t[flag],
        1.0 - fine,
        lambda r: (
            f"{r['path']}: sharpness {r['fine_sharpness']:.2f} fine / {r['sharpness']:.2f} coarse "
            f"(dataset medians {fine_med:.2f} / {med:.2f})"
        ),
        lambda r: {
            "fine_sharpness": float(r["fine_sharpness"]), "sharpness": float(r["sharpness"]),
            "dataset_median": med, "dataset_median_fine": fine_med,
        },
    )  # fmt: skip
    if med < params["dataset_soft_below"]:
        soft_share = _share(s < params["dataset_soft_below"])
        out.append(
            _dataset_finding(
                "blurry",
                f"the whole dataset is soft: median sharpness {med:.2f} ({100 * soft_share:.0f}% of the images "
                f"below {params['dataset_soft_below']}); upscaled or out-of-focus data gives a pretrained backbone "
                "little fine texture to work with",
                1.0 - med,
                {"dataset_median": med, "fraction": soft_share},
            )
        )
    return out


@register(
    "noisy",
    "quality",
    {"robust_z": POSITIVE, "min_sigma": NON_NEGATIVE, "always_above": NON_NEGATIVE, "min_side_px": Int(2)},
)
def noisy(ctx: CheckContext, params: dict) -> list[Finding]:
    """Images noisier than their content peers: estimated noise sigma (0..255) above
    ``min_sigma`` and more than ``robust_z`` robust SDs above the peers' (:func:`peer_z` on
    log(1 + sigma), the spread at least 0.1, so that noise-free peers do not make every speck
    count), or above ``always_above`` when the peers are not that noisy. Images smaller than
    ``min_side_px`` are not judged (too few pixels to tell noise from content). A dataset whose
    median sigma is above ``always_above`` gets one dataset-level finding. Score: sigma."""
    t = ctx.ok
    if t.empty:
        return []
    # below min_side_px the estimator has too few pixels to tell noise from content
    sigma = t["noise_sigma"].astype(float).where(np.minimum(t["width"], t["height"]) >= params["min_side_px"], 0.0)
    med = float(sigma.median())
    logs = np.log1p(sigma)
    center = peer_center(ctx, t, logs)
    flag = (sigma > params["always_above"]) & (np.expm1(center) <= params["always_above"])
    if ctx.relative_ok(len(t)):
        flag |= (peer_z(ctx, t, logs, min_spread=0.1) > params["robust_z"]) & (sigma > params["min_sigma"])
    # the content peers' median sigma (its class's, else the dataset's)
    rows = t[flag].assign(peer_sigma=np.expm1(center)[flag])
    out = _findings(
        "noisy", rows, sigma,
        lambda r: f"{r['path']}: noise sigma {r['noise_sigma']:.1f} (its peers' median {r['peer_sigma']:.1f}, "
                  f"dataset median {med:.1f})",
        lambda r: {"noise_sigma": float(r["noise_sigma"]), "dataset_median": med,
                   "peer_median": float(r["peer_sigma"])},
    )  # fmt: skip
    if med > params["always_above"]:
        out.append(_dataset_finding(
            "noisy", f"the whole dataset is noisy: median noise sigma {med:.1f} (0..255); denoise at acquisition "
            "or fine-tune with noise augmentation", med, {"dataset_median": med,
                                                           "fraction": _share(sigma > params["always_above"])},
        ))  # fmt: skip
    return out


def _exposure(
    ctx: CheckContext,
    check: str,
    value: pd.Series,
    flag_abs: pd.Series,
    params: dict,
    describe,
    details,
    dataset_message: str,
) -> list[Finding]:
    """Per-image findings for images beyond an absolute bound (``flag_abs``) whose ``value``
    (larger = better exposed: highlights, headroom to white, contrast) is also below
    ``relative_factor`` x their content peers' (:func:`peer_center`) and more than
    ``robust_z`` robust SDs below them on a log scale (:func:`peer_z`: where the peers vary
    a lot, as tiles of shade and sky do, only a far darker image counts); one dataset-level
    finding when most of the dataset is beyond the bound. Score: 1 - value / peers' value."""
    t = ctx.ok
    if t.empty:
        return []
    flag = flag_abs.copy()
    score = pd.Series(1.0, index=t.index)
    if ctx.relative_ok(len(t)):
        center = peer_center(ctx, t, value)
        # the pooled spread: a class made mostly of defects would hide one by its own spread
        z = peer_z(ctx, t, np.log1p(value.clip(lower=0.0)), local=False)
        flag &= (value < params["relative_factor"] * center) & (z < -params["robust_z"])
        if check in ("dark", "bright"):
            # a wrong exposure also squeezes the contrast; a thin glyph on white paper or a
            # bright window in a night scene keeps its full range
            contrast = t["contrast"].astype(float)
            flag &= contrast < params["relative_factor"] * peer_center(ctx, t, contrast)
        score = (1.0 - value / center.where(center > 0, 1.0)).clip(lower=0.0)
    out = _findings(check, t[flag], score, describe, details)
    share = _share(flag_abs)
    if share > 0.5:
        out.append(_dataset_finding(check, dataset_message.format(share=100 * share), share, {"fraction": share}))
    return out


@register(
    "dark",
    "quality",
    {"max_brightness_p95": Real(0, 255), "relative_factor": Real(0, 1, "right"), "robust_z": POSITIVE},
)
def dark(ctx: CheckContext, params: dict) -> list[Finding]:
    """Underexposed images: 95% of pixels darker than ``max_brightness_p95`` (luma 0..255), the
    95th percentile and the contrast below ``relative_factor`` x its content peers' (a dark
    micrograph among dark micrographs is not underexposed). Most of the dataset dark: one dataset-level
    finding. Score: 1 - p95 / peers' p95."""
    t = ctx.ok
    p95 = t["brightness_p95"].astype(float)
    lim = params["max_brightness_p95"]
    return _exposure(
        ctx, "dark", p95, p95 < lim, params,
        lambda r: f"{r['path']}: 95% of pixels darker than {r['brightness_p95']:.0f} (luma 0..255)",
        lambda r: {"brightness_p95": float(r["brightness_p95"]), "threshold": lim},
        "{share:.0f}% of the images are dark (95% of pixels darker than " + f"{lim:.0f}): dark by nature (night, "
        "fluorescence) or underexposed; ImageNet statistics differ, normalise or fine-tune more of the network",
    )  # fmt: skip


@register(
    "bright",
    "quality",
    {"min_brightness_p05": Real(0, 255), "relative_factor": Real(0, 1, "right"), "robust_z": POSITIVE},
)
def bright(ctx: CheckContext, params: dict) -> list[Finding]:
    """Overexposed images: 95% of pixels brighter than ``min_brightness_p05`` (luma 0..255), the
    5th percentile's headroom to white (255 - p05) and the contrast below ``relative_factor`` x
    its content peers' (a page of text among pages, or a thin glyph on white, is not
    overexposed). Most of the dataset bright: one
    dataset-level finding. Score: 1 - headroom / peers' headroom."""
    t = ctx.ok
    p05 = t["brightness_p05"].astype(float)
    lim = params["min_brightness_p05"]
    return _exposure(
        ctx, "bright", 255.0 - p05, p05 > lim, params,
        lambda r: f"{r['path']}: 95% of pixels brighter than {r['brightness_p05']:.0f} (luma 0..255)",
        lambda r: {"brightness_p05": float(r["brightness_p05"]), "threshold": lim},
        "{share:.0f}% of the images are bright (95% of pixels brighter than " + f"{lim:.0f}): light backgrounds "
        "by nature (documents, products on white) or overexposed",
    )  # fmt: skip


@register(
    "low_contrast",
    "quality",
    {"max_contrast": Real(0, 128), "relative_factor": Real(0, 1, "right"), "robust_z": POSITIVE},
)
def low_contrast(ctx: CheckContext, params: dict) -> list[Finding]:
    """Washed-out images: RMS contrast (luma standard deviation, 0..255) below
    ``max_contrast``, below ``relative_factor`` x its content peers' and ``robust_z`` robust SDs
    below them (log scale). Score: 1 - contrast / peers' contrast."""
    t = ctx.ok
    c = t["contrast"].astype(float)
    lim = params["max_contrast"]
    return _exposure(
        ctx, "low_contrast", c, c < lim, params,
        lambda r: f"{r['path']}: contrast {r['contrast']:.1f} (luma standard deviation, 0..255)",
        lambda r: {"contrast": float(r["contrast"]), "threshold": lim},
        "{share:.0f}% of the images have low contrast (luma standard deviation below " + f"{lim:.0f}): "
        "normalise contrast in preprocessing (the backbone expects ImageNet-like statistics)",
    )  # fmt: skip


@register(
    "low_information",
    "quality",
    {
        "max_entropy_bits": Real(0, 8),
        "relative_factor": Real(0, 1, "right"),
        "robust_z": POSITIVE,
        "blank_contrast": Real(0, 128),
    },
)
def low_information(ctx: CheckContext, params: dict) -> list[Finding]:
    """Nearly blank images: luma standard deviation (0..255) below ``blank_contrast`` (one
    value and a little noise: blank in any domain), or entropy (bits, 0..8) below
    ``max_entropy_bits``, below ``relative_factor`` x its content peers' and ``robust_z``
    robust SDs below them (log scale, pooled spread). A dataset mostly below ``max_entropy_bits``
    (near-binary ink on paper, silhouettes) gets one dataset-level finding, and then only
    blank images a finding of their own. Score: how far
    below the bound."""
    t = ctx.ok
    if t.empty:
        return []
    e = t["entropy"].astype(float)
    lim = params["max_entropy_bits"]
    blank = t["contrast"].astype(float) < params["blank_contrast"]
    share = _share(e < lim)
    # on near-binary data (most images under the bound) entropy measures the share of ink,
    # not information: a thin digit is not blank; only blank images are flagged there
    flag = (e < lim) & (share <= 0.5)
    if ctx.relative_ok(len(t)):
        z = peer_z(ctx, t, np.log1p(e), local=False)
        flag &= (e < params["relative_factor"] * peer_center(ctx, t, e)) & (z < -params["robust_z"])
    flag |= blank

    def message(r) -> str:
        # a blank image is blank by its contrast, whatever its entropy (a flat tile's noise can
        # spread over a dozen gray levels: "entropy 3.4 bits" alone read as above the bound)
        if r["contrast"] < params["blank_contrast"]:
            return (
                f"{r['path']}: blank (luma standard deviation {r['contrast']:.1f} of 255, under "
                f"{params['blank_contrast']:g})"
            )
        return f"{r['path']}: entropy {abs(r['entropy']):.2f} bits (under {lim:g})"

    out = _findings(
        "low_information", t[flag], (lim - e).clip(lower=0.0).where(~blank, 1.0), message,
        lambda r: {"entropy": float(r["entropy"]), "threshold": lim, "contrast": float(r["contrast"]),
                   "blank": bool(r["contrast"] < params["blank_contrast"])},
    )  # fmt: skip
    if share > 0.5:
        out.append(_dataset_finding(
            "low_information", f"{100 * share:.0f}% of the images hold under {lim:g} bits of gray levels "
            "(near-binary: ink on paper, silhouettes): far from ImageNet photographs; expect to fine-tune "
            "more of the network", share, {"fraction": share, "dataset_median": float(e.median())},
        ))  # fmt: skip
    return out


@register("grayscale", "quality", {"max_channel_spread": Real(0, 255), "max_minority_fraction": FRACTION})
def grayscale(ctx: CheckContext, params: dict) -> list[Finding]:
    """Color-mode inconsistency: grayscale images (99th-percentile channel spread at most
    ``max_channel_spread``, whatever the file's mode) in a mostly color dataset, or color
    images in a mostly grayscale one, when the minority is at most
    ``max_minority_fraction`` of the images. Score 1."""
    t = ctx.ok
    if t.empty:
        return []
    is_gray = t["channel_spread"].astype(float) <= params["max_channel_spread"]
    frac_gray = float(is_gray.mean())
    minority_gray = frac_gray <= 0.5
    minority = is_gray if minority_gray else ~is_gray
    frac = frac_gray if minority_gray else 1.0 - frac_gray
    if frac == 0 or frac > params["max_minority_fraction"]:
        return []
    what, rest = ("grayscale", "color") if minority_gray else ("color", "grayscale")
    return [
        Finding(
            "grayscale",
            [r["path"]],
            1.0,
            f"{r['path']}: {what} image in a dataset that is {100 * (1 - frac):.0f}% {rest}",
            {"is_grayscale": minority_gray, "mode": r["mode"], "minority_fraction": frac},
        )
        for _, r in t[minority].iterrows()
    ]

"""Image quality: resolution, size, aspect, blur, noise, exposure, contrast, information,
color mode.

Thresholds come from the rules file. Where a user means "worse than the rest of my data"
(blur, noise, resolution, aspect), an image is compared with its dataset by a robust
z-score (median and MAD, so the defects themselves do not move the yardstick), and an
absolute bound keeps a uniformly fine dataset from producing flags. Where a property has
a meaning of its own (a dark image is dark whatever its peers), the bound is absolute.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from . import CheckContext, Finding, register

_MAD_TO_SIGMA = 1.4826


def robust_z(values: pd.Series) -> pd.Series:
    """(x - median) / (1.4826 * MAD); 0 where the spread is zero."""
    v = values.astype(float)
    med = float(np.nanmedian(v))
    mad = float(np.nanmedian(np.abs(v - med))) * _MAD_TO_SIGMA
    if not np.isfinite(mad) or mad <= 1e-12:
        return pd.Series(0.0, index=v.index)
    return (v - med) / mad


def _relative_ok(ctx: CheckContext, n: int) -> bool:
    return n >= int(ctx.settings.get("min_images_for_relative", 20))


def _findings(check: str, rows: pd.DataFrame, score: pd.Series, message, details) -> list[Finding]:
    """One finding per row, worst (highest score) first."""
    out = []
    for idx in score.loc[rows.index].sort_values(ascending=False, kind="stable").index:
        row = rows.loc[idx]
        out.append(Finding(check, [row["path"]], float(score.loc[idx]), message(row), details(row)))
    return out


@register("low_resolution", "quality", {"min_side_px": int, "relative_factor": (int, float)})
def low_resolution(ctx: CheckContext, params: dict) -> list[Finding]:
    """Images whose shorter side is below ``min_side_px``, or more than ``relative_factor``
    times smaller than the dataset's median shorter side. Score: median side / image side."""
    t = ctx.ok
    if t.empty:
        return []
    side = np.minimum(t["width"], t["height"]).astype(float)
    med = float(side.median())
    flag = side < params["min_side_px"]
    if _relative_ok(ctx, len(t)):
        flag |= side * params["relative_factor"] < med
    score = med / side.clip(lower=1)
    return _findings(
        "low_resolution", t[flag], score,
        lambda r: f"{r['path']}: {r['width']}x{r['height']} px, dataset median shorter side {med:.0f} px",
        lambda r: {"width": int(r["width"]), "height": int(r["height"]), "dataset_median_side": med},
    )  # fmt: skip


@register("odd_size", "quality", {"relative_factor": (int, float)})
def odd_size(ctx: CheckContext, params: dict) -> list[Finding]:
    """Images more than ``relative_factor`` times larger (square root of area) than the
    dataset median; smaller ones are ``low_resolution``. Score: size ratio."""
    t = ctx.ok
    if not _relative_ok(ctx, len(t)):
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


@register("odd_aspect_ratio", "quality", {"max_ratio": (int, float), "relative_factor": (int, float)})
def odd_aspect_ratio(ctx: CheckContext, params: dict) -> list[Finding]:
    """Images with long/short side ratio above ``max_ratio``, or whose aspect differs from
    the dataset median aspect by more than ``relative_factor``x. Score: the factor."""
    t = ctx.ok
    if t.empty:
        return []
    aspect = t["width"].astype(float) / t["height"].astype(float).clip(lower=1)
    elong = np.maximum(aspect, 1.0 / aspect)
    med = float(aspect.median())
    rel = np.exp(np.abs(np.log(aspect / med)))
    flag = elong > params["max_ratio"]
    if _relative_ok(ctx, len(t)):
        flag |= rel > params["relative_factor"]
    score = np.maximum(elong, rel)
    return _findings(
        "odd_aspect_ratio", t[flag], score,
        lambda r: f"{r['path']}: aspect {r['width']}:{r['height']} vs dataset median {med:.2f}",
        lambda r: {"aspect": float(r["width"]) / max(float(r["height"]), 1.0), "dataset_median_aspect": med},
    )  # fmt: skip


def _dataset_finding(check: str, message: str, score: float, details: dict) -> Finding:
    return Finding(check, [], score, message, {"scope": "dataset", **details})


@register(
    "blurry",
    "quality",
    {
        "robust_z": (int, float),
        "max_detail_ratio": (int, float),
        "max_sharpness": (int, float),
        "always_below": (int, float),
        "dataset_soft_below": (int, float),
    },
)
def blurry(ctx: CheckContext, params: dict) -> list[Finding]:
    """Images blurrier than their peers. Two measures must agree: the fine-detail ratio
    (log energy of the finest wavelet scale over the next, which blur drives down) is more
    than ``robust_z`` robust SDs below the dataset median and below ``max_detail_ratio``,
    and the sharpness (0..1) is below ``max_sharpness``. Any image with sharpness below
    ``always_below`` is flagged. A dataset whose median sharpness is below
    ``dataset_soft_below`` gets one dataset-level finding (uniformly soft, e.g. upscaled).
    Score: 1 - sharpness."""
    t = ctx.ok
    if t.empty:
        return []
    s = t["sharpness"].astype(float)
    ratio = t["detail_ratio"].astype(float)
    flag = s < params["always_below"]
    if _relative_ok(ctx, len(t)):
        z = robust_z(ratio)
        flag |= (z < -params["robust_z"]) & (ratio < params["max_detail_ratio"]) & (s < params["max_sharpness"])
    med = float(s.median())
    out = _findings(
        "blurry",
        t[flag],
        1.0 - s,
        lambda r: (
            f"{r['path']}: sharpness {r['sharpness']:.2f}, fine detail ratio {r['detail_ratio']:.2f} "
            f"(dataset medians {med:.2f}, {ratio.median():.2f})"
        ),
        lambda r: {"sharpness": float(r["sharpness"]), "detail_ratio": float(r["detail_ratio"]), "dataset_median": med},
    )
    if med < params["dataset_soft_below"]:
        out.append(
            _dataset_finding(
                "blurry", f"the whole dataset is soft: median sharpness {med:.2f}", 1.0 - med, {"dataset_median": med}
            )
        )
    return out


@register(
    "noisy",
    "quality",
    {"robust_z": (int, float), "min_sigma": (int, float), "always_above": (int, float)},
)
def noisy(ctx: CheckContext, params: dict) -> list[Finding]:
    """Images noisier than their peers: estimated noise sigma (0..255) more than
    ``robust_z`` robust SDs above the dataset median (on a log scale) and above
    ``min_sigma``, or above ``always_above``. Score: sigma."""
    t = ctx.ok
    if t.empty:
        return []
    sigma = t["noise_sigma"].astype(float)
    flag = sigma > params["always_above"]
    if _relative_ok(ctx, len(t)):
        z = robust_z(np.log1p(sigma))
        flag |= (z > params["robust_z"]) & (sigma > params["min_sigma"])
    med = float(sigma.median())
    return _findings(
        "noisy", t[flag], sigma,
        lambda r: f"{r['path']}: noise sigma {r['noise_sigma']:.1f} (dataset median {med:.1f})",
        lambda r: {"noise_sigma": float(r["noise_sigma"]), "dataset_median": med},
    )  # fmt: skip


def _absolute(check: str, column: str, below: bool, threshold: float, unit: str):
    def run(ctx: CheckContext) -> list[Finding]:
        t = ctx.ok
        v = t[column].astype(float)
        flag = v < threshold if below else v > threshold
        score = (threshold - v) if below else (v - threshold)
        return _findings(
            check, t[flag], score,
            lambda r: f"{r['path']}: {column.replace('_', ' ')} {r[column]:.1f} {unit}".rstrip(),
            lambda r: {column: float(r[column]), "threshold": threshold},
        )  # fmt: skip

    return run


@register("dark", "quality", {"max_brightness_p95": (int, float)})
def dark(ctx: CheckContext, params: dict) -> list[Finding]:
    """Underexposed images: 95% of pixels darker than ``max_brightness_p95`` (luma 0..255).
    Score: how far below."""
    return _absolute("dark", "brightness_p95", True, params["max_brightness_p95"], "")(ctx)


@register("bright", "quality", {"min_brightness_p05": (int, float)})
def bright(ctx: CheckContext, params: dict) -> list[Finding]:
    """Overexposed images: 95% of pixels brighter than ``min_brightness_p05`` (luma 0..255).
    Score: how far above."""
    return _absolute("bright", "brightness_p05", False, params["min_brightness_p05"], "")(ctx)


@register("low_contrast", "quality", {"max_contrast": (int, float)})
def low_contrast(ctx: CheckContext, params: dict) -> list[Finding]:
    """Washed-out images: RMS contrast (luma standard deviation, 0..255) below
    ``max_contrast``. Score: how far below."""
    return _absolute("low_contrast", "contrast", True, params["max_contrast"], "")(ctx)


@register("low_information", "quality", {"max_entropy_bits": (int, float)})
def low_information(ctx: CheckContext, params: dict) -> list[Finding]:
    """Nearly blank images: luma histogram entropy below ``max_entropy_bits`` (0..8).
    Score: how far below."""
    return _absolute("low_information", "entropy", True, params["max_entropy_bits"], "bits")(ctx)


@register("grayscale", "quality", {"max_channel_spread": (int, float), "max_minority_fraction": (int, float)})
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

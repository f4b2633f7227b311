"""What differs between two sets of images, in words a person acts on.

- :func:`compare_properties`: every measured property (brightness, contrast, sharpness,
  noise, resolution, aspect ratio, colour, colour mode, file format, JPEG quality) compared
  with a two-sample Kolmogorov-Smirnov test and a Wasserstein distance (numeric) or a
  chi-square test and the total variation distance (categorical), ranked, and phrased
  ("target images are 3.1x smaller (median 512 -> 165 px)"). Acquisition properties (codec,
  resizing, colour mode) are marked: they can fake a content shift.
- :func:`compare_labels`: class proportions (chi-square, total variation distance) and the
  classes missing on one side.

Measurement only: no thresholds here; :mod:`auditor.checks.shift` decides what is a finding.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import pandas as pd


@dataclass(frozen=True)
class Property:
    name: str
    title: str  # in a sentence: "resolution", "noise level"
    values: Callable[[pd.DataFrame], pd.Series]
    kind: str = "numeric"  # numeric | categorical
    log: bool = False  # compared as ratios (scale-like, positive)
    unit: str = ""
    more: str = "higher"  # word for a larger target median
    less: str = "lower"
    acquisition: bool = False  # codec, resizing, colour mode: how the images were made, not what they show


def _col(name: str) -> Callable[[pd.DataFrame], pd.Series]:
    return lambda t: pd.to_numeric(t[name], errors="coerce") if name in t else pd.Series(np.nan, index=t.index)


def _cat(name: str) -> Callable[[pd.DataFrame], pd.Series]:
    return lambda t: t[name].astype("string") if name in t else pd.Series(pd.NA, index=t.index, dtype="string")


def _resolution(t: pd.DataFrame) -> pd.Series:
    return np.sqrt(_col("width")(t) * _col("height")(t))


def _aspect(t: pd.DataFrame) -> pd.Series:
    return _col("width")(t) / _col("height")(t)


PROPERTIES: tuple[Property, ...] = (
    Property("brightness", "brightness", _col("brightness_mean"), unit="luma", more="brighter", less="darker"),
    Property("contrast", "contrast", _col("contrast"), unit="luma SD", more="higher-contrast", less="lower-contrast"),
    Property("sharpness", "sharpness", _col("sharpness"), more="sharper", less="blurrier"),
    Property("noise", "noise level", _col("noise_sigma"), log=True, unit="sigma", more="noisier", less="cleaner"),
    Property("resolution", "resolution", _resolution, log=True, unit="px", more="larger", less="smaller",
             acquisition=True),
    Property("aspect_ratio", "aspect ratio", _aspect, log=True, more="wider", less="taller", acquisition=True),
    Property("colorfulness", "colour", _col("colorfulness"), more="more colourful", less="less colourful"),
    Property("color_mode", "colour mode", _cat("mode"), kind="categorical", acquisition=True),
    Property("format", "file format", _cat("format"), kind="categorical", acquisition=True),
    Property("jpeg_quality", "JPEG quality", _col("jpeg_quality"), unit="quality", more="higher-quality",
             less="lower-quality", acquisition=True),
)  # fmt: skip

#: Fewer values than this on either side: the property is not compared.
MIN_VALUES = 5


def _fmt(x: float) -> str:
    if not math.isfinite(x):
        return "n/a"
    a = abs(x)
    if a >= 100:
        return f"{x:.0f}"
    if a >= 10:
        return f"{x:.1f}"
    if a >= 1:
        return f"{x:.2f}"
    return f"{x:.3g}"


def _numeric(p: Property, ref: pd.Series, tgt: pd.Series, ref_name: str, tgt_name: str) -> dict | None:
    from scipy.stats import ks_2samp, wasserstein_distance

    r = ref.dropna().to_numpy(np.float64)
    t = tgt.dropna().to_numpy(np.float64)
    if p.log:
        r, t = r[r > 0], t[t > 0]
    if len(r) < MIN_VALUES or len(t) < MIN_VALUES:
        return None
    ks = ks_2samp(r, t)
    med_r, med_t = float(np.median(r)), float(np.median(t))
    tr, tt = (np.log(r), np.log(t)) if p.log else (r, t)
    spread = 1.4826 * float(np.median(np.abs(np.concatenate([tr - np.median(tr), tt - np.median(tt)]))))
    spread = max(spread, 1e-6 * max(abs(float(np.median(tr))), 1.0), 1e-9)
    effect = float((np.median(tt) - np.median(tr)) / spread)  # in pooled robust SDs (log scale if p.log)
    word = p.more if med_t > med_r else p.less
    unit = f" {p.unit}" if p.unit else ""
    if p.log and min(med_r, med_t) > 0 and math.isfinite(max(med_r, med_t)):
        ratio = max(med_t, med_r) / min(med_t, med_r)
        how = f"{ratio:.1f}x {word}" if ratio >= 1.1 else f"slightly {word}"
    else:
        ratio = None
        how = word
    text = (f"{tgt_name} images are {how} than {ref_name} images ({p.title}: median {_fmt(med_r)} -> "
            f"{_fmt(med_t)}{unit})")  # fmt: skip
    return {
        "property": p.name, "kind": "numeric", "statistic": float(ks.statistic), "p_value": float(ks.pvalue),
        "wasserstein": float(wasserstein_distance(r, t)), "effect": effect,
        "reference_median": med_r, "target_median": med_t, "ratio": ratio,
        "direction": "higher" if med_t > med_r else "lower",
        "n_reference": len(r), "n_target": len(t), "acquisition": p.acquisition, "text": text,
    }  # fmt: skip


def _shares(s: pd.Series) -> dict[str, float]:
    counts = s.value_counts()
    return {str(k): float(v / counts.sum()) for k, v in counts.items()}


def _share_text(shares: dict[str, float], top: int = 3) -> str:
    items = sorted(shares.items(), key=lambda kv: (-kv[1], kv[0]))[:top]
    return ", ".join(f"{k} {v:.0%}" for k, v in items)


def _categorical(p: Property, ref: pd.Series, tgt: pd.Series, ref_name: str, tgt_name: str) -> dict | None:
    r, t = ref.dropna(), tgt.dropna()
    if len(r) < MIN_VALUES or len(t) < MIN_VALUES:
        return None
    cats = sorted(set(r) | set(t))
    table = np.array([[int((r == c).sum()) for c in cats], [int((t == c).sum()) for c in cats]])
    rs, ts = _shares(r), _shares(t)
    tv = 0.5 * sum(abs(rs.get(c, 0.0) - ts.get(c, 0.0)) for c in cats)
    p_value = chi_square_p(table)
    text = f"{p.title} differs: {ref_name} {_share_text(rs)}; {tgt_name} {_share_text(ts)}"
    return {
        "property": p.name, "kind": "categorical", "statistic": float(tv), "p_value": p_value,
        "reference_shares": rs, "target_shares": ts, "effect": float(tv),
        "n_reference": len(r), "n_target": len(t), "acquisition": p.acquisition, "text": text,
    }  # fmt: skip


def chi_square_p(table: np.ndarray) -> float:
    """p-value of the chi-square test of homogeneity of a (2, k) count table (1.0 when
    there is a single category)."""
    from scipy.stats import chi2_contingency

    table = table[:, table.sum(axis=0) > 0]
    if table.shape[1] < 2 or (table.sum(axis=1) == 0).any():
        return 1.0
    return float(chi2_contingency(table, correction=False).pvalue)


def compare_properties(
    ref: pd.DataFrame, tgt: pd.DataFrame, ref_name: str = "reference", tgt_name: str = "target"
) -> list[dict]:
    """Compare every property of :data:`PROPERTIES` between two per-image tables (decoded
    rows only). Returns one dict per comparable property, most different first: ``statistic``
    is the KS statistic (numeric) or the total variation distance (categorical), both 0..1;
    ``effect`` the shift of the median in pooled robust SDs (numeric); ``text`` a sentence."""
    out = []
    for p in PROPERTIES:
        r, t = p.values(ref), p.values(tgt)
        got = (_numeric if p.kind == "numeric" else _categorical)(p, r, t, ref_name, tgt_name)
        if got is not None:
            out.append(got)
    return sorted(out, key=lambda d: (-round(d["statistic"], 3), -abs(d["effect"]), d["property"]))


def compare_labels(ref: pd.Series, tgt: pd.Series) -> dict | None:
    """Class proportions on both sides: chi-square p-value, total variation distance (0..1),
    the classes that moved most, and the classes present on only one side. None when either
    side is unlabeled."""
    r = ref.dropna().astype(str)
    t = tgt.dropna().astype(str)
    if r.empty or t.empty:
        return None
    cats = sorted(set(r) | set(t))
    table = np.array([[int((r == c).sum()) for c in cats], [int((t == c).sum()) for c in cats]])
    rs, ts = _shares(r), _shares(t)
    diffs = sorted(((c, ts.get(c, 0.0) - rs.get(c, 0.0)) for c in cats), key=lambda kv: (-abs(kv[1]), kv[0]))
    shared = table[:, (table > 0).all(axis=0)]
    return {
        "p_value": chi_square_p(shared) if shared.shape[1] >= 2 else 1.0,
        "tv_distance": float(0.5 * sum(abs(d) for _, d in diffs)),
        "reference_counts": dict(zip(cats, map(int, table[0]), strict=True)),
        "target_counts": dict(zip(cats, map(int, table[1]), strict=True)),
        "moved": [{"class": c, "reference_share": rs.get(c, 0.0), "target_share": ts.get(c, 0.0)}
                  for c, d in diffs[:5] if d != 0],
        "only_reference": sorted(set(r) - set(t)),
        "only_target": sorted(set(t) - set(r)),
    }  # fmt: skip

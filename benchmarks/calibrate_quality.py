"""Calibrate per-image quality rules on many images at once: every image of a domain's part is
measured clean and with each quality defect at both strengths (the same defects as
``validate.py``), and a rule is judged for each image *in turn* against its clean class peers.
That gives hundreds of injected images per cell instead of the 2-4 of ``validate.py``'s
injected version, so the share of clean images a rule flags (which must stay near 0 for the
check's precision at a 1% defect rate) and its recall are measured, not guessed.

    python benchmarks/calibrate_quality.py --part tune              # measure + print
    python benchmarks/calibrate_quality.py --part tune --cached     # re-judge saved measurements

The peers (class median and robust spread, pooled spread for classes under 20 images) are those
of :func:`auditor.checks.quality.peer_stats`, computed on the clean images only; an injected
image is compared with them as if it were the one defective image of its class. Prints, per
domain, the share of clean images flagged and the recall at strength 1 / 2 for the default
``blurry`` rule and the alternatives it was chosen over (RESULTS.md, issue 15).
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

import numpy as np
import pandas as pd

sys.path.insert(0, str(Path(__file__).resolve().parent))

from domains import DOMAINS  # noqa: E402
from validate import JPEG_DOMAINS, part_images  # noqa: E402

from auditor.demo.validation import as_rgb, encode_image, make_defect  # noqa: E402
from auditor.measure.batch import measure_file  # noqa: E402
from auditor.policy.rules import load_rules  # noqa: E402

VARIANTS = [
    ("clean", 0),
    ("blurry", 1),
    ("blurry", 2),
    ("noisy", 1),
    ("noisy", 2),
    ("dark", 1),
    ("dark", 2),
    ("bright", 1),
    ("bright", 2),
]
_MAD = 1.4826


def measure_domain(domain: str, part: str, n: int, seed: int) -> pd.DataFrame:
    fmt = "jpg" if domain in JPEG_DOMAINS else "png"
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for i, (label, img) in enumerate(part_images(domain, part, n, seed)):
            rgb = as_rgb(img)
            for variant, strength in VARIANTS:
                if variant == "clean":
                    data = encode_image(rgb, fmt)
                else:
                    data = make_defect(variant, strength, rgb, fmt, seed=i)
                path = Path(tmp) / f"x.{'png' if variant == 'noisy' else fmt}"
                path.write_bytes(data)
                _, props, _ = measure_file(str(path))
                keep = {k: v for k, v in props.items() if isinstance(v, (int, float)) and not isinstance(v, bool)}
                rows.append({"domain": domain, "i": i, "label": label, "variant": variant, "strength": strength,
                             **keep})  # fmt: skip
    return pd.DataFrame(rows)


def peer_z(
    rows: pd.DataFrame, clean: pd.DataFrame, col: str, relmin: int = 20, transform=None, min_spread: float = 0.0
) -> pd.Series:
    """Robust z of ``rows[col]`` against the clean images of the same label (as peer_z);
    ``transform`` (e.g. np.log1p) applied to the values first."""
    f = transform or (lambda x: x)
    v = f(clean[col].astype(float))
    center = v.groupby(clean["label"]).median()
    pooled = float(np.median(np.abs(v - clean["label"].map(center)))) * _MAD
    sizes = clean["label"].value_counts()
    local = v.groupby(clean["label"]).apply(lambda g: float(np.median(np.abs(g - g.median()))) * _MAD)
    spread = pd.Series(np.where(sizes.reindex(local.index) >= relmin, local, pooled), index=local.index)
    spread = spread.clip(lower=max(0.25 * pooled, min_spread))
    c, s = rows["label"].map(center), rows["label"].map(spread)
    return (f(rows[col].astype(float)) - c) / s.where(s > 1e-12, 1e-12)


def noise_rules(rows: pd.DataFrame, clean: pd.DataFrame, params: dict) -> dict[str, pd.Series]:
    """The ``noisy`` check's rule (auditor/checks/quality.py) at the default and other z."""
    sigma = rows["noise_sigma"].where(np.minimum(rows["width"], rows["height"]) >= params["min_side_px"], 0.0)
    center = np.expm1(rows["label"].map(np.log1p(clean["noise_sigma"]).groupby(clean["label"]).median()))
    z = peer_z(rows, clean, "noise_sigma", transform=np.log1p, min_spread=0.1)
    always = (sigma > params["always_above"]) & (center <= params["always_above"])
    return {
        f"robust_z {zt}{' (default)' if zt == params['robust_z'] else ''}":
            always | ((z > zt) & (sigma > params["min_sigma"]))
        for zt in sorted({params["robust_z"], 3.0, 4.0})
    }  # fmt: skip


def blur_rules(rows: pd.DataFrame, clean: pd.DataFrame, params: dict) -> dict[str, pd.Series]:
    z_fine, z_coarse = peer_z(rows, clean, "fine_sharpness"), peer_z(rows, clean, "sharpness")
    z_detail = peer_z(rows, clean, "detail_ratio")
    soft = (rows["detail_ratio"] < -0.6) | (rows["sharpness"] < 0.8)
    fine_center = rows["label"].map(clean["fine_sharpness"].groupby(clean["label"]).median())
    ratio = rows["fine_sharpness"] <= params["max_fine_ratio"] * fine_center
    return {
        "default (fine < -robust_z, coarse < -confirm_z, ratio)":
            (z_fine < -params["robust_z"]) & (z_coarse < -params["confirm_z"]) & ratio,
        "without max_fine_ratio": (z_fine < -params["robust_z"]) & (z_coarse < -params["confirm_z"]),
        "fine alone < -3": z_fine < -3,
        "coarse alone < -3": z_coarse < -3,
        "before (coarse < -4, detail < 0, soft)": (z_coarse < -4) & (z_detail < 0) & soft,
    }  # fmt: skip


def exposure_rules(check: str):
    """The ``dark`` / ``bright`` check's rule (auditor/checks/quality.py _exposure) at the
    default and other z: beyond the absolute bound, value (p95 / headroom to white) and
    contrast below relative_factor x the class median, value robust_z pooled SDs below it
    (log scale)."""

    def rules(rows: pd.DataFrame, clean: pd.DataFrame, params: dict) -> dict[str, pd.Series]:
        def value(t):
            return t["brightness_p95"] if check == "dark" else 255.0 - t["brightness_p05"]

        bound = (
            (rows["brightness_p95"] < params["max_brightness_p95"])
            if check == "dark"
            else (rows["brightness_p05"] > params["min_brightness_p05"])
        )
        v_clean = value(clean)
        center = rows["label"].map(v_clean.groupby(clean["label"]).median())
        c_center = rows["label"].map(clean["contrast"].groupby(clean["label"]).median())
        logs = np.log1p(v_clean.clip(lower=0))
        pooled = float(np.median(np.abs(logs - clean["label"].map(logs.groupby(clean["label"]).median())))) * _MAD
        z = (np.log1p(value(rows).clip(lower=0)) - np.log1p(center.clip(lower=0))) / max(pooled, 1e-12)
        base = (
            bound
            & (value(rows) < params["relative_factor"] * center)
            & (rows["contrast"] < params["relative_factor"] * c_center)
        )
        return {f"robust_z {zt}{' (default)' if zt == params['robust_z'] else ''}": base & (z < -zt)
                for zt in sorted({params["robust_z"], 3.0, 4.0, 4.5, 5.0})}  # fmt: skip

    return rules


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--part", choices=("tune", "holdout"), default="tune")
    ap.add_argument("--domains", default=",".join(DOMAINS))
    ap.add_argument("--images", type=int, default=400)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--save", default="benchmarks/data/calibrate_{part}.parquet")
    ap.add_argument("--cached", action="store_true", help="judge the saved measurements again")
    args = ap.parse_args()
    save = Path(args.save.format(part=args.part))
    if args.cached:
        table = pd.read_parquet(save)
    else:
        table = pd.concat([measure_domain(d, args.part, args.images, args.seed) for d in args.domains.split(",")])
        save.parent.mkdir(parents=True, exist_ok=True)
        table.to_parquet(save)
    table = table[table["width"].notna()]
    judge(table, "noisy", noise_rules, load_rules().checks["noisy"].params)
    for check in ("dark", "bright"):
        judge(table, check, exposure_rules(check), load_rules().checks[check].params)
    params = load_rules().checks["blurry"].params
    judge(table[np.minimum(table["width"], table["height"]) >= params["min_side_px"]], "blurry", blur_rules, params)


def judge(table: pd.DataFrame, defect: str, rules, params: dict) -> None:
    print(f"{defect}: share of clean images flagged, recall at strength 1 / 2 (each image made {defect} in turn)")
    for domain, g in table.groupby("domain", sort=False):
        clean = g[g["variant"] == "clean"]
        judged = {
            k: rules(g[(g["variant"] == v) & (g["strength"] == s)], clean, params)
            for k, (v, s) in {"clean": ("clean", 0), "s1": (defect, 1), "s2": (defect, 2)}.items()
        }
        for name in judged["clean"]:
            print(f"  {domain:12s} {name:48s} clean {100 * judged['clean'][name].mean():4.1f}%  "
                  f"recall {judged['s1'][name].mean():.2f} / {judged['s2'][name].mean():.2f}")  # fmt: skip


if __name__ == "__main__":
    main()

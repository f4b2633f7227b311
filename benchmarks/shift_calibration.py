"""Calibration, power and monotonicity of the shift decision, and the pretraining-gap bands,
on real images (issue 4). The numbers in benchmarks/RESULTS.md and the README come from here.

    python benchmarks/shift_calibration.py [--seeds 100] [--n 200] [--work DIR]

Sets (photo crops of the images shipped in scikit-image/scikit-learn, 160 px JPEG q90):
a pool of 1,000 crops; 400 other crops each with one change (blur radius 2, noise sigma 20,
grayscale, darkened to 60%, downscaled 2x, JPEG quality 20, saved as PNG); 8x8 digits
upscaled; grayscale photos; rendered stripes; uniform noise. Every set is scanned once
(cached). The decision is exactly the scan's: :func:`auditor.analysis.shift.verdict` under the
default rules, on the MMD permutation p-value and the classifier's drift magnitude.
"""

from __future__ import annotations

import argparse
import os
import platform
import time
from pathlib import Path

import numpy as np

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")


def build_sets(work: Path) -> dict[str, Path]:
    from auditor.demo import synth

    rng = np.random.default_rng(0)
    pool = synth.random_crops(1000, 160, seed=1)
    other = synth.random_crops(400, 160, seed=2)
    yy, xx = np.mgrid[0:160, 0:160]

    def stripes(i):
        f, th, c = rng.uniform(0.05, 0.5), rng.uniform(0, np.pi), rng.integers(0, 256, 3)
        return ((np.sin(f * (xx * np.cos(th) + yy * np.sin(th))) > 0)[..., None] * c).astype(np.uint8)

    sets = {
        "photos": (pool, "jpg", 90),
        "blur r2": ([(n, synth.blur(a, 2.0)) for n, a in other], "jpg", 90),
        "noise s20": ([(n, synth.add_noise(a, 20, seed=i)) for i, (n, a) in enumerate(other)], "jpg", 90),
        "grayscale": ([(n, synth.to_grayscale_rgb(a)) for n, a in other], "jpg", 90),
        "darkened 60%": ([(n, synth.darken(a, 0.6)) for n, a in other], "jpg", 90),
        "downscaled 2x": ([(n, synth.downscale(a, 2)) for n, a in other], "jpg", 90),
        "JPEG q20": (other, "jpg", 20),
        "PNG (same crops as JPEG q90 set)": (other, "png", 0),
        "JPEG q90 (other crops)": (other, "jpg", 90),
        "digits": ([("digit", synth.digit(i, 160)) for i in range(400)], "png", 0),
        "gray photos/textures": (synth.random_crops(400, 160, seed=5, photos=synth.GRAY_PHOTOS), "jpg", 90),
        "stripes": ([("stripes", stripes(i)) for i in range(200)], "png", 0),
        "uniform noise": ([("noise", rng.integers(0, 256, (160, 160, 3), np.uint8)) for _ in range(200)], "png", 0),
    }
    out = {}
    for name, (images, fmt, q) in sets.items():
        folder = work / name.replace(" ", "_").replace("/", "-").replace("(", "").replace(")", "").replace("%", "")
        if not folder.exists():
            folder.mkdir(parents=True)
            for i, (photo, rgb) in enumerate(images):
                data = synth.jpeg_bytes(rgb, q) if fmt == "jpg" else synth.png_bytes(rgb)
                synth.write(folder / f"{i:04d}_{photo}.{fmt}", data)
        out[name] = folder
    return out


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--seeds", type=int, default=100)
    ap.add_argument("--n", type=int, default=200)
    ap.add_argument("--work", type=Path, default=Path("benchmarks/out/shift_calibration"))
    args = ap.parse_args()
    from auditor.analysis import drift
    from auditor.analysis.pretraining import pretraining_gap
    from auditor.analysis.shift import gap_level, verdict
    from auditor.demo import synth
    from auditor.pipeline import api
    from auditor.policy.rules import load_rules

    rules = load_rules()
    shift_p, gap_p = rules.checks["domain_shift"].params, rules.checks["pretraining_gap"].params
    folders = build_sets(args.work)
    data = {}
    for name, folder in folders.items():
        r = api.scan(folder, write=False, projection=False, cache_dir=args.work / "cache")
        vec, mask = r.embeddings.rows(r.table["content_hash"])
        data[name] = (vec[mask], r.embeddings)

    def decide(x, y, seed):
        t = drift.two_sample(x, y, shift_p["permutations"], seed=seed)  # exactly as the scan decides
        return {"p_value": t.p_value, "magnitude": t.magnitude, "mmd2": t.mmd.mmd2, "mmd_p": t.mmd.p_value,
                "c2st_p": t.c2st.p_value}  # fmt: skip

    n = args.n
    print(f"machine: {platform.machine()}, {os.cpu_count()} CPUs, Python {platform.python_version()}")
    pool = data["photos"][0]
    t = time.perf_counter()
    got = []
    for seed in range(args.seeds):
        perm = np.random.default_rng(seed).permutation(len(pool))
        got.append(decide(pool[perm[:n]], pool[perm[n : 2 * n]], seed))
    mags = np.array([g["magnitude"] for g in got])
    print(f"\nCalibration: random halves of the photo pool, n = {n} per side, {args.seeds} seeds "
          f"({time.perf_counter() - t:.0f} s)")  # fmt: skip
    print(f"  verdict 'shift' (false alarms): {np.mean([verdict(g, shift_p) == 'shift' for g in got]):.1%}")
    print(f"  combined p < 0.05: {np.mean([g['p_value'] < 0.05 for g in got]):.1%}")
    print(f"  MMD permutation p < 0.05: {np.mean([g['mmd_p'] < 0.05 for g in got]):.1%}")
    print(f"  held-out classifier p < 0.05: {np.mean([g['c2st_p'] < 0.05 for g in got]):.1%}")
    q95 = np.quantile(mags, 0.95)
    print(f"  drift magnitude: mean {mags.mean():.3f}, 95th percentile {q95:.3f}, max {mags.max():.3f}")

    print(f"\nPower: photo pool vs another set, n = {n} per side, 20 seeds")
    print("| target set | detected | drift magnitude (mean) | MMD² (mean) |")
    print("|---|---|---|---|")
    for name in ("blur r2", "noise s20", "grayscale", "darkened 60%", "downscaled 2x", "JPEG q20",
                 "PNG (same crops as JPEG q90 set)", "JPEG q90 (other crops)", "digits"):  # fmt: skip
        other = data[name][0]
        res = []
        for seed in range(20):
            rng = np.random.default_rng(1000 + seed)
            x = pool[rng.choice(len(pool), n, replace=False)]
            y = other[rng.choice(len(other), n, replace=False)]
            res.append(decide(x, y, seed))
        det = np.mean([verdict(g, shift_p) == "shift" for g in res])
        print(f"| {name} | {det:.0%} | {np.mean([g['magnitude'] for g in res]):.3f} | "
              f"{np.mean([g['mmd2'] for g in res]):.4f} |")  # fmt: skip

    print(f"\nMonotone: photos vs photos with a share of digits mixed in, n = {n}, mean of 5 seeds")
    print("| digits share | drift magnitude | MMD² |")
    print("|---|---|---|")
    digits = data["digits"][0]
    for share in (0.0, 0.1, 0.25, 0.5, 1.0):
        res = []
        for seed in range(5):
            res.append(decide(*synth.mixed_samples(pool, digits, share, n, seed), seed))
        mag, mmd2 = np.mean([g["magnitude"] for g in res]), np.mean([g["mmd2"] for g in res])
        print(f"| {share:.0%} | {mag:.3f} | {mmd2:.4f} |")

    print("\nPretraining gap (default backbone), whole sets")
    print("| set | images | feature gap | early / middle / late | head confidence | level |")
    print("|---|---|---|---|---|---|")
    for name, (_, emb) in data.items():
        g = pretraining_gap(emb.bn_stats, emb.stat_layers, emb.bn_reference, emb.probs)
        groups = " / ".join(f"{v:.2f}" for v in g["groups"].values())
        print(f"| {name} | {g['images']} | {g['feature_gap']:.3f} | {groups} | {g['head_confidence']:.3f} | "
              f"{gap_level(g, gap_p)} |")  # fmt: skip


if __name__ == "__main__":
    main()

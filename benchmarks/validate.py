"""Multi-domain accuracy of `audit scan`: the number the README quotes.

    python benchmarks/validate.py                       # every domain, tuning part
    python benchmarks/validate.py --part holdout        # the held-out part (never tuned on)
    python benchmarks/validate.py --domains digits,products --no-embed

For each domain of ``benchmarks/domains.py`` (real images shipped inside pip packages) it
builds three versions with :func:`auditor.demo.validation.build_versions`: the clean set, the set
with every defect injected at two strengths (truth recorded), and the set with 5% of its
labels flipped. It scans each with the default rules and prints:

* per domain and check: recall (per strength) and precision on the injected version;
* per domain: the default gate's verdict on the clean version, its error-level findings, and
  the largest share of images that one per-image check flags there (goal: <= 1%);
* per domain: label_issue recall / precision on the flipped version.

Parts: each domain's pool of images is cut in two halves by a seeded permutation. ``tune`` is
the half every threshold was calibrated on; ``holdout`` is the other half, which no threshold
saw (see benchmarks/RESULTS.md for both).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))

from domains import DOMAINS  # noqa: E402

from auditor.demo.validation import (  # noqa: E402
    DEFECTS,
    build_versions,
    clean_summary,
    read_truth,
    score_injected,
    score_labels,
)
from auditor.pipeline.api import scan  # noqa: E402

#: Domains whose images are stored as JPEG (photographs); the rest as PNG, as they ship.
JPEG_DOMAINS = {"photos"}
#: Where each domain's injected outliers (off-topic images) come from: another domain's images.
FOREIGN = {"photos": "documents", "digits": "photos", "products": "photos", "textures": "digits",
           "documents": "photos", "small_color": "documents", "digits_8x8": "photos"}  # fmt: skip
GOALS = {"corrupt": (0.95, 0.9), "exact_duplicate": (0.95, 0.9), "leakage": (0.95, 0.9),
         "near_duplicate": (0.95, 0.9), "crop_copy": (0.8, 0.9), "mirror_copy": (0.8, 0.9),
         "label_conflict": (0.95, 0.9), "dark": (0.95, 0.9), "bright": (0.95, 0.9),
         "low_resolution": (0.95, 0.9), "noisy": (0.95, 0.9), "blurry": (0.9, 0.9),
         "outlier": (0.8, 0.9)}  # fmt: skip


def part_images(domain: str, part: str, n: int, seed: int) -> list:
    """``n`` images of the domain's ``part`` (disjoint halves of its pool)."""
    pool = DOMAINS[domain](2 * n + 400, seed=0)
    order = np.random.default_rng(1234).permutation(len(pool))
    half = order[: len(pool) // 2] if part == "tune" else order[len(pool) // 2 :]
    chosen = half[np.random.default_rng(seed).permutation(len(half))[:n]]
    return [pool[i] for i in sorted(chosen.tolist())]


def run_domain(domain: str, args) -> dict:
    images = part_images(domain, args.part, args.images, args.seed)
    fmt = "jpg" if domain in JPEG_DOMAINS else "png"
    root = Path(args.data) / args.part / domain
    foreign = [img for _, img in part_images(FOREIGN[domain], args.part, 40, args.seed)]
    dirs = build_versions(images, root, fmt=fmt, seed=args.seed, foreign=foreign)
    out: dict = {"domain": domain, "images": len(images)}
    for version, folder in dirs.items():
        t = time.perf_counter()
        res = scan(folder, write=False, embed=not args.no_embed, projection=False, cache_dir=args.cache_dir,
                   workers=args.workers)  # fmt: skip
        report = res.report
        out[f"{version}_seconds"] = time.perf_counter() - t
        truth = read_truth(folder)
        if version == "clean":
            out["clean"] = clean_summary(report)
        elif version == "injected":
            out["injected"] = score_injected(report, truth)
        else:
            out["labels"] = score_labels(report, truth)
    return out


def _fmt(x) -> str:
    return "  -  " if x is None or (isinstance(x, float) and np.isnan(x)) else f"{x:.2f}"


def print_tables(results: list[dict], embed: bool) -> None:
    doms = [r["domain"] for r in results]
    print("\nInjected versions: recall s1/s2 (precision of the check)")
    print(f"{'defect':16s}" + "".join(f"{d:>18s}" for d in doms))
    for defect in DEFECTS:
        cells = []
        for r in results:
            rows = {row["strength"]: row for row in r["injected"] if row["defect"] == defect}
            if not rows:
                cells.append(f"{'n/a':>18s}")
                continue
            s1, s2 = rows.get(1, {}).get("recall"), rows.get(2, {}).get("recall")
            p = rows["all"]["precision"]
            cells.append(f"{_fmt(s1) + '/' + _fmt(s2) + ' (' + _fmt(p) + ')':>18s}")
        print(f"{defect:16s}" + "".join(cells))
    print("\nClean versions: default gate, error findings, worst per-image check (share of images)")
    for r in results:
        c = r["clean"]
        print(f"  {r['domain']:12s} gate {'PASS' if c['gate_passed'] else 'FAIL'}  errors {c['errors']:3d}  "
              f"worst {c['worst_check']} {100 * c['worst_share']:.1f}%")  # fmt: skip
    if embed:
        print("\nFlipped versions (5% of labels): label_issue recall / precision")
        for r in results:
            lab = r["labels"]
            print(f"  {r['domain']:12s} recall {_fmt(lab['recall'])}  precision {_fmt(lab['precision'])}  "
                  f"({lab['found']}/{lab['flipped']} found, {lab['flagged']} flagged)")  # fmt: skip


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--domains", default=",".join(DOMAINS), help="comma-separated (default: all)")
    ap.add_argument("--part", choices=("tune", "holdout"), default="tune")
    ap.add_argument("--images", type=int, default=500, help="images per domain (clean set + spares)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--no-embed", action="store_true")
    ap.add_argument("--data", default="benchmarks/data/validation")
    ap.add_argument("--cache-dir", default=None)
    ap.add_argument("--workers", type=int, default=None)
    ap.add_argument("--json", default=None, help="also write the results here")
    args = ap.parse_args()
    results = []
    for domain in args.domains.split(","):
        t = time.perf_counter()
        results.append(run_domain(domain, args))
        print(f"{domain}: {time.perf_counter() - t:.0f} s", file=sys.stderr)
    print_tables(results, not args.no_embed)
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=1, default=float))


if __name__ == "__main__":
    main()

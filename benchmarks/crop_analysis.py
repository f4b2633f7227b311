"""Why 80%-area crop copies are missed, per validation domain (issue 15): where each injected
crop ranks among its original's backbone neighbours, how far the template search
(:func:`auditor.measure.verify.crop_difference`) finds it from its original against distinct
top-5 neighbours, and how sharply the best window fits (the peak sharpness,
:func:`auditor.measure.verify._peak_sharpness`) for true crops and for distinct neighbours that
the template search finds close; and the template search's CPU time per pair.

    python benchmarks/validate.py --images 500 --data DATA --cache-dir CACHE   # builds DATA
    python benchmarks/crop_analysis.py --data DATA --cache-dir CACHE [--domains photos,digits]

Reads ``DATA/<part>/<domain>/injected`` and its truth file as validate.py leaves them, and the
embeddings from CACHE (computed there if missing). ``--false A,B`` adds a pair of files (paths
under DATA/<part>) whose crop difference and peak sharpness are printed too (a pair a rule matched wrongly).
"""

from __future__ import annotations

import argparse
import io
import sys
import time
from pathlib import Path

import numpy as np

from auditor.demo.validation import read_truth
from auditor.embed.backbones import get_backbone
from auditor.embed.features import embed_files
from auditor.io.decode import file_hash
from auditor.io.store import Store
from auditor.measure import verify as V
from auditor.measure.hashing import perceptual_hashes


def pair_sharpness(a: bytes, b: bytes) -> tuple[float, float]:
    """(crop difference, peak sharpness) of one pair of files, as the verifier measures them."""
    thumbs = {"a": a, "b": b}
    sig, _ = V.signatures(thumbs, ["a", "b"])
    diff, sharp = V.crop_difference(thumbs, ["a", "b"], sig, np.array([0]), np.array([1]))
    return float(diff[0]), float(sharp[0])


def domain(data: Path, part: str, name: str, cache: str) -> None:
    root = data / part / name / "injected"
    truth = read_truth(root)
    corrupt = {t["path"] for t in truth if t["defect"] == "corrupt"}
    files = sorted(p for p in root.rglob("*") if p.is_file() and p.suffix in (".png", ".jpg"))
    paths = [p.relative_to(root).as_posix() for p in files if p.relative_to(root).as_posix() not in corrupt]
    data_of = {r: (root / r).read_bytes() for r in paths}
    by_hash = {file_hash(data_of[r]): r for r in paths}
    with Store(str(Path(cache) / "store.sqlite3")) as store:
        emb = embed_files({h: str(root / r) for h, r in by_hash.items()}, get_backbone(), store, cache_dir=cache)
    hashes = sorted(by_hash)
    vec, _ = emb.rows(hashes)
    vec /= np.linalg.norm(vec, axis=1, keepdims=True)
    keys = [by_hash[h] for h in hashes]
    index = {k: i for i, k in enumerate(keys)}
    sims = vec @ vec.T
    np.fill_diagonal(sims, -1)
    sig, _ = V.signatures(data_of, keys)
    copies = {frozenset((t["path"], t["original"])) for t in truth if t["original"]}
    print(f"{name}: {len(keys)} images")
    for t in (t for t in truth if t["defect"] == "crop_copy"):
        i, j = index[t["path"]], index[t["original"]]
        rank = int((sims[i] > sims[i, j]).sum()) + 1
        diff, sharp = (float(v[0]) for v in V.crop_difference(data_of, keys, sig, np.array([i]), np.array([j])))
        print(f"  crop s{t['strength']} {t['path']}: cosine {sims[i, j]:.3f}, neighbour rank {rank}, "
              f"crop difference {diff:.3f}, peak sharpness {sharp:.2f}")  # fmt: skip
    queries = np.random.default_rng(0).choice(len(keys), min(150, len(keys)), replace=False)
    pairs = [(i, j) for i in queries for j in np.argsort(-sims[i])[:5] if frozenset((keys[i], keys[j])) not in copies]
    a, b = np.array(pairs).T
    t0 = time.process_time()
    diff, sharp = V.crop_difference(data_of, keys, sig, a, b)
    cost = (time.process_time() - t0) / len(a) * 1e3
    ph = np.array([perceptual_hashes(np.asarray(_gray(data_of[k])))["phash"] for k in keys], np.uint64)
    typical = V.typical_difference(lambda ks: {k: data_of[k] for k in ks}, keys, ph, np.arange(len(keys)))
    q = np.quantile(diff, [0.001, 0.01, 0.05, 0.5])
    print(f"  distinct top-5 neighbours ({len(diff)} pairs): crop difference quantiles 0.1% {q[0]:.3f}, "
          f"1% {q[1]:.3f}, 5% {q[2]:.3f}, 50% {q[3]:.3f}; typical difference {typical:.3f}; "
          f"template search {cost:.2f} ms of CPU a pair")  # fmt: skip
    close = diff <= 0.5  # distinct pairs a crop limit (0.12-0.35) could come near
    if close.any():
        closest = sorted(zip(diff[close], sharp[close], strict=True))[:8]
        print(f"  distinct pairs at crop difference <= 0.5: {int(close.sum())}, peak sharpness "
              f"min {sharp[close].min():.2f}; closest (difference/sharpness): "
              + ", ".join(f"{d:.3f}/{m:.2f}" for d, m in closest))  # fmt: skip


def _gray(data: bytes):
    from PIL import Image

    return Image.open(io.BytesIO(data)).convert("L")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--data", type=Path, default=Path("benchmarks/data/validation"))
    ap.add_argument("--cache-dir", required=True)
    ap.add_argument("--part", choices=("tune", "holdout"), default="tune")
    ap.add_argument("--domains", default="photos,digits,products,textures,documents,small_color")
    ap.add_argument("--false", action="append", default=[], metavar="A,B")
    args = ap.parse_args()
    for name in args.domains.split(","):
        domain(args.data, args.part, name, args.cache_dir)
    for pair in args.false:
        a, b = (args.data / args.part / p for p in pair.split(","))
        diff, sharp = pair_sharpness(a.read_bytes(), b.read_bytes())
        print(f"false pair {pair}: crop difference {diff:.3f}, peak sharpness {sharp:.2f}")
    sys.stdout.flush()


if __name__ == "__main__":
    main()

"""Does ``audit finetune`` stream? (issue 17, part 3) Peak memory of a fine-tune on 5,000 vs
50,000 images.

    python benchmarks/bench_finetune_memory.py [--sizes 5000 50000] [--image-size 32] [--work DIR]
                                               [--baseline REV]

Data: scikit-learn's 1,797 handwritten digits (real handwriting), each file one digit drawn
at ``--file-size`` px and shifted by a seeded few pixels (so that no two files are the same
bytes), written as PNGs into ``train/<digit>/`` and ``val/<digit>/`` (every 5th file in val).
Each fine-tune (1 epoch per phase, ``--image-size`` px, EfficientNet-Lite0) runs in its own
subprocess, which reports its own peak resident set size (``getrusage(RUSAGE_SELF).ru_maxrss``:
the high-water mark of the whole process, TensorFlow included). Two recipes:

* ``augment``: the default (augmentation on): both phases read decoded images from the stream;
* ``no-augment``: the frozen phase trains on the backbone's features (computed once, written
  to a file and read a batch at a time), then one fine-tuning epoch on the image stream.

``--baseline REV`` also runs ``auditor/pipeline/finetune.py`` as it was at git revision REV
(e.g. the commit before streaming: every image decoded into one array) for comparison, with
the modules split from it (``finetune_data.py``, ``finetune_model.py``) as they were at REV
where REV has them; the rest of the package is the current tree's.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
ROOT = Path(__file__).resolve().parents[1]
#: Modules split from auditor/pipeline/finetune.py, in import order (each imports only those before it).
SPLIT_MODULES = ("finetune_data", "finetune_model")


def build(root: Path, n: int, size: int, seed: int = 0) -> None:
    """``n`` PNGs of real digits under root/{train,val}/<digit>/ (every 5th in val)."""
    from PIL import Image
    from sklearn.datasets import load_digits

    from auditor.demo import synth

    if (root / "done").is_file() and (root / "done").read_text() == f"{n} {size} {seed}":
        return
    if root.exists():
        shutil.rmtree(root)
    digits = load_digits()
    rng = np.random.default_rng(seed)
    base = [synth.digit(i, size + 4) for i in range(len(digits.target))]  # 4 px of margin to shift in
    for k in range(n):
        i = k % len(base)
        dy, dx = (int(v) for v in rng.integers(0, 5, 2))
        rgb = base[i][dy : dy + size, dx : dx + size]
        split = "val" if k % 5 == 0 else "train"
        folder = root / split / str(digits.target[i])
        folder.mkdir(parents=True, exist_ok=True)
        Image.fromarray(rgb).save(folder / f"{k:06d}.png", compress_level=1)
    (root / "done").write_text(f"{n} {size} {seed}")


def child(args) -> None:
    """One fine-tune in this process; prints one JSON line with its peak RSS and wall time."""
    import resource

    if args.baseline_file:
        import importlib.util

        import auditor.pipeline  # noqa: F401  (the parent of the baseline's split modules)

        for name in SPLIT_MODULES:  # REV's copies, under the names REV's finetune.py imports them by
            path = args.baseline_file.parent / f"{name}.py"
            if path.is_file():
                spec = importlib.util.spec_from_file_location(f"auditor.pipeline.{name}", path)
                module = importlib.util.module_from_spec(spec)
                sys.modules[spec.name] = module
                spec.loader.exec_module(module)
        spec = importlib.util.spec_from_file_location("baseline_finetune", args.baseline_file)
        ft = importlib.util.module_from_spec(spec)
        sys.modules[spec.name] = ft  # dataclasses look their module up
        spec.loader.exec_module(ft)
    else:
        from auditor.pipeline import finetune as ft

    augment = ft.AUGMENTATIONS if args.recipe == "augment" else ()
    opts = ft.FinetuneOptions(epochs=1, unfreeze=1, image_size=args.image_size, batch_size=64, augment=augment,
                              patience=1, seed=0)  # fmt: skip
    started = time.perf_counter()
    result = ft.finetune(args.data, args.out, opts, use_cache=False)
    seconds = time.perf_counter() - started
    peak_kib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB on Linux
    print(json.dumps({"peak_mb": peak_kib / 1024, "seconds": seconds,
                      "train": result.evaluation["train_images"], "val": result.evaluation["val_images"],
                      "val_accuracy": result.evaluation["val_accuracy"]}))  # fmt: skip


def run_one(data: Path, out: Path, recipe: str, image_size: int, baseline_file: Path | None) -> dict:
    cmd = [sys.executable, __file__, "--child", "--data", str(data), "--out", str(out), "--recipe", recipe,
           "--image-size", str(image_size)]  # fmt: skip
    if baseline_file:
        cmd += ["--baseline-file", str(baseline_file)]
    proc = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT, env={**os.environ, "PYTHONPATH": str(ROOT)})
    if proc.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} failed:\n{proc.stderr[-3000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def machine() -> str:
    import tensorflow as tf
    from bench_scale import machine as base

    return f"{base()}, TensorFlow {tf.__version__}"


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--sizes", type=int, nargs="+", default=[5000, 50000])
    ap.add_argument("--image-size", type=int, default=32, help="the fine-tune's input size (px)")
    ap.add_argument("--file-size", type=int, default=32, help="the PNGs' size (px)")
    ap.add_argument("--recipes", nargs="+", default=["augment", "no-augment"], choices=["augment", "no-augment"])
    ap.add_argument("--work", type=Path, default=Path("benchmarks/out/finetune_memory"))
    ap.add_argument("--baseline", help="also run finetune.py as it was at this git revision")
    ap.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--data", type=Path, help=argparse.SUPPRESS)
    ap.add_argument("--out", type=Path, help=argparse.SUPPRESS)
    ap.add_argument("--recipe", help=argparse.SUPPRESS)
    ap.add_argument("--baseline-file", type=Path, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        child(args)
        return
    work = args.work.resolve()
    baseline_file = None
    if args.baseline:
        folder = work / "baseline"
        shutil.rmtree(folder, ignore_errors=True)  # no module left from another REV
        folder.mkdir(parents=True)
        for name in ("finetune", *SPLIT_MODULES):
            shown = subprocess.run(["git", "show", f"{args.baseline}:auditor/pipeline/{name}.py"], cwd=ROOT,
                                   check=name == "finetune", capture_output=True, text=True)  # fmt: skip
            if shown.returncode == 0:  # the split modules are absent before the split
                (folder / f"{name}.py").write_text(shown.stdout)
        baseline_file = folder / "finetune.py"
    print(f"machine: {machine()}")
    rows = []
    for n in args.sizes:
        data = work / f"digits{n}"
        t = time.perf_counter()
        build(data, n, args.file_size)
        print(f"{n} PNGs ({args.file_size} px) in {data} ({time.perf_counter() - t:.0f} s)", flush=True)
        versions = [("streaming", None)] + ([(f"in memory ({args.baseline})", baseline_file)] if baseline_file else [])
        for recipe in args.recipes:
            for version, file in versions:
                r = run_one(data, work / "model", recipe, args.image_size, file)
                print(f"  {version}, {recipe}: {json.dumps(r)}", flush=True)
                rows.append((version, recipe, n, r))
    print(
        f"\nFine-tune, 1 epoch per phase (head + top block), {args.image_size} px input, batch 64, EfficientNet-Lite0"
    )
    print("\n| code | recipe | images (train + val) | peak RSS (MB) | wall (s) | val accuracy |")
    print("|---|---|---|---|---|---|")
    for version, recipe, n, r in rows:
        print(f"| {version} | {recipe} | {n:,} ({r['train']:,} + {r['val']:,}) | {r['peak_mb']:.0f} | "
              f"{r['seconds']:.0f} | {r['val_accuracy']:.3f} |")  # fmt: skip
    for version in dict.fromkeys(v for v, *_ in rows):
        for recipe in args.recipes:
            peaks = [r["peak_mb"] for v, rc, _, r in rows if v == version and rc == recipe]
            if len(peaks) >= 2:
                print(f"{version}, {recipe}: peak RSS difference {max(peaks) - min(peaks):.0f} MB "
                      f"({min(args.sizes):,} vs {max(args.sizes):,} images)")  # fmt: skip


if __name__ == "__main__":
    main()

"""Does auditing first pay off? (issue 7) A naive fine-tune against ``audit run``, same budget.

    python benchmarks/bench_finetune.py [--epochs 4] [--image-size 64] [--work DIR]

Data: scikit-learn's 1,797 digits (real handwriting, upscaled), split train/val/test
(60/20/20, stratified, seeded). Into the train/val folders we inject what goes wrong in real
datasets: 10% of train labels flipped, 10% of train images duplicated, and train-to-val
leakage (copies of train images, with their train label, make up a third of val). The test
split is kept apart and clean.

* naive: the tutorial recipe on the dirty folder: frozen base, head only, no augmentation,
  2 x ``--epochs`` epochs; it reports its (leaky) validation accuracy.
* audited: ``audit run --force`` (scan, clean: leaked copies dropped from val, duplicates
  deduplicated, label conflicts and confident label issues quarantined), then the built-in
  fine-tune: ``--epochs`` head + ``--epochs`` top-3-block epochs (the same 2 x epochs).

Both are then scored on the clean test split.
"""

from __future__ import annotations

import argparse
import os
import platform
import shutil
import time
from pathlib import Path

import numpy as np

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")


def build(root: Path, size: int, seed: int = 0) -> dict:
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    from auditor import synth

    y = load_digits().target
    idx = np.arange(len(y))
    train, rest = train_test_split(idx, test_size=0.4, stratify=y, random_state=seed)
    val, test = train_test_split(rest, test_size=0.5, stratify=y[rest], random_state=seed)
    rng = np.random.default_rng(seed)
    if root.exists():
        shutil.rmtree(root)
    noisy = set(rng.choice(train, int(0.10 * len(train)), replace=False).tolist())
    labels = {}
    for i in train:
        lab = int(y[i]) if i not in noisy else int(rng.choice([c for c in range(10) if c != y[i]]))
        labels[i] = lab
        synth.write(root / "dirty" / "train" / str(lab) / f"{i:04d}.png", synth.png_bytes(synth.digit(i, size)))
    for i in rng.choice(train, int(0.10 * len(train)), replace=False):
        synth.write(
            root / "dirty" / "train" / str(labels[i]) / f"{i:04d}_dup.png", synth.png_bytes(synth.digit(i, size))
        )
    for i in val:
        synth.write(root / "dirty" / "val" / str(y[i]) / f"{i:04d}.png", synth.png_bytes(synth.digit(i, size)))
    leaked = rng.choice(train, len(val) // 2, replace=False)  # a third of the final val
    for i in leaked:
        synth.write(
            root / "dirty" / "val" / str(labels[i]) / f"{i:04d}_leak.png", synth.png_bytes(synth.digit(i, size))
        )
    for i in test:
        synth.write(root / "test" / str(y[i]) / f"{i:04d}.png", synth.png_bytes(synth.digit(i, size)))
    return {"train": len(train), "noisy": len(noisy), "dup": int(0.10 * len(train)), "val": len(val),
            "leaked": len(leaked), "test": len(test)}  # fmt: skip


def test_accuracy(model_path: Path, test_dir: Path, classes: list[str], size: int) -> float:
    import keras

    from auditor.dataset import discover
    from auditor.finetune import _load_images

    model = keras.saving.load_model(model_path, safe_mode=True)
    items = discover(test_dir).items
    x = _load_images(list(items["abs_path"]), size)
    pred = model.predict(x, verbose=0).argmax(axis=1)
    truth = np.array([classes.index(c) for c in items["label"]])
    return float((pred == truth).mean())


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--epochs", type=int, default=4)
    ap.add_argument("--image-size", type=int, default=64)
    ap.add_argument("--work", type=Path, default=Path("benchmarks/out/finetune"))
    ap.add_argument("--no-embed", action="store_true", help="audit without embeddings (hash duplicates only)")
    args = ap.parse_args()
    from auditor.finetune import FinetuneOptions, finetune
    from auditor.pipeline import run

    counts = build(args.work / "data", 96)
    print(f"machine: {platform.machine()}, {os.cpu_count()} CPUs, Python {platform.python_version()}")
    print(f"data: {counts}")
    dirty, test = args.work / "data" / "dirty", args.work / "data" / "test"
    size, e = args.image_size, args.epochs

    t = time.perf_counter()
    naive = finetune(dirty, args.work / "naive", FinetuneOptions(epochs=2 * e, unfreeze=0, augment=(), image_size=size,
                                                                  patience=2 * e))  # fmt: skip
    naive_time = time.perf_counter() - t
    t = time.perf_counter()
    audited = run(dirty, args.work / "run", force=True, cache_dir=args.work / "cache", embed=not args.no_embed,
                  finetune_options=FinetuneOptions(epochs=e, unfreeze=3, image_size=size))  # fmt: skip
    audited_time = time.perf_counter() - t
    rows = [
        ("naive (frozen base, head only, dirty data)", naive.evaluation, naive.model_path, naive.classes, naive_time),
        ("audit run (clean, then head + top 3 blocks)", audited.finetune.evaluation, audited.finetune.model_path,
         audited.finetune.classes, audited_time),
    ]  # fmt: skip
    print(f"\nclean decisions: {audited.clean.counts}")
    print("\n| run | validation accuracy it reports | val images | test accuracy (clean split) | wall (s) |")
    print("|---|---|---|---|---|")
    for name, ev, path, classes, sec in rows:
        acc = test_accuracy(path, test, classes, size)
        print(f"| {name} | {ev['val_accuracy']:.3f} | {ev['val_images']} | {acc:.3f} | {sec:.0f} |")


if __name__ == "__main__":
    main()

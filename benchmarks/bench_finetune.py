"""Does auditing first pay off? (issue 7) A naive fine-tune against ``audit run``, same budget.

    python benchmarks/bench_finetune.py [--epochs 4] [--image-size 64] [--work DIR]

Data: scikit-learn's 1,797 digits (real handwriting, upscaled), split train/val/test
(60/20/20, stratified, seeded). Into the train/val folders we inject what goes wrong in real
datasets: 10% of train labels flipped, 10% of train images duplicated, and train-to-val
leakage (copies of train images, with their train label, make up a third of val). The test
split is kept apart and clean.

* naive: the tutorial recipe on the dirty folder: frozen base, head only, no augmentation,
  2 x ``--epochs`` epochs without early stopping (trained on features computed once: the
  fast path); it reports its (leaky) validation accuracy.
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

    from auditor.demo import synth

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


def correct(model_path: Path, folder: Path, classes: list[str], size: int) -> tuple[list[str], np.ndarray]:
    """(relative paths, whether the model gets each right) for a split/class folder."""
    import keras

    from auditor.io.dataset import discover
    from auditor.pipeline.finetune import image_dataset

    model = keras.saving.load_model(model_path, safe_mode=True)
    items = discover(folder).items
    x = image_dataset(list(items["abs_path"]), None, size, 64, skip_unreadable=False)  # streamed, in order
    pred = model.predict(x, verbose=0).argmax(axis=1)
    truth = np.array([classes.index(c) for c in items["label"]])
    return list(items["path"]), pred == truth


def one_seed(args, seed: int) -> list[str]:
    from auditor.pipeline.finetune import FinetuneOptions, finetune
    from auditor.pipeline.run import run

    work = args.work / f"seed{seed}"
    counts = build(work / "data", 96, seed)
    print(f"seed {seed} data: {counts}")
    dirty, test = work / "data" / "dirty", work / "data" / "test"
    size, e = args.image_size, args.epochs
    t = time.perf_counter()
    naive = finetune(dirty, work / "naive", FinetuneOptions(epochs=2 * e, unfreeze=0, augment=(), image_size=size,
                                                            patience=2 * e, seed=seed))  # fmt: skip
    naive_time = time.perf_counter() - t
    t = time.perf_counter()
    audited = run(dirty, work / "run", force=True, cache_dir=work / "cache", embed=not args.no_embed,
                  finetune_options=FinetuneOptions(epochs=e, unfreeze=3, image_size=size, seed=seed))  # fmt: skip
    audited_time = time.perf_counter() - t
    paths, ok = correct(naive.model_path, dirty / "val", naive.classes, size)
    leak = np.array(["_leak" in p for p in paths])
    from sklearn.datasets import load_digits

    y = load_digits().target
    m = audited.clean.manifest
    wrong = m["source_path"].map(lambda p: int(Path(p).parent.name) != y[int(Path(p).stem.split("_")[0])])
    removed = m["action"].isin(["quarantine", "drop"])
    print(
        f"clean decisions: {audited.clean.counts}; flipped labels removed {int((wrong & removed).sum())} of "
        f"{int(wrong.sum())}; naive val accuracy on the {leak.sum()} leaked copies {ok[leak].mean():.3f}, "
        f"on the {(~leak).sum()} unseen images {ok[~leak].mean():.3f}"
    )
    rows = []
    for name, ev, res, sec in (("naive", naive.evaluation, naive, naive_time),
                               ("audit run", audited.finetune.evaluation, audited.finetune, audited_time)):  # fmt: skip
        acc = correct(res.model_path, test, res.classes, size)[1].mean()
        rows.append(
            f"| {seed} | {name} | {ev['val_accuracy']:.3f} | {ev['val_images']} | {acc:.3f} | "
            f"{ev['val_accuracy'] - acc:+.3f} | {sec:.0f} |"
        )
    return rows


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--epochs", type=int, default=30)
    ap.add_argument("--image-size", type=int, default=64)
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--work", type=Path, default=Path("benchmarks/out/finetune"))
    ap.add_argument("--no-embed", action="store_true", help="audit without embeddings (hash duplicates only)")
    args = ap.parse_args()
    print(f"machine: {platform.machine()}, {os.cpu_count()} CPUs, Python {platform.python_version()}")
    rows = [r for seed in args.seeds for r in one_seed(args, seed)]
    print(
        "\n| seed | run | validation accuracy it reports | val images | test accuracy (clean split) "
        "| val - test | wall (s) |"
    )
    print("|---|---|---|---|---|---|---|")
    print("\n".join(rows))


if __name__ == "__main__":
    main()

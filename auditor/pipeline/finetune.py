"""``audit finetune``: the transfer-learning recipe on the default backbone, applied correctly.

Model: EfficientNet-Lite0 (ImageNet, the auditor's own backbone) -> global average pooling ->
dropout -> softmax dense with L2. Phase 1 trains the head with the backbone frozen; phase 2
unfreezes the top ``unfreeze`` blocks (and the head convolution) at a learning rate 10x
lower while every BatchNorm layer stays frozen and in inference mode (the classic mistake:
unfrozen BatchNorm statistics re-estimated on small batches wreck the pretrained features).
Augmentation with Keras preprocessing layers (active only while training), class weights
when classes are imbalanced, early stopping on validation loss (best weights kept).
Seeded; ``MODEL_DIR`` gets ``model.keras``, ``history.json``, ``evaluation.json``
(validation confusion matrix and per-class accuracy) and ``predictions.csv`` (one row per
validation image: path, true and predicted class, confidence). With ``tune``, a KerasTuner search
(:mod:`auditor.pipeline.tune`) picks the learning rate, L2, dropout and the number of unfrozen
blocks first, and the model is trained with the winner; ``evaluation.json`` gains ``tuning``.

Memory does not grow with the dataset: images are streamed (:func:`image_dataset`: a
``tf.data`` pipeline from the file paths, decoded by the project's one decoder a few batches
ahead of the model), and the frozen phase's features go to a file in the model folder
(removed afterwards) written and read in blocks. A file that cannot be decoded is left out of
training and evaluation (``evaluation.json`` counts and names them under ``unreadable``).

This module is the recipe (training both phases, the search, evaluation, the files written);
the images and features it reads are :mod:`auditor.pipeline.finetune_data`'s, the model and its
options :mod:`auditor.pipeline.finetune_model`'s, and it re-exports their names.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import os
import shutil
import tempfile
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from auditor.embed.backbones import quiet_tensorflow

# Re-exported: the names that were defined here before the split stay importable from here.
from auditor.pipeline.finetune_data import FinetuneError as FinetuneError
from auditor.pipeline.finetune_data import _decode as _decode
from auditor.pipeline.finetune_data import _decode_batch as _decode_batch
from auditor.pipeline.finetune_data import _FeatureFile as _FeatureFile
from auditor.pipeline.finetune_data import _items as _items
from auditor.pipeline.finetune_data import _load_images as _load_images
from auditor.pipeline.finetune_data import image_dataset as image_dataset
from auditor.pipeline.finetune_model import AUGMENTATIONS as AUGMENTATIONS
from auditor.pipeline.finetune_model import BLOCK_PATTERNS as BLOCK_PATTERNS
from auditor.pipeline.finetune_model import KERAS_IN_MODEL as KERAS_IN_MODEL
from auditor.pipeline.finetune_model import KERAS_TF_MODE as KERAS_TF_MODE
from auditor.pipeline.finetune_model import KERAS_TORCH_MODE as KERAS_TORCH_MODE
from auditor.pipeline.finetune_model import FinetuneOptions as FinetuneOptions
from auditor.pipeline.finetune_model import _augmentation as _augmentation
from auditor.pipeline.finetune_model import _base as _base
from auditor.pipeline.finetune_model import _classifier as _classifier
from auditor.pipeline.finetune_model import _lite0_weights as _lite0_weights
from auditor.pipeline.finetune_model import block_of as block_of
from auditor.pipeline.finetune_model import build as build
from auditor.pipeline.finetune_model import unfreeze_top as unfreeze_top

#: Always on when augmenting; the photometric ones are added when the audit asks for them.
BASE_AUGMENTATIONS = ("flip", "rotation", "zoom", "translation")
#: property_shift property -> the augmentation that makes a model robust to that difference.
SHIFT_AUGMENTATIONS = {"brightness": "brightness", "contrast": "contrast"}


def augmentations_from_audit(report: dict) -> tuple[tuple[str, ...], list[str]]:
    """Augmentations chosen from a scan report: the geometric ones, plus brightness and/or
    contrast when ``property_shift`` found that property distributed differently between
    the compared sets (source vs dataset, or train vs val/test). Returns (augmentations,
    reasons)."""
    chosen, reasons = list(BASE_AUGMENTATIONS), []
    for f in report.get("findings", []):
        if f["check"] != "property_shift":
            continue
        aug = SHIFT_AUGMENTATIONS.get(f["details"].get("property"))
        if aug and aug not in chosen:
            chosen.append(aug)
            reasons.append(f"{aug}: {f['message']}")
    return tuple(chosen), reasons


@dataclass
class FinetuneResult:
    model_path: Path
    history: dict[str, list[dict]]  # phase -> per-epoch metrics
    evaluation: dict  # val accuracy, confusion matrix, per-class accuracy
    classes: list[str]
    files: dict[str, Path] = field(default_factory=dict)
    #: one row per validation image: path (relative to the dataset), true, predicted, confidence
    predictions: Any = None


#: Images whose head features are computed (or read from the cache) per step; bounds memory.
FEATURE_BLOCK = 2048
#: Unreadable files named in evaluation.json (all are counted).
UNREADABLE_EXAMPLES = 20
#: Keras's warning at the end of a stream's first epoch when its length was unknown, as it is when
#: unreadable files are left out: expected here, not a sign of a short dataset.
RAN_OUT = "Your input ran out of data"


def head_features(
    model,
    paths: list[str],
    images: Callable[[], Any] | None,
    options: FinetuneOptions,
    cache_dir: str | os.PathLike | None = None,
    use_cache: bool = True,
) -> tuple[np.ndarray, str]:
    """What the frozen backbone feeds the head, for each image (float32 (n, dims), rows in
    ``paths`` order), and where it came from; in memory, for a few images (``finetune`` writes
    the rows to a file block by block instead, :func:`_head_features`). The default backbone at
    its native 224 px reads the scan's cached embeddings (the same pixels and the same pooled
    layer; stored as float16), computing and caching only the missing ones; otherwise one
    forward pass over ``images()`` (an array or batches of images in ``paths`` order; None:
    streamed from ``paths``). Raises :class:`FinetuneError` when an image cannot be decoded."""
    blocks: list[np.ndarray] = []
    unreadable: dict[str, str] = {}

    def keep(start: int, rows: np.ndarray, ok: np.ndarray) -> None:
        del blocks[start // FEATURE_BLOCK :]  # a restart (cache -> forward pass) rewrites from 0
        blocks.append(rows)

    if images is not None and not _cached_features_apply(options, use_cache):
        import keras

        extractor = keras.Model(model.inputs, model.get_layer("dropout").input)
        return extractor.predict(images(), batch_size=options.batch_size, verbose=0), "one forward pass of the backbone"
    source = _head_features(model, paths, options, keep, unreadable, cache_dir, use_cache)
    if unreadable:
        first = next(iter(unreadable))
        raise FinetuneError(f"{first}: cannot be decoded ({len(unreadable)} such files); run audit clean first")
    return (np.concatenate(blocks) if blocks else np.zeros((0, 0), np.float32)), source


def _cached_features_apply(options: FinetuneOptions, use_cache: bool) -> bool:
    from auditor.embed.backbones import DEFAULT_BACKBONE, LITE0

    return use_cache and options.backbone in (DEFAULT_BACKBONE, LITE0.id) and options.image_size == LITE0.input_size


def _head_features(
    model,
    paths: list[str],
    options: FinetuneOptions,
    sink: Callable[[int, np.ndarray, np.ndarray], None],
    unreadable: dict[str, str],
    cache_dir: str | os.PathLike | None = None,
    use_cache: bool = True,
) -> str:
    """The head's inputs for ``paths``, :data:`FEATURE_BLOCK` images at a time:
    ``sink(first row, float32 (m, dims), ok (m,))`` per block, in order (zeros and ok False
    for a file that cannot be decoded; its reason goes into ``unreadable``). From the scan's
    cached embeddings when they apply (see :func:`head_features`), else one forward pass of
    the backbone over the streamed images; if the cache cannot serve a readable image, the
    blocks start again from row 0 with the forward pass. Returns where the rows came from."""
    if _cached_features_apply(options, use_cache):
        from auditor.embed.backbones import LITE0
        from auditor.embed.features import embed_files
        from auditor.io.store import Store
        from auditor.measure.batch import hash_all

        cached = computed = 0
        with Store.open_default(cache_dir) as store:
            for start in range(0, len(paths), FEATURE_BLOCK):
                block = paths[start : start + FEATURE_BLOCK]
                by_path = hash_all(block, store)  # indexed, so the next run does not read the files to hash them
                hashes = [by_path.get(p) for p in block]
                files = {h: p for h, p in zip(hashes, block, strict=True) if h is not None}
                emb = embed_files(files, LITE0, store, cache_dir=cache_dir)
                for p, h in zip(block, hashes, strict=True):
                    if h is None:
                        unreadable.setdefault(p, "cannot be read")
                    elif h in emb.failures:
                        unreadable.setdefault(p, emb.failures[h])
                vectors, mask = emb.rows(hashes)
                bad = np.array([h is None or h in emb.failures for h in hashes], bool)
                if not (mask | bad).all():
                    break
                cached, computed = cached + emb.cached, computed + emb.computed
                sink(start, vectors, ~bad)
            else:
                return f"cached embeddings ({cached} cached, {computed} computed now)"
    import keras

    extractor = keras.Model(model.inputs, model.get_layer("dropout").input)
    for start in range(0, len(paths), FEATURE_BLOCK):
        block = paths[start : start + FEATURE_BLOCK]
        found: dict[str, str] = {}
        stream = image_dataset(block, None, options.image_size, options.batch_size, skip_unreadable=False,
                               unreadable=found)  # fmt: skip
        rows = extractor.predict(stream, verbose=0)
        ok = np.array([p not in found for p in block], bool)
        rows[~ok] = 0
        unreadable.update(found)
        sink(start, rows, ok)
    return "one forward pass of the backbone"


def finetune(
    dataset: str | os.PathLike,
    out: str | os.PathLike,
    options: FinetuneOptions | None = None,
    progress: Callable[[str, int, int, dict], None] | None = None,
    cache_dir: str | os.PathLike | None = None,
    use_cache: bool = True,
) -> FinetuneResult:
    """Fine-tune on ``dataset`` (split/class layout; ``audit clean`` writes one) and save the
    best model and its evaluation into ``out``. ``progress(phase, epoch, epochs, logs)``.

    Without augmentation the frozen phase trains the head on features computed once (the
    scan's cached embeddings when the backbone and input size match; see
    :func:`head_features`) instead of running the backbone every epoch: seconds, and the
    same model (the head sees exactly what the frozen backbone outputs)."""
    opts = options or FinetuneOptions()
    if opts.tune and opts.trials < 1:
        raise FinetuneError(f"trials must be at least 1, not {opts.trials}")
    if opts.tune and opts.budget_minutes is not None and not opts.budget_minutes > 0:
        raise FinetuneError(f"the search budget must be a positive number of minutes, not {opts.budget_minutes}")
    with quiet_tensorflow():  # TensorFlow's start-up chatter (CUDA probing) off the terminal
        import keras

        from auditor.embed.backbones import DEFAULT_BACKBONE, LITE0

        if opts.backbone in (DEFAULT_BACKBONE, LITE0.id):
            _lite0_weights()  # read (once per process) before seeding: it draws seeds, only the first time
        keras.utils.set_random_seed(opts.seed)
        keras.ops.convert_to_tensor(np.zeros(1))  # device initialisation happens here
    train_paths, y_train, val_paths, y_val, classes = _items(dataset, opts.seed, opts.val_fraction)
    out_dir = Path(out)
    n = len(train_paths)
    unreadable: dict[str, str] = {}  # path -> why it cannot be decoded, as the streams meet them

    def images(which: str):
        """A fresh stream of (image, label) batches; built when used, after the seeds are set, so
        every run (and every tuning trial) sees the same order."""
        if which == "train":
            return image_dataset(train_paths, y_train, opts.image_size, opts.batch_size, shuffle=True, seed=opts.seed,
                                 unreadable=unreadable)  # fmt: skip
        return image_dataset(val_paths, y_val, opts.image_size, opts.batch_size, unreadable=unreadable)

    features: list[_FeatureFile] = []
    scratch: list[Path] = []

    def head_inputs(model) -> _FeatureFile:  # train rows then val rows; computed once, into a file
        if not features:
            out_dir.mkdir(parents=True, exist_ok=True)
            scratch.append(Path(tempfile.mkdtemp(prefix=".features-", dir=out_dir)))  # removed at the end
            made: list[_FeatureFile] = []

            def sink(start: int, rows: np.ndarray, ok: np.ndarray) -> None:
                if not made:
                    made.append(_FeatureFile(scratch[0] / "features.f32", n + len(val_paths), rows.shape[1]))
                made[0].write(start, rows)
                made[0].ok[start : start + len(ok)] = ok

            source = _head_features(model, train_paths + val_paths, opts, sink, unreadable, cache_dir, use_cache)
            if not made:
                raise FinetuneError(f"{dataset}: no image to train on")
            made[0].source = source
            features.append(made[0])
        return features[0]

    def head_data(which: str):
        """A fresh stream of (features, label) batches (see :func:`images`)."""
        if which == "train":
            return features[0].dataset(np.arange(n), y_train, opts.batch_size, shuffle=True, seed=opts.seed)
        return features[0].dataset(np.arange(n, n + len(val_paths)), y_val, opts.batch_size)

    try:
        return _train(dataset, out_dir, opts, classes, train_paths, y_train, val_paths, y_val, images, head_inputs,
                      head_data, unreadable, progress)  # fmt: skip
    finally:
        for f in features:
            f.close()
        for folder in scratch:
            shutil.rmtree(folder, ignore_errors=True)


def _train(dataset, out_dir: Path, opts: FinetuneOptions, classes: list[str], train_paths: list[str],
           y_train: np.ndarray, val_paths: list[str], y_val: np.ndarray, images: Callable, head_inputs: Callable,
           head_data: Callable, unreadable: dict[str, str], progress: Callable | None) -> FinetuneResult:  # fmt: skip
    """:func:`finetune` once its streams are set up: (tune,) train both phases, evaluate, write."""
    import keras

    counts = np.bincount(y_train, minlength=len(classes))
    class_weight = None
    if counts.min() > 0 and counts.max() / counts.min() > opts.balance_above:  # imbalanced: weigh classes equally
        class_weight = {i: float(len(y_train) / (len(classes) * c)) for i, c in enumerate(counts)}
    tuning = None
    if opts.tune:
        opts, tuning = _tune(opts, len(classes), images, head_inputs, head_data, class_weight, out_dir,
                             progress)  # fmt: skip
        keras.utils.set_random_seed(opts.seed)  # trained as an untuned run with the winner's values would be
    model, backbone = build(len(classes), opts)
    history: dict[str, list[dict]] = {}

    def fit(phase: str, lr: float, net, data: Callable[[str], Any]) -> None:
        net.compile(optimizer=keras.optimizers.Adam(lr), loss="sparse_categorical_crossentropy",
                    metrics=["accuracy"])  # fmt: skip
        callbacks = [keras.callbacks.EarlyStopping("val_loss", patience=opts.patience, restore_best_weights=True)]
        if progress:
            callbacks.append(keras.callbacks.LambdaCallback(
                on_epoch_end=lambda e, logs: progress(phase, e + 1, opts.epochs, dict(logs or {}))))  # fmt: skip
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message=RAN_OUT)  # see RAN_OUT; shuffle: the stream does
            h = net.fit(data("train"), validation_data=data("val"), epochs=opts.epochs, class_weight=class_weight,
                        callbacks=callbacks, shuffle=False, verbose=0)  # fmt: skip
        keys = list(h.history)
        history[phase] = [{k: float(h.history[k][i]) for k in keys} for i in range(len(h.history[keys[0]]))]

    if opts.augment:
        head_source = "images (augmentation on)"
        fit("head", opts.learning_rate, model, images)
    else:
        feats = head_inputs(model)
        head_source = feats.source
        keras.utils.set_random_seed(opts.seed)  # the same head whether the features were cached or computed
        head = keras.Sequential([keras.Input((feats.dims,)), keras.layers.Dropout(opts.dropout, name="dropout"),
                                 _classifier(len(classes), opts)], name="head")  # fmt: skip
        fit("head", opts.learning_rate, head, head_data)
        model.get_layer("classifier").set_weights(head.get_layer("classifier").get_weights())
    if opts.unfreeze > 0:
        unfreeze_top(backbone, opts.unfreeze)
        fit("fine_tune", opts.learning_rate / 10, model, images)
    stream = image_dataset(val_paths, None, opts.image_size, opts.batch_size, skip_unreadable=False,
                           unreadable=unreadable)  # fmt: skip
    probs = model.predict(stream, verbose=0)  # rows in val_paths order; an unreadable image is a zeros row
    readable = np.array([p not in unreadable for p in val_paths], bool)
    if not readable.any():
        raise FinetuneError(f"{dataset}: no validation image can be decoded; run audit clean first")
    probs, y_val, val_paths = (
        probs[readable],
        y_val[readable],
        [p for p, r in zip(val_paths, readable, strict=True) if r],
    )
    pred = probs.argmax(axis=1)
    from sklearn.metrics import confusion_matrix

    cm = confusion_matrix(y_val, pred, labels=list(range(len(classes))))
    per_class = {c: (float(cm[i, i] / cm[i].sum()) if cm[i].sum() else None) for i, c in enumerate(classes)}
    train_images = sum(p not in unreadable for p in train_paths)
    evaluation = {"val_accuracy": float((pred == y_val).mean()), "val_images": len(y_val), "classes": classes,
                  "confusion_matrix": cm.tolist(), "per_class_accuracy": per_class,
                  "class_weight": class_weight, "train_images": train_images,
                  "head_trained_on": head_source}  # fmt: skip
    if unreadable:  # left out of training and evaluation, never a crash mid-epoch
        rel = {Path(os.path.relpath(p, dataset)).as_posix(): why for p, why in sorted(unreadable.items())}
        evaluation["unreadable"] = {"count": len(rel), "examples": dict(list(rel.items())[:UNREADABLE_EXAMPLES])}
    if tuning is not None:
        evaluation["tuning"] = tuning
    out_dir.mkdir(parents=True, exist_ok=True)
    files = {"model": out_dir / "model.keras", "history": out_dir / "history.json",
             "evaluation": out_dir / "evaluation.json", "predictions": out_dir / "predictions.csv"}  # fmt: skip
    import pandas as pd

    predictions = pd.DataFrame({
        "path": [Path(os.path.relpath(p, dataset)).as_posix() for p in val_paths],
        "true": [classes[i] for i in y_val], "predicted": [classes[i] for i in pred],
        "confidence": np.round(probs.max(axis=1).astype(float), 6),
    })  # fmt: skip
    tmp = out_dir / f".model.{os.getpid()}.keras"
    model.save(tmp)
    os.replace(tmp, files["model"])
    from auditor.core.fsutil import atomic_write_bytes

    atomic_write_bytes(files["history"], (json.dumps(history, indent=2) + "\n").encode())
    atomic_write_bytes(files["predictions"], predictions.to_csv(index=False, lineterminator="\n").encode())
    settings = {k: (list(v) if isinstance(v, tuple) else v) for k, v in vars(opts).items()}
    atomic_write_bytes(files["evaluation"], (json.dumps({**evaluation, "options": settings}, indent=2,
                                                        allow_nan=False) + "\n").encode())  # fmt: skip
    return FinetuneResult(files["model"], history, evaluation, classes, files, predictions)


def _tune(opts: FinetuneOptions, num_classes: int, images: Callable[[str], Any], head_inputs: Callable,
          head_data: Callable[[str], Any], class_weight: dict | None, out_dir: Path,
          progress: Callable | None) -> tuple[FinetuneOptions, dict]:  # fmt: skip
    """The search of :mod:`auditor.pipeline.tune` on this dataset: (the options with the
    winner's learning_rate, l2, dropout and unfreeze, the ``tuning`` section of
    evaluation.json). ``images(which)`` and ``head_data(which)`` ("train" or "val") make fresh
    streams of image and feature batches (one per trial). KerasTuner's files go to a temporary
    folder inside ``out_dir``, removed afterwards."""
    import keras

    from auditor.pipeline import tune

    started = time.perf_counter()
    budget = tune.Budget(opts.budget_minutes)

    def report(phase: str):
        if progress is None:
            return None
        return lambda done, total, score: progress(f"search: {phase}", done, total,
                                                   {} if score is None else {"best": score})  # fmt: skip

    extractor, base = build(num_classes, opts)
    feats = head_inputs(extractor)
    choices = sorted({opts.unfreeze, 2 * opts.unfreeze}) if opts.unfreeze > 0 else []
    if choices:
        unfreeze_top(base, max(choices))  # a backbone without named blocks: refused now, not after the head search

    def make_head(dropout: float, l2: float):
        return keras.Sequential([keras.Input((feats.dims,)), keras.layers.Dropout(dropout, name="dropout"),
                                 _classifier(num_classes, dataclasses.replace(opts, l2=l2))], name="head")  # fmt: skip

    def make_model(hp: dict, blocks: int, weights: list):
        model, backbone = build(num_classes, dataclasses.replace(opts, dropout=hp["dropout"], l2=hp["l2"]))
        model.get_layer("classifier").set_weights(weights)
        unfreeze_top(backbone, blocks)
        return model

    out_dir.mkdir(parents=True, exist_ok=True)
    work = tempfile.mkdtemp(prefix=".tuning-", dir=out_dir)  # inside the model folder, never elsewhere
    try:
        common = {"class_weight": class_weight, "seed": opts.seed, "directory": work, "budget": budget,
                  "batch_size": opts.batch_size}  # fmt: skip
        heads = tune.search_head(functools.partial(head_data, "train"), None, functools.partial(head_data, "val"),
                                 None, make_head, trials=opts.trials,
                                 epochs=opts.epochs, patience=opts.patience, on_trial=report("head"),
                                 defaults={"learning_rate": opts.learning_rate, "l2": opts.l2, "dropout": opts.dropout},
                                 **common)  # fmt: skip
        top = tune.best(heads, tune.TOP_HEADS)
        fine = tune.search_finetune(top, functools.partial(images, "train"), None, functools.partial(images, "val"),
                                    None, make_model, unfreeze=choices,
                                    epochs=min(tune.FINETUNE_TRIAL_EPOCHS, opts.epochs),
                                    on_trial=report("fine-tune"), **common)  # fmt: skip
    finally:
        shutil.rmtree(work, ignore_errors=True)
    trials = heads + fine
    winner = tune.best(trials)
    if not winner:
        errors = [t.error for t in trials if t.error]
        raise FinetuneError("no tuning trial finished with a finite validation loss" +
                            (f" (first error: {errors[0]})" if errors else ""))  # fmt: skip
    win = winner[0]
    hp = win.hyperparameters
    tuned = dataclasses.replace(opts, learning_rate=hp["learning_rate"], l2=hp["l2"], dropout=hp["dropout"],
                                unfreeze=hp["unfreeze"])  # fmt: skip
    section = {
        "objective": tune.OBJECTIVE,  # lower is better
        "winner": {"trial": win.trial, "phase": win.phase, "hyperparameters": dict(hp), "score": win.score},
        "trials": [t.row() for t in trials],
        "space": {
            "learning_rate": list(tune.LEARNING_RATE),
            "l2": list(tune.L2),
            "dropout": list(tune.DROPOUT),
            "unfreeze": [0, *choices],
        },
        "head_trials_on": feats.source,
        "finetune_trial_epochs": min(tune.FINETUNE_TRIAL_EPOCHS, opts.epochs),
        "budget_minutes": opts.budget_minutes,
        "stopped_by_budget": budget.stopped,
        "seconds": round(time.perf_counter() - started, 3),
    }
    return tuned, section


__all__ = [
    "FinetuneError",
    "FinetuneOptions",
    "FinetuneResult",
    "block_of",
    "build",
    "finetune",
    "head_features",
    "unfreeze_top",
]

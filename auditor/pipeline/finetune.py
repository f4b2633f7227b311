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
"""

from __future__ import annotations

import dataclasses
import functools
import json
import os
import re
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from auditor.core.paths import EVAL_SPLITS
from auditor.embed.backbones import quiet_tensorflow

AUGMENTATIONS = ("flip", "rotation", "zoom", "translation", "contrast", "brightness")
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


class FinetuneError(ValueError):
    """The dataset cannot be fine-tuned on (exit code 2)."""


@dataclass
class FinetuneOptions:
    epochs: int = 10  # per phase (early stopping may end a phase sooner)
    unfreeze: int = 3  # top blocks trained in phase 2 (0: phase 2 skipped)
    learning_rate: float = 1e-3  # phase 1; phase 2 uses a tenth of it
    image_size: int = 224
    batch_size: int = 32
    augment: tuple[str, ...] = AUGMENTATIONS  # empty: no augmentation
    dropout: float = 0.2
    l2: float = 1e-4
    patience: int = 3
    seed: int = 0
    val_fraction: float = 0.2  # carved from train (stratified) when there is no val split
    #: classes are weighed equally (inverse frequency) when the largest class has more than this
    #: many times the images of the smallest
    balance_above: float = 1.5
    backbone: str = "efficientnet-lite0"  # or a keras.applications name (needs --weights offline)
    weights: str | None = None  # keras.applications weights: a local file, "imagenet" (download) or "none"
    #: search learning_rate, l2, dropout and unfreeze first (auditor.pipeline.tune), then train with the winner
    tune: bool = False
    trials: int = 8  # head settings tried (the fine-tuning trials come on top: TOP_HEADS x unfreeze choices)
    budget_minutes: float | None = None  # wall-clock limit of the search (None: none)


@dataclass
class FinetuneResult:
    model_path: Path
    history: dict[str, list[dict]]  # phase -> per-epoch metrics
    evaluation: dict  # val accuracy, confusion matrix, per-class accuracy
    classes: list[str]
    files: dict[str, Path] = field(default_factory=dict)
    #: one row per validation image: path (relative to the dataset), true, predicted, confidence
    predictions: Any = None


def _items(dataset: str | os.PathLike, seed: int, val_fraction: float):
    """(train paths, train labels, val paths, val labels, classes) from a split/class or
    class-folder dataset (e.g. ``audit clean``'s output). Without a val split, a stratified
    ``val_fraction`` of train is held out (seeded)."""
    from auditor.io.dataset import discover, labeled

    disc = discover(dataset)
    items = labeled(disc.items)
    items = items[~items["path"].str.startswith("_quarantine/")]
    if items.empty:
        raise FinetuneError(f"{dataset}: no labeled images (expected DATASET/<split>/<class>/ or DATASET/<class>/)")
    splits = set(items["split"].dropna())
    val_name = next((s for s in EVAL_SPLITS if s in splits and s != "test"), None)
    train = items[items["split"] == "train"] if "train" in splits else items[items["split"].isna()]
    if val_name is not None:
        val = items[items["split"] == val_name]
    else:
        from sklearn.model_selection import train_test_split

        counts = train["label"].value_counts()
        strat = train["label"] if counts.min() >= 2 else None
        train, val = train_test_split(train, test_size=val_fraction, random_state=seed, stratify=strat)
    classes = sorted(set(train["label"]))
    if len(classes) < 2:
        raise FinetuneError(f"{dataset}: need at least 2 classes in train, found {classes}")
    val = val[val["label"].isin(classes)]
    if val.empty:
        raise FinetuneError(f"{dataset}: the validation split has no images of the train classes")
    code = {c: i for i, c in enumerate(classes)}
    return (list(train["abs_path"]), np.array([code[c] for c in train["label"]]), list(val["abs_path"]),
            np.array([code[c] for c in val["label"]]), classes)  # fmt: skip


def _load_images(paths: list[str], size: int) -> np.ndarray:
    """uint8 (n, size, size, 3), the embedder's decode + resize (shorter side to size/0.875,
    centre crop)."""
    from concurrent.futures import ThreadPoolExecutor

    from auditor.embed.features import prepare_image

    with ThreadPoolExecutor(max_workers=max(1, min(8, os.cpu_count() or 1))) as pool:
        arrays = list(pool.map(lambda p: prepare_image(p, size), paths))
    bad = [p for p, a in zip(paths, arrays, strict=True) if isinstance(a, str)]
    if bad:
        raise FinetuneError(f"{bad[0]}: cannot be decoded ({len(bad)} such files); run audit clean first")
    return np.stack(arrays)


def build(num_classes: int, options: FinetuneOptions):
    """(model, backbone): the classifier on a frozen pretrained backbone (EfficientNet-Lite0
    with its packaged ImageNet weights by default, or a ``keras.applications`` model)."""
    import keras

    backbone, preprocess = _base(options)
    backbone.trainable = False
    inputs = keras.Input((options.image_size, options.image_size, 3), name="image")
    x = inputs
    if options.augment:
        x = _augmentation(options)(x)
    for layer in preprocess:
        x = layer(x)
    x = backbone(x, training=False)  # BatchNorm in inference mode, in both phases
    if len(x.shape) == 4:
        x = keras.layers.GlobalAveragePooling2D(name="pool")(x)
    x = keras.layers.Dropout(options.dropout, name="dropout")(x)
    outputs = _classifier(num_classes, options)(x)
    return keras.Model(inputs, outputs, name="auditor_finetune"), backbone


def _classifier(num_classes: int, options: FinetuneOptions):
    import keras

    return keras.layers.Dense(num_classes, activation="softmax", name="classifier",
                              kernel_regularizer=keras.regularizers.l2(options.l2))  # fmt: skip


#: keras.applications modules whose preprocess_input is "tf" mode (x / 127.5 - 1) or "torch"
#: mode (ImageNet mean/std); the others in KERAS_IN_MODEL preprocess inside the model.
KERAS_TF_MODE = ("mobilenet", "mobilenet_v2", "inception_v3", "inception_resnet_v2", "xception", "nasnet",
                 "resnet_v2")  # fmt: skip
KERAS_TORCH_MODE = ("densenet",)
KERAS_IN_MODEL = ("efficientnet", "efficientnet_v2", "convnext", "regnet", "mobilenet_v3")


def _base(options: FinetuneOptions):
    """(backbone model without top, preprocessing layers to put in front of it)."""
    import keras

    from auditor.embed.backbones import DEFAULT_BACKBONE, LITE0, BackboneError, keras_app, load_keras_app

    name = options.backbone or DEFAULT_BACKBONE
    size = options.image_size
    if name in (DEFAULT_BACKBONE, LITE0.id):
        from auditor.embed.backbones import efficientnet_lite as lite

        pretrained = _lite0_weights()
        backbone = lite.build_model(include_top=False, input_size=size)
        for layer in backbone.layers:  # weights are input-size independent
            weights = pretrained.get(layer.name) if layer.weights else None
            if weights:
                layer.set_weights(weights)
        return backbone, []
    try:
        fn = keras_app(name)
    except BackboneError as exc:
        raise FinetuneError(str(exc)) from None
    module = fn.__module__.rsplit(".", 1)[-1]
    if module in KERAS_TF_MODE:
        preprocess = [keras.layers.Rescaling(1 / 127.5, offset=-1.0, name="preprocess")]
    elif module in KERAS_TORCH_MODE:
        mean = np.array([0.485, 0.456, 0.406]) * 255
        var = (np.array([0.229, 0.224, 0.225]) * 255) ** 2
        preprocess = [keras.layers.Normalization(mean=mean, variance=var, name="preprocess")]
    elif module in KERAS_IN_MODEL:
        preprocess = []
    else:
        raise FinetuneError(f"{name}: its preprocessing (BGR, caffe-style) is not supported here; use efficientnet-"
                            "lite0 or e.g. ResNet50V2, MobileNetV2, EfficientNetB0, DenseNet121")  # fmt: skip
    try:
        backbone = load_keras_app(name, options.weights or "imagenet", include_top=False,
                                  input_shape=(options.image_size, options.image_size, 3))  # fmt: skip
    except BackboneError as exc:
        raise FinetuneError(str(exc)) from None
    return backbone, preprocess


@functools.lru_cache(maxsize=1)
def _lite0_weights() -> dict[str, list[np.ndarray]]:
    """Layer name -> the packaged ImageNet weights of EfficientNet-Lite0, read once per process
    (a search builds the model once per fine-tuning trial)."""
    from auditor.embed.backbones import efficientnet_lite as lite

    with quiet_tensorflow():
        pretrained = lite.load_model()
    return {layer.name: layer.get_weights() for layer in pretrained.layers if layer.weights}


def _augmentation(options: FinetuneOptions):
    import keras

    layers = {
        "flip": lambda: keras.layers.RandomFlip("horizontal", seed=options.seed),
        "rotation": lambda: keras.layers.RandomRotation(0.05, seed=options.seed),
        "zoom": lambda: keras.layers.RandomZoom(0.1, seed=options.seed),
        "translation": lambda: keras.layers.RandomTranslation(0.05, 0.05, seed=options.seed),
        "contrast": lambda: keras.layers.RandomContrast(0.1, seed=options.seed),
        "brightness": lambda: keras.layers.RandomBrightness(0.1, value_range=(0, 255), seed=options.seed),
    }
    unknown = [a for a in options.augment if a not in layers]
    if unknown:
        raise FinetuneError(f"unknown augmentation {unknown[0]!r}; expected some of {', '.join(AUGMENTATIONS)}")
    return keras.Sequential([layers[a]() for a in options.augment], name="augmentation")


#: Layer-name patterns that name a block in the supported backbones (Lite0 and EfficientNet
#: ``block6a_``, MobileNetV2 ``block_16_``, ResNetV2/DenseNet ``conv5_block3_``, Xception
#: ``block14_``, MobileNetV3 ``expanded_conv_10_``, ConvNeXt/RegNet ``..._stage_3_block_2_``).
BLOCK_PATTERNS = re.compile(
    r"^(?:.*?_)??(stage_?\d+_[a-z]?block_?\d+|conv\d+_block\d+|block_\d+|block\d+[a-z]?|expanded_conv(?:_\d+)?)(?:_|$)",
    re.IGNORECASE,
)


def block_of(name: str) -> str | None:
    """The block a layer belongs to, from its name (:data:`BLOCK_PATTERNS`:
    ``block7a_project_conv`` -> ``block7a``, ``conv5_block3_2_bn`` -> ``conv5_block3``,
    ``block_16_project`` -> ``block_16``, ``expanded_conv_10_add`` -> ``expanded_conv_10``).
    None for stem, head and automatically named layers (``conv2d_93``, ``add_38``)."""
    m = BLOCK_PATTERNS.match(name)
    return m.group(1) if m else None


def unfreeze_top(backbone, blocks: int) -> list[str]:
    """Make the top ``blocks`` blocks (see :func:`block_of`) and the layers after the last
    block (head convolution) trainable; every BatchNorm layer stays frozen. Returns the
    names of the layers made trainable."""
    import keras

    keys = [block_of(layer.name) for layer in backbone.layers]
    order = list(dict.fromkeys(k for k in keys if k is not None))
    wanted = set(order[max(0, len(order) - blocks) :]) if blocks > 0 else set()
    last = max((i for i, k in enumerate(keys) if k is not None), default=len(keys))
    backbone.trainable = True
    names = []
    for i, layer in enumerate(backbone.layers):
        top = keys[i] in wanted or (keys[i] is None and i > last)
        train = top and blocks > 0 and not isinstance(layer, keras.layers.BatchNormalization)
        layer.trainable = train
        if train and layer.weights:
            names.append(layer.name)
    if blocks > 0 and not order:
        raise FinetuneError(f"cannot tell the blocks of {backbone.name} from its layer names; use --unfreeze 0 "
                            "(head only) or another backbone")  # fmt: skip
    return names


def head_features(
    model,
    paths: list[str],
    images: Callable[[], np.ndarray],
    options: FinetuneOptions,
    cache_dir: str | os.PathLike | None = None,
    use_cache: bool = True,
) -> tuple[np.ndarray, str]:
    """What the frozen backbone feeds the head, for each image (rows in ``paths`` order), and
    where it came from. The default backbone at its native 224 px reads the scan's cached
    embeddings (the same pixels and the same pooled layer; stored as float16), computing and
    caching only the missing ones; otherwise one forward pass over ``images()``."""
    from auditor.embed.backbones import DEFAULT_BACKBONE, LITE0

    if use_cache and options.backbone in (DEFAULT_BACKBONE, LITE0.id) and options.image_size == LITE0.input_size:
        from auditor.embed.features import embed_files
        from auditor.io.store import Store
        from auditor.measure.batch import hash_all

        with Store.open_default(cache_dir) as store:
            by_path = hash_all(paths, store)  # indexed, so the next run does not read the files to hash them
            unreadable = [p for p in paths if by_path.get(p) is None]
            if unreadable:
                raise FinetuneError(f"{unreadable[0]}: cannot be read ({len(unreadable)} such files); run audit "
                                    "clean first")  # fmt: skip
            hashes = [by_path[p] for p in paths]
            emb = embed_files(dict(zip(hashes, paths, strict=True)), LITE0, store, cache_dir=cache_dir)
        if emb.failures:
            raise FinetuneError(f"{len(emb.failures)} images cannot be decoded ({next(iter(emb.failures.values()))});"
                                " run audit clean first")  # fmt: skip
        vectors, mask = emb.rows(hashes)
        if mask.all():
            return vectors, f"cached embeddings ({emb.cached} cached, {emb.computed} computed now)"
    import keras

    extractor = keras.Model(model.inputs, model.get_layer("dropout").input)
    return extractor.predict(images(), batch_size=options.batch_size, verbose=0), "one forward pass of the backbone"


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

        keras.utils.set_random_seed(opts.seed)
        keras.ops.convert_to_tensor(np.zeros(1))  # device initialisation happens here
    train_paths, y_train, val_paths, y_val, classes = _items(dataset, opts.seed, opts.val_fraction)
    loaded: dict[str, np.ndarray] = {}

    def images(which: str) -> np.ndarray:
        if which not in loaded:
            loaded[which] = _load_images(train_paths if which == "train" else val_paths, opts.image_size)
        return loaded[which]

    features: list[tuple[np.ndarray, str]] = []

    def head_inputs(model) -> tuple[np.ndarray, str]:  # train rows then val rows; computed once
        if not features:
            features.append(head_features(model, train_paths + val_paths, lambda: np.concatenate(
                [images("train"), images("val")]), opts, cache_dir, use_cache))  # fmt: skip
        return features[0]

    counts = np.bincount(y_train, minlength=len(classes))
    class_weight = None
    if counts.min() > 0 and counts.max() / counts.min() > opts.balance_above:  # imbalanced: weigh classes equally
        class_weight = {i: float(len(y_train) / (len(classes) * c)) for i, c in enumerate(counts)}
    tuning = None
    if opts.tune:
        opts, tuning = _tune(opts, len(classes), y_train, y_val, images, head_inputs, class_weight, Path(out),
                             progress)  # fmt: skip
        keras.utils.set_random_seed(opts.seed)  # trained as an untuned run with the winner's values would be
    model, backbone = build(len(classes), opts)
    history: dict[str, list[dict]] = {}

    def fit(phase: str, lr: float, net, x_train: np.ndarray, x_val: np.ndarray) -> None:
        net.compile(optimizer=keras.optimizers.Adam(lr), loss="sparse_categorical_crossentropy",
                    metrics=["accuracy"])  # fmt: skip
        callbacks = [keras.callbacks.EarlyStopping("val_loss", patience=opts.patience, restore_best_weights=True)]
        if progress:
            callbacks.append(keras.callbacks.LambdaCallback(
                on_epoch_end=lambda e, logs: progress(phase, e + 1, opts.epochs, dict(logs or {}))))  # fmt: skip
        h = net.fit(x_train, y_train, validation_data=(x_val, y_val), epochs=opts.epochs,
                    batch_size=opts.batch_size, class_weight=class_weight, callbacks=callbacks,
                    shuffle=True, verbose=0)  # fmt: skip
        keys = list(h.history)
        history[phase] = [{k: float(h.history[k][i]) for k in keys} for i in range(len(h.history[keys[0]]))]

    if opts.augment:
        head_source = "images (augmentation on)"
        fit("head", opts.learning_rate, model, images("train"), images("val"))
    else:
        feats, head_source = head_inputs(model)
        keras.utils.set_random_seed(opts.seed)  # the same head whether the features were cached or computed
        head = keras.Sequential([keras.Input((feats.shape[1],)), keras.layers.Dropout(opts.dropout, name="dropout"),
                                 _classifier(len(classes), opts)], name="head")  # fmt: skip
        fit("head", opts.learning_rate, head, feats[: len(train_paths)], feats[len(train_paths) :])
        model.get_layer("classifier").set_weights(head.get_layer("classifier").get_weights())
    if opts.unfreeze > 0:
        unfreeze_top(backbone, opts.unfreeze)
        fit("fine_tune", opts.learning_rate / 10, model, images("train"), images("val"))
    x_val = images("val")
    probs = model.predict(x_val, batch_size=opts.batch_size, verbose=0)
    pred = probs.argmax(axis=1)
    from sklearn.metrics import confusion_matrix

    cm = confusion_matrix(y_val, pred, labels=list(range(len(classes))))
    per_class = {c: (float(cm[i, i] / cm[i].sum()) if cm[i].sum() else None) for i, c in enumerate(classes)}
    evaluation = {"val_accuracy": float((pred == y_val).mean()), "val_images": len(y_val), "classes": classes,
                  "confusion_matrix": cm.tolist(), "per_class_accuracy": per_class,
                  "class_weight": class_weight, "train_images": len(y_train),
                  "head_trained_on": head_source}  # fmt: skip
    if tuning is not None:
        evaluation["tuning"] = tuning
    out_dir = Path(out)
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


def _tune(opts: FinetuneOptions, num_classes: int, y_train: np.ndarray, y_val: np.ndarray,
          images: Callable[[str], np.ndarray], head_inputs: Callable, class_weight: dict | None, out_dir: Path,
          progress: Callable | None) -> tuple[FinetuneOptions, dict]:  # fmt: skip
    """The search of :mod:`auditor.pipeline.tune` on this dataset: (the options with the
    winner's learning_rate, l2, dropout and unfreeze, the ``tuning`` section of
    evaluation.json). KerasTuner's files go to a temporary folder inside ``out_dir``, removed
    afterwards."""
    import shutil
    import tempfile

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
    feats, source = head_inputs(extractor)
    n = len(y_train)
    choices = sorted({opts.unfreeze, 2 * opts.unfreeze}) if opts.unfreeze > 0 else []
    if choices:
        unfreeze_top(base, max(choices))  # a backbone without named blocks: refused now, not after the head search

    def make_head(dropout: float, l2: float):
        return keras.Sequential([keras.Input((feats.shape[1],)), keras.layers.Dropout(dropout, name="dropout"),
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
        heads = tune.search_head(feats[:n], y_train, feats[n:], y_val, make_head, trials=opts.trials,
                                 epochs=opts.epochs, patience=opts.patience, on_trial=report("head"),
                                 defaults={"learning_rate": opts.learning_rate, "l2": opts.l2, "dropout": opts.dropout},
                                 **common)  # fmt: skip
        top = tune.best(heads, tune.TOP_HEADS)
        fine = tune.search_finetune(top, images("train"), y_train, images("val"), y_val, make_model, unfreeze=choices,
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
        "head_trials_on": source,
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

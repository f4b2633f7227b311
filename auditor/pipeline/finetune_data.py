"""The input side of ``audit finetune`` (:mod:`auditor.pipeline.finetune`): which images train
and validate (:func:`_items`), and reading them for training without holding them all in memory:
the decoded-image stream (:func:`image_dataset`) and the file of the frozen backbone's features
(:class:`_FeatureFile`). TensorFlow is imported inside the functions that use it.
"""

from __future__ import annotations

import functools
import os
from pathlib import Path

import numpy as np

from auditor.core.paths import EVAL_SPLITS


#: Here, in the lowest of the three finetune modules: the model and the recipe raise it too.
class FinetuneError(ValueError):
    """The dataset cannot be fine-tuned on (exit code 2)."""


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
    centre crop), all in memory: for a few images (scoring a small test folder); training
    streams them (:func:`image_dataset`)."""
    from concurrent.futures import ThreadPoolExecutor

    from auditor.embed.features import prepare_image

    with ThreadPoolExecutor(max_workers=max(1, min(8, os.cpu_count() or 1))) as pool:
        arrays = list(pool.map(lambda p: prepare_image(p, size), paths))
    bad = [p for p, a in zip(paths, arrays, strict=True) if isinstance(a, str)]
    if bad:
        raise FinetuneError(f"{bad[0]}: cannot be decoded ({len(bad)} such files); run audit clean first")
    return np.stack(arrays)


def _decode(path: bytes, size: int, unreadable: dict[str, str]) -> tuple[np.ndarray, np.bool_]:
    """The embedder's pixels for one file (:func:`auditor.embed.features.prepare_image`: the
    project's one safe decoder, shorter side to size/0.875, centre crop), and whether it could
    be decoded; a file that cannot is zeros, and its reason goes into ``unreadable``."""
    from auditor.embed.features import prepare_image

    name = path.decode()
    try:
        pixels = prepare_image(name, size)
    except Exception as exc:  # a file that changed or vanished since it was listed
        pixels = f"{type(exc).__name__}: {exc}"
    if isinstance(pixels, str):
        unreadable.setdefault(name, pixels)
        return np.zeros((size, size, 3), np.uint8), np.bool_(False)
    return pixels, np.bool_(True)


def _decode_batch(paths: np.ndarray, size: int, unreadable: dict[str, str]) -> tuple[np.ndarray, np.ndarray]:
    """:func:`_decode` for a batch of paths: (uint8 (b, size, size, 3), ok (b,))."""
    images = np.zeros((len(paths), size, size, 3), np.uint8)
    ok = np.zeros(len(paths), bool)
    for i, path in enumerate(paths):
        images[i], ok[i] = _decode(path, size, unreadable)
    return images, ok


def image_dataset(
    paths: list[str],
    labels: np.ndarray | None,
    size: int,
    batch_size: int,
    *,
    shuffle: bool = False,
    seed: int = 0,
    skip_unreadable: bool = True,
    unreadable: dict[str, str] | None = None,
):
    """A ``tf.data`` stream of the images in ``paths``: list -> (shuffle the paths, seeded, a
    new order each epoch) -> batch the paths -> decode and resize (:func:`_decode`; batches in
    parallel, delivered in order) -> prefetch. Yields (uint8 (b, size, size, 3), int32 labels
    (b,)) batches, or images alone when ``labels`` is None; only a few batches are ever decoded
    at once. Files that cannot be decoded are left out (``skip_unreadable``: a batch may then
    be smaller) or zeros (to keep rows aligned with ``paths``), their reasons recorded in
    ``unreadable`` (path -> reason) as they are met. One decoding call per batch, not per
    image: TensorFlow's per-element overhead would double the time of a 32 px fine-tune.
    Augmentation is in the model (Keras layers, active only while training), so the saved
    model has it too."""
    import tensorflow as tf

    found = {} if unreadable is None else unreadable
    names = tf.constant([str(p) for p in paths], dtype=tf.string)
    ds = tf.data.Dataset.from_tensor_slices(
        (names, tf.constant(np.zeros(len(paths)) if labels is None else labels, tf.int32))
    )
    if shuffle:  # the paths, not the pixels: the buffer holds names
        ds = ds.shuffle(max(1, len(paths)), seed=seed, reshuffle_each_iteration=True)
    decode = functools.partial(_decode_batch, size=size, unreadable=found)

    @tf.autograph.experimental.do_not_convert  # plain graph code: AutoGraph would write temporary files
    def load(batch, label):
        images, ok = tf.numpy_function(decode, [batch], [tf.uint8, tf.bool], name="decode")
        images.set_shape((None, size, size, 3))
        ok.set_shape((None,))
        if skip_unreadable:
            images, label = tf.boolean_mask(images, ok), tf.boolean_mask(label, ok)
        return images if labels is None else (images, label)

    ds = ds.batch(batch_size).map(load, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
    if skip_unreadable:  # a batch of nothing but unreadable files would be an empty step
        ds = ds.filter(tf.autograph.experimental.do_not_convert(lambda *batch: tf.shape(batch[0])[0] > 0))
    return ds.prefetch(tf.data.AUTOTUNE)


class _FeatureFile:
    """What the frozen backbone feeds the head, one float32 row per image, in a file read a
    batch at a time (``os.pread``, not a memory map, whose pages would stay resident): the
    frozen phase and the head search never hold every row in memory."""

    def __init__(self, path: Path, n: int, dims: int) -> None:
        self.path, self.n, self.dims = path, n, dims
        self.ok = np.ones(n, bool)  # False: the image could not be decoded; its row is zeros
        self.source = ""
        self._fd = os.open(path, os.O_RDWR | os.O_CREAT | getattr(os, "O_BINARY", 0), 0o600)

    def write(self, start: int, rows: np.ndarray) -> None:
        data = np.ascontiguousarray(rows, np.float32).tobytes()
        os.pwrite(self._fd, data, start * self.dims * 4)

    def read(self, index: np.ndarray) -> np.ndarray:
        """float32 (len(index), dims), the rows ``index`` in that order."""
        out = np.empty((len(index), self.dims), np.float32)
        width = self.dims * 4
        for k, i in enumerate(np.asarray(index, np.int64)):
            out[k] = np.frombuffer(os.pread(self._fd, width, int(i) * width), np.float32)
        return out

    def dataset(self, rows: np.ndarray, labels: np.ndarray, batch_size: int, *, shuffle: bool = False,
                seed: int = 0):  # fmt: skip
        """(float32 (b, dims), int32 (b,)) batches of the rows ``rows`` (those that are ok)."""
        import tensorflow as tf

        keep = self.ok[rows]
        ds = tf.data.Dataset.from_tensor_slices((rows[keep].astype(np.int64), labels[keep].astype(np.int32)))
        if shuffle:
            ds = ds.shuffle(max(1, int(keep.sum())), seed=seed, reshuffle_each_iteration=True)

        @tf.autograph.experimental.do_not_convert
        def load(index, label):
            x = tf.numpy_function(self.read, [index], tf.float32, name="read_features")
            x.set_shape((None, self.dims))
            return x, label

        return ds.batch(batch_size).map(load).prefetch(tf.data.AUTOTUNE)

    def close(self) -> None:
        os.close(self._fd)

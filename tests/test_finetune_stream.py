"""audit finetune streams its images (issue 17): training reads a tf.data pipeline built from the
file paths, never an array of every image; the frozen phase's features are written and read in
blocks; an undecodable file is left out instead of crashing; the same seed gives the same model."""

from __future__ import annotations

import shutil

import numpy as np
import pytest

from auditor.demo import synth


def test_training_reads_a_stream_of_paths_and_the_same_seed_gives_the_same_results(tiny, tmp_path, monkeypatch):
    import keras
    import tensorflow as tf

    from auditor.pipeline import finetune as ft

    def refuse(*args, **kwargs):
        raise AssertionError("finetune decoded every image into one array")

    monkeypatch.setattr(ft, "_load_images", refuse)
    streams, fed = [], []
    real_stream, real_fit, real_predict = ft.image_dataset, keras.Model.fit, keras.Model.predict

    def stream(paths, labels, *args, **kwargs):
        streams.append((list(paths), kwargs.get("shuffle", False)))
        return real_stream(paths, labels, *args, **kwargs)

    def fit(self, x=None, *args, **kwargs):
        fed.append(x)
        fed.append(kwargs.get("validation_data"))
        return real_fit(self, x, *args, **kwargs)

    def predict(self, x, *args, **kwargs):
        fed.append(x)
        return real_predict(self, x, *args, **kwargs)

    monkeypatch.setattr(ft, "image_dataset", stream)
    monkeypatch.setattr(keras.Model, "fit", fit)
    monkeypatch.setattr(keras.Model, "predict", predict)
    opts = ft.FinetuneOptions(epochs=1, unfreeze=1, image_size=32, batch_size=8, augment=("flip", "rotation"))
    first = ft.finetune(tiny, tmp_path / "a", opts)

    train, y_train, val, _, _ = ft._items(tiny, 0, 0.2)
    assert fed and all(isinstance(x, tf.data.Dataset) for x in fed)  # fit, validation and predict: streams
    images = fed[0].element_spec[0]
    assert images.dtype == tf.uint8 and tuple(images.shape) == (None, 32, 32, 3)  # decoded a batch at a time
    assert (train, True) in streams and (val, False) in streams  # built from the paths; train shuffled
    assert first.evaluation["train_images"] == len(y_train) == 32 and "unreadable" not in first.evaluation

    monkeypatch.undo()  # the same run again, unobserved: the same numbers
    second = ft.finetune(tiny, tmp_path / "b", opts)
    for name in ("predictions.csv", "history.json"):
        assert (tmp_path / "a" / name).read_bytes() == (tmp_path / "b" / name).read_bytes(), name
    assert first.evaluation == second.evaluation


def test_feature_blocks_and_undecodable_files(tiny, tmp_path, monkeypatch):
    """--no-augment at a small size: the head trains on backbone features written to a file in
    blocks (here 8 images per block; the same features as in one block), and files that cannot
    be decoded are left out of training and evaluation and named in evaluation.json."""
    from auditor.pipeline import finetune as ft

    data = tmp_path / "data"
    shutil.copytree(tiny, data)
    synth.write(data / "train" / "cat" / "broken.jpg", synth.truncated_jpeg(synth.digit(3, 64), keep=0.3))
    synth.write(data / "val" / "coffee" / "noise.png", synth.random_bytes(2048))
    monkeypatch.setattr(ft, "FEATURE_BLOCK", 8)
    blocks = []
    real = ft._FeatureFile.write

    def write(self, start, rows):
        blocks.append((start, len(rows)))
        assert not (tmp_path / "m" / "features.f32").exists()  # a hidden scratch folder, removed afterwards
        return real(self, start, rows)

    monkeypatch.setattr(ft._FeatureFile, "write", write)
    opts = ft.FinetuneOptions(epochs=1, unfreeze=0, image_size=32, batch_size=8, augment=())
    result = ft.finetune(data, tmp_path / "m", opts)
    assert blocks == [(i, min(8, 42 - i)) for i in range(0, 42, 8)]  # 33 train + 9 val rows, 8 at a time
    ev = result.evaluation
    assert ev["head_trained_on"] == "one forward pass of the backbone"
    assert ev["unreadable"]["count"] == 2
    assert set(ev["unreadable"]["examples"]) == {"train/cat/broken.jpg", "val/coffee/noise.png"}
    assert ev["train_images"] == 32 and ev["val_images"] == 8 and len(result.predictions) == 8
    assert "val/coffee/noise.png" not in set(result.predictions["path"])
    assert sorted(p.name for p in (tmp_path / "m").iterdir()) == ["evaluation.json", "history.json", "model.keras",
                                                                 "predictions.csv"]  # fmt: skip

    # the blocks hold the same rows as one pass: in memory (head_features) vs written and read back
    import keras

    model = keras.saving.load_model(result.model_path, safe_mode=True)
    train, _, _, _, _ = ft._items(tiny, 0, 0.2)
    whole, _ = ft.head_features(model, train[:20], None, opts, use_cache=False)
    monkeypatch.setattr(ft, "FEATURE_BLOCK", 4096)
    one, _ = ft.head_features(model, train[:20], None, opts, use_cache=False)
    np.testing.assert_allclose(whole, one, rtol=1e-5, atol=1e-6)
    file = ft._FeatureFile(tmp_path / "f.f32", 20, whole.shape[1])
    file.write(0, whole[:12])
    file.write(12, whole[12:])
    np.testing.assert_array_equal(file.read(np.array([19, 0, 7])), whole[[19, 0, 7]])
    file.ok[3] = False  # an unreadable image's row is never served
    batches = list(file.dataset(np.arange(20), np.arange(20) % 2, 8).as_numpy_iterator())
    file.close()
    assert [len(x) for x, _ in batches] == [8, 8, 3]
    np.testing.assert_array_equal(np.concatenate([x for x, _ in batches]), np.delete(whole, 3, axis=0))
    with pytest.raises(ft.FinetuneError, match="cannot be decoded"):  # in memory: refused, as before
        ft.head_features(model, [str(data / "train" / "cat" / "broken.jpg")], None, opts, use_cache=False)


def test_cli_says_how_many_files_it_left_out(tiny, tmp_path):
    """`audit finetune` names the files it could not decode on the terminal, not only in
    evaluation.json."""
    from typer.testing import CliRunner

    from auditor.cli.app import app

    data = tmp_path / "data"
    shutil.copytree(tiny, data)
    synth.write(data / "train" / "cat" / "broken.jpg", synth.truncated_jpeg(synth.digit(3, 64), keep=0.3))
    res = CliRunner().invoke(app, ["finetune", str(data), "--out", str(tmp_path / "m"), "--epochs", "1",
                                   "--unfreeze", "0", "--no-augment", "--image-size", "32",
                                   "--cache-dir", str(tmp_path / "c")])  # fmt: skip
    assert res.exit_code == 0, res.output
    assert "warning: 1 file(s) could not be decoded and were left out" in res.output
    assert "train/cat/broken.jpg" in res.output

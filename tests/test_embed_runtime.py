"""The default backbone on the TFLite interpreter: equal to the Keras model on real photos,
independent of batching, cached safely, and falling back to Keras when it cannot run."""

from __future__ import annotations

import dataclasses
import json
import os
import subprocess
import sys
import warnings
from pathlib import Path

import numpy as np
import pytest

from auditor.demo import synth
from auditor.embed import backbones
from auditor.embed.backbones import BackboneError, get_backbone
from auditor.embed.backbones import lite_runtime as rt
from auditor.embed.features import embed_files, prepare_image
from auditor.io.decode import file_hash
from auditor.io.store import Store

PHOTOS = synth.COLOR_PHOTOS + ("camera", "brick", "coins", "page")  # 13 photos, 4 of them grayscale


@pytest.fixture(scope="module")
def photos(tmp_path_factory) -> tuple[dict[str, str], np.ndarray]:
    """The photos as JPEG files ``{content hash: path}`` and as backbone inputs (13, 224, 224, 3)."""
    root = tmp_path_factory.mktemp("photos")
    files, pixels = {}, []
    for name in PHOTOS:
        path = root / f"{name}.jpg"
        path.write_bytes(synth.jpeg_bytes(synth.load_photo(name), 92))
        files[file_hash(path.read_bytes())] = str(path)
        pixels.append(prepare_image(str(path), 224))
    return files, np.stack(pixels).astype(np.float32)


@pytest.fixture(scope="module")
def embedders(tmp_path_factory):
    """(TFLite embedder, Keras embedder, cache folder): the model converted once, here."""
    cache = str(tmp_path_factory.mktemp("runtime-cache"))
    bb = get_backbone()
    with pytest.MonkeyPatch.context() as mp:
        # convert here even if an earlier test loaded the TFLite model (Keras may be reused)
        mp.setattr(backbones, "_LOADED", {k: v for k, v in backbones._LOADED.items() if k[-1] == "keras"})
        with warnings.catch_warnings():
            warnings.simplefilter("error", rt.EmbedRuntimeWarning)  # the conversion must succeed here
            lite = bb.embedder(cache, "lite")
        keras = bb.embedder(cache, "keras")
        yield lite, keras, cache


def test_lite_outputs_equal_keras_per_image(photos, embedders):
    lite, keras, _ = embedders
    assert lite.runtime == "lite" and keras.runtime == "keras"
    _, x = photos
    got, ref = lite.run(x), keras.run(x)
    assert set(got) == set(ref) == {"embedding", "probs", "bn_stats"}
    for name in ref:
        assert got[name].shape == ref[name].shape and got[name].dtype == np.float32
        cos = [rt.min_cosine(got[name][i : i + 1], ref[name][i : i + 1]) for i in range(len(x))]
        assert min(cos) >= 0.999, (name, dict(zip(PHOTOS, np.round(cos, 5), strict=True)))
    assert np.array_equal(got["probs"].argmax(1), ref["probs"].argmax(1))
    assert got["probs"][PHOTOS.index("coffee")].argmax() == 967  # espresso


def test_an_image_s_outputs_do_not_depend_on_its_batch(photos, embedders):
    lite, _, _ = embedders
    _, x = photos
    whole = lite.run(x)
    order = np.random.default_rng(0).permutation(len(x))
    shuffled = lite.run(x[order])
    alone = lite.run(x[4:5])
    again = lite.run(x)
    for name in whole:
        assert np.array_equal(shuffled[name], whole[name][order]), name
        assert np.array_equal(alone[name][0], whole[name][4]), name
        assert np.array_equal(again[name], whole[name]), name  # and the same run repeats exactly


def test_outputs_do_not_depend_on_how_the_cores_are_shared(photos, embedders):
    lite, _, cache = embedders
    _, x = photos
    data = next((Path(cache) / "models").glob("*.tflite")).read_bytes()
    widths = {"embedding": 1280, "probs": 1000, "bn_stats": 6240}
    one = rt.LiteModel(data, lite.outputs, widths, 224, interpreters=1, threads=2).predict_on_batch(x)
    two = rt.LiteModel(data, lite.outputs, widths, 224, interpreters=3, threads=1).predict_on_batch(x)
    # chunks of 5 images, the last (13 = 5 + 5 + 3) padded with zeros
    padded = rt.LiteModel(data, lite.outputs, widths, 224, batch=5, interpreters=2).predict_on_batch(x)
    for a, b, c in zip(one, two, padded, strict=True):
        assert np.array_equal(a, b)
        assert np.array_equal(a, c)


def test_embed_files_batch_size_and_runtime_share_the_cache(photos, embedders):
    files, _ = photos
    _, _, cache = embedders
    bb = get_backbone()
    with Store(None) as a, Store(None) as b, Store(None) as k:
        small = embed_files(files, bb, a, batch_size=3, cache_dir=cache, runtime="lite")
        large = embed_files(files, bb, b, batch_size=32, cache_dir=cache, runtime="lite")
        ref = embed_files(files, bb, k, batch_size=32, cache_dir=cache, runtime="keras")
        # one key for both runtimes: what Keras stored is what the TFLite run reads back
        again = embed_files(files, bb, k, batch_size=32, cache_dir=cache, runtime="lite")
    assert small.computed == len(files) and np.array_equal(small.vectors, large.vectors)
    assert np.array_equal(small.bn_stats, large.bn_stats)
    assert rt.min_cosine(small.vectors, ref.vectors) >= 0.999
    assert again.computed == 0 and np.array_equal(again.vectors, ref.vectors)
    assert small.stat_layers == ref.stat_layers


def test_the_converted_model_is_cached_and_reused(embedders, monkeypatch):
    lite, _, cache = embedders
    models = sorted((Path(cache) / "models").iterdir())
    assert [p.suffix for p in models] == [".json", ".tflite"]
    manifest = json.loads(models[0].read_text())
    assert manifest["key"] == models[1].stem and min(manifest["min_cosine_vs_keras"].values()) >= 0.999
    stamp = models[1].stat().st_mtime_ns

    def no_conversion(*args, **kwargs):
        raise AssertionError("converted again instead of reading the cache")

    monkeypatch.setattr(rt, "convert", no_conversion)
    loaded = {k: v for k, v in backbones._LOADED.items() if k != (get_backbone().cache_key, "lite")}
    monkeypatch.setattr(backbones, "_LOADED", loaded)  # as a fresh process would start
    with warnings.catch_warnings():
        warnings.simplefilter("error", rt.EmbedRuntimeWarning)
        reloaded = get_backbone().embedder(cache, "lite")
    assert reloaded is not lite and reloaded.runtime == "lite"
    assert models[1].stat().st_mtime_ns == stamp


def test_only_a_model_this_code_wrote_at_its_key_is_loaded(tmp_path):
    key = "net-g1-tf0-keras0-wabc"
    path = rt.model_path(tmp_path, key)
    data = b"TFL3 pretend model bytes"
    assert rt.save_model(path, key, data, {"embedding": 1.0})
    assert rt.load_trusted(path, key) == data
    assert rt.load_trusted(path, key + "x") is None  # another key (weights, TF version)
    path.write_bytes(data[:-1] + b"!")  # same size, other bytes
    assert rt.load_trusted(path, key) is None
    assert rt.save_model(path, key, data, {})
    os.chmod(path, 0o666)  # anyone could have replaced it
    assert rt.load_trusted(path, key) is None
    other = tmp_path / "elsewhere.tflite"
    other.write_bytes(data)  # a model file without our manifest
    assert rt.load_trusted(other, key) is None
    assert rt.load_trusted(tmp_path / "missing.tflite", key) is None


def test_a_failed_conversion_falls_back_to_keras_with_one_warning(tmp_path, embedders, monkeypatch):
    _, keras, _ = embedders
    bb = get_backbone()
    cache = str(tmp_path / "c")
    monkeypatch.setattr(backbones, "_LOADED", {(bb.cache_key, "keras"): keras})  # no second Keras build

    def broken(model):
        raise RuntimeError("converter exploded\non two lines")

    monkeypatch.setattr(rt, "convert", broken)
    with pytest.warns(rt.EmbedRuntimeWarning) as caught:
        emb = bb.embedder(cache, "lite")
    assert emb is keras and len(caught) == 1
    assert "converter exploded on two lines" in str(caught[0].message) and "\n" not in str(caught[0].message)
    with warnings.catch_warnings():
        warnings.simplefilter("error", rt.EmbedRuntimeWarning)
        assert bb.embedder(cache, "lite") is keras  # warned once per process
    assert not (Path(cache) / "models").exists()


def test_an_interpreter_failing_mid_run_falls_back_to_keras(photos, embedders):
    lite, keras, _ = embedders
    _, x = photos

    class Broken:
        def predict_on_batch(self, batch):
            raise RuntimeError("invoke failed")

    emb = dataclasses.replace(lite, model=Broken(), fallback=lambda: keras)
    with pytest.warns(rt.EmbedRuntimeWarning, match="invoke failed"):
        out = emb.run(x[:2])
    assert emb.runtime == "keras"
    assert np.array_equal(out["embedding"], keras.run(x[:2])["embedding"])


def test_runtime_is_chosen_by_keyword_then_environment(embedders, monkeypatch):
    lite, keras, cache = embedders
    bb = get_backbone()
    monkeypatch.setenv(rt.RUNTIME_ENV, "keras")
    assert bb.embedder(cache) is keras
    assert bb.embedder(cache, "lite") is lite
    monkeypatch.setenv(rt.RUNTIME_ENV, "LITE")
    assert bb.embedder(cache) is lite
    monkeypatch.setenv(rt.RUNTIME_ENV, "onnx")
    with pytest.raises(BackboneError, match="AUDITOR_EMBED_RUNTIME='onnx'"):
        bb.embedder(cache)
    monkeypatch.delenv(rt.RUNTIME_ENV)
    assert bb.embedder(cache) is lite
    assert get_backbone("MobileNetV3Small", weights="none").lite_loader is None  # others: Keras only


def test_importing_the_runtime_imports_no_tensorflow():
    code = "import sys, auditor.embed.backbones.lite_runtime\nassert 'tensorflow' not in sys.modules"
    subprocess.run([sys.executable, "-c", code], check=True)


def test_cli_shows_the_fallback_as_one_warning_line(tmp_path, embedders, monkeypatch):
    """`audit scan` whose TFLite conversion fails: one `warning:` line on stderr (no Python
    warning location), the scan done with Keras, exit 0."""
    from typer.testing import CliRunner

    from auditor.cli.app import app

    _, keras, _ = embedders
    bb = get_backbone()
    monkeypatch.setattr(backbones, "_LOADED", {(bb.cache_key, "keras"): keras})

    def broken(model):
        raise RuntimeError("converter exploded")

    monkeypatch.setattr(rt, "convert", broken)
    data = tmp_path / "d"
    for i, name in enumerate(synth.COLOR_PHOTOS[:4]):
        (data / ("a" if i % 2 else "b")).mkdir(parents=True, exist_ok=True)
        (data / ("a" if i % 2 else "b") / f"{name}.jpg").write_bytes(synth.jpeg_bytes(synth.load_photo(name), 90))
    res = CliRunner().invoke(app, ["scan", str(data), "--out", str(tmp_path / "o"), "--cache-dir", str(tmp_path / "c"),
                                   "--no-projection", "-q"])  # fmt: skip
    assert res.exit_code in (0, 1), res.output
    lines = [ln for ln in res.stderr.splitlines() if "runtime" in ln]
    assert lines == ["warning: the fast embedding runtime (TFLite) failed, embedding with Keras instead "
                     "(RuntimeError: converter exploded)"], res.stderr  # fmt: skip
    assert "EmbedRuntimeWarning" not in res.stderr
    assert json.loads((tmp_path / "o" / "report.json").read_text())["dataset"]["images"] == 4

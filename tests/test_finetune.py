"""audit finetune: a tiny real fine-tune end to end; BatchNorm stays frozen in phase 2."""

from __future__ import annotations

import json

import pytest

from auditor.demo import synth


def test_tiny_finetune_end_to_end_and_batchnorm_frozen(tiny, tmp_path):
    import keras

    from auditor.pipeline.finetune import FinetuneOptions, build, finetune, unfreeze_top

    opts = FinetuneOptions(epochs=1, unfreeze=2, image_size=96, batch_size=8, augment=("flip", "brightness"))
    result = finetune(tiny, tmp_path / "model", opts)
    assert result.classes == ["cat", "coffee"]
    assert set(result.history) == {"head", "fine_tune"} and len(result.history["fine_tune"]) == 1
    ev = json.loads((tmp_path / "model" / "evaluation.json").read_text())
    assert ev["val_images"] == 8 and len(ev["confusion_matrix"]) == 2 and ev["val_accuracy"] >= 0.75
    model = keras.saving.load_model(result.model_path, safe_mode=True)
    assert model.output_shape == (None, 2)

    model, backbone = build(2, opts)
    trained = unfreeze_top(backbone, 2)
    assert trained and all(n.startswith(("block14_", "block15_", "head_")) for n in trained)
    bns = [layer for layer in backbone.layers if isinstance(layer, keras.layers.BatchNormalization)]
    assert bns and not any(layer.trainable for layer in bns)  # frozen: inference mode in phase 2
    assert not backbone.get_layer("block13_project_conv").trainable
    assert backbone.get_layer("block15_project_conv").trainable


def test_cli_finetune_and_input_errors(tiny, tmp_path):
    from typer.testing import CliRunner

    from auditor.cli.app import app

    runner = CliRunner()
    out = tmp_path / "m"
    res = runner.invoke(app, ["finetune", str(tiny), "--out", str(out), "--epochs", "1", "--unfreeze", "0",
                              "--image-size", "64", "--batch-size", "8", "--no-augment"])  # fmt: skip
    assert res.exit_code == 0, res.output
    assert (out / "model.keras").exists() and "validation accuracy" in res.output
    assert list(json.loads((out / "history.json").read_text())) == ["head"]  # --unfreeze 0: head only
    flat = tmp_path / "flat"
    synth.write(flat / "a.jpg", synth.jpeg_bytes(synth.random_crops(1, 64, seed=1)[0][1], 90))
    bad = runner.invoke(app, ["finetune", str(flat), "--out", str(tmp_path / "n")])
    assert bad.exit_code == 2 and "no labeled images" in bad.output


def test_audit_run_stops_at_a_failed_gate_unless_forced(tiny, tmp_path):
    import shutil

    from typer.testing import CliRunner

    from auditor.cli.app import app

    data = tmp_path / "data"
    shutil.copytree(tiny, data)
    shutil.copy(data / "train" / "cat" / "1.jpg", data / "val" / "cat" / "leaked.jpg")  # train copy in val
    runner = CliRunner()
    args = ["run", str(data), "--out", str(tmp_path / "run"), "--epochs", "1", "--unfreeze", "1",
            "--image-size", "64", "--batch-size", "8", "--no-augment"]  # fmt: skip
    stopped = runner.invoke(app, args)
    assert stopped.exit_code == 1 and "Stopped: the gate failed" in stopped.output
    assert (tmp_path / "run" / "report.html").exists() and not (tmp_path / "run" / "model").exists()
    done = runner.invoke(app, [*args, "--force"])
    assert done.exit_code == 0, done.output
    report = json.loads((tmp_path / "run" / "report.json").read_text())
    assert report["run"] == {"gate_passed": False, "forced": True, "stopped": False, "finetune_skipped": None}
    assert report["clean"]["counts"]["drop"] >= 1  # the leaked val copy (overlapping crops are near copies too)
    manifest = (tmp_path / "run" / "clean" / "manifest.csv").read_text()
    assert ",drop,leakage: copy of an image in train,val/cat/leaked.jpg," in manifest
    assert not (tmp_path / "run" / "clean" / "val" / "cat" / "leaked.jpg").exists()
    assert set(report["finetune"]["history"]) == {"head", "fine_tune"}
    assert report["finetune"]["augmentation"] == {"layers": [], "reasons": []}  # --no-augment
    html = (tmp_path / "run" / "report.html").read_text()
    assert 'id="finetune"' in html and 'class="curve"' in html and "confusion" in html


def test_augmentations_chosen_from_the_audit():
    from auditor.pipeline.finetune import BASE_AUGMENTATIONS, augmentations_from_audit

    darker = "val images are darker than train images"
    report = {"findings": [
        {"check": "property_shift", "message": darker, "details": {"property": "brightness"}},
        {"check": "property_shift", "message": "val images are blurrier", "details": {"property": "sharpness"}},
        {"check": "dark", "message": "x", "details": {}},
    ]}  # fmt: skip
    chosen, reasons = augmentations_from_audit(report)
    assert chosen == (*BASE_AUGMENTATIONS, "brightness") and reasons == [f"brightness: {darker}"]
    assert augmentations_from_audit({"findings": []}) == (BASE_AUGMENTATIONS, [])


def test_block_names_of_common_backbones():
    from auditor.pipeline.finetune import block_of

    assert block_of("block7a_project_conv") == "block7a"
    assert block_of("block15_dw_bn") == "block15"
    assert block_of("conv5_block3_2_bn") == "conv5_block3"
    assert block_of("block_16_project") == "block_16"
    assert block_of("expanded_conv_10_add") == "expanded_conv_10"
    assert block_of("head_conv") is None and block_of("stem_bn") is None
    assert block_of("convnext_tiny_stage_3_block_2_depthwise_conv") == "stage_3_block_2"
    assert block_of("conv2d_93") is None and block_of("add_38") is None and block_of("Conv_1") is None


def test_frozen_phase_trains_on_features_and_reuses_cached_embeddings(tiny, tmp_path):
    """--no-augment: the head trains on features computed once; at the native 224 px the
    scan's cached embeddings are those features, and the saved model agrees with the head."""
    import numpy as np

    from auditor.pipeline.api import scan
    from auditor.pipeline.finetune import FinetuneOptions, _items, _load_images, finetune, head_features

    cache = tmp_path / "cache"
    scan(tiny, tmp_path / "scan", cache_dir=cache)  # embeds every image into the cache
    opts = FinetuneOptions(epochs=3, unfreeze=0, image_size=224, batch_size=8, augment=())
    result = finetune(tiny, tmp_path / "model", opts, cache_dir=cache)
    ev = result.evaluation
    assert ev["head_trained_on"].startswith("cached embeddings (40 cached, 0 computed")
    assert len(result.history["head"]) == 3 and ev["val_accuracy"] >= 0.75
    fresh = finetune(tiny, tmp_path / "fresh", opts, cache_dir=tmp_path / "empty")  # embeds now: same head
    assert fresh.evaluation["head_trained_on"].startswith("cached embeddings (0 cached, 40 computed")
    import keras as _k

    def weights(res):
        return _k.saving.load_model(res.model_path, safe_mode=True).get_layer("classifier").get_weights()[0]

    np.testing.assert_array_equal(weights(fresh), weights(result))
    small = finetune(tiny, tmp_path / "small", FinetuneOptions(epochs=2, unfreeze=0, image_size=64, batch_size=8,
                                                               augment=()), cache_dir=cache)  # fmt: skip
    assert small.evaluation["head_trained_on"] == "one forward pass of the backbone"

    import keras

    model = keras.saving.load_model(result.model_path, safe_mode=True)
    _, _, val, _, _ = _items(tiny, 0, 0.2)
    probs = model.predict(_load_images(val, 224), verbose=0)
    features = keras.Model(model.inputs, model.get_layer("dropout").input).predict(_load_images(val, 224), verbose=0)
    cached, source = head_features(model, val, lambda: None, opts, cache)
    assert source.startswith("cached") and np.allclose(cached, features, rtol=1e-2, atol=1e-2)  # float16-exact
    w, b = model.get_layer("classifier").get_weights()
    logits = features @ w + b
    head = np.exp(logits - logits.max(1, keepdims=True))
    np.testing.assert_allclose(probs, head / head.sum(1, keepdims=True), atol=1e-5)


def test_keras_applications_backbone_and_offline_weights_error(tiny, tmp_path):
    from auditor.pipeline.finetune import FinetuneError, FinetuneOptions, build, finetune, unfreeze_top

    opts = FinetuneOptions(epochs=1, unfreeze=1, image_size=64, batch_size=8, augment=(), backbone="MobileNetV2",
                           weights="none")  # fmt: skip
    result = finetune(tiny, tmp_path / "m", opts)
    assert set(result.history) == {"head", "fine_tune"}
    import keras

    _, backbone = build(2, opts)
    trained = unfreeze_top(backbone, 1)
    assert trained and all(n.startswith(("block_16_", "Conv_1")) for n in trained)
    assert any(n.startswith("block_16_") for n in trained)  # the top block itself, not only the head conv
    assert not any(layer.trainable for layer in backbone.layers if isinstance(layer, keras.layers.BatchNormalization))
    with pytest.raises(FinetuneError, match="weights file"):
        build(2, FinetuneOptions(image_size=64, backbone="MobileNetV2", weights=str(tmp_path / "missing.h5")))
    with pytest.raises(FinetuneError, match="caffe"):
        build(2, FinetuneOptions(image_size=64, backbone="ResNet50", weights="none"))
    _, inception = build(2, FinetuneOptions(image_size=96, backbone="InceptionV3", weights="none"))
    with pytest.raises(FinetuneError, match="cannot tell the blocks"):  # auto-named layers: say so, never train nothing
        unfreeze_top(inception, 2)

"""The frozen backbone: the restricted weights reader, the EfficientNet-Lite0 port, the
embedding cache, other backbones, and the checks that stand on embeddings."""

from __future__ import annotations

import io
import json
import os
import pickle
import subprocess
import sys
import urllib.error
import zipfile
from collections import OrderedDict
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from auditor.cli.app import app
from auditor.demo import synth
from auditor.embed.backbones import BackboneError, get_backbone
from auditor.embed.backbones import efficientnet_lite as lite
from auditor.embed.backbones.torch_state import ModelFileError, UnsafeModelFile, load_state_dict
from auditor.embed.features import embed_files, prepare_image
from auditor.io.decode import file_hash
from auditor.io.store import Store
from auditor.pipeline.api import scan

runner = CliRunner()


# --- the restricted reader -------------------------------------------------------------


def test_packaged_weights_load_without_torch():
    state = load_state_dict(lite.packaged_weights_path())
    assert len(state) == 296
    assert state["_conv_stem.weight"].shape == (32, 3, 3, 3)
    assert state["_fc.weight"].shape == (1000, 1280)
    assert "torch" not in sys.modules


class _Evil:
    def __reduce__(self):
        return (os.system, ("touch PWNED",))


def _legacy_file(path: Path, payload) -> Path:
    with open(path, "wb") as f:
        for header in (0x1950A86A20F9469CFC6C, 1001, {"protocol_version": 1001, "little_endian": True}):
            pickle.dump(header, f, protocol=2)
        pickle.dump(payload, f, protocol=2)
        pickle.dump([], f, protocol=2)
    return path


def test_restricted_unpickler_refuses_code(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    evil = _legacy_file(tmp_path / "evil.pth", OrderedDict(weight=_Evil()))
    with pytest.raises(UnsafeModelFile, match="posix.system|os.system"):
        load_state_dict(evil)
    # the zip layout too
    buf = io.BytesIO()
    pickle.dump({"w": _Evil()}, buf, protocol=2)
    archive = tmp_path / "evil_zip.pth"
    with zipfile.ZipFile(archive, "w") as z:
        z.writestr("archive/data.pkl", buf.getvalue())
    with pytest.raises(UnsafeModelFile):
        load_state_dict(archive)
    assert not (tmp_path / "PWNED").exists()


def test_broken_weight_files_are_clear_errors(tmp_path):
    src = lite.packaged_weights_path().read_bytes()
    cut = tmp_path / "cut.pth"
    cut.write_bytes(src[: len(src) // 2])
    with pytest.raises(ModelFileError, match="truncated"):
        load_state_dict(cut)
    junk = tmp_path / "junk.pth"
    junk.write_bytes(b"not a model at all")
    with pytest.raises(ModelFileError):
        load_state_dict(junk)
    not_a_dict = _legacy_file(tmp_path / "list.pth", [1, 2, 3])
    with pytest.raises(ModelFileError, match="state_dict"):
        load_state_dict(not_a_dict)


# --- the EfficientNet-Lite0 port ------------------------------------------------------------


def _write_photo(path: Path, name: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(synth.jpeg_bytes(synth.load_photo(name), 95))
    return path


def test_golden_imagenet_predictions(tmp_path):
    embedder = get_backbone().embedder()
    batch = np.stack([prepare_image(str(_write_photo(tmp_path / f"{n}.jpg", n)), 224) for n in ("chelsea", "coffee")])
    out = embedder.run(batch.astype(np.float32))
    top = out["probs"].argmax(axis=1)
    assert top[0] in (281, 282, 285)  # tabby, tiger cat, Egyptian cat
    assert top[1] == 967  # espresso
    assert out["embedding"].shape == (2, 1280)
    assert np.allclose(out["probs"].sum(axis=1), 1.0, atol=1e-4)


def test_converted_weights_are_cached_by_source_hash(tmp_path):
    cache = tmp_path / "c"
    lite.load_model(cache_dir=cache)
    files = list((cache / "weights").glob("efficientnet-lite0-*.weights.h5"))
    assert len(files) == 1
    reloaded = lite.load_model(cache_dir=cache)
    ref = lite.reference_statistics()[1]["head_bn"]
    assert np.allclose(reloaded.get_layer("head_bn").get_weights()[2], ref[0])


# --- the embedding cache --------------------------------------------------------------------


def _tile_files(root: Path, tiles, n: int) -> dict[str, str]:
    files = {}
    for i, (_, px) in enumerate(tiles[:n]):
        p = root / f"t{i:03d}.jpg"
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_bytes(synth.jpeg_bytes(px, 90))
        files[file_hash(p.read_bytes())] = str(p)
    return files


def test_cached_and_fresh_embeddings_are_equal(tmp_path, tiles):
    files = _tile_files(tmp_path / "d", tiles, 40)
    bb = get_backbone()
    with Store(tmp_path / "s.sqlite3") as store:
        first = embed_files(files, bb, store, batch_size=16)
        again = embed_files(files, bb, store, batch_size=16)
    with Store(None) as fresh_store:
        fresh = embed_files(files, bb, fresh_store, batch_size=16)
    assert first.computed == 40 and again.computed == 0 and again.cached == 40
    assert np.array_equal(first.vectors, again.vectors)
    assert np.array_equal(first.vectors, fresh.vectors)
    assert np.array_equal(first.probs, again.probs)
    assert first.bn_stats.shape == (40, 2 * sum(c for _, c in first.stat_layers))
    # the per-layer reference is the same whether the model was loaded or not
    assert [n for n, _ in first.stat_layers] == [n for n, _ in again.stat_layers]
    assert np.allclose(first.bn_reference["stem_bn"][1], again.bn_reference["stem_bn"][1])


def test_unchanged_rescan_computes_nothing_and_imports_no_tensorflow(tmp_path, tiles):
    _tile_files(tmp_path / "ds", tiles, 12)
    cache = tmp_path / "cache"
    env = {**os.environ, "AUDITOR_CACHE_DIR": str(cache)}
    first = subprocess.run([sys.executable, "-m", "auditor.cli", "embed", str(tmp_path / "ds"), "--out",
                            str(tmp_path / "e.npz")], env=env, capture_output=True, text=True)  # fmt: skip
    assert first.returncode == 0, first.stderr
    code = (
        "import sys\n"
        "from auditor.pipeline.api import embed\n"
        f"r = embed({str(tmp_path / 'ds')!r})\n"
        "assert r.embeddings.computed == 0 and r.embeddings.cached == 12, (r.embeddings.computed,)\n"
        "assert 'tensorflow' not in sys.modules\n"
    )
    subprocess.run([sys.executable, "-c", code], env=env, check=True)


def test_embed_command_writes_npz_and_parquet(tmp_path, tiles):
    _tile_files(tmp_path / "ds" / "cats", tiles, 6)
    (tmp_path / "ds" / "cats" / "broken.jpg").write_bytes(b"\xff\xd8\xff\xe0 truncated")
    res = runner.invoke(app, ["embed", str(tmp_path / "ds"), "--out", str(tmp_path / "e.npz")])
    assert res.exit_code == 0, res.output
    with np.load(tmp_path / "e.npz") as z:  # allow_pickle is False by default: plain arrays
        assert z["vectors"].shape == (6, 1280) and z["vectors"].dtype == np.float16
        assert sorted(z["paths"]) == [f"cats/t{i:03d}.jpg" for i in range(6)]
        assert set(z["labels"]) == {"cats"}
        assert json.loads(str(z["backbone"]))["id"] == "efficientnet-lite0-imagenet"
        assert z["probs"].shape == (6, 1000)
    assert "1 unreadable skipped" in res.output
    res = runner.invoke(app, ["embed", str(tmp_path / "ds"), "--out", str(tmp_path / "e.parquet")])
    assert res.exit_code == 0, res.output
    import pandas as pd

    frame = pd.read_parquet(tmp_path / "e.parquet")
    assert len(frame) == 6 and len(frame["embedding"].iloc[0]) == 1280
    bad = runner.invoke(app, ["embed", str(tmp_path / "ds"), "--out", str(tmp_path / "e.csv")])
    assert bad.exit_code == 2


# --- other backbones -------------------------------------------------------------------------


def test_user_keras_model_with_layer(tmp_path, tiles):
    import keras

    keras.utils.set_random_seed(0)
    inp = keras.Input((64, 64, 3))
    x = keras.layers.Rescaling(1 / 255.0)(inp)
    x = keras.layers.Conv2D(8, 3, activation="relu", name="features")(x)
    x = keras.layers.GlobalAveragePooling2D(name="pooled")(x)
    out = keras.layers.Dense(3, activation="softmax", name="classifier")(x)
    model_path = tmp_path / "mine.keras"
    keras.Model(inp, out).save(model_path)
    _tile_files(tmp_path / "ds", tiles, 5)
    res = runner.invoke(app, ["embed", str(tmp_path / "ds"), "--out", str(tmp_path / "e.npz"),
                              "--backbone", str(model_path), "--layer", "features"])  # fmt: skip
    assert res.exit_code == 0, res.output
    with np.load(tmp_path / "e.npz") as z:
        assert z["vectors"].shape == (5, 8)  # the conv map, globally pooled
        assert json.loads(str(z["backbone"]))["input"] == 64
    # default layer: the input of the last layer (the pooled features)
    assert runner.invoke(app, ["embed", str(tmp_path / "ds"), "--out", str(tmp_path / "f.npz"),
                               "--backbone", str(model_path)]).exit_code == 0  # fmt: skip
    res = runner.invoke(app, ["embed", str(tmp_path / "ds"), "--out", str(tmp_path / "g.npz"),
                              "--backbone", str(model_path), "--layer", "nope"])  # fmt: skip
    assert res.exit_code == 2 and "no layer 'nope'" in res.output and "features" in res.output


def test_offline_imagenet_weights_fail_with_a_clear_message(tmp_path, monkeypatch):
    import keras.src.utils.file_utils as file_utils

    def offline(*args, **kwargs):
        raise urllib.error.URLError("network is unreachable")

    monkeypatch.setattr(file_utils, "urlretrieve", offline)
    monkeypatch.setenv("KERAS_HOME", str(tmp_path / "keras"))
    bb = get_backbone("MobileNetV3Small", weights="imagenet")
    with pytest.raises(BackboneError, match="--weights FILE"):
        bb.embedder()
    with pytest.raises(BackboneError, match="unknown backbone"):
        get_backbone("NoSuchNet")
    with pytest.raises(BackboneError, match="only .keras"):
        get_backbone(str(_legacy_file(tmp_path / "x.pth", {})))


def test_keras_applications_backbone_with_local_weights(tmp_path, tiles):
    import keras

    keras.utils.set_random_seed(1)
    ref = keras.applications.MobileNetV3Small(weights=None, include_top=False, pooling="avg",
                                              input_shape=(224, 224, 3))  # fmt: skip
    weights = tmp_path / "mnv3.weights.h5"
    ref.save_weights(weights)
    files = _tile_files(tmp_path / "ds", tiles, 3)
    with Store(None) as store:
        emb = embed_files(files, get_backbone("MobileNetV3Small", weights=str(weights)), store)
    assert emb.vectors.shape[0] == 3 and emb.probs is None
    assert emb.backbone["id"].startswith("keras-MobileNetV3Small-file-")


# --- checks on embeddings ----------------------------------------------------------------------


def _distinct_photos(size: int = 256) -> list[tuple[str, np.ndarray]]:
    """Non-overlapping 256-px tiles of the color photos (21 images)."""
    return list(synth.photo_tiles(size))


def test_embedding_finds_flipped_cropped_and_jittered_copies(tmp_path):
    photos = _distinct_photos()
    root = tmp_path / "ds"
    for i, (_, px) in enumerate(photos):
        split = "val" if i >= 17 else "train"  # the last photos form a (distinct) val split
        (root / split / "all").mkdir(parents=True, exist_ok=True)
        (root / split / "all" / f"p{i:02d}.jpg").write_bytes(synth.jpeg_bytes(px, 92))
    copies = {
        "train/all/flipped.jpg": ("train/all/p00.jpg", synth.hflip(photos[0][1])),
        "train/all/cropped.jpg": ("train/all/p05.jpg", synth.crop_area(photos[5][1], 0.8)),
        "train/all/jittered.jpg": ("train/all/p10.jpg", synth.color_jitter(photos[10][1])),
        "val/all/flipped_leak.jpg": ("train/all/p15.jpg", synth.hflip(photos[15][1])),
    }
    for rel, (_, px) in copies.items():
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_bytes(synth.jpeg_bytes(px, 92))
    with_emb = scan(root, write=False)
    without = scan(root, write=False, embed=False)

    def pairs(result, check):
        return [set(f.paths) for f in result.findings if f.check == check]

    for rel, (orig, _) in copies.items():
        check = "leakage" if rel.startswith("val/") else "near_duplicate"
        assert any({rel, orig} <= g for g in pairs(with_emb, check)), (rel, pairs(with_emb, check))
        if "cropped" in rel:  # a crop needs the backbone; a mirror matches the mirrored pHash
            assert not any({rel, orig} <= g for g in pairs(without, check)), f"hashes alone should miss {rel}"
        else:  # a color jitter keeps the luminance structure pHash sees
            assert any({rel, orig} <= g for g in pairs(without, check)), f"hashes should find {rel}"
    # nothing else: distinct photos are not called duplicates
    flagged = {p for g in pairs(with_emb, "near_duplicate") for p in g}
    assert len(pairs(with_emb, "leakage")) == 1
    assert flagged == {p for rel, (orig, _) in copies.items() if rel.startswith("train/") for p in (rel, orig)}
    assert with_emb.report["backbone"]["id"] == "efficientnet-lite0-imagenet"
    assert without.report["backbone"] is None


def test_outlier_is_the_image_from_another_domain(tmp_path, tiles):
    root = tmp_path / "ds"
    root.mkdir()
    for i, (_, px) in enumerate(tiles[:80]):
        (root / f"photo_{i:03d}.jpg").write_bytes(synth.jpeg_bytes(px, 90))
    (root / "digit.png").write_bytes(synth.png_bytes(synth.digit(3, 128)))
    result = scan(root, write=False)
    outliers = [f for f in result.findings if f.check == "outlier"]
    assert outliers and outliers[0].paths == ["digit.png"], [(f.paths, f.score) for f in outliers]
    assert len(outliers) <= 4  # at most 5% of the photos


def test_scan_with_embeddings_is_deterministic_and_cached(tmp_path, tiles):
    root = tmp_path / "ds"
    for i, (name, px) in enumerate(tiles[:30]):
        split = "val" if i % 5 == 0 else "train"
        (root / split / name).mkdir(parents=True, exist_ok=True)
        (root / split / name / f"{i:03d}.jpg").write_bytes(synth.jpeg_bytes(px, 90))
    first = scan(root, tmp_path / "a")
    second = scan(root, tmp_path / "b")
    assert first.embeddings.computed == 30 and second.embeddings.computed == 0
    assert (tmp_path / "a" / "report.json").read_bytes() == (tmp_path / "b" / "report.json").read_bytes()
    assert first.table["embedded"].all()
    assert "efficientnet-lite0-imagenet" in (tmp_path / "a" / "report.html").read_text()


def test_adjacent_texture_tiles_are_not_embedding_duplicates(tmp_path):
    """Neighbouring tiles of one brick wall or gravel bed look alike to the backbone (as close
    as a colour-jittered copy once the rest of the dataset is diverse photos) but are
    different pictures: an embedding match needs its pixels to agree too (pHash, mirror
    allowed), so only the real mirrored copy is a near duplicate."""
    from skimage import data

    root = tmp_path / "mix"
    for name in ("brick", "gravel", "grass"):
        img = data.__getattribute__(name)()
        for y in range(0, 512, 128):
            for x in range(0, 512, 128):
                tile = np.repeat(img[y : y + 128, x : x + 128, None], 3, axis=2)
                synth.write(root / name / f"{name}_{y}_{x}.jpg", synth.jpeg_bytes(tile, 92))
    photos = list(synth.photo_tiles(128))[:60]
    for i, (_, px) in enumerate(photos):
        synth.write(root / "photo" / f"p{i:02d}.jpg", synth.jpeg_bytes(px, 92))
    synth.write(root / "photo" / "mirrored.jpg", synth.jpeg_bytes(synth.hflip(photos[3][1]), 92))
    result = scan(root, write=False, cache_dir=tmp_path / "c")
    groups = [set(f.paths) for f in result.findings if f.check == "near_duplicate"]
    assert groups == [{"photo/p03.jpg", "photo/mirrored.jpg"}], groups

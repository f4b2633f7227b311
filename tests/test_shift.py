"""Distribution shift: the statistics, their calibration and power on real images, the
explanations, the pretraining gap, and the scan/CLI integration (``--source``, splits)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from scipy.linalg import sqrtm
from sklearn.metrics import roc_auc_score
from typer.testing import CliRunner

from auditor.analysis import drift
from auditor.analysis.explain import compare_labels, compare_properties
from auditor.analysis.pretraining import pretraining_gap
from auditor.analysis.shift import gap_level, verdict
from auditor.cli.app import app
from auditor.demo import synth
from auditor.pipeline import api
from auditor.policy.rules import load_rules

N = 200  # images per side in the calibration and power tests (the n)
SEEDS = 20
SHIFT = load_rules().checks["domain_shift"].params
GAP = load_rules().checks["pretraining_gap"].params


# -- the statistics on synthetic data -------------------------------------------------------


def test_fid_matches_scipy_sqrtm_on_both_paths():
    rng = np.random.default_rng(0)
    for m, n, d in ((40, 50, 64), (300, 400, 12)):  # fewer rows than dims, and more
        x, y = rng.normal(size=(m, d)), rng.normal(size=(n, d)) * 1.3 + 0.2
        cx, cy = np.cov(x, rowvar=False), np.cov(y, rowvar=False)
        ref = ((x.mean(0) - y.mean(0)) ** 2).sum() + np.trace(cx) + np.trace(cy) - 2 * np.trace(sqrtm(cx @ cy)).real
        assert drift.fid(x, y) == pytest.approx(ref, rel=1e-6)
    assert drift.fid(x, x) == pytest.approx(0.0, abs=1e-8)


def test_auc_and_delong_interval():
    rng = np.random.default_rng(1)
    scores = np.r_[rng.normal(0, 1, 300), rng.normal(1, 1, 300)]
    is_t = np.r_[np.zeros(300, bool), np.ones(300, bool)]
    assert drift.auc_score(scores, is_t) == pytest.approx(roc_auc_score(is_t, scores))
    # DeLong's SD agrees with the bootstrap SD of the AUC
    boot = []
    for _ in range(300):
        i = rng.integers(0, 300, 300)
        j = 300 + rng.integers(0, 300, 300)
        k = np.r_[i, j]
        boot.append(drift.auc_score(scores[k], is_t[k]))
    assert np.sqrt(drift.delong_variance(scores, is_t)) == pytest.approx(np.std(boot), rel=0.2)


def test_mmd_and_c2st_on_gaussians():
    rng = np.random.default_rng(2)
    x, y = rng.normal(size=(150, 16)), rng.normal(size=(150, 16))
    same = drift.mmd_test(x, y, 200)
    assert same.p_value > 0.05 and abs(same.mmd2) < 0.01
    y[:, 0] += 1.0
    moved = drift.mmd_test(x, y, 200)
    assert moved.p_value < 0.01 and moved.mmd2 > 0.01
    c = drift.c2st(x, y)
    assert c.auc > 0.65 and c.p_value < 0.01 and c.auc_ci[0] < c.auc < c.auc_ci[1]
    kid_same, _ = drift.kid(x, rng.normal(size=(150, 16)), subsets=5, subset_size=100)
    kid_moved, _ = drift.kid(x, y, subsets=5, subset_size=100)
    assert kid_moved > 5 * abs(kid_same)


def test_verdict_needs_significance_and_size():
    p = dict(SHIFT)
    assert verdict({"p_value": 0.001, "magnitude": 0.5}, p) == "shift"
    assert verdict({"p_value": 0.001, "magnitude": 0.05}, p) == "minor"  # significant but tiny (big samples)
    assert verdict({"p_value": 0.3, "magnitude": 0.5}, p) == "none"
    assert verdict(None, p) == "skipped"


def test_label_comparison():
    ref = pd.Series(["cat"] * 50 + ["dog"] * 50)
    tgt = pd.Series(["cat"] * 90 + ["dog"] * 5 + ["fox"] * 5)
    got = compare_labels(ref, tgt)
    assert got["only_target"] == ["fox"] and got["only_reference"] == []
    assert got["p_value"] < 1e-6 and got["tv_distance"] == pytest.approx(0.45)
    assert compare_labels(pd.Series([None, None]), tgt) is None


# -- real images -----------------------------------------------------------------------------


def _scan(folder: Path, embed: bool = True) -> tuple[pd.DataFrame, np.ndarray, object]:
    r = api.scan(folder, write=False, embed=embed, projection=False)
    if not embed:
        return r.table, None, None
    vectors, mask = r.embeddings.rows(r.table["content_hash"])
    assert mask.all()
    return r.table, vectors, r.embeddings


def _write(folder: Path, images, fmt: str = "jpg") -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    for i, (name, rgb) in enumerate(images):
        data = synth.jpeg_bytes(rgb, 90) if fmt == "jpg" else synth.png_bytes(rgb)
        synth.write(folder / f"{i:04d}_{name}.{fmt}", data)
    return folder


@pytest.fixture(scope="module")
def sets(tmp_path_factory) -> dict[str, tuple[pd.DataFrame, np.ndarray, object]]:
    """Real photo crops (a pool of 2N and, from other crops, N + 100 each blurred, noised and
    grayscaled) and 8x8 digits upscaled, scanned and embedded once."""
    root = tmp_path_factory.mktemp("shift")
    pool = synth.random_crops(2 * N, 128, seed=11)
    other = synth.random_crops(N + 100, 128, seed=12)
    folders = {
        "pool": _write(root / "pool", pool),
        "blur": _write(root / "blur", [(n, synth.blur(a, 2.0)) for n, a in other]),
        "noise": _write(root / "noise", [(n, synth.add_noise(a, 20, seed=i)) for i, (n, a) in enumerate(other)]),
        "gray": _write(root / "gray", [(n, synth.to_grayscale_rgb(a)) for n, a in other]),
        "digits": _write(root / "digits", [("digit", synth.digit(i, 128)) for i in range(N + 100)], "png"),
    }
    return {k: _scan(v) for k, v in folders.items()}


def _two_sample(x: np.ndarray, y: np.ndarray, seed: int) -> dict:
    """The decision's inputs exactly as the scan computes them (fewer permutations)."""
    got = drift.two_sample(x, y, permutations=200, seed=seed)
    return {"p_value": got.p_value, "magnitude": got.magnitude, "mmd2": got.mmd.mmd2}


def test_calibration_random_halves_rarely_alarm(sets):
    _, pool, _ = sets["pool"]
    alarms, significant = 0, 0
    for seed in range(SEEDS):
        perm = np.random.default_rng(seed).permutation(len(pool))
        got = _two_sample(pool[perm[:N]], pool[perm[N:]], seed)
        alarms += verdict(got, SHIFT) == "shift"
        significant += got["p_value"] < SHIFT["alpha"]
    assert alarms / SEEDS <= 0.05
    assert significant / SEEDS <= 0.10  # the combined test alone stays near its nominal 5%


@pytest.mark.parametrize("variant", ["blur", "noise", "gray", "digits"])
def test_power_real_domain_differences_are_detected(sets, variant):
    _, pool, _ = sets["pool"]
    _, other, _ = sets[variant]
    detected = 0
    for seed in range(SEEDS):
        rng = np.random.default_rng(100 + seed)
        x = pool[rng.choice(len(pool), N, replace=False)]
        y = other[rng.choice(len(other), N, replace=False)]
        detected += verdict(_two_sample(x, y, seed), SHIFT) == "shift"
    assert detected / SEEDS >= 0.95


def test_shift_measure_rises_with_the_share_of_another_domain(sets):
    _, pool, _ = sets["pool"]
    _, digits, _ = sets["digits"]
    shares = (0.0, 0.1, 0.25, 0.5, 1.0)
    mags, mmds = [], []
    for share in shares:
        got = []
        for seed in range(3):
            got.append(_two_sample(*synth.mixed_samples(pool, digits, share, N, seed), seed))
        mags.append(np.mean([g["magnitude"] for g in got]))
        mmds.append(np.mean([g["mmd2"] for g in got]))
    assert all(b > a for a, b in zip(mmds, mmds[1:], strict=False)), mmds
    assert all(b >= a for a, b in zip(mags, mags[1:], strict=False)), mags
    assert mags[0] < 0.15 and mags[-1] > 0.95


@pytest.fixture(scope="module")
def one_change(tmp_path_factory) -> dict[str, pd.DataFrame]:
    """Measured (not embedded) tables: photo crops, and other crops with one property changed."""
    root = tmp_path_factory.mktemp("props")
    base = synth.random_crops(120, 128, seed=21)
    other = synth.random_crops(120, 128, seed=22)
    variants = {
        "base": (base, "jpg"),
        "same": (other, "jpg"),
        "blur": ([(n, synth.blur(a, 2.0)) for n, a in other], "jpg"),
        "noise": ([(n, synth.add_noise(a, 20, seed=i)) for i, (n, a) in enumerate(other)], "jpg"),
        "gray": ([(n, synth.to_grayscale_rgb(a)) for n, a in other], "jpg"),
        "dark": ([(n, synth.darken(a, 0.6)) for n, a in other], "jpg"),
        "small": ([(n, synth.downscale(a, 2)) for n, a in other], "jpg"),
        "png": (other, "png"),
    }
    return {k: _scan(_write(root / k, imgs, fmt), embed=False)[0] for k, (imgs, fmt) in variants.items()}


@pytest.mark.parametrize(
    ("variant", "expected"),
    [("blur", {"sharpness"}), ("noise", {"noise"}), ("gray", {"colorfulness"}), ("dark", {"brightness"}),
     ("small", {"resolution"}), ("png", {"format"})],
)  # fmt: skip
def test_explanation_names_the_one_changed_property(one_change, variant, expected):
    ranked = compare_properties(one_change["base"], one_change[variant], "source", "target")
    assert ranked[0]["property"] in expected, [(p["property"], round(p["statistic"], 2)) for p in ranked[:3]]
    assert ranked[0]["p_value"] < 1e-6
    if variant == "small":
        assert "2.0x smaller" in ranked[0]["text"] and ranked[0]["acquisition"]


def test_no_property_stands_out_between_samples_of_one_distribution(one_change):
    ranked = compare_properties(one_change["base"], one_change["same"])
    assert all(p["statistic"] < 0.3 for p in ranked), [(p["property"], p["statistic"]) for p in ranked]


def test_pretraining_gap_bands_photos_near_digits_and_noise_far(sets, tmp_path):
    def level(emb):
        gap = pretraining_gap(emb.bn_stats, emb.stat_layers, emb.bn_reference, emb.probs)
        return gap, gap_level(gap, GAP)

    photos, photo_level = level(sets["pool"][2])
    digits, digit_level = level(sets["digits"][2])
    rng = np.random.default_rng(0)
    noise = [("noise", rng.integers(0, 256, (128, 128, 3), np.uint8)) for _ in range(40)]
    noise_dir = _write(tmp_path / "noise", noise, "png")
    noise, noise_level = level(_scan(noise_dir)[2])
    assert photo_level == "near" and digit_level == "far" and noise_level == "far"
    assert photos["feature_gap"] < GAP["moderate_feature_gap"] < GAP["far_feature_gap"] < digits["feature_gap"]
    assert noise["feature_gap"] > digits["feature_gap"]
    assert photos["head_confidence"] > 3 * digits["head_confidence"]
    assert set(photos["groups"]) == {"early", "middle", "late"}


# -- through the scan and the CLI ------------------------------------------------------------


def test_cli_source_reports_domain_shift_and_is_repeatable(tmp_path):
    src = _write(tmp_path / "src", synth.random_crops(60, 128, seed=31))
    tgt = _write(tmp_path / "tgt", [(n, synth.blur(a, 2.5)) for n, a in synth.random_crops(60, 128, seed=32)])
    runner = CliRunner()
    reports = []
    for run in range(2):
        out = tmp_path / f"out{run}"
        res = runner.invoke(app, ["scan", str(tgt), "--source", str(src), "--out", str(out)])
        assert res.exit_code == 0, res.output
        reports.append(json.loads((out / "report.json").read_text()))
    rep = reports[0]
    (entry,) = rep["shift"]
    assert (entry["reference"], entry["target"], entry["verdict"]) == ("source", "dataset", "shift")
    assert entry["properties"][0]["property"] == "sharpness"
    assert "blurrier" in entry["explanations"][0]
    assert rep["source"]["images"] == 60 and rep["projection"]["points"] == 120
    proj = pd.read_parquet(tmp_path / "out0" / "projection.parquet")
    assert set(proj["set"]) == {"source", "dataset"} and np.isfinite(proj[["x", "y"]].to_numpy()).all()
    assert [f["check"] for f in rep["findings"] if f["check"] == "domain_shift"] == ["domain_shift"]
    assert "shift source -> dataset" in res.output
    assert reports[0]["shift"] == reports[1]["shift"]  # seeded: the same input gives the same numbers


def test_split_shift_explains_itself_and_runs_without_embeddings(tmp_path):
    crops = synth.random_crops(160, 128, seed=41)
    for i, (_name, rgb) in enumerate(crops):
        split = "train" if i < 100 else "val"
        label = "a" if i % 2 else "b"
        if split == "val":
            rgb = synth.add_noise(rgb, 25, seed=i)
            label = "a" if i % 5 else "c"  # class c only in val, b missing from val
        synth.write(tmp_path / "ds" / split / label / f"{i:04d}.jpg", synth.jpeg_bytes(rgb, 90))
    r = api.scan(tmp_path / "ds", write=False, projection=False)
    (entry,) = r.report["shift"]
    assert (entry["reference"], entry["target"], entry["verdict"]) == ("train", "val", "shift")
    checks = {f.check for f in r.findings}
    assert {"split_shift", "property_shift", "unseen_class"} <= checks
    top = next(f for f in r.findings if f.check == "property_shift")
    assert top.details["property"] == "noise"
    # the one-sided classes are in the comparison (and are unseen_class findings, not label_shift too)
    assert entry["labels"]["only_target"] == ["c"] and entry["labels"]["only_reference"] == ["b"]
    assert "label_shift" not in checks
    assert r.report["pretraining_gap"]["level"] == "near"

    bare = api.scan(tmp_path / "ds", write=False, embed=False)
    (entry,) = bare.report["shift"]
    assert entry["verdict"] == "skipped" and "no-embed" in entry["skipped"]
    assert "property_shift" in {f.check for f in bare.findings}
    assert bare.report["pretraining_gap"] is None


def test_source_manifest_class_conditional_shift_and_missing_source_is_exit_2(tmp_path):
    """--source may be a CSV manifest; with labels on both sides the class that moved is named."""
    src, tgt = tmp_path / "src", tmp_path / "tgt"
    rows = ["path,label"]
    for i, (_n, rgb) in enumerate(synth.random_crops(60, 128, seed=51)):
        label = "a" if i % 2 else "b"
        synth.write(src / "imgs" / f"{i:03d}.jpg", synth.jpeg_bytes(rgb, 90))
        rows.append(f"imgs/{i:03d}.jpg,{label}")
    (src / "labels.csv").write_text("\n".join(rows) + "\n")
    for i, (_n, rgb) in enumerate(synth.random_crops(60, 128, seed=52)):
        label = "a" if i % 2 else "b"
        if label == "b":
            rgb = synth.blur(rgb, 3.0)  # only class b moved
        synth.write(tgt / label / f"{i:03d}.jpg", synth.jpeg_bytes(rgb, 90))
    r = api.scan(tgt, source=src / "labels.csv", write=False, projection=False)
    (entry,) = r.report["shift"]
    assert r.report["source"]["layout"] == "manifest" and r.report["source"]["images"] == 60
    classes = entry["classes"]
    assert [c["class"] for c in classes] == ["b", "a"] and classes[0]["p_value"] < 0.01
    assert classes[0]["mmd2"] > 3 * max(classes[1]["mmd2"], 1e-4)
    assert any("classes that moved most: b" in e for e in entry["explanations"])

    res = CliRunner().invoke(app, ["scan", str(tgt), "--source", str(tmp_path / "nowhere"), "--no-embed"])
    assert res.exit_code == 2 and "nowhere" in res.output


def test_label_shift_between_source_and_dataset(tmp_path):
    crops = synth.random_crops(80, 96, seed=61)
    for i, (_n, rgb) in enumerate(crops[:40]):
        synth.write(tmp_path / "src" / ("a" if i % 2 else "b") / f"{i}.jpg", synth.jpeg_bytes(rgb, 90))
    for i, (_n, rgb) in enumerate(crops[40:]):
        label = "a" if i % 10 else ("b" if i % 20 else "c")  # 90% a, b rare, c new
        synth.write(tmp_path / "tgt" / label / f"{i}.jpg", synth.jpeg_bytes(rgb, 90))
    r = api.scan(tmp_path / "tgt", source=tmp_path / "src", write=False, embed=False)
    (ls,) = [f for f in r.findings if f.check == "label_shift"]
    assert ls.details["only_target"] == ["c"] and ls.score == pytest.approx(0.45)
    assert "class proportions differ" in ls.message and "only in dataset: c" in ls.message

"""The diagnosis (issue 16): ranked causes of low validation accuracy, each quantified, with
its evidence and its fix; nothing promoted on clean data."""

from __future__ import annotations

import shutil

import numpy as np
import pandas as pd
import pytest
from PIL import Image, ImageFilter

from auditor.policy.diagnosis import CAUSES, NO_DATA_CAUSE, diagnose, wilson
from auditor.policy.rules import RulesError, load_rules

PARAMS = load_rules().diagnosis


def _table(per_class: dict[str, tuple[int, int]]) -> pd.DataFrame:
    rows = []
    for label, (n_train, n_val) in per_class.items():
        rows += [
            {"path": f"train/{label}/{i}.png", "split": "train", "label": label, "ok": True} for i in range(n_train)
        ]
        rows += [{"path": f"val/{label}/{i}.png", "split": "val", "label": label, "ok": True} for i in range(n_val)]
    return pd.DataFrame(rows)


def _report(findings=(), shift=(), gap=None, skipped=None) -> dict:
    checks = {c: {"enabled": True, "skipped": None} for c in ("leakage", "label_issue", "pretraining_gap")}
    for name, why in (skipped or {}).items():
        checks[name] = {"enabled": True, "skipped": why}
    return {"findings": list(findings), "shift": list(shift), "pretraining_gap": gap, "checks": checks}


def _leak(train: str, val: str) -> dict:
    members = [{"path": train, "split": "train"}, {"path": val, "split": "val"}]
    return {"check": "leakage", "paths": [train, val], "score": 1.0, "details": {"members": members}}


def _issue(path: str, split: str) -> dict:
    return {"check": "label_issue", "paths": [path], "score": 0.9, "details": {"split": split}}


BALANCED = {c: (40, 10) for c in "abcde"}


def test_clean_dataset_has_no_cause_and_says_so():
    ranked, summary = diagnose(_report(gap={"level": "near"}), _table(BALANCED), PARAMS)
    assert ranked == [] and summary["not_assessed"] == {}
    assert summary["verdict"] == NO_DATA_CAUSE
    assert summary["eval_split"] == "val"
    # what could not be judged keeps the verdict from sounding surer than it is
    _, partial = diagnose(_report(), _table(BALANCED), PARAMS)
    assert partial["verdict"].startswith("no data cause found among those assessed (domain_gap could not be")


def test_leakage_is_quantified_with_an_interval_and_ranked_first():
    leaks = [_leak(f"train/a/{i}.png", f"val/a/{i}.png") for i in range(10)]  # 10 of 50 val images
    ranked, _ = diagnose(_report(leaks), _table(BALANCED), PARAMS, dataset="data")
    top = ranked[0]
    assert top["cause"] == "leakage" and top["rank"] == 1 and top["confidence"] == "high"
    assert top["effect"]["share"] == pytest.approx(0.2)
    lo, hi = top["effect"]["interval"]
    assert lo < 0.2 < hi and (lo, hi) == tuple(wilson(10, 50))
    assert top["evidence"]["checks"] == {"leakage": 10} and len(top["evidence"]["paths"]) == 5
    assert top["fix"]["command"] == "audit clean data --out CLEAN"


def test_one_leaked_image_in_a_large_val_is_not_material():
    table = _table({c: (400, 200) for c in "abcde"})  # 1 of 1000 val images: under min_leaked_share
    ranked, _ = diagnose(_report([_leak("train/a/0.png", "val/a/0.png")]), table, PARAMS)
    assert ranked == []


def test_label_noise_gives_the_accuracy_ceiling_and_high_confidence():
    flagged = [_issue(f"val/{c}/{i}.png", "val") for c in "abcde" for i in range(2)]  # 10 of 50 = 20%
    report = _report(flagged)
    report["label_noise"] = {"splits": {"val": {"images": 50, "estimated_rate": 0.22}}}
    ranked, _ = diagnose(report, _table(BALANCED), PARAMS)
    top = ranked[0]
    assert top["cause"] == "label_noise" and top["confidence"] == "high"
    assert top["effect"]["accuracy_ceiling"] == pytest.approx(0.8)
    assert "22%" in top["effect"]["text"] and "at most about 80%" in top["effect"]["text"]


def test_a_skipped_check_is_not_assessed_rather_than_absent():
    why = "no embeddings (scan ran with --no-embed)"
    _, summary = diagnose(_report(skipped={"label_issue": why, "pretraining_gap": why}), _table(BALANCED), PARAMS)
    assert summary["not_assessed"]["label_noise"] == why
    assert "domain_gap" in summary["not_assessed"]


def test_small_class_and_unseen_class_are_named():
    per_class = {**BALANCED, "rare": (6, 2)}
    table = pd.concat([_table(per_class), _table({"zebra": (0, 3)})], ignore_index=True)
    ranked, _ = diagnose(_report(), table, PARAMS)
    small = next(e for e in ranked if e["cause"] == "small_dataset")
    assert small["effect"]["classes"] == {"zebra": 0, "rare": 6}
    assert small["confidence"] == "high" and "'rare' (6)" in small["effect"]["text"]


def test_imbalance_among_classes_above_the_bar():
    ranked, _ = diagnose(_report(), _table({"a": (600, 10), "b": (40, 10), "c": (300, 10)}), PARAMS)
    (entry,) = ranked
    assert entry["cause"] == "class_imbalance" and entry["effect"]["ratio"] == 15.0
    assert entry["confidence"] == "medium" and list(entry["effect"]["minority"]) == ["b"]


def test_quality_findings_concentrated_in_val_are_a_split_shift_not_image_quality():
    blurry = [{"check": "blurry", "paths": [f"val/{c}/{i}.png"], "score": 1.0, "details": {}} for c in "abcde"
              for i in range(8)]  # fmt: skip
    ranked, _ = diagnose(_report(blurry), _table(BALANCED), PARAMS)
    assert [e["cause"] for e in ranked] == ["split_shift"]
    assert ranked[0]["effect"]["quality_share"] == {"train": 0.0, "val": 0.8}
    assert ranked[0]["confidence"] == "high"


def test_quality_findings_everywhere_are_image_quality():
    fs = [{"check": "noisy", "paths": [f"{s}/{c}/{i}.png"], "score": 1.0, "details": {}}
          for s, n in (("train", 12), ("val", 3)) for c in "abcde" for i in range(n)]  # fmt: skip
    ranked, _ = diagnose(_report(fs), _table(BALANCED), PARAMS)
    assert [e["cause"] for e in ranked] == ["image_quality"]
    assert ranked[0]["effect"]["share"] == pytest.approx(0.3)


def test_info_level_quality_notes_are_not_image_quality():
    """Every image of a set of mixed shapes has an odd aspect ratio (info): a note, not a
    degraded image; the blurred ones (warning) still count."""
    odd = [{"check": "odd_aspect_ratio", "severity": "info", "paths": [f"{s}/{c}/{i}.png"], "score": 1.0,
            "details": {}} for s, n in (("train", 40), ("val", 10)) for c in "abcde" for i in range(n)]  # fmt: skip
    ranked, _ = diagnose(_report(odd), _table(BALANCED), PARAMS)
    assert ranked == []
    blur = [{"check": "blurry", "severity": "warning", "paths": [f"{s}/{c}/{i}.png"], "score": 1.0, "details": {}}
            for s, n in (("train", 12), ("val", 3)) for c in "abcde" for i in range(n)]  # fmt: skip
    ranked, _ = diagnose(_report(odd + blur), _table(BALANCED), PARAMS)
    assert [e["cause"] for e in ranked] == ["image_quality"]
    assert ranked[0]["effect"]["share"] == pytest.approx(0.3)
    assert "odd_aspect_ratio" not in ranked[0]["effect"]["text"]


def test_embedding_shift_between_splits():
    entry = {"kind": "split", "reference": "train", "target": "val", "verdict": "shift", "magnitude": 0.9,
             "auc": 0.95, "auc_ci": [0.9, 0.99], "classes": [{"class": "a", "significant": True}],
             "out_of_support": {"fraction": 0.7, "expected": 0.05, "images": [{"path": "val/a/1.png"}]}}  # fmt: skip
    ranked, _ = diagnose(_report(shift=[entry]), _table(BALANCED), PARAMS)
    (top,) = ranked
    assert top["cause"] == "split_shift" and top["confidence"] == "high"
    assert top["effect"]["points"] == pytest.approx(0.65)  # the excess outside train's support
    assert "classes that moved most: a" in top["effect"]["text"]


def test_a_prior_ranks_after_measured_causes_and_is_never_high():
    gap = {"level": "far", "feature_gap": 2.0, "head_confidence": 0.2}
    per_class = {**BALANCED, "rare": (25, 10)}  # under the bar by a little: few points
    ranked, _ = diagnose(_report(gap=gap), _table(per_class), PARAMS)
    assert [e["cause"] for e in ranked] == ["small_dataset", "domain_gap"]
    dg = ranked[1]
    assert dg["confidence"] == "medium" and dg["fix"]["command"].endswith(f"--unfreeze {PARAMS['unfreeze_far']}")
    assert dg["effect"]["points"] > ranked[0]["effect"]["points"]  # ranked second anyway: a prior


def test_every_cause_is_a_known_name():
    leaks = [_leak("train/a/0.png", "val/a/0.png")]
    ranked, _ = diagnose(_report(leaks), _table({**BALANCED, "rare": (6, 2)}), PARAMS)
    assert ranked and all(e["cause"] in CAUSES for e in ranked)
    assert [e["rank"] for e in ranked] == list(range(1, len(ranked) + 1))


def test_rules_refuse_an_unknown_or_out_of_range_diagnosis_key(tmp_path):
    bad = tmp_path / "r.yaml"
    bad.write_text("schema: auditor.rules/1\nextends: default\ndiagnosis:\n  min_leaked_share: 1.5\n")
    with pytest.raises(RulesError, match=r"diagnosis\.min_leaked_share"):
        load_rules(bad)
    bad.write_text("schema: auditor.rules/1\nextends: default\ndiagnosis:\n  min_leak_share: 0.1\n")
    with pytest.raises(RulesError, match=r"diagnosis\.'min_leak_share': unknown key"):
        load_rules(bad)
    ok = tmp_path / "ok.yaml"
    ok.write_text("schema: auditor.rules/1\nextends: default\ndiagnosis:\n  min_images_per_class: 5\n")
    assert load_rules(ok).diagnosis["min_images_per_class"] == 5


# -- end to end, on real images ---------------------------------------------------------------


def _digits_dataset(root, per_class=45, n_val=12, classes=(0, 1, 2, 3, 4)):
    from sklearn.datasets import load_digits

    d = load_digits()
    for c in classes:
        imgs = d.images[d.target == c][:per_class]
        for i, im in enumerate(imgs):
            split = "val" if i < n_val else "train"
            folder = root / split / str(c)
            folder.mkdir(parents=True, exist_ok=True)
            rgb = np.repeat((im * 255 / 16).astype(np.uint8)[..., None], 3, axis=2)
            Image.fromarray(rgb).resize((32, 32), Image.NEAREST).save(folder / f"{i}.png")


def test_scan_of_real_digits_names_planted_leakage_first_and_a_clean_copy_has_no_cause(tmp_path):
    from auditor.pipeline.api import scan

    clean = tmp_path / "clean"
    _digits_dataset(clean)
    res = scan(clean, None, write=False, embed=False, projection=False)
    assert not [e for e in res.report["diagnosis"] if e["confidence"] == "high"]
    assert "label_noise" in res.report["diagnosis_summary"]["not_assessed"]  # --no-embed
    leaky = tmp_path / "leaky"
    shutil.copytree(clean, leaky)
    for i, path in enumerate(sorted((leaky / "train" / "3").glob("*.png"))[:8]):  # 8 of 60 val images
        shutil.copy(path, leaky / "val" / "3" / f"copy{i}.png")
    res = scan(leaky, None, write=False, embed=False, projection=False)
    top = res.report["diagnosis"][0]
    assert top["cause"] == "leakage" and top["effect"]["images"] == 8 and top["effect"]["of"] == 68
    assert res.report["diagnosis_summary"]["verdict"].startswith("most likely: leakage")


def test_scan_of_real_digits_sees_a_reacquired_val_split(tmp_path):
    from auditor.pipeline.api import scan

    root = tmp_path / "ds"
    _digits_dataset(root)
    for path in (root / "val").rglob("*.png"):
        img = Image.open(path).filter(ImageFilter.GaussianBlur(2)).point(lambda v: v // 2)
        img.save(path)
    res = scan(root, None, write=False, embed=False, projection=False)
    causes = [e["cause"] for e in res.report["diagnosis"]]
    assert causes[0] == "split_shift", res.report["diagnosis"]
    assert res.report["diagnosis"][0]["effect"]["quality_share"]["val"] > 0.5

"""Error analysis after fine-tuning (issue 16, part 2): validation errors joined with the scan's
findings, the training curves read, the diagnosis updated."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from auditor.analysis.errors import confused_pairs, error_analysis, read_curves
from auditor.policy.diagnosis import diagnose_after_training
from auditor.policy.rules import load_rules

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))

PARAMS = load_rules().diagnosis


def _pred(rows):
    return pd.DataFrame(rows, columns=["path", "true", "predicted"])


def test_flagged_images_over_represented_among_errors():
    # 20 val images; 4 flagged as label issues, 3 of them wrong; 2 other errors
    rows = [(f"val/{i}.png", "a", "a") for i in range(20)]
    for i in (0, 1, 2):
        rows[i] = (f"val/{i}.png", "a", "b")
    rows[10] = ("val/10.png", "b", "a")
    rows[11] = ("val/11.png", "b", "a")
    findings = [{"check": "label_issue", "paths": [f"val/{i}.png"], "details": {}} for i in (0, 1, 2, 3)]
    out = error_analysis(_pred(rows), findings, outside={"val/10.png"})
    g = out["flags"]["label_issue"]
    assert (g["images"], g["errors"], g["share_of_val"], g["share_of_errors"]) == (4, 3, 0.2, 0.6)
    assert g["excess"] == 3.0 and g["error_rate"] == 0.75
    assert out["flags"]["outside_support"]["errors"] == 1
    assert out["errors"] == 5 and out["accuracy"] == 0.75
    assert out["confused_pairs"][0] == {"true": "a", "predicted": "b", "errors": 3,
                                        "examples": ["val/0.png", "val/1.png", "val/2.png"],
                                        "related_findings": {}}  # fmt: skip


def test_confused_pairs_name_the_findings_that_tie_the_classes():
    errors = _pred([("v/1.png", "cat", "Cat"), ("v/2.png", "cat", "Cat"), ("v/3.png", "dog", "cat")])
    findings = [
        {"check": "class_name_inconsistency", "paths": [], "details": {"names": ["cat", "Cat"]}},
        {"check": "label_issue", "paths": ["t/9.png"], "details": {"given_label": "dog", "suggested_label": "cat"}},
        {"check": "near_duplicate", "paths": ["a", "b"], "details": {"members": [{"label": "cat"}, {"label": "Cat"}]}},
    ]
    pairs = confused_pairs(errors, findings)
    assert pairs[0]["related_findings"] == {"class_name_inconsistency": 1, "near_duplicate": 1}
    assert pairs[1]["related_findings"] == {"label_issue": 1}


def _epochs(train_acc, val_acc, val_loss):
    return [{"accuracy": a, "val_accuracy": v, "val_loss": lo, "loss": 1 - a}
            for a, v, lo in zip(train_acc, val_acc, val_loss, strict=True)]  # fmt: skip


def test_curves_overfitting_underfitting_and_a_harmful_phase_two():
    over = read_curves({"head": _epochs([0.7, 0.9, 0.99, 1.0], [0.6, 0.65, 0.66, 0.64], [0.9, 0.8, 0.85, 0.95])})
    assert over["phases"]["head"]["best_epoch"] == 2 and over["phases"]["head"]["val_loss_rose"]
    ranked, _ = diagnose_after_training({}, _table(), PARAMS, over, None)
    assert ranked[0]["cause"] == "overfitting" and ranked[0]["confidence"] == "high"  # 0.90 - 0.65 = 0.25
    under = read_curves({"head": _epochs([0.3, 0.4, 0.45], [0.3, 0.38, 0.4], [1.5, 1.3, 1.2])})
    ranked, _ = diagnose_after_training({}, _table(), PARAMS, under, None)
    assert [e["cause"] for e in ranked] == ["underfitting"]
    worse = read_curves({"head": _epochs([0.8, 0.85], [0.8, 0.84], [0.6, 0.5]),
                         "fine_tune": _epochs([0.86, 0.9], [0.7, 0.74], [0.9, 0.8])})  # fmt: skip
    ranked, _ = diagnose_after_training({}, _table(), PARAMS, worse, None)
    assert "hyperparameters" in [e["cause"] for e in ranked]
    fine = read_curves({"head": _epochs([0.8, 0.9], [0.78, 0.86], [0.6, 0.5])})
    assert diagnose_after_training({}, _table(), PARAMS, fine, None)[0] == []


def _table():
    return pd.DataFrame({"path": [f"train/a/{i}" for i in range(40)] + [f"val/a/{i}" for i in range(10)],
                         "split": ["train"] * 40 + ["val"] * 10, "label": ["a"] * 50, "ok": True})  # fmt: skip


def test_error_evidence_raises_a_scan_cause_to_high_confidence():
    table = pd.concat([_table(), _table().assign(label="b", path=lambda t: t["path"].str.replace("/a/", "/b/"))])
    flagged = [{"check": "label_issue", "paths": [f"val/{c}/{i}"], "score": 0.9, "details": {"split": "val"}}
               for c in "ab" for i in range(1)]  # 2 of 20 val: medium on its own  # fmt: skip
    report = {"findings": flagged, "checks": {}}
    (before,), _ = diagnose_after_training(report, table, PARAMS, None, None)
    assert before["cause"] == "label_noise" and before["confidence"] == "medium"
    errors = {"flags": {"label_issue": {"images": 2, "errors": 2, "share_of_val": 0.1, "share_of_errors": 0.5,
                                        "excess": 5.0}}}  # fmt: skip
    params = {**PARAMS, "min_evidence_images": 2}
    (after,), _ = diagnose_after_training(report, table, params, None, errors)
    assert after["confidence"] == "high" and after["effect"]["val_errors"]["excess"] == 5.0
    assert "50% of its errors" in after["effect"]["text"]


def test_audit_run_attributes_val_errors_to_planted_label_noise(tmp_path):
    """After `audit run` on real digits with 20% of val labels flipped, the share of val errors on
    the images label_issue flagged is measurably above their share of val."""
    domains = pytest.importorskip("domains")
    if domains._missing("digits"):
        pytest.skip("the digits domain's packages are not installed")
    from auditor.demo.validation import as_rgb
    from auditor.pipeline.finetune import FinetuneOptions
    from auditor.pipeline.run import run

    images = domains.DOMAINS["digits"](600, seed=0)
    rng = np.random.default_rng(0)
    by_class: dict[str, list] = {}
    for label, img in images:
        by_class.setdefault(str(label), []).append(img)
    classes = sorted(by_class)[:5]
    root = tmp_path / "ds"
    flipped = 0
    for c in classes:
        for i, img in enumerate(by_class[c][:40]):
            split = "val" if i < 12 else "train"
            label = c
            if split == "val" and i < 3:  # 3 of 12 val images per class: 25% of val flipped
                label = str(rng.choice([d for d in classes if d != c]))
                flipped += 1
            folder = root / split / label
            folder.mkdir(parents=True, exist_ok=True)
            Image.fromarray(as_rgb(img)).save(folder / f"{c}_{i}.png")
    opts = FinetuneOptions(epochs=6, unfreeze=0, augment=(), batch_size=16)
    out = run(root, tmp_path / "out", finetune_options=opts, force=True, projection=False, augment_from_audit=False)
    report = out.scan.report
    errors = report["finetune"]["errors"]
    g = errors["flags"]["label_issue"]
    assert g["images"] >= 5, g
    assert g["share_of_errors"] > 2 * g["share_of_val"], errors
    assert report["diagnosis_summary"]["after_training"] is True
    noise = next(e for e in report["diagnosis"] if e["cause"] == "label_noise")
    assert noise["effect"]["val_errors"]["excess"] > 2 and noise["confidence"] == "high"
    assert (tmp_path / "out" / "model" / "predictions.csv").read_text().startswith("path,true,predicted,confidence\n")


def test_audit_finetune_report_joins_errors_and_refuses_a_bad_report_before_training(tmp_path):
    from sklearn.datasets import load_digits
    from typer.testing import CliRunner

    from auditor.cli.app import app

    d = load_digits()
    root = tmp_path / "ds"
    for c in (0, 1, 7):
        for i, im in enumerate(d.images[d.target == c][:30]):
            folder = root / ("val" if i < 8 else "train") / str(c)
            folder.mkdir(parents=True, exist_ok=True)
            rgb = np.repeat((im * 255 / 16).astype(np.uint8)[..., None], 3, axis=2)
            Image.fromarray(rgb).resize((32, 32), Image.NEAREST).save(folder / f"{i}.png")
    runner = CliRunner()
    scan = runner.invoke(app, ["scan", str(root), "--out", str(tmp_path / "scan"), "--no-embed"])
    assert scan.exit_code in (0, 1), scan.output
    bad = runner.invoke(app, ["finetune", str(root), "--out", str(tmp_path / "m0"), "--report",
                              str(tmp_path / "nope.json")])  # fmt: skip
    assert bad.exit_code == 2 and "no such report" in bad.output and not (tmp_path / "m0").exists()
    res = runner.invoke(
        app,
        [
            "finetune",
            str(root),
            "--out",
            str(tmp_path / "m"),
            "--epochs",
            "2",
            "--unfreeze",
            "0",
            "--no-augment",
            "--image-size",
            "64",
            "--report",
            str(tmp_path / "scan" / "report.json"),
        ],
    )
    assert res.exit_code == 0, res.output
    ev = json.loads((tmp_path / "m" / "evaluation.json").read_text())
    assert ev["errors"]["val_images"] == 24 and set(ev["errors"]["flags"]) >= {"label_issue", "low_quality"}
    assert ev["diagnosis_summary"]["after_training"] is True and "curves" in ev
    predictions = pd.read_csv(tmp_path / "m" / "predictions.csv")
    assert sorted(predictions["path"]) == sorted(p.relative_to(root).as_posix() for p in (root / "val").rglob("*.png"))

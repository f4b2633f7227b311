"""audit clean: a decision per finding type, the original untouched, idempotent reruns."""

from __future__ import annotations

import pandas as pd
import pytest
from conftest import tree_digest
from typer.testing import CliRunner

from auditor.cli.app import app
from auditor.core.findings import Finding
from auditor.demo import synth
from auditor.pipeline.clean import decide
from auditor.policy.rules import load_rules

runner = CliRunner()


@pytest.fixture()
def dataset(tmp_path, tiles):
    root = tmp_path / "ds"
    for i, (_, px) in enumerate(tiles[:30]):
        split = "val" if i % 5 == 0 else "train"
        synth.write(root / split / ("cat" if i % 2 else "dog") / f"img{i}.jpg", synth.jpeg_bytes(px, 90))
    a, b, c, d = (t[1] for t in tiles[30:34])
    synth.write(root / "train/cat/broken.jpg", synth.truncated_jpeg(a))
    data = synth.jpeg_bytes(b, 90)
    synth.write(root / "train/cat/copy1.jpg", data)
    synth.write(root / "train/cat/copy2.jpg", data)
    synth.write(root / "train/dog/original.jpg", synth.jpeg_bytes(c, 95))
    synth.write(root / "train/dog/smaller_q40.jpg", synth.near_copy_bytes(c))
    leak = synth.jpeg_bytes(d, 90)
    synth.write(root / "train/dog/leak.jpg", leak)
    synth.write(root / "val/dog/leak.jpg", leak)
    e = synth.jpeg_bytes(tiles[34][1], 90)
    synth.write(root / "train/cat/conflict.jpg", e)
    synth.write(root / "train/dog/conflict.jpg", e)
    return root


def _manifest(out):
    return pd.read_csv(out / "manifest.csv", keep_default_na=False).set_index("source_path")


def test_decisions_per_finding_type_and_original_untouched(dataset, tmp_path):
    before = tree_digest(dataset)
    out = tmp_path / "clean"
    res = runner.invoke(app, ["clean", str(dataset), "--out", str(out), "--no-embed"])
    assert res.exit_code == 0, res.output
    assert tree_digest(dataset) == before  # the original is byte-identical
    m = _manifest(out)
    act = m["action"].to_dict()
    assert act["train/cat/broken.jpg"] == "drop" and "corrupt" in m.at["train/cat/broken.jpg", "reason"]
    assert sorted([act["train/cat/copy1.jpg"], act["train/cat/copy2.jpg"]]) == ["drop", "keep"]
    assert act["train/dog/original.jpg"] == "keep" and act["train/dog/smaller_q40.jpg"] == "drop"  # larger kept
    assert act["train/dog/leak.jpg"] == "keep" and act["val/dog/leak.jpg"] == "drop"  # eval split stays honest
    assert act["train/cat/conflict.jpg"] == act["train/dog/conflict.jpg"] == "quarantine"
    assert (m["action"] == "keep").sum() == 30 + 3  # the clean tiles and one of each kept pair
    kept = m[m["action"] == "keep"]
    for rel, src in zip(kept["path"], kept.index, strict=True):
        assert (out / rel).read_bytes() == (dataset / src).read_bytes()
    assert (out / "_quarantine/train/cat/conflict.jpg").exists()
    assert not (out / "val/dog/leak.jpg").exists() and (out / "train/dog/leak.jpg").exists()


def test_rerun_is_idempotent_and_dry_run_writes_nothing(dataset, tmp_path):
    out = tmp_path / "clean"
    for _ in range(2):
        assert runner.invoke(app, ["clean", str(dataset), "--out", str(out), "--no-embed"]).exit_code == 0
        digest = tree_digest(out)
        if _ == 0:
            first = digest
    assert digest == first
    dry = tmp_path / "dry"
    res = runner.invoke(app, ["clean", str(dataset), "--out", str(dry), "--no-embed", "--dry-run"])
    assert res.exit_code == 0 and not dry.exists() and "Dry run" in res.output


def test_refuses_unsafe_output_folders(dataset, tmp_path):
    inside = runner.invoke(app, ["clean", str(dataset), "--out", str(dataset / "cleaned"), "--no-embed"])
    assert inside.exit_code == 2 and "inside the dataset" in inside.output
    foreign = tmp_path / "mine"
    (foreign / "notes.txt").parent.mkdir(parents=True)
    (foreign / "notes.txt").write_text("keep me")
    res = runner.invoke(app, ["clean", str(dataset), "--out", str(foreign), "--no-embed"])
    assert res.exit_code == 2 and (foreign / "notes.txt").read_text() == "keep me"


def test_label_issue_quarantine_or_relabel():
    table = pd.DataFrame({
        "path": ["a.jpg", "b.jpg", "c.jpg"], "abs_path": ["/x/a.jpg", "/x/b.jpg", "/x/c.jpg"], "split": "train",
        "label": ["cat", "cat", "dog"], "width": 10, "height": 10, "file_size": 1,
    })  # fmt: skip
    issue = {"given_label": "cat", "suggested_label": "dog"}
    findings = [Finding("label_issue", ["a.jpg"], 0.9, "labelled 'cat', looks like 'dog'", issue),
                Finding("label_issue", ["b.jpg"], 0.2, "weak", issue)]  # fmt: skip
    policy = load_rules().clean
    m = decide(table, findings, policy).set_index("source_path")
    assert m.at["a.jpg", "action"] == "quarantine" and m.at["b.jpg", "action"] == "keep"  # below min score
    r = decide(table, findings, policy, relabel=True).set_index("source_path")
    assert r.at["a.jpg", "action"] == "relabel" and r.at["a.jpg", "label"] == "dog"
    assert r.at["a.jpg", "source_label"] == "cat"


def test_label_issues_in_evaluation_splits_are_listed_not_removed():
    """Quarantining the val images a model gets wrong would inflate validation accuracy: by
    default a val/test label issue is kept (with its reason); eval_label_issues: same
    treats it as in train."""
    table = pd.DataFrame({
        "path": ["train/a.jpg", "val/b.jpg"], "abs_path": ["/x/a.jpg", "/x/b.jpg"], "split": ["train", "val"],
        "label": ["cat", "cat"], "width": 10, "height": 10, "file_size": 1,
    })  # fmt: skip
    issue = {"given_label": "cat", "suggested_label": "dog"}
    findings = [Finding("label_issue", [p], 0.9, "looks like 'dog'", issue) for p in table["path"]]
    policy = load_rules().clean
    m = decide(table, findings, policy).set_index("source_path")
    assert m.at["train/a.jpg", "action"] == "quarantine"
    assert m.at["val/b.jpg", "action"] == "keep" and "evaluation split" in m.at["val/b.jpg", "reason"]
    same = decide(table, findings, {**policy, "eval_label_issues": "same"}).set_index("source_path")
    assert same.at["val/b.jpg", "action"] == "quarantine"


def test_eval_label_issues_kept_whatever_the_label_issue_action():
    table = pd.DataFrame({"path": ["val/b.jpg"], "abs_path": ["/x/b.jpg"], "split": ["val"], "label": ["cat"],
                          "width": 10, "height": 10, "file_size": 1})  # fmt: skip
    findings = [Finding("label_issue", ["val/b.jpg"], 0.9, "looks like 'dog'", {"suggested_label": "dog"})]
    policy = load_rules().clean
    for how in ("drop", "quarantine"):
        m = decide(table, findings, {**policy, "actions": {**policy["actions"], "label_issue": how}})
        assert m["action"].tolist() == ["keep"]

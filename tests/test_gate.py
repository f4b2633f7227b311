"""The gate: exit codes, --from-report, JUnit XML, GitHub annotations, the Python API."""

from __future__ import annotations

import json
import xml.etree.ElementTree as ET

import pytest
from typer.testing import CliRunner

import auditor
from auditor.cli.app import app
from auditor.demo import synth
from auditor.policy.gate import GateFailed, _escape_data, github_annotations, junit_xml

runner = CliRunner()


def _dataset(root, tiles, leak: bool):
    for i, (_, px) in enumerate(tiles[:24]):
        split = "val" if i % 4 == 0 else "train"
        synth.write(root / split / ("a" if i % 2 else "b") / f"{i}.jpg", synth.jpeg_bytes(px, 90))
    if leak:
        data = synth.jpeg_bytes(tiles[30][1], 90)
        synth.write(root / "train" / "a" / "leak.jpg", data)
        synth.write(root / "val" / "a" / "leak.jpg", data)
    return root


@pytest.fixture()
def clean(tmp_path, tiles):
    return _dataset(tmp_path / "clean", tiles, leak=False)


@pytest.fixture()
def leaky(tmp_path, tiles):
    return _dataset(tmp_path / "leaky", tiles, leak=True)


def test_exit_codes(clean, leaky, tmp_path):
    ok = runner.invoke(app, ["gate", str(clean), "--no-embed", "-o", str(tmp_path / "o1")])
    assert ok.exit_code == 0, ok.output
    assert "Gate: passed" in ok.output
    bad = runner.invoke(app, ["gate", str(leaky), "--no-embed", "-o", str(tmp_path / "o2")])
    assert bad.exit_code == 1, bad.output
    assert bad.output.index("leakage") < bad.output.index("Gate: failed")  # failing rules printed first
    missing = runner.invoke(app, ["gate", str(tmp_path / "nowhere"), "--no-embed"])
    assert missing.exit_code == 2
    bad_rules = "schema: auditor.rules/1\nextends: default\nchecks:\n  leakage: {severity: fatal}\n"
    (tmp_path / "bad.yaml").write_text(bad_rules)
    invalid = runner.invoke(app, ["gate", str(clean), "--no-embed", "--rules", str(tmp_path / "bad.yaml")])
    assert invalid.exit_code == 2 and "leakage.severity" in invalid.output
    both = runner.invoke(app, ["gate", str(clean), "--from-report", str(tmp_path / "o1" / "report.json")])
    assert both.exit_code == 2


def test_from_report_rejudges_without_scanning(leaky, tmp_path):
    res = runner.invoke(app, ["gate", str(leaky), "--no-embed", "-o", str(tmp_path / "o")])
    assert res.exit_code == 1
    report = tmp_path / "o" / "report.json"
    again = runner.invoke(app, ["gate", "--from-report", str(report)])
    assert again.exit_code == 1
    relaxed = tmp_path / "relaxed.yaml"
    relaxed.write_text("schema: auditor.rules/1\nextends: default\nchecks:\n  leakage: {severity: warning}\n"
                       "  label_conflict: {severity: warning}\n")  # fmt: skip
    assert runner.invoke(app, ["gate", "--from-report", str(report), "--rules", str(relaxed)]).exit_code == 0
    (tmp_path / "junk.json").write_text(json.dumps({"hello": 1}))
    junk = runner.invoke(app, ["gate", "--from-report", str(tmp_path / "junk.json")])
    assert junk.exit_code == 2 and "not an image-auditor report" in junk.output


def test_junit_file_has_one_case_per_rule(leaky, tmp_path):
    junit = tmp_path / "gate.xml"
    res = runner.invoke(app, ["gate", str(leaky), "--no-embed", "-o", str(tmp_path / "o"), "--junit", str(junit)])
    assert res.exit_code == 1
    suite = ET.parse(junit).getroot().find("testsuite")
    cases = {c.get("name"): c for c in suite.findall("testcase")}
    report = json.loads((tmp_path / "o" / "report.json").read_text())
    assert set(cases) == {r["rule"] for r in report["gate"]["rules"]}
    assert cases["leakage"].find("failure") is not None and "leak.jpg" in cases["leakage"].find("failure").text
    assert cases["outlier"].find("skipped") is not None  # --no-embed: said, not silently passed
    assert cases["corrupt"].find("failure") is None and cases["corrupt"].find("skipped") is None
    assert int(suite.get("failures")) == sum(r["status"] == "fail" for r in report["gate"]["rules"])


def test_github_annotations_only_in_actions(leaky, tmp_path, monkeypatch):
    args = ["gate", str(leaky), "--no-embed", "-o", str(tmp_path / "o")]
    monkeypatch.delenv("GITHUB_ACTIONS", raising=False)
    assert "::error" not in runner.invoke(app, args).output
    monkeypatch.setenv("GITHUB_ACTIONS", "true")
    out = runner.invoke(app, args).output
    lines = [ln for ln in out.splitlines() if ln.startswith("::")]
    assert any(ln.startswith("::error title=image-auditor leakage::") for ln in lines), lines
    assert all("\n" not in ln for ln in lines)
    assert _escape_data("50% done\nnext") == "50%25 done%0Anext"


def test_python_api(clean, leaky, tmp_path):
    passed = auditor.gate(clean, embed=False, out=tmp_path / "a")
    assert passed and passed.passed and passed.failures == [] and passed.report_path.exists()
    failed = auditor.gate(leaky, embed=False, out=tmp_path / "b")
    assert not failed and [f["rule"] for f in failed.failures] == ["leakage"]
    assert "leak.jpg" in failed.failures[0]["examples"][0]
    with pytest.raises(GateFailed) as info:
        auditor.gate(leaky, embed=False, out=tmp_path / "c", raise_on_fail=True)
    assert info.value.result.failures[0]["rule"] == "leakage"
    assert auditor.gate(leaky, embed=False, out=tmp_path / "d", rules="lenient").passed is False  # leakage fails
    assert auditor.gate(from_report=tmp_path / "b" / "report.json").passed is False
    lines = github_annotations(failed)
    assert lines[0].startswith("::error") and ET.fromstring(junit_xml(failed)).tag == "testsuites"


def test_lenient_fails_only_on_leakage_and_an_unreadable_dataset(tmp_path, tiles, leaky):
    from auditor.policy.rules import load_rules

    lenient = load_rules("lenient")
    errors = sorted(n for n, r in lenient.checks.items() if r.enabled and r.severity == "error")
    assert errors == ["corrupt", "leakage"]  # corrupt only above half of the dataset
    assert lenient.checks["corrupt"].max_fraction == 0.5
    assert [f["rule"] for f in auditor.gate(leaky, embed=False, out=tmp_path / "l", rules="lenient").failures] == [
        "leakage"
    ]
    broken = tmp_path / "broken"
    for i in range(6):
        synth.write(broken / f"{i}.jpg", synth.random_bytes(200, seed=i) if i < 4 else synth.jpeg_bytes(tiles[i][1]))
    result = auditor.gate(broken, embed=False, out=tmp_path / "b", rules="lenient")
    assert [f["rule"] for f in result.failures] == ["corrupt"]


def test_lenient_passes_a_few_corrupt_files(tmp_path, tiles):
    root = tmp_path / "few"
    for i, (_, px) in enumerate(tiles[:24]):
        synth.write(root / f"{i}.jpg", synth.jpeg_bytes(px, 90))
    synth.write(root / "broken.jpg", b"")
    assert auditor.gate(root, embed=False, out=tmp_path / "o", rules="lenient").passed
    assert not auditor.gate(root, embed=False, out=tmp_path / "p", rules="strict").passed


def test_markup_and_control_characters_in_file_names(tmp_path, tiles):
    root = tmp_path / "odd"
    for i, (_, px) in enumerate(tiles[:23]):
        synth.write(root / "train" / "a" / f"{i}.jpg", synth.jpeg_bytes(px, 90))
    data = synth.jpeg_bytes(tiles[30][1], 90)
    names = ["[/bold]oops.jpg", "esc\x1b[31mred.jpg"]
    for n in names:
        synth.write(root / "train" / "a" / n, data)
        synth.write(root / "val" / "a" / n, data)  # leakage: the names end up in messages
    junit = tmp_path / "g.xml"
    res = runner.invoke(app, ["gate", str(root), "--no-embed", "-o", str(tmp_path / "o"), "--junit", str(junit)],
                        env={"GITHUB_ACTIONS": "true"})  # fmt: skip
    assert res.exit_code == 1, res.output  # a failed gate, not a crash
    assert "[/bold]oops.jpg" in res.output.replace("\n", "")
    failure = ET.parse(junit).getroot().find("testsuite/testcase[@name='leakage']/failure")
    assert "oops.jpg" in failure.text and "\x1b" not in failure.text and "\\x1b" in failure.text
    notes = [ln for ln in res.output.splitlines() if ln.startswith("::error")]
    assert notes and all("\x1b" not in ln for ln in notes)
    bad = runner.invoke(app, ["gate", str(root), "--no-embed", "--junit", str(tmp_path)])  # a folder
    assert bad.exit_code == 2


def test_from_report_refuses_what_the_scan_did_not_measure(leaky, tmp_path):
    off = tmp_path / "off.yaml"
    off.write_text("schema: auditor.rules/1\nextends: default\nchecks:\n  leakage: {severity: error, enabled: false}\n")
    res = runner.invoke(app, ["gate", str(leaky), "--no-embed", "-o", str(tmp_path / "o"), "--rules", str(off)])
    assert res.exit_code == 0  # leakage was not checked
    report = tmp_path / "o" / "report.json"
    again = runner.invoke(app, ["gate", "--from-report", str(report), "--rules", "default"])
    assert again.exit_code == 2 and "leakage is enabled but did not run" in again.output
    other = tmp_path / "params.yaml"
    other.write_text("schema: auditor.rules/1\nextends: off.yaml\nchecks:\n  dark: {severity: warning, "
                     "params: {max_brightness_p95: 90}}\n")  # fmt: skip
    changed = runner.invoke(app, ["gate", "--from-report", str(report), "--rules", str(other)])
    assert changed.exit_code == 2 and "dark.params differ" in changed.output
    (tmp_path / "partial.json").write_text(json.dumps({"schema": "auditor.report/1"}))
    partial = runner.invoke(app, ["gate", "--from-report", str(tmp_path / "partial.json")])
    assert partial.exit_code == 2 and "incomplete report" in partial.output


def test_annotations_are_capped(leaky, tmp_path):
    result = auditor.gate(leaky, embed=False, out=tmp_path / "o")
    many = result.failures * 15
    capped = github_annotations(type(result)(False, many, [], result.report, result.report_path), limit=10)
    assert len(capped) == 11 and "5 more error rules" in capped[-1]

"""report.html read top-down, checked on its text (no browser): verdict, diagnosis, what to fix
first, rules, then the detail; box rules that cannot apply and checks that found nothing each
collapse to one line; an empty diagnosis says so in green; file names stay escaped; the filters'
data attributes name each finding's splits and classes; same report, same bytes."""

from __future__ import annotations

import copy
import json
import re
from pathlib import Path

import pandas as pd
import pytest

from auditor.io.store import Store
from auditor.pipeline import api
from auditor.policy.diagnosis import NO_DATA_CAUSE
from auditor.report.html import render_html

EVIL = 'val/coffee/<img src=x onerror=alert(1)>&"q".jpg'


@pytest.fixture(scope="module")
def demo(tmp_path_factory) -> tuple[dict, pd.DataFrame, str]:
    """The demo (a classification dataset with defects in train and val), scanned without
    embeddings: report.json, images.parquet and the scan's own report.html."""
    from auditor.demo.build import build_demo

    root = tmp_path_factory.mktemp("demo")
    build_demo(root / "ds")
    files = api.scan(root / "ds", root / "out", embed=False, cache_dir=root / "cache").files
    report = json.loads(Path(files["json"]).read_text())
    table = pd.read_parquet(files["table"], columns=["path", "split", "label", "ok", "format", "width", "height",
                                                     "content_hash"])  # fmt: skip
    return report, table, Path(files["html"]).read_text()


def _render(report: dict, table: pd.DataFrame) -> str:
    return render_html(report, table, None, Store(None))


def _body(html: str) -> str:
    return html[html.index("<body>") : html.index("<script")]


def test_sections_come_in_reading_order(demo):
    report, _, html = demo
    body = _body(html)
    marks = ["<h1>", 'class="banner', 'id="diagnosis"', 'id="fix-first"', 'id="rules"', 'id="dataset"',
             'id="findings"', 'class="filters"', '<section class="check">']  # fmt: skip
    at = [body.index(m) for m in marks]
    assert at == sorted(at), dict(zip(marks, at, strict=True))
    # the diagnosis: every cause, in rank order, before any rule or finding
    causes = re.findall(r'id="cause-([a-z_]+)"', body)
    assert causes == [d["cause"] for d in sorted(report["diagnosis"], key=lambda d: d["rank"])] and causes
    assert body.index(f'id="cause-{causes[-1]}"') < body.index('id="fix-first"')
    assert report["diagnosis_summary"]["verdict"].split(":")[0] in body[at[2] : at[3]]
    # the navigation lists the sections with their counts, before all of them
    nav = body[body.index('<nav class="top"') : body.index("</nav>")]
    for target in ("#diagnosis", "#fix-first", "#rules", "#dataset", "#findings"):
        assert f'href="{target}"' in nav, target
    failing = sum(r["status"] == "fail" for r in report["gate"]["rules"])
    assert f"({len(causes)} causes)" in nav and f"({failing} failing" in nav
    assert f'Findings <span class="n">({len(report["findings"])})' in nav


def test_fix_first_lists_each_command_once_then_the_failing_rules(demo):
    report, _, html = demo
    body = _body(html)
    part = body[body.index('id="fix-first"') : body.index('id="rules"')]
    items = re.findall(r"<li>(.*?)</li>", part, re.S)
    ranked = sorted(report["diagnosis"], key=lambda d: d["rank"])
    commands = [d["fix"]["command"] for d in ranked if d["fix"]["command"]]
    assert len(commands) > len(set(commands))  # the demo has causes sharing a command
    shown = [re.search(r"<code>(.*?)</code>", i).group(1) for i in items if "<code>" in i]
    assert shown == list(dict.fromkeys(commands))
    failing = [r["rule"] for r in report["gate"]["rules"] if r["status"] == "fail"]
    assert failing and [re.search(r'href="#([a-z_]+)"', i).group(1) for i in items[len(shown) :]] == failing


def test_box_rules_collapse_to_one_line_on_a_classification_dataset(demo):
    report, _, html = demo
    assert report["boxes"] is None
    body = _body(html)
    box_rules = [r["rule"] for r in report["gate"]["rules"] if r["rule"].startswith("box_")]
    assert len(box_rules) > 3
    assert f"<summary>{len(box_rules)} box rules do not apply: no box annotations</summary>" in body
    rules = body[body.index('id="rules"') : body.index('id="dataset"')]
    table = rules[: rules.index("</table>")]
    assert "box_" not in table  # no row for a rule that cannot apply
    assert not re.search(r'id="box_', body)  # and no finding section either


def test_rules_without_findings_and_checks_without_findings_collapse(demo):
    report, _, html = demo
    body = _body(html)
    totals: dict[str, int] = {}
    for f in report["findings"]:
        totals[f["check"]] = totals.get(f["check"], 0) + 1
    passed = [r["rule"] for r in report["gate"]["rules"]
              if r["status"] == "pass" and not totals.get(r["rule"]) and not r["rule"].startswith("box_")]  # fmt: skip
    assert passed
    assert f"<summary>{len(passed)} rule{'' if len(passed) == 1 else 's'} passed with no findings</summary>" in body
    rules = body[body.index('id="rules"') : body.index('id="dataset"')]
    rows = re.findall(r'<tr><td>(?:<a href="#[^"]*">)?([a-z_]+)', rules)
    assert set(rows) == {r["rule"] for r in report["gate"]["rules"] if r["status"] != "pass" or totals.get(r["rule"])}
    # checks that ran and found nothing: one line with their names (each an anchor), no heading each
    quiet = [c for c, info in report["checks"].items()
             if info["enabled"] and not info["skipped"] and not totals.get(c) and not c.startswith("box_")]  # fmt: skip
    assert quiet
    line = re.search(r'<div class="collapsed checks-clean">(.*?)</div>', body).group(1)
    assert line.startswith(f"{len(quiet)} check{'' if len(quiet) == 1 else 's'} found nothing: ")
    for c in quiet:
        assert f'<span id="{c}">{c}</span>' in line and f'<h2 id="{c}"' not in body
    skipped = [c for c, info in report["checks"].items() if info["skipped"] and not c.startswith("box_")]
    assert skipped
    line = re.search(r'<div class="collapsed checks-skipped muted">(.*?)</div>', body).group(1)
    for c in skipped:
        assert f'<span id="{c}">{c}</span>' in line and report["checks"][c]["skipped"] in line
    # checks with findings keep a section each, their findings all drawn here
    for c in totals:
        assert f'<h2 id="{c}"' in body
    assert body.count('<div class="finding" data-splits=') == len(report["findings"])


def test_an_empty_diagnosis_says_no_data_cause_in_green(demo):
    report, table, _ = demo
    report = copy.deepcopy(report)
    report["diagnosis"] = []
    report["diagnosis_summary"] = {"verdict": NO_DATA_CAUSE, "eval_split": "val", "not_assessed": {
        "domain_gap": "no embeddings (scan ran with --no-embed)"}}  # fmt: skip
    body = _body(_render(report, table))
    part = body[body.index('id="diagnosis"') : body.index('id="fix-first"')]
    assert f'<div class="no-cause">{NO_DATA_CAUSE}</div>' in part and 'class="card cause' not in part
    assert ".no-cause{background:#e3f5e8;color:#14532d" in _render(report, table)  # green
    assert "not assessed: domain_gap (no embeddings (scan ran with --no-embed))" in part
    assert "(0 causes)" in body[: body.index("</nav>")]
    # what to fix first: the failing rules alone
    fix = body[body.index('id="fix-first"') : body.index('id="rules"')]
    assert "<code>" not in fix and fix.count("<li>") == sum(r["status"] == "fail" for r in report["gate"]["rules"])


def test_diagnosis_evidence_paths_are_escaped(demo):
    report, table, _ = demo
    report = copy.deepcopy(report)
    first = report["diagnosis"][0]
    first["evidence"] = {"checks": {"leakage": 1, "<b>not_a_check</b>": 2}, "paths": [EVIL]}
    first["fix"] = {"command": "audit clean '<x>' --out CLEAN", "text": "<script>alert(1)</script>"}
    html = _render(report, table)
    body = _body(html)
    assert "<img src=x" not in body and "<script>alert" not in html and "<b>not_a_check" not in body
    assert "&lt;img src=x onerror=alert(1)&gt;&amp;&#34;q&#34;.jpg" in body  # caption and alt text
    assert 'alt="val/coffee/&lt;img' not in body  # the path is in no table: no thumbnail, "(no preview)"
    assert "(no preview)" in body[body.index('id="cause-') : body.index('id="fix-first"')]
    assert "<code>audit clean &#39;&lt;x&gt;&#39; --out CLEAN</code>" in body


def test_filter_data_name_each_findings_splits_and_classes(demo):
    report, table, html = demo
    body = _body(html)
    split_opts = re.findall(r'<option value="(\d+)">([^<]+)</option>',
                            re.search(r'<select id="filter-split">(.*?)</select>', body).group(1))  # fmt: skip
    class_opts = re.findall(r'<option value="(\d+)">([^<]+)</option>',
                            re.search(r'<select id="filter-class">(.*?)</select>', body).group(1))  # fmt: skip
    assert [s for _, s in split_opts] == sorted(report["dataset"]["splits"]) == ["train", "val"]
    assert [c for _, c in class_opts] == sorted(report["dataset"]["classes"])
    split_of, label_of = dict(split_opts), dict(class_opts)
    where = dict(zip(table["path"], zip(table["split"], table["label"], strict=True), strict=True))
    by_check: dict[str, list[dict]] = {}
    for f in report["findings"]:
        by_check.setdefault(f["check"], []).append(f)
    for check, fs in by_check.items():
        section = body[body.index(f'<h2 id="{check}"') :]
        section = section[: section.index("</section>")]
        attrs = re.findall(r'<div class="finding" data-splits="([\d ]*)" data-labels="([\d ]*)">', section)
        fs = sorted(fs, key=lambda f: -f["score"])  # the page's order: worst first (stable)
        assert len(attrs) == len(fs)
        for f, (splits, labels) in zip(fs, attrs, strict=True):
            got_splits = {split_of[i] for i in splits.split()}
            got_labels = {label_of[i] for i in labels.split()}
            if f["paths"]:
                assert got_splits == {where[p][0] for p in f["paths"]}, (check, f["paths"])
                assert got_labels == {where[p][1] for p in f["paths"] if isinstance(where[p][1], str)}
            else:
                assert got_splits == {f["details"]["split"]} if "split" in f["details"] else not got_splits


def test_same_report_same_bytes(demo):
    report, table, html = demo
    assert _render(report, table) == _render(copy.deepcopy(report), table.copy())

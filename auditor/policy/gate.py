"""The pre-training gate: pass/fail a dataset against a rules file, for pipelines.

:func:`gate` scans (through the cache, so a rerun is cheap) or re-judges an existing
``report.json``, and returns a :class:`GateResult`; :func:`junit_xml` and
:func:`github_annotations` turn it into what CI systems read. Exit codes (``audit gate``):
0 passed, 1 failed, 2 usage or input error.
"""

from __future__ import annotations

import json
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from auditor.core.findings import Finding, jsonable
from auditor.core.fsutil import printable
from auditor.policy.rules import SEVERITIES, Rules, RulesError, apply_severities, judge, short_repr


class GateFailed(RuntimeError):
    """Raised by ``gate(..., raise_on_fail=True)`` when an error-level rule fails; the
    :class:`GateResult` is in ``.result``."""

    def __init__(self, result: GateResult):
        self.result = result
        names = ", ".join(r["rule"] for r in result.failures)
        super().__init__(f"dataset failed the gate: {names} (report: {result.report_path or 'not written'})")


@dataclass
class GateResult:
    """``passed``; ``failures`` and ``warnings``: the gate entries (rule, severity, status,
    value, threshold, fraction, max_fraction) with status fail / warn, plus ``examples``
    (the first finding messages); ``report_path``: the report.json judged or written."""

    passed: bool
    failures: list[dict]
    warnings: list[dict]
    report: dict
    report_path: Path | None = None
    scan: Any = field(default=None, repr=False)  # auditor.pipeline.api.ScanResult when the gate scanned

    def __bool__(self) -> bool:
        return self.passed


def _example(f: dict, paths: int = 3) -> str:
    """A finding in one line: its message and the first paths it names (if the message does not)."""
    shown = [p for p in f["paths"][:paths] if p not in f["message"]]
    more = f" (+{len(f['paths']) - paths} more)" if len(f["paths"]) > paths else ""
    return f["message"] + (f": {', '.join(shown)}{more}" if shown else "")


def gate_result(report: dict, report_path: Path | None, scan: Any = None, examples: int = 3) -> GateResult:
    by_check: dict[str, list[dict]] = {}
    for f in report["findings"]:
        by_check.setdefault(f["check"], []).append(f)

    def with_examples(e: dict) -> dict:
        fs = sorted(by_check.get(e["rule"], []), key=lambda f: -f["score"])
        return {**e, "examples": [_example(f) for f in fs[:examples]]}

    rules = report["gate"]["rules"]
    return GateResult(
        passed=bool(report["gate"]["passed"]),
        failures=[with_examples(e) for e in rules if e["status"] == "fail"],
        warnings=[with_examples(e) for e in rules if e["status"] == "warn"],
        report=report, report_path=report_path, scan=scan,
    )  # fmt: skip


def rejudge(report: dict, rules: Rules) -> dict:
    """The report with its severities and gate recomputed under ``rules`` (severity, enabled
    and gate limits). Findings of checks the rules disable are dropped. Raises
    :class:`ReportError` when the rules would judge something the scan did not measure: a
    check enabled now that was disabled (or unknown) in the scan, or different ``params``
    (they decide what is a finding): rescan instead."""
    ran = report.get("checks", {})
    for name, rule in rules.checks.items():
        if not rule.enabled:
            continue
        info = ran.get(name)
        if not info or not info.get("enabled"):
            raise ReportError(f"{rules.source}: {name} is enabled but did not run in this report; rescan")
        if "params" in info and (info["params"] or {}) != jsonable(rule.params):
            raise ReportError(f"{rules.source}: {name}.params differ from the scan's ({short_repr(info['params'])}); "
                              "rescan")  # fmt: skip
    findings = [
        Finding(f["check"], f["paths"], f["score"], f["message"], f.get("details") or {})
        for f in report["findings"]
        if f["check"] in rules.checks and rules.checks[f["check"]].enabled
    ]
    apply_severities(findings, rules)
    out = dict(report)
    out["findings"] = [f.to_dict() for f in findings]
    out["gate"] = judge(findings, rules, int(report["dataset"]["images"]))
    out["rules"] = {"source": rules.source}
    return out


class ReportError(ValueError):
    """A --from-report file that is not an image-auditor report (exit code 2)."""


def load_report(path: str | os.PathLike) -> dict:
    """Read a report.json and check it against the parts of the report contract the gate
    reads (:func:`check_report`); FileNotFoundError or :class:`ReportError` with a one-line
    reason that names the first bad JSON path."""
    p = Path(path)
    try:
        report = json.loads(p.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise FileNotFoundError(f"{p}: no such report") from None
    except RecursionError:
        raise ReportError(f"{p}: nested too deeply to be a report.json") from None
    except (OSError, ValueError) as exc:
        raise ReportError(f"{p}: not a readable report.json ({exc})") from None
    if not isinstance(report, dict) or not str(report.get("schema", "")).startswith("auditor.report/"):
        raise ReportError(f"{p}: not an image-auditor report (no 'schema: auditor.report/...')")
    problem = check_report(report)
    if problem:
        raise ReportError(f"{p}: {problem}")
    return report


_STATUSES = ("pass", "warn", "fail")
_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]{0,63}")


def _kind(value: Any) -> str:
    """A JSON value's type in JSON's words."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, (int, float)):
        return "a number"
    return {str: "a string", list: "an array", dict: "an object"}.get(type(value), type(value).__name__)


def _member(where: str, key: str) -> str:
    return f"{where}.{key}" if _NAME.fullmatch(key) else f"{where}[{short_repr(key, 60)}]"


class _Bad(Exception):
    """The first departure from the contract: ``JSON path: expected ...``."""


def _field(obj: dict, key: str, where: str, test, expected: str, optional: bool = False):
    """``obj[key]`` when ``test`` accepts it (a missing key: None if ``optional``)."""
    path = _member(where, key)
    if key not in obj:
        if optional:
            return None
        raise _Bad(f"{path}: missing (incomplete report; expected {expected})")
    value = obj[key]
    if not test(value):
        raise _Bad(f"{path}: expected {expected}, got {_kind(value)} {short_repr(value, 60)}")
    return value


def _is_int(v) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _is_number(v) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


def _is_count(v) -> bool:
    return _is_int(v) and v >= 0


def _objects(items: list, where: str):
    for i, item in enumerate(items):
        if not isinstance(item, dict):
            raise _Bad(f"{where}[{i}]: expected an object, got {_kind(item)}")
        yield f"{where}[{i}]", item


def check_report(report: dict) -> str | None:
    """The first way ``report`` departs from what the gate reads of the report contract
    (``dataset.images``, ``checks``, ``findings``, ``gate``), as ``JSON path: expected ...``;
    None when it is fine. ``gate.passed`` must agree with ``gate.rules``: a report that says
    it passed with a failing rule must not turn into exit 0."""
    try:
        dataset = _field(report, "dataset", "$", lambda v: isinstance(v, dict), "an object")
        _field(dataset, "images", "$.dataset", _is_count, "a count of images (>= 0)")
        checks = _field(report, "checks", "$", lambda v: isinstance(v, dict), "an object")
        for name, info in checks.items():
            where = _member("$.checks", name)
            if not isinstance(info, dict):
                raise _Bad(f"{where}: expected an object, got {_kind(info)}")
            _field(info, "enabled", where, lambda v: isinstance(v, bool), "true or false")
            _field(info, "params", where, lambda v: v is None or isinstance(v, dict), "an object", optional=True)
            _field(info, "skipped", where, lambda v: v is None or isinstance(v, str), "a string", optional=True)
        findings = _field(report, "findings", "$", lambda v: isinstance(v, list), "an array")
        for where, f in _objects(findings, "$.findings"):
            _field(f, "check", where, lambda v: isinstance(v, str), "a check name")
            _field(f, "paths", where, lambda v: isinstance(v, list) and all(isinstance(x, str) for x in v),
                   "an array of paths")  # fmt: skip
            _field(f, "score", where, _is_number, "a number")
            _field(f, "message", where, lambda v: isinstance(v, str), "a string")
            _field(f, "severity", where, lambda v: v in SEVERITIES, " or ".join(SEVERITIES), optional=True)
            _field(f, "details", where, lambda v: v is None or isinstance(v, dict), "an object", optional=True)
        gate = _field(report, "gate", "$", lambda v: isinstance(v, dict), "an object")
        passed = _field(gate, "passed", "$.gate", lambda v: isinstance(v, bool), "true or false")
        entries = _field(gate, "rules", "$.gate", lambda v: isinstance(v, list), "an array")
        failed = None
        for where, e in _objects(entries, "$.gate.rules"):
            _field(e, "rule", where, lambda v: isinstance(v, str), "a check name")
            _field(e, "severity", where, lambda v: v in SEVERITIES, " or ".join(SEVERITIES))
            if _field(e, "status", where, lambda v: v in _STATUSES, " or ".join(_STATUSES)) == "fail":
                failed = failed or where
            _field(e, "value", where, _is_count, "a count of findings (>= 0)")
            _field(e, "threshold", where, lambda v: v is None or _is_count(v), "a count or null")
            _field(e, "fraction", where, _is_number, "a number")
            _field(e, "max_fraction", where, lambda v: v is None or _is_number(v), "a number or null")
        if passed and failed:
            raise _Bad(f"$.gate.passed: true, but {failed} failed")
        if not passed and not failed:
            raise _Bad("$.gate.passed: false, but no rule in $.gate.rules failed")
    except _Bad as bad:
        return str(bad)
    return None


def _describe(entry: dict) -> str:
    allowed = []
    if entry.get("threshold") is not None:
        allowed.append(f"at most {entry['threshold']} findings")
    if entry.get("max_fraction") is not None:
        allowed.append(f"at most {entry['max_fraction']:.1%} of images")
    text = f"{entry['value']} findings, {entry['fraction']:.1%} of images flagged (allowed: {' and '.join(allowed)})"
    if entry.get("examples"):
        text += "; " + "; ".join(entry["examples"])
    return text


_XML_FORBIDDEN = re.compile("[\x00-\x08\x0b\x0c\x0e-\x1f\ufffe\uffff\ud800-\udfff]")


def _xml_text(s: str) -> str:
    """Text with the characters XML 1.0 cannot hold written as \\xNN (file names may have them)."""
    return _XML_FORBIDDEN.sub(lambda m: f"\\x{ord(m.group()):02x}", s)


def junit_xml(result: GateResult) -> str:
    """A JUnit XML document with one test case per enabled rule: ``failure`` for a failed
    rule, passed (with the numbers in ``system-out``) otherwise, ``skipped`` for a check
    that could not run. GitLab, Jenkins and GitHub test reporters read it."""
    import xml.etree.ElementTree as ET

    checks = result.report.get("checks", {})
    entries = result.report["gate"]["rules"]
    suite = ET.Element("testsuite", {
        "name": "image-auditor gate", "tests": str(len(entries)),
        "failures": str(sum(e["status"] == "fail" for e in entries)),
        "skipped": str(sum(bool(checks.get(e["rule"], {}).get("skipped")) and e["status"] == "pass" for e in entries)),
        "errors": "0",
    })  # fmt: skip
    for e in entries:
        case = ET.SubElement(suite, "testcase", {"classname": "image-auditor", "name": e["rule"]})
        skipped = checks.get(e["rule"], {}).get("skipped")
        detailed = _xml_text(_describe({**e, "examples": _examples(result, e["rule"])}))
        if e["status"] == "fail":
            ET.SubElement(case, "failure", {"message": f"{e['rule']}: {e['value']} findings",
                                            "type": e["severity"]}).text = detailed  # fmt: skip
        elif skipped and e["status"] == "pass":
            ET.SubElement(case, "skipped", {"message": _xml_text(skipped)})
        else:
            ET.SubElement(case, "system-out").text = f"{e['status']}: {detailed}"
    root = ET.Element("testsuites")
    root.append(suite)
    ET.indent(root)
    return '<?xml version="1.0" encoding="UTF-8"?>\n' + ET.tostring(root, encoding="unicode") + "\n"


def _examples(result: GateResult, rule: str) -> list[str]:
    for e in result.failures + result.warnings:
        if e["rule"] == rule:
            return e["examples"]
    return []


def _escape_data(s: str) -> str:
    s = s.replace("%", "%25").replace("\r", "%0D").replace("\n", "%0A")
    s = re.sub("[\x00-\x1f\x7f]", lambda m: f"%{ord(m.group()):02X}", s)  # no raw ESC sequences
    return printable(s)  # nor C1 or bidirectional controls (the log is shown on a terminal)


def _escape_property(s: str) -> str:
    return _escape_data(s).replace(":", "%3A").replace(",", "%2C")


#: GitHub shows about 10 annotations of each level per step; the rest would vanish silently.
MAX_ANNOTATIONS = 10


def github_annotations(result: GateResult, limit: int = MAX_ANNOTATIONS) -> list[str]:
    """GitHub Actions workflow commands: ``::error`` per failed rule, ``::warning`` per rule
    over its limit at warning level (values escaped as GitHub requires), at most ``limit``
    of each, then one line that says how many more there are and where the report is."""
    lines = []
    for level, entries in (("error", result.failures), ("warning", result.warnings)):
        for e in entries[:limit]:
            title = _escape_property(f"image-auditor {e['rule']}")
            lines.append(f"::{level} title={title}::{_escape_data(_describe(e))}")
        if len(entries) > limit:
            more = f"{len(entries) - limit} more {level} rules; see {result.report_path or 'the report'}"
            lines.append(f"::{level} title=image-auditor::{_escape_data(more)}")
    return lines


__all__ = ["GateFailed", "GateResult", "ReportError", "github_annotations", "junit_xml", "rejudge",
           "RulesError"]  # fmt: skip

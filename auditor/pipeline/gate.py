"""``auditor.gate``: judge a dataset against the rules, scanning it (reused when nothing
changed) or reading an existing report.json."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from auditor.pipeline.scan import scan
from auditor.policy.gate import GateFailed, GateResult, gate_result, load_report, rejudge
from auditor.policy.rules import Rules, load_rules


def gate(
    dataset: str | os.PathLike | None = None,
    *,
    rules: str | os.PathLike | Rules | None = None,
    source: str | os.PathLike | None = None,
    from_report: str | os.PathLike | None = None,
    out: str | os.PathLike | None = None,
    raise_on_fail: bool = False,
    **scan_options: Any,
) -> GateResult:
    """Judge a dataset against ``rules`` (a preset name, a file, or :class:`Rules`; default
    ``default``) and return a :class:`GateResult` (truthy when it passed).

    With ``dataset``: scans it (:func:`auditor.scan`: cached, and reused whole when nothing
    changed; ``source`` and every scan option pass through) and writes the report to ``out``
    (default ``reports/<dataset-name>/``). With ``from_report``: judges that report.json without
    scanning (under ``rules`` if given, else as recorded). ``raise_on_fail=True`` raises
    :class:`GateFailed` instead of returning a failed result.
    """
    if (dataset is None) == (from_report is None):
        raise ValueError("give either a dataset to scan or from_report=report.json")
    if from_report is not None:
        report = load_report(from_report)
        if rules is not None:
            report = rejudge(report, rules if isinstance(rules, Rules) else load_rules(rules))
        result = gate_result(report, Path(from_report))
    else:
        # a rules name or path, not the loaded object: the scan is reused when nothing changed
        scanned = scan(dataset, out, rules=rules, source=source, **scan_options)
        result = gate_result(scanned.report, scanned.files.get("json"), scanned)
    if raise_on_fail and not result.passed:
        raise GateFailed(result)
    return result

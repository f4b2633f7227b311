"""Checks: functions from tables to findings, registered under stable names.

A check never prints and never decides severity: it receives its thresholds (``params``)
from the rules file and returns :class:`Finding` objects; :mod:`auditor.policy.rules` assigns the
severity and judges the gate. Adding a check = one function here, one rules entry, one
report section, tests.

The package: :mod:`.context` (what checks read), :mod:`.registry` (``register``), one module
per family, :mod:`.catalog` (``load_all``); :class:`auditor.core.findings.Finding` is what
they return.
"""

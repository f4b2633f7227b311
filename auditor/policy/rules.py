"""Policy: load and validate rules YAML, assign severities, judge the gate.

All thresholds and severities live in rules files (``rules/default.yaml`` and presets);
this module is the one place that applies them. A rules file::

    schema: auditor.rules/1
    extends: default            # optional: a preset name or a path, merged key by key
    settings:
      min_images_for_relative: 20
    checks:
      blurry:
        severity: warning       # info | warning | error
        enabled: true           # optional
        params: {robust_z: 3.5, ...}
        gate: {max_count: 0, max_fraction: 0.05}   # optional; both optional

Every problem (unknown check, unknown key, wrong type, missing field) raises
:class:`RulesError` naming the file, the key and what was expected (exit code 2). A value is
quoted in a message only in part (:func:`short_repr`), and a file whose YAML aliases expand
to more than :data:`MAX_VALUES` values is refused when read: a few lines of aliases can
stand for billions of values (a "billion laughs"), which only cost memory once something
walks or prints them.
"""

from __future__ import annotations

import copy
import reprlib
from importlib import resources
from pathlib import Path
from typing import TYPE_CHECKING, Any

import yaml

from auditor.core.constraints import BOOLEAN, COUNT, FRACTION, Int, choices
from auditor.core.types import CheckRule, Rules, RulesError

#: libyaml's safe loader when PyYAML was built with it (5x faster), else the Python one.
_YAML_LOADER = getattr(yaml, "CSafeLoader", yaml.SafeLoader)

if TYPE_CHECKING:  # the checks (and pandas) load when rules are validated, not on import
    from auditor.core.findings import Finding


SCHEMA = "auditor.rules/1"
SEVERITIES = ("info", "warning", "error")
PRESETS = ("default", "strict", "lenient")
_SETTINGS = {"min_images_for_relative": Int(2), "min_images_per_peer_class": Int(2)}
_GATE_KEYS = {"max_count": COUNT, "max_fraction": FRACTION}
_TOP_KEYS = {"schema", "extends", "description", "settings", "checks", "clean", "diagnosis"}
CLEAN_ACTIONS = ("keep", "drop", "quarantine", "keep_one", "drop_from_eval", "quarantine_confident", "clip")
EVAL_LABEL_ISSUE_ACTIONS = ("keep", "same")
#: The keys of the ``clean`` section; their defaults are those of ``rules/default.yaml`` (no
#: copy in code): a rules file without ``extends`` that leaves them out gets those.
CLEAN_KEYS = ("label_issue_min_score", "eval_label_issues", "actions")
_CHECK_KEYS = {"severity", "enabled", "params", "gate", "description"}
#: Values (keys, items, scalars) a rules file may hold with its YAML aliases expanded; the
#: presets hold about 500.
MAX_VALUES = 100_000

_REPR = reprlib.Repr()
_REPR.maxlevel, _REPR.maxlist, _REPR.maxtuple, _REPR.maxdict = 3, 6, 6, 6
_REPR.maxstring, _REPR.maxother, _REPR.maxlong = 60, 60, 40


def short_repr(value: Any, limit: int = 120) -> str:
    """``repr(value)`` cut short (nesting, items, long strings): for messages about input of
    any size."""
    text = _REPR.repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def preset_path(name: str) -> Path:
    """Path of a bundled preset (``default``, ``strict``, ``lenient``)."""
    try:
        base = resources.files("auditor.presets")
        p = Path(str(base.joinpath(f"{name}.yaml")))
        if p.exists():
            return p
    except ModuleNotFoundError:
        pass
    return Path(__file__).resolve().parents[2] / "rules" / f"{name}.yaml"


def _read_yaml(path: Path) -> dict:
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise RulesError(f"{path}: cannot read rules file: {exc.strerror or exc}") from exc
    try:
        data = yaml.load(text, Loader=_YAML_LOADER)  # safe: plain data types only
    except yaml.YAMLError as exc:
        raise RulesError(f"{path}: not valid YAML: {exc}") from exc
    if not isinstance(data, dict):
        raise RulesError(f"{path}: expected a mapping at the top level")
    _bounded(data, path)
    return data


def _bounded(data: Any, path: Path) -> None:
    """RulesError when ``data`` holds more than :data:`MAX_VALUES` values with its YAML
    aliases expanded (a cycle never ends, so it is caught too). Stops counting at the limit:
    the walk costs at most MAX_VALUES steps whatever the file."""
    left, todo = MAX_VALUES, [data]
    while todo:
        node = todo.pop()
        left -= 1
        if left < 0:
            raise RulesError(f"{path}: more than {MAX_VALUES} values once its YAML aliases (*name) are expanded; "
                             "a rules file does not need that many: write the values out")  # fmt: skip
        if isinstance(node, dict):
            todo.extend(node.keys())
            todo.extend(node.values())
        elif isinstance(node, list):
            todo.extend(node)


def _merge(base: dict, override: dict) -> dict:
    out = copy.deepcopy(base)
    for k, v in override.items():
        if isinstance(v, dict) and isinstance(out.get(k), dict):
            out[k] = _merge(out[k], v)
        else:
            out[k] = copy.deepcopy(v)
    return out


def _chain(path: Path) -> list[tuple[Path, dict]]:
    """The rules file and every file it ``extends``, nearest first, each parsed."""
    chain: list[tuple[Path, dict]] = []
    while True:
        if path.resolve() in [p.resolve() for p, _ in chain]:
            raise RulesError(f"{path}: 'extends' forms a cycle")
        data = _read_yaml(path)
        chain.append((path, data))
        parent = data.get("extends")
        if parent is None:
            return chain
        if not isinstance(parent, str):
            raise RulesError(f"{path}: 'extends' must be a preset name or a file path")
        ppath = preset_path(parent) if parent in PRESETS else (path.parent / parent)
        if not ppath.is_file():
            raise RulesError(f"{path}: extends: {short_repr(parent)} is neither a preset ({', '.join(PRESETS)}) "
                             f"nor a file ({ppath})")  # fmt: skip
        path = ppath


def _resolve(path: Path) -> dict:
    merged: dict = {}
    for _, data in reversed(_chain(path)):  # the base first, each file over what it extends
        merged = _merge(merged, {k: v for k, v in data.items() if k != "extends"})
    return merged


def _check_type(src: str, key: str, value: Any, expected) -> None:
    """RulesError naming ``src`` and ``key`` unless ``value`` meets the constraint ``expected``
    (:mod:`auditor.core.constraints`: a type with its range, or the choices)."""
    problem = expected.problem(value)
    if problem:
        raise RulesError(f"{src}: {key}: {problem}, got {short_repr(value)}")


def validate(data: dict, src: str) -> Rules:
    """Turn a parsed (and merged) rules mapping into :class:`Rules`, or raise RulesError."""
    from auditor.checks.catalog import load_all

    registry = load_all()
    unknown = set(data) - _TOP_KEYS
    if unknown:
        first = sorted(map(str, unknown))[0]
        raise RulesError(f"{src}: unknown top-level key {short_repr(first)}; expected {sorted(_TOP_KEYS)}")
    if data.get("schema", SCHEMA) != SCHEMA:
        raise RulesError(f"{src}: schema: expected {SCHEMA!r}, got {short_repr(data.get('schema'))}")
    settings = data.get("settings") or {}
    if not isinstance(settings, dict):
        raise RulesError(f"{src}: settings: expected a mapping")
    for key, expected in _SETTINGS.items():
        if key not in settings:
            raise RulesError(f"{src}: settings.{key}: missing (expected {expected})")
        _check_type(src, f"settings.{key}", settings[key], expected)
    for key in settings:
        if key not in _SETTINGS:
            raise RulesError(f"{src}: settings.{key}: unknown setting; expected {sorted(_SETTINGS)}")
    checks = data.get("checks")
    if not isinstance(checks, dict):
        raise RulesError(f"{src}: checks: expected a mapping of check name -> rule")
    rules = Rules(source=src, settings=dict(settings))
    for name, entry in checks.items():
        if name not in registry:
            raise RulesError(f"{src}: checks.{name}: unknown check; known checks: {', '.join(sorted(registry))}")
        where = f"checks.{name}"
        if not isinstance(entry, dict):
            raise RulesError(f"{src}: {where}: expected a mapping")
        bad = set(entry) - _CHECK_KEYS
        if bad:
            raise RulesError(f"{src}: {where}.{sorted(bad)[0]}: unknown key; expected {sorted(_CHECK_KEYS)}")
        sev = entry.get("severity")
        if sev not in SEVERITIES:
            raise RulesError(f"{src}: {where}.severity: expected one of {', '.join(SEVERITIES)}, got {short_repr(sev)}")
        enabled = entry.get("enabled", True)
        _check_type(src, f"{where}.enabled", enabled, BOOLEAN)
        params = entry.get("params") or {}
        if not isinstance(params, dict):
            raise RulesError(f"{src}: {where}.params: expected a mapping")
        spec = registry[name].params
        for p, expected in spec.items():
            if p not in params:
                raise RulesError(f"{src}: {where}.params.{p}: missing (expected {expected})")
            _check_type(src, f"{where}.params.{p}", params[p], expected)
        for p in params:
            if p not in spec:
                raise RulesError(f"{src}: {where}.params.{p}: unknown parameter; expected {sorted(spec) or 'none'}")
        gate = entry.get("gate") or {}
        if not isinstance(gate, dict):
            raise RulesError(f"{src}: {where}.gate: expected a mapping")
        for g, v in gate.items():
            if g not in _GATE_KEYS:
                raise RulesError(f"{src}: {where}.gate.{g}: unknown key; expected {sorted(_GATE_KEYS)}")
            if v is None:  # null clears a limit inherited through `extends`
                continue
            _check_type(src, f"{where}.gate.{g}", v, _GATE_KEYS[g])
        rules.checks[name] = CheckRule(
            name, sev, dict(params), enabled, gate.get("max_count"), gate.get("max_fraction")
        )
    rules.clean = _validate_clean(data.get("clean"), src, registry)
    rules.diagnosis = _validate_diagnosis(data.get("diagnosis"), src)
    missing = [n for n in registry if n not in rules.checks]
    if missing:
        raise RulesError(f"{src}: checks.{missing[0]}: missing (every check needs a rule; "
                         f"write 'enabled: false' to turn one off)")  # fmt: skip
    return rules


def _validate_clean(section: Any, src: str, registry: dict) -> dict:
    """The ``clean`` policy: ``actions`` (check -> action), ``label_issue_min_score`` and
    ``eval_label_issues``; what the section leaves out comes from ``rules/default.yaml``."""
    section = {} if section is None else section
    if not isinstance(section, dict):
        raise RulesError(f"{src}: clean: expected a mapping with 'actions' and 'label_issue_min_score'")
    for key in section:
        if key not in CLEAN_KEYS:
            raise RulesError(f"{src}: clean.{key}: unknown key; expected {sorted(CLEAN_KEYS)}")
    if all(key in section for key in CLEAN_KEYS):
        out = {}
    else:
        default = preset_path("default")
        out = copy.deepcopy(_resolve(default).get("clean") or {})
        if not all(key in out for key in CLEAN_KEYS):
            raise RulesError(f"{default}: clean: expected every one of {list(CLEAN_KEYS)}")
    score = section.get("label_issue_min_score", out.get("label_issue_min_score"))
    _check_type(src, "clean.label_issue_min_score", score, FRACTION)
    out["label_issue_min_score"] = float(score)
    ev = section.get("eval_label_issues", out.get("eval_label_issues"))
    _check_type(src, "clean.eval_label_issues", ev, choices(*EVAL_LABEL_ISSUE_ACTIONS))
    out["eval_label_issues"] = ev
    actions = section.get("actions", out.get("actions"))
    if not isinstance(actions, dict):
        raise RulesError(f"{src}: clean.actions: expected a mapping of check name -> action")
    for name, act in actions.items():
        if name not in registry:
            raise RulesError(f"{src}: clean.actions.{name}: unknown check")
        _check_type(src, f"clean.actions.{short_repr(name)}", act, choices(*CLEAN_ACTIONS))
    out["actions"] = dict(actions)
    return out


def _validate_diagnosis(section: Any, src: str) -> dict:
    """The ``diagnosis`` thresholds (:data:`auditor.policy.diagnosis.DIAGNOSIS_PARAMS`); what the
    section leaves out comes from ``rules/default.yaml``."""
    from auditor.policy.diagnosis import DIAGNOSIS_PARAMS

    section = {} if section is None else section
    if not isinstance(section, dict):
        raise RulesError(f"{src}: diagnosis: expected a mapping of threshold -> value")
    for key in section:
        if key not in DIAGNOSIS_PARAMS:
            raise RulesError(f"{src}: diagnosis.{short_repr(key)}: unknown key; expected {sorted(DIAGNOSIS_PARAMS)}")
    out = {}
    if not all(key in section for key in DIAGNOSIS_PARAMS):
        default = preset_path("default")
        out = dict(_resolve(default).get("diagnosis") or {})
    out.update(section)
    for key, expected in DIAGNOSIS_PARAMS.items():
        if key not in out:
            raise RulesError(f"{src}: diagnosis.{key}: missing (expected {expected})")
        _check_type(src, f"diagnosis.{key}", out[key], expected)
    return out


def _rules_path(path: str | Path | None) -> Path:
    return preset_path(path or "default") if path is None or isinstance(path, str) and path in PRESETS else Path(path)


def load_rules(path: str | Path | None = None) -> Rules:
    """Load a rules file (None -> the bundled default; a preset name also works)."""
    p = _rules_path(path)
    return validate(_resolve(p), str(p))


def rules_files(path: str | Path | None = None) -> list[Path]:
    """The files :func:`load_rules` reads for ``path``: it and every file it ``extends``
    (presets included). RulesError when one is missing or invalid, as load_rules."""
    return [p for p, _ in _chain(_rules_path(path))]


def apply_severities(findings: list[Finding], rules: Rules) -> list[Finding]:
    for f in findings:
        f.severity = rules.checks[f.check].severity
    return findings


def judge(findings: list[Finding], rules: Rules, n_images: int) -> dict:
    """The gate: one entry per enabled check. A check fails the gate when its severity is
    ``error`` and its findings exceed ``max_count`` (default 0) or its flagged images
    exceed ``max_fraction`` of the dataset; a ``warning`` check that exceeds is ``warn``.
    Dataset-level findings about a property of the whole dataset (``details.scope ==
    "dataset"``) are not counted."""
    by_check: dict[str, list[Finding]] = {}
    for f in findings:
        # a property of the whole dataset (every image 28 px, near-binary ink) is reported,
        # not counted: the gate judges defects of images
        if (f.details or {}).get("scope") == "dataset":
            continue
        by_check.setdefault(f.check, []).append(f)
    entries = []
    for name, rule in rules.checks.items():
        if not rule.enabled:
            continue
        fs = by_check.get(name, [])
        count = len(fs)
        flagged = len({p for f in fs for p in f.paths})
        fraction = flagged / n_images if n_images else 0.0
        max_count = rule.max_count if rule.max_count is not None else (0 if rule.max_fraction is None else None)
        exceeded = (max_count is not None and count > max_count) or (
            rule.max_fraction is not None and fraction > rule.max_fraction
        )
        status = "pass"
        if exceeded:
            status = {"error": "fail", "warning": "warn"}.get(rule.severity, "pass")
        entries.append({
            "rule": name, "severity": rule.severity, "status": status, "value": count,
            "threshold": max_count, "fraction": round(fraction, 6), "max_fraction": rule.max_fraction,
        })  # fmt: skip
    order = {"fail": 0, "warn": 1, "pass": 2}
    entries.sort(key=lambda e: (order[e["status"]], e["rule"]))
    return {"passed": not any(e["status"] == "fail" for e in entries), "rules": entries}

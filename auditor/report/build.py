"""``report.json``'s sections, built from the scan's table, findings and analysis results.

:func:`build_report` assembles the whole document; each section has its builder here, reading
the plain results of :mod:`auditor.analysis` (shift, pretraining gap) and of the checks (boxes),
so that ``report.html`` can be drawn again from ``report.json`` alone.
"""

from __future__ import annotations

import shlex
from typing import Any

import numpy as np
import pandas as pd

from auditor.analysis.labels import PROBABILITY_PARAMS, noise_by_split
from auditor.analysis.shift import (
    Pair,
    analyse,
    analysis_params,
    dataset_gap,
    explanations,
    gap_level,
    pairs,
    rule_params,
    verdict,
)
from auditor.checks.boxes import box_summary
from auditor.checks.catalog import load_all
from auditor.core.context import CheckContext
from auditor.core.findings import Finding, jsonable
from auditor.core.types import Discovery, Rules
from auditor.core.version import __version__
from auditor.policy.diagnosis import diagnose
from auditor.policy.rules import judge


def dataset_summary(disc: Discovery, table: pd.DataFrame) -> dict:
    labels = sorted({x for x in table["label"] if isinstance(x, str)})
    splits = {str(k): int(v) for k, v in table["split"].dropna().value_counts().sort_index().items()}
    return {
        "root": str(disc.root.resolve()),
        "images": int(len(table)),
        "unreadable": int((~table["ok"]).sum()),
        "classes": labels,
        "splits": splits,
        "layout": disc.layout,
        "skipped": dict(sorted(disc.skipped.items())),
    }


def backbone_summary(embeddings: Any) -> dict | None:
    """The report's ``backbone`` section: what embedded the images (no run-dependent counts,
    so a cached rescan writes the same report)."""
    if embeddings is None:
        return None
    return {**embeddings.backbone, "embedded": len(embeddings.hashes), "failed": len(embeddings.failures)}


def build_report(
    disc: Discovery,
    table: pd.DataFrame,
    findings: list[Finding],
    rules: Rules,
    embeddings: Any = None,
    ctx: CheckContext | None = None,
    source: Discovery | None = None,
) -> dict:
    registry = load_all()
    counts: dict[str, int] = {}
    for f in findings:
        counts[f.check] = counts.get(f.check, 0) + 1
    report = {
        "schema": "auditor.report/1",
        "tool": {"name": "image-auditor", "version": __version__},
        "dataset": dataset_summary(disc, table),
        "backbone": backbone_summary(embeddings),
        "rules": {"source": rules.source},
        "checks": {
            name: {
                "enabled": rules.checks[name].enabled,
                "severity": rules.checks[name].severity,
                "findings": counts.get(name, 0),
                "skipped": ctx.skipped.get(name) if ctx is not None else None,
                "note": ctx.notes.get(name) if ctx is not None else None,
                "params": jsonable(rules.checks[name].params),
            }
            for name in registry
        },  # fmt: skip
        "findings": finding_dicts(findings),
        "source": dataset_summary(source, ctx.reference) if source is not None and ctx is not None else None,
        "shift": jsonable(shift_section(ctx)) if ctx is not None else [],
        "pretraining_gap": jsonable(pretraining_section(ctx, rules)) if ctx is not None else None,
        "label_noise": label_noise_section(ctx, rules) if ctx is not None else None,
        "projection": None,
        "boxes": jsonable(box_summary(ctx)) if ctx is not None else None,
        "gate": judge(findings, rules, int(len(table))),
    }
    ranked, summary = diagnose(report, table, rules.diagnosis, dataset=shlex.quote(str(disc.root)))
    report["diagnosis"] = jsonable(ranked)
    report["diagnosis_summary"] = summary
    return report


def label_noise_section(ctx: CheckContext, rules: Rules) -> dict | None:
    """The report's ``label_noise`` section (:func:`auditor.analysis.labels.noise_by_split`) when
    ``label_issue`` computed its probabilities in this scan."""
    params = rules.checks["label_issue"].params
    got = ctx.analyses.labels.get(tuple(params[k] for k in PROBABILITY_PARAMS))
    return jsonable(noise_by_split(got))


class _FindingEntry:
    """Holds one finding's report entry as attributes; the entry is its ``__dict__``.

    CPython keeps the attribute dicts of one class's instances with one key table shared by
    all of them (PEP 412): 144 bytes a finding instead of 272 for a dict of six keys of its
    own, 130 MB less for a million findings. The dict is an ordinary ``dict`` in every way
    (its keys in this order, JSON, equality, copies); elsewhere it only costs the usual size.
    """


def finding_dicts(findings: list[Finding]) -> list[dict]:
    """``[f.to_dict() for f in findings]``, the report's ``findings``, at less memory: each
    entry shares its key table with the others (:class:`_FindingEntry`) and holds its
    finding's list of paths (not a copy); the findings that share a ``details`` dict (a
    million missing manifest rows share one) share its JSON-plain copy, and equal scores
    share one float."""
    details_of: dict[int, tuple[dict, dict]] = {}  # id(details) -> (details, its plain copy), a few recent
    score_of: dict[float, float] = {}
    out = []
    for f in findings:
        got = details_of.get(id(f.details))
        if got is None or got[0] is not f.details:
            if len(details_of) >= 64:
                details_of.clear()
            got = details_of[id(f.details)] = (f.details, jsonable(f.details))
        score = float(round(float(f.score), 6))
        if score:  # not 0.0 and -0.0, which are equal but written apart
            if len(score_of) >= 64:
                score_of.clear()
            score = score_of.setdefault(score, score)
        entry = _FindingEntry()
        entry.check = f.check  # in to_dict's order: the report's key order
        entry.severity = f.severity
        entry.paths = f.paths if type(f.paths) is list else list(f.paths)  # the finding's own list: not copied
        entry.score = score
        entry.message = f.message
        entry.details = got[1]
        out.append(entry.__dict__)
    return out


def pretraining_section(ctx: CheckContext, rules: Rules) -> dict | None:
    """The report's ``pretraining_gap`` section: the measures and the level under the rule's
    bands (None without embeddings that record them)."""
    gap = dataset_gap(ctx)
    if gap is None:
        return None
    rule = rules.checks["pretraining_gap"]
    return {**gap, "level": gap_level(gap, rule.params) if gap["images"] >= rule.params["min_images"] else None}


#: Per shift entry, the report draws overlaid histograms of the numeric properties that differ
#: most (report.json keeps the bins, so that report.html can be drawn again from it alone).
MAX_HISTOGRAMS = 4


HIST_BINS = 24


def property_histograms(pair: Pair, properties: list[dict]) -> list[dict]:
    """Reference and target histograms (shares per bin, 4 decimals; common bins between the
    0.5% and 99.5% quantiles of both sides, log10 where the property is read on a log scale)
    of the first :data:`MAX_HISTOGRAMS` numeric ``properties`` (most different first)."""
    from auditor.analysis.explain import PROPERTIES

    by_name = {p.name: p for p in PROPERTIES}
    out = []
    for prop in [p for p in properties if p["kind"] == "numeric"][:MAX_HISTOGRAMS]:
        spec = by_name[prop["property"]]
        r = spec.values(pair.ref_rows).dropna().to_numpy(float)
        t = spec.values(pair.tgt_rows).dropna().to_numpy(float)
        if spec.log:
            r, t = np.log10(r[r > 0]), np.log10(t[t > 0])
        both = np.concatenate([r, t])
        if len(r) < 2 or len(t) < 2 or not np.isfinite(both).all():
            continue
        lo, hi = (float(x) for x in np.quantile(both, [0.005, 0.995]))
        if hi <= lo:
            lo, hi = lo - 0.5, hi + 0.5
        edges = np.linspace(lo, hi, HIST_BINS + 1)
        shares = [np.histogram(np.clip(x, lo, hi), edges)[0] / len(x) for x in (r, t)]
        unit = f" (log10 {spec.unit})" if spec.log and spec.unit else (" (log10)" if spec.log else "")
        out.append({"property": spec.name, "title": spec.title + unit, "ks": prop["statistic"], "lo": lo, "hi": hi,
                    "reference": [round(float(v), 4) for v in shares[0]],
                    "target": [round(float(v), 4) for v in shares[1]]})  # fmt: skip
    return out


def shift_section(ctx: CheckContext) -> list[dict]:
    """The ``shift`` section of ``report.json``: one entry per comparison, with the
    verdict under the owning rule's thresholds and the explanations."""
    out = []
    for pair in pairs(ctx):
        params = analysis_params(ctx, pair.kind)
        result = analyse(ctx, pair, params)
        emb = result["embedding"] or {}
        entry = {k: result[k] for k in ("kind", "reference", "target", "n_reference", "n_target")}
        entry.update({k: emb.get(k) for k in ("mmd2", "p_value", "mmd_p_value", "c2st_p_value", "auc", "auc_ci",
                                              "magnitude", "fid", "kid", "kid_std", "n_sampled")})  # fmt: skip
        entry["fid_note"] = "backbone-specific: compare only between runs with the same backbone"
        entry["verdict"] = verdict(result["embedding"], params)
        entry["skipped"] = result["skipped"]
        entry["explanations"] = explanations(result, rule_params(ctx, "property_shift"), params)
        entry["properties"] = result["properties"]
        entry["labels"] = result["labels"]
        entry["classes"] = emb.get("classes", [])
        entry["out_of_support"] = emb.get("out_of_support")
        entry["histograms"] = property_histograms(pair, result["properties"])
        out.append(entry)
    return out

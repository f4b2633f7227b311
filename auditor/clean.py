"""``audit clean``: one decision per image from the scan's findings, a manifest, and a
materialised cleaned dataset. The original dataset is only read.

Decisions (policy from the rules file's ``clean`` section; see ``rules/default.yaml``):

- ``drop``: not in the cleaned dataset (corrupt files; the extra copies of a duplicate group;
  leaked copies in an evaluation split);
- ``quarantine``: set aside under ``CLEAN_DIR/_quarantine/`` for a person to look at (label
  conflicts, confident label issues);
- ``relabel`` (with ``--relabel``): kept under the suggested label of a ``label_issue``;
- ``keep``: everything else.

When several findings touch one image the strongest action wins (drop > quarantine >
relabel > keep) and every reason is recorded.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd

from .dataset import SPLIT_NAMES

#: Strength of each action: the strongest decision for an image wins.
STRENGTH = {"keep": 0, "relabel": 1, "quarantine": 2, "drop": 3}
MARKER = ".audit-clean"
MANIFEST_COLUMNS = ["path", "label", "split", "action", "reason", "source_path", "source_label"]


class CleanError(ValueError):
    """The output folder cannot be used (exit code 2)."""


@dataclass
class CleanResult:
    """``manifest``: one row per image of the dataset (see :data:`MANIFEST_COLUMNS`);
    ``counts``: images per action; ``out_dir``: where it was written (None for a dry run)."""

    manifest: pd.DataFrame
    counts: dict[str, int]
    out_dir: Path | None
    scan: Any = field(default=None, repr=False)


def _best(rows: pd.DataFrame) -> str:
    """The member of a duplicate group to keep: most pixels, then largest file, then path."""
    rows = rows.reset_index(drop=True)
    area = rows["width"].fillna(0).astype(float) * rows["height"].fillna(0).astype(float)
    order = rows.assign(_area=area, _size=rows["file_size"].fillna(0).astype(float))
    order = order.sort_values(["_area", "_size", "path"], ascending=[False, False, True], kind="stable")
    return str(order["path"].iloc[0])


def _conflicting(rows: pd.DataFrame) -> bool:
    return rows["label"].map(lambda x: x if isinstance(x, str) else None).dropna().nunique() > 1


def _split_rank(split) -> tuple[int, str]:
    s = split if isinstance(split, str) else ""
    return (SPLIT_NAMES.index(s) if s in SPLIT_NAMES else len(SPLIT_NAMES), s)


def decide(table: pd.DataFrame, findings: list, policy: dict, relabel: bool = False) -> pd.DataFrame:
    """The manifest (without output paths): one row per item of ``table`` with ``action``,
    ``reason``, the final ``label``. ``findings``: :class:`auditor.checks.Finding` objects."""
    rows = table.set_index("path", drop=False)
    action = dict.fromkeys(rows.index, "keep")
    reasons: dict[str, list[str]] = {p: [] for p in rows.index}
    new_label = {p: rows.at[p, "label"] for p in rows.index}
    actions = policy["actions"]

    def apply(path: str, act: str, why: str) -> None:
        if path not in action:
            return
        reasons[path].append(why)
        if STRENGTH[act] > STRENGTH[action[path]]:
            action[path] = act

    for f in findings:
        how = actions.get(f.check)
        if how is None or how == "keep":
            continue
        if how in ("drop", "quarantine"):
            for p in f.paths:
                apply(p, how, f"{f.check}: {f.message}")
        elif how == "keep_one":
            members = rows.loc[[p for p in f.paths if p in action]]
            if len(members) < 2 or _conflicting(members):
                continue  # copies under different labels: label_conflict's decision, not a pick
            kept = _best(members)
            for p in members["path"]:
                if p != kept:
                    apply(p, "drop", f"{f.check}: copy of {kept}")
        elif how == "drop_from_eval":
            members = rows.loc[[p for p in f.paths if p in action]]
            if members.empty or _conflicting(members):
                continue
            first = min(members["split"], key=_split_rank)
            for p, split in zip(members["path"], members["split"], strict=True):
                if _split_rank(split) != _split_rank(first):
                    apply(p, "drop", f"{f.check}: copy of an image in {first or 'another split'}")
        elif how == "quarantine_confident":
            if f.score < policy["label_issue_min_score"]:
                continue
            for p in f.paths:
                suggested = f.details.get("suggested_label")
                if relabel and suggested:
                    apply(p, "relabel", f"{f.check}: relabelled {f.details.get('given_label')!r} -> {suggested!r}")
                    if action[p] == "relabel":
                        new_label[p] = suggested
                else:
                    apply(p, "quarantine", f"{f.check}: {f.message}")
    out = pd.DataFrame({
        "source_path": list(rows.index),
        "split": rows["split"].to_numpy(),
        "source_label": rows["label"].to_numpy(),
        "label": [new_label[p] if action[p] == "relabel" else rows.at[p, "label"] for p in rows.index],
        "action": [action[p] for p in rows.index],
        "reason": ["; ".join(reasons[p]) for p in rows.index],
        "abs_path": rows["abs_path"].to_numpy(),
    })  # fmt: skip
    return out.sort_values("source_path", kind="stable").reset_index(drop=True)


def _safe_part(x) -> str | None:
    if not isinstance(x, str) or not x.strip():
        return None
    part = x.replace("/", "_").replace("\\", "_").strip()
    return None if part in (".", "..") else part


def _targets(manifest: pd.DataFrame) -> list[str]:
    """Relative output path per row ('' for dropped): [_quarantine/]split/label/basename, a
    numeric suffix where two images would land on one name."""
    taken: set[str] = set()
    out = []
    for row in manifest.itertuples():
        if row.action == "drop":
            out.append("")
            continue
        parts = [p for p in (_safe_part(row.split), _safe_part(row.label)) if p]
        if row.action == "quarantine":
            parts.insert(0, "_quarantine")
        name = Path(row.source_path).name
        stem, suffix = Path(name).stem, Path(name).suffix
        candidate, k = "/".join([*parts, name]), 1
        while candidate.lower() in taken:
            candidate = "/".join([*parts, f"{stem}__{k}{suffix}"])
            k += 1
        taken.add(candidate.lower())
        out.append(candidate)
    return out


def _materialise(manifest: pd.DataFrame, out: Path, summary: dict) -> None:
    """Build the cleaned folder next to ``out`` and swap it in (an old audit-clean folder is
    replaced; anything else is refused)."""
    if out.exists() and any(out.iterdir()) and not (out / MARKER).exists():
        raise CleanError(f"{out} exists and was not written by audit clean; choose another --out")
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.", dir=out.parent))
    try:
        for src, rel in zip(manifest["abs_path"], manifest["path"], strict=True):
            if not rel:
                continue
            dest = tmp / rel
            dest.parent.mkdir(parents=True, exist_ok=True)
            try:
                os.link(src, dest)  # no extra disk space; the original is never written to
            except OSError:
                shutil.copy2(src, dest)
        manifest[MANIFEST_COLUMNS].to_csv(tmp / "manifest.csv", index=False)
        (tmp / "clean.json").write_text(json.dumps(summary, indent=2, sort_keys=True) + "\n")
        (tmp / MARKER).write_text("written by audit clean; rerunning replaces this folder\n")
        old = None
        if out.exists():
            old = out.parent / f".{out.name}.old-{os.getpid()}"
            os.replace(out, old)
        os.replace(tmp, out)
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def clean(
    dataset: str | os.PathLike,
    out: str | os.PathLike | None = None,
    *,
    rules: Any = None,
    dry_run: bool = False,
    relabel: bool = False,
    scan_out: str | os.PathLike | None = None,
    scan_result: Any = None,
    **scan_options: Any,
) -> CleanResult:
    """Scan ``dataset`` (cached) and decide keep / drop / quarantine / relabel for every
    image from its findings under the rules' ``clean`` policy; unless ``dry_run``, write
    ``out/manifest.csv``, ``out/clean.json`` and the cleaned dataset (split/class layout,
    hard links where possible). ``scan_out``: where the scan's report goes (default: not
    written). ``scan_result``: an :class:`auditor.api.ScanResult` to decide from instead of
    scanning again."""
    from .api import scan
    from .rules import Rules, load_rules

    rules_obj = rules if isinstance(rules, Rules) else load_rules(rules)
    if not dry_run and out is None:
        raise CleanError("give --out CLEAN_DIR (or --dry-run)")
    if out is not None and Path(out).resolve() == Path(dataset).resolve():
        raise CleanError("--out must not be the dataset itself: the original is never modified")
    if out is not None and Path(dataset).resolve() in Path(out).resolve().parents:
        raise CleanError("--out must not be inside the dataset: the original is never modified")
    result = scan_result or scan(dataset, scan_out, rules=rules_obj, write=scan_out is not None, **scan_options)
    manifest = decide(result.table, result.findings, rules_obj.clean, relabel)
    manifest["path"] = _targets(manifest)
    counts = {a: int((manifest["action"] == a).sum()) for a in STRENGTH}
    summary = {"dataset": str(Path(dataset).resolve()), "rules": rules_obj.source, "counts": counts,
               "relabel": relabel, "policy": rules_obj.clean}  # fmt: skip
    out_dir = None
    if not dry_run:
        out_dir = Path(out)
        _materialise(manifest, out_dir, summary)
    return CleanResult(manifest[MANIFEST_COLUMNS].copy(), counts, out_dir, result)

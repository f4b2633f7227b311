"""``audit clean``: one decision per image from the scan's findings, a manifest, and a
materialised cleaned dataset. The original dataset is only read.

Decisions (policy from the rules file's ``clean`` section; see ``rules/default.yaml``):

- ``drop``: not in the cleaned dataset (corrupt files; the extra copies of a duplicate group;
  leaked copies in an evaluation split);
- ``quarantine``: set aside under ``CLEAN_DIR/_quarantine/`` for a person to look at (label
  conflicts, confident label issues in train; in val/test a label issue is only listed,
  because removing the evaluation images a model gets wrong inflates its accuracy);
- ``relabel`` (with ``--relabel``): kept under the suggested label of a ``label_issue``;
- ``keep``: everything else.

When several findings touch one image the strongest action wins (drop > quarantine >
relabel > keep) and every reason is recorded.

Detection datasets (COCO, YOLO) keep their layout: images stay at their relative paths and
the annotation files are rewritten without the invalid boxes (``box_*`` findings: dropped,
clipped to the image, or one of a duplicate pair kept; boxes of dropped images go too).
``CLEAN_DIR/boxes.csv`` has one row per box with its action and reason.

A CSV cell that a spreadsheet would run as a formula (text starting with ``=``, ``+``, ``-``,
``@``, a tab or a carriage return: a class named ``=HYPERLINK(...)``) is written with a
leading single quote, as OWASP advises against CSV injection; the folders keep their names.

A folder or file name of the cleaned dataset longer than :data:`MAX_NAME_BYTES` (a class of
300 characters, a long file name with a ``__1`` suffix) is shortened: cut on a character
boundary, a hash of the whole name appended (two long names never meet), the extension kept.
The same name always gives the same short name; ``manifest.csv`` keeps the full label.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from auditor.core.fsutil import OutputError, check_output, make_dirs, remove_dirs
from auditor.core.paths import EVAL_SPLITS, SPLIT_NAMES

#: Strength of each action: the strongest decision for an image wins.
STRENGTH = {"keep": 0, "relabel": 1, "quarantine": 2, "drop": 3}
MARKER = ".audit-clean"
MANIFEST_COLUMNS = ["path", "label", "split", "action", "reason", "source_path", "source_label"]


class CleanError(OutputError):
    """The output folder cannot be used (exit code 2)."""


#: What a spreadsheet reads as the start of a formula (OWASP, "CSV Injection").
_FORMULA_START = ("=", "+", "-", "@", "\t", "\r")


def write_csv(frame: pd.DataFrame, path: Path) -> None:
    """``frame`` as CSV, every text cell that would start a formula prefixed with ``'``
    (shown as text by spreadsheets; strip it when reading the file as data)."""
    safe = frame.copy()
    for col in safe.columns:
        if not pd.api.types.is_numeric_dtype(safe[col]):
            safe[col] = [f"'{v}" if isinstance(v, str) and v.startswith(_FORMULA_START) else v for v in safe[col]]
    safe.to_csv(path, index=False)


BOX_MANIFEST_COLUMNS = ["box_id", "where", "path", "split", "category", "action", "reason"]


@dataclass
class CleanResult:
    """``manifest``: one row per image of the dataset (see :data:`MANIFEST_COLUMNS`);
    ``counts``: images per action; ``out_dir``: where it was written (None for a dry run);
    ``boxes``: for detection datasets one row per box (:data:`BOX_MANIFEST_COLUMNS`)."""

    manifest: pd.DataFrame
    counts: dict[str, int]
    out_dir: Path | None
    scan: Any = field(default=None, repr=False)
    boxes: pd.DataFrame | None = None


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


def _keep_in_eval(path: str, rows: pd.DataFrame, policy: dict, action: dict) -> bool:
    """A label issue in val/test stays (``eval_label_issues: keep``): removing the evaluation
    images a model gets wrong would make its accuracy look better than it is."""
    in_eval = path in action and rows.at[path, "split"] in EVAL_SPLITS
    return in_eval and policy.get("eval_label_issues", "keep") == "keep"


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
        if how is None or how == "keep" or (f.check.startswith("box_") and how != "quarantine"):
            continue  # box actions other than quarantine (of the whole image) apply to boxes
        if how in ("drop", "quarantine"):
            for p in f.paths:
                if f.check == "label_issue" and _keep_in_eval(p, rows, policy, action):
                    apply(p, "keep", f"{f.check} (kept: evaluation split, check by hand): {f.message}")
                    continue
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
                if _keep_in_eval(p, rows, policy, action):
                    # Removing the val/test images the model finds hard would make the evaluation
                    # look better than it is: listed for a person to check, kept.
                    apply(p, "keep", f"{f.check} (kept: evaluation split, check by hand): {f.message}")
                    continue
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


#: The longest folder or file name written, in bytes: within the limit of ext4, XFS and btrfs
#: (255 bytes) and of APFS and NTFS (255 characters).
MAX_NAME_BYTES = 255
#: Extensions up to this long survive the shortening of a file name.
_MAX_SUFFIX_BYTES = 16


def _fit_name(name: str, is_file: bool = False, limit: int = MAX_NAME_BYTES) -> str:
    """``name`` when it fits in ``limit`` bytes; else its start, cut on a character boundary,
    then ``~`` and 12 hex digits of its SHA-256 (and, for a file, its extension): at most
    ``limit`` bytes, the same for the same name, different for different names."""
    raw = os.fsencode(name)
    if len(raw) <= limit:
        return name
    stem, suffix = name, ""
    if is_file and len(os.fsencode(Path(name).suffix)) <= _MAX_SUFFIX_BYTES:
        stem, suffix = name[: len(name) - len(Path(name).suffix)], Path(name).suffix
    tail = f"~{hashlib.sha256(raw).hexdigest()[:12]}{suffix}"
    room, used, keep = limit - len(os.fsencode(tail)), 0, 0
    for ch in stem:
        used += len(os.fsencode(ch))
        if used > room:
            break
        keep += 1
    return stem[:keep] + tail


def _targets(manifest: pd.DataFrame, keep_layout: bool = False) -> list[str]:
    """Relative output path per row ('' for dropped): [_quarantine/]split/label/basename, a
    numeric suffix where two images would land on one name, names over
    :data:`MAX_NAME_BYTES` shortened (:func:`_fit_name`). ``keep_layout`` (detection
    datasets, whose annotation files name the images): [_quarantine/]original path."""
    taken: set[str] = set()
    out = []
    for row in manifest.itertuples():
        if row.action == "drop":
            out.append("")
            continue
        if keep_layout:
            out.append(("_quarantine/" if row.action == "quarantine" else "") + row.source_path)
            continue
        parts = [_fit_name(p) for p in (_safe_part(row.split), _safe_part(row.label)) if p]
        if row.action == "quarantine":
            parts.insert(0, "_quarantine")
        name = Path(row.source_path).name
        stem, suffix = Path(name).stem, Path(name).suffix
        candidate, k = "/".join([*parts, _fit_name(name, is_file=True)]), 1
        while candidate.lower() in taken:
            candidate = "/".join([*parts, _fit_name(f"{stem}__{k}{suffix}", is_file=True)])
            k += 1
        taken.add(candidate.lower())
        out.append(candidate)
    return out


def decide_boxes(boxes: pd.DataFrame, findings: list, policy: dict, image_action: dict[str, str]) -> pd.DataFrame:
    """One row per box (``boxes``: :func:`auditor.checks.boxes.boxes_of`) with ``action``
    (keep, drop, clip) and ``reason``, from the ``box_*`` findings under the policy; boxes
    of images that are dropped or missing are dropped."""
    actions = policy["actions"]
    action = dict.fromkeys(boxes["box_id"], "keep")
    reasons: dict[str, list[str]] = {b: [] for b in boxes["box_id"]}
    strength = {"keep": 0, "clip": 1, "drop": 2}

    def apply(box_id: str, act: str, why: str) -> None:
        if box_id in action:
            reasons[box_id].append(why)
            if strength[act] > strength[action[box_id]]:
                action[box_id] = act

    for f in findings:
        how = actions.get(f.check)
        if not f.check.startswith("box_") or how in (None, "keep"):
            continue
        ids = f.details.get("box_ids") or ([f.details["box_id"]] if "box_id" in f.details else [])
        if how == "keep_one":  # the first box stays (crowd regions never form duplicate pairs)
            for b in ids[1:]:
                apply(b, "drop", f"{f.check}: copy of {ids[0]}")
        elif how in ("drop", "clip"):
            for b in ids:
                apply(b, how, f"{f.check}: {f.message}")
    for b, path in zip(boxes["box_id"], boxes["path"], strict=True):
        act = image_action.get(path)
        if act is None:
            apply(b, "drop", "box_missing_image: the image is not there")
        elif act in ("drop", "quarantine"):
            apply(b, "drop", f"the image is {'dropped' if act == 'drop' else 'quarantined'}")
    out = boxes.copy()
    out["action"] = [action[b] for b in out["box_id"]]
    out["reason"] = ["; ".join(reasons[b]) for b in out["box_id"]]
    clip = out["action"] == "clip"
    if clip.any():  # clipped to the image; nothing left -> dropped
        c = out.loc[clip]
        x0, y0 = c["x0"].clip(0, 1), c["y0"].clip(0, 1)
        x1, y1 = c["x1"].clip(0, 1), c["y1"].clip(0, 1)
        out.loc[clip, ["x0", "y0", "x1", "y1"]] = np.column_stack([x0, y0, x1, y1])
        empty = ((out["x1"] - out["x0"]) * out["width"] < 1) | ((out["y1"] - out["y0"]) * out["height"] < 1)
        out.loc[clip & empty, "action"] = "drop"
    return out


def _write_annotations(ann: Any, boxes: pd.DataFrame, manifest: pd.DataFrame, root: Path, tmp: Path) -> None:
    """The cleaned COCO JSON files / YOLO label files under ``tmp`` (same relative paths)."""
    kept_images = set(manifest.loc[manifest["action"].isin(["keep", "relabel"]), "source_path"])
    keep = boxes[boxes["action"].isin(["keep", "clip"])]
    if ann.format == "coco":
        by_where = {w: r for w, r in zip(keep["where"], keep.itertuples(), strict=True)}
        for name in ann.files:
            src = root / name if not Path(name).is_absolute() else Path(name)
            data = json.loads(src.read_text(encoding="utf-8"))
            label = src.name
            kept_ids = {img["id"] for i, img in enumerate(data["images"])
                        if ann.entries.get(f"{label}: images[{i}]") in kept_images}  # fmt: skip
            anns = []
            for i, a in enumerate(data["annotations"]):
                r = by_where.get(f"{label}: annotations[{i}]")
                if r is None or a.get("image_id") not in kept_ids:
                    continue
                if r.action == "clip":
                    a = {**a, "bbox": [r.x0 * r.width, r.y0 * r.height, (r.x1 - r.x0) * r.width,
                                       (r.y1 - r.y0) * r.height]}  # fmt: skip
                anns.append(a)
            # the cleaned folder must be found again as COCO: instances_*.json inside it
            inside = not Path(name).is_absolute() and Path(name).name.startswith("instances_")
            dest = tmp / (name if inside else f"annotations/instances_{Path(label).stem}.json")
            kept = [(i, img) for i, img in enumerate(data["images"]) if img["id"] in kept_ids]
            if not inside:  # file names relative to the dataset root, a place the reader looks
                kept = [(i, {**img, "file_name": ann.entries[f"{label}: images[{i}]"]}) for i, img in kept]
            data["images"] = [img for _, img in kept]
            data["annotations"] = anns
            dest.parent.mkdir(parents=True, exist_ok=True)
            dest.write_text(json.dumps(data) + "\n", encoding="utf-8")
    else:
        from auditor.io.annotations import find_yolo, yolo_label_file

        pairs = find_yolo(root)
        for extra in ("data.yaml", "dataset.yaml", "data.yml", "classes.txt"):
            if (root / extra).is_file():
                shutil.copy2(root / extra, tmp / extra)
        lines: dict[str, list[str]] = {}
        for r in keep.itertuples():
            cx, cy = (r.x0 + r.x1) / 2, (r.y0 + r.y1) / 2
            lines.setdefault(r.path, []).append(
                f"{r.category_id} {cx:.6f} {cy:.6f} {r.x1 - r.x0:.6f} {r.y1 - r.y0:.6f}"
            )
        background = dict(zip(ann.images["path"], ann.images["background"], strict=True))
        for path in sorted(kept_images):
            found = yolo_label_file(root / path, pairs)
            # no label file when it had none, or when every box of it was dropped (it needs
            # annotating; an empty file would claim "background on purpose")
            if found is None or not (background.get(path) or path in lines):
                continue
            dest = tmp / found[2].relative_to(root)
            dest.parent.mkdir(parents=True, exist_ok=True)
            dest.write_text("".join(f"{ln}\n" for ln in lines.get(path, [])), encoding="utf-8")


def _materialise(manifest: pd.DataFrame, out: Path, summary: dict, extra: Any = None) -> None:
    """Build the cleaned folder next to ``out`` and swap it in (an old audit-clean folder is
    replaced; anything else is refused)."""
    if out.exists() and any(out.iterdir()) and not (out / MARKER).exists():
        raise CleanError(f"{out} exists and was not written by audit clean; choose another --out")
    created = make_dirs(out.parent)
    tmp = None
    try:
        tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.", dir=out.parent))
        for src, rel in zip(manifest["abs_path"], manifest["path"], strict=True):
            if not rel:
                continue
            dest = tmp / rel
            dest.parent.mkdir(parents=True, exist_ok=True)
            try:
                os.link(src, dest)  # no extra disk space; the original is never written to
            except OSError:
                shutil.copy2(src, dest)
        write_csv(manifest[MANIFEST_COLUMNS], tmp / "manifest.csv")
        if extra is not None:
            extra(tmp)
        (tmp / "clean.json").write_text(json.dumps(summary, indent=2, sort_keys=True) + "\n")
        (tmp / MARKER).write_text("written by audit clean; rerunning replaces this folder\n")
        old = None
        if out.exists():
            old = out.parent / f".{out.name}.old-{os.getpid()}"
            os.replace(out, old)
        os.replace(tmp, out)
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
    except BaseException as exc:
        if tmp is not None:
            shutil.rmtree(tmp, ignore_errors=True)
        remove_dirs(created)
        if isinstance(exc, OSError):  # a full disk, a read-only folder: nothing half-written is left
            raise CleanError(f"cannot write the cleaned dataset to {out}: {exc.strerror or exc}") from exc
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
    written). ``scan_result``: an :class:`auditor.pipeline.api.ScanResult` to decide from instead of
    scanning again."""
    from auditor.pipeline.api import scan
    from auditor.policy.rules import Rules, load_rules

    rules_obj = rules if isinstance(rules, Rules) else load_rules(rules)
    if not dry_run and out is None:
        raise CleanError("give --out CLEAN_DIR (or --dry-run)")
    if out is not None and not dry_run:
        try:
            check_output(out, dataset)  # not inside the dataset, a folder, writable
        except OutputError as exc:
            raise CleanError(str(exc)) from None
    result = scan_result or scan(dataset, scan_out, rules=rules_obj, write=scan_out is not None, **scan_options)
    manifest = decide(result.table, result.findings, rules_obj.clean, relabel)
    ann = result.discovery.annotations
    manifest["path"] = _targets(manifest, keep_layout=ann is not None)
    counts = {a: int((manifest["action"] == a).sum()) for a in STRENGTH}
    summary = {"dataset": str(Path(dataset).resolve()), "rules": rules_obj.source, "counts": counts,
               "relabel": relabel, "policy": rules_obj.clean}  # fmt: skip
    boxes, extra = None, None
    if ann is not None:
        from auditor.checks.boxes import boxes_of

        image_action = dict(zip(manifest["source_path"], manifest["action"], strict=True))
        boxes = decide_boxes(boxes_of(result.context), result.findings, rules_obj.clean, image_action)
        summary["boxes"] = {a: int((boxes["action"] == a).sum()) for a in ("keep", "clip", "drop")}

        def extra(tmp: Path) -> None:
            _write_annotations(ann, boxes, manifest, Path(dataset), tmp)
            write_csv(boxes[BOX_MANIFEST_COLUMNS], tmp / "boxes.csv")

    out_dir = None
    if not dry_run:
        out_dir = Path(out)
        _materialise(manifest, out_dir, summary, extra)
    box_table = boxes[BOX_MANIFEST_COLUMNS].copy() if boxes is not None else None
    return CleanResult(manifest[MANIFEST_COLUMNS].copy(), counts, out_dir, result, box_table)

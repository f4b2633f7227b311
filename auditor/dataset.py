"""Dataset discovery: any supported layout -> one items table.

Layouts (auto-detected; ``layout=`` overrides):

* ``class-folders``: ``ROOT/<class>/**/<image>`` (Keras ``image_dataset_from_directory``);
* ``split-folders``: ``ROOT/{train,val,valid,validation,test,dev}/<class>/**/<image>``;
* ``manifest``: a CSV with columns ``path,label[,split]``, paths relative to ROOT;
* ``flat``: ``ROOT/<image>``, unlabeled;
* ``coco``: object detection, ``instances_*.json`` at the root or in ``annotations/`` (or
  ``coco=FILE``), images found relative to them (or ``images=DIR``);
* ``yolo``: object detection, ``images/`` + ``labels/*.txt`` (or ``<split>/images`` +
  ``<split>/labels``). Detection datasets carry their boxes in ``Discovery.annotations``
  (see :mod:`auditor.annotations`); their images are unlabeled items.

Files are recognised by content (magic bytes) as well as by extension. Hidden files and
folders are skipped; non-image files are skipped; both are counted. Symbolic links that
leave the root are not followed unless ``follow_symlinks=True``.
"""

from __future__ import annotations

import csv
import os
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Any

import pandas as pd

from .decode import IMAGE_EXTENSIONS, sniff_format

#: Split folder names (any case), in pipeline order: training, then validation-like, then test.
SPLIT_NAMES = ("train", "val", "valid", "validation", "dev", "test")
#: The splits a model is evaluated on, in the order they are preferred for validation.
EVAL_SPLITS = SPLIT_NAMES[1:]


def labeled(items: pd.DataFrame) -> pd.DataFrame:
    """The rows of an items/per-image table that carry a label (a string)."""
    return items[items["label"].map(lambda x: isinstance(x, str))]


LAYOUTS = ("auto", "class-folders", "split-folders", "manifest", "flat", "coco", "yolo")
ITEM_COLUMNS = ["path", "abs_path", "split", "label", "ext"]


class DatasetError(ValueError):
    """The dataset cannot be read as asked (missing, empty, bad manifest): exit code 2."""


@dataclass
class Discovery:
    """The items of a dataset and what was skipped while finding them."""

    root: Path
    layout: str
    items: pd.DataFrame
    skipped: Counter = field(default_factory=Counter)
    missing: list[str] = field(default_factory=list)  # manifest rows whose file is absent
    annotations: Any = None  # auditor.annotations.Annotations for COCO / YOLO datasets


def _utf8(name: str) -> bool:
    """Whether a file name decoded from the file system is valid UTF-8 (Python keeps the
    bytes of one that is not as lone surrogates, which JSON and Parquet cannot hold)."""
    try:
        name.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def _is_hidden(name: str) -> bool:
    return name.startswith(".") or name in ("__MACOSX", "Thumbs.db", "desktop.ini")


def _within(path: Path, root: Path) -> bool:
    try:
        path.relative_to(root)
        return True
    except ValueError:
        return False


def _looks_like_image(path: Path) -> bool:
    if path.suffix.lower() in IMAGE_EXTENSIONS:
        return True
    try:
        with open(path, "rb") as fh:
            return sniff_format(fh.read(16)) is not None
    except OSError:
        return False


def _walk(root: Path, follow_symlinks: bool, skipped: Counter) -> list[Path]:
    """Every candidate image file under root, sorted, as paths *under root* (not resolved)."""
    real_root = root.resolve()
    out: list[Path] = []
    seen_dirs: set[str] = set()
    for dirpath, dirnames, filenames in os.walk(root, followlinks=True):
        d = Path(dirpath)
        real = os.path.realpath(d)
        if real in seen_dirs:  # a symlink loop
            dirnames[:] = []
            continue
        seen_dirs.add(real)
        keep = []
        for name in sorted(dirnames):
            if _is_hidden(name):
                skipped["hidden"] += 1
                continue
            if not _utf8(name):
                skipped["non_utf8_name"] += 1
                continue
            sub = d / name
            if sub.is_symlink() and not follow_symlinks and not _within(sub.resolve(), real_root):
                skipped["symlink_outside_root"] += 1
                continue
            keep.append(name)
        dirnames[:] = keep
        for name in sorted(filenames):
            f = d / name
            if _is_hidden(name):
                skipped["hidden"] += 1
                continue
            if not _utf8(name):  # report.json and the Parquet table can only hold UTF-8 paths
                skipped["non_utf8_name"] += 1
                continue
            if f.is_symlink():
                if not f.exists():
                    skipped["broken_symlink"] += 1
                    continue
                if not follow_symlinks and not _within(f.resolve(), real_root):
                    skipped["symlink_outside_root"] += 1
                    continue
            if not _looks_like_image(f):
                skipped["not_an_image"] += 1
                continue
            out.append(f)
    return sorted(out, key=lambda p: p.relative_to(root).as_posix())


def _detect_layout(root: Path, files: list[Path]) -> str:
    tops = {p.relative_to(root).parts[0] for p in files if len(p.relative_to(root).parts) > 1}
    if tops and any(t.lower() in SPLIT_NAMES for t in tops):
        return "split-folders"
    if tops:
        return "class-folders"
    return "flat"


def _rows_from_folders(root: Path, files: list[Path], layout: str) -> list[dict]:
    rows = []
    for f in files:
        parts = f.relative_to(root).parts
        split, label = None, None
        if layout == "split-folders":
            if parts[0].lower() in SPLIT_NAMES:
                split = parts[0].lower()  # Train/ and train/ are one split
                label = parts[1] if len(parts) > 2 else None
            else:  # a stray folder beside the splits: keep it, unsplit
                label = parts[0] if len(parts) > 1 else None
        elif layout == "class-folders":
            label = parts[0] if len(parts) > 1 else None
        rows.append(_row(root, f, split, label))
    return rows


def _row(root: Path, f: Path, split: str | None, label: str | None) -> dict:
    return {
        "path": f.relative_to(root).as_posix(),
        "abs_path": str(f.absolute()),
        "split": split,
        "label": label,
        "ext": f.suffix.lower(),
    }


def safe_relative(root: Path, rel: str, follow_symlinks: bool = False) -> Path:
    """Resolve a manifest path under root, refusing anything that escapes it."""
    if not rel or rel.strip() != rel:
        raise DatasetError(f"invalid path {rel!r} in manifest")
    pure = PurePosixPath(rel.replace("\\", "/"))
    if pure.is_absolute() or ":" in pure.parts[0] or ".." in pure.parts:
        raise DatasetError(f"manifest path {rel!r} escapes the dataset root")
    full = root / Path(*pure.parts)
    if not follow_symlinks and not _within(full.resolve(), root.resolve()):
        raise DatasetError(f"manifest path {rel!r} resolves outside the dataset root")
    return full


def _rows_from_manifest(root: Path, manifest: Path, follow_symlinks: bool) -> tuple[list[dict], list[str]]:
    try:
        with open(manifest, newline="", encoding="utf-8-sig") as fh:
            reader = csv.DictReader(fh)
            fields = [c.strip().lower() for c in (reader.fieldnames or [])]
            if "path" not in fields:
                raise DatasetError(f"{manifest}: manifest needs a 'path' column (has {fields})")
            rows, missing = [], []
            for _n, raw in enumerate(reader, start=2):
                rec = {k.strip().lower(): (v or "").strip() for k, v in raw.items() if k}
                full = safe_relative(root, rec.get("path", ""), follow_symlinks)
                split = (rec.get("split") or "").strip().lower() or None
                row = _row(root, full, split, rec.get("label") or None)
                row["path"] = PurePosixPath(rec["path"].replace("\\", "/")).as_posix()
                if not full.exists():
                    missing.append(row["path"])
                rows.append(row)
    except DatasetError:
        raise
    except (OSError, UnicodeDecodeError, csv.Error) as exc:
        raise DatasetError(f"cannot read manifest {manifest}: {exc}") from exc
    return rows, missing


def discover(
    root: str | os.PathLike,
    layout: str = "auto",
    manifest: str | os.PathLike | None = None,
    follow_symlinks: bool = False,
    coco: str | os.PathLike | None = None,
    images: str | os.PathLike | None = None,
) -> Discovery:
    """Find the images of a dataset. Raises :class:`DatasetError` for a missing root, an
    unknown layout, a bad manifest or annotation file, or a dataset with no images."""
    root = Path(root)
    if layout not in LAYOUTS:
        raise DatasetError(f"unknown layout {layout!r}; expected one of {', '.join(LAYOUTS)}")
    if not root.exists():
        raise DatasetError(f"dataset not found: {root}")
    if not root.is_dir():
        raise DatasetError(f"dataset is not a folder: {root}")
    skipped: Counter = Counter()
    missing: list[str] = []
    annotations = None
    if manifest is not None or layout == "manifest":
        if manifest is None:
            raise DatasetError("layout 'manifest' needs --manifest FILE")
        rows, missing = _rows_from_manifest(root, Path(manifest), follow_symlinks)
        layout = "manifest"
    elif coco is not None or layout == "coco" or (layout == "auto" and _has_coco(root)):
        from . import annotations as ann

        files = [Path(coco)] if coco is not None else ann.find_coco(root)
        if not files:
            raise DatasetError(f"layout 'coco': no instances_*.json in {root} or {root / 'annotations'}; "
                               "name the file with --coco FILE")  # fmt: skip
        for f in files:
            if not f.is_file():
                raise DatasetError(f"COCO file not found: {f}")
        annotations = ann.read_coco(root, files, Path(images) if images is not None else None)
        present = annotations.images[annotations.images["exists"]]
        if present.empty:
            why = "; ".join(p["message"] for p in annotations.problems if p["kind"] == "no_images_found")
            raise DatasetError(f"no images found for {', '.join(annotations.files)}: {why or 'the files list none'}")
        rows = [_row(root, root / p, s if isinstance(s, str) else None, None)
                for p, s in zip(present["path"], present["split"], strict=True)]  # fmt: skip
        layout = "coco"
    else:
        files = _walk(root, follow_symlinks, skipped)
        if layout == "yolo" or (layout == "auto" and _has_yolo(root)):
            from . import annotations as ann

            pairs = ann.find_yolo(root)
            if not pairs:
                raise DatasetError(f"layout 'yolo': expected {root / 'images'} and {root / 'labels'} (or "
                                   "<split>/images and <split>/labels)")  # fmt: skip
            files = [f for f in files if any(_within(f, i) for i, _ in pairs)]
            rows = [_row(root, f, None, None) for f in files]
            annotations = ann.read_yolo(root, [r["path"] for r in rows])
            split = dict(zip(annotations.images["path"], annotations.images["split"], strict=True))
            for r in rows:
                s = split.get(r["path"])
                r["split"] = s if isinstance(s, str) else None
            layout = "yolo"
        else:
            if layout == "auto":
                layout = _detect_layout(root, files)
            rows = _rows_from_folders(root, files, layout)
    if not rows:
        detail = ", ".join(f"{n} {k}" for k, n in sorted(skipped.items())) or "no files"
        raise DatasetError(f"no images found in {root} ({detail})")
    items = pd.DataFrame(rows, columns=ITEM_COLUMNS)
    dup = items["path"].duplicated()
    if dup.any():
        raise DatasetError(f"{layout} lists {items['path'][dup].iloc[0]!r} more than once")
    return Discovery(root=root, layout=layout, items=items, skipped=skipped, missing=missing,
                     annotations=annotations)  # fmt: skip


def _has_coco(root: Path) -> bool:
    return any(root.glob("instances_*.json")) or any(root.glob("annotations/instances_*.json"))


def _has_yolo(root: Path) -> bool:
    from .annotations import find_yolo

    return any(any(lab.rglob("*.txt")) for _, lab in find_yolo(root))

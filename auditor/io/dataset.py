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
  (see :mod:`auditor.io.annotations`); their images are unlabeled items.

Files are recognised by content (magic bytes) as well as by extension. Hidden files and
folders are skipped; non-image files are skipped; both are counted. Only regular files are
images: a FIFO, socket or device is skipped and counted (``not_regular_file``) without being
opened (opening a FIFO blocks until something writes to it). Symbolic links that leave the
root are not followed unless ``follow_symlinks=True``.
"""

from __future__ import annotations

import array
import csv
import os
import stat
from collections import Counter
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pandas as pd

from auditor.core.errors import DatasetError
from auditor.core.paths import SPLIT_NAMES, inside_real, manifest_path, shown, within
from auditor.core.types import Discovery
from auditor.io.decode import IMAGE_EXTENSIONS, file_kind, open_regular, open_text, sniff_format


def release_unused_memory() -> None:
    """Hand the memory Arrow's allocator keeps after freeing back to the system. Text columns
    are Arrow arrays, and the allocator (mimalloc) holds on to what a large one freed: after
    reading a million-row manifest, 140 MB more than the table needs. Called between the
    stages that build or drop large tables; costs a few milliseconds."""
    try:
        import pyarrow as pa
    except ImportError:
        return
    pa.default_memory_pool().release_unused()


def labeled(items: pd.DataFrame) -> pd.DataFrame:
    """The rows of an items/per-image table that carry a label (a string)."""
    return items[has_label(items["label"])]


def has_label(labels: pd.Series) -> pd.Series:
    """Which values of a ``label`` column are labels (strings), as a bool Series. A text
    column holds strings or NA, so that is its non-NA values (a million rows in milliseconds,
    not a Python call each)."""
    if isinstance(labels.dtype, pd.StringDtype):
        return labels.notna()
    return labels.map(lambda x: isinstance(x, str)).astype(bool)


LAYOUTS = ("auto", "class-folders", "split-folders", "manifest", "flat", "coco", "yolo")
ITEM_COLUMNS = ["path", "abs_path", "split", "label", "ext"]


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


def _looks_like_image(path: Path) -> bool:
    if path.suffix.lower() in IMAGE_EXTENSIONS:
        return True
    try:
        with open_regular(path) as fh:  # never blocks: a FIFO is refused, not opened
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
            if sub.is_symlink() and not follow_symlinks and not within(sub.resolve(), real_root):
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
            try:
                mode = os.lstat(f).st_mode
                if stat.S_ISLNK(mode):
                    if not f.exists():
                        skipped["broken_symlink"] += 1
                        continue
                    if not follow_symlinks and not within(f.resolve(), real_root):
                        skipped["symlink_outside_root"] += 1
                        continue
                    mode = os.stat(f).st_mode
            except OSError:  # removed while we walked
                skipped["unreadable"] += 1
                continue
            if not stat.S_ISREG(mode):  # a FIFO would block the first read forever
                skipped["not_regular_file"] += 1
                continue
            if not _looks_like_image(f):
                skipped["not_an_image"] += 1
                continue
            out.append(f)
    return sorted(out, key=lambda p: _relative(root, p))


def _relative(root: Path, f: Path) -> str:
    """``f.relative_to(root).as_posix()`` for a path built under ``root``, by cutting the
    string where that gives the same answer (a POSIX path that starts with root's): pathlib
    took a fifth of a 10,000-image discovery computing it."""
    head = str(root)
    name = str(f)
    if os.sep == "/" and head not in ("", ".") and name.startswith(head) and name[len(head) : len(head) + 1] == "/":
        return name[len(head) + 1 :]
    return f.relative_to(root).as_posix()


def _detect_layout(root: Path, files: list[Path]) -> str:
    tops = {rel.split("/", 1)[0] for rel in (_relative(root, p) for p in files) if "/" in rel}
    if tops and any(t.lower() in SPLIT_NAMES for t in tops):
        return "split-folders"
    if tops:
        return "class-folders"
    return "flat"


def _rows_from_folders(root: Path, files: list[Path], layout: str) -> list[dict]:
    rows = []
    for f in files:
        parts = _relative(root, f).split("/")
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
        "path": _relative(root, f),
        "abs_path": str(f.absolute()),
        "split": split,
        "label": label,
        "ext": f.suffix.lower(),
    }


def _suffix(name: str) -> str:
    """``PurePath.suffix`` of a file name, lower case, without building a path object."""
    i = name.rfind(".")
    return name[i:].lower() if 0 < i < len(name) - 1 else ""


def _manifest_files(root: Path, paths: list[str], lines: Sequence[int], follow_symlinks: bool) -> list[bool]:
    """Which manifest paths (POSIX, relative to root, already checked by
    :func:`manifest_path`) name an existing file; raises :class:`DatasetError` for one that
    resolves outside root through a symbolic link (unless ``follow_symlinks``).

    Set-based, so a million rows cost a million ``lstat`` calls and nothing more: each
    distinct folder is resolved once (its rows cannot leave root unless it does), a folder
    that does not exist makes its rows missing without a call per row, and only a file
    that is itself a symbolic link is resolved.
    """
    real_root = os.path.realpath(root)
    base = str(root).rstrip(os.sep) + os.sep if str(root) != os.sep else os.sep
    folders: dict[str, tuple[bool, bool]] = {}  # folder -> (exists, resolves inside root)
    exists = [False] * len(paths)
    for i, rel in enumerate(paths):
        folder, _, _ = rel.rpartition("/")
        state = folders.get(folder)
        if state is None:
            full_dir = base + folder.replace("/", os.sep) if folder else str(root)
            real = os.path.realpath(full_dir)
            state = folders[folder] = (os.path.isdir(real), follow_symlinks or inside_real(real, real_root))
        full = base + rel.replace("/", os.sep)
        # a folder that leads outside: only a file that links back inside is allowed
        if not state[1] and not inside_real(os.path.realpath(full), real_root):
            raise DatasetError(f"manifest line {lines[i]}: path {shown(rel)} resolves outside the dataset root")
        if not state[0]:
            continue
        try:
            mode = os.lstat(full).st_mode
        except OSError:
            continue
        if stat.S_ISLNK(mode):
            if not follow_symlinks and not inside_real(os.path.realpath(full), real_root):
                raise DatasetError(f"manifest line {lines[i]}: path {shown(rel)} resolves outside the dataset root")
            exists[i] = os.path.exists(full)  # a dangling link is a missing file
        else:
            exists[i] = True  # a FIFO or folder is an item too: the decoder refuses it (corrupt)
    return exists


def _rows_from_manifest(root: Path, manifest: Path, follow_symlinks: bool) -> tuple[dict[str, list], np.ndarray]:
    """The items of a manifest as columns (:data:`ITEM_COLUMNS` -> list) and which rows name
    a file that is absent (bool). Columns ``path,label[,split]`` (any case, any order; other
    columns ignored; the last of two same-named columns wins)."""
    fh = open_text(manifest, "manifest", newline="", encoding="utf-8-sig")
    paths, labels, splits = [], [], []
    lines = array.array("q")  # line numbers for messages, without an int object per row
    interned: dict[str, str] = {}  # one string object per distinct label/split value, not one per row
    try:
        with fh:
            reader = csv.reader(fh)
            header = next(reader, None) or []
            fields = [c.strip().lower() for c in header]
            column = {name: i for i, name in enumerate(fields) if name}
            if "path" not in column:
                raise DatasetError(f"{manifest}: manifest needs a 'path' column (has {shown(str(fields))})")
            ip, il, isp = column["path"], column.get("label", -1), column.get("split", -1)
            for row in reader:
                if not row:  # a blank line (csv.DictReader skips them too)
                    continue
                n = len(row)
                try:
                    paths.append(manifest_path(row[ip].strip() if ip < n else ""))
                except DatasetError as exc:
                    raise DatasetError(f"manifest line {reader.line_num}: {exc}") from None
                label = row[il].strip() if 0 <= il < n else ""
                split = row[isp].strip().lower() if 0 <= isp < n else ""
                labels.append(interned.setdefault(label, label) if label else None)
                splits.append(interned.setdefault(split, split) if split else None)
                lines.append(reader.line_num)
    except DatasetError:
        raise
    except (OSError, UnicodeDecodeError, csv.Error) as exc:
        raise DatasetError(f"cannot read manifest {manifest}: {exc}") from exc
    exists = _manifest_files(root, paths, lines, follow_symlinks)
    abs_root = str(root.absolute())
    prefix = abs_root if abs_root.endswith(os.sep) else abs_root + os.sep
    sep = os.sep
    abs_paths = [prefix + p for p in paths] if sep == "/" else [prefix + p.replace("/", sep) for p in paths]
    exts = [interned.setdefault(e, e) for e in (_suffix(p.rpartition("/")[2]) for p in paths)]
    columns = {"path": paths, "abs_path": abs_paths, "split": splits, "label": labels, "ext": exts}
    return columns, ~np.array(exists, dtype=bool)


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
    absent = None
    annotations = None
    rows: list[dict] | dict[str, list]  # one dict per item, or (manifest) one list per column
    if manifest is not None or layout == "manifest":
        if manifest is None:
            raise DatasetError("layout 'manifest' needs --manifest FILE")
        rows, absent = _rows_from_manifest(root, Path(manifest), follow_symlinks)
        layout = "manifest"
    elif coco is not None or layout == "coco" or (layout == "auto" and _has_coco(root)):
        from auditor.io import annotations as ann

        files = [Path(coco)] if coco is not None else ann.find_coco(root)
        if not files:
            raise DatasetError(f"layout 'coco': no instances_*.json in {root} or {root / 'annotations'}; "
                               "name the file with --coco FILE")  # fmt: skip
        for f in files:
            if not f.exists():
                raise DatasetError(f"COCO file not found: {f}")
            if not f.is_file():  # a FIFO would block the JSON reader forever
                raise DatasetError(f"COCO file {f} is {file_kind(f.stat().st_mode)}, not a regular file")
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
            from auditor.io import annotations as ann

            pairs = ann.find_yolo(root)
            if not pairs:
                raise DatasetError(f"layout 'yolo': expected {root / 'images'} and {root / 'labels'} (or "
                                   "<split>/images and <split>/labels)")  # fmt: skip
            files = [f for f in files if any(within(f, i) for i, _ in pairs)]
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
    items = pd.DataFrame(rows, columns=ITEM_COLUMNS)
    if items.empty:
        detail = ", ".join(f"{n} {k}" for k, n in sorted(skipped.items())) or "no files"
        raise DatasetError(f"no images found in {root} ({detail})")
    dup = items["path"].duplicated()
    if dup.any():
        raise DatasetError(f"{layout} lists {items['path'][dup].iloc[0]!r} more than once")
    if absent is not None:
        # made from the table, not kept from the parsing: strings that outlive the parsing
        # would pin its memory (a million rows' lists and labels, freed around them)
        missing = items["path"][absent].tolist()
        del rows
    return Discovery(root=root, layout=layout, items=items, skipped=skipped, missing=missing,
                     annotations=annotations, absent=absent)  # fmt: skip


def _has_coco(root: Path) -> bool:
    return any(root.glob("instances_*.json")) or any(root.glob("annotations/instances_*.json"))


def _has_yolo(root: Path) -> bool:
    from auditor.io.annotations import find_yolo

    return any(any(lab.rglob("*.txt")) for _, lab in find_yolo(root))

"""YOLO detection annotations -> :class:`auditor.io.annotation_table.Annotations`.

Layout: ``images/[<split>/]*`` with ``labels/[<split>/]*.txt`` beside them (or the
Roboflow ``<split>/images`` + ``<split>/labels``); one box per line, ``class cx cy w h``
normalised to 0..1; class names from ``data.yaml`` (``names:`` list or mapping) or
``classes.txt``. An empty label file marks an image with no objects on purpose; a missing
one is an unannotated image.

Every box keeps where it came from (``where``: ``file:line``), so a finding points at the line to
fix; malformed files raise :class:`auditor.io.dataset.DatasetError` naming the file, the line and
what was expected.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pandas as pd

from auditor.core.errors import DatasetError
from auditor.io.annotation_table import (
    BOX_COLUMNS,
    Annotations,
    category_key,
    images_frame,
    is_scalar,
    preview,
    resolve_problems,
    resolves_inside,
    split_of,
)
from auditor.io.decode import open_text


def find_yolo(root: Path) -> list[tuple[Path, Path]]:
    """(images folder, labels folder) pairs: ``images/`` + ``labels/`` or, per split,
    ``<split>/images`` + ``<split>/labels``."""
    pairs = []
    if (root / "images").is_dir() and (root / "labels").is_dir():
        pairs.append((root / "images", root / "labels"))
    for d in sorted(p for p in root.iterdir() if p.is_dir()) if root.is_dir() else []:
        if split_of(d.name) and (d / "images").is_dir() and (d / "labels").is_dir():
            pairs.append((d / "images", d / "labels"))
    return pairs


def _no_alias_loader():
    """A PyYAML ``SafeLoader`` that refuses aliases (``*name``). ``safe_load`` shares an
    anchored node between its aliases, but anything that walks the result (``str(names)``)
    expands it: nine nested aliases of nine make a billion strings (a "billion laughs"
    file). A dataset's class list has no use for them."""
    import yaml

    class NoAliasLoader(yaml.SafeLoader):
        def compose_node(self, parent, index):
            if self.check_event(yaml.AliasEvent):
                event = self.peek_event()
                raise yaml.composer.ComposerError(None, None, f"aliases (*{event.anchor[:40]}) are not allowed here",
                                                  event.start_mark)  # fmt: skip
            return super().compose_node(parent, index)

    return NoAliasLoader


def _read_text(path: Path, what: str) -> str:
    """A small text file (UTF-8, a BOM allowed), or :class:`DatasetError` naming it."""
    try:
        with open_text(path, what, encoding="utf-8-sig") as fh:
            return fh.read()
    except (OSError, UnicodeDecodeError) as exc:
        raise DatasetError(f"cannot read {path}: {exc}") from None


def _class_name(path: Path, where: str, value) -> str:
    if not is_scalar(value):
        raise DatasetError(f"{path}: {where}: expected a class name, found {preview(value)}")
    return str(value)


def _yolo_names(root: Path) -> tuple[dict[str, str], bool]:
    for name in ("data.yaml", "dataset.yaml", "data.yml"):
        path = root / name
        if path.exists():  # a FIFO or folder under that name is an error (_read_text), not "no names"
            import yaml

            text = _read_text(path, "YOLO class names")
            try:
                data = yaml.load(text, Loader=_no_alias_loader()) or {}  # noqa: S506 (a SafeLoader)
            except yaml.YAMLError as exc:
                raise DatasetError(f"{path}: not valid YAML: {' '.join(str(exc).split())[:300]}") from None
            except RecursionError:
                raise DatasetError(f"{path}: not valid YAML: nested deeper than Python can read") from None
            names = data.get("names") if isinstance(data, dict) else None
            if isinstance(names, list):
                return {str(i): _class_name(path, f"names[{i}]", n) for i, n in enumerate(names)}, True
            if isinstance(names, dict):
                return {category_key(k): _class_name(path, f"names[{preview(k)}]", v) for k, v in names.items()}, True
            raise DatasetError(f"{path}: names: expected a list of class names or a mapping id -> name")
    for path in (root / "classes.txt", root / "labels" / "classes.txt"):  # LabelImg writes the latter
        if path.exists():
            lines = [ln.strip() for ln in _read_text(path, "YOLO class names").splitlines()]
            return {str(i): n for i, n in enumerate(x for x in lines if x)}, True
    return {}, False


def yolo_label_file(full: Path, pairs: list[tuple[Path, Path]]) -> tuple[Path, Path, Path] | None:
    """(images folder, labels folder, label file) of an image under one of the YOLO
    ``pairs`` (:func:`find_yolo`): ``labels/<same relative path>.txt``; None elsewhere."""
    for img_dir, lab_dir in pairs:
        if resolves_inside(full, img_dir):
            return img_dir, lab_dir, (lab_dir / full.relative_to(img_dir)).with_suffix(".txt")
    return None


def _yolo_split(root: Path, img_dir: Path, inner: Path) -> str | None:
    """images/<split>/..., or the Roboflow <split>/images/... (never the root's own name)."""
    if len(inner.parts) > 1 and split_of(inner.parts[0]):
        return split_of(inner.parts[0])
    return split_of(img_dir.parent.name) if img_dir.parent.resolve() != root.resolve() else None


def read_yolo(root: Path, image_paths: list[str]) -> Annotations:
    """Boxes for the images ``image_paths`` (relative to root, under a YOLO images folder).
    Label files outside the dataset root (through a symbolic link) are not read."""
    root = Path(root)
    categories, known = _yolo_names(root)
    pairs = find_yolo(root)
    boxes: dict[str, list] = {c: [] for c in BOX_COLUMNS}  # one list per column: no dict per box
    images: dict[str, dict] = {}
    used_labels: dict[Path, str] = {}
    files: list[str] = []
    for rel in image_paths:
        full = root / rel
        found = yolo_label_file(full, pairs)
        if found is None:
            continue
        img_dir, _, label = found
        split = _yolo_split(root, img_dir, full.relative_to(img_dir))
        # exists, not is_file: a FIFO there is refused when read (DatasetError), not taken for "no labels"
        lrel = label.relative_to(root).as_posix() if label.exists() and resolves_inside(label, root) else None
        images[rel] = {"path": rel, "split": split, "width": np.nan, "height": np.nan, "exists": True,
                       "annotated": False, "background": False, "where": lrel or rel}  # fmt: skip
        if lrel is None:
            continue
        owner = used_labels.get(label.resolve())
        if owner is not None:  # a.jpg and a.png share labels/a.txt: it belongs to the first
            images[rel]["where"] = f"{lrel} (the label file of {owner})"
            continue
        used_labels[label.resolve()] = rel
        files.append(lrel)
        n = _read_label_file(label, lrel, rel, split, categories, boxes)
        images[rel]["annotated"] = n > 0
        images[rel]["background"] = n == 0
    problems = []
    for img_dir, lab_dir in pairs:  # label files without an image
        for label in sorted(lab_dir.rglob("*.txt")):
            if label.resolve() in used_labels or label.name.startswith(".") or label.name == "classes.txt":
                continue
            if not resolves_inside(label, root):
                continue
            lrel = label.relative_to(root).as_posix()
            inner = label.relative_to(lab_dir).with_suffix("")
            split = _yolo_split(root, img_dir, inner)
            img_rel = (img_dir / inner).relative_to(root).as_posix() + ".*"
            n = _read_label_file(label, lrel, img_rel, split, categories, boxes)
            files.append(lrel)
            problems.append({"kind": "missing_image", "path": img_rel, "where": lrel, "boxes": n,
                             "message": f"{lrel} has {n} boxes but no image {img_rel} exists"})  # fmt: skip
    ann = Annotations("yolo", sorted(files), pd.DataFrame(boxes, columns=BOX_COLUMNS), images_frame(images),
                      categories, problems, names_known=known)  # fmt: skip
    if known:
        resolve_problems(ann)
    return ann


def _read_label_file(path: Path, lrel: str, image: str, split, categories: dict[str, str],
                     out: dict[str, list]) -> int:  # fmt: skip
    """Append the boxes of one YOLO label file to ``out`` (:data:`BOX_COLUMNS` -> list) and
    return how many: ``class cx cy w h`` lines, or segmentation polygon lines ``class x1 y1
    x2 y2 x3 y3 ...`` (the box around the polygon). Column lists, not a dict per box: a
    label file of a million boxes made a million dicts (about 1 KB each)."""
    text = _read_text(path, "YOLO label file")
    ids: dict[str, str] = {}  # one string object per class id, not one per box
    columns = [out[c] for c in BOX_COLUMNS]
    before = len(columns[0])
    for n, line in enumerate(text.splitlines(), start=1):
        parts = line.split()
        if not parts:
            continue
        ok = (len(parts) == 5 or (len(parts) >= 7 and len(parts) % 2 == 1)) and parts[0].isdigit()
        values = []
        if ok:
            try:
                values = [float(v) for v in parts[1:]]
                ok = all(math.isfinite(v) for v in values)
            except ValueError:
                ok = False
        if not ok:
            raise DatasetError(f"{path}:{n}: expected 'class x_center y_center width height' (an integer class "
                               f"and 4 numbers in 0..1) or a polygon 'class x1 y1 x2 y2 x3 y3 ...', found "
                               f"{line.strip()[:80]!r}")  # fmt: skip
        cid = str(int(parts[0]))
        cid = ids.setdefault(cid, cid)
        if len(values) == 4:
            cx, cy, w, h = values
        else:
            xs, ys = values[0::2], values[1::2]
            w, h = max(xs) - min(xs), max(ys) - min(ys)
            cx, cy = min(xs) + w / 2, min(ys) + h / 2
        where = f"{lrel}:{n}"
        row = (where, image, split, categories.get(cid, cid), cid, cx, cy, w, h, "norm", None, where, False)
        for column, value in zip(columns, row, strict=True):  # in BOX_COLUMNS order
            column.append(value)
    return len(columns[0]) - before

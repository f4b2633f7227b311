"""Object-detection annotations: COCO JSON and YOLO text files -> one table of boxes.

* **COCO**: ``instances_*.json`` at the dataset root or in ``annotations/`` (or ``coco=FILE``).
  Images are resolved relative to ``images=DIR`` when given, else to the folder (tried in
  order: the JSON's folder, its parent, the root, ``images/``, ``<suffix>/`` and
  ``images/<suffix>/`` where the JSON is ``instances_<suffix>.json``) holding the most of
  its file names. The split comes from the file name (``instances_val2017.json`` -> val).
* **YOLO**: ``images/[<split>/]*`` with ``labels/[<split>/]*.txt`` beside them (or the
  Roboflow ``<split>/images`` + ``<split>/labels``); one box per line, ``class cx cy w h``
  normalised to 0..1; class names from ``data.yaml`` (``names:`` list or mapping) or
  ``classes.txt``. An empty label file marks an image with no objects on purpose; a missing
  one is an unannotated image.

Every box keeps where it came from (``where``: ``file: annotations[i]`` or ``file:line``)
so a finding points at the line to fix. Malformed files raise
:class:`auditor.io.dataset.DatasetError` naming the file, the line or JSON path, and what was
expected. Image paths cannot escape the dataset root. Geometry is kept as written (COCO
pixels ``x, y, w, h``; YOLO normalised centre and size) and turned into normalised corners
by :func:`geometry` once image sizes are known.
"""

from __future__ import annotations

import json
import math
import os
import re
import stat
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath

import numpy as np
import pandas as pd

from auditor.core.errors import DatasetError
from auditor.core.paths import SPLIT_NAMES, inside_real, manifest_path, within
from auditor.io.decode import open_text

BOX_COLUMNS = ["box_id", "path", "split", "category", "category_id", "x", "y", "w", "h", "units", "source", "where",
               "crowd"]  # fmt: skip
_TOKEN_RE = re.compile(r"[a-z]+")


@dataclass
class Annotations:
    """``boxes``: one row per box (:data:`BOX_COLUMNS`; ``units`` ``px`` = COCO top-left
    x, y and size in pixels, ``norm`` = YOLO centre and size in 0..1; ``category`` is the
    name, or the raw id when it is unknown). ``images``: one row per annotated image path
    (path, split, declared width/height or NaN, exists, annotated, background, where).
    ``problems``: references that cannot be resolved (``missing_image``, ``unknown_category``,
    ``unknown_image_id``), each ``{"kind", "path", "where", "message", ...}``."""

    format: str
    files: list[str]
    boxes: pd.DataFrame
    images: pd.DataFrame
    categories: dict[str, str]  # id (as text) -> name
    problems: list[dict] = field(default_factory=list)
    names_known: bool = True  # False: YOLO without data.yaml/classes.txt
    entries: dict[str, str] = field(default_factory=dict)  # COCO "file: images[i]" -> image path


def split_of(name: str) -> str | None:
    """train/val/test/... from a file or folder name, as a whole word (``instances_val2017``
    -> ``val``; ``instances_latest``, ``devices`` -> None)."""
    return next((t for t in _TOKEN_RE.findall(name.lower()) if t in SPLIT_NAMES), None)


def _category_id(value) -> str:
    """A category id as text; 1.0 and "1" are the id 1."""
    if isinstance(value, float) and value.is_integer():
        value = int(value)
    return str(value)


def _rel(path: Path, root: Path) -> str:
    return path.resolve().relative_to(root.resolve()).as_posix()


# --- COCO --------------------------------------------------------------------------------------


def find_coco(root: Path) -> list[Path]:
    """``instances_*.json`` at the root or in ``annotations/``."""
    return sorted([*root.glob("instances_*.json"), *root.glob("annotations/instances_*.json")])


def _number(x) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x)


def _preview(value, limit: int = 80) -> str:
    """The start of ``value`` as JSON, at most ``limit`` characters, for an error message.
    Costs a few hundred steps whatever the value: containers deeper than 3 levels show as
    ``[...]`` / ``{...}`` and at most 8 items of each are written (``json.dumps`` of a value
    nested 100,000 deep recurses past Python's limit; of a 50 MB value, writes 50 MB)."""

    def write(v, depth: int) -> str:
        if isinstance(v, dict):
            if depth >= 3:
                return "{...}"
            items = [f"{json.dumps(str(k)[:limit])}: {write(x, depth + 1)}" for k, x in list(v.items())[:8]]
            return "{" + ", ".join(items + (["..."] if len(v) > 8 else [])) + "}"
        if isinstance(v, list):
            if depth >= 3:
                return "[...]"
            items = [write(x, depth + 1) for x in v[:8]]
            return "[" + ", ".join(items + (["..."] if len(v) > 8 else [])) + "]"
        if isinstance(v, str):
            return json.dumps(v[:limit])
        return json.dumps(v) if isinstance(v, (int, float, bool)) or v is None else repr(v)[:limit]

    text = write(value, 0)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _scalar(value) -> bool:
    """A JSON id or name (number, string, true/false, null), not a list or object."""
    return not isinstance(value, (list, dict))


def _load_json(path: Path) -> dict:
    try:
        with open_text(path, "COCO file", encoding="utf-8") as fh:
            data = json.load(fh)
    except json.JSONDecodeError as exc:
        raise DatasetError(f"{path}: not valid JSON (line {exc.lineno}, column {exc.colno}): {exc.msg}") from None
    except RecursionError:
        raise DatasetError(f"{path}: not a COCO file: JSON nested deeper than Python can read") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise DatasetError(f"cannot read {path}: {exc}") from None
    if not isinstance(data, dict):
        raise DatasetError(f"{path}: $: expected a COCO object with images, annotations, categories")
    for key in ("images", "annotations", "categories"):
        if not isinstance(data.get(key), list):
            raise DatasetError(f"{path}: $.{key}: expected a list, found {type(data.get(key)).__name__}")
    return data


def _image_root(root: Path, path: Path, names: list[str], images_dir: Path | None) -> Path:
    if images_dir is not None:
        return images_dir
    suffix = path.stem.split("instances_", 1)[-1]
    candidates = [path.parent, path.parent.parent, root, root / "images", root / suffix, root / "images" / suffix]
    best, best_n = root, -1
    sample = names[:100]
    for c in dict.fromkeys(candidates):
        if not _inside(c, root):
            continue
        n = sum((c / PurePosixPath(s.replace("\\", "/"))).is_file() for s in sample if s and ".." not in s)
        if n > best_n:
            best, best_n = c, n
    return best


def _image_locator(root: Path, base: Path) -> Callable[[str], tuple[str, bool] | None]:
    """A function from a COCO ``file_name`` (relative to ``base``) to (its path relative to
    ``root``, POSIX, through resolved folders; whether it is a regular file), or None when it
    escapes ``base`` or ``root`` (``..``, absolute, a drive, a symbolic link out).

    Each folder is resolved once and each file ``lstat``'ed once: four path resolutions an
    image made a 20,000-image COCO file slow to read."""
    real_root, real_base = os.path.realpath(root), os.path.realpath(base)
    folders: dict[str, str] = {}  # folder as written -> resolved

    def locate(name: str) -> tuple[str, bool] | None:
        try:
            rel = manifest_path(name)
        except DatasetError:
            return None
        folder, leaf = os.path.split(os.path.join(base, *rel.split("/")))
        real_folder = folders.get(folder)
        if real_folder is None:
            real_folder = folders[folder] = os.path.realpath(folder)
        full, shown = os.path.join(folder, leaf), os.path.join(real_folder, leaf)
        try:
            mode = os.lstat(full).st_mode
            real = shown
            if stat.S_ISLNK(mode):  # only a file that is a link itself needs resolving
                real = os.path.realpath(full)
                mode = os.stat(full).st_mode
        except OSError:  # missing (or a dangling link: missing too)
            mode, real = 0, os.path.realpath(full)
        if not all(inside_real(p, r) for p, r in ((real, real_base), (real, real_root), (shown, real_root))):
            return None
        return shown[len(real_root) :].lstrip(os.sep).replace(os.sep, "/"), stat.S_ISREG(mode)

    return locate


def read_coco(root: Path, files: list[Path], images_dir: Path | None = None) -> Annotations:
    root = Path(root)
    if images_dir is not None:
        images_dir = Path(images_dir)
        if not _inside(images_dir, root):
            raise DatasetError(f"--images {images_dir} must be inside the dataset folder {root}")
        if not images_dir.is_dir():
            raise DatasetError(f"--images {images_dir} is not a folder")
    boxes, images, problems = [], {}, []
    entries: dict[str, str] = {}
    categories: dict[str, str] = {}
    shown: list[str] = []
    for path in files:
        data = _load_json(path)
        label = path.name
        split = split_of(path.stem)
        shown.append(_rel(path, root) if _inside(path, root) else str(path))
        for i, cat in enumerate(data["categories"]):
            if not isinstance(cat, dict) or not _scalar(cat.get("id", [])) or not isinstance(cat.get("name"), str):
                raise DatasetError(f"{path}: $.categories[{i}]: expected {{\"id\": ..., \"name\": \"...\"}}, "
                                   f"found {_preview(cat)}")  # fmt: skip
            categories[_category_id(cat["id"])] = cat["name"]
        names = []
        for i, img in enumerate(data["images"]):
            if not isinstance(img, dict) or not _scalar(img.get("id", [])) or not isinstance(img.get("file_name"), str):
                raise DatasetError(f"{path}: $.images[{i}]: expected {{\"id\": ..., \"file_name\": \"...\"}}, "
                                   f"found {_preview(img)}")  # fmt: skip
            names.append(img["file_name"])
        base = _image_root(root, path, names, images_dir)
        locate = _image_locator(root, base)
        by_id: dict[str, str] = {}
        listed: list[str] = []
        for i, img in enumerate(data["images"]):
            found = locate(img["file_name"])
            if found is None:
                raise DatasetError(f"{path}: $.images[{i}].file_name: {_preview(img['file_name'])} escapes the dataset "
                                   "root")  # fmt: skip
            rel, exists = found
            by_id[str(img["id"])] = rel
            entries[f"{label}: images[{i}]"] = rel
            listed.append(rel)
            if rel in images:  # listed before (another file, or twice here): one image, first split
                first = images[rel]
                if first["split"] != split:
                    problems.append({"kind": "shared_image", "path": rel, "where": f"{label}: images[{i}]",
                                     "splits": sorted(s for s in {first["split"], split} if s),
                                     "message": f"{rel} is listed in {first['where']} ({first['split']}) and in "
                                                f"{label}: images[{i}] ({split})"})  # fmt: skip
                continue
            w, h = img.get("width"), img.get("height")
            images[rel] = {"path": rel, "split": split, "width": float(w) if _number(w) and w > 0 else np.nan,
                           "height": float(h) if _number(h) and h > 0 else np.nan, "exists": exists,
                           "annotated": False, "background": False, "where": f"{label}: images[{i}]"}  # fmt: skip
        if listed and not any(images[r]["exists"] for r in listed):
            problems.append({"kind": "no_images_found", "path": None, "where": label,
                             "message": f"none of the {len(listed)} images {label} lists exist under {base}; "
                                        "name their folder with --images DIR"})  # fmt: skip
        for i, ann in enumerate(data["annotations"]):
            where = f"{label}: annotations[{i}]"
            if not isinstance(ann, dict):
                raise DatasetError(f"{path}: $.annotations[{i}]: expected an object, found {_preview(ann)}")
            bbox = ann.get("bbox")
            if bbox is None:
                bbox = _polygon_box(ann.get("segmentation"))
            if not (isinstance(bbox, list) and len(bbox) == 4 and all(_number(v) for v in bbox)):
                raise DatasetError(f"{path}: $.annotations[{i}].bbox: expected [x, y, width, height] (4 numbers) "
                                   f"or a polygon segmentation, found {_preview(bbox)}")  # fmt: skip
            for key in ("image_id", "category_id"):
                if key not in ann:
                    raise DatasetError(f"{path}: $.annotations[{i}].{key}: missing")
                if not _scalar(ann[key]):
                    raise DatasetError(f"{path}: $.annotations[{i}].{key}: expected a number or a string, found "
                                       f"{_preview(ann[key])}")  # fmt: skip
            rel = by_id.get(str(ann["image_id"]))
            if rel is None:
                problems.append({"kind": "unknown_image_id", "path": None, "where": where,
                                 "message": f"{where} refers to image id {str(ann['image_id'])[:80]}, which {label} "
                                            "does not list"})  # fmt: skip
                continue
            images[rel]["annotated"] = True
            cid = _category_id(ann["category_id"])
            source = ann.get("annotator", ann.get("source"))
            if not _scalar(source):  # a name, not a structure: keep a bounded preview of it
                source = _preview(source)
            boxes.append({"box_id": where, "path": rel, "split": images[rel]["split"],
                          "crowd": bool(ann.get("iscrowd")),
                          "category": categories.get(cid, cid), "category_id": cid, "x": float(bbox[0]),
                          "y": float(bbox[1]), "w": float(bbox[2]), "h": float(bbox[3]), "units": "px",
                          "source": None if source is None else str(source), "where": where})  # fmt: skip
    ann = Annotations("coco", shown, pd.DataFrame(boxes, columns=BOX_COLUMNS), _images_frame(images),
                      categories, problems, entries=entries)  # fmt: skip
    _resolve_problems(ann)
    return ann


def _polygon_box(segmentation) -> list[float] | None:
    """[x, y, w, h] around COCO polygon segmentation(s) (a list of [x1, y1, x2, y2, ...])."""
    if not isinstance(segmentation, list) or not segmentation:
        return None
    polys = segmentation if isinstance(segmentation[0], list) else [segmentation]
    xs = [v for p in polys if isinstance(p, list) for v in p[0::2]]
    ys = [v for p in polys if isinstance(p, list) for v in p[1::2]]
    if not xs or not ys or not all(_number(v) for v in xs + ys):
        return None
    return [min(xs), min(ys), max(xs) - min(xs), max(ys) - min(ys)]


def _inside(path: Path, root: Path) -> bool:
    """``path`` lies under ``root`` once symbolic links are followed."""
    return within(path.resolve(), root.resolve())


def _images_frame(images: dict) -> pd.DataFrame:
    cols = ["path", "split", "width", "height", "exists", "annotated", "background", "where"]
    return pd.DataFrame(list(images.values()), columns=cols)


def _resolve_problems(ann: Annotations) -> None:
    """Add missing images and unknown categories to ``problems``."""
    per_image = ann.boxes["path"].value_counts().to_dict()  # one pass, not one per missing image
    for row in ann.images[~ann.images["exists"].astype(bool)].itertuples():
        n = int(per_image.get(row.path, 0))
        ann.problems.append({"kind": "missing_image", "path": row.path, "where": row.where, "boxes": n,
                             "message": f"{row.path} is annotated ({n} boxes, {row.where}) but the file does not "
                                        "exist"})  # fmt: skip
    if ann.names_known:
        unknown = ann.boxes[~ann.boxes["category_id"].isin(list(ann.categories))]
        for row in unknown.itertuples():
            ann.problems.append({"kind": "unknown_category", "path": row.path, "where": row.where,
                                 "category_id": row.category_id, "box_id": row.box_id,
                                 "message": f"{row.where}: category {row.category_id} is not among the "
                                            f"{len(ann.categories)} declared categories"})  # fmt: skip


# --- YOLO --------------------------------------------------------------------------------------


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
    if not _scalar(value):
        raise DatasetError(f"{path}: {where}: expected a class name, found {_preview(value)}")
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
                return {_category_id(k): _class_name(path, f"names[{_preview(k)}]", v) for k, v in names.items()}, True
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
        if _inside(full, img_dir):
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
        lrel = label.relative_to(root).as_posix() if label.exists() and _inside(label, root) else None
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
            if not _inside(label, root):
                continue
            lrel = label.relative_to(root).as_posix()
            inner = label.relative_to(lab_dir).with_suffix("")
            split = _yolo_split(root, img_dir, inner)
            img_rel = (img_dir / inner).relative_to(root).as_posix() + ".*"
            n = _read_label_file(label, lrel, img_rel, split, categories, boxes)
            files.append(lrel)
            problems.append({"kind": "missing_image", "path": img_rel, "where": lrel, "boxes": n,
                             "message": f"{lrel} has {n} boxes but no image {img_rel} exists"})  # fmt: skip
    ann = Annotations("yolo", sorted(files), pd.DataFrame(boxes, columns=BOX_COLUMNS), _images_frame(images),
                      categories, problems, names_known=known)  # fmt: skip
    if known:
        _resolve_problems(ann)
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


# --- geometry ----------------------------------------------------------------------------------


def geometry(boxes: pd.DataFrame, sizes: pd.DataFrame) -> pd.DataFrame:
    """``boxes`` with normalised corners ``x0 y0 x1 y1`` (0..1 inside the image), pixel size
    ``pw ph`` and the image ``width height`` used (``sizes``: path -> width, height; COCO's
    declared size wins over the measured one). Rows whose image size is unknown get NaN."""
    b = boxes.copy()
    wh = sizes.set_index("path")[["width", "height"]]
    b = b.join(wh, on="path")
    px = b["units"] == "px"
    W, H = b["width"].astype(float), b["height"].astype(float)
    x0 = np.where(px, b["x"] / W, b["x"] - b["w"] / 2)
    y0 = np.where(px, b["y"] / H, b["y"] - b["h"] / 2)
    nw = np.where(px, b["w"] / W, b["w"])
    nh = np.where(px, b["h"] / H, b["h"])
    b["x0"], b["y0"], b["x1"], b["y1"] = x0, y0, x0 + nw, y0 + nh
    b["pw"], b["ph"] = nw * W, nh * H
    return b


def iou(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """IoU of boxes given as x0, y0, x1, y1 on the last axis, broadcast like any numpy
    operation: ``iou(a, b)`` for pairs (n, 4) and (n, 4) -> (n,)."""
    ix = np.clip(np.minimum(a[..., 2], b[..., 2]) - np.maximum(a[..., 0], b[..., 0]), 0, None)
    iy = np.clip(np.minimum(a[..., 3], b[..., 3]) - np.maximum(a[..., 1], b[..., 1]), 0, None)
    inter = ix * iy
    area = lambda z: np.clip(z[..., 2] - z[..., 0], 0, None) * np.clip(z[..., 3] - z[..., 1], 0, None)  # noqa: E731
    union = area(a) + area(b) - inter
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(union > 0, inter / union, 0.0)


def iou_matrix(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """IoU between boxes (n, 4) and (m, 4) given as x0, y0, x1, y1: (n, m). Memory n x m:
    for many boxes, :func:`overlapping_pairs`."""
    return iou(a[:, None, :], b[None, :, :])


#: Candidate pairs examined at once by :func:`overlapping_pairs` (bounds its memory: about
#: 250 bytes a pair in temporaries, so 250 MB).
PAIR_CHUNK = 1_000_000


def overlapping_pairs(
    corners: np.ndarray, groups: np.ndarray, min_iou: float
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Every pair of boxes in the same group (image) with IoU >= ``min_iou``, without
    comparing every pair: ``(i, j, iou)``, ``i < j`` row numbers into ``corners`` ((n, 4)
    x0 y0 x1 y1), ordered by (group, i, j). ``groups``: (n,) group of each box as a code
    0..k (``Series.cat.codes``). The same pairs and values (:func:`iou`) as
    :func:`iou_matrix` over each group, in O(n log n + pairs examined).

    Why it may skip pairs: IoU >= t > 0 needs the intersection width >= t x the width of
    either box (intersection <= width x the shorter height, and >= t x either area), so the
    box with the smaller ``x0`` reaches at least t of its width past the other's ``x0``:
    ``x0_b - x0_a <= (1 - t) w_a``. Boxes sorted by ``x0`` within their group are compared
    only with those inside that window (plus a margin for rounding). With ``min_iou <= 0``
    every pair qualifies and every pair is examined. Boxes with a non-finite corner have a
    NaN IoU and never qualify.
    """
    empty = np.zeros(0, np.int64)
    corners = np.asarray(corners, np.float64)
    rows = np.flatnonzero(np.isfinite(corners).all(axis=1))
    if len(rows) < 2:
        return empty, empty.copy(), np.zeros(0)
    c, g = corners[rows], np.asarray(groups, np.int64)[rows]
    x0, x1 = c[:, 0], c[:, 2]
    if min_iou > 0:
        reach = max(0.0, 1.0 - min_iou) * np.clip(x1 - x0, 0, None) + 1e-9 * (np.abs(x0) + np.abs(x1) + 1e-9)
    else:
        reach = np.full(len(c), np.inf)
    order = np.lexsort((x0, g))  # by group, then x0
    xs, gs = x0[order], g[order]
    # End of each box's window in one searchsorted: rank x0 among all values, then key
    # (group, rank) rises monotonically through the sorted boxes.
    values = np.unique(xs)
    span = len(values) + 1
    key = gs * span + np.searchsorted(values, xs)
    last = np.searchsorted(values, xs + reach[order], side="right") - 1
    end = np.searchsorted(key, gs * span + last, side="right")
    count = end - np.arange(len(order)) - 1
    cum = np.cumsum(count)
    out_i, out_j, out_iou = [], [], []
    start, done = 0, 0  # done: candidates of the boxes before start
    while start < len(order):
        # boxes [start, stop) whose candidates fit in one chunk (at least one box)
        stop = max(start + 1, int(np.searchsorted(cum, done + PAIR_CHUNK, side="right")))
        n = count[start:stop]
        done = int(cum[stop - 1])
        total = int(n.sum())
        if total:
            p = np.repeat(np.arange(start, stop), n)
            first = np.repeat(np.cumsum(n) - n, n)
            q = p + 1 + (np.arange(total) - first)
            a, b = order[p], order[q]
            v = iou(c[a], c[b])
            hit = v >= min_iou
            a, b = a[hit], b[hit]
            out_i.append(rows[np.minimum(a, b)])
            out_j.append(rows[np.maximum(a, b)])
            out_iou.append(v[hit])
        start = stop
    if not out_i:
        return empty, empty.copy(), np.zeros(0)
    i, j, v = np.concatenate(out_i), np.concatenate(out_j), np.concatenate(out_iou)
    sort = np.lexsort((j, i, np.asarray(groups, np.int64)[i]))
    return i[sort], j[sort], v[sort]

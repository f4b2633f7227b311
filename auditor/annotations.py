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
:class:`auditor.dataset.DatasetError` naming the file, the line or JSON path, and what was
expected. Image paths cannot escape the dataset root. Geometry is kept as written (COCO
pixels ``x, y, w, h``; YOLO normalised centre and size) and turned into normalised corners
by :func:`geometry` once image sizes are known.
"""

from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath

import numpy as np
import pandas as pd

from .dataset import SPLIT_NAMES, DatasetError, _within, safe_relative

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


def _load_json(path: Path) -> dict:
    try:
        with open(path, encoding="utf-8") as fh:
            data = json.load(fh)
    except json.JSONDecodeError as exc:
        raise DatasetError(f"{path}: not valid JSON (line {exc.lineno}, column {exc.colno}): {exc.msg}") from None
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
            if not isinstance(cat, dict) or "id" not in cat or not isinstance(cat.get("name"), str):
                raise DatasetError(f"{path}: $.categories[{i}]: expected {{\"id\": ..., \"name\": \"...\"}}, "
                                   f"found {json.dumps(cat)[:80]}")  # fmt: skip
            categories[_category_id(cat["id"])] = cat["name"]
        names = []
        for i, img in enumerate(data["images"]):
            if not isinstance(img, dict) or "id" not in img or not isinstance(img.get("file_name"), str):
                raise DatasetError(f"{path}: $.images[{i}]: expected {{\"id\": ..., \"file_name\": \"...\"}}, "
                                   f"found {json.dumps(img)[:80]}")  # fmt: skip
            names.append(img["file_name"])
        base = _image_root(root, path, names, images_dir)
        by_id: dict[str, str] = {}
        listed: list[str] = []
        for i, img in enumerate(data["images"]):
            try:
                full = safe_relative(base, img["file_name"])
            except DatasetError:
                full = None
            if full is None or not _inside(full, root):
                raise DatasetError(f"{path}: $.images[{i}].file_name: {img['file_name']!r} escapes the dataset "
                                   "root")  # fmt: skip
            rel = (full.parent.resolve() / full.name).relative_to(root.resolve()).as_posix()
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
                           "height": float(h) if _number(h) and h > 0 else np.nan, "exists": full.is_file(),
                           "annotated": False, "background": False, "where": f"{label}: images[{i}]"}  # fmt: skip
        if listed and not any(images[r]["exists"] for r in listed):
            problems.append({"kind": "no_images_found", "path": None, "where": label,
                             "message": f"none of the {len(listed)} images {label} lists exist under {base}; "
                                        "name their folder with --images DIR"})  # fmt: skip
        for i, ann in enumerate(data["annotations"]):
            where = f"{label}: annotations[{i}]"
            if not isinstance(ann, dict):
                raise DatasetError(f"{path}: $.annotations[{i}]: expected an object, found {json.dumps(ann)[:80]}")
            bbox = ann.get("bbox")
            if bbox is None:
                bbox = _polygon_box(ann.get("segmentation"))
            if not (isinstance(bbox, list) and len(bbox) == 4 and all(_number(v) for v in bbox)):
                raise DatasetError(f"{path}: $.annotations[{i}].bbox: expected [x, y, width, height] (4 numbers) "
                                   f"or a polygon segmentation, found {json.dumps(bbox)[:80]}")  # fmt: skip
            for key in ("image_id", "category_id"):
                if key not in ann:
                    raise DatasetError(f"{path}: $.annotations[{i}].{key}: missing")
            rel = by_id.get(str(ann["image_id"]))
            if rel is None:
                problems.append({"kind": "unknown_image_id", "path": None, "where": where,
                                 "message": f"{where} refers to image id {ann['image_id']}, which {label} does "
                                            "not list"})  # fmt: skip
                continue
            images[rel]["annotated"] = True
            cid = _category_id(ann["category_id"])
            source = ann.get("annotator", ann.get("source"))
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
    return _within(path.resolve(), root.resolve())


def _images_frame(images: dict) -> pd.DataFrame:
    cols = ["path", "split", "width", "height", "exists", "annotated", "background", "where"]
    return pd.DataFrame(list(images.values()), columns=cols)


def _resolve_problems(ann: Annotations) -> None:
    """Add missing images and unknown categories to ``problems``."""
    for row in ann.images.itertuples():
        if not row.exists:
            n = int((ann.boxes["path"] == row.path).sum())
            ann.problems.append({"kind": "missing_image", "path": row.path, "where": row.where, "boxes": n,
                                 "message": f"{row.path} is annotated ({n} boxes, {row.where}) but the file does "
                                            "not exist"})  # fmt: skip
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


def _yolo_names(root: Path) -> tuple[dict[str, str], bool]:
    for name in ("data.yaml", "dataset.yaml", "data.yml"):
        path = root / name
        if path.is_file():
            import yaml

            try:
                data = yaml.safe_load(path.read_text(encoding="utf-8-sig")) or {}
            except (yaml.YAMLError, OSError, UnicodeDecodeError) as exc:
                raise DatasetError(f"{path}: not valid YAML: {exc}") from None
            names = data.get("names") if isinstance(data, dict) else None
            if isinstance(names, list):
                return {str(i): str(n) for i, n in enumerate(names)}, True
            if isinstance(names, dict):
                return {_category_id(k): str(v) for k, v in names.items()}, True
            raise DatasetError(f"{path}: names: expected a list of class names or a mapping id -> name")
    for path in (root / "classes.txt", root / "labels" / "classes.txt"):  # LabelImg writes the latter
        if path.is_file():
            try:
                lines = [ln.strip() for ln in path.read_text(encoding="utf-8-sig").splitlines()]
            except (OSError, UnicodeDecodeError) as exc:
                raise DatasetError(f"cannot read {path}: {exc}") from None
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
    boxes, images = [], {}
    used_labels: dict[Path, str] = {}
    files: list[str] = []
    for rel in image_paths:
        full = root / rel
        found = yolo_label_file(full, pairs)
        if found is None:
            continue
        img_dir, _, label = found
        split = _yolo_split(root, img_dir, full.relative_to(img_dir))
        lrel = label.relative_to(root).as_posix() if label.is_file() and _inside(label, root) else None
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
        rows = _read_label_file(label, lrel, rel, split, categories)
        images[rel]["annotated"] = bool(rows)
        images[rel]["background"] = not rows
        boxes.extend(rows)
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
            rows = _read_label_file(label, lrel, img_rel, split, categories)
            files.append(lrel)
            problems.append({"kind": "missing_image", "path": img_rel, "where": lrel, "boxes": len(rows),
                             "message": f"{lrel} has {len(rows)} boxes but no image {img_rel} exists"})  # fmt: skip
    ann = Annotations("yolo", sorted(files), pd.DataFrame(boxes, columns=BOX_COLUMNS), _images_frame(images),
                      categories, problems, names_known=known)  # fmt: skip
    if known:
        _resolve_problems(ann)
    return ann


def _read_label_file(path: Path, lrel: str, image: str, split, categories: dict[str, str]) -> list[dict]:
    """Boxes of one YOLO label file: ``class cx cy w h`` lines, or segmentation polygon lines
    ``class x1 y1 x2 y2 x3 y3 ...`` (the box around the polygon)."""
    try:
        text = path.read_text(encoding="utf-8-sig")
    except (OSError, UnicodeDecodeError) as exc:
        raise DatasetError(f"cannot read {path}: {exc}") from None
    rows = []
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
        if len(values) == 4:
            cx, cy, w, h = values
        else:
            xs, ys = values[0::2], values[1::2]
            w, h = max(xs) - min(xs), max(ys) - min(ys)
            cx, cy = min(xs) + w / 2, min(ys) + h / 2
        rows.append({"box_id": f"{lrel}:{n}", "path": image, "split": split, "category": categories.get(cid, cid),
                     "category_id": cid, "x": cx, "y": cy, "w": w, "h": h, "units": "norm", "source": None,
                     "where": f"{lrel}:{n}", "crowd": False})  # fmt: skip
    return rows


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


def iou_matrix(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """IoU between boxes (n, 4) and (m, 4) given as x0, y0, x1, y1."""
    ix = np.clip(np.minimum(a[:, None, 2], b[None, :, 2]) - np.maximum(a[:, None, 0], b[None, :, 0]), 0, None)
    iy = np.clip(np.minimum(a[:, None, 3], b[None, :, 3]) - np.maximum(a[:, None, 1], b[None, :, 1]), 0, None)
    inter = ix * iy
    area = lambda z: np.clip(z[:, 2] - z[:, 0], 0, None) * np.clip(z[:, 3] - z[:, 1], 0, None)  # noqa: E731
    union = area(a)[:, None] + area(b)[None, :] - inter
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(union > 0, inter / union, 0.0)

"""COCO detection annotations -> :class:`auditor.io.annotation_table.Annotations`.

Files: ``instances_*.json`` at the dataset root or in ``annotations/`` (or ``coco=FILE``).
Images are resolved relative to ``images=DIR`` when given, else to the folder (tried in
order: the JSON's folder, its parent, the root, ``images/``, ``<suffix>/`` and
``images/<suffix>/`` where the JSON is ``instances_<suffix>.json``) holding the most of
its file names. The split comes from the file name (``instances_val2017.json`` -> val).

Every box keeps where it came from (``where``: ``file: annotations[i]``), so a finding points at
the entry to fix; malformed files raise :class:`auditor.io.dataset.DatasetError` naming the file,
the JSON path and what was expected. Image paths cannot escape the dataset root.
"""

from __future__ import annotations

import json
import math
import os
import stat
from collections.abc import Callable
from pathlib import Path, PurePosixPath

import numpy as np
import pandas as pd

from auditor.core.errors import DatasetError
from auditor.core.paths import inside_real, manifest_path
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


def _rel(path: Path, root: Path) -> str:
    return path.resolve().relative_to(root.resolve()).as_posix()


def find_coco(root: Path) -> list[Path]:
    """``instances_*.json`` at the root or in ``annotations/``."""
    return sorted([*root.glob("instances_*.json"), *root.glob("annotations/instances_*.json")])


def _number(x) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x)


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
        if not resolves_inside(c, root):
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
        if not resolves_inside(images_dir, root):
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
        shown.append(_rel(path, root) if resolves_inside(path, root) else str(path))
        for i, cat in enumerate(data["categories"]):
            if not isinstance(cat, dict) or not is_scalar(cat.get("id", [])) or not isinstance(cat.get("name"), str):
                raise DatasetError(f"{path}: $.categories[{i}]: expected {{\"id\": ..., \"name\": \"...\"}}, "
                                   f"found {preview(cat)}")  # fmt: skip
            categories[category_key(cat["id"])] = cat["name"]
        names = []
        for i, img in enumerate(data["images"]):
            if (
                not isinstance(img, dict)
                or not is_scalar(img.get("id", []))
                or not isinstance(img.get("file_name"), str)
            ):
                raise DatasetError(f"{path}: $.images[{i}]: expected {{\"id\": ..., \"file_name\": \"...\"}}, "
                                   f"found {preview(img)}")  # fmt: skip
            names.append(img["file_name"])
        base = _image_root(root, path, names, images_dir)
        locate = _image_locator(root, base)
        by_id: dict[str, str] = {}
        listed: list[str] = []
        for i, img in enumerate(data["images"]):
            found = locate(img["file_name"])
            if found is None:
                raise DatasetError(f"{path}: $.images[{i}].file_name: {preview(img['file_name'])} escapes the dataset "
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
                raise DatasetError(f"{path}: $.annotations[{i}]: expected an object, found {preview(ann)}")
            bbox = ann.get("bbox")
            if bbox is None:
                bbox = _polygon_box(ann.get("segmentation"))
            if not (isinstance(bbox, list) and len(bbox) == 4 and all(_number(v) for v in bbox)):
                raise DatasetError(f"{path}: $.annotations[{i}].bbox: expected [x, y, width, height] (4 numbers) "
                                   f"or a polygon segmentation, found {preview(bbox)}")  # fmt: skip
            for key in ("image_id", "category_id"):
                if key not in ann:
                    raise DatasetError(f"{path}: $.annotations[{i}].{key}: missing")
                if not is_scalar(ann[key]):
                    raise DatasetError(f"{path}: $.annotations[{i}].{key}: expected a number or a string, found "
                                       f"{preview(ann[key])}")  # fmt: skip
            rel = by_id.get(str(ann["image_id"]))
            if rel is None:
                problems.append({"kind": "unknown_image_id", "path": None, "where": where,
                                 "message": f"{where} refers to image id {str(ann['image_id'])[:80]}, which {label} "
                                            "does not list"})  # fmt: skip
                continue
            images[rel]["annotated"] = True
            cid = category_key(ann["category_id"])
            source = ann.get("annotator", ann.get("source"))
            if not is_scalar(source):  # a name, not a structure: keep a bounded preview of it
                source = preview(source)
            boxes.append({"box_id": where, "path": rel, "split": images[rel]["split"],
                          "crowd": bool(ann.get("iscrowd")),
                          "category": categories.get(cid, cid), "category_id": cid, "x": float(bbox[0]),
                          "y": float(bbox[1]), "w": float(bbox[2]), "h": float(bbox[3]), "units": "px",
                          "source": None if source is None else str(source), "where": where})  # fmt: skip
    ann = Annotations("coco", shown, pd.DataFrame(boxes, columns=BOX_COLUMNS), images_frame(images),
                      categories, problems, entries=entries)  # fmt: skip
    resolve_problems(ann)
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

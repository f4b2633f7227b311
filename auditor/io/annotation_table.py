"""What the COCO and YOLO readers (:mod:`auditor.io.coco`, :mod:`auditor.io.yolo`) return, one
table of boxes (:class:`Annotations`, :data:`BOX_COLUMNS`), and the helpers both share: the split
in a file name, a category id as text, a bounded preview of a malformed value for an error
message, the dataset-root test, and the unresolved references added to ``problems``.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd

from auditor.core.paths import SPLIT_NAMES, within

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


def category_key(value) -> str:
    """A category id as text; 1.0 and "1" are the id 1."""
    if isinstance(value, float) and value.is_integer():
        value = int(value)
    return str(value)


def preview(value, limit: int = 80) -> str:
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


def is_scalar(value) -> bool:
    """A JSON id or name (number, string, true/false, null), not a list or object."""
    return not isinstance(value, (list, dict))


def resolves_inside(path: Path, root: Path) -> bool:
    """``path`` lies under ``root`` once symbolic links are followed."""
    return within(path.resolve(), root.resolve())


def images_frame(images: dict) -> pd.DataFrame:
    cols = ["path", "split", "width", "height", "exists", "annotated", "background", "where"]
    return pd.DataFrame(list(images.values()), columns=cols)


def resolve_problems(ann: Annotations) -> None:
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

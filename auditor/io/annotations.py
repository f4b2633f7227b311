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

The readers live in :mod:`auditor.io.coco` and :mod:`auditor.io.yolo`, the table they return
in :mod:`auditor.io.annotation_table`, box geometry in :mod:`auditor.io.box_geometry`; their
names are importable from here too.
"""

from __future__ import annotations

from auditor.io.annotation_table import BOX_COLUMNS, Annotations, split_of
from auditor.io.annotation_table import resolve_problems as _resolve_problems  # noqa: F401 (tests use the old name)
from auditor.io.box_geometry import PAIR_CHUNK, geometry, iou, iou_matrix, overlapping_pairs
from auditor.io.coco import find_coco, read_coco
from auditor.io.yolo import find_yolo, read_yolo, yolo_label_file

__all__ = [
    "BOX_COLUMNS",
    "PAIR_CHUNK",
    "Annotations",
    "find_coco",
    "find_yolo",
    "geometry",
    "iou",
    "iou_matrix",
    "overlapping_pairs",
    "read_coco",
    "read_yolo",
    "split_of",
    "yolo_label_file",
]

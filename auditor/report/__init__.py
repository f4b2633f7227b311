"""Outputs of a scan: ``report.json`` (the contract), the per-image table, ``report.html``.

The files are written together or not at all (:func:`auditor.fsutil.write_files`: each to a
temporary file beside it, fsync, then all renamed), so a reader never sees half a report, an
interrupted write leaves the previous one intact, and a full disk leaves nothing behind.
"""

from __future__ import annotations

import io
import json
from pathlib import Path
from typing import TYPE_CHECKING

import pandas as pd

from ..fsutil import (
    atomic_write_bytes,  # noqa: F401  (re-exported: callers import it from here)
    write_files,
)

if TYPE_CHECKING:
    from ..api import ScanResult
    from ..store import Store


def report_json_bytes(report: dict) -> bytes:
    return (json.dumps(report, indent=2, ensure_ascii=False, allow_nan=False) + "\n").encode("utf-8")


#: Columns of the per-image table, in order (hashes as hex text: Parquet has no uint64
#: that every reader understands).
IMAGE_COLUMNS = [
    "path", "split", "label", "ext", "format", "ok", "error_kind", "error", "content_hash",
    "file_size", "width", "height", "mode", "bit_depth", "has_alpha", "n_frames", "jpeg_quality",
    "brightness_mean", "brightness_p05", "brightness_p95", "contrast", "entropy", "sharpness",
    "laplacian_var", "detail_ratio", "noise_sigma", "channel_spread", "colorfulness", "pixel_hash", "phash", "dhash",
    "phash_mirror",
    "embedded",
]  # fmt: skip


def image_table(result: ScanResult) -> pd.DataFrame:
    """The per-image table: properties plus one ``is_<check>`` flag per check."""
    t = result.table.copy()
    for col in IMAGE_COLUMNS:
        if col not in t:
            t[col] = None
    t = t[IMAGE_COLUMNS].copy()
    for col in ("phash", "dhash", "phash_mirror"):
        t[col] = [f"{int(v):016x}" if v is not None and v == v else None for v in t[col]]
    index = {p: i for i, p in enumerate(t["path"])}
    for name in result.report["checks"]:
        t[f"is_{name}"] = False
    for f in result.findings:
        for p in f.paths:
            if p in index:
                t.iat[index[p], t.columns.get_loc(f"is_{f.check}")] = True
    return t


def write_outputs(result: ScanResult, store: Store) -> dict[str, Path]:
    """Write images.parquet, report.html (and projection.parquet when the scan compared sets)
    and report.json into ``result.out_dir``, all or none (:class:`auditor.fsutil.OutputError`
    says why none)."""
    from .html import render_html

    out = Path(result.out_dir)
    files = {"table": out / "images.parquet", "html": out / "report.html", "json": out / "report.json"}
    data = {"table": _parquet(image_table(result))}
    if result.projection is not None:
        files = {"projection": out / "projection.parquet", **files}
        data["projection"] = _parquet(result.projection)
    data["html"] = render_html(result, store).encode("utf-8")
    data["json"] = report_json_bytes(result.report)
    write_files({files[role]: data[role] for role in files})  # report.json last: it says the rest is there
    return files


def _parquet(frame: pd.DataFrame) -> bytes:
    buf = io.BytesIO()
    frame.to_parquet(buf, index=False)
    return buf.getvalue()

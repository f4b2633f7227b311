"""Outputs of a scan: ``report.json`` (the contract), the per-image table, ``report.html``.

The files are written together or not at all (:func:`auditor.core.fsutil.write_files`: each to a
temporary file beside it, fsync, then all renamed), so a reader never sees half a report, an
interrupted write leaves the previous one intact, and a full disk leaves nothing behind.
:mod:`.encode` makes the bytes, :mod:`.html` the page.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING

import pandas as pd

from auditor.core.fsutil import write_files
from auditor.io.dataset import release_unused_memory
from auditor.report.encode import image_table, parquet_bytes, report_json_view

if TYPE_CHECKING:
    from auditor.core.types import ScanResult
    from auditor.io.store import Store


def write_outputs(result: ScanResult, store: Store) -> dict[str, Path]:
    """Write images.parquet, report.html (and projection.parquet when the scan compared sets)
    and report.json into ``result.out_dir``, all or none (:class:`auditor.core.fsutil.OutputError`
    says why none)."""
    from auditor.report.html import render_html

    out = Path(result.out_dir)
    files = {"table": out / "images.parquet", "html": out / "report.html", "json": out / "report.json"}
    data = {"table": parquet_bytes(image_table(result))}
    # what Arrow's allocator kept of the tables built here (the per-image table and its
    # lookups: ~300 MB for a million rows) goes back before the next file is built
    release_unused_memory()
    if result.projection is not None:
        files = {"projection": out / "projection.parquet", **files}
        data["projection"] = parquet_bytes(result.projection)
    data["html"] = render_html(result.report, result.table, result.projection, store).encode("utf-8")
    release_unused_memory()
    data["json"] = report_json_view(result.report)  # a view of its buffer: no second copy of the bytes
    write_files({files[role]: data[role] for role in files})  # report.json last: it says the rest is there
    return files


#: The columns of images.parquet that report.html draws (the rest is report.json's).
HTML_COLUMNS = ["path", "split", "label", "ok", "format", "width", "height", "content_hash"]


def render_again(report_path: str | os.PathLike, out_dir: str | os.PathLike, store: Store) -> Path:
    """Draw ``report.html`` into ``out_dir`` again from a scan's files alone: ``report_path``
    (report.json), the ``images.parquet`` beside it, ``projection.parquet`` when the report
    has a projection, and the thumbnails in ``store`` (the cache the scan filled: without
    them the same page, with fewer pictures). The same bytes as the scan's own report.html.
    :class:`FileNotFoundError` naming a missing file; :class:`auditor.core.fsutil.OutputError`
    when ``out_dir`` cannot be written."""
    from auditor.policy.gate import load_report
    from auditor.report.html import render_html

    report_path = Path(report_path)
    report = load_report(report_path)
    folder = report_path.parent
    images = folder / "images.parquet"
    if not images.is_file():
        raise FileNotFoundError(f"{images}: not found (report.json and images.parquet are read together)")
    table = pd.read_parquet(images, columns=HTML_COLUMNS)
    projection = None
    if report.get("projection"):
        projection_path = folder / str(report["projection"].get("file", "projection.parquet"))
        if not projection_path.is_file():
            raise FileNotFoundError(f"{projection_path}: not found (the report has a projection)")
        projection = pd.read_parquet(projection_path)
    html = render_html(report, table, projection, store).encode("utf-8")
    out = Path(out_dir) / "report.html"
    write_files({out: html})
    return out

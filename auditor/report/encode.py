"""The bytes of a scan's files: ``report.json`` (:func:`report_json_bytes`, written a finding
at a time) and the per-image table (:func:`image_table`, Parquet): what the report writer
and the report page both read."""

from __future__ import annotations

import io
import json
import math
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd

from auditor.io.dataset import release_unused_memory

if TYPE_CHECKING:
    from auditor.core.types import ScanResult


def report_json_bytes(report: dict) -> bytes:
    """``report`` as ``report.json`` holds it: ``json.dumps(report, indent=2,
    ensure_ascii=False, allow_nan=False)`` and a newline, in UTF-8."""
    return bytes(report_json_view(report))


def report_json_view(report: dict) -> memoryview:
    """:func:`report_json_bytes` as a view of one buffer, built a finding at a time.

    ``json.dumps`` with ``indent`` runs the pure-Python encoder, which holds every piece of
    the document in a list before joining them: for a million findings about 1.7 GB and 8
    s. This writes the same text (the C string encoder for strings, :func:`_dump` for the
    indentation) into one buffer, in batches of findings.
    """
    buf = io.BytesIO()
    batch: list[str] = []
    for chunk in _chunks(report, 0):
        batch.append(chunk)
        if len(batch) >= 2048:
            buf.write("".join(batch).encode("utf-8"))
            batch.clear()
    batch.append("\n")
    buf.write("".join(batch).encode("utf-8"))
    return buf.getbuffer()


_encode_str = json.encoder.encode_basestring  # as json.dumps(..., ensure_ascii=False) writes a string


def _scalar(o) -> str | None:
    """A JSON scalar as ``json.dumps`` writes it; None for anything else."""
    if isinstance(o, str):
        return _encode_str(o)
    if o is None:
        return "null"
    if o is True:
        return "true"
    if o is False:
        return "false"
    if isinstance(o, int):
        return int.__repr__(o)
    if isinstance(o, float):
        if o != o or o in (math.inf, -math.inf):
            raise ValueError("Out of range float values are not JSON compliant: " + repr(o))
        return float.__repr__(o)
    return None


def _dump(o, level: int) -> str:
    """``json.dumps(o, indent=2, ensure_ascii=False, allow_nan=False)`` as it reads ``level``
    levels deep (every line after the first indented by ``2 * level`` spaces). Strings in
    JSON never hold a raw newline, so the indentation is in the joins alone."""
    kind = type(o)
    if kind is str:  # the common cases first, without the calls of the general ones
        return _encode_str(o)
    if kind is dict or kind is list:
        if not o:
            return "{}" if kind is dict else "[]"
        inner = "\n" + "  " * (level + 1)
        deeper = level + 1
        if kind is list:
            parts = [_encode_str(v) if type(v) is str else _dump(v, deeper) for v in o]
            return "[" + inner + ("," + inner).join(parts) + "\n" + "  " * level + "]"
        parts = []
        for k, v in o.items():
            if type(k) is not str:
                return _foreign(o, level)
            parts.append(_encode_str(k) + (": " + _encode_str(v) if type(v) is str else ": " + _dump(v, deeper)))
        return "{" + inner + ("," + inner).join(parts) + "\n" + "  " * level + "}"
    s = _scalar(o)
    if s is not None:
        return s
    if isinstance(o, (list, tuple)):
        return _dump(list(o), level)
    if isinstance(o, dict) and all(isinstance(k, str) for k in o):
        return _dump(dict(o), level)
    return _foreign(o, level)


def _foreign(o, level: int) -> str:
    """Anything :func:`_dump` does not write itself (keys that are not strings, a type JSON
    does not have): json's own words and errors, indented to ``level``."""
    text = json.dumps(o, indent=2, ensure_ascii=False, allow_nan=False)
    return text.replace("\n", "\n" + "  " * level) if level else text


def _chunks(o, level: int):
    """:func:`_dump` of ``o`` in pieces: the top-level object and the lists in it (the
    findings) an element at a time, so no piece is larger than one finding."""
    is_dict = isinstance(o, dict)
    if level > 1 or not o or not isinstance(o, (dict, list)) or (is_dict and not all(isinstance(k, str) for k in o)):
        yield _dump(o, level)
        return
    inner = "\n" + "  " * (level + 1)
    yield "{" if is_dict else "["
    for i, (key, value) in enumerate(o.items() if is_dict else ((None, v) for v in o)):
        yield ("," + inner if i else inner) + (_encode_str(key) + ": " if is_dict else "")
        yield from _chunks(value, level + 1)
    yield "\n" + "  " * level + ("}" if is_dict else "]")


#: Columns of the per-image table, in order (hashes as hex text: Parquet has no uint64
#: that every reader understands).
IMAGE_COLUMNS = [
    "path", "split", "label", "ext", "format", "ok", "error_kind", "error", "content_hash",
    "file_size", "width", "height", "mode", "bit_depth", "has_alpha", "n_frames", "jpeg_quality",
    "brightness_mean", "brightness_p05", "brightness_p95", "contrast", "entropy", "sharpness",
    "fine_sharpness", "laplacian_var", "detail_ratio", "noise_sigma", "channel_spread", "colorfulness",
    "pixel_hash", "phash", "dhash", "phash_mirror",
    "embedded",
]  # fmt: skip


def image_table(result: ScanResult) -> pd.DataFrame:
    """The per-image table: properties plus one ``is_<check>`` flag per check."""
    table = result.table
    none = pd.Series(None, index=table.index, dtype=object)
    # copy=False: the frame holds the table's own columns (pandas would otherwise stack them
    # into blocks, a copy of the table), and every column here is new or read-only
    columns = {c: table.get(c, none) for c in IMAGE_COLUMNS}
    for col in ("phash", "dhash", "phash_mirror"):
        hexes = [f"{int(v):016x}" if v is not None and v == v else None for v in columns[col]]
        columns[col] = pd.Series(hexes, index=table.index)
    # the paths each check flags, then one vectorised lookup per check (a million findings
    # cost a million list appends, not a million cell writes)
    flagged: dict[str, list[str]] = {}
    for f in result.findings:
        if f.paths:
            flagged.setdefault(f.check, []).extend(f.paths)
    flags = {f"is_{name}": np.zeros(len(table), bool) for name in result.report["checks"]}
    unique = None
    for check, paths in flagged.items():
        column = flags[f"is_{check}"]
        if unique is None:
            unique = _unique(table["path"])
        if unique:
            column |= rows_named(table["path"], paths)
        else:  # a path on two rows (a table made by hand): its last row, as a dict from path to row says
            where = {p: i for i, p in enumerate(table["path"])}
            column[[where[p] for p in paths if p in where]] = True
    if flagged:
        release_unused_memory()  # the lookups' hash tables (~180 MB for a million paths)
    return pd.DataFrame({**columns, **flags}, index=table.index, copy=False)


def rows_named(column: pd.Series, paths: list[str]) -> np.ndarray:
    """Which rows of ``column`` (bool, one per row) hold one of ``paths``: Arrow's hash set,
    a few MB and a fraction of a second for a million rows and paths (``Series.isin`` on a
    list that long takes seconds and hundreds of MB)."""
    import pyarrow as pa
    import pyarrow.compute as pc

    if not paths or not len(column):
        return np.zeros(len(column), bool)
    values = _arrow(column)
    if values is None:  # not all text (a table made by hand)
        wanted = set(paths)
        return np.fromiter((p in wanted for p in column), bool, len(column))
    return pc.is_in(values, value_set=pa.array(paths, values.type)).to_numpy(zero_copy_only=False)


def _unique(column: pd.Series) -> bool:
    """Whether no value of ``column`` is on two rows."""
    import pyarrow.compute as pc

    values = _arrow(column)
    if values is None or values.null_count:
        return not column.duplicated().any()  # (Arrow counts nulls as one value)
    return pc.count_distinct(values).as_py() == len(values)


def _arrow(column: pd.Series):
    """``column`` as an Arrow text array (no copy for Arrow-backed text), or None if it is
    not all text."""
    import pyarrow as pa

    try:
        values = pa.array(column.to_numpy(object) if column.dtype == object else column)
    except (pa.ArrowException, TypeError, ValueError):
        return None
    return values if pa.types.is_string(values.type) or pa.types.is_large_string(values.type) else None


def parquet_bytes(frame: pd.DataFrame) -> bytes:
    """``frame.to_parquet(index=False)``, through pyarrow directly (the same file: pandas
    metadata, snappy)."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    table = pa.Table.from_pandas(frame, preserve_index=False)
    if frame.attrs:  # what pandas adds for DataFrame.attrs (a projection's method)
        meta = {**(table.schema.metadata or {}), b"PANDAS_ATTRS": json.dumps(frame.attrs).encode()}
        table = table.replace_schema_metadata(meta)
    buf = pa.BufferOutputStream()
    pq.write_table(table, buf, compression="snappy")
    return buf.getvalue().to_pybytes()

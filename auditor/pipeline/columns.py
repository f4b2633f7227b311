"""The measured rows of a scan, gathered by column as they arrive, so that a million images
cost a small table and not a million dicts.

:func:`auditor.measure.batch.measure_all` returns one dict of properties per file (about 4 kB
each with its keys and boxed numbers: 4 GB for a million files). The scan measures its files
a chunk at a time and hands each chunk's rows to :class:`MeasuredColumns`, which keeps each
column of the chunk compactly: numbers, flags and counts as numpy arrays when every value of
the chunk has that one Python type, text as an Arrow array, anything else as the objects
themselves. :meth:`MeasuredColumns.frame` then gives the frame ``pd.DataFrame(rows)`` gives
for all the rows at once (columns in order of first appearance, a key a row lacks read as
NaN, each column's type inferred from all its values by pandas' own inference), built one
column at a time.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import pandas as pd

#: kinds of a chunk's column kept as a typed array; the whole column has that numpy type when
#: every chunk has it (what pandas infers from values that are all Python floats / ints / bools)
_TYPED = {float: np.float64, bool: np.bool_, int: np.int64}


@dataclass
class _Segment:
    start: int  # first row
    kind: object  # float, bool, int, str or object
    values: object  # np.ndarray, or a pyarrow array for str


@dataclass
class MeasuredColumns:
    """Rows (dicts) added in order, kept by column; see the module docstring."""

    rows: int = 0
    columns: dict[str, list[_Segment]] = field(default_factory=dict)

    def add(self, rows: list[dict]) -> None:
        """Append ``rows`` (dicts of one row each, in table order)."""
        if not rows:
            return
        keys = list(dict.fromkeys(k for r in rows for k in r))  # first appearance, as pandas orders them
        for key in keys:
            values = [r.get(key, np.nan) for r in rows]  # a missing key reads NaN, as in pd.DataFrame(rows)
            self.columns.setdefault(key, []).append(_Segment(self.rows, *_compact(values)))
        self.rows += len(rows)

    def frame(self) -> pd.DataFrame:
        """``pd.DataFrame(all rows added)``: the same columns, order, dtypes and values."""
        from pandas.core.internals.construction import convert_object_array

        if not self.rows:
            return pd.DataFrame(index=pd.RangeIndex(0))
        out: dict[str, object] = {}
        for key in list(self.columns):
            segments = self.columns.pop(key)  # each column's pieces go as it is built
            kinds = {s.kind for s in segments}
            whole = sum(_length(s) for s in segments) == self.rows
            if whole and len(kinds) == 1 and next(iter(kinds)) in _TYPED:
                out[key] = np.concatenate([s.values for s in segments])
                continue
            values = np.full(self.rows, np.nan, dtype=object)
            for s in segments:
                values[s.start : s.start + _length(s)] = _objects(s)
            out[key] = convert_object_array([values], dtype=None)[0]
            del values
        return pd.DataFrame(out, copy=False)


def _compact(values: list) -> tuple[object, object]:
    """(kind, values as compactly as they can be given back exactly)."""
    kinds = {type(v) for v in values}
    if len(kinds) == 1:
        kind = next(iter(kinds))
        if kind in _TYPED:
            try:
                return kind, np.array(values, dtype=_TYPED[kind])
            except OverflowError:  # an int past 64 bits
                pass
        elif kind is str:
            import pyarrow as pa

            try:
                return str, pa.array(values, pa.large_string())
            except (pa.ArrowException, UnicodeEncodeError):  # a name that is not UTF-8
                pass
    out = np.empty(len(values), dtype=object)
    out[:] = values
    return object, out


def _length(s: _Segment) -> int:
    return len(s.values)


def _objects(s: _Segment) -> np.ndarray:
    """A segment's values as Python objects again (the same values the rows held)."""
    if s.kind is str:
        return s.values.to_numpy(zero_copy_only=False)
    if s.kind in _TYPED:
        return s.values.astype(object)
    return s.values

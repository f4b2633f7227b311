"""Row matrices kept on disk and read in blocks: the embeddings, ImageNet probabilities and
BatchNorm statistics of a scan.

Per image the default backbone gives 1,280 embedding values, 1,000 probabilities and about
6,000 BatchNorm statistics: 16 KB in float16, 33 KB in float32, so 100,000 images would
hold 3.3 GB in memory. A :class:`DiskMatrix` keeps them as float16 rows in an unnamed
temporary file (``O_TMPFILE`` where the system has it: nothing is left behind, even by a
killed scan) in the cache folder, and hands out float32 rows on request: ``m[rows]`` for
some rows, :meth:`DiskMatrix.blocks` for all of them a block at a time. Each read maps the
file for the moment it takes, so what stays resident is the rows asked for.

The values are the store's float16 bytes, so a row read back is the same float32 row that
``np.frombuffer(..., np.float16).astype(np.float32)`` gives: the same numbers as before,
for the checks that read them whole.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Iterator

import numpy as np

#: Rows per block read by :meth:`Embeddings.rows <auditor.embed.features.Embeddings.rows>`.
BLOCK_ROWS = 4096
#: Values per block read by :meth:`DiskMatrix.blocks` and :func:`iter_blocks` (rows: this over
#: the width): 16 MB as float32, so that a block of 6,000 BatchNorm statistics an image and
#: its float64 temporaries stay small.
BLOCK_VALUES = 1 << 22


def block_rows(width: int) -> int:
    """Rows of ``width`` values in one block of :data:`BLOCK_VALUES`."""
    return max(1, BLOCK_VALUES // max(1, int(width)))


class DiskMatrix:
    """An (n, d) float16 matrix in a temporary file, read as float32.

    Written once, by :meth:`append` (rows in order), then read: ``m[key]`` (int, slice,
    integer or boolean array: as numpy indexes rows) gives float32 rows, ``np.asarray(m)``
    all of them, ``m.columns(a, b)`` a view of columns ``a:b`` that shares the file.
    """

    ndim = 2
    dtype = np.dtype(np.float32)

    def __init__(self, width: int, folder: str | os.PathLike | None = None):
        self._file = _temporary_file(folder)
        self._width = int(width)
        self._rows = 0
        self._cols = (0, int(width))

    # -- writing -----------------------------------------------------------------------
    def append(self, rows: np.ndarray | bytes) -> None:
        """Add rows at the end: an (m, width) array, or float16 bytes of whole rows."""
        data = rows if isinstance(rows, (bytes, bytearray, memoryview)) else (
            np.ascontiguousarray(rows, np.float16).tobytes())  # fmt: skip
        if len(data) % (2 * self._width):
            raise ValueError(f"{len(data)} bytes are not whole rows of {self._width} float16 values")
        self._file.seek(2 * self._width * self._rows)
        self._file.write(data)
        self._rows += len(data) // (2 * self._width)

    # -- reading -----------------------------------------------------------------------
    @property
    def shape(self) -> tuple[int, int]:
        return self._rows, self._cols[1] - self._cols[0]

    def __len__(self) -> int:
        return self._rows

    def columns(self, start: int, stop: int | None = None) -> DiskMatrix:
        """Columns ``start:stop`` of this matrix (no copy: the same file)."""
        view = object.__new__(DiskMatrix)
        view.__dict__.update(self.__dict__)
        lo = self._cols[0]
        view._cols = (lo + start, lo + (self.shape[1] if stop is None else stop))
        return view

    def __getitem__(self, key) -> np.ndarray:
        if isinstance(key, tuple):
            raise TypeError("DiskMatrix: index rows only (m[rows]), then the float32 array they give")
        if self._rows == 0:
            return np.zeros((0, self.shape[1]), np.float32)[key]
        self._file.flush()
        mapped = np.memmap(self._file, np.float16, "r", shape=(self._rows, self._width))
        try:
            part = mapped[key]
            lo, hi = self._cols
            part = part[..., lo:hi] if (lo, hi) != (0, self._width) else part
            return np.array(part, np.float32)  # a copy, then the mapping goes
        finally:
            mapped._mmap.close()
            del mapped

    def __array__(self, dtype=None, copy=None) -> np.ndarray:
        out = self[:]
        return out if dtype is None else out.astype(dtype)

    def blocks(self, rows: np.ndarray | None = None, size: int | None = None) -> Iterator[np.ndarray]:
        """float32 blocks of at most ``size`` rows (default :func:`block_rows`): of all rows in
        order, or of ``rows`` (integer positions) in the order given."""
        size = size or block_rows(self.shape[1])
        if rows is None:
            for start in range(0, self._rows, size):
                yield self[start : start + size]
        else:
            rows = np.asarray(rows, np.int64)
            for start in range(0, len(rows), size):
                yield self[rows[start : start + size]]

    def close(self) -> None:
        self._file.close()


class RowSubset:
    """Some rows of a matrix (a :class:`DiskMatrix` or an array), read block by block:
    what :func:`auditor.analysis.pretraining.pretraining_gap` pools without holding them;
    or read on indexing: ``s[key]`` (as numpy indexes rows) is the float32 rows ``key`` of the
    subset, what the shift tests draw their samples from."""

    ndim = 2

    def __init__(self, matrix, rows: np.ndarray):
        self.matrix, self.rows = matrix, np.asarray(rows, np.int64)

    @property
    def shape(self) -> tuple[int, int]:
        return len(self.rows), self.matrix.shape[1]

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, key) -> np.ndarray:
        return np.asarray(self.matrix[self.rows[key]], np.float32)

    def blocks(self, size: int | None = None) -> Iterator[np.ndarray]:
        return iter_blocks(self.matrix, self.rows, size)


class ColumnSpans:
    """Some column spans of a matrix (a :class:`DiskMatrix` or an array), side by side:
    ``s[key]`` (as numpy indexes rows) is the float32 rows ``key`` with only those columns.
    What ``label_issue`` reads of the BatchNorm statistics (the middle and late layers'
    means and standard deviations, two spans of each row) without copying the rest."""

    ndim = 2

    def __init__(self, matrix, spans: list[tuple[int, int]]):
        self.matrix, self.spans = matrix, [(int(a), int(b)) for a, b in spans]

    @property
    def shape(self) -> tuple[int, int]:
        return len(self.matrix), sum(b - a for a, b in self.spans)

    def __len__(self) -> int:
        return len(self.matrix)

    def __getitem__(self, key) -> np.ndarray:
        part = np.asarray(self.matrix[key], np.float32)
        return np.concatenate([part[..., a:b] for a, b in self.spans], axis=-1)


def iter_blocks(matrix, rows: np.ndarray | None = None, size: int | None = None) -> Iterator[np.ndarray]:
    """Blocks of rows of ``matrix`` (a :class:`DiskMatrix`, a :class:`RowSubset` or an array),
    all in order or ``rows``, at most ``size`` (default :func:`block_rows`) at a time."""
    if isinstance(matrix, RowSubset):
        chosen = matrix.rows if rows is None else matrix.rows[np.asarray(rows, np.int64)]
        yield from iter_blocks(matrix.matrix, chosen, size)
    elif isinstance(matrix, DiskMatrix):
        yield from matrix.blocks(rows, size)
    else:
        size = size or block_rows(matrix.shape[1] if np.ndim(matrix) == 2 else 1)
        for start in range(0, len(matrix) if rows is None else len(rows), size):
            yield matrix[start : start + size] if rows is None else matrix[rows[start : start + size]]


def _temporary_file(folder: str | os.PathLike | None):
    """An unnamed read-write file in ``folder`` (else the system's temporary folder)."""
    if folder is not None:
        try:
            os.makedirs(folder, exist_ok=True)
            return tempfile.TemporaryFile(dir=folder)
        except OSError:  # a read-only or full cache folder: the system's temporary folder
            pass
    return tempfile.TemporaryFile()

"""The embedded cache: measurements and embeddings keyed by file content hash.

One SQLite file (default ``~/.cache/image-auditor/store.sqlite3``; ``AUDITOR_CACHE_DIR``
or ``--cache-dir`` move it). Two tables:

* ``files``: absolute path -> (size, mtime_ns, content hash). A rescan stats each file and,
  when size and mtime are unchanged, trusts the cached hash, so an unchanged dataset is
  neither read nor decoded again (git's index works the same way).
* ``measurements``: (content hash, measurement version) -> JSON of properties + thumbnail.
  Keying by content means a renamed or copied file is not decoded again, and a changed
  file (new hash) is measured again.
* ``embeddings``: (content hash, backbone key) -> float16 vector (+ backbone extras such
  as ImageNet probabilities). The backbone key names weights, layer and preprocessing.

Writes happen in batches inside transactions (WAL journal), so an interrupted scan (Ctrl-C,
a killed process) leaves every committed batch usable and no half-written row.

The cache is an optimisation, never a reason for a scan to fail: where the database cannot be
opened or written (a full disk, a read-only folder, a damaged file) the store warns once
(:class:`CacheWarning`) and goes on with an in-memory database for what is left of the
scan, so its results (thumbnails included) are whole; it only forgets them afterwards.
"""

from __future__ import annotations

import json
import os
import sqlite3
import warnings
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import Any

_SCHEMA = """
CREATE TABLE IF NOT EXISTS files (
    path TEXT PRIMARY KEY,
    size INTEGER NOT NULL,
    mtime_ns INTEGER NOT NULL,
    content_hash TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS measurements (
    content_hash TEXT NOT NULL,
    version INTEGER NOT NULL,
    data TEXT NOT NULL,
    thumbnail BLOB,
    PRIMARY KEY (content_hash, version)
);
CREATE TABLE IF NOT EXISTS embeddings (
    content_hash TEXT NOT NULL,
    backbone TEXT NOT NULL,
    vector BLOB NOT NULL,
    extra BLOB,
    PRIMARY KEY (content_hash, backbone)
);
CREATE TABLE IF NOT EXISTS results (
    key TEXT PRIMARY KEY,
    value BLOB NOT NULL
);
"""


#: Bytes written at a time by :meth:`Store.put_result`.
_BLOB_CHUNK = 1 << 22


def _in_chunks(keys: Iterable[str], size: int = 500) -> Iterator[tuple[list[str], str]]:
    """Distinct keys in chunks small enough for one ``IN (...)`` clause: (chunk, "?,?,...")."""
    keys = list(dict.fromkeys(keys))
    for start in range(0, len(keys), size):
        chunk = keys[start : start + size]
        yield chunk, ",".join("?" * len(chunk))


def default_cache_dir() -> Path:
    """``$AUDITOR_CACHE_DIR``, else ``$XDG_CACHE_HOME/image-auditor``, else ``~/.cache/...``."""
    env = os.environ.get("AUDITOR_CACHE_DIR")
    if env:
        return Path(env).expanduser()
    xdg = os.environ.get("XDG_CACHE_HOME")
    base = Path(xdg).expanduser() if xdg else Path.home() / ".cache"
    return base / "image-auditor"


class CacheWarning(UserWarning):
    """The cache folder could not be used; the scan went on without it."""


class Store:
    """A handle on the cache database. Use as a context manager, or call :meth:`close`.

    ``path=None`` gives a throw-away in-memory store (``--no-cache``). ``folder`` is the
    cache folder, where compiled code (numba kernels, report templates) is cached too: the
    database's folder, or for an in-memory store the default one.
    """

    def __init__(self, path: str | os.PathLike | None):
        self.folder = Path(path).parent if path is not None else default_cache_dir()
        self.path = ":memory:" if path is None else str(path)
        # Reads consult every database here, newest first; writes go to the first. One
        # normally; an in-memory one (the spill) goes in front when the disk one fails.
        self._dbs: list[sqlite3.Connection] = []
        self._spill: sqlite3.Connection | None = None
        self.closed = False
        try:
            if path is not None:
                Path(path).parent.mkdir(parents=True, exist_ok=True)
            self._dbs.append(self._connect(self.path))
        except (sqlite3.Error, OSError) as exc:
            self._fall_back(exc)

    @property
    def _db(self) -> sqlite3.Connection:
        """The database writes go to (the tests look inside it)."""
        return self._dbs[0]

    @staticmethod
    def _connect(path: str) -> sqlite3.Connection:
        db = sqlite3.connect(path, timeout=30.0)
        try:
            if path != ":memory:":
                db.execute("PRAGMA journal_mode=WAL")
            db.execute("PRAGMA synchronous=NORMAL")
            db.executescript(_SCHEMA)
            db.commit()
        except BaseException:
            db.close()
            raise
        return db

    def _fall_back(self, exc: Exception) -> None:
        """Go on in memory after ``exc``, with one warning: the spill database takes the
        writes from now on; the disk one is still read while it can be."""
        if self._spill is not None or self.path == ":memory:":
            raise exc  # memory itself failed: nothing left to fall back to
        warnings.warn(f"the cache {self.path} cannot be used ({exc}); this scan goes on without it (free some "
                      "space, or give --cache-dir or --no-cache)", CacheWarning, stacklevel=3)  # fmt: skip
        self._spill = self._connect(":memory:")
        self._dbs.insert(0, self._spill)

    def _write(self, statements: Callable[[sqlite3.Connection], Any]) -> bool:
        """Run ``statements`` in one transaction on the first database; True when that is
        the disk (False: it went to memory, see :meth:`_fall_back`)."""
        try:
            with self._dbs[0]:  # commits, or rolls back on any exception (KeyboardInterrupt included)
                statements(self._dbs[0])
        except (sqlite3.Error, OSError) as exc:
            if self._dbs[0] is self._spill:
                raise
            self._fall_back(exc)
            with self._spill:
                statements(self._spill)
        return self._dbs[0] is not self._spill

    def _read(self, query: Callable[[sqlite3.Connection], Any]) -> list:
        """``query``'s answer from every database, newest first; a disk database that
        fails to read is left out from then on (see :meth:`_fall_back`)."""
        out = []
        for db in list(self._dbs):
            try:
                out.append(query(db))
            except (sqlite3.Error, OSError) as exc:
                if db is self._spill:
                    raise
                self._dbs.remove(db)
                if self._spill is None:
                    self._fall_back(exc)
        return out

    @staticmethod
    def default_path(cache_dir: str | os.PathLike | None = None) -> Path:
        """The database file in ``cache_dir`` (default :func:`default_cache_dir`)."""
        return (Path(cache_dir) if cache_dir else default_cache_dir()) / "store.sqlite3"

    @classmethod
    def open_default(cls, cache_dir: str | os.PathLike | None = None) -> Store:
        return cls(cls.default_path(cache_dir))

    def close(self) -> None:
        for db in self._dbs:
            db.close()
        self.closed = True

    def __enter__(self) -> Store:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    # -- files -------------------------------------------------------------------------
    def known_hashes(self, stats: Iterable[tuple[str, int, int]]) -> dict[str, str]:
        """For (path, size, mtime_ns) triples, the cached content hash of each unchanged file."""
        stats = list(stats)
        out: dict[str, str] = {}
        for start in range(0, len(stats), 500):
            chunk = stats[start : start + 500]
            marks = ",".join("?" * len(chunk))
            want = {s[0]: (s[1], s[2]) for s in chunk}
            for rows in self._read(lambda db, chunk=chunk, marks=marks: db.execute(
                f"SELECT path, size, mtime_ns, content_hash FROM files WHERE path IN ({marks})",
                [s[0] for s in chunk],
            ).fetchall()):  # fmt: skip
                for path, size, mtime, chash in rows:
                    if want.get(path) == (size, mtime):
                        out.setdefault(path, chash)
        return out

    # -- measurements ------------------------------------------------------------------
    def get_measurements(
        self, hashes: Iterable[str], version: int, thumbnails: bool = True
    ) -> dict[str, tuple[dict, bytes | None]]:
        """Cached (properties, thumbnail or None) by content hash, for the given version."""
        thumb_col = "thumbnail" if thumbnails else "NULL"
        out: dict[str, tuple[dict, bytes | None]] = {}
        for chunk, marks in _in_chunks(hashes):
            for rows in self._read(lambda db, chunk=chunk, marks=marks: db.execute(
                f"SELECT content_hash, data, {thumb_col} FROM measurements "
                f"WHERE version = ? AND content_hash IN ({marks})",
                [version, *chunk],
            ).fetchall()):  # fmt: skip
                for chash, data, thumb in rows:
                    if chash not in out:
                        out[chash] = (json.loads(data), thumb)
        return out

    def measured(self, hashes: Iterable[str], version: int) -> set[str]:
        """The content hashes among ``hashes`` whose measurements of ``version`` are cached
        (nothing is read but the keys)."""
        out: set[str] = set()
        for chunk, marks in _in_chunks(hashes):
            for rows in self._read(lambda db, chunk=chunk, marks=marks: db.execute(
                f"SELECT content_hash FROM measurements WHERE version = ? AND content_hash IN ({marks})",
                [version, *chunk],
            ).fetchall()):  # fmt: skip
                out.update(h for (h,) in rows)
        return out

    def put_batch(
        self,
        files: Iterable[tuple[str, int, int, str]],
        measurements: Iterable[tuple[str, dict, bytes | None]],
        version: int,
    ) -> bool:
        """Write file index rows and measurement rows in one transaction (True: on disk)."""
        files = list(files)
        rows = [(h, version, json.dumps(d, sort_keys=True), t) for h, d, t in measurements]

        def statements(db: sqlite3.Connection) -> None:
            db.executemany("INSERT OR REPLACE INTO files(path, size, mtime_ns, content_hash) VALUES (?,?,?,?)",
                           files)  # fmt: skip
            db.executemany("INSERT OR REPLACE INTO measurements(content_hash, version, data, thumbnail) "
                           "VALUES (?,?,?,?)", rows)  # fmt: skip

        return self._write(statements)

    def thumbnails(self, hashes: Iterable[str], version: int | tuple[int, ...]) -> Iterator[tuple[str, bytes]]:
        """(content hash, JPEG thumbnail bytes) for those that have one, from rows of ``version``
        (or of any of several: the first found where more than one has it)."""
        versions = (version,) if isinstance(version, int) else tuple(version)
        where = ",".join("?" * len(versions))
        seen: set[str] = set()
        for chunk, marks in _in_chunks(hashes):
            for rows in self._read(lambda db, chunk=chunk, marks=marks: db.execute(
                f"SELECT content_hash, thumbnail FROM measurements "
                f"WHERE version IN ({where}) AND thumbnail IS NOT NULL AND content_hash IN ({marks})",
                [*versions, *chunk],
            ).fetchall()):  # fmt: skip
                for chash, thumb in rows:
                    if chash not in seen:
                        seen.add(chash)
                        yield chash, thumb

    # -- embeddings --------------------------------------------------------------------
    def get_embeddings(self, hashes: Iterable[str], backbone: str) -> dict[str, tuple[bytes, bytes | None]]:
        """Cached (vector bytes, extra bytes or None) by content hash for one backbone key."""
        out: dict[str, tuple[bytes, bytes | None]] = {}
        for chunk, marks in _in_chunks(hashes):
            for rows in self._read(lambda db, chunk=chunk, marks=marks: db.execute(
                f"SELECT content_hash, vector, extra FROM embeddings WHERE backbone = ? AND content_hash IN ({marks})",
                [backbone, *chunk],
            ).fetchall()):  # fmt: skip
                for chash, vec, extra in rows:
                    out.setdefault(chash, (vec, extra))
        return out

    def embedded(self, hashes: Iterable[str], backbone: str) -> set[str]:
        """The content hashes among ``hashes`` with a cached embedding for one backbone key
        (nothing is read but the keys)."""
        out: set[str] = set()
        for chunk, marks in _in_chunks(hashes):
            for rows in self._read(lambda db, chunk=chunk, marks=marks: db.execute(
                f"SELECT content_hash FROM embeddings WHERE backbone = ? AND content_hash IN ({marks})",
                [backbone, *chunk],
            ).fetchall()):  # fmt: skip
                out.update(h for (h,) in rows)
        return out

    def put_embeddings(self, rows: Iterable[tuple[str, bytes, bytes | None]], backbone: str) -> bool:
        """Write (content hash, vector bytes, extra bytes) rows in one transaction (True: on disk)."""
        values = [(h, backbone, v, e) for h, v, e in rows]
        return self._write(lambda db: db.executemany(
            "INSERT OR REPLACE INTO embeddings(content_hash, backbone, vector, extra) VALUES (?,?,?,?)", values
        ))  # fmt: skip

    # -- derived results (deterministic functions of their key: e.g. a projection) -------
    def get_result(self, key: str) -> bytes | None:
        for row in self._read(lambda db: db.execute("SELECT value FROM results WHERE key = ?", (key,)).fetchone()):
            if row is not None:
                return bytes(row[0])
        return None

    def put_result(self, key: str, value: bytes | Callable[[], Iterable[bytes]], size: int | None = None) -> bool:
        """Remember ``value`` under ``key`` (True: on disk): bytes, or a function that yields
        the value in chunks, ``size`` bytes in all (one that reads files chunk by chunk: the
        value is never in memory whole; it is called again if the write moves to memory, see
        :meth:`_fall_back`). ValueError, and nothing stored, when the chunks do not add up to
        ``size``.

        Written through SQLite's incremental blob I/O, a chunk at a time: a value bound to an
        INSERT is copied by SQLite, once for the binding and once more into the row, so a
        scan's recorded outputs (a report.json of a million findings is 330 MB) would cost
        twice their size again in memory."""
        if callable(value):
            if size is None:
                raise TypeError("put_result: a function of chunks needs their total size")
            chunks = value
        else:
            view = memoryview(value).cast("B")
            size = len(view)

            def chunks() -> Iterator[memoryview]:
                return (view[start : start + _BLOB_CHUNK] for start in range(0, len(view), _BLOB_CHUNK))

        def statements(db: sqlite3.Connection) -> None:
            cur = db.execute("INSERT OR REPLACE INTO results(key, value) VALUES (?, zeroblob(?))", (key, size))
            with db.blobopen("results", "value", cur.lastrowid) as blob:
                done = 0
                for chunk in chunks():
                    if done + len(chunk) > size:
                        raise ValueError(f"put_result: more than the {size} bytes announced")
                    blob.write(chunk)
                    done += len(chunk)
            if done != size:
                raise ValueError(f"put_result: {done} bytes where {size} were announced")

        return self._write(statements)

    def count(self, table: str) -> int:
        if table not in ("files", "measurements", "embeddings", "results"):
            raise ValueError(table)
        return int(self._db.execute(f"SELECT COUNT(*) FROM {table}").fetchone()[0])

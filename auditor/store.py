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
"""

from __future__ import annotations

import json
import os
import sqlite3
from collections.abc import Iterable, Iterator
from pathlib import Path

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


class Store:
    """A handle on the cache database. Use as a context manager, or call :meth:`close`.

    ``path=None`` gives a throw-away in-memory store (``--no-cache``).
    """

    def __init__(self, path: str | os.PathLike | None):
        if path is None:
            self.path = ":memory:"
        else:
            p = Path(path)
            p.parent.mkdir(parents=True, exist_ok=True)
            self.path = str(p)
        self._db = sqlite3.connect(self.path, timeout=30.0)
        if self.path != ":memory:":
            self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=NORMAL")
        self._db.executescript(_SCHEMA)
        self._db.commit()

    @staticmethod
    def default_path(cache_dir: str | os.PathLike | None = None) -> Path:
        """The database file in ``cache_dir`` (default :func:`default_cache_dir`)."""
        return (Path(cache_dir) if cache_dir else default_cache_dir()) / "store.sqlite3"

    @classmethod
    def open_default(cls, cache_dir: str | os.PathLike | None = None) -> Store:
        return cls(cls.default_path(cache_dir))

    def close(self) -> None:
        self._db.close()

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
            rows = self._db.execute(
                f"SELECT path, size, mtime_ns, content_hash FROM files WHERE path IN ({marks})",
                [s[0] for s in chunk],
            ).fetchall()
            want = {s[0]: (s[1], s[2]) for s in chunk}
            for path, size, mtime, chash in rows:
                if want.get(path) == (size, mtime):
                    out[path] = chash
        return out

    # -- measurements ------------------------------------------------------------------
    def get_measurements(
        self, hashes: Iterable[str], version: int, thumbnails: bool = True
    ) -> dict[str, tuple[dict, bytes | None]]:
        """Cached (properties, thumbnail or None) by content hash, for the given version."""
        thumb_col = "thumbnail" if thumbnails else "NULL"
        out: dict[str, tuple[dict, bytes | None]] = {}
        for chunk, marks in _in_chunks(hashes):
            for chash, data, thumb in self._db.execute(
                f"SELECT content_hash, data, {thumb_col} FROM measurements "
                f"WHERE version = ? AND content_hash IN ({marks})",
                [version, *chunk],
            ):
                out[chash] = (json.loads(data), thumb)
        return out

    def put_batch(
        self,
        files: Iterable[tuple[str, int, int, str]],
        measurements: Iterable[tuple[str, dict, bytes | None]],
        version: int,
    ) -> None:
        """Write file index rows and measurement rows in one transaction."""
        with self._db:  # commits, or rolls back on any exception (KeyboardInterrupt included)
            self._db.executemany(
                "INSERT OR REPLACE INTO files(path, size, mtime_ns, content_hash) VALUES (?,?,?,?)",
                list(files),
            )
            self._db.executemany(
                "INSERT OR REPLACE INTO measurements(content_hash, version, data, thumbnail) VALUES (?,?,?,?)",
                [(h, version, json.dumps(d, sort_keys=True), t) for h, d, t in measurements],
            )

    def thumbnails(self, hashes: Iterable[str], version: int) -> Iterator[tuple[str, bytes]]:
        """(content hash, JPEG thumbnail bytes) for those that have one."""
        for chunk, marks in _in_chunks(hashes):
            yield from self._db.execute(
                f"SELECT content_hash, thumbnail FROM measurements "
                f"WHERE version = ? AND thumbnail IS NOT NULL AND content_hash IN ({marks})",
                [version, *chunk],
            )

    # -- embeddings --------------------------------------------------------------------
    def get_embeddings(self, hashes: Iterable[str], backbone: str) -> dict[str, tuple[bytes, bytes | None]]:
        """Cached (vector bytes, extra bytes or None) by content hash for one backbone key."""
        out: dict[str, tuple[bytes, bytes | None]] = {}
        for chunk, marks in _in_chunks(hashes):
            for chash, vec, extra in self._db.execute(
                f"SELECT content_hash, vector, extra FROM embeddings WHERE backbone = ? AND content_hash IN ({marks})",
                [backbone, *chunk],
            ):
                out[chash] = (vec, extra)
        return out

    def put_embeddings(self, rows: Iterable[tuple[str, bytes, bytes | None]], backbone: str) -> None:
        """Write (content hash, vector bytes, extra bytes) rows in one transaction."""
        with self._db:
            self._db.executemany(
                "INSERT OR REPLACE INTO embeddings(content_hash, backbone, vector, extra) VALUES (?,?,?,?)",
                [(h, backbone, v, e) for h, v, e in rows],
            )

    # -- derived results (deterministic functions of their key: e.g. a projection) -------
    def get_result(self, key: str) -> bytes | None:
        row = self._db.execute("SELECT value FROM results WHERE key = ?", (key,)).fetchone()
        return None if row is None else bytes(row[0])

    def put_result(self, key: str, value: bytes) -> None:
        with self._db:
            self._db.execute("INSERT OR REPLACE INTO results(key, value) VALUES (?, ?)", (key, value))

    def count(self, table: str) -> int:
        if table not in ("files", "measurements", "embeddings", "results"):
            raise ValueError(table)
        return int(self._db.execute(f"SELECT COUNT(*) FROM {table}").fetchone()[0])

"""Reuse a whole scan's outputs when nothing the scan reads has changed.

A rescan of an unchanged dataset already decodes nothing: the store has every file's
measurements (and embeddings). What is left is the checks and the report, about 0.6 s for
1,000 images, most of it importing pandas, scipy and pyarrow. Those are deterministic
functions of

* every file under the dataset root (and under the ``--source`` set, the COCO ``--images``
  folder, the ``--manifest`` / ``--coco`` / ``--rules`` files and the files they extend),
  taken by path, size, modification and change time, inode and mode, like git's index, and
  whether this user can read it (a file the user cannot read is ``corrupt`` for them);
* who runs it (user and groups: another user's scan is not replayed for this one);
* the scan's options, the ``AUDITOR_*``, ``KERAS_*``, ``TF_*``, ``CUDA_*``, ``NUMBA_*`` and
  ``OMP_*`` environment, and the auditor that runs: its version,
  its own source files and the installed packages (the site-packages folders' change times,
  which move with every install, upgrade or removal).

So ``audit scan`` records its output files in the store under a digest of exactly that
(the *fingerprint*, taken before the scan starts) and the next scan with the same
fingerprint writes the recorded files again and does nothing else. Any change to any of
those inputs misses and runs the full scan (which still reuses every unchanged file's
measurements). ``--no-cache`` neither reads nor records. One record is kept per dataset
and option set; a new fingerprint replaces the old record.

This module imports only the standard library, fsutil, the store and the rules reader (PyYAML): a hit
never pays for numpy, pandas or TensorFlow.
"""

from __future__ import annotations

import hashlib
import json
import os
import sqlite3
import sys
import warnings
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from auditor.core.fsutil import readable
from auditor.io.store import CacheWarning, Store

#: Bump when the record format changes.
_FORMAT = 1
_MAX_FILES_PER_TREE = 2_000_000  # past this, fingerprinting costs more than it saves
#: error kinds the measurement cache does not keep (the next scan tries the file again)
_RETRIED = ("unreadable", "decoder_crash")
#: environment variables that can change a scan's outputs: the auditor's own, and those that
#: steer Keras / TensorFlow / numba (backend, devices, oneDNN, threading)
_ENV_PREFIXES = ("AUDITOR_", "KERAS_", "TF_", "CUDA_", "NUMBA_", "OMP_")


def _stat_line(path: str, follow: bool = True) -> str:
    """What identifies one file's state: size, mtime, ctime, inode, mode (or why no stat),
    and whether this user may read it (an ACL or another user changes that, not the stat)."""
    try:
        st = os.stat(path) if follow else os.lstat(path)
    except OSError as exc:
        return f"{path}\0error {exc.errno}"
    access = "r" if not follow or readable(path) else "-"
    return f"{path}\0{st.st_size} {st.st_mtime_ns} {st.st_ctime_ns} {st.st_ino} {st.st_mode} {access}"


def _entry(h, path: str) -> None:
    """Feed one file's state into ``h``; for a symbolic link also the link itself and
    where it points."""
    h.update(_stat_line(path).encode("utf-8", "surrogateescape") + b"\n")
    if os.path.islink(path):
        try:
            target = os.readlink(path)
        except OSError:
            target = "?"
        h.update(f"link {_stat_line(path, follow=False)} -> {target}\n".encode("utf-8", "surrogateescape"))


def _tree(h, root: Path, follow_symlinks: bool) -> bool:
    """Feed every entry under ``root`` (sorted, with its state) into ``h``, walking it as
    discovery does (linked folders followed, those leaving the root only with
    ``follow_symlinks``, each real folder once: a link loop ends); False when the tree is too
    large to fingerprint."""
    real_root = os.path.realpath(root)
    seen: set[str] = set()
    count = 0
    for dirpath, dirnames, filenames in os.walk(root, followlinks=True):
        real = os.path.realpath(dirpath)
        if real in seen:
            dirnames[:] = []
            continue
        seen.add(real)
        _entry(h, dirpath)
        keep = []
        for name in sorted(dirnames):
            sub = os.path.join(dirpath, name)
            if os.path.islink(sub):
                _entry(h, sub)  # where it points, whether or not it is walked
                target = os.path.realpath(sub)
                if not follow_symlinks and os.path.commonpath([target, real_root]) != real_root:
                    continue
            keep.append(name)
        dirnames[:] = keep
        for name in sorted(filenames):
            _entry(h, os.path.join(dirpath, name))
            count += 1
            if count > _MAX_FILES_PER_TREE:
                return False
    return True


def _auditor_state(h) -> None:
    """The running auditor: who runs it, its version, its source files, the Python, the
    installed packages."""
    from auditor.core import version
    from auditor.core.version import __version__

    h.update(f"auditor {__version__} format {_FORMAT} python {sys.version}\n".encode())
    if hasattr(os, "geteuid"):
        h.update(f"user {os.geteuid()} {os.getegid()} {sorted(os.getgroups())}\n".encode())
    pkg = Path(version.__file__).resolve().parents[1]  # the package root, wherever this module lives
    for dirpath, dirnames, filenames in os.walk(pkg):
        dirnames[:] = sorted(d for d in dirnames if d != "__pycache__")
        for name in sorted(filenames):
            if name.endswith((".py", ".yaml", ".html")):
                h.update(_stat_line(os.path.join(dirpath, name)).encode() + b"\n")
    for entry in sys.path:
        if entry and os.path.isdir(entry) and ("site-packages" in entry or "dist-packages" in entry):
            h.update(_stat_line(entry).encode() + b"\n")
    for key in sorted(os.environ):
        if key.startswith(_ENV_PREFIXES) and key != "AUDITOR_CACHE_DIR":
            h.update(f"env {key}={os.environ[key]}\n".encode("utf-8", "surrogateescape"))


@dataclass
class Reuse:
    """A scan's fingerprint and where its record lives. See the module docstring."""

    store_path: Path
    key: str  # which dataset and options (one record per key)
    fingerprint: str  # the state of everything the scan reads

    def restore(self, out_dir: Path) -> dict[str, Path] | None:
        """Write the recorded outputs into ``out_dir`` (all or none, as a full scan does) and
        return them by role (``json``, ``table``, ``html``, ...); None when there is no
        matching record. :class:`auditor.core.fsutil.OutputError` when they cannot be written."""
        from auditor.core.fsutil import write_files

        if not self.store_path.exists():
            return None
        try:
            with _quiet_store(self.store_path) as store:
                blob = store.get_result(self.key)
        except (sqlite3.Error, OSError):  # reuse is an optimisation: any doubt, scan
            return None
        files = _unpack(blob, self.fingerprint) if blob else None
        if files is None:
            return None
        out = {role: Path(out_dir) / name for role, (name, _) in files.items()}
        order = [role for role in files if role != "json"] + ["json"]  # report.json last, as a full scan
        write_files({out[role]: files[role][1] for role in order})
        return out

    def record(self, files: dict[str, Path], *tables) -> bool:
        """Remember the outputs a full scan just wrote (``role -> path``). Not when a file of
        the scan's per-image ``tables`` (the dataset's, the source set's) could not be read
        or crashed the decoder: a rescan retries those (an I/O or permission error, a worker
        killed), unlike a corrupt file. Returns whether it recorded."""
        for table in tables:
            if table is not None and "error_kind" in table and bool(table["error_kind"].isin(_RETRIED).any()):
                return False
        try:
            # streamed into the store a chunk at a time: read whole and joined, a report.json of
            # a million findings (330 MB) cost twice its size at the scan's peak
            sizes = {role: (Path(p).name, Path(p).stat().st_size) for role, p in files.items()}
            head = _header(self.fingerprint, [[role, name, size] for role, (name, size) in sizes.items()])

            def chunks() -> Iterator[bytes]:
                yield head
                for p in files.values():
                    with open(p, "rb") as fh:
                        while chunk := fh.read(1 << 22):
                            yield chunk

            with _quiet_store(self.store_path) as store:
                return store.put_result(self.key, chunks, size=len(head) + sum(s for _, s in sizes.values()))
        except (sqlite3.Error, OSError, ValueError):  # the scan's outputs are written; only reuse is lost
            return False  # (ValueError: a file changed size while it was read)


@contextmanager
def _quiet_store(path: Path) -> Iterator[Store]:
    """The store, without its :class:`CacheWarning`: reuse is an optimisation, and the
    scan's own store says when the cache cannot be used."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", CacheWarning)
        with Store(path) as store:
            yield store


def prepare(
    dataset: str | os.PathLike,
    *,
    options: dict,
    cache_dir: str | os.PathLike | None = None,
    rules: str | None = None,
    rules_files: Iterable[str | os.PathLike] = (),
    extra_trees: Iterable[str | os.PathLike | None] = (),
    extra_files: Iterable[str | os.PathLike | None] = (),
    follow_symlinks: bool = False,
) -> Reuse | None:
    """Fingerprint a scan of ``dataset`` with ``options`` (JSON-able, everything that changes
    the outputs) under ``rules`` (its name or path) whose files are ``rules_files`` (the file
    and every file it extends: :func:`auditor.policy.rules.rules_files`). ``extra_trees``: other
    folders it reads (the source set, COCO images); ``extra_files``: single files (manifests,
    COCO JSON, weights, a model file). None when the dataset is not a folder, a path cannot
    be resolved (the scan reports those) or the tree is too large to fingerprint."""
    try:
        return _prepare(dataset, options, cache_dir, rules, rules_files, extra_trees, extra_files, follow_symlinks)
    except (OSError, RuntimeError, ValueError):  # a link loop in a path: the scan reports it
        return None


def _prepare(
    dataset, options, cache_dir, rules, rules_files, extra_trees, extra_files, follow_symlinks
) -> Reuse | None:
    root = Path(dataset)
    if not root.is_dir():
        return None
    root = root.resolve()
    store_path = Store.default_path(cache_dir)
    key_doc = {"root": str(root), "options": options, "rules": rules}
    key_json = json.dumps(key_doc, sort_keys=True, default=str).encode()
    key = "scan:" + hashlib.blake2b(key_json, digest_size=16).hexdigest()
    h = hashlib.blake2b(digest_size=16)
    h.update(key.encode() + b"\n")
    _auditor_state(h)
    for tree in (root, *extra_trees):
        if tree is not None and Path(tree).is_dir():
            h.update(f"tree {Path(tree).resolve()}\n".encode("utf-8", "surrogateescape"))
            if not _tree(h, Path(tree), follow_symlinks):
                return None
    for f in (*extra_files, *rules_files):
        if f is not None:
            h.update(f"file {_stat_line(str(Path(f).absolute()))}\n".encode("utf-8", "surrogateescape"))
    return Reuse(store_path, key, h.hexdigest())


def _pack(fingerprint: str, files: dict[str, tuple[str, bytes]]) -> bytes:
    """One record: a JSON header line (fingerprint, then role, name, size per file) and the
    files' bytes, concatenated in header order."""
    head = _header(fingerprint, [[role, name, len(data)] for role, (name, data) in files.items()])
    return head + b"".join(data for _, data in files.values())


def _header(fingerprint: str, files: list[list]) -> bytes:
    """A record's first line: format, fingerprint, then role, name, size per file."""
    return json.dumps({"format": _FORMAT, "fingerprint": fingerprint, "files": files}).encode() + b"\n"


def _unpack(blob: bytes, fingerprint: str) -> dict[str, tuple[str, bytes]] | None:
    """The files of a record made by :func:`_pack`, or None unless it is whole, matches,
    names plain file names only, and has the report files."""
    head, sep, body = blob.partition(b"\n")
    if not sep:
        return None
    try:
        header = json.loads(head)
        if header["format"] != _FORMAT or header["fingerprint"] != fingerprint:
            return None
        files: dict[str, tuple[str, bytes]] = {}
        offset = 0
        for role, name, size in header["files"]:
            if not (isinstance(role, str) and isinstance(name, str) and isinstance(size, int) and size >= 0):
                return None
            if os.path.basename(name) != name or name in ("", ".", "..") or "\0" in name:
                return None  # a record names files, never paths
            files[role] = (name, body[offset : offset + size])
            offset += size
    except (ValueError, TypeError, KeyError, AttributeError):
        return None
    if offset != len(body) or not {"json", "html"} <= files.keys():
        return None
    return files

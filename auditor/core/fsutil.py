"""Small helpers with no heavy imports: where outputs may go, writing them whole or not at all,
and text that is safe to show on a terminal."""

from __future__ import annotations

import contextlib
import os
import re
import tempfile
from collections.abc import Iterable
from pathlib import Path


class OutputError(ValueError):
    """An output that must not, or cannot, be written where asked (exit code 2)."""


def default_out_dir(dataset: str | os.PathLike) -> Path:
    """``reports/<dataset-name>/`` under the current directory."""
    name = Path(dataset).resolve().name or "dataset"
    return Path("reports") / name


def _inside(path: Path, folder: Path) -> bool:
    """Whether ``path`` is ``folder`` or lies under it, links resolved."""
    path, folder = Path(path).resolve(), Path(folder).resolve()
    return path == folder or folder in path.parents


def _inside_inputs(path: Path, inputs: Iterable[str | os.PathLike | None]) -> str | None:
    """Why ``path`` must not be written to because it lies inside one of ``inputs`` (the
    dataset folder first, then other folders the command reads), or None."""
    for k, root in enumerate(inputs):
        if root is not None and Path(root).is_dir() and _inside(path, root):
            what = "the dataset" if k == 0 else "the input folder"
            return f"is inside {what} {root}, which is never written to"
    return None


def _problem(path: Path, inputs: Iterable[str | os.PathLike | None], folder: bool) -> str | None:
    """Why ``path`` cannot take an output (a folder, or a file when not ``folder``), or None.
    ``inputs``: the dataset folder first, then other folders the command reads."""
    inside = _inside_inputs(path, inputs)
    if inside:
        return inside
    base = Path(path).absolute()
    while not base.exists() and not base.is_symlink() and base != base.parent:
        base = base.parent
    if base == Path(path).absolute():
        if folder and not base.is_dir():
            return "is a file, not a folder"
        if not folder and base.is_dir():
            return "is a folder, not a file"
    elif not base.is_dir():
        return f"lies under {base}, which is not a folder"
    writable = base if base.is_dir() else base.parent
    if not os.access(writable, os.W_OK | os.X_OK):
        return f"cannot be written: {writable} is read-only here"
    return None


def check_output(
    path: str | os.PathLike, *inputs: str | os.PathLike | None, folder: bool = True, option: str = "--out"
) -> Path:
    """``path`` as a Path when a command may write there, checked before any work is done:
    not inside the dataset (the first of ``inputs``) or another folder it reads, a folder
    (``folder``) or a file as wanted, and in a place that can be written. Else
    :class:`OutputError`, which names ``option``."""
    problem = _problem(Path(path), inputs, folder)
    if problem:
        raise OutputError(f"{option} {path} {problem}; choose another {option}")
    return Path(path)


def check_cache_dir(cache_dir: str | os.PathLike | None, *inputs: str | os.PathLike | None) -> None:
    """:class:`OutputError` when ``--cache-dir`` lies inside the dataset (the first of
    ``inputs``) or another folder the command reads. Only that: a cache folder that cannot be
    written is not an error (the command runs uncached, with a warning)."""
    if cache_dir is None:
        return
    problem = _inside_inputs(Path(cache_dir), inputs)
    if problem:
        raise OutputError(f"--cache-dir {cache_dir} {problem}; choose another --cache-dir")


def output_folder(
    dataset: str | os.PathLike, out: str | os.PathLike | None = None, *inputs: str | os.PathLike | None
) -> Path:
    """The folder a scan writes into: ``out``, else :func:`default_out_dir`, checked as
    :func:`check_output` does. The default is refused (never moved somewhere the user would
    not look) where it would land inside the dataset (a scan run from within it) or cannot be
    written (a read-only folder); the message suggests an ``--out`` beside the dataset."""
    if out is not None:
        return check_output(out, dataset, *inputs)
    folder = default_out_dir(dataset)
    problem = _problem(folder, (dataset, *inputs), True)
    if problem is None:
        return folder
    beside = Path(dataset).resolve().parent / "reports" / folder.name
    hint = "give --out DIR"
    if _problem(beside, (dataset, *inputs), True) is None:
        hint += f", e.g. --out {os.path.relpath(beside)}"
    raise OutputError(f"the default output folder {folder} {problem}; {hint}")


#: os.access answers for the effective user (the one that opens files) where it can
_EFFECTIVE_IDS = os.access in os.supports_effective_ids


def readable(path: str | os.PathLike) -> bool:
    """Whether this user may open ``path`` for reading (permissions and ACLs; one syscall,
    nothing is opened)."""
    return os.access(path, os.R_OK, effective_ids=_EFFECTIVE_IDS)


def make_dirs(folder: str | os.PathLike) -> list[Path]:
    """Create ``folder`` and its missing parents; return those created, outermost first
    (for :func:`remove_dirs` to undo)."""
    missing = []
    p = Path(folder).absolute()
    while not p.exists() and p != p.parent:
        missing.append(p)
        p = p.parent
    created = []
    for d in reversed(missing):
        try:
            d.mkdir()
        except FileExistsError:
            continue
        created.append(d)
    return created


def remove_dirs(created: list[Path]) -> None:
    """Remove the folders :func:`make_dirs` created, innermost first, where still empty."""
    for d in reversed(created):
        with contextlib.suppress(OSError):
            d.rmdir()


def write_files(files: dict[Path, bytes]) -> None:
    """Write every file or none. Each is first written and fsynced as a temporary file beside
    its target; only when all are on disk are they renamed into place, in the given order
    (so put the file readers look for first, such as report.json, last). A reader never sees
    half a file, and a full disk or a permission error leaves no new file and no new folder
    behind: :class:`OutputError` says which file could not be written and why."""
    staged: list[tuple[str, Path]] = []
    created: list[Path] = []
    path = None
    try:
        for path, data in files.items():
            path = Path(path)
            created += make_dirs(path.parent)
            fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
            staged.append((tmp, path))
            with os.fdopen(fd, "wb") as fh:
                fh.write(data)
                fh.flush()
                os.fsync(fh.fileno())
            os.chmod(tmp, 0o644)
        for tmp, target in staged:
            os.replace(tmp, target)
    except BaseException as exc:
        for tmp, _ in staged:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(tmp)
        remove_dirs(created)
        if isinstance(exc, OSError):
            raise OutputError(f"cannot write {path}: {exc.strerror or exc}") from exc
        raise


def atomic_write_bytes(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` atomically (see :func:`write_files`)."""
    write_files({Path(path): data})


#: C0 and C1 control characters, DEL, line separators and the bidirectional controls: in a
#: file name shown on a terminal they recolour text, move the cursor, clear the screen or
#: reorder a line (``invoice\u202egpj.exe``).
_UNPRINTABLE = re.compile("[\x00-\x1f\x7f-\x9f\u061c\u200e\u200f\u2028\u2029\u202a-\u202e\u2066-\u2069]")


def printable(text: object) -> str:
    """``text`` with every character of :data:`_UNPRINTABLE` written as an escape
    (``\\x1b``, ``\\u202e``): shown, never obeyed. Newlines too: one name, one line."""
    return _UNPRINTABLE.sub(_escaped, str(text))


def _escaped(match: re.Match) -> str:
    code = ord(match.group())
    return f"\\x{code:02x}" if code < 0x100 else f"\\u{code:04x}"

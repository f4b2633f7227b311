"""Names and paths every layer reads: split names, manifest path rules, containment."""

from __future__ import annotations

import os
from pathlib import Path

from auditor.core.errors import DatasetError

#: Split folder names (any case), in pipeline order: training, then validation-like, then test.
SPLIT_NAMES = ("train", "val", "valid", "validation", "dev", "test")
#: The splits a model is evaluated on, in the order they are preferred for validation.
EVAL_SPLITS = SPLIT_NAMES[1:]


def within(path: Path, root: Path) -> bool:
    try:
        path.relative_to(root)
        return True
    except ValueError:
        return False


def shown(text: str, limit: int = 80) -> str:
    """``repr`` of at most ``limit`` characters of ``text`` (a path or value from a file the
    user gave us goes into a one-line error message: it must stay one short line)."""
    return repr(text[:limit]) + ("..." if len(text) > limit else "")


def manifest_path(rel: str) -> str:
    """The POSIX form of a manifest path (``a\\b/./c.jpg`` -> ``a/b/c.jpg``, as
    ``PurePosixPath`` normalises it), checked on the string alone: empty, absolute, a drive
    (``C:``) or a ``..`` part raise :class:`DatasetError`, and so does a NUL character (no
    file system accepts one; ``os.stat`` raises ``ValueError``)."""
    if not rel or rel.strip() != rel or "\x00" in rel:
        raise DatasetError(f"invalid path {shown(rel)} in manifest")
    # The common case, already normal (no "\\", empty, "." or ".." part, no drive), costs a
    # few substring tests instead of a split: a manifest can have a million rows.
    if not (rel[0] in "./" or rel[-1] == "/" or "\\" in rel or "//" in rel or "/." in rel
            or ":" in rel.partition("/")[0]):  # fmt: skip
        return rel
    text = rel.replace("\\", "/")
    parts = [p for p in text.split("/") if p and p != "."]
    if text.startswith("/") or (parts and ":" in parts[0]) or ".." in parts:
        raise DatasetError(f"manifest path {shown(rel)} escapes the dataset root")
    if not parts:
        raise DatasetError(f"invalid path {shown(rel)} in manifest")
    return "/".join(parts)


def inside_real(path: str, real_root: str) -> bool:
    """``path`` (already resolved) is ``real_root`` or under it, compared as strings."""
    return path == real_root or path.startswith(real_root.rstrip(os.sep) + os.sep)

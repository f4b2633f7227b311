"""File integrity: ``corrupt`` and ``format_mismatch``.

Both select their rows with vectorised column tests and build Python objects for the
findings alone: a manifest of a million missing files is a million ``corrupt`` findings
(one per image, as the gate counts them and ``audit clean`` drops them), and nothing more.
Findings of one kind of problem with the same error share one ``details`` dict (findings
are not mutated after a check returns them), which keeps such a list about a third smaller.
"""

from __future__ import annotations

import pandas as pd

from auditor.checks.registry import register
from auditor.core.context import CheckContext
from auditor.core.findings import Finding
from auditor.io.decode import FORMAT_EXTENSIONS

_REASONS = {
    "empty": "file is empty",
    "unreadable": "file cannot be read",
    "not_an_image": "content is not an image",
    "too_large": "file is too large to read",
    "bomb": "image dimensions exceed the pixel limit (decompression bomb)",
    "truncated": "image data is truncated",
    "decode_failed": "image cannot be decoded",
    "decoder_crash": "the decoder crashed on this file",
    "missing": "file listed in the manifest does not exist",
}


@register("corrupt", family="integrity")
def corrupt(ctx: CheckContext, params: dict) -> list[Finding]:
    """Files that cannot be read or decoded: empty, truncated, not an image, unreadable,
    decompression bombs, missing (a manifest row). One finding per file. Score 1."""
    bad = ctx.table.loc[~ctx.table["ok"].to_numpy(bool), ["path", "error_kind", "error"]]
    # kinds and errors as codes into their few distinct values: no string object per row
    kind_codes, kinds = pd.factorize(bad["error_kind"], use_na_sentinel=False)
    error_codes, errors = pd.factorize(bad["error"], use_na_sentinel=False)
    kinds, errors = kinds.tolist(), errors.tolist()
    shared: dict[tuple[int, int], tuple[str, dict]] = {}  # (kind, error) -> (message tail, details)
    out = []
    for path, k, e in zip(bad["path"].tolist(), kind_codes.tolist(), error_codes.tolist(), strict=True):
        got = shared.get((k, e))
        if got is None:
            kind, error = kinds[k], errors[e]
            # the decoder's own text where it already names the kind ("file is empty (0 bytes)"),
            # else the reason with the text in brackets
            said = isinstance(error, str) and isinstance(kind, str) and kind.replace("_", " ") in error.lower()
            tail = f": {error}" if said else f": {_REASONS.get(kind, 'unreadable')} ({error})"
            got = shared[(k, e)] = (tail, {"reason": kind, "error": error})
        out.append(Finding("corrupt", [path], 1.0, f"{path}{got[0]}", got[1]))
    return out


@register("format_mismatch", family="integrity")
def format_mismatch(ctx: CheckContext, params: dict) -> list[Finding]:
    """The file extension names another format than the content (a PNG saved as .jpg).
    Score 1."""
    t = ctx.table
    known = t["format"].isin(list(FORMAT_EXTENSIONS)).to_numpy(bool)  # decoded far enough to know
    rows = t.loc[known, ["path", "ext", "format"]]
    return [
        Finding(
            "format_mismatch",
            [path],
            1.0,
            f"{path}: extension {ext} but the content is {fmt}",
            {"extension": ext, "format": fmt},
        )
        for path, ext, fmt in zip(rows["path"].tolist(), rows["ext"].tolist(), rows["format"].tolist(), strict=True)
        if ext and ext not in FORMAT_EXTENSIONS[fmt]
    ]

"""File integrity: ``corrupt`` and ``format_mismatch``."""

from __future__ import annotations

from ..decode import FORMAT_EXTENSIONS
from . import CheckContext, Finding, register

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
    decompression bombs. Score 1."""
    bad = ctx.table[~ctx.table["ok"]]
    return [
        Finding(
            "corrupt",
            [row.path],
            1.0,
            f"{row.path}: {_REASONS.get(row.error_kind, 'unreadable')} ({row.error})",
            {"reason": row.error_kind, "error": row.error},
        )
        for row in bad.itertuples()
    ]


@register("format_mismatch", family="integrity")
def format_mismatch(ctx: CheckContext, params: dict) -> list[Finding]:
    """The file extension names another format than the content (a PNG saved as .jpg).
    Score 1."""
    out = []
    for row in ctx.table.itertuples():
        fmt = row.format
        if not isinstance(fmt, str) or fmt not in FORMAT_EXTENSIONS:
            continue
        if row.ext and row.ext not in FORMAT_EXTENSIONS[fmt]:
            out.append(
                Finding(
                    "format_mismatch",
                    [row.path],
                    1.0,
                    f"{row.path}: extension {row.ext} but the content is {fmt}",
                    {"extension": row.ext, "format": fmt},
                )
            )
    return out

"""The self-contained HTML report (Jinja2, autoescaped; thumbnails inline, no network)."""

from __future__ import annotations

import base64
from typing import TYPE_CHECKING

import numpy as np
from jinja2 import Environment, PackageLoader, select_autoescape

from ..measure import MEASURE_VERSION

if TYPE_CHECKING:
    from ..api import ScanResult
    from ..store import Store

#: Findings shown per check section, and thumbnails per finding, to bound the file size.
MAX_FINDINGS_PER_SECTION = 60
MAX_THUMBS_PER_FINDING = 6


def _env() -> Environment:
    return Environment(
        loader=PackageLoader("auditor.report", "templates"),
        autoescape=select_autoescape(["html"]),
        trim_blocks=True,
        lstrip_blocks=True,
    )


_PALETTE = ("#1f77b4", "#d62728", "#2ca02c", "#9467bd", "#ff7f0e", "#8c564b")


def _scatter(frame, size: int = 420, pad: int = 10) -> dict | None:
    """Projection points scaled into an SVG box: (x, y, colour, label) per point."""
    if frame is None or not len(frame):
        return None
    xy = frame[["x", "y"]].to_numpy(dtype=float)
    lo, hi = xy.min(axis=0), xy.max(axis=0)
    scale = (size - 2 * pad) / max(float((hi - lo).max()), 1e-9)
    pts = (xy - lo) * scale + pad
    groups = list(dict.fromkeys(frame["group"]))
    color = {g: _PALETTE[i % len(_PALETTE)] for i, g in enumerate(groups)}
    order = np.random.default_rng(0).permutation(len(frame))  # interleave groups: none hides the other
    group, path = frame["group"].to_numpy(), frame["path"].to_numpy()
    points = [
        (round(float(pts[i, 0]), 1), round(float(size - pts[i, 1]), 1), color[group[i]], f"{group[i]}: {path[i]}")
        for i in order
    ]
    return {"method": frame.attrs.get("method", ""), "points": points, "legend": list(color.items())}


def render_html(result: ScanResult, store: Store) -> str:
    report = result.report
    sections: dict[str, list[dict]] = {}
    for f in report["findings"]:
        sections.setdefault(f["check"], []).append(f)
    shown = {c: fs[:MAX_FINDINGS_PER_SECTION] for c, fs in sections.items()}
    wanted = {p for fs in shown.values() for f in fs for p in f["paths"][:MAX_THUMBS_PER_FINDING]}
    for s in report.get("shift") or []:
        wanted |= {im["path"] for im in ((s.get("out_of_support") or {}).get("images") or [])[:MAX_THUMBS_PER_FINDING]}
    table = result.table
    hash_of = {
        p: h for p, h in zip(table["path"], table["content_hash"], strict=True)
        if p in wanted and isinstance(h, str)
    }  # fmt: skip
    thumbs_by_hash = dict(store.thumbnails(hash_of.values(), MEASURE_VERSION))
    thumbs = {
        p: "data:image/jpeg;base64," + base64.b64encode(thumbs_by_hash[h]).decode("ascii")
        for p, h in hash_of.items() if h in thumbs_by_hash
    }  # fmt: skip
    ok = table[table["ok"]]
    formats = ok["format"].value_counts().to_dict() if len(ok) else {}
    classes = (
        table.groupby([table["split"].fillna("(all)"), table["label"].fillna("(unlabeled)")])
        .size().reset_index(name="n").to_dict("records")
    )  # fmt: skip
    return (
        _env()
        .get_template("report.html")
        .render(
            report=report,
            sections=shown,
            totals={c: len(fs) for c, fs in sections.items()},
            thumbs=thumbs,
            max_thumbs=MAX_THUMBS_PER_FINDING,
            checks=report["checks"],
            formats=formats,
            classes=classes,
            width_median=float(ok["width"].median()) if len(ok) else 0,
            height_median=float(ok["height"].median()) if len(ok) else 0,
            scatter=_scatter(result.projection),
        )
    )

"""The self-contained HTML report (Jinja2, autoescaped; thumbnails inline, no network)."""

from __future__ import annotations

import base64
from typing import TYPE_CHECKING

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


def render_html(result: ScanResult, store: Store) -> str:
    report = result.report
    sections: dict[str, list[dict]] = {}
    for f in report["findings"]:
        sections.setdefault(f["check"], []).append(f)
    shown = {c: fs[:MAX_FINDINGS_PER_SECTION] for c, fs in sections.items()}
    wanted = {p for fs in shown.values() for f in fs for p in f["paths"][:MAX_THUMBS_PER_FINDING]}
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
        )
    )

"""The self-contained HTML report (Jinja2, autoescaped; thumbnails inline, no network)."""

from __future__ import annotations

import base64
import heapq
from typing import TYPE_CHECKING

import numpy as np

from auditor.io.dataset import labeled as labeled_rows
from auditor.measure.pixels import THUMBNAIL_VERSIONS
from auditor.report.encode import rows_named
from auditor.report.precompile import _template

if TYPE_CHECKING:
    from auditor.io.store import Store

#: Findings shown per check section, and thumbnails per finding, to bound the file size.
MAX_FINDINGS_PER_SECTION = 60
MAX_THUMBS_PER_FINDING = 6
#: Thumbnails in the whole report (about 6 MB at most); later sections show "(no preview)".
MAX_THUMBS_TOTAL = 1200
#: Thumbnails per diagnosis cause (of its evidence's worst paths).
MAX_EVIDENCE_THUMBS = 5


_PALETTE = ("#1f77b4", "#d62728", "#2ca02c", "#9467bd", "#ff7f0e", "#8c564b")
#: Projection points that get a hover thumbnail (64 px), classes drawn per split chart,
#: properties drawn as overlaid histograms per comparison.
MAX_HOVER_THUMBS = 400
MAX_CHART_CLASSES = 40


def _data_uri(jpeg: bytes) -> str:
    return "data:image/jpeg;base64," + base64.b64encode(jpeg).decode("ascii")


def _small(jpeg: bytes, side: int = 64) -> bytes:
    import io

    from PIL import Image

    img = Image.open(io.BytesIO(jpeg))
    img.thumbnail((side, side))
    buf = io.BytesIO()
    img.convert("RGB").save(buf, "JPEG", quality=70)
    return buf.getvalue()


def _scatter(frame, store: Store, size: int = 420, pad: int = 10) -> dict | None:
    """Projection points scaled into an SVG box: (x, y, colour, label, hover id) per point,
    and the hover thumbnails {id: data URI} for a seeded sample of points (by the points'
    ``content_hash``)."""
    if frame is None or not len(frame):
        return None
    xy = frame[["x", "y"]].to_numpy(dtype=float)
    lo, hi = xy.min(axis=0), xy.max(axis=0)
    scale = (size - 2 * pad) / max(float((hi - lo).max()), 1e-9)
    pts = (xy - lo) * scale + pad
    groups = list(dict.fromkeys(frame["group"]))
    color = {g: _PALETTE[i % len(_PALETTE)] for i, g in enumerate(groups)}
    rng = np.random.default_rng(0)
    order = rng.permutation(len(frame))  # interleave groups: none hides the other
    group, path, hashes = frame["group"].to_numpy(), frame["path"].to_numpy(), frame["content_hash"].to_numpy()
    hover_rows = set(rng.permutation(len(frame))[:MAX_HOVER_THUMBS].tolist())
    want = {i: hashes[i] if isinstance(hashes[i], str) else None for i in hover_rows}
    jpegs = dict(store.thumbnails({h for h in want.values() if h}, THUMBNAIL_VERSIONS))
    thumbs = {str(i): _data_uri(_small(jpegs[h])) for i, h in want.items() if h in jpegs}
    points = [
        (round(float(pts[i, 0]), 1), round(float(size - pts[i, 1]), 1), color[group[i]],
         f"{group[i]}: {path[i]}", str(i) if str(i) in thumbs else "")
        for i in order
    ]  # fmt: skip
    return {"method": frame.attrs.get("method", ""), "points": points, "legend": list(color.items()),
            "thumbs": thumbs}  # fmt: skip


def _bars(counts: dict[str, int]) -> list[tuple[str, int, float]]:
    """(name, count, width %) rows for a CSS bar chart, largest first."""
    top = max(counts.values(), default=0) or 1
    return [(k, int(v), 100.0 * v / top) for k, v in counts.items()]


def _split_charts(table) -> list[dict]:
    """One bar chart per split: images per class (largest classes first, capped)."""
    labeled = labeled_rows(table[["split", "label"]])  # two columns, not a copy of the table
    if labeled.empty:
        return []
    out = []
    splits = sorted({s for s in labeled["split"] if isinstance(s, str)}) or [None]
    for split in splits:
        rows = labeled if split is None else labeled[labeled["split"] == split]
        counts = rows["label"].value_counts()
        shown = counts.iloc[:MAX_CHART_CLASSES].to_dict()
        rest = int(counts.iloc[MAX_CHART_CLASSES:].sum())
        if rest:
            shown[f"(+{len(counts) - MAX_CHART_CLASSES} more classes)"] = rest
        out.append({"split": split or "(all)", "bars": _bars(shown), "classes": len(counts)})
    return out


def _resolution_chart(ok) -> list[tuple[str, int, float]]:
    """Images per shorter-side band (px)."""
    side = np.minimum(ok["width"].astype(float), ok["height"].astype(float)).dropna()
    edges = [0, 32, 64, 128, 224, 384, 512, 1024, 2048, np.inf]
    names = ["<32", "32-63", "64-127", "128-223", "224-383", "384-511", "512-1023", "1024-2047", ">=2048"]
    counts = np.histogram(side, bins=edges)[0]
    return _bars({n: int(c) for n, c in zip(names, counts, strict=True) if c})


def _histograms(report: dict) -> dict[int, list[dict]]:
    """Per shift entry: its overlaid reference/target histograms (report.json's bins) as SVG
    polyline points in a 300x90 box."""
    out: dict[int, list[dict]] = {}
    for k, entry in enumerate(report.get("shift") or []):
        charts = []
        for h in entry.get("histograms") or []:
            top = max(max(h["reference"], default=0.0), max(h["target"], default=0.0)) or 1.0

            def line(values, top=top):
                xs = np.linspace(0, 300, len(values))
                return " ".join(f"{x:.1f},{90 - 85 * v / top:.1f}" for x, v in zip(xs, values, strict=True))

            charts.append({"title": h["title"], "ks": h["ks"], "ref": line(h["reference"]), "tgt": line(h["target"]),
                           "lo": h["lo"], "hi": h["hi"]})  # fmt: skip
        out[k] = charts
    return out


def _curves(finetune: dict | None, width: int = 360, height: int = 120) -> list[dict]:
    """Training curves (phases one after the other) as SVG polylines: loss and accuracy,
    training and validation, with the epoch where phase 2 starts."""
    if not finetune or not finetune.get("history"):
        return []
    rows = [(phase, r) for phase, rs in finetune["history"].items() for r in rs]
    if not rows:
        return []
    boundary = next((i for i, (phase, _) in enumerate(rows) if phase != rows[0][0]), None)
    out = []
    for metric, title in (("loss", "loss"), ("accuracy", "accuracy")):
        series = {k: [r.get(k) for _, r in rows] for k in (metric, f"val_{metric}")}
        values = [v for vs in series.values() for v in vs if v is not None]
        if not values:
            continue
        lo, hi = min(values), max(values)
        hi = hi if hi > lo else lo + 1.0
        step = (width - 20) / max(len(rows) - 1, 1)

        def line(vs, lo=lo, hi=hi, step=step):
            return " ".join(f"{10 + i * step:.1f},{height - 10 - (height - 20) * (v - lo) / (hi - lo):.1f}"
                            for i, v in enumerate(vs) if v is not None)  # fmt: skip

        out.append({"title": title, "train": line(series[metric]), "val": line(series[f"val_{metric}"]),
                    "lo": lo, "hi": hi, "epochs": len(rows),
                    "boundary": None if boundary is None else 10 + (boundary - 0.5) * step})  # fmt: skip
    return out


def _fix_first(report: dict) -> list[dict]:
    """What to fix first: the diagnosis's fixes in rank order (one item per command, naming
    every cause it fixes; a fix with no command is its own item), then the gate's failing
    rules."""
    items: list[dict] = []
    by_command: dict[str, dict] = {}
    for d in sorted(report.get("diagnosis") or [], key=lambda d: d.get("rank", 0)):
        fix = d.get("fix") or {}
        command = fix.get("command")
        if command and command in by_command:
            by_command[command]["causes"].append(d["cause"])
            continue
        item = {"kind": "fix", "command": command, "text": fix.get("text") or "", "causes": [d["cause"]]}
        items.append(item)
        if command:
            by_command[command] = item
    for r in (report.get("gate") or {}).get("rules") or []:
        if r.get("status") == "fail":
            items.append({"kind": "rule", "rule": r["rule"], "value": r.get("value"), "threshold": r.get("threshold"),
                          "max_fraction": r.get("max_fraction")})  # fmt: skip
    return items


def _rule_groups(report: dict, totals: dict[str, int]) -> dict[str, list[dict]]:
    """The gate's rules in three groups: shown (failing, warning, or with findings), passed
    (no findings) and box rules that cannot apply (no box annotations)."""
    groups: dict[str, list[dict]] = {"shown": [], "passed": [], "no_boxes": []}
    no_boxes = not report.get("boxes")
    for r in (report.get("gate") or {}).get("rules") or []:
        if r.get("status") in ("fail", "warn") or totals.get(r["rule"], 0) or r.get("value"):
            groups["shown"].append(r)
        elif no_boxes and r["rule"].startswith("box_"):
            groups["no_boxes"].append(r)
        else:
            groups["passed"].append(r)
    return groups


def _check_groups(report: dict, totals: dict[str, int]) -> dict:
    """The checks as the findings part draws them: sections (checks with findings, report
    order), one line of checks that found nothing, one line per skip reason, one line of
    disabled checks; box checks on a dataset without boxes are left to the rules' box line."""
    out: dict = {"sections": [], "clean": [], "skipped": {}, "disabled": []}
    for name, info in report["checks"].items():
        if name.startswith("box_") and not report.get("boxes") and not totals.get(name):
            continue
        if not info.get("enabled", True):
            out["disabled"].append(name)
        elif totals.get(name):
            out["sections"].append(name)
        elif info.get("skipped"):
            out["skipped"].setdefault(str(info["skipped"]), []).append(name)
        else:
            out["clean"].append(name)
    return out


def _text(value) -> str | None:
    return value if isinstance(value, str) and value else None


def _filter_keys(report: dict, shown: dict[str, list[dict]], table) -> tuple[list[str], list[str], dict]:
    """The filters' options (splits, classes) and, per check, one (splits, classes) pair per
    shown finding: the indices (space-separated) of its paths' splits and classes (from the
    images table), or, for a finding without paths, of those its details name."""
    paths = list(dict.fromkeys(p for fs in shown.values() for f in fs for p in f["paths"]))
    rows = table.loc[rows_named(table["path"], paths), ["path", "split", "label"]]
    where = {p: (_text(s), _text(lab)) for p, s, lab in zip(rows["path"], rows["split"], rows["label"], strict=True)}
    found: list[tuple[str, set[str], set[str]]] = []
    for check, fs in shown.items():
        for f in fs:
            if f["paths"]:
                splits = {where[p][0] for p in f["paths"] if p in where} - {None}
                labels = {where[p][1] for p in f["paths"] if p in where} - {None}
            else:
                d = f.get("details") or {}
                splits = {s for s in [d.get("split"), *(d.get("splits") or [])] if _text(s)}
                labels = {d["label"]} if _text(d.get("label")) else set()
            found.append((check, splits, labels))
    split_names = sorted(set((report["dataset"].get("splits") or {}).keys()) | {s for _, ss, _ in found for s in ss})
    class_names = sorted(set(report["dataset"].get("classes") or []) | {c for _, _, cs in found for c in cs})
    si = {s: i for i, s in enumerate(split_names)}
    ci = {c: i for i, c in enumerate(class_names)}
    keys: dict[str, list[tuple[str, str]]] = {}
    for check, ss, cs in found:
        keys.setdefault(check, []).append((" ".join(str(si[s]) for s in sorted(ss)),
                                           " ".join(str(ci[c]) for c in sorted(cs))))  # fmt: skip
    return split_names, class_names, keys


def render_html(report: dict, table, projection, store: Store) -> str:
    """report.html from what a scan writes: ``report`` (report.json's document), ``table``
    (images.parquet's columns path, split, label, ok, format, width, height, content_hash),
    ``projection`` (projection.parquet, or None) and the thumbnails in ``store``: the same
    bytes whether drawn by the scan or again from its files (``audit report``)."""
    sections: dict[str, list[dict]] = {}
    for f in report["findings"]:
        sections.setdefault(f["check"], []).append(f)
    # worst first in every section, then capped
    # (heapq.nsmallest is sorted(...)[:n], ties in report order, without sorting a million)
    shown = {c: heapq.nsmallest(MAX_FINDINGS_PER_SECTION, fs, key=lambda f: -f["score"]) for c, fs in sections.items()}
    diagnosis = report.get("diagnosis")
    # ordered: the diagnosis's evidence first, then the shift panel, then the sections
    wanted: dict[str, None] = {}
    for d in diagnosis or []:
        for p in ((d.get("evidence") or {}).get("paths") or [])[:MAX_EVIDENCE_THUMBS]:
            wanted.setdefault(p)
    for s in report.get("shift") or []:
        for im in ((s.get("out_of_support") or {}).get("images") or [])[:MAX_THUMBS_PER_FINDING]:
            wanted.setdefault(im["path"])
    for pair in ((report.get("finetune") or {}).get("errors") or {}).get("confused_pairs") or []:
        for p in pair["examples"]:
            wanted.setdefault(p)
    rank = {"error": 0, "warning": 1, "info": 2}  # the budget goes to error sections first
    for _, fs in sorted(shown.items(), key=lambda kv: rank.get(report["checks"][kv[0]]["severity"], 3)):
        for f in fs:
            for p in f["paths"][:MAX_THUMBS_PER_FINDING]:
                wanted.setdefault(p)
    wanted = dict.fromkeys(list(wanted)[:MAX_THUMBS_TOTAL])  # bounds the file: ~5 KB a thumbnail
    rows = table.loc[rows_named(table["path"], list(wanted)), ["path", "content_hash"]]
    hash_of = {p: h for p, h in zip(rows["path"], rows["content_hash"], strict=True) if isinstance(h, str)}
    thumbs_by_hash = dict(store.thumbnails(hash_of.values(), THUMBNAIL_VERSIONS))
    thumbs = {p: _data_uri(thumbs_by_hash[h]) for p, h in hash_of.items() if h in thumbs_by_hash}
    ok = table[table["ok"]]
    totals = {c: len(fs) for c, fs in sections.items()}
    check_groups = _check_groups(report, totals)
    split_names, class_names, filter_keys = _filter_keys(report, shown, table)
    # names with an id on the page (a section, or a name on a collapsed line): evidence links there
    anchors = set(check_groups["sections"]) | set(check_groups["clean"]) | set(check_groups["disabled"])
    anchors |= {n for names in check_groups["skipped"].values() for n in names}
    formats = ok["format"].value_counts().to_dict() if len(ok) else {}
    return _template(store.folder).render(
        report=report,
        sections=shown,
        totals=totals,
        diagnosis=diagnosis,
        summary=report.get("diagnosis_summary") or {},
        fix_first=_fix_first(report),
        rule_groups=_rule_groups(report, totals),
        check_groups=check_groups,
        anchors=anchors,
        split_names=split_names,
        class_names=class_names,
        filter_keys=filter_keys,
        max_evidence_thumbs=MAX_EVIDENCE_THUMBS,
        thumbs=thumbs,
        max_thumbs=MAX_THUMBS_PER_FINDING,
        checks=report["checks"],
        formats=_bars(formats),
        split_charts=_split_charts(table),
        classes=(
            table.groupby([table["split"].fillna("(all)"), table["label"].fillna("(unlabeled)")])
            .size()
            .reset_index(name="n")
            .to_dict("records")
        ),  # fmt: skip
        resolutions=_resolution_chart(ok) if len(ok) else [],
        width_median=float(ok["width"].median()) if len(ok) else 0,
        height_median=float(ok["height"].median()) if len(ok) else 0,
        scatter=_scatter(projection, store),
        histograms=_histograms(report),
        curves=_curves(report.get("finetune")),
    )

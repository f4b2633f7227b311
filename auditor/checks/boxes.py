"""Box annotations of detection datasets (COCO, YOLO): the ``box_*`` checks.

Every check reads ``ctx.annotations`` (:class:`auditor.io.annotations.Annotations`) and skips
itself on a dataset without box annotations. Geometry is normalised to the image (COCO's
declared size, else the size the scan measured), so COCO pixels and YOLO fractions are
judged alike. Per-box findings name the annotation (``file: annotations[i]`` or
``file:line``) and carry ``details["boxes"]`` (normalised corners and class) so the report
draws them on the thumbnail.
"""

from __future__ import annotations

from collections import defaultdict

import numpy as np
import pandas as pd

from auditor.checks.registry import register
from auditor.core.constraints import COUNT, FRACTION, NON_NEGATIVE, PIXELS, PROBABILITY_LEVEL, Int, Real
from auditor.core.context import CheckContext
from auditor.core.findings import Finding
from auditor.io.annotations import geometry, overlapping_pairs

NOT_DETECTION = "not a detection dataset (no COCO or YOLO box annotations)"
#: Box geometry compared by ``box_style_shift``: name -> (kind, description). "size"
#: properties are compared as a ratio of medians, "position" ones as a difference.
STYLE_PROPERTIES = {
    "width": ("size", "wider"),
    "height": ("size", "taller"),
    "area": ("size", "larger (area)"),
    "aspect": ("size", "more elongated (width/height)"),
    "center_x": ("position", "further right"),
    "center_y": ("position", "further down"),
}


def boxes_of(ctx: CheckContext) -> pd.DataFrame | None:
    """The dataset's boxes with normalised geometry (cached); None without annotations."""
    ann = ctx.annotations
    if ann is None:
        return None
    if ctx.analyses.boxes is None:
        sizes = ann.images[["path", "width", "height"]].copy()
        measured = ctx.table.set_index("path")[["width", "height"]] if "width" in ctx.table else None
        if measured is not None:
            m = sizes["path"].map(measured["width"]), sizes["path"].map(measured["height"])
            sizes["width"] = sizes["width"].fillna(m[0].astype(float))
            sizes["height"] = sizes["height"].fillna(m[1].astype(float))
        ctx.analyses.boxes = geometry(ann.boxes, sizes)
    return ctx.analyses.boxes


def valid_boxes(b: pd.DataFrame, pixels: bool = False) -> pd.DataFrame:
    """The boxes with a positive size and known normalised corners (``pixels``: and a known
    size in pixels, finite everywhere), the ones geometry can be compared on."""
    ok = (b["w"] > 0) & (b["h"] > 0) & b["x0"].notna()
    if pixels:
        ok &= np.isfinite(b[["x0", "y0", "x1", "y1", "pw", "ph"]]).all(axis=1)
    return b[ok]


def _box(row) -> dict:
    return {"box": [row.x0, row.y0, row.x1, row.y1], "label": str(row.category), "where": row.where}


def _box_finding(check: str, row, score: float, message: str, **extra) -> Finding:
    return Finding(check, [row.path], score, f"{row.where} ({row.category}): {message}",
                   {"box_id": row.box_id, "where": row.where, "category": row.category, "split": row.split,
                    "boxes": [_box(row)], **extra})  # fmt: skip


@register("box_out_of_bounds", "boxes", {"tolerance": FRACTION})
def box_out_of_bounds(ctx: CheckContext, params: dict) -> list[Finding]:
    """Boxes reaching beyond the image by more than ``tolerance`` (fraction of the image
    side): a wrong coordinate convention, a resized image with stale boxes, or a typo.
    Score: the largest overshoot as a fraction of the image side."""
    b = boxes_of(ctx)
    if b is None:
        return ctx.skip("box_out_of_bounds", NOT_DETECTION)
    tol = params["tolerance"]
    over = pd.concat([-b["x0"], -b["y0"], b["x1"] - 1, b["y1"] - 1], axis=1).max(axis=1)
    out = []
    for row, o in zip(b[over > tol].itertuples(), over[over > tol], strict=True):
        out.append(_box_finding("box_out_of_bounds", row, float(o),
                                f"extends {o:.0%} of the image beyond its edge", overshoot=float(o)))  # fmt: skip
    return out


@register("box_degenerate", "boxes")
def box_degenerate(ctx: CheckContext, params: dict) -> list[Finding]:
    """Boxes with zero or negative width or height (nothing to learn from; many loaders
    crash or silently drop them). Score 1."""
    b = boxes_of(ctx)
    if b is None:
        return ctx.skip("box_degenerate", NOT_DETECTION)
    bad = b[(b["w"] <= 0) | (b["h"] <= 0)]
    return [_box_finding("box_degenerate", r, 1.0, f"width {r.w:g}, height {r.h:g} ({r.units})") for r in
            bad.itertuples()]  # fmt: skip


@register("box_tiny", "boxes", {"min_side_px": PIXELS})
def box_tiny(ctx: CheckContext, params: dict) -> list[Finding]:
    """Boxes with a side shorter than ``min_side_px`` pixels (and above zero): a stray click
    rather than an object, or an object too small for the model's input resolution. Score:
    1 - shorter side / min_side_px."""
    b = boxes_of(ctx)
    if b is None:
        return ctx.skip("box_tiny", NOT_DETECTION)
    side = np.minimum(b["pw"], b["ph"])
    m = (b["w"] > 0) & (b["h"] > 0) & (side < params["min_side_px"])
    return [_box_finding("box_tiny", r, float(1 - s / params["min_side_px"]),
                         f"{r.pw:.1f} x {r.ph:.1f} px", width_px=float(r.pw), height_px=float(r.ph))
            for r, s in zip(b[m].itertuples(), side[m], strict=True)]  # fmt: skip


def _overlapping(ctx: CheckContext, b: pd.DataFrame, params: dict, same_class: bool) -> list[Finding]:
    """Pairs of boxes on one image with IoU >= ``min_iou``, of the same class or not; an image
    with more than ``max_boxes_per_image`` boxes is not compared (box_duplicate reports it)."""
    min_iou, limit = params["min_iou"], params["max_boxes_per_image"]
    check = "box_duplicate" if same_class else "box_label_conflict"
    valid = valid_boxes(b)
    valid = valid[~valid["crowd"].astype(bool)]  # crowd regions overlap by design
    per_image = valid["path"].value_counts()
    crowded = per_image[per_image > limit].sort_index()
    out = []
    if len(crowded):
        ctx.notes[check] = (f"{len(crowded)} image(s) with more than {limit:,} boxes not compared: "
                            + ", ".join(crowded.index[:5]))  # fmt: skip
        valid = valid[~valid["path"].isin(crowded.index)]
        # Reported once, by box_duplicate (such a file almost always repeats its boxes); not
        # details["boxes"]: the report draws the boxes listed there.
        if same_class:
            out += [Finding(check, [path], 1.0, f"{path} has {n:,} boxes, more than the {limit:,} "
                            "compared on one image: duplicates not checked (was the label file written twice, or "
                            "generated?)", {"box_count": int(n), "limit": limit, "compared": False})
                    for path, n in crowded.items()]  # fmt: skip
    # Pairs are found by a sweep over x (annotations.overlapping_pairs), not an n x n IoU
    # matrix per image: one image with many boxes used to need n^2 memory.
    groups = valid["path"].astype("category").cat.codes.to_numpy()  # codes follow the sorted paths
    i, j, iou = overlapping_pairs(valid[["x0", "y0", "x1", "y1"]].to_numpy(float), groups, min_iou)
    cats = pd.factorize(valid["category"].astype(str))[0]
    keep = (cats[i] == cats[j]) if same_class else (cats[i] != cats[j])
    i, j, iou = i[keep], j[keep], iou[keep]
    involved = np.unique(np.concatenate([i, j]))
    rows = dict(zip(involved, valid.iloc[involved].itertuples(), strict=True))
    for ia, ic, v in zip(i, j, iou, strict=True):
        a, c = rows[ia], rows[ic]
        what = (f"{a.where} and {c.where}: two {a.category} boxes overlap (IoU {v:.2f})" if same_class
                else f"{a.where} ({a.category}) and {c.where} ({c.category}): one object, two classes "
                     f"(IoU {v:.2f})")  # fmt: skip
        out.append(Finding(check, [a.path], float(v), what,
                           {"box_ids": [a.box_id, c.box_id], "where": [a.where, c.where],
                            "categories": [a.category, c.category], "iou": float(v),
                            "split": a.split, "boxes": [_box(a), _box(c)]}))  # fmt: skip
    return out


OVERLAP_PARAMS = {"min_iou": Real(0, 1, "right"), "max_boxes_per_image": Int(2)}


@register("box_duplicate", "boxes", OVERLAP_PARAMS)
def box_duplicate(ctx: CheckContext, params: dict) -> list[Finding]:
    """Two boxes of the same class on one image with IoU at least ``min_iou``: the object
    was annotated twice (the model is taught to predict duplicates). COCO crowd regions
    (``iscrowd``) are left out. Score: the IoU."""
    b = boxes_of(ctx)
    if b is None:
        return ctx.skip("box_duplicate", NOT_DETECTION)
    return _overlapping(ctx, b, params, same_class=True)


@register("box_label_conflict", "boxes", OVERLAP_PARAMS)
def box_label_conflict(ctx: CheckContext, params: dict) -> list[Finding]:
    """Near-identical boxes (IoU at least ``min_iou``) with different classes on one image:
    the annotators disagreed. Score: the IoU."""
    b = boxes_of(ctx)
    if b is None:
        return ctx.skip("box_label_conflict", NOT_DETECTION)
    return _overlapping(ctx, b, params, same_class=False)


def _problems(ctx: CheckContext, check: str, kinds: tuple[str, ...]) -> list[Finding]:
    if ctx.annotations is None:
        return ctx.skip(check, NOT_DETECTION)
    out = []
    for p in ctx.annotations.problems:
        if p["kind"] in kinds:
            details = {k: v for k, v in p.items() if k not in ("message", "path")}
            out.append(Finding(check, [p["path"]] if p.get("path") else [], 1.0, p["message"], details))
    return out


@register("box_missing_image", "boxes")
def box_missing_image(ctx: CheckContext, params: dict) -> list[Finding]:
    """Annotations whose image does not exist (a COCO ``file_name`` not on disk, a YOLO label
    file without its image, a COCO annotation pointing at an image id that is not listed).
    Score 1."""
    return _problems(ctx, "box_missing_image", ("missing_image", "unknown_image_id", "no_images_found"))


@register("box_unknown_category", "boxes")
def box_unknown_category(ctx: CheckContext, params: dict) -> list[Finding]:
    """Boxes whose class is not declared (a COCO ``category_id`` missing from
    ``categories``; a YOLO class index beyond the ``data.yaml`` / ``classes.txt`` names).
    Score 1."""
    ann = ctx.annotations
    if ann is not None and not ann.names_known:
        return ctx.skip("box_unknown_category", "no class names (data.yaml or classes.txt) to check against")
    return _problems(ctx, "box_unknown_category", ("unknown_category",))


@register("box_image_size_mismatch", "boxes")
def box_image_size_mismatch(ctx: CheckContext, params: dict) -> list[Finding]:
    """A COCO image whose declared ``width``/``height`` differ from the decoded image: the
    file was resized or replaced after annotation (the boxes are stale), or its EXIF
    orientation turns it (boxes drawn on the unrotated image land in the wrong place).
    Boxes are judged in the declared frame. Score 1."""
    ann = ctx.annotations
    if ann is None:
        return ctx.skip("box_image_size_mismatch", NOT_DETECTION)
    if ann.format != "coco":
        return ctx.skip("box_image_size_mismatch", "YOLO boxes are fractions of the image: no declared size")
    t = ctx.ok.set_index("path")
    out = []
    for r in ann.images.itertuples():
        if not (np.isfinite(r.width) and np.isfinite(r.height)) or r.path not in t.index:
            continue
        w, h = int(t.at[r.path, "width"]), int(t.at[r.path, "height"])
        if (w, h) == (int(r.width), int(r.height)):
            continue
        rotated = (w, h) == (int(r.height), int(r.width))
        why = ("after its EXIF orientation is applied: were the boxes drawn on the unrotated image?"
               if rotated else "the file was resized or replaced after annotation: its boxes are stale")  # fmt: skip
        out.append(Finding("box_image_size_mismatch", [r.path], 1.0,
                           f"{r.where} declares {int(r.width)} x {int(r.height)} but the image is {w} x {h} {why}",
                           {"declared": [int(r.width), int(r.height)], "actual": [w, h], "rotated": rotated,
                            "where": r.where}))  # fmt: skip
    return out


@register("box_unannotated_image", "boxes")
def box_unannotated_image(ctx: CheckContext, params: dict) -> list[Finding]:
    """Images without a single box (a COCO image entry with no annotations; a YOLO image
    without a label file). YOLO images with an empty label file are background on purpose
    and not reported; images on disk that no COCO file lists are not part of the dataset.
    Score 1."""
    ann = ctx.annotations
    if ann is None:
        return ctx.skip("box_unannotated_image", NOT_DETECTION)
    rows = ann.images[ann.images["exists"] & ~ann.images["annotated"] & ~ann.images["background"]]
    what = "has no label file" if ann.format == "yolo" else "has no annotations"
    return [Finding("box_unannotated_image", [r.path], 1.0, f"{r.path} {what}",
                    {"split": r.split if isinstance(r.split, str) else None, "where": r.where})
            for r in rows.itertuples()]  # fmt: skip


@register("box_class_imbalance", "boxes", {"max_ratio": Real(1), "min_boxes_per_class": COUNT})
def box_class_imbalance(ctx: CheckContext, params: dict) -> list[Finding]:
    """By box count: the most common class above ``max_ratio`` times the rarest, and
    declared classes with fewer than ``min_boxes_per_class`` boxes (none at all included).
    Score: the ratio, or the missing share of the minimum."""
    b = boxes_of(ctx)
    if b is None:
        return ctx.skip("box_class_imbalance", NOT_DETECTION)
    ann = ctx.annotations
    counts = b["category"].astype(str).value_counts()
    if ann.names_known:  # undeclared ids are box_unknown_category's; declared but unused classes count as 0
        declared = list(dict.fromkeys(ann.categories.values()))
        counts = counts.reindex(declared, fill_value=0)
    counts = counts.sort_values(ascending=False, kind="stable")
    out = []
    present = counts[counts > 0]
    if len(present) >= 2 and present.iloc[0] / present.iloc[-1] > params["max_ratio"]:
        ratio = present.iloc[0] / present.iloc[-1]
        out.append(Finding("box_class_imbalance", [], float(ratio),
                           f"{present.index[0]} has {ratio:.0f}x the boxes of {present.index[-1]} "
                           f"({present.iloc[0]} vs {present.iloc[-1]})",
                           {"boxes_per_class": counts.to_dict()}))  # fmt: skip
    need = params["min_boxes_per_class"]
    for name, n in counts[counts < need].items():
        out.append(Finding("box_class_imbalance", [], float(1 - n / need), f"class {name} has only {n} boxes",
                           {"class": name, "boxes": int(n)}))  # fmt: skip
    return out


def style_values(b: pd.DataFrame) -> pd.DataFrame:
    """Per box: normalised width, height, area, aspect (width / height), centre x and y."""
    w, h = b["x1"] - b["x0"], b["y1"] - b["y0"]
    return pd.DataFrame({"width": w, "height": h, "area": w * h, "aspect": w / h,
                         "center_x": (b["x0"] + b["x1"]) / 2, "center_y": (b["y0"] + b["y1"]) / 2},
                        index=b.index)  # fmt: skip


def _groupings(b: pd.DataFrame) -> list[tuple[str, str, pd.Series]]:
    """(what is compared, reference name, group label per box): splits against train (or
    the largest split), and annotation sources against the largest source."""
    out = []
    for column, kind in (("split", "split"), ("source", "source")):
        labels = b[column].map(lambda s: s if isinstance(s, str) and s else None)
        counts = labels.value_counts()
        if len(counts) < 2:
            continue
        ref = "train" if kind == "split" and "train" in counts else counts.index[0]
        out.append((kind, ref, labels))
    return out


@register("box_style_shift", "boxes",
          {"alpha": PROBABILITY_LEVEL, "min_images": Int(2), "min_relative_change": NON_NEGATIVE,
           "min_center_shift": NON_NEGATIVE})  # fmt: skip
def box_style_shift(ctx: CheckContext, params: dict) -> list[Finding]:
    """Annotation style differs between splits (each against train) or annotation sources
    (COCO ``annotator``/``source``, each against the largest): per class and over all
    classes, the box width, height, area, aspect, and centre distributions are compared
    with a two-sample KS test (Bonferroni over every comparison) and the Wasserstein
    distance. The unit is the image (the median of its boxes), not the box: boxes of one
    image share its scale, so testing them as independent draws finds "shifts" between
    random halves of one dataset far too often (``benchmarks/box_style_calibration.py``).
    Each side needs ``min_images`` images. A difference counts when significant at
    ``alpha`` and large: medians of a size property at least ``min_relative_change`` apart in ratio, or centres at least
    ``min_center_shift`` of the image apart. One finding per compared group and class, the
    largest difference first ("val boxes are 32% larger (area) than train boxes for class
    person"). Score: the largest relative change (centre shifts divided by
    ``min_center_shift`` x ``min_relative_change``)."""
    b = boxes_of(ctx)
    if b is None:
        return ctx.skip("box_style_shift", NOT_DETECTION)
    from scipy.stats import ks_2samp, wasserstein_distance  # 0.7 s to import: only for detection data

    b = valid_boxes(b)
    groupings = _groupings(b)
    if not groupings:
        return ctx.skip("box_style_shift", "one split and one annotation source: nothing to compare")
    values = style_values(b)
    need = params["min_images"]
    tests = []  # (kind, ref, other, class, property, a, b)

    def per_image(mask: pd.Series) -> pd.DataFrame:
        return values[mask].groupby(b.loc[mask, "path"]).median()

    for kind, ref, labels in groupings:
        for other in sorted(set(labels.dropna()) - {ref}):
            for cls in ["(all classes)", *sorted(b["category"].astype(str).unique())]:
                sel = b["category"].astype(str) == cls if cls != "(all classes)" else pd.Series(True, index=b.index)
                a, o = per_image(sel & (labels == ref)), per_image(sel & (labels == other))
                if len(a) < need or len(o) < need:
                    continue
                for prop in STYLE_PROPERTIES:
                    tests.append((kind, ref, other, cls, prop, a[prop].to_numpy(), o[prop].to_numpy()))
    if not tests:
        return ctx.skip("box_style_shift", f"no class has boxes on {need} images in two compared groups")
    found: dict[tuple, list[dict]] = defaultdict(list)
    for kind, ref, other, cls, prop, a, o in tests:
        p = float(ks_2samp(a, o).pvalue) * len(tests)
        if p >= params["alpha"]:
            continue
        kind_p, text = STYLE_PROPERTIES[prop]
        ma, mo = float(np.median(a)), float(np.median(o))
        if kind_p == "size":
            change = mo / ma - 1 if ma > 0 else np.inf
            large = abs(change) >= params["min_relative_change"]
            score = abs(change)
            phrase = f"{abs(change):.0%} " + (text if change > 0 else _opposite(prop))
        else:
            change = mo - ma
            large = abs(change) >= params["min_center_shift"]
            score = abs(change) / params["min_center_shift"] * params["min_relative_change"]
            phrase = f"centred {abs(change):.0%} of the image " + (text if change > 0 else _opposite(prop))
        if large:
            found[(kind, ref, other, cls)].append({
                "property": prop, "phrase": phrase, "change": float(change), "score": float(score),
                "p_value": min(1.0, p), "wasserstein": float(wasserstein_distance(a, o)),
                "median_reference": ma, "median_other": mo, "images_reference": len(a),
                "images_other": len(o)})  # fmt: skip
    out = []
    for (kind, ref, other, cls), diffs in found.items():
        diffs.sort(key=lambda d: -d["score"])
        top = diffs[0]
        where = "" if cls == "(all classes)" else f" for class {cls}"

        def label(g: str, kind: str = kind) -> str:
            return f"{g} boxes" if kind == "split" else f"boxes from {kind} {g}"

        message = f"{label(other)} are {top['phrase']} than {label(ref)}{where}"
        if len(diffs) > 1:
            message += "; also " + ", ".join(d["property"] for d in diffs[1:])
        out.append(Finding("box_style_shift", [], top["score"], message,
                           {"compared": kind, "reference": ref, "other": other, "class": cls,
                            "differences": diffs}))  # fmt: skip
    return sorted(out, key=lambda f: -f.score)


def _opposite(prop: str) -> str:
    return {"width": "narrower", "height": "shorter", "area": "smaller (area)", "aspect": "less elongated",
            "center_x": "further left", "center_y": "further up"}[prop]  # fmt: skip


def box_summary(ctx: CheckContext) -> dict | None:
    """The report's ``boxes`` section: format, files, counts, and per-class box-size
    statistics (normalised width/height/area medians, area 10th/90th percentiles, median
    size in pixels)."""
    ann = ctx.annotations
    if ann is None:
        return None
    b = boxes_of(ctx)
    valid = valid_boxes(b, pixels=True)
    v = style_values(valid)
    classes = {}
    for cls, g in valid.groupby(valid["category"].astype(str), sort=True):
        s = v.loc[g.index]
        classes[cls] = {"boxes": int(len(g)), "images": int(g["path"].nunique()),
                        "median_width": float(s["width"].median()), "median_height": float(s["height"].median()),
                        "median_area": float(s["area"].median()), "area_p10": float(s["area"].quantile(0.1)),
                        "area_p90": float(s["area"].quantile(0.9)), "median_width_px": float(g["pw"].median()),
                        "median_height_px": float(g["ph"].median()),
                        "per_split": {str(k): int(n) for k, n in
                                      g["split"].dropna().value_counts().items()}}  # fmt: skip
    images = ann.images
    return {"format": ann.format, "files": ann.files, "images": int(images["exists"].sum()),
            "annotated_images": int((images["exists"] & images["annotated"]).sum()), "boxes": int(len(b)),
            "categories": ann.categories, "classes": classes}  # fmt: skip

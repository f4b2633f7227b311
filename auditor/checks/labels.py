"""Label and annotation consistency: ``label_conflict``, ``label_issue``,
``class_name_inconsistency``, ``class_imbalance``, ``unseen_class``.

Each check skips itself (with the reason in ``report.json``) on unlabeled data.
``label_issue`` ranks images by cleanlab's label quality (Apache-2.0) on out-of-fold predicted
probabilities of a logistic regression on the frozen backbone's features and a vote of the
nearest images; ``filter_by`` adds confident learning (``cleanlab.filter.find_label_issues``).
"""

from __future__ import annotations

import re
from collections import Counter, defaultdict

import numpy as np
import pandas as pd

from auditor.analysis.labels import FEATURES, UNLABELED, label_probabilities, labeled_ok
from auditor.checks.duplicates import NEAR_PARAMS, closest_evidence, evidence_text, kind_key, near_graph
from auditor.checks.registry import register
from auditor.core.constraints import AT_LEAST_ONE, COUNT, FRACTION, POSITIVE, Int, Real, choices
from auditor.core.context import CheckContext
from auditor.core.findings import Finding
from auditor.io.dataset import labeled


@register("label_conflict", "labels", NEAR_PARAMS)
def label_conflict(ctx: CheckContext, params: dict) -> list[Finding]:
    """Copies of one image (identical pixels, near-identical hashes, or embedding near
    duplicates, as ``near_duplicate``) that carry different labels, within a split or
    across splits. Every member is listed with its split and label. Score 1 for identical
    copies, else the strength of the closest match (0..1)."""
    with_label = labeled_ok(ctx)
    if with_label.empty:
        return ctx.skip("label_conflict", UNLABELED)
    t = ctx.ok.reset_index(drop=True)
    groups, evidence = near_graph(ctx, t, params, aligned_only=True)
    out = []
    for group in groups:
        labels = {t.iloc[m]["label"] for m in group if isinstance(t.iloc[m]["label"], str)}
        if len(labels) < 2:
            continue
        members = sorted(group, key=lambda m: (str(t.iloc[m]["label"]), str(t.iloc[m]["split"]), t.iloc[m]["path"]))
        identical = t.iloc[group]["pixel_hash"].nunique() == 1
        kind, value, score, diff = ("pixels", 0, 1.0, 0.0) if identical else closest_evidence(
            evidence, group, t["pixel_hash"], skip_identical=False)  # fmt: skip
        rows = [{"path": t.iloc[m]["path"], "split": t.iloc[m]["split"], "label": t.iloc[m]["label"]} for m in members]
        where = ", ".join(f"{r['label']!r} ({r['path']})" for r in rows[:6]) + (" ..." if len(rows) > 6 else "")
        what = "identical copies" if identical else f"near copies ({evidence_text(kind, value)})"
        out.append(Finding(
            "label_conflict", [r["path"] for r in rows], score,
            f"{len(rows)} {what} carry {len(labels)} different labels: {where}",
            {"labels": sorted(labels), "identical": identical, "evidence": kind, kind_key(kind): value,
             "pixel_difference": diff,
             "splits": sorted({r["split"] for r in rows if isinstance(r["split"], str)}), "members": rows},
        ))  # fmt: skip
    return sorted(out, key=lambda f: (-f.score, f.paths[0]))


FILTERS = ("none", "both", "prune_by_noise_rate", "prune_by_class", "confident_learning", "predicted_neq_given")
LABEL_ISSUE_PARAMS = {"folds": Int(2), "min_class_images": AT_LEAST_ONE, "regularization": POSITIVE,
                      "features": choices(*FEATURES), "depth_regularization": POSITIVE,
                      "filter_by": choices(*FILTERS), "neighbours": AT_LEAST_ONE, "neighbour_weight": FRACTION,
                      "max_label_quality": Real(0, 1, "right")}  # fmt: skip


@register("label_issue", "labels", LABEL_ISSUE_PARAMS)
def label_issue(ctx: CheckContext, params: dict) -> list[Finding]:
    """Likely mislabelled images: those whose given label has an out-of-sample probability
    (cleanlab's self-confidence label quality) below ``max_label_quality``. The probabilities
    are those of a logistic regression (``folds``-fold out-of-fold) on the backbone's
    ``features`` (``depths``: the BatchNorm statistics of its middle and late blocks,
    :func:`auditor.analysis.labels.depth_features`, inverse regularisation
    ``depth_regularization``, where the backbone records them, else the embeddings;
    ``embedding``: the embeddings, inverse regularisation ``regularization``) averaged with a
    leave-one-out vote of the ``neighbours`` nearest images by embedding
    (:func:`auditor.analysis.labels.knn_vote_probabilities`, weight ``neighbour_weight``), over
    the labeled images of all splits. A probability means the same in every domain, where the
    number of issues confident learning estimates grows with how hard the classes are to tell
    apart (ambiguous glyphs, 32-px photos). ``filter_by`` other than ``none`` also requires
    cleanlab's ``find_label_issues`` with that filter. Classes with fewer than
    ``min_class_images`` images are left out. Score: 1 - the label quality, 0..1, ranked; each
    finding names the given and the suggested label."""
    got = label_probabilities(ctx, params)
    if isinstance(got, str):
        return ctx.skip("label_issue", got)
    rows, keep_classes, y, probs, quality = got.rows, got.classes, got.y, got.probs, got.quality
    issues = quality < params["max_label_quality"]
    if params["filter_by"] != "none":
        from cleanlab.filter import find_label_issues

        issues &= find_label_issues(y, probs, filter_by=params["filter_by"], n_jobs=1)
    out = []
    for i in np.flatnonzero(issues):
        row = rows.iloc[i]
        suggested = keep_classes[int(np.argmax(probs[i]))]
        given = row["label"]
        out.append(Finding(
            "label_issue", [row["path"]], 1.0 - float(quality[i]),
            f"labelled {given!r}, looks like {suggested!r} (p={probs[i].max():.2f}; "
            f"p of the given label {probs[i, y[i]]:.2f})",
            {"given_label": given, "suggested_label": suggested, "label_quality": float(quality[i]),
             "suggested_probability": float(probs[i].max()), "split": row["split"] if isinstance(row["split"], str)
             else None},
        ))  # fmt: skip
    if got.left_out:
        ctx.notes["label_issue"] = f"classes with too few images left out: {', '.join(map(str, got.left_out[:10]))}"
    return sorted(out, key=lambda f: (-f.score, f.paths[0]))


def _tokens(name: str) -> list[str]:
    """Lower-case words of a class name, split at whitespace, '-', '_', '.' and camelCase,
    with a plural 's' removed from the last word: 'Golden_Retrievers' -> ['golden', 'retriever']."""
    words = re.findall(r"[A-Z]+(?![a-z])|[A-Z]?[a-z]+|\d+|[^\W\d_]+", name.strip())
    words = [w.lower() for w in words] or [name.strip().lower()]
    last = words[-1]
    if len(last) > 3 and last.endswith("ies"):
        words[-1] = last[:-3] + "y"
    elif len(last) > 3 and last.endswith("s") and not last.endswith("ss"):
        words[-1] = last[:-1]
    return words


def _normal_name(name: str) -> str:
    """Case, whitespace, '-', '_' and a plural 's' removed: 'Cats_ ' -> 'cat'."""
    return "".join(_tokens(name))


def _one_edit(a: str, b: str) -> bool:
    """True when words a and b differ by one substitution, insertion, deletion or adjacent
    swap that is not in the first letter and involves no digit (walking/talking, class1/class2
    and n01440746/n01440764 are different classes)."""
    if a == b or abs(len(a) - len(b)) > 1 or a[:1] != b[:1]:
        return False
    if len(a) == len(b):
        diff = [i for i in range(len(a)) if a[i] != b[i]]
        changed = {a[i] for i in diff} | {b[i] for i in diff}
        if any(c.isdigit() for c in changed):
            return False
        if len(diff) == 1:
            return True
        return len(diff) == 2 and diff[1] == diff[0] + 1 and a[diff[0]] == b[diff[1]] and a[diff[1]] == b[diff[0]]
    short, long_ = (a, b) if len(a) < len(b) else (b, a)
    return any(long_[:i] + long_[i + 1 :] == short and not long_[i].isdigit() for i in range(1, len(long_)))


def _typo_of(a: list[str], b: list[str], min_length: int) -> bool:
    """Same words but one, which is a one-letter typo of the other's and at least
    ``min_length`` letters long (so 'class_a'/'class_b' or 'stage_II'/'stage_III' never are)."""
    if len(a) != len(b):
        return False
    diff = [(x, y) for x, y in zip(a, b, strict=True) if x != y]
    return len(diff) == 1 and min(map(len, diff[0])) >= min_length and _one_edit(*diff[0])


@register(
    "class_name_inconsistency", "labels", {"min_length_for_typo": AT_LEAST_ONE, "min_length_for_case": AT_LEAST_ONE}
)
def class_name_inconsistency(ctx: CheckContext, params: dict) -> list[Finding]:
    """Class names that are one class written differently: equal after ignoring case,
    whitespace, '-', '_', '.' and a plural 's' ('Cat', 'cat', 'cats', 'cat_'), or the same
    words but one with a one-letter typo (not the first letter, not a digit) in a word of at
    least ``min_length_for_typo`` letters ('golden_retriever' / 'golden-retreiver'). Names
    shorter than ``min_length_for_case`` letters are compared as written: 'a' and 'A', 'x'
    and 'X' are different glyphs, not one class spelt twice. Suggests merging into
    the spelling with the most images; the images under the other spellings are listed.
    Score: the share of the group's images under the other spellings."""
    labels = labeled(ctx.table)["label"]
    if labels.empty:
        return ctx.skip("class_name_inconsistency", UNLABELED)
    counts = Counter(labels)
    names = sorted(counts)
    parent = {n: n for n in names}

    def find(x: str) -> str:
        while parent[x] != x:
            parent[x] = parent[parent[x]]
            x = parent[x]
        return x

    tokens = {n: _tokens(n) for n in names}
    by_norm: dict[str, list[str]] = defaultdict(list)
    for n in names:
        norm = "".join(tokens[n])
        by_norm[norm if len(norm) >= params["min_length_for_case"] else "\0" + n].append(n)
    for group in by_norm.values():
        for other in group[1:]:
            parent[find(other)] = find(group[0])
    keys = sorted(by_norm)
    for i, a in enumerate(keys):
        for b in keys[i + 1 :]:
            if _typo_of(tokens[by_norm[a][0]], tokens[by_norm[b][0]], params["min_length_for_typo"]):
                parent[find(by_norm[b][0])] = find(by_norm[a][0])
    groups: dict[str, list[str]] = defaultdict(list)
    for n in names:
        groups[find(n)].append(n)
    out = []
    for members in groups.values():
        if len(members) < 2:
            continue
        members = sorted(members, key=lambda n: (-counts[n], n))
        keep = members[0]
        total = sum(counts[n] for n in members)
        listed = ", ".join(f"{n!r} ({counts[n]})" for n in members)
        rename = ctx.table[ctx.table["label"].isin(members[1:])]
        out.append(Finding(  # paths: the images filed under the other spellings (to move)
            "class_name_inconsistency", sorted(rename["path"]), 1.0 - counts[keep] / total,
            f"{len(members)} class names look like one class: {listed}; merge into {keep!r}",
            {"names": members, "counts": {n: counts[n] for n in members}, "suggested_name": keep},
        ))  # fmt: skip
    return sorted(out, key=lambda f: f.details["suggested_name"])


def _split_groups(t: pd.DataFrame) -> list[tuple[str | None, pd.DataFrame]]:
    splits = sorted({s for s in t["split"] if isinstance(s, str)})
    return [(s, t[t["split"] == s]) for s in splits] if splits else [(None, t)]


@register("class_imbalance", "labels", {"max_ratio": Real(1), "min_images_per_class": COUNT})
def class_imbalance(ctx: CheckContext, params: dict) -> list[Finding]:
    """Per split, the ratio of the largest to the smallest class above ``max_ratio``; and
    classes with fewer than ``min_images_per_class`` images in the training split (the
    whole dataset when it has no splits): too few to learn from. Score: the ratio, or the
    missing share of the minimum for a small class."""
    t = labeled_ok(ctx)
    if t.empty:
        return ctx.skip("class_imbalance", UNLABELED)
    out = []
    has_splits = t["split"].map(lambda s: isinstance(s, str)).any()
    for split, rows in _split_groups(t):
        counts = rows["label"].value_counts()
        where = f" in {split}" if split else ""
        if len(counts) >= 2:
            ratio = counts.iloc[0] / counts.iloc[-1]
            if ratio > params["max_ratio"]:
                out.append(Finding(
                    "class_imbalance", [], float(ratio),
                    f"classes are imbalanced{where}: {counts.index[0]!r} has {counts.iloc[0]} images, "
                    f"{counts.index[-1]!r} {counts.iloc[-1]} ({ratio:.1f}x)",
                    {"split": split, "counts": {str(k): int(v) for k, v in counts.items()}, "ratio": float(ratio)},
                ))  # fmt: skip
        if has_splits and split != "train":
            continue
        for label, n in counts.items():
            if n < params["min_images_per_class"]:
                out.append(Finding(  # about the class, not its images: no paths are flagged
                    "class_imbalance", [], 1.0 - n / params["min_images_per_class"],
                    f"class {label!r} has only {n} image{'s' if n != 1 else ''}{where}: too few to learn from "
                    f"(fewer than {params['min_images_per_class']})",
                    {"split": split, "label": label, "images": int(n)},
                ))  # fmt: skip
    return out


@register("unseen_class", "labels")
def unseen_class(ctx: CheckContext, params: dict) -> list[Finding]:
    """Classes in a val/test split that ``train`` never shows (the model cannot get them
    right), and ``train`` classes that a val/test split has no images of (their accuracy
    is never measured). Score: the share of the split's images affected (first case), 0.5
    (second)."""
    t = labeled_ok(ctx)
    if t.empty:
        return ctx.skip("unseen_class", UNLABELED)
    splits = {s for s in t["split"] if isinstance(s, str)}
    if "train" not in splits or len(splits) < 2:
        return ctx.skip("unseen_class", "no train split and evaluation split to compare")
    train = set(t.loc[t["split"] == "train", "label"])
    out = []
    for split in sorted(splits - {"train"}):
        rows = t[t["split"] == split]
        present = set(rows["label"])
        for label in sorted(present - train):
            paths = sorted(rows.loc[rows["label"] == label, "path"])
            out.append(Finding(
                "unseen_class", paths, len(paths) / len(rows),
                f"class {label!r} has {len(paths)} images in {split} and none in train",
                {"split": split, "label": label, "kind": "not_in_train"},
            ))  # fmt: skip
        missing = sorted(train - present)
        if missing:
            out.append(Finding(
                "unseen_class", [], 0.5,
                f"{split} has no images of {len(missing)} train class(es): {', '.join(map(repr, missing[:10]))}",
                {"split": split, "labels": missing, "kind": "not_in_split"},
            ))  # fmt: skip
    return out

"""What the diagnosis reads and what it writes for each cause: :class:`Inputs` (a scan's findings
and per-image table, taken apart once), :class:`Cause` (one ranked entry), the checks that feed
each cause, and the helpers every cause estimator shares (:func:`wilson`, :func:`percent`,
:func:`confidence_level`, :func:`quality_shares`). No threshold lives here.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import pandas as pd

from auditor.core.paths import EVAL_SPLITS
from auditor.io.dataset import labeled

#: Per-image quality checks (image_quality), and the copy checks inside one split (duplicates).
QUALITY_CHECKS = ("blurry", "noisy", "dark", "bright", "low_contrast", "low_information", "low_resolution",
                  "odd_aspect_ratio", "corrupt", "truncated")  # fmt: skip
DUPLICATE_CHECKS = ("exact_duplicate", "near_duplicate")
LABEL_CHECKS = ("label_issue", "label_conflict")
#: Box checks whose findings are annotation-style problems (annotation_style).
BOX_CHECKS = ("box_out_of_bounds", "box_degenerate", "box_duplicate", "box_label_conflict", "box_tiny",
              "box_style_shift", "box_unknown_category", "box_image_size_mismatch")  # fmt: skip
WORST_PATHS = 5


def wilson(k: int, n: int) -> list[float] | None:
    """95% Wilson score interval of the share k/n (None when n == 0)."""
    if n <= 0:
        return None
    k = min(max(k, 0), n)
    z = 1.959963984540054
    p = k / n
    den = 1 + z * z / n
    mid = (p + z * z / (2 * n)) / den
    half = z * ((p * (1 - p) / n + z * z / (4 * n * n)) ** 0.5) / den
    return [round(max(0.0, mid - half), 4), round(min(1.0, mid + half), 4)]


def percent(x: float) -> str:
    return f"{100 * x:.0f}%" if x >= 0.01 or x == 0 else f"{100 * x:.1f}%"


@dataclass
class Cause:
    cause: str
    points: float  # accuracy points at stake on the evaluation split (0..1): the ranking key
    confidence: str
    effect: dict
    evidence: dict
    fix: dict
    prior: bool = False  # the points are the rules' prior, not measured on this dataset: ranked after measured causes

    def entry(self, rank: int) -> dict:
        effect = {"points": round(float(self.points), 4), **self.effect}
        return {"cause": self.cause, "rank": rank, "confidence": self.confidence, "effect": effect,
                "evidence": self.evidence, "fix": self.fix}  # fmt: skip


@dataclass
class Inputs:
    """What the diagnosis reads, taken apart once."""

    findings: list[dict]
    table: pd.DataFrame  # path, split, label, ok
    report: dict
    params: dict
    dataset: str = "DATASET"
    by_check: dict[str, list[dict]] = field(default_factory=dict)
    eval_split: str | None = None
    not_assessed: dict[str, str] = field(default_factory=dict)
    labeled: pd.DataFrame = field(init=False, repr=False)  # the decoded rows with a label
    _paths: dict[str | None, set[str]] = field(default_factory=dict, repr=False)

    def __post_init__(self) -> None:
        for f in self.findings:
            self.by_check.setdefault(f["check"], []).append(f)
        splits = {str(s) for s in self.table["split"].dropna()} if "split" in self.table else set()
        self.eval_split = next((s for s in EVAL_SPLITS if s in splits), None)
        ok = self.table[self.table["ok"].astype(bool)] if "ok" in self.table else self.table
        self.labeled = labeled(ok) if "label" in ok else ok.iloc[:0]

    def split_paths(self, split: str | None) -> set[str]:
        """The paths of one split (every path for None), computed once per split."""
        if split not in self._paths:
            t = self.table
            self._paths[split] = set(t["path"]) if split is None else set(t.loc[t["split"] == split, "path"])
        return self._paths[split]

    def skipped(self, check: str) -> str | None:
        entry = (self.report.get("checks") or {}).get(check) or {}
        if not entry.get("enabled", True):
            return f"the {check} check is disabled in the rules"
        return entry.get("skipped")


def confidence_level(value: float, high: float, count: int, p: dict) -> str:
    return "high" if value >= high and count >= p["min_evidence_images"] else "medium"


def quality_shares(x: Inputs) -> tuple[dict[str, float], dict[str, set[str]]]:
    # info-level findings are notes, not degraded images (an odd aspect ratio in a set of mixed
    # shapes, a low-contrast tile of sky): they do not count
    flagged = {q for c in QUALITY_CHECKS for f in x.by_check.get(c, []) for q in f["paths"]
               if (f.get("details") or {}).get("scope") != "dataset" and f.get("severity") != "info"}  # fmt: skip
    shares, paths = {}, {}
    for split in ["train", x.eval_split] if x.eval_split else [None]:
        own = x.split_paths(split)
        hit = own & flagged
        shares[split or "all"] = len(hit) / len(own) if own else 0.0
        paths[split or "all"] = hit
    return shares, paths

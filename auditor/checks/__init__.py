"""Checks: functions from tables to findings, registered under stable names.

A check never prints and never decides severity: it receives its thresholds (``params``)
from the rules file and returns :class:`Finding` objects; :mod:`auditor.rules` assigns the
severity and judges the gate. Adding a check = one function here, one rules entry, one
report section, tests.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd

from ..constraints import Boolean, Constraint, Interval, Options


@dataclass
class Finding:
    """One thing wrong with one image, a group of images, or the dataset (``paths`` empty).

    ``score`` is the check's severity measure, larger = worse (documented per check);
    ``paths`` are relative to the dataset root, POSIX.
    """

    check: str
    paths: list[str]
    score: float
    message: str
    details: dict[str, Any] = field(default_factory=dict)
    severity: str = "info"

    def to_dict(self) -> dict[str, Any]:
        return {
            "check": self.check,
            "severity": self.severity,
            "paths": list(self.paths),
            "score": _round(self.score),
            "message": self.message,
            "details": _jsonable(self.details),
        }


def _round(x: float) -> float:
    return float(round(float(x), 6))


def jsonable(obj: Any) -> Any:
    """``obj`` with numpy scalars made plain, floats rounded to 6 places, NaN/inf as None."""
    return _jsonable(obj)


def _jsonable(obj: Any) -> Any:
    if isinstance(obj, dict):
        return {str(k): _jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_jsonable(v) for v in obj]
    if isinstance(obj, (np.integer,)):
        return int(obj)
    if isinstance(obj, (float, np.floating)):
        return _round(obj) if np.isfinite(obj) else None
    if isinstance(obj, np.bool_):
        return bool(obj)
    return obj


@dataclass
class CheckContext:
    """What checks read. ``table`` has one row per item (see :mod:`auditor.api`): the items
    columns (path, split, label, ...) plus every measured property; ``ok`` marks rows that
    decoded. ``settings`` holds rules-wide settings (e.g. the minimum dataset size for
    relative thresholds). ``reference`` is the per-image table of a source set the dataset
    is compared with (its embeddings are in ``embeddings`` too)."""

    table: pd.DataFrame
    settings: dict[str, Any] = field(default_factory=dict)
    embeddings: Any = None  # auditor.embed.Embeddings, or None when the scan ran with --no-embed
    reference: pd.DataFrame | None = None  # the source set's table (``--source``), same columns
    shift_params: dict[str, dict] = field(default_factory=dict)  # params of the shift rules (enabled or not)
    annotations: Any = None  # auditor.annotations.Annotations of a COCO / YOLO dataset
    # content hashes -> their JPEG thumbnails (the store's); pixel-level checks need it
    thumbnails: Callable[[Any], dict[str, bytes]] | None = None
    skipped: dict[str, str] = field(default_factory=dict)  # check name -> why it could not run
    notes: dict[str, str] = field(default_factory=dict)  # check name -> what it left out while running
    _cache: dict = field(default_factory=dict, repr=False)

    def skip(self, check: str, reason: str) -> list[Finding]:
        """Record that ``check`` could not run here (reported in ``report.json``) and return
        no findings: ``return ctx.skip("label_issue", "the dataset is unlabeled")``."""
        self.skipped[check] = reason
        return []

    @property
    def ok(self) -> pd.DataFrame:
        return self.table[self.table["ok"]]

    def ok_vectors(self) -> tuple[np.ndarray, np.ndarray] | None:
        """Embeddings of the :attr:`ok` rows in their order, float32 (n, d), and the mask of
        rows that have one; None without embeddings."""
        if self.embeddings is None:
            return None
        if "vectors" not in self._cache:
            self._cache["vectors"] = self.embeddings.rows(self.ok["content_hash"])
        return self._cache["vectors"]

    def ok_knn(self, k: int) -> tuple[np.ndarray, np.ndarray] | None:
        """Cosine kNN graph over the :attr:`ok` rows that have an embedding: ``(indices, sims)``
        (n_ok, k), indices positional into :attr:`ok`; rows without an embedding have no
        neighbours (similarity -inf). Computed once per context (for the largest k asked)."""
        got = self.ok_vectors()
        if got is None:
            return None
        cached = self._cache.get("knn")
        if cached is None or cached[0].shape[1] < k:
            from ..neighbors import knn

            vectors, mask = got
            have = np.flatnonzero(mask)
            kk = max(k, 10)
            sub_i, sub_s = knn(vectors[have], kk)
            width = sub_i.shape[1]
            idx = np.zeros((len(mask), width), np.int64)
            sims = np.full((len(mask), width), -np.inf, np.float32)
            idx[have] = have[sub_i]
            sims[have] = sub_s
            cached = self._cache["knn"] = (idx, sims)
        return cached[0][:, :k], cached[1][:, :k]


NO_EMBEDDINGS = "no embeddings (scan ran with --no-embed)"

CheckFn = Callable[[CheckContext, dict[str, Any]], list[Finding]]


@dataclass(frozen=True)
class CheckSpec:
    name: str
    fn: CheckFn
    params: dict[str, Constraint]  # parameter name -> its type with range or choices
    family: str
    description: str


REGISTRY: dict[str, CheckSpec] = {}


def register(name: str, family: str, params: dict[str, Constraint] | None = None):
    """Decorator: register a check under a stable ``name`` with its parameter schema: each
    parameter's type with its range or choices (:mod:`auditor.constraints`), which the rules
    loader enforces."""

    def deco(fn: CheckFn) -> CheckFn:
        if name in REGISTRY:
            raise ValueError(f"check {name!r} registered twice")
        loose = [p for p, c in (params or {}).items() if not isinstance(c, (Interval, Options, Boolean))]
        if loose:
            raise TypeError(f"check {name!r}: parameter {loose[0]!r} needs a constraint (range or choices)")
        doc = (fn.__doc__ or "").strip().split("\n\n")[0].replace("\n", " ")
        REGISTRY[name] = CheckSpec(name, fn, dict(params or {}), family, doc)
        return fn

    return deco


def load_all() -> dict[str, CheckSpec]:
    """Import every check module (registration happens at import) and return the registry."""
    from . import boxes, duplicates, embedding, integrity, labels, quality, shift  # noqa: F401

    return REGISTRY

"""What checks read: the per-image table and everything else a scan hands them."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd

from ..core.findings import Finding


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

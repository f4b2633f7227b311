"""What checks and analyses read: the per-image table and everything else a scan hands them,
and the analyses computed once per scan (:class:`Analyses`) that the checks and the report share."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd

from auditor.core.findings import Finding


@dataclass
class Analyses:
    """Results computed once per scan and read by several checks and by the report (each
    field is filled by the function named, on first use; a scan's context starts empty)."""

    #: :meth:`CheckContext.ok_vectors`: embeddings of the ok rows and the mask of rows that have one
    vectors: tuple[np.ndarray, np.ndarray] | None = None
    #: :func:`auditor.embed.neighbors.ok_knn`: cosine kNN graph ``(indices, sims)`` over the ok rows
    knn: tuple[np.ndarray, np.ndarray] | None = None
    #: :func:`auditor.analysis.shift.analyse`: (reference, target) -> the comparison's numbers
    shift: dict[tuple[str, str], dict] = field(default_factory=dict)
    #: :func:`auditor.analysis.shift.dataset_gap`: the pretraining-gap measures (None: not computed
    #: yet; ``gap_done`` tells a computed None from "not yet")
    gap: dict | None = None
    gap_done: bool = False
    #: :func:`auditor.checks.duplicates.near_graph`: the verified copy edges per parameter set
    near_edges: dict[tuple, tuple] = field(default_factory=dict)
    #: :func:`auditor.analysis.labels.label_probabilities`: per parameter set, the label probabilities
    labels: dict[tuple, object] = field(default_factory=dict)
    #: :func:`auditor.checks.boxes.boxes_of`: the boxes with normalised geometry
    boxes: pd.DataFrame | None = None


@dataclass
class CheckContext:
    """What checks and analyses read. ``table`` has one row per item (see :mod:`auditor.pipeline.api`): the items
    columns (path, split, label, ...) plus every measured property; ``ok`` marks rows that
    decoded. ``settings`` holds rules-wide settings (e.g. the minimum dataset size for
    relative thresholds). ``reference`` is the per-image table of a source set the dataset
    is compared with (its embeddings are in ``embeddings`` too)."""

    table: pd.DataFrame
    settings: dict[str, Any] = field(default_factory=dict)
    embeddings: Any = None  # auditor.embed.features.Embeddings, or None when the scan ran with --no-embed
    reference: pd.DataFrame | None = None  # the source set's table (``--source``), same columns
    shift_params: dict[str, dict] = field(default_factory=dict)  # params of the shift rules (enabled or not)
    annotations: Any = None  # auditor.io.annotations.Annotations of a COCO / YOLO dataset
    # content hashes -> their JPEG thumbnails (the store's); pixel-level checks need it
    thumbnails: Callable[[Any], dict[str, bytes]] | None = None
    skipped: dict[str, str] = field(default_factory=dict)  # check name -> why it could not run
    notes: dict[str, str] = field(default_factory=dict)  # check name -> what it left out while running
    analyses: Analyses = field(default_factory=Analyses, repr=False)

    def skip(self, check: str, reason: str) -> list[Finding]:
        """Record that ``check`` could not run here (reported in ``report.json``) and return
        no findings: ``return ctx.skip("label_issue", "the dataset is unlabeled")``."""
        self.skipped[check] = reason
        return []

    def relative_ok(self, n: int) -> bool:
        """Whether ``n`` images are enough to judge an image against the others
        (``settings.min_images_for_relative`` of the rules)."""
        return n >= int(self.settings["min_images_for_relative"])

    @property
    def ok(self) -> pd.DataFrame:
        return self.table[self.table["ok"]]

    def ok_vectors(self) -> tuple[np.ndarray, np.ndarray] | None:
        """Embeddings of the :attr:`ok` rows in their order, float32 (n, d), and the mask of
        rows that have one; None without embeddings."""
        if self.embeddings is None:
            return None
        if self.analyses.vectors is None:
            self.analyses.vectors = self.embeddings.rows(self.ok["content_hash"])
        return self.analyses.vectors


NO_EMBEDDINGS = "no embeddings (scan ran with --no-embed)"

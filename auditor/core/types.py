"""Result types the API returns and the report, the gate and the CLI read."""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # annotations only: a reused scan never imports pandas until its table is read
    import numpy as np
    import pandas as pd

    from auditor.core.findings import Finding

ProgressFn = Callable[[str, int, int], None]  # (stage, advance, total)


class RulesError(ValueError):
    """An invalid rules file (exit code 2)."""


@dataclass
class CheckRule:
    """One check's entry in a rules file, validated (:func:`auditor.policy.rules.load_rules`)."""

    name: str
    severity: str
    params: dict[str, Any]
    enabled: bool = True
    max_count: int | None = None
    max_fraction: float | None = None


@dataclass
class Rules:
    """A validated rules file: settings, one :class:`CheckRule` per check, the clean policy and
    the diagnosis thresholds."""

    source: str
    settings: dict[str, Any]
    checks: dict[str, CheckRule] = field(default_factory=dict)
    clean: dict[str, Any] = field(default_factory=dict)  # filled by validate()
    diagnosis: dict[str, Any] = field(default_factory=dict)  # filled by validate()


@dataclass
class Discovery:
    """The items of a dataset and what was skipped while finding them."""

    root: Path
    layout: str
    items: pd.DataFrame
    skipped: Counter = field(default_factory=Counter)
    missing: list[str] = field(default_factory=list)  # manifest rows whose file is absent
    annotations: Any = None  # auditor.io.annotations.Annotations for COCO / YOLO datasets
    # which rows of ``items`` are in ``missing`` (bool), as discovery found them; None: ask
    # missing_mask(), which works it out from ``missing``
    absent: np.ndarray | None = field(default=None, repr=False)

    def missing_mask(self) -> np.ndarray:
        """Which rows of :attr:`items` (bool, one per row) name a file that does not exist."""
        import numpy as np

        if self.absent is not None and len(self.absent) == len(self.items):
            return self.absent
        if not self.missing:
            return np.zeros(len(self.items), bool)
        return self.items["path"].isin(self.missing).to_numpy(bool)


@dataclass
class ScanResult:
    """What a scan found. ``report`` is the ``report.json`` document; ``table`` the per-image
    table (one row per item); ``out_dir`` where the files were written (None if not).
    ``reused``: the outputs of an earlier scan of the unchanged dataset, written again
    (:meth:`reused_from`); its ``table`` and ``findings`` are read from them when first asked
    for, and ``discovery``, ``embeddings`` and ``context`` are None."""

    report: dict
    table: pd.DataFrame
    findings: list[Finding]
    discovery: Discovery | None
    rules: Rules | None
    out_dir: Path | None = None
    files: dict[str, Path] = field(default_factory=dict)
    embeddings: Any = None  # auditor.embed.features.Embeddings when the scan embedded
    source_table: pd.DataFrame | None = None  # the --source set's per-image table
    projection: pd.DataFrame | None = None  # 2-D UMAP of the compared sets (see auditor.analysis.projection)
    context: Any = field(default=None, repr=False)  # the CheckContext the checks read (for the report)
    reused: bool = False

    @property
    def passed(self) -> bool:
        return bool(self.report["gate"]["passed"])

    def __getattr__(self, name: str) -> Any:
        # only reached for an attribute that is not set: a reused scan's table or findings
        loaders = self.__dict__.get("_lazy") or {}
        if name not in loaders:
            raise AttributeError(f"{type(self).__name__!r} object has no attribute {name!r}")
        value = loaders.pop(name)()
        setattr(self, name, value)
        return value

    @classmethod
    def reused_from(cls, files: dict[str, Path], rules: Rules | None = None) -> ScanResult:
        """The result of an unchanged scan whose outputs (``role -> path``: json, table, html,
        ...) were just written again: the report from ``report.json``; the table (from
        ``images.parquet``) and the findings (from the report) when first read."""
        report = json.loads(Path(files["json"]).read_bytes())
        result = cls(report, None, None, None, rules, out_dir=Path(files["json"]).parent, files=dict(files),
                     reused=True)  # fmt: skip
        del result.table, result.findings

        def table():
            import pandas as pd

            return pd.read_parquet(files["table"]) if "table" in files else None

        def findings():
            from auditor.core.findings import Finding

            return [Finding(f["check"], list(f["paths"]), f["score"], f["message"], dict(f.get("details") or {}),
                            f["severity"]) for f in report.get("findings", [])]  # fmt: skip

        result.__dict__["_lazy"] = {"table": table, "findings": findings}
        return result

"""Result types the API returns and the report, the gate and the CLI read."""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # annotations only: a reused scan never imports pandas until its table is read
    import pandas as pd

    from ..checks import Finding
    from ..dataset import Discovery
    from ..rules import Rules

ProgressFn = Callable[[str, int, int], None]  # (stage, advance, total)


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
    embeddings: Any = None  # auditor.embed.Embeddings when the scan embedded
    source_table: pd.DataFrame | None = None  # the --source set's per-image table
    projection: pd.DataFrame | None = None  # 2-D UMAP of the compared sets (see auditor.projection)
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
            from ..checks import Finding

            return [Finding(f["check"], list(f["paths"]), f["score"], f["message"], dict(f.get("details") or {}),
                            f["severity"]) for f in report.get("findings", [])]  # fmt: skip

        result.__dict__["_lazy"] = {"table": table, "findings": findings}
        return result

"""Findings, the unit every check returns and the report, the gate and the cleaner read."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np


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

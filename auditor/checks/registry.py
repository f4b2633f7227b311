"""The check registry: every check under a stable name with its parameter schema."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from auditor.core.constraints import Boolean, Constraint, Interval, Options
from auditor.core.context import CheckContext
from auditor.core.findings import Finding

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
    parameter's type with its range or choices (:mod:`auditor.core.constraints`), which the rules
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

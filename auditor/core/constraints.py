"""The rules schema's parameter constraints, after scikit-learn's parameter constraints: every
parameter a check or the gate compares against declares its type and its range
(:class:`Interval`) or its choices (:class:`Options`), and the rules loader refuses a value
outside them (exit 2, naming the file and the key) instead of a check silently skipping itself
or judging with a meaningless threshold. No imports beyond the standard library: the checks,
the rules loader and the reports all read it.

    {"robust_z": Real(0, None, "neither"), "folds": Int(2), "filter_by": Options("both", ...)}
"""

from __future__ import annotations

import math
from dataclasses import dataclass

_OPEN = {"both": ("[", "]"), "left": ("[", ")"), "right": ("(", "]"), "neither": ("(", ")")}


@dataclass(frozen=True)
class Interval:
    """A number of ``kind`` (``int``, or ``float`` which also takes an int) between ``low`` and
    ``high`` (None: unbounded); ``closed`` says which ends belong to it: both, left, right or
    neither."""

    kind: type
    low: float | None = None
    high: float | None = None
    closed: str = "both"

    def __post_init__(self) -> None:
        if self.kind not in (int, float) or self.closed not in _OPEN:
            raise ValueError(f"bad interval {self!r}")

    def problem(self, value: object) -> str | None:
        """None when ``value`` is allowed, else what was expected."""
        is_int = isinstance(value, int) and not isinstance(value, bool)
        is_number = is_int or isinstance(value, float)
        if not (is_int if self.kind is int else is_number) or (isinstance(value, float) and math.isnan(value)):
            return f"expected {self}"
        lo_ok = self.low is None or value > self.low or (value == self.low and self.closed in ("both", "left"))
        hi_ok = self.high is None or value < self.high or (value == self.high and self.closed in ("both", "right"))
        return None if lo_ok and hi_ok else f"expected {self}"

    def __str__(self) -> str:
        what = "an integer" if self.kind is int else "a number"
        left, right = _OPEN[self.closed]
        if self.low is not None and self.high is not None:
            return f"{what} in {left}{_num(self.low)}, {_num(self.high)}{right}"
        if self.low is not None:
            return f"{what} {'>=' if left == '[' else '>'} {_num(self.low)}"
        if self.high is not None:
            return f"{what} {'<=' if right == ']' else '<'} {_num(self.high)}"
        return what


@dataclass(frozen=True)
class Options:
    """One of a fixed set of values."""

    values: tuple

    def problem(self, value: object) -> str | None:
        hashable = isinstance(value, (str, int, float, bool)) or value is None
        return None if hashable and value in self.values else f"expected {self}"

    def __str__(self) -> str:
        return "one of " + ", ".join(map(str, self.values))


@dataclass(frozen=True)
class Boolean:
    """true or false."""

    def problem(self, value: object) -> str | None:
        return None if isinstance(value, bool) else f"expected {self}"

    def __str__(self) -> str:
        return "true or false"


Constraint = Interval | Options | Boolean


def _num(x: float) -> str:
    return str(int(x)) if float(x).is_integer() else str(x)


def Real(low: float | None = None, high: float | None = None, closed: str = "both") -> Interval:  # noqa: N802
    """A real number in the interval (an int is accepted)."""
    return Interval(float, low, high, closed)


def Int(low: int | None = None, high: int | None = None) -> Interval:  # noqa: N802
    """An integer in [low, high]."""
    return Interval(int, low, high, "both")


def choices(*values) -> Options:
    return Options(tuple(values))


#: Common shapes of threshold.
POSITIVE = Real(0, None, "neither")  # a scale, a factor, a z-score
NON_NEGATIVE = Real(0, None)
FRACTION = Real(0, 1)  # a share, a probability, a similarity
PROBABILITY_LEVEL = Real(0, 1, "neither")  # a significance level: 0 and 1 make no test
COUNT = Int(0)
AT_LEAST_ONE = Int(1)
PIXELS = Real(0, None)
BOOLEAN = Boolean()

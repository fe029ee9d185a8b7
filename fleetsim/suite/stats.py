"""Spread and intervals over seeds: the sample standard deviation of a measure (`Stat`)
and the mean with its two-sided 95% Student t interval (`Interval`), which the
reproduction document's verdicts and shares are stated in."""

from __future__ import annotations

import math
import statistics
from collections.abc import Sequence
from dataclasses import dataclass

# 97.5% quantiles of Student's t for 1..30 degrees of freedom (two-sided 95% intervals)
T_975 = (12.706, 4.303, 3.182, 2.776, 2.571, 2.447, 2.365, 2.306, 2.262, 2.228, 2.201,
         2.179, 2.160, 2.145, 2.131, 2.120, 2.110, 2.101, 2.093, 2.086, 2.080, 2.074, 2.069,
         2.064, 2.060, 2.056, 2.052, 2.048, 2.045, 2.042)


def t_975(df: int) -> float:
    """The 97.5% quantile of Student's t with `df` >= 1 degrees of freedom; above 30, the
    value at 30 (conservative: 4% above the normal 1.96)."""
    return T_975[min(df, len(T_975)) - 1]


@dataclass(frozen=True)
class Stat:
    mean: float
    spread: float  # sample standard deviation over seeds (0 with one seed)

    @classmethod
    def of(cls, values: Sequence[float]) -> Stat:
        spread = statistics.stdev(values) if len(values) > 1 else 0.0
        return cls(statistics.fmean(values), spread)

    def text(self, digits: int) -> str:
        return f"{self.mean:.{digits}f} ± {self.spread:.{digits}f}"


@dataclass(frozen=True)
class Interval:
    """The mean of `n` values and its 95% Student t interval (unbounded for one value)."""

    mean: float
    low: float
    high: float
    n: int

    @classmethod
    def of(cls, values: Sequence[float]) -> Interval:
        mean = statistics.fmean(values)
        half = (t_975(len(values) - 1) * statistics.stdev(values) / math.sqrt(len(values))
                if len(values) > 1 else math.inf)
        return cls(mean, mean - half, mean + half, len(values))

    def text(self, digits: int = 2) -> str:
        return f"{self.mean:.{digits}f} [{self.low:.{digits}f}, {self.high:.{digits}f}]"

"""Effects between groups of seeds: the effect, its confidence interval, and a status against a
threshold. The one place the report does statistics; every interval comes from scipy.stats.

Seeds are samples: an effect is decided only when its whole interval clears the threshold, and a
side with one seed gives no interval (its spread is unknown, and a spread borrowed from other
sweeps would let seed noise decide): such a comparison shows its effect and is inconclusive
(`TOO_FEW_SEEDS`).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

import numpy as np
from scipy import stats

__all__ = ["CONFIDENCE", "TOO_FEW_SEEDS", "Status", "Sample", "Interval", "difference", "mean_of", "too_few",
           "above", "within", "direction", "INTERVAL_METHODS"]

CONFIDENCE = 0.95  # two-sided, for every interval of the report
TOO_FEW_SEEDS = "needs 2+ seeds per side"  # why a comparison without an interval is inconclusive

Status = Literal["holds", "fails", "inconclusive"]
Method = Literal["welch", "t", "exact", "none"]
INTERVAL_METHODS: dict[str, str] = {
    "welch": "Welch t interval over the seeds (scipy.stats.ttest_ind, equal_var=False)",
    "t": "t interval of the mean over the seeds (scipy.stats.ttest_1samp)",
    "exact": "nothing to estimate (every seed gave the same value, on both sides): the interval is the value",
    "none": "no interval (inconclusive): a side has fewer than 2 seeds, or a seed has no value",
}


@dataclass(frozen=True)
class Sample:
    """One configuration's values of a metric, one per seed (nulls dropped)."""

    values: tuple[float, ...]

    @classmethod
    def of(cls, values: Sequence[float | None]) -> Sample:
        return cls(tuple(float(v) for v in values if v is not None and not math.isnan(v)))

    @property
    def n(self) -> int:
        return len(self.values)

    @property
    def mean(self) -> float | None:
        return float(np.mean(self.values)) if self.values else None

    @property
    def std(self) -> float | None:
        """Sample standard deviation (ddof 1); None below two seeds."""
        return float(np.std(self.values, ddof=1)) if self.n > 1 else None

    @property
    def spread(self) -> bool:
        return self.n > 1 and max(self.values) > min(self.values)

    def scaled(self, factor: float) -> Sample:
        return Sample(tuple(factor * v for v in self.values))


@dataclass(frozen=True)
class Interval:
    """An effect and its CONFIDENCE interval (low/high None when there is none)."""

    effect: float
    low: float | None
    high: float | None
    method: Method

    def text(self, decimals: int = 1) -> str:
        """`+14.2 [+5.9, +22.5]`; an exact value alone; `(no interval)` without one; `-` without a value."""
        if math.isnan(self.effect):
            return "-"
        if self.low is None or self.high is None:
            return f"{self.effect:+.{decimals}f} (no interval)"
        if self.method == "exact":
            return f"{self.effect:+.{decimals}f} (exact)"
        return f"{self.effect:+.{decimals}f} [{self.low:+.{decimals}f}, {self.high:+.{decimals}f}]"


def _interval(effect: float, bounds: tuple[float, float], method: Method) -> Interval:
    return Interval(effect, float(bounds[0]), float(bounds[1]), method)


def too_few(*samples: Sample) -> bool:
    """Whether a side has fewer than two seeds: its spread is unknown, so nothing is decided."""
    return any(s.n < 2 for s in samples)


def difference(left: Sample, right: Sample, factor: float = 1.0) -> Interval:
    """mean(left) - factor * mean(right). Welch's t interval when both sides have two seeds or more
    and some spread; the exact value when no seed differs from another on either side; no interval
    when a side has fewer than two seeds (`too_few`)."""
    scaled = right.scaled(factor)
    effect = left.mean - scaled.mean
    if too_few(left, right):
        return Interval(effect, None, None, "none")
    if left.spread or right.spread:
        result = stats.ttest_ind(left.values, scaled.values, equal_var=False)
        return _interval(effect, result.confidence_interval(CONFIDENCE), "welch")
    return Interval(effect, effect, effect, "exact")


def mean_of(sample: Sample) -> Interval:
    """The mean of per-seed values (paired differences) with its t interval (exact when all are
    equal; none below two seeds)."""
    if too_few(sample):
        return Interval(sample.mean, None, None, "none")
    if not sample.spread:
        return Interval(sample.mean, sample.mean, sample.mean, "exact")
    return _interval(sample.mean, stats.ttest_1samp(sample.values, 0.0).confidence_interval(CONFIDENCE), "t")


def above(interval: Interval, threshold: float = 0.0) -> Status:
    """holds when the whole interval lies above `threshold`, fails when none of it does."""
    if interval.low is None or interval.high is None:
        return "inconclusive"
    if interval.low > threshold:
        return "holds"
    return "fails" if interval.high <= threshold else "inconclusive"


def within(interval: Interval, margin: float) -> Status:
    """holds when the whole interval lies inside (-margin, margin), fails when all of it lies outside."""
    if interval.low is None or interval.high is None:
        return "inconclusive"
    if -margin < interval.low and interval.high < margin:
        return "holds"
    return "fails" if interval.low >= margin or interval.high <= -margin else "inconclusive"


def direction(interval: Interval) -> int | None:
    """+1 when the whole interval lies above 0, -1 when below, 0 when it holds 0; None without one."""
    if interval.low is None or interval.high is None:
        return None
    return 1 if interval.low > 0 else -1 if interval.high < 0 else 0

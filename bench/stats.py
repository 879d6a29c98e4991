"""Summary statistics of a sample of timings."""

from __future__ import annotations

import statistics
from collections.abc import Sequence
from dataclasses import dataclass


@dataclass(frozen=True)
class Summary:
    n: int
    median: float
    p90: float
    min: float
    max: float
    mean: float


def summarise(values: Sequence[float]) -> Summary:
    if not values:
        nan = float("nan")
        return Summary(0, nan, nan, nan, nan, nan)
    ordered = sorted(values)
    p90 = statistics.quantiles(ordered, n=10, method="inclusive")[8] if len(ordered) > 1 \
        else ordered[0]
    return Summary(n=len(ordered), median=statistics.median(ordered), p90=p90,
                   min=ordered[0], max=ordered[-1], mean=statistics.fmean(ordered))

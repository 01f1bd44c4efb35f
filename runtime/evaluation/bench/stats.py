"""Percentiles and the mean/p50/p99/std summary every latency figure of bench, smoke and the
serving benchmark is reported as (numpy's default interpolation, without importing numpy)."""

from __future__ import annotations

import statistics


def percentile(values: list[float], q: float) -> float:
    """Linear interpolation between the closest ranks (numpy's default)."""
    s = sorted(values)
    pos = (len(s) - 1) * q / 100
    lo = int(pos)
    hi = min(lo + 1, len(s) - 1)
    return s[lo] + (s[hi] - s[lo]) * (pos - lo)


def distribution(values: list[float]) -> dict[str, float | None]:
    if not values:
        return {"mean": None, "p50": None, "p99": None, "std": None}
    return {"mean": statistics.fmean(values), "p50": percentile(values, 50), "p99": percentile(values, 99),
            "std": statistics.pstdev(values)}

"""How the project reports a set of measured times: the mean (total / count, the rate's inverse) first, with
the p95, the max and the median beside it, never the median alone (a median hides the stalls that set the
rate). One home, so that the trainer's log and every benchmark give the same p95 for the same times.
"""
from __future__ import annotations

import math
import statistics


def spread(values) -> dict:
    """{"mean", "p95", "max", "median", "total", "n"} of `values` (seconds or any unit). p95 is the nearest-rank
    95th percentile: the smallest value that at least 95% of the values do not exceed."""
    v = sorted(float(x) for x in values)
    if not v:
        raise ValueError("spread() of no values")
    total = sum(v)
    return {"mean": total / len(v), "p95": v[math.ceil(0.95 * len(v)) - 1], "max": v[-1],
            "median": statistics.median(v), "total": total, "n": len(v)}

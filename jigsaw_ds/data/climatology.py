"""Climatology: the mean state by (day of year, hour of day) or by hour of day - one rule for `prepare`
(the store's `climatology` group, over all its times) and `jigsaw-eval` (the baseline, over training
times only, so that it never sees the held-out times it is scored on)."""
from __future__ import annotations

from typing import Optional

import numpy as np
import pandas as pd


def grouping(times: np.ndarray) -> Optional[tuple[str, ...]]:
    """("dayofyear", "hour") when every day of the year (day 366 aside: leap years only) has at least two
    samples per hour present, else ("hour",) when every hour present has at least two, else None (a mean
    of one sample is no climatology)."""
    t = pd.DatetimeIndex(times)
    common = t.dayofyear <= 365
    per_doy_hour = pd.Series(1, index=[t.dayofyear[common], t.hour[common]]).groupby(level=[0, 1]).size()
    if t.dayofyear[common].nunique() == 365 and per_doy_hour.min() >= 2:
        return ("dayofyear", "hour")
    if len(t) and pd.Series(t.hour).value_counts().min() >= 2:
        return ("hour",)
    return None


def group_keys(times: np.ndarray, by: Optional[tuple[str, ...]]) -> np.ndarray:
    """One integer per time naming its group (all 0 when by is None: a single mean)."""
    t = pd.DatetimeIndex(np.asarray(times).ravel())
    if by == ("dayofyear", "hour"):
        keys = np.asarray(t.dayofyear) * 24 + np.asarray(t.hour)
    elif by == ("hour",):
        keys = np.asarray(t.hour)
    else:
        keys = np.zeros(len(t), int)
    return keys.reshape(np.shape(times))


class Climatology:
    """Mean physical state per group of the given times, read through `read(time_index) -> [C, H, W]`.

    `at(valid_times)` looks up each time's group; a group the times did not cover (a day of year or hour
    absent from them) gets the mean over all of them."""

    def __init__(self, times: np.ndarray, read):
        self.by = grouping(times) or None
        keys = group_keys(times, self.by)
        self.means = {int(k): np.mean([read(i) for i in np.flatnonzero(keys == k)], axis=0) for k in np.unique(keys)}
        self.overall = np.mean(list(self.means.values()), axis=0)

    def at(self, valid_times: np.ndarray) -> np.ndarray:
        keys = group_keys(valid_times, self.by)
        return np.stack([self.means.get(int(k), self.overall) for k in keys.ravel()]).reshape(
            keys.shape + self.overall.shape)

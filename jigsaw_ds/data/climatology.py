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
    if by == ("dayofyear", "hour"):  # day 366 (31 December of a leap year) joins day 365
        keys = np.minimum(np.asarray(t.dayofyear), 365) * 24 + np.asarray(t.hour)
    elif by == ("hour",):
        keys = np.asarray(t.hour)
    else:
        keys = np.zeros(len(t), int)
    return keys.reshape(np.shape(times))


class Climatology:
    """Mean physical state per group of the given times, read one at a time through
    `read(i) -> [C, H, W]` (i indexes `times`) and summed per group: one pass, one array per group in memory.

    `at(valid_times)` looks up each time's group; a group the times did not cover gets the mean of all times."""

    def __init__(self, times: np.ndarray, read):
        self.by = grouping(times)
        sums, counts = {}, {}
        for i, key in enumerate(group_keys(times, self.by).ravel().tolist()):
            sums[key] = sums.get(key, 0.0) + np.asarray(read(i), np.float64)
            counts[key] = counts.get(key, 0) + 1
        self.means = {key: sums[key] / counts[key] for key in sums}
        self.overall = sum(sums.values()) / sum(counts.values())

    def at(self, valid_times: np.ndarray) -> np.ndarray:
        keys = group_keys(valid_times, self.by)
        return np.stack([self.means.get(int(k), self.overall) for k in keys.ravel()]).reshape(
            keys.shape + self.overall.shape)


def store_groups(times: np.ndarray, by: tuple[str, ...]) -> tuple[dict, list[tuple[tuple[int, ...], np.ndarray]]]:
    """The layout of a store's `climatology` group: the coordinate values of each grouping axis (sorted values
    present, day 366 kept apart as xarray's groupby keeps it) and, per non-empty cell, its index on those
    axes and the time indices it averages. Combinations that never occur stay NaN, as in a groupby."""
    t = pd.DatetimeIndex(times)
    values = {g: np.asarray(getattr(t, g), np.int64) for g in by}
    coords = {g: np.unique(v) for g, v in values.items()}
    cell = np.stack([np.searchsorted(coords[g], values[g]) for g in by], axis=1)
    cells, inverse = np.unique(cell, axis=0, return_inverse=True)
    return coords, [(tuple(int(i) for i in c), np.flatnonzero(inverse.ravel() == k)) for k, c in enumerate(cells)]

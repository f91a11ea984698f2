"""Climatology: the mean state by (day of year, hour of day) or by hour of day - one rule for `prepare`
(the store's `climatology` group, over all its times) and `jigsaw-eval` (the baseline, over training
times only, so that it never sees the held-out times it is scored on)."""
from __future__ import annotations

from typing import Optional

import numpy as np
import pandas as pd

from ..errors import ClimatologyError


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


def _matching_indices(want: np.ndarray, have: np.ndarray, what: str, path: str, periodic: bool = False) -> object:
    """Index into `have` of each value of `want` (degrees, to 1e-3; longitudes modulo 360): a slice where they
    are consecutive and ascending (a plain read), else an index array (the other order, a wrapped row)."""
    diff = want[:, None] - have[None, :]
    if periodic:
        diff = (diff + 180.0) % 360.0 - 180.0
    idx = np.abs(diff).argmin(axis=1)
    bad = np.abs(diff[np.arange(len(want)), idx]) > 1e-3
    if bad.any():
        raise ClimatologyError(f"climatology '{path}' has no {what} {want[bad][0]:g} of the data's grid "
                               f"(its {what}s: {have[0]:g} .. {have[-1]:g}, {len(have)} values)")
    if (np.diff(idx) == 1).all():
        return slice(int(idx[0]), int(idx[-1]) + 1)
    return idx


class GivenClimatology:
    """A WeatherBench2-format climatology store (variables with WB2 names and dims hour, dayofyear, [level,]
    latitude, longitude: WB2's 1990-2019 ERA5 climatology, or one made the same way), read tile by tile at the
    (day of year, hour) of each valid time, as WB2 does. The same `at` as Climatology; the store may hold its
    latitudes in the other order and its longitudes as 0..360 or -180..180."""

    def __init__(self, path: str, store, rows: slice, cols: slice):
        import xarray as xr

        try:
            ds = xr.open_zarr(path, chunks=None)
        except Exception as e:  # missing path, not a zarr store
            raise ClimatologyError(f"cannot open climatology '{path}' as a zarr store: {e}") from None
        self.path, self.ds = path, ds
        for dim in ("hour", "dayofyear", "latitude", "longitude"):
            if dim not in ds.dims:
                raise ClimatologyError(f"climatology '{path}' has no '{dim}' dimension (WB2 layout: hour, dayofyear, "
                                       f"[level,] latitude, longitude)")
        self.rows = _matching_indices(np.asarray(store.lat)[rows], ds["latitude"].values, "latitude", path)
        self.cols = _matching_indices(np.asarray(store.lon)[cols], ds["longitude"].values, "longitude", path, True)
        self.reads = []  # per variable, one read of all its levels: (variable, its channels, {"level": indices})
        for var, c0, levels in store.variable_blocks():
            if var not in ds.data_vars:
                raise ClimatologyError(f"climatology '{path}' has no variable '{var}' (channel "
                                       f"{store.channels[c0].name})")
            sel = {}
            if levels is not None:
                sel["level"] = []
                for j, i in enumerate(levels):
                    level = int(store.ds["level"].values[i])
                    hit = np.flatnonzero(ds["level"].values == level) if "level" in ds.dims else []
                    if not len(hit):
                        raise ClimatologyError(f"climatology '{path}' has no level {level} of '{var}' "
                                               f"(channel {store.channels[c0 + j].name})")
                    sel["level"].append(int(hit[0]))
            self.reads.append((var, slice(c0, c0 + (len(levels) if levels is not None else 1)), sel))
        self.n_channels = len(store.channels)
        self.hours, self.days = ds["hour"].values.astype(int), ds["dayofyear"].values.astype(int)

    def _field(self, time) -> np.ndarray:
        t = pd.Timestamp(time)
        hour, day = np.flatnonzero(self.hours == t.hour), np.flatnonzero(self.days == t.dayofyear)
        if not len(hour) or not len(day):
            raise ClimatologyError(f"climatology '{self.path}' has no (dayofyear {t.dayofyear}, hour {t.hour}) for "
                                   f"valid time {t} (hours {list(self.hours)}, days {self.days[0]}..{self.days[-1]})")
        out = None
        for var, idx, sel in self.reads:
            dims = ("level", "latitude", "longitude") if sel else ("latitude", "longitude")
            values = (self.ds[var].isel(hour=int(hour[0]), dayofyear=int(day[0]), **sel)
                      .isel(latitude=self.rows, longitude=self.cols).transpose(*dims).values)
            if out is None:
                out = np.empty((self.n_channels,) + values.shape[-2:], values.dtype)
            out[idx] = values if sel else values[None]
        return out

    def at(self, valid_times: np.ndarray) -> np.ndarray:
        times = np.asarray(valid_times)
        fields = [self._field(t) for t in times.ravel()]
        return np.stack(fields).reshape(times.shape + fields[0].shape)

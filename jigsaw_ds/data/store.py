"""Reading a WeatherBench2-style zarr store lazily, one rank's tile at a time.

Store layout (what `jigsaw-data synth/swe/prepare` write): dims time, level, latitude, longitude; upper-air
variables (time, level, latitude, longitude), surface variables (time, latitude, longitude), static fields
(latitude, longitude); coordinates in degrees and hPa; optional `trajectory` (time) for stores made of
several independent runs; `attrs['jigsaw_stats']`: per channel mean, std and tendency_std (the std of
one-step differences within a trajectory).

A channel is an upper-air variable at one level ('temperature_850') or a surface variable
('2m_temperature'). The store is opened with chunks=None: no dask graph; indexing reads only the chunks
that overlap the requested tile.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Optional

import numpy as np
import xarray as xr

STATS_ATTR = "jigsaw_stats"


class StoreError(ValueError):
    """A store does not hold what the config asks for; the message names store, variable, coordinate."""


def channel_name(var: str, level: Optional[int]) -> str:
    return var if level is None else f"{var}_{int(level)}"


@dataclass
class Channel:
    name: str
    var: str
    level_index: Optional[int]  # index into the store's level axis, None for surface variables


def open_store(path: str) -> xr.Dataset:
    if not os.path.exists(path):
        raise StoreError(f"data store '{path}' does not exist (make one with `jigsaw-data synth` or `prepare`)")
    try:
        return xr.open_zarr(path, chunks=None)
    except Exception as e:  # zarr raises several types for a broken store
        raise StoreError(f"data store '{path}' cannot be opened as zarr: {e}") from None


def all_channels(ds: xr.Dataset) -> list[Channel]:
    """Every channel of a store: each upper-air variable at each level, each surface variable."""
    channels = []
    for var, da in ds.data_vars.items():
        if "time" not in da.dims:
            continue
        if "level" in da.dims:
            channels += [Channel(channel_name(var, lev), var, i) for i, lev in enumerate(ds["level"].values)]
        else:
            channels.append(Channel(var, var, None))
    return channels


def compute_stats(ds: xr.Dataset) -> dict:
    """Per channel mean, std and tendency_std (one-step differences that stay inside a trajectory);
    mean and std of each static field (no time dim)."""
    traj = ds["trajectory"].values if "trajectory" in ds.coords else np.zeros(ds.sizes["time"], int)
    same = traj[1:] == traj[:-1]
    stats = {}
    for var, da in ds.data_vars.items():
        if "time" not in da.dims:
            x = np.asarray(da.values, dtype=np.float64)
            stats[var] = {"mean": float(x.mean()), "std": float(x.std()) or 1.0, "tendency_std": 0.0}
    for ch in all_channels(ds):
        da = ds[ch.var] if ch.level_index is None else ds[ch.var].isel(level=ch.level_index)
        x = np.asarray(da.transpose("time", ...).values, dtype=np.float64)
        diff = (x[1:] - x[:-1])[same]
        stats[ch.name] = {"mean": float(x.mean()), "std": float(x.std()) or 1.0,
                          "tendency_std": float(diff.std()) if diff.size else 1.0}
    return stats


class WeatherStore:
    """The channels a config selects from one store, with grid, time axis, trajectories and statistics."""

    def __init__(self, path: str, variables: list, surface_variables: list, levels: list,
                 static_variables: list = ()):
        self.path = path
        ds = open_store(path)
        self._check_dims(ds)
        self.lat = ds["latitude"].values.astype(np.float64)
        self.lon = ds["longitude"].values.astype(np.float64)
        self.times = ds["time"].values
        self.trajectory = ds["trajectory"].values if "trajectory" in ds.coords else np.zeros(len(self.times), int)
        self.channels = self._select_channels(ds, variables, surface_variables, levels)
        self.static_variables = list(static_variables)
        for var in self.static_variables:
            self._require(ds, var, ("latitude", "longitude"))
        stats = ds.attrs.get(STATS_ATTR)
        if not stats:
            raise StoreError(f"data store '{path}' has no statistics (attrs['{STATS_ATTR}']); "
                             f"run `jigsaw-data prepare` on it")
        missing = [name for name in [c.name for c in self.channels] + self.static_variables if name not in stats]
        if missing:
            raise StoreError(f"data store '{path}': statistics lack channels {missing}; the store was written with "
                             f"other statistics, run `jigsaw-data prepare` again")
        self.mean = np.array([stats[c.name]["mean"] for c in self.channels], np.float32)
        self.std = np.array([stats[c.name]["std"] for c in self.channels], np.float32)
        self.tendency_std = np.array([stats[c.name]["tendency_std"] for c in self.channels], np.float32)
        constant = [c.name for c, t in zip(self.channels, self.tendency_std) if t == 0]  # NaN: check_finite says why
        if constant:  # the loss is in units of each channel's one-step change: a constant one has none
            raise StoreError(f"data store '{path}': channels {constant} never change from one time step to the "
                             f"next (tendency std 0); a field constant in time belongs in model.static_variables")
        self._ds = None  # opened lazily in each process (DataLoader workers included)

    # ---- checks ----------------------------------------------------------------------------------------
    def _check_dims(self, ds):
        for dim in ("time", "latitude", "longitude"):
            if dim not in ds.dims:
                raise StoreError(f"data store '{self.path}' lacks the dimension '{dim}' (has {list(ds.dims)})")
        for dim in ("latitude", "longitude", "time"):
            step = np.diff(ds[dim].values)
            if not (np.all(step > step[:1] * 0) or (dim == "latitude" and np.all(step < step[:1] * 0))):
                raise StoreError(f"data store '{self.path}': coordinate '{dim}' is not strictly monotonic "
                                 f"(duplicated or unsorted values)")

    def _require(self, ds, var, dims):
        if var not in ds.data_vars:
            raise StoreError(f"data store '{self.path}' has no variable '{var}'; it has: "
                             f"{', '.join(sorted(map(str, ds.data_vars)))}")
        if set(ds[var].dims) != set(dims):
            raise StoreError(f"data store '{self.path}': variable '{var}' has dims {ds[var].dims}, expected {dims}")

    def _select_channels(self, ds, variables, surface_variables, levels) -> list[Channel]:
        channels = []
        if variables:
            store_levels = [int(v) for v in ds["level"].values] if "level" in ds.coords else []
            wanted = [int(v) for v in levels] if levels else store_levels
            for lev in wanted:
                if lev not in store_levels:
                    raise StoreError(f"data store '{self.path}' has no level {lev} hPa; it has {store_levels}")
            for var in variables:
                self._require(ds, var, ("time", "level", "latitude", "longitude"))
                channels += [Channel(channel_name(var, lev), var, store_levels.index(lev)) for lev in wanted]
        for var in surface_variables:
            self._require(ds, var, ("time", "latitude", "longitude"))
            channels.append(Channel(var, var, None))
        return channels

    def check_finite(self, times: slice = slice(None), lat: slice = slice(None), lon: slice = slice(None)) -> None:
        """Refuse NaN/inf in the selected channels (naming variable and time) and static fields. Reads the
        given piece only (by default the whole selection), so that ranks can split the scan between them."""
        ds = self.ds
        times_checked = self.times[times]
        for ch in self.channels:
            da = ds[ch.var] if ch.level_index is None else ds[ch.var].isel(level=ch.level_index)
            values = da.isel(time=times, latitude=lat, longitude=lon).transpose("time", ...).values
            bad = ~np.isfinite(values).reshape(len(times_checked), -1).all(axis=1)
            if bad.any():
                t = times_checked[np.argmax(bad)]
                raise StoreError(f"data store '{self.path}': variable '{ch.name}' has NaN/inf at time {t}")
        for var in self.static_variables:  # 2-D and small: every rank checks its own tile
            if not np.isfinite(ds[var].isel(latitude=lat, longitude=lon).values).all():
                raise StoreError(f"data store '{self.path}': static field '{var}' has NaN/inf")

    # ---- reading ---------------------------------------------------------------------------------------
    @property
    def ds(self) -> xr.Dataset:
        if self._ds is None:
            self._ds = open_store(self.path)
        return self._ds

    def read_through(self, zarr_store) -> None:
        """Read from now on through `zarr_store`, a zarr Store over the same data (e.g. data.counting's
        CountingStore, to measure the bytes this rank reads). What DataLoader worker processes read is
        counted, if at all, in those processes."""
        self._ds = xr.open_zarr(zarr_store, chunks=None)

    def __getstate__(self):
        state = self.__dict__.copy()
        state["_ds"] = None  # each DataLoader worker opens its own handle
        return state

    @property
    def n_lat(self) -> int:
        return len(self.lat)

    @property
    def n_lon(self) -> int:
        return len(self.lon)

    def read_raw(self, times: list[int], lat: slice, lon: slice) -> np.ndarray:
        """[T, C, h, w] float32 physical values of the selected channels at the given time indices, tile
        (lat, lon) only: one read per variable (all its levels and times at once)."""
        by_var: dict[str, list[Channel]] = {}
        for ch in self.channels:
            by_var.setdefault(ch.var, []).append(ch)
        parts = {}
        for var, chans in by_var.items():
            index = {"time": list(times), "latitude": lat, "longitude": lon}
            if chans[0].level_index is None:
                parts[var] = self.ds[var].isel(index).transpose("time", "latitude", "longitude").values[:, None]
            else:
                index["level"] = [c.level_index for c in chans]
                parts[var] = self.ds[var].isel(index).transpose("time", "level", "latitude", "longitude").values
        return np.concatenate([parts[var] for var in by_var], axis=1).astype(np.float32)

    def read(self, times: list[int], lat: slice, lon: slice) -> np.ndarray:
        """Normalised tiles [T, C, h, w]: (x - mean) / std per channel."""
        return (self.read_raw(times, lat, lon) - self.mean[:, None, None]) / self.std[:, None, None]

    def read_static(self, lat: slice, lon: slice) -> np.ndarray:
        """[S, h, w] static fields of the tile, normalised with their stored mean and std."""
        stats = self.ds.attrs[STATS_ATTR]
        out = [(self.ds[var].isel(latitude=lat, longitude=lon).transpose("latitude", "longitude").values
                - stats[var]["mean"]) / stats[var]["std"] for var in self.static_variables]
        h, w = len(range(*lat.indices(self.n_lat))), len(range(*lon.indices(self.n_lon)))
        return np.stack(out).astype(np.float32) if out else np.zeros((0, h, w), np.float32)

    def pair_starts(self, lead: int) -> np.ndarray:
        """Time indices t whose target t + lead lies in the same trajectory."""
        t = np.arange(len(self.times) - lead)
        return t[self.trajectory[t] == self.trajectory[t + lead]]

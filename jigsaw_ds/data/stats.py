"""A store's statistics (attrs['jigsaw_stats']), computed as a reduction over blocks of time steps.

Per channel: mean, std and tendency_std (the std of one-step differences that stay inside a trajectory); per
static field: mean and std. Every writer computes them the same way: each block of time steps gives partial
moments (count, mean, sum of squared deviations, in float64) of its values and of its one-step differences,
the block's last step paired with the next block's first; the partials combine in block order. So memory is
one block, never a channel over all times (a 0.125 deg channel of a year is 60 GB), and the result does not
depend on how the time axis was cut. The Dask prepare computes a block's partials on the worker that writes
it; `store_statistics` runs the same reduction over a finished store (writer.write_store).
"""
from __future__ import annotations

from typing import Iterable, Optional, Sequence

import numpy as np
import xarray as xr

from .store import all_channels, trajectories


def moments(x: np.ndarray) -> list:
    """[count, mean, sum of squared deviations from the mean] in float64."""
    if not x.size:
        return [0, 0.0, 0.0]
    mean = x.mean()
    return [int(x.size), float(mean), float(np.square(x - mean).sum())]


def combine(a: list, b: list) -> list:
    """Two partial moments as one (Chan et al.'s pairwise update): exact up to float64 rounding."""
    (na, ma, sa), (nb, mb, sb) = a, b
    if not na or not nb:
        return list(b if not na else a)
    n, delta = na + nb, mb - ma
    return [n, ma + delta * nb / n, sa + sb + delta * delta * na * nb / n]


def block_moments(block: xr.Dataset, after: Optional[xr.Dataset], traj: Optional[np.ndarray]) -> dict:
    """Per channel: moments of the values, then of the one-step differences inside the block plus the pair
    (last step, the next block's first) when `after` is given; pairs across trajectories (traj: the block's
    trajectory ids, and the next step's) are left out."""
    out = {}
    for ch in all_channels(block):
        x = _channel(block, ch)
        values = moments(x)
        if after is not None:
            x = np.concatenate([x, _channel(after, ch)])
        diff = x[1:] - x[:-1]
        if traj is not None:
            diff = diff[traj[1:] == traj[:-1]]
        out[ch.name] = values + moments(diff)
    return out


def _channel(ds: xr.Dataset, ch) -> np.ndarray:
    da = ds[ch.var] if ch.level_index is None else ds[ch.var].isel(level=ch.level_index)
    return np.asarray(da.transpose("time", ...).values, np.float64)


def statistics(partials: Iterable[dict], store: xr.Dataset) -> dict:
    """The store's jigsaw_stats from the blocks' partial moments (given in block order) and its static fields."""
    total: dict = {}
    for block in partials:
        for name, m in block.items():
            a, b = total.get(name, ([0, 0.0, 0.0], [0, 0.0, 0.0]))
            total[name] = (combine(a, m[:3]), combine(b, m[3:]))
    stats = static_stats(store)
    for ch in all_channels(store):
        (n, mean, ss), (tn, _, tss) = total[ch.name]
        stats[ch.name] = channel_stats(mean, float(np.sqrt(ss / n)), float(np.sqrt(tss / tn)) if tn else None)
    return stats


def store_statistics(ds: xr.Dataset, blocks: Sequence[slice]) -> dict:
    """jigsaw_stats of an opened store (xr.open_zarr(..., chunks=None): lazily indexed), read one variable and
    one block of time steps (`blocks`, consecutive slices covering the time axis) at a time."""
    traj, n = trajectories(ds), ds.sizes["time"]
    partials = []
    for var in [v for v, da in ds.data_vars.items() if "time" in da.dims]:
        for s in blocks:
            pair_next = bool(s.stop < n and traj[s.stop] == traj[s.stop - 1])
            block = ds[[var]].isel(time=s).load()
            after = ds[[var]].isel(time=[s.stop]).load() if pair_next else None
            partials.append(block_moments(block, after, traj[s.start:s.stop + pair_next]))
    return statistics(partials, ds)


def static_stats(ds: xr.Dataset) -> dict:
    """Mean and std of each static field (no time dim), read whole: they are 2-D."""
    out = {}
    for var, da in ds.data_vars.items():
        if "time" not in da.dims:
            x = np.asarray(da.values, dtype=np.float64)
            out[var] = {"mean": float(x.mean()), "std": float(x.std()) or 1.0, "tendency_std": 0.0}
    return out


def channel_stats(mean: float, std: float, tendency_std: Optional[float]) -> dict:
    """One channel's statistics entry; the rules for degenerate data live here: a constant channel gets std 1
    (the trainer then refuses it by its tendency std 0), a channel with no one-step pair gets tendency std 1."""
    return {"mean": mean, "std": std or 1.0, "tendency_std": 1.0 if tendency_std is None else tendency_std}

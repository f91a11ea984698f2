"""A store's statistics (attrs['jigsaw_stats']), computed as a reduction over blocks of time steps.

Per channel: mean, std and tendency_std (the std of one-step differences that stay inside a trajectory); per
static field: mean and std. Every writer computes them the same way: each block of time steps gives partial
moments (count, mean, sum of squared deviations, in float64) of its values and of its one-step differences,
the block's last step paired with the next block's first; the partials combine in block order. So memory is
one block, never a channel over all times (a 0.125 deg channel of a year is 60 GB), and the result does not
depend on how the time axis was cut. The Dask prepare computes a block's partials on the worker that writes
it (and the pair across its end, from the next block's first step); writer.write_store as it writes each block
(StreamingStatistics).
"""
from __future__ import annotations

import functools
from typing import Iterable, Optional

import numpy as np
import xarray as xr

from .store import all_channels


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


def block_moments(block: xr.Dataset, traj: Optional[np.ndarray]) -> dict:
    """Per channel: moments of the values, then of the one-step differences inside the block; pairs across
    trajectories (traj: the block's trajectory ids; None: one trajectory) are left out."""
    out = {}
    for ch in all_channels(block):
        x = _channel(block, ch)
        diff = x[1:] - x[:-1]
        if traj is not None:
            diff = diff[traj[1:] == traj[:-1]]
        out[ch.name] = moments(x) + moments(diff)
    return out


def pair_moments(last: xr.Dataset, first: xr.Dataset) -> dict:
    """Per channel: no values, and the one-step difference from `last` (one time step) to `first` (the next):
    the pair across a block boundary, which belongs to neither block."""
    return {ch.name: [0, 0.0, 0.0] + moments(_channel(first, ch) - _channel(last, ch)) for ch in all_channels(first)}


def merged(a: dict, b: dict) -> dict:
    """Two sets of partial moments (per channel: values, then differences) as one."""
    out = dict(a)
    for name, m in b.items():
        if name in out:
            m = combine(out[name][:3], m[:3]) + combine(out[name][3:], m[3:])
        out[name] = m
    return out


def _channel(ds: xr.Dataset, ch) -> np.ndarray:
    da = ds[ch.var] if ch.level_index is None else ds[ch.var].isel(level=ch.level_index)
    return np.asarray(da.transpose("time", ...).values, np.float64)


def statistics(partials: Iterable[dict], store: xr.Dataset) -> dict:
    """The store's jigsaw_stats from the blocks' partial moments (given in block order) and its static fields."""
    total = functools.reduce(merged, partials, {})
    stats = static_stats(store)
    for ch in all_channels(store):
        n, mean, ss, tn, _, tss = total[ch.name]
        stats[ch.name] = channel_stats(mean, float(np.sqrt(ss / n)), float(np.sqrt(tss / tn)) if tn else None)
    return stats


class StreamingStatistics:
    """The statistics of a time axis fed a block of consecutive time steps at a time, in order: each block's
    partials, and the pair across each block boundary from the previous block's last step (kept alone), so
    that nothing is read twice and memory holds one block (writer.write_store, as it writes)."""

    def __init__(self, traj: np.ndarray):
        self.traj, self.partials, self.offset, self.last = np.asarray(traj), [], 0, None

    def add(self, block: xr.Dataset) -> None:
        """block: the next time steps, loaded; its data variables with a time dim are the channels."""
        n, start = block.sizes["time"], self.offset
        if self.last is not None and self.traj[start - 1] == self.traj[start]:
            self.partials.append(pair_moments(self.last, block.isel(time=[0])))
        self.partials.append(block_moments(block, self.traj[start:start + n]))
        self.last, self.offset = block.isel(time=[n - 1]).copy(deep=True), start + n

    def result(self, store: xr.Dataset) -> dict:
        """jigsaw_stats, with the static fields (and the channel list) of `store`."""
        if self.offset != len(self.traj):
            raise ValueError(f"statistics fed {self.offset} of {len(self.traj)} time steps")
        return statistics(self.partials, store)


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

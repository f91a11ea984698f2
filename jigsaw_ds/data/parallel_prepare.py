"""The Dask job behind `jigsaw-data prepare`: blocks of time steps converted in parallel and resumably, with
the statistics and the climatology computed as reductions over the blocks.

On disk while it runs: STORE.partial is a zarr store whose metadata, coordinates and static fields are
written first (init_store). Each block task reads one block of time steps of the sources (lazily opened,
read only for that block), checks it, writes it to its own region of the time axis (whole chunks: no two
tasks touch one chunk), and only then writes its record, STORE.partial/.jigsaw-prepare/blocks/K.json, with
the block's partial statistics (count, mean and sum of squared deviations per channel, in float64). A run
with the same arguments over the same layout (the job key) converts only the blocks without a record; the
statistics are combined from all records, in block order, so they do not depend on the number of workers.
The climatology is a second set of tasks, one per (day of year, hour) cell, each summing its times in
float64 (read again from the sources: see average_cell), with records of its own. The store is renamed to STORE when all of it is there.

Where tasks run: a dask.distributed Client (a LocalCluster of worker processes, or a cluster started
elsewhere, e.g. by launch/dask/prepare.sbatch), or this process (workers=0: tests, debugging).
"""
from __future__ import annotations

import hashlib
import json
import os
import shutil
import sys
import tempfile
import time
import warnings
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Callable, Optional

import numpy as np
import xarray as xr
import zarr

from ..errors import ClusterError, ConfigError, SourceError, StoreError
from ..files import write_atomic
from .climatology import grouping, store_groups
from . import stats
from .store import STATS_ATTR
from .writer import BLOCK_BYTES, DEFAULT_CODEC, chunk_encoding, time_blocks

STATE = ".jigsaw-prepare"  # inside STORE.partial: job.json (the job key), blocks/, climatology/
KEY_ATTR = "jigsaw_prepare"  # the job key of a complete store: a second run with the same one does nothing
SOURCE = "jigsaw-data prepare"  # attrs['source'] of every store prepare writes (prepare.open_layout), partial ones too
CONNECT_TIMEOUT = "20s"
WORKER_WAIT = "600s"
WRITE_EMPTY = True  # as writer.write_store: every chunk is written (the reader refuses missing ones)


@dataclass(frozen=True)
class Block:
    part: int
    start: int  # time index in the part
    stop: int
    offset: int  # time index in the store

    @property
    def region(self) -> slice:
        return slice(self.offset, self.offset + self.stop - self.start)


@dataclass
class Job:
    """Everything a task needs, shipped once to each worker: the parts (lazily opened sources), the check
    for NaN/inf, the store's encoding, the blocks and the climatology cells."""
    parts: list  # prepare.Part
    out: str
    check: Callable[[xr.Dataset], None]
    key: str
    encoding: dict
    blocks: list[Block]
    times: np.ndarray
    trajectory: Optional[np.ndarray]
    timed: list[str]
    clim_by: Optional[tuple[str, ...]]
    clim_coords: dict
    clim_cells: list
    encoding_args: tuple          # chunk_encoding(ds, *encoding_args): the data and the climatology alike

    @classmethod
    def make(cls, parts, out: str, check, args: dict, lat_chunk: int, lon_chunk: int, level_chunk: int,
             time_block: int, climatology: bool, checksum: bool) -> "Job":
        p0 = parts[0].ds
        timed = [v for v, da in p0.data_vars.items() if "time" in da.dims]
        blocks, offset = [], 0
        for i, part in enumerate(parts):
            blocks += [Block(i, s.start, s.stop, offset + s.start) for s in time_blocks(part.ds[timed], time_block)]
            offset += part.ds.sizes["time"]
        encoding_args = (lat_chunk, lon_chunk, level_chunk, DEFAULT_CODEC, checksum)
        encoding = chunk_encoding(p0, *encoding_args)
        _check_whole_shards(encoding, timed, [b.offset for b in blocks])
        times = np.concatenate([p.ds["time"].values for p in parts])
        traj = np.concatenate([p.ds["trajectory"].values for p in parts]) if "trajectory" in p0.coords else None
        by = grouping(times) if climatology else None
        coords, cells = store_groups(times, by) if by else ({}, [])
        out = os.path.abspath(out)
        layout = {"args": args, "vars": {v: [list(da.dims), str(da.dtype), [int(n) for n in da.shape]]
                                         for v, da in p0.data_vars.items()},
                  "n_times": len(times), "blocks": [[b.part, b.start, b.stop] for b in blocks]}
        digest = hashlib.sha256(json.dumps(layout, sort_keys=True, default=str).encode())
        for values in [times, traj] + [p0[d].values for d in ("level", "latitude", "longitude") if d in p0.coords]:
            if values is not None:
                digest.update(np.ascontiguousarray(values).tobytes())
        return cls(parts, out, check, digest.hexdigest()[:32], encoding, blocks, times, traj, timed, by, coords, cells, encoding_args)

    @property
    def tmp(self) -> str:
        return self.out + ".partial"

    def record(self, kind: str, index: int, root: Optional[str] = None) -> str:
        return os.path.join(root or self.tmp, STATE, kind, f"{index:08d}.json")

    def block_bytes(self, b: Block) -> int:
        return sum(self.step_bytes(self.parts[b.part], v) for v in self.timed) * (b.stop - b.start)

    @staticmethod
    def step_bytes(part, var: str) -> int:
        da = part.ds[var]
        return da.dtype.itemsize * da.size // part.ds.sizes["time"]

    def sum_over_times(self, var: str, times: np.ndarray) -> np.ndarray:
        """Float64 sum of `var` at the given store time indices (increasing), read from the parts in runs of
        consecutive steps (cfgrib reads every message between the first and last index of a list) of at most
        BLOCK_BYTES, in time order whatever the worker."""
        bounds = np.cumsum([0] + [p.ds.sizes["time"] for p in self.parts])
        which = np.searchsorted(bounds, times, side="right") - 1
        total = None
        for i, part in enumerate(self.parts):
            local = times[which == i] - bounds[i]
            batch = max(1, BLOCK_BYTES // max(1, self.step_bytes(part, var)))
            runs = np.split(local, np.flatnonzero(np.diff(local) != 1) + 1) if len(local) else []
            for run in runs:
                for lo in range(0, len(run), batch):
                    steps = slice(int(run[lo]), int(run[min(lo + batch, len(run)) - 1]) + 1)
                    try:
                        x = np.asarray(part.ds[var].isel(time=steps).values, np.float64).sum(axis=0)
                    except Exception as e:  # engines raise many types for data they cannot decode
                        raise SourceError(f"{', '.join(part.files)}: variable '{var}' cannot be read at time "
                                          f"{part.ds['time'].values[steps.start]}: {type(e).__name__}: {e}") from None
                    total = x if total is None else total + x
        return total

    def step(self, t: int) -> xr.Dataset:
        """Time step t of the store, read from its part."""
        for part in self.parts:
            n = part.ds.sizes["time"]
            if t < n:
                return part.ds[self.timed].isel(time=[t]).load()
            t -= n
        raise IndexError(t)


def _check_whole_shards(encoding: dict, timed: list, starts: list) -> None:
    """Tasks may write in parallel only to files no other task writes: every block must start on a shard
    (or chunk) boundary of the time axis. writer.chunk_encoding gives one time step per shard today."""
    for var in timed:
        step = (encoding[var].get("shards") or encoding[var]["chunks"])[0]
        if any(start % step for start in starts):
            raise ConfigError(f"variable '{var}': time shards of {step} steps do not divide the blocks of time steps; "
                             f"choose --time-block as a multiple of {step}")


# ---- the store's skeleton ------------------------------------------------------------------------------
def init_store(job: Job, path: str) -> None:
    """Metadata, coordinates and static fields of the whole store; the time-dependent variables' data is
    left to the block tasks (compute=False). The job key is written last: a store without it is started over."""
    import dask.array

    p0, n = job.parts[0].ds, len(job.times)
    data = {}
    for var, da in p0.data_vars.items():
        if "time" in da.dims:
            shape = tuple(n if d == "time" else da.sizes[d] for d in da.dims)
            # one dask chunk: only its metadata is written, and the graph stays one task at any length
            data[var] = xr.Variable(da.dims, dask.array.empty(shape, dtype=da.dtype, chunks=shape), attrs=da.attrs)
        else:
            data[var] = da.load().variable
    static = xr.Dataset({v: data[v] for v, da in p0.data_vars.items() if "time" not in da.dims})
    job.check(static)
    coords = {d: p0[d].variable for d in ("level", "latitude", "longitude") if d in p0.coords}
    coords["time"] = xr.Variable("time", job.times, attrs=p0["time"].attrs)
    if job.trajectory is not None:
        coords["trajectory"] = ("time", job.trajectory)
    ds = xr.Dataset(data, coords=coords, attrs=p0.attrs)
    shutil.rmtree(path, ignore_errors=True)
    ds.to_zarr(path, mode="w", compute=False, encoding=job.encoding, consolidated=False, zarr_format=3)
    _write_json(os.path.join(path, STATE, "job.json"), {"key": job.key, "blocks": len(job.blocks)})


def init_climatology(job: Job, path: str) -> None:
    """Metadata and coordinates of the `climatology` group: per time-dependent variable, the grouping axes
    (dayofyear, hour) then its other axes; cells no time falls in stay NaN (the fill value)."""
    import dask.array

    store = xr.open_zarr(path, chunks=None, consolidated=False)
    by = job.clim_by
    data = {}
    for var in job.timed:
        da = store[var]
        dims = by + tuple(d for d in ("level", "latitude", "longitude") if d in da.dims)
        shape = tuple(len(job.clim_coords[d]) if d in by else da.sizes[d] for d in dims)
        data[var] = (dims, dask.array.empty(shape, dtype=da.dtype, chunks=shape))
    coords = {d: (d, job.clim_coords[d]) for d in by}
    coords.update({d: store[d].variable for d in ("level", "latitude", "longitude") if d in store.coords})
    grouped = [f"time.{g}" for g in by] if len(by) > 1 else f"time.{by[0]}"
    clim = xr.Dataset(data, coords=coords,
                      attrs={"grouping": str(grouped), "span": f"{job.times[0]} .. {job.times[-1]}"})
    clim.to_zarr(path, group="climatology", mode="w", compute=False, consolidated=False, zarr_format=3,
                 encoding=chunk_encoding(clim, *job.encoding_args))
    # cells no time falls in (a day-hour that never occurs): NaN, written, as the reader wants every chunk
    full = set(np.ndindex(*[len(job.clim_coords[d]) for d in by]))
    for index in sorted(full - {cell for cell, _ in job.clim_cells}):
        empty = {v: (da.dims, np.full((1,) * len(by) + da.shape[len(by):], np.nan, da.dtype))
                 for v, da in clim.data_vars.items()}
        xr.Dataset(empty).to_zarr(path, group="climatology", region={d: slice(i, i + 1) for d, i in zip(by, index)},
                                  consolidated=False, write_empty_chunks=WRITE_EMPTY)
    _write_json(os.path.join(path, STATE, "climatology.json"), {"key": job.key, "cells": len(job.clim_cells)})


# ---- the tasks -----------------------------------------------------------------------------------------
def convert_block(k: int, job: Job, root: Optional[str] = None) -> dict:
    """Read block k of the sources, check it, write its region, then its record (partial statistics)."""
    root = root or job.tmp
    record = job.record("blocks", k, root)
    if os.path.exists(record):  # a retried task whose first attempt got this far
        return _read_json(record)
    b = job.blocks[k]
    part = job.parts[b.part]
    nxt = b.offset + b.stop - b.start
    pair_next = nxt < len(job.times) and (job.trajectory is None or job.trajectory[nxt] == job.trajectory[nxt - 1])
    try:
        block = part.ds[job.timed].isel(time=slice(b.start, b.stop)).load()
        after = job.step(nxt) if pair_next else None  # for the one tendency pair across the block's end
    except SourceError:
        raise
    except Exception as e:  # engines raise many types for data they cannot decode
        raise SourceError(f"{', '.join(part.files)}: time {job.times[b.offset]} .. {job.times[nxt - 1]} cannot be "
                          f"read: {type(e).__name__}: {e}") from None
    job.check(block)
    if after is not None:
        job.check(after)  # its values enter this block's tendency statistics
    for var in block.variables:
        block[var].encoding = {}  # the store's encoding is already there
    region = block.drop_vars([c for c in block.coords if "time" not in block[c].dims])  # the store has those
    region.to_zarr(root, region={"time": b.region}, consolidated=False, write_empty_chunks=WRITE_EMPTY)
    moments = stats.block_moments(block, job.trajectory[b.offset:nxt] if job.trajectory is not None else None)
    if after is not None:
        moments = stats.merged(moments, stats.pair_moments(block.isel(time=[-1]), after))
    rec = {"block": k, "bytes": int(sum(block[v].nbytes for v in job.timed)), "moments": moments}
    _write_json(record, rec)
    return rec


def average_cell(c: int, job: Job, root: Optional[str] = None) -> dict:
    """The mean of each variable over the times of climatology cell c, written to its region of the group.

    The values are read from the sources, as the block tasks read them (the store holds exactly those values,
    checked finite): a cell's times are scattered over the store, and the sources' chunks (one field per time
    step, as in WB2's zarr or a netCDF/GRIB file) serve scattered times several times faster than the store's
    small inner chunks do through zarr-python (bench/prepare.py)."""
    root = root or job.tmp
    record = job.record("climatology", c, root)
    if os.path.exists(record):
        return _read_json(record)
    index, times = job.clim_cells[c]
    p0, means = job.parts[0].ds, {}
    for var in job.timed:
        mean = (job.sum_over_times(var, times) / len(times)).astype(p0[var].dtype)
        means[var] = (job.clim_by + p0[var].dims[1:], mean[(None,) * len(job.clim_by)])
    region = {g: slice(i, i + 1) for g, i in zip(job.clim_by, index)}
    xr.Dataset(means).to_zarr(root, group="climatology", region=region, consolidated=False,
                              write_empty_chunks=WRITE_EMPTY)
    rec = {"cell": c, "bytes": int(sum(job.step_bytes(job.parts[0], v) for v in job.timed) * len(times))}
    _write_json(record, rec)
    return rec


# ---- running it ------------------------------------------------------------------------------------------
@contextmanager
def dask_client(workers: int = 1, scheduler: Optional[str] = None):
    """A Client of the cluster at `scheduler` (an address, or the scheduler file `dask scheduler
    --scheduler-file` wrote), or of a LocalCluster of `workers` single-threaded processes (the work is numpy
    and codecs holding the GIL part of the time: processes, not threads)."""
    from distributed import Client, LocalCluster

    if scheduler:
        where = {"scheduler_file": scheduler} if os.path.isfile(scheduler) else {"address": scheduler}
        try:
            client = Client(**where, timeout=CONNECT_TIMEOUT)
        except Exception as e:  # OSError, TimeoutError, ValueError for a malformed address
            raise ClusterError(f"--scheduler {scheduler}: cannot be reached ({type(e).__name__}: {e})") from None
        try:
            yield client
        finally:
            client.close()
        return
    with LocalCluster(n_workers=workers, threads_per_worker=1, processes=True, dashboard_address=None) as cluster, \
            Client(cluster) as client:
        from ..quiet import quiet_libraries

        client.run(quiet_libraries, 0)  # the workers print to this terminal: the same filters as this process
        yield client


class _Tasks:
    """Runs task functions over indices on a Client (job scattered once to every worker), or in this process."""

    def __init__(self, job: Job, client):
        self.job, self.client, self._job_future = job, client, None

    def map(self, fn, indices: list[int], on_done: Callable[[dict], None]) -> None:
        if self.client is None:
            for i in indices:
                on_done(fn(i, self.job))
            return
        from distributed import as_completed
        from distributed.scheduler import KilledWorker

        if self._job_future is None:
            try:  # workers of a batch job may still be starting
                self.client.wait_for_workers(1, timeout=WORKER_WAIT)
            except TimeoutError:
                raise ClusterError(f"no Dask worker joined the scheduler {self.client.scheduler.address} within "
                                   f"{WORKER_WAIT}") from None
            self._job_future = self.client.scatter(self.job, broadcast=True, hash=False)
        futures = self.client.map(fn, indices, job=self._job_future, pure=False)
        try:
            for fut in as_completed(futures, loop=self.client.loop):  # not the default client's loop
                on_done(fut.result())  # re-raises a task's SourceError here
                fut.release()
        except KilledWorker as e:
            raise ClusterError(f"a prepare task killed its worker repeatedly (out of memory? try a smaller "
                               f"--time-block): {e}") from None
        finally:
            self.client.cancel([f for f in futures if not f.done()])


@contextmanager
def _tasks(job: Job, client, workers: int, scheduler: Optional[str]):
    if client is not None or (not workers and not scheduler):
        yield _Tasks(job, client)
        return
    with dask_client(workers, scheduler) as c:
        yield _Tasks(job, c)


def run(job: Job, client=None, workers: int = 0, scheduler: Optional[str] = None, progress: bool = False,
        overwrite: bool = False) -> str:
    """Convert, reduce, commit; resume a partial store of the same job; nothing to do for a complete one.
    A store of another job at `out` is replaced only with `overwrite` (check_out)."""
    out, tmp = job.out, job.tmp
    check_out(job, overwrite)
    if _key_of(out) == job.key:
        shutil.rmtree(os.path.join(out, STATE), ignore_errors=True)  # a run killed right after its rename
        _note(f"{out} is complete (same arguments, same source layout): nothing to do")
        return out
    key_file = os.path.join(tmp, STATE, "job.json")
    if os.path.exists(key_file) and _read_json(key_file)["key"] == job.key:
        done = _records(job, "blocks", len(job.blocks))
        _note(f"resuming {tmp}: {len(done)} of {len(job.blocks)} blocks already written")
    else:
        init_store(job, tmp)
        done = {}
    todo = [k for k in range(len(job.blocks)) if k not in done]
    with _tasks(job, client, workers, scheduler) as tasks:
        bar = _Progress(len(job.blocks), len(done), "write", progress)
        tasks.map(convert_block, todo, lambda rec: (done.__setitem__(rec["block"], rec), bar.update(rec["bytes"])))
        bar.close()
        group = zarr.open_group(tmp, mode="r+")
        partials = [done[k]["moments"] for k in sorted(done)]  # in block order: the same sums for any worker count
        group.attrs[STATS_ATTR] = stats.statistics(partials, xr.open_zarr(tmp, chunks=None, consolidated=False))
        if job.clim_by:
            clim_file = os.path.join(tmp, STATE, "climatology.json")
            if not os.path.exists(clim_file):
                init_climatology(job, tmp)
            cells = _records(job, "climatology", len(job.clim_cells))
            bar = _Progress(len(job.clim_cells), len(cells), "climatology", progress)
            tasks.map(average_cell, [c for c in range(len(job.clim_cells)) if c not in cells],
                      lambda rec: bar.update(rec["bytes"]))
            bar.close()
    group.attrs[KEY_ATTR] = job.key
    with warnings.catch_warnings():  # "consolidated metadata is not in the v3 spec": xarray reads it, and so do we
        warnings.simplefilter("ignore", UserWarning)
        zarr.consolidate_metadata(tmp)
    if os.path.exists(out):
        shutil.rmtree(out)
    os.replace(tmp, out)
    shutil.rmtree(os.path.join(out, STATE), ignore_errors=True)
    return out


def _records(job: Job, kind: str, n: int) -> dict:
    folder = os.path.join(job.tmp, STATE, kind)
    names = os.listdir(folder) if os.path.isdir(folder) else []
    recs = {int(name[:-5]): os.path.join(folder, name) for name in names if name.endswith(".json")}
    return {i: _read_json(path) for i, path in recs.items() if i < n}


def check_out(job: Job, overwrite: bool) -> None:
    """Refuse, before any work, an output that prepare may not write: the store is renamed over `out` at the
    end (whatever was there is deleted) and `out`.partial is started over, so both may only be new, empty or
    prepare's own (a typo such as `--out ~/data` must not delete the directory's contents), and a complete
    store of other arguments or sources is replaced only with `overwrite`."""
    for path in (job.out, job.tmp):
        where = f"--out {job.out}" + ("" if path == job.out else f": {path}")
        if os.path.islink(path) or (os.path.lexists(path) and not os.path.isdir(path)):
            kind = "a symbolic link" if os.path.islink(path) else "a file"
            raise StoreError(f"{where}: is {kind}, not a store that jigsaw-data prepare wrote: choose a new path")
        entries = sorted(os.listdir(path)) if os.path.isdir(path) else []
        if entries and not _made_by_prepare(path):
            raise StoreError(f"{where}: is a directory that jigsaw-data prepare did not write ({len(entries)} "
                             f"entries, e.g. '{entries[0]}'); prepare writes only into a new path, an empty directory "
                             f"or a store it wrote, and replaces what is there: choose another --out")
    another_job = os.path.isdir(job.out) and os.listdir(job.out) and _key_of(job.out) != job.key
    if another_job and not overwrite:
        raise StoreError(f"--out {job.out}: holds a store that jigsaw-data prepare wrote from other arguments or "
                         f"sources; pass --overwrite to replace it (once the new store is complete), or choose "
                         f"another --out")


def _made_by_prepare(path: str) -> bool:
    """Whether a directory is a store, complete or partial, that prepare wrote: its job state, key or source."""
    if os.path.isdir(os.path.join(path, STATE)):
        return True
    try:
        attrs = zarr.open_group(path, mode="r").attrs
    except Exception:  # not a zarr store at all
        return False
    return KEY_ATTR in attrs or attrs.get("source") == SOURCE


def _key_of(path: str) -> Optional[str]:
    try:
        return zarr.open_group(path, mode="r").attrs.get(KEY_ATTR)
    except Exception:  # no store there, or not one zarr can open: not complete
        return None


class _Progress:
    """Blocks done / total and MB/s of this run, on stderr."""

    def __init__(self, total: int, done: int, what: str, enabled: bool):
        from tqdm import tqdm

        self.bar = tqdm(total=total, initial=done, unit="block", desc=f"prepare: {what}", dynamic_ncols=True,
                        disable=not enabled or total < 2)
        self.start, self.bytes = time.perf_counter(), 0

    def update(self, nbytes: int) -> None:
        self.bytes += nbytes
        self.bar.set_postfix_str(f"{self.bytes / 1e6 / max(time.perf_counter() - self.start, 1e-9):.0f} MB/s",
                                 refresh=False)
        self.bar.update(1)

    def close(self) -> None:
        self.bar.close()


def _note(text: str) -> None:
    print(f"jigsaw-data prepare: {text}", file=sys.stderr)


def _write_json(path: str, obj) -> None:
    """A record that exists is whole (files.write_atomic)."""
    os.makedirs(os.path.dirname(path), exist_ok=True)
    write_atomic(path, json.dumps(obj))


def _read_json(path: str):
    with open(path) as f:
        return json.load(f)


# ---- --plan ----------------------------------------------------------------------------------------------
def describe_plan(job: Job, workers: int) -> str:
    """The store's layout, blocks and bytes, and the time to write it on `workers` workers, from one block
    converted (and its climatology read) in this process into a scratch store next to the output."""
    p0 = job.parts[0].ds
    total = sum(job.block_bytes(b) for b in job.blocks)
    lines = [f"store {job.out}: {len(job.times)} time steps, {job.times[0]} .. {job.times[-1]}, "
             f"{p0.sizes['latitude']} x {p0.sizes['longitude']} grid"]
    for var, da in p0.data_vars.items():
        shape = [len(job.times) if d == "time" else da.sizes[d] for d in da.dims]
        lines.append(f"  {var}: {da.dims} {shape} {da.dtype}, chunks {job.encoding[var]['chunks']}")
    steps = sorted({b.stop - b.start for b in job.blocks})
    lines.append(f"blocks: {len(job.blocks)} of {steps[-1]} time steps ({job.block_bytes(job.blocks[0]) / 1e6:.1f} MB "
                 f"in memory each); data {total / 1e9:.2f} GB uncompressed")
    lines.append(f"climatology: {len(job.clim_cells)} cells by {job.clim_by}" if job.clim_by else "climatology: none")
    if "regrid" in p0.attrs:  # the sources are interpolated by the tasks: the measured rates include it
        r = p0.attrs["regrid"]
        lines.append(f"regrid: {r['source_grid']} -> {r['grid']}, {r['method']}")
    parent = os.path.dirname(job.out) or "."
    with tempfile.TemporaryDirectory(dir=parent, prefix=".plan-") as scratch:
        path = os.path.join(scratch, "plan.zarr")
        init_store(job, path)
        t0 = time.perf_counter()
        rec = convert_block(0, job, root=path)
        write_rate = rec["bytes"] / (time.perf_counter() - t0)
        b = job.blocks[0]
        t0 = time.perf_counter()
        for var in job.timed:
            job.sum_over_times(var, np.arange(b.offset, b.offset + b.stop - b.start))
        read_rate = rec["bytes"] / (time.perf_counter() - t0)
    seconds = total / write_rate / workers + (total / read_rate / workers if job.clim_by else 0.0)
    lines.append(f"measured here, one worker: {write_rate / 1e6:.1f} MB/s converting, {read_rate / 1e6:.1f} MB/s "
                 f"averaging (climatology)")
    lines.append(f"estimate with {workers} worker(s): {_duration(seconds)} (if workers scale linearly and the "
                 f"file system keeps up: measure 2 workers with bench/prepare.py)")
    return "\n".join(lines)


def _duration(seconds: float) -> str:
    for unit, size in (("d", 86400), ("h", 3600), ("min", 60)):
        if seconds >= size:
            return f"{seconds / size:.1f} {unit}"
    return f"{seconds:.0f} s"


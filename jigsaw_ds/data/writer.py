"""Writing a training store: statistics into attrs, chunks that match rank tiles, atomically."""
from __future__ import annotations

import os
import shutil

import xarray as xr

from .store import STATS_ATTR, compute_stats


def write_store(ds: xr.Dataset, out: str, lat_chunk: int = 0, lon_chunk: int = 0) -> str:
    """Compute statistics, chunk one time step per chunk (and lat/lon tiles if given), write to `out`.

    The store is written next to `out` under a temporary name and renamed when complete, so an
    interrupted write never leaves a store at `out` that looks complete.
    """
    ds = ds.copy()
    ds.attrs[STATS_ATTR] = compute_stats(ds)
    chunks = {"time": 1, "latitude": lat_chunk or ds.sizes["latitude"], "longitude": lon_chunk or ds.sizes["longitude"]}
    if "level" in ds.dims:
        chunks["level"] = 1
    encoding = {}
    for name, da in ds.data_vars.items():
        encoding[name] = {"chunks": tuple(chunks[d] for d in da.dims)}
        da.encoding.pop("chunks", None)
    out = os.path.abspath(out)
    tmp = out + ".partial"
    shutil.rmtree(tmp, ignore_errors=True)
    ds.to_zarr(tmp, mode="w", encoding=encoding, consolidated=True)
    if os.path.exists(out):
        shutil.rmtree(out)
    os.replace(tmp, out)
    return out

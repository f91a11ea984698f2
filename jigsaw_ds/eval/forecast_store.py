"""forecast.zarr: WeatherBench2's forecast layout, created empty by rank 0 (metadata, provenance, chunks that
match the ranks' tiles) and filled by every rank with its own tiles (ForecastWriter, through tensorstore)."""
from __future__ import annotations

import math
import os
import sys
from typing import Optional

import numpy as np
import xarray as xr

from ..checkpoint.weights import checkpoint_record
from ..data.store import WeatherStore, default_read_threads
from ..data.writer import chunk_compressors
from ..errors import RankLocalError


def forecast_chunks(part, groups) -> tuple[int, int]:
    """(latitude, longitude) chunk sizes of forecast.zarr such that every rank's tile is whole chunks: the
    rank's columns, and a band of rows dividing every domain rank's first row (its patch rows when the bands
    are uneven)."""
    starts = [part.lat_slice(d).start for d in range(groups.size("domain"))]
    band = math.gcd(*[s for s in starts if s]) if any(starts) else part.n_lat
    lon = part.lon_slice(0)
    return band, lon.stop - lon.start


# What a forecast keeps of the source store's attributes: what the numbers are. The rest describes the source,
# and is wrong for a forecast (GRIB_dataType 'an': an analysis; GRIB_* of the file it came from; its history)
DESCRIBING = ("units", "long_name", "standard_name")


def describing(attrs: dict) -> dict:
    return {k: v for k, v in attrs.items() if k in DESCRIBING}


def provenance(paths: list[str], run_config: dict, data: str, init_times) -> dict:
    """A forecast's attributes: what made it (the checkpoints, their steps and runs: several are a seed
    ensemble), with which channels, from which data and initial times, by which command and package version,
    when (CF's `source` and `history` say it too)."""
    import datetime
    import shlex

    from .. import __version__

    records = [checkpoint_record(p) for p in paths]
    created = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")
    command = shlex.join(sys.argv)
    return {"title": "WeatherMixer forecast", "source": f"jigsaw_ds {__version__} WeatherMixer",
            "jigsaw_ds_version": __version__, "created": created, "command": command,
            "history": f"{created} {command}",
            **{f"model_{key}s": [r[key] for r in records] for key in ("checkpoint", "step", "run")},
            "channels": list(run_config.get("channels") or []), "data": data,
            "init_times": [str(np.datetime64(t, "s")) for t in init_times]}


def forecast_dataset(store: WeatherStore, init_times, leads, attrs: Optional[dict] = None,
                     chunks: Optional[tuple[int, int]] = None) -> xr.Dataset:
    """A forecast in WB2's layout, values NaN until written: dims time (initialisation), prediction_timedelta,
    [level,] latitude, longitude; each variable's and coordinate's units and long name from the store
    (DESCRIBING), `attrs` (provenance) on the Dataset. chunks (latitude, longitude): dask arrays chunked by
    one time, one lead and that tile (forecast.zarr's metadata); None: numpy arrays (jigsaw_ds.inference)."""
    import dask.array as da

    coords = {"time": init_times, "prediction_timedelta": leads, "latitude": store.lat, "longitude": store.lon}
    data = {}
    n, k, (h, w) = len(init_times), len(leads), (len(store.lat), len(store.lon))
    for var, _, levels in store.variable_blocks():
        if levels is None:
            dims, shape = ("time", "prediction_timedelta", "latitude", "longitude"), (n, k, h, w)
        else:
            coords["level"] = [int(store.ds["level"].values[i]) for i in levels]
            dims, shape = ("time", "prediction_timedelta", "level", "latitude", "longitude"), (n, k, len(levels), h, w)
        values = np.full(shape, np.nan, np.float32) if chunks is None else \
            da.full(shape, np.nan, dtype=np.float32, chunks=(1, 1, *shape[2:-2], *chunks))
        data[var] = xr.Variable(dims, values, describing(store.ds[var].attrs))
    ds = xr.Dataset(data, coords=coords, attrs=attrs or {})
    for name in ("latitude", "longitude", "level"):
        if name in ds.coords and name in store.ds.coords:
            ds[name].attrs.update(describing(store.ds[name].attrs))
    ds["time"].attrs["long_name"] = "initialisation time"
    ds["prediction_timedelta"].attrs["long_name"] = "lead time"
    return ds


def create_forecast_store(path: str, store: WeatherStore, init_times, leads, chunks: tuple[int, int],
                          attrs: Optional[dict] = None) -> None:
    """The empty forecast.zarr (metadata only, values NaN until written): forecast_dataset's, chunked so."""
    ds = forecast_dataset(store, init_times, leads, attrs, chunks)
    encoding = {var: {"chunks": ds[var].data.chunksize, "compressors": chunk_compressors(np.float32)}
                for var in ds.data_vars}  # the training stores' codec
    ds.to_zarr(path, mode="w", compute=False, encoding=encoding, consolidated=True)


def forecast_pieces(blocks: list, first: int, k: int, values: np.ndarray, lat: slice, lon: slice):
    """(variable, index into its forecast.zarr array, the values there) of a forecast batch: values [B, C, h, w]
    (physical) of initial times first.. first+B-1 at lead index k, on this rank's tile; blocks: the store's
    variable_blocks()."""
    times = slice(first, first + values.shape[0])
    for var, c0, levels in blocks:
        if levels is None:
            yield var, (times, k, lat, lon), values[:, c0]
        else:
            yield var, (times, k, slice(None), lat, lon), values[:, c0:c0 + len(levels)]


class ForecastWriter:
    """This rank's tiles of every forecast step into the open forecast.zarr, through tensorstore: its encode
    and file threads run while the next step computes and is scored (they release the GIL); 1.6x
    zarr-python's writes on two quiet cores (bench/forecast_write.py; less on busy ones) (docs/evaluation.md). One step in flight: `write` waits for
    the previous step's writes first, so at most one forecast batch is held beyond the current one."""

    def __init__(self, path: str, blocks: list, lat: slice, lon: slice):
        import tensorstore as ts

        threads = default_read_threads()
        context = ts.Context({"data_copy_concurrency": {"limit": threads}, "file_io_concurrency": {"limit": threads}})
        self.path, self.blocks, self.lat, self.lon = path, blocks, lat, lon
        self.arrays = {var: ts.open({"driver": "zarr3", "kvstore": {"driver": "file", "path": os.path.join(path, var)}},
                                    context=context, write=True).result() for var, _, _ in blocks}
        self.pending: list = []
        self.held = None

    def write(self, first: int, k: int, values: np.ndarray) -> None:
        """values [B, C, h, w] (physical, float32) of initial times first.. first+B-1 at lead index k."""
        self.wait()
        for var, index, source in forecast_pieces(self.blocks, first, k, values, self.lat, self.lon):
            self.pending.append((var, self.arrays[var][index].write(source)))
        self.held = values  # the source stays alive until its writes are done

    def wait(self) -> None:
        for var, future in self.pending:
            try:
                future.result()
            except Exception as e:  # this rank's own chunks: only it knows, so it says so itself
                raise RankLocalError(f"writing '{var}' into {self.path}: {str(e).splitlines()[0]}") from None
        self.pending, self.held = [], None


def lead_times(store: WeatherStore, lead: int, lead_steps: int) -> np.ndarray:
    return np.array([(k + 1) * lead * store.time_step for k in range(lead_steps)]).astype("timedelta64[ns]")

"""Reading a WeatherBench2-style zarr store lazily, one rank's tile at a time.

Store layout (what `jigsaw-data synth/swe/prepare` write): dims time, level, latitude, longitude; upper-air
variables (time, level, latitude, longitude), surface variables (time, latitude, longitude), static fields
(latitude, longitude); coordinates in degrees and hPa; optional `trajectory` (time) for stores made of
several independent runs; `attrs['jigsaw_stats']`: per channel mean, std and tendency_std (the std of
one-step differences within a trajectory).

A channel is an upper-air variable at one level ('temperature_850') or a surface variable
('2m_temperature'). xarray (chunks=None: no dask graph) reads the metadata and the coordinates; every read of
data (training, validation, evaluation, the NaN scan, benchmarks) goes through one fast path, read_into:
tensorstore reads and decodes the chunks that overlap a tile, for all selected channels and a batch of
time steps, straight into the caller's float32 buffer, on `read_threads` threads. A corrupt, truncated or
missing chunk raises StoreError naming variable, time and chunk file, never fill values (docs/data.md).
"""
from __future__ import annotations

import itertools
import os
from dataclasses import dataclass
from typing import Optional, Union

import numpy as np
import xarray as xr

from ..errors import StoreError, StoreReadError

STATS_ATTR = "jigsaw_stats"
CANONICAL_DIMS = ("time", "level", "latitude", "longitude")
INDEX_CACHE_BYTES = 64 * 2**20  # shard indexes kept per process (2.9 kB per variable and time at 0.25 deg)
_TS_PID: Optional[int] = None  # the process that first used tensorstore (a fork of it cannot: it aborts)


def channel_name(var: str, level: Optional[int]) -> str:
    return var if level is None else f"{var}_{int(level)}"


def channel_names(variables: list, levels: list, surface_variables: list) -> list[str]:
    """The channels of a selection in the one channel order: each upper-air variable at each level, then each
    surface variable."""
    return [channel_name(var, lev) for var in variables for lev in levels] + list(surface_variables)


@dataclass
class Channel:
    name: str
    var: str
    level_index: Optional[int]  # index into the store's level axis, None for surface variables


def default_read_threads(num_workers: int = 0) -> int:
    """Decode threads of one reading process: the cores this process may run on (its rank's binding),
    shared by its `num_workers` loader workers (data.read_threads = 0)."""
    return max(1, len(os.sched_getaffinity(0)) // max(1, num_workers))


def _keep_freed_memory() -> None:
    """Let glibc keep freed blocks of up to 32 MB for reuse instead of handing them back to the kernel: a
    read's file and chunk buffers (and the next batch's) then reuse warm pages, where fresh ones cost a page
    fault and a zeroing each, 20-25% of a 0.25 deg read (perf). Process-wide; other allocators are left alone."""
    import ctypes

    try:
        libc = ctypes.CDLL("libc.so.6")
    except OSError:
        return
    m_trim_threshold, m_mmap_threshold = -1, -3  # glibc's mallopt parameters
    libc.mallopt(m_mmap_threshold, 32 * 2**20)  # glibc's maximum
    libc.mallopt(m_trim_threshold, 1 * 2**30)


def _extent(index: Union[slice, np.ndarray]) -> int:
    """Columns in a normalised slice or an index array (WeatherStore._tile)."""
    return index.stop - index.start if isinstance(index, slice) else len(index)


def _runs(index: Union[slice, np.ndarray]) -> list[slice]:
    """The contiguous runs, in their order, of a normalised slice or of an index array stepping by one up (columns
    that may wrap) or down (rows reversed)."""
    if isinstance(index, slice):
        return [index]
    cut = np.flatnonzero(np.abs(np.diff(index)) != 1) + 1
    return [slice(int(run.min()), int(run.max()) + 1) for run in np.split(index, cut)]


def shifted_columns(cols: Union[slice, np.ndarray], shift: int, n_lon: int) -> Union[slice, np.ndarray]:
    """The columns of a field that columns `cols` (a normalised slice or an index array) of that field rolled
    by `shift` hold: column j of the rolled field is column (j + shift) mod n_lon. A slice where the run does
    not wrap past the last column, else an index array (one read all the same: WeatherStore._tile)."""
    if not isinstance(cols, slice):
        return (np.asarray(cols) + shift) % n_lon
    first, width = (cols.start + shift) % n_lon, cols.stop - cols.start
    if first + width <= n_lon:
        return slice(first, first + width)
    return (first + np.arange(width)) % n_lon


def conversion_hint(path: str) -> str:
    return f"convert it with `jigsaw-data prepare {path} --out NEW.zarr`"


# A latitude axis of more than RADIAN_ROWS rows spanning less than this many "degrees" is in radians (pole to
# pole is pi); in degrees it would be a strip under 3.2 deg high, too small to train a global model on.
RADIAN_SPAN, RADIAN_ROWS = 3.2, 10
CF_CODING = ("scale_factor", "add_offset", "_FillValue", "missing_value", "_Unsigned")


def grid_problem(ds: xr.Dataset, name=lambda dim: f"'{dim}'") -> Optional[str]:
    """What makes the time, latitude or longitude coordinates of `ds` unusable, or None: the one rule that
    prepare (naming the file) and WeatherStore (naming the store) apply; `name(dim)` names a coordinate in
    the message. Without it, a dimension with no coordinate values (xarray numbers it 0, 1, 2, ...), angles in
    radians, or times that are numbers rather than dates are taken for degrees and dates: wrong area
    weights, leads of 0 h, forcings frozen at 1970-01-01. NaN and order are left to the monotonicity checks."""
    for dim in ("time", "latitude", "longitude"):
        if dim in ds.dims and dim not in ds.coords:
            return (f"dimension {name(dim)} has no coordinate values (they would be taken to be 0, 1, 2, ...): "
                    f"write the {'dates' if dim == 'time' else 'degrees'} as a coordinate variable")
    if "time" in ds.dims and ds["time"].dtype.kind != "M":
        fix = ("convert it to the standard calendar (xarray: ds.convert_calendar('standard'))"  # cftime dates
               if ds["time"].dtype.kind == "O" else
               "give it CF units (attrs['units'] = 'hours since 1900-01-01', which xarray decodes) or write "
               "datetime64 times")
        return f"coordinate {name('time')} holds {ds['time'].dtype} values, not dates (datetime64): {fix}"
    for dim in ("latitude", "longitude"):
        units = str(ds[dim].attrs.get("units", "")).strip()
        if units.lower().startswith("rad"):
            return f"coordinate {name(dim)} has units '{units}': coordinates must be in degrees (numpy.rad2deg)"
    lat, lon = (np.asarray(ds[d].values, np.float64) for d in ("latitude", "longitude"))
    if not lat.size or not lon.size:
        return f"the grid is empty ({lat.size} latitudes x {lon.size} longitudes)"
    if np.abs(lat).max() > 90:
        return f"coordinate {name('latitude')} has values beyond +-90 deg ({lat.min()} .. {lat.max()})"
    if lon.min() < -180 or lon.max() > 360:
        return f"coordinate {name('longitude')} has values outside -180 .. 360 deg ({lon.min()} .. {lon.max()})"
    span = lat.max() - lat.min()
    if len(lat) > RADIAN_ROWS and span < RADIAN_SPAN:
        return (f"coordinate {name('latitude')} spans {span:.2f} over {len(lat)} rows: radians? coordinates must "
                f"be in degrees (numpy.rad2deg)")
    return None


def cf_coding(da: xr.DataArray) -> tuple[np.dtype, dict]:
    """The dtype a variable is stored as, and its CF packing and masking attributes that a raw read of its
    chunks (tensorstore's) would not apply, where they change values ({} if none): xarray decodes them on open
    (and keeps them in .encoding), so the statistics would describe the decoded values while the model got the
    raw numbers. A float fill value is left: its points are read as NaN (fill_value_of)."""
    enc = da.encoding
    stored = np.dtype(enc.get("dtype", da.dtype))
    coding = {k: enc[k] for k in CF_CODING if enc.get(k) is not None}
    if np.all(np.asarray(coding.get("scale_factor", 1)) == 1):
        coding.pop("scale_factor", None)
    if np.all(np.asarray(coding.get("add_offset", 0)) == 0):
        coding.pop("add_offset", None)
    if stored.kind == "f":
        coding.pop("_FillValue", None)
        coding.pop("missing_value", None)
    if stored.kind not in "iu":
        coding.pop("_Unsigned", None)
    return stored, coding


def fill_value_of(da: xr.DataArray) -> Optional[float]:
    """The number that marks a float variable's missing points, where it is not NaN (e.g. -9999 or netCDF's
    9.97e36): xarray shows those points as NaN, and so does WeatherStore.read_into (a raw read would give the
    number: a silent wrong value). None for NaN or no fill value (what prepare and the generators write)."""
    enc = da.encoding
    if np.dtype(enc.get("dtype", da.dtype)).kind != "f":
        return None
    for key in ("_FillValue", "missing_value"):
        value = np.asarray(enc.get(key, np.nan), np.float64).ravel()
        if value.size and np.isfinite(value[0]):
            return float(value[0])
    return None


GIVEN = "the given xarray Dataset"  # what messages call a WeatherStore made from a Dataset


def _dataset_array(da: xr.DataArray):
    """A variable of a given Dataset as a tensorstore array of float32 in CANONICAL_DIMS order, read through
    xarray chunk by chunk (a time step's field) only when a read asks for it: a lazy Dataset stays lazy."""
    import tensorstore as ts

    da = da.transpose(*[d for d in CANONICAL_DIMS if d in da.dims])

    def read(domain, array, _params):
        array[...] = da[tuple(slice(d.inclusive_min, d.exclusive_max) for d in domain)].values

    chunk = (1,) + da.shape[1:] if da.dims[0] == "time" else da.shape
    return ts.virtual_chunked(read, dtype=ts.float32, domain=ts.IndexDomain(shape=da.shape),
                              chunk_layout=ts.ChunkLayout(read_chunk_shape=chunk))


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


def gap_starts(times: np.ndarray) -> np.ndarray:
    """[T] bool: where a new stretch of regular time steps begins (the step before differs from the series'
    smallest step: a gap). The one rule for gaps: prepare writes it as a `trajectory` coordinate, and a store
    without one gets its trajectories from it, so that no training pair spans a gap."""
    starts = np.zeros(len(times), bool)
    if len(times) >= 3:
        step = np.diff(times)
        starts[1:] = step != step.min()
    return starts


def trajectories(ds: xr.Dataset) -> np.ndarray:
    """[T] trajectory id of each time: the store's `trajectory` coordinate, else stretches between gaps."""
    if "trajectory" in ds.coords:
        return ds["trajectory"].values
    return np.cumsum(gap_starts(ds["time"].values))


class WeatherStore:
    """The channels a config selects from one store, with grid, time axis, trajectories and statistics."""

    def __init__(self, path: Union[str, xr.Dataset], variables: list, surface_variables: list, levels: list,
                 static_variables: list = (), read_threads: int = 0, statistics: Optional[dict] = None,
                 channels: Optional[list] = None):
        # path: a zarr store, or an xarray Dataset in its layout (jigsaw_ds.inference), read where it is;
        # statistics: a trained model's normalisation (use_statistics), else the store's own (its attrs);
        # channels: names (a trained model's, in its order) to select instead of variables x levels + surface
        self.given = path if isinstance(path, xr.Dataset) else None
        self.path = GIVEN if self.given is not None else path
        self.read_threads = read_threads or default_read_threads()
        ds = self.given if self.given is not None else open_store(path)
        self._check_dims(ds)
        self.lat = ds["latitude"].values.astype(np.float64)
        self.lon = ds["longitude"].values.astype(np.float64)
        self._written = (self.lat, self.lon)  # the grid in the store's own order
        self._order = (False, 0)  # reorder(): latitudes reversed, longitude shift (columns)
        self.times = ds["time"].values
        self.trajectory = trajectories(ds)
        steps = np.diff(self.times)
        steps = steps[steps > np.timedelta64(0)]
        # the store's time step (a gap, or a new trajectory, is another step): leads and forcing times follow it
        self.time_step = steps.min() if len(steps) else np.timedelta64(0, "ns")
        self.channels = self._select_channels(ds, variables, surface_variables, levels) if channels is None else \
            self._channels_by_name(ds, variables, surface_variables, channels)
        self.static_variables = list(static_variables)
        for var in self.static_variables:
            self._require(ds, var, ("latitude", "longitude"))
        if statistics:
            self.use_statistics(statistics)
        else:
            self._own_statistics(ds)
        constant = [c.name for c, t in zip(self.channels, self.tendency_std) if t == 0]  # NaN: check_finite says why
        if constant:  # the loss is in units of each channel's one-step change: a constant one has none
            raise StoreError(f"data store '{self.path}': channels {constant} never change from one time step to the "
                             f"next (tendency std 0); a field constant in time belongs in model.static_variables")
        self._dims = {var: ds[var].dims for var in {c.var for c in self.channels} | set(self.static_variables)}
        self._dtypes = {var: ds[var].dtype for var in self._dims}
        # a given Dataset is read through xarray, which has masked them already
        self._fills = {} if self.given is not None else {
            var: fill for var in self._dims if (fill := fill_value_of(ds[var])) is not None}
        self._ds = None  # opened lazily in each process (DataLoader workers included)
        self._arrays: Optional[dict] = None  # tensorstore handles, likewise

    # ---- normalisation ---------------------------------------------------------------------------------
    def _own_statistics(self, ds: xr.Dataset) -> None:
        stats = ds.attrs.get(STATS_ATTR)
        if not stats:
            raise StoreError(f"data store '{self.path}' has no statistics (attrs['{STATS_ATTR}']); "
                             f"run `jigsaw-data prepare` on it")
        missing = [name for name in [c.name for c in self.channels] + self.static_variables if name not in stats]
        if missing:
            raise StoreError(f"data store '{self.path}': statistics lack channels {missing}; the store was written "
                             f"with other statistics, run `jigsaw-data prepare` again")
        self.mean = np.array([stats[c.name]["mean"] for c in self.channels], np.float32)
        self.std = np.array([stats[c.name]["std"] for c in self.channels], np.float32)
        self.tendency_std = np.array([stats[c.name]["tendency_std"] for c in self.channels], np.float32)
        self._static_stats = {var: stats[var] for var in self.static_variables}

    def statistics(self) -> dict:
        """The normalisation of the selected channels and static fields (a run config records it: the one its
        weights were learned against)."""
        return {"channels": [c.name for c in self.channels], "mean": self.mean.tolist(), "std": self.std.tolist(),
                "tendency_std": self.tendency_std.tolist(),
                "static": {var: {"mean": float(self._static_stats[var]["mean"]),
                                 "std": float(self._static_stats[var]["std"])} for var in self.static_variables}}

    def use_statistics(self, record: dict) -> None:
        """Normalise with a trained model's statistics (`statistics()` of its training store), not this store's
        own: a store of other times (a test year prepared on its own) has other means and spreads, and the
        weights expect the inputs they were trained on. The channels are the model's (model/inputs.py checks)."""
        names = [c.name for c in self.channels]
        if record["channels"] != names:
            raise StoreError(f"store '{self.path}' gives channels {names}; the model was trained on "
                             f"{record['channels']}")
        self.mean, self.std, self.tendency_std = (np.array(record[k], np.float32) for k in ("mean", "std",
                                                                                          "tendency_std"))
        self._static_stats = {var: record["static"][var] for var in self.static_variables}

    # ---- checks ----------------------------------------------------------------------------------------
    def _check_dims(self, ds):
        for dim in ("time", "latitude", "longitude"):
            if dim not in ds.dims:
                raise StoreError(f"data store '{self.path}' lacks the dimension '{dim}' (has {list(ds.dims)})")
        problem = grid_problem(ds)
        if problem:
            raise StoreError(f"data store '{self.path}': {problem}")
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
        stored, coding = cf_coding(ds[var])
        if coding and self.given is None:  # a given Dataset is read through xarray, which decodes them
            raise StoreError(f"data store '{self.path}': variable '{var}' is stored as {stored} with CF attributes "
                             f"{', '.join(f'{k}={v}' for k, v in coding.items())} that the reader does not apply "
                             f"(the model would get the raw numbers, not the values xarray decodes); "
                             f"{conversion_hint(self.path)}, which decodes them")

    def _select_channels(self, ds, variables, surface_variables, levels) -> list[Channel]:
        """The config's variables at `levels` (empty: all the store's) and its surface variables."""
        wanted = []
        if variables:
            store_levels = [int(v) for v in ds["level"].values] if "level" in ds.coords else []
            wanted = [int(v) for v in levels] if levels else store_levels
            for lev in wanted:
                if lev not in store_levels:
                    raise StoreError(f"data store '{self.path}' has no level {lev} hPa; it has {store_levels}")
        return self._channels_by_name(ds, variables, surface_variables,
                                      channel_names(variables, wanted, surface_variables))

    def _channels_by_name(self, ds, variables, surface_variables, names: list) -> list[Channel]:
        """The channels `names` in that order (every selection ends here); the variables they come from (a
        config's lists) checked first, so that a store without one is refused naming it."""
        for var in variables:
            self._require(ds, var, ("time", "level", "latitude", "longitude"))
        for var in surface_variables:
            self._require(ds, var, ("time", "latitude", "longitude"))
        have = {c.name: c for c in all_channels(ds)}
        missing = [name for name in names if name not in have]
        if missing:
            raise StoreError(f"data store '{self.path}' has no channel '{missing[0]}' (asked for {list(names)}; it has "
                             f"{list(have)})")
        return [have[name] for name in names]

    def check_finite(self, times: slice = slice(None), lat: slice = slice(None), lon: slice = slice(None)) -> None:
        """Refuse missing values in the selected channels (naming variable and time) and static fields: NaN,
        inf, and the points a float _FillValue marks (read as NaN: fill_value_of). Reads the given piece only
        (by default the whole selection), so that ranks can split the scan between them."""
        index = np.arange(len(self.times))[times]
        h, w = len(range(*lat.indices(self.n_lat))), len(range(*lon.indices(self.n_lon)))
        block = max(1, (256 * 2**20) // max(1, 4 * len(self.channels) * h * w))  # bounded memory
        for lo in range(0, len(index), block):
            values = self.read_raw(list(index[lo:lo + block]), lat, lon)
            bad = ~np.isfinite(values).reshape(values.shape[0], len(self.channels), -1).all(axis=2)
            if bad.any():
                t, c = np.argwhere(bad)[0]
                raise StoreError(f"data store '{self.path}': variable '{self.channels[c].name}' has "
                                 f"{self._missing(self.channels[c].var)} at time {self.times[index[lo + t]]}")
        for var in self.static_variables:  # 2-D and small: every rank checks its own tile
            if not np.isfinite(self._read_static_raw(var, lat, lon)).all():
                raise StoreError(f"data store '{self.path}': static field '{var}' has {self._missing(var)}")

    def _missing(self, var: str) -> str:
        fill = self._fills.get(var)
        return "NaN/inf" if fill is None else f"NaN/inf or missing points (its _FillValue {fill:g})"

    # ---- order ---------------------------------------------------------------------------------------
    def reorder(self, flip_lat: bool, lon_shift: int) -> "WeatherStore":
        """Present the store's grid in another exact order (jigsaw-eval on a store that holds the trained grid
        so: model/inputs.reorder_of): latitudes reversed where flip_lat, and column j being the store's column
        (j + lon_shift) mod n_lon; relative to the order the store is written in. `lat`, `lon`, `ds` and every
        read (read_into, the static fields, check_finite) are then in that order: a tile is read from the
        store's rows and columns that hold it (an index array where it wraps past the store's last column or
        runs against its rows), never more. Longitudes stay increasing past the store's seam, within -180..360
        (-180..180 rolled to 0..360 and the other way round). Returns the store."""
        lat, lon = self._written
        self._order = (bool(flip_lat), int(lon_shift) % len(lon))
        shift = self._order[1]
        self.lat = lat[::-1].copy() if flip_lat else lat
        self.lon = np.roll(lon, -shift)
        self.lon[len(lon) - shift:] += 360.0  # the store's first columns, now east of its last
        if self.lon[-1] > 360.0:
            self.lon -= 360.0
        self._ds = None
        return self

    def _in_store(self, lat: slice, lon) -> tuple:
        """The store's rows and columns of a tile in the presented order (_tile's normalised lat, lon): a slice
        each in the store's own order; reversed rows as an index array; columns by shifted_columns."""
        flip, shift = self._order
        if flip:
            lat = np.arange(self.n_lat - 1 - lat.start, self.n_lat - 1 - lat.stop, -1)
        return lat, shifted_columns(lon, shift, self.n_lon) if shift else lon

    # ---- reading ---------------------------------------------------------------------------------------
    @property
    def ds(self) -> xr.Dataset:
        """The store as an xarray Dataset, for metadata and coordinates (data is read by read_into), in the
        presented order (reorder): a lazy view, indexed, not loaded."""
        if self._ds is None:
            ds = self.given if self.given is not None else open_store(self.path)
            flip, shift = self._order
            if flip or shift:
                ds = ds.isel(latitude=slice(None, None, -1) if flip else slice(None),
                             longitude=shifted_columns(slice(0, self.n_lon), shift, self.n_lon))
                ds = ds.assign_coords(latitude=("latitude", self.lat, ds["latitude"].attrs),
                                      longitude=("longitude", self.lon, ds["longitude"].attrs))
            self._ds = ds
        return self._ds

    def __getstate__(self):
        state = self.__dict__.copy()
        state["_ds"] = state["_arrays"] = None  # each DataLoader worker opens its own handles
        return state

    @property
    def n_lat(self) -> int:
        return len(self.lat)

    @property
    def n_lon(self) -> int:
        return len(self.lon)

    def _open_arrays(self) -> dict:
        """tensorstore handles of the selected variables and static fields, dims in CANONICAL_DIMS order and
        values as float32, one context per process: `read_threads` decode and file threads, no chunk cache
        (each sample is read once per epoch), a small cache for shard indexes."""
        import tensorstore as ts

        global _TS_PID
        if _TS_PID not in (None, os.getpid()):
            raise StoreError(f"data store '{self.path}': this process was forked from one that had read with "
                             f"tensorstore, which cannot work after fork(); start DataLoader workers with "
                             f"multiprocessing_context='forkserver' or 'spawn' (data.dataset.Loader does)")
        if _TS_PID is None:
            _keep_freed_memory()
        _TS_PID = os.getpid()
        context = ts.Context({"cache_pool": {"total_bytes_limit": 0},
                              "cache_pool#index": {"total_bytes_limit": INDEX_CACHE_BYTES},
                              "data_copy_concurrency": {"limit": self.read_threads},
                              "file_io_concurrency": {"limit": self.read_threads}})
        arrays = {}
        for var, dims in self._dims.items():
            if self.given is not None:
                arrays[var] = _dataset_array(self.given[var])
                continue
            folder = os.path.join(self.path, var)
            driver = "zarr3" if os.path.exists(os.path.join(folder, "zarr.json")) else "zarr"
            spec = {"driver": driver, "kvstore": {"driver": "file", "path": folder},
                    "metadata_cache_pool": "cache_pool#index",
                    "fill_missing_data_reads": False,  # a missing chunk is an error, not NaN to the model
                    "recheck_cached_metadata": False, "recheck_cached_data": False}
            try:
                array = ts.open(spec, context=context, read=True).result()
            except Exception as e:  # tensorstore raises ValueError for metadata and codecs it does not support
                raise StoreError(f"data store '{self.path}': variable '{var}' is in a layout the reader cannot "
                                 f"read ({str(e).splitlines()[0]}); {conversion_hint(self.path)}") from None
            order = [dims.index(d) for d in CANONICAL_DIMS if d in dims]
            array = array[ts.d[order].transpose[:]]
            arrays[var] = array if self._dtypes[var] == np.float32 else ts.cast(array, ts.float32)
        return arrays

    def _tile(self, lat: slice, lon) -> tuple[slice, Union[slice, np.ndarray]]:
        """lat: a slice of rows; lon: a slice of columns, or an integer array of them (a tile of a sample rolled
        in longitude that wraps past the last column: one read, which decodes each chunk once, where two
        slices would decode the chunks of whole rows twice)."""
        lat = slice(*lat.indices(self.n_lat))
        if isinstance(lon, slice):
            return lat, slice(*lon.indices(self.n_lon))
        cols = np.asarray(lon)
        if not np.issubdtype(cols.dtype, np.integer):
            raise ValueError(f"longitude columns must be a slice or an integer array, got {cols.dtype}")
        cols = cols.astype(np.int64)
        if cols.ndim != 1 or not len(cols) or cols.min() < 0 or cols.max() >= self.n_lon:
            raise ValueError(f"longitude columns must be a non-empty 1-D array in [0, {self.n_lon}), got "
                             f"{cols.shape} {cols.min() if cols.size else ''}..{cols.max() if cols.size else ''}")
        return lat, cols

    def variable_blocks(self) -> list[tuple[str, int, Optional[list[int]]]]:
        """(variable, first channel, its level indices on the store's level axis, or None for a surface
        variable), in channel order: the channels of a variable are consecutive."""
        blocks = []
        for c, ch in enumerate(self.channels):
            if blocks and blocks[-1][0] == ch.var and ch.level_index is not None:
                blocks[-1][2].append(ch.level_index)
            else:
                blocks.append((ch.var, c, None if ch.level_index is None else [ch.level_index]))
        return blocks

    def read_into(self, out, times, lat: slice, lon, normalise: bool = True):
        """Read the tile (lat, lon; lon a slice or an array of columns, see _tile) of every selected channel at
        the given time indices into `out`, normalised in place ((x - mean) / std per channel) unless
        normalise=False; return `out`. `out` is one float32 array [T, C, h, w], or a sequence of T arrays
        [C, h, w], one per time (any memory: pinned, shared, views of a batch buffer: PairDataset.read_batch
        decodes each time step straight into its place in the batch, with no staging copy). One tensorstore
        read per variable and destination, all issued at once; each variable is normalised as soon as it has
        arrived, while the others are still decoding."""
        import tensorstore as ts

        if self._arrays is None:
            self._arrays = self._open_arrays()
        times = np.asarray(times, dtype=np.int64)
        lat, lon = self._tile(lat, lon)
        tile = (len(self.channels), lat.stop - lat.start, _extent(lon))
        lat, lon = self._in_store(lat, lon)
        # (time indices, destination [T', C, h, w]) pairs: one for an array, one per time for a sequence
        whole = isinstance(out, np.ndarray) and out.ndim == 4
        groups = [(times, out)] if whole else [(times[i:i + 1], o[None]) for i, o in enumerate(out)]
        for _, dest in groups:
            if not isinstance(dest, np.ndarray) or dest.shape[1:] != tile or dest.dtype != np.float32:
                raise ValueError(f"read_into: out is {getattr(dest, 'dtype', type(dest))} "
                                 f"{getattr(dest, 'shape', '')}, expected float32 {(len(times), *tile)}")
        if sum(len(dest) for _, dest in groups) != len(times):
            raise ValueError(f"read_into: out holds {sum(len(d) for _, d in groups)} time steps, {len(times)} asked")
        pending = []
        for var, c0, levels in self.variable_blocks():
            n = 1 if levels is None else len(levels)
            if levels is not None and levels == list(range(levels[0], levels[0] + n)):
                levels = slice(levels[0], levels[0] + n)  # a slice where it can be: fewer index lookups
            futures = []
            for group_times, dest in groups:
                index = (group_times, lat, lon) if levels is None else (group_times, levels, lat, lon)
                source = self._arrays[var].oindex[index]
                target = ts.array(dest[:, c0] if levels is None else dest[:, c0:c0 + n], copy=False, write=True)
                futures.append(target.write(source[ts.d[:].translate_to[0]]))
            pending.append((var, c0, n, futures))
        for var, c0, n, futures in pending:
            try:
                for future in futures:
                    future.result()
            except Exception as e:
                self._raise_read_error(var, times, lat, lon, e)
            for _, dest in groups:
                self._fill_as_nan(var, dest[:, c0:c0 + n])
            if normalise:
                for _, dest in groups:
                    block = dest[:, c0:c0 + n]
                    np.subtract(block, self.mean[c0:c0 + n, None, None], out=block)
                    np.divide(block, self.std[c0:c0 + n, None, None], out=block)
        return out

    def _raise_read_error(self, var: str, times: np.ndarray, lat, lon, error: Exception):
        """Find the chunk that failed (re-reading the tile chunk by chunk, each run of its store rows and
        columns) and name it: a StoreReadError, which the rank reading that tile says itself."""
        import zarr

        if self.given is not None:  # no chunk files to name: what xarray raised
            raise StoreReadError(f"{self.path}: variable '{var}': reading times {list(times)} failed: "
                                 f"{str(error).splitlines()[0]}") from None
        meta = zarr.open_array(os.path.join(self.path, var), mode="r")
        dims, canonical = self._dims[var], [d for d in CANONICAL_DIMS if d in self._dims[var]]
        inner = dict(zip(dims, meta.chunks))
        outer = dict(zip(dims, meta.shards or meta.chunks))
        levels = sorted({c.level_index for c in self.channels if c.var == var})
        array = self._arrays[var]
        for t, rows, cols in itertools.product(times, _runs(lat), _runs(lon)):
            ranges = {"level": levels, "latitude": range(rows.start, rows.stop),
                      "longitude": range(cols.start, cols.stop)}
            # first index of every inner chunk that the tile touches, per dim
            starts = {"time": [int(t)]}
            for d in canonical[1:]:
                starts[d] = sorted({i - i % inner[d] for i in ranges[d]})
            corners = np.stack(np.meshgrid(*[starts[d] for d in canonical], indexing="ij"), -1)
            for corner in corners.reshape(-1, len(canonical)):
                box = {d: range(max(int(i), ranges.get(d, range(i, i + 1))[0]),
                                min(int(i) + inner[d], n, ranges.get(d, range(n))[-1] + 1))
                       for i, d, n in zip(corner, canonical, array.shape)}
                try:
                    array[tuple(slice(r.start, r.stop) for r in box.values())].read().result()
                except Exception as e:
                    key = meta.metadata.encode_chunk_key(tuple(box[d].start // outer[d] for d in dims))
                    part = " (an inner chunk of that shard)" if meta.shards else ""
                    raise StoreReadError(
                        f"data store '{self.path}': variable '{var}' at time {self.times[t]}: chunk file "
                        f"'{os.path.join(var, key)}'{part}, latitude rows {box['latitude'].start}.."
                        f"{box['latitude'].stop - 1}, longitude columns {box['longitude'].start}.."
                        f"{box['longitude'].stop - 1}, cannot be read: {str(e).splitlines()[0]}; the store "
                        f"is damaged: write it again") from None
        raise StoreReadError(f"data store '{self.path}': variable '{var}': reading times {list(times)} failed: "
                             f"{str(error).splitlines()[0]}") from None

    def read_raw(self, times: list[int], lat: slice, lon) -> np.ndarray:
        """[T, C, h, w] float32 physical values of the selected channels at the given time indices, tile
        (lat, lon) only."""
        la, lo = self._tile(lat, lon)
        out = np.empty((len(times), len(self.channels), la.stop - la.start, _extent(lo)), np.float32)
        return self.read_into(out, times, lat, lon, normalise=False)

    def read(self, times: list[int], lat: slice, lon) -> np.ndarray:
        """Normalised tiles [T, C, h, w]: (x - mean) / std per channel."""
        la, lo = self._tile(lat, lon)
        out = np.empty((len(times), len(self.channels), la.stop - la.start, _extent(lo)), np.float32)
        return self.read_into(out, times, lat, lon)

    def _read_static_raw(self, var: str, lat: slice, lon) -> np.ndarray:
        if self._arrays is None:
            self._arrays = self._open_arrays()
        lat, lon = self._in_store(*self._tile(lat, lon))
        try:
            values = self._arrays[var].oindex[lat, lon].read().result()
        except Exception as e:
            raise StoreReadError(f"data store '{self.path}': static field '{var}' cannot be read: "
                                 f"{str(e).splitlines()[0]}; the store is damaged: write it again") from None
        return self._fill_as_nan(var, values)

    def _fill_as_nan(self, var: str, values: np.ndarray) -> np.ndarray:
        """A float _FillValue's points as NaN, in place, as xarray shows them (fill_value_of; a pass over the
        values for such variables only: prepare and the generators write NaN)."""
        fill = self._fills.get(var)
        if fill is not None:
            values[values == np.float32(fill)] = np.nan
        return values

    def read_static(self, lat: slice, lon) -> np.ndarray:
        """[S, h, w] static fields of the tile, normalised with their stored mean and std."""
        stats = self._static_stats
        la, lo = self._tile(lat, lon)
        out = np.zeros((len(self.static_variables), la.stop - la.start, _extent(lo)), np.float32)
        for s, var in enumerate(self.static_variables):
            out[s] = (self._read_static_raw(var, lat, lon) - stats[var]["mean"]) / stats[var]["std"]
        return out

    def pair_starts(self, lead: int, before: int = 0) -> np.ndarray:
        """Time indices t whose target t + lead and input history back to t - before lie in one trajectory."""
        t = np.arange(before, len(self.times) - lead)
        return t[(self.trajectory[t - before] == self.trajectory[t]) & (self.trajectory[t] == self.trajectory[t + lead])]

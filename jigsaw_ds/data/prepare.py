"""jigsaw-data prepare: ingest WeatherBench2 zarr, CDS netCDF and GRIB files into the training layout.

What a source may look like, and what the store gets (see docs/data.md):
  - names: ECMWF short names (t2m, z, t, u, v, q, msl, ...; isobaricInhPa / pressure_level, lat / lon,
    valid_time) are mapped to WeatherBench2's (2m_temperature, geopotential, ..., level, latitude, longitude,
    time); WB2 names pass through. `z` without a level axis is the surface geopotential (orography).
  - grid: latitude ascending or descending, longitude 0..360 or -180..180, any dimension order. Values and
    coordinates are kept exactly as read (no flipping; no regridding unless asked for with `grid`: regrid.py):
    only a longitude axis that wraps through 0 deg E in 0..360 form (350 ... 359.75, 0 ... 2) is relabelled as
    -10 ... 2, and one that wraps through 180 deg in -180..180 form as 170 ... 190 (the same points, now
    increasing). Dims are transposed to (time, level, latitude, longitude).
  - time: the valid time (cfgrib's `valid_time` = time + step) becomes `time`; forecasts with several
    steps are refused. Ensembles (dim `number`): one member is kept (`member`, default 0).
  - several files: files with the same variables are joined along time (monthly files); files with other
    variables over the same times are merged (a surface and a pressure-level file); files without a time
    axis give static fields. Grids, levels and times must match exactly, or it is an error.
Values are read decoded (xarray applies CF scale_factor/add_offset/_FillValue and CF time units), so the
store holds physical values and dates. Bad input (missing variable or level, NaN/inf, non-monotonic or
duplicated coordinates, a latitude/longitude without coordinate values or in radians, times that are not
dates, files joined along time on different grids, a grid the model config cannot use, an unreadable or
truncated file) raises one SourceError naming file, variable and coordinate; all but NaN/inf and unreadable
data are refused before anything is written, as is an --out that is not new, empty or prepare's own. The
store is written by the Dask job in parallel_prepare (chunks in latitude bands of whole patch rows,
statistics, an optional climatology group), resumably, and appears under its final name only when complete.
"""
from __future__ import annotations

import dataclasses
import os
import sys
from dataclasses import dataclass, field
from typing import Optional

import numpy as np
import xarray as xr

from ..errors import ConfigError, SourceError
from .store import StoreError, gap_starts, grid_problem

SHORT_NAMES = {  # ECMWF short name -> WeatherBench2 name
    "z": "geopotential", "t": "temperature", "u": "u_component_of_wind", "v": "v_component_of_wind",
    "q": "specific_humidity", "w": "vertical_velocity", "r": "relative_humidity", "vo": "vorticity",
    "d": "divergence", "t2m": "2m_temperature", "d2m": "2m_dewpoint_temperature",
    "u10": "10m_u_component_of_wind", "v10": "10m_v_component_of_wind", "msl": "mean_sea_level_pressure",
    "sp": "surface_pressure", "tp": "total_precipitation", "tcwv": "total_column_water_vapour",
    "sst": "sea_surface_temperature", "skt": "skin_temperature", "lsm": "land_sea_mask",
    "slor": "slope_of_sub_gridscale_orography", "sdor": "standard_deviation_of_orography",
}
SURFACE_GEOPOTENTIAL = "geopotential_at_surface"  # what `z` means without a level axis
STATIC_NAMES = {"land_sea_mask", SURFACE_GEOPOTENTIAL, "slope_of_sub_gridscale_orography",
                "standard_deviation_of_orography", "soil_type"}
COORD_NAMES = {"isobaricInhPa": "level", "pressure_level": "level", "lat": "latitude", "lon": "longitude"}
DIMS = ("time", "level", "latitude", "longitude")
GRIB_SUFFIXES = (".grib", ".grb", ".grib1", ".grib2", ".grb2")
NETCDF_SUFFIXES = (".nc", ".nc4", ".netcdf", ".cdf", ".h5")


@dataclass
class Source:
    """One opened source: its dataset in WB2 names and dims, and the names it had in the file."""
    path: str
    ds: xr.Dataset
    original: dict = field(default_factory=dict)  # WB2 name -> name in the file (variables and coordinates)
    member: Optional[int] = None  # the ensemble member kept, if the file had several

    def name(self, wb2: str) -> str:
        src = self.original.get(wb2, wb2)
        return f"'{wb2}'" if src == wb2 else f"'{wb2}' ('{src}' in the file)"


# ---- opening and naming --------------------------------------------------------------------------------
def open_source(path: str) -> list[xr.Dataset]:
    """The datasets of one file or zarr store, opened lazily (a GRIB file with several level types gives one
    dataset per type). cfgrib writes no index file (the data directory may be read-only) and squeezes no
    dimension (one time step stays a time axis)."""
    if not os.path.exists(path):
        raise SourceError(f"{path}: no such file or directory")
    kind = "zarr" if os.path.isdir(path) or path.rstrip("/").endswith(".zarr") else \
        "grib" if path.lower().endswith(GRIB_SUFFIXES) else "netcdf"
    try:
        if kind == "zarr":
            return [xr.open_zarr(path, chunks=None)]
        if kind == "netcdf":
            return [xr.open_dataset(path, chunks=None)]
        return _open_grib(path)
    except SourceError:
        raise
    except Exception as e:  # engines raise many types for a file they cannot read
        raise SourceError(f"{path}: cannot be read as {kind}: {type(e).__name__}: {e}") from None


def _open_grib(path: str) -> list[xr.Dataset]:
    """cfgrib.open_datasets, not xarray's cfgrib engine: the engine keeps only the first hypercube of a file
    with several (a surface and a pressure-level field, or another member count) and skips the others with a
    log message; open_datasets returns them all."""
    import cfgrib

    try:  # errors="raise": by default cfgrib skips a broken message and only logs it (a truncated file
        # would be ingested as its first part)
        return cfgrib.open_datasets(path, backend_kwargs={"indexpath": "", "squeeze": False, "errors": "raise"})
    except Exception as e:
        good = _grib_last_good(path)
        if good is None:
            raise
        count, desc = good
        raise SourceError(f"{path}: cannot be read whole: GRIB message {count + 1} is cut short or corrupt "
                          f"({type(e).__name__}: {e}); the last good message is {count} ({desc}); a truncated "
                          f"download? fetch the file again") from None


def _grib_last_good(path: str) -> Optional[tuple[int, str]]:
    """(number of readable messages, what the last one holds) when a GRIB file has at least one readable
    message before a broken one; None when nothing in it reads as GRIB."""
    import cfgrib

    count, last = 0, None
    try:
        for _, msg in cfgrib.FileStream(path, errors="ignore").items():
            count, last = count + 1, msg
    except Exception:  # what cfgrib cannot even skip: report what was read before it
        pass
    if not count:
        return None
    keys = {k: last.get(k) for k in ("shortName", "level", "validityDate", "validityTime")}
    return count, (f"'{keys['shortName']}' at level {keys['level']}, valid {keys['validityDate']} "
                   f"{int(keys['validityTime'] or 0):04d}")


def to_wb2(ds: xr.Dataset, path: str, member: int) -> Source:
    """Rename to WB2 names, pick the ensemble member, use the valid time, drop scalar coordinates and
    length-1 axes the store has no place for, and transpose to (time, level, latitude, longitude)."""
    level_names = {"level"} | {k for k, v in COORD_NAMES.items() if v == "level"}
    had_members = "number" in ds.dims and ds.sizes["number"] > 1
    ds = _valid_time(_select_member(ds, path, member), path)
    ds = ds.expand_dims([n for n in level_names if n in ds.coords and ds[n].ndim == 0])  # one level, squeezed
    ds = ds.drop_vars([n for n in ds.coords if n not in ds.dims  # step, valid_time, surface, expver, ...
                       and not (n == "trajectory" and ds[n].dims == ("time",))])  # a store's runs: kept
    ds = ds.isel({d: 0 for d in ds.dims if d not in DIMS and d not in level_names and ds.sizes[d] == 1}, drop=True)
    renames = {k: v for k, v in COORD_NAMES.items() if k in ds.dims}
    for var, da in ds.data_vars.items():
        wb2 = SHORT_NAMES.get(var, var)
        renames[var] = SURFACE_GEOPOTENTIAL if wb2 == "geopotential" and not level_names & set(da.dims) else wb2
    ds = ds.rename({k: v for k, v in renames.items() if k != v})
    src = Source(path, ds, {v: k for k, v in renames.items()}, member if had_members else None)
    for var, da in ds.data_vars.items():
        extra = [d for d in da.dims if d not in DIMS]
        if extra:
            raise SourceError(f"{path}: variable {src.name(var)} has the dimension '{extra[0]}' (length "
                              f"{da.sizes[extra[0]]}) that the store layout (time, level, latitude, longitude) "
                              f"cannot hold")
    ds = _static_fields(ds)
    for var in ds.variables:
        ds[var].encoding = {}  # the store's dtype is the decoded values' dtype, not the file's packing
    ds = ds.transpose(*[d for d in DIMS if d in ds.dims])
    if "level" in ds.dims:
        ds = ds.assign_coords(level=("level", _integer_levels(src, ds["level"].values), ds["level"].attrs))  # units kept
    src.ds = ds
    return src


def _static_fields(ds: xr.Dataset) -> xr.Dataset:
    """Invariant fields (land-sea mask, orography) stored with one time step lose the time axis; a file
    holding nothing else loses its time coordinate too (its fields join every time step)."""
    one_step = [v for v, da in ds.data_vars.items() if v in STATIC_NAMES and da.sizes.get("time") == 1]
    ds = ds.assign({v: ds[v].isel(time=0, drop=True) for v in one_step})
    if "time" in ds.dims and not any("time" in da.dims for da in ds.data_vars.values()):
        ds = ds.drop_dims("time")
    return ds


def _select_member(ds: xr.Dataset, path: str, member: int) -> xr.Dataset:
    """The ensemble member `member` of a file with several; a length-1 `number` axis is dropped later."""
    if "number" not in ds.dims or ds.sizes["number"] == 1:
        return ds
    members = [int(m) for m in ds["number"].values]
    if member not in members:
        raise SourceError(f"{path}: ensemble member {member} is not on coordinate 'number' (has {members})")
    return ds.sel(number=member, drop=True)


def _valid_time(ds: xr.Dataset, path: str) -> xr.Dataset:
    """`time` := valid time. cfgrib gives time (reference) + step with valid_time beside; CDS netCDF since
    2024 has valid_time as the dimension."""
    if "step" in ds.dims:
        if ds.sizes["step"] > 1:
            raise SourceError(f"{path}: coordinate 'step' has {ds.sizes['step']} forecast steps; the store holds one "
                              f"state per time: ingest analyses, or one step per file")
        ds = ds.isel(step=0)
    if "valid_time" in ds.dims and "time" not in ds.dims:
        ds = ds.drop_vars("time", errors="ignore").rename({"valid_time": "time"})
    elif "valid_time" in ds.coords and "time" in ds.coords:
        ds = ds.assign_coords(time=ds["valid_time"].variable)
    if "time" in ds.coords and ds["time"].ndim == 0:
        ds = ds.expand_dims("time")  # one time step, squeezed by the converter
    return ds


def _integer_levels(src: Source, levels: np.ndarray) -> np.ndarray:
    as_int = np.round(levels).astype(np.int64)
    if not np.array_equal(as_int, levels):
        raise SourceError(f"{src.path}: coordinate {src.name('level')} has non-integer values {list(levels)}; "
                          f"levels must be in whole hPa")
    return as_int


# ---- checks ----------------------------------------------------------------------------------------------
def check_coords(src: Source) -> Source:
    """Refuse missing, NaN, duplicated or unsorted coordinates, angles that are not degrees and times that are
    not dates (store.grid_problem, the rule WeatherStore applies too); relabel a longitude axis that wraps (see
    module doc)."""
    ds = src.ds
    for dim in ("latitude", "longitude"):
        if dim not in ds.dims:
            raise SourceError(f"{src.path}: no coordinate '{dim}' (has {list(ds.dims)})")
    problem = grid_problem(ds, src.name)
    if problem:
        raise SourceError(f"{src.path}: {problem}")
    if "time" in ds.dims:
        _check_increasing(src, "time", ds["time"].values)
    if "level" in ds.dims:
        _check_monotonic(src, "level", ds["level"].values)
    _check_monotonic(src, "latitude", ds["latitude"].values)
    lon = _unwrap_longitude(ds["longitude"].values)
    _check_increasing(src, "longitude", lon)
    if not np.array_equal(lon, ds["longitude"].values):
        src.ds = ds.assign_coords(longitude=lon)
    return src


def _check_monotonic(src: Source, dim: str, values: np.ndarray) -> None:
    if len(values) > 1 and values[1] < values[0]:
        values = values[::-1]
    _check_increasing(src, dim, values)


def _check_increasing(src: Source, dim: str, values: np.ndarray) -> None:
    if values.dtype.kind == "f" and not np.all(np.isfinite(values)):
        raise SourceError(f"{src.path}: coordinate {src.name(dim)} has NaN values")
    step = np.diff(values)
    bad = np.flatnonzero(step <= step.dtype.type(0)) if len(values) > 1 else []
    if len(bad):
        i = bad[0]
        what = "duplicated" if values[i] == values[i + 1] else "out of order"
        raise SourceError(f"{src.path}: coordinate {src.name(dim)} is not strictly monotonic: value {values[i + 1]} "
                          f"at index {i + 1} is {what} (after {values[i]})")


def _unwrap_longitude(lon: np.ndarray) -> np.ndarray:
    """A longitude axis with one wrap (a drop of ~360 deg) made increasing; anything else is returned as is
    (and then refused by the monotonicity check if it is not increasing)."""
    drops = np.flatnonzero(np.diff(lon) < -180)
    if len(drops) != 1:
        return lon
    out = lon.astype(np.float64).copy()
    out[drops[0] + 1:] += 360.0
    return out - 360.0 if out.max() > 360.0 else out  # 350..362 -> -10..2; 170..190 stays


def select(src: Source, variables: Optional[list], levels: Optional[list]) -> Source:
    """Keep the requested variables this source has, and the requested levels (all must exist)."""
    ds = src.ds
    if variables:
        ds = ds[[v for v in ds.data_vars if v in variables]]
    if levels and "level" in ds.dims:
        have = [int(v) for v in ds["level"].values]
        for var, da in ds.data_vars.items():
            missing = [lev for lev in levels if lev not in have]
            if "level" in da.dims and missing:
                raise SourceError(f"{src.path}: variable {src.name(var)} has no level {missing[0]} hPa on coordinate "
                                  f"{src.name('level')} (has {have})")
        ds = ds.sel(level=[lev for lev in have if lev in levels])  # in the file's order
    src.ds = ds
    return src


def finite_checker(sources: list[Source]):
    """The check of every block (and the static fields): refuse NaN/inf, naming the file, variable, time and
    grid point."""

    def origin(var, time) -> Source:
        for src in sources:
            if var in src.ds.data_vars and ("time" not in src.ds.dims or time in src.ds.indexes["time"]):
                return src
        return sources[0]

    def check(block: xr.Dataset) -> None:
        for var, da in block.data_vars.items():
            if da.dtype.kind != "f":
                continue
            bad = ~np.isfinite(da.values)
            if bad.any():
                where = dict(zip(da.dims, np.unravel_index(np.argmax(bad), bad.shape)))
                at = {d: block[d].values[i] for d, i in where.items()}
                src = origin(var, at.get("time"))
                coords = ", ".join(f"{src.name(d)}={v}" for d, v in at.items())
                raise SourceError(f"{src.path}: variable {src.name(var)} has NaN/inf at {coords}")

    return check


# ---- combining files -------------------------------------------------------------------------------------
@dataclass
class Part:
    """One consecutive piece of the store's time axis and the files it is read from."""
    ds: xr.Dataset
    files: list[str]


def combine(sources: list[Source]) -> list[Part]:
    """Consecutive parts of one time axis: files with the same variables are parts in time order, files
    with other variables are merged part by part, files without time give static fields (to part 0)."""
    timed = [s for s in sources if "time" in s.ds.dims]
    static = [s for s in sources if "time" not in s.ds.dims]
    if not timed:
        raise SourceError(f"{', '.join(s.path for s in sources)}: no variable has a time axis")
    groups: dict[frozenset, list[Source]] = {}
    for src in timed:
        groups.setdefault(frozenset(src.ds.data_vars), []).append(src)
    columns = [sorted(g, key=lambda s: s.ds["time"].values[0]) for g in groups.values()]
    if len({len(c) for c in columns}) > 1:
        raise SourceError("files with different variables cover different time ranges: "
                          + "; ".join(f"{', '.join(s.path for s in c)}" for c in columns))
    for column in columns:
        _check_part_order(column)
        _check_same_grid(column)
    parts = [Part(_merge(list(row)), list(dict.fromkeys(s.path for s in row))) for row in zip(*columns)]
    if static:
        parts[0] = Part(_merge([Source(",".join(parts[0].files), parts[0].ds)] + static),
                        parts[0].files + [s.path for s in static])
    return parts


def _check_same_grid(column: list[Source]) -> None:
    """Files joined along time must have the same grid and levels, value for value: the store has one
    coordinate for all of them, so a shifted or relabelled file would be stored on the wrong points."""
    first = column[0]
    for src in column[1:]:
        for dim in ("latitude", "longitude", "level"):
            a = first.ds[dim].values if dim in first.ds.dims else None
            b = src.ds[dim].values if dim in src.ds.dims else None
            if a is None and b is None:
                continue
            if a is None or b is None or len(a) != len(b):
                what = f"{0 if a is None else len(a)} values vs {0 if b is None else len(b)}"
            elif not np.array_equal(a, b):
                i = int(np.flatnonzero(a != b)[0])
                what = f"value {a[i]} vs {b[i]} at index {i}"
            else:
                continue
            raise SourceError(f"{first.path} and {src.path}: coordinate {src.name(dim)} differs ({what}); files "
                              f"joined along time must share their grid exactly (no regridding is done)")


def _merge(sources: list[Source]) -> xr.Dataset:
    if len(sources) == 1:
        return sources[0].ds
    try:
        return xr.merge([s.ds for s in sources], join="exact", compat="no_conflicts", combine_attrs="drop")
    except ValueError as e:
        dims = [d for d in DIMS if d in str(e)] or ["?"]
        files = ", ".join(dict.fromkeys(s.path for s in sources))
        raise SourceError(f"{files}: coordinate '{dims[0]}' differs between these sources, which must share it "
                          f"exactly (no regridding or time alignment is done): {e}") from None


def _check_part_order(column: list[Source]) -> None:
    for a, b in zip(column, column[1:]):
        if b.ds["time"].values[0] <= a.ds["time"].values[-1]:
            raise SourceError(f"{a.path} and {b.path}: coordinate 'time' overlaps (duplicated times: "
                              f"{b.ds['time'].values[0]} is in both)")


def mark_gaps(parts: list[Part]) -> list[Part]:
    """A `trajectory` coordinate, so that no (state, target) pair spans a break in the series: a new one
    starts where the time step is irregular (a gap, between files or inside one), where a source's own
    `trajectory` changes, and at each file of a source that has one. A regular series from sources without
    trajectories gets none."""
    times = np.concatenate([p.ds["time"].values for p in parts])
    starts = gap_starts(times)
    offset = 0
    for p in parts:
        n = p.ds.sizes["time"]
        if "trajectory" in p.ds.coords:
            own = p.ds["trajectory"].values
            starts[offset + 1:offset + n] |= own[1:] != own[:-1]
            starts[offset] = offset > 0
        offset += n
    if not starts.any():
        return [Part(p.ds.drop_vars("trajectory", errors="ignore"), p.files) for p in parts]
    traj = np.cumsum(starts)
    bounds = np.cumsum([0] + [p.ds.sizes["time"] for p in parts])
    return [Part(p.ds.assign_coords(trajectory=("time", traj[a:b])), p.files)
            for p, a, b in zip(parts, bounds, bounds[1:])]


def _note_unknown_names(used: list[Source]) -> None:
    """Variables whose names prepare does not know are kept as they are, and listed (one line), so that a
    misspelt or unmapped short name is seen rather than trained on under a name nothing asks for."""
    known = set(SHORT_NAMES.values()) | STATIC_NAMES
    unknown = {f"'{v}' ({s.path})" for s in used for v in s.ds.data_vars if v not in known}
    if unknown:
        print(f"jigsaw-data prepare: note: variables with names prepare does not know, kept as they are: "
              f"{', '.join(sorted(unknown))}", file=sys.stderr)


# ---- the command -----------------------------------------------------------------------------------------
@dataclass(frozen=True)
class PrepareOptions:
    """What `prepare` makes of its sources (the job key records them: another value is another store).

    variables, levels: the selection (default: every variable, every level); member: the ensemble member of a
    source that holds several. config: a jigsaw config whose data.variables/surface_variables/levels and
    model.static_variables are the default selection, whose model.patch is the patch, and whose grid checks the
    sources must pass. lat_chunk: latitude rows per chunk, a multiple of the patch (default: one patch row, so
    that any split over domain ranks reads whole chunks); lon_chunk: longitude columns per chunk (default:
    all); level_chunk: levels per chunk (default: all, as every rank reads every level); time_block: time steps
    per Dask task (default: about writer.BLOCK_BYTES); checksum: a crc32c on every chunk (docs/data.md: off
    reads 18-29% faster, but a flipped bit then reaches the model unnoticed); grid: [H, W] to interpolate every
    source to the global grid of H latitudes pole to pole and W longitudes (bilinear, on the workers: regrid.py;
    recorded in attrs['regrid']), default: the source grid kept exactly; climatology: write the
    climatology group where the times allow one."""
    variables: Optional[list] = None
    levels: Optional[list] = None
    member: int = 0
    patch: int = 4
    lat_chunk: int = 0
    lon_chunk: int = 0
    level_chunk: int = 0
    config: Optional[str] = None
    climatology: bool = True
    time_block: int = 0
    checksum: bool = True
    grid: Optional[list] = None


def open_layout(sources: list[str], opts: PrepareOptions):
    """Open, rename, select and check every source, and combine them: (parts, checked sources, patch,
    lat_chunk). With `opts.grid` = [H, W] the parts are the sources interpolated to that grid, lazily
    (regrid.py). Everything prepare refuses is refused here, before anything is written."""
    from .. import config as jconfig
    from .parallel_prepare import SOURCE

    variables, levels, patch = opts.variables, opts.levels, opts.patch
    cfg = jconfig.load(opts.config) if opts.config else None
    if cfg:
        variables = variables or cfg.data.variables + cfg.data.surface_variables + cfg.model.static_variables
        levels, patch = levels or cfg.data.levels, cfg.model.patch
    lat_chunk = opts.lat_chunk or patch
    if lat_chunk % patch:
        raise ConfigError(f"--lat-chunk {lat_chunk} is not a multiple of the patch {patch}: a rank's latitude "
                         f"band (whole patch rows) would cut chunks")
    wanted = [SHORT_NAMES.get(v, v) for v in variables] if variables else None
    levels = [int(v) for v in levels] if levels else None
    opened = [select(to_wb2(ds, path, opts.member), wanted, levels) for path in sources for ds in open_source(path)]
    _check_all_found(opened, wanted)
    used = [check_coords(s) for s in opened if s.ds.data_vars]
    parts = mark_gaps(combine(used))
    regrid = None
    if opts.grid:  # after combining: every source shares the grid, checked; the config checks the target grid
        from .regrid import Regrid

        regrid = Regrid.make(opts.grid, parts[0].ds["latitude"].values, parts[0].ds["longitude"].values,
                             ", ".join(dict.fromkeys(s.path for s in used)))
        parts = [Part(regrid.dataset(p.ds), p.files) for p in parts]
    if cfg:
        n_times = sum(p.ds.sizes["time"] for p in parts)
        jconfig.check_against_grid(cfg, parts[0].ds.sizes["latitude"], parts[0].ds["longitude"].values, n_times)
    _note_unknown_names(used)
    members = sorted({s.member for s in used if s.member is not None})
    for part in parts:
        part.ds.attrs = {"source": SOURCE, "files": [os.path.abspath(p) for p in sources],
                         "ensemble_member": members[0] if members else "none"}
        if regrid:
            part.ds.attrs["regrid"] = regrid.attrs()
    return parts, used, patch, lat_chunk


def _job(sources: list[str], out: str, opts: PrepareOptions):
    from .parallel_prepare import Job

    parts, used, patch, lat_chunk = open_layout(sources, opts)
    args = {**dataclasses.asdict(opts), "sources": [os.path.abspath(p) for p in sources], "patch": patch,
            "lat_chunk": lat_chunk, "config": os.path.abspath(opts.config) if opts.config else None}
    del args["grid"]  # recorded with the source grid it came from: another source grid is another job
    if opts.grid:
        args["regrid"] = parts[0].ds.attrs["regrid"]
    return Job.make(parts, out, check=finite_checker(used), args=args, lat_chunk=lat_chunk, lon_chunk=opts.lon_chunk,
                    level_chunk=opts.level_chunk, time_block=opts.time_block, climatology=opts.climatology,
                    checksum=opts.checksum)


def prepare(sources: list[str], out: str, progress: Optional[bool] = None, workers: int = 0,
            scheduler: Optional[str] = None, client=None, overwrite: bool = False, **options) -> str:
    """Ingest `sources` into a training store at `out`, as `options` (PrepareOptions' fields) say; return its path.

    Where the work runs (parallel_prepare.run): `client` (a dask.distributed Client), else a cluster at
    `scheduler`, else a LocalCluster of `workers` processes, else (workers=0) this process. An interrupted
    prepare run again with the same arguments resumes; one over a complete store does nothing. `out` must
    be new, an empty directory or a store prepare wrote; one of other arguments or sources is replaced only
    with `overwrite` (parallel_prepare.check_out).
    """
    from .parallel_prepare import run

    job = _job(sources, out, PrepareOptions(**options))
    return run(job, client=client, workers=workers, scheduler=scheduler,
               progress=sys.stderr.isatty() if progress is None else progress, overwrite=overwrite)


def plan(sources: list[str], out: str, workers: int = 1, **options) -> str:
    """What prepare would write (layout, blocks, bytes) and how long it would take on `workers` workers, from
    one block converted here into a scratch store (parallel_prepare.describe_plan); nothing at `out`."""
    from .parallel_prepare import describe_plan

    return describe_plan(_job(sources, out, PrepareOptions(**options)), workers)


def _check_all_found(opened: list[Source], wanted: Optional[list]) -> None:
    files = ", ".join(dict.fromkeys(s.path for s in opened))
    have = sorted({str(v) for s in opened for v in s.ds.data_vars})
    missing = [v for v in wanted or [] if not any(v in s.ds.data_vars for s in opened)]
    if missing:
        have = sorted({s.name(v) for s in opened for v in s.original if v not in s.ds.dims})
        raise SourceError(f"{files}: no variable '{missing[0]}' (variables there: {', '.join(have)})")
    if not have:
        raise SourceError(f"{files}: no data variables selected")

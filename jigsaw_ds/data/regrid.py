"""`jigsaw-data prepare --grid HxW`: every source interpolated to a regular global grid, block by block.

The target grid has H latitudes from pole to pole, both poles included (WeatherBench2's equiangular grid with
poles: 721 x 1440 at 0.25 deg, 1441 x 2880 at 0.125 deg), in the source's latitude order (prepare flips
nothing), and W longitudes from the source's first longitude (0 for ERA5) around the circle.

Method: bilinear, as two passes of numpy's 1-D linear interpolation (`numpy.interp`: along each source
column to the target latitudes, then along each row to the target longitudes), one 2-D field at a time, in
float64, rounded to the source's dtype. It reproduces a field that is linear in latitude and longitude within
each cell, and copies the value of a target point that is a source point exactly (numpy.interp returns the
node's value there). Measured against the alternatives (docs/data.md, "--grid"): xarray's `interp(method=
"linear")` (scipy's interp1d underneath) computes a node's value from the cell to its left, y[k-1] +
slope * dx, which is off by ~1e-13 next to a large neighbour (a zero precipitation becomes 1e-14), and was
1.3x slower; scipy's RegularGridInterpolator is exact but 6x slower; xESMF (conservative remapping) needs
ESMF, which is not on PyPI.
The longitude seam: the source's first column is appended again at its longitude + 360, so that a target
point between the last source column and 360 deg interpolates between the last and the first column. The
poles: the target has pole rows; a source without them, or a regional one, would have to be extrapolated
(numpy.interp would repeat its edge values), so such a source is refused before any work (`Regrid.make`).

`Regrid.dataset` gives the sources as a lazy dataset on the target grid: a field is interpolated only when
a task reads it (parallel_prepare's block and climatology tasks, on the Dask workers), so the job, its block
sizes, statistics and climatology all see the target grid and no process holds more than its block.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import numpy as np
import xarray as xr
from xarray.backends import BackendArray
from xarray.core import indexing

from ..errors import ConfigError, SourceError

METHOD = "bilinear (numpy.interp: latitude, then longitude, periodic)"
POLE_TOLERANCE = 1e-6  # deg: a source "pole" row written as 89.9999999 still counts as the pole


def _extent(values: np.ndarray) -> str:
    return f"{values[0]:g} .. {values[-1]:g}"


@dataclass(frozen=True)
class Regrid:
    """Bilinear interpolation from one source grid (that every source of a prepare shares) to the target."""
    src_lat: np.ndarray  # the source's latitudes, ascending
    src_lon: np.ndarray  # the source's longitudes, increasing, with the first again at + 360 (the seam)
    flip: bool  # the source's latitudes descend (its rows are reversed before interpolating)
    lat: np.ndarray  # the target's latitudes, in the source's order
    lon: np.ndarray  # the target's longitudes
    source_grid: str

    @classmethod
    def make(cls, grid: list, lat: np.ndarray, lon: np.ndarray, files: str) -> "Regrid":
        """The regrid of a source on (lat, lon) (latitude monotonic, longitude increasing: prepare's checks) to
        `grid` = [H, W]; a source that does not cover the whole target is refused, naming both grids."""
        n_lat, n_lon = (int(n) for n in grid)
        if n_lat < 2 or n_lon < 2:
            raise ConfigError(f"--grid {n_lat}x{n_lon}: needs at least 2 latitudes (the poles) and 2 longitudes")
        lat, lon = np.asarray(lat, np.float64), np.asarray(lon, np.float64)
        descending = len(lat) > 1 and lat[1] < lat[0]
        target_lat = np.linspace(90.0, -90.0, n_lat) if descending else np.linspace(-90.0, 90.0, n_lat)
        target_lon = lon[0] + np.arange(n_lon) * (360.0 / n_lon)
        seam = lon[0] + 360.0 - lon[-1]  # the step from the last column round to the first
        around = len(lon) > 1 and 0 < seam <= np.diff(lon).max() * (1 + 1e-9)
        poles = lat.min() <= -90.0 + POLE_TOLERANCE and lat.max() >= 90.0 - POLE_TOLERANCE
        source_grid = f"{len(lat)}x{len(lon)}"
        if not (around and poles):
            missing = [what for what, ok in (("both poles", poles), ("the whole circle of longitudes", around)) if not ok]
            raise SourceError(
                f"{files}: --grid {n_lat}x{n_lon} (latitude {_extent(target_lat)}, longitude {_extent(target_lon)}: "
                f"global, with both poles) lies outside the source grid {source_grid} (latitude {_extent(lat)}, "
                f"longitude {_extent(lon)}), which lacks {' and '.join(missing)}: interpolation would have to "
                f"extrapolate there; regrid only a global source with pole rows (as ERA5's 721 x 1440)")
        asc = lat[::-1] if descending else lat
        # (a pole written as 89.9999999: numpy.interp gives the target's 90 that row's values)
        return cls(asc, np.append(lon, lon[0] + 360.0), descending, target_lat, target_lon, source_grid)

    def attrs(self) -> dict:
        """What the store's attrs['regrid'] records."""
        return {"method": METHOD, "source_grid": self.source_grid, "grid": f"{len(self.lat)}x{len(self.lon)}",
                "source_latitude": _extent(self.src_lat[::-1] if self.flip else self.src_lat),
                "source_longitude": _extent(self.src_lon[:-1]), "seam": "periodic in longitude"}

    def field(self, x: np.ndarray, lat: Optional[np.ndarray] = None, lon: Optional[np.ndarray] = None) -> np.ndarray:
        """One 2-D source field (latitude, longitude) at the target points `lat` x `lon` (default: all), float64."""
        lat = self.lat if lat is None else lat
        lon = self.lon if lon is None else lon
        # the source's columns as rows, ascending in latitude, the first again at the end (the seam)
        columns = np.asarray(x, np.float64).T
        columns = np.concatenate([columns, columns[:1]])[:, ::-1 if self.flip else 1]
        rows = np.empty((len(columns), len(lat)))
        for j, column in enumerate(columns):
            rows[j] = np.interp(lat, self.src_lat, column)
        rows = np.ascontiguousarray(rows.T)
        out = np.empty((len(lat), len(lon)))
        for i, row in enumerate(rows):
            out[i] = np.interp(lon, self.src_lon, row)
        return out

    def dataset(self, ds: xr.Dataset) -> xr.Dataset:
        """`ds` on the target grid, lazily: variables with latitude and longitude are interpolated when read."""
        data = {}
        for name, da in ds.data_vars.items():
            if da.dims[-2:] == ("latitude", "longitude"):
                lazy = indexing.LazilyIndexedArray(_Regridded(da.variable, self))
                data[name] = xr.Variable(da.dims, lazy, attrs=da.attrs)
            else:
                data[name] = da.variable
        coords = {name: c.variable for name, c in ds.coords.items() if name not in ("latitude", "longitude")}
        coords["latitude"] = xr.Variable("latitude", self.lat, attrs=ds["latitude"].attrs)
        coords["longitude"] = xr.Variable("longitude", self.lon, attrs=ds["longitude"].attrs)
        return xr.Dataset(data, coords=coords, attrs=ds.attrs)


class _Regridded(BackendArray):
    """A source variable (..., latitude, longitude) as seen on the target grid: an index into it reads those
    steps and levels of the source and interpolates each field to the indexed target rows and columns."""

    def __init__(self, source: xr.Variable, regrid: Regrid):
        self.source, self.regrid = source, regrid
        self.shape = source.shape[:-2] + (len(regrid.lat), len(regrid.lon))
        # interpolated integers (a mask stored as int8) are fractions
        self.dtype = np.promote_types(source.dtype, np.float32)

    def __getitem__(self, key):
        return indexing.explicit_indexing_adapter(key, self.shape, indexing.IndexingSupport.BASIC, self._read)

    def _read(self, key: tuple) -> np.ndarray:
        *lead, lat_key, lon_key = key
        fields = np.asarray(self.source[tuple(lead)].values)  # only these steps and levels of the source
        lat, lon = np.atleast_1d(self.regrid.lat[lat_key]), np.atleast_1d(self.regrid.lon[lon_key])
        out = np.empty(fields.shape[:-2] + (len(lat), len(lon)), self.dtype)
        for i in np.ndindex(*fields.shape[:-2]):  # one field at a time: float64 temporaries of one field only
            out[i] = self.regrid.field(fields[i], lat, lon)
        squeeze = tuple(out.ndim - 2 + j for j, k in enumerate((lat_key, lon_key)) if not isinstance(k, slice))
        return out.squeeze(axis=squeeze) if squeeze else out

"""Streaming scores: metrics.py's metrics accumulated tile by tile and batch by batch, reduced once at the end.

Each metric of metrics.py is a mean over initialisation times t of global area-weighted means
<x>_t = sum_ij w_i x_ij / W (W = sum_ij w_i over the whole grid). A rank holds a tile of the grid for some of
the initial times; per forecast kind, lead k and channel c it keeps only
  se  = sum_t sum_(ij in tile) w_i (f - o)^2      summed over the replica and the data axis at the end:
                                                  RMSE = sqrt(se / (n_t W))
  err = sum_t sum_(ij in tile) w_i (f - o)        Bias = err / (n_t W)
  acc = sum_t <f'o'>_t / sqrt(<f'^2>_t <o'^2>_t)  f' = f - c, o' = o - c; the three spatial sums of each t are
                                                  completed over the replica as its batch is scored (small),
                                                  the ratios summed over the data axis at the end:
                                                  ACC = acc / n_t
so memory is O(regions x kinds x leads x channels), whatever the number of initial times and leads.

Regions follow the grid (region_weights): the whole grid is "global" where it covers the sphere, else "domain";
WeatherBench2's named regions (its latitude bands and lat/lon boxes) are scored where they lie inside the grid,
with the full grid's latitude weights restricted to the region's rows and columns (as WB2's SliceRegion), so
that <x>_region = sum_(region) w_i x_ij / sum_(region) w_i.

ZonalSpectrumSums keeps WeatherBench2's zonal energy spectrum the same way (see its docstring).
"""
from __future__ import annotations

import numpy as np

from ..grid import is_global_periodic_lon, lat_extent
from ..parallel.topology import reduce_sum

# WeatherBench2's named regions (the predefined regions of its evaluation script), in degrees, edges included:
# (south, north, west, east); west/east None: every longitude (a band); a box with west > east crosses 0 E
REGIONS = {"tropics": (-20.0, 20.0, None, None), "extra_tropics_north": (20.0, 90.0, None, None),
           "extra_tropics_south": (-90.0, -20.0, None, None), "arctic": (60.0, 90.0, None, None),
           "antarctic": (-90.0, -60.0, None, None), "europe": (35.0, 75.0, 347.5, 42.5),
           "north_america": (25.0, 60.0, 240.0, 285.0), "north_atlantic": (25.0, 65.0, 290.0, 350.0),
           "north_pacific": (25.0, 60.0, 145.0, 230.0), "east_asia": (25.0, 60.0, 102.5, 150.0),
           "ausnz": (-45.0, -12.5, 120.0, 175.0)}
EDGE = 1e-6  # degrees: a region edge this close to the grid's edge, or to a grid point, counts as on it


def covers_sphere(lat: np.ndarray, lon: np.ndarray) -> bool:
    """Whether the grid is the whole sphere: its longitudes close the circle and its cells reach both poles."""
    return is_global_periodic_lon(lon) and lat_extent(lat) == (-np.pi / 2, np.pi / 2)


def lies_inside(region: tuple, lat: np.ndarray, lon: np.ndarray) -> bool:
    """Whether the region (REGIONS' form) lies inside the grid's cells: scored under its name only then, never
    a part of it (a UK box holds no "europe")."""
    south, north, west, east = region
    lo, hi = np.rad2deg(lat_extent(lat))
    if south < lo - EDGE or north > hi + EDGE:
        return False
    if is_global_periodic_lon(lon):
        return True
    if west is None or len(lon) < 2:  # a band needs every longitude
        return False
    lon = np.asarray(lon, np.float64)  # increasing (the store's rule), -180..180 or 0..360
    first, last = lon[0] - (lon[1] - lon[0]) / 2, lon[-1] + (lon[-1] - lon[-2]) / 2
    start = first + (west - first + EDGE) % 360.0 - EDGE  # the box's west edge in the grid's own longitudes
    return start + (east - west) % 360.0 <= last + EDGE


def region_weights(lat: np.ndarray, lon: np.ndarray, weights: np.ndarray) -> dict:
    """{region: (row weights [n_lat], zero outside it; column mask [n_lon], 1 inside)}: the whole grid first
    ("global", or "domain" where the grid is not the whole sphere), then the named regions that lie inside the
    grid and hold at least one of its points."""
    lat, lon, weights = np.asarray(lat, np.float64), np.asarray(lon, np.float64), np.asarray(weights, np.float64)
    out = {"global" if covers_sphere(lat, lon) else "domain": (weights, np.ones(len(lon)))}
    for name, region in REGIONS.items():
        south, north, west, east = region
        rows = (lat >= south - EDGE) & (lat <= north + EDGE)
        cols = np.ones(len(lon), bool) if west is None else \
            (lon - west + EDGE) % 360.0 <= (east - west) % 360.0 + 2 * EDGE
        if lies_inside(region, lat, lon) and rows.any() and cols.any():
            out[name] = (np.where(rows, weights, 0.0), cols.astype(np.float64))
    return out


class ScoreSums:
    def __init__(self, kinds, n_leads: int, n_channels: int, lat: np.ndarray, lat_weights: np.ndarray, rows: slice,
                 lon: np.ndarray, cols: slice, groups):
        """lat, lat_weights, lon: the whole grid's rows and columns; rows, cols: this tile's."""
        self.kinds, self.groups = list(kinds), groups
        regions = region_weights(lat, lon, lat_weights)
        self.regions = list(regions)
        self.w = np.stack([regions[r][0][rows] for r in self.regions])                # [R, h]
        # the regions' distinct column masks on this tile (the bands share one: every column)
        masks = {}
        self.mask_of = np.array([masks.setdefault(regions[r][1][cols].tobytes(), len(masks)) for r in self.regions])
        self.masks = np.stack([np.frombuffer(m) for m in masks])                      # [U, w]
        self.total_weight = np.array([regions[r][0].sum() * regions[r][1].sum()
                                      for r in self.regions])[:, None, None, None]
        shape = (len(self.regions), len(self.kinds), n_leads, n_channels)
        self.se, self.err, self.acc = np.zeros(shape), np.zeros(shape), np.zeros(shape)
        self.count = np.zeros(n_leads)

    def add(self, k: int, forecasts: dict, truth: np.ndarray, clim: np.ndarray) -> None:
        """Lead k of a batch: forecasts {kind: [B, C, h, w]}, truth and climatology [B, C, h, w], physical units,
        this rank's tile. Collective over the replica (the batch's anomaly sums)."""
        def weighted(x: np.ndarray) -> np.ndarray:  # [C, h, w] -> sum over each region's part of the tile: [R, C]
            return np.einsum("chr,rh->rc", (x @ self.masks.T)[..., self.mask_of], self.w)

        # one sample at a time, columns summed before weighting: float64 temporaries of one [C, h, w] each
        parts = np.zeros((len(self.regions), len(self.kinds), 3) + truth.shape[:2])  # [R, kinds, 3, B, C]
        for b in range(truth.shape[0]):
            o, c = truth[b].astype(np.float64), clim[b].astype(np.float64)
            oa = o - c
            oo = weighted(oa * oa)
            for i, kind in enumerate(self.kinds):
                f = forecasts[kind][b].astype(np.float64)
                d, fa = f - o, f - c
                self.se[:, i, k] += weighted(d * d)
                self.err[:, i, k] += weighted(d)
                parts[:, i, 0, b], parts[:, i, 1, b], parts[:, i, 2, b] = weighted(fa * oa), weighted(fa * fa), oo
        sums = reduce_sum(parts, self.groups, "jigsaw")                        # [R, kinds, 3, B, C]
        with np.errstate(invalid="ignore", divide="ignore"):  # the climatology's own ACC is 0/0: NaN, as in WB2
            self.acc[:, :, k] += (sums[:, :, 0] / np.sqrt(sums[:, :, 1] * sums[:, :, 2])).sum(2)
        self.count[k] += truth.shape[0]

    def finalize(self) -> dict:
        """{region: {kind: {metric: [K, C]}}} on every rank (collective). Besides rmse, bias and acc: "se", the
        mean area-weighted squared error, from which vector metrics (wind) are formed."""
        se, err = reduce_sum(np.stack([self.se, self.err]), self.groups, "jigsaw")
        se, err, acc = reduce_sum(np.stack([se, err, self.acc]), self.groups, "data")
        n = reduce_sum(self.count.copy(), self.groups, "data")[None, None, :, None]
        mse, mean_err = se / (n * self.total_weight), err / (n * self.total_weight)
        return {region: {kind: {"rmse": np.sqrt(mse[r, i]), "bias": mean_err[r, i], "acc": acc[r, i] / n[0, 0],
                                "se": mse[r, i]}
                         for i, kind in enumerate(self.kinds)} for r, region in enumerate(self.regions)}


# the latitude band WeatherBench2's spectra plots average over (both hemispheres), degrees
SPECTRUM_LATITUDES = (30.0, 60.0)
EARTH_RADIUS_M = 6_371_000.0  # WB2's schema.EARTH_RADIUS_M


class ZonalSpectrumSums:
    """WeatherBench2's zonal energy spectrum (derived_variables.ZonalEnergySpectrum), streamed.

    Along a latitude circle of circumference C = 2 pi R cos(lat) with L points f[l]:
        F[k] = (1/L) sum_l f[l] exp(-2 pi i k l / L),   S[k] = C |F[k]|^2 for k = 0, 2 C |F[k]|^2 for 0 < k <= L/2
    (Parseval: sum_k S[k] = (C/L) sum_l |f[l]|^2). Here S is averaged over the initial times and over the rows
    with 30 <= |lat| <= 60, weighted by cos(lat), per zonal wavenumber k (WB2 interpolates each row to common
    frequencies first; by wavenumber, as here, is the form of its spectra plots in wavenumber).

    A rank holds columns a .. a+w-1 of each of its rows: its share of F is the rfft of its columns zero-padded
    to L, times exp(-2 pi i k a / L) / L, and the tensor group's shares add up to F (one all-reduce of the
    band's coefficients per batch). Rows are then summed locally, over the domain and data axes at the end.
    Only on full latitude circles: where the grid's longitudes do not close the circle (a regional box) the
    DFT of a row is not a zonal spectrum, and nothing is kept (`full_circle` False, finalize gives None).
    Memory: O(kinds x leads x channels x L/2), whatever the number of initial times.
    """

    def __init__(self, kinds, leads: list[int], channels: list[int], lat: np.ndarray, rows: slice, lon: np.ndarray,
                 cols: slice, groups):
        """leads, channels: the lead indices and channel indices to keep; lat, lon: the whole grid's."""
        self.kinds, self.leads, self.channels, self.groups = list(kinds), list(leads), list(channels), groups
        self.full_circle = is_global_periodic_lon(lon)
        lat = np.asarray(lat, np.float64)
        band = (np.abs(lat) >= SPECTRUM_LATITUDES[0]) & (np.abs(lat) <= SPECTRUM_LATITUDES[1])
        weight = np.where(band, np.cos(np.deg2rad(lat)), 0.0)
        self.total_weight = weight.sum()
        self.n_lon = len(lon)
        in_band = band[rows]
        self.rows = np.flatnonzero(in_band)                                  # this tile's band rows
        self.row_weight = weight[rows][in_band]
        self.circumference = 2 * np.pi * EARTH_RADIUS_M * np.cos(np.deg2rad(lat[rows][in_band]))
        k = np.arange(self.n_lon // 2 + 1)
        self.shift = np.exp(-2j * np.pi * k * cols.start / self.n_lon) / self.n_lon
        self.twice = np.where(k > 0, 2.0, 1.0)  # as WB2, the Nyquist coefficient of an even L included
        self.sums = np.zeros((len(self.kinds), len(self.leads), len(self.channels), len(k)))
        self.count = np.zeros(len(self.leads))

    def add(self, k: int, fields: dict) -> None:
        """Lead index k of a batch: fields {kind: [B, C, h, w]} (physical, this tile). Collective over the tensor
        group where lead k is kept (every rank of a replica calls it with the same k)."""
        if k not in self.leads or not self.full_circle:
            return
        j = self.leads.index(k)
        if len(self.rows):
            for i, kind in enumerate(self.kinds):
                f = fields[kind][:, self.channels][:, :, self.rows].astype(np.float64)
                coef = np.fft.rfft(f, n=self.n_lon, axis=-1) * self.shift          # [B, C, rows, K]: my share
                coef = reduce_sum(coef.view(np.float64), self.groups, "tensor").view(np.complex128)
                power = self.twice * np.abs(coef) ** 2 * self.circumference[:, None]
                self.sums[i, j] += np.einsum("bcrk,r->ck", power, self.row_weight)
        self.count[j] += next(iter(fields.values())).shape[0]

    def finalize(self):
        """{kind: [leads, channels, K]} on every rank (collective over the domain and data axes); None where the
        grid is not a full latitude circle."""
        if not self.full_circle:
            return None
        sums = reduce_sum(reduce_sum(self.sums, self.groups, "domain"), self.groups, "data")
        n = reduce_sum(self.count.copy(), self.groups, "data")
        mean = sums / (n[None, :, None, None] * self.total_weight)
        return {kind: mean[i] for i, kind in enumerate(self.kinds)}

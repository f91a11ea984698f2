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

Regions are WeatherBench2's (regions.py there): the full grid's latitude weights restricted to the region's
rows, so that <x>_region = sum_(region) w_i x_ij / sum_(region) w_i.

ZonalSpectrumSums keeps WeatherBench2's zonal energy spectrum the same way (see its docstring).
"""
from __future__ import annotations

import numpy as np
import torch
import torch.distributed as dist


# WeatherBench2's latitude bands (degrees north, inclusive), global first
REGIONS = {"global": (-90.0, 90.0), "tropics": (-20.0, 20.0), "extra_tropics_north": (20.0, 90.0),
           "extra_tropics_south": (-90.0, -20.0)}


def region_weights(lat: np.ndarray, weights: np.ndarray) -> dict:
    """{region: per-row weights, zero outside it} for the regions that hold at least one row of this grid."""
    out = {}
    for name, (lo, hi) in REGIONS.items():
        inside = (lat >= lo) & (lat <= hi)
        if inside.any():
            out[name] = np.where(inside, weights, 0.0)
    return out


def reduce_sum(values: np.ndarray, groups, axis: str) -> np.ndarray:
    """values summed over the ranks of `axis` (a copy; the array itself where the group has one rank). The
    numbers travel on the backend's device: the rank's GPU under NCCL, host memory under gloo."""
    if groups.size(axis) == 1:
        return values
    nccl = dist.get_backend(groups.handles[axis]) == "nccl"
    t = torch.from_numpy(np.ascontiguousarray(values)).to("cuda" if nccl else "cpu")
    dist.all_reduce(t, group=groups.handles[axis])
    return t.cpu().numpy()


class ScoreSums:
    def __init__(self, kinds, n_leads: int, n_channels: int, lat: np.ndarray, lat_weights: np.ndarray, rows: slice,
                 n_lon: int, groups):
        """lat, lat_weights: the whole grid's rows; rows: this tile's."""
        self.kinds, self.groups = list(kinds), groups
        regions = region_weights(np.asarray(lat), np.asarray(lat_weights, np.float64))
        self.regions = list(regions)
        self.w = np.stack([regions[r][rows] for r in self.regions])                   # [R, h]
        self.total_weight = np.array([regions[r].sum() * n_lon for r in self.regions])[:, None, None, None]
        shape = (len(self.regions), len(self.kinds), n_leads, n_channels)
        self.se, self.err, self.acc = np.zeros(shape), np.zeros(shape), np.zeros(shape)
        self.count = np.zeros(n_leads)

    def add(self, k: int, forecasts: dict, truth: np.ndarray, clim: np.ndarray) -> None:
        """Lead k of a batch: forecasts {kind: [B, C, h, w]}, truth and climatology [B, C, h, w], physical units,
        this rank's tile. Collective over the replica (the batch's anomaly sums)."""
        def weighted(rows: np.ndarray) -> np.ndarray:  # [C, h, w] -> sum over the tile with row weights: [R, C]
            return np.einsum("ch,rh->rc", rows.sum(-1), self.w)

        # one sample at a time, rows summed before weighting: float64 temporaries of one [C, h, w] each
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
    Memory: O(kinds x leads x channels x L/2), whatever the number of initial times.
    """

    def __init__(self, kinds, leads: list[int], channels: list[int], lat: np.ndarray, rows: slice, lon: np.ndarray,
                 cols: slice, groups):
        """leads, channels: the lead indices and channel indices to keep; lat, lon: the whole grid's."""
        self.kinds, self.leads, self.channels, self.groups = list(kinds), list(leads), list(channels), groups
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
        if k not in self.leads:
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

    def finalize(self) -> dict:
        """{kind: [leads, channels, K]} on every rank (collective over the domain and data axes)."""
        sums = reduce_sum(reduce_sum(self.sums, self.groups, "domain"), self.groups, "data")
        n = reduce_sum(self.count.copy(), self.groups, "data")
        mean = sums / (n[None, :, None, None] * self.total_weight)
        return {kind: mean[i] for i, kind in enumerate(self.kinds)}

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


class ScoreSums:
    def __init__(self, kinds, n_leads: int, n_channels: int, lat: np.ndarray, lat_weights: np.ndarray, rows: slice,
                 n_lon: int, groups):
        """lat, lat_weights: the whole grid's rows; rows: this tile's."""
        self.kinds, self.groups = list(kinds), groups
        regions = region_weights(np.asarray(lat), np.asarray(lat_weights, np.float64))
        self.regions = list(regions)
        self.w = np.stack([regions[r][rows] for r in self.regions])[:, None, None, :, None]  # [R, 1, 1, h, 1]
        self.total_weight = np.array([regions[r].sum() * n_lon for r in self.regions])[:, None, None, None]
        shape = (len(self.regions), len(self.kinds), n_leads, n_channels)
        self.se, self.err, self.acc = np.zeros(shape), np.zeros(shape), np.zeros(shape)
        self.count = np.zeros(n_leads)

    def add(self, k: int, forecasts: dict, truth: np.ndarray, clim: np.ndarray) -> None:
        """Lead k of a batch: forecasts {kind: [B, C, h, w]}, truth and climatology [B, C, h, w], physical units,
        this rank's tile. Collective over the replica (the batch's anomaly sums)."""
        o, c = truth.astype(np.float64)[None], clim.astype(np.float64)[None]
        oa, w = o - c, self.w
        parts = []
        for i, kind in enumerate(self.kinds):
            f = forecasts[kind].astype(np.float64)[None]
            d, fa = f - o, f - c
            self.se[:, i, k] += (w * d * d).sum((1, 3, 4))
            self.err[:, i, k] += (w * d).sum((1, 3, 4))
            parts.append(np.stack([(w * fa * oa).sum((3, 4)), (w * fa * fa).sum((3, 4)),
                                   (w * oa * oa).sum((3, 4))], axis=1))       # [R, 3, B, C]
        sums = self._sum(np.stack(parts, axis=1), "jigsaw")                    # [R, kinds, 3, B, C]
        with np.errstate(invalid="ignore", divide="ignore"):  # the climatology's own ACC is 0/0: NaN, as in WB2
            self.acc[:, :, k] += (sums[:, :, 0] / np.sqrt(sums[:, :, 1] * sums[:, :, 2])).sum(2)
        self.count[k] += truth.shape[0]

    def _sum(self, values: np.ndarray, axis: str) -> np.ndarray:
        if self.groups.size(axis) == 1:
            return values
        t = torch.from_numpy(np.ascontiguousarray(values))
        dist.all_reduce(t, group=self.groups.handles[axis])
        return t.numpy()

    def finalize(self) -> dict:
        """{region: {kind: {metric: [K, C]}}} on every rank (collective). Besides rmse, bias and acc: "se", the
        mean area-weighted squared error, from which vector metrics (wind) are formed."""
        se, err = self._sum(np.stack([self.se, self.err]), "jigsaw")
        se, err, acc = self._sum(np.stack([se, err, self.acc]), "data")
        n = self._sum(self.count.copy(), "data")[None, None, :, None]
        mse, mean_err = se / (n * self.total_weight), err / (n * self.total_weight)
        return {region: {kind: {"rmse": np.sqrt(mse[r, i]), "bias": mean_err[r, i], "acc": acc[r, i] / n[0, 0],
                                "se": mse[r, i]}
                         for i, kind in enumerate(self.kinds)} for r, region in enumerate(self.regions)}

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
so memory is O(kinds x leads x channels), whatever the number of initial times and leads.
"""
from __future__ import annotations

import numpy as np
import torch
import torch.distributed as dist


class ScoreSums:
    def __init__(self, kinds, n_leads: int, n_channels: int, row_weights: np.ndarray, total_weight: float, groups):
        self.kinds, self.groups = list(kinds), groups
        self.w = np.asarray(row_weights, np.float64)[None, None, :, None]  # this tile's rows
        self.total_weight = total_weight
        shape = (len(self.kinds), n_leads, n_channels)
        self.se, self.err, self.acc = np.zeros(shape), np.zeros(shape), np.zeros(shape)
        self.count = np.zeros(n_leads)

    def add(self, k: int, forecasts: dict, truth: np.ndarray, clim: np.ndarray) -> None:
        """Lead k of a batch: forecasts {kind: [B, C, h, w]}, truth and climatology [B, C, h, w], physical units,
        this rank's tile. Collective over the replica (the batch's anomaly sums)."""
        o, c = truth.astype(np.float64), clim.astype(np.float64)
        oa = o - c
        parts = []
        for i, kind in enumerate(self.kinds):
            f = forecasts[kind].astype(np.float64)
            d, fa = f - o, f - c
            self.se[i, k] += (self.w * d * d).sum((0, 2, 3))
            self.err[i, k] += (self.w * d).sum((0, 2, 3))
            parts.append(np.stack([(self.w * fa * oa).sum((2, 3)), (self.w * fa * fa).sum((2, 3)),
                                   (self.w * oa * oa).sum((2, 3))]))        # [3, B, C]
        sums = self._sum(np.stack(parts), "jigsaw")                          # [kinds, 3, B, C]
        with np.errstate(invalid="ignore", divide="ignore"):  # the climatology's own ACC is 0/0: NaN, as in WB2
            self.acc[:, k] += (sums[:, 0] / np.sqrt(sums[:, 1] * sums[:, 2])).sum(1)
        self.count[k] += truth.shape[0]

    def _sum(self, values: np.ndarray, axis: str) -> np.ndarray:
        if self.groups.size(axis) == 1:
            return values
        t = torch.from_numpy(np.ascontiguousarray(values))
        dist.all_reduce(t, group=self.groups.handles[axis])
        return t.numpy()

    def finalize(self) -> dict:
        """{kind: {metric: [K, C]}} on every rank (collective)."""
        se, err = self._sum(np.stack([self.se, self.err]), "jigsaw")
        se, err, acc = self._sum(np.stack([se, err, self.acc]), "data")
        n = self._sum(self.count.copy(), "data")[None, :, None]
        return {kind: {"rmse": np.sqrt(se[i] / (n[0] * self.total_weight)), "bias": err[i] / (n[0] * self.total_weight),
                       "acc": acc[i] / n[0]} for i, kind in enumerate(self.kinds)}

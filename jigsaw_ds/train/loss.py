"""Latitude-area-weighted MSE, WeatherBench2's weighting, summed correctly across a model replica."""
from __future__ import annotations

import numpy as np
import torch


def lat_cell_weights(lat_deg) -> np.ndarray:
    """WeatherBench2's latitude weights: the area of each latitude cell, normalised to mean 1.

    Cell bounds are the midpoints between neighbouring latitudes: w_i = sin(upper_i) - sin(lower_i), then
    w / mean(w). The outermost bound is the pole when the pole is less than one grid step beyond the last
    row (every global grid: a pole-including grid gets half-width pole cells, as in WB2), else half a step
    beyond the last row (a regional grid: its edge rows get ordinary cells, not the cap up to the pole).
    Works for ascending or descending latitude (the order of the input is kept).
    """
    lat = np.asarray(lat_deg, dtype=np.float64)
    if lat.size == 1:
        return np.ones(1)
    order = np.argsort(lat)
    rad = np.deg2rad(lat[order])
    step_south, step_north = rad[1] - rad[0], rad[-1] - rad[-2]
    south = -np.pi / 2 if rad[0] - step_south <= -np.pi / 2 + 1e-9 else rad[0] - step_south / 2
    north = np.pi / 2 if rad[-1] + step_north >= np.pi / 2 - 1e-9 else rad[-1] + step_north / 2
    bounds = np.concatenate([[south], (rad[:-1] + rad[1:]) / 2, [north]])
    area = np.sin(bounds[1:]) - np.sin(bounds[:-1])
    weights = np.empty_like(area)
    weights[order] = area / area.mean()
    return weights


class AreaWeightedMSE:
    """loss = sum_{b,c,i,j} w_i (pred - target)^2 / (B C H W) over the whole globe, w = lat_cell_weights.

    A rank sees only its tile: it returns its part of that sum (divided by the global count), so that the
    parts of all ranks of a replica add up to the loss, and back-propagating each part on its own rank
    gives the replica's gradient. `channel_weights` (optional) weight each output channel.
    """

    def __init__(self, row_weights: torch.Tensor, n_lat: int, n_lon: int, channel_weights=None):
        self.row_weights = torch.as_tensor(row_weights, dtype=torch.float32)
        self.grid_points = n_lat * n_lon
        self.channel_weights = None if channel_weights is None else torch.as_tensor(channel_weights).float()

    def __call__(self, pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        b, c = pred.shape[:2]
        if self.row_weights.device != pred.device:  # once: a copy from host memory would sync every step
            self.row_weights = self.row_weights.to(pred.device)
            if self.channel_weights is not None:
                self.channel_weights = self.channel_weights.to(pred.device)
        err = (pred - target).square() * self.row_weights.to(pred.dtype).view(1, 1, -1, 1)
        if self.channel_weights is not None:
            err = err * self.channel_weights.to(pred.dtype).view(1, -1, 1, 1)
        return err.sum() / (b * c * self.grid_points)

"""Latitude-area-weighted MSE, WeatherBench2's weighting, summed correctly across a model replica."""
from __future__ import annotations

import torch



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

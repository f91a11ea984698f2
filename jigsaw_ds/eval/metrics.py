"""WeatherBench2's deterministic metrics, one small class each.

Arrays are xarray DataArrays with dims (time, ..., latitude, longitude), `time` being the initialisation
time; any other dims (prediction_timedelta, level, ...) are kept. w_i are WeatherBench2's latitude
weights (cell area from latitude edges, mean 1: grid.lat_cell_weights); <.> is the area-weighted
spatial mean  <x> = sum_ij w_i x_ij / sum_ij w_i.
"""
from __future__ import annotations

import numpy as np
import xarray as xr

from ..grid import lat_cell_weights


def spatial_mean(x: xr.DataArray) -> xr.DataArray:
    """<x>: area-weighted mean over latitude and longitude."""
    w = xr.DataArray(lat_cell_weights(x["latitude"].values), dims=["latitude"], coords={"latitude": x["latitude"]})
    return x.weighted(w).mean(["latitude", "longitude"])


class RMSE:
    """RMSE = sqrt( mean_t <(f - o)^2>_t ): the spatial mean of the squared error per initialisation time,
    then the mean over initialisation times, and the square root last (WB2's default)."""

    def compute(self, forecast: xr.DataArray, truth: xr.DataArray, climatology=None) -> xr.DataArray:
        return np.sqrt(spatial_mean((forecast - truth) ** 2).mean("time"))


class Bias:
    """Bias = mean_t <f - o>_t."""

    def compute(self, forecast: xr.DataArray, truth: xr.DataArray, climatology=None) -> xr.DataArray:
        return spatial_mean(forecast - truth).mean("time")


class ACC:
    """Anomaly correlation, uncentred, against the climatology c at the valid time:
    f' = f - c, o' = o - c;  ACC = mean_t  <f' o'>_t / sqrt(<f'^2>_t <o'^2>_t)."""

    def compute(self, forecast: xr.DataArray, truth: xr.DataArray, climatology: xr.DataArray = None) -> xr.DataArray:
        if climatology is None:
            raise ValueError("ACC needs a climatology at the valid times")
        fa, oa = forecast - climatology, truth - climatology
        return (spatial_mean(fa * oa) / np.sqrt(spatial_mean(fa ** 2) * spatial_mean(oa ** 2))).mean("time")


METRICS = {"rmse": RMSE(), "bias": Bias(), "acc": ACC()}

"""Per-grid-point quantities that depend only on latitude and longitude: WeatherBench2's area weights and the
coordinate features fed to the model. Training (loss), evaluation (metrics) and data (inputs) all use them, so
they live here rather than in any one of those packages. Each rank calls them on its own tile's coordinates,
so they are sliced exactly like the data (DESIGN section 3)."""
from __future__ import annotations

import numpy as np

N_COORD_FEATURES = 3  # coord_features' channels


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
    south, north = lat_extent(lat)
    bounds = np.concatenate([[south], (rad[:-1] + rad[1:]) / 2, [north]])
    area = np.sin(bounds[1:]) - np.sin(bounds[:-1])
    weights = np.empty_like(area)
    weights[order] = area / area.mean()
    return weights


def lat_extent(lat_deg) -> tuple[float, float]:
    """(south, north) outer edges of the grid's cells in radians, lat_cell_weights' rule: a pole where the pole
    is less than one grid step beyond the outermost row (every global grid), else half a step beyond it."""
    rad = np.deg2rad(np.sort(np.asarray(lat_deg, dtype=np.float64)))
    if rad.size == 1:
        return float(rad[0]), float(rad[0])
    step_south, step_north = rad[1] - rad[0], rad[-1] - rad[-2]
    south = -np.pi / 2 if rad[0] - step_south <= -np.pi / 2 + 1e-9 else rad[0] - step_south / 2
    north = np.pi / 2 if rad[-1] + step_north >= np.pi / 2 - 1e-9 else rad[-1] + step_north / 2
    return float(south), float(north)


def coord_features(lat_deg: np.ndarray, lon_deg: np.ndarray) -> np.ndarray:
    """[3, h, w]: sin(lat), cos(lat) cos(lon), cos(lat) sin(lon) (smooth on the sphere, poles included)."""
    phi, lam = np.deg2rad(lat_deg)[:, None], np.deg2rad(lon_deg)[None, :]
    ones = np.ones((len(lat_deg), len(lon_deg)))
    return np.stack([np.sin(phi) * ones, np.cos(phi) * np.cos(lam), np.cos(phi) * np.sin(lam)]).astype(np.float32)


def is_global_periodic_lon(lon_deg) -> bool:
    """Whether the longitudes are n evenly spaced points that close the circle (step x n = 360 degrees): then
    column n - 1 neighbours column 0, and rolling the field by whole columns is a rotation of the globe."""
    lon = np.asarray(lon_deg, dtype=np.float64)
    if lon.size < 2:
        return False
    step = np.diff(lon)
    return bool(np.allclose(step, step[0], atol=1e-6) and abs(abs(step[0]) * lon.size - 360.0) < 1e-6 * lon.size)

"""ModelShape: a WeatherMixer's config and the grid and channel counts it runs on.

The one description of a model's size: a training run's (`train/run.Run.shape`, from its store), a saved run's
(`ModelShape.of_record` of config.json's `model_shape`), and the performance model's and planner's (perf/, from
a config alone: `ModelShape.from_config`, the grid from `resolve_grid`).
"""
from __future__ import annotations

import dataclasses
import os
import re
from dataclasses import dataclass
from typing import Optional

from ..config import ConfigError, JigsawConfig, ModelConfig
from ..parallel.partition import TokenPartition
from ..parallel.topology import Layout
from .flops import n_tokens, train_flops_per_sample


@dataclass(frozen=True)
class ModelShape:
    """A WeatherMixer's config and the grid and channel counts it runs on."""
    cfg: ModelConfig
    n_lat: int
    n_lon: int
    c_in: int
    c_out: int

    @property
    def n_tokens(self) -> int:
        return n_tokens(self.n_lat, self.n_lon, self.cfg.patch)

    def partition(self, layout: Layout) -> TokenPartition:
        return TokenPartition(self.n_lat, self.n_lon, self.cfg.patch, layout.domain, layout.tensor)

    def with_depth(self, depth: int) -> "ModelShape":
        return dataclasses.replace(self, cfg=dataclasses.replace(self.cfg, depth=depth))

    def train_flops_per_sample(self) -> int:
        return train_flops_per_sample(self.cfg, self.n_lat, self.n_lon, self.c_in, self.c_out)

    def build(self, groups=None, seed: int = 0):
        """The WeatherMixer of this shape at the layout of `groups` (default: one process)."""
        from .weather_mixer import WeatherMixer

        return WeatherMixer(self.cfg, self.n_lat, self.n_lon, self.c_in, self.c_out, groups, seed=seed)

    def record(self) -> dict:
        """The sizes as a run's config.json and every checkpoint record them (`model_shape`, beside the grid's
        coordinates: model/inputs.py)."""
        return {"n_lat": self.n_lat, "n_lon": self.n_lon, "in_channels": self.c_in, "out_channels": self.c_out}

    @classmethod
    def of_record(cls, cfg: ModelConfig, record: dict) -> "ModelShape":
        """The shape a `model_shape` record (and the run's model config) describes: the inverse of `record`."""
        return cls(cfg, int(record["n_lat"]), int(record["n_lon"]), int(record["in_channels"]),
                   int(record["out_channels"]))

    @classmethod
    def from_config(cls, cfg: JigsawConfig, grid: Optional[tuple[int, int]] = None) -> "ModelShape":
        """Channels from the config's variable lists (all levels: the store's); the grid from `grid`, else
        `resolve_grid`."""
        from ..data.store import channel_names
        from .inputs import InputSpec

        n_lat, n_lon = grid or resolve_grid(cfg)
        levels = list(cfg.data.levels)
        if cfg.data.variables and not levels and os.path.exists(cfg.data.store):
            import xarray as xr

            levels = [int(v) for v in xr.open_zarr(cfg.data.store, chunks=None)["level"].values]
        if cfg.data.variables and not levels:
            raise ConfigError("data.levels is empty (all levels of the store) and the store cannot be read: "
                              "list the levels in the config")
        channels = channel_names(cfg.data.variables, levels, cfg.data.surface_variables)
        return cls(cfg.model, n_lat, n_lon, InputSpec.of(cfg, channels).n_in, len(channels))


def resolve_grid(cfg: JigsawConfig) -> tuple[int, int]:
    """The grid of the config's data: the store's coordinates if it exists, else data.generate's grid,
    else a WeatherBench2 equiangular grid with poles named in the store path ('0.25deg', '0p25deg' or
    '025deg' -> 721 x 1440; '0125deg' -> 1441 x 2880)."""
    path = cfg.data.store
    if path and os.path.exists(path):
        import xarray as xr

        ds = xr.open_zarr(path, chunks=None)
        return ds.sizes["latitude"], ds.sizes["longitude"]
    if cfg.data.generate:
        from ..data.generate import generated_grid

        n_lat, n_lon = generated_grid(cfg.data.generate)
        return int(n_lat), int(n_lon)
    # '0.25deg', '0p25deg', and '025deg' / '0125deg' (a leading zero is the decimal point, as in era5_0125deg)
    match = re.search(r"(\d+)(?:[.p](\d+))?\s*deg", os.path.basename(path))
    if match:
        whole, frac = match.groups()
        if frac is None and len(whole) > 1 and whole.startswith("0"):
            whole, frac = "0", whole[1:]
        res = float(f"{whole}.{frac or 0}")
        n_lon = 360 / res if res > 0 else 0
        if n_lon < 1 or abs(n_lon - round(n_lon)) > 1e-6 or round(n_lon) % 2:
            raise ConfigError(f"data.store '{path}': {res:g} deg does not divide the circle into an even number of "
                              f"longitudes: give --grid HxW")
        return round(n_lon) // 2 + 1, round(n_lon)
    raise ConfigError(f"cannot tell the grid of data.store '{path}' (it does not exist and names no resolution): "
                      f"give --grid HxW")

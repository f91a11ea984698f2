"""Forecasts from Python: load a trained WeatherMixer and forecast from an xarray Dataset, in this process.

    import xarray as xr
    from jigsaw_ds import Forecaster

    fc = Forecaster.load("runs/quickstart")        # a run directory, a checkpoint folder or a layout-free file
    ds = xr.open_zarr("data/quickstart.zarr")       # lazy: only the states a forecast starts from are read
    out = fc.forecast(ds, steps=8, init_times=["2020-01-05T00"])   # time, prediction_timedelta, [level,] lat, lon

It is jigsaw-forecast's engine (eval/evaluate.py, eval/forecast_store.py) in one process, with no launcher and
no process group (the serial model: every collective is the identity): the Dataset is read as a store is
(data/store.WeatherStore over it), checked against what the model was trained on (evaluate.open_matching_store,
model/inputs.py: the channels, the grid, the time step; a missing variable is one error naming it), its inputs
assembled as in training (evaluate.forecast_inputs: history, static fields, coordinates, forcings) and rolled
out by the model (evaluate.forecast_batch: model.rollout). So it gives jigsaw-forecast's numbers (tests/test_eval.py).
Under the launcher, at other layouts, use jigsaw-forecast.
"""
from __future__ import annotations

import warnings
from typing import Optional, Sequence, Union

import numpy as np
import torch
import xarray as xr

from .errors import EvalError
from .eval.evaluate import (check_members, compute_device, forecast_batch, forecast_inputs, given_inits, load_members,
                            open_matching_store, precision_context)
from .eval.forecast_store import forecast_dataset, forecast_pieces, lead_times, provenance
from .parallel.topology import JigsawGroups


class Forecaster:
    """A trained WeatherMixer (or a seed ensemble of them: their mean forecast), ready to forecast from
    xarray Datasets in this process. Make one with Forecaster.load."""

    def __init__(self, models: list, cfg, run_config: dict, paths: list[str], device: torch.device, precision: str):
        self.models, self.cfg, self.run_config, self.paths = models, cfg, run_config, paths
        self.device, self.precision = device, precision
        self.groups = JigsawGroups.serial()

    @classmethod
    def load(cls, checkpoint: Union[str, Sequence[str]], device: str = "auto", precision: str = "fp32") -> "Forecaster":
        """checkpoint: a run directory (its newest complete checkpoint), a checkpoint folder or a layout-free
        file (`jigsaw-ckpt export`), whatever layout trained it; several (a list, or comma-separated) are a
        seed ensemble, which must agree on their inputs. device: auto (the GPU where CUDA is present), cpu
        or cuda; precision: fp32, or bf16 (autocast; the state fed back stays fp32). Raises EvalError (a
        ValueError) naming what is wrong."""
        paths = [p for p in (checkpoint.split(",") if isinstance(checkpoint, str) else checkpoint) if p]
        if not paths:
            raise EvalError("Forecaster.load: no checkpoint named")
        on = compute_device(device, precision)
        check_members(paths)
        with warnings.catch_warnings():  # torch's "assuming ... a single process": so it is, on purpose
            warnings.filterwarnings("ignore", message="torch.distributed is disabled, unavailable or uninitialized")
            models, cfg, run_config = load_members(paths, JigsawGroups.serial())
        return cls([m.to(on) for m in models], cfg, run_config, paths, on, precision)

    @property
    def channels(self) -> list[str]:
        """The channels the model reads and predicts, in its order ('temperature_850', '2m_temperature', ...)."""
        return list(self.run_config.get("channels") or [])

    def forecast(self, ds: xr.Dataset, steps: int, init_times: Optional[Sequence] = None,
                 batch: int = 1) -> xr.Dataset:
        """The forecast of `steps` model steps (data.lead_steps store steps each) from each of `init_times`.

        ds: the initial states in a training store's layout (time, [level,] latitude, longitude; WB2 names),
        e.g. xr.open_zarr of a store jigsaw-data wrote, or a part of one: the trained variables and levels
        (others are ignored), static fields, the trained grid (in another exact order it is read in the
        trained one) and, where the model reads history (model.history_steps), the states before each initial
        time. The inputs are normalised with the statistics the run recorded (those of its training store), so
        any Dataset of the trained variables will do (a run recorded before 2026-12-07 has none: then the
        Dataset's `jigsaw_stats` attribute, as a store's). A Dataset of one time steps by the model's recorded
        time step.
        init_times: times of ds (datetime64 or text such as "2020-01-05T00"); default its last time.
        batch: initial times rolled out together.

        Returns an xarray Dataset in memory (numpy, float32): dims time (the initial times),
        prediction_timedelta (the leads), [level,] latitude, longitude; the trained variables and levels, ds's
        coordinates, units and long names, and provenance attributes. Memory: that output, which the caller
        asks to hold, plus one forecast step of `batch` initial times (and their inputs) at a time; ds is read
        lazily, only the states the forecast starts from. Raises StoreError / EvalError (ValueErrors) naming
        what does not match the trained inputs (a missing variable or level, another grid or time step, an
        initial time ds does not hold)."""
        for name, value in (("steps", steps), ("batch", batch)):
            if value < 1:
                raise EvalError(f"Forecaster.forecast: {name} must be >= 1, got {value}")
        store = open_matching_store(ds, self.cfg, self.run_config)
        if not store.time_step:  # a Dataset of one time has no time step of its own: the model's
            hours = self.run_config.get("model_shape", {}).get("time_step_hours")
            if not hours:
                raise EvalError("the given Dataset holds one time and the checkpoint does not record its time "
                                "step: give the Dataset the times around the initial one")
            store.time_step = np.timedelta64(round(hours * 3600), "s").astype("timedelta64[ns]")
        lead = self.cfg.data.lead_steps
        inits = given_inits(store, [store.times[-1]] if init_times is None else list(init_times),
                            lead * self.cfg.model.history_steps)
        out = forecast_dataset(store, store.times[inits], lead_times(store, lead, steps),
                               provenance(self.paths, self.run_config, store.path, store.times[inits]))
        whole = slice(None)  # one process: its tile is the grid
        dataset, blocks = forecast_inputs(store, inits, self.cfg, whole, whole), store.variable_blocks()
        with torch.no_grad(), precision_context(self.device, self.precision):
            for lo in range(0, len(inits), batch):
                items = list(range(lo, min(lo + batch, len(inits))))
                _, forecasts = forecast_batch(self.models, dataset, items, steps, self.device, self.groups)
                for k, values in enumerate(forecasts):
                    for var, index, piece in forecast_pieces(blocks, lo, k, values, whole, whole):
                        out[var].data[index] = piece
        return out

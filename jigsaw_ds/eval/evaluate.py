"""The engine of jigsaw-eval and jigsaw-forecast (their arguments: eval/cli.py): autoregressive rollouts
scored with WeatherBench2's metrics against persistence and climatology, in one process or under the
launcher at any layout. It plans (members: checkpoint/weights.py; the store, initial times, leads, this rank's
tile, the climatology) and runs the rollouts into their sinks: the score sums (eval/streaming.py), the
forecast store (eval/forecast_store.py); rank 0 then writes the reports (eval/reports.py).

    jigsaw-eval --checkpoint RUN_DIR|CKPT_DIR|FILE[,...] --data STORE --out DIR [--lead-steps K] [--inits N]
                [--device auto|cpu|cuda] [--precision fp32|bf16] [--climatology WB2_CLIM.zarr] [--overwrite]
    torchrun --nproc_per_node 8 -m jigsaw_ds.eval.cli ... --domain 2 --tensor 2     # data axis: 8 / 4

The ranks split the initial times over the data axis and each field over domain x tensor as in training:
each rank reads only its tile of the initial states, the truth and the climatology, rolls out its tile (the
Jigsaw model at that layout, weights read straight from the sharded checkpoint: each rank its own shards),
writes its tile of every forecast into forecast.zarr and keeps running sums of the scores (eval/streaming.py),
reduced once at the end. No process holds a whole field; memory does not grow with initial times or leads.
On GPUs (--device auto: the rank's GPU where CUDA is present, NCCL) the rollout runs there, in fp32 or under
bf16 autocast (--precision; the state fed back stays fp32); scores are summed on the host in float64.
The checkpoint is a run directory (its newest complete checkpoint), one checkpoint folder, or a layout-free
FILE (`jigsaw-ckpt export`); several, comma-separated, make a seed ensemble: the forecast is their mean (each
rank holds every member's share of the weights), and they must agree on the data and inputs. Initial times are the held-out part of the store (the validation split the
trainer used: last trajectories, or last times) whose whole rollout stays in one trajectory.
Writes to DIR (refused where DIR holds an earlier evaluation's or forecast's outputs; --overwrite removes them
first, so that no old scores stay beside a new forecast):
  forecast.zarr  WeatherBench2 forecast layout: dims time (initialisation), prediction_timedelta,
                 [level,] latitude, longitude; WB2 names, the source store's units and long names (not its
                 other attributes, e.g. GRIB_dataType 'an'); provenance attributes (checkpoints, steps, runs,
                 channels, data, initial times, command, version, date). Chunks: one time, one lead, a rank's
                 columns and a latitude band that divides every rank's rows, so that no two ranks write one chunk
  scores.json, scores.csv   RMSE, ACC and bias per region, channel and lead for model, persistence,
                 climatology (and the wind-vector RMSE); throughput (initial times and forecast steps per second).
                 Regions: "global" (a regional grid: "domain" instead), then WB2's bands and boxes (tropics,
                 europe, ...) that lie inside the grid (eval/streaming.py)
  headline.csv   WB2's headline variables present (z500, t850, q700, wind vector 850, t2m, 10 m wind, msl):
                 global (or domain) RMSE of each forecast and the model's ACC per lead
  scores_model.nc, scores_persistence.nc, scores_climatology.nc   WB2's results layout: one variable per
                 WB2 variable (and wind_vector, 10m_wind_vector), dims metric (rmse, mse, bias, acc), region,
                 lead_time[, level] (skipped with a note when no netCDF writer is installed)
  spectra.nc, spectra.png   WB2's zonal energy spectrum of the model and the truth at the first, middle and
                 last lead, mean over 30-60 deg N and S (headline channels present; eval/streaming.py);
                 only where the longitudes close the circle (a regional grid: a note instead)
  rmse.png, acc.png, maps_<channel>.png   scores vs lead; truth / forecast / error maps at a few leads, north
                 up by their coordinates (read back decimated; eval/plots.py); skipped with a note when
                 matplotlib is missing
Climatology (the climatology forecast and the anomalies of ACC): --climatology names a WB2-format store
(dims hour, dayofyear, [level,] latitude, longitude; e.g. WB2's 1990-2019 ERA5 climatology), read tile by
tile at each valid time. Without it: per grid point mean of training times (never the held-out ones) by day
of year and hour when they cover every day of the year twice per hour, else by hour of day, else one mean
(data/climatology.py, the rule `prepare` uses for the store's climatology group); every training time is then
read once (each rank its tile).
"""
from __future__ import annotations

import json
import os
import resource
import sys
import time
from typing import Optional

import numpy as np
import torch
import torch.distributed as dist

from ..checkpoint.manager import source_config
from ..checkpoint.weights import load_model
from ..config import ConfigError
from ..data.climatology import Climatology, GivenClimatology
from ..data.dataset import PairDataset, split_train_val
from ..data.store import WeatherStore
from ..errors import EvalError, RankLocalError
from ..grid import lat_cell_weights
from ..model import ensemble_mean, inputs
from ..parallel.topology import Layout, init_distributed, initialize, reduce_sum
from .forecast_store import ForecastWriter, create_forecast_store, forecast_chunks, lead_times, provenance
from .reports import KINDS, scores_to_rows, spectrum_channels, write_reports
from .streaming import ScoreSums, ZonalSpectrumSums

PRECISIONS = {"fp32": None, "bf16": torch.bfloat16}


def check_members(paths: list[str]) -> None:
    """The members of an ensemble read the same inputs and are scored on the same held-out times
    (model/inputs.py's MEMBER_KEYS), from their configs alone; EvalError naming the member and every key that
    differs from the first's, with both values."""
    first = inputs.of_run(source_config(paths[0]))
    for path in paths[1:]:
        try:
            inputs.check_same(first, inputs.of_run(source_config(path)), inputs.MEMBER_KEYS,
                              f"ensemble member '{path}'", f"the first ('{paths[0]}')")
        except inputs.InputsDiffer as e:
            raise EvalError(str(e)) from None


def load_members(paths: list[str], groups):
    """The models of `paths` (load_model each, after check_members) and the first one's configs."""
    members = [load_model(path, groups) for path in paths]
    _, cfg, run_config = members[0]
    return [model for model, _, _ in members], cfg, run_config


def open_matching_store(data: str, cfg, run_config: dict) -> WeatherStore:
    """The store's channels selected by the names the model was trained on, in its order (a store may hold
    the same levels in another order), on the model's grid: its coordinates (where the run recorded them) and
    time step; a store that holds that grid in another exact order (latitudes reversed, longitudes rolled:
    model/inputs.reorder_of) is read in the trained order, said in one line; EvalError naming what differs
    otherwise."""
    trained = run_config.get("channels")  # by name, in the trained order (a store may hold its levels otherwise)
    # normalised as in training (the run's record), not by the store's own statistics: a store of other times
    # (a test year prepared on its own) has other means and spreads; a run recorded before 2026-12-07 has none
    store = WeatherStore(data, cfg.data.variables, cfg.data.surface_variables, cfg.data.levels,
                         cfg.model.static_variables, statistics=run_config.get("statistics"), channels=trained)
    data = store.path  # data may be an xarray Dataset (jigsaw_ds.inference): the messages name it so
    shape = run_config["model_shape"]
    if (store.n_lat, store.n_lon) != (shape["n_lat"], shape["n_lon"]):
        raise EvalError(f"store '{data}' is on a {store.n_lat}x{store.n_lon} grid; the model was trained on "
                        f"{shape['n_lat']}x{shape['n_lon']}")
    record, given = inputs.of_run(run_config), inputs.of_store(store)
    flip, shift = inputs.reorder_of(record, given) or (False, 0)  # None: check_same names what differs
    if flip or shift:
        store.reorder(flip, shift)
    try:
        inputs.check_same(record, inputs.of_store(store), inputs.STORE_KEYS, f"store '{data}'",
                          "the model was trained on")
    except inputs.InputsDiffer as e:
        raise EvalError(str(e)) from None
    if (flip or shift) and (not dist.is_initialized() or dist.get_rank() == 0):
        lat, lon, trained_lon = given["latitude"], given["longitude"], record["longitude"]
        orders = ([f"latitudes in reverse order ({'south to north' if lat[0] < lat[-1] else 'north to south'})"]
                  if flip else [])
        orders += [f"longitudes {lon[0]:g}..{lon[-1]:g}, the trained {trained_lon[0]:g}..{trained_lon[-1]:g} "
                   f"rolled by {shift} columns"] if shift else []
        print(f"jigsaw-eval: store '{data}' holds {' and '.join(orders)}: read in the trained order")
    return store


# What jigsaw-eval and jigsaw-forecast write into --out (maps_<channel>.png too): another command's are never
# overwritten without --overwrite, nor left beside new ones with it
OUTPUTS = ("forecast.zarr", "forecast.json", "scores.json", "scores.csv", "headline.csv", "spectra.nc",
           "spectra.png", "rmse.png", "acc.png") + tuple(f"scores_{kind}.nc" for kind in KINDS)


def earlier_outputs(out: str) -> list[str]:
    if not os.path.isdir(out):
        return []
    return sorted(n for n in os.listdir(out) if n in OUTPUTS or (n.startswith("maps_") and n.endswith(".png")))


def check_out(out: str, overwrite: bool) -> None:
    """--out is a folder this command may write: EvalError where it is a file, or holds an earlier
    evaluation's or forecast's outputs and --overwrite is not given."""
    if os.path.exists(out) and not os.path.isdir(out):
        raise EvalError(f"--out {out} is a file, not a directory")
    earlier = earlier_outputs(out)
    if earlier and not overwrite:
        raise EvalError(f"--out {out} holds the outputs of an earlier evaluation or forecast ({', '.join(earlier)}): "
                        f"pass --overwrite to replace them, or choose another --out")


def remove_outputs(out: str) -> None:
    """--overwrite: the earlier outputs go before any new one is written (no old scores beside a new forecast)."""
    import shutil

    for name in earlier_outputs(out):
        path = os.path.join(out, name)
        shutil.rmtree(path) if os.path.isdir(path) else os.remove(path)


def check_finite(values: np.ndarray, store: WeatherStore, times: np.ndarray, what: str, groups) -> None:
    """values [B, C, h, w] (this tile) at store time indices times [B]: refuse NaN/inf, naming channel and time.
    Agreed over the replica (a collective), so that no rank is left waiting in the next one."""
    bad = ~np.isfinite(values).reshape(*values.shape[:2], -1).all(axis=-1)
    message = ""
    if bad.any():
        b, c = np.argwhere(bad)[0]
        message = (f"store '{store.path}': {what} of channel '{store.channels[c].name}' at time "
                   f"{store.times[times[b]]} has NaN/inf")
    if groups.size("jigsaw") > 1:
        if reduce_sum(np.array([1.0 if message else 0.0]), groups, "jigsaw")[0]:
            messages = [None] * groups.size("jigsaw")
            dist.all_gather_object(messages, message, group=groups.handles["jigsaw"])
            message = next(m for m in messages if m)
    if message:  # only this replica knows: every rank of it raises, its first rank says it (the other
        # replicas are ended by the launcher)
        raise RankLocalError(message, say=groups.jigsaw_rank == 0)


def spread_inits(store: WeatherStore, starts: np.ndarray, n: int, all_hours: bool = False) -> np.ndarray:
    """n of the held-out initial times `starts`, evenly spread over them; at 00 and 12 UTC where the store has
    such times, unless all_hours (WeatherBench2's initial times: a sub-daily store would otherwise mix hours
    whose forecasts differ in skill by the hour of day)."""
    hours = (store.times[starts] - store.times[starts].astype("datetime64[D]")) // np.timedelta64(1, "h")
    synoptic = starts if all_hours else starts[hours % 12 == 0]
    pool = synoptic if len(synoptic) else starts
    return pool[np.linspace(0, len(pool) - 1, min(n, len(pool))).astype(int)]


def given_inits(store: WeatherStore, init_times: list, before: int = 0) -> np.ndarray:
    """Store time indices of the given initial times; EvalError naming the first the store does not hold, or
    whose input history (`before` store steps back, model.history_steps) it does not hold in the same run."""
    out = []
    for text in init_times:
        t = np.datetime64(text, "ns")
        hit = np.flatnonzero(store.times == t)
        if not len(hit):
            raise EvalError(f"initial time {text} is not a time of store '{store.path}' "
                            f"({store.times[0]} .. {store.times[-1]}, every {store.time_step / np.timedelta64(1, 'h'):g} h)")
        i = int(hit[0])
        if i < before or store.trajectory[i - before] != store.trajectory[i]:
            raise EvalError(f"initial time {text}: the model takes as input the states up to {before} store time "
                            f"steps before it (model.history_steps x data.lead_steps), and store '{store.path}' "
                            f"does not hold them in the same run")
        out.append(i)
    return np.array(out)


def compute_device(device: str, precision: str) -> torch.device:
    """The device the rollout runs on: "auto" is this rank's GPU where CUDA is present, else the CPU."""
    if precision not in PRECISIONS:
        raise EvalError(f"--precision must be one of {sorted(PRECISIONS)}, got '{precision}'")
    if device not in ("auto", "cpu", "cuda"):
        raise EvalError(f"--device must be auto, cpu or cuda, got '{device}'")
    if device == "cuda" and not torch.cuda.is_available():
        raise EvalError("--device cuda: this machine has no CUDA device (use --device cpu or auto)")
    use_cuda = device == "cuda" or (device == "auto" and torch.cuda.is_available())
    return torch.device("cuda", torch.cuda.current_device()) if use_cuda else torch.device("cpu")


def precision_context(on: torch.device, precision: str):
    """The autocast context of --precision (fp32: none) for a rollout on device `on`."""
    return torch.autocast(on.type, dtype=PRECISIONS[precision], enabled=PRECISIONS[precision] is not None)


def forecast_inputs(store: WeatherStore, inits: np.ndarray, cfg, lat: slice, lon: slice) -> PairDataset:
    """The model's inputs from the store's time indices `inits` on the tile (lat, lon), as the model was
    trained to read them (history, static fields, coordinates, forcings): item i starts at inits[i]."""
    spec = inputs.InputSpec.of(cfg, [c.name for c in store.channels])
    return spec.pairs(store, inits, lat, lon, rollout=0)  # inputs only


def forecast_batch(models: list, dataset: PairDataset, items: list, steps: int, on: torch.device, groups):
    """The forecast from items `items` of `dataset` (forecast_inputs): (their initial states, a generator of
    the forecast at each of the `steps` leads), [B, C, h, w] float32 numpy in physical units, this rank's tile.
    The inputs are refused where NaN/inf (a collective over the replica); each model (several: a seed
    ensemble, their mean) rolls out with model.rollout, so the caller holds one lead at a time. Iterate it
    under torch.no_grad() (and precision_context)."""
    store = dataset.store
    mean, std = store.mean[None, :, None, None], store.std[None, :, None, None]
    x = dataset.read_batch(items)[0]
    n_out, times = len(store.channels), dataset.starts[items]
    initial = x[:, :n_out].numpy() * std + mean
    check_finite(initial, store, times, "an initial state", groups)
    for j in range(1, dataset.history + 1):  # the history the model reads with it
        check_finite(x[:, j * n_out:(j + 1) * n_out].numpy() * std + mean, store, times - j * dataset.lead,
                     "an input-history state", groups)
    forcings = dataset.forcings_for(items, steps)
    forcings = forcings.to(on) if forcings is not None else None
    rollouts = ensemble_mean(m.rollout(x.to(on), steps, forcings) for m in models)
    return initial, (pred.float().cpu().numpy() * std + mean for pred in rollouts)


def evaluate(checkpoint: str, data: str, out: str, lead_steps: int, n_inits: int = 32, plots: bool = True,
             domain: int = 1, tensor: int = 1, batch: int = 4, init_times: Optional[list] = None,
             device: str = "auto", precision: str = "fp32", climatology: Optional[str] = None,
             overwrite: bool = False, all_hours: bool = False) -> list[dict]:
    """Collective over the launched ranks (one process: a world of one); returns the score rows on every rank.
    init_times (jigsaw-forecast): forecasts from those times only, no scoring (leads may run past the store).
    overwrite: replace an earlier evaluation's or forecast's outputs in `out` (else refused). all_hours: scored
    initial times at every hour, not only 00 and 12 UTC (spread_inits)."""
    for name, value in (("--lead-steps", lead_steps), ("--inits", n_inits), ("--batch", batch)):
        if value < 1:
            raise EvalError(f"{name} must be >= 1, got {value}")
    if init_times is not None and not init_times:
        raise EvalError("--init-times lists no initial time")
    # bad options, outputs and ensembles refused before any process group starts
    compute_device(device, precision)
    check_out(out, overwrite)
    paths = [p for p in checkpoint.split(",") if p]
    if not paths:
        raise EvalError("--checkpoint names no checkpoint")
    check_members(paths)
    scoring = init_times is None
    rank, world, _ = init_distributed(backend="gloo" if device == "cpu" else None)
    on = compute_device(device, precision)  # after init_distributed: the rank's GPU is the current device
    layout = Layout.for_world(world, domain, tensor)
    groups = initialize(layout)
    t_start = time.perf_counter()
    models, cfg, run_config = load_members(paths, groups)
    for model in models:
        model.to(on)
    autocast = precision_context(on, precision)
    store = open_matching_store(data, cfg, run_config)
    lead = cfg.data.lead_steps
    before = lead * cfg.model.history_steps  # a forecast starts from its initial state and this much history
    if scoring:
        try:  # the trainer's cut (it does not depend on the span): held-out initial times, training times
            train_starts, _ = split_train_val(store, lead, cfg.data.val_fraction)
            _, val_starts = split_train_val(store, lead * lead_steps, cfg.data.val_fraction, before)
        except ConfigError:
            raise EvalError(f"the split of '{data}' (data.val_fraction = {cfg.data.val_fraction}) leaves no held-out "
                            f"initial time that allows a {lead_steps}-step rollout (--lead-steps) after "
                            f"{cfg.model.history_steps} steps of input history (model.history_steps)") from None
        inits = spread_inits(store, val_starts, n_inits, all_hours)
    else:
        inits = given_inits(store, init_times, before)
    leads = lead_times(store, lead, lead_steps)

    # this rank: a contiguous block of the initial times (data axis), a tile of the grid (domain x tensor)
    d = groups.data_rank
    first, last = d * len(inits) // layout.data, (d + 1) * len(inits) // layout.data
    part = models[0].partition
    lat, lon = part.lat_slice(groups.domain_rank), part.lon_slice(groups.tensor_rank)
    if scoring:
        sums = ScoreSums(KINDS, lead_steps, len(store.channels), store.lat, lat_cell_weights(store.lat), lat,
                         store.lon, lon, groups)
        spectrum_leads, channels = sorted({0, lead_steps // 2, lead_steps - 1}), spectrum_channels(store)
        spectra = ZonalSpectrumSums(("model", "truth"), spectrum_leads, channels, store.lat, lat, store.lon, lon,
                                    groups)
        if climatology:
            clim = GivenClimatology(climatology, store, lat, lon)
        else:
            clim = Climatology(store.times[train_starts], lambda i: store.read_raw([int(train_starts[i])], lat, lon)[0])

    path = os.path.join(out, "forecast.zarr")
    if rank == 0:
        os.makedirs(out, exist_ok=True)
        if overwrite:
            remove_outputs(out)
        create_forecast_store(path, store, store.times[inits], leads, forecast_chunks(part, groups),
                              provenance(paths, run_config, data, store.times[inits]))
    dist.barrier()
    writer = ForecastWriter(path, store.variable_blocks(), lat, lon)
    t_rollout = time.perf_counter()
    dataset = forecast_inputs(store, inits, cfg, lat, lon)
    # rank 0's share of initial times x leads, as the trainer shows its steps: a bar, and a plain line per batch
    # where stderr is not a terminal (a log file)
    command, progress = ("jigsaw-eval" if scoring else "jigsaw-forecast"), None
    share = " (rank 0's share)" if layout.data > 1 else ""
    if rank == 0 and sys.stderr.isatty():
        from tqdm import tqdm

        progress = tqdm(total=(last - first) * lead_steps, desc=f"{command}: initial times x leads{share}",
                        unit="step", dynamic_ncols=True)
    with torch.no_grad(), autocast:
        for lo in range(first, last, batch):
            items = list(range(lo, min(lo + batch, last)))
            initial, forecasts = forecast_batch(models, dataset, items, lead_steps, on, groups)
            for k, forecast in enumerate(forecasts):
                if scoring:
                    valid = inits[items] + lead * (k + 1)
                    truth = store.read_raw(list(valid), lat, lon)
                    check_finite(truth, store, valid, "the truth", groups)
                    clim_k = clim.at(store.times[valid])
                    sums.add(k, {"model": forecast, "persistence": initial, "climatology": clim_k}, truth, clim_k)
                    spectra.add(k, {"model": forecast, "truth": truth})
                writer.write(lo, k, forecast.astype(np.float32))
                if progress:
                    progress.update(len(items))
            if rank == 0 and not progress:
                print(f"{command}: {items[-1] + 1 - first}/{last - first} initial times x {lead_steps} leads{share} "
                      f"in {time.perf_counter() - t_rollout:.1f} s", flush=True)
        writer.wait()
    if progress:
        progress.close()
    seconds = time.perf_counter() - t_rollout
    if scoring:
        scores = sums.finalize()
        rows, spectrum = scores_to_rows(scores, store, leads), spectra.finalize()
    else:
        rows = []
    peak = [None] * world  # each process's peak resident memory (MB): bounded by its tile, not the globe
    dist.all_gather_object(peak, resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024)
    if rank == 0:
        throughput = {"initial_times_per_s": len(inits) / seconds, "forecast_steps_per_s": len(inits) * lead_steps / seconds,
                      "rollout_and_scoring_s": seconds, "total_s": time.perf_counter() - t_start,
                      "layout": vars(layout), "device": str(on) if on.type == "cpu" else torch.cuda.get_device_name(on),
                      "precision": precision, "peak_rss_mb_per_rank": peak}
        with open(os.path.join(out, "scores.json" if scoring else "forecast.json"), "w") as f:
            json.dump({"checkpoint": checkpoint, "data": data, "inits": len(inits),
                       "init_times": [str(t)[:19] for t in store.times[inits]], "climatology": climatology,
                       "throughput": throughput, "rows": rows}, f, indent=1)
        if scoring:
            write_reports(out, rows, scores, spectrum, store, inits, lead, leads, spectrum_leads, channels, plots)
    return rows

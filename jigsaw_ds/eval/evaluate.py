"""jigsaw-eval: autoregressive rollouts scored with WeatherBench2's metrics against persistence and climatology.

    jigsaw-eval --checkpoint RUN_DIR|CKPT_DIR|FILE --data STORE --out DIR [--lead-steps K] [--inits N]

The checkpoint is a run directory (its newest complete checkpoint), one checkpoint folder, or a layout-free
FILE (`jigsaw-ckpt export`): a model trained at any layout is read into one process (issue 16 makes this
parallel). Initial times are the held-out part of the store (the validation
split the trainer used: last trajectories, or last times) whose whole rollout stays in one trajectory.
Writes to DIR:
  forecast.zarr  WeatherBench2 forecast layout: dims time (initialisation), prediction_timedelta,
                 [level,] latitude, longitude; WB2 names and physical units
  scores.json, scores.csv   RMSE, ACC and bias per channel and lead for model, persistence, climatology
  rmse.png, acc.png, maps_<channel>.png   scores vs lead; truth / forecast / error maps at a few leads
Climatology: per grid point mean of training times (never the held-out ones) by day of year and hour when
they cover every day of the year twice per hour, else by hour of day, else one mean (data/climatology.py,
the rule `prepare` uses for the store's climatology group), taken at the valid time. Every training time
is read once for it; WB2's official climatology (1990-2019, smoothed over days of year) remains the
reference for scores on real ERA5.
"""
from __future__ import annotations

import argparse
import csv
import json
import os
import sys

import numpy as np
import torch
import xarray as xr

from ..quiet import quiet_libraries
from ..checkpoint.layout_free import build_model
from ..checkpoint.manager import load_full
from ..config import ConfigError, from_dict
from ..data.climatology import Climatology
from ..data.dataset import PairDataset, split_train_val
from ..data.store import WeatherStore
from ..model import rollout as model_rollout
from .metrics import METRICS

BASELINES = ("persistence", "climatology")


class EvalError(ValueError):
    """jigsaw-eval cannot do what it was asked; the message says why."""


def load_model(path: str):
    """Serial WeatherMixer, jigsaw config and the run's resolved config (grid, channel names) from a
    layout-free checkpoint file, a checkpoint folder or a run directory (its newest complete checkpoint)."""
    state = load_full(path, moments=False)
    model = build_model(state["config"])
    model.load_full_state_dict({**state["model"], **state["buffers"]})
    return model.eval(), from_dict(state["config"]["jigsaw"]), state["config"]


def open_matching_store(data: str, cfg, run_config: dict) -> WeatherStore:
    """The store's channels selected by the names the model was trained on, in its order (a store may hold
    the same levels in another order), on the model's grid; EvalError naming what differs otherwise."""
    trained = run_config.get("channels") or []
    levels = cfg.data.levels
    if cfg.data.variables and not levels and trained:  # "all levels" at training time: the trained order
        prefix = f"{cfg.data.variables[0]}_"
        levels = [int(name[len(prefix):]) for name in trained if name.startswith(prefix)]
    store = WeatherStore(data, cfg.data.variables, cfg.data.surface_variables, levels, cfg.model.static_variables)
    names = [c.name for c in store.channels]
    if trained and names != trained:
        raise EvalError(f"store '{data}' gives channels {names}; the model was trained on {trained}")
    shape = run_config["model_shape"]
    if (store.n_lat, store.n_lon) != (shape["n_lat"], shape["n_lon"]):
        raise EvalError(f"store '{data}' is on a {store.n_lat}x{store.n_lon} grid; the model was trained on "
                        f"{shape['n_lat']}x{shape['n_lon']}")
    return store


def check_finite(values: np.ndarray, store: WeatherStore, times: np.ndarray, what: str) -> None:
    """values [n, K, C, H, W] at store time indices times [n, K]: refuse NaN/inf, naming channel and time."""
    bad = ~np.isfinite(values).reshape(*values.shape[:3], -1).all(axis=-1)
    if bad.any():
        i, k, c = np.argwhere(bad)[0]
        raise EvalError(f"store '{store.path}': {what} of channel '{store.channels[c].name}' at time "
                        f"{store.times[times[i, k]]} has NaN/inf")


@torch.no_grad()
def rollout(model, dataset: PairDataset, k_steps: int, batch: int = 8) -> np.ndarray:
    """[n_init, K, C, H, W] normalised forecasts: x_{k+1} = model([x_k, static]). Any model works that maps
    [B, C_in, H, W] to the next state [B, C, H, W] and says C as `model.out_channels`."""
    out = []
    for lo in range(0, len(dataset), batch):
        items = range(lo, min(lo + batch, len(dataset)))
        x = torch.stack([dataset[i][0] for i in items])
        forcings = dataset.forcings_for(items, k_steps)  # computed for every lead, advancing with time
        out.append(np.stack([p.numpy() for p in model_rollout(model, x, k_steps, model.out_channels, forcings)],
                            axis=1))
    return np.concatenate(out)


def training_climatology(store: WeatherStore, train_times: np.ndarray) -> Climatology:
    """The climatology baseline: mean physical state of the training times, by day of year and hour or by
    hour (data.climatology.grouping decides from those times); one pass reading each of them once."""
    full = slice(0, None)
    return Climatology(store.times[train_times], lambda i: store.read_raw([int(train_times[i])], full, full)[0])


def reference_forecasts(store: WeatherStore, inits: np.ndarray, train_starts: np.ndarray, lead: int,
                        lead_steps: int):
    """What every forecast is scored against, in physical units, [n_init, K, C, H, W] each:
    (truth, persistence, climatology at the valid time, lead times as timedelta64)."""
    full = slice(0, None)
    valid = inits[:, None] + lead * np.arange(1, lead_steps + 1)[None, :]
    truth = np.stack([store.read_raw(list(v), full, full) for v in valid])
    persistence = np.repeat(store.read_raw(list(inits), full, full)[:, None], lead_steps, axis=1)
    clim = training_climatology(store, train_starts).at(store.times[valid])
    steps = np.diff(store.times)
    step = steps[steps > np.timedelta64(0)].min()  # the store's time step (a gap is longer)
    leads = np.array([(k + 1) * lead * step for k in range(lead_steps)]).astype("timedelta64[ns]")
    return truth, persistence, clim, leads


def to_dataset(values: np.ndarray, store: WeatherStore, init_times, leads) -> xr.Dataset:
    """[n_init, K, C, H, W] physical values -> WB2 forecast layout, one variable per store variable."""
    coords = {"time": init_times, "prediction_timedelta": leads, "latitude": store.lat, "longitude": store.lon}
    data = {}
    for var in dict.fromkeys(c.var for c in store.channels):
        idx = [i for i, c in enumerate(store.channels) if c.var == var]
        if store.channels[idx[0]].level_index is None:
            data[var] = (("time", "prediction_timedelta", "latitude", "longitude"), values[:, :, idx[0]])
        else:
            levels = [int(store.ds["level"].values[store.channels[i].level_index]) for i in idx]
            coords["level"] = levels  # WB2 stores share one level axis; a config selects the same levels for all
            data[var] = (("time", "prediction_timedelta", "level", "latitude", "longitude"),
                         values[:, :, idx])
    return xr.Dataset(data, coords=coords)


def score(forecasts: dict, truth: np.ndarray, clim: np.ndarray, store: WeatherStore, leads) -> list[dict]:
    """Rows: channel, lead, metric, and one column per forecast (model, persistence, climatology)."""
    dims = ("time", "prediction_timedelta", "latitude", "longitude")
    coords = {"prediction_timedelta": leads, "latitude": store.lat, "longitude": store.lon}
    rows = []
    for c, ch in enumerate(store.channels):
        da = lambda a: xr.DataArray(a[:, :, c], dims=dims, coords=coords)
        truth_c, clim_c = da(truth), da(clim)
        results = {name: {m: metric.compute(da(f), truth_c, clim_c).values for m, metric in METRICS.items()}
                   for name, f in forecasts.items()}
        for k, lead in enumerate(leads):
            hours = int(lead / np.timedelta64(1, "h"))
            for m in METRICS:
                rows.append({"channel": ch.name, "lead_hours": hours, "metric": m,
                             **{name: float(results[name][m][k]) for name in forecasts}})
    return rows


def plot(rows: list[dict], forecasts: dict, truth: np.ndarray, store: WeatherStore, leads, out: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    channels = [c.name for c in store.channels]
    for metric in ("rmse", "acc"):
        fig, axes = plt.subplots(1, len(channels), figsize=(3.2 * len(channels), 3), squeeze=False)
        for ax, ch in zip(axes[0], channels):
            sel = [r for r in rows if r["channel"] == ch and r["metric"] == metric]
            for name in forecasts:
                ax.plot([r["lead_hours"] for r in sel], [r[name] for r in sel], marker="o", label=name)
            ax.set_title(ch, fontsize=9)
            ax.set_xlabel("lead (h)")
        axes[0][0].set_ylabel(metric.upper())
        axes[0][0].legend(fontsize=7)
        fig.tight_layout()
        fig.savefig(os.path.join(out, f"{metric}.png"), dpi=80)
        plt.close(fig)
    show = sorted({0, len(leads) // 2, len(leads) - 1})
    for c, ch in enumerate(channels[:4]):
        fig, axes = plt.subplots(len(show), 3, figsize=(10, 2.2 * len(show)), squeeze=False)
        for row, k in enumerate(show):
            t, f = truth[0, k, c], forecasts["model"][0, k, c]
            lim = np.abs(f - t).max()
            for ax, img, title, kw in ((axes[row][0], t, "truth", {}), (axes[row][1], f, "forecast", {}),
                                       (axes[row][2], f - t, "error", {"cmap": "RdBu_r", "vmin": -lim, "vmax": lim})):
                im = ax.imshow(img, **kw)
                ax.set_title(f"{title} +{int(leads[k] / np.timedelta64(1, 'h'))} h", fontsize=8)
                ax.axis("off")
                fig.colorbar(im, ax=ax, shrink=0.7)
        fig.suptitle(ch)
        fig.tight_layout()
        fig.savefig(os.path.join(out, f"maps_{ch}.png"), dpi=70)
        plt.close(fig)


def evaluate(checkpoint: str, data: str, out: str, lead_steps: int, n_inits: int = 32, plots: bool = True) -> list[dict]:
    for name, value in (("--lead-steps", lead_steps), ("--inits", n_inits)):
        if value < 1:
            raise EvalError(f"{name} must be >= 1, got {value}")
    model, cfg, run_config = load_model(checkpoint)
    store = open_matching_store(data, cfg, run_config)
    lead = cfg.data.lead_steps
    span = lead * lead_steps
    try:  # the trainer's cut (it does not depend on the span): held-out initial times, training times
        train_starts, _ = split_train_val(store, lead, cfg.data.val_fraction)
        _, val_starts = split_train_val(store, span, cfg.data.val_fraction)
    except ConfigError:
        raise EvalError(f"the split of '{data}' (data.val_fraction = {cfg.data.val_fraction}) leaves no held-out "
                        f"initial time that allows a {lead_steps}-step rollout (--lead-steps)") from None
    inits = val_starts[np.linspace(0, len(val_starts) - 1, min(n_inits, len(val_starts))).astype(int)]
    full = slice(0, None)
    dataset = PairDataset(store, inits, lead, full, full, cfg.model.coord_features,
                          forcings=cfg.model.forcings, forcings_at_target=cfg.model.forcings_at_target)
    mean, std = store.mean[:, None, None], store.std[:, None, None]
    model_fc = rollout(model, dataset, lead_steps) * std + mean
    truth, persistence, clim, leads = reference_forecasts(store, inits, train_starts, lead, lead_steps)
    valid = inits[:, None] + lead * np.arange(1, lead_steps + 1)[None, :]
    check_finite(truth, store, valid, "the truth")
    check_finite(persistence[:, :1], store, inits[:, None], "an initial state")
    forecasts = {"model": model_fc, "persistence": persistence, "climatology": clim}

    os.makedirs(out, exist_ok=True)
    to_dataset(model_fc, store, store.times[inits], leads).to_zarr(os.path.join(out, "forecast.zarr"), mode="w")
    rows = score(forecasts, truth, clim, store, leads)
    with open(os.path.join(out, "scores.json"), "w") as f:
        json.dump({"checkpoint": checkpoint, "data": data, "inits": len(inits), "rows": rows}, f, indent=1)
    with open(os.path.join(out, "scores.csv"), "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    if plots:
        plot(rows, forecasts, truth, store, leads, out)
    return rows


def main(argv=None) -> int:
    quiet_libraries(0)
    ap = argparse.ArgumentParser(prog="jigsaw-eval", description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--checkpoint", required=True, help="run directory, checkpoint folder or layout-free file")
    ap.add_argument("--data", required=True, help="zarr store to evaluate on (held-out split)")
    ap.add_argument("--out", required=True)
    ap.add_argument("--lead-steps", type=int, default=4, help="rollout length in model steps")
    ap.add_argument("--inits", type=int, default=32, help="number of initial times")
    ap.add_argument("--no-plots", action="store_true")
    args = ap.parse_args(argv)
    torch.set_num_threads(max(1, os.cpu_count() or 1))
    try:
        rows = evaluate(args.checkpoint, args.data, args.out, args.lead_steps, args.inits, not args.no_plots)
    except ValueError as e:  # EvalError, ConfigError, StoreError: bad input, said in one line
        print(f"jigsaw-eval: error: {e}", file=sys.stderr)
        return 2
    print(f"{'channel':24s} {'lead h':>6s} {'model':>10s} {'persist':>10s} {'clim':>10s}   (RMSE)")
    for r in rows:
        if r["metric"] == "rmse":
            print(f"{r['channel']:24s} {r['lead_hours']:6d} {r['model']:10.4g} {r['persistence']:10.4g} "
                  f"{r['climatology']:10.4g}")
    print(f"jigsaw-eval: wrote forecast.zarr, scores.json, scores.csv and plots to {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

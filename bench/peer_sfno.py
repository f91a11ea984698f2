"""Peer benchmark: WeatherMixer vs torch-harmonics' Spherical Fourier Neural Operator on shallow-water data.

    python bench/peer_sfno.py [--steps 1000] [--batch 8] [--grid 33x64 --trajectories 16 --traj-steps 24]
                              [--budget steps|wall|flops] [--budget-seconds S] [--train-trajectories N]
                              [--out bench/results/peer_sfno.json] [--plot docs/peer_sfno.png]

Budget (--budget): "steps" trains both models --steps optimizer steps; "wall" gives both the wall-clock
SFNO needs for --steps steps, or --budget-seconds of steps whatever the model sizes (each model's step
time measured interleaved with the other's on this machine, before training: steps = budget / its median
step); "flops" gives both SFNO's training FLOPs of --steps steps (per step as torch's FlopCounterMode
counts one forward + backward: GEMMs, einsums, convolutions; the FFTs of SFNO's spherical harmonic
transforms are not counted, so this favours SFNO slightly). Each
model's learning-rate schedule spans its own steps. --train-trajectories N trains on the first N training
trajectories only (the held-out ones stay the same): data scaling on one store. --rollout-steps K
--rollout-fraction f: the last fraction f of each model's steps train on the mean loss of a K-step
autoregressive rollout (the trainer's train.rollout_steps), batches read from the store.

Data: a store from `jigsaw-data swe` (made under runs/peer_sfno/ if --store is not given or missing), or any
store with a trajectory coordinate and the channels of --variables, --levels, --surface-variables (e.g. from
`jigsaw-data held-suarez`: several levels, as with ERA5); split by trajectory with
data.dataset.split_train_val (the last val_fraction of trajectories held out), read through WeatherStore /
PairDataset with the coordinate features, as the trainer reads it.

Training (the same for both models, one plain-PyTorch single-process loop; no DeepSpeed here, so that
neither model gets an engine feature the other lacks): identical seeded batch stream (ReplicaBatches),
AdamW, linear warm-up then cosine learning-rate schedule, gradient clipping, and the trainer's loss:
AreaWeightedMSE with WB2 latitude weights in units of each channel's tendency std.

Both models map [state, sin lat, cos lat cos lon, cos lat sin lon] to the next normalised state in the
same residual form, x[:, :C] + tendency_scale * net(x) with tendency_scale = tendency_std / std:
WeatherMixer has it built in, SFNO gets it from the ResidualSFNO wrapper below (its own
residual_prediction option is off), so the comparison is about the network, not the output form.
The SFNO width is chosen so that its parameter count (complex weights counted as two real numbers)
matches WeatherMixer's within --match-tolerance.

Evaluation: autoregressive rollouts (model.rollout) from held-out initial times out to --lead-steps x 6 h,
scored with jigsaw-eval's own streaming sums (eval/streaming.ScoreSums, WB2 RMSE, ACC, bias) against the
truth, persistence and the climatology of the training times (data/climatology.py), as jigsaw-eval does. Prints a table, writes
the JSON and the plot. Seeded: the same flags give the same numbers (on the same thread count).
"""
from __future__ import annotations

import argparse
import json
import math
import os
import subprocess
import sys
import time

import numpy as np
import torch
from torch import nn

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from jigsaw_ds.config import ModelConfig  # noqa: E402
from jigsaw_ds.data.climatology import Climatology  # noqa: E402
from jigsaw_ds.data.dataset import PairDataset, ReplicaBatches  # noqa: E402
from jigsaw_ds.data.store import WeatherStore  # noqa: E402
from jigsaw_ds.eval.evaluate import scores_to_rows  # noqa: E402
from jigsaw_ds.eval.streaming import ScoreSums  # noqa: E402
from jigsaw_ds.model import WeatherMixer, ensemble_mean, input_channels, rollout  # noqa: E402
from jigsaw_ds.parallel.topology import JigsawGroups  # noqa: E402
from jigsaw_ds.data.dataset import split_train_val  # noqa: E402
from jigsaw_ds.grid import lat_cell_weights  # noqa: E402
from jigsaw_ds.train.loss import AreaWeightedMSE  # noqa: E402

VARIABLES = ["geopotential", "u_component_of_wind", "v_component_of_wind"]  # the default channels, at 500 hPa
TABLE_LEADS = (6, 24, 48, 72)
FULL = slice(0, None)


def n_params(model: nn.Module) -> int:
    """Trainable real numbers: a complex parameter counts twice."""
    return sum(p.numel() * (2 if p.is_complex() else 1) for p in model.parameters() if p.requires_grad)


class ResidualSFNO(nn.Module):
    """torch-harmonics' SFNO in WeatherMixer's output form: x[:, :C] + tendency_scale * sfno(x)."""

    def __init__(self, n_lat, n_lon, in_channels, out_channels, tendency_scale, embed_dim, num_layers,
                 scale_factor, mlp_ratio, grid="equiangular"):
        super().__init__()
        from torch_harmonics.examples.models import SphericalFourierNeuralOperator

        self.in_channels, self.out_channels = in_channels, out_channels
        self.net = SphericalFourierNeuralOperator(
            img_size=(n_lat, n_lon), grid=grid, scale_factor=scale_factor, in_chans=in_channels,
            out_chans=out_channels, embed_dim=embed_dim, num_layers=num_layers, mlp_ratio=mlp_ratio,
            residual_prediction=False)
        self.register_buffer("tendency_scale", torch.as_tensor(tendency_scale).float().clone())

    def forward(self, x):
        return x[:, :self.out_channels] + self.tendency_scale.view(1, -1, 1, 1) * self.net(x)


def build_mixer(cfg: ModelConfig, store, n_in, n_state, seed):
    return WeatherMixer(cfg, store.n_lat, store.n_lon, n_in, n_state,
                        tendency_scale=torch.from_numpy(store.tendency_std / store.std), seed=seed)


def sfno_grid(lat_deg) -> str:
    """torch-harmonics' name for the store's latitude nodes: "equiangular" (poles included: WeatherBench2,
    jigsaw-data swe) or "legendre-gauss" (jigsaw-data held-suarez); in either order."""
    lat = np.sort(np.asarray(lat_deg, dtype=np.float64))
    if np.allclose(lat, np.linspace(-90.0, 90.0, lat.size), atol=1e-4):
        return "equiangular"
    if np.allclose(np.sin(np.deg2rad(lat)), np.polynomial.legendre.leggauss(lat.size)[0], atol=1e-6):
        return "legendre-gauss"
    raise ValueError(f"SFNO here takes equiangular latitudes with both poles or Gaussian latitudes; the store's "
                     f"{lat.size} latitudes ({lat[0]:.3f} to {lat[-1]:.3f}) are neither")


def build_sfno(args, store, n_in, n_state, embed_dim, seed):
    torch.manual_seed(seed)  # SFNO initialises from the global generator
    return ResidualSFNO(store.n_lat, store.n_lon, n_in, n_state, store.tendency_std / store.std, embed_dim,
                        args.sfno_layers, args.sfno_scale_factor, args.sfno_mlp_ratio, grid=sfno_grid(store.lat))


def sfno_count(args, store, n_in, n_state, width: int) -> int:
    """SFNO parameter count without building it (its spherical-harmonic set-up takes seconds): encoder,
    decoder, and per block the Driscoll-Healy complex weight [D, D, modes] and the MLP. Checked against
    the built model in main()."""
    h, w = (store.n_lat - 1) // args.sfno_scale_factor + 1, store.n_lon // args.sfno_scale_factor
    modes, hidden = min(h, w // 2), int(width * args.sfno_mlp_ratio)
    return n_in * width + width * n_state + args.sfno_layers * (2 * width * width * modes + 2 * width * hidden + hidden)


def match_sfno_width(args, store, n_in, n_state, target: int) -> int:
    """The SFNO embed_dim whose parameter count is closest to target."""
    return min(range(4, 513), key=lambda width: abs(sfno_count(args, store, n_in, n_state, width) - target))


def lr_lambda(args, steps: int):
    """Linear warm-up from warmup_min_ratio to 1, then cosine down to cos_min_ratio over `steps` (both models)."""
    def f(step):  # step = number of optimizer steps taken so far
        if step < args.warmup:
            return args.warmup_min_ratio + (1 - args.warmup_min_ratio) * step / args.warmup
        progress = min(1.0, (step - args.warmup) / max(1, steps - args.warmup))
        return args.cos_min_ratio + (1 - args.cos_min_ratio) * 0.5 * (1 + math.cos(math.pi * progress))
    return f


def cached(dataset: PairDataset):
    """All (input, first target) pairs of a dataset in memory: the store is small, and this keeps
    zarr reads out of the timed training loop."""
    xs, ys, _ = zip(*(dataset[i] for i in range(len(dataset))))  # no forcings here
    return torch.stack(xs), torch.stack(ys)[:, 0]


def train(name, model, args, steps, train_xy, val_xy, loss_fn, n_state, rollout_set=None, train_set=None, seed=None):
    """One plain-PyTorch loop, identical for every model: same batch stream, optimizer, schedule, clip.
    rollout_set (a PairDataset with rollout = --rollout-steps): the last --rollout-fraction of the steps
    train on the K-step rollout loss, batches drawn from it. With --lon-roll every batch is read through
    train_set / rollout_set with the sampler's longitude shifts (data.lon_roll's path), not from train_xy."""
    lon_roll = train_set.store.n_lon if args.lon_roll else 0
    seed = args.seed if seed is None else seed  # an ensemble member's: its batch order too
    torch.manual_seed(seed)
    opt = torch.optim.AdamW(model.parameters(), lr=args.lr, weight_decay=args.weight_decay)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lr_lambda(args, steps))
    sampler = ReplicaBatches(len(train_xy[0]), args.batch, 0, 1, seed, steps=steps, lon_roll=lon_roll)
    history, window, step_times = [], [], []
    first_rollout = steps - int(args.rollout_fraction * steps) + 1 if rollout_set is not None else steps + 1
    rollout_batches = iter(ReplicaBatches(len(rollout_set), args.batch, 0, 1, seed + 1,
                                          steps=steps - first_rollout + 1, lon_roll=lon_roll)) \
        if rollout_set is not None else None
    model.train()
    t_train = 0.0
    for step, draw in enumerate(sampler, start=1):
        t0 = time.perf_counter()
        if step >= first_rollout:  # the mean loss of a K-step rollout, gradient through all of it
            x, y, _ = rollout_set.read_batch(*next(rollout_batches))
            loss = sum(loss_fn(pred, y[:, k]) for k, pred in enumerate(rollout(model, x, y.shape[1], n_state,
                                                                                    history=args.history)))
            loss = loss / y.shape[1]
        else:
            if lon_roll:
                x, y, _ = train_set.read_batch(*draw)
                y = y[:, 0]
            else:
                x, y = train_xy[0][draw.indices], train_xy[1][draw.indices]
            loss = loss_fn(model(x), y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), args.clip)
        opt.step()
        sched.step()
        step_times.append(time.perf_counter() - t0)
        t_train += step_times[-1]
        window.append(loss.item())
        if step % args.log_every == 0 or step == steps:
            record = {"step": step, "loss": float(np.mean(window)), "lr": sched.get_last_lr()[0],
                      "train_s": round(t_train, 2)}
            if step % args.val_every == 0 or step == steps:
                record["val_loss"], record["val_loss_persistence"] = validate(model, val_xy, loss_fn, n_state)
                model.train()
            history.append(record)
            window = []
            print(f"  {name:12s} step {step:5d}  loss {record['loss']:.4f}"
                  + (f"  val {record['val_loss']:.4f} (persistence {record['val_loss_persistence']:.4f})"
                     if "val_loss" in record else "") + f"  {t_train:6.1f} s", flush=True)
    model.eval()
    # the median step is robust to other processes on a shared machine; the sum is the wall time
    return history, {"train_s": t_train, "median_step_ms": 1000 * float(np.median(step_times))}


def interleaved_step_ms(models: dict, args, train_xy, loss_fn, repeats: int) -> dict:
    """Median ms of one training step (forward, backward, clip, AdamW) of each model, the models taking
    turns step by step (on spare instances), so that load from other processes hits both alike."""
    runs = {}
    for name, m in models.items():
        m.train()
        runs[name] = (m, torch.optim.AdamW(m.parameters(), lr=args.lr, weight_decay=args.weight_decay), [])
    x, y = train_xy[0][:args.batch], train_xy[1][:args.batch]
    for i in range(repeats + 3):
        for m, opt, times in runs.values():
            t0 = time.perf_counter()
            loss = loss_fn(m(x), y)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(m.parameters(), args.clip)
            opt.step()
            if i >= 3:  # warm-up steps not counted
                times.append(time.perf_counter() - t0)
    return {name: 1000 * float(np.median(times)) for name, (_, _, times) in runs.items()}


def step_flops(model, args, train_xy, loss_fn) -> int:
    """FLOPs of one training step's forward + backward as torch's FlopCounterMode counts them."""
    from torch.utils.flop_counter import FlopCounterMode

    x, y = train_xy[0][:args.batch], train_xy[1][:args.batch]
    with FlopCounterMode(display=False) as counter:
        loss_fn(model(x), y).backward()
    model.zero_grad(set_to_none=True)
    return counter.get_total_flops()


def budget_steps(args, step_ms: dict, flops: dict) -> dict:
    """Optimizer steps of each model under --budget: SFNO's --steps set it, or --budget-seconds of training
    steps for a wall budget that stays the same when the model sizes change (a size sweep)."""
    if args.budget == "steps":
        return dict.fromkeys(step_ms, args.steps)
    per_step = step_ms if args.budget == "wall" else flops
    total = 1000 * args.budget_seconds if args.budget_seconds else args.steps * per_step["SFNO"]
    return {name: max(1, int(total / cost)) for name, cost in per_step.items()}


@torch.no_grad()
def validate(model, val_xy, loss_fn, n_state, batch=16):
    """One-step loss on all held-out pairs (and persistence's), in tendency units."""
    model.eval()
    x_all, y_all = val_xy
    total = persistence = 0.0
    for lo in range(0, len(x_all), batch):
        x, y = x_all[lo:lo + batch], y_all[lo:lo + batch]
        total += loss_fn(model(x), y).item() * len(x)
        persistence += loss_fn(x[:, :n_state], y).item() * len(x)
    return total / len(x_all), persistence / len(x_all)


def score_rollouts(models: dict, store, inits, train_times, k: int, history: int, batch: int = 8):
    """Score rows of each model (a list of members: their mean forecast), persistence and climatology over k
    leads from the initial times `inits` (jigsaw-eval's sums, one process) and the seconds each model's
    rollouts took."""
    n_state, full = len(store.channels), (slice(0, store.n_lat), slice(0, store.n_lon))
    kinds = [*models, "persistence", "climatology"]
    sums = ScoreSums(kinds, k, n_state, store.lat, lat_cell_weights(store.lat), full[0], store.n_lon,
                     JigsawGroups.serial())
    clim = Climatology(store.times[train_times], lambda i: store.read_raw([int(train_times[i])], *full)[0])
    dataset = PairDataset(store, inits, 1, *full, True, history=history)
    mean, std = store.mean[None, :, None, None], store.std[None, :, None, None]
    seconds = dict.fromkeys(models, 0.0)
    for lo in range(0, len(inits), batch):
        items = list(range(lo, min(lo + batch, len(inits))))
        x = dataset.read_batch(items)[0]
        forecasts = {}
        for name, members in models.items():
            t0 = time.perf_counter()
            with torch.no_grad():
                forecasts[name] = [p.numpy() * std + mean for p in ensemble_mean(
                    rollout(m.eval(), x, k, n_state, history=history) for m in members)]
            seconds[name] += time.perf_counter() - t0
        initial = x[:, :n_state].numpy() * std + mean
        for j in range(k):
            valid = inits[items] + j + 1
            truth, clim_j = store.read_raw(list(valid), *full), clim.at(store.times[valid])
            sums.add(j, {**{n: f[j] for n, f in forecasts.items()}, "persistence": initial, "climatology": clim_j},
                     truth, clim_j)
    leads = np.array([(j + 1) * store.time_step for j in range(k)]).astype("timedelta64[ns]")
    rows = [r for r in scores_to_rows(sums.finalize(), store, leads) if r["region"] == "global"]
    return rows, seconds


def make_store(args) -> str:
    h, w = args.grid
    path = args.store or os.path.join(ROOT, "runs", "peer_sfno",
                                      f"swe_{h}x{w}_t{args.trajectories}_s{args.traj_steps}_seed{args.data_seed}.zarr")
    if not os.path.exists(path):
        cmd = [sys.executable, "-m", "jigsaw_ds.data.cli", "swe", "--out", path, "--grid", f"{h}x{w}",
               "--trajectories", str(args.trajectories), "--steps", str(args.traj_steps),
               "--seed", str(args.data_seed)]
        print("$ jigsaw-data " + " ".join(cmd[3:]), flush=True)
        subprocess.run(cmd, check=True, cwd=ROOT)
    return path


def summary_table(rows, names):
    """{channel: {lead: {forecast: rmse}}} at TABLE_LEADS (the leads the rollout reaches)."""
    table = {}
    for r in rows:
        if r["metric"] == "rmse" and r["lead_hours"] in TABLE_LEADS:
            table.setdefault(r["channel"], {})[r["lead_hours"]] = {n: r[n] for n in names}
    return table


def print_table(table, names):
    print("\nRMSE (physical units: geopotential m^2/s^2, temperature K, wind m/s, pressure Pa), held-out trajectories")
    print(f"{'channel':26s} {'lead h':>6s} " + " ".join(f"{n:>13s}" for n in names) + "   best")
    for ch, by_lead in table.items():
        for lead, vals in sorted(by_lead.items()):
            best = min(vals, key=vals.get)
            print(f"{ch:26s} {lead:6d} " + " ".join(f"{vals[n]:13.4g}" for n in names) + f"   {best}")


def plot(rows, names, channels, path):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    styles = {"WeatherMixer": ("C0", "o", "-"), "SFNO": ("C3", "s", "-"),
              "persistence": ("0.4", "", "--"), "climatology": ("0.6", "", ":")}
    fig, axes = plt.subplots(2, len(channels), figsize=(3.6 * len(channels), 5.6), squeeze=False)
    for j, ch in enumerate(channels):
        for i, metric in enumerate(("rmse", "acc")):
            ax = axes[i][j]
            sel = [r for r in rows if r["channel"] == ch and r["metric"] == metric]
            top = 1.15 * max(r[n] for r in sel for n in names if n != "climatology")
            for n in names:
                if n == "climatology" and metric == "acc":
                    continue  # f - c = 0: undefined
                color, marker, ls = styles.get(n, (None, ".", "-"))
                values = [r[n] for r in sel]
                if metric == "rmse" and n == "climatology" and min(values) > top:
                    ax.text(0.03, 0.97, f"climatology {np.mean(values):.3g} (off scale)", transform=ax.transAxes,
                            fontsize=7, va="top", color="0.4")
                ax.plot([r["lead_hours"] for r in sel], values, color=color, marker=marker,
                        markersize=3, linestyle=ls, label=n)
            if metric == "rmse":
                ax.set_ylim(0, top)
            ax.set_xlabel("lead (h)")
            ax.set_xticks([0, 24, 48, 72])
            ax.grid(alpha=0.3)
            if i == 0:
                ax.set_title(ch, fontsize=9)
            if j == 0:
                ax.set_ylabel(metric.upper())
    handles = {}
    for ax in axes.ravel():
        handles.update(zip(*reversed(ax.get_legend_handles_labels())))
    axes[1][0].legend(handles.values(), handles.keys(), fontsize=7, loc="lower left")
    fig.suptitle("WeatherMixer vs SFNO (matched parameters, same training) on held-out "
                 "trajectories", fontsize=9)
    fig.tight_layout()
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    fig.savefig(path, dpi=90)
    plt.close(fig)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    g = ap.add_argument_group("data")
    g.add_argument("--store", default="", help="existing `jigsaw-data swe` store (default: made under runs/peer_sfno/), "
                                               "or another with the channels below (e.g. `jigsaw-data held-suarez`)")
    g.add_argument("--variables", default=",".join(VARIABLES), help="upper-air variables both models forecast")
    g.add_argument("--levels", default="500", help="their levels (hPa)")
    g.add_argument("--surface-variables", default="", help="surface variables both models forecast")
    g.add_argument("--grid", default="33x64", type=lambda s: [int(v) for v in s.lower().split("x")])
    g.add_argument("--trajectories", type=int, default=16)
    g.add_argument("--traj-steps", type=int, default=24, help="6-hourly records per trajectory")
    g.add_argument("--data-seed", type=int, default=0)
    g.add_argument("--val-fraction", type=float, default=0.25, help="held-out fraction of trajectories")
    g.add_argument("--train-trajectories", type=int, default=0,
                   help="train on the first N training trajectories only (0: all); the held-out ones are unchanged")
    g = ap.add_argument_group("training (identical for both models)")
    g.add_argument("--steps", type=int, default=1000, help="SFNO's steps; the other model's follow from --budget")
    g.add_argument("--budget", default="steps", choices=("steps", "wall", "flops"),
                   help="what both models get the same of: steps, wall-clock, or training FLOPs")
    g.add_argument("--budget-seconds", type=float, default=0.0,
                   help="with --budget wall: seconds of (one-step) training steps for each model, instead of "
                        "SFNO's --steps; fixed across model sizes")
    g.add_argument("--batch", type=int, default=8)
    g.add_argument("--lr", type=float, default=2e-3)
    g.add_argument("--weight-decay", type=float, default=0.01)
    g.add_argument("--warmup", type=int, default=20)
    g.add_argument("--warmup-min-ratio", type=float, default=0.1)
    g.add_argument("--cos-min-ratio", type=float, default=0.05)
    g.add_argument("--clip", type=float, default=1.0)
    g.add_argument("--rollout-steps", type=int, default=1, help="K > 1: fine-tune on a K-step rollout loss")
    g.add_argument("--rollout-fraction", type=float, default=0.25, help="the last fraction of steps that do")
    g.add_argument("--members", type=int, default=1,
                   help="seed ensemble: train N of each model (seeds --seed ..), score their mean forecast")
    g.add_argument("--history", type=int, default=0,
                   help="input history (model.history_steps): the states this many steps back as extra channels")
    g.add_argument("--lon-roll", action="store_true",
                   help="augmentation (data.lon_roll): each sample rolled by a random number of longitude columns")
    g.add_argument("--seed", type=int, default=0)
    g.add_argument("--log-every", type=int, default=100)
    g.add_argument("--val-every", type=int, default=200)
    g = ap.add_argument_group("models")
    g.add_argument("--mixer-config", default=os.path.join(ROOT, "configs", "swe_small.json"),
                   help="jigsaw config whose model section defines WeatherMixer")
    g.add_argument("--mixer-set", action="append", default=[], metavar="KEY=VALUE",
                   help="override a model key, e.g. embed_dim=96 (repeatable)")
    g.add_argument("--sfno-embed", type=int, default=0, help="SFNO width (default: match WeatherMixer's parameters)")
    g.add_argument("--sfno-layers", type=int, default=4)
    g.add_argument("--sfno-scale-factor", type=int, default=2,
                   help="SFNO internal grid downsampling (2 on 33x64: 17x32 grid, spectral truncation 16)")
    g.add_argument("--sfno-mlp-ratio", type=float, default=2.0)
    g.add_argument("--match-tolerance", type=float, default=0.10)
    g = ap.add_argument_group("evaluation and output")
    g.add_argument("--lead-steps", type=int, default=12, help="rollout length in 6 h steps (12 = 72 h)")
    g.add_argument("--inits", type=int, default=0, help="held-out initial times (0 = all)")
    g.add_argument("--threads", type=int, default=2)
    g.add_argument("--time-steps", type=int, default=30, help="interleaved timing steps per model")
    g.add_argument("--out", default=os.path.join(ROOT, "bench", "results", "peer_sfno.json"))
    g.add_argument("--plot", default=os.path.join(ROOT, "docs", "peer_sfno.png"))
    args = ap.parse_args(argv)
    if args.budget_seconds < 0:
        ap.error(f"--budget-seconds must be >= 0 (0: SFNO's --steps set the budget), got {args.budget_seconds}")
    if args.budget_seconds and args.budget != "wall":
        ap.error(f"--budget-seconds is a wall-clock budget: it needs --budget wall, not --budget {args.budget}")
    torch.set_num_threads(args.threads)
    t_start = time.perf_counter()

    # ---- data: the trainer's store, split and pairs -------------------------------------------------------
    path = make_store(args)
    store = WeatherStore(path, args.variables.split(","), [v for v in args.surface_variables.split(",") if v],
                         [int(v) for v in args.levels.split(",")])
    n_state = len(store.channels)
    # as PairDataset(coord_feats=True, history=...) stacks them
    n_in = input_channels(ModelConfig(coord_features=True, history_steps=args.history), n_state, 0)
    train_starts, val_starts = split_train_val(store, 1, args.val_fraction, args.history)
    if args.train_trajectories:
        kept = np.unique(store.trajectory[train_starts])[:args.train_trajectories]
        if len(kept) < args.train_trajectories:
            raise SystemExit(f"--train-trajectories {args.train_trajectories}: the store has only {len(kept)} "
                             f"training trajectories")
        train_starts = train_starts[np.isin(store.trajectory[train_starts], kept)]
    train_set = PairDataset(store, train_starts, 1, FULL, FULL, True, history=args.history)
    train_xy = cached(train_set)
    val_xy = cached(PairDataset(store, val_starts, 1, FULL, FULL, True, history=args.history))
    weights = torch.from_numpy(lat_cell_weights(store.lat)).float()
    loss_fn = AreaWeightedMSE(weights, store.n_lat, store.n_lon, channel_weights=(store.std / store.tendency_std) ** 2)
    print(f"store {path}: {store.n_lat}x{store.n_lon}, {len(np.unique(store.trajectory))} trajectories, "
          f"{len(train_starts)} train / {len(val_starts)} validation pairs", flush=True)

    # ---- models with matched parameter counts -------------------------------------------------------------
    mcfg = dict(json.load(open(args.mixer_config))["model"])
    for kv in args.mixer_set:
        key, value = kv.split("=", 1)
        try:
            mcfg[key] = json.loads(value)
        except json.JSONDecodeError:
            mcfg[key] = value
    mcfg["coord_features"], mcfg["history_steps"] = True, args.history
    mixer_cfg = ModelConfig(**mcfg)
    mixer = build_mixer(mixer_cfg, store, n_in, n_state, args.seed)
    target = n_params(mixer)
    width = args.sfno_embed or match_sfno_width(args, store, n_in, n_state, target)
    sfno = build_sfno(args, store, n_in, n_state, width, args.seed)
    counts = {"WeatherMixer": target, "SFNO": n_params(sfno)}
    if counts["SFNO"] != sfno_count(args, store, n_in, n_state, width):
        raise SystemExit(f"SFNO has {counts['SFNO']} parameters, sfno_count says "
                         f"{sfno_count(args, store, n_in, n_state, width)}: update sfno_count for this torch-harmonics")
    mismatch = counts["SFNO"] / target - 1
    print(f"parameters: WeatherMixer {target:,}  SFNO {counts['SFNO']:,} (embed_dim {width}, {mismatch:+.1%})",
          flush=True)
    if abs(mismatch) > args.match_tolerance:
        print(f"warning: parameter counts differ by {mismatch:+.1%} (> {args.match_tolerance:.0%})", flush=True)

    # ---- train both the same way ------------------------------------------------------------------------
    models = {"WeatherMixer": mixer, "SFNO": sfno}
    spares = {"WeatherMixer": build_mixer(mixer_cfg, store, n_in, n_state, args.seed),
              "SFNO": build_sfno(args, store, n_in, n_state, width, args.seed)}
    step_ms = interleaved_step_ms(spares, args, train_xy, loss_fn, args.time_steps)
    del spares
    print("interleaved median step: " + ", ".join(f"{n} {ms:.1f} ms" for n, ms in step_ms.items()), flush=True)
    flops = {name: step_flops(model, args, train_xy, loss_fn) for name, model in models.items()}
    steps = budget_steps(args, step_ms, flops)
    print(f"budget {args.budget}: " + ", ".join(f"{n} {s} steps ({flops[n] / 1e9:.2f} GFLOP, {step_ms[n]:.1f} ms "
                                                 f"per step)" for n, s in steps.items()), flush=True)
    rollout_set = None
    if args.rollout_steps > 1:  # the same trajectories, pairs spanning K steps
        span_starts, _ = split_train_val(store, args.rollout_steps, args.val_fraction, args.history)
        rollout_set = PairDataset(store, span_starts[np.isin(span_starts, train_starts)], 1, FULL, FULL, True,
                                  rollout=args.rollout_steps, history=args.history)
    histories, timing = {}, {}
    for name, model in models.items():
        print(f"training {name}: {steps[name]} steps, batch {args.batch}", flush=True)
        histories[name], timing[name] = train(name, model, args, steps[name], train_xy, val_xy, loss_fn, n_state,
                                              rollout_set, train_set)
    # a seed ensemble (--members N): N - 1 more of each model, other seeds (initialisation and batch order),
    # the same budget each, so the ensemble costs N times a single model's training
    ensembles = {name: [model] for name, model in models.items()}
    member_val_loss = {name: [histories[name][-1]["val_loss"]] for name in models}
    for i in range(1, args.members):
        for name, build in (("WeatherMixer", lambda s: build_mixer(mixer_cfg, store, n_in, n_state, s)),
                            ("SFNO", lambda s: build_sfno(args, store, n_in, n_state, width, s))):
            print(f"training {name} member {i} (seed {args.seed + i}): {steps[name]} steps", flush=True)
            member = build(args.seed + i)
            history, t = train(name, member, args, steps[name], train_xy, val_xy, loss_fn, n_state, rollout_set,
                               train_set, seed=args.seed + i)
            ensembles[name].append(member)
            member_val_loss[name].append(history[-1]["val_loss"])
            timing[name]["train_s"] += t["train_s"]

    # ---- evaluate as jigsaw-eval does -------------------------------------------------------------------------
    k = args.lead_steps
    eval_train, eval_val = split_train_val(store, k, args.val_fraction, args.history)  # same trajectories held out
    inits = eval_val if not args.inits else \
        eval_val[np.linspace(0, len(eval_val) - 1, min(args.inits, len(eval_val))).astype(int)]
    rows, eval_s = score_rollouts(ensembles, store, inits, eval_train, k, args.history)
    names = [*models, "persistence", "climatology"]
    table = summary_table(rows, names)
    print_table(table, names)
    print("\nparameters: " + ", ".join(f"{n} {c:,}" for n, c in counts.items()))
    print("train time: " + ", ".join(f"{n} {t['train_s']:.1f} s (median step {t['median_step_ms']:.1f} ms)"
                                     for n, t in timing.items()))
    print("interleaved median step: " + ", ".join(f"{n} {ms:.1f} ms" for n, ms in step_ms.items()))
    print("final one-step loss (tendency units) train / val: " + ", ".join(
        f"{n} {h[-1]['loss']:.3f} / {h[-1]['val_loss']:.3f}" for n, h in histories.items())
        + f", persistence val {histories['SFNO'][-1]['val_loss_persistence']:.3f}")

    # ---- write ------------------------------------------------------------------------------------------------
    result = {
        "bench": "peer_sfno", "command": " ".join(["python bench/peer_sfno.py", *(argv if argv is not None else sys.argv[1:])]),
        "store": os.path.relpath(path, ROOT), "grid": [store.n_lat, store.n_lon],
        "trajectories": int(len(np.unique(store.trajectory))), "train_pairs": int(len(train_starts)),
        "val_pairs": int(len(val_starts)), "eval_inits": int(len(inits)), "lead_steps": k,
        "training": {key: getattr(args, key) for key in ("steps", "batch", "lr", "weight_decay", "warmup",
                                                         "warmup_min_ratio", "cos_min_ratio", "clip", "seed",
                                                         "budget", "budget_seconds", "train_trajectories",
                                                         "rollout_steps", "rollout_fraction", "lon_roll", "history",
                                                         "members")},
        "member_val_loss": member_val_loss,
        "steps": steps, "train_flops_per_step": flops,
        "train_flops": {n: flops[n] * steps[n] for n in steps},
        "threads": args.threads,
        "models": {"WeatherMixer": {"config": mixer_cfg.__dict__, "parameters": counts["WeatherMixer"]},
                   "SFNO": {"config": {"embed_dim": width, "num_layers": args.sfno_layers,
                                       "scale_factor": args.sfno_scale_factor, "mlp_ratio": args.sfno_mlp_ratio,
                                       "grid": sfno.net.grid, "internal_grid": [sfno.net.h, sfno.net.w],
                                       "spectral_truncation": sfno.net.trans.lmax},
                            "parameters": counts["SFNO"]}},
        "train_seconds": {n: round(t["train_s"], 2) for n, t in timing.items()},
        "median_step_ms": {n: round(t["median_step_ms"], 2) for n, t in timing.items()},
        "interleaved_step_ms": {n: round(ms, 2) for n, ms in step_ms.items()},
        "rollout_seconds": {n: round(s, 2) for n, s in eval_s.items()},
        "history": histories,
        "rmse_table": {ch: {str(lead): v for lead, v in by.items()} for ch, by in table.items()},
        "rows": [{k: (None if isinstance(v, float) and not math.isfinite(v) else v) for k, v in r.items()}
                 for r in rows],  # ACC of climatology is undefined (NaN): null in strict JSON
        "total_seconds": round(time.perf_counter() - t_start, 1),
    }
    os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
    with open(args.out, "w") as f:
        json.dump(result, f, indent=1, allow_nan=False)
    if args.plot:
        plot(rows, names, [c.name for c in store.channels], args.plot)
    print(f"wrote {args.out}" + (f" and {args.plot}" if args.plot else "") + f" in {result['total_seconds']:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Peer benchmark: WeatherMixer vs torch-harmonics' Spherical Fourier Neural Operator on shallow-water data.

    python bench/peer_sfno.py [--budget seconds:S | flops:F | steps [--steps 1000]] [--batch 8]
                              [--grid 33x64 --trajectories 16 --traj-steps 24] [--train-trajectories N]
                              [--out bench/results/peer_sfno.json] [--plot docs/peer_sfno.png]

Budget (--budget), what both models get the same of, each model trained in turn in this one process:
- "seconds:S": each model trains until S seconds of its own training have been spent, on the clock in the
  loop: every step counted (drawing and reading the batch, forward, backward, clip, AdamW; one-step and
  rollout phases alike), validation and logging not. Training stops after the first step that reaches S,
  so within one step of S.
- "flops:F": likewise until F training FLOPs are counted, each step at its own cost (a K-step rollout step
  at the FLOPs of its K forwards and backwards). FLOPs per step as torch's FlopCounterMode counts one
  forward + backward: GEMMs, einsums, convolutions; the FFTs of SFNO's spherical harmonic transforms are not
  counted, so this favours SFNO slightly.
- "steps": --steps optimizer steps each.
The learning-rate schedule (linear warm-up over --warmup-fraction of the budget, then cosine) and the
rollout phase (--rollout-steps K over the last --rollout-fraction of the budget: the mean loss of a K-step
autoregressive rollout, the trainer's train.rollout_steps, batches read from the store) are functions of
the fraction of the budget spent (seconds / S, FLOPs / F, steps / N), so they are laid over the budget
itself, not over a step count. The JSON records each model's measured seconds, counted FLOPs, steps and the
load average before and after it, and whether the two came out equal: "cost_ratio" (WeatherMixer / SFNO of
what the budget equalises, e.g. train_seconds) and "unequal" (more than 5% apart; skill_compare.py and
skill_scaling.py refuse such results unless --allow-unequal). The former "wall" budget (step counts from a
one-step time measured before training) is gone: a model whose steps grew in training (rollouts, reads)
trained up to 4.5x longer than the other (issue 31). --train-trajectories N trains on the first N training
trajectories only (the held-out ones stay the same): data scaling on one store.

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
from jigsaw_ds.eval.reports import scores_to_rows  # noqa: E402
from jigsaw_ds.eval.streaming import ScoreSums  # noqa: E402
from jigsaw_ds.model import InputSpec, WeatherMixer, ensemble_mean, rollout  # noqa: E402
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


EQUAL_COST = 0.05  # two models' measured costs further apart than this are not an equal-cost comparison
# what each budget equalises, as the result JSON records it; "wall" (retired) claimed equal wall-clock
COST_MEASURES = {"seconds": "train_seconds", "wall": "train_seconds", "flops": "train_flops", "steps": "steps"}


class Budget:
    """What each model gets the same amount of: steps, seconds of its own training, or training FLOPs.
    progress() is the fraction spent, which the schedule and the rollout phase follow."""

    def __init__(self, kind: str, amount: float):
        self.kind, self.amount = kind, amount

    def progress(self, steps: int, seconds: float, flops: int) -> float:
        return {"steps": steps, "seconds": seconds, "flops": flops}[self.kind] / self.amount

    def __str__(self):
        return self.kind if self.kind == "steps" else f"{self.kind}:{self.amount:g}"


def parse_budget(spec: str, steps: int = 0) -> Budget:
    """--budget "seconds:S", "flops:F" or "steps" (`steps` of them); ValueError naming what is wrong."""
    kind, sep, amount = spec.partition(":")
    if kind == "wall":
        raise ValueError("--budget wall was removed (issue 31): its step counts, set from a one-step time measured "
                         "before training, let one model train up to 4.5x longer than the other; use --budget "
                         "seconds:S (S seconds of each model's own training, on the clock)")
    if kind == "steps" and not sep:
        return Budget("steps", steps)
    if kind not in ("seconds", "flops") or not sep:
        raise ValueError(f"--budget {spec!r}: expected steps, seconds:S or flops:F")
    try:
        value = float(amount)
    except ValueError:
        value = 0.0
    if not (math.isfinite(value) and value > 0):
        letter = "S" if kind == "seconds" else "F"
        raise ValueError(f"--budget {spec!r}: {kind}:{letter} needs {letter} > 0")
    return Budget(kind, value)


def lr_factor(progress: float, args) -> float:
    """The learning rate over args.lr at a fraction `progress` of the budget spent: linear warm-up from
    warmup_min_ratio to 1 over warmup_fraction, then cosine down to cos_min_ratio at the end (both models)."""
    if progress < args.warmup_fraction:
        return args.warmup_min_ratio + (1 - args.warmup_min_ratio) * progress / args.warmup_fraction
    done = min(1.0, (progress - args.warmup_fraction) / (1 - args.warmup_fraction))
    return args.cos_min_ratio + (1 - args.cos_min_ratio) * 0.5 * (1 + math.cos(math.pi * done))


def in_rollout_phase(progress: float, rollout_fraction: float) -> bool:
    """Whether a step starting at this fraction of the budget trains on the rollout loss (the last fraction)."""
    return progress >= 1 - rollout_fraction


def cost_balance(result: dict) -> dict:
    """How equal the two models' training cost came out in a result, by what its budget equalises (measured
    training seconds for a seconds budget and for the retired wall budget, which claimed equal wall-clock;
    counted FLOPs; steps): the ratio WeatherMixer / SFNO, and unequal when they are more than EQUAL_COST apart.
    From the recorded totals, so results written before this rule are judged by it too."""
    measure = COST_MEASURES[result["training"]["budget"].partition(":")[0]]
    wm, sfno = result[measure]["WeatherMixer"], result[measure]["SFNO"]
    return {"cost_measure": measure, "cost_ratio": round(wm / sfno, 4),
            "unequal": max(wm, sfno) / min(wm, sfno) > 1 + EQUAL_COST}


def cached(dataset: PairDataset):
    """All (input, first target) pairs of a dataset in memory: the store is small, and this keeps
    zarr reads out of the timed training loop."""
    xs, ys, _ = zip(*(dataset[i] for i in range(len(dataset))))  # no forcings here
    return torch.stack(xs), torch.stack(ys)[:, 0]


def rollout_loss(model, x, y, loss_fn, n_state: int, history: int):
    """The mean loss of a K-step rollout from x against y [B, K, C, h, w], the gradient through all of it."""
    preds = rollout(model, x, y.shape[1], n_state, history=history)
    return sum(loss_fn(pred, y[:, k]) for k, pred in enumerate(preds)) / y.shape[1]


def train(name, model, args, budget: Budget, flops: dict, train_xy, val_xy, loss_fn, n_state, rollout_set=None,
          train_set=None, seed=None):
    """One plain-PyTorch loop, identical for every model: same batch stream, optimizer, schedule, clip, until
    the budget is spent. flops: this model's {"one_step", "rollout"} FLOPs per step (counted into a FLOPs
    budget). rollout_set (a PairDataset with rollout = --rollout-steps): steps in the last --rollout-fraction
    of the budget train on the K-step rollout loss, batches drawn from it. With --lon-roll every batch is read
    through train_set / rollout_set with the sampler's longitude shifts (data.lon_roll's path), not from
    train_xy. Returns the loss history and the cost: steps, seconds, FLOPs, step times, load average."""
    lon_roll = train_set.store.n_lon if args.lon_roll else 0
    seed = args.seed if seed is None else seed  # an ensemble member's: its batch order too
    torch.manual_seed(seed)
    opt = torch.optim.AdamW(model.parameters(), lr=args.lr, weight_decay=args.weight_decay)
    batches = iter(ReplicaBatches(len(train_xy[0]), args.batch, 0, 1, seed, lon_roll=lon_roll))
    rollout_batches = iter(ReplicaBatches(len(rollout_set), args.batch, 0, 1, seed + 1, lon_roll=lon_roll)) \
        if rollout_set is not None else None
    spent = {"steps": 0, "seconds": 0.0, "flops": 0}
    history, window, step_s = [], [], {"one_step": [], "rollout": []}
    rollout_start_s, loadavg_before = None, os.getloadavg()
    model.train()
    while (progress := budget.progress(**spent)) < 1:  # the clock is read after every optimizer step
        t0 = time.perf_counter()
        draw = next(batches)  # drawn on rollout steps too, so the one-step stream does not depend on the phase
        rolling = rollout_set is not None and in_rollout_phase(progress, args.rollout_fraction)
        for group in opt.param_groups:
            group["lr"] = args.lr * lr_factor(progress, args)
        if rolling:
            rollout_start_s = spent["seconds"] if rollout_start_s is None else rollout_start_s
            x, y, _ = rollout_set.read_batch(*next(rollout_batches))
            loss = rollout_loss(model, x, y, loss_fn, n_state, args.history)
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
        window.append(loss.item())  # inside the clock: on a GPU it waits for the step
        phase = "rollout" if rolling else "one_step"
        step_s[phase].append(time.perf_counter() - t0)
        spent["steps"] += 1
        spent["seconds"] += step_s[phase][-1]
        spent["flops"] += flops[phase]
        step, done = spent["steps"], budget.progress(**spent) >= 1
        if step % args.log_every == 0 or done:
            record = {"step": step, "loss": float(np.mean(window)), "lr": opt.param_groups[0]["lr"],
                      "train_s": round(spent["seconds"], 2)}
            if step % args.val_every == 0 or done:
                record["val_loss"], record["val_loss_persistence"] = validate(model, val_xy, loss_fn, n_state)
                model.train()
            history.append(record)
            window = []
            print(f"  {name:12s} step {step:5d}  loss {record['loss']:.4f}"
                  + (f"  val {record['val_loss']:.4f} (persistence {record['val_loss_persistence']:.4f})"
                     if "val_loss" in record else "") + f"  {spent['seconds']:6.1f} s", flush=True)
    model.eval()
    # the median step is robust to other processes on a shared machine; the sum is what the budget counted
    return history, {"steps": spent["steps"], "rollout_steps": len(step_s["rollout"]), "seconds": spent["seconds"],
                     "flops": spent["flops"], "rollout_start_s": rollout_start_s,
                     "median_step_ms": {p: 1000 * float(np.median(s)) for p, s in step_s.items() if s},
                     "max_step_ms": 1000 * max(step_s["one_step"] + step_s["rollout"]),
                     "last_step_ms": 1000 * step_s[phase][-1],
                     "loadavg": {"before": loadavg_before, "after": os.getloadavg()}}


def step_flops(model, loss) -> int:
    """FLOPs of one training step's forward + backward (loss() builds its graph) as torch's FlopCounterMode
    counts them."""
    from torch.utils.flop_counter import FlopCounterMode

    with FlopCounterMode(display=False) as counter:
        loss().backward()
    model.zero_grad(set_to_none=True)
    return counter.get_total_flops()


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


def score_rollouts(models: dict, store, inits, train_times, k: int, spec: InputSpec, batch: int = 8):
    """Score rows of each model (a list of members: their mean forecast), persistence and climatology over k
    leads from the initial times `inits` (jigsaw-eval's sums, one process) and the seconds each model's
    rollouts took."""
    n_state, full = len(store.channels), (slice(0, store.n_lat), slice(0, store.n_lon))
    kinds = [*models, "persistence", "climatology"]
    sums = ScoreSums(kinds, k, n_state, store.lat, lat_cell_weights(store.lat), full[0], store.lon, full[1],
                     JigsawGroups.serial())
    clim = Climatology(store.times[train_times], lambda i: store.read_raw([int(train_times[i])], *full)[0])
    dataset = spec.pairs(store, inits, *full, rollout=0)  # inputs only
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
                    rollout(m.eval(), x, k, n_state, history=spec.history) for m in members)]
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
    g.add_argument("--budget", default="steps", metavar="steps|seconds:S|flops:F",
                   help="what both models get the same of: --steps optimizer steps, S seconds of their own "
                        "training (on the clock), or F training FLOPs (rollouts at their cost)")
    g.add_argument("--steps", type=int, default=None, help="with --budget steps: steps of each model (default 1000)")
    g.add_argument("--batch", type=int, default=8)
    g.add_argument("--lr", type=float, default=2e-3)
    g.add_argument("--weight-decay", type=float, default=0.01)
    g.add_argument("--warmup-fraction", type=float, default=0.05,
                   help="the first fraction of the budget warms the learning rate up (0.05: 20 of 400 steps)")
    g.add_argument("--warmup-min-ratio", type=float, default=0.1)
    g.add_argument("--cos-min-ratio", type=float, default=0.05)
    g.add_argument("--clip", type=float, default=1.0)
    g.add_argument("--rollout-steps", type=int, default=1, help="K > 1: fine-tune on a K-step rollout loss")
    g.add_argument("--rollout-fraction", type=float, default=0.25, help="the last fraction of the budget that does")
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
    g.add_argument("--out", default=os.path.join(ROOT, "bench", "results", "peer_sfno.json"))
    g.add_argument("--plot", default=os.path.join(ROOT, "docs", "peer_sfno.png"))
    args = ap.parse_args(argv)
    try:
        budget = parse_budget(args.budget, 1000 if args.steps is None else args.steps)
    except ValueError as e:
        ap.error(str(e))
    if budget.kind != "steps" and args.steps is not None:
        ap.error(f"--steps sets a steps budget only; --budget {args.budget} stops each model on its {budget.kind}")
    if not 0 <= args.warmup_fraction < 1:
        ap.error(f"--warmup-fraction must be in [0, 1), got {args.warmup_fraction}")
    torch.set_num_threads(args.threads)
    t_start = time.perf_counter()

    # ---- data: the trainer's store, split and pairs -------------------------------------------------------
    path = make_store(args)
    store = WeatherStore(path, args.variables.split(","), [v for v in args.surface_variables.split(",") if v],
                         [int(v) for v in args.levels.split(",")])
    spec = InputSpec(tuple(c.name for c in store.channels), coord_features=True, history=args.history)
    n_state, n_in = spec.n_state, spec.n_in
    train_starts, val_starts = split_train_val(store, 1, args.val_fraction, args.history)
    if args.train_trajectories:
        kept = np.unique(store.trajectory[train_starts])[:args.train_trajectories]
        if len(kept) < args.train_trajectories:
            raise SystemExit(f"--train-trajectories {args.train_trajectories}: the store has only {len(kept)} "
                             f"training trajectories")
        train_starts = train_starts[np.isin(store.trajectory[train_starts], kept)]
    train_set = spec.pairs(store, train_starts, FULL, FULL)
    train_xy = cached(train_set)
    val_xy = cached(spec.pairs(store, val_starts, FULL, FULL))
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
    rollout_set = None
    if args.rollout_steps > 1:  # the same trajectories, pairs spanning K steps
        span_starts, _ = split_train_val(store, args.rollout_steps, args.val_fraction, args.history)
        rollout_set = spec.pairs(store, span_starts[np.isin(span_starts, train_starts)], FULL, FULL,
                                 rollout=args.rollout_steps)
    # FLOPs of a step of each kind (a FLOPs budget counts them; every budget records them)
    x1, y1 = train_xy[0][:args.batch], train_xy[1][:args.batch]
    xk, yk, _ = rollout_set.read_batch([i % len(rollout_set) for i in range(args.batch)]) if rollout_set else (0, 0, 0)
    flops = {name: {"one_step": step_flops(m, lambda: loss_fn(m(x1), y1)),
                    "rollout": step_flops(m, lambda: rollout_loss(m, xk, yk, loss_fn, n_state, args.history))
                    if rollout_set else 0} for name, m in models.items()}
    print(f"budget {budget}: " + ", ".join(
        f"{n} {f['one_step'] / 1e9:.2f} GFLOP per step" + (f", {f['rollout'] / 1e9:.2f} per {args.rollout_steps}-step "
                                                           f"rollout step" if rollout_set else "")
        for n, f in flops.items()), flush=True)
    histories, cost = {}, {}
    for name, model in models.items():
        print(f"training {name} until {budget} is spent, batch {args.batch}", flush=True)
        histories[name], c = train(name, model, args, budget, flops[name], train_xy, val_xy, loss_fn, n_state,
                                   rollout_set, train_set)
        cost[name] = [c]
    # a seed ensemble (--members N): N - 1 more of each model, other seeds (initialisation and batch order),
    # the same budget each, so the ensemble costs N times a single model's training
    ensembles = {name: [model] for name, model in models.items()}
    member_val_loss = {name: [histories[name][-1]["val_loss"]] for name in models}
    for i in range(1, args.members):
        for name, build in (("WeatherMixer", lambda s: build_mixer(mixer_cfg, store, n_in, n_state, s)),
                            ("SFNO", lambda s: build_sfno(args, store, n_in, n_state, width, s))):
            print(f"training {name} member {i} (seed {args.seed + i}) until {budget} is spent", flush=True)
            member = build(args.seed + i)
            history, c = train(name, member, args, budget, flops[name], train_xy, val_xy, loss_fn, n_state,
                               rollout_set, train_set, seed=args.seed + i)
            ensembles[name].append(member)
            member_val_loss[name].append(history[-1]["val_loss"])
            cost[name].append(c)
    # what the ensemble of each model cost in all (one member: that model's run)
    total = {key: {n: sum(c[key] for c in cs) for n, cs in cost.items()} for key in ("steps", "seconds", "flops")}

    # ---- evaluate as jigsaw-eval does -------------------------------------------------------------------------
    k = args.lead_steps
    eval_train, eval_val = split_train_val(store, k, args.val_fraction, args.history)  # same trajectories held out
    inits = eval_val if not args.inits else \
        eval_val[np.linspace(0, len(eval_val) - 1, min(args.inits, len(eval_val))).astype(int)]
    rows, eval_s = score_rollouts(ensembles, store, inits, eval_train, k, spec)
    names = [*models, "persistence", "climatology"]
    table = summary_table(rows, names)
    print_table(table, names)
    print("\nparameters: " + ", ".join(f"{n} {c:,}" for n, c in counts.items()))
    print("train time: " + ", ".join(
        f"{n} {total['seconds'][n]:.1f} s, {total['steps'][n]} steps (median step "
        + ", ".join(f"{p} {ms:.1f} ms" for p, ms in cs[0]["median_step_ms"].items()) + ")" for n, cs in cost.items()))
    print("final one-step loss (tendency units) train / val: " + ", ".join(
        f"{n} {h[-1]['loss']:.3f} / {h[-1]['val_loss']:.3f}" for n, h in histories.items())
        + f", persistence val {histories['SFNO'][-1]['val_loss_persistence']:.3f}")

    # ---- write ------------------------------------------------------------------------------------------------
    result = {
        "bench": "peer_sfno", "command": " ".join(["python bench/peer_sfno.py", *(argv if argv is not None else sys.argv[1:])]),
        "store": os.path.relpath(path, ROOT), "grid": [store.n_lat, store.n_lon],
        "trajectories": int(len(np.unique(store.trajectory))), "train_pairs": int(len(train_starts)),
        "val_pairs": int(len(val_starts)), "eval_inits": int(len(inits)), "lead_steps": k,
        "training": {key: getattr(args, key) for key in ("steps", "batch", "lr", "weight_decay", "warmup_fraction",
                                                         "warmup_min_ratio", "cos_min_ratio", "clip", "seed",
                                                         "train_trajectories", "rollout_steps", "rollout_fraction",
                                                         "lon_roll", "history", "members")} | {"budget": str(budget)},
        "budget": {"kind": budget.kind, "amount": budget.amount},
        "member_val_loss": member_val_loss,
        "steps": total["steps"], "train_seconds": total["seconds"], "train_flops": total["flops"],
        "train_flops_per_step": flops,
        "cost": cost,  # per model, per member: steps, seconds, FLOPs, step times, load average before and after
        "threads": args.threads,
        "models": {"WeatherMixer": {"config": mixer_cfg.__dict__, "parameters": counts["WeatherMixer"]},
                   "SFNO": {"config": {"embed_dim": width, "num_layers": args.sfno_layers,
                                       "scale_factor": args.sfno_scale_factor, "mlp_ratio": args.sfno_mlp_ratio,
                                       "grid": sfno.net.grid, "internal_grid": [sfno.net.h, sfno.net.w],
                                       "spectral_truncation": sfno.net.trans.lmax},
                            "parameters": counts["SFNO"]}},
        "rollout_seconds": {n: round(s, 2) for n, s in eval_s.items()},
        "history": histories,
        "rmse_table": {ch: {str(lead): v for lead, v in by.items()} for ch, by in table.items()},
        "rows": [{k: (None if isinstance(v, float) and not math.isfinite(v) else v) for k, v in r.items()}
                 for r in rows],  # ACC of climatology is undefined (NaN): null in strict JSON
        "total_seconds": round(time.perf_counter() - t_start, 1),
    }
    result |= cost_balance(result)
    if result["unequal"]:
        print(f"warning: WeatherMixer / SFNO {result['cost_measure']} = {result['cost_ratio']:.3f}, more than "
              f"{EQUAL_COST:.0%} apart: marked unequal in the JSON", flush=True)
    os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
    with open(args.out, "w") as f:
        json.dump(result, f, indent=1, allow_nan=False)
    if args.plot:
        plot(rows, names, [c.name for c in store.channels], args.plot)
    print(f"wrote {args.out}" + (f" and {args.plot}" if args.plot else "") + f" in {result['total_seconds']:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())

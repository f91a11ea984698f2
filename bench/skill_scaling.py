"""Skill vs training data (issue 19): bench/peer_sfno at several training-set sizes on one shallow-water store.

    python bench/skill_scaling.py --budget seconds:S [--sizes 16,32,64,128] [--extra "more peer_sfno flags"]

The store (made if missing, outside CI: `jigsaw-data swe --grid 65x128 --trajectories 144 --steps 40 --seed 0`,
144 runs of 10 days, 6-hourly) holds out its last 16 trajectories; each size N trains both models on the
first N of the others (bench/peer_sfno.py --train-trajectories N) under the same --budget and scores them
on the same held-out initial times. Per size a peer_sfno JSON in bench/results/skill/
(peer_sfno_<budget><tag>_<N>.json, the budget without its colon: seconds:285 -> seconds285); then a table of
the RMSE at 24, 48, 72 h (WeatherMixer / SFNO ratio) and of how each model stands against persistence and
climatology at every lead, bench/results/skill/scaling_<budget><tag>.json and the plot
docs/skill_scaling_<budget><tag>.png.
A result whose two models' training cost came out more than 5% apart (peer_sfno.cost_balance: for a seconds
budget, and for the old wall runs, their measured train_seconds) is refused unless --allow-unequal: it is
not the equal-cost comparison these tables claim. Finished results of an old budget (e.g. --budget wall
--steps 400) are still read back; only training a missing size needs a budget peer_sfno takes today.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(ROOT, "bench"))

import peer_sfno  # noqa: E402

CHANNELS = ("geopotential_500", "u_component_of_wind_500", "v_component_of_wind_500")
LEADS = (24, 48, 72, 120)
MODELS = ("WeatherMixer", "SFNO")


def refuse_unequal(path: str, result: dict, allow_unequal: bool = False) -> dict:
    """The result's cost balance (peer_sfno.cost_balance); ValueError naming the file and the ratio when its
    models' costs are unequal, unless allow_unequal."""
    balance = peer_sfno.cost_balance(result)
    if balance["unequal"] and not allow_unequal:
        measure = balance["cost_measure"]
        raise ValueError(f"{path}: WeatherMixer / SFNO {measure} {balance['cost_ratio']:.3g} "
                         f"({result[measure]['WeatherMixer']:.4g} / {result[measure]['SFNO']:.4g}), more than "
                         f"{peer_sfno.EQUAL_COST:.0%} apart: not an equal-cost result "
                         "(--allow-unequal to use it anyway)")
    return balance


def global_rmse(rows) -> dict:
    """{(channel, lead_hours): {forecast: rmse}} of the global rows."""
    return {(r["channel"], r["lead_hours"]): r for r in rows if r["metric"] == "rmse" and r["region"] == "global"}


def summarise(results: dict) -> dict:
    """Per size: the RMSE ratio WeatherMixer / SFNO at LEADS, and per model whether it beats persistence and
    climatology at every lead."""
    out = {}
    for size, res in results.items():
        rmse = global_rmse(res["rows"])
        leads = sorted({lead for _, lead in rmse})
        out[size] = {
            "ratio": {f"{ch}@{lead}": rmse[(ch, lead)]["WeatherMixer"] / rmse[(ch, lead)]["SFNO"]
                      for ch in CHANNELS for lead in LEADS if (ch, lead) in rmse},
            "beats_persistence_and_climatology": {
                m: all(r[m] < r["persistence"] and r[m] < r["climatology"]
                       for (ch, _), r in rmse.items() if ch in CHANNELS) for m in MODELS},
            "first_lead_not_beating_them": {  # per model and channel, None where it beats both at every lead
                m: {ch: next((lead for lead in leads if not (rmse[(ch, lead)][m] < rmse[(ch, lead)]["persistence"]
                                                            and rmse[(ch, lead)][m] < rmse[(ch, lead)]["climatology"])),
                             None) for ch in CHANNELS} for m in MODELS},
            "steps": res["steps"], "train_seconds": res["train_seconds"], "leads": leads,
            "cost": peer_sfno.cost_balance(res),
            "val_loss": {m: res["history"][m][-1].get("val_loss") for m in MODELS}}
    return out


def plot_rmse(xs, rmses, xlabel: str, title: str, path: str, log2_x: bool = False) -> None:
    """Each model's held-out RMSE against x (one panel per channel, one line per lead); rmses[i] is
    global_rmse of the run at xs[i]."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(CHANNELS), figsize=(4 * len(CHANNELS), 3.4), squeeze=False)
    for ax, ch in zip(axes[0], CHANNELS):
        for lead, style in zip(LEADS, ("-", "--", ":", "-.")):
            if (ch, lead) not in rmses[0]:
                continue  # a rollout shorter than this lead
            for m, color in zip(MODELS, ("C0", "C3")):
                ax.plot(xs, [r[(ch, lead)][m] for r in rmses], color=color, ls=style, marker="o",
                        markersize=3, label=f"{m} {lead} h")
        if log2_x:
            ax.set_xscale("log", base=2)
        ax.set_xlabel(xlabel)
        ax.set_title(ch, fontsize=9)
        ax.grid(alpha=0.3)
    axes[0][0].set_ylabel("RMSE (held-out)")
    axes[0][0].legend(fontsize=6)
    fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)


def _flags(peer_sfno_argv: list) -> list:
    """peer_sfno's arguments without the paths (--store, --out), which differ between clones."""
    argv = [a for a in peer_sfno_argv if a]
    return [a for i, a in enumerate(argv) if a not in ("--store", "--out") and argv[i - 1] not in ("--store", "--out")]


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--store", default=os.path.join(ROOT, "runs", "skill", "swe65_144x40.zarr"))
    ap.add_argument("--sizes", default="16,32,64,128")
    ap.add_argument("--budget", required=True, metavar="seconds:S|flops:F|steps",
                    help="bench/peer_sfno.py's --budget for every size; names the files")
    ap.add_argument("--steps", type=int, default=None, help="with --budget steps: each model's steps")
    ap.add_argument("--allow-unequal", action="store_true",
                    help="use results whose models' training costs came out more than 5%% apart")
    ap.add_argument("--inits", type=int, default=48, help="held-out initial times")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--extra", default="", help="more peer_sfno flags, quoted")
    ap.add_argument("--tag", default="", help="names a variant's files (e.g. _rollout4 with --extra '--rollout-steps 4')")
    ap.add_argument("--results", default=os.path.join(ROOT, "bench", "results", "skill"))
    ap.add_argument("--plot", default="", help="default docs/skill_scaling_<budget><tag>.png")
    args = ap.parse_args(argv)
    label = args.budget.replace(":", "")
    args.plot = args.plot or os.path.join(ROOT, "docs", f"skill_scaling_{label}{args.tag}.png")
    outs = {size: os.path.join(args.results, f"peer_sfno_{label}{args.tag}_{size}.json")
            for size in args.sizes.split(",")}
    if not all(map(os.path.exists, outs.values())):  # a size to train: a budget peer_sfno takes, before any work
        try:
            peer_sfno.parse_budget(args.budget)
        except ValueError as e:
            print(f"skill_scaling: error: {e}", file=sys.stderr)
            return 2
    if not os.path.exists(args.store):
        t0 = time.perf_counter()
        subprocess.run([os.path.join(os.path.dirname(sys.executable), "jigsaw-data"), "swe", "--out", args.store,
                        "--grid", "65x128", "--trajectories", "144", "--steps", "40", "--seed", "0"], check=True)
        print(f"made {args.store} in {time.perf_counter() - t0:.0f} s")
    os.makedirs(args.results, exist_ok=True)
    results = {}
    for size, out in outs.items():
        run = ["--store", args.store, "--val-fraction", "0.1112", "--train-trajectories", size, "--budget", args.budget,
               *(["--steps", str(args.steps)] if args.steps is not None else []), "--inits", str(args.inits),
               "--threads", str(args.threads), "--log-every", "200", "--val-every", "1000000", "--out", out,
               "--plot", "", *args.extra.split()]
        if not os.path.exists(out):  # a finished size is kept: the sweep resumes where it stopped
            peer_sfno.main(run)
        results[size] = json.load(open(out))
        if _flags(results[size]["command"].split()[2:]) != _flags(run):
            raise SystemExit(f"{out} was run as `{results[size]['command']}`, not with this command's flags: "
                             "rerun with the same flags, or name the variant with --tag")
        try:
            refuse_unequal(out, results[size], args.allow_unequal)
        except ValueError as e:
            print(f"skill_scaling: error: {e}", file=sys.stderr)
            return 2
    summary = summarise(results)
    print(f"\nRMSE WeatherMixer / SFNO on held-out trajectories ({args.budget} budget"
          + (f", {args.steps} steps" if args.steps is not None else "") + ")")
    print(f"{'trajectories':>12s}  " + "  ".join(f"{ch.split('_')[0][:4]}@{lead:<3d}" for ch in CHANNELS
                                                    for lead in LEADS) + "   beats persistence+climatology")
    for size, s in summary.items():
        print(f"{size:>12s}  " + "  ".join(f"{s['ratio'].get(f'{ch}@{lead}', float('nan')):8.3f}" for ch in CHANNELS
                                           for lead in LEADS)
              + "   " + ", ".join(f"{m} {'yes' if ok else 'no'}" for m, ok in s["beats_persistence_and_climatology"].items())
              + (f"   UNEQUAL cost: {s['cost']['cost_measure']} ratio {s['cost']['cost_ratio']:.3g}"
                 if s["cost"]["unequal"] else ""))
    with open(os.path.join(args.results, f"scaling_{label}{args.tag}.json"), "w") as f:
        json.dump({"budget": args.budget, "steps": args.steps, "store": os.path.relpath(args.store, ROOT),
                   "extra": args.extra, "commands": {n: r["command"] for n, r in results.items()},
                   "summary": summary}, f, indent=1)
    if args.plot:
        sizes = sorted(results, key=int)
        plot_rmse([int(n) for n in sizes], [global_rmse(results[n]["rows"]) for n in sizes], "training trajectories",
                  f"WeatherMixer vs SFNO: skill vs training data ({args.budget} budget)", args.plot, log2_x=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())

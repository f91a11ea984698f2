"""Each model's own skill across bench/peer_sfno runs (issue 19's sweeps: learning rate, size, budget, options).

    python bench/skill_compare.py RUN [RUN ...] [--name lr] [--results bench/results/skill]
        [--x "budget (s)=285,855" --plot docs/skill_budget.png] [--allow-unequal]

RUN names a peer_sfno JSON in --results: `wall_rollout8h_lonroll_hist1_lr8e-3_128` is
peer_sfno_wall_rollout8h_lonroll_hist1_lr8e-3_128.json. skill_scaling's tables give the ratio WeatherMixer /
SFNO within one run; a sweep asks which run is best for each model, so this prints, per run and model, the
held-out RMSE of z500, u500, v500 at 24 / 72 / 120 h, the one-step held-out loss, steps and parameters, and
each model's best run per column; JSON to <results>/compare_<name>.json. With --x (one value per run, e.g.
the budget) and --plot, a plot of each model's RMSE against it: the curve of where the two cross. A run
whose two models' training cost came out more than 5% apart (for a seconds budget, and for the old wall
runs, their measured train_seconds; skill_scaling.refuse_unequal) is refused unless --allow-unequal, and
each run's cost ratio goes into the JSON.
"""
from __future__ import annotations

import argparse
import json
import os
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(ROOT, "bench"))

from skill_scaling import CHANNELS, MODELS, global_rmse, plot_rmse, refuse_unequal  # noqa: E402

LEADS = (24, 72, 120)
SHORT = dict(zip(CHANNELS, ("z", "u", "v")))


def summarise(result: dict, rmse: dict) -> dict:
    """Per model: steps, parameters, held-out loss and the RMSE columns; rmse is global_rmse of its rows."""
    return {m: {"steps": result["steps"][m], "parameters": result["models"][m]["parameters"],
                "val_loss": result["history"][m][-1]["val_loss"],
                "rmse": {f"{ch}@{lead}": rmse[(ch, lead)][m] for lead in LEADS for ch in CHANNELS}}
            for m in MODELS}


def parse_x(spec: str, n_runs: int) -> tuple[str, list[float]]:
    """'budget (s)=57,114,171' -> ('budget (s)', [57.0, 114.0, 171.0]), one value per run."""
    label, sep, values = spec.rpartition("=")
    try:
        xs = [float(v) for v in values.split(",")]
    except ValueError:
        xs = []
    if not sep or not label or len(xs) != n_runs:
        raise ValueError(f"--x {spec!r}: expected LABEL=V1,...,V{n_runs} (one number per run)")
    return label, xs


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("runs", nargs="+")
    ap.add_argument("--name", default="runs", help="names the JSON: compare_<name>.json")
    ap.add_argument("--results", default=os.path.join(ROOT, "bench", "results", "skill"))
    ap.add_argument("--x", default="", metavar="LABEL=V1,V2,...", help="one value per run, for --plot")
    ap.add_argument("--plot", default="", help="PNG of each model's RMSE against --x")
    ap.add_argument("--allow-unequal", action="store_true",
                    help="use runs whose models' training costs came out more than 5%% apart")
    args = ap.parse_args(argv)
    try:
        xlabel, xs = parse_x(args.x, len(args.runs)) if args.x else ("", [])
    except ValueError as e:
        ap.error(str(e))
    if args.plot and not xs:
        ap.error("--plot needs --x LABEL=V1,V2,... (one value per run)")
    table, rmses, cost = {}, [], {}
    for run in args.runs:
        path = os.path.join(args.results, f"peer_sfno_{run}.json")
        if not os.path.exists(path):
            raise SystemExit(f"{path}: no such run (bench/skill_scaling.py --tag writes them)")
        with open(path) as f:
            result = json.load(f)
        try:
            cost[run] = refuse_unequal(path, result, args.allow_unequal)
        except ValueError as e:
            print(f"skill_compare: error: {e}", file=sys.stderr)
            return 2
        rmses.append(global_rmse(result["rows"]))
        table[run] = summarise(result, rmses[-1])
    keys = list(next(iter(table.values()))["WeatherMixer"]["rmse"])
    best = {m: {k: min(table, key=lambda r: table[r][m]["rmse"][k]) for k in keys} for m in MODELS}
    width = max(len(r) for r in table)
    print(f"{'run':{width}s}  {'model':12s} {'params':>7s} {'steps':>5s} {'val':>6s}  "
          + "  ".join(f"{SHORT[k.split('@')[0]] + '@' + k.split('@')[1]:>8s} " for k in keys))
    for run, models in table.items():
        for m, s in models.items():
            print(f"{run:{width}s}  {m:12s} {s['parameters']:7d} {s['steps']:5d} {s['val_loss']:6.4f}  "
                  + "  ".join(f"{s['rmse'][k]:8.2f}" + ("*" if best[m][k] == run else " ") for k in keys))
    print("* the model's lowest RMSE over these runs")
    for run, c in cost.items():
        if c["unequal"]:
            print(f"UNEQUAL cost (--allow-unequal): {run}: WeatherMixer / SFNO {c['cost_measure']} "
                  f"{c['cost_ratio']:.3g}")
    out = os.path.join(args.results, f"compare_{args.name}.json")
    with open(out, "w") as f:
        json.dump({"bench": "skill_compare", "command": " ".join(["python bench/skill_compare.py",
                                                                    *(argv if argv is not None else sys.argv[1:])]),
                   "runs": table, "best_run": best, "cost": cost,
                   **({"x": {"label": xlabel, "values": xs}} if xs else {})},
                  f, indent=1)
    print(f"wrote {out}")
    if args.plot:
        plot_rmse(xs, rmses, xlabel, f"WeatherMixer vs SFNO: held-out RMSE against {xlabel}", args.plot)
        print(f"wrote {args.plot}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

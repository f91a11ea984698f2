"""Forcings on real data: ERA5 2 m temperature over the UK (March 2019, hourly), +6 h forecasts.

    python bench/forcings_uk.py [--steps 300] [--out bench/results/forcings_uk.json]

The real series in ../shared/data/era5-2mt-2019-03-uk.grib (33 x 49 points at 0.25 deg, 744 hours) is ingested
with `jigsaw-data prepare`; the first 24 days train, the last 7 are held out (data.val_fraction = 7/31, the
trainer's split). The same small WeatherMixer is trained twice through the real CLIs (jigsaw-train on one
process, jigsaw-ckpt export, jigsaw-eval), with the same seed, steps and batch stream: once with the forcings
(TOA solar radiation, time of day, day of year, at input and target time) and once without. jigsaw-eval scores
both on every held-out initial time at +6 h against persistence and the hour-of-day climatology of the
training days (WB2 latitude-weighted RMSE). Prints a table and writes the JSON.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BIN = os.path.dirname(sys.executable)
SOURCE = os.path.join(ROOT, "..", "shared", "data", "era5-2mt-2019-03-uk.grib")
FORCINGS = ["toa_solar", "time_of_day", "day_of_year"]


def sh(*cmd):
    env = dict(os.environ, OMP_NUM_THREADS=os.environ.get("OMP_NUM_THREADS", "2"))
    proc = subprocess.run(list(cmd), cwd=ROOT, env=env, capture_output=True, text=True)
    if proc.returncode:
        sys.exit(f"{' '.join(cmd)} failed:\n{proc.stdout[-2000:]}\n{proc.stderr[-4000:]}")
    return proc


def configs(work: str, store: str, name: str, forcings: list, args) -> list:
    conf = {"model": {"patch": 1, "embed_dim": 32, "token_hidden": 32, "channel_hidden": 64, "depth": 2,
                      "coord_features": True, "forcings": forcings, "forcings_at_target": bool(forcings)},
            "data": {"store": store, "surface_variables": ["2m_temperature"], "lead_steps": 6,
                     "val_fraction": 7 / 31},
            "parallel": {"domain": 1, "tensor": 1},
            "train": {"steps": args.steps, "global_batch": args.batch, "seed": args.seed,
                      "out_dir": os.path.join(work, name), "val_every": args.steps, "val_batches": 4,
                      "ckpt_every": 0, "progress": False, "warmup_fraction": min(1.0, 50 / args.steps)}}
    ds = {"zero_optimization": {"stage": 1}, "gradient_clipping": 1.0,
          "optimizer": {"type": "AdamW", "params": {"lr": args.lr, "weight_decay": 0.01, "torch_adam": True}},
          "scheduler": {"type": "WarmupCosineLR", "params": {"warmup_min_ratio": 0.1, "cos_min_ratio": 0.02}}}
    paths = [os.path.join(work, f"{name}.json"), os.path.join(work, "ds.json")]
    for path, content in zip(paths, (conf, ds)):
        with open(path, "w") as f:
            json.dump(content, f, indent=1)
    return ["--config", paths[0], "--deepspeed_config", paths[1]]


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--source", default=SOURCE)
    ap.add_argument("--work", default=os.path.join(ROOT, "runs", "forcings_uk"))
    ap.add_argument("--steps", type=int, default=300)
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--lr", type=float, default=2e-3)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", default=os.path.join(ROOT, "bench", "results", "forcings_uk.json"))
    args = ap.parse_args(argv)
    os.makedirs(args.work, exist_ok=True)
    store = os.path.join(args.work, "uk_t2m.zarr")
    if not os.path.exists(store):
        sh(os.path.join(BIN, "jigsaw-data"), "prepare", args.source, "--out", store, "--workers", "1")
    results = {}
    for name, forcings in (("with_forcings", FORCINGS), ("without_forcings", [])):
        run_dir = os.path.join(args.work, name)
        t0 = time.perf_counter()
        sh(os.path.join(BIN, "jigsaw-train"), *configs(args.work, store, name, forcings, args), "--start-over")
        train_s = time.perf_counter() - t0
        sh(os.path.join(BIN, "jigsaw-ckpt"), "export", run_dir, "--out", os.path.join(run_dir, "model.pt"))
        sh(os.path.join(BIN, "jigsaw-eval"), "--checkpoint", os.path.join(run_dir, "model.pt"), "--data", store,
           "--out", os.path.join(run_dir, "eval"), "--lead-steps", "1", "--inits", "1000", "--all-hours",
           "--no-plots")
        with open(os.path.join(run_dir, "eval", "scores.json")) as f:
            scores = json.load(f)
        row = next(r for r in scores["rows"] if r["metric"] == "rmse" and r["lead_hours"] == 6)
        results[name] = {"rmse_6h": row["model"], "persistence": row["persistence"],
                         "climatology": row["climatology"], "inits": scores["inits"], "train_seconds": train_s}
    base = results["with_forcings"]
    print(f"\nUK 2 m temperature, +6 h, {base['inits']} held-out initial times (last 7 days), RMSE in K")
    print(f"{'':24s}{'RMSE':>8s}")
    for name, r in results.items():
        print(f"WeatherMixer {name:11s}{r['rmse_6h']:8.3f}   ({args.steps} steps, {r['train_seconds']:.0f} s)")
    print(f"{'persistence':24s}{base['persistence']:8.3f}\n{'hour-of-day climatology':24s}{base['climatology']:8.3f}")
    os.makedirs(os.path.dirname(args.out), exist_ok=True)
    with open(args.out, "w") as f:
        json.dump({"command": "python bench/forcings_uk.py " + " ".join(argv or sys.argv[1:]), "steps": args.steps,
                   "batch": args.batch, "seed": args.seed, "results": results}, f, indent=1)
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Forecast throughput of the eval engine (issue 16): jigsaw-forecast in one process on the 0.25 deg config
(configs/era5_025deg.json) on a GPU, fp32 and bf16 autocast; forecast steps per second as the engine delivers
them (reading the initial states, the rollout on the device, writing every step's field into forecast.zarr).

    python bench/forecast.py                        # on a GPU: the 0.25 deg config (bench/gpu.sh runs it)
    python bench/forecast.py --small                # on CPU: the small config of bench/step.py (a check)
    python bench/forecast.py --full-grid --config NARROW.json   # on CPU: 721 x 1440 with a narrow model

The weights are the config's seeded initialisation (speed only, not skill), saved as a layout-free file; the
store is bench/step.py's (the same path: made there, or here if missing). JSON written after each precision.
"""
from __future__ import annotations

import argparse
import datetime
import json
import os
import sys
import time

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from step import ROOT, bench_store, build_config  # noqa: E402  (bench/step.py: one store and config recipe)

from jigsaw_ds.checkpoint.layout_free import FORMAT, build_model  # noqa: E402
from jigsaw_ds.files import write_atomic  # noqa: E402
from jigsaw_ds.data.store import WeatherStore  # noqa: E402
from jigsaw_ds.eval import evaluate as ev  # noqa: E402
from jigsaw_ds.perf import step_model as pm  # noqa: E402
from jigsaw_ds.quiet import quiet_libraries  # noqa: E402


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--config", default=os.path.join(ROOT, "configs", "era5_025deg.json"))
    ap.add_argument("--small", action="store_true", help="bench/step.py's small config (implied without CUDA)")
    ap.add_argument("--full-grid", action="store_true",
                    help="the 0.25 deg grid without CUDA too (give a narrow --config: the host-side cost at full size)")
    ap.add_argument("--depth", type=int, default=0)
    ap.add_argument("--store", default="")
    ap.add_argument("--lead-steps", type=int, default=8)
    ap.add_argument("--inits", type=int, default=2, help="initial times (the store's first ones)")
    ap.add_argument("--batch", type=int, default=2)
    ap.add_argument("--precisions", default="fp32,bf16")
    ap.add_argument("--out", default="")
    args = ap.parse_args(argv)
    quiet_libraries(0)
    cuda = torch.cuda.is_available()
    small = args.small or not (cuda or args.full_grid)
    jcfg = build_config(args, small)
    grid = (32, 64) if small else (721, 1440)
    shape = pm.ModelShape.from_config(jcfg, grid)
    tag = f"{'cuda' if cuda else 'cpu'}_{grid[0]}x{grid[1]}"
    args.store = args.store or os.path.join("/tmp", f"jigsaw_bench_{tag}_{shape.c_out}ch.zarr")
    args.out = args.out or os.path.join(ROOT, "bench", "results", f"forecast_{tag}.json")
    if not cuda:
        torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", "1")))

    t0 = time.perf_counter()
    bench_store(args.store, jcfg.data.variables, jcfg.data.levels, jcfg.data.surface_variables,
                jcfg.model.static_variables, grid[0], grid[1], max(6, args.inits))
    store = WeatherStore(args.store, jcfg.data.variables, jcfg.data.surface_variables, jcfg.data.levels,
                         jcfg.model.static_variables)
    run_config = {"jigsaw": jcfg.to_dict(), "channels": [c.name for c in store.channels],
                  "model_shape": shape.record()}
    model = build_model(run_config)
    weights = os.path.join("/tmp", f"jigsaw_forecast_bench_{tag}.pt")
    torch.save({"format": FORMAT, "step": 0, "config": run_config, "model": {n: p.detach() for n, p in model.named_parameters()},
                "buffers": dict(model.named_buffers())}, weights)
    res = {"date": datetime.date.today().isoformat(), "command": " ".join(["python bench/forecast.py"] +
                                                                            (argv or sys.argv[1:])),
           "device": torch.cuda.get_device_name() if cuda else f"cpu ({os.cpu_count()} cores)",
           "torch": torch.__version__, "grid": grid, "channels": shape.c_out, "lead_steps": args.lead_steps,
           "inits": args.inits, "batch": args.batch, "parameters": sum(p.numel() for p in model.parameters()),
           "setup_s": time.perf_counter() - t0, "runs": {}}
    del model
    inits = [str(t)[:19] for t in store.times[:args.inits]]
    for precision in args.precisions.split(","):
        out = os.path.join("/tmp", f"jigsaw_forecast_bench_{tag}_{precision}")
        ev.evaluate(weights, args.store, out, args.lead_steps, batch=args.batch, init_times=inits,
                    precision=precision, overwrite=True)  # a scratch folder of this benchmark's own
        got = json.load(open(os.path.join(out, "forecast.json")))["throughput"]
        res["runs"][precision] = got
        print(f"{precision}: {got['forecast_steps_per_s']:.3f} forecast steps/s ({got['device']}), "
              f"{got['rollout_and_scoring_s']:.1f} s for {args.inits} x {args.lead_steps} steps", flush=True)
        os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
        write_atomic(args.out, json.dumps(res, indent=1, default=str))
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

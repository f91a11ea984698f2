"""jigsaw-eval: autoregressive rollouts scored with WeatherBench2's metrics against persistence and climatology;
jigsaw-forecast: forecasts only, from given initial times. One process or under the launcher at any layout.

    jigsaw-eval --checkpoint RUN_DIR|CKPT_DIR|FILE[,...] --data STORE --out DIR [--lead-steps K] [--inits N]
                [--device auto|cpu|cuda] [--precision fp32|bf16] [--climatology WB2_CLIM.zarr] [--overwrite]
    jigsaw-forecast --checkpoint ... --data STORE --out DIR --init-times 2020-01-05T00,2020-01-05T12 --lead-steps K
    torchrun --nproc_per_node 8 -m jigsaw_ds.eval.cli ... --domain 2 --tensor 2     # data axis: 8 / 4

What they write (forecast.zarr, scores.json/csv/nc, headline.csv, spectra, plots) and how the ranks share the
work: jigsaw_ds/eval/evaluate.py (the engine) and docs/evaluation.md.
"""
from __future__ import annotations

import argparse
import json
import os
import sys

# the engine (torch, the store's libraries) loads once the arguments are read: --help and a bad flag answer
# at once
from ..errors import run_main
from ..quiet import quiet_libraries


def parse_args(argv, forecast: bool):
    prog = "jigsaw-forecast" if forecast else "jigsaw-eval"
    ap = argparse.ArgumentParser(prog=prog, description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--checkpoint", required=True, help="run directory, checkpoint folder or layout-free file; "
                                                        "several, comma-separated: their mean forecast (seed ensemble)")
    ap.add_argument("--data", required=True, help="zarr store of the initial states" + ("" if forecast else
                                                                                          " (held-out split)"))
    ap.add_argument("--out", required=True)
    ap.add_argument("--lead-steps", type=int, default=4, help="rollout length in model steps")
    if forecast:
        ap.add_argument("--init-times", required=True, help="comma-separated initial times of the store "
                                                            "(e.g. 2020-01-05T00,2020-01-05T12)")
    else:
        ap.add_argument("--inits", type=int, default=32, help="number of initial times")
        ap.add_argument("--all-hours", action="store_true",
                        help="initial times at every hour of the held-out times (default: at 00 and 12 UTC, as "
                             "WeatherBench2, where the store has them)")
        ap.add_argument("--no-plots", action="store_true")
    ap.add_argument("--domain", type=int, default=1, help="ranks splitting each field's latitude bands")
    ap.add_argument("--tensor", type=int, default=1, help="ranks splitting its longitudes and the channel mixing")
    ap.add_argument("--batch", type=int, default=4, help="initial times rolled out together per rank")
    ap.add_argument("--device", default="auto", help="auto (the rank's GPU where CUDA is present), cpu or cuda")
    ap.add_argument("--precision", default="fp32", help="fp32, or bf16 (autocast; the state stays fp32)")
    if not forecast:
        ap.add_argument("--climatology", help="WB2-format climatology store (hour, dayofyear, [level,] latitude, "
                                              "longitude) for ACC and the climatology forecast")
    ap.add_argument("--overwrite", action="store_true",
                    help="replace the outputs of an earlier evaluation or forecast in --out (else refused)")
    return ap.parse_args(argv)


def main(argv=None, forecast: bool = False) -> int:
    args = parse_args(argv, forecast)
    from ..parallel.allocation import env_rank

    rank = env_rank()  # under srun RANK is unset: the SLURM rank decides who prints
    quiet_libraries(rank)
    # bad input (EvalError, ConfigError, StoreError, ...): one line, exit 2; a bug keeps its traceback
    return run_main("jigsaw-forecast" if forecast else "jigsaw-eval", rank, _run, args, forecast, rank)


def _run(args, forecast: bool, rank: int) -> int:
    import torch
    import torch.distributed as dist

    from ..parallel.allocation import allocation_from_env
    from .evaluate import evaluate

    prog = "jigsaw-forecast" if forecast else "jigsaw-eval"
    if allocation_from_env().world == 1:  # one process has the machine's cores
        torch.set_num_threads(max(1, os.cpu_count() or 1))
    # a process without a launcher gets a group of one on a free port (init_distributed): its variables are
    # taken back at the end, so that a caller's later process groups and child processes do not inherit them
    launcher = {k: os.environ.get(k) for k in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT")}
    try:
        rows = evaluate(args.checkpoint, args.data, args.out, args.lead_steps, getattr(args, "inits", 1),
                        not getattr(args, "no_plots", True), args.domain, args.tensor, args.batch,
                        [t.strip() for t in args.init_times.split(",") if t.strip()] if forecast else None,
                        args.device, args.precision, getattr(args, "climatology", None), args.overwrite,
                        all_hours=getattr(args, "all_hours", False))
    finally:
        if dist.is_initialized():
            dist.destroy_process_group()
        for key, value in launcher.items():
            if value is None:
                os.environ.pop(key, None)
    if rank == 0:
        with open(os.path.join(args.out, "forecast.json" if forecast else "scores.json")) as f:
            speed = json.load(f)["throughput"]
        print(f"{prog}: {speed['initial_times_per_s']:.3g} initial times/s, {speed['forecast_steps_per_s']:.3g} "
              f"forecast steps/s ({speed['device']}, {speed['precision']}, layout {tuple(speed['layout'].values())})")
    if rank == 0 and forecast:
        print(f"jigsaw-forecast: wrote {os.path.join(args.out, 'forecast.zarr')} and forecast.json")
    elif rank == 0:
        print(f"{'channel':24s} {'lead h':>6s} {'model':>10s} {'persist':>10s} {'clim':>10s}   (RMSE)")
        for r in rows:
            if r["metric"] == "rmse" and r["region"] == rows[0]["region"]:  # the whole grid: global, or domain
                print(f"{r['channel']:24s} {r['lead_hours']:6d} {r['model']:10.4g} {r['persistence']:10.4g} "
                      f"{r['climatology']:10.4g}")
        print(f"jigsaw-eval: wrote forecast.zarr, scores (json, csv, nc), headline.csv, spectra and plots to "
              f"{args.out}")
    return 0


def forecast_main(argv=None) -> int:
    """jigsaw-forecast: forecasts from given initial times, no scoring (the same engine as jigsaw-eval)."""
    return main(argv, forecast=True)


if __name__ == "__main__":
    sys.exit(main())

"""jigsaw-plan: rank the (data, domain, tensor) layouts of a GPU count by predicted step time on a machine.

    jigsaw-plan --config configs/era5_025deg.json --gpus 16 --machine configs/machines/a100-40gb-4x-hdr200.json

Every layout with data x domain x tensor = GPUs that the trainer accepts (tensor divides the token columns
and channel_hidden, domain <= token rows, data divides the global batch) is predicted with perf/step_model.py
and either ranked (fits in HBM) or listed with the reason it cannot run. For each ranked layout the table
says what bounds it: compute, communication (naming the heaviest collective), or I/O.

By default the micro-batch is global_batch / data, as jigsaw-train runs without train.micro_batch (no gradient
accumulation), and activation checkpointing is off (the config's model.activation_checkpointing turns it on in
training); --accumulate picks the largest micro-batch that fits (run it with `--set train.micro_batch=B`),
--checkpointing on|auto models torch.utils.checkpoint around each block.
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import sys
from typing import Optional

from .. import config as jconfig
from ..errors import run_main
from ..parallel.topology import Layout
from . import step_model as pm
from .step_model import GB, OVERLAPS, Machine, ModelShape, TrainSetup


def parse_args(argv):
    ap = argparse.ArgumentParser(prog="jigsaw-plan", description=__doc__.split("\n")[0])
    ap.add_argument("--config", required=True, help="jigsaw config JSON (model, data, parallel, train)")
    ap.add_argument("--gpus", type=int, required=True, help="number of GPUs (world size)")
    ap.add_argument("--machine", required=True, help="machine description JSON (configs/machines/*.json)")
    ap.add_argument("--deepspeed_config", "--deepspeed-config", default="",
                    help="DeepSpeed JSON: takes precision (bf16.enabled) and ZeRO stage from it")
    ap.add_argument("--set", action="append", default=[], metavar="SECTION.KEY=VALUE", help="override a config value")
    ap.add_argument("--grid", default="", metavar="HxW", help="grid of the data (default: from the store or its name)")
    ap.add_argument("--global-batch", type=int, default=0, help="default: train.global_batch of the config")
    ap.add_argument("--precision", choices=["bf16", "fp32"], default="")
    ap.add_argument("--zero", type=int, choices=[0, 1, 2], default=-1, help="ZeRO stage (default 1)")
    ap.add_argument("--accumulate", action="store_true", help="allow gradient accumulation (largest micro-batch that fits)")
    ap.add_argument("--checkpointing", choices=["off", "on", "auto"], default="off",
                    help="activation checkpointing per block; auto: only where the layout does not fit without it")
    ap.add_argument("--overlap", choices=OVERLAPS, default="prefetch",
                    help="rank by: serial (nothing overlaps), prefetch (data loading overlaps; what the trainer "
                         "does), overlapped (every collective hidden too: a lower bound)")
    ap.add_argument("--dataset-steps", type=int, default=0, help="time steps in the training set (page-cache model)")
    ap.add_argument("--top", type=int, default=0, help="show only the best K layouts")
    ap.add_argument("--json", default="", help="also write the full result to this file")
    return ap.parse_args(argv)


def setup_from_args(args, cfg: jconfig.JigsawConfig) -> TrainSetup:
    ds = {"bf16": {"enabled": True}, "zero_optimization": {"stage": 1}}
    if args.deepspeed_config:
        ds = jconfig.read_json_object(args.deepspeed_config, "DeepSpeed config")
    setup = TrainSetup.from_deepspeed(ds, global_batch=args.global_batch or cfg.train.global_batch,
                                      checkpointing=args.checkpointing == "on", dataset_steps=args.dataset_steps)
    if args.precision:
        setup = dataclasses.replace(setup, precision=args.precision,
                                    grad_accum_fp32=setup.grad_accum_fp32 and args.precision == "bf16")
    return setup if args.zero < 0 else dataclasses.replace(setup, zero_stage=args.zero)


def plan_layout(shape: ModelShape, layout: Layout, machine: Machine, setup: TrainSetup, accumulate: bool,
                checkpointing: str) -> tuple[Optional[pm.StepPrediction], str]:
    """The prediction for one layout under the chosen options, or (None, why it cannot run)."""
    problems = pm.layout_problems(shape, layout, setup)
    if problems:
        return None, "; ".join(problems)
    choices = [False, True] if checkpointing == "auto" else [checkpointing == "on"]
    pred = None
    for ckpt in choices:
        trial = dataclasses.replace(setup, checkpointing=ckpt)
        if accumulate:
            micro = pm.best_micro_batch(shape, layout, machine, trial)
            trial = dataclasses.replace(trial, micro_batch=micro or 1)
        pred = pm.predict_step(shape, layout, machine, trial)
        if pred.fits:
            return pred, ""
    return pred, pred.explain(machine)


def row(pred: pm.StepPrediction, machine: Machine, setup: TrainSetup, overlap: str) -> dict:
    lay = pred.layout
    t = pred.t_step(overlap)
    tflops = pred.tflops_per_gpu(overlap)
    return {"layout": [lay.data, lay.domain, lay.tensor], "world": lay.world, "micro_batch": pred.micro_batch,
            "accumulation": pred.accumulation, "checkpointing": pred.checkpointing,
            "t_step_s": t, "times_s": pred.times, "samples_per_s": setup.global_batch / t,
            "tflops_per_gpu": tflops, "mfu": tflops / machine.peak_tflops[setup.precision],
            "memory_gb": pred.memory["total"] / GB, "memory": {k: v / GB for k, v in pred.memory.items()},
            "t_compute_s": pred.t_compute, "t_comm_s": pred.t_comm, "t_io_s": pred.t_io, "t_optimizer_s": pred.t_optimizer,
            "comm_bytes": pred.collectives, "comm_times_s": pred.comm_times, "read_bytes_per_rank": pred.read_bytes_per_rank,
            "params_per_rank": pred.params_per_rank, "bottleneck": pred.bottleneck(overlap),
            "explanation": pred.explain(machine, overlap)}


def plan(shape: ModelShape, gpus: int, machine: Machine, setup: TrainSetup, accumulate: bool = False,
         checkpointing: str = "off", overlap: str = "prefetch") -> dict:
    feasible, infeasible = [], []
    for layout in pm.layouts_for(gpus):
        pred, why = plan_layout(shape, layout, machine, setup, accumulate, checkpointing)
        if pred is not None and pred.fits:
            feasible.append(row(pred, machine, setup, overlap))
        else:
            infeasible.append({"layout": [layout.data, layout.domain, layout.tensor], "reason": why})
    feasible.sort(key=lambda r: (round(r["t_step_s"], 6), r["times_s"]["serial"]))  # ties: less exposed work
    return {"machine": machine.name, "gpus": gpus, "overlap": overlap, "setup": dataclasses.asdict(setup),
            "model": {"n_lat": shape.n_lat, "n_lon": shape.n_lon, "tokens": shape.n_tokens, "c_in": shape.c_in,
                      "c_out": shape.c_out, **dataclasses.asdict(shape.cfg)},
            "feasible": feasible, "infeasible": infeasible}


def print_plan(res: dict, shape: ModelShape, machine: Machine, top: int = 0) -> None:
    s = res["setup"]
    total = pm.params_held(shape, Layout())
    flops = pm.flops_per_rank(shape, Layout(), 1)
    print(f"model: {shape.n_lat}x{shape.n_lon} grid, {shape.n_tokens} tokens, D={shape.cfg.embed_dim}, "
          f"Dt={shape.cfg.token_hidden}, Dc={shape.cfg.channel_hidden}, L={shape.cfg.depth}, {shape.c_in}->{shape.c_out} "
          f"channels; {total / 1e6:,.1f} M parameters; {flops / 1e9:,.1f} GFLOP per training sample")
    print(f"machine: {machine.name}; {res['gpus']} GPUs ({machine.gpus_per_node} per node); global batch "
          f"{s['global_batch']}, {s['precision']}, ZeRO-{s['zero_stage']}; ranked by '{res['overlap']}' step time")
    rows = res["feasible"][:top] if top else res["feasible"]
    print(f"\n{'rank':>4}  {'layout (d,dom,t)':17} {'micro x acc':>11} {'step ms':>8} {'serial':>8} {'overlap':>8} "
          f"{'samples/s':>9} {'TFLOP/s/GPU':>11} {'MFU':>5} {'mem GB':>7}  bottleneck")
    for i, r in enumerate(rows, 1):
        lay = "(%d, %d, %d)" % tuple(r["layout"]) + (" ckpt" if r["checkpointing"] else "")
        print(f"{i:4d}  {lay:17} {r['micro_batch']:>5d} x {r['accumulation']:<3d} {r['t_step_s'] * 1e3:8.4g} "
              f"{r['times_s']['serial'] * 1e3:8.4g} {r['times_s']['overlapped'] * 1e3:8.4g} {r['samples_per_s']:9.4g} "
              f"{r['tflops_per_gpu']:11.4g} {r['mfu']:5.1%} {r['memory_gb']:7.1f}  {r['explanation']}")
    if rows:
        print("\ncolumns: layout = data x domain x tensor ranks; micro x acc = samples per forward on a replica x "
              "micro-batches accumulated per step; step ms = the predicted step under the ranking's overlap, beside "
              "it with nothing overlapped (serial) and with communication and I/O fully overlapped; MFU = model "
              "FLOPs over the GPU's peak; mem GB = peak memory per GPU; bottleneck = what bounds the step")
    if not res["feasible"]:
        print("  (no layout fits: try --accumulate, --checkpointing auto, more GPUs or a smaller global batch)")
    else:
        print("\nrun the best: " + " ".join(f"--set {k}={v}" for k, v in run_settings(res["feasible"][0]).items()))
    if res["infeasible"]:
        print("\ncannot run:")
        groups: dict[str, list] = {}  # one line per reason, its layouts listed
        for r in res["infeasible"]:
            groups.setdefault(r["reason"], []).append("(%d, %d, %d)" % tuple(r["layout"]))
        for reason, layouts in groups.items():
            print(f"  {', '.join(layouts)}: {reason}")


def run_settings(r: dict) -> dict:
    """The jigsaw-train overrides of a ranked layout (the data size is whatever the world size leaves)."""
    out = {"parallel.domain": r["layout"][1], "parallel.tensor": r["layout"][2]}
    if r["accumulation"] > 1:
        out["train.micro_batch"] = r["micro_batch"]
    if r["checkpointing"]:
        out["model.activation_checkpointing"] = "true"
    return out


def parse_grid(text: str):
    if not text:
        return None
    try:
        h, w = text.lower().split("x")
        return int(h), int(w)
    except ValueError:
        raise jconfig.ConfigError(f"--grid takes HxW, e.g. 721x1440, got '{text}'") from None


def main(argv=None) -> int:
    args = parse_args(sys.argv[1:] if argv is None else argv)
    # bad input (ConfigError: the config, --grid, --machine, --gpus): one line, exit 2 (one process: rank 0)
    return run_main("jigsaw-plan", 0, _run, args)


def _run(args) -> int:
    cfg = jconfig.load(args.config, args.set)
    shape = ModelShape.from_config(cfg, parse_grid(args.grid))
    machine = Machine.load(args.machine)
    if args.gpus < 1:
        raise jconfig.ConfigError("--gpus must be >= 1")
    setup = setup_from_args(args, cfg)
    res = plan(shape, args.gpus, machine, setup, args.accumulate, args.checkpointing, args.overlap)
    print_plan(res, shape, machine, args.top)
    if args.json:
        with open(args.json, "w") as f:
            json.dump(res, f, indent=1, default=str)
    return 0


if __name__ == "__main__":
    sys.exit(main())

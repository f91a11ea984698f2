"""Ops that DeepSpeed's gradient handling and optimizer step issue per training step, by model depth (CPU).

    python bench/optimizer_ops.py                        # depths 2 4 8, configs/ds_zero1_fp32.json and ds_zero1_bf16.json
    python bench/optimizer_ops.py --depths 2 4 --ds-configs configs/ds_zero1_fp32.json

The GPU profile of the 0.25 deg step (issue 32) shows about 94 kernels of each kind in DeepSpeed's part of the
step, one per parameter tensor (fp32 gradient copies, L2 norms). A kernel count that grows with the number of parameter tensors
costs launches however fast the device is; this counts it where no GPU is needed. For each depth and DeepSpeed
JSON it builds the trainer's engine (WeatherMixer at layout 1 x 1 x 1 with the trainer's JigsawMPU,
deepspeed.initialize on the shipped JSON, bench/step.py's small config), runs a few steps on random batches,
then profiles one step with torch.profiler and counts the aten ops issued

  bwd     by DeepSpeed during engine.backward: in its per-parameter gradient hooks, and after autograd (its
          epilogue: fp32 gradient accumulation, reduction); the model's own backward ops are not counted;
  step    inside engine.step(): gradient norm, clipping, the optimizer, the copy back into the model weights.

An op is counted once where it is issued (its aten callers are not counted again); ops that launch no kernel
on a GPU (views, allocations, a `to` that converts nothing) are listed apart. Writes
bench/results/optimizer_ops.json.
"""
from __future__ import annotations

import argparse
import datetime
import json
import os
import sys
from collections import Counter
from types import SimpleNamespace

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import torch  # noqa: E402
from torch.autograd.profiler import record_function  # noqa: E402

from step import SMALL, build_config  # noqa: E402  (bench/step.py: the small config the CPU step bench runs)

# ops that launch no kernel on a GPU by themselves: metadata, views, allocations (their callers may still work)
NO_KERNEL = {"aten::view", "aten::narrow", "aten::detach", "aten::detach_", "aten::as_strided", "aten::reshape",
             "aten::_reshape_alias", "aten::alias", "aten::slice", "aten::select", "aten::unsqueeze",
             "aten::squeeze", "aten::expand", "aten::t", "aten::transpose", "aten::permute", "aten::empty",
             "aten::empty_like", "aten::empty_strided", "aten::resize_", "aten::set_", "aten::lift_fresh",
             "aten::result_type", "aten::view_as", "aten::flatten", "aten::_unsafe_view", "aten::unbind",
             "aten::split", "aten::split_with_sizes", "aten::chunk", "aten::to", "aten::contiguous",
             "aten::_has_compatible_shallow_copy_type", "aten::is_nonzero", "aten::item"}
# the kinds the table shows, by op name (first match); "sync" reads a device value on the host
KINDS = [("sync", ("_local_scalar_dense", "is_nonzero", "aten::item")),
         ("copy", ("copy_", "aten::to", "_to_copy", "clone", "contiguous", "aten::cat", "flatten_dense")),
         ("norm", ("norm",)), ("foreach", ("_foreach_",)), ("fused_adam", ("fused_adam",)),
         ("zero/fill", ("zero_", "fill_", "zeros", "ones", "full")),
         ("elementwise", ("add", "mul", "div", "sub", "pow", "sqrt", "lerp", "where", "clamp", "maximum",
                          "abs", "neg", "reciprocal", "bitwise", "__or__", "lt", "gt", "masked")),
         ("reduce", ("sum", "max", "stack", "isfinite", "any", "isinf", "isnan", "logical"))]
# profiler ranges: engine.backward, DeepSpeed's gradient hooks inside it, engine.step
REGION_BACKWARD, REGION_HOOKS, REGION_STEP = "bench_engine_backward", "bench_ds_grad_hooks", "bench_engine_step"
AUTOGRAD_NODE = "autograd::engine::evaluate_function"  # the model's backward ops (and AccumulateGrad) run in one


def kind_of(name: str) -> str:
    return next((k for k, subs in KINDS if any(s in name for s in subs)), "other")


# ---- the engine ----------------------------------------------------------------------------------------------
def build_engine(ds_path: str, depth: int, batch: int):
    """The trainer's engine (Trainer.__init__: model on the layout's groups, JigsawMPU) at layout 1 x 1 x 1 over
    bench/step.py's small config; a random batch of its shape. The DeepSpeed JSON's batch keys set for one
    process, its scheduler dropped (as bench/step.py does: no tensor work)."""
    import deepspeed

    from jigsaw_ds.grid import lat_cell_weights
    from jigsaw_ds.model import WeatherMixer
    from jigsaw_ds.parallel.topology import JigsawMPU, Layout, initialize
    from jigsaw_ds.perf import step_model as pm
    from jigsaw_ds.train.loss import AreaWeightedMSE

    jcfg = build_config(SimpleNamespace(config=os.path.join(ROOT, "configs", "era5_025deg.json"), depth=depth,
                                        store=""), small=True)
    grid = SMALL["grid"]
    shape = pm.ModelShape.from_config(jcfg, grid)
    groups = initialize(Layout())
    torch.manual_seed(0)
    model = WeatherMixer(jcfg.model, *grid, shape.c_in, shape.c_out, groups)
    ds = json.load(open(ds_path))
    ds.update({"train_batch_size": batch, "train_micro_batch_size_per_gpu": batch,
               "gradient_accumulation_steps": 1, "steps_per_print": 10**9})
    ds.pop("scheduler", None)
    engine, *_ = deepspeed.initialize(model=model, model_parameters=model.parameters(), config=ds,
                                      mpu=JigsawMPU(groups))
    x = torch.randn(batch, shape.c_in, *grid)
    y = torch.randn(batch, shape.c_out, *grid)
    lat = torch.linspace(90, -90, grid[0]).numpy()
    loss_fn = AreaWeightedMSE(torch.from_numpy(lat_cell_weights(lat)).float(), *grid)
    return engine, model, (x, y), loss_fn


def label_hooks(optimizer) -> list[str]:
    """Wrap the methods DeepSpeed's gradient hooks call (looked up on the instance at each call, so wrapping
    the instance's attribute reaches them) in a profiler range. Returns the wrapped names."""
    names = [n for n in ("process_gradients", "update_hook_state_and_maybe_run_epilogue",  # ZeRO 1/2
                         "accumulate_hp_grads_and_remove_lp")                              # BF16_Optimizer
             if hasattr(optimizer, n)]
    for n in names:
        method = getattr(optimizer, n)

        def wrapped(*a, _method=method, **kw):
            with record_function(REGION_HOOKS):
                return _method(*a, **kw)

        setattr(optimizer, n, wrapped)
    return names


def train_step(engine, batch, loss_fn):
    x, y = batch
    loss = loss_fn(engine(x).float(), y)
    with record_function(REGION_BACKWARD):
        engine.backward(loss)
    with record_function(REGION_STEP):
        engine.step()


# ---- counting --------------------------------------------------------------------------------------------------
def does_work(e) -> bool:
    """Whether an op launches a kernel (on a GPU): it is not a view/allocation/no-op, or one of its callees is."""
    callees = [c for c in e.cpu_children if c.name.startswith("aten::")]
    return e.name not in NO_KERNEL or any(does_work(c) for c in callees)


def part_of(e) -> str:
    """Which part of the step an aten op with no aten caller belongs to: 'backward' (issued by DeepSpeed's
    gradient hooks, or by engine.backward outside autograd's backward nodes: its epilogue), 'step', or ''."""
    chain, caller = [], e.cpu_parent
    while caller is not None:
        if caller.name.startswith("aten::"):
            return ""  # counted at its caller
        chain.append(caller.name)
        caller = caller.cpu_parent
    if REGION_STEP in chain:
        return "step"
    if REGION_HOOKS in chain or (REGION_BACKWARD in chain and not any(c.startswith(AUTOGRAD_NODE) for c in chain)):
        return "backward"
    return ""


def count_ops(events) -> dict:
    ops = {"backward": Counter(), "step": Counter()}
    for e in events:
        part = part_of(e) if e.name.startswith("aten::") else ""
        if part:
            ops[part][e.name if does_work(e) else "(no kernel) " + e.name] += 1
    result = {}
    for part, counter in ops.items():
        kernels = {k: v for k, v in counter.items() if not k.startswith("(no kernel)")}
        kinds = Counter()
        for name, n in kernels.items():
            kinds[kind_of(name)] += n
        result[part] = {"kernel_ops": sum(kernels.values()), "no_kernel_ops": sum(counter.values()) - sum(kernels.values()),
                        "by_kind": dict(kinds), "ops": dict(sorted(counter.items(), key=lambda kv: -kv[1]))}
    return result


def profile_one_step(engine, batch, loss_fn) -> dict:
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU]) as prof:
        train_step(engine, batch, loss_fn)
    return count_ops(prof.events())


def measure(ds_path: str, depth: int, batch: int, warmup: int) -> dict:
    engine, model, data, loss_fn = build_engine(ds_path, depth, batch)
    label_hooks(engine.optimizer)
    for _ in range(warmup):  # the first steps create optimizer state and buffers
        train_step(engine, data, loss_fn)
    counts = profile_one_step(engine, data, loss_fn)
    params = list(model.parameters())
    return {"ds_config": os.path.relpath(ds_path, ROOT), "depth": depth, "param_tensors": len(params),
            "params": sum(p.numel() for p in params), "optimizer": type(engine.optimizer).__name__,
            "dtype": str(next(model.parameters()).dtype).replace("torch.", ""), **counts}


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--depths", type=int, nargs="+", default=[2, 4, 8])
    ap.add_argument("--ds-configs", nargs="+", default=[os.path.join(ROOT, "configs", f"ds_zero1_{d}.json")
                                                        for d in ("fp32", "bf16")])
    ap.add_argument("--batch", type=int, default=2)
    ap.add_argument("--warmup", type=int, default=2)
    ap.add_argument("--out", default=os.path.join(ROOT, "bench", "results", "optimizer_ops.json"))
    args = ap.parse_args(argv)

    from jigsaw_ds.files import write_atomic
    from jigsaw_ds.parallel.topology import init_distributed

    torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", "1")))
    init_distributed("gloo")
    rows, failed = [], {}
    for ds_path in args.ds_configs:
        for depth in args.depths:
            try:
                rows.append(measure(os.path.abspath(ds_path), depth, args.batch, args.warmup))
            except Exception as e:  # e.g. a config this CPU cannot run: recorded, the others still measured
                failed[f"{os.path.basename(ds_path)} depth {depth}"] = f"{type(e).__name__}: {e}"[:300]
                print(f"{os.path.basename(ds_path)} depth {depth}: {failed[list(failed)[-1]]}", flush=True)
    res = {"date": datetime.date.today().isoformat(),
           "command": " ".join(["python bench/optimizer_ops.py"] + (sys.argv[1:] if argv is None else argv)),
           "device": f"cpu ({os.cpu_count()} cores)", "torch": torch.__version__,
           "deepspeed": __import__("deepspeed").__version__, "rows": rows, "failed": failed}
    os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
    write_atomic(args.out, json.dumps(res, indent=1))
    report(rows)
    print(f"wrote {args.out}")


def report(rows: list[dict]) -> None:
    kinds = sorted({k for r in rows for part in ("backward", "step") for k in r[part]["by_kind"]})
    print(f"\n{'DeepSpeed JSON':20s} {'depth':>5} {'tensors':>7} {'params':>7} | {'bwd':>4} {'step':>4} | "
          + " ".join(f"{k:>8}" for k in kinds) + "   (kernel ops per step; kinds: bwd + step)")
    for r in rows:
        by = Counter(r["backward"]["by_kind"]) + Counter(r["step"]["by_kind"])
        print(f"{os.path.basename(r['ds_config']):20s} {r['depth']:5d} {r['param_tensors']:7d} {r['params']:7d} | "
              f"{r['backward']['kernel_ops']:4d} {r['step']['kernel_ops']:4d} | " + " ".join(f"{by[k]:8d}" for k in kinds))


if __name__ == "__main__":
    main()

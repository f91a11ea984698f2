"""One-GPU training-step benchmark: the full DeepSpeed step against the GEMM rate and a bare PyTorch stack.

    python bench/step.py                      # CUDA: the 0.25 deg config (721 x 1440, p 4: 65160 tokens, D 1024, 8 blocks), bf16
    python bench/step.py --small              # CPU (implied without CUDA): a small config, fp32
    python bench/step.py --compile --checkpointing --batch 2 --depth 8 --steps 10

In one process and one run it measures
  1. the dense GEMM rate (bf16 8192^3 on CUDA, fp32 1024^3 on CPU) and the memory copy bandwidth;
  2. a bare PyTorch stack of the same mixer blocks (token mixing W @ X, channel mixing X @ W, LayerNorm,
     GELU), forward + backward, optionally torch.compile'd;
  3. the full training step: batches from the data pipeline (a WB2-schema zarr store with the config's
     variables, read by the trainer's Loader: reading threads into a ring of pinned buffers, or DataLoader
     worker processes with --workers N), WeatherMixer forward, area-weighted MSE, backward
     and the ZeRO-1 AdamW step, all through the DeepSpeed engine; optionally engine.compile() and activation
     checkpointing (torch.utils.checkpoint around each MixerBlock).
It prints the step's TFLOP/s (model FLOPs from model/flops.py) as a fraction of the GEMM rate and of the
bare stack, the data-wait fraction, peak memory against perf/step_model.py's prediction, and writes JSON.

Model FLOPs count matrix multiplies only (model/flops.py); "device step" excludes the wait for the next
batch, "step" includes it. Every rate is work / total time: the mean over the timed steps (p95 and max beside
it; the median is recorded only to compare with older figures). On the GPU machine see docs/benchmarks.md
for the wheel install first.
"""
from __future__ import annotations

import argparse
import contextlib
import dataclasses
import datetime
import json
import os
import platform
import sys
import time
import traceback

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

import numpy as np  # noqa: E402
import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402
from torch import nn  # noqa: E402

from jigsaw_ds.perf.timing import spread  # noqa: E402

SMALL = {"grid": (32, 64), "model": {"patch": 2, "embed_dim": 64, "token_hidden": 64, "channel_hidden": 256,
                                     "depth": 4},
         "variables": ["geopotential", "temperature", "u_component_of_wind", "v_component_of_wind"],
         "levels": [500, 850], "surface_variables": ["2m_temperature", "mean_sea_level_pressure"]}


# ---- timing helpers ----------------------------------------------------------------------------------------
def sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize()


def timed(fn, device, reps: int, warmup: int = 2) -> float:
    """Mean seconds of fn() over reps runs after warmup runs (total time / reps)."""
    for _ in range(warmup):
        fn()
    sync(device)
    times = []
    for _ in range(reps):
        t0 = time.perf_counter()
        fn()
        sync(device)
        times.append(time.perf_counter() - t0)
    return sum(times) / len(times)


@contextlib.contextmanager
def no_host_sync(on: bool):
    """With `on`, any host-device synchronisation inside raises (torch.cuda.set_sync_debug_mode("error")); the
    first one is named by its innermost frame outside torch before the error propagates."""
    if not on:
        yield
        return
    torch.cuda.set_sync_debug_mode("error")
    try:
        yield
    except RuntimeError as e:
        frames = [f for f in traceback.extract_tb(e.__traceback__) if f"{os.sep}torch{os.sep}" not in f.filename]
        where = f"{frames[-1].filename}:{frames[-1].lineno} ({frames[-1].name})" if frames else "?"
        print(f"sync-debug: host-device synchronisation inside the step at {where}: {e}", flush=True)
        raise
    finally:
        torch.cuda.set_sync_debug_mode(0)


def gemm_rate(device, dtype, size: int, reps: int) -> float:
    """FLOP/s of a size^3 matrix multiply."""
    a = torch.randn(size, size, device=device, dtype=dtype)
    b = torch.randn(size, size, device=device, dtype=dtype)
    return 2 * size ** 3 / timed(lambda: a @ b, device, reps)


def copy_bandwidth(device, nbytes: int, reps: int) -> float:
    """Bytes/s of a device-to-device copy (read + write)."""
    src = torch.empty(nbytes // 4, device=device, dtype=torch.float32).normal_()
    dst = torch.empty_like(src)
    return 2 * nbytes / timed(lambda: dst.copy_(src), device, reps)


# ---- the bare stack ----------------------------------------------------------------------------------------
class BareBlock(nn.Module):
    """The mixer block in plain PyTorch, same shapes and ops as WeatherMixer's (no Jigsaw layers)."""

    def __init__(self, n, d, dt, dc):
        super().__init__()
        self.ln1, self.ln2 = nn.LayerNorm(d), nn.LayerNorm(d)
        self.w1 = nn.Parameter(torch.randn(dt, n) / n ** 0.5)
        self.b1 = nn.Parameter(torch.zeros(dt))
        self.w2 = nn.Parameter(torch.randn(n, dt) / dt ** 0.5)
        self.fc1, self.fc2 = nn.Linear(d, dc), nn.Linear(dc, d)

    def forward(self, x):                                    # x: [N, B, D]
        n, b, d = x.shape
        z = self.w1 @ self.ln1(x).reshape(n, b * d)          # W @ X
        x = x + (self.w2 @ F.gelu(z + self.b1.unsqueeze(1))).view(n, b, d)
        return x + self.fc2(F.gelu(self.fc1(self.ln2(x))))


def bare_stack_rate(cfg, n_tokens, batch, device, dtype, reps, compile_it) -> dict:
    blocks = nn.Sequential(*[BareBlock(n_tokens, cfg.embed_dim, cfg.token_hidden, cfg.channel_hidden)
                             for _ in range(cfg.depth)]).to(device, dtype)
    run = torch.compile(blocks) if compile_it else blocks
    x = torch.randn(n_tokens, batch, cfg.embed_dim, device=device, dtype=dtype, requires_grad=True)
    gout = torch.randn_like(x)

    def step():
        run(x).backward(gout)

    flops = 3 * cfg.depth * 4 * n_tokens * cfg.embed_dim * (cfg.token_hidden + cfg.channel_hidden) * batch
    t = timed(step, device, reps, warmup=3 if compile_it else 2)
    del blocks, run, x, gout
    return {"seconds": t, "flops": flops, "tflops": flops / t / 1e12}


def optimizer_floor(n_params: int, device, dtype, reps: int) -> float:
    """Seconds of the least a mixed-precision optimizer step over n_params does: torch's AdamW (fused on CUDA)
    over one flat fp32 master tensor whose fp32 gradient is given, then the cast into the model's dtype. The
    bare stack has no optimizer; bare + this floor is what the DeepSpeed step can be compared with whole."""
    master = torch.zeros(n_params, device=device, dtype=torch.float32)
    master.grad = torch.full_like(master, 1e-3)
    weights = torch.empty(n_params, device=device, dtype=dtype)
    opt = torch.optim.AdamW([master], lr=1e-4, fused=device.type == "cuda")

    def step():
        opt.step()
        weights.copy_(master)

    t = timed(step, device, reps)
    del opt, master, weights
    return t


# ---- the data --------------------------------------------------------------------------------------------
def bench_store(path, variables, levels, surface, static, n_lat, n_lon, n_times, seed=0) -> str:
    """A WB2-schema store with the config's variable names: smooth random fields plus noise (throughput only)."""
    if os.path.exists(path):
        return path
    import pandas as pd
    import xarray as xr

    from jigsaw_ds.data.writer import write_store

    rng = np.random.default_rng(seed)
    lat = np.linspace(90.0, -90.0, n_lat)
    lon = np.arange(n_lon) * 360.0 / n_lon
    base = np.cos(np.deg2rad(lat))[:, None] * np.ones((1, n_lon), np.float32)

    def field(*lead):
        return (base + 0.1 * rng.standard_normal(lead + (n_lat, n_lon), dtype=np.float32)).astype(np.float32)

    data = {v: (("time", "level", "latitude", "longitude"), field(n_times, len(levels))) for v in variables}
    data.update({v: (("time", "latitude", "longitude"), field(n_times)) for v in surface})
    data.update({v: (("latitude", "longitude"), field()) for v in static})
    coords = {"time": pd.date_range("2020-01-01", periods=n_times, freq="6h").values,
              "level": np.asarray(levels, dtype=np.int64), "latitude": lat, "longitude": lon}
    return write_store(xr.Dataset(data, coords=coords), path)


# ---- the DeepSpeed step ------------------------------------------------------------------------------------
def engine_state_bytes(engine) -> dict:
    """Bytes the engine holds after a step: module weights and grads, persistent optimizer tensors."""
    module = engine.module
    params = {p.untyped_storage().data_ptr() for p in module.parameters()}
    weights = sum(p.numel() * p.element_size() for p in module.parameters())
    from jigsaw_ds.checkpoint.zero import fp32_partitions

    opt = engine.optimizer
    seen = {}
    for t in fp32_partitions(opt) or []:   # ZeRO 1/2 fp32 master partitions
        seen[t.untyped_storage().data_ptr()] = t.untyped_storage().nbytes()
    inner = getattr(opt, "optimizer", opt)
    for state in inner.state.values():
        for t in state.values():
            if torch.is_tensor(t) and t.numel() > 1 and t.untyped_storage().data_ptr() not in params:
                seen[t.untyped_storage().data_ptr()] = t.untyped_storage().nbytes()
    return {"weights": weights, "optimizer_persistent": sum(seen.values())}


def run_step_bench(args, device, dtype_name, jcfg, shape, store_path) -> dict:
    import deepspeed

    from jigsaw_ds.data.dataset import Loader, ReplicaBatches
    from jigsaw_ds.data.store import WeatherStore
    from jigsaw_ds.grid import lat_cell_weights
    from jigsaw_ds.model import InputSpec, WeatherMixer
    from jigsaw_ds.train.loss import AreaWeightedMSE

    store = WeatherStore(store_path, jcfg.data.variables, jcfg.data.surface_variables, jcfg.data.levels,
                         jcfg.model.static_variables, read_threads=args.read_threads)
    model_cfg = dataclasses.replace(jcfg.model, activation_checkpointing=args.checkpointing)  # the model's own option
    model = WeatherMixer(model_cfg, store.n_lat, store.n_lon, shape.c_in, shape.c_out,
                         tendency_scale=torch.from_numpy(store.tendency_std / store.std))
    ds = json.load(open(args.ds_config))
    ds.update({"train_batch_size": args.batch, "train_micro_batch_size_per_gpu": args.batch,
               "gradient_accumulation_steps": 1, "steps_per_print": 10**9})
    ds.pop("scheduler", None)
    ds["bf16"] = {"enabled": dtype_name == "bf16"}
    engine, *_ = deepspeed.initialize(model=model, model_parameters=model.parameters(), config=ds)
    if args.compile:
        engine.compile()

    full = slice(0, store.n_lat), slice(0, store.n_lon)
    spec = InputSpec.of(jcfg, [c.name for c in store.channels])
    dataset = spec.pairs(store, store.pair_starts(spec.lead, spec.lead * spec.history), *full)
    n_steps = args.warmup + args.steps + args.profile
    sampler = ReplicaBatches(len(dataset), args.batch, 0, 1, seed=0, steps=n_steps)
    # the trainer's loader: fp32 batches copied to the device one step ahead on a side stream
    loader = Loader(dataset, sampler, device, prefetch=2, workers=args.workers)
    loss_fn = AreaWeightedMSE(torch.from_numpy(lat_cell_weights(store.lat)).float(), store.n_lat, store.n_lon)

    cuda = device.type == "cuda"
    records, phases = [], []
    for step in range(args.warmup + args.steps):
        if step == args.warmup and cuda:
            torch.cuda.reset_peak_memory_stats()
        t0 = time.perf_counter()
        with no_host_sync(cuda and args.sync_debug and step >= args.warmup):
            x, y, _ = next(loader)  # no forcings in the benchmarked configs
            t1 = time.perf_counter()
            marks = [torch.cuda.Event(enable_timing=True) for _ in range(4)] if cuda else []
            mark = (lambda i: marks[i].record()) if cuda else (lambda i: None)
            mark(0)
            loss = loss_fn(engine(x).float(), y[:, 0])
            mark(1)
            engine.backward(loss)
            mark(2)
            engine.step()
            mark(3)
        sync(device)
        t2 = time.perf_counter()
        records.append({"step_s": t2 - t0, "data_wait_s": t1 - t0, "device_s": t2 - t1, "loss": loss.item()})
        if cuda and step >= args.warmup:
            phases.append([marks[i].elapsed_time(marks[i + 1]) / 1e3 for i in range(3)])
    timed_steps = records[args.warmup:]
    out = {}
    for k in ("step_s", "data_wait_s", "device_s"):  # mean = total / steps: the rate; p95, max, median beside it
        s = spread(r[k] for r in timed_steps)
        out.update({k: s["mean"], f"{k}_p95": s["p95"], f"{k}_max": s["max"], f"{k}_median": s["median"]})
    out["data_wait_frac"] = sum(r["data_wait_s"] for r in timed_steps) / sum(r["step_s"] for r in timed_steps)
    out["losses"] = [r["loss"] for r in records]
    out["state_bytes"] = engine_state_bytes(engine)
    out["params"] = sum(p.numel() for p in engine.module.parameters())
    out["peak_mem_bytes"] = torch.cuda.max_memory_allocated() if cuda else None
    if phases:  # forward + loss, backward, optimizer step: device time from CUDA events, means
        out["phases_s"] = dict(zip(("forward", "backward", "optimizer"),
                                   (sum(p[i] for p in phases) / len(phases) for i in range(3))))
    if args.profile:
        out["kernels"] = profile_steps(args.profile, loader, engine, loss_fn, device)
    return out


KERNEL_KINDS = [  # (kind, substrings of a kernel's name), first match wins
    ("gemm", ("gemm", "cutlass", "xmma", "nvjet", "cublas", "wgmma", "aten::mm", "addmm", "bmm")),
    ("optimizer", ("adam", "multi_tensor", "l2norm", "foreach")),
    ("layer_norm", ("layer_norm", "layernorm")),
    ("gelu", ("gelu",)),
    ("copy", ("copy", "memcpy", "memset", "cat", "transpose", "fill")),
    ("reduce", ("reduce", "sum", "norm")),
    ("elementwise", ("elementwise", "vectorized", "unrolled", "add", "mul")),
]


def profile_steps(n, loader, engine, loss_fn, device) -> dict:
    """Device time per kernel over n more steps (torch.profiler), grouped by kind: where the step's time goes
    beyond the GEMMs. Seconds per step."""
    from torch.profiler import ProfilerActivity, profile

    acts = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device.type == "cuda" else [])
    with profile(activities=acts) as prof:
        for _ in range(n):
            x, y, _ = next(loader)
            engine.backward(loss_fn(engine(x).float(), y[:, 0]))
            engine.step()
        sync(device)
    kernels = []
    for e in prof.key_averages():
        t = getattr(e, "self_device_time_total", 0) if device.type == "cuda" else e.self_cpu_time_total
        if t > 0 and (device.type != "cuda" or str(getattr(e, "device_type", "")).endswith("CUDA")):
            kernels.append((e.key, t / 1e6 / n, e.count // n))
    kernels.sort(key=lambda k: -k[1])
    kinds = {}
    for name, t, _ in kernels:
        low = name.lower()
        kind = next((k for k, subs in KERNEL_KINDS if any(s in low for s in subs)), "other")
        kinds[kind] = kinds.get(kind, 0.0) + t
    return {"steps": n, "total_s": sum(k[1] for k in kernels), "by_kind_s": kinds,
            "top": [{"name": name[:120], "s": t, "calls": c} for name, t, c in kernels[:30]]}


# ---- main --------------------------------------------------------------------------------------------------
def build_config(args, small: bool):
    from jigsaw_ds import config as jconfig

    raw = json.load(open(args.config))
    if small:
        raw["model"].update(SMALL["model"])
        raw["data"].update({k: SMALL[k] for k in ("variables", "levels", "surface_variables")})
        raw["data"].pop("generate", None)
    if args.depth:
        raw["model"]["depth"] = args.depth
    raw["data"]["store"] = args.store or "unused"
    return jconfig.from_dict(raw)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--small", action="store_true", help="small config (implied without CUDA)")
    ap.add_argument("--config", default=os.path.join(ROOT, "configs", "era5_025deg.json"))
    ap.add_argument("--grid", default="", help="HxW (default: 721x1440, or 32x64 with --small)")
    ap.add_argument("--depth", type=int, default=0, help="mixer blocks (default: the config's)")
    ap.add_argument("--batch", type=int, default=0, help="samples per step (default 2 on CUDA, 4 on CPU)")
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--warmup", type=int, default=3)
    ap.add_argument("--compile", action="store_true", help="torch.compile the bare stack and engine.compile() the step")
    ap.add_argument("--checkpointing", action="store_true", help="torch.utils.checkpoint around each MixerBlock")
    ap.add_argument("--dtype", choices=["bf16", "fp32"], default="", help="default: bf16 on CUDA, fp32 on CPU")
    ap.add_argument("--workers", type=int, default=0,
                    help="DataLoader worker processes (each holds batches in /dev/shm); 0 (default): the trainer's "
                         "reading threads into a ring of pinned buffers")
    ap.add_argument("--read-threads", type=int, default=0,
                    help="tensorstore decode threads per reading process (default: its cores / max(1, workers))")
    ap.add_argument("--times", type=int, default=6, help="time steps in the generated store")
    ap.add_argument("--store", default="", help="store to read (created there if missing)")
    ap.add_argument("--ds-config", default="", help="DeepSpeed JSON (default configs/ds_zero1_{bf16,fp32}.json)")
    ap.add_argument("--machine", default=os.path.join(ROOT, "configs", "machines", "h200-1gpu.json"),
                    help="machine file whose efficiencies the prediction uses (rates are measured in this run)")
    ap.add_argument("--skip-bare", action="store_true", help="skip the bare-stack measurement")
    ap.add_argument("--sync-debug", action="store_true",
                    help="CUDA: a host-device synchronisation inside a timed step (loader, forward, backward, "
                         "engine.step) raises, naming where (torch.cuda.set_sync_debug_mode); ignored on the CPU")
    ap.add_argument("--profile", type=int, default=0, help="profile this many more steps: device time per kernel kind")
    ap.add_argument("--out", default="")
    args = ap.parse_args(argv)

    from jigsaw_ds.parallel.topology import Layout, init_distributed
    from jigsaw_ds.perf import step_model as pm
    from jigsaw_ds.files import write_atomic

    cuda = torch.cuda.is_available()
    device = torch.device("cuda" if cuda else "cpu")
    small = args.small or not cuda
    dtype_name = args.dtype or ("bf16" if cuda else "fp32")
    dtype = torch.bfloat16 if dtype_name == "bf16" else torch.float32
    args.batch = args.batch or (2 if cuda else 4)
    from jigsaw_ds.data.store import default_read_threads
    args.read_threads = args.read_threads or default_read_threads(args.workers)
    args.ds_config = args.ds_config or os.path.join(ROOT, "configs", f"ds_zero1_{dtype_name}.json")
    if not cuda:
        torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", "1")))
    grid = tuple(int(v) for v in args.grid.split("x")) if args.grid else (SMALL["grid"] if small else (721, 1440))
    jcfg = build_config(args, small)
    shape = pm.ModelShape.from_config(jcfg, grid)
    tag = f"{'cuda' if cuda else 'cpu'}_{grid[0]}x{grid[1]}"
    args.store = args.store or os.path.join("/tmp", f"jigsaw_bench_{tag}_{shape.c_out}ch.zarr")
    args.out = args.out or os.path.join(ROOT, "bench", "results", f"step_{tag}.json")

    init_distributed("nccl" if cuda else "gloo")
    print(f"device {device} ({torch.cuda.get_device_name() if cuda else platform.processor() or 'cpu'}), {dtype_name}, "
          f"torch {torch.__version__}; grid {grid[0]}x{grid[1]}, {shape.n_tokens} tokens, D={jcfg.model.embed_dim}, "
          f"Dt={jcfg.model.token_hidden}, Dc={jcfg.model.channel_hidden}, {jcfg.model.depth} blocks, "
          f"{shape.c_in}->{shape.c_out} channels, batch {args.batch}"
          f"{', compile' if args.compile else ''}{', checkpointing' if args.checkpointing else ''}", flush=True)

    res = {
        "date": datetime.date.today().isoformat(), "command": " ".join(["python bench/step.py"] + (argv or sys.argv[1:])),
        "device": torch.cuda.get_device_name() if cuda else f"cpu ({os.cpu_count()} cores, {torch.get_num_threads()} threads)",
        "torch": torch.__version__, "dtype": dtype_name, "grid": grid, "tokens": shape.n_tokens,
        "model": dataclasses.asdict(jcfg.model), "c_in": shape.c_in, "c_out": shape.c_out, "batch": args.batch,
        "compile": args.compile, "checkpointing": args.checkpointing, "workers": args.workers,
        "read_threads": args.read_threads, "load_average_start": os.getloadavg(),
    }

    def save(**part):
        """Each measurement is printed and saved as soon as it is done: a crash or a time limit later
        still leaves the earlier ones (the JSON is rewritten whole each time)."""
        res.update(part)
        print("  " + ", ".join(f"{k} {v:.4g}" if isinstance(v, float) else f"{k} {v}" for k, v in part.items()
                               if not isinstance(v, (dict, list))), flush=True)
        os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
        write_atomic(args.out, json.dumps(res, indent=1, default=str))

    size, reps = (8192, 20) if cuda else (1024, 5)
    save(gemm_tflops=gemm_rate(device, dtype, size, reps) / 1e12, gemm_size=size)
    save(copy_gbps=copy_bandwidth(device, (2 << 30) if cuda else (64 << 20), 10 if cuda else 3) / 1e9)
    bare = None if args.skip_bare else bare_stack_rate(jcfg.model, shape.n_tokens, args.batch, device, dtype,
                                                       5 if cuda else 3, args.compile)
    save(bare_stack=bare, **({"bare_stack_tflops": bare["tflops"]} if bare else {}))
    if cuda:
        torch.cuda.empty_cache()

    t0 = time.perf_counter()
    bench_store(args.store, jcfg.data.variables, jcfg.data.levels, jcfg.data.surface_variables,
                jcfg.model.static_variables, grid[0], grid[1], args.times)
    save(store_build_s=time.perf_counter() - t0)
    step = run_step_bench(args, device, dtype_name, jcfg, shape, args.store)
    if cuda:
        torch.cuda.empty_cache()
    save(optimizer_floor_s=optimizer_floor(step["params"], device, dtype, 10 if cuda else 3))

    # the analytic model with this run's measured GEMM rate; on CUDA the machine file's HBM bandwidth and
    # efficiencies (fitted together against the datasheet bandwidth), on the CPU the measured copy rate
    base = pm.Machine.load(args.machine)
    machine = dataclasses.replace(base, gemm_tflops={dtype_name: res["gemm_tflops"]},
                                  **({} if cuda else {"hbm_gbps": res["copy_gbps"], "gemm_efficiency": 1.0,
                                                      "hbm_efficiency": 1.0, "kernel_launch_us": 0.0}))
    ds = json.load(open(args.ds_config))
    ds["bf16"] = {"enabled": dtype_name == "bf16"}  # as run_step_bench runs it
    setup = pm.TrainSetup.from_deepspeed(ds, global_batch=args.batch, checkpointing=args.checkpointing)
    zero_stage = setup.zero_stage
    pred = pm.predict_step(shape, Layout(), machine, setup)
    flops = pred.flops_per_step
    save(model_flops_per_step=flops, **step,
         tflops_step=flops / step["step_s"] / 1e12, tflops_device=flops / step["device_s"] / 1e12,
         predicted={"t_compute_s": pred.t_compute, "t_optimizer_s": pred.t_optimizer, "t_io_s": pred.t_io,
                    "memory_bytes": pred.memory, "machine": machine.name, "zero_stage": zero_stage})
    report(res)
    print(f"wrote {args.out}")


def report(r: dict) -> None:
    g, bare = r["gemm_tflops"], r["bare_stack"]
    rows = [("dense GEMM (%d^3)" % r["gemm_size"], "", g, 1.0, None)]
    if bare:
        rows.append(("bare PyTorch mixer stack, fwd+bwd" + (" (compiled)" if r["compile"] else ""),
                     f"{bare['seconds'] * 1e3:.1f} ms", bare["tflops"], bare["tflops"] / g, 1.0))
    for name, key, t in [("DeepSpeed step, device only (mean)", "tflops_device", r["device_s"]),
                         ("whole step by throughput (data incl.)", "tflops_step", r["step_s"])]:
        rows.append((name, f"{t * 1e3:.1f} ms", r[key], r[key] / g, r[key] / bare["tflops"] if bare else None))
    print(f"\n{'what':44s} {'time':>10} {'TFLOP/s':>9} {'of GEMM':>8} {'of bare':>8}")
    for name, t, rate, of_gemm, of_bare in rows:
        print(f"{name:44s} {t:>10} {rate:9.4g} {of_gemm:8.1%} {'' if of_bare is None else f'{of_bare:8.1%}':>8}")
    if bare:
        floor = r["optimizer_floor_s"]
        print(f"\noptimizer floor (fused AdamW over {r['params'] / 1e9:.3g} B fp32 parameters + cast): "
              f"{floor * 1e3:.1f} ms; device step / (bare stack + floor): "
              f"{(bare['seconds'] + floor) / r['device_s']:.1%}")
    if "phases_s" in r:
        print("\ndevice time per phase: " + ", ".join(f"{k} {v * 1e3:.1f} ms" for k, v in r["phases_s"].items()))
    if "kernels" in r:
        k = r["kernels"]
        print(f"profiled kernels, per step: total {k['total_s'] * 1e3:.1f} ms; " + ", ".join(
            f"{n} {t * 1e3:.1f} ms" for n, t in sorted(k["by_kind_s"].items(), key=lambda kv: -kv[1])))
        for e in k["top"][:12]:
            print(f"  {e['s'] * 1e3:8.2f} ms {e['calls']:5d}x  {e['name'][:90]}")
    p = r["predicted"]
    loader = f"{r['workers']} worker processes" if r["workers"] else f"{r['read_threads']} reading threads"
    print(f"\ndata wait {r['data_wait_frac']:.1%} of the time (per step mean {r['data_wait_s'] * 1e3:.1f} ms, p95 "
          f"{r['data_wait_s_p95'] * 1e3:.1f}, max {r['data_wait_s_max'] * 1e3:.1f}; {loader}); step mean "
          f"{r['step_s'] * 1e3:.1f} ms (p95 {r['step_s_p95'] * 1e3:.1f}, max {r['step_s_max'] * 1e3:.1f}); "
          f"copy bandwidth {r['copy_gbps']:.1f} GB/s")
    print(f"perf model with this run's rates: compute {p['t_compute_s'] * 1e3:.1f} ms + optimizer "
          f"{p['t_optimizer_s'] * 1e3:.1f} ms vs measured device step {r['device_s'] * 1e3:.1f} ms")
    mem, st = p["memory_bytes"], r["state_bytes"]
    print(f"weights: engine {st['weights'] / 2**20:.1f} MiB, predicted {mem['weights'] / 2**20:.1f} MiB; optimizer "
          f"(fp32 master + m + v): engine {st['optimizer_persistent'] / 2**20:.1f} MiB, predicted "
          f"{mem['optimizer'] * 12 / 16 / 2**20:.1f} MiB (+ {mem['optimizer'] * 4 / 16 / 2**20:.1f} MiB transient fp32 grads)")
    if r["peak_mem_bytes"] is not None:
        pred_total = mem["total"] - mem["reserved"]
        print(f"peak memory: torch.cuda.max_memory_allocated {r['peak_mem_bytes'] / 2**30:.2f} GiB, predicted "
              f"{pred_total / 2**30:.2f} GiB (activations {mem['activations'] / 2**30:.2f} GiB)")


if __name__ == "__main__":
    main()

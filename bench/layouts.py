"""CPU benchmark of Jigsaw layouts: step time, bytes communicated per step, parameter bytes per rank.

    python bench/layouts.py [--world 4] [--steps 10] [--out bench/results/layouts.json]

"jigsaw comm" counts the collectives of the Jigsaw model (parallel/comm_stats.py) on the busiest rank;
DeepSpeed's data-parallel gradient reduction is not in it. Spawns one torchrun job of --world ranks (gloo, one thread each); inside it, for every layout of that world
size, times forward + backward + a ZeRO-1 AdamW step through DeepSpeed on the same model and global batch,
and prints a table. Run on an otherwise idle machine: ranks share its cores.

Each layout runs three variants of the same model, their steps interleaved so that they see the same machine
load: "overlap" (the model as it is: the replicated parameters' gradients summed by one all-reduce per step,
parallel/layers.ReplicatedBucket, and each block's sharded weights gathered while the block before computes),
"bucket" (without the weight prefetch: each weight gathered at its use) and "per-param" (the path before both,
rebuilt here: one all-reduce per replicated parameter, no prefetch). All three overlap gathered_linear's
backward GEMMs with its tensor-group collectives. Collective calls per step: parallel/comm_stats.py.
"""
import argparse
import contextlib
import json
import types
from unittest import mock
import os
import statistics
import subprocess
import sys
import time

LAYOUTS = {2: [(2, 1, 1), (1, 2, 1), (1, 1, 2)], 4: [(4, 1, 1), (2, 2, 1), (2, 1, 2), (1, 2, 2), (1, 4, 1)]}


def worker(args):
    import deepspeed
    import torch
    import torch.distributed as dist

    from jigsaw_ds.config import ModelConfig
    from jigsaw_ds.model import WeatherMixer, weather_mixer
    from jigsaw_ds.parallel import comm_stats
    from jigsaw_ds.parallel.mappings import copy_to_group
    from jigsaw_ds.parallel.topology import JigsawMPU, Layout, init_distributed, initialize
    from jigsaw_ds.train.loss import AreaWeightedMSE

    rank, world, _ = init_distributed("gloo")
    torch.set_num_threads(1)
    cfg = ModelConfig(patch=4, embed_dim=64, token_hidden=64, channel_hidden=256, depth=4)
    H, W, C, G = 64, 128, 8, 8
    def per_parameter_bind(bucket):  # the previous path: each replicated parameter its own gradient all-reduce
        for p in bucket.params:
            p.jigsaw_view = copy_to_group(p, bucket.groups.comm("jigsaw"))

    rows = []
    for dims in LAYOUTS[world]:
        groups = initialize(Layout(*dims))
        variants = {}
        for name in ("overlap", "bucket", "per-param"):
            model = WeatherMixer(cfg, H, W, C, C, groups)
            if name == "per-param":
                model.replicated.bind = types.MethodType(per_parameter_bind, model.replicated)
            part = model.partition
            lat, lon = part.lat_slice(groups.domain_rank), part.lon_slice(groups.tensor_rank)
            micro = G // dims[0]
            ds = {"train_batch_size": G, "train_micro_batch_size_per_gpu": micro, "gradient_accumulation_steps": 1,
                  "gradient_clipping": 1.0, "zero_optimization": {"stage": 1}, "steps_per_print": 10**9,
                  "optimizer": {"type": "AdamW", "params": {"lr": 1e-4, "torch_adam": True}}}
            engine, *_ = deepspeed.initialize(model=model, model_parameters=model.parameters(), config=ds,
                                              mpu=JigsawMPU(groups))
            no_prefetch = mock.patch.object(weather_mixer, "prefetch_weights", lambda module, groups: None)
            variants[name] = {"engine": engine, "model": model, "times": [],
                              "context": contextlib.nullcontext if name == "overlap" else lambda: no_prefetch}
        x = torch.randn(micro, C, H, W)[:, :, lat, lon]
        loss_fn = AreaWeightedMSE(torch.ones(lat.stop - lat.start), H, W)
        for step in range(args.steps + 2):
            for name, v in variants.items():  # interleaved: both see the same machine load
                comm_stats.reset()
                dist.barrier()
                t0 = time.perf_counter()
                with v["context"]():
                    v["engine"].backward(loss_fn(v["engine"](x), x))
                v["engine"].step()
                dist.barrier()
                if step >= 2:
                    v["times"].append(time.perf_counter() - t0)
                v["calls"], v["bytes"] = comm_stats.calls(), comm_stats.snapshot()
        row = {"layout": dims}
        for name, v in variants.items():
            param_bytes = sum(p.numel() * p.element_size() for p in v["model"].parameters())
            stats = torch.tensor([sum(v["bytes"].values()), param_bytes, sum(v["calls"].values()),
                                  v["calls"].get("all_reduce/jigsaw", 0)], dtype=torch.float64)
            dist.all_reduce(stats, op=dist.ReduceOp.MAX)
            row[name] = {"step_s": statistics.median(v["times"]), "comm_bytes_per_step_max_rank": stats[0].item(),
                         "param_bytes_per_rank_max": stats[1].item(), "calls_per_step": int(stats[2].item()),
                         "all_reduce_jigsaw_calls": int(stats[3].item()), "calls": v["calls"]}
        rows.append(row)
    if rank == 0:
        with open(args.out, "w") as f:
            json.dump({"world": world, "grid": [H, W], "model": vars(cfg), "global_batch": G, "rows": rows}, f, indent=1)
    dist.destroy_process_group()


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--world", type=int, default=4, choices=sorted(LAYOUTS))
    ap.add_argument("--steps", type=int, default=10)
    ap.add_argument("--out", default="bench/results/layouts.json")
    ap.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.worker:
        return worker(args)
    os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
    env = dict(os.environ, OMP_NUM_THREADS="1")
    torchrun = os.path.join(os.path.dirname(sys.executable), "torchrun")
    subprocess.run([torchrun, "--standalone", "--nproc_per_node", str(args.world), __file__, "--worker",
                    "--steps", str(args.steps), "--out", args.out], env=env, check=True,
                   stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    res = json.load(open(args.out))
    base = next(r for r in res["rows"] if r["layout"][0] == res["world"])["overlap"]  # pure data parallel
    print(f"grid {res['grid']}, global batch {res['global_batch']}, world {res['world']} (CPU, gloo)")
    print("layout (data,domain,tensor)  step s  vs DP-only  jigsaw comm MB/step  param MB/rank  vs DP-only")
    for row in res["rows"]:
        r = row["overlap"]
        print(f"{str(tuple(row['layout'])):28s} {r['step_s']:6.3f} {r['step_s'] / base['step_s']:10.2f} "
              f"{r['comm_bytes_per_step_max_rank'] / 1e6:20.2f} {r['param_bytes_per_rank_max'] / 1e6:14.2f} "
              f"{r['param_bytes_per_rank_max'] / base['param_bytes_per_rank_max']:11.2f}")
    print("\nlayout (data,domain,tensor)  collective calls/step (all_reduce/jigsaw)   step s               "
          "overlap / per-param   overlap / bucket")
    print(" " * 29 + "per-param  bucket  overlap                  per-param bucket overlap")
    for row in res["rows"]:
        v = [row[name] for name in ("per-param", "bucket", "overlap")]
        calls = "  ".join(f"{r['calls_per_step']:3d} ({r['all_reduce_jigsaw_calls']:2d})" for r in v)
        print(f"{str(tuple(row['layout'])):28s} {calls}   {v[0]['step_s']:.3f}  {v[1]['step_s']:.3f}  "
              f"{v[2]['step_s']:.3f}   {v[2]['step_s'] / v[0]['step_s']:10.2f}   {v[2]['step_s'] / v[1]['step_s']:10.2f}")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()

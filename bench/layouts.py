"""CPU benchmark of Jigsaw layouts: step time, bytes communicated per step, parameter bytes per rank.

    python bench/layouts.py [--world 4] [--steps 10] [--out bench/results/layouts.json]

"jigsaw comm" counts the collectives of the Jigsaw model (parallel/comm_stats.py) on the busiest rank;
DeepSpeed's data-parallel gradient reduction is not in it. Spawns one torchrun job of --world ranks (gloo, one thread each); inside it, for every layout of that world
size, times forward + backward + a ZeRO-1 AdamW step through DeepSpeed on the same model and global batch,
and prints a table. Run on an otherwise idle machine: ranks share its cores.
"""
import argparse
import json
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
    from jigsaw_ds.model import WeatherMixer
    from jigsaw_ds.parallel import comm_stats
    from jigsaw_ds.parallel.topology import JigsawMPU, Layout, init_distributed, initialize
    from jigsaw_ds.train.loss import AreaWeightedMSE

    rank, world, _ = init_distributed("gloo")
    torch.set_num_threads(1)
    cfg = ModelConfig(patch=4, embed_dim=64, token_hidden=64, channel_hidden=256, depth=4)
    H, W, C, G = 64, 128, 8, 8
    rows = []
    for dims in LAYOUTS[world]:
        groups = initialize(Layout(*dims))
        model = WeatherMixer(cfg, H, W, C, C, groups)
        part = model.partition
        lat, lon = part.lat_slice(groups.domain_rank), part.lon_slice(groups.tensor_rank)
        micro = G // dims[0]
        x = torch.randn(micro, C, H, W)[:, :, lat, lon]
        ds = {"train_batch_size": G, "train_micro_batch_size_per_gpu": micro, "gradient_accumulation_steps": 1,
              "gradient_clipping": 1.0, "zero_optimization": {"stage": 1}, "steps_per_print": 10**9,
              "optimizer": {"type": "AdamW", "params": {"lr": 1e-4, "torch_adam": True}}}
        engine, *_ = deepspeed.initialize(model=model, model_parameters=model.parameters(), config=ds,
                                          mpu=JigsawMPU(groups))
        loss_fn = AreaWeightedMSE(torch.ones(lat.stop - lat.start), H, W)
        times = []
        for step in range(args.steps + 2):
            comm_stats.reset()
            dist.barrier()
            t0 = time.perf_counter()
            engine.backward(loss_fn(engine(x), x))
            engine.step()
            dist.barrier()
            if step >= 2:
                times.append(time.perf_counter() - t0)
        comm = sum(comm_stats.snapshot().values())
        param_bytes = sum(p.numel() * p.element_size() for p in model.parameters())
        stats = torch.tensor([comm, param_bytes], dtype=torch.float64)
        dist.all_reduce(stats, op=dist.ReduceOp.MAX)
        rows.append({"layout": dims, "step_s": statistics.median(times), "comm_bytes_per_step_max_rank": stats[0].item(),
                     "param_bytes_per_rank_max": stats[1].item()})
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
    base = next(r for r in res["rows"] if r["layout"][0] == res["world"])  # pure data parallel
    print(f"grid {res['grid']}, global batch {res['global_batch']}, world {res['world']} (CPU, gloo)")
    print("layout (data,domain,tensor)  step s  vs DP-only  jigsaw comm MB/step  param MB/rank  vs DP-only")
    for r in res["rows"]:
        print(f"{str(tuple(r['layout'])):28s} {r['step_s']:6.3f} {r['step_s'] / base['step_s']:10.2f} "
              f"{r['comm_bytes_per_step_max_rank'] / 1e6:20.2f} {r['param_bytes_per_rank_max'] / 1e6:14.2f} "
              f"{r['param_bytes_per_rank_max'] / base['param_bytes_per_rank_max']:11.2f}")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()

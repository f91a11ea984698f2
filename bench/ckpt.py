"""Sharded checkpoints at the full 0.25 deg grid: memory per process during save, load and export (issue 14).

    OMP_NUM_THREADS=1 .venv/bin/python bench/ckpt.py            # JSON: bench/results/ckpt.json

A WeatherMixer on the 721 x 1440 grid (patch 4: 65160 tokens) with small widths (D 32, Dt 64, Dc 64,
4 blocks, 25 -> 20 channels: the token-mixing weights [64, 65160] are the largest tensors) is built in a
DeepSpeed engine (ZeRO-1, AdamW), takes one optimizer step on a random batch (so Adam's moments exist), and is
  1. saved on 8 CPU ranks at (1,4,2) (torchrun, gloo),
  2. loaded (--resume's path: CheckpointManager.load) on 4 ranks at (1,2,2) and on 1 rank,
  3. exported to one layout-free file in one process without a process group (jigsaw-ckpt export's path).
Each process samples its resident set size (psutil, every 2 ms) and reports the peak during the operation,
its RSS just before it, the bytes of its own shards (module weights, fp32 master, Adam moments: what it
holds before the operation) and the largest single tensor (fp32, full size). Target: the rise during the
operation <= the largest tensor + 10% of the own shards; for export, <= the output + the largest tensor.
"""
from __future__ import annotations

import argparse
import datetime
import json
import os
import subprocess
import sys
import threading
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

import psutil  # noqa: E402
import torch  # noqa: E402

MODEL = {"patch": 4, "embed_dim": 32, "token_hidden": 64, "channel_hidden": 64, "depth": 4, "coord_features": False}
GRID, C_IN, C_OUT = (721, 1440), 25, 20
DS = {"train_batch_size": 1, "train_micro_batch_size_per_gpu": 1, "gradient_accumulation_steps": 1,
      "zero_optimization": {"stage": 1}, "gradient_clipping": 1.0, "steps_per_print": 10**9,
      "optimizer": {"type": "AdamW", "params": {"lr": 1e-3, "torch_adam": True}}}


class PeakRSS:
    """Peak resident set size of this process while the block runs (sampled every 2 ms)."""

    def __enter__(self):
        self.proc, self.stop = psutil.Process(), threading.Event()
        self.before = self.peak = self.proc.memory_info().rss
        self.thread = threading.Thread(target=self._sample, daemon=True)
        self.t0 = time.perf_counter()
        self.thread.start()
        return self

    def _sample(self):
        while not self.stop.is_set():
            self.peak = max(self.peak, self.proc.memory_info().rss)
            time.sleep(0.002)

    def __exit__(self, *exc):
        self.seconds = time.perf_counter() - self.t0
        self.stop.set()
        self.thread.join()
        self.peak = max(self.peak, self.proc.memory_info().rss)

    def record(self, **extra) -> dict:
        return {"rss_before_mb": self.before / 2**20, "rss_peak_mb": self.peak / 2**20,
                "rise_mb": (self.peak - self.before) / 2**20, "seconds": self.seconds, **extra}


def largest_tensor_mb(model) -> float:
    return max(4 * torch.Size(p.full_shape).numel() for p in model.parameters()) / 2**20


def worker(phase: str, domain: int, tensor: int, folder: str, out: str) -> None:
    """One rank: build the engine at (1, domain, tensor); `save` takes a step then saves, `load` loads."""
    import deepspeed
    import torch.distributed as dist

    from jigsaw_ds.checkpoint.zero import fp32_partitions, init_adam_state
    from jigsaw_ds.checkpoint.manager import CheckpointManager
    from jigsaw_ds.config import ModelConfig
    from jigsaw_ds.model import WeatherMixer
    from jigsaw_ds.parallel.topology import JigsawMPU, Layout, init_distributed, initialize

    init_distributed("gloo")
    torch.set_num_threads(1)
    runtime = psutil.Process().memory_info().rss  # libraries and process group, before any model state
    layout = Layout(data=1, domain=domain, tensor=tensor)
    groups = initialize(layout)
    cfg = ModelConfig(**MODEL)
    model = WeatherMixer(cfg, *GRID, C_IN, C_OUT, groups, seed=0)
    engine, *_ = deepspeed.initialize(model=model, model_parameters=model.parameters(), config=DS,
                                      mpu=JigsawMPU(groups))
    manager = CheckpointManager(os.path.dirname(folder), keep=1)
    run_config = {"jigsaw": {"model": MODEL}, "layout": vars(layout), "model_shape": {"n_lat": GRID[0], "n_lon": GRID[1],
                  "in_channels": C_IN, "out_channels": C_OUT}}
    lat, lon = model.partition.lat_slice(groups.domain_rank), model.partition.lon_slice(groups.tensor_rank)
    if phase == "save":
        x = torch.randn(1, C_IN, lat.stop - lat.start, lon.stop - lon.start)
        loss = engine(x).square().mean()
        engine.backward(loss)
        engine.step()
        engine.zero_grad()
    else:  # a training engine holds Adam's moments from its first step on; the load fills them
        init_adam_state(engine, 0)
    own = sum(p.numel() * p.element_size() for p in model.parameters())
    own += sum(t.numel() * t.element_size() * 3 for t in fp32_partitions(engine.optimizer))  # master + 2 moments
    dist.barrier()
    with PeakRSS() as m:
        if phase == "save":
            manager.save(engine, model, groups, 1, run_config)
        else:
            manager.load(engine, model, groups)
    rec = m.record(phase=phase, layout=[1, domain, tensor], rank=dist.get_rank(), own_shards_mb=own / 2**20,
                   largest_tensor_mb=largest_tensor_mb(model), runtime_mb=runtime / 2**20)
    recs = [None] * dist.get_world_size()
    dist.all_gather_object(recs, rec)
    if dist.get_rank() == 0:
        with open(out, "w") as f:
            json.dump(recs, f)
    dist.destroy_process_group()


def export_phase(folder: str, out_file: str) -> dict:
    """jigsaw-ckpt export's path in this process (no process group)."""
    from jigsaw_ds.checkpoint.manager import load_full
    from jigsaw_ds.config import ModelConfig
    from jigsaw_ds.model import WeatherMixer

    largest = largest_tensor_mb(WeatherMixer(ModelConfig(**MODEL), *GRID, C_IN, C_OUT))
    with PeakRSS() as m:
        state = load_full(folder)
        torch.save(state, out_file)
    output = sum(t.numel() * 4 for part in (state["model"], state["optimizer"]["exp_avg"],
                                            state["optimizer"]["exp_avg_sq"]) for t in part.values())
    return m.record(phase="export", layout=[1, 1, 1], rank=0, output_mb=output / 2**20, largest_tensor_mb=largest,
                    file_mb=os.path.getsize(out_file) / 2**20)


def launch(phase: str, nproc: int, domain: int, tensor: int, folder: str, tmp: str) -> list:
    out = os.path.join(tmp, f"{phase}_{nproc}.json")
    cmd = [os.path.join(os.path.dirname(sys.executable), "torchrun"), "--standalone", "--nproc_per_node", str(nproc),
           __file__, "--worker", phase, "--layout", f"{domain},{tensor}", "--folder", folder, "--out", out]
    subprocess.run(cmd, check=True, env=dict(os.environ, OMP_NUM_THREADS="1"),
                   stdout=subprocess.DEVNULL if nproc > 1 else None)
    with open(out) as f:
        return json.load(f)


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--worker", default="")
    ap.add_argument("--layout", default="1,1")
    ap.add_argument("--folder", default="")
    ap.add_argument("--out", default=os.path.join(ROOT, "bench", "results", "ckpt.json"))
    ap.add_argument("--tmp", default="/tmp/jigsaw_bench_ckpt")
    args = ap.parse_args(argv)
    if args.worker:
        from jigsaw_ds.quiet import quiet_libraries

        quiet_libraries(int(os.environ.get("RANK", "0")))
        worker(args.worker, *(int(v) for v in args.layout.split(",")), args.folder, args.out)
        return
    import shutil

    shutil.rmtree(args.tmp, ignore_errors=True)
    folder = os.path.join(args.tmp, "checkpoints", "step_00000001")
    os.makedirs(args.tmp)
    records = launch("save", 8, 4, 2, folder, args.tmp)
    records += launch("load", 4, 2, 2, folder, args.tmp)
    records += launch("load", 1, 1, 1, folder, args.tmp)
    records.append(export_phase(folder, os.path.join(args.tmp, "export.pt")))
    print(f"\n{'phase':7s} {'layout':8s} {'rank':>4} {'own MB':>7} {'largest':>7} {'runtime':>7} {'before':>7} "
          f"{'peak':>7} {'rise':>6} {'bound':>6} {'state':>6} {'bound':>6} {'s':>5}")
    for r in records:
        # the operation's own memory: rise over the RSS just before it, against one tensor + 10% (export: the
        # output + one tensor); the process's model state: peak over the runtime's RSS (libraries, process
        # group, before any model), against own shards + one tensor + 10%
        own = r.get("own_shards_mb", r.get("output_mb", 0))
        bound = r["largest_tensor_mb"] + (own if r["phase"] == "export" else 0.1 * own)
        state = r["rss_peak_mb"] - r.get("runtime_mb", r["rss_before_mb"])
        state_bound = own + r["largest_tensor_mb"] + 0.1 * own
        r.update(bound_mb=bound, within_bound=r["rise_mb"] <= bound, state_mb=state, state_bound_mb=state_bound,
                 state_within_bound=state <= state_bound)
        print(f"{r['phase']:7s} {'x'.join(map(str, r['layout'])):8s} {r['rank']:4d} {own:7.1f} "
              f"{r['largest_tensor_mb']:7.1f} {r.get('runtime_mb', 0):7.1f} {r['rss_before_mb']:7.1f} "
              f"{r['rss_peak_mb']:7.1f} {r['rise_mb']:6.1f} {bound:6.1f} {state:6.1f} {state_bound:6.1f} "
              f"{r['seconds']:5.2f}" + ("" if r["within_bound"] and r["state_within_bound"] else "  OVER"))
    with open(args.out, "w") as f:
        json.dump({"date": datetime.date.today().isoformat(), "model": MODEL, "grid": GRID, "channels": [C_IN, C_OUT],
                   "cpu": f"{os.cpu_count()} cores", "records": records}, f, indent=1)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()

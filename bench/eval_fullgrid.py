"""jigsaw-eval at the full 0.25 deg grid on 4 CPU ranks: memory per process and throughput (issue 16).

    OMP_NUM_THREADS=1 .venv/bin/python bench/eval_fullgrid.py      # JSON: bench/results/eval_fullgrid.json

A synthetic store on 721 x 1440 with 22 channels (4 upper-air variables at 5 levels, 2 surface fields), 40
six-hourly times (val_fraction 0.5: 8 initial times allow 12-step rollouts), and an untrained WeatherMixer with
small widths (patch 4, D 16, Dt 16, Dc 32, 2 blocks) written as a layout-free file. jigsaw-eval then rolls out
8 initial times x 12 leads at (1,2,2) on 4 ranks, batch 2, writing forecast.zarr and the scores. Holding the
forecast, truth, persistence or climatology of those as whole arrays would take 8 x 12 x 22 x 721 x 1440 x
4 B = 8.8 GB each; the target is a peak below 3 GB per process.
"""
from __future__ import annotations

import datetime
import json
import os
import subprocess
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

LEVELS = (300, 500, 700, 850, 925)
TMP = "/tmp/jigsaw_bench_eval"


def make_inputs() -> tuple[str, str]:
    import torch

    from jigsaw_ds import config as jconfig
    from jigsaw_ds.checkpoint.layout_free import FORMAT
    from jigsaw_ds.data.store import WeatherStore
    from jigsaw_ds.data.synth import synth_dataset
    from jigsaw_ds.data.writer import write_store
    from jigsaw_ds.model import WeatherMixer, input_channels

    store_path, ckpt = os.path.join(TMP, "store.zarr"), os.path.join(TMP, "model.pt")
    if not os.path.exists(store_path):
        write_store(synth_dataset(721, 1440, 40, seed=0, levels=LEVELS), store_path)
    cfg = jconfig.from_dict({
        "model": {"patch": 4, "embed_dim": 16, "token_hidden": 16, "channel_hidden": 32, "depth": 2,
                  "coord_features": True},
        "data": {"store": store_path, "variables": ["geopotential", "temperature", "u_component_of_wind",
                                                    "v_component_of_wind"],
                 "surface_variables": ["2m_temperature", "mean_sea_level_pressure"], "levels": list(LEVELS),
                 "val_fraction": 0.5},
        "parallel": {"domain": 2, "tensor": 2}, "train": {"out_dir": TMP, "global_batch": 4}})
    store = WeatherStore(store_path, cfg.data.variables, cfg.data.surface_variables, cfg.data.levels)
    n_state = len(store.channels)
    shape = {"n_lat": 721, "n_lon": 1440, "out_channels": n_state, "in_channels": input_channels(cfg.model, n_state, 0)}
    model = WeatherMixer(cfg.model, 721, 1440, shape["in_channels"], n_state)
    run_config = {"jigsaw": cfg.to_dict(), "layout": {"data": 1, "domain": 1, "tensor": 1}, "model_shape": shape,
                  "channels": [c.name for c in store.channels]}
    names = [n for n, _ in model.named_parameters()]
    torch.save({"format": FORMAT, "step": 0, "config": run_config,
                "model": {n: p.detach() for n, p in model.named_parameters()},
                "buffers": {n: b for n, b in model.named_buffers()},
                "optimizer": {"exp_avg": dict.fromkeys(names), "exp_avg_sq": dict.fromkeys(names), "step": 0},
                "scheduler": None}, ckpt)
    return store_path, ckpt


def main() -> None:
    os.makedirs(TMP, exist_ok=True)
    t0 = time.perf_counter()
    store, ckpt = make_inputs()
    setup_s = time.perf_counter() - t0
    out = os.path.join(TMP, "eval")
    cmd = [os.path.join(os.path.dirname(sys.executable), "torchrun"), "--standalone", "--nproc_per_node", "4",
           os.path.join(os.path.dirname(sys.executable), "jigsaw-eval"), "--checkpoint", ckpt, "--data", store,
           "--out", out, "--lead-steps", "12", "--inits", "8", "--domain", "2", "--tensor", "2", "--batch", "2",
           "--no-plots"]
    t0 = time.perf_counter()
    subprocess.run(cmd, check=True, env=dict(os.environ, OMP_NUM_THREADS="1"), stdout=subprocess.DEVNULL)
    wall = time.perf_counter() - t0
    scores = json.load(open(os.path.join(out, "scores.json")))
    tp = scores["throughput"]
    whole_array_gb = 8 * 12 * 22 * 721 * 1440 * 4 / 1e9
    result = {"date": datetime.date.today().isoformat(), "grid": [721, 1440], "channels": 22, "inits": 8, "leads": 12,
              "layout": tp["layout"], "peak_rss_mb_per_rank": tp["peak_rss_mb_per_rank"],
              "initial_times_per_s": tp["initial_times_per_s"], "forecast_steps_per_s": tp["forecast_steps_per_s"],
              "eval_wall_s": wall, "inputs_setup_s": setup_s, "whole_array_gb": whole_array_gb,
              "cpu": f"{os.cpu_count()} cores"}
    print(f"peak RSS per rank (MB): {[round(m) for m in tp['peak_rss_mb_per_rank']]} (target < 3072; one whole "
          f"array would be {whole_array_gb:.1f} GB)")
    print(f"{tp['forecast_steps_per_s']:.3f} forecast steps/s, {tp['initial_times_per_s']:.3f} initial times/s; "
          f"jigsaw-eval wall {wall:.0f} s")
    path = os.path.join(ROOT, "bench", "results", "eval_fullgrid.json")
    with open(path, "w") as f:
        json.dump(result, f, indent=1)
    print(f"wrote {path}")


if __name__ == "__main__":
    main()

"""The full grid on 4 CPU ranks: memory and bytes per process (issues 16, 33).

    OMP_NUM_THREADS=1 .venv/bin/python bench/eval_fullgrid.py            # JSON: bench/results/eval_fullgrid.json
    OMP_NUM_THREADS=1 .venv/bin/python bench/eval_fullgrid.py --path --grid 721x1440 --grid 1441x2880
                                                                      # JSON: bench/results/fullgrid_0125deg.json

Without --path (issue 16): jigsaw-eval alone at 721 x 1440. A synthetic store with 22 channels (4 upper-air
variables at 5 levels, 2 surface fields), 40 six-hourly times (val_fraction 0.5: 8 initial times allow 12-step
rollouts), and an untrained WeatherMixer with small widths (patch 4, D 16, Dt 16, Dc 32, 2 blocks) written as a
layout-free file. jigsaw-eval then rolls out 8 initial times x 12 leads at (1,2,2) on 4 ranks, batch 2, writing
forecast.zarr and the scores. Holding the forecast, truth, persistence or climatology of those as whole arrays
would take 8 x 12 x 22 x 721 x 1440 x 4 B = 8.8 GB each; the target is a peak below 3 GB per process.

With --path (issue 33): every stage of a user's path at each --grid, with configs/tiny_0125deg.json (the
quickstart's 10 channels, patch 8, D 16, 2 blocks) and DeepSpeed ZeRO-1 fp32, each on 4 ranks under torchrun
but the store's two: `jigsaw-data synth` (8 times), `jigsaw-data prepare` (inner chunks of one token row x half
the longitudes: a tensor rank's tile at tensor 2), jigsaw-train at (1,2,2) for 2 steps (checkpoint), --resume
at (1,4,1) to step 4 (checkpoint), jigsaw-eval of it at (1,2,2) (2 initial times x 2 leads; --all-hours: the
held-out 00 and 06 UTC) and jigsaw-forecast at (1,4,1). bench/rank_usage.py wraps each process: its peak RSS
and the bytes it read from the store. One grid's tile per rank is 4x the other's, so memory above the fixed
part (the libraries' import, measured alone) and bytes per rank should be about 4x too, and each rank should
read its tile's share of the stored bytes (from the shard indexes) within one chunk band.
"""
from __future__ import annotations

import datetime
import json
import os
import subprocess
import sys
import time

import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

BIN = os.path.join(os.path.dirname(sys.executable), "")
LEVELS = (300, 500, 700, 850, 925)
TMP = "/tmp/jigsaw_bench_eval"


def make_inputs() -> tuple[str, str]:
    import torch

    from jigsaw_ds import config as jconfig
    from jigsaw_ds.checkpoint.layout_free import FORMAT
    from jigsaw_ds.data.store import WeatherStore
    from jigsaw_ds.data.synth import synth_dataset
    from jigsaw_ds.data.writer import write_store
    from jigsaw_ds.model import InputSpec, ModelShape

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
    spec = InputSpec.of(cfg, [c.name for c in store.channels])
    shape = ModelShape(cfg.model, 721, 1440, spec.n_in, spec.n_state)
    model = shape.build()
    run_config = {"jigsaw": cfg.to_dict(), "layout": {"data": 1, "domain": 1, "tensor": 1}, "model_shape": shape.record(),
                  "channels": [c.name for c in store.channels]}
    names = [n for n, _ in model.named_parameters()]
    torch.save({"format": FORMAT, "step": 0, "config": run_config,
                "model": {n: p.detach() for n, p in model.named_parameters()},
                "buffers": {n: b for n, b in model.named_buffers()},
                "optimizer": {"exp_avg": dict.fromkeys(names), "exp_avg_sq": dict.fromkeys(names), "step": 0},
                "scheduler": None}, ckpt)
    return store_path, ckpt


def eval_only() -> None:
    os.makedirs(TMP, exist_ok=True)
    t0 = time.perf_counter()
    store, ckpt = make_inputs()
    setup_s = time.perf_counter() - t0
    out = os.path.join(TMP, "eval")
    cmd = [BIN + "torchrun", "--standalone", "--nproc_per_node", "4", BIN + "jigsaw-eval", "--checkpoint", ckpt,
           "--data", store,
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



# ---- --path: every stage at a grid ------------------------------------------------------------------------------
PATH_TMP = "/tmp/jigsaw_bench_fullgrid"
CONFIG = os.path.join(ROOT, "configs", "tiny_0125deg.json")
DEEPSPEED = os.path.join(ROOT, "configs", "ds_zero1_fp32.json")
USAGE = os.path.join(ROOT, "bench", "rank_usage.py")
TIMES, RANKS = 8, 4


def stage(name: str, out: str, command: list[str], ranks: int) -> dict:
    """Run one stage's command, each of its processes wrapped by bench/rank_usage.py; its wall time and each
    process's peak RSS and bytes read (the stage's folder out/name/ holds rank*.json and the log)."""
    usage = os.path.join(out, name)
    os.makedirs(usage, exist_ok=True)
    launch = [BIN + "torchrun", "--standalone", "--nproc_per_node", str(ranks)] if ranks > 1 else [sys.executable]
    t0 = time.perf_counter()
    with open(os.path.join(usage, "log.txt"), "w") as log:
        done = subprocess.run(launch + [USAGE, usage] + command, env=dict(os.environ, OMP_NUM_THREADS="1"),
                              stdout=log, stderr=subprocess.STDOUT)
    wall = time.perf_counter() - t0
    if done.returncode:
        raise SystemExit(f"{name} failed (exit {done.returncode}): see {usage}/log.txt")
    per_rank = [json.load(open(os.path.join(usage, f"rank{r}.json"))) for r in range(ranks)]
    print(f"  {name}: {wall:.0f} s, peak RSS MB {[round(u['peak_rss_mb']) for u in per_rank]}, "
          f"MB read {[round(u['bytes_read'] / 1e6, 1) for u in per_rank]}", flush=True)
    return {"wall_s": wall, "peak_rss_mb": [u["peak_rss_mb"] for u in per_rank],
            "children_peak_rss_mb": [u["children_peak_rss_mb"] for u in per_rank],
            "bytes_read": [u["bytes_read"] for u in per_rank], "reads": [u["reads"] for u in per_rank]}


def chunk_sizes(store: str, name: str) -> np.ndarray:
    """Stored (compressed) bytes of every inner chunk of one array of a training store, from its shards'
    indexes (16 bytes per inner chunk, then a crc32c, at the end of each file): [shard, lat band, lon tile]."""
    import zarr

    array = zarr.open_array(f"{store}/{name}", mode="r")
    grid = [-(-s // c) for s, c in zip(array.shards, array.chunks)]  # inner chunks per shard, per dimension
    n_shards = array.shape[0] if "time" in array.metadata.dimension_names else 1
    sizes = []
    for t in range(n_shards):
        key = (t,) * (n_shards > 1) + (0,) * (array.ndim - (n_shards > 1))
        with open(f"{store}/{name}/{array.metadata.encode_chunk_key(key)}", "rb") as f:
            f.seek(-(16 * int(np.prod(grid)) + 4), 2)
            index = np.frombuffer(f.read(16 * int(np.prod(grid))), np.uint64).reshape(-1, 2)
        sizes.append(index[:, 1].reshape(-1, *grid[-2:]).sum(0))  # all levels of a chunk together
    return np.stack(sizes)


def tile_shares(store: str, names: list[str], part, lat_chunk: int, lon_chunk: int) -> list[float]:
    """Each rank's (row-major over domain x tensor) share of the store's stored bytes: its tile's inner chunks
    over all chunks, summed over the arrays and time steps it reads. Compression depends on the latitude
    (smooth polar rows pack tighter), so a tile of 1/M of the grid holds a little more or less than 1/M of
    the bytes: this is what a rank that reads exactly its own chunks reads."""
    sizes = [chunk_sizes(store, name) for name in names]
    total = sum(s.sum() for s in sizes)
    shares = []
    for d in range(part.domain):
        lat = part.lat_slice(d)
        for t in range(part.tensor):
            lon = part.lon_slice(t)
            bands, tiles = slice(lat.start // lat_chunk, -(-lat.stop // lat_chunk)), \
                slice(lon.start // lon_chunk, -(-lon.stop // lon_chunk))
            shares.append(float(sum(s[:, bands, tiles].sum() for s in sizes) / total))
    return shares


def band_check(bytes_read: list[int], shares: list[float], token_rows: int, tensor: int) -> dict:
    """Each rank's bytes against its tile's share of the replica's bytes (one replica here: all ranks), within
    one chunk band: one token row (a latitude chunk) of its longitude tile, for every item read, i.e. total /
    (token_rows x tensor); also against a plain 1/M."""
    total, m = sum(bytes_read), len(bytes_read)
    band = total / (token_rows * tensor)
    own = max(abs(b - share * total) for b, share in zip(bytes_read, shares)) / band
    plain = max(abs(b - total / m) for b in bytes_read) / band
    return {"one_mth_bytes": total / m, "band_bytes": band, "tile_shares": shares,
            "deviation_from_tile_share_bands": own, "deviation_from_one_mth_bands": plain,
            "within_one_band_of_tile_share": own <= 1}


def full_path(grid: tuple[int, int]) -> dict:
    from jigsaw_ds import config as jconfig
    from jigsaw_ds.parallel.partition import TokenPartition, split_problems

    n_lat, n_lon = grid
    out = os.path.join(PATH_TMP, f"{n_lat}x{n_lon}")
    if os.path.exists(out):
        import shutil

        shutil.rmtree(out)
    os.makedirs(out)
    cfg = jconfig.load(CONFIG)
    patch = cfg.model.patch
    layouts = {"train": (2, 2), "resume": (4, 1), "eval": (2, 2), "forecast": (4, 1)}
    for domain, tensor in set(layouts.values()):  # the model splits at this grid (the trainer's own check)
        problems = split_problems(n_lat, n_lon, patch, domain, tensor, cfg.model.channel_hidden)
        assert not problems, problems
    synth, store, run = (os.path.join(out, name) for name in ("synth.zarr", "train.zarr", "run"))
    train = ["jigsaw-train", "--config", CONFIG, "--deepspeed_config", DEEPSPEED, "--set", f"data.store={store}",
             "--set", f"train.out_dir={run}"]
    inits = "2020-01-02T00,2020-01-02T06"  # held-out times of the 8 (val_fraction 0.5)
    print(f"{n_lat} x {n_lon}:", flush=True)
    stages = {
        "synth": stage("synth", out, ["jigsaw-data", "synth", "--grid", f"{n_lat}x{n_lon}", "--times", str(TIMES),
                                      "--out", synth], 1),
        "prepare": stage("prepare", out, ["jigsaw-data", "prepare", synth, "--out", store, "--patch", str(patch),
                                          "--lon-chunk", str(n_lon // 2), "--workers", "2"], 1),
        "train": stage("train", out, train + ["--set", "train.steps=2"], RANKS),
        "resume": stage("resume", out, train + ["--set", "train.steps=4", "--set", "parallel.domain=4",
                                                "--set", "parallel.tensor=1", "--resume"], RANKS),
        "eval": stage("eval", out, ["jigsaw-eval", "--checkpoint", run, "--data", store, "--out",
                                    os.path.join(out, "eval_out"), "--lead-steps", "2", "--inits", "2", "--domain",
                                    "2", "--tensor", "2", "--batch", "2", "--no-plots", "--all-hours"], RANKS),
        "forecast": stage("forecast", out, ["jigsaw-forecast", "--checkpoint", run, "--data", store, "--out",
                                            os.path.join(out, "forecast_out"), "--init-times", inits, "--lead-steps",
                                            "2", "--domain", "4", "--tensor", "1", "--batch", "2"], RANKS),
    }
    arrays = cfg.data.variables + cfg.data.surface_variables + cfg.model.static_variables
    for name, (domain, tensor) in layouts.items():
        stages[name]["layout"] = [1, domain, tensor]
        part = TokenPartition(n_lat, n_lon, patch, domain, tensor)
        shares = tile_shares(store, arrays, part, patch, n_lon // 2)
        stages[name]["bytes_per_rank"] = band_check(stages[name]["bytes_read"], shares, part.token_rows, tensor)
    metrics = [json.loads(line) for line in open(os.path.join(run, "metrics.jsonl"))]
    checkpoints = os.path.join(run, "checkpoints")
    store_mb = sum(os.path.getsize(os.path.join(d, f)) for d, _, fs in os.walk(store) for f in fs
                   if "climatology" not in d) / 1e6
    return {"grid": [n_lat, n_lon], "times": TIMES, "channels": 10, "patch": patch, "store_mb": store_mb,
            "tile_area_per_rank": n_lat * n_lon / RANKS, "stages": stages,
            "train_steps": [{k: m[k] for k in ("step", "loss", "step_time_s", "peak_mem_gb") if k in m}
                            for m in metrics],
            "checkpoint_mb": {tag: sum(os.path.getsize(os.path.join(d, f)) for d, _, fs in
                                       os.walk(os.path.join(checkpoints, tag)) for f in fs) / 1e6
                              for tag in sorted(os.listdir(checkpoints)) if tag.startswith("step_")}}


def baseline_mb() -> float:
    """Peak RSS of a process that only imports what every stage imports (torch, DeepSpeed, Megatron, tensorstore,
    xarray, the trainer and the evaluator): the fixed part, subtracted before comparing grids."""
    usage = os.path.join(PATH_TMP, "baseline")
    subprocess.run([sys.executable, USAGE, usage, "--baseline"], check=True, env=dict(os.environ, OMP_NUM_THREADS="1"))
    return json.load(open(os.path.join(usage, "rank0.json")))["peak_rss_mb"]


def compare(small: dict, large: dict, base: float) -> dict:
    """Per stage, the large grid's max over ranks over the small's: peak RSS above the fixed part (the import
    baseline, for the ranks; the store's commands import neither torch nor DeepSpeed: their whole RSS, and for
    prepare its largest Dask worker's), bytes read, and the store's stored bytes (compression differs)."""
    out = {}
    for name in large["stages"]:
        s, l = small["stages"][name], large["stages"][name]
        if len(l["peak_rss_mb"]) > 1:
            rss = (max(l["peak_rss_mb"]) - base) / (max(s["peak_rss_mb"]) - base)
        else:
            key = "children_peak_rss_mb" if name == "prepare" else "peak_rss_mb"
            rss = l[key][0] / s[key][0]
        read = max(l["bytes_read"]) / max(s["bytes_read"]) if max(s["bytes_read"]) else None
        out[name] = {"rss_ratio": rss, "bytes_per_rank_ratio": read}
    out["store_bytes_ratio"] = large["store_mb"] / small["store_mb"]
    return out


def path_main(grids: list[tuple[int, int]]) -> None:
    os.makedirs(PATH_TMP, exist_ok=True)
    load = os.getloadavg()
    base = baseline_mb()
    print(f"baseline (imports only): {base:.0f} MB", flush=True)
    runs = [full_path(g) for g in grids]
    result = {"date": datetime.date.today().isoformat(), "cpu": f"{os.cpu_count()} cores",
              "load_average_start": load, "load_average_end": os.getloadavg(), "ranks": RANKS,
              "config": os.path.relpath(CONFIG, ROOT), "deepspeed_config": os.path.relpath(DEEPSPEED, ROOT),
              "baseline_import_rss_mb": base, "grids": runs}
    if len(runs) == 2:
        result["ratio_large_over_small"] = compare(*sorted(runs, key=lambda r: r["tile_area_per_rank"]), base)
    path = os.path.join(ROOT, "bench", "results", "fullgrid_0125deg.json")
    with open(path, "w") as f:
        json.dump(result, f, indent=1)
    print(f"wrote {path}")


def main() -> None:
    import argparse

    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--path", action="store_true", help="every stage (synth .. forecast) at each --grid")
    ap.add_argument("--grid", action="append", default=[], help="HxW (with --path; default 721x1440 and 1441x2880)")
    args = ap.parse_args()
    if args.path:
        path_main([tuple(int(v) for v in g.split("x")) for g in args.grid or ["721x1440", "1441x2880"]])
    else:
        eval_only()


if __name__ == "__main__":
    main()

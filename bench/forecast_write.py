"""Writing forecast tiles into forecast.zarr (issue 16/18: jigsaw-forecast on a GPU is bound by its host-side
writes): the engine's writer (eval.forecast_store.ForecastWriter, tensorstore, one step in flight) against
zarr-python's `array[...] = values` (the path before), side by side in one process, at the 0.25 deg grid.

    OMP_NUM_THREADS=1 python bench/forecast_write.py [--steps 4] [--batch 2]

The values are the 69-channel fields of bench/step.py's store (smooth fields plus noise: they compress like
those), written as `--steps` lead steps of `--batch` initial times into a fresh forecast.zarr made by the
engine's create_forecast_store; each writer also gets 0.1 s of other work per step (a stand-in for the
model step and the scoring that its threads overlap with; the same for both). MB/s = forecast bytes / time.
"""
from __future__ import annotations

import argparse
import datetime
import json
import os
import shutil
import sys
import time

import numpy as np
import xarray as xr

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from step import ROOT, bench_store, build_config  # noqa: E402

from jigsaw_ds.files import write_atomic  # noqa: E402
from jigsaw_ds.data.store import WeatherStore, default_read_threads  # noqa: E402
from jigsaw_ds.eval import forecast_store as ev  # noqa: E402
from jigsaw_ds.perf import step_model as pm  # noqa: E402

OTHER_WORK_S = 0.1


def zarr_python(path, blocks, lat, lon):
    """The writer before: zarr-python, synchronous, one call per variable block."""
    import zarr

    group = zarr.open_group(path, mode="r+")

    def write(first, k, values):
        for var, index, source in ev.forecast_pieces(blocks, first, k, values, lat, lon):
            group[var][index] = source
    return write, lambda: None


def engine(path, blocks, lat, lon):
    writer = ev.ForecastWriter(path, blocks, lat, lon)
    return writer.write, writer.wait


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--steps", type=int, default=4)
    ap.add_argument("--batch", type=int, default=2)
    ap.add_argument("--config", default=os.path.join(ROOT, "configs", "era5_025deg.json"))
    ap.add_argument("--out", default=os.path.join(ROOT, "bench", "results", "forecast_write.json"))
    args = ap.parse_args(argv)
    args.small, args.depth, args.store = False, 0, ""
    jcfg = build_config(args, False)
    grid = (721, 1440)
    shape = pm.ModelShape.from_config(jcfg, grid)
    store_path = os.path.join("/tmp", f"jigsaw_bench_cpu_{grid[0]}x{grid[1]}_{shape.c_out}ch.zarr")
    bench_store(store_path, jcfg.data.variables, jcfg.data.levels, jcfg.data.surface_variables,
                jcfg.model.static_variables, grid[0], grid[1], 6)
    store = WeatherStore(store_path, jcfg.data.variables, jcfg.data.surface_variables, jcfg.data.levels,
                         jcfg.model.static_variables)
    full = slice(0, grid[0]), slice(0, grid[1])
    fields = [store.read_raw(list(range(i, i + args.batch)), *full) for i in range(2)]
    leads = ev.lead_times(store, 1, args.steps)
    blocks = store.variable_blocks()
    res = {"date": datetime.date.today().isoformat(), "command": " ".join(["python bench/forecast_write.py"] +
                                                                           (argv or sys.argv[1:])),
           "grid": grid, "channels": len(store.channels), "batch": args.batch, "steps": args.steps,
           "threads": default_read_threads(), "mb_per_step": fields[0].nbytes / 1e6, "writers": {}}
    for name, make in (("zarr-python", zarr_python), ("ForecastWriter", engine)) * 2:  # twice, interleaved
        path = os.path.join("/tmp", "jigsaw_forecast_write.zarr")
        shutil.rmtree(path, ignore_errors=True)
        ev.create_forecast_store(path, store, store.times[:args.batch], leads, grid)
        write, wait = make(path, blocks, *full)
        t0 = time.perf_counter()
        for k in range(args.steps):
            write(0, k, fields[k % 2])
            time.sleep(OTHER_WORK_S)
        wait()
        seconds = time.perf_counter() - t0
        var, c0, levels = blocks[0]  # the last step's first variable, read back by xarray
        written = xr.open_zarr(path)[var].isel(time=0, prediction_timedelta=args.steps - 1).values
        wanted = fields[(args.steps - 1) % 2][0, c0:c0 + (1 if levels is None else len(levels))]
        assert np.array_equal(written, wanted[0] if levels is None else wanted), name
        best = min(seconds, res["writers"].get(name, {}).get("seconds", float("inf")))
        res["writers"][name] = {"seconds": best, "s_per_step": best / args.steps,
                                "MBps": fields[0].nbytes * args.steps / best / 1e6}
        mbps = fields[0].nbytes * args.steps / seconds / 1e6
        print(f"{name:16s} {seconds / args.steps:.2f} s per step ({mbps:.0f} MB/s)", flush=True)
    w = res["writers"]
    res["speedup"] = w["zarr-python"]["seconds"] / w["ForecastWriter"]["seconds"]
    print(f"\n{'writer':16s} {'s/step':>7} {'MB/s':>7}   ({res['mb_per_step']:.0f} MB per step, {res['threads']} threads)")
    for name, r in w.items():
        print(f"{name:16s} {r['s_per_step']:7.2f} {r['MBps']:7.0f}")
    print(f"ForecastWriter / zarr-python: {res['speedup']:.2f}x faster")
    os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
    write_atomic(args.out, json.dumps(res, indent=1))
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Throughput and memory of `jigsaw-data prepare`: the serial prepare it replaced, 1 and 2 Dask workers, side by side.

    python bench/prepare.py [--grid 361x720] [--levels 5] [--times 96] [--short-times 48] [--repeats 1]
                            [--regrid HxW] [--dir DIR] [--json bench/results/prepare.json]

Source: a WeatherBench2-style zarr store made by synth (4 upper-air variables x --levels levels + 2 surface
variables = 22 channels at the default 5 levels; float32; chunks of one time step, as WB2's ERA5 store),
written piece by piece so that it never sits in memory whole. Default: 361 x 720 x 22 channels x 96 steps
= 2.2 GB of data. Each prepare converts the whole source (with statistics and the hour-of-day climatology)
into a new store; the source is read once beforehand, so every run finds it in the page cache.

Runs, in one process, one after the other (repeated --repeats times, in that order, to show the noise):
  serial   the prepare of commit SERIAL_COMMIT (before Dask): writer.write_store in blocks, then
           store.compute_stats and an xarray groupby climatology over the written store, in this process;
  1 worker / 2 workers: prepare on a fresh LocalCluster of that many single-threaded worker processes
           (cluster start not timed; reported apart).
--regrid HxW (e.g. --grid 721x1440 --regrid 1441x2880 --levels 1 --times 16): every prepare also interpolates
the source to that grid (`prepare --grid`, on the workers); the serial run and the --short-times run are left
out (the serial prepare cannot regrid), and the stores of 1 and 2 workers are compared with each other.
Throughput is source bytes (decoded) / wall seconds (with --regrid: the stored, regridded bytes). Peak memory per worker is each worker process's
resident memory sampled every 50 ms during the run; the same 2-worker run on a store of --short-times steps shows whether it depends
on the number of time steps (it should not: a worker holds a block, its lookahead step and their copies).
Load average is printed before and after: on a shared machine, trust ratios measured close together.
"""
import argparse
import importlib.util
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
SERIAL_COMMIT = "c6125f1"  # the last commit whose prepare was one process (writer.write_store + compute_stats)


def make_source(path: str, n_lat: int, n_lon: int, n_times: int, levels: list, piece: int = 8) -> int:
    """The synthetic WB2-style source, `piece` time steps at a time; returns its data bytes (decoded)."""
    from jigsaw_ds.data.synth import synth_dataset

    for start in range(0, n_times, piece):
        ds = synth_dataset(n_lat, n_lon, min(piece, n_times - start), seed=0, levels=levels, start=start)
        ds = ds.drop_vars(["land_sea_mask", "geopotential_at_surface"])
        if start == 0:
            ds.to_zarr(path, mode="w", encoding={v: {"chunks": (1,) + ds[v].shape[1:]} for v in ds.data_vars})
        else:
            ds.to_zarr(path, append_dim="time")
    import xarray as xr

    return int(sum(da.nbytes for da in xr.open_zarr(path, chunks=None).data_vars.values()))


def warm(path: str) -> None:
    """Read every file of the source once (into the page cache), so that no run pays for the disk alone."""
    for root, _, files in os.walk(path):
        for name in files:
            with open(os.path.join(root, name), "rb") as f:
                while f.read(1 << 24):
                    pass


def serial_prepare_module():
    """jigsaw_ds.data.prepare as of SERIAL_COMMIT, loaded beside today's (same package: same writer and store)."""
    text = subprocess.run(["git", "show", f"{SERIAL_COMMIT}:jigsaw_ds/data/prepare.py"], cwd=ROOT, check=True,
                          capture_output=True, text=True).stdout
    spec = importlib.util.spec_from_loader("jigsaw_ds.data._serial_prepare", loader=None)
    module = importlib.util.module_from_spec(spec)
    module.__package__ = "jigsaw_ds.data"
    sys.modules[spec.name] = module  # dataclasses look their module up there
    exec(compile(text, f"{SERIAL_COMMIT}:jigsaw_ds/data/prepare.py", "exec"), module.__dict__)
    return module


def load() -> float:
    return os.getloadavg()[0]


def run_serial(src: str, out: str) -> dict:
    module = serial_prepare_module()
    t0 = time.perf_counter()
    module.prepare([src], out, lat_chunk=4, progress=False)
    return {"seconds": time.perf_counter() - t0}


class PeakRSS:
    """Peak resident memory of some processes, sampled every 50 ms from a thread of this one (ru_maxrss of a
    worker is no use: a process forked from a large one starts with that one's maximum)."""

    def __init__(self, pids):
        import threading

        import psutil

        self.procs = [psutil.Process(pid) for pid in pids]
        self.peak = [p.memory_info().rss for p in self.procs]
        self.start_rss = list(self.peak)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._poll, daemon=True)
        self._thread.start()

    def _poll(self):
        while not self._stop.wait(0.05):
            for i, p in enumerate(self.procs):
                try:
                    self.peak[i] = max(self.peak[i], p.memory_info().rss)
                except Exception:  # a worker that ended (restarted by its nanny) is no longer measured
                    pass

    def stop(self) -> dict:
        self._stop.set()
        self._thread.join()
        return {"worker_peak_rss_mb": sorted(v / 2**20 for v in self.peak),
                "worker_start_rss_mb": sorted(v / 2**20 for v in self.start_rss)}


def run_dask(src: str, out: str, workers: int, grid=None) -> dict:
    from jigsaw_ds.data.parallel_prepare import dask_client
    from jigsaw_ds.data.prepare import prepare

    t0 = time.perf_counter()
    with dask_client(workers=workers) as client:
        started = time.perf_counter() - t0
        memory = PeakRSS(client.run(os.getpid).values())
        t0 = time.perf_counter()
        prepare([src], out, lat_chunk=4, client=client, progress=False, grid=grid)
        seconds = time.perf_counter() - t0
    return {"seconds": seconds, "cluster_start_seconds": started, **memory.stop()}


def block_info(src: str, grid=None) -> dict:
    from jigsaw_ds.data.prepare import PrepareOptions, _job

    job = _job([src], os.path.join(tempfile.gettempdir(), "unused.zarr"), PrepareOptions(lat_chunk=4, grid=grid))
    b = job.blocks[0]
    return {"blocks": len(job.blocks), "block_steps": b.stop - b.start, "block_mb": job.block_bytes(b) / 1e6,
            "store_bytes": sum(job.block_bytes(b) for b in job.blocks)}


def compare(a: str, b: str) -> dict:
    """Do stores a and b hold the same values, and how far apart are their statistics: relative to each value,
    and in units of the channel's std (a mean near 0, like the v wind's, has no meaningful relative error)."""
    import numpy as np
    import xarray as xr

    x, y = xr.open_zarr(a, chunks=None), xr.open_zarr(b, chunks=None)
    same = set(x.data_vars) == set(y.data_vars) and all(np.array_equal(x[v].values, y[v].values) for v in x.data_vars)
    sx, sy = x.attrs["jigsaw_stats"], y.attrs["jigsaw_stats"]
    rel = max((abs(sx[c][k] - sy[c][k]) / abs(sy[c][k]), f"{c}.{k}") for c in sy for k in sy[c] if sy[c][k])
    scaled = max((abs(sx[c][k] - sy[c][k]) / sy[c]["std"], f"{c}.{k}") for c in sy for k in sy[c])
    return {"values_equal": bool(same), "stats_max_relative_difference": rel,
            "stats_max_difference_in_std": scaled}


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--grid", default="361x720")
    ap.add_argument("--levels", type=int, default=5, help="pressure levels per upper-air variable")
    ap.add_argument("--times", type=int, default=96)
    ap.add_argument("--short-times", type=int, default=48, help="time steps of the store for the memory check")
    ap.add_argument("--repeats", type=int, default=1)
    ap.add_argument("--regrid", default=None, metavar="HxW", help="prepare --grid HxW in every run (1 and 2 workers)")
    ap.add_argument("--dir", default=None, help="where to write (default: a temporary folder)")
    ap.add_argument("--json", default=None, help="default: bench/results/prepare.json (prepare_regrid.json with --regrid)")
    args = ap.parse_args()
    args.json = args.json or os.path.join(ROOT, "bench", "results", "prepare_regrid.json" if args.regrid else "prepare.json")
    n_lat, n_lon = (int(v) for v in args.grid.split("x"))
    levels = [1000, 850, 700, 500, 250, 100, 50, 10][:args.levels]
    workdir = args.dir or tempfile.mkdtemp(prefix="jigsaw-bench-prepare-")
    src, short = os.path.join(workdir, "src.zarr"), os.path.join(workdir, "short.zarr")
    grid = [int(v) for v in args.regrid.split("x")] if args.regrid else None
    results = {"grid": [n_lat, n_lon], "channels": 4 * len(levels) + 2, "times": args.times, "runs": [],
               "cores": os.cpu_count(), "load_before": load(), "regrid": grid}
    try:
        t0 = time.perf_counter()
        results["source_bytes"] = make_source(src, n_lat, n_lon, args.times, levels)
        print(f"source {src}: {results['source_bytes'] / 1e9:.2f} GB in {time.perf_counter() - t0:.0f} s", flush=True)
        results.update(block_info(src, grid))
        warm(src)
        if grid:
            return regrid_runs(results, src, workdir, grid, args)
        for repeat in range(args.repeats):
            for name, fn in (("serial", lambda o: run_serial(src, o)), ("1 worker", lambda o: run_dask(src, o, 1)),
                             ("2 workers", lambda o: run_dask(src, o, 2))):
                out = os.path.join(workdir, f"out-{name.replace(' ', '')}.zarr")
                load_at_start = load()
                row = {"run": name, "repeat": repeat, "times": args.times, "load_at_start": load_at_start, **fn(out)}
                row["mb_per_s"] = results["source_bytes"] / 1e6 / row["seconds"]
                results["runs"].append(row)
                print(json.dumps(row), flush=True)
            ref = os.path.join(workdir, "out-serial.zarr")
            results["versus_serial"] = {n: compare(os.path.join(workdir, f"out-{n}.zarr"), ref)
                                        for n in ("1worker", "2workers")}
            print(json.dumps(results["versus_serial"]), flush=True)
            for n in ("serial", "1worker", "2workers"):
                shutil.rmtree(os.path.join(workdir, f"out-{n}.zarr"), ignore_errors=True)
        make_source(short, n_lat, n_lon, args.short_times, levels)
        warm(short)
        row = {"run": "2 workers", "repeat": 0, "times": args.short_times, "load_at_start": load(),
               **run_dask(short, os.path.join(workdir, "out-short.zarr"), 2)}
        row["mb_per_s"] = results["source_bytes"] * args.short_times / args.times / 1e6 / row["seconds"]
        results["runs"].append(row)
        print(json.dumps(row), flush=True)
    finally:
        if not args.dir:
            shutil.rmtree(workdir, ignore_errors=True)
    results["load_after"] = load()
    print(table(results))
    os.makedirs(os.path.dirname(args.json), exist_ok=True)
    with open(args.json, "w") as f:
        json.dump(results, f, indent=1)
    print(f"\nresults in {args.json}")


def regrid_runs(results: dict, src: str, workdir: str, grid: list, args) -> None:
    """1 worker, then 2 workers, each prepare regridding to `grid`; the two stores must be the same."""
    for repeat in range(args.repeats):
        for name, workers in (("1 worker", 1), ("2 workers", 2)):
            out = os.path.join(workdir, f"out-{workers}.zarr")
            shutil.rmtree(out, ignore_errors=True)
            row = {"run": name, "repeat": repeat, "times": args.times, "load_at_start": load(),
                   **run_dask(src, out, workers, grid)}
            row["mb_per_s"] = results["store_bytes"] / 1e6 / row["seconds"]
            results["runs"].append(row)
            print(json.dumps(row), flush=True)
        results["one_vs_two"] = compare(os.path.join(workdir, "out-2.zarr"), os.path.join(workdir, "out-1.zarr"))
        print(json.dumps(results["one_vs_two"]), flush=True)
    results["load_after"] = load()
    one = [r["seconds"] for r in results["runs"] if r["run"] == "1 worker"]
    two = [r["seconds"] for r in results["runs"] if r["run"] == "2 workers"]
    print(f"\nregrid {results['grid'][0]}x{results['grid'][1]} -> {grid[0]}x{grid[1]}, {results['channels']} channels, "
          f"{args.times} steps: {results['store_bytes'] / 1e9:.2f} GB stored; {results['blocks']} blocks of "
          f"{results['block_steps']} steps ({results['block_mb']:.0f} MB); load {results['load_before']:.1f} before, "
          f"{results['load_after']:.1f} after")
    print("| run | s | MB/s (stored) | vs 1 worker | peak RSS per worker MB | load at start |\n|---|---|---|---|---|---|")
    for r in results["runs"]:
        speedup = one[r["repeat"]] / r["seconds"]
        print(f"| {r['run']} | {r['seconds']:.1f} | {r['mb_per_s']:.0f} | {speedup:.2f}x | "
              f"{', '.join(f'{v:.0f}' for v in r['worker_peak_rss_mb'])} | {r['load_at_start']:.1f} |")
    results["speedup_2_vs_1"] = [a / b for a, b in zip(one, two)]
    os.makedirs(os.path.dirname(args.json), exist_ok=True)
    with open(args.json, "w") as f:
        json.dump(results, f, indent=1)
    print(f"\nresults in {args.json}")


def table(results: dict) -> str:
    runs = results["runs"]
    serial = [r["seconds"] for r in runs if r["run"] == "serial"]
    one = [r["seconds"] for r in runs if r["run"] == "1 worker"]
    lines = [f"\n{results['grid'][0]} x {results['grid'][1]}, {results['channels']} channels, {results['times']} steps: "
             f"{results['source_bytes'] / 1e9:.2f} GB; {results['blocks']} blocks of {results['block_steps']} steps "
             f"({results['block_mb']:.0f} MB); load {results['load_before']:.1f} before, {results['load_after']:.1f} "
             f"after", f"versus serial: {json.dumps(results.get('versus_serial'))}",
             "", "| run | time steps | s | MB/s | vs serial | vs 1 worker | peak RSS per worker MB |", "|---|---|---|---|---|---|---|"]
    for r in runs:
        rep = r["repeat"]
        peak = ", ".join(f"{v:.0f}" for v in r.get("worker_peak_rss_mb", [])) or "-"
        vs_serial = serial[rep] / r["seconds"] if r["times"] == results["times"] and rep < len(serial) else None
        vs_one = one[rep] / r["seconds"] if r["times"] == results["times"] and rep < len(one) else None
        fmt = lambda v: f"{v:.2f}x" if v else "-"
        lines.append(f"| {r['run']} | {r['times']} | {r['seconds']:.1f} | {r['mb_per_s']:.0f} | {fmt(vs_serial)} | "
                     f"{fmt(vs_one)} | {peak} |")
    return "\n".join(lines)


if __name__ == "__main__":
    main()

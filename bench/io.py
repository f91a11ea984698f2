"""Bytes and time per rank to read one sample of a 0.25 deg store, for M = 1, 2, 4, 8 ranks of one replica.

    python bench/io.py [--times 3] [--ranks 1 2 4 8] [--lat-chunks 4 32] [--cold] [--json bench/results/io.json]

Writes a synthetic store of 0.25 deg shape (721 x 1440; geopotential and temperature at 500 and 850 hPa,
2 m temperature, mean sea level pressure: 6 channels, about 25 MB per time step) with writer.write_store,
chunked in latitude bands of --lat-chunks rows (one store per value), then for each M splits the 181 token
rows (patch 4) over M domain ranks as the trainer does (TokenPartition) and reads each rank's band of every
time step through a CountingStore: chunk bytes and wall time per rank per sample.

The ranks of one replica are emulated in this one process, one after the other: "time per rank" is the
time to read one rank's band alone, so the table shows what the layout does to one rank's read, not how
M processes compete for one disk. The store was just written, so it sits in the page cache: the times are
zarr's decode and Python overheads plus memory copies, unless --cold drops the store's files from the page
cache before every read (posix_fadvise, no root needed), so that every read comes from the disk. Wall and
CPU time are each the best of --repeats reads of each time step, averaged over time steps: on a shared
machine the best is the least disturbed; CPU time (all threads of the process) does not count time spent
waiting for a core.
"""
import argparse
import json
import os
import shutil
import statistics
import tempfile
import time

N_LAT, N_LON, PATCH = 721, 1440, 4
UPPER, SURFACE, LEVELS = ["geopotential", "temperature"], ["2m_temperature", "mean_sea_level_pressure"], [500, 850]


def make_store(path: str, n_times: int, lat_chunk: int) -> float:
    """Write the store; return the seconds it took."""
    from jigsaw_ds.data.synth import synth_dataset
    from jigsaw_ds.data.writer import write_store

    t0 = time.perf_counter()
    ds = synth_dataset(N_LAT, N_LON, n_times, seed=0, levels=LEVELS)[UPPER + SURFACE]
    write_store(ds, path, lat_chunk=lat_chunk, level_chunk=0, progress=True, time_block=1)  # prepare's chunks
    return time.perf_counter() - t0


def evict(path: str) -> None:
    """Drop the store's files from the page cache (no root needed), so the next read comes from disk."""
    for root, _, files in os.walk(path):
        for name in files:
            fd = os.open(os.path.join(root, name), os.O_RDONLY)
            os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
            os.close(fd)


def read_rank(path: str, lat: slice, times: list, repeats: int, cold: bool) -> dict:
    """One rank's band of every time step: chunk bytes per sample, and wall and CPU time per sample (the best
    of `repeats` reads of each time step, averaged over time steps: the machine may be shared)."""
    from jigsaw_ds.data.counting import CountingStore
    from jigsaw_ds.data.store import WeatherStore

    store = WeatherStore(path, UPPER, SURFACE, LEVELS)
    counter = CountingStore.local(path)
    store.read_through(counter)
    store.read_raw([times[-1]], lat, slice(None))  # warm-up: zarr opens each array on first use
    wall, cpu = {t: float("inf") for t in times}, {t: float("inf") for t in times}
    counter.reset()
    for _ in range(repeats):
        for t in times:
            if cold:
                evict(path)
            t0, c0 = time.perf_counter(), time.process_time()
            store.read_raw([t], lat, slice(None))
            wall[t], cpu[t] = min(wall[t], time.perf_counter() - t0), min(cpu[t], time.process_time() - c0)
    samples = repeats * len(times)
    return {"bytes": counter.chunk_bytes / samples, "chunks": counter.chunk_reads / samples,
            "seconds": statistics.mean(wall.values()), "cpu_seconds": statistics.mean(cpu.values()),
            "rows": lat.stop - lat.start}


def bench_store(path: str, ranks: list, times: list, repeats: int, cold: bool) -> list:
    """Per M: every rank's numbers, and the busiest rank's (max), which sets the pace of a replica."""
    from jigsaw_ds.parallel.partition import TokenPartition

    rows = []
    for m in ranks:
        part = TokenPartition(N_LAT, N_LON, PATCH, domain=m)
        per_rank = [read_rank(path, part.lat_slice(d), times, repeats, cold) for d in range(m)]
        row = {"M": m, "ranks": per_rank}
        for key in ("bytes", "chunks", "seconds", "cpu_seconds", "rows"):
            row[f"{key}_max"] = max(r[key] for r in per_rank)
        rows.append(row)
    for row in rows:
        for key in ("bytes", "seconds", "cpu_seconds"):
            row[f"{key}_ratio"] = row[f"{key}_max"] / rows[0][f"{key}_max"]
    return rows


def table(lat_chunk: int, rows: list) -> str:
    lines = [f"lat chunk {lat_chunk} rows ({-(-N_LAT // lat_chunk)} chunks per variable and time step); "
             f"busiest rank of M",
             "| M | rows/rank | chunks/rank | MB/rank/sample | vs M=1 | 1/M | wall ms/rank/sample | vs M=1 | "
             "CPU ms/rank/sample | vs M=1 |", "|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['M']} | {r['rows_max']} | {r['chunks_max']:.0f} | {r['bytes_max'] / 1e6:.2f} | "
                     f"{r['bytes_ratio']:.3f} | {1 / r['M']:.3f} | {r['seconds_max'] * 1e3:.1f} | "
                     f"{r['seconds_ratio']:.3f} | {r['cpu_seconds_max'] * 1e3:.1f} | {r['cpu_seconds_ratio']:.3f} |")
    return "\n".join(lines)


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--times", type=int, default=3, help="time steps in the store (each read as one sample)")
    ap.add_argument("--ranks", type=int, nargs="+", default=[1, 2, 4, 8])
    ap.add_argument("--lat-chunks", type=int, nargs="+", default=[4, 32], help="latitude rows per chunk")
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--cold", action="store_true", help="drop the store from the page cache before every read")
    ap.add_argument("--dir", default=None, help="where to write the stores (default: a temporary folder)")
    ap.add_argument("--json", default=os.path.join(os.path.dirname(os.path.abspath(__file__)), "results", "io.json"))
    args = ap.parse_args()
    workdir = args.dir or tempfile.mkdtemp(prefix="jigsaw-bench-io-")
    results = {"grid": [N_LAT, N_LON], "patch": PATCH, "channels": len(UPPER) * len(LEVELS) + len(SURFACE),
               "times": args.times, "repeats": args.repeats, "cold": args.cold, "stores": {}}
    try:
        for lat_chunk in args.lat_chunks:
            path = os.path.join(workdir, f"io_{lat_chunk}.zarr")
            write_s = make_store(path, args.times, lat_chunk)
            rows = bench_store(path, args.ranks, list(range(args.times)), args.repeats, args.cold)
            results["stores"][str(lat_chunk)] = {"write_seconds": write_s, "rows": rows}
            print(f"\nwrote {path} in {write_s:.1f} s\n" + table(lat_chunk, rows), flush=True)
            shutil.rmtree(path)
    finally:
        if not args.dir:
            shutil.rmtree(workdir, ignore_errors=True)
    os.makedirs(os.path.dirname(args.json), exist_ok=True)
    with open(args.json, "w") as f:
        json.dump(results, f, indent=1)
    print(f"\nresults in {args.json}")


if __name__ == "__main__":
    main()

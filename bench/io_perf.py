"""Where a tile read's time goes: the reader or bench/io.py's decode floor reads one rank's band of the default
0.25 deg store (bench/io.py's) a fixed number of times, to be run under `perf record` (docs/data.md,
"Checksums"):

    OMP_NUM_THREADS=1 perf record -F 2000 -o reader.perf python bench/io_perf.py reader
    OMP_NUM_THREADS=1 perf record -F 2000 -o floor.perf python bench/io_perf.py floor
    perf report -i reader.perf --no-children --sort sym -n | head -20

One core, M = 2, rank 0's band, --reads reads over the store's time steps. The store is written to --store
first if missing (bench/io.py's make_store, 3 time steps).
"""
from __future__ import annotations

import argparse
import os
import sys
import time
from concurrent.futures import ThreadPoolExecutor
import importlib.util

import numpy as np

# bench/io.py by its path: the name `io` is the standard library's
_spec = importlib.util.spec_from_file_location("bench_io", os.path.join(os.path.dirname(os.path.abspath(__file__)), "io.py"))
bench_io = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(bench_io)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("which", choices=("reader", "floor"))
    ap.add_argument("--reads", type=int, default=150)
    ap.add_argument("--store", default="/tmp/jigsaw_io_perf_blosc-lz4.zarr")
    args = ap.parse_args(argv)
    from jigsaw_ds.data.store import WeatherStore
    from jigsaw_ds.parallel.partition import TokenPartition

    if not os.path.exists(args.store):
        bench_io.make_store(args.store, "blosc-lz4", 3)
    bench_io.use_cores(1)
    store = WeatherStore(args.store, bench_io.UPPER, bench_io.SURFACE, bench_io.LEVELS, read_threads=1)
    floor, pool = bench_io.Floor(args.store), ThreadPoolExecutor(1)
    lat, lon = TokenPartition(bench_io.N_LAT, bench_io.N_LON, bench_io.PATCH, domain=2).lat_slice(0), slice(None)
    out = np.empty((1, len(store.channels), lat.stop - lat.start, bench_io.N_LON), np.float32)
    read = {"reader": lambda t: store.read_into(out, [t], lat, lon, normalise=False),
            "floor": lambda t: floor.read(out, t, lat, pool, 1)}[args.which]
    read(0)  # metadata, shard indexes
    t0 = time.perf_counter()
    for n in range(args.reads):
        read(n % 3)
    print(f"{args.which}: {args.reads} reads, {out.nbytes * args.reads / (time.perf_counter() - t0) / 1e6:.0f} MB/s")
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""What longitude-roll augmentation (data.lon_roll) costs the reader: PairDataset.read_batch of one rank's tile,
items read with random shifts against the same items unshifted, side by side in one run.

    python bench/rolled_read.py [--store runs/skill/swe65_144x40.zarr] [--grid025 TIMES] [--layouts 1x1 2x2]
                                [--rollout 1 8] [--batch 8] [--repeats 30] [--json bench/results/rolled_read.json]

Unshifted, the items of a batch share one read of the union of their time steps; shifted, each item (its own
shift) is read on its own, one column range or two where its tile wraps past the last longitude. For each
layout D x T (rank 0's tile: the first of D latitude bands, the first of T longitude pieces, as the trainer
splits them), rollout K and repeat, one batch of random items is read both ways in turn (so load from other
processes hits both alike); medians in ms and their ratio. --grid025 N also writes a synthetic 0.25 deg store
of N time steps (bench/io.py's: 26 channels, 108 MB per step) in a temporary folder and measures it too,
where each read is larger and the per-read overhead counts for less. One process, --threads threads.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time

import numpy as np
import torch

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
sys.path.insert(0, os.path.join(ROOT, "bench"))

from jigsaw_ds.data.dataset import PairDataset  # noqa: E402
from jigsaw_ds.data.store import WeatherStore  # noqa: E402
from jigsaw_ds.parallel.partition import TokenPartition  # noqa: E402

PATCH = 4


def measure(store: WeatherStore, layout: tuple[int, int], rollout: int, batch: int, repeats: int,
            seed: int = 0) -> dict:
    """Median ms of read_batch for rank 0's tile of `layout`, the same random items unshifted and shifted."""
    part = TokenPartition(store.n_lat, store.n_lon, PATCH, *layout)
    lat, lon = part.lat_slice(0), part.lon_slice(0)
    ds = PairDataset(store, store.pair_starts(rollout), 1, lat, lon, True, rollout=rollout)
    rng = np.random.default_rng(seed)
    times = {"plain": [], "rolled": []}
    for _ in range(repeats + 1):  # the first read of each opens files: not counted
        items = rng.integers(0, len(ds.starts), batch).tolist()
        shifts = rng.integers(0, store.n_lon, batch).tolist()
        for name, arg in (("plain", None), ("rolled", shifts)):
            t0 = time.perf_counter()
            ds.read_batch(items, arg)
            times[name].append(time.perf_counter() - t0)
    ms = {name: 1000 * float(np.median(t[1:])) for name, t in times.items()}
    return {"grid": [store.n_lat, store.n_lon], "channels": len(store.channels), "layout": list(layout),
            "tile": [lat.stop - lat.start, lon.stop - lon.start], "rollout": rollout, "batch": batch,
            "plain_ms": round(ms["plain"], 2), "rolled_ms": round(ms["rolled"], 2),
            "ratio": round(ms["rolled"] / ms["plain"], 2)}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--store", default=os.path.join(ROOT, "runs", "skill", "swe65_144x40.zarr"),
                    help="a `jigsaw-data swe` store ('' to skip)")
    ap.add_argument("--grid025", type=int, default=0, help="also a synthetic 0.25 deg store of this many steps")
    ap.add_argument("--layouts", nargs="+", default=["1x1", "2x2"], help="domain x tensor")
    ap.add_argument("--rollout", nargs="+", type=int, default=[1, 8])
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--batch025", type=int, default=2, help="batch on the 0.25 deg store")
    ap.add_argument("--repeats", type=int, default=30)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--json", default=os.path.join(ROOT, "bench", "results", "rolled_read.json"))
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    layouts = [tuple(int(v) for v in s.lower().split("x")) for s in args.layouts]
    rows = []

    def run(store, batch, rollouts):
        for layout in layouts:
            for k in rollouts:
                rows.append(measure(store, layout, k, batch, args.repeats))
                r = rows[-1]
                print(f"{r['grid'][0]}x{r['grid'][1]} x{r['channels']:2d}  layout {layout[0]}x{layout[1]}  tile "
                      f"{r['tile'][0]}x{r['tile'][1]}  K={k}  B={batch}:  plain {r['plain_ms']:8.2f} ms  rolled "
                      f"{r['rolled_ms']:8.2f} ms  ratio {r['ratio']:.2f}", flush=True)

    if args.store:
        if not os.path.exists(args.store):
            raise SystemExit(f"--store {args.store} does not exist (bench/skill_scaling.py's docstring says how it "
                             f"is made; --store '' skips it)")
        run(WeatherStore(args.store, ["geopotential", "u_component_of_wind", "v_component_of_wind"], [], [500]),
            args.batch, args.rollout)
    if args.grid025:
        import importlib.util  # bench/io.py by path: `import io` is the standard library's

        spec = importlib.util.spec_from_file_location("bench_io", os.path.join(ROOT, "bench", "io.py"))
        bench_io = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(bench_io)
        with tempfile.TemporaryDirectory() as tmp:
            path = os.path.join(tmp, "era5_025.zarr")
            bench_io.make_store(path, "blosc-lz4", args.grid025)
            store = WeatherStore(path, bench_io.UPPER, bench_io.SURFACE, bench_io.LEVELS)
            run(store, args.batch025, [k for k in args.rollout if k + 1 <= args.grid025])
    os.makedirs(os.path.dirname(args.json), exist_ok=True)
    with open(args.json, "w") as f:
        command = ["python bench/rolled_read.py", *(argv if argv is not None else sys.argv[1:])]
        json.dump({"bench": "rolled_read", "command": " ".join(command),
                   "threads": args.threads, "repeats": args.repeats, "rows": rows}, f, indent=1)
    print(f"wrote {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

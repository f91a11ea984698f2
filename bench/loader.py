"""The input pipeline end to end at 0.25 deg with the paper's 69 ERA5 channels: the trainer's item path against
the reader, the format's decode floor and memcpy; the loader feeding a consumer; threads against processes.

    python bench/loader.py [--store PATH] [--times 6] [--ranks 1 2 4 8] [--threads 1 2] [--repeats 2]
                           [--json bench/results/loader.json]

One process (plus a child for the peak-RSS figure, and the worker processes it measures). The store: 721 x 1440,
5 upper-air variables x 13 levels + 4 surface variables (69 channels, 287 MB per time step as float32), written
with prepare's defaults (writer.write_store: inner chunks of one patch row x all levels x whole rows, one shard
per variable and time step, blosc-lz4 + crc32c); made once at --store if missing. For each thread count N
(every thread of the process bound to the first N cores, tensorstore's read_threads = N) and each M, rank 0's
latitude band of a domain split over M ranks (TokenPartition, as the trainer cuts it), over every pair (t, t + 1):

  item       PairDataset.read_batch of one item into a ring buffer: what the trainer's Loader does per step
             on the CPU (state + target decoded straight into the batch, normalised, coordinates copied)
  item_raw   the same without normalising: the host's part on CUDA (the Loader normalises on the GPU)
  fresh      the same into freshly allocated tensors (what an item cost before the ring: page faults)
  read_into  WeatherStore.read_into of the same two time steps into one array, normalised; read_raw: not
  floor      the format's own work for the same chunks (bench/io.py's Floor: pread, crc32c, blosc decode, copy)
  memcpy     a copy of the decoded bytes

Rates are decoded float32 bytes (state + target) over the total time of all reads (mean; p95 and max of the
per-item times beside it). Then, at M = 1 and M = 4:

  loader     the trainer's Loader with no consumer work: items / total time, threads (N reading threads)
             against processes (N DataLoader workers, one decode thread each), both free to use every core
  consumer   the Loader on N cores feeding a consumer that spends 1.1x that loader's own per-step time per
             step, standing for a GPU step (it holds no core: sleep; and with N = 1, a matmul bound to the other
             core): the mean data wait as a share of the total time, with p95 and max
  rss        a child process running the Loader for 8 steps at M = 1: its peak RSS against the ring's bytes

The page cache is warm (the store was just written or read): this measures decode and copies, not the disk.
"""
from __future__ import annotations

import argparse
import importlib.util
import json
import os
import subprocess
import sys
import threading
import time

import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from jigsaw_ds.perf.timing import spread  # noqa: E402

N_LAT, N_LON, PATCH = 721, 1440, 4
UPPER = ["geopotential", "temperature", "u_component_of_wind", "v_component_of_wind", "specific_humidity"]
SURFACE = ["2m_temperature", "mean_sea_level_pressure", "10m_u_component_of_wind", "10m_v_component_of_wind"]
LEVELS = [50, 100, 150, 200, 250, 300, 400, 500, 600, 700, 850, 925, 1000]
CORES = sorted(os.sched_getaffinity(0))


def bench_io():
    """bench/io.py by path (`import io` is the standard library's): its Floor and use_cores."""
    spec = importlib.util.spec_from_file_location("bench_io", os.path.join(ROOT, "bench", "io.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def make_store(path: str, n_times: int) -> float:
    """The 69-channel store (synth's waves; the extra variables are synth fields of another seed)."""
    from jigsaw_ds.data.synth import synth_dataset
    from jigsaw_ds.data.writer import write_store

    t0 = time.perf_counter()
    a = synth_dataset(N_LAT, N_LON, n_times, seed=0, levels=LEVELS)
    b = synth_dataset(N_LAT, N_LON, n_times, seed=1, levels=LEVELS)
    ds = a[UPPER[:4] + SURFACE[:2] + ["land_sea_mask"]]
    ds["specific_humidity"] = b["temperature"]
    ds["10m_u_component_of_wind"] = b["2m_temperature"]
    ds["10m_v_component_of_wind"] = b["mean_sea_level_pressure"]
    write_store(ds, path, lat_chunk=PATCH)  # prepare's chunking and codec (its defaults)
    return time.perf_counter() - t0


def stats(times: list, nbytes: int) -> dict:
    """Rate = bytes of all reads / their total time; the per-read times' mean, p95 and max beside it."""
    t = spread(times)
    return {"GBps": nbytes * t["n"] / t["total"] / 1e9, "mean_ms": 1e3 * t["mean"], "p95_ms": 1e3 * t["p95"],
            "max_ms": 1e3 * t["max"]}


def open_dataset(path: str, m: int, threads: int):
    from jigsaw_ds.data.dataset import PairDataset
    from jigsaw_ds.data.store import WeatherStore
    from jigsaw_ds.parallel.partition import TokenPartition

    store = WeatherStore(path, UPPER, SURFACE, [], read_threads=threads)
    lat = TokenPartition(N_LAT, N_LON, PATCH, domain=m).lat_slice(0)
    return PairDataset(store, store.pair_starts(1), 1, lat, slice(0, N_LON), coord_feats=True)


def bench_reads(path: str, io, m: int, threads: int, repeats: int) -> dict:
    """item, fresh, read_into, floor and memcpy for rank 0's band of an M-way split."""
    from concurrent.futures import ThreadPoolExecutor

    dataset = open_dataset(path, m, threads)
    store, lat = dataset.store, dataset.lat
    h = lat.stop - lat.start
    ring = dataset.empty_batch(1, touch=True)
    pair = np.empty((2, len(store.channels), h, N_LON), np.float32)
    check = np.empty((1, len(store.channels), h, N_LON), np.float32)
    floor = io.Floor(path, UPPER + SURFACE)
    items = list(range(len(dataset)))
    with ThreadPoolExecutor(threads) as pool:
        runs = {
            "item": lambda i: dataset.read_batch([i], out=ring),
            "item_raw": lambda i: dataset.read_batch([i], out=ring, normalise=False),
            "fresh": lambda i: dataset.read_batch([i]),
            "read_into": lambda i: store.read_into(pair, [dataset.starts[i], dataset.starts[i] + 1], lat,
                                                   slice(0, N_LON)),
            "read_raw": lambda i: store.read_into(pair, [dataset.starts[i], dataset.starts[i] + 1], lat,
                                                  slice(0, N_LON), normalise=False),
            "floor": lambda i: [floor.read(check, int(dataset.starts[i]) + k, lat, pool, threads) for k in (0, 1)],
            "memcpy": lambda i: np.copyto(pair[1], pair[0]) or np.copyto(pair[0], pair[1]),
        }
        for fn in runs.values():  # metadata, shard indexes, first touch of the buffers
            fn(items[0])
        store.read_into(check, [0], lat, slice(0, N_LON), normalise=False)
        raw = check.copy()
        floor.read(check, 0, lat, pool, threads)
        assert np.array_equal(raw, check), "floor and reader disagree"
        times = {k: [] for k in runs}
        for _ in range(repeats):
            for i in items:
                for kind, fn in runs.items():  # interleaved: a load change hits every kind alike
                    t0 = time.perf_counter()
                    fn(i)
                    times[kind].append(time.perf_counter() - t0)
    row = {"M": m, "threads": threads, "rows": h}
    for kind, t in times.items():
        row[kind] = stats(t, pair.nbytes)
    row["item_vs_read_into"] = row["item"]["GBps"] / row["read_into"]["GBps"]
    row["read_into_vs_floor"] = row["read_into"]["GBps"] / row["floor"]["GBps"]
    row["read_raw_vs_floor"] = row["read_raw"]["GBps"] / row["floor"]["GBps"]
    return row


def consume(dataset, steps: int, workers: int, work=None) -> dict:
    """The trainer's Loader over `steps` steps of one item each; work(): the consumer's step. Returns the
    steps' rate and the data wait's share of the total time, mean, p95, max (the first step excluded: it
    holds the loader's start, workers' included)."""
    import torch

    from jigsaw_ds.data.dataset import Loader, ReplicaBatches

    sampler = ReplicaBatches(len(dataset), 1, 0, 1, seed=0, steps=steps + 1)
    with Loader(dataset, sampler, torch.device("cpu"), prefetch=2, workers=workers) as loader:
        next(loader)  # the start: the consumer's first step, untimed, while the loader reads ahead
        if work:
            work()
        waits, t_start = [], time.perf_counter()
        for _ in range(steps):
            t0 = time.perf_counter()
            next(loader)
            waits.append(time.perf_counter() - t0)
            if work:
                work()
        total = time.perf_counter() - t_start
    w = spread(waits)
    return {"steps_per_s": steps / total, "step_ms": 1e3 * total / steps, "data_wait_frac": w["total"] / total,
            "data_wait_mean_ms": 1e3 * w["mean"], "data_wait_p95_ms": 1e3 * w["p95"], "data_wait_max_ms": 1e3 * w["max"]}


def matmul_work(seconds: float, core: int):
    """A consumer step of about `seconds` of float32 matmuls on one thread, run on `core` (not the loader's)."""
    import torch

    a = torch.randn(512, 512)
    t0 = time.perf_counter()
    for _ in range(20):
        a @ a
    per = (time.perf_counter() - t0) / 20
    reps = max(1, round(seconds / per))

    def work():
        os.sched_setaffinity(threading.get_native_id(), [core])
        for _ in range(reps):
            a @ a
    return work


def bench_loader(path: str, io, m: int, threads: int, steps: int) -> dict:
    """Threads against processes with no consumer work; then the thread loader feeding a consumer."""
    # threads against processes on the whole machine: worker processes cannot be bound to N cores from here
    # (they start from a forkserver started with every core), so neither side is
    io.use_cores(len(CORES))
    dataset = open_dataset(path, m, threads)
    row = {"M": m, "threads": threads, "threads_loader": consume(dataset, steps, 0)}
    row["processes_loader"] = consume(open_dataset(path, m, 1), steps, threads)  # one decode thread per worker
    row["threads_vs_processes"] = row["threads_loader"]["steps_per_s"] / row["processes_loader"]["steps_per_s"]
    # the consumer runs: the loader on N cores, its step 1.1x the loader's own per-step time there
    io.use_cores(threads)
    dataset = open_dataset(path, m, threads)
    row["loader_on_n_cores"] = consume(dataset, steps, 0)
    step_s = 1.1 / row["loader_on_n_cores"]["steps_per_s"]
    row["consumer_step_ms"] = 1e3 * step_s
    row["consumer_sleep"] = consume(dataset, steps, 0, lambda: time.sleep(step_s))
    if threads < len(CORES):
        import torch

        torch.set_num_threads(1)
        row["consumer_matmul"] = consume(dataset, steps, 0, matmul_work(step_s, CORES[threads]))
        io.use_cores(threads)
    return row


def peak_rss() -> int:
    """This process's peak resident set (VmHWM; getrusage's ru_maxrss would carry the parent's over exec)."""
    with open("/proc/self/status") as f:
        return 1024 * int(next(line for line in f if line.startswith("VmHWM")).split()[1])


def rss_child(path: str, threads: int, steps: int) -> None:
    """--rss-child: run the Loader at M = 1 and print the peak RSS before and after, and the ring's bytes."""
    dataset = open_dataset(path, 1, threads)
    before = peak_rss()
    x, y = dataset.empty_batch(1)
    ring = 3 * (x.nbytes + y.nbytes)  # prefetch 2 + the batch in use
    del x, y
    consume(dataset, steps, 0)
    after = peak_rss()
    print(json.dumps({"rss_before_loader_bytes": before, "peak_rss_bytes": after, "ring_bytes": ring,
                      "batch_bytes": ring // 3}))


def table(res: dict) -> str:
    lines = ["| threads | M | rows | item GB/s (mean, p95 / max ms) | item raw | fresh | read_into | read raw | floor | "
             "memcpy | item / read_into | read_into / floor | read raw / floor |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in res["reads"]:
        lines.append(f"| {r['threads']} | {r['M']} | {r['rows']} | {r['item']['GBps']:.2f} ({r['item']['mean_ms']:.0f}, "
                     f"{r['item']['p95_ms']:.0f} / {r['item']['max_ms']:.0f}) | {r['item_raw']['GBps']:.2f} | "
                     f"{r['fresh']['GBps']:.2f} | {r['read_into']['GBps']:.2f} | {r['read_raw']['GBps']:.2f} | "
                     f"{r['floor']['GBps']:.2f} | {r['memcpy']['GBps']:.1f} | {r['item_vs_read_into']:.2f} | "
                     f"{r['read_into_vs_floor']:.2f} | {r['read_raw_vs_floor']:.2f} |")
    lines += ["", "| threads | M | loader steps/s: threads, processes (ratio) | consumer step ms | data wait "
              "(sleep consumer): frac, mean / p95 / max ms | data wait (matmul consumer) |", "|---|---|---|---|---|---|"]
    for r in res["loaders"]:
        t, p, c = r["threads_loader"], r["processes_loader"], r["consumer_sleep"]
        mm = r.get("consumer_matmul")
        lines.append(f"| {r['threads']} | {r['M']} | {t['steps_per_s']:.2f}, {p['steps_per_s']:.2f} "
                     f"({r['threads_vs_processes']:.2f}) | {r['consumer_step_ms']:.0f} | {c['data_wait_frac']:.1%}, "
                     f"{c['data_wait_mean_ms']:.1f} / {c['data_wait_p95_ms']:.1f} / {c['data_wait_max_ms']:.1f} | "
                     + (f"{mm['data_wait_frac']:.1%}, {mm['data_wait_mean_ms']:.1f} / {mm['data_wait_p95_ms']:.1f} / "
                        f"{mm['data_wait_max_ms']:.1f}" if mm else "") + " |")
    return "\n".join(lines)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--store", default="/tmp/jigsaw_bench_loader_69ch.zarr", help="made here if missing")
    ap.add_argument("--times", type=int, default=6, help="time steps of a store made here")
    ap.add_argument("--ranks", type=int, nargs="+", default=[1, 2, 4, 8])
    ap.add_argument("--threads", type=int, nargs="+", default=[1, 2])
    ap.add_argument("--loader-ranks", type=int, nargs="+", default=[1, 4])
    ap.add_argument("--repeats", type=int, default=2, help="passes over the store's pairs per read kind")
    ap.add_argument("--steps", type=int, default=12, help="consumer steps per loader measurement")
    ap.add_argument("--rss-child", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--json", default=os.path.join(ROOT, "bench", "results", "loader.json"))
    args = ap.parse_args(argv)
    io = bench_io()
    if args.rss_child:
        io.use_cores(1)
        rss_child(args.store, 1, 8)
        return 0
    if max(args.threads) > len(CORES):
        ap.error(f"--threads {max(args.threads)}: this process may use {len(CORES)} cores")
    res = {"bench": "loader", "command": " ".join(["python bench/loader.py", *(argv or sys.argv[1:])]),
           "date": time.strftime("%Y-%m-%d"), "cores": len(CORES), "grid": [N_LAT, N_LON], "patch": PATCH,
           "channels": len(UPPER) * len(LEVELS) + len(SURFACE), "load_average_start": os.getloadavg()}
    if not os.path.exists(args.store):
        res["store_write_s"] = make_store(args.store, args.times)
    res["reads"], res["loaders"] = [], []
    for n in sorted(args.threads):
        io.use_cores(n)
        for m in args.ranks:
            res["reads"].append(bench_reads(args.store, io, m, n, args.repeats))
            print(table({"reads": res["reads"][-1:], "loaders": []}).splitlines()[2], flush=True)
        for m in args.loader_ranks:
            res["loaders"].append(bench_loader(args.store, io, m, n, args.steps))
            print(table({"reads": [], "loaders": res["loaders"][-1:]}).splitlines()[-1], flush=True)
    io.use_cores(len(CORES))
    child = subprocess.run([sys.executable, os.path.abspath(__file__), "--store", args.store, "--rss-child"],
                           capture_output=True, text=True, check=True)
    res["rss"] = json.loads(child.stdout.strip().splitlines()[-1])
    one = {r["threads"]: r for r in res["reads"] if r["M"] == 1}
    if 1 in one and 2 in one:
        res["two_threads_vs_one"] = one[2]["read_into"]["GBps"] / one[1]["read_into"]["GBps"]
        res["two_threads_vs_one_item"] = one[2]["item"]["GBps"] / one[1]["item"]["GBps"]
    # per-rank item time x M over the M = 1 time: 1 = the I/O side of weak scaling is ideal
    res["item_time_x_M_vs_M1"] = {f"{r['threads']}t_M{r['M']}": r["item"]["mean_ms"] * r["M"] / one[r["threads"]]["item"]["mean_ms"]
                                  for r in res["reads"] if r["threads"] in one}
    res["load_average_end"] = os.getloadavg()
    print("\n" + table(res))
    rss = res["rss"]
    print(f"\npeak RSS of the loader at M = 1: {rss['peak_rss_bytes'] / 2**30:.2f} GiB (before it "
          f"{rss['rss_before_loader_bytes'] / 2**30:.2f} GiB; ring {rss['ring_bytes'] / 2**30:.2f} GiB = 3 batches)")
    for key in ("two_threads_vs_one", "two_threads_vs_one_item"):
        if key in res:
            print(f"{key}: {res[key]:.2f}")
    print("per-rank item time x M / M=1 time: " + ", ".join(f"{k} {v:.2f}" for k, v in res["item_time_x_M_vs_M1"].items()))
    os.makedirs(os.path.dirname(args.json), exist_ok=True)
    with open(args.json, "w") as f:
        json.dump(res, f, indent=1)
    print(f"wrote {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""A rank's tile of a 0.25 deg sample: the reader against its format's decode floor and memcpy, for M = 1, 2,
4, 8 ranks of one replica, on 1 and 2 cores, for each store format the writer can make.

    python bench/io.py [--times 3] [--ranks 1 2 4 8] [--threads 1 2] [--repeats 3]
                       [--formats blosc-lz4 zstd none zstd-unsharded blosc-lz4-nocrc] [--json bench/results/io.json]

One process. For each format it writes a synthetic store of 0.25 deg shape (721 x 1440; geopotential and
temperature at 12 levels, 2 m temperature, mean sea level pressure: 26 channels, 108 MB per time step) with
writer.write_store and prepare's chunking (inner chunks of one patch row x all levels x whole rows), then for
each M splits the 181 token rows over M domain ranks as the trainer does (TokenPartition) and reads each
rank's band of every time step three ways, into one preallocated float32 array:

  reader   WeatherStore.read_into (tensorstore), physical values; `normalised`: the same with the in-place
           normalisation the trainer gets
  floor    the same chunks of the same format, with nothing but the format's own work: the chunk bytes read
           from the files (os.pread; shard index first), the crc32c checked (`pip install crc32c`), the codec's
           decode (numcodecs) into one chunk buffer, its rows copied into the array
  memcpy   a copy of the same decoded bytes from one array into another

and counts the bytes the reader read (ReadCounter, after a first read that fetched metadata and shard
indexes). `zstd-unsharded` is the layout written before (one file per chunk, zstd, no checksum);
`blosc-lz4-nocrc` the default without its per-chunk crc32c (write_store(checksum=False)).

Threads: the process runs on the first N cores (all its threads, tensorstore's included, are bound to them),
the reader gets read_threads = N and the floor a pool of N threads; N = 1 is one core, however many threads
tensorstore starts. The M ranks are emulated one after the other: MB/s are decoded bytes of all M tiles over
the time of all M reads, which is what one rank's share of a sample costs. Time = the best of --repeats reads
of each time step (the machine may be shared), summed over time steps; wall time, and CPU time of the
process (all threads), which does not count waiting for a core that another job holds. The page cache is
warm (the store was just written): this measures decode and copies, not the disk.
"""
import argparse
import json
import os
import shutil
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor

import numpy as np

N_LAT, N_LON, PATCH = 721, 1440, 4
UPPER, SURFACE = ["geopotential", "temperature"], ["2m_temperature", "mean_sea_level_pressure"]
LEVELS = [50, 100, 150, 200, 250, 300, 400, 500, 600, 700, 850, 925]
FORMATS = ["blosc-lz4", "zstd", "none", "zstd-unsharded", "blosc-lz4-nocrc"]
CORES = sorted(os.sched_getaffinity(0))


def use_cores(n: int) -> None:
    """Bind every thread of this process (tensorstore's pool included) to the first n cores."""
    for tid in os.listdir("/proc/self/task"):
        try:
            os.sched_setaffinity(int(tid), CORES[:n])
        except OSError:  # a thread that has just exited
            pass


def disk_bytes(path: str) -> int:
    return sum(os.path.getsize(os.path.join(root, f)) for root, _, files in os.walk(path) for f in files)


def make_store(path: str, fmt: str, n_times: int) -> dict:
    from jigsaw_ds.data.synth import synth_dataset
    from jigsaw_ds.data.writer import write_store

    t0 = time.perf_counter()
    ds = synth_dataset(N_LAT, N_LON, n_times, seed=0, levels=LEVELS)[UPPER + SURFACE]
    if fmt == "zstd-unsharded":  # the layout before sharding: zarr's default codec, a file per chunk
        write_store(ds, path, lat_chunk=PATCH, time_block=1)
        old = path + ".old"
        src = __import__("xarray").open_zarr(path)
        src.to_zarr(old, zarr_format=3, encoding={v: {"chunks": src[v].encoding["chunks"]} for v in src.data_vars})
        shutil.rmtree(path)
        os.replace(old, path)
    else:
        codec = fmt.removesuffix("-nocrc")
        write_store(ds, path, lat_chunk=PATCH, time_block=1, codec=codec, checksum=codec == fmt)
    data = sum(disk_bytes(os.path.join(path, v)) for v in UPPER + SURFACE)
    return {"write_seconds": time.perf_counter() - t0, "disk_MB_per_step": data / n_times / 1e6,
            "raw_MB_per_step": ds.nbytes / n_times / 1e6}


class Floor:
    """The format's own work for a tile, with the codecs' own libraries: no tensorstore, no zarr."""

    def __init__(self, path: str, variables=tuple(UPPER + SURFACE)):
        import numcodecs

        self.path, self.vars = path, {}
        for var in variables:
            with open(os.path.join(path, var, "zarr.json")) as f:
                meta = json.load(f)
            sharded = meta["codecs"][0]["name"] == "sharding_indexed"
            conf = meta["codecs"][0]["configuration"] if sharded else None
            inner = conf["chunk_shape"] if sharded else meta["chunk_grid"]["configuration"]["chunk_shape"]
            chain = [c["name"] for c in (conf["codecs"] if sharded else meta["codecs"])]
            assert chain[0] == "bytes" and inner[-1] == N_LON, chain  # whole rows: chunk b is latitude band b
            crc = chain[-1] == "crc32c"
            compressor = {"blosc": numcodecs.Blosc(), "zstd": numcodecs.Zstd()}.get(chain[1]) \
                if len(chain) > 1 + crc else None
            n_inner = -(-N_LAT // inner[-2])
            levels = meta["shape"][1] if len(meta["shape"]) == 4 else 1  # (time, level, lat, lon) or (time, lat, lon)
            self.vars[var] = dict(sharded=sharded, inner=inner, crc=crc, compressor=compressor, n_inner=n_inner,
                                  levels=levels)

    def _chunk_file(self, var: str, t: int, band: int) -> str:
        info = self.vars[var]
        coords = [t] + [0] * (len(info["inner"]) - 1)
        if not info["sharded"]:
            coords[-2] = band
        return os.path.join(self.path, var, "c", *map(str, coords))

    def read_bands(self, var: str, t: int, bands: range, out: np.ndarray, row0: int, rows: range) -> None:
        """Bands `bands` of var at time t, rows `rows` of them into out[levels, rows - row0, :]."""
        import crc32c  # hardware crc32c (SSE4.2), as fast as tensorstore's; google_crc32c is 3x slower here

        info = self.vars[var]
        inner = info["inner"]
        scratch = np.empty((int(np.prod(inner[:-2])), inner[-2], N_LON), np.float32)  # (levels, rows, N_LON)
        fd = os.open(self._chunk_file(var, t, bands.start), os.O_RDONLY) if info["sharded"] else None
        try:
            if fd is not None:
                size = os.fstat(fd).st_size
                raw = os.pread(fd, 16 * info["n_inner"] + 4, size - 16 * info["n_inner"] - 4)
                if crc32c.crc32c(memoryview(raw)[:-4]) != int.from_bytes(raw[-4:], "little"):
                    raise ValueError(f"{var} t={t}: shard index checksum")
                index = np.frombuffer(raw[:-4], np.uint64).reshape(-1, 2)
            for b in bands:
                if fd is not None:
                    offset, nbytes = index[b]
                    buf = os.pread(fd, int(nbytes), int(offset))
                else:
                    with open(self._chunk_file(var, t, b), "rb") as f:
                        buf = f.read()
                payload = memoryview(buf)
                if info["crc"]:
                    payload = payload[:-4]
                    if crc32c.crc32c(payload) != int.from_bytes(buf[-4:], "little"):
                        raise ValueError(f"{var} t={t} band {b}: checksum")
                if info["compressor"] is None:
                    chunk = np.frombuffer(payload, np.float32).reshape(scratch.shape)
                else:
                    info["compressor"].decode(payload, out=scratch)
                    chunk = scratch
                lo, hi = max(rows.start, b * inner[-2]), min(rows.stop, (b + 1) * inner[-2])
                out[:, lo - row0:hi - row0] = chunk[:, lo - b * inner[-2]:hi - b * inner[-2]]
        finally:
            if fd is not None:
                os.close(fd)

    def read(self, out: np.ndarray, t: int, lat: slice, pool: ThreadPoolExecutor, n_threads: int) -> None:
        """out [1, C, h, N_LON]: every variable's bands (all its levels), split into n_threads pieces each."""
        rows, jobs, c = range(lat.start, lat.stop), [], 0
        for var, info in self.vars.items():
            n_lev = info["levels"]
            band_h = self.vars[var]["inner"][-2]
            bands = range(rows.start // band_h, -(-rows.stop // band_h))
            for k in range(n_threads):
                part = bands[k * len(bands) // n_threads:(k + 1) * len(bands) // n_threads]
                if len(part):
                    jobs.append((var, t, part, out[0, c:c + n_lev], lat.start, rows))
            c += n_lev
        if n_threads == 1:
            for job in jobs:
                self.read_bands(*job)
        else:
            for f in [pool.submit(self.read_bands, *job) for job in jobs]:
                f.result()


def best_total(fn, times: list, repeats: int) -> tuple[float, float]:
    """Wall and CPU seconds (this process, all its threads): sums over time steps of the best of `repeats`
    runs of fn(t), each taken separately. On a shared machine the CPU time is the steadier measure of the
    work: it does not count time spent waiting for a core."""
    wall, cpu = {t: float("inf") for t in times}, {t: float("inf") for t in times}
    for _ in range(repeats):
        for t in times:
            t0, c0 = time.perf_counter(), time.process_time()
            fn(t)
            wall[t], cpu[t] = min(wall[t], time.perf_counter() - t0), min(cpu[t], time.process_time() - c0)
    return sum(wall.values()), sum(cpu.values())


def bench_format(path: str, fmt: str, ranks: list, threads: int, times: list, repeats: int) -> list:
    from jigsaw_ds.data.counting import ReadCounter
    from jigsaw_ds.data.store import WeatherStore
    from jigsaw_ds.parallel.partition import TokenPartition

    use_cores(threads)
    store = WeatherStore(path, UPPER, SURFACE, LEVELS, read_threads=threads)
    floor, full = Floor(path), slice(0, N_LON)
    rows = []
    with ThreadPoolExecutor(threads) as pool:
        for m in ranks:
            part = TokenPartition(N_LAT, N_LON, PATCH, domain=m)
            kinds = ("reader", "normalised", "floor", "memcpy")
            wall, cpu = dict.fromkeys(kinds, 0.0), dict.fromkeys(kinds, 0.0)
            decoded, rank_bytes, rank_ms = 0, [], []
            for d in range(m):
                lat = part.lat_slice(d)
                out = np.empty((1, len(store.channels), lat.stop - lat.start, N_LON), np.float32)
                check = np.empty_like(out)
                store.read_into(out, [times[0]], lat, full, normalise=False)  # metadata, shard indexes
                floor.read(check, times[0], lat, pool, threads)
                assert np.array_equal(out, check), f"{fmt}: floor and reader disagree"
                counter = ReadCounter()
                store.read_into(out, [times[-1]], lat, full, normalise=False)
                rank_bytes.append(counter.bytes)
                runs = {"reader": lambda t: store.read_into(out, [t], lat, full, normalise=False),
                        "normalised": lambda t: store.read_into(out, [t], lat, full),
                        "floor": lambda t: floor.read(check, t, lat, pool, threads),
                        "memcpy": lambda t: np.copyto(check, out)}
                for kind, fn in runs.items():
                    w, c = best_total(fn, times, repeats)
                    wall[kind] += w
                    cpu[kind] += c
                rank_ms.append(best_total(runs["reader"], times, 1)[0] / len(times) * 1e3)
                decoded += out.nbytes * len(times)
            row = {"M": m, "threads": threads, "MB_per_rank_max": max(rank_bytes) / 1e6, "rank_ms_max": max(rank_ms),
                   "rank_bytes": rank_bytes}
            row.update({f"{k}_MBps": decoded / v / 1e6 for k, v in wall.items()})
            row.update({f"{k}_MB_per_cpu_s": decoded / v / 1e6 for k, v in cpu.items()})
            row["reader_vs_floor"] = row["reader_MBps"] / row["floor_MBps"]
            row["reader_vs_floor_cpu"] = row["reader_MB_per_cpu_s"] / row["floor_MB_per_cpu_s"]
            row["floor_vs_memcpy"] = row["floor_MBps"] / row["memcpy_MBps"]
            rows.append(row)
    sample = sum(rows[0]["rank_bytes"]) / 1e6  # all tiles of one sample (M ranks together read it once)
    for row in rows:
        row["fraction_per_rank_max"] = row["MB_per_rank_max"] / sample
    return rows


def table(results: dict) -> str:
    lines = ["| format | disk MB/step | cores | M | MB read/rank | of sample (1/M) | reader MB/s | normalised MB/s | "
             "floor MB/s | memcpy MB/s | reader/floor | floor/memcpy | reader, floor MB per CPU s | reader/floor (CPU) |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for fmt, res in results["formats"].items():
        for r in res["rows"]:
            lines.append(f"| {fmt} | {res['disk_MB_per_step']:.1f} | {r['threads']} | {r['M']} | "
                         f"{r['MB_per_rank_max']:.2f} | {r['fraction_per_rank_max']:.3f} ({1 / r['M']:.3f}) | "
                         f"{r['reader_MBps']:.0f} | {r['normalised_MBps']:.0f} | {r['floor_MBps']:.0f} | "
                         f"{r['memcpy_MBps']:.0f} | {r['reader_vs_floor']:.2f} | {r['floor_vs_memcpy']:.2f} | "
                         f"{r['reader_MB_per_cpu_s']:.0f}, {r['floor_MB_per_cpu_s']:.0f} | "
                         f"{r['reader_vs_floor_cpu']:.2f} |")
    return "\n".join(lines)


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--times", type=int, default=3, help="time steps in the store (each read as one sample)")
    ap.add_argument("--ranks", type=int, nargs="+", default=[1, 2, 4, 8])
    ap.add_argument("--threads", type=int, nargs="+", default=[1, 2])
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--formats", nargs="+", default=FORMATS, choices=FORMATS)
    ap.add_argument("--dir", default=None, help="where to write the stores (default: a temporary folder)")
    ap.add_argument("--json", default=os.path.join(os.path.dirname(os.path.abspath(__file__)), "results", "io.json"))
    args = ap.parse_args()
    if max(args.threads) > len(CORES):
        ap.error(f"--threads {max(args.threads)}: this process may use {len(CORES)} cores")
    use_cores(1)  # before any library starts a thread pool
    workdir = args.dir or tempfile.mkdtemp(prefix="jigsaw-bench-io-")
    results = {"grid": [N_LAT, N_LON], "patch": PATCH, "channels": len(UPPER) * len(LEVELS) + len(SURFACE),
               "times": args.times, "repeats": args.repeats, "load_average_start": os.getloadavg(), "formats": {}}
    try:
        for fmt in args.formats:
            path = os.path.join(workdir, f"io_{fmt}.zarr")
            use_cores(len(CORES))
            info = make_store(path, fmt, args.times)
            info["rows"] = [row for n in sorted(args.threads)
                            for row in bench_format(path, fmt, args.ranks, n, list(range(args.times)), args.repeats)]
            results["formats"][fmt] = info
            print(f"{fmt}: {info['disk_MB_per_step']:.1f} MB on disk per time step "
                  f"({info['raw_MB_per_step']:.1f} MB raw), written in {info['write_seconds']:.1f} s", flush=True)
            shutil.rmtree(path)
    finally:
        if not args.dir:
            shutil.rmtree(workdir, ignore_errors=True)
    results["load_average_end"] = os.getloadavg()
    print("\n" + table(results))
    os.makedirs(os.path.dirname(args.json), exist_ok=True)
    with open(args.json, "w") as f:
        json.dump(results, f, indent=1)
    print(f"\nresults in {args.json}")


if __name__ == "__main__":
    main()

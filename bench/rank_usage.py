"""Run a jigsaw command in this process and record what it cost this process: peak memory and bytes read.

    torchrun --standalone --nproc_per_node 4 bench/rank_usage.py DIR jigsaw-train --config ... [args]
    .venv/bin/python bench/rank_usage.py DIR jigsaw-data synth --grid 1441x2880 ...
    .venv/bin/python bench/rank_usage.py DIR --baseline      # the same, for importing the libraries only

/usr/bin/time cannot tell a launcher's ranks apart, so each process measures itself: at exit it writes
DIR/rank{RANK}.json with its peak resident set (getrusage ru_maxrss, the kernel's high-water mark, of this
process and of the largest child it waited for: a Dask worker, a DataLoader worker) and the bytes and read
calls of tensorstore's file driver (data/counting.py: every chunk and shard index read from a store; the
checkpoint files are read by torch and are not counted). The command is the console script of that name
(setup.py's entry points), called in this process, so the numbers are the command's own.
"""
from __future__ import annotations

import atexit
import json
import os
import resource
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

# what every jigsaw command imports before its first tile: the fixed part of a process's memory
BASELINE_IMPORTS = ("torch", "deepspeed", "megatron.core", "tensorstore", "xarray", "zarr", "jigsaw_ds.train.trainer",
                    "jigsaw_ds.eval.evaluate")


def peak_rss_mb(who: int = resource.RUSAGE_SELF) -> float:
    return resource.getrusage(who).ru_maxrss / 1024  # KiB on Linux


def command(name: str):
    from importlib.metadata import entry_points

    (script,) = entry_points(group="console_scripts", name=name)
    return script.load()


def main() -> int:
    out, name, argv = sys.argv[1], sys.argv[2], sys.argv[3:]
    os.makedirs(out, exist_ok=True)
    from jigsaw_ds.data.counting import ReadCounter

    counter, t0 = ReadCounter(), time.perf_counter()
    rank = int(os.environ.get("RANK", 0))

    def record():
        usage = {"rank": rank, "command": name, "peak_rss_mb": peak_rss_mb(),
                 "children_peak_rss_mb": peak_rss_mb(resource.RUSAGE_CHILDREN), "bytes_read": counter.bytes,
                 "reads": counter.reads, "wall_s": time.perf_counter() - t0}
        with open(os.path.join(out, f"rank{rank}.json"), "w") as f:
            json.dump(usage, f)

    atexit.register(record)  # also after sys.exit from inside the command
    if name == "--baseline":
        import importlib

        for module in BASELINE_IMPORTS:
            importlib.import_module(module)
        return 0
    sys.argv = [name] + argv
    return command(name)(argv)


if __name__ == "__main__":
    sys.exit(main())

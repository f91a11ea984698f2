"""Counting the bytes a rank really reads from a store.

The claim of the sharded reader is about bytes: each of the M ranks of a replica reads 1/M of every sample
and nothing twice. ReadCounter takes the counts from tensorstore's own metrics of its file driver (what
WeatherStore reads with), so tests and bench/io measure that directly instead of trusting the slicing code:

    counter = ReadCounter()
    store.read_raw(...)              # a WeatherStore: the first read also reads metadata and shard indexes
    counter.reset(); store.read_raw(...); counter.bytes

The counts are per process, over every store it reads: a DataLoader worker counts in its own process, so
count with num_workers=0. Shard indexes are cached per process after their first read, chunk data is not.
"""
from __future__ import annotations

FILE_METRICS = "/tensorstore/kvstore/file/"


class ReadCounter:
    """Bytes and read calls of tensorstore's file driver in this process since the last reset()."""

    def __init__(self):
        self.reset()

    @staticmethod
    def _totals() -> tuple[int, int]:
        import tensorstore as ts

        values = {m["name"]: sum(v.get("value", 0) for v in m["values"])
                  for m in ts.experimental_collect_matching_metrics(FILE_METRICS)}
        return values.get(FILE_METRICS + "bytes_read", 0), values.get(FILE_METRICS + "read", 0)

    def reset(self) -> None:
        self._base = self._totals()

    @property
    def bytes(self) -> int:
        return self._totals()[0] - self._base[0]

    @property
    def reads(self) -> int:
        return self._totals()[1] - self._base[1]

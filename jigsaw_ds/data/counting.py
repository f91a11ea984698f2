"""Counting the bytes a rank really reads from a store.

The claim of the sharded reader is about bytes: each of the M ranks of a replica reads 1/M of every sample
and nothing twice. ReadCounter takes the counts from tensorstore's own metrics of its file driver (what
WeatherStore reads with), so tests and bench/io measure that directly instead of trusting the slicing code:

    counter = ReadCounter()
    store.read_raw(...)              # a WeatherStore: the first read also reads metadata and shard indexes
    counter.reset(); store.read_raw(...); counter.bytes

The counts are per process, over every store it reads: a DataLoader worker counts in its own process, so
count with num_workers=0. Shard indexes are cached per process after their first read, chunk data is not.

CountingStore counts what zarr-python (xarray) reads through a zarr Store; the training reader is not
zarr-python, so its bytes are ReadCounter's.
"""
from __future__ import annotations

from zarr.storage import LocalStore, WrapperStore

METADATA_KEYS = ("zarr.json", ".zarray", ".zattrs", ".zgroup", ".zmetadata")
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


class CountingStore(WrapperStore):
    """A read-only zarr store that counts bytes and reads of chunk data and of metadata."""

    def __init__(self, store):
        super().__init__(store)
        self.reset()

    @classmethod
    def local(cls, path: str) -> "CountingStore":
        return cls(LocalStore(path, read_only=True))

    def _with_store(self, store):
        return type(self)(store)

    def reset(self) -> None:
        self.chunk_bytes = self.chunk_reads = self.meta_bytes = 0

    def _count(self, key: str, buf) -> None:
        if buf is None:
            return
        if key.rsplit("/", 1)[-1] in METADATA_KEYS:
            self.meta_bytes += len(buf)
        else:
            self.chunk_bytes += len(buf)
            self.chunk_reads += 1

    async def get(self, key, prototype, byte_range=None):
        buf = await self._store.get(key, prototype, byte_range)
        self._count(key, buf)
        return buf

    async def get_partial_values(self, prototype, key_ranges):
        key_ranges = list(key_ranges)
        bufs = await self._store.get_partial_values(prototype, key_ranges)
        for (key, _), buf in zip(key_ranges, bufs):
            self._count(key, buf)
        return bufs

    async def _get_many(self, requests):
        for key, prototype, byte_range in requests:  # through self.get, so every read is counted
            yield key, await self.get(key, prototype, byte_range)

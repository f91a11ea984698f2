"""Counting the bytes a rank really reads from a zarr store.

The claim of the sharded reader is about bytes: each of the M ranks of a replica reads 1/M of every sample
and nothing twice. CountingStore wraps zarr's LocalStore and adds up what every read returns, so tests and
bench/io measure that directly instead of trusting the slicing code:

    counter = CountingStore.local(path)
    store.read_through(counter)      # a WeatherStore
    counter.reset(); store.read_raw(...); counter.chunk_bytes

Metadata (zarr.json, .zattrs, ...) is counted apart from chunk data. Counts live in the process that reads:
a DataLoader worker reopens the store by path, so count with num_workers=0.
"""
from __future__ import annotations

from zarr.storage import LocalStore, WrapperStore

METADATA_KEYS = ("zarr.json", ".zarray", ".zattrs", ".zgroup", ".zmetadata")


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

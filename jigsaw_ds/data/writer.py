"""Writing a training store: chunks that match rank tiles, statistics into attrs, atomically.

Layout (zarr v3, readable by plain xarray.open_zarr; measured against the alternatives in docs/data.md):
one shard file per variable and time step holding inner chunks of a latitude band (`lat_chunk` rows) x
all levels x `lon_chunk` columns, so that a rank reads whole inner chunks of few files; each inner chunk
compressed with blosc lz4 + byte shuffle (ERA5 float32: ratio 1.7-1.8, decoded at several GB/s on one core)
and checksummed with crc32c, so a flipped bit is an error on read, not a wrong value.

The data is written in blocks of time steps (appended along `time`), so a store larger than memory can be
written from lazily opened sources one block at a time, with a progress bar. The statistics are computed from
each block as it is written (data/stats.py: the stored values, as the codecs are lossless; memory holds one
block, not a channel over all times; the store is not read back), and they are written last:
a store without `attrs['jigsaw_stats']` is refused by WeatherStore, and the whole store only appears under
its final name once complete.
"""
from __future__ import annotations

import os
import shutil
from typing import Callable, Optional, Sequence, Union

import numpy as np
import xarray as xr
import zarr
from zarr.codecs import BloscCodec, Crc32cCodec, ZstdCodec

from ..errors import StoreError
from .stats import StreamingStatistics
from .store import STATS_ATTR, trajectories

BLOCK_BYTES = 256 * 2**20  # data held in memory per written block (default)
# Inner chunk rows when the caller gives none: one token row at the default patch (model.patch = 4), so that
# generated stores (synth, swe) are read by domain ranks as whole chunks too; shards keep the files few.
DEFAULT_LAT_CHUNK = 4
# Compression of each inner chunk (bench/io measures them; docs/data.md); each ends in a crc32c unless the
# writer is told checksum=False (18-29% faster reads with tensorstore, whose crc32c is not hardware-accelerated,
# but a flipped bit then reaches the model: docs/data.md).
CODECS = {
    "blosc-lz4": lambda itemsize: (BloscCodec(cname="lz4", clevel=5, shuffle="shuffle", typesize=itemsize),),
    "zstd": lambda itemsize: (ZstdCodec(level=0),),
    "none": lambda itemsize: (),
}
DEFAULT_CODEC = "blosc-lz4"
# Stored exactly for any whole-second time axis, and the same for every appended block.
TIME_ENCODING = {"units": "seconds since 1970-01-01", "dtype": "int64"}


def chunk_compressors(dtype, codec: str = DEFAULT_CODEC, checksum: bool = True) -> tuple:
    """zarr v3 compressors of one chunk: the codec of CODECS, then a crc32c (checksum)."""
    return CODECS[codec](np.dtype(dtype).itemsize) + ((Crc32cCodec(),) if checksum else ())


def chunk_encoding(ds: xr.Dataset, lat_chunk: int = 0, lon_chunk: int = 0, level_chunk: int = 0,
                   codec: str = DEFAULT_CODEC, checksum: bool = True) -> dict:
    """Inner chunks of one time step, `level_chunk` levels (0: all), latitude bands of `lat_chunk` rows (0:
    DEFAULT_LAT_CHUNK) and longitude tiles of `lon_chunk` columns (0: the whole axis), so a rank's tile is
    read as whole chunks. Every rank
    reads every level it trains on, so chunks of all levels cost no extra bytes and save per-chunk overhead.
    Shards: one per time step (and per `hour`/`dayofyear` of a climatology), all of the rest of the field.
    codec: a key of CODECS; checksum: a crc32c after it on every inner chunk."""
    chunks = {"time": 1, "hour": 1, "dayofyear": 1, "level": level_chunk or ds.sizes.get("level", 1),
              "latitude": lat_chunk or DEFAULT_LAT_CHUNK, "longitude": lon_chunk or ds.sizes["longitude"]}
    encoding = {}
    for name, da in ds.data_vars.items():
        inner = tuple(min(chunks[d], da.sizes[d]) for d in da.dims)
        # a shard is a whole number of inner chunks: the last one may reach past the edge of the array
        shards = tuple(c if d in ("time", "hour", "dayofyear") else -(-da.sizes[d] // c) * c
                       for d, c in zip(da.dims, inner))
        encoding[name] = {"chunks": inner, "shards": shards, "compressors": chunk_compressors(da.dtype, codec, checksum)}
    if "time" in ds.coords:
        encoding["time"] = dict(TIME_ENCODING)
    return encoding


def time_blocks(ds: xr.Dataset, time_block: int = 0) -> list[slice]:
    """Consecutive time slices of at most `time_block` steps (0: about BLOCK_BYTES of data each)."""
    n = ds.sizes["time"]
    if not time_block:
        per_step = sum(da.nbytes for da in ds.data_vars.values() if "time" in da.dims) // max(n, 1)
        time_block = max(1, BLOCK_BYTES // max(per_step, 1))
    return [slice(i, min(i + time_block, n)) for i in range(0, n, time_block)]


def write_store(ds: Union[xr.Dataset, Sequence[xr.Dataset]], out: str, lat_chunk: int = 0, lon_chunk: int = 0,
                level_chunk: int = 0, time_block: int = 0, progress: bool = False,
                check_block: Optional[Callable[[xr.Dataset], None]] = None,
                before_commit: Optional[Callable[[str], None]] = None, codec: str = DEFAULT_CODEC,
                checksum: bool = True) -> str:
    """Write `ds` (or consecutive parts of one time axis) to `out` with statistics; return its path.

    check_block(block) sees each block of time steps loaded in memory before it is written (prepare checks
    values there, without a second read of the sources). before_commit(path) may add to the finished store
    (prepare writes a climatology group) before it is renamed into place. The store is written next to `out`
    under a temporary name and renamed when complete; on any error or interrupt the temporary store is removed,
    so an interrupted write never leaves a store at `out` that looks complete.
    """
    parts = [part.copy() for part in ([ds] if isinstance(ds, xr.Dataset) else ds)]  # encodings change below
    out = os.path.abspath(out)
    check_replaceable(out)
    tmp = out + ".partial"
    shutil.rmtree(tmp, ignore_errors=True)
    try:
        encoding = chunk_encoding(parts[0], lat_chunk, lon_chunk, level_chunk, codec, checksum)
        axis = xr.concat([p.drop_vars(list(p.data_vars)) for p in parts], "time")  # the written time axis' coordinates
        stats = StreamingStatistics(trajectories(axis))
        _write_blocks(parts, tmp, encoding, time_block, progress, check_block, stats)
        group = zarr.open_group(tmp, mode="r+")
        group.attrs[STATS_ATTR] = stats.result(xr.open_zarr(tmp, chunks=None, consolidated=False))
        if before_commit:
            before_commit(tmp)
        zarr.consolidate_metadata(tmp)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    if os.path.exists(out):
        shutil.rmtree(out)
    os.replace(tmp, out)
    return out


def check_replaceable(out: str) -> None:
    """The finished store is renamed over `out`, deleting what was there: so `out` must be new, an empty
    directory or a store this writer wrote (it has statistics in its attrs), never a directory of the user's
    (a typo such as `--out ~/data`) or a file. Raises StoreError naming the path."""
    if not os.path.lexists(out):
        return
    if os.path.islink(out) or not os.path.isdir(out):
        raise StoreError(f"--out {out}: is {'a symbolic link' if os.path.islink(out) else 'a file'}, not a store: "
                         f"choose a new path")
    entries = sorted(os.listdir(out))
    if not entries:
        return
    try:
        ours = STATS_ATTR in zarr.open_group(out, mode="r").attrs
    except Exception:  # not a zarr store at all
        ours = False
    if not ours:
        raise StoreError(f"--out {out}: is a directory that holds something other than a jigsaw store ({len(entries)} "
                         f"entries, e.g. '{entries[0]}'); a store is written only into a new path, an empty directory "
                         f"or over a store jigsaw-data wrote: choose another --out")


def _write_blocks(parts, tmp, encoding, time_block, progress, check_block, stats: StreamingStatistics) -> None:
    """First block creates the store (static fields included), the others append along time."""
    for part in parts:
        for da in part.data_vars.values():
            da.encoding.pop("chunks", None)  # a source's chunking is not the store's
            da.encoding.pop("preferred_chunks", None)
    blocks = [(part, s) for part in parts for s in time_blocks(part, time_block)]
    from tqdm import tqdm

    bar = tqdm(total=sum(s.stop - s.start for _, s in blocks), unit="step", desc=f"write {os.path.basename(tmp)}",
               disable=not progress or len(blocks) < 2, dynamic_ncols=True)
    for i, (part, s) in enumerate(blocks):
        block = part.isel(time=s)
        if i:
            block = block.drop_vars([v for v, da in block.data_vars.items() if "time" not in da.dims])
        block = block.load()
        if check_block:
            check_block(block)
        stats.add(block)  # the values as stored (the codecs are lossless): no second read of the store
        if i == 0:
            block.to_zarr(tmp, mode="w", encoding=encoding, consolidated=False, zarr_format=3,
                          write_empty_chunks=True)  # every chunk exists: the reader refuses missing ones
        else:
            block.to_zarr(tmp, append_dim="time", consolidated=False, write_empty_chunks=True)
        bar.update(s.stop - s.start)
    bar.close()

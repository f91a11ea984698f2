"""The fast read path (WeatherStore.read_into on tensorstore) against plain xarray, and its errors.

Small grids: every split of the token rows over domain ranks (uneven ones included) and of the token
columns over tensor ranks, both latitude orders, 0..360 and -180..180 longitudes, a regional grid, float64
values, a (longitude, latitude) dimension order, and the store layouts written before this one.
"""
import json
import os

import numpy as np
import pytest
import xarray as xr

from jigsaw_ds.data.counting import ReadCounter
from jigsaw_ds.data.store import StoreError, WeatherStore
from jigsaw_ds.data.synth import synth_dataset
from jigsaw_ds.data.writer import write_store
from jigsaw_ds.parallel.partition import TokenPartition

UPPER, SURFACE, STATIC, LEVELS = ["geopotential", "temperature"], ["2m_temperature"], ["land_sea_mask"], [850, 500]
PATCH = 4


def expected(path, times, lat, lon):
    """[T, C, h, w] of the selection, read by xarray; levels in the order asked for (850 before 500)."""
    ds = xr.open_zarr(path, chunks=None)
    parts = []
    for var in UPPER:
        da = ds[var].isel(time=times, latitude=lat, longitude=lon)
        parts += [da.sel(level=lev).transpose("time", "latitude", "longitude").values for lev in LEVELS]
    for var in SURFACE:
        parts.append(ds[var].isel(time=times, latitude=lat, longitude=lon).transpose("time", "latitude", "longitude").values)
    return np.stack(parts, axis=1).astype(np.float32)


def grids():
    """(name, dataset): global descending 0..360; ascending with -180..180; a regional grid across 0 deg E
    in float64; and a store whose dims are (..., longitude, latitude)."""
    glob = synth_dataset(33, 64, 6, seed=3)
    flipped = glob.isel(latitude=slice(None, None, -1)).roll(longitude=32, roll_coords=True)
    flipped = flipped.assign_coords(longitude=(flipped["longitude"] + 180) % 360 - 180)
    region = synth_dataset(21, 24, 6, seed=4).assign_coords(latitude=np.linspace(58, 50, 21),
                                                          longitude=np.linspace(-10, 2, 24))
    region = region.astype({v: np.float64 for v in region.data_vars})
    lonlat = synth_dataset(17, 32, 6, seed=5).transpose("time", "level", "longitude", "latitude")
    return [("global", glob), ("ascending_-180_180", flipped), ("regional_float64", region), ("lon_lat_order", lonlat)]


@pytest.fixture(scope="module", params=grids(), ids=lambda g: g[0])
def store_path(request, tmp_path_factory):
    name, ds = request.param
    return write_store(ds[UPPER + SURFACE + STATIC], str(tmp_path_factory.mktemp("reader") / f"{name}.zarr"))


def test_every_tile_equals_xarray_exactly(store_path):
    store = WeatherStore(store_path, UPPER, SURFACE, LEVELS, STATIC, read_threads=2)
    times = [4, 1, 2]  # any order
    for domain in (1, 2, 3, 4):
        for tensor in (1, 2):
            part = TokenPartition(store.n_lat, store.n_lon, PATCH, domain=domain, tensor=tensor)
            for d in range(domain):
                for t in range(tensor):
                    lat, lon = part.lat_slice(d), part.lon_slice(t)
                    raw = store.read_raw(times, lat, lon)
                    np.testing.assert_array_equal(raw, expected(store_path, times, lat, lon))
    full = slice(0, None)
    normalised = store.read(times, full, full)
    np.testing.assert_allclose(normalised, (expected(store_path, times, full, full) - store.mean[:, None, None])
                               / store.std[:, None, None], rtol=1e-6, atol=1e-6)
    mask = xr.open_zarr(store_path, chunks=None)["land_sea_mask"].transpose("latitude", "longitude").values
    stats = xr.open_zarr(store_path, chunks=None).attrs["jigsaw_stats"]["land_sea_mask"]
    np.testing.assert_allclose(store.read_static(full, full)[0], (mask - stats["mean"]) / stats["std"], rtol=1e-6)


def test_layout_sharded_lz4_crc32c_and_xarray_reads_it(store_path):
    meta = json.load(open(os.path.join(store_path, "temperature", "zarr.json")))
    sharding = meta["codecs"][0]
    assert sharding["name"] == "sharding_indexed"
    assert [c["name"] for c in sharding["configuration"]["codecs"]] == ["bytes", "blosc", "crc32c"]
    assert sharding["configuration"]["codecs"][1]["configuration"]["cname"] == "lz4"
    assert sorted(os.listdir(os.path.join(store_path, "temperature", "c")), key=int) == [str(t) for t in range(6)]
    assert xr.open_zarr(store_path)["temperature"].shape[0] == 6  # plain xarray (WeatherBench2 tools)


def test_without_checksum_the_reader_reads_the_same_values(tmp_path):
    """write_store(checksum=False): no crc32c after the codec (docs/data.md: faster reads, no bit-flip check)."""
    path = write_store(synth_dataset(33, 64, 2, seed=0)[UPPER + SURFACE], str(tmp_path / "n.zarr"), checksum=False)
    meta = json.load(open(os.path.join(path, "temperature", "zarr.json")))
    assert [c["name"] for c in meta["codecs"][0]["configuration"]["codecs"]] == ["bytes", "blosc"]
    full = slice(0, None)
    got = WeatherStore(path, UPPER, SURFACE, LEVELS).read_raw([0, 1], full, full)
    np.testing.assert_array_equal(got, expected(path, [0, 1], full, full))


def inner_chunk(path, key, n_inner, i):
    """(offset, nbytes) of inner chunk i of a shard file, from the index at its end (16 bytes per chunk, crc32c)."""
    with open(os.path.join(path, key), "rb") as f:
        data = f.read()
    offset, nbytes = np.frombuffer(data[-(16 * n_inner + 4):-4], np.uint64).reshape(-1, 2)[i]
    return int(offset), int(nbytes)


def test_bytes_read_are_the_inner_chunks_of_the_tile(tmp_path):
    ds = synth_dataset(33, 64, 4, seed=0)[["temperature", "2m_temperature"]]
    path = write_store(ds, str(tmp_path / "s.zarr"), lat_chunk=4, lon_chunk=16)
    store = WeatherStore(path, ["temperature"], ["2m_temperature"], [500, 850])
    lat, lon = slice(4, 12), slice(16, 32)  # latitude chunks 1-2, longitude chunk 1
    counter = ReadCounter()
    store.read_raw([1, 3], lat, lon)  # first read: metadata and shard indexes (cached per process)
    counter.reset()
    store.read_raw([1, 3], lat, lon)
    n_inner = 9 * 4  # 9 latitude bands x 4 longitude tiles per shard
    keys = [f"temperature/c/{t}/0/0/0" for t in (1, 3)] + [f"2m_temperature/c/{t}/0/0" for t in (1, 3)]
    # inner chunk (latitude band b, longitude tile 1) is entry 4 b + 1 of the shard index
    assert counter.bytes == sum(inner_chunk(path, key, n_inner, 4 * b + 1)[1] for key in keys for b in (1, 2))


def test_a_wrapped_tile_is_one_read_of_each_chunk_once(tmp_path):
    """Columns given as an index array that wraps past the last longitude (a rolled tile): the values of
    the rolled field, and each inner chunk read once."""
    ds = synth_dataset(33, 64, 4, seed=0)[["temperature", "2m_temperature"]]
    path = write_store(ds, str(tmp_path / "s.zarr"), lat_chunk=4, lon_chunk=16)
    store = WeatherStore(path, ["temperature"], ["2m_temperature"], [500, 850])
    cols = np.r_[56:64, 0:8]  # longitude tiles 3 and 0
    whole = store.read_raw([1, 3], slice(4, 12), slice(0, None))
    np.testing.assert_array_equal(store.read_raw([1, 3], slice(4, 12), cols), whole[..., cols])
    counter = ReadCounter()
    store.read_raw([1, 3], slice(4, 12), cols)
    n_inner = 9 * 4
    keys = [f"temperature/c/{t}/0/0/0" for t in (1, 3)] + [f"2m_temperature/c/{t}/0/0" for t in (1, 3)]
    assert counter.bytes == sum(inner_chunk(path, key, n_inner, 4 * b + tile)[1]
                                for key in keys for b in (1, 2) for tile in (3, 0))


@pytest.fixture()
def damaged(tmp_path):
    path = write_store(synth_dataset(33, 64, 6, seed=0)[UPPER + SURFACE], str(tmp_path / "d.zarr"))
    return path, WeatherStore(path, UPPER, SURFACE, LEVELS)


def test_a_flipped_bit_is_refused_naming_variable_time_and_chunk(damaged):
    path, store = damaged
    key = "temperature/c/2/0/0/0"
    offset, nbytes = inner_chunk(path, key, 9, 5)  # latitude rows 20..23
    with open(os.path.join(path, key), "r+b") as f:
        f.seek(offset + nbytes // 2)
        byte = f.read(1)
        f.seek(offset + nbytes // 2)
        f.write(bytes([byte[0] ^ 0x04]))
    store.read([0, 1, 3], slice(0, None), slice(0, None))  # other times are fine
    store.read([2], slice(0, 20), slice(0, None))  # and so are the other chunks of that shard
    with pytest.raises(StoreError, match=r"variable 'temperature' at time 2020-01-01T12:00.*chunk file "
                                         r"'temperature/c/2/0/0/0' \(an inner chunk of that shard\), latitude "
                                         r"rows 20..23.*(mismatch|checksum)"):
        store.read([1, 2, 3], slice(0, None), slice(0, None))
    with pytest.raises(StoreError, match=r"'temperature/c/2/0/0/0' \(an inner chunk of that shard\), latitude "
                                         r"rows 20..23, longitude columns 60..63"):  # a wrapped tile: its own runs
        store.read([2], slice(16, 24), np.r_[60:64, 0:4])


def test_a_truncated_or_missing_chunk_file_is_refused(damaged):
    path, store = damaged
    os.truncate(os.path.join(path, "2m_temperature/c/4/0/0"), 100)
    with pytest.raises(StoreError, match=r"variable '2m_temperature' at time 2020-01-02T00:00.*chunk file "
                                         r"'2m_temperature/c/4/0/0'"):
        store.read_raw([4], slice(0, None), slice(0, None))
    os.remove(os.path.join(path, "geopotential/c/5/0/0/0"))
    with pytest.raises(StoreError, match=r"variable 'geopotential' at time 2020-01-02T06:00.*'geopotential/c/5/0/0/0'"
                                         r".*missing"):
        store.read_raw([5], slice(0, 8), slice(0, None))


def test_stores_of_the_earlier_layout_still_read_exactly(tmp_path):
    """Unsharded zstd chunks without checksums (what write_store wrote before): read, equal to xarray."""
    ds = synth_dataset(33, 64, 6, seed=3)[UPPER + SURFACE + STATIC]
    path = str(tmp_path / "old.zarr")
    write_store(ds, path)
    old = str(tmp_path / "old_layout.zarr")
    xr.open_zarr(path).to_zarr(old, encoding={v: {"chunks": xr.open_zarr(path)[v].encoding["chunks"]}
                                              for v in ds.data_vars}, zarr_format=3)
    assert all(xr.open_zarr(old)[v].encoding.get("shards") is None for v in ds.data_vars)
    store = WeatherStore(old, UPPER, SURFACE, LEVELS, STATIC)
    lat, lon = slice(8, 20), slice(0, 32)
    np.testing.assert_array_equal(store.read_raw([0, 5], lat, lon), expected(old, [0, 5], lat, lon))


def test_a_layout_the_reader_cannot_read_names_store_and_conversion(tmp_path):
    from numcodecs.zarr3 import LZ4

    ds = synth_dataset(17, 32, 4, seed=0)[["temperature"]]
    path = str(tmp_path / "s.zarr")
    write_store(ds, path)
    foreign = str(tmp_path / "foreign.zarr")
    xr.open_zarr(path).to_zarr(foreign, encoding={"temperature": {"compressors": [LZ4()]}}, zarr_format=3)
    store = WeatherStore(foreign, ["temperature"], [], [])
    with pytest.raises(StoreError, match=rf"data store '{foreign}': variable 'temperature' is in a layout the reader "
                                         rf"cannot read .*convert it with `jigsaw-data prepare {foreign} --out NEW.zarr`"):
        store.read_raw([0], slice(0, None), slice(0, None))


def test_loader_without_workers_prefetches_the_same_batches_and_raises_read_errors(damaged):
    """The Loader reads ahead on a thread into its ring: the same batches as read_batch, in order, and a
    damaged chunk is raised to the consumer as the StoreError that names it."""
    import torch

    from jigsaw_ds.data.dataset import Loader, PairDataset, ReplicaBatches

    path, store = damaged
    dataset = PairDataset(store, store.pair_starts(1), 1, slice(0, 20), slice(0, 64), coord_feats=False)
    sampler = ReplicaBatches(len(dataset), 2, 0, 1, seed=0, steps=6)
    for got, draw in zip(Loader(dataset, sampler, "cpu"), sampler):
        for a, b in zip(got, dataset.read_batch(*draw)):
            assert torch.equal(a, b)
    os.remove(os.path.join(path, "temperature/c/3/0/0/0"))
    with pytest.raises(StoreError, match=r"variable 'temperature' at time 2020-01-01T18:00.*'temperature/c/3/0/0/0'"):
        for _ in Loader(dataset, ReplicaBatches(len(dataset), 4, 0, 1, seed=0, steps=6, shuffle=False), "cpu"):
            pass

"""The sharded reader on 4 CPU ranks (one torchrun job; see tests/workers/io_ranks.py).

The store comes from `prepare` on a WB2-style zarr with ascending latitude and -180..180 longitudes,
33 x 128, sharded per time step, inner chunks of one patch row (4 latitudes) and a tensor rank's longitude
tile (64 columns). The chunks must be larger than the gaps that tensorstore's file driver reads across to
merge two byte ranges (255 bytes; a 0.25 deg chunk is ~100 kB), or one rank's read would take in another's.
"""
import json
import os

import pytest

from conftest import ROOT, torchrun
from jigsaw_ds.data.prepare import prepare
from jigsaw_ds.data.synth import synth_dataset

pytestmark = pytest.mark.multirank  # every test here runs a multi-process job

LAT_CHUNK, LON_CHUNK, N_LAT, N_LON = 4, 64, 33, 128


@pytest.fixture(scope="module")
def results(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("io")
    src = synth_dataset(N_LAT, N_LON, 8, seed=5)[["temperature", "2m_temperature", "land_sea_mask"]]
    src = src.isel(latitude=slice(None, None, -1)).roll(longitude=N_LON // 2, roll_coords=True)
    src = src.assign_coords(longitude=(src["longitude"] + 180) % 360 - 180)  # -180 ... 174.375
    src.to_zarr(str(tmp / "wb2.zarr"))
    store = prepare([str(tmp / "wb2.zarr")], str(tmp / "train.zarr"), lat_chunk=LAT_CHUNK, lon_chunk=LON_CHUNK,
                    climatology=False)
    out = str(tmp / "results.json")
    torchrun(4, os.path.join(ROOT, "tests", "workers", "io_ranks.py"), "--store", store, "--out", out)
    with open(out) as f:
        return json.load(f)


def test_all_layouts_ran_with_uneven_splits(results):
    assert set(results) == {"(2, 2, 1)", "(1, 4, 1)", "(1, 2, 2)"}
    assert results["(2, 2, 1)"]["rows"] == [[0, 5], [5, 9]]  # 9 token rows over 2 domain ranks
    assert results["(1, 4, 1)"]["rows"] == [[0, 3], [3, 5], [5, 7], [7, 9]]


@pytest.mark.parametrize("check", ["union_exact", "weights_exact"])
def test_tiles_of_a_replica_rebuild_the_full_sample_exactly(results, check):
    for layout, r in results.items():
        assert r[check], f"{layout}: {check} failed"


@pytest.mark.parametrize("check", ["same_steps", "replicas_differ", "batch_is_global"])
def test_ranks_of_a_replica_read_the_same_time_steps(results, check):
    for layout, r in results.items():
        assert r[check], f"{layout}: {check} failed"


def test_bytes_per_rank_are_one_mth_of_the_sample_within_one_chunk_band(results):
    """A rank owns whole token rows; with an uneven split it owns at most one row (here: one chunk band of its
    longitude tile) more or less than 1/M. No chunk is read by two ranks of a replica: their bytes add up to
    the bytes of the sample's inner chunks (from the shard indexes) exactly."""
    n_bands = -(-N_LAT // LAT_CHUNK)
    print("\nlayout (data, domain, tensor): chunk bytes per rank for one (state, target) item")
    for layout, r in results.items():
        data, domain, tensor = eval(layout)
        m, full = domain * tensor, r["full_bytes"]
        band = full / (n_bands * tensor)  # one latitude chunk band across one longitude tile
        print(layout, r["bytes"], "full", full, "1/M", round(full / m))
        for rank, b in r["bytes"].items():
            assert abs(b - full / m) <= 1.1 * band, f"{layout} rank {rank}: {b} bytes vs {full / m:.0f} = full / M"
        for d in range(data):
            assert sum(b for rank, b in r["bytes"].items() if eval(rank)[0] == d) == full, layout

"""The input pipeline: read_batch decodes straight into the batch, the Loader's ring, threads and processes.

The oracle is independent of read_batch: each item assembled by hand from WeatherStore.read of single time
steps of the whole field (then rolled and cut to the tile), static fields, coordinate features and forcings.
"""
import numpy as np
import pytest
import torch

from jigsaw_ds.data.dataset import Loader, PairDataset, ReplicaBatches
from jigsaw_ds.data.store import WeatherStore
from jigsaw_ds.forcings import forcing_channels
from jigsaw_ds.grid import coord_features
from jigsaw_ds.parallel.partition import TokenPartition

UPPER = ["geopotential", "temperature", "u_component_of_wind", "v_component_of_wind"]
SURF = ["2m_temperature", "mean_sea_level_pressure"]
FORCINGS = ["toa_solar", "time_of_day"]
FULL = slice(0, None)


def open_store(path):
    return WeatherStore(path, UPPER, SURF, [500, 850], ["land_sea_mask"])


def expected_item(store, start, lead, history, rollout, lat, lon, shift, forcings=()):
    """(inputs, targets, forcings) of one item, by hand: every state read whole, rolled by `shift` columns,
    then cut to the tile (lat, lon); the coordinate features of the tile's own columns."""
    def tile(field):  # [..., n_lat, n_lon] -> the rolled sample's tile
        return np.roll(field, -shift, axis=-1)[..., lat, lon]

    inputs = [tile(store.read([start - k * lead], FULL, FULL)[0]) for k in range(history + 1)]
    inputs.append(tile(store.read_static(FULL, FULL)))
    inputs.append(coord_features(store.lat[lat], store.lon[lon]))
    targets = np.stack([tile(store.read([start + k * lead], FULL, FULL)[0]) for k in range(1, rollout + 1)])
    times = store.times[start] + np.arange(rollout) * lead * store.time_step
    lon_deg = np.roll(store.lon, -shift)[lon]
    f = forcing_channels(list(forcings), store.lat[lat], lon_deg, times).reshape(rollout, -1, *targets.shape[-2:])
    return np.concatenate(inputs), targets, f


LAYOUTS = [(1, 1), (3, 1), (2, 2), (4, 2), (5, 4)]  # uneven: 9 token rows (33 rows) over 2, 4, 5 ranks


@pytest.mark.parametrize("domain, tensor", LAYOUTS)
def test_read_batch_equals_the_items_assembled_by_hand(synth_store, domain, tensor):
    """Every tile of every layout (uneven ones too), with history, a rollout, lon_roll shifts (one that wraps
    past the last column, and two items sharing a shift and a time: one item's target is the other's
    input) and forcings: bit for bit the hand-made items, into fresh buffers and into reused ones."""
    store = open_store(synth_store)
    starts, lead, history, rollout = np.array([10, 12, 40, 70]), 2, 1, 2
    indices, shifts = [0, 1, 2, 3], [0, 0, 61, 7]  # items 0 and 1 share time 12 (target / input)
    part = TokenPartition(store.n_lat, store.n_lon, 4, domain, tensor)
    for d in range(domain):
        for t in range(tensor):
            lat, lon = part.lat_slice(d), part.lon_slice(t)
            dataset = PairDataset(store, starts, lead, lat, lon, True, rollout, FORCINGS, False, history)
            reused = dataset.empty_batch(len(indices), touch=True)
            for out in (None, reused, reused):
                x, y, f = dataset.read_batch(indices, shifts, out=out)
                for b, (i, s) in enumerate(zip(indices, shifts)):
                    ex, ey, ef = expected_item(store, starts[i], lead, history, rollout, lat, lon, s, FORCINGS)
                    np.testing.assert_array_equal(x[b].numpy(), ex)
                    np.testing.assert_array_equal(y[b].numpy(), ey)
                    np.testing.assert_allclose(f[b].numpy(), ef, atol=1e-6)
            assert x.data_ptr() == reused[0].data_ptr()


def test_normalise_on_the_device_is_read_intos_normalisation_bit_for_bit(synth_store):
    """What the Loader does on CUDA (decode raw on the host, normalise after the copy) gives the batch the
    CPU path gives, bit for bit (here on the CPU: the same float32 operations)."""
    store = open_store(synth_store)
    dataset = PairDataset(store, [9, 30, 31], 1, slice(4, 20), slice(16, 48), True, rollout=3, history=2)
    x, y, _ = dataset.read_batch([0, 1, 2])
    xr, yr, _ = dataset.read_batch([0, 1, 2], normalise=False)
    assert not torch.equal(x, xr)
    dataset.normalise_(xr, yr)
    assert torch.equal(x, xr) and torch.equal(y, yr)


@pytest.mark.multirank
def test_loader_threads_and_processes_give_read_batchs_batches_and_resume_exactly(synth_store):
    """The Loader (reading thread into its ring; and DataLoader worker processes) hands on exactly
    read_batch's batches in the sampler's order, with lon_roll; its ring is allocated once (prefetch + 1
    buffers, reused); a loader started at step k (a resume) hands on the uninterrupted loader's batches."""
    store = open_store(synth_store)
    tile = TokenPartition(store.n_lat, store.n_lon, 4, 3, 2)
    dataset = PairDataset(store, store.pair_starts(2, 1), 1, tile.lat_slice(2), tile.lon_slice(1), True, rollout=2,
                          forcings=FORCINGS, history=1)

    def sampler(start=0):
        return ReplicaBatches(len(dataset), 4, 1, 2, seed=5, start_step=start, steps=8 - start, lon_roll=64)

    whole = [tuple(t.clone() for t in dataset.read_batch(*draw)) for draw in sampler()]
    for workers in (0, 1):
        pointers = set()
        with Loader(dataset, sampler(), torch.device("cpu"), prefetch=2, workers=workers) as loader:
            for got, want in zip(loader, whole, strict=True):
                assert all(torch.equal(a, b) for a, b in zip(got, want))
                pointers.add(got[0].data_ptr())
        if workers == 0:
            assert len(pointers) == 3  # the ring's prefetch + 1 buffers, reused
        resumed = Loader(dataset, sampler(5), torch.device("cpu"), workers=workers)
        for got, want in zip(resumed, whole[5:], strict=True):
            assert all(torch.equal(a, b) for a, b in zip(got, want))

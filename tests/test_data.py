"""Synthetic store schema, per-rank tiles, sampler, trajectories."""
import sys

import numpy as np
import pytest
import torch
import xarray as xr

from jigsaw_ds.config import ConfigError
from jigsaw_ds.data.dataset import PairDataset, ReplicaBatches, split_train_val
from jigsaw_ds.data.store import StoreError, WeatherStore
from jigsaw_ds.data.synth import synth_dataset, synth_lazy
from jigsaw_ds.data.writer import write_store
from jigsaw_ds.parallel.partition import TokenPartition

UPPER = ["geopotential", "temperature", "u_component_of_wind", "v_component_of_wind"]
SURF = ["2m_temperature", "mean_sea_level_pressure"]


def open_store(path, **kw):
    return WeatherStore(path, UPPER, SURF, [500, 850], **kw)


def test_synth_store_has_wb2_schema(synth_store):
    ds = xr.open_zarr(synth_store)
    assert ds["geopotential"].dims == ("time", "level", "latitude", "longitude")
    assert ds["2m_temperature"].dims == ("time", "latitude", "longitude")
    assert list(ds["level"].values) == [500, 850]
    assert ds["latitude"].values[0] == 90 and ds["latitude"].values[-1] == -90
    assert "jigsaw_stats" in ds.attrs and "temperature_850" in ds.attrs["jigsaw_stats"]


def test_lazy_synth_is_the_same_series_made_a_block_at_a_time(tmp_path):
    """jigsaw-data synth writes synth_lazy (dask, a block of time steps in memory at a time): the same values,
    coordinates and attributes as the in-memory series, for any block size, and so the same store."""
    whole = synth_dataset(9, 16, 7, seed=3)
    for block in (1, 3, 7):
        lazy = synth_lazy(9, 16, 7, seed=3, block=block)
        assert lazy["geopotential"].chunks[0] == tuple(min(block, 7 - s) for s in range(0, 7, block))
        xr.testing.assert_identical(lazy.compute(), whole)
    a = write_store(whole, str(tmp_path / "a.zarr"))
    b = write_store(synth_lazy(9, 16, 7, seed=3), str(tmp_path / "b.zarr"))
    xr.testing.assert_identical(xr.open_zarr(a).load(), xr.open_zarr(b).load())


def test_synth_dynamics_are_smooth_not_noise(synth_store):
    ds = xr.open_zarr(synth_store)
    t = ds["temperature"].isel(level=0).values
    step_change = np.abs(np.diff(t, axis=0)).mean()
    spread = t.std()
    neighbour = np.abs(np.diff(t, axis=2)).mean()
    assert step_change < 0.2 * spread and neighbour < 0.2 * spread


def test_tiles_union_is_the_full_sample(synth_store):
    store = open_store(synth_store, static_variables=["land_sea_mask"])
    full = PairDataset(store, [5], 1, slice(0, 33), slice(0, 64), True)[0][0].numpy()
    part = TokenPartition(33, 64, 4, domain=4, tensor=2)  # 9 token rows: uneven split 3/2/2/2
    rebuilt = np.full_like(full, np.nan)
    for d in range(4):
        for t in range(2):
            lat, lon = part.lat_slice(d), part.lon_slice(t)
            rebuilt[:, lat, lon] = PairDataset(store, [5], 1, lat, lon, True)[0][0].numpy()
    np.testing.assert_array_equal(rebuilt, full)


def test_normalisation_uses_stored_statistics(synth_store):
    store = open_store(synth_store)
    raw = store.read_raw([3], slice(0, 33), slice(0, 64))
    assert raw.shape == (1, 10, 33, 64)
    np.testing.assert_allclose(raw[0, 3], xr.open_zarr(synth_store)["temperature"].isel(time=3, level=1).values)
    np.testing.assert_allclose(store.read([3], slice(0, 33), slice(0, 64)),
                               (raw - store.mean[:, None, None]) / store.std[:, None, None], rtol=1e-6)


def test_replica_ranks_draw_the_same_steps_and_replicas_split_the_batch():
    a = ReplicaBatches(50, 8, dp_rank=0, dp_size=2, seed=3)
    again = ReplicaBatches(50, 8, dp_rank=0, dp_size=2, seed=3)  # another rank of the same replica
    b = ReplicaBatches(50, 8, dp_rank=1, dp_size=2, seed=3)
    one = ReplicaBatches(50, 8, dp_rank=0, dp_size=1, seed=3)
    for step in range(20):
        assert a.indices_for_step(step) == again.indices_for_step(step)
        assert a.indices_for_step(step) + b.indices_for_step(step) == one.indices_for_step(step)
    resumed = ReplicaBatches(50, 8, 0, 2, seed=3, start_step=7, steps=3)
    assert [d.indices for d in resumed] == [a.indices_for_step(s) for s in range(7, 10)]


def test_no_pair_crosses_a_trajectory(tmp_path):
    ds = synth_dataset(9, 16, 30, seed=0)
    ds = ds.assign_coords(trajectory=("time", np.repeat(np.arange(3), 10)))
    path = str(tmp_path / "traj.zarr")
    write_store(ds, path)
    store = open_store(path)
    for lead in (1, 4):
        starts = store.pair_starts(lead)
        assert np.all(store.trajectory[starts] == store.trajectory[starts + lead])
        assert len(starts) == 3 * (10 - lead)


class TimeAxis:
    """Just what split_train_val looks at: times and trajectories (a gap in time starts a trajectory)."""
    path = "t.zarr"
    pair_starts = WeatherStore.pair_starts

    def __init__(self, lengths):
        self.trajectory = np.repeat(np.arange(len(lengths)), lengths)
        self.times = np.arange(len(self.trajectory))


@pytest.mark.parametrize("lengths, val_times, cut_inside", [([35, 5], 5, False), ([5, 35], 8, True),
                                                            ([10] * 10, 20, False), ([50], 10, True)])
def test_split_holds_out_about_val_fraction_of_the_times(lengths, val_times, cut_inside):
    """val_fraction 0.2 of the times held out at the end: whole trajectories when they come to between half
    and 1.5x that, else cut inside one; no pair (here lead 1) crosses the cut."""
    store = TimeAxis(lengths)
    train, val = split_train_val(store, 1, 0.2)
    held_out = np.unique(np.r_[val, val + 1])
    assert len(held_out) == val_times and held_out.max() == len(store.times) - 1
    assert set(np.r_[train, train + 1]).isdisjoint(held_out)
    assert len(train) + len(val) == len(store.pair_starts(1)) - cut_inside  # the pair across an inner cut


def test_split_that_leaves_a_side_empty_names_the_keys():
    with pytest.raises(ConfigError, match=r"0 validation pairs with 'data.val_fraction' = 0.01"):
        split_train_val(TimeAxis([40]), 1, 0.01)
    with pytest.raises(ConfigError, match=r"'data.lead_steps' x 'train.rollout_steps' = 6 and input history reaching 0 store steps back"):
        split_train_val(TimeAxis([30, 5]), 6, 0.2)  # the held-out trajectory is too short for one pair


def test_store_errors_name_the_problem(tmp_path, synth_store):
    with pytest.raises(StoreError, match="no variable 'specific_humidity'"):
        WeatherStore(synth_store, ["specific_humidity"], [], [])
    with pytest.raises(StoreError, match="no level 700"):
        WeatherStore(synth_store, ["temperature"], [], [700])
    with pytest.raises(StoreError, match="does not exist"):
        WeatherStore(str(tmp_path / "nope.zarr"), ["temperature"], [], [])
    ds = synth_dataset(9, 16, 10, seed=0)
    ds["temperature"][4, 0, 2, 2] = np.nan
    path = str(tmp_path / "nan.zarr")
    write_store(ds, path)
    store = WeatherStore(path, ["temperature"], [], [500, 850])
    with pytest.raises(StoreError, match="'temperature_500' has NaN/inf at time 2020-01-02"):
        store.check_finite()


def test_interrupted_write_leaves_no_store(tmp_path, monkeypatch):
    ds = synth_dataset(9, 16, 10, seed=0)
    out = tmp_path / "s.zarr"

    def boom(*a, **k):
        raise KeyboardInterrupt

    monkeypatch.setattr(xr.Dataset, "to_zarr", boom)
    with pytest.raises(KeyboardInterrupt):
        write_store(ds, str(out))
    assert not out.exists()


def test_swe_trajectories_are_balanced_weather(tmp_path):
    from jigsaw_ds.data.swe import swe_dataset

    ds = swe_dataset(17, 32, trajectories=2, steps=4, seed=0)
    assert ds["geopotential"].dims == ("time", "level", "latitude", "longitude")
    assert list(ds["trajectory"].values) == [0] * 4 + [1] * 4
    assert ds["latitude"].values[0] == pytest.approx(90, abs=1e-3)
    u = ds["u_component_of_wind"].values
    assert 10 < np.abs(u).max() < 150  # jets, not gravity-wave noise and not blown up
    step = np.abs(np.diff(u[:4], axis=0)).mean()
    assert 0 < step < 0.2 * u.std()  # smooth in time
    # the two trajectories start from different random states
    assert np.abs(u[0] - u[4]).mean() > 0.3 * u.std()
    path = str(tmp_path / "swe.zarr")
    write_store(ds, path)
    store = WeatherStore(path, ["geopotential", "u_component_of_wind", "v_component_of_wind"], [], [500])
    assert len(store.pair_starts(1)) == 2 * 3


@pytest.mark.multirank
def test_held_suarez_trajectories_are_driven_multilevel_weather(held_suarez_store):
    """dinosaur's primitive equations with Held-Suarez forcing, on pressure levels in SI units: after 20 days the
    forcing has built jets; levels are ordered as in the atmosphere; seeds give other runs; the store opens."""
    from jigsaw_ds.data.held_suarez import LEVELS, SURFACE, UPPER, HeldSuarezRun

    ds = xr.open_zarr(held_suarez_store)
    assert ds["temperature"].dims == ("time", "level", "latitude", "longitude") and ds["temperature"].shape == (24, 3, 32, 64)
    assert ds["surface_pressure"].dims == ("time", "latitude", "longitude")
    assert list(ds["trajectory"].values) == [0] * 6 + [1] * 6 + [2] * 6 + [3] * 6
    lat = ds["latitude"].values  # Gaussian nodes, south to north, no pole row
    np.testing.assert_allclose(np.sin(np.deg2rad(lat)), np.polynomial.legendre.leggauss(32)[0], atol=1e-6)
    z = ds["geopotential"].values
    assert (z[:, 0] > z[:, 1]).all() and (z[:, 1] > z[:, 2]).all()  # 250 above 500 above 850 hPa
    assert 5.0e4 < z[:, 1].mean() < 5.8e4  # z500 in m^2/s^2 (about 5.5 km)
    t = ds["temperature"].values
    assert 180 < t.min() and t.max() < 330 and t[:, 2].mean() > t[:, 0].mean()  # K, warmer below
    assert abs(ds["surface_pressure"].values.mean() - 1e5) < 2e3  # Pa
    u250 = ds["u_component_of_wind"].sel(level=250).values.mean(axis=(0, 2))  # zonal mean by latitude
    for hemisphere in (lat < 0, lat > 0):  # a westerly jet in each hemisphere, in m/s
        assert 8 < u250[hemisphere].max() < 60
    v = ds["v_component_of_wind"].values
    assert np.abs(v).max() < 40 and np.abs(v).mean() < np.abs(ds["u_component_of_wind"].values).mean()
    store = WeatherStore(held_suarez_store, list(UPPER), list(SURFACE), list(LEVELS))
    assert len(store.channels) == 13 and len(store.pair_starts(1)) == 4 * 5
    assert (np.diff(ds["time"].values[5:7]) == np.timedelta64(6 + 24, "h")).all()  # runs 1 day apart (+ 6 h)
    run = HeldSuarezRun(21, 8)  # the seed places the initial surface-pressure bump
    first, same, other = (run.trajectory(run.initial_state(seed), 1)[2] for seed in (0, 0, 1))
    np.testing.assert_array_equal(first, same)
    assert np.abs(other - first).max() > 10  # Pa
    # a trajectory continues exactly where the one before stopped
    state = run.initial_state(0)
    _, two, _ = run.trajectory(state, 2)
    after_one, one, _ = run.trajectory(state, 1)
    np.testing.assert_array_equal(two["temperature"][1], run.trajectory(after_one, 1)[1]["temperature"][0])


def test_held_suarez_records_known_states_exactly():
    """Through the recording on pressure levels, states with known answers: an isothermal atmosphere's
    geopotential is R T log(ps / p) (exact for log-sigma interpolation), solid-body rotation's wind is
    U cos(lat) eastward with no v (u is cos(lat) u / cos(lat), in m/s)."""
    import jax.numpy as jnp
    from dinosaur import primitive_equations, scales

    from jigsaw_ds.data.held_suarez import LEVELS, HeldSuarezRun

    run = HeldSuarezRun(21, 8)
    rest = run.initial_state(0)  # 288 K everywhere, at rest, a surface-pressure bump
    fields, ps = (np.asarray(a) if not isinstance(a, dict) else {k: np.asarray(v) for k, v in a.items()}
                  for a in run.record(rest))
    for i, p in enumerate(LEVELS):
        np.testing.assert_allclose(fields["geopotential"][i], 287.05 * 288.0 * np.log(ps / (100.0 * p)), rtol=1e-3)
    np.testing.assert_allclose(fields["temperature"], 288.0, rtol=1e-6)
    specs = primitive_equations.PrimitiveEquationsSpecs.from_si()
    speed = specs.nondimensionalize(20 * scales.units.meter / scales.units.second)
    _, sin_lat = run.grid.nodal_mesh  # [lon, lat]; unit radius: vorticity of U cos(lat) is 2 U sin(lat)
    vorticity = run.grid.to_modal(jnp.stack([2 * speed * sin_lat] * run.coords.vertical.layers))
    spin = primitive_equations.State(vorticity, rest.divergence, rest.temperature_variation, rest.log_surface_pressure)
    wind, _ = run.record(spin)
    u = np.asarray(wind["u_component_of_wind"])  # [level, lon, lat]
    np.testing.assert_allclose(u, np.broadcast_to(20 * np.sqrt(1 - sin_lat ** 2), u.shape), rtol=1e-4)
    assert np.abs(np.asarray(wind["v_component_of_wind"])).max() < 1e-4


def test_a_missing_optional_generator_library_is_named(monkeypatch, capsys, tmp_path):
    from jigsaw_ds.data.cli import main

    monkeypatch.setitem(sys.modules, "dinosaur", None)  # import dinosaur raises ImportError
    assert main(["held-suarez", "--out", str(tmp_path / "never.zarr"), "--spinup", "1"]) == 2
    assert "pip install -c constraints.txt dinosaur-dycore" in capsys.readouterr().err
    assert not (tmp_path / "never.zarr").exists()


def test_rollout_items_hold_k_consecutive_targets(synth_store):
    store = open_store(synth_store)
    full = slice(0, None)
    x, y, _ = PairDataset(store, [10], 2, full, full, False, rollout=3)[0]
    assert y.shape == (3, 10, 33, 64)
    for k in range(3):
        np.testing.assert_array_equal(y[k].numpy(), store.read([10 + 2 * (k + 1)], full, full)[0])
    np.testing.assert_array_equal(x.numpy(), store.read([10], full, full)[0])


def test_a_batch_read_at_once_equals_its_items_read_one_by_one(synth_store):
    """__getitems__ (what the DataLoader calls) reads the union of a batch's times once; overlapping
    pairs (7 -> 9 -> 11 and 9 -> 11 -> 13) and any order must give exactly the items of __getitem__."""
    store = open_store(synth_store)
    ds = PairDataset(store, [7, 30, 9, 2], 2, slice(3, 20), slice(16, 48), True, rollout=2)
    batch = ds.__getitems__([2, 0, 3, 1])
    for (x, y, _), i in zip(batch, [2, 0, 3, 1]):
        t = ds.starts[i]
        np.testing.assert_array_equal(x[:10].numpy(), store.read([t], slice(3, 20), slice(16, 48))[0])
        np.testing.assert_array_equal(y.numpy(), store.read([t + 2, t + 4], slice(3, 20), slice(16, 48)))
        assert torch.equal(x, ds[i][0]) and torch.equal(y, ds[i][1])


def test_lon_roll_tiles_are_the_tiles_of_the_rolled_sample(synth_store):
    """data.lon_roll: an item read with shift s is the sample rolled by s columns in its state, targets,
    static fields and forcings, with the coordinate features unchanged; and every tile of a (4, 2) split,
    the ones whose range wraps past the last longitude too, is that rolled sample's tile."""
    store = open_store(synth_store, static_variables=["land_sea_mask"])
    full, n_rolled = slice(0, None), 10 + 1  # state channels + the static field
    kw = dict(coord_feats=True, rollout=2, forcings=["toa_solar", "time_of_day"], forcings_at_target=True)
    x0, y0, f0 = PairDataset(store, [4, 9, 20], 2, full, full, **kw).read_batch([0, 1, 2])
    shifts = [5, 63, 0]
    x, y, f = PairDataset(store, [4, 9, 20], 2, full, full, **kw).read_batch([0, 1, 2], shifts)
    for b, s in enumerate(shifts):
        np.testing.assert_array_equal(x[b, :n_rolled], torch.roll(x0[b, :n_rolled], -s, dims=-1))
        np.testing.assert_array_equal(x[b, n_rolled:], x0[b, n_rolled:])  # coordinates stay
        np.testing.assert_array_equal(y[b], torch.roll(y0[b], -s, dims=-1))
        np.testing.assert_allclose(f[b], torch.roll(f0[b], -s, dims=-1), atol=1e-6)
    assert not torch.equal(x[0, 0], x0[0, 0]) and not torch.equal(f[0], f0[0])
    part = TokenPartition(33, 64, 4, domain=4, tensor=2)
    for d in range(4):
        for t in range(2):
            lat, lon = part.lat_slice(d), part.lon_slice(t)
            xt, yt, ft = PairDataset(store, [4, 9, 20], 2, lat, lon, **kw).read_batch([0, 1, 2], shifts)
            np.testing.assert_array_equal(xt, x[..., lat, lon])
            np.testing.assert_array_equal(yt, y[..., lat, lon])
            np.testing.assert_array_equal(ft, f[..., lat, lon])


@pytest.mark.multirank
def test_lon_roll_shifts_are_one_stream_for_any_layout_and_reach_loader_workers(synth_store):
    """The shifts, like the items, are the same on a replica's ranks and split over replicas exactly as one
    replica's stream; the order does not change with lon_roll on; a loader worker reads the same rolled batch."""
    from jigsaw_ds.data.dataset import Loader

    a, again = (ReplicaBatches(50, 8, 0, 2, seed=3, lon_roll=64) for _ in range(2))
    b = ReplicaBatches(50, 8, 1, 2, seed=3, lon_roll=64)
    one = ReplicaBatches(50, 8, 0, 1, seed=3, lon_roll=64)
    plain = ReplicaBatches(50, 8, 0, 2, seed=3)
    shifts = []
    for step in range(20):
        assert a.draw(step) == again.draw(step)
        assert a.draw(step).indices == plain.draw(step).indices and plain.draw(step).lon_shifts is None
        assert a.draw(step).lon_shifts + b.draw(step).lon_shifts == one.draw(step).lon_shifts
        shifts += one.draw(step).lon_shifts
    assert min(shifts) >= 0 and max(shifts) < 64 and len(set(shifts)) > 40
    dataset = PairDataset(open_store(synth_store), [3, 8, 15, 22], 1, slice(0, 17), slice(32, 64), True)
    sampler = ReplicaBatches(4, 2, 0, 1, seed=1, steps=3, lon_roll=64)
    for got, draw in zip(Loader(dataset, sampler, "cpu", workers=1), sampler):
        assert draw.lon_shifts and all(torch.equal(u, v) for u, v in zip(got, dataset.read_batch(*draw)))


def test_history_items_hold_the_earlier_states_newest_first_within_their_run(tmp_path, synth_store):
    """model.history_steps = H: inputs [state_t, state_t-lead, .., state_t-H lead, static, coordinates]; a pair
    starts only where its history lies in its own trajectory, and no validation pair's history reaches
    across the cut into training times."""
    store = open_store(synth_store, static_variables=["land_sea_mask"])
    tile = (slice(3, 20), slice(16, 48))
    ds = PairDataset(store, [9, 30], 2, *tile, True, rollout=2, history=2)
    x, y, _ = ds.read_batch([0, 1])
    plain, _, _ = PairDataset(store, [9, 30], 2, *tile, True, rollout=2).read_batch([0, 1])
    assert x.shape[1] == plain.shape[1] + 2 * 10
    for b, t in enumerate([9, 30]):
        np.testing.assert_array_equal(x[b, :30].reshape(3, 10, 17, 32), store.read([t, t - 2, t - 4], *tile))
        np.testing.assert_array_equal(x[b, 30:], plain[b, 10:])  # static and coordinates after the history
        np.testing.assert_array_equal(y[b], store.read([t + 2, t + 4], *tile))
    ds9 = synth_dataset(9, 16, 30, seed=0).assign_coords(trajectory=("time", np.repeat(np.arange(3), 10)))
    write_store(ds9, str(tmp_path / "t.zarr"))
    three = WeatherStore(str(tmp_path / "t.zarr"), UPPER, SURF, [500, 850])
    starts = three.pair_starts(1, before=2)
    assert list(starts) == [t for r in range(3) for t in range(10 * r + 2, 10 * r + 9)]
    train, val = split_train_val(three, 1, 1 / 3, before=2)
    assert train.max() + 1 < 20 <= val.min() - 2
    one = TimeAxis([40])  # a cut inside the one trajectory: the held-out history must not reach across it
    cut = 32
    train, val = split_train_val(one, 1, 0.2, before=3)
    assert train.max() + 1 < cut and val.min() - 3 == cut


def test_generated_stores_carry_wb2_units(synth_store):
    """Every variable and coordinate of a generated store has WB2's units and a long name (data/names.py)."""
    ds = xr.open_zarr(synth_store)
    assert ds["geopotential"].attrs["units"] == "m**2 s**-2" and ds["2m_temperature"].attrs["units"] == "K"
    assert ds["latitude"].attrs["units"] == "degrees_north" and ds["level"].attrs["units"] == "hPa"
    for name in [*ds.data_vars, "latitude", "longitude", "level"]:
        assert ds[name].attrs.get("units") and ds[name].attrs.get("long_name"), name
    from jigsaw_ds.data import held_suarez, names, swe

    for name in swe.VARIABLES + held_suarez.UPPER + held_suarez.SURFACE:  # the other generators' variables
        assert name in names.ATTRS, name


def test_input_spec_counts_what_the_samples_and_the_model_take(synth_store):
    """InputSpec.n_in is the channel count of a sample's inputs plus its forcings at each step (what
    model.rollout stacks), for history, static fields, coordinates and forcings at the target; `pairs` refuses
    a store whose channels are not the spec's (a model's inputs in another order)."""
    from jigsaw_ds import config as jconfig
    from jigsaw_ds.model import InputSpec
    from jigsaw_ds.model.shape import ModelShape

    store = open_store(synth_store, static_variables=["land_sea_mask"])
    cfg = jconfig.from_dict({
        "model": {"static_variables": ["land_sea_mask"], "coord_features": True, "history_steps": 2,
                  "forcings": ["toa_solar", "time_of_day"], "forcings_at_target": True},
        "data": {"store": synth_store, "variables": UPPER, "levels": [500, 850], "surface_variables": SURF,
                 "lead_steps": 2}})
    spec = InputSpec.of(cfg, [c.name for c in store.channels])
    pairs = spec.pairs(store, store.pair_starts(2 * spec.lead, spec.lead * spec.history), slice(0, 8), slice(0, 16),
                       rollout=2)
    x, y, f = pairs.read_batch([0, 1])
    # 10 channels x (1 + 2 history), a static field, 3 coordinate features, toa_solar (1) + time_of_day (2) x 2
    assert x.shape[1] + f.shape[2] == spec.n_in == 10 * 3 + 1 + 3 + 3 * 2
    assert y.shape[1:3] == (2, spec.n_state) and spec.n_states == 30
    assert ModelShape.from_config(cfg, (33, 64)).c_in == spec.n_in  # the planner's count, from the config alone
    with pytest.raises(ValueError, match="not the inputs'"):
        InputSpec.of(cfg, [c.name for c in store.channels][::-1]).pairs(
            store, [4], slice(0, 8), slice(0, 16))

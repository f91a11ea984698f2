"""Forcings (jigsaw_ds/forcings.py): TOA solar radiation against hand-checked values, encodings, tiles."""
import numpy as np
import pytest

from jigsaw_ds.forcings import SOLAR_CONSTANT, forcing_channels, n_channels, solar_geometry, toa_incident_solar
from jigsaw_ds.parallel.partition import TokenPartition


def times(*stamps):
    return np.array(stamps, dtype="datetime64[s]")


def test_polar_day_and_night_at_the_solstices():
    """At the June solstice the North Pole sees the sun at the declination's height all day:
    S0 E0 sin(23.44 deg) with E0 = 0.967 near aphelion, about 524 W m-2; the South Pole sees none."""
    day = np.arange("2020-06-21T00", "2020-06-22T00", np.timedelta64(3, "h"), dtype="datetime64[s]")
    toa = toa_incident_solar([90.0, -90.0], [0.0, 100.0, 250.0], day)
    decl, e0, _ = solar_geometry(day)
    np.testing.assert_allclose(toa[:, 0], np.broadcast_to(SOLAR_CONSTANT * e0[:, None] * np.sin(decl)[:, None],
                                                          toa[:, 0].shape), rtol=1e-12)
    assert 520 < toa[:, 0].min() <= toa[:, 0].max() < 528
    assert (toa[:, 1] == 0).all()
    assert np.abs(np.rad2deg(decl) - 23.44).max() < 0.05  # the solstice declination (Spencer: within 0.035 deg)


def test_zero_at_night_and_the_daily_maximum_at_local_solar_noon():
    day = np.arange("2020-03-20T00", "2020-03-21T00", np.timedelta64(5, "m"), dtype="datetime64[s]")
    lon = np.array([0.0, 30.0, 135.0, 270.0])
    toa = toa_incident_solar([45.0], lon, day)[:, 0]           # [T, lon]
    _, _, eot = solar_geometry(day[:1])
    for j, lam in enumerate(lon):
        noon_utc = (12.0 - lam / 15.0 - eot[0] / 60.0) % 24   # true solar noon in UTC hours
        hours = (day - day[0]) / np.timedelta64(1, "h")
        assert abs(hours[toa[:, j].argmax()] - noon_utc) <= 5 / 60
        midnight = np.argmin(np.abs(hours - (noon_utc + 12) % 24))
        assert toa[midnight, j] == 0.0
    # at the March equinox: cos z = cos(45 deg - decl) at solar noon, E0 about 1.008
    at = np.unravel_index(toa.argmax(), toa.shape)[0]
    decl, e0, _ = solar_geometry(day[at:at + 1])
    assert toa.max() == pytest.approx(SOLAR_CONSTANT * e0[0] * np.cos(np.deg2rad(45) - decl[0]), rel=1e-4)


def test_hand_checked_points():
    """Subsolar-like points: the equator at noon on the equinox (S0 E0 cos(decl)) and the Tropic of Capricorn
    at the December solstice (perihelion, E0 = 1.034: about 1407 W m-2 at local noon)."""
    t = times("2020-03-20T12:00")
    _, _, eot = solar_geometry(t)
    lon = -eot[0] / 60 * 15  # where true solar noon is at 12 UTC
    decl, e0, _ = solar_geometry(t)
    assert toa_incident_solar([0.0], [lon], t)[0, 0, 0] == pytest.approx(SOLAR_CONSTANT * e0[0] * np.cos(decl[0]), rel=1e-9)
    t = times("2020-12-21T12:00")
    _, _, eot = solar_geometry(t)
    value = toa_incident_solar([-23.44], [-eot[0] / 60 * 15], t)[0, 0, 0]
    assert value == pytest.approx(1407, abs=2)


def test_encodings_and_channel_counts():
    t = times("2021-07-02T06:00", "2021-07-02T12:00")
    lat, lon = np.array([10.0, -10.0]), np.array([0.0, 90.0, 180.0])
    f = forcing_channels(["time_of_day", "day_of_year", "toa_solar"], lat, lon, t)
    assert f.shape == (2, 5, 2, 3) and f.dtype == np.float32 and n_channels(["time_of_day", "day_of_year", "toa_solar"]) == 5
    assert n_channels(["toa_solar"], at_target=True) == 2
    local_hours = (np.array([6.0, 12.0])[:, None] + lon[None, :] / 15) % 24
    np.testing.assert_allclose(f[:, 0, 0], np.sin(2 * np.pi * local_hours / 24), atol=1e-6)
    np.testing.assert_allclose(f[:, 1, 1], np.cos(2 * np.pi * local_hours / 24), atol=1e-6)
    assert np.ptp(f[0, 2]) == 0 and np.ptp(f[0, 3]) == 0  # day of year: the same everywhere
    assert 0 <= f[:, 4].min() and f[:, 4].max() <= 1.04
    with pytest.raises(ValueError, match="unknown forcing 'moon'"):
        forcing_channels(["moon"], lat, lon, t)


@pytest.mark.parametrize("domain, tensor", [(1, 1), (2, 2), (4, 1), (3, 2)])
def test_tiles_equal_the_serial_field(domain, tensor):
    """Computed on a rank's own tile coordinates = the serial field cut to that tile, bit for bit."""
    lat, lon = np.linspace(90, -90, 33), np.arange(64) * 360 / 64
    t = times("2020-01-15T18:00", "2020-08-01T00:00")
    kinds = ["toa_solar", "time_of_day", "day_of_year"]
    full = forcing_channels(kinds, lat, lon, t)
    part = TokenPartition(33, 64, 4, domain, tensor)
    for d in range(domain):
        for k in range(tensor):
            la, lo = part.lat_slice(d), part.lon_slice(k)
            assert np.array_equal(forcing_channels(kinds, lat[la], lon[lo], t), full[:, :, la, lo])


def test_dataset_forcings_advance_with_the_rollout(synth_store):
    """Step k of a sample gets the forcings of its input time t0 + k lead and, with forcings_at_target, of its
    target time; model.rollout hands step k exactly forcings[:, k]."""
    import torch

    from jigsaw_ds.data.dataset import PairDataset
    from jigsaw_ds.data.store import WeatherStore
    from jigsaw_ds.model import rollout

    store = WeatherStore(synth_store, ["temperature"], [], [500])
    kinds = ["toa_solar", "time_of_day"]
    full = slice(0, None)
    data = PairDataset(store, np.array([5, 9]), 2, full, full, False, rollout=3, forcings=kinds, forcings_at_target=True)
    x, y, f = data.read_batch([0, 1])
    assert f.shape == (2, 3, 6, 33, 64) and y.shape == (2, 3, 1, 33, 64)
    for b, start in enumerate((5, 9)):
        for k in range(3):
            at = lambda t: forcing_channels(kinds, store.lat, store.lon, store.times[[t]])[0]
            assert np.array_equal(f[b, k, :3].numpy(), at(start + 2 * k))
            assert np.array_equal(f[b, k, 3:].numpy(), at(start + 2 * (k + 1)))
    seen = []

    def probe(inputs):  # a one-step "model" that records what it was given and persists the state
        seen.append(inputs)
        return inputs[:, :1]

    states = list(rollout(probe, x, 3, 1, f))
    assert len(states) == 3 and all(torch.equal(s, x[:, :1]) for s in states)
    for k, inputs in enumerate(seen):
        assert inputs.shape[1] == 1 + 6 and torch.equal(inputs[:, 1:], f[:, k])

"""jigsaw-data prepare: real ERA5 files ingested exactly, other conventions, several files, bad input.

The real files are in ../shared/data (see its README); every stored value is compared with a direct xarray
read of the source. Small synthetic sources cover what the real files do not (ascending latitude, a
longitude axis that wraps, transposed dims, monthly files, bad input).
"""
import json
import os

import numpy as np
import pandas as pd
import pytest
import xarray as xr
import zarr

from jigsaw_ds.data import parallel_prepare
from jigsaw_ds.data.cli import main as cli_main
from jigsaw_ds.data.prepare import SourceError, prepare
from jigsaw_ds.data.store import STATS_ATTR, StoreError, WeatherStore
from jigsaw_ds.data.synth import synth_dataset

DATA = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "..", "shared", "data")
UK = os.path.join(DATA, "era5-2mt-2019-03-uk.grib")
MEMBERS_NC = os.path.join(DATA, "era5-levels-members.nc")
MEMBERS_GRIB = os.path.join(DATA, "era5-levels-members.grib")
GRIB = {"engine": "cfgrib", "backend_kwargs": {"indexpath": ""}}
needs_data = pytest.mark.skipif(not os.path.exists(UK), reason="../shared/data is not there")


def small_source(n_lat=9, n_lon=16, n_times=4, **kw) -> xr.Dataset:
    """A synthetic dataset with ECMWF short names, as a CDS netCDF would have them."""
    ds = synth_dataset(n_lat, n_lon, n_times, seed=2, **kw)[["temperature", "geopotential", "2m_temperature"]]
    return ds.rename({"temperature": "t", "geopotential": "z", "2m_temperature": "t2m", "level": "isobaricInhPa"})


def netcdf(ds: xr.Dataset, path) -> str:
    ds.to_netcdf(str(path))
    return str(path)


def chunk_mtimes(store: str, times: list) -> dict:
    """Modification times of the chunk files of the given time steps of every time-dependent variable."""
    out = {}
    for var in ("temperature", "geopotential", "2m_temperature"):
        for t in times:
            for root, _, files in os.walk(os.path.join(store, var, "c", str(t))):
                for f in files:
                    out[os.path.relpath(os.path.join(root, f), store)] = os.stat(os.path.join(root, f)).st_mtime_ns
    assert out
    return out


# ---- the real files ------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def uk(tmp_path_factory):
    """The UK t2m GRIB ingested (one latitude chunk: its 33 rows fit in 36 = 9 patch rows): path, store, source."""
    out = prepare([UK], str(tmp_path_factory.mktemp("uk") / "uk.zarr"), lat_chunk=36)
    return out, xr.open_zarr(out, chunks=None), xr.open_dataset(UK, **GRIB)


@needs_data
def test_uk_grib_is_stored_exactly(uk):
    _, store, src = uk
    np.testing.assert_array_equal(store["latitude"].values, src["latitude"].values)  # 58 -> 50, descending
    np.testing.assert_array_equal(store["longitude"].values, src["longitude"].values)  # -10 -> 2, across 0 deg E
    np.testing.assert_array_equal(store["time"].values, src["valid_time"].values)
    assert store["2m_temperature"].dims == ("time", "latitude", "longitude")
    assert store["2m_temperature"].dtype == src["t2m"].dtype
    np.testing.assert_array_equal(store["2m_temperature"].values, src["t2m"].values)
    stats = store.attrs[STATS_ATTR]["2m_temperature"]
    assert stats["mean"] == pytest.approx(float(src["t2m"].values.astype(np.float64).mean()), rel=1e-12)
    assert stats["tendency_std"] == pytest.approx(float(np.diff(src["t2m"].values.astype(np.float64), axis=0).std()))
    assert store.attrs["ensemble_member"] == "none"


@needs_data
def test_uk_store_has_an_hour_of_day_climatology(uk):
    path, _, src = uk
    # one month: too short for a day-of-year climatology, long enough for hour of day (31 samples per hour)
    clim = xr.open_zarr(path, group="climatology", chunks=None)
    assert clim.attrs["grouping"] == "time.hour" and clim.sizes["hour"] == 24
    expected = src["t2m"].groupby("time.hour").mean("time")
    np.testing.assert_allclose(clim["2m_temperature"].values, expected.values, rtol=1e-6)


def test_two_years_give_a_day_of_year_climatology(tmp_path):
    times = pd.date_range("2019-01-01", "2020-12-31", freq="1D")  # 2020 is a leap year: day 366 once
    rng = np.random.default_rng(0)
    src = xr.Dataset({"t2m": (("time", "latitude", "longitude"), rng.random((len(times), 4, 8), np.float32))},
                     coords={"time": times, "latitude": [60.0, 20.0, -20.0, -60.0], "longitude": np.arange(8) * 45.0})
    out = prepare([netcdf(src, tmp_path / "two_years.nc")], str(tmp_path / "s.zarr"), lat_chunk=4)
    clim = xr.open_zarr(out, group="climatology", chunks=None)
    assert dict(clim.sizes) == {"dayofyear": 366, "hour": 1, "latitude": 4, "longitude": 8}
    expected = src["t2m"].groupby(["time.dayofyear", "time.hour"]).mean("time").transpose("dayofyear", "hour", ...)
    np.testing.assert_allclose(clim["2m_temperature"].values, expected.values, rtol=1e-6)


@needs_data
@pytest.mark.parametrize("path", [MEMBERS_NC, MEMBERS_GRIB], ids=["netcdf", "grib"])
def test_members_files_keep_one_member_and_the_chosen_levels(tmp_path, path):
    src = xr.open_dataset(path, **(GRIB if path.endswith(".grib") else {}))
    out = prepare([path], str(tmp_path / "m.zarr"), variables=["z", "temperature"], levels=[500], member=3,
                  lat_chunk=16, climatology=False)
    store = xr.open_zarr(out, chunks=None)
    assert store.attrs["ensemble_member"] == 3 and list(store["level"].values) == [500]
    assert store["geopotential"].dims == ("time", "level", "latitude", "longitude")
    np.testing.assert_array_equal(store["time"].values, src["valid_time"].values)
    np.testing.assert_array_equal(store["latitude"].values, src["latitude"].values)  # 90 -> -90, poles included
    np.testing.assert_array_equal(store["longitude"].values, src["longitude"].values)  # 0 -> 357
    for wb2, short in (("geopotential", "z"), ("temperature", "t")):
        direct = src[short].sel(number=3, isobaricInhPa=[500])
        assert store[wb2].dtype == direct.dtype  # float64 in the netCDF, float32 in the GRIB: kept
        np.testing.assert_array_equal(store[wb2].values, direct.values)
    assert "climatology" not in zarr.open_group(out, mode="r")


@needs_data
def test_grib_and_netcdf_of_the_same_data_give_the_same_store(tmp_path):
    a = xr.open_zarr(prepare([MEMBERS_NC], str(tmp_path / "a.zarr"), lat_chunk=64, climatology=False))
    b = xr.open_zarr(prepare([MEMBERS_GRIB], str(tmp_path / "b.zarr"), lat_chunk=64, climatology=False))
    assert a.attrs["ensemble_member"] == 0
    for var in ("geopotential", "temperature"):  # the netCDF was decoded from GRIB by another ecCodes, in
        # double precision: the two agree to float32 rounding, not bit for bit (each store equals its source)
        np.testing.assert_allclose(a[var].values, b[var].values, rtol=1e-7, atol=0)


# ---- other conventions and several files ---------------------------------------------------------------
def test_wb2_zarr_with_ascending_latitude_wrapped_longitude_and_transposed_dims(tmp_path):
    ds = synth_dataset(9, 16, 4, seed=3)
    ds = ds.isel(latitude=slice(None, None, -1))  # ascending
    ds = ds.roll(longitude=4, roll_coords=True)  # 270 ... 337.5, 0 ... 247.5: wraps through 0 deg E
    ds = ds.transpose("time", "level", "longitude", "latitude")
    ds["level"].attrs = {"units": "hPa", "long_name": "pressure_level"}  # as in WB2's ERA5 stores
    ds.to_zarr(str(tmp_path / "wb2.zarr"))
    out = prepare([str(tmp_path / "wb2.zarr")], str(tmp_path / "s.zarr"), lat_chunk=8, climatology=False)
    store = xr.open_zarr(out, chunks=None)
    lon = ds["longitude"].values
    np.testing.assert_array_equal(store["longitude"].values, np.where(lon >= 270, lon - 360, lon))  # same points
    np.testing.assert_array_equal(store["latitude"].values, ds["latitude"].values)
    assert store["level"].attrs == ds["level"].attrs  # kept, so that forecast.zarr carries them too
    for var in ds.data_vars:
        assert store[var].dims[-2:] == ("latitude", "longitude")
        np.testing.assert_array_equal(store[var].values, ds[var].transpose(*store[var].dims).values)
    ws = WeatherStore(out, ["temperature"], ["2m_temperature"], [500], static_variables=["land_sea_mask"])
    full = ws.read_raw([2], slice(0, 9), slice(0, 16))
    np.testing.assert_array_equal(full[0, 0], ds["temperature"].isel(time=2, level=0).transpose().values)


def test_monthly_files_surface_and_static_files_are_combined(tmp_path, capsys):
    src = small_source(n_times=9)
    src = src.isel(time=[0, 1, 2, 3, 5, 6, 7, 8])  # a gap between the two "months"
    upper, surface = src[["t", "z"]], src[["t2m"]]
    files = [netcdf(upper.isel(time=slice(4, 8)), tmp_path / "upper-2.nc"),  # order of arguments does not matter
             netcdf(upper.isel(time=slice(0, 4)), tmp_path / "upper-1.nc"),
             netcdf(surface.isel(time=slice(0, 4)), tmp_path / "sfc-1.nc"),
             netcdf(surface.isel(time=slice(4, 8)), tmp_path / "sfc-2.nc"),
             netcdf(synth_dataset(9, 16, 1, seed=2)[["land_sea_mask"]].rename(land_sea_mask="lsm")  # as ERA5's
                    .expand_dims("time").assign_coords(time=src["time"].values[:1]), tmp_path / "c.nc")]
    out = prepare(files, str(tmp_path / "s.zarr"), lat_chunk=4, time_block=2, progress=True)
    err = capsys.readouterr().err
    assert "4/4" in err and "MB/s" in err  # the progress bar: blocks done / total
    store = xr.open_zarr(out, chunks=None)
    assert set(store.data_vars) == {"temperature", "geopotential", "2m_temperature", "land_sea_mask"}
    np.testing.assert_array_equal(store["time"].values, src["time"].values)
    np.testing.assert_array_equal(store["temperature"].values, src["t"].values)
    np.testing.assert_array_equal(store["2m_temperature"].values, src["t2m"].values)
    assert store["land_sea_mask"].dims == ("latitude", "longitude")
    # no (state, target) pair spans the gap
    assert list(store["trajectory"].values) == [0, 0, 0, 0, 1, 1, 1, 1]
    assert store["temperature"].encoding["chunks"] == (1, 2, 4, 16)  # one time, all levels, one patch row


# ---- bad input -----------------------------------------------------------------------------------------
@needs_data
def test_missing_variable_or_level_names_file_variable_and_coordinate(tmp_path):
    with pytest.raises(SourceError, match=r"era5-levels-members.nc: no variable 'specific_humidity' \(variables "
                                          r"there: 'geopotential' \('z' in the file\)"):
        prepare([MEMBERS_NC], str(tmp_path / "x.zarr"), variables=["q"])
    with pytest.raises(SourceError, match=r"era5-levels-members.nc: variable 'geopotential' \('z' in the file\) has "
                                          r"no level 700 hPa on coordinate 'level' \('isobaricInhPa' in the file\)"):
        prepare([MEMBERS_NC], str(tmp_path / "x.zarr"), levels=[500, 700])
    with pytest.raises(SourceError, match=r"ensemble member 12 is not on coordinate 'number'"):
        prepare([MEMBERS_NC], str(tmp_path / "x.zarr"), member=12)
    assert not os.listdir(tmp_path)


def test_nan_in_block_k_stops_the_job_and_a_run_after_the_fix_resumes(tmp_path):
    src = small_source()
    good = netcdf(src, tmp_path / "good.nc")
    reference = xr.open_zarr(prepare([good], str(tmp_path / "ref.zarr"), lat_chunk=4, time_block=1), chunks=None)
    src["t"][2, 1, 3, 5] = np.nan
    path = netcdf(src, tmp_path / "nan.nc")
    out = str(tmp_path / "x.zarr")
    with pytest.raises(SourceError, match=r"nan.nc: variable 'temperature' \('t' in the file\) has NaN/inf at "
                                          r"'time'=2020-01-01T12.*'level' \('isobaricInhPa' in the file\)=850, "
                                          r"'latitude'=22.5, 'longitude'=112.5"):
        prepare([path], out, lat_chunk=4, time_block=1)
    # nothing that looks complete, but block 0 is kept for a resume (block 1 failed too: it reads time 2 for
    # the tendency pair across its end)
    assert not os.path.exists(out)
    assert os.listdir(tmp_path / "x.zarr.partial" / ".jigsaw-prepare" / "blocks") == ["00000000.json"]
    kept = chunk_mtimes(out + ".partial", [0])
    os.replace(good, path)  # the fix: same layout, finite values
    store = xr.open_zarr(prepare([path], out, lat_chunk=4, time_block=1), chunks=None)
    assert chunk_mtimes(out, [0]) == kept  # the regions written before the error were not written again
    xr.testing.assert_identical(store.drop_attrs(deep=False), reference.drop_attrs(deep=False))
    assert store.attrs[STATS_ATTR] == reference.attrs[STATS_ATTR]


@pytest.mark.parametrize("dim, error", [("latitude", "duplicated"), ("longitude", "out of order"),
                                        ("time", "duplicated")])
def test_bad_coordinates_are_refused(tmp_path, dim, error):
    src = small_source()
    values = src[dim].values.copy()
    if error == "duplicated":
        values[2] = values[1]
    else:
        values[[1, 2]] = values[[2, 1]]
    path = netcdf(src.assign_coords({dim: values}), tmp_path / "bad.nc")
    with pytest.raises(SourceError, match=rf"bad.nc: coordinate '{dim}' is not strictly monotonic: .* is {error}"):
        prepare([path], str(tmp_path / "x.zarr"))


def test_overlapping_files_and_mismatched_grids_are_refused(tmp_path):
    src = small_source(n_times=6)
    a = netcdf(src.isel(time=slice(0, 4)), tmp_path / "a.nc")
    b = netcdf(src.isel(time=slice(3, 6)), tmp_path / "b.nc")
    with pytest.raises(SourceError, match=r"a.nc and .*b.nc: coordinate 'time' overlaps"):
        prepare([a, b], str(tmp_path / "x.zarr"))
    other = small_source(n_lat=7)[["t2m"]].rename(t2m="msl")
    c = netcdf(other, tmp_path / "c.nc")
    with pytest.raises(SourceError, match=r"a.nc, .*c.nc: coordinate 'latitude' differs"):
        prepare([a, c], str(tmp_path / "x.zarr"))


def test_grid_that_does_not_fit_the_model_config_is_refused(tmp_path):
    path = netcdf(small_source(n_lon=18), tmp_path / "s.nc")
    cfg = tmp_path / "cfg.json"
    cfg.write_text(json.dumps({"model": {"patch": 4}, "data": {"store": "x", "surface_variables": ["t2m"]}}))
    from jigsaw_ds.config import ConfigError

    with pytest.raises(ConfigError, match=r"'model.patch' = 4 does not divide the 18 longitudes"):
        prepare([path], str(tmp_path / "x.zarr"), config=str(cfg))
    with pytest.raises(ValueError, match=r"--lat-chunk 6 is not a multiple of the patch 4"):
        prepare([path], str(tmp_path / "x.zarr"), lat_chunk=6)


def test_unreadable_files_are_named(tmp_path):
    for name in ("junk.grib", "junk.nc", "missing.nc"):
        if name != "missing.nc":
            (tmp_path / name).write_bytes(b"not a weather file" * 10)
        with pytest.raises(SourceError, match=rf"{name}: (cannot be read as (grib|netcdf)|no such file)"):
            prepare([str(tmp_path / name)], str(tmp_path / "x.zarr"))


def test_store_with_other_statistics_is_refused(tmp_path):
    out = prepare([netcdf(small_source(), tmp_path / "s.nc")], str(tmp_path / "s.zarr"), lat_chunk=4)
    group = zarr.open_group(out, mode="r+")
    stats = dict(group.attrs[STATS_ATTR])
    del stats["temperature_850"]
    group.attrs[STATS_ATTR] = stats
    zarr.consolidate_metadata(out)
    with pytest.raises(StoreError, match=r"statistics lack channels \['temperature_850'\]"):
        WeatherStore(out, ["temperature"], [], [500, 850])


def test_interrupted_ingest_keeps_the_old_store_until_the_new_one_is_complete(tmp_path, monkeypatch, capsys):
    path = netcdf(small_source(), tmp_path / "s.nc")
    out = prepare([path], str(tmp_path / "s.zarr"), variables=["t2m"], lat_chunk=4)

    def interrupt(*a, **k):
        raise KeyboardInterrupt

    with monkeypatch.context() as m:
        m.setattr(parallel_prepare.stats, "statistics", interrupt)  # after the blocks, before the rename
        with pytest.raises(KeyboardInterrupt):
            prepare([path], out, lat_chunk=4, overwrite=True)  # other arguments: replacing needs overwrite
    assert os.path.exists(out + ".partial")  # kept for a resume
    assert set(xr.open_zarr(out).data_vars) == {"2m_temperature"}  # the earlier, complete store
    capsys.readouterr()
    prepare([path], out, lat_chunk=4, overwrite=True)
    assert "resuming" in capsys.readouterr().err and not os.path.exists(out + ".partial")
    assert set(xr.open_zarr(out).data_vars) == {"2m_temperature", "temperature", "geopotential"}
    mtime = os.stat(os.path.join(out, "zarr.json")).st_mtime_ns
    prepare([path], out, lat_chunk=4)  # the same again: nothing to do
    assert "is complete" in capsys.readouterr().err and os.stat(os.path.join(out, "zarr.json")).st_mtime_ns == mtime


# ---- the command ---------------------------------------------------------------------------------------
@pytest.mark.multirank
def test_cli_prepare_and_its_errors(tmp_path, capsys):
    path = netcdf(small_source(), tmp_path / "s.nc")
    assert cli_main(["prepare", path, "--out", str(tmp_path / "s.zarr"), "--levels", "850", "--lat-chunk", "8"]) == 0
    out = capsys.readouterr().out
    assert "grid: 9 x 16" in out and "channels: 2m_temperature, geopotential_850, temperature_850" in out
    assert cli_main(["prepare", path, "--out", str(tmp_path / "n.zarr"), "--levels", "850", "--lat-chunk", "8",
                     "--no-checksum"]) == 0
    for store, chain in (("s.zarr", ["bytes", "blosc", "crc32c"]), ("n.zarr", ["bytes", "blosc"])):
        meta = json.load(open(tmp_path / store / "temperature" / "zarr.json"))
        assert [c["name"] for c in meta["codecs"][0]["configuration"]["codecs"]] == chain, store
    xr.testing.assert_equal(xr.open_zarr(tmp_path / "s.zarr").load(), xr.open_zarr(tmp_path / "n.zarr").load())
    capsys.readouterr()
    assert cli_main(["prepare", path, "--out", str(tmp_path / "t.zarr"), "--levels", "700"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("jigsaw-data prepare: error: ") and "no level 700 hPa" in err and "\n" not in err


# ---- sources that used to pass with wrong results ------------------------------------------------------
@needs_data
def test_truncated_grib_is_refused_naming_the_last_good_message(tmp_path, capsys):
    cut = tmp_path / "uk-cut.grib"
    with open(UK, "rb") as f:
        cut.write_bytes(f.read(1_250_000))  # 372 whole messages of 3360 bytes, then part of the 373rd
    with pytest.raises(SourceError, match=r"uk-cut.grib: cannot be read whole: GRIB message 373 is cut short or "
                                          r"corrupt .* the last good message is 372 \('2t' .* valid 20190316 1100\)"):
        prepare([str(cut)], str(tmp_path / "x.zarr"))
    assert cli_main(["prepare", str(cut), "--out", str(tmp_path / "x.zarr"), "--workers", "0"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1].startswith("jigsaw-data prepare: error: ") and "last good message is 372" in err[-1]
    assert sorted(os.listdir(tmp_path)) == ["uk-cut.grib"]  # nothing written


@pytest.mark.parametrize("change, dim, what", [
    (lambda ds: ds.assign_coords(longitude=ds["longitude"] + 0.5), "'longitude'", r"value 0.0 vs 0.5 at index 0"),
    (lambda ds: ds.assign_coords(isobaricInhPa=[600, 850]), r"'level' \('isobaricInhPa' in the file\)",
     r"value 500 vs 600 at index 0"),
    (lambda ds: ds.assign_coords(latitude=ds["latitude"] * 0.5), "'latitude'", r"value 90.0 vs 45.0 at index 0"),
    (lambda ds: small_source(n_lat=7, n_times=8).isel(time=slice(4, 8)), "'latitude'", r"9 values vs 7"),
], ids=["lon-shifted", "levels-relabelled", "lat-scaled", "lat-size"])
def test_files_joined_along_time_must_share_their_grid_exactly(tmp_path, capsys, change, dim, what):
    src = small_source(n_times=8)
    a = netcdf(src.isel(time=slice(0, 4)), tmp_path / "a.nc")
    b = netcdf(change(src.isel(time=slice(4, 8))), tmp_path / "b.nc")
    message = rf".*a.nc and .*b.nc: coordinate {dim} differs \({what}\); files joined along time must share"
    with pytest.raises(SourceError, match=message):
        prepare([b, a], str(tmp_path / "x.zarr"))
    assert cli_main(["prepare", a, b, "--out", str(tmp_path / "x.zarr"), "--workers", "0"]) == 2
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and err.startswith("jigsaw-data prepare: error: ") and "Traceback" not in err
    assert not os.path.exists(tmp_path / "x.zarr.partial")


def test_variables_with_unknown_names_are_kept_and_listed(tmp_path, capsys):
    src = small_source()
    src = src.assign(tcc=src["t2m"] * 0 + 0.5, my_index=src["t2m"] * 2)
    out = prepare([netcdf(src, tmp_path / "s.nc")], str(tmp_path / "s.zarr"), lat_chunk=4, climatology=False)
    notes = [line for line in capsys.readouterr().err.splitlines() if "does not know" in line]
    assert len(notes) == 1 and "'my_index' (" in notes[0] and "'tcc' (" in notes[0] and "s.nc" in notes[0]
    assert "2m_temperature" not in notes[0]
    np.testing.assert_array_equal(xr.open_zarr(out)["my_index"].values, src["my_index"].values)


def test_synth_varies_in_time_at_every_level_including_1000_hpa(tmp_path):
    from jigsaw_ds.data.writer import write_store

    levels = (50, 500, 850, 925, 1000)
    path = write_store(synth_dataset(9, 16, 6, levels=levels), str(tmp_path / "s.zarr"))
    store = WeatherStore(path, ["geopotential", "temperature", "u_component_of_wind"], [], list(levels))
    assert (store.tendency_std > 0).all()


def grib_with_gap(path) -> str:
    """The UK GRIB without hours 48-59: the real messages, one gap."""
    import cfgrib

    offsets = [o for o, _ in cfgrib.FileStream(UK).items()]
    raw = open(UK, "rb").read()
    ends = offsets[1:] + [len(raw)]
    keep = list(range(48)) + list(range(60, 100))
    path.write_bytes(b"".join(raw[offsets[i]:ends[i]] for i in keep))
    return str(path)


@pytest.mark.parametrize("kind", ["zarr", "netcdf", "grib"])
def test_a_gap_starts_a_trajectory_whatever_the_source(tmp_path, kind):
    if kind == "grib":
        if not os.path.exists(UK):
            pytest.skip("../shared/data is not there")
        path, n, gap = grib_with_gap(tmp_path / "gap.grib"), 88, 48
    else:
        src = synth_dataset(9, 16, 10, seed=4).isel(time=[0, 1, 2, 3, 6, 7, 8, 9])
        path, n, gap = str(tmp_path / f"gap.{'zarr' if kind == 'zarr' else 'nc'}"), 8, 4
        src.to_zarr(path) if kind == "zarr" else src.to_netcdf(path)
    store = xr.open_zarr(prepare([path], str(tmp_path / "s.zarr"), lat_chunk=36, time_block=3, climatology=False))
    np.testing.assert_array_equal(store["trajectory"].values, np.repeat([0, 1], [gap, n - gap]))


def test_a_source_store_keeps_its_trajectories(tmp_path):
    """A store made of several runs on a regular time axis (jigsaw-data swe) re-prepared: its runs stay apart."""
    src = synth_dataset(9, 16, 8, seed=4).assign_coords(trajectory=("time", [0, 0, 0, 1, 1, 1, 2, 2]))
    src.to_zarr(str(tmp_path / "runs.zarr"))
    out = prepare([str(tmp_path / "runs.zarr")], str(tmp_path / "s.zarr"), lat_chunk=4, climatology=False)
    store = xr.open_zarr(out)
    np.testing.assert_array_equal(store["trajectory"].values, [0, 0, 0, 1, 1, 1, 2, 2])
    x = src["2m_temperature"].values.astype(np.float64)
    pairs = (x[1:] - x[:-1])[[0, 1, 3, 4, 6]]
    assert store.attrs[STATS_ATTR]["2m_temperature"]["tendency_std"] == pytest.approx(pairs.std(), rel=1e-12)


# ---- --grid: regridding ----------------------------------------------------------------------------------
def analytic_source(path, lat, lon, n_times=3) -> xr.Dataset:
    """A float64 WB2-style source: 2m_temperature linear in latitude and longitude, temperature periodic in
    longitude (cos) and linear in latitude, surface pressure linear in latitude only; written to `path`."""
    t = np.arange(n_times, dtype=np.float64)[:, None, None]
    la, lo = lat[None, :, None], lon[None, None, :]
    ds = xr.Dataset({
        "2m_temperature": (("time", "latitude", "longitude"), 280.0 + (0.3 + 0.1 * t) * la + (0.05 - 0.01 * t) * lo),
        "surface_pressure": (("time", "latitude", "longitude"),
                             np.broadcast_to(1e5 + (20.0 + t) * la, (n_times, len(lat), len(lon))).copy()),
        "temperature": (("time", "level", "latitude", "longitude"),
                        (250.0 + 0.2 * la + (10.0 + t) * np.cos(np.deg2rad(lo)))[:, None] + np.zeros((1, 2, 1, 1))),
    }, coords={"time": pd.date_range("2020-01-01", periods=n_times, freq="6h").values, "level": [500, 850],
               "latitude": lat, "longitude": lon})
    ds.to_zarr(str(path))
    return ds


def regrid_ok(capsys, src, out, grid, *argv) -> xr.Dataset:
    assert cli_main(["prepare", str(src), "--out", str(out), "--grid", grid, "--workers", "0", "--no-climatology",
                     "--lat-chunk", "4", *argv]) == 0
    capsys.readouterr()
    return xr.open_zarr(str(out), chunks=None)


@pytest.mark.parametrize("order", ["descending", "ascending"])
def test_regrid_is_exact_for_linear_fields_keeps_the_seam_and_records_the_method(tmp_path, capsys, order):
    """19 x 36 (10 deg) -> 37 x 72 (5 deg) through the CLI: bilinear interpolation reproduces a field linear in
    latitude and longitude in every cell (the seam cell 350 .. 360 excepted: lon is not periodic there),
    one linear in latitude everywhere; at 355 deg a periodic field is the mean of the last and first columns;
    the latitude order is the source's, and attrs['regrid'] says how the store was made."""
    lat = np.linspace(90.0, -90.0, 19) if order == "descending" else np.linspace(-90.0, 90.0, 19)
    lon = np.arange(36) * 10.0
    src = analytic_source(tmp_path / "src.zarr", lat, lon)
    store = regrid_ok(capsys, tmp_path / "src.zarr", tmp_path / "r.zarr", "37x72")
    new_lat, new_lon = store["latitude"].values, store["longitude"].values
    np.testing.assert_array_equal(new_lat, np.linspace(lat[0], lat[-1], 37))  # poles included, source's order
    np.testing.assert_array_equal(new_lon, np.arange(72) * 5.0)
    t = np.arange(3.0)[:, None, None]
    la, lo = new_lat[None, :, None], new_lon[None, None, :]
    t2m = store["2m_temperature"].values
    assert t2m.dtype == np.float64
    inside = new_lon <= lon[-1]  # every target column but 355, which lies in the seam cell
    np.testing.assert_allclose(t2m[..., inside], (280.0 + (0.3 + 0.1 * t) * la + (0.05 - 0.01 * t) * lo)[..., inside],
                               rtol=1e-13, atol=0)
    np.testing.assert_allclose(store["surface_pressure"].values, np.broadcast_to(1e5 + (20.0 + t) * la, t2m.shape),
                               rtol=1e-14, atol=0)  # linear in latitude: exact at the seam too
    temp, src_t = store["temperature"].values, src["temperature"].values
    np.testing.assert_allclose(temp[..., ::2, -1], 0.5 * (src_t[..., -1] + src_t[..., 0]), rtol=1e-14, atol=0)
    np.testing.assert_array_equal(temp[..., ::2, ::2], src_t)  # target points that are source points: copied
    np.testing.assert_array_equal(t2m[..., ::2, ::2], src["2m_temperature"].values)
    assert store.attrs["regrid"] == {"method": "bilinear (numpy.interp: latitude, then longitude, periodic)", "source_grid": "19x36", "grid": "37x72",
                                     "source_latitude": f"{lat[0]:g} .. {lat[-1]:g}", "source_longitude": "0 .. 350",
                                     "seam": "periodic in longitude"}
    x = t2m.astype(np.float64)  # the statistics are those of the regridded values
    assert store.attrs[STATS_ATTR]["2m_temperature"]["mean"] == pytest.approx(x.mean(), rel=1e-12)
    assert store.attrs[STATS_ATTR]["2m_temperature"]["tendency_std"] == pytest.approx(np.diff(x, axis=0).std(), rel=1e-9)


def test_regrid_of_a_float32_store_copies_coincident_points_and_its_static_fields(tmp_path, capsys):
    """ERA5-like: a float32 synth store (descending latitudes with poles, 0 .. 350 deg), refined 2x: every
    variable, static fields included, keeps its dtype and equals the source at the source's points."""
    src = synth_dataset(19, 36, 4, seed=5)
    src.to_zarr(str(tmp_path / "src.zarr"))
    store = regrid_ok(capsys, tmp_path / "src.zarr", tmp_path / "r.zarr", "37x72")
    for var, da in src.data_vars.items():
        assert store[var].dtype == np.float32 and store[var].shape[-2:] == (37, 72), var
        np.testing.assert_array_equal(store[var].values[..., ::2, ::2], da.values, err_msg=var)


@pytest.mark.parametrize("lat, lon, lacks", [
    (np.linspace(60.0, 30.0, 7), np.arange(9) * 5.0, "both poles and the whole circle of longitudes"),  # a box
    (np.linspace(85.0, -85.0, 18), np.arange(36) * 10.0, "both poles"),  # cell centres: no pole rows
    (np.linspace(90.0, -90.0, 19), np.arange(30) * 10.0, "the whole circle of longitudes"),  # 0 .. 290 deg
], ids=["regional", "no-poles", "part-of-the-circle"])
def test_regrid_outside_the_source_is_refused_naming_both_grids(tmp_path, capsys, lat, lon, lacks):
    analytic_source(tmp_path / "src.zarr", lat, lon)
    out = tmp_path / "r.zarr"
    assert cli_main(["prepare", str(tmp_path / "src.zarr"), "--out", str(out), "--grid", "37x72",
                     "--workers", "0"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("jigsaw-data prepare: error: ") and "\n" not in err, err
    assert f"--grid 37x72 (latitude 90 .. -90, longitude 0 .. 355: global, with both poles) lies outside the " \
           f"source grid {len(lat)}x{len(lon)} (latitude {lat[0]:g} .. {lat[-1]:g}" in err, err
    assert f"which lacks {lacks}:" in err, err
    assert not os.path.exists(out) and not os.path.exists(f"{out}.partial")  # refused before any work

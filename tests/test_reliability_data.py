"""Stores and sources that used to be trained on, or ingested, with wrong values and exit 0: CF-packed
variables read as raw integers, grids without (or with radian) coordinates, time axes that are not dates,
and `prepare --out` over a directory it did not write. Each is now one error naming store or file.

Prepare runs in this process (`--workers 0`) on tiny grids; WeatherStore and the trainer's checks likewise.
"""
import os
import re

import numpy as np
import pytest
import xarray as xr
import zarr

from test_prepare import netcdf, small_source
from test_reliability import cli_error, one_error, write_configs
from jigsaw_ds.data.cli import main as data_main
from jigsaw_ds.data.stats import StreamingStatistics
from jigsaw_ds.data.store import STATS_ATTR, StoreError, WeatherStore, trajectories
from jigsaw_ds.data.synth import synth_dataset
from jigsaw_ds.data.writer import write_store

PACKED = {"dtype": "int16", "scale_factor": 0.01, "add_offset": 280.0, "_FillValue": -32768}


def xarray_store(ds: xr.Dataset, path, encoding=None) -> str:
    """A zarr store as `xarray.Dataset.to_zarr` writes it (what users bring, not the project's writer), with
    the statistics of its decoded values (data/stats.py), so that the trainer gets as far as its defect."""
    path = str(path)
    ds.to_zarr(path, mode="w", encoding=encoding or {})
    written = xr.open_zarr(path, chunks=None)
    stats = StreamingStatistics(trajectories(written))
    stats.add(written.load())  # small: one block
    zarr.open_group(path, mode="r+").attrs[STATS_ATTR] = stats.result(written)
    zarr.consolidate_metadata(path)
    return path


def prepare_error(capsys, *argv) -> str:
    assert data_main(["prepare", *argv, "--workers", "0"]) == 2
    return one_error(capsys.readouterr().err)


def prepare_ok(capsys, *argv) -> None:
    assert data_main(["prepare", *argv, "--workers", "0", "--no-climatology", "--lat-chunk", "4"]) == 0
    capsys.readouterr()


# ---- CF packing: tensorstore reads the raw integers ----------------------------------------------------------
def test_a_cf_packed_store_is_refused_naming_variable_and_prepare(tmp_path):
    ds = synth_dataset(9, 16, 6, seed=1)
    path = xarray_store(ds, tmp_path / "packed.zarr",
                        {"2m_temperature": PACKED, "land_sea_mask": {"dtype": "int8", "_FillValue": -1}})
    on_disk = zarr.open_array(os.path.join(path, "2m_temperature"), mode="r")  # what such a store really holds
    assert on_disk.dtype == np.int16 and on_disk.attrs["scale_factor"] == 0.01
    message = (rf"data store '{re.escape(path)}': variable '2m_temperature' is stored as int16 with CF attributes "
               rf"scale_factor=0.01, add_offset=280.0, _FillValue=-32768 that the reader does not apply .*"
               rf"convert it with `jigsaw-data prepare {re.escape(path)} --out NEW.zarr`")
    with pytest.raises(StoreError, match=message):
        WeatherStore(path, ["temperature"], ["2m_temperature"], [500])
    with pytest.raises(StoreError, match=r"variable 'land_sea_mask' is stored as int8 with CF attributes "
                                         r"_FillValue=-1 that"):
        WeatherStore(path, ["temperature"], [], [500], static_variables=["land_sea_mask"])
    store = WeatherStore(path, ["temperature"], [], [500])  # the variables stored as they are still read
    np.testing.assert_array_equal(store.read_raw([2], slice(0, 9), slice(0, 16))[0, 0],
                                  ds["temperature"].isel(time=2, level=0).values)


def test_a_float_fill_value_marks_missing_points_the_scan_refuses(tmp_path):
    """A float variable whose missing points are a number (_FillValue -9999, as many netCDF and zarr writers
    use): xarray shows NaN there, and so must the reader (tensorstore's raw read gives -9999), so that the scan
    before training refuses it, naming variable, time and the fill value; a variable that never holds it passes."""
    ds = synth_dataset(9, 16, 6, seed=1)
    ds["2m_temperature"][3, 4, 5] = np.nan  # written as -9999 by the encoding below
    ds["land_sea_mask"][2, 2] = np.nan
    fill = {"dtype": "float32", "_FillValue": -9999.0}
    path = xarray_store(ds, tmp_path / "filled.zarr", {"2m_temperature": fill, "land_sea_mask": fill,
                                                       "temperature": fill})
    assert zarr.open_array(os.path.join(path, "2m_temperature"), mode="r")[3, 4, 5] == -9999.0  # on disk
    store = WeatherStore(path, [], ["2m_temperature"], [])
    read = store.read_raw([3], slice(0, 9), slice(0, 16))[0, 0]
    np.testing.assert_array_equal(read, xr.open_zarr(path)["2m_temperature"].isel(time=3).values)  # NaN at (4, 5)
    with pytest.raises(StoreError, match=r"variable '2m_temperature' has NaN/inf or missing points \(its "
                                         r"_FillValue -9999\) at time " + str(ds.time.values[3])[:19]):
        store.check_finite()
    WeatherStore(path, ["temperature"], [], [500]).check_finite()  # has the fill value, never holds it
    with pytest.raises(StoreError, match=r"static field 'land_sea_mask' has NaN/inf or missing points"):
        WeatherStore(path, ["temperature"], [], [500], static_variables=["land_sea_mask"]).check_finite()


def test_packing_that_reads_identically_is_accepted(tmp_path):
    ds = synth_dataset(9, 16, 6, seed=1)
    ds["2m_temperature"] = ds["2m_temperature"].round()
    path = xarray_store(ds, tmp_path / "ints.zarr",
                        {"2m_temperature": {"dtype": "int16", "scale_factor": 1.0, "add_offset": 0.0}})
    store = WeatherStore(path, [], ["2m_temperature"], [])
    np.testing.assert_array_equal(store.read_raw(list(range(6)), slice(0, 9), slice(0, 16))[:, 0],
                                  xr.open_zarr(path)["2m_temperature"].values)


def test_prepare_decodes_a_cf_packed_zarr(tmp_path, capsys):
    path = xarray_store(synth_dataset(9, 16, 6, seed=1), tmp_path / "packed.zarr", {"2m_temperature": PACKED})
    out = str(tmp_path / "s.zarr")
    prepare_ok(capsys, path, "--out", out)
    decoded = xr.open_zarr(path)["2m_temperature"].values  # xarray's decoding: 254.5 K, not -2550
    store = WeatherStore(out, [], ["2m_temperature"], [])
    np.testing.assert_array_equal(store.read_raw(list(range(6)), slice(0, 9), slice(0, 16))[:, 0],
                                  decoded.astype(np.float32))
    assert store.mean[0] == pytest.approx(decoded.mean(), rel=1e-6)


# ---- grid coordinates: present, in degrees, in range ----------------------------------------------------------
def _radians(ds, units=None):
    lat, lon = np.deg2rad(ds["latitude"].values), np.deg2rad(ds["longitude"].values)
    attrs = {"units": units} if units else {}
    return ds.assign_coords(latitude=("latitude", lat, attrs), longitude=("longitude", lon, attrs))


GRID_DEFECTS = {  # on a 17 x 32 grid: name -> (change, what the error says)
    "no-coordinates": (lambda ds: ds.drop_vars(["latitude", "longitude"]),
                       r"dimension 'latitude' has no coordinate values"),
    "radians": (_radians, r"coordinate 'latitude' spans 3.14 over 17 rows: radians\?"),
    "radians-units": (lambda ds: _radians(ds.isel(latitude=slice(0, None, 2)), "radians"),  # 9 rows
                      r"coordinate 'latitude' has units 'radians'"),
    "colatitude": (lambda ds: ds.assign_coords(latitude=90.0 - ds["latitude"]),
                   r"coordinate 'latitude' has values beyond \+-90 deg \(0.0 .. 180.0\)"),
    "longitude-beyond-360": (lambda ds: ds.assign_coords(longitude=ds["longitude"] * 2),
                             r"coordinate 'longitude' has values outside -180 .. 360 deg \(0.0 .. 697.5\)"),
}


@pytest.mark.parametrize("defect", list(GRID_DEFECTS))
def test_a_store_without_real_grid_coordinates_is_refused(tmp_path, defect):
    change, message = GRID_DEFECTS[defect]
    path = write_store(change(synth_dataset(17, 32, 6, seed=1)), str(tmp_path / "s.zarr"))
    with pytest.raises(StoreError, match=rf"data store '{re.escape(path)}': {message}"):
        WeatherStore(path, ["temperature"], [], [500])


@pytest.mark.parametrize("defect", list(GRID_DEFECTS))
def test_prepare_refuses_a_source_without_real_grid_coordinates(tmp_path, capsys, defect):
    change, message = GRID_DEFECTS[defect]
    path = netcdf(change(small_source(n_lat=17, n_lon=32)), tmp_path / "bad.nc")
    assert re.search(rf"bad.nc: {message}", prepare_error(capsys, path, "--out", str(tmp_path / "x.zarr")))
    assert sorted(os.listdir(tmp_path)) == ["bad.nc"]  # nothing written


def test_prepare_names_the_file_names_of_missing_coordinates(tmp_path, capsys):
    src = small_source().drop_vars(["latitude", "longitude"]).rename(latitude="lat", longitude="lon")
    err = prepare_error(capsys, netcdf(src, tmp_path / "cds.nc"), "--out", str(tmp_path / "x.zarr"))
    assert "cds.nc: dimension 'latitude' ('lat' in the file) has no coordinate values" in err


# ---- the time axis: dates, not numbers -----------------------------------------------------------------------
@pytest.mark.parametrize("hours, dtype", [(np.arange(6) * 6, "int64"), (np.arange(6) * 6.0, "float64")])
def test_a_store_whose_times_are_not_dates_is_refused(tmp_path, hours, dtype):
    path = xarray_store(synth_dataset(9, 16, 6, seed=1).assign_coords(time=hours), tmp_path / "hours.zarr")
    with pytest.raises(StoreError, match=rf"data store '{re.escape(path)}': coordinate 'time' holds {dtype} values, "
                                         rf"not dates \(datetime64\): give it CF units"):
        WeatherStore(path, ["temperature"], [], [500])


def test_prepare_decodes_cf_times_and_refuses_times_without_units(tmp_path, capsys):
    ds = small_source(n_times=6)
    hours = ((ds["time"].values - np.datetime64("1900-01-01")) // np.timedelta64(1, "h")).astype(np.int64)
    cf = netcdf(ds.assign_coords(time=("time", hours, {"units": "hours since 1900-01-01"})), tmp_path / "cf.nc")
    out = str(tmp_path / "s.zarr")
    prepare_ok(capsys, cf, "--out", out)
    store = WeatherStore(out, ["temperature"], [], [500])
    np.testing.assert_array_equal(store.times, ds["time"].values)  # 2020-01-01 ..., 6-hourly
    assert store.time_step == np.timedelta64(6, "h")
    bare = netcdf(ds.assign_coords(time=("time", hours)), tmp_path / "bare.nc")
    err = prepare_error(capsys, bare, "--out", str(tmp_path / "x.zarr"))
    assert "bare.nc: coordinate 'time' holds int64 values, not dates (datetime64)" in err
    assert not os.path.exists(tmp_path / "x.zarr") and not os.path.exists(tmp_path / "x.zarr.partial")


# ---- the trainer refuses them in one line ----------------------------------------------------------------------
@pytest.mark.parametrize("defect", ["packed", "no-coordinates", "hours"])
def test_the_trainer_refuses_such_stores_in_one_line(tmp_path, capsys, defect):
    ds = synth_dataset(17, 32, 8, seed=1)
    path = {"packed": lambda: xarray_store(ds, tmp_path / "s.zarr", {"2m_temperature": PACKED}),
            "no-coordinates": lambda: write_store(ds.drop_vars(["latitude", "longitude"]), str(tmp_path / "s.zarr")),
            "hours": lambda: xarray_store(ds.assign_coords(time=np.arange(8) * 6), tmp_path / "s.zarr")}[defect]()
    err = cli_error(capsys, write_configs(tmp_path, path, tmp_path / "run"))
    expected = {"packed": "variable '2m_temperature' is stored as int16 with CF attributes",
                "no-coordinates": "dimension 'latitude' has no coordinate values",
                "hours": "coordinate 'time' holds int64 values, not dates"}[defect]
    assert f"data store '{path}'" in err and expected in err
    assert not os.path.exists(tmp_path / "run")


# ---- prepare --out: never over what prepare did not write ------------------------------------------------------
def test_prepare_never_writes_over_a_directory_it_did_not_write(tmp_path, capsys):
    src = netcdf(small_source(), tmp_path / "s.nc")
    home = tmp_path / "home"
    home.mkdir()
    (home / "notes.txt").write_text("years of work")
    write_store(synth_dataset(9, 16, 4, seed=1), str(tmp_path / "synth.zarr"))
    for out in (home, tmp_path / "synth.zarr"):
        for extra in ([], ["--overwrite"]):
            err = prepare_error(capsys, src, "--out", str(out), *extra)
            assert f"--out {out}: is a directory that jigsaw-data prepare did not write" in err
    assert (home / "notes.txt").read_text() == "years of work"
    assert set(xr.open_zarr(tmp_path / "synth.zarr").data_vars) == set(synth_dataset(9, 16, 1).data_vars)
    (tmp_path / "file").write_text("a file")
    assert f"--out {tmp_path / 'file'}: is a file" in prepare_error(capsys, src, "--out", str(tmp_path / "file"))
    (tmp_path / "x.zarr.partial").mkdir()
    (tmp_path / "x.zarr.partial" / "mine").write_text("")
    err = prepare_error(capsys, src, "--out", str(tmp_path / "x.zarr"))
    assert f"{tmp_path / 'x.zarr.partial'}: is a directory that jigsaw-data prepare did not write" in err
    assert sorted(os.listdir(tmp_path)) == ["file", "home", "s.nc", "synth.zarr", "x.zarr.partial"]  # no .partial


def test_prepare_replaces_its_own_store_only_with_overwrite(tmp_path, capsys):
    src = netcdf(small_source(), tmp_path / "s.nc")
    (tmp_path / "empty").mkdir()
    prepare_ok(capsys, src, "--out", str(tmp_path / "empty"), "--variables", "t2m")  # an empty directory is new
    out = str(tmp_path / "empty")
    err = prepare_error(capsys, src, "--out", out, "--no-climatology", "--lat-chunk", "4")  # other arguments
    assert f"--out {out}: holds a store that jigsaw-data prepare wrote from other arguments or sources; pass " \
           f"--overwrite to replace it" in err
    assert set(xr.open_zarr(out).data_vars) == {"2m_temperature"}  # untouched
    prepare_ok(capsys, src, "--out", out, "--variables", "t2m")  # the same job: nothing to do, no flag needed
    prepare_ok(capsys, src, "--out", out, "--overwrite")
    assert set(xr.open_zarr(out).data_vars) == {"2m_temperature", "temperature", "geopotential"}


def test_generators_never_write_over_a_directory_they_did_not_write(tmp_path, capsys):
    """`jigsaw-data synth --out ~/data` (a typo) must not delete the directory: refused before generating;
    a file likewise; a store jigsaw-data wrote is replaced."""
    from jigsaw_ds.data import cli as data_cli

    home = tmp_path / "data"
    home.mkdir()
    (home / "thesis.tex").write_text("years of work")
    for out in (home, home / "thesis.tex"):
        assert data_cli.main(["synth", "--out", str(out), "--grid", "9x16", "--times", "4"]) == 2
        assert "error:" in capsys.readouterr().err
    assert (home / "thesis.tex").read_text() == "years of work"
    store = tmp_path / "s.zarr"
    for _ in range(2):  # new, then over its own store
        assert data_cli.main(["synth", "--out", str(store), "--grid", "9x16", "--times", "4"]) == 0


# ---- a store of the trained grid in another order: read in the trained order ------------------------------------
def reordered(ds: xr.Dataset, flip_lat: bool, first_column: int) -> xr.Dataset:
    """`ds` with its latitudes reversed (flip_lat) and its longitudes starting at column `first_column`, those
    past 180 deg written as negative (a monotonic -180..180-style axis, as WB2 or CDS stores differ)."""
    n = ds.sizes["longitude"]
    out = ds.isel(latitude=slice(None, None, -1) if flip_lat else slice(None),
                  longitude=(np.arange(n) + first_column) % n)
    lon = out["longitude"].values
    west = np.arange(n) < (n - first_column) % n  # the columns that now come before 0 deg
    return out.assign_coords(longitude=("longitude", np.where(west & (lon > 0), lon - 360, lon),
                                        ds["longitude"].attrs))


def test_a_reordered_store_reads_tiles_in_the_trained_order(tmp_path):
    """WeatherStore.reorder: latitudes reversed and longitudes -135..202.5 (the trained 0..337.5 from column 10):
    a tile across the store's longitude seam, an index-array tile, the static fields, the xarray view and a
    damaged chunk, against numpy on the whole field in the trained order."""
    from jigsaw_ds.model import inputs

    ds = synth_dataset(9, 16, 6, seed=1)
    trained = WeatherStore(write_store(ds, str(tmp_path / "a.zarr")), ["temperature"], ["2m_temperature"],
                           [500, 850], ["land_sea_mask"])
    path = write_store(reordered(ds, True, 10), str(tmp_path / "b.zarr"))
    store = WeatherStore(path, ["temperature"], ["2m_temperature"], [500, 850], ["land_sea_mask"])
    assert store.lon[0] == -135 and store.lat[0] == -90
    order = inputs.reorder_of(inputs.of_store(trained), inputs.of_store(store))
    assert order == (True, 6)
    store.reorder(*order)
    np.testing.assert_array_equal(store.lat, trained.lat)
    np.testing.assert_allclose(store.lon, trained.lon)
    whole = np.concatenate([ds["temperature"].transpose("time", "level", ...).values,
                            ds["2m_temperature"].values[:, None]], axis=1)  # [T, C, H, W] trained order
    times = [1, 4]
    for lon in (slice(4, 12), slice(8, 16), np.r_[14:16, 0:3]):  # 4..12: store columns 10..15 and 0..1
        np.testing.assert_array_equal(store.read_raw(times, slice(2, 7), lon), whole[times][:, :, 2:7, lon])
        np.testing.assert_array_equal(store.read_static(slice(2, 7), lon), trained.read_static(slice(2, 7), lon))
    store.check_finite(slice(None), slice(2, 7), slice(4, 12))
    view = store.ds["temperature"]
    np.testing.assert_array_equal(view.isel(time=3, level=1).values, ds["temperature"].isel(time=3, level=1).values)
    np.testing.assert_allclose(view["longitude"].values, ds["longitude"].values)
    assert view["latitude"].attrs == ds["latitude"].attrs
    assert inputs.reorder_of(inputs.of_store(trained), inputs.of_store(store)) == (False, 0)
    other = reordered(ds, True, 10).assign_coords(latitude=np.linspace(-80, 80, 9))
    assert inputs.reorder_of(inputs.of_store(trained), inputs.of_store(WeatherStore(
        write_store(other, str(tmp_path / "c.zarr")), [], ["2m_temperature"], []))) is None
    os.truncate(os.path.join(path, "2m_temperature/c/4/0/0"), 100)
    with pytest.raises(StoreError, match=r"variable '2m_temperature' at time .*chunk file '2m_temperature/c/4/0/0'"):
        store.read_raw([4], slice(2, 7), slice(4, 12))

"""WeatherBench2 metrics by hand, and a shallow-water model that beats persistence out to 72 h."""
import json
import os

import numpy as np
import pytest
import xarray as xr

from conftest import BIN, ROOT, run
from jigsaw_ds.eval.metrics import ACC, RMSE, Bias, spatial_mean
from jigsaw_ds.grid import lat_cell_weights


def field(values, lat, lon=(0.0, 90.0, 180.0, 270.0)):
    values = np.asarray(values, dtype=float)
    return xr.DataArray(values, dims=("time", "latitude", "longitude"),
                        coords={"latitude": list(lat), "longitude": list(lon)[:values.shape[-1]]})


@pytest.mark.parametrize("lat", [[90.0, 0.0, -90.0], [-60.0, 0.0, 60.0]], ids=["poles", "no-poles"])
def test_rmse_bias_acc_by_hand(lat):
    w = lat_cell_weights(lat)
    err = np.array([[[1.0, 1.0], [2.0, 2.0], [0.0, 0.0]], [[3.0, 3.0], [0.0, 0.0], [0.0, 0.0]]])
    truth = field(np.zeros((2, 3, 2)), lat, (0.0, 180.0))
    fc = truth + field(err, lat, (0.0, 180.0))
    mse_t = [(w * err[t, :, 0] ** 2).sum() / w.sum() for t in range(2)]  # spatial mean per init time
    assert RMSE().compute(fc, truth).item() == pytest.approx(np.sqrt(np.mean(mse_t)))  # sqrt last
    assert Bias().compute(fc, truth).item() == pytest.approx(np.mean([(w * err[t, :, 0]).sum() / w.sum() for t in range(2)]))
    clim = field(np.ones((2, 3, 2)), lat, (0.0, 180.0))
    truth2 = field(np.arange(12.0).reshape(2, 3, 2), lat, (0.0, 180.0))
    fa, oa = (fc - clim).values, (truth2 - clim).values
    acc_t = [(w[:, None] * fa[t] * oa[t]).sum() / np.sqrt((w[:, None] * fa[t] ** 2).sum() * (w[:, None] * oa[t] ** 2).sum())
             for t in range(2)]
    assert ACC().compute(fc, truth2, clim).item() == pytest.approx(np.mean(acc_t))


def test_perfect_forecast_and_persistence():
    rng = np.random.default_rng(0)
    lat = np.linspace(90, -90, 7)
    truth = field(rng.normal(size=(5, 7, 4)), lat)
    assert RMSE().compute(truth, truth).item() == 0.0
    assert ACC().compute(truth, truth, truth * 0).item() == pytest.approx(1.0)
    persistence = truth.shift(time=1).isel(time=slice(1, None))
    direct = np.sqrt(np.mean([(lat_cell_weights(lat)[:, None] * (truth.values[t - 1] - truth.values[t]) ** 2).mean()
                              for t in range(1, 5)]))
    assert RMSE().compute(persistence, truth.isel(time=slice(1, None))).item() == pytest.approx(direct)
    assert spatial_mean(truth * 0 + 3.0).values == pytest.approx(3.0)


@pytest.mark.multirank
def test_shallow_water_model_beats_persistence(tmp_path):
    """Held-out trajectories: a WeatherMixer trained for a few CPU minutes beats persistence at 6, 24, 72 h."""
    store = tmp_path / "swe.zarr"
    run([os.path.join(BIN, "jigsaw-data"), "swe", "--out", str(store), "--grid", "33x64", "--trajectories", "16",
         "--steps", "24", "--seed", "0"])
    ds_conf = {"zero_optimization": {"stage": 1}, "gradient_clipping": 1.0,
               "optimizer": {"type": "AdamW", "params": {"lr": 2e-3, "weight_decay": 0.01, "torch_adam": True}},
               "scheduler": {"type": "WarmupCosineLR", "params": {"warmup_min_ratio": 0.1, "cos_min_ratio": 0.05}}}
    (tmp_path / "ds.json").write_text(json.dumps(ds_conf))
    run([os.path.join(BIN, "jigsaw-train"), "--config", os.path.join(ROOT, "configs", "swe_small.json"),
         "--deepspeed_config", str(tmp_path / "ds.json"), "--set", f"data.store={store}", "--set", "parallel.domain=1",
         "--set", f"train.out_dir={tmp_path / 'run'}", "--set", "train.steps=400", "--set", "train.warmup_fraction=0.05",
         "--set", "train.progress=false"])
    out = tmp_path / "eval"  # the run directory itself: its newest sharded checkpoint, read in one process
    run([os.path.join(BIN, "jigsaw-eval"), "--checkpoint", str(tmp_path / "run"), "--data", str(store),
         "--out", str(out), "--lead-steps", "12", "--inits", "16"])
    rows = json.load(open(out / "scores.json"))["rows"]
    for channel in ("geopotential_500", "u_component_of_wind_500", "v_component_of_wind_500"):
        for lead in (6, 24, 72):
            r = next(r for r in rows if r["channel"] == channel and r["lead_hours"] == lead and r["metric"] == "rmse"
                     and r["region"] == "global")
            assert r["model"] < r["persistence"], r
    fc = xr.open_zarr(out / "forecast.zarr")
    assert fc["geopotential"].dims == ("time", "prediction_timedelta", "level", "latitude", "longitude")
    assert fc.sizes["prediction_timedelta"] == 12 and fc.sizes["time"] == 16
    assert int(fc["prediction_timedelta"].values[-1] / np.timedelta64(1, "h")) == 72
    for name in ("scores.csv", "rmse.png", "acc.png", "maps_geopotential_500.png", "spectra.png", "scores_model.nc"):
        assert (out / name).stat().st_size > 0


def test_climatology_groups_by_day_of_year_and_hour_when_covered():
    """Two years 6-hourly: by (day of year, hour); a month: by hour; one sample per hour: one mean."""
    from jigsaw_ds.data.climatology import Climatology, grouping

    two_years = np.arange("2001-01-01", "2003-01-01", np.timedelta64(6, "h"), dtype="datetime64[h]")
    assert grouping(two_years) == ("dayofyear", "hour")
    month = two_years[:31 * 4]
    assert grouping(month) == ("hour",)
    assert grouping(month[:4]) is None
    # the state is the hour of day + 100 x month: the hour climatology of a month is exact; the mean of
    # its group, looked up at a later valid time, comes back
    value = lambda t: np.full((1, 2, 2), t.astype("datetime64[h]").astype(int) % 24 + 100 * (t.astype("datetime64[M]").astype(int) % 12), float)
    clim = Climatology(month, lambda i: value(month[i]))
    valid = np.array([["2001-03-05T06", "2001-03-05T18"]], dtype="datetime64[h]")
    np.testing.assert_allclose(clim.at(valid)[..., 0, 0, 0], [[6, 18]])
    yearly = Climatology(two_years, lambda i: value(two_years[i]))
    assert yearly.by == ("dayofyear", "hour")
    np.testing.assert_allclose(yearly.at(valid)[..., 0, 0, 0], [[206, 218]])  # March: month index 2
    leap_day_366 = np.array(["2004-12-31T06"], dtype="datetime64[h]")  # grouped with day 365
    np.testing.assert_allclose(yearly.at(leap_day_366)[..., 0, 0, 0], [1106])


# ---- parallel evaluation: any layout computes the serial scores, no rank holds a whole field --------------------
@pytest.fixture(scope="module")
def serial_eval(tmp_path_factory, synth_store):
    """A model trained 2 steps in one process (its sharded checkpoint), evaluated in one process."""
    from test_checkpoint import configs, train

    tmp = tmp_path_factory.mktemp("peval")
    args = configs(tmp, synth_store, tmp / "run")
    proc = train(args, 1, ["--set", "parallel.domain=1", "--set", "parallel.tensor=1", "--set", "train.steps=2",
                           "--set", "train.ckpt_every=2", "--set",
                           'data.variables=["temperature", "u_component_of_wind", "v_component_of_wind"]'])
    assert proc.returncode == 0, proc.stderr[-3000:]
    run([os.path.join(BIN, "jigsaw-eval"), "--checkpoint", str(tmp / "run"), "--data", synth_store, "--out",
         str(tmp / "serial"), "--lead-steps", "3", "--inits", "6", "--no-plots"])
    return tmp, json.load(open(tmp / "serial" / "scores.json"))


def check_provenance(fc: xr.Dataset, run_dir, data: str, command: str) -> None:
    """A forecast of the serial_eval run says what made it, from what, how and when."""
    import jigsaw_ds

    assert fc.attrs["model_checkpoints"] == [str(run_dir / "checkpoints" / "step_00000002")]
    assert fc.attrs["model_steps"] == [2] and fc.attrs["model_runs"] == [str(run_dir)]
    assert fc.attrs["channels"] == [f"{v}_{lev}" for v in ("temperature", "u_component_of_wind", "v_component_of_wind")
                                    for lev in (500, 850)] + ["2m_temperature"]
    assert fc.attrs["data"] == data
    assert fc.attrs["init_times"] == [str(t)[:19] for t in fc["time"].values]
    assert command in fc.attrs["command"] and fc.attrs["jigsaw_ds_version"] == jigsaw_ds.__version__
    assert abs(np.datetime64(fc.attrs["created"].rstrip("Z")) - np.datetime64("now")) < np.timedelta64(1, "h")
    assert not any("GRIB" in k for var in fc.variables for k in fc[var].attrs)


def test_forecast_attrs_describe_the_values_not_the_source(tmp_path):
    """forecast.zarr keeps each variable's and coordinate's units and long name from the source store, not the
    attributes that describe the source (a GRIB analysis: GRIB_dataType 'an', GRIB_paramId, ...)."""
    from jigsaw_ds.data.store import WeatherStore
    from jigsaw_ds.data.synth import synth_dataset
    from jigsaw_ds.data.writer import write_store
    from jigsaw_ds.eval import forecast_store as ev

    src = synth_dataset(9, 16, 4, seed=0)
    for name in ("temperature", "2m_temperature", "level"):
        src[name].attrs.update(GRIB_dataType="an", GRIB_paramId=130, history="cfgrib from an.grib")
    write_store(src, str(tmp_path / "grib.zarr"))
    store = WeatherStore(str(tmp_path / "grib.zarr"), ["temperature"], ["2m_temperature"], [500, 850])
    leads = np.array([6, 12], "timedelta64[h]").astype("timedelta64[ns]")
    ev.create_forecast_store(str(tmp_path / "f.zarr"), store, store.times[:2], leads, (9, 16), {"title": "t"})
    fc = xr.open_zarr(tmp_path / "f.zarr")
    assert fc["temperature"].attrs == {"units": "K", "long_name": "Temperature"}
    assert fc["2m_temperature"].attrs == {"units": "K", "long_name": "2 metre temperature"}
    assert fc["level"].attrs == {"units": "hPa", "long_name": "pressure level"} and fc.attrs["title"] == "t"


@pytest.mark.multirank
def test_streaming_scores_are_metrics_py_on_the_whole_arrays(serial_eval, synth_store):
    """The running sums give WB2's formulas (metrics.py) applied to the full forecast and truth arrays."""
    tmp, scores = serial_eval
    fc = xr.open_zarr(tmp / "serial" / "forecast.zarr")
    store = xr.open_zarr(synth_store)
    assert fc["temperature"].dims[2] == "level"
    for var in fc.data_vars:  # the source's units and names travel with the forecast
        assert fc[var].attrs == {k: store[var].attrs[k] for k in ("units", "long_name")}, var
    assert fc["level"].attrs["units"] == "hPa" and fc["latitude"].attrs["units"] == "degrees_north"
    check_provenance(fc, tmp / "run", synth_store, "jigsaw-eval")
    valid = fc["time"] + fc["prediction_timedelta"]
    truth = store["2m_temperature"].sel(time=valid)
    got = {(r["lead_hours"], r["metric"]): r["model"] for r in scores["rows"]
           if r["channel"] == "2m_temperature" and r["region"] == "global"}
    for name, metric in (("rmse", RMSE()), ("bias", Bias())):
        expected = metric.compute(fc["2m_temperature"].astype("float64"), truth.astype("float64")).values
        for k, lead in enumerate(fc["prediction_timedelta"].values):
            hours = int(lead / np.timedelta64(1, "h"))
            assert got[(hours, name)] == pytest.approx(float(expected[k]), rel=1e-5, abs=1e-7), (name, hours)
    assert scores["throughput"]["forecast_steps_per_s"] > 0
    # WB2's regions (full-grid weights restricted to the region's rows and columns: europe crosses 0 E, the
    # store's first and last columns) and the wind-vector RMSE, by hand
    row = {(r["region"], r["channel"], r["lead_hours"], r["metric"]): r["model"] for r in scores["rows"]}
    w = xr.DataArray(lat_cell_weights(fc["latitude"].values), dims=["latitude"], coords={"latitude": fc["latitude"]})
    u, v = ("u_component_of_wind", "v_component_of_wind")
    err2 = sum((fc[x].sel(level=500) - store[x].sel(level=500, time=valid)).astype("float64") ** 2 for x in (u, v))
    lat, lon = fc["latitude"], fc["longitude"]
    europe = (lat >= 35) & (lat <= 75) & ((lon >= 347.5) | (lon <= 42.5))
    for region, mask in (("global", True), ("tropics", (lat >= -20) & (lat <= 20)), ("europe", europe)):
        wr = (w * (lon * 0 + 1)).where(mask, 0.0)  # [latitude, longitude]
        expected = np.sqrt(((err2 * wr).sum(["latitude", "longitude"]) / wr.sum()).mean("time"))
        for k, lead in enumerate(fc["prediction_timedelta"].values):
            hours = int(lead / np.timedelta64(1, "h"))
            assert row[(region, "wind_vector_500", hours, "rmse")] == pytest.approx(float(expected[k]), rel=1e-5)
    from jigsaw_ds.eval.streaming import REGIONS

    assert list(dict.fromkeys(r["region"] for r in scores["rows"])) == ["global", *REGIONS]  # every one lies inside
    import csv

    headline = list(csv.DictReader(open(tmp / "serial" / "headline.csv")))
    assert [(h["channel"], int(h["lead_hours"])) for h in headline] == \
        [(c, h) for c in ("temperature_850", "wind_vector_850", "2m_temperature") for h in (6, 12, 18)]
    for h in headline:
        assert float(h["rmse_model"]) == pytest.approx(row[("global", h["channel"], int(h["lead_hours"]), "rmse")])


def var_level(name: str):
    """("temperature", 850) for "temperature_850", ("2m_temperature", None) for a surface channel."""
    head, _, tail = name.rpartition("_")
    return (head, int(tail)) if tail.isdigit() and head else (name, None)


def wb2_zonal_spectrum(values: np.ndarray, lat: np.ndarray) -> np.ndarray:
    """WeatherBench2's ZonalEnergySpectrum.compute on [..., latitude, longitude] (numpy, whole rows)."""
    f = np.fft.rfft(values, axis=-1, norm="forward")
    twos = np.concatenate([[1.0], np.full(f.shape[-1] - 1, 2.0)])
    return np.real(f * np.conj(f)) * twos * (2 * np.pi * 6_371_000.0 * np.cos(np.deg2rad(lat)))[:, None]


@pytest.mark.multirank
def test_spectra_and_netcdf_results_in_wb2s_form(serial_eval, synth_store):
    """spectra.nc: WB2's zonal energy spectrum of the whole forecast and truth rows, mean over 30-60 deg N/S
    (cos-weighted) and initial times; scores_<kind>.nc: WB2's results layout holding the same numbers as the rows."""
    tmp, scores = serial_eval
    fc, store = xr.open_zarr(tmp / "serial" / "forecast.zarr"), xr.open_zarr(synth_store)
    spectra = xr.open_dataset(tmp / "serial" / "spectra.nc")
    assert set(spectra.data_vars) == {"temperature_850", "u_component_of_wind_850", "v_component_of_wind_850",
                                      "2m_temperature"}
    assert list(spectra["lead_time"].values) == list(fc["prediction_timedelta"].values)  # 3 leads: all shown
    lat = fc["latitude"].values
    w = np.where((np.abs(lat) >= 30) & (np.abs(lat) <= 60), np.cos(np.deg2rad(lat)), 0.0)
    for name in spectra.data_vars:
        var, level = var_level(name)
        sel = {"level": level} if level else {}
        for j, lead in enumerate(spectra["lead_time"].values):
            f = fc[var].sel(prediction_timedelta=lead, **sel).values.astype(np.float64)
            o = store[var].sel(time=fc["time"].values + lead, **sel).values.astype(np.float64)
            for source, values in (("forecast", f), ("truth", o)):
                expected = (wb2_zonal_spectrum(values, lat) * w[:, None]).sum(1).mean(0) / w.sum()
                np.testing.assert_allclose(spectra[name].sel(source=source).isel(lead_time=j).values, expected,
                                           rtol=1e-5, err_msg=f"{name} {source} lead {j}")
    row = {(r["region"], r["channel"], r["lead_hours"], r["metric"]): r for r in scores["rows"]}
    for kind in ("model", "persistence", "climatology"):
        res = xr.open_dataset(tmp / "serial" / f"scores_{kind}.nc")
        assert res["temperature"].dims == ("metric", "region", "lead_time", "level")
        assert res["2m_temperature"].dims == ("metric", "region", "lead_time")
        assert list(res["metric"].values) == ["rmse", "mse", "bias", "acc"]
        for k, lead in enumerate(res["lead_time"].values):
            hours = int(lead / np.timedelta64(1, "h"))
            for region in ("global", "tropics"):
                for metric in ("rmse", "bias"):
                    got = res["temperature"].sel(metric=metric, region=region, level=850).values[k]
                    assert got == pytest.approx(row[(region, "temperature_850", hours, metric)][kind], rel=1e-6)
                mse = res["2m_temperature"].sel(metric="mse", region=region).values[k]
                assert mse == pytest.approx(row[(region, "2m_temperature", hours, "rmse")][kind] ** 2, rel=1e-6)
                vec = res["wind_vector"].sel(metric="rmse", region=region, level=500).values[k]
                assert vec == pytest.approx(row[(region, "wind_vector_500", hours, "rmse")][kind], rel=1e-6)


def wb2_climatology(store: xr.Dataset, variables) -> xr.Dataset:
    """A climatology in WB2's layout (hour, dayofyear, level, latitude, longitude) that varies with day and hour,
    stored with ascending latitudes and longitudes from -180 (the store: descending, 0..360)."""
    doy = xr.DataArray(np.arange(1, 367), dims="dayofyear", coords={"dayofyear": np.arange(1, 367)})
    hour = xr.DataArray([0, 6, 12, 18], dims="hour", coords={"hour": [0, 6, 12, 18]})
    clim = xr.Dataset({v: (store[v].mean("time").load() + 0.05 * doy + 0.1 * hour).astype("float32")
                       for v in variables})
    clim = clim.isel(latitude=slice(None, None, -1))
    clim = clim.assign_coords(longitude=(clim["longitude"] + 180) % 360 - 180).sortby("longitude")
    return clim.transpose("hour", "dayofyear", ...)


@pytest.mark.multirank
def test_acc_against_a_given_wb2_climatology(serial_eval, synth_store, tmp_path, capsys):
    """--climatology: ACC and the climatology forecast use the given WB2-format store at each valid time's
    (day of year, hour), equal to metrics.py on the whole arrays; its tiles are the full field's; a climatology
    that lacks a variable is one error naming it."""
    from jigsaw_ds.data.climatology import GivenClimatology
    from jigsaw_ds.data.store import WeatherStore
    from jigsaw_ds.eval import cli as eval_cli

    tmp, _ = serial_eval
    store = xr.open_zarr(synth_store)
    variables = ["temperature", "u_component_of_wind", "v_component_of_wind", "2m_temperature"]
    wb2_climatology(store, variables).to_zarr(tmp_path / "clim.zarr")
    args = ["--checkpoint", str(tmp / "run"), "--data", synth_store, "--lead-steps", "3", "--inits", "6", "--no-plots"]
    assert eval_cli.main(args + ["--out", str(tmp_path / "out"), "--climatology", str(tmp_path / "clim.zarr")]) == 0
    got = json.load(open(tmp_path / "out" / "scores.json"))
    row = {(r["channel"], r["lead_hours"], r["metric"]): r for r in got["rows"] if r["region"] == "global"}
    fc = xr.open_zarr(tmp_path / "out" / "forecast.zarr")
    clim = xr.open_zarr(tmp_path / "clim.zarr").sortby("latitude", ascending=False)
    clim = clim.assign_coords(longitude=clim["longitude"] % 360).sortby("longitude")  # the store's grid order
    valid = fc["time"] + fc["prediction_timedelta"]
    for var, level in (("temperature", 850), ("2m_temperature", None)):
        sel = {"level": level} if level else {}
        truth = store[var].sel(time=valid, **sel).astype("float64")
        c = clim[var].sel(dayofyear=valid.dt.dayofyear, hour=valid.dt.hour, **sel).astype("float64")
        acc = ACC().compute(fc[var].sel(**sel).astype("float64"), truth, c).values
        rmse = RMSE().compute(c, truth).values
        name = f"{var}_{level}" if level else var
        for k, lead in enumerate(fc["prediction_timedelta"].values):
            hours = int(lead / np.timedelta64(1, "h"))
            assert row[(name, hours, "acc")]["model"] == pytest.approx(float(acc[k]), rel=1e-5)
            assert row[(name, hours, "rmse")]["climatology"] == pytest.approx(float(rmse[k]), rel=1e-5)
    # each rank's tile of the climatology is that tile of the whole field (uneven bands, both halves of the row)
    ws = WeatherStore(synth_store, ["temperature"], ["2m_temperature"], [500, 850])
    times = ws.times[[3, 50]]
    whole = GivenClimatology(str(tmp_path / "clim.zarr"), ws, slice(0, 33), slice(0, 64)).at(times)
    for rows in (slice(0, 12), slice(12, 33)):
        for cols in (slice(0, 32), slice(32, 64)):
            tile = GivenClimatology(str(tmp_path / "clim.zarr"), ws, rows, cols).at(times)
            np.testing.assert_array_equal(tile, whole[..., rows, cols])
    xr.open_zarr(tmp_path / "clim.zarr").drop_vars("temperature").to_zarr(tmp_path / "partial.zarr")
    capsys.readouterr()
    assert eval_cli.main(args + ["--out", str(tmp_path / "x"), "--climatology", str(tmp_path / "partial.zarr")]) == 2
    err = capsys.readouterr().err
    assert "has no variable 'temperature'" in err and "partial.zarr" in err, err


@pytest.mark.multirank
@pytest.mark.parametrize("layout", [(2, 1, 1), (1, 2, 1), (1, 2, 2)], ids=["2x1x1", "1x2x1", "1x2x2"])
def test_parallel_eval_equals_the_serial_one(serial_eval, synth_store, tmp_path, layout):
    """(1,2,2) reads the store written south to north and from 225 deg E (-135..219.375): each rank reads its
    tile in the trained order, the second tensor rank's across the store's seam."""
    from test_reliability_data import reordered
    from jigsaw_ds.data.writer import write_store

    tmp, serial = serial_eval
    data, domain, tensor = layout
    store = synth_store
    if layout == (1, 2, 2):
        store = write_store(reordered(xr.open_zarr(synth_store), True, 40), str(tmp_path / "reordered.zarr"))
    proc = run([os.path.join(BIN, "torchrun"), "--standalone", "--nproc_per_node", str(data * domain * tensor),
                os.path.join(BIN, "jigsaw-eval"), "--checkpoint", str(tmp / "run"), "--data", store, "--out",
                str(tmp_path / "out"), "--lead-steps", "3", "--inits", "6", "--no-plots", "--domain", str(domain),
                "--tensor", str(tensor), "--batch", "2"])
    assert ("rolled by 24 columns: read in the trained order" in proc.stdout) == (store != synth_store)
    got = json.load(open(tmp_path / "out" / "scores.json"))
    assert got["throughput"]["layout"] == {"data": data, "domain": domain, "tensor": tensor}
    assert len(got["rows"]) == len(serial["rows"])
    for a, b in zip(got["rows"], serial["rows"]):
        assert [a[key] for key in ("region", "channel", "lead_hours", "metric")] == \
            [b[key] for key in ("region", "channel", "lead_hours", "metric")]
        for kind in ("model", "persistence", "climatology"):  # climatology's ACC is 0/0 (no anomaly): NaN in both
            assert a[kind] == pytest.approx(b[kind], rel=1e-5, abs=1e-6, nan_ok=True), (a, b)
    par, ser = xr.open_zarr(tmp_path / "out" / "forecast.zarr"), xr.open_zarr(tmp / "serial" / "forecast.zarr")
    for coord in ("latitude", "longitude"):  # the trained order
        np.testing.assert_allclose(par[coord].values, ser[coord].values)
    for var in ser.data_vars:
        np.testing.assert_allclose(par[var].values, ser[var].values, rtol=1e-5, atol=1e-5)
        assert np.isfinite(par[var].values).all()  # every rank's tile was written
    par, ser = xr.open_dataset(tmp_path / "out" / "spectra.nc"), xr.open_dataset(tmp / "serial" / "spectra.nc")
    for var in ser.data_vars:  # the tensor group's partial DFTs add up to the whole row's (float32 partial sums:
        # a wavenumber 1e9 times weaker than the mean's carries the sums' rounding, 1.2e-5 seen)
        np.testing.assert_allclose(par[var].values, ser[var].values, rtol=1e-4)


@pytest.mark.multirank
def test_forecast_from_given_times_past_the_store_end(serial_eval, synth_store, tmp_path):
    """jigsaw-forecast (the same engine, no scoring) at (1,2,1): from one of the eval's initial times it gives
    the eval's forecast; from the store's last time it runs past the store; an unknown time is one error."""
    from jigsaw_ds.eval import cli as eval_cli

    tmp, _ = serial_eval
    serial = xr.open_zarr(tmp / "serial" / "forecast.zarr")
    last = xr.open_zarr(synth_store)["time"].values[-1]
    times = [str(serial["time"].values[0])[:19], str(last)[:19]]
    run([os.path.join(BIN, "torchrun"), "--standalone", "--nproc_per_node", "2", os.path.join(BIN, "jigsaw-forecast"),
         "--checkpoint", str(tmp / "run"), "--data", synth_store, "--out", str(tmp_path / "fc"), "--lead-steps", "3",
         "--init-times", ",".join(times), "--domain", "2"])
    fc = xr.open_zarr(tmp_path / "fc" / "forecast.zarr")
    assert [str(t)[:19] for t in fc["time"].values] == times
    np.testing.assert_allclose(fc["temperature"].isel(time=0).values, serial["temperature"].isel(time=0).values,
                               rtol=1e-5, atol=1e-5)
    assert np.isfinite(fc["temperature"].isel(time=1).values).all()  # leads past the store's end
    assert not (tmp_path / "fc" / "scores.json").exists()
    # bf16 autocast (one process): the forecast's change from the initial state within 2% of fp32's
    assert eval_cli.forecast_main(["--checkpoint", str(tmp / "run"), "--data", synth_store, "--out", str(tmp_path / "bf16"),
                             "--lead-steps", "3", "--init-times", times[0], "--precision", "bf16"]) == 0
    bf16 = xr.open_zarr(tmp_path / "bf16" / "forecast.zarr")["temperature"].isel(time=0).values.astype(np.float64)
    fp32 = serial["temperature"].isel(time=0).values.astype(np.float64)
    initial = xr.open_zarr(synth_store)["temperature"].sel(time=serial["time"].values[0]).values[None]
    change = np.linalg.norm(bf16 - fp32) / np.linalg.norm(fp32 - initial)
    assert 0 < change < 0.02, change
    assert json.load(open(tmp_path / "bf16" / "forecast.json"))["throughput"]["precision"] == "bf16"
    assert eval_cli.forecast_main(["--checkpoint", str(tmp / "run"), "--data", synth_store, "--out", str(tmp_path / "x"),
                             "--init-times", "1999-01-01T00"]) == 2


@pytest.mark.multirank
def test_python_api_forecasts_as_jigsaw_forecast_does(serial_eval, synth_store, tmp_path):
    """Forecaster.load(run).forecast(an xarray Dataset opened from the store) gives jigsaw-forecast's
    forecast.zarr for the same initial times (one from the store's last time, past its end), with its
    coordinates, units and provenance; a Dataset of the initial time alone gives the same; a Dataset that
    lacks a trained variable is one error naming it."""
    import shlex
    import sys

    from jigsaw_ds import Forecaster
    from jigsaw_ds.eval import cli as eval_cli

    tmp, _ = serial_eval
    ds = xr.open_zarr(synth_store)
    times = [str(ds["time"].values[100])[:19], str(ds["time"].values[-1])[:19]]
    assert eval_cli.forecast_main(["--checkpoint", str(tmp / "run"), "--data", synth_store, "--out", str(tmp_path / "fc"),
                             "--lead-steps", "3", "--init-times", ",".join(times)]) == 0
    expected = xr.open_zarr(tmp_path / "fc" / "forecast.zarr")
    check_provenance(expected, tmp / "run", synth_store, shlex.join(sys.argv))  # this process's command line

    fc = Forecaster.load(str(tmp / "run"))
    out = fc.forecast(ds, steps=3, init_times=times)
    assert set(out.data_vars) == set(expected.data_vars) == {"temperature", "u_component_of_wind",
                                                             "v_component_of_wind", "2m_temperature"}
    assert out["temperature"].dims == ("time", "prediction_timedelta", "level", "latitude", "longitude")
    for name in ("time", "prediction_timedelta", "level", "latitude", "longitude"):
        np.testing.assert_array_equal(out[name].values, expected[name].values)
    for var in expected.data_vars:
        np.testing.assert_allclose(out[var].values, expected[var].values, rtol=1e-5, atol=1e-5, err_msg=var)
        assert out[var].attrs == expected[var].attrs and out[var].attrs["units"], var
    assert out.attrs["model_steps"] == [2] and out.attrs["init_times"] == times
    one = fc.forecast(ds.isel(time=[100]), steps=3)  # the initial state alone: the model's time step
    np.testing.assert_allclose(one["temperature"].values, out["temperature"].isel(time=[0]).values, rtol=1e-5, atol=1e-5)
    with pytest.raises(ValueError, match="has no variable 'u_component_of_wind'") as e:
        fc.forecast(ds.drop_vars("u_component_of_wind"), steps=1)
    assert "\n" not in str(e.value)


@pytest.mark.multirank
def test_without_matplotlib_or_a_netcdf_writer_the_scores_are_written_and_each_skip_is_one_note(
        serial_eval, synth_store, tmp_path, capsys, monkeypatch):
    import sys

    from jigsaw_ds.eval import cli as eval_cli

    tmp, _ = serial_eval
    for name in ("matplotlib", "netCDF4", "h5netcdf", "scipy"):
        monkeypatch.setitem(sys.modules, name, None)  # import fails as if not installed
    out = tmp_path / "out"
    assert eval_cli.main(["--checkpoint", str(tmp / "run"), "--data", synth_store, "--out", str(out), "--lead-steps", "2",
                    "--inits", "2"]) == 0
    said = capsys.readouterr().out
    assert "forecast steps/s (cpu, fp32, layout (1, 1, 1))" in said  # throughput printed too
    assert "matplotlib is not installed: plots skipped" in said
    assert said.count("no netCDF writer is installed") == 4  # scores_<kind>.nc x 3, spectra.nc
    assert (out / "scores.json").exists() and (out / "headline.csv").exists()
    assert not list(out.glob("*.png")) and not list(out.glob("*.nc"))


@pytest.mark.multirank
def test_seed_ensemble_forecast_is_the_members_mean_at_every_lead(serial_eval, synth_store, tmp_path):
    """jigsaw-eval --checkpoint A,B at (1,2,1): each member rolls out on its own and every lead's forecast is
    the mean of the members' forecasts (here A's from the serial eval and B's, a run with another seed)."""
    from test_checkpoint import configs, train

    tmp, _ = serial_eval
    args = configs(tmp_path, synth_store, tmp_path / "b")
    proc = train(args, 1, ["--set", "parallel.domain=1", "--set", "parallel.tensor=1", "--set", "train.steps=2",
                           "--set", "train.ckpt_every=2", "--set", "train.seed=11", "--set",
                           'data.variables=["temperature", "u_component_of_wind", "v_component_of_wind"]'])
    assert proc.returncode == 0, proc.stderr[-3000:]
    common = ["--data", synth_store, "--lead-steps", "3", "--inits", "6", "--no-plots"]
    run([os.path.join(BIN, "jigsaw-eval"), "--checkpoint", str(tmp_path / "b"), "--out", str(tmp_path / "eb"), *common])
    run([os.path.join(BIN, "torchrun"), "--standalone", "--nproc_per_node", "2", os.path.join(BIN, "jigsaw-eval"),
         "--checkpoint", f"{tmp / 'run'},{tmp_path / 'b'}", "--out", str(tmp_path / "ens"), "--domain", "2", *common])
    a, b, ens = (xr.open_zarr(p / "forecast.zarr") for p in (tmp / "serial", tmp_path / "eb", tmp_path / "ens"))
    for var in ens.data_vars:
        assert not np.allclose(a[var].values, b[var].values)  # the members differ
        np.testing.assert_allclose(ens[var].values, (a[var].values + b[var].values) / 2, rtol=1e-5, atol=1e-5)


# ---- maps the right way up, regions that follow the grid ---------------------------------------------------------
def warm_north_store(path, ascending: bool):
    """A synthetic store whose 2 m temperature is 300 K north of the equator and 250 K south of it (changing by
    1e-3 K a step: a constant channel is refused), with latitudes descending (ours) or ascending (WB2's)."""
    from jigsaw_ds.data.synth import synth_dataset
    from jigsaw_ds.data.writer import write_store

    ds = synth_dataset(17, 32, 4, seed=0)
    t2m = xr.where(ds["latitude"] > 0, 300.0, 250.0) + 1e-3 * xr.DataArray(np.arange(4.0), dims="time")
    ds["2m_temperature"] = t2m.broadcast_like(ds["2m_temperature"]).transpose(*ds["2m_temperature"].dims)
    ds["2m_temperature"] = ds["2m_temperature"].astype(np.float32)
    write_store(ds.isel(latitude=slice(None, None, -1)) if ascending else ds, str(path))
    return str(path)


@pytest.mark.parametrize("ascending", [False, True], ids=["descending", "ascending"])
def test_maps_are_drawn_north_up_whatever_the_store_order(tmp_path, ascending, capsys):
    """maps_<channel>.png from a forecast.zarr written by the engine's writers (a perfect forecast): in every
    pixel column through a map, the warm colour (the scale's top: truth and forecast share it) comes before the
    cold one from the top of the image, for either latitude order; the colour bars lie below the maps."""
    import matplotlib
    from matplotlib import image

    from jigsaw_ds.data.store import WeatherStore
    from jigsaw_ds.eval import forecast_store as ev
    from jigsaw_ds.eval import plots

    store = WeatherStore(warm_north_store(tmp_path / "s.zarr", ascending), [], ["2m_temperature"], [])
    inits, leads = np.array([0]), np.array([6], "timedelta64[h]").astype("timedelta64[ns]")
    path, tile = str(tmp_path / "forecast.zarr"), (slice(0, store.n_lat), slice(0, store.n_lon))
    ev.create_forecast_store(path, store, store.times[inits], leads, (store.n_lat, store.n_lon), {})
    writer = ev.ForecastWriter(path, store.variable_blocks(), *tile)
    writer.write(0, 0, store.read_raw([1], *tile))
    writer.wait()
    assert plots.map_plots(store, path, inits, 1, leads, str(tmp_path)) == [str(tmp_path / "maps_2m_temperature.png")]
    img = image.imread(tmp_path / "maps_2m_temperature.png")[..., :3]
    cmap = matplotlib.colormaps[plots.FIELD_CMAP]
    warm, cold = (np.abs(img - np.array(cmap(x)[:3])).max(-1) < 0.02 for x in (1.0, 0.0))
    columns = [x for x in range(img.shape[1]) if warm[:, x].any() and cold[:, x].any()]
    assert len(columns) > img.shape[1] / 3  # the truth and forecast maps
    assert all(warm[:, x].argmax() < cold[:, x].argmax() for x in columns)
    assert "coastlines" in capsys.readouterr().out or plots.coastlines() is not None  # drawn, or a note says why not


def test_region_weights_follow_the_grid():
    """A global grid: "global", then WB2's bands and boxes, a box's weights the grid's latitude weights on its rows
    times its columns (europe across 0 E, in 0..360 and -180..180 longitudes alike); a regional box: "domain",
    never "global", with WB2's regions only where they lie wholly inside it (a UK box holds none)."""
    from jigsaw_ds.eval.streaming import REGIONS, region_weights

    lat, lon = np.linspace(90, -90, 33), np.arange(64) * 5.625
    w = lat_cell_weights(lat)
    regions = region_weights(lat, lon, w)
    assert list(regions) == ["global", *REGIONS]
    rows, cols = regions["europe"]
    np.testing.assert_array_equal(rows, np.where((lat >= 35) & (lat <= 75), w, 0.0))
    np.testing.assert_array_equal(cols, ((lon >= 347.5) | (lon <= 42.5)).astype(float))
    assert cols[0] == cols[-1] == 1 and cols.sum() == 10  # 0..39.375 and 348.75..354.375
    np.testing.assert_array_equal(regions["north_pacific"][1], ((lon >= 145) & (lon <= 230)).astype(float))
    shifted = (lon + 180) % 360 - 180
    order = np.argsort(shifted)
    np.testing.assert_array_equal(region_weights(lat, shifted[order], w)["europe"][1], cols[order])

    uk_lat, uk_lon = np.linspace(58, 50, 33), np.linspace(-10, 2, 49)  # the ERA5 sample's box (0.25 deg)
    assert list(region_weights(uk_lat, uk_lon, lat_cell_weights(uk_lat))) == ["domain"]
    box_lat, box_lon = np.arange(73.125, 30, -5.625), np.arange(16) * 5.625 - 22.5  # Europe and around it
    bw = lat_cell_weights(box_lat)
    boxed = region_weights(box_lat, box_lon, bw)
    assert list(boxed) == ["domain", "europe"]  # no band: they need every longitude
    np.testing.assert_array_equal(boxed["domain"][0], bw)
    np.testing.assert_array_equal(boxed["europe"][0], np.where((box_lat >= 35) & (box_lat <= 75), bw, 0.0))
    np.testing.assert_array_equal(boxed["europe"][1], ((box_lon >= -12.5) & (box_lon <= 42.5)).astype(float))
    band = region_weights(np.linspace(-30, 30, 11), lon, lat_cell_weights(np.linspace(-30, 30, 11)))
    assert list(band) == ["domain", "tropics"]  # every longitude, no pole


def test_box_region_sums_over_column_tiles_equal_the_hand_computation():
    """ScoreSums on the two column halves of a global grid (europe has columns in both): their squared-error sums
    add up to the hand computation sum_box w_i (f - o)^2 / (sum_box w_i x its columns)."""
    from jigsaw_ds.eval.streaming import ScoreSums
    from jigsaw_ds.parallel.topology import JigsawGroups

    rng = np.random.default_rng(0)
    lat, lon = np.linspace(90, -90, 17), np.arange(32) * 11.25
    w = lat_cell_weights(lat)
    f, o = rng.normal(size=(2, 1, 1, 17, 32))
    se = 0.0
    for cols in (slice(0, 16), slice(16, 32)):
        sums = ScoreSums(["model"], 1, 1, lat, w, slice(0, 17), lon, cols, JigsawGroups.serial())
        sums.add(0, {"model": f[..., cols]}, o[..., cols], o[..., cols] * 0)
        se = se + sums.se[sums.regions.index("europe"), 0, 0, 0]
    mask = ((lat >= 35) & (lat <= 75))[:, None] & ((lon >= 347.5) | (lon <= 42.5))[None, :]
    expected = (w[:, None] * (f - o)[0, 0] ** 2 * mask).sum() / (w[:, None] * mask).sum()
    assert np.sqrt(se / sums.total_weight[sums.regions.index("europe"), 0, 0, 0]) == pytest.approx(np.sqrt(expected))


@pytest.mark.multirank
def test_a_regional_store_is_scored_as_its_domain(tmp_path, capsys):
    """A model trained 2 steps on a lat/lon box (Europe and around it, -180..180 longitudes) and evaluated: its
    scores are the "domain" region's and europe's, never "global"; no zonal spectra (the rows are no latitude
    circles), one note saying so; headline and plots from the domain's scores."""
    import csv

    from test_checkpoint import configs, train

    from jigsaw_ds.data.synth import synth_dataset
    from jigsaw_ds.data.writer import write_store
    from jigsaw_ds.eval import cli as eval_cli

    ds = synth_dataset(33, 64, 40, seed=1)
    ds = ds.assign_coords(longitude=(ds["longitude"] + 180) % 360 - 180).sortby("longitude")
    box = ds.sel(latitude=slice(75, 30), longitude=slice(-23, 62))  # 8 x 16 points
    write_store(box, str(tmp_path / "box.zarr"))
    proc = train(configs(tmp_path, str(tmp_path / "box.zarr"), tmp_path / "run"),
                 1, ["--set", "parallel.domain=1", "--set", "parallel.tensor=1", "--set", "train.steps=2",
                     "--set", "train.ckpt_every=2"])
    assert proc.returncode == 0, proc.stderr[-3000:]
    capsys.readouterr()
    assert eval_cli.main(["--checkpoint", str(tmp_path / "run"), "--data", str(tmp_path / "box.zarr"), "--out",
                    str(tmp_path / "eval"), "--lead-steps", "2", "--inits", "2"]) == 0
    said = capsys.readouterr().out
    rows = json.load(open(tmp_path / "eval" / "scores.json"))["rows"]
    assert list(dict.fromkeys(r["region"] for r in rows)) == ["domain", "europe"]
    assert said.count("do not close a latitude circle") == 1
    assert not (tmp_path / "eval" / "spectra.nc").exists() and not (tmp_path / "eval" / "spectra.png").exists()
    assert {h["region"] for h in csv.DictReader(open(tmp_path / "eval" / "headline.csv"))} == {"domain"}
    for name in ("rmse.png", "acc.png", "maps_temperature_500.png"):
        assert (tmp_path / "eval" / name).stat().st_size > 0


def test_scored_initial_times_are_at_00_and_12_utc_where_the_store_has_them(synth_store):
    """WeatherBench2 starts its forecasts at 00 and 12 UTC: jigsaw-eval spreads its initial times over those
    hours of the held-out times (a 6-hourly store: half of them), every hour with --all-hours, and any hour
    where the store has neither."""
    from jigsaw_ds.data.store import WeatherStore
    from jigsaw_ds.eval.evaluate import spread_inits

    store = WeatherStore(synth_store, ["temperature"], [], [500])
    starts = np.arange(40, 100)
    hours = lambda idx: sorted({int(str(t)[11:13]) for t in store.times[idx]})
    assert hours(starts) == [0, 6, 12, 18]
    picked = spread_inits(store, starts, 8)
    assert len(picked) == 8 and hours(picked) == [0, 12]
    assert hours(spread_inits(store, starts, 60, all_hours=True)) == [0, 6, 12, 18]
    assert len(spread_inits(store, starts, 1000)) == 30  # every 00/12 time once, never more
    odd = starts[store.times[starts].astype("datetime64[h]").astype(int) % 12 == 6]
    assert hours(spread_inits(store, odd, 4)) == [6, 18]  # no 00/12 time held out: the hours it has

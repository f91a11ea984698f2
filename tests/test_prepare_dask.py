"""jigsaw-data prepare on a Dask cluster: 2 workers give the store 1 worker gives (values, coordinates, attrs,
statistics, climatology), the statistics equal a whole-array numpy reference to 1e-9, and a
prepare killed with SIGKILL (the whole client, or one worker) finishes with the same store.

One 2-worker and one 1-worker LocalCluster for the module (a few seconds each); small grids.
"""
import os
import signal
import subprocess
import sys
import threading
import time

import numpy as np
import pytest
import xarray as xr

from jigsaw_ds.data import parallel_prepare
from jigsaw_ds.data.cli import main as cli_main
from jigsaw_ds.data.prepare import prepare
from jigsaw_ds.data.store import STATS_ATTR, all_channels, trajectories
from jigsaw_ds.data.synth import synth_dataset
from jigsaw_ds.data.writer import write_store

from test_prepare import MEMBERS_GRIB, MEMBERS_NC, UK, chunk_mtimes, needs_data, netcdf, small_source

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture(scope="module")
def two_workers():
    with parallel_prepare.dask_client(workers=2) as client:
        yield client


@pytest.fixture(scope="module")
def one_worker():
    with parallel_prepare.dask_client(workers=1) as client:
        yield client


def open_all(path):
    """The store and, if it has one, its climatology group."""
    store = xr.open_zarr(path, chunks=None)
    try:
        clim = xr.open_zarr(path, group="climatology", chunks=None)
    except Exception:  # no climatology group
        clim = None
    return store, clim


def assert_same_store(a_path, b_path):
    (a, ca), (b, cb) = open_all(a_path), open_all(b_path)
    xr.testing.assert_identical(a, b)  # values, coordinates, attrs (statistics included), bit for bit
    assert a.attrs[STATS_ATTR] == b.attrs[STATS_ATTR]
    assert (ca is None) == (cb is None)
    if ca is not None:
        xr.testing.assert_identical(ca, cb)


def whole_array_stats(ds: xr.Dataset) -> dict:
    """The test oracle for jigsaw_stats: each channel read whole over all times (what the block reduction of
    data/stats.py must equal), one-step differences kept only inside a trajectory."""
    traj = trajectories(ds)
    same = traj[1:] == traj[:-1]
    out = {}
    for var, da in ds.data_vars.items():
        if "time" not in da.dims:
            x = np.asarray(da.values, np.float64)
            out[var] = {"mean": x.mean(), "std": x.std() or 1.0, "tendency_std": 0.0}
    for ch in all_channels(ds):
        da = ds[ch.var] if ch.level_index is None else ds[ch.var].isel(level=ch.level_index)
        x = np.asarray(da.transpose("time", ...).values, np.float64)
        diff = (x[1:] - x[:-1])[same]
        out[ch.name] = {"mean": x.mean(), "std": x.std() or 1.0, "tendency_std": diff.std() if diff.size else 1.0}
    return out


def assert_stats_match_serial(path):
    stats = xr.open_zarr(path, chunks=None).attrs[STATS_ATTR]
    reference = whole_array_stats(xr.open_zarr(path, chunks=None))
    assert stats.keys() == reference.keys()
    for name, ref in reference.items():
        for key, value in ref.items():
            assert stats[name][key] == pytest.approx(value, rel=1e-9, abs=1e-300), (name, key)


@pytest.mark.parametrize("time_block", [1, 3, 0])
def test_write_store_statistics_by_time_block_equal_the_whole_array_reference(tmp_path, time_block):
    """write_store reads its statistics back a block of time steps at a time, pairing each block's last step
    with the next block's first; two trajectories (a gap of 3 steps) keep their boundary pair out."""
    ds = synth_dataset(9, 16, 12, seed=3)
    ds = ds.isel(time=[0, 1, 2, 3, 4, 8, 9, 10, 11])  # a gap after the fifth step: two trajectories
    path = write_store(ds, str(tmp_path / f"b{time_block}.zarr"), time_block=time_block)
    assert list(trajectories(xr.open_zarr(path, chunks=None))) == [0] * 5 + [1] * 4
    assert_stats_match_serial(path)


@needs_data
@pytest.mark.parametrize("path, kw", [(UK, dict(lat_chunk=36, time_block=50)),  # 15 blocks, 24 cells
                                      (MEMBERS_NC, dict(lat_chunk=16, time_block=1)),
                                      (MEMBERS_GRIB, dict(lat_chunk=16, time_block=3, levels=[500]))],
                         ids=["uk-grib", "members-nc", "members-grib"])
@pytest.mark.multirank
def test_two_workers_write_the_store_one_worker_writes_real_files(tmp_path, two_workers, one_worker, path, kw):
    a = prepare([path], str(tmp_path / "one.zarr"), client=one_worker, **kw)
    b = prepare([path], str(tmp_path / "two.zarr"), client=two_workers, **kw)
    assert_same_store(a, b)
    assert_stats_match_serial(b)
    # (values against the sources, the climatology against xarray's groupby: test_prepare.py)


def multi_file_sources(tmp_path, n_times=30, gap_at=17):
    """Monthly-style netCDF files with ECMWF names, a surface file per month, a static file; a gap in the
    second month; two years of daily data would be slow, so the climatology here is by hour of day."""
    src = small_source(n_lat=12, n_lon=16, n_times=n_times + 2)
    src = src.isel(time=[i for i in range(n_times + 2) if i not in (gap_at, gap_at + 1)])
    upper, surface, files = src[["t", "z"]], src[["t2m"]], []
    for m, (a, b) in enumerate([(0, 10), (10, 22), (22, n_times)]):
        files.append(netcdf(upper.isel(time=slice(a, b)), tmp_path / f"upper-{m}.nc"))
        files.append(netcdf(surface.isel(time=slice(a, b)), tmp_path / f"sfc-{m}.nc"))
    lsm = synth_dataset(12, 16, 1, seed=2)[["land_sea_mask"]].rename(land_sea_mask="lsm")
    files.append(netcdf(lsm.expand_dims("time").assign_coords(time=src["time"].values[:1]), tmp_path / "c.nc"))
    return files, src


@pytest.mark.multirank
def test_two_workers_write_the_store_one_worker_writes_multi_file(tmp_path, two_workers, one_worker):
    files, src = multi_file_sources(tmp_path)
    a = prepare(files, str(tmp_path / "one.zarr"), lat_chunk=4, time_block=4, client=one_worker)
    b = prepare(files, str(tmp_path / "two.zarr"), lat_chunk=4, time_block=4, client=two_workers)
    assert_same_store(a, b)
    assert_stats_match_serial(b)
    store = xr.open_zarr(b)
    np.testing.assert_array_equal(store["temperature"].values, src["t"].values)
    assert list(np.unique(store["trajectory"].values, return_counts=True)[1]) == [17, 13]  # the gap
    c = prepare(files, str(tmp_path / "here.zarr"), lat_chunk=4, time_block=4)  # workers=0: this process
    assert_same_store(a, c)


def run_cli_in_background(args, cwd):
    env = dict(os.environ, PYTHONPATH=ROOT, OMP_NUM_THREADS="1")
    return subprocess.Popen([sys.executable, "-m", "jigsaw_ds.data.cli", "prepare", *args], cwd=cwd, env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, start_new_session=True)


def records_in(folder) -> list[int]:
    """The blocks whose record is complete: a kill between a record's write and its rename leaves a
    temporary file (NAME.json.PID.tmp) that the job ignores, and so must the count."""
    names = os.listdir(folder) if os.path.isdir(folder) else []
    return sorted(int(name[:-5]) for name in names if name.endswith(".json"))


def wait_for_records(folder, n, proc, timeout=120):
    t0 = time.time()
    while time.time() - t0 < timeout:
        if len(records_in(folder)) >= n:
            return
        if proc is not None and proc.poll() is not None:
            raise AssertionError(f"prepare ended before {n} regions were written: {proc.stderr.read().decode()}")
        time.sleep(0.02)
    raise AssertionError(f"no {n} records in {folder} after {timeout} s")


@pytest.mark.multirank
def test_prepare_killed_with_sigkill_resumes_and_gives_the_same_store(tmp_path, two_workers):
    """The client and its LocalCluster's workers killed at once (SIGKILL to the process group, as when a node
    dies), after some regions: the next run writes only the others, and the store is the same."""
    src = synth_dataset(16, 32, 120, seed=7)[["temperature", "2m_temperature"]]
    src.to_zarr(str(tmp_path / "src.zarr"))
    args = [str(tmp_path / "src.zarr"), "--lat-chunk", "4", "--time-block", "1"]
    reference = prepare(args[:1], str(tmp_path / "ref.zarr"), lat_chunk=4, time_block=1, client=two_workers)
    out = tmp_path / "out.zarr"
    proc = run_cli_in_background(args + ["--out", str(out), "--workers", "1"], tmp_path)
    records = tmp_path / "out.zarr.partial" / ".jigsaw-prepare" / "blocks"
    wait_for_records(records, 10, proc)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    done = records_in(records)
    assert not out.exists() and 10 <= len(done) < 120
    before = chunk_mtimes(str(out) + ".partial", done)
    assert cli_main(["prepare"] + args + ["--out", str(out), "--scheduler", two_workers.scheduler.address]) == 0
    assert chunk_mtimes(str(out), done) == before  # the regions done before the kill were not written again
    assert_same_store(reference, str(out))


@pytest.mark.multirank
def test_a_worker_killed_mid_job_is_replaced_and_the_store_is_the_same(tmp_path, two_workers):
    src = synth_dataset(16, 32, 80, seed=8)[["temperature", "2m_temperature"]]
    src.to_zarr(str(tmp_path / "src.zarr"))
    reference = prepare([str(tmp_path / "src.zarr")], str(tmp_path / "ref.zarr"), lat_chunk=4, time_block=1)
    records = tmp_path / "out.zarr.partial" / ".jigsaw-prepare" / "blocks"
    victim = list(two_workers.run(os.getpid).values())[0]
    killed = []

    def kill_after_some_regions():
        wait_for_records(records, 5, None)
        os.kill(victim, signal.SIGKILL)
        killed.append(len(records_in(records)))

    killer = threading.Thread(target=kill_after_some_regions, daemon=True)
    killer.start()
    out = prepare([str(tmp_path / "src.zarr")], str(tmp_path / "out.zarr"), lat_chunk=4, time_block=1,
                  client=two_workers)
    killer.join(5)
    assert killed and killed[0] < 80  # killed mid-job
    assert_same_store(reference, out)
    two_workers.wait_for_workers(2, timeout=60)  # the nanny restarted it: the module's cluster is whole again


def test_plan_prints_layout_blocks_bytes_and_estimate_and_writes_nothing(tmp_path, capsys):
    files, _ = multi_file_sources(tmp_path)
    out = tmp_path / "s.zarr"
    assert cli_main(["prepare", *files, "--out", str(out), "--lat-chunk", "4", "--time-block", "4", "--plan",
                     "--workers", "2"]) == 0
    text = capsys.readouterr().out
    assert "30 time steps" in text and "12 x 16 grid" in text
    assert "temperature: ('time', 'level', 'latitude', 'longitude') [30, 2, 12, 16] float32" in text
    assert "blocks: 8 of 4 time steps" in text and "MB/s converting" in text and "estimate with 2 worker(s)" in text
    assert sorted(os.listdir(tmp_path)) == sorted(os.path.basename(f) for f in files)  # nothing else


def test_unreachable_scheduler_is_one_clear_error(tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(parallel_prepare, "CONNECT_TIMEOUT", "2s")
    path = netcdf(small_source(), tmp_path / "s.nc")
    assert cli_main(["prepare", path, "--out", str(tmp_path / "s.zarr"), "--scheduler", "tcp://127.0.0.1:9"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1].startswith("jigsaw-data prepare: error: --scheduler tcp://127.0.0.1:9: cannot be reached")
    assert "Traceback" not in "\n".join(err)


@pytest.mark.multirank
def test_regrid_on_one_dask_worker_gives_the_in_process_store_and_its_statistics(tmp_path, capsys):
    """--grid through the CLI: the block tasks interpolate on a Dask worker (--workers 1) and give the store the
    in-process run gives; statistics and the hour-of-day climatology are those of the regridded values; --plan
    shows the target grid and the regrid."""
    src = synth_dataset(19, 36, 8, seed=6)  # 8 six-hourly steps: two per hour of day, an hour climatology
    src.to_zarr(str(tmp_path / "src.zarr"))
    argv = ["prepare", str(tmp_path / "src.zarr"), "--grid", "37x72", "--lat-chunk", "4", "--time-block", "3"]
    assert cli_main([*argv, "--out", str(tmp_path / "plan.zarr"), "--plan"]) == 0
    text = capsys.readouterr().out
    assert "37 x 72 grid" in text and "temperature: ('time', 'level', 'latitude', 'longitude') [8, 2, 37, 72]" in text
    assert "regrid: 19x36 -> 37x72, bilinear (numpy.interp" in text
    assert cli_main([*argv, "--out", str(tmp_path / "w0.zarr"), "--workers", "0"]) == 0
    assert cli_main([*argv, "--out", str(tmp_path / "w1.zarr"), "--workers", "1"]) == 0
    assert_same_store(tmp_path / "w0.zarr", tmp_path / "w1.zarr")
    assert_stats_match_serial(tmp_path / "w1.zarr")
    store, clim = open_all(tmp_path / "w1.zarr")
    assert store["temperature"].shape == (8, 2, 37, 72)
    hourly = store["temperature"].astype(np.float64).groupby("time.hour").mean()
    np.testing.assert_allclose(clim["temperature"].values, hourly.values, rtol=1e-6)  # float32 means

"""What a trained model reads is checked in one place; a command's outputs never overwrite another's.

One tiny run is trained once for the module (1 process, 2 steps, a checkpoint after each); the checks call the
CLIs' `main` in this process. Where a check that fails to refuse would go on to train, `no_process_group`
stops jigsaw-train at its process group instead.
"""
import json
import os
import shutil

import numpy as np
import pytest
import torch
import xarray as xr

from test_checkpoint import train
from test_reliability import cli_error, one_error, write_configs
from jigsaw_ds.checkpoint import cli as ckpt_cli
from jigsaw_ds.checkpoint.manager import CheckpointManager
from jigsaw_ds.data.synth import synth_dataset
from jigsaw_ds.data.writer import write_store
from jigsaw_ds.eval import cli as eval_cli
from jigsaw_ds.parallel import topology
from jigsaw_ds.train import cli as train_cli
from jigsaw_ds.train import run_lock


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """(folder, the store's dataset, the run directory): 17 x 32 grid, 2 steps, checkpoints step 1 and 2."""
    tmp = tmp_path_factory.mktemp("trained")
    ds = synth_dataset(17, 32, 40, seed=2)
    write_store(ds, str(tmp / "store.zarr"))
    proc = train(write_configs(tmp, tmp / "store.zarr", tmp / "run", steps=2))
    assert proc.returncode == 0, proc.stderr[-3000:]
    return tmp, ds, tmp / "run"


@pytest.fixture
def no_process_group(monkeypatch):
    def started(*args, **kwargs):
        raise AssertionError("jigsaw-train got past its checks to the process group")
    monkeypatch.setattr(topology, "init_distributed", started)  # jigsaw-train imports it when it starts the group


def eval_args(checkpoint, data, out, *extra):
    return ["--checkpoint", str(checkpoint), "--data", str(data), "--out", str(out), "--lead-steps", "2",
            *extra]


# ---- 1. one definition of a model's inputs: --resume, --init-from, ensemble members ----------------------------
@pytest.mark.parametrize("changes, expected", [
    (["model.history_steps=1"], ["'model.history_steps' = 1, trained with 0"]),
    (['data.surface_variables=["mean_sea_level_pressure"]'],  # the same channel count, another channel
     ["'channels' = [", "'mean_sea_level_pressure'], trained with [", "'2m_temperature']"]),
    (['data.surface_variables=["2m_temperature","mean_sea_level_pressure"]'],
     ["'channels' = [", "'2m_temperature', 'mean_sea_level_pressure'], trained with ["]),
    (["model.embed_dim=32"], ["'model.embed_dim' = 32, trained with 16"]),
    (["model.embed_dim=32", "model.history_steps=1"],  # each difference named, in one line
     ["'model.embed_dim' = 32, trained with 16", "'model.history_steps' = 1, trained with 0"]),
], ids=["history", "other_channel", "added_channel", "width", "two"])
@pytest.mark.multirank
def test_resume_with_other_inputs_or_width_is_one_line(trained, tmp_path, capsys, no_process_group, changes,
                                                       expected):
    tmp, _, run = trained
    args = write_configs(tmp_path, tmp / "store.zarr", run, steps=3)
    line = cli_error(capsys, args + ["--resume"] + [a for c in changes for a in ("--set", c)])
    assert line.startswith("jigsaw-train: error: --resume:") and all(e in line for e in expected), line
    with pytest.raises(AssertionError, match="process group"):  # the same config passes every check
        train_cli.main(args + ["--resume"])


@pytest.mark.multirank
def test_init_from_is_checked_in_one_line(trained, tmp_path, capsys, no_process_group):
    tmp, ds, run = trained
    new = tmp_path / "new"
    write_store(synth_dataset(25, 32, 20, seed=2), str(tmp_path / "other_grid.zarr"))
    (tmp_path / "other").mkdir()
    other_grid = write_configs(tmp_path / "other", tmp_path / "other_grid.zarr", new)
    line = cli_error(capsys, other_grid + ["--init-from", str(run)])
    assert line.endswith("this config has 'grid' = 25x32, trained with 17x32"), line
    same = write_configs(tmp_path, tmp / "store.zarr", new, steps=3)
    line = cli_error(capsys, same + ["--init-from", str(run), "--set", "model.embed_dim=32"])
    assert "'model.embed_dim' = 32, trained with 16" in line, line
    line = cli_error(capsys, same + ["--init-from", str(run), "--set", "model.history_steps=1"])
    assert "'model.history_steps' = 1, trained with 0" in line, line
    (tmp_path / "junk.pt").write_bytes(b"not a checkpoint")
    assert "is not a layout-free jigsaw_ds checkpoint" in cli_error(capsys, same + ["--init-from",
                                                                                   str(tmp_path / "junk.pt")])
    bare = tmp_path / "bare"  # a run directory without a complete checkpoint
    shutil.copytree(run, bare, ignore=shutil.ignore_patterns("checkpoints"))
    assert "neither a checkpoint folder nor a run directory" in cli_error(capsys, same + ["--init-from", str(bare)])
    assert not new.exists()
    with pytest.raises(AssertionError, match="process group"):
        train_cli.main(same + ["--init-from", str(run)])


@pytest.mark.multirank
def test_ensemble_members_differing_in_inputs_are_one_line(trained, tmp_path, capsys):
    tmp, ds, run = trained
    first = tmp_path / "first.pt"
    assert ckpt_cli.main(["export", str(run), "--out", str(first)]) == 0
    state = torch.load(first, weights_only=False)
    state["config"]["jigsaw"]["data"]["lead_steps"] = 2
    state["config"]["model_shape"]["latitude"] = [float(v) for v in ds.latitude.values[::-1]]
    torch.save(state, tmp_path / "other.pt")
    code = eval_cli.main(eval_args(f"{first},{tmp_path / 'other.pt'}", tmp / "store.zarr", tmp_path / "out", "--no-plots"))
    assert code == 2
    line = one_error(capsys.readouterr().err)
    assert f"ensemble member '{tmp_path / 'other.pt'}' has 'data.lead_steps' = 2, the first ('{first}') 1" in line
    assert "; 'latitude' = -90..90 (17 points), the first" in line and "90..-90 (17 points)" in line, line
    assert not (tmp_path / "out").exists()


# ---- 2. a new run never overwrites an earlier run's outputs ----------------------------------------------------
@pytest.mark.multirank
def test_earlier_outputs_without_checkpoints_are_refused(trained, tmp_path, capsys, no_process_group):
    tmp, _, run = trained
    out = tmp_path / "run"
    shutil.copytree(run, out, ignore=shutil.ignore_patterns("checkpoints"))
    before = (out / "metrics.jsonl").read_text()
    args = write_configs(tmp_path, tmp / "store.zarr", out, steps=3)
    line = cli_error(capsys, args)
    assert "holds outputs of an earlier run" in line and "metrics.jsonl" in line and "--start-over" in line, line
    assert (out / "metrics.jsonl").read_text() == before
    planned = train_cli.plan_run(train_cli.parse_args(args + ["--start-over"]))
    assert train_cli.take_run_dir(planned.cfg, start_over=True) == ""
    run_lock.release(str(out))
    aside = [d for d in os.listdir(out) if d.startswith("superseded-")]
    assert len(aside) == 1 and (out / aside[0] / "metrics.jsonl").read_text() == before
    assert sorted(os.listdir(out / aside[0])) == ["config.json", "metrics.jsonl", "tensorboard"]


@pytest.mark.multirank
def test_out_dir_that_is_a_file_is_one_line_on_every_rank(trained, tmp_path, capsys, monkeypatch, no_process_group):
    tmp, _, _ = trained
    (tmp_path / "a_file").write_text("mine")
    args = write_configs(tmp_path, tmp / "store.zarr", tmp_path / "a_file")
    line = cli_error(capsys, args)
    assert "'train.out_dir'" in line and "is a file" in line, line
    for rank, says in (("0", True), ("1", False)):  # two ranks: each refuses, rank 0 says it
        monkeypatch.setenv("RANK", rank)
        monkeypatch.setenv("WORLD_SIZE", "2")
        with pytest.raises(SystemExit) as e:
            train_cli.main(args)
        assert e.value.code == 2
        err = capsys.readouterr().err
        assert ("is a file" in one_error(err)) if says else "error:" not in err
    assert (tmp_path / "a_file").read_text() == "mine"


@pytest.mark.multirank
@pytest.mark.parametrize("nproc", [1, 2])
def test_read_only_out_dir_is_one_line(trained, tmp_path, nproc):
    tmp, _, _ = trained
    proc = train(write_configs(tmp_path, tmp / "store.zarr", "/sys/jigsaw-reliability-run"), nproc=nproc)
    if nproc == 1:
        assert proc.returncode == 2, proc.stderr[-3000:]
        line = one_error(proc)
    else:  # torchrun exits 1 when a rank fails (and says so with a traceback of its own): no rank raised
        assert proc.returncode == 1 and "exitcode  : 2" in proc.stderr, proc.stderr[-3000:]
        assert "[rank0]:" not in proc.stderr and "[rank1]:" not in proc.stderr, proc.stderr[-3000:]
        line, = [line for line in proc.stderr.splitlines() if "error:" in line]
    assert "'train.out_dir' = '/sys/jigsaw-reliability-run' cannot be written" in line, line


# ---- 3. evaluation and forecast outputs: never over another command's -----------------------------------------
@pytest.mark.multirank
def test_forecast_and_eval_never_overwrite_each_other(trained, tmp_path, capsys):
    tmp, _, run = trained
    store, out = tmp / "store.zarr", tmp_path / "eval"
    assert eval_cli.main(eval_args(run, store, out, "--inits", "2", "--no-plots")) == 0
    capsys.readouterr()
    forecast = eval_args(run, store, out, "--init-times", "2020-01-10T00")
    assert eval_cli.forecast_main(forecast) == 2
    assert "--overwrite" in one_error(capsys.readouterr().err)
    assert xr.open_zarr(out / "forecast.zarr").sizes["time"] == 2 and (out / "scores.json").exists()  # untouched
    assert eval_cli.forecast_main(forecast + ["--overwrite"]) == 0
    assert xr.open_zarr(out / "forecast.zarr").sizes["time"] == 1
    assert not (out / "scores.json").exists()  # no scores of another forecast left beside it
    capsys.readouterr()
    assert eval_cli.main(eval_args(run, store, out, "--inits", "2", "--no-plots")) == 2
    assert "--overwrite" in one_error(capsys.readouterr().err)
    assert (out / "forecast.json").exists()


@pytest.mark.multirank
def test_forecast_with_no_initial_time_is_one_line(trained, tmp_path, capsys):
    tmp, _, run = trained
    assert eval_cli.forecast_main(eval_args(run, tmp / "store.zarr", tmp_path / "fc", "--init-times", ",")) == 2
    assert "--init-times" in one_error(capsys.readouterr().err)
    assert not (tmp_path / "fc").exists()


@pytest.mark.multirank
def test_export_to_an_existing_directory_is_one_line(trained, tmp_path, capsys):
    _, _, run = trained
    assert ckpt_cli.main(["export", str(run), "--out", str(tmp_path)]) == 2
    assert "is a directory" in one_error(capsys.readouterr().err)


# ---- 4. evaluation on the trained grid's coordinates, not only its size ----------------------------------------
@pytest.mark.parametrize("case, expected", [
    ("other_lat", ["'latitude' = 80..-80 (17 points), the model was trained on 90..-90 (17 points)"]),
    ("lat_reversed_other_lon", ["'longitude' = 5..353.75 (32 points), the model was trained on 0..348.75 (32 points)"]),
])
@pytest.mark.multirank
def test_eval_on_other_coordinates_of_the_same_size_is_one_line(trained, tmp_path, capsys, case, expected):
    tmp, ds, run = trained
    if case == "other_lat":
        other = ds.assign_coords(latitude=np.linspace(80, -80, 17))
    else:  # an exact reorder of the latitudes, but longitudes that are no reorder of the trained ones
        other = ds.isel(latitude=slice(None, None, -1)).assign_coords(longitude=ds.longitude + 5)
    write_store(other, str(tmp_path / "other.zarr"))
    assert eval_cli.main(eval_args(run, tmp_path / "other.zarr", tmp_path / "out", "--no-plots")) == 2
    line = one_error(capsys.readouterr().err)
    assert all(e in line for e in expected), line
    assert not (tmp_path / "out").exists()


REORDERS = {  # name -> (the store's latitudes reversed, its first column), what jigsaw-eval says
    "lat_reversed": ((True, 0), "holds latitudes in reverse order (south to north): read in the trained order"),
    "lon_-180": ((False, 16), "holds longitudes -180..168.75, the trained 0..348.75 rolled by 16 columns: read in"),
    "both": ((True, 20), "holds latitudes in reverse order (south to north) and longitudes -135..213.75, the "
                         "trained 0..348.75 rolled by 12 columns: read in the trained order"),
}


@pytest.fixture(scope="module")
def eval_in_trained_order(trained):
    tmp, _, run = trained
    assert eval_cli.main(eval_args(run, tmp / "store.zarr", tmp / "eval_trained_order", "--inits", "4", "--no-plots")) == 0
    return tmp / "eval_trained_order"


@pytest.mark.multirank
@pytest.mark.parametrize("case", list(REORDERS))
def test_eval_on_the_trained_grid_in_another_order_reorders_it(trained, eval_in_trained_order, tmp_path, capsys,
                                                                no_process_group, case):
    """WB2's ERA5 is south to north, CDS's north to south; longitudes -180..180 or 0..360: jigsaw-eval reads such a
    store in the trained order (one line says so) and scores and writes what it would on the trained order (plots
    too: their truth is read through the store's view); jigsaw-train --resume still refuses it, naming the reorder."""
    from test_reliability_data import reordered

    tmp, ds, run = trained
    (flip, first), said = REORDERS[case]
    store = tmp_path / "reordered.zarr"
    write_store(reordered(ds, flip, first), str(store))
    capsys.readouterr()
    plots = [] if case == "both" else ["--no-plots"]
    assert eval_cli.main(eval_args(run, store, tmp_path / "out", "--inits", "4", *plots)) == 0
    assert f"jigsaw-eval: store '{store}' {said}" in capsys.readouterr().out
    want, got = (json.loads((p / "scores.json").read_text())["rows"] for p in (eval_in_trained_order, tmp_path / "out"))
    assert [{k: r[k] for k in ("region", "channel", "lead_hours", "metric")} for r in got] == \
        [{k: r[k] for k in ("region", "channel", "lead_hours", "metric")} for r in want]
    for a, b in zip(got, want):
        for kind in ("model", "persistence", "climatology"):
            assert a[kind] == pytest.approx(b[kind], rel=1e-6, abs=1e-9, nan_ok=True), (a, b)
    fc, ref = (xr.open_zarr(p / "forecast.zarr") for p in (tmp_path / "out", eval_in_trained_order))
    np.testing.assert_array_equal(fc["latitude"].values, ds["latitude"].values)
    np.testing.assert_allclose(fc["longitude"].values, ds["longitude"].values)
    for var in ref.data_vars:
        np.testing.assert_allclose(fc[var].values, ref[var].values, rtol=1e-6, atol=1e-6)
    if case == "both":
        assert (tmp_path / "out" / "maps_2m_temperature.png").exists()
    line = cli_error(capsys, write_configs(tmp_path, store, run, steps=3) + ["--resume"])
    assert ("the trained latitudes reversed" if flip else "the trained longitudes rolled by 16 columns") in line, line


@pytest.mark.multirank
def test_eval_normalises_as_the_model_was_trained_not_by_the_stores_statistics(trained, eval_in_trained_order,
                                                                              tmp_path, capsys, no_process_group):
    """A store of other times (a test year prepared on its own) has other means and spreads: the model's inputs
    are normalised with the statistics recorded in its run (config.json, every checkpoint), so the same data
    under other attrs['jigsaw_stats'] scores as the training store does; a --resume on it keeps the run's."""
    import zarr

    from jigsaw_ds.data.store import STATS_ATTR

    tmp, ds, run = trained
    recorded = json.loads((run / "config.json").read_text())["statistics"]
    other = tmp_path / "other_year.zarr"
    shutil.copytree(tmp / "store.zarr", other)
    group = zarr.open_group(str(other), mode="r+")
    stats = dict(group.attrs[STATS_ATTR])
    stats = {name: {**s, "mean": s["mean"] + 0.5 * s["std"], "std": 1.5 * s["std"]} for name, s in stats.items()}
    group.attrs[STATS_ATTR] = stats
    zarr.consolidate_metadata(str(other))
    assert eval_cli.main(eval_args(run, other, tmp_path / "out", "--inits", "4", "--no-plots")) == 0
    want, got = (json.loads((p / "scores.json").read_text())["rows"] for p in (eval_in_trained_order, tmp_path / "out"))
    for a, b in zip(got, want):
        assert a["model"] == pytest.approx(b["model"], rel=1e-6, abs=1e-9, nan_ok=True), (a, b)
    # the trainer's side: fine-tuning the model on that store (--init-from) keeps the model's normalisation
    fresh = train_cli.plan_run(train_cli.parse_args(write_configs(tmp_path, other, tmp_path / "ft", steps=3)))
    assert fresh.store.mean.tolist() != recorded["mean"]  # a new run: the store's own
    tuned = train_cli.plan_run(train_cli.parse_args(write_configs(tmp_path, other, tmp_path / "ft", steps=3)
                                                    + ["--init-from", str(run)]))
    assert tuned.store.mean.tolist() == recorded["mean"] and tuned.store.std.tolist() == recorded["std"]
    assert tuned.trained_statistics["lead_tendency_std"] == recorded["lead_tendency_std"]


@pytest.mark.multirank
def test_run_records_its_grid(trained):
    tmp, ds, run = trained
    shape = json.loads((run / "config.json").read_text())["model_shape"]
    assert shape["latitude"] == list(ds.latitude.values) and shape["longitude"] == list(ds.longitude.values)
    assert shape["time_step_hours"] == 6


# ---- 5. a manifest entry without its size is an invalid checkpoint ---------------------------------------------
@pytest.mark.multirank
def test_manifest_entry_without_bytes_is_refused(trained, tmp_path, capsys, no_process_group):
    tmp, _, run = trained
    out = tmp_path / "run"
    shutil.copytree(run, out)
    manifest = out / "checkpoints" / "step_00000002" / "MANIFEST.json"
    record = json.loads(manifest.read_text())
    del record["files"]["__0_0.distcp"]["bytes"]
    manifest.write_text(json.dumps(record))
    tag, refused = CheckpointManager(str(out / "checkpoints"), 1).latest_complete()
    assert tag == "step_00000001" and refused == ["step_00000002: manifest entry of __0_0.distcp lacks its "
                                                  "size or sha256"]
    assert ckpt_cli.main(["info", str(out / "checkpoints" / "step_00000002")]) == 2
    assert "is refused: manifest entry of __0_0.distcp" in one_error(capsys.readouterr().err)
    assert ckpt_cli.main(["info", str(out)]) == 0
    assert "refused step_00000002: manifest entry" in capsys.readouterr().out
    args = write_configs(tmp_path, tmp / "store.zarr", out, steps=3)
    with pytest.raises(AssertionError, match="process group"):  # --resume goes on, from step 1
        train_cli.main(args + ["--resume"])


# ---- 6. who is rank 0 under srun, before the process group ------------------------------------------------------
@pytest.mark.multirank
def test_eval_errors_said_by_the_slurm_rank_0_only(trained, tmp_path, capsys, monkeypatch):
    tmp, _, run = trained
    monkeypatch.delenv("RANK", raising=False)
    monkeypatch.setenv("SLURM_NTASKS", "2")
    for rank, says in (("1", False), ("0", True)):
        monkeypatch.setenv("SLURM_PROCID", rank)
        assert eval_cli.main(eval_args(run, tmp / "store.zarr", tmp_path / "out", "--inits", "0")) == 2
        err = capsys.readouterr().err
        assert ("--inits must be >= 1" in one_error(err)) if says else "error:" not in err, err


def test_a_model_too_large_for_the_machine_is_one_line_before_building(tmp_path, synth_store, capsys):
    """A huge model.embed_dim: one line naming the key and the memory it needs, before any process group or
    allocation (it used to end in an allocation error on every rank)."""
    args = write_configs(tmp_path, synth_store, tmp_path / "run")
    line = cli_error(capsys, args + ["--set", "model.embed_dim=1000000", "--set", "model.channel_hidden=1000000"])
    assert "model.embed_dim = 1000000" in line and "GiB per rank" in line
    assert not os.path.exists(tmp_path / "run")


# ---- who says an error: rank 0 for what every rank sees, the rank itself for what only it sees --------------
def test_run_main_says_each_error_once(capsys):
    """errors.run_main, every CLI's: a JigsawError is said by rank 0 (exit 2), a RankLocalError by the rank whose
    `say` is set, a RunStopped by rank 0 (exit 1); any other exception propagates."""
    from jigsaw_ds import errors

    def raising(e):
        raise e

    for rank, e, code, says in [(0, errors.StoreError("every rank"), 2, True), (1, errors.ConfigError("x"), 2, False),
                                (1, errors.RankLocalError("its tile"), 2, True),
                                (0, errors.RankLocalError("another rank of its replica says it", say=False), 2, False),
                                (1, errors.StoreReadError("a chunk of its tile"), 2, True),
                                (0, errors.NonFiniteError("step 3"), 1, True), (1, errors.CheckpointError("x"), 1, False)]:
        assert errors.run_main("prog", rank, raising, e) == code
        assert capsys.readouterr().err == (f"prog: error: {e}\n" if says else ""), (rank, e)
    with pytest.raises(ValueError, match="a bug"):
        errors.run_main("prog", 0, raising, ValueError("a bug"))


def test_bad_values_in_one_ranks_tile_are_said_by_that_rank(tmp_path, capsys, monkeypatch, no_process_group):
    """NaN in the last latitude row only, two ranks splitting the latitudes (parallel.domain = 2): rank 1 finds
    it in its own tile and says so itself (a RankLocalError: rank 0 cannot know), exit 2; rank 0 finds none,
    says nothing and goes on to its process group."""
    ds = synth_dataset(33, 64, 40, seed=3)
    ds["2m_temperature"][5, -1, 7] = np.nan
    write_store(ds, str(tmp_path / "store.zarr"))
    args = write_configs(tmp_path, tmp_path / "store.zarr", tmp_path / "run") + ["--set", "parallel.domain=2"]
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("RANK", "1")
    with pytest.raises(SystemExit) as e:
        train_cli.main(args)
    assert e.value.code == 2
    line = one_error(capsys.readouterr().err)
    assert "variable '2m_temperature' has NaN/inf" in line, line
    monkeypatch.setenv("RANK", "0")
    with pytest.raises(AssertionError, match="got past its checks"):
        train_cli.main(args)
    assert "error:" not in capsys.readouterr().err

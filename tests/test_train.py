"""jigsaw-train end to end: learning, outputs, exact resume, and a (1,2,2) launch matching one process."""
import json
import os
import shutil
import subprocess

import pytest

from conftest import BIN, ROOT, run, spawn_env
from jigsaw_ds.checkpoint.manager import CheckpointManager, verify

pytestmark = pytest.mark.multirank  # every test here runs a multi-process job

STEPS = 12


def write_configs(tmp_path, store, out_dir, **parallel):
    conf = {"model": {"patch": 4, "embed_dim": 32, "token_hidden": 32, "channel_hidden": 64, "depth": 2,
                      "static_variables": ["land_sea_mask"]},
            "data": {"store": store, "variables": ["geopotential", "temperature"],
                     "surface_variables": ["2m_temperature"], "levels": [500, 850]},
            "parallel": parallel or {"domain": 1, "tensor": 1},
            "train": {"steps": STEPS, "global_batch": 4, "seed": 3, "out_dir": str(out_dir), "val_every": 6,
                      "val_batches": 2, "ckpt_every": 6, "ckpt_keep": 2, "progress": False}}
    ds = {"zero_optimization": {"stage": 1}, "gradient_clipping": 1.0,
          "optimizer": {"type": "AdamW", "params": {"lr": 3e-3, "weight_decay": 0.0, "torch_adam": True}},
          "csv_monitor": {"enabled": True, "output_path": str(out_dir / "csv"), "job_name": "job"}}
    (tmp_path / "jigsaw.json").write_text(json.dumps(conf))
    (tmp_path / "ds.json").write_text(json.dumps(ds))
    return [os.path.join(BIN, "jigsaw-train"), "--config", str(tmp_path / "jigsaw.json"),
            "--deepspeed_config", str(tmp_path / "ds.json")]


def read_metrics(out_dir):
    with open(os.path.join(out_dir, "metrics.jsonl")) as f:
        return [json.loads(line) for line in f]


@pytest.fixture(scope="module")
def serial_run(tmp_path_factory, synth_store):
    tmp = tmp_path_factory.mktemp("serial")
    run(write_configs(tmp, synth_store, tmp / "run"))
    return tmp / "run"


def test_outputs_and_learning(serial_run):
    metrics = read_metrics(serial_run)
    assert [m["step"] for m in metrics] == list(range(1, STEPS + 1))
    for key in ("loss", "lr", "grad_norm", "samples_per_s", "tflops_per_gpu", "data_wait_frac", "comm_bytes"):
        assert key in metrics[0]
    losses = [m["loss"] for m in metrics]
    assert sum(losses[-3:]) < 0.9 * sum(losses[:3]), losses
    assert "val_loss_persistence" in metrics[-1]
    assert os.listdir(serial_run / "tensorboard")
    assert json.load(open(serial_run / "config.json"))["layout"] == {"data": 1, "domain": 1, "tensor": 1}
    # the same scalars through DeepSpeed's monitor, as the user's DeepSpeed JSON asked (csv_monitor here)
    with open(serial_run / "csv" / "job" / "jigsaw_loss.csv") as f:
        rows = f.read().splitlines()[1:]
    assert [float(r.split(",")[1]) for r in rows] == pytest.approx(losses)


def test_resume_continues_exactly(serial_run, tmp_path, synth_store):
    """Copy the step-6 checkpoint into a fresh run and resume: steps 7-12 equal the uninterrupted run."""
    out = tmp_path / "resumed"
    os.makedirs(out / "checkpoints")
    shutil.copytree(serial_run / "checkpoints" / "step_00000006", out / "checkpoints" / "step_00000006")
    run(write_configs(tmp_path, synth_store, out) + ["--resume"])
    resumed = {m["step"]: m["loss"] for m in read_metrics(out)}
    full = {m["step"]: m["loss"] for m in read_metrics(serial_run)}
    assert sorted(resumed) == list(range(7, STEPS + 1))
    assert all(resumed[s] == full[s] for s in resumed), (resumed, full)


def test_new_run_into_an_out_dir_with_checkpoints_is_refused(serial_run, tmp_path, synth_store):
    cmd = write_configs(tmp_path, synth_store, serial_run)
    proc = subprocess.run(cmd, cwd=ROOT, env=spawn_env(), capture_output=True, text=True, timeout=300)
    assert proc.returncode == 2
    assert "'train.out_dir'" in proc.stderr and "step_00000012" in proc.stderr and "--resume" in proc.stderr
    assert len(read_metrics(serial_run)) == STEPS  # the earlier run's outputs are untouched


def test_partial_checkpoint_is_refused(serial_run, tmp_path):
    root = tmp_path / "checkpoints"
    shutil.copytree(serial_run / "checkpoints", root)
    # a save that died: files written, no manifest
    shutil.copytree(root / "step_00000012", root / "step_00000018")
    os.remove(root / "step_00000018" / "MANIFEST.json")
    # a corrupt one: a shard truncated after its manifest was written
    shutil.copytree(root / "step_00000012", root / "step_00000015")
    shard = next(p for p in (root / "step_00000015").iterdir() if p.name.endswith(".distcp"))
    shard.write_bytes(shard.read_bytes()[:100])
    tag, refused = CheckpointManager(str(root), 2).latest_complete()
    assert tag == "step_00000012"
    assert "no manifest" in refused[0] and "does not match" in refused[1]
    assert verify(str(root / "step_00000012")) == ""


def test_jigsaw_layout_under_deepspeed_launcher_matches_one_process(serial_run, tmp_path, synth_store):
    cmd = write_configs(tmp_path, synth_store, tmp_path / "run", domain=2, tensor=2)
    run([os.path.join(BIN, "deepspeed"), "--num_gpus", "4"] + cmd[:1] + cmd[1:])
    parallel = read_metrics(tmp_path / "run")
    serial = read_metrics(serial_run)
    for p, s in zip(parallel, serial):
        assert p["loss"] == pytest.approx(s["loss"], rel=1e-5), (p["step"], p["loss"], s["loss"])
    assert parallel[-1]["val_loss"] == pytest.approx(serial[-1]["val_loss"], rel=1e-5)
    assert parallel[0]["comm_bytes"]["all_reduce/jigsaw"] > 0


def test_rollout_training_runs_and_learns(tmp_path, synth_store):
    """train.rollout_steps = 3: the loss is the mean over a 3-step rollout, gradient through it."""
    cmd = write_configs(tmp_path, synth_store, tmp_path / "run")
    run(cmd + ["--set", "train.rollout_steps=3", "--set", "train.steps=8", "--set", "train.ckpt_every=0"])
    losses = [m["loss"] for m in read_metrics(tmp_path / "run")]
    assert len(losses) == 8 and all(l == l for l in losses)
    assert sum(losses[-2:]) < sum(losses[:2])


def test_lon_roll_and_history_train_alike_at_a_layout_and_evaluate(serial_run, tmp_path, synth_store, capsys):
    """data.lon_roll = true with model.history_steps = 1: other losses than serial_run's and than the same run
    without the roll from the first step on, learning; at (1, 2, 2) under the launcher every rank reads its
    tile of the same rolled samples with their history (same losses as one process); jigsaw-eval and
    jigsaw-forecast feed the history to the rollout and refuse an initial time that has none, and an ensemble
    of members with other inputs (serial_run has no history) is one error naming the key."""
    import xarray as xr

    from jigsaw_ds.eval import cli as eval_cli

    steps = ["--set", "data.lon_roll=true", "--set", "model.history_steps=1", "--set", "train.steps=6",
             "--set", "train.ckpt_every=0"]
    for sub in ("a", "b", "c"):
        os.makedirs(tmp_path / sub)
    run(write_configs(tmp_path / "a", synth_store, tmp_path / "a" / "run") + steps)
    run(write_configs(tmp_path / "c", synth_store, tmp_path / "c" / "run") + steps[2:])  # history, no roll
    cmd = write_configs(tmp_path / "b", synth_store, tmp_path / "b" / "run", domain=2, tensor=2)
    run([os.path.join(BIN, "deepspeed"), "--num_gpus", "4"] + cmd + steps)
    rolled, parallel, plain, unrolled = (read_metrics(p) for p in (tmp_path / "a" / "run", tmp_path / "b" / "run",
                                                                   serial_run, tmp_path / "c" / "run"))
    assert all(r["loss"] != p["loss"] for r, p in zip(rolled, plain))
    assert all(r["loss"] != u["loss"] for r, u in zip(rolled, unrolled))  # the roll itself reaches the trainer
    assert rolled[-1]["loss"] < rolled[0]["loss"]
    for p, s in zip(parallel, rolled):
        assert p["loss"] == pytest.approx(s["loss"], rel=1e-5), (p["step"], p["loss"], s["loss"])
    assert eval_cli.main(["--checkpoint", str(tmp_path / "a" / "run"), "--data", synth_store, "--out",
                    str(tmp_path / "eval"), "--lead-steps", "2", "--inits", "3", "--no-plots"]) == 0
    rmse = [r["model"] for r in json.load(open(tmp_path / "eval" / "scores.json"))["rows"] if r["metric"] == "rmse"]
    assert rmse and all(0 < v < float("inf") for v in rmse)
    first = str(xr.open_zarr(synth_store)["time"].values[0])[:19]  # no state before it
    assert eval_cli.forecast_main(["--checkpoint", str(tmp_path / "a" / "run"), "--data", synth_store, "--out",
                             str(tmp_path / "fc"), "--init-times", first]) == 2
    assert "model.history_steps" in capsys.readouterr().err
    assert eval_cli.main(["--checkpoint", f"{tmp_path / 'a' / 'run'},{serial_run}", "--data", synth_store, "--out",
                    str(tmp_path / "ens"), "--no-plots"]) == 2
    assert f"ensemble member '{serial_run}' has 'model.history_steps' = 0" in capsys.readouterr().err


def test_gradient_accumulation_equals_the_whole_batch_at_two_layouts(serial_run, tmp_path, synth_store):
    """train.micro_batch: the global batch of 4 in micro-batches of 1, in one process (4 accumulated) and at
    data 2 x tensor 2 under the launcher (2 accumulated per replica): the losses, gradient norms and
    validation losses of the unaccumulated one-process run, in fp32."""
    serial = read_metrics(serial_run)
    one = tmp_path / "one"
    one.mkdir()
    run(write_configs(one, synth_store, one / "run") + ["--set", "train.micro_batch=1"])
    cmd = write_configs(tmp_path, synth_store, tmp_path / "run", domain=1, tensor=2)
    run([os.path.join(BIN, "deepspeed"), "--num_gpus", "4"] + cmd + ["--set", "train.micro_batch=1"])
    for out in (one / "run", tmp_path / "run"):
        config = json.load(open(out / "config.json"))
        assert config["deepspeed"]["gradient_accumulation_steps"] == (4 if out == one / "run" else 2)
        for p, s in zip(read_metrics(out), serial, strict=True):
            assert p["loss"] == pytest.approx(s["loss"], rel=1e-5), (out, p["step"], p["loss"], s["loss"])
            assert p["grad_norm"] == pytest.approx(s["grad_norm"], rel=1e-4), (out, p["step"])
        assert p["val_loss"] == pytest.approx(s["val_loss"], rel=1e-5)


def test_a_finished_run_says_so_and_exits_before_any_start_up(serial_run, tmp_path, synth_store):
    """--resume of a run whose newest checkpoint is at train.steps: one line, exit 0, no engine, nothing
    written (the outputs are untouched)."""
    before = read_metrics(serial_run)
    proc = subprocess.run(write_configs(tmp_path, synth_store, serial_run) + ["--resume"], cwd=ROOT, env=spawn_env(),
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert f"already finished at step {STEPS}" in proc.stdout and "train.steps" in proc.stdout
    assert "DeepSpeed" not in proc.stdout + proc.stderr and read_metrics(serial_run) == before


def test_persistence_scores_alike_at_a_two_step_lead(serial_run, tmp_path, synth_store):
    """data.lead_steps = 2: the loss (and the model's output scaling) is in units of each channel's change over
    the model's step, two store steps, estimated from training pairs at start-up (here all of them: the std of
    every 2-step change); so persistence's validation loss is what it is at one step (about 1: 1.4 on these
    waves, whose changes are largest where the area weights are), not about 4 (one-step units)."""
    import numpy as np

    from jigsaw_ds.data.store import WeatherStore
    from jigsaw_ds.parallel.topology import JigsawGroups
    from jigsaw_ds.train.trainer import lead_tendency_std

    store = WeatherStore(synth_store, ["geopotential", "temperature"], ["2m_temperature"], [500, 850])
    n, tile = len(store.times), (slice(0, store.n_lat), slice(0, store.n_lon))
    starts = np.arange(n - 2)  # the fixture store is one trajectory
    x = store.read_raw(list(range(n)), *tile).astype(np.float64)
    change = (x[2:] - x[:-2]).transpose(1, 0, 2, 3).reshape(len(store.channels), -1)
    np.testing.assert_allclose(lead_tendency_std(store, starts, 2, *tile, JigsawGroups.serial()), change.std(1),
                               rtol=1e-5)
    assert lead_tendency_std(store, starts, 1, *tile, JigsawGroups.serial()) is store.tendency_std  # prepare's

    run(write_configs(tmp_path, synth_store, tmp_path / "run") + ["--set", "data.lead_steps=2", "--set",
                                                                   "train.steps=2", "--set", "train.val_every=2"])
    two = read_metrics(tmp_path / "run")[-1]["val_loss_persistence"]
    one = read_metrics(serial_run)[-1]["val_loss_persistence"]
    assert two == pytest.approx(one, rel=0.1), (two, one)

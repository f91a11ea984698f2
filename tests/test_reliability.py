"""Bad input gets one clear error before any work is lost; no silent wrong result ends with exit 0.

Most checks call the CLIs' `main` in this process (no process group starts on these paths); the ones that
must train run jigsaw-train as a subprocess on one rank; the kill -9 fault injection runs 4 ranks.
"""
import json
import os
import shutil
import signal
import subprocess
import time

import numpy as np
import psutil
import pytest
import torch
import zarr

from conftest import BIN, ROOT, spawn_env
from test_checkpoint import train
from jigsaw_ds.checkpoint import cli as ckpt_cli
from jigsaw_ds.checkpoint.layout_free import FORMAT
from jigsaw_ds.checkpoint.manager import load_full, verify
from jigsaw_ds.config import ModelConfig
from jigsaw_ds.data.store import WeatherStore
from jigsaw_ds.data.synth import synth_dataset
from jigsaw_ds.data.writer import write_store
from jigsaw_ds.eval import evaluate as ev
from jigsaw_ds.eval import cli as eval_cli
from jigsaw_ds.model import WeatherMixer
from jigsaw_ds.train import cli as train_cli
from jigsaw_ds.train import run_lock

MODEL = {"patch": 4, "embed_dim": 16, "token_hidden": 16, "channel_hidden": 32, "depth": 1}


def write_configs(tmp, store, out_dir, steps=4, ckpt_every=1, **ds_changes):
    conf = {"model": MODEL, "data": {"store": str(store), "variables": ["temperature"],
                                     "surface_variables": ["2m_temperature"], "levels": [500, 850]},
            "parallel": {"domain": 1, "tensor": 1},
            "train": {"steps": steps, "global_batch": 2, "seed": 1, "out_dir": str(out_dir), "val_every": 100,
                      "val_batches": 1, "ckpt_every": ckpt_every, "ckpt_keep": 10, "progress": False}}
    ds = {"zero_optimization": {"stage": 1}, "gradient_clipping": 1.0,
          "optimizer": {"type": "AdamW", "params": {"lr": 1e-3, "torch_adam": True}}}
    ds.update(ds_changes)
    (tmp / "j.json").write_text(json.dumps(conf))
    (tmp / "ds.json").write_text(json.dumps({k: v for k, v in ds.items() if v is not None}))
    return ["--config", str(tmp / "j.json"), "--deepspeed_config", str(tmp / "ds.json")]


def one_error(proc_or_text, code=2) -> str:
    """The single 'error:' line of a failed run (tracebacks are not allowed)."""
    text = proc_or_text if isinstance(proc_or_text, str) else proc_or_text.stderr
    assert "Traceback" not in text, text[-3000:]
    lines = [line for line in text.splitlines() if "error:" in line]
    assert len(lines) == 1, text[-3000:]
    return lines[0]


def cli_error(capsys, argv) -> str:
    with pytest.raises(SystemExit) as e:
        train_cli.main(argv)
    assert e.value.code == 2
    return one_error(capsys.readouterr().err)


def checkpoints(out_dir):
    return sorted(t for t in os.listdir(os.path.join(out_dir, "checkpoints")) if t.startswith("step_"))


def steps_logged(out_dir):
    with open(os.path.join(out_dir, "metrics.jsonl")) as f:
        lines = f.read().splitlines()
    return [json.loads(line)["step"] for line in lines if line.endswith("}")]  # not a line a kill cut short


# ---- configs: one line, exit 2, before anything exists ---------------------------------------------------------
@pytest.mark.parametrize("change, expected", [
    ({"optimizer": None}, "has no optimizer section"),
    ({"optimizer": {"type": "Lamb"}}, "optimizer.type 'Lamb' is not supported"),
    ({"fp16": {"enabled": True}}, "fp16 is not supported"),
    ({"zero_optimization": {"stage": 3}}, "zero_optimization.stage = 3"),
    ({"zero_optimization": {"stage": 0}}, "zero_optimization.stage = 0"),
    ({"zero_optimization": [1]}, "zero_optimization must be an object"),
    ({"train_batch_size": "2"}, "DeepSpeed config key 'train_batch_size' = 2 disagrees"),
])
def test_deepspeed_config_problems_are_one_line(tmp_path, capsys, synth_store, change, expected):
    args = write_configs(tmp_path, synth_store, tmp_path / "run", **change)
    assert expected in cli_error(capsys, args)
    assert not os.path.exists(tmp_path / "run")


def test_config_files_that_are_not_objects(tmp_path, capsys, synth_store):
    args = write_configs(tmp_path, synth_store, tmp_path / "run")
    assert "is a directory" in cli_error(capsys, ["--config", str(tmp_path)] + args[2:])
    (tmp_path / "list.json").write_text("[1, 2]")
    assert "must hold a JSON object, got a list" in cli_error(capsys, ["--config", str(tmp_path / "list.json")] + args[2:])
    assert "must hold a JSON object" in cli_error(capsys, args[:2] + ["--deepspeed_config", str(tmp_path / "list.json")])


def test_a_store_to_generate_is_checked_before_it_is_made(tmp_path, capsys):
    args = write_configs(tmp_path, tmp_path / "made.zarr", tmp_path / "run")
    conf = json.loads((tmp_path / "j.json").read_text())
    conf["data"].update(levels=[500, 1000], generate={"kind": "synth", "grid": [9, 16], "times": 20})
    (tmp_path / "j.json").write_text(json.dumps(conf))
    assert "'data.levels' lists [1000], which data.generate kind 'synth' does not write" in cli_error(capsys, args)
    assert not os.path.exists(tmp_path / "made.zarr") and not os.path.exists(tmp_path / "run")


def test_a_time_gap_without_trajectories_is_never_a_training_pair(tmp_path):
    """A store written without a `trajectory` coordinate (not by prepare) whose times jump: the gap splits it,
    as prepare would have marked it."""
    ds = synth_dataset(9, 16, 30, seed=3)
    gapped = ds.isel(time=list(range(0, 12)) + list(range(20, 30)))  # 6 h steps, then a 54 h jump
    write_store(gapped, str(tmp_path / "gapped.zarr"))
    store = WeatherStore(str(tmp_path / "gapped.zarr"), ["temperature"], [], [500])
    assert 11 not in store.pair_starts(1) and 10 in store.pair_starts(1) and 12 in store.pair_starts(1)
    assert set(store.pair_starts(2)) == set(range(10)) | set(range(12, 20))


# ---- one owner per run directory --------------------------------------------------------------------------------
@pytest.mark.multirank
def test_run_lock_refuses_a_live_owner_and_takes_over_a_dead_one(tmp_path, monkeypatch):
    out = str(tmp_path / "run")
    assert run_lock.acquire(out) == ""
    with pytest.raises(run_lock.RunDirBusy, match=f"in use by another run \\(pid {os.getpid()}"):
        run_lock.acquire(out)
    run_lock.release(out)
    dead = subprocess.Popen(["true"])
    dead.wait()
    lock = {"host": os.uname().nodename, "pid": dead.pid, "slurm_job_id": "", "started": "then"}
    (tmp_path / "run" / run_lock.LOCK).write_text(json.dumps(lock))
    assert "dead run (pid" in run_lock.acquire(out)
    run_lock.release(out)
    # a requeued SLURM job of the same run, whose lock names a host that is not this one
    (tmp_path / "run" / run_lock.LOCK).write_text(json.dumps(dict(lock, host="elsewhere", slurm_job_id="77")))
    monkeypatch.setenv("SLURM_JOB_ID", "77")
    assert "requeued SLURM job 77" in run_lock.acquire(out)
    run_lock.release(out)
    assert not os.path.exists(tmp_path / "run" / run_lock.LOCK)


@pytest.mark.multirank
def test_two_runs_into_one_out_dir(tmp_path, synth_store):
    """Started together: one trains, the other is refused before it writes anything."""
    args = write_configs(tmp_path, synth_store, tmp_path / "run", steps=3, ckpt_every=0)
    cmd = [os.path.join(BIN, "jigsaw-train")] + args
    procs = [subprocess.Popen(cmd, cwd=ROOT, env=spawn_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                              text=True) for _ in range(2)]
    results = [(p.wait(timeout=600), p.stderr.read()) for p in procs]
    codes = sorted(code for code, _ in results)
    assert codes == [0, 2], results
    refused = next(err for code, err in results if code == 2)
    assert "is in use by another run" in one_error(refused)
    assert steps_logged(tmp_path / "run") == [1, 2, 3]


# ---- training: stop at the first non-finite loss, keep the last good checkpoint ---------------------------------
@pytest.fixture(scope="module")
def good_run(tmp_path_factory):
    """2 steps with a checkpoint after each, on a store of its own (the tests below damage it)."""
    tmp = tmp_path_factory.mktemp("good")
    store = tmp / "store.zarr"
    write_store(synth_dataset(17, 32, 40, seed=2), str(store))
    args = write_configs(tmp, store, tmp / "run", steps=2)
    proc = train(args)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return tmp, store, args


@pytest.mark.multirank
def test_non_finite_loss_stops_before_saving(good_run, tmp_path):
    tmp, store, _ = good_run
    bad_store, run = tmp_path / "store.zarr", tmp_path / "run"
    shutil.copytree(store, bad_store)
    shutil.copytree(tmp / "run" / "checkpoints", run / "checkpoints")
    shutil.copy(tmp / "run" / "metrics.jsonl", run / "metrics.jsonl")
    # finite garbage that decodes (as a flipped byte in a chunk's payload can give): 4.5e33 everywhere
    arr = zarr.open_array(str(bad_store / "2m_temperature"), mode="r+")
    arr[:] = np.full(arr.shape, 4.5e33, np.float32)
    args = write_configs(tmp_path, bad_store, run, steps=4)
    proc = train(args + ["--resume"])
    assert proc.returncode == 1
    line = one_error(proc)
    assert "step 3: loss inf" in line or "step 3: loss nan" in line, line
    assert "input times" in line and "2020-01-" in line
    assert checkpoints(run) == ["step_00000001", "step_00000002"]
    assert steps_logged(run) == [1, 2]


@pytest.mark.multirank
def test_full_disk_during_a_save(good_run, tmp_path):
    """ENOSPC while writing step 3's shards: one message, exit 1, no partial folder; --resume then works."""
    _, store, _ = good_run
    args = write_configs(tmp_path, store, tmp_path / "run", steps=4)
    proc = train(args, script=[os.path.join(ROOT, "tests", "workers", "full_disk_at_step.py"), "3"])
    assert proc.returncode == 1
    assert "No space left on device" in one_error(proc)
    assert checkpoints(tmp_path / "run") == ["step_00000001", "step_00000002"]
    assert (tmp_path / "run" / "checkpoints" / "latest").read_text() == "step_00000002"
    proc = train(args + ["--resume"])
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "(step 2)" in proc.stdout
    assert steps_logged(tmp_path / "run") == [1, 2, 3, 4]


@pytest.mark.multirank
def test_resume_with_every_checkpoint_refused_stops(good_run, tmp_path, capsys):
    tmp, store, _ = good_run
    run = tmp_path / "run"
    shutil.copytree(tmp / "run", run)
    for tag in ("step_00000001", "step_00000002"):
        os.remove(run / "checkpoints" / tag / "MANIFEST.json")
    args = write_configs(tmp_path, store, run, steps=3)
    line = cli_error(capsys, args + ["--resume"])
    assert "no checkpoint" in line and "step_00000002: no manifest" in line and "--start-over" in line
    assert steps_logged(run) == [1, 2]  # untouched
    proc = train(args + ["--start-over"])
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert steps_logged(run) == [1, 2, 3]
    aside = [d for d in os.listdir(run) if d.startswith("superseded-")]
    assert len(aside) == 1 and steps_logged(run / aside[0]) == [1, 2]  # moved, never deleted


# ---- checkpoints: every reader verifies -----------------------------------------------------------------------
@pytest.mark.multirank
def test_checkpoint_readers_refuse_what_resume_refuses(good_run, tmp_path, capsys):
    tmp, _, _ = good_run
    run = tmp_path / "run"
    shutil.copytree(tmp / "run", run)
    shard = next((run / "checkpoints" / "step_00000001").glob("*.distcp"))
    shard.write_bytes(shard.read_bytes()[:-10])
    assert ckpt_cli.main(["export", str(run / "checkpoints" / "step_00000001"), "--out", str(tmp_path / "x.pt")]) == 2
    assert "step_00000001 is refused: file __0_0.distcp does not match its manifest" in one_error(capsys.readouterr().err)
    assert ckpt_cli.main(["export", str(run), "--out", str(tmp_path / "nowhere" / "x.pt")]) == 2
    assert "does not exist" in one_error(capsys.readouterr().err)
    (tmp_path / "junk.pt").write_bytes(b"not a checkpoint")
    assert ckpt_cli.main(["info", str(tmp_path / "junk.pt")]) == 2
    assert "is not a layout-free jigsaw_ds checkpoint" in one_error(capsys.readouterr().err)
    (run / "checkpoints" / "step_00000002" / "MANIFEST.json").write_text("{}")
    assert verify(str(run / "checkpoints" / "step_00000002")) == "manifest has no file list"


@pytest.mark.multirank
def test_a_flipped_byte_is_refused_naming_the_file(good_run, tmp_path, capsys):
    """Same size, one byte changed in the newest checkpoint: the ranks that read the file find it (sha256);
    --resume says so and continues from the checkpoint before; export and evaluation refuse it."""
    tmp, store, _ = good_run
    run = tmp_path / "run"
    shutil.copytree(tmp / "run", run)
    shard = run / "checkpoints" / "step_00000002" / "__0_0.distcp"
    data = bytearray(shard.read_bytes())
    data[len(data) // 2] ^= 0x01
    shard.write_bytes(bytes(data))
    assert verify(str(run / "checkpoints" / "step_00000002")) == ""  # sizes only: cheap for every rank
    assert ckpt_cli.main(["export", str(run), "--out", str(tmp_path / "x.pt")]) == 2
    assert "__0_0.distcp does not match its manifest (size or sha256)" in one_error(capsys.readouterr().err)
    proc = train(write_configs(tmp_path, store, run, steps=3) + ["--resume"])
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "refusing checkpoint step_00000002:" in proc.stdout and "__0_0.distcp does not match" in proc.stdout
    assert "(step 1)" in proc.stdout
    assert steps_logged(run) == [1, 2, 3]


@pytest.mark.multirank
def test_help_and_checkpoint_info_start_without_torch(good_run):
    """--help of the commands and `jigsaw-ckpt info` of a sharded checkpoint (its JSON metadata) import neither
    torch nor DeepSpeed nor the store's libraries: they answer at once, not after seconds of imports."""
    tmp, _, _ = good_run
    script = f"""
import contextlib, io, sys
from jigsaw_ds.checkpoint import cli as ckpt
from jigsaw_ds.data import cli as data
from jigsaw_ds.eval import cli as ev
from jigsaw_ds.train import cli as train
for main in (ckpt.main, data.main, ev.main, ev.forecast_main, train.main):
    with contextlib.redirect_stdout(io.StringIO()), contextlib.suppress(SystemExit):
        main(["--help"])
with contextlib.redirect_stdout(io.StringIO()):
    assert ckpt.main(["info", {str(tmp / "run")!r}]) == 0
print(sorted(m for m in ("torch", "deepspeed", "megatron", "tensorstore", "xarray", "zarr") if m in sys.modules))
"""
    proc = subprocess.run([os.path.join(BIN, "python"), "-c", script], cwd=ROOT, env=spawn_env(),
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stdout.splitlines()[-1] == "[]"


# ---- evaluation -------------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def eval_setup(tmp_path_factory):
    """An untrained model written in the layout-free format (evaluation reads config, weights and buffers),
    and its store: all levels selected (data.levels empty), so the channel order comes from the store."""
    tmp = tmp_path_factory.mktemp("eval")
    ds = synth_dataset(17, 32, 60, seed=4)
    store = tmp / "store.zarr"
    write_store(ds, str(store))
    cfg = {"model": dict(MODEL, coord_features=True), "parallel": {"domain": 1, "tensor": 1},
           "data": {"store": str(store), "variables": ["temperature"], "surface_variables": ["2m_temperature"],
                    "levels": []}, "train": {"seed": 0}}
    model = WeatherMixer(ModelConfig(**cfg["model"]), 17, 32, 3 + 3, 3, seed=5)
    state = {"format": FORMAT, "step": 0, "model": dict(model.named_parameters()),
             "buffers": dict(model.named_buffers()), "optimizer": {}, "scheduler": None,
             "config": {"jigsaw": cfg, "model_shape": {"n_lat": 17, "n_lon": 32, "in_channels": 6, "out_channels": 3},
                        "channels": ["temperature_500", "temperature_850", "2m_temperature"]}}
    torch.save({k: ({n: t.detach() for n, t in v.items()} if k in ("model", "buffers") else v)
                for k, v in state.items()}, tmp / "model.pt")
    return tmp, ds, store


def test_eval_selects_channels_by_name(eval_setup):
    """The same store with its levels in the other order scores the same, channel by channel."""
    tmp, ds, store = eval_setup
    permuted = tmp / "permuted.zarr"
    write_store(ds.isel(level=[1, 0]), str(permuted))
    store_order = WeatherStore(str(permuted), ["temperature"], ["2m_temperature"], []).channels
    assert [c.name for c in store_order][:2] == ["temperature_850", "temperature_500"]  # what "all levels" gives
    a = ev.evaluate(str(tmp / "model.pt"), str(store), str(tmp / "a"), 2, 3, plots=False)
    b = ev.evaluate(str(tmp / "model.pt"), str(permuted), str(tmp / "b"), 2, 3, plots=False)
    assert json.dumps(a) == json.dumps(b)  # NaN-safe (climatology ACC of a constant is NaN)


@pytest.mark.parametrize("case, expected", [
    ("inits0", "--inits must be >= 1"),
    ("leads0", "--lead-steps must be >= 1"),
    ("missing", "does not exist"),
    ("not_a_checkpoint", "is not a layout-free jigsaw_ds checkpoint"),
    ("missing_variable", "has no variable '2m_temperature'"),
    ("missing_level", "has no channel 'temperature_850'"),  # selected by the trained names, not the config's lists
    ("other_grid", "is on a 9x32 grid; the model was trained on 17x32"),
    ("nan", "has NaN/inf"),
])
def test_eval_bad_input_is_one_line(eval_setup, tmp_path, capsys, case, expected):
    tmp, ds, store = eval_setup
    ckpt, data, extra = str(tmp / "model.pt"), str(store), []
    if case == "inits0":
        extra = ["--inits", "0"]
    elif case == "leads0":
        extra = ["--lead-steps", "0"]
    elif case == "missing":
        ckpt = str(tmp_path / "none.pt")
    elif case == "not_a_checkpoint":
        ckpt = str(tmp_path / "junk.pt")
        torch.save({"weights": 1}, ckpt)
    else:
        data = str(tmp_path / "store.zarr")
        if case == "missing_variable":
            write_store(ds.drop_vars("2m_temperature"), data)
        elif case == "missing_level":
            write_store(ds.isel(level=[0]), data)
        elif case == "other_grid":
            write_store(ds.isel(latitude=slice(0, None, 2)), data)
        else:
            bad = ds.copy(deep=True)
            bad["temperature"][-1, 0, 3, 3] = np.nan
            write_store(bad, data)
    code = eval_cli.main(["--checkpoint", ckpt, "--data", data, "--out", str(tmp_path / "out"), "--no-plots"] + extra)
    assert code == 2
    assert expected in one_error(capsys.readouterr().err)


# ---- kill -9 at random points of a 4-rank run, resumed each time ----------------------------------------------
@pytest.mark.multirank
def test_kill_9_three_times_then_equal_to_an_uninterrupted_run(tmp_path, synth_store):
    """(1,2,2) with a checkpoint every step: killed 3 times (SIGKILL to the launcher and every rank) at a random
    moment of training (0 to 1 s after the run logged a step it had not reached before: inside steps, saves,
    manifest writes), --resume in between; metrics have every step once with the uninterrupted run's losses,
    and the final weights are bitwise the uninterrupted run's."""
    steps = 10
    full = write_configs(tmp_path, synth_store, tmp_path / "full", steps=steps)
    conf = json.loads((tmp_path / "j.json").read_text())
    conf["parallel"] = {"domain": 2, "tensor": 2}
    for name in ("full", "killed"):
        conf["train"]["out_dir"] = str(tmp_path / name)
        (tmp_path / f"{name}.json").write_text(json.dumps(conf))
    base = [os.path.join(BIN, "torchrun"), "--standalone", "--nproc_per_node", "4", os.path.join(BIN, "jigsaw-train"),
            "--deepspeed_config", full[3]]
    proc = subprocess.run(base + ["--config", str(tmp_path / "full.json")], cwd=ROOT, env=spawn_env(),
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    rng = np.random.default_rng(0)
    killed = base + ["--config", str(tmp_path / "killed.json"), "--resume"]
    metrics = tmp_path / "killed" / "metrics.jsonl"
    reached, kills = 0, []
    while len(kills) < 3:
        p = subprocess.Popen(killed, cwd=ROOT, env=spawn_env(), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.time() + 300
        while p.poll() is None and time.time() < deadline and (
                not metrics.exists() or max([0] + steps_logged(tmp_path / "killed")) <= reached):
            time.sleep(0.05)
        time.sleep(rng.uniform(0, 1.0))
        if p.poll() is not None:
            break  # finished before its kill: the run is complete
        # torchrun starts each rank in a session of its own: kill the launcher and every rank, as a job's end does
        victims = [psutil.Process(p.pid)] + psutil.Process(p.pid).children(recursive=True)
        for victim in victims:
            try:
                victim.send_signal(signal.SIGKILL)
            except psutil.NoSuchProcess:
                pass
        psutil.wait_procs(victims, timeout=30)
        p.wait()
        reached = max([0] + steps_logged(tmp_path / "killed"))
        kills.append((reached, checkpoints(tmp_path / "killed")[-1:]))
    proc = subprocess.run(killed, cwd=ROOT, env=spawn_env(), capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    print(f"\nkilled at (newest step logged, newest checkpoint folder): {kills}")
    assert len(kills) == 3
    assert "resumed from" in proc.stdout
    with open(tmp_path / "full" / "metrics.jsonl") as f:
        ref = {r["step"]: r["loss"] for r in map(json.loads, f)}
    with open(tmp_path / "killed" / "metrics.jsonl") as f:
        got = [json.loads(line) for line in f]
    assert [r["step"] for r in got] == list(range(1, steps + 1))
    assert all(r["loss"] == ref[r["step"]] for r in got)
    tag = f"step_{steps:08d}"
    a, b = (load_full(str(tmp_path / name / "checkpoints" / tag)) for name in ("full", "killed"))
    for part in ("model", "buffers"):
        assert a[part].keys() == b[part].keys() and all(torch.equal(a[part][k], b[part][k]) for k in a[part]), part
    assert all(torch.equal(a["optimizer"]["exp_avg_sq"][k], b["optimizer"]["exp_avg_sq"][k]) for k in a["model"])


# ---- a bug is not bad input: only the package's own errors (errors.JigsawError) become one line ----------------
def _a_bug(error):
    def raising(*args, **kwargs):
        raise error("a bug inside a library (numpy, torch): not the user's input")
    return raising


@pytest.mark.parametrize("error", [ValueError, TypeError])
@pytest.mark.parametrize("command", ["jigsaw-ckpt info", "jigsaw-eval", "jigsaw-plan", "jigsaw-train"])
def test_a_bug_keeps_its_traceback(tmp_path, capsys, monkeypatch, command, error):
    """A ValueError or TypeError that is no errors.JigsawError (a bug: here raised by a function on the command's
    path, patched) propagates with its traceback and no 'error:' line; the CLIs used to catch every ValueError
    and show a bug inside numpy or torch as bad input, in one line, exit 2."""
    from jigsaw_ds.perf import plan, step_model

    args = write_configs(tmp_path, tmp_path / "store.zarr", tmp_path / "run")
    if command == "jigsaw-ckpt info":
        monkeypatch.setattr(ckpt_cli, "find_checkpoint", _a_bug(error))
        call = lambda: ckpt_cli.main(["info", str(tmp_path)])  # noqa: E731
    elif command == "jigsaw-eval":
        monkeypatch.setattr(ev, "check_out", _a_bug(error))
        call = lambda: eval_cli.main(["--checkpoint", str(tmp_path / "run"), "--data", str(tmp_path / "store.zarr"),  # noqa: E731
                                "--out", str(tmp_path / "out")])
    elif command == "jigsaw-plan":
        monkeypatch.setattr(step_model.ModelShape, "from_config", _a_bug(error))
        call = lambda: plan.main(["--config", args[1], "--gpus", "4", "--machine",  # noqa: E731
                                  os.path.join(ROOT, "configs", "machines", "h200-1gpu.json")])
    else:
        monkeypatch.setattr(train_cli, "plan_run", _a_bug(error))
        call = lambda: train_cli.main(args)  # noqa: E731
    with pytest.raises(error, match="a bug inside a library"):
        call()
    assert "error:" not in capsys.readouterr().err

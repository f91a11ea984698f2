"""Checkpoints: crash during a save, bitwise same-layout resume, resume at other layouts and ZeRO stages,
offline export (to the bit) and import of the layout-free file."""
import json
import os
import shutil
import sys

import pytest
import torch

from conftest import BIN, ROOT, run, spawn_env
from jigsaw_ds.config import ModelConfig
from jigsaw_ds.model import WeatherMixer

import subprocess


def configs(tmp, store, out_dir, stage=1, bf16=False, **ds_extra):
    # with training noise: a resumed run, at any layout, must draw the uninterrupted run's masks
    conf = {"model": {"patch": 4, "embed_dim": 32, "token_hidden": 32, "channel_hidden": 64, "depth": 2,
                      "drop_path": 0.2, "dropout": 0.1},
            "data": {"store": store, "variables": ["temperature"], "surface_variables": ["2m_temperature"],
                     "levels": [500, 850]},
            "parallel": {"domain": 2, "tensor": 2},
            "train": {"steps": 6, "global_batch": 4, "seed": 3, "out_dir": str(out_dir), "val_every": 6,
                      "val_batches": 1, "ckpt_every": 3, "progress": False,
                      "warmup_fraction": 1.0}}  # the lr still rising at the checkpoint: resume must restore it
    ds = {"zero_optimization": {"stage": stage}, "gradient_clipping": 1.0,
          "optimizer": {"type": "AdamW", "params": {"lr": 3e-3, "weight_decay": 0.01, "torch_adam": True}},
          "scheduler": {"type": "WarmupLR", "params": {"warmup_max_lr": 3e-3}},
          "bf16": {"enabled": bf16}, **ds_extra}
    name = f"ds{stage}{'_bf16' if bf16 else ''}{'_' + '_'.join(ds_extra) if ds_extra else ''}.json"
    (tmp / "j.json").write_text(json.dumps(conf))
    (tmp / name).write_text(json.dumps(ds))
    return ["--config", str(tmp / "j.json"), "--deepspeed_config", str(tmp / name)]


def train(args, nproc=1, extra=(), env=None, script=None):
    """jigsaw-train (or a test script that wraps it: a .py path and its arguments) on nproc ranks."""
    script = script or [os.path.join(BIN, "jigsaw-train")]
    if nproc == 1 and script[0].endswith(".py"):
        script = [sys.executable] + script
    cmd = script if nproc == 1 else \
        [os.path.join(BIN, "torchrun"), "--standalone", "--nproc_per_node", str(nproc), *script]
    return subprocess.run(cmd + args + list(extra), cwd=ROOT, env=dict(spawn_env(), **(env or {})),
                          capture_output=True, text=True, timeout=600)


def losses(run_dir):
    records = [json.loads(line) for line in open(os.path.join(run_dir, "metrics.jsonl"))]
    steps = [r["step"] for r in records]
    assert steps == sorted(set(steps)), f"metrics.jsonl steps not once each, in order: {steps}"
    return {r["step"]: r["loss"] for r in records}


@pytest.fixture(scope="module")
def crashed_run(tmp_path_factory, synth_store):
    """(1,2,2) for 6 steps, checkpoints at 3 and 6; every rank dies while saving step 6 (before its manifest)."""
    tmp = tmp_path_factory.mktemp("ckpt")
    args = configs(tmp, synth_store, tmp / "run")
    proc = train(args, 4, script=[os.path.join(ROOT, "tests", "workers", "crash_before_manifest.py"), "6"])
    assert proc.returncode != 0
    assert os.path.isdir(tmp / "run" / "checkpoints" / "step_00000006")  # shards were written...
    assert not os.path.exists(tmp / "run" / "checkpoints" / "step_00000006" / "MANIFEST.json")  # ...never completed
    return tmp, args, losses(tmp / "run")


@pytest.mark.multirank
def test_resume_after_crash_is_bitwise(crashed_run):
    tmp, args, before = crashed_run
    assert sorted(before) == [1, 2, 3, 4, 5, 6]
    proc = train(args, 4, ["--resume"])
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "refusing checkpoint step_00000006: no manifest" in proc.stdout
    assert "resumed from" in proc.stdout and "(step 3)" in proc.stdout
    after = losses(tmp / "run")  # steps 4-6 of the crashed run are replaced, not repeated
    assert sorted(after) == [1, 2, 3, 4, 5, 6]
    assert [after[s] for s in (4, 5, 6)] == [before[s] for s in (4, 5, 6)]  # bitwise


@pytest.mark.multirank
def test_one_rank_killed_during_a_save(crashed_run, tmp_path, synth_store):
    """Rank 1 alone dies while the checkpoint of step 6 is being written: the launcher ends the job; --resume
    refuses the unfinished checkpoint, says why, and continues from step 3 bitwise."""
    _, _, reference = crashed_run
    args = configs(tmp_path, synth_store, tmp_path / "run")
    proc = train(args, 4, script=[os.path.join(ROOT, "tests", "workers", "crash_before_manifest.py"), "6@1"])
    assert proc.returncode != 0
    assert not os.path.exists(tmp_path / "run" / "checkpoints" / "step_00000006" / "MANIFEST.json")
    proc = train(args, 4, ["--resume"])
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "refusing checkpoint step_00000006: no manifest" in proc.stdout and "(step 3)" in proc.stdout
    got = losses(tmp_path / "run")
    assert [got[s] for s in (4, 5, 6)] == [reference[s] for s in (4, 5, 6)]


@pytest.mark.parametrize("layout, stage", [((1, 1, 1), 1), ((2, 1, 2), 2), ((1, 4, 1), 1), ((4, 1, 1), 2)],
                         ids=["serial", "2x1x2-zero2", "1x4x1", "4x1x1-zero2"])
@pytest.mark.multirank
def test_resume_at_another_layout_continues_the_run(crashed_run, tmp_path, synth_store, layout, stage):
    """The (1,2,2) ZeRO-1 checkpoint of step 3, resumed at another world size, layout and ZeRO stage: each rank
    reads only the boxes its new ZeRO fragments need; the next 3 losses are the uninterrupted run's."""
    tmp, _, reference = crashed_run
    data, domain, tensor = layout
    shutil.copytree(tmp / "run", tmp_path / "run")
    shutil.rmtree(tmp_path / "run" / "checkpoints" / "step_00000006", ignore_errors=True)  # resume step 3
    args = configs(tmp_path, synth_store, tmp_path / "run", stage)
    proc = train(args, data * domain * tensor, ["--resume", "--set", f"parallel.domain={domain}", "--set",
                                                f"parallel.tensor={tensor}"])
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "all_gather_into_tensor" not in proc.stderr  # DeepSpeed's ZeRO at data > 1: filtered (jigsaw_ds/quiet.py)
    assert "(step 3); saved at layout {'data': 1, 'domain': 2, 'tensor': 2} by 4 ranks" in proc.stdout
    got = losses(tmp_path / "run")
    for s in (4, 5, 6):  # step 4 checks weights; 5 and 6 check Adam moments, step count and LR schedule
        assert got[s] == pytest.approx(reference[s], rel=1e-5), (s, got[s], reference[s])


@pytest.fixture(scope="module")
def exported(crashed_run):
    """`jigsaw-ckpt export` of the (1,2,2) checkpoint of step 3: one process, no process group."""
    tmp, _, _ = crashed_run
    out = tmp / "step3.pt"
    folder = tmp / "run" / "checkpoints" / "step_00000003"
    proc = run([os.path.join(BIN, "jigsaw-ckpt"), "export", str(folder), "--out", str(out)])
    assert "torch.distributed is disabled" not in proc.stderr  # one process without a group is the point: quiet
    info = run([os.path.join(BIN, "jigsaw-ckpt"), "info", str(out)]).stdout
    assert "step 3" in info and "'domain': 2, 'tensor': 2" in info and "Adam state: yes" in info
    info = run([os.path.join(BIN, "jigsaw-ckpt"), "info", str(folder)]).stdout
    assert "step 3, saved at layout {'data': 1, 'domain': 2, 'tensor': 2}" in info
    assert "by 4 ranks" in info and "Adam state: yes, optimizer step 3" in info
    return out


@pytest.mark.multirank
def test_exported_file_continues_the_run_at_another_layout(crashed_run, exported, tmp_path, synth_store):
    tmp, _, reference = crashed_run
    args = configs(tmp_path, synth_store, tmp_path / "run", 2)
    proc = train(args, 2, ["--set", "parallel.domain=1", "--set", "parallel.tensor=2", "--init-from", str(exported)])
    assert proc.returncode == 0, proc.stderr[-3000:]
    got = losses(tmp_path / "run")
    assert sorted(got) == [4, 5, 6]
    for s in (4, 5, 6):
        assert got[s] == pytest.approx(reference[s], rel=1e-5), (s, got[s], reference[s])


@pytest.mark.multirank
def test_export_equals_the_serial_model_to_the_bit(tmp_path, synth_store):
    """A (1,2,2) run at learning rate 0 keeps its initial weights; exported from its sharded checkpoint they
    are the serial model's, bit for bit (boxes of ZeRO fragments, DCP's resharding, the Split tags)."""
    args = configs(tmp_path, synth_store, tmp_path / "run")
    ds = json.loads(open(args[3]).read())
    ds["optimizer"]["params"]["lr"] = 0.0
    ds.pop("scheduler")
    open(args[3], "w").write(json.dumps(ds))
    proc = train(args, 4, ["--set", "train.steps=1", "--set", "train.ckpt_every=1"])
    assert proc.returncode == 0, proc.stderr[-3000:]
    run([os.path.join(BIN, "jigsaw-ckpt"), "export", str(tmp_path / "run"), "--out", str(tmp_path / "w.pt")])
    state = torch.load(tmp_path / "w.pt", map_location="cpu", weights_only=False)
    shape = state["config"]["model_shape"]
    serial = WeatherMixer(ModelConfig(patch=4, embed_dim=32, token_hidden=32, channel_hidden=64, depth=2),
                          shape["n_lat"], shape["n_lon"], shape["in_channels"], shape["out_channels"], seed=3)
    expected = dict(serial.named_parameters())
    assert sorted(state["model"]) == sorted(expected)
    for name, p in expected.items():
        assert torch.equal(state["model"][name], p.detach()), name
    assert all(state["optimizer"]["exp_avg"][n].abs().sum() > 0 for n in ("embed.weight", "blocks.0.token_mixing.w1"))


@pytest.mark.multirank
def test_incompatible_model_is_refused_naming_tensor_and_shapes(exported):
    state = torch.load(exported, map_location="cpu", weights_only=False)
    wider = WeatherMixer(ModelConfig(patch=4, embed_dim=48, token_hidden=32, channel_hidden=64, depth=2), 33, 64, 6, 3)
    with pytest.raises(ValueError, match=r"parameter 'embed.weight': checkpoint shape \(32, 96\) != model shape \(48, 96\)"):
        wider.load_full_state_dict(state["model"])
    other_grid = WeatherMixer(ModelConfig(patch=4, embed_dim=32, token_hidden=32, channel_hidden=64, depth=2), 65, 64, 6, 3)
    with pytest.raises(ValueError, match=r"'blocks.0.token_mixing.w1': checkpoint shape \(32, 144\) != model shape \(32, 272\)"):
        other_grid.load_full_state_dict(state["model"])


def test_resume_drops_later_metrics_and_a_line_cut_short_by_a_crash(tmp_path):
    from jigsaw_ds.train.logger import MetricsLogger

    logger = MetricsLogger(str(tmp_path), True)
    for step in range(1, 7):
        logger.log({"step": step, "loss": 1.0})
    logger.close()
    with open(tmp_path / "metrics.jsonl", "a") as f:
        f.write('{"step": 7, "lo')  # the process died mid-write
    logger = MetricsLogger(str(tmp_path), True, resume_step=3)
    logger.log({"step": 4, "loss": 2.0})
    logger.close()
    assert [json.loads(line)["step"] for line in open(tmp_path / "metrics.jsonl")] == [1, 2, 3, 4]


def test_write_atomic_leaves_the_old_file_or_the_whole_new_one(tmp_path):
    """files.write_atomic, the one atomic writer (manifests, `latest`, metrics, config.json, prepare's records,
    exports): a writer that fails half-way leaves the old file as it was and no temporary file beside it."""
    from jigsaw_ds.files import write_atomic

    path = str(tmp_path / "MANIFEST.json")
    write_atomic(path, '{"step": 1}')

    def half_then_crash(f):
        f.write(b'{"step": 2, "fi')
        raise OSError("disk full")

    with pytest.raises(OSError, match="disk full"):
        write_atomic(path, half_then_crash)
    assert open(path).read() == '{"step": 1}' and os.listdir(tmp_path) == ["MANIFEST.json"]
    write_atomic(path, lambda f: torch.save({"w": torch.ones(2)}, f))
    assert torch.load(path)["w"].tolist() == [1.0, 1.0] and os.listdir(tmp_path) == ["MANIFEST.json"]

"""Launching: the allocation check (from launcher environments, no processes) and two torchrun launches
through launch/local_torchrun.sh: a 4-rank (1,2,2) CPU run, and a mistaken allocation (world 6 for
domain 2 x tensor 2) that stops before training with a message saying why. The deepspeed-launcher
4-rank run is tests/test_train.py::test_jigsaw_layout_under_deepspeed_launcher_matches_one_process;
SLURM is tests/test_slurm.py."""
import json
import os
import subprocess

import pytest

from conftest import BIN, ROOT, spawn_env
from jigsaw_ds.parallel.allocation import (allocation_from_env, check_allocation, check_allocation_from_env,
                                           parse_tasks_per_node)
from test_train import read_metrics, write_configs

TORCHRUN = os.path.join(ROOT, "launch", "local_torchrun.sh")
NOT_DIVISIBLE = "world size 6 is not divisible by parallel.domain x parallel.tensor = 2 x 2 = 4"


def torchrun_env(**extra):
    return [("RANK", "0"), ("WORLD_SIZE", "8"), ("LOCAL_RANK", "0"), ("LOCAL_WORLD_SIZE", "4")] + list(extra.items())


def test_parse_tasks_per_node():
    assert parse_tasks_per_node("4(x2),2") == (4, 4, 2)
    assert parse_tasks_per_node("8") == (8,)
    with pytest.raises(ValueError):
        parse_tasks_per_node("4(2)")


def test_allocation_from_each_launcher():
    tr = allocation_from_env(dict(torchrun_env()))
    assert (tr.launcher, tr.world, tr.node_sizes) == ("torchrun", 8, (4, 4))
    ds = allocation_from_env({"RANK": "5", "WORLD_SIZE": "8", "LOCAL_RANK": "1", "LOCAL_SIZE": "4", "CROSS_SIZE": "2"})
    assert (ds.launcher, ds.local_world_size, ds.node_sizes) == ("deepspeed launcher", 4, None)
    slurm = allocation_from_env({"SLURM_PROCID": "5", "SLURM_NTASKS": "8", "SLURM_LOCALID": "1", "SLURM_NODEID": "1",
                                 "SLURM_STEP_ID": "0", "SLURM_STEP_TASKS_PER_NODE": "4(x2)"})
    assert (slurm.launcher, slurm.world, slurm.rank, slurm.local_world_size) == ("SLURM (srun)", 8, 5, 4)
    # the launcher's variables win inside a SLURM job (deepspeed or torchrun started from an sbatch script)
    both = allocation_from_env(dict(torchrun_env(), SLURM_PROCID="0", SLURM_NTASKS="1"))
    assert both.launcher == "torchrun"
    assert allocation_from_env({}).world == 1


def test_layout_errors_say_why():
    with pytest.raises(ValueError, match="not divisible by parallel.domain x parallel.tensor.*multiple of 4 ranks"):
        check_allocation(6, 6, 2, 2)
    with pytest.raises(ValueError, match="global_batch = 3 is not divisible by the data-parallel size 2"):
        check_allocation(8, 8, 2, 2, global_batch=3)
    assert check_allocation(8, 8, 2, 2, global_batch=4) == []


def test_tensor_group_across_nodes_warns_or_refuses():
    assert check_allocation(8, 4, 2, 2) == []  # 2 nodes x 4 ranks, tensor 2: groups inside nodes
    (warning,) = check_allocation(8, 2, 1, 4)  # 4 nodes x 2 ranks, tensor 4: every group spans 2 nodes
    assert "tensor groups span nodes" in warning
    with pytest.raises(ValueError, match="tensor groups span nodes"):
        check_allocation(8, 2, 1, 4, strict=True)
    # uneven SLURM nodes: the boundary after 3 ranks cuts the group (2, 3)
    assert check_allocation(8, None, 2, 2, node_sizes=(3, 3, 2))
    assert check_allocation(8, None, 2, 2, node_sizes=(4, 4), placement="cyclic")
    assert check_allocation(4, None, 2, 2, node_sizes=(4,), placement="cyclic") == []  # one node: nothing to span


def test_warnings_come_back_on_the_rank_that_reports():
    env = dict(torchrun_env(LOCAL_WORLD_SIZE="2"))
    assert check_allocation_from_env(1, 4, env=env)  # rank 0 reports
    assert check_allocation_from_env(1, 4, env=dict(env, RANK="2", LOCAL_RANK="0")) == []
    # deepspeed launcher, several nodes: each node knows only itself; its first rank reports
    ds = {"RANK": "3", "WORLD_SIZE": "8", "LOCAL_RANK": "0", "LOCAL_SIZE": "3", "CROSS_SIZE": "3"}
    assert check_allocation_from_env(2, 2, env=ds)
    assert check_allocation_from_env(2, 2, env=dict(ds, RANK="4", LOCAL_RANK="1")) == []


def test_one_process_in_a_slurm_allocation_is_refused():
    batch_step = {"SLURM_JOB_ID": "7", "SLURM_PROCID": "0", "SLURM_NTASKS": "4", "SLURM_TASKS_PER_NODE": "4"}
    with pytest.raises(ValueError, match="start it with srun"):
        check_allocation_from_env(2, 2, env=batch_step)


def launch_env():
    return dict(spawn_env(), JIGSAW_VENV=os.path.dirname(BIN))


@pytest.mark.multirank
def test_torchrun_script_runs_the_jigsaw_layout(tmp_path, synth_store):
    cmd = write_configs(tmp_path, synth_store, tmp_path / "run")
    proc = subprocess.run(["bash", TORCHRUN, cmd[2], cmd[4], "2", "2", "--set", "train.steps=6"], cwd=ROOT,
                          env=dict(launch_env(), NPROC="4"), capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-6000:]
    assert [m["step"] for m in read_metrics(tmp_path / "run")] == list(range(1, 7))
    assert json.load(open(tmp_path / "run" / "config.json"))["layout"] == {"data": 1, "domain": 2, "tensor": 2}


@pytest.mark.multirank
def test_mistaken_allocation_fails_before_training(tmp_path, synth_store):
    cmd = write_configs(tmp_path, synth_store, tmp_path / "run")
    proc = subprocess.run(["bash", TORCHRUN, cmd[2], cmd[4], "2", "2"], cwd=ROOT,
                          env=dict(launch_env(), NPROC="6"), capture_output=True, text=True, timeout=300)
    assert proc.returncode != 0
    assert NOT_DIVISIBLE in proc.stderr, proc.stderr[-6000:]
    assert "exitcode  : 2" in proc.stderr  # the ranks exit 2 (a usage error); torchrun reports it
    assert not os.path.exists(tmp_path / "run")  # nothing was created


def test_each_rank_gets_its_own_gpu_or_a_clear_refusal(monkeypatch):
    """Local rank r -> cuda:r; an srun task bound to one GPU -> cuda:0; more ranks than GPUs on a node
    (4 ranks on the one-GPU machine, say) -> refused before NCCL starts."""
    import torch

    from jigsaw_ds.parallel.topology import _gpu_for

    monkeypatch.delenv("SLURM_LOCALID", raising=False)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 4)
    assert [_gpu_for(r) for r in range(4)] == [0, 1, 2, 3]
    with pytest.raises(RuntimeError, match=r"local rank 5 has no GPU: this node shows 4 GPU\(s\)"):
        _gpu_for(5)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "0,1,2,3")  # as the deepspeed launcher sets it
    with pytest.raises(RuntimeError, match=r"local rank 3 has no GPU: this node shows 1 GPU\(s\)"):
        _gpu_for(3)
    monkeypatch.setenv("SLURM_LOCALID", "3")
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "3")  # srun --gpus-per-task=1: only its own GPU
    assert _gpu_for(3) == 0

"""A real SLURM job: a one-machine cluster on loopback (launch/slurm/local_cluster.sh installs Debian's
slurmctld, slurmd and munge if missing, then starts them), `sbatch launch/slurm/jigsaw.sbatch` with 4 tasks
at the (1,2,2) layout, waiting for the job and checking its state and metrics.jsonl.

Bounded: the whole test, apt-get included, gives up after BUDGET_S. Skipped, with the reason, only where
SLURM cannot be installed or started here (not root, no apt-get, packages unreachable, install too slow).
"""
import json
import os
import re
import signal
import socket
import subprocess
import time

import pytest

from conftest import BIN, ROOT, spawn_env
from test_train import read_metrics, write_configs

pytestmark = pytest.mark.multirank  # every test here runs a multi-process job

CLUSTER = os.path.join(ROOT, "launch", "slurm", "local_cluster.sh")
SBATCH = os.path.join(ROOT, "launch", "slurm", "jigsaw.sbatch")
BUDGET_S = 210  # the whole test, install included
INSTALL_BUDGET_S = 150
STEPS = 6


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def run_bounded(cmd, env, timeout):
    """Run cmd in its own process group; on timeout kill the group (apt-get, daemons' helpers) and return None."""
    proc = subprocess.Popen(cmd, env=env, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            start_new_session=True)
    try:
        out, err = proc.communicate(timeout=max(timeout, 1))
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.communicate()
        return None
    return subprocess.CompletedProcess(cmd, proc.returncode, out, err)


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    """SLURM_CONF and environment of a running one-machine cluster; stopped at the end."""
    start = time.monotonic()
    if os.geteuid() != 0:
        pytest.skip("SLURM cannot start here: slurmd must run as root to start jobs (the test is not root)")
    state = tmp_path_factory.mktemp("slurm")
    env = dict(spawn_env(), CPUS="4", SLURMCTLD_PORT=str(free_port()), SLURMD_PORT=str(free_port()),
               SLURM_CONF=str(state / "slurm.conf"), JIGSAW_VENV=os.path.dirname(BIN), MASTER_PORT=str(free_port()))
    up = run_bounded(["bash", CLUSTER, "up", str(state)], env, INSTALL_BUDGET_S)
    if up is None:
        run_bounded(["bash", CLUSTER, "down", str(state)], env, 20)
        pytest.skip(f"SLURM cannot start here: installing and starting it took over {INSTALL_BUDGET_S} s")
    if up.returncode == 3:
        pytest.skip(f"SLURM cannot start here: {up.stderr.strip()}")
    assert up.returncode == 0, f"local SLURM cluster did not start:\n{up.stdout}\n{up.stderr}"
    env["TEST_DEADLINE"] = str(start + BUDGET_S)
    yield env
    run_bounded(["bash", CLUSTER, "down", str(state)], env, 20)


def job_fields(job_id, env):
    out = subprocess.run(["scontrol", "show", "job", "-o", job_id], env=env, capture_output=True, text=True,
                         timeout=30).stdout
    return dict(re.findall(r"(\w+)=(\S*)", out))


def wait_for(job_id, env, deadline):
    """The job's final fields; cancels it and fails if it is still going at the deadline."""
    while time.monotonic() < deadline:
        fields = job_fields(job_id, env)
        if fields.get("JobState") not in (None, "PENDING", "CONFIGURING", "RUNNING", "COMPLETING"):
            return fields
        time.sleep(2)
    subprocess.run(["scancel", job_id], env=env, timeout=30)
    pytest.fail(f"SLURM job {job_id} did not finish in time: {job_fields(job_id, env)}")


def test_sbatch_runs_the_jigsaw_layout(cluster, tmp_path, synth_store):
    cmd = write_configs(tmp_path, synth_store, tmp_path / "run")
    log = tmp_path / "job-%j.out"
    submit = subprocess.run(["sbatch", "--parsable", "--ntasks=4", f"--output={log}", SBATCH, cmd[2], cmd[4], "2", "2",
                             "--set", f"train.steps={STEPS}"], env=cluster, cwd=ROOT, capture_output=True, text=True,
                            timeout=30)
    assert submit.returncode == 0, submit.stderr
    job_id = submit.stdout.strip().split(";")[0]
    fields = wait_for(job_id, cluster, float(cluster["TEST_DEADLINE"]))
    output = (tmp_path / f"job-{job_id}.out").read_text()
    assert (fields["JobState"], fields["ExitCode"]) == ("COMPLETED", "0:0"), output[-6000:]
    assert "4 tasks on 1 node(s)" in output and "jigsaw-train: done" in output
    assert [m["step"] for m in read_metrics(tmp_path / "run")] == list(range(1, STEPS + 1))
    assert json.load(open(tmp_path / "run" / "config.json"))["layout"] == {"data": 1, "domain": 2, "tensor": 2}

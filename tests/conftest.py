import contextlib
import multiprocessing.process
import os
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BIN = os.path.dirname(sys.executable)


# A test that starts a process (a launcher job, a command, a Dask worker, loader workers), itself or through a
# fixture, carries @pytest.mark.multirank, so that `pytest -m "not multirank"` runs the in-process tests alone,
# in minutes. The check covers set-up too: a module fixture that spawns a job is the test's cost. A fixture
# already made by an earlier marked test is not started again, so which test fails can depend on the order;
# the full suite marks them all.
@contextlib.contextmanager
def _processes_only_if_marked(item):
    """Within an unmarked test's set-up and call, starting a process fails, naming the marker."""
    if item.get_closest_marker("multirank"):
        yield
        return

    def refuse(*args, **kwargs):
        raise AssertionError(f"{item.nodeid} starts a process (or one of its fixtures does): mark it "
                             "@pytest.mark.multirank (tests/conftest.py)")

    saved = subprocess.Popen._execute_child, multiprocessing.process.BaseProcess.start
    subprocess.Popen._execute_child = multiprocessing.process.BaseProcess.start = refuse
    try:
        yield
    finally:
        subprocess.Popen._execute_child, multiprocessing.process.BaseProcess.start = saved


@pytest.hookimpl(wrapper=True)
def pytest_runtest_setup(item):
    with _processes_only_if_marked(item):
        return (yield)


@pytest.hookimpl(wrapper=True)
def pytest_runtest_call(item):
    with _processes_only_if_marked(item):
        return (yield)


def spawn_env():
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONUNBUFFERED="1")
    for key in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT"):  # a child is not a rank of ours
        env.pop(key, None)
    return env


def run(cmd, timeout=600, cwd=None):
    """Run a command; on failure show its output tail in the assertion message."""
    proc = subprocess.run(cmd, cwd=cwd or ROOT, env=spawn_env(), capture_output=True, text=True, timeout=timeout)
    if proc.returncode:
        raise AssertionError(f"{' '.join(cmd)} exited {proc.returncode}\n{proc.stdout[-3000:]}\n{proc.stderr[-6000:]}")
    return proc


def torchrun(nproc, script, *args, timeout=600):
    return run([os.path.join(BIN, "torchrun"), "--standalone", "--nproc_per_node", str(nproc), script, *args],
               timeout=timeout)


@pytest.fixture(scope="session")
def synth_store(tmp_path_factory):
    """A small synthetic store shared by the tests (33 x 64 grid, 120 times)."""
    from jigsaw_ds.data.synth import synth_dataset
    from jigsaw_ds.data.writer import write_store

    path = str(tmp_path_factory.mktemp("data") / "synth.zarr")
    write_store(synth_dataset(33, 64, 120, seed=1), path)
    return path


@pytest.fixture(scope="session")
def held_suarez_store(tmp_path_factory):
    """A small multi-level primitive-equation store made by the CLI: T21 (32 x 64), 4 runs of 6 records after
    20 days of spin-up (jets built), 1 day apart."""
    path = str(tmp_path_factory.mktemp("data") / "held_suarez.zarr")
    run([os.path.join(BIN, "jigsaw-data"), "held-suarez", "--out", path, "--truncation", "21", "--trajectories", "4",
         "--steps", "6", "--spinup", "20", "--gap", "1"])
    return path

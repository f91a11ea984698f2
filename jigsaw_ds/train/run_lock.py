"""One run owns a train.out_dir at a time: `OUT/RUN.lock`, taken by rank 0 before anything is written.

Two jobs writing one run directory would interleave checkpoints and metrics (one silently overwriting the
other). The lock is a file created with O_EXCL (atomic on POSIX file systems, NFS v3+ included) holding the
owner: host, pid, SLURM job id, start time. It is removed when its process exits normally. A lock left by a
job that died:
  - on this host, by a pid that no longer runs: stale, reported and taken over;
  - by the same SLURM job id (a requeued job of the same run, on any host): taken over;
  - otherwise (another host, or a live pid): refused, naming the owner and how to clear it.
"""
from __future__ import annotations

import atexit
import json
import os
import socket
import time

from ..errors import RunDirBusy

LOCK = "RUN.lock"


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # exists, owned by someone else
        return True
    try:  # a killed process whose parent has not reaped it yet still answers: a zombie is dead
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except (OSError, IndexError):
        return True


def _owner() -> dict:
    return {"host": socket.gethostname(), "pid": os.getpid(), "slurm_job_id": os.environ.get("SLURM_JOB_ID", ""),
            "started": time.strftime("%Y-%m-%d %H:%M:%S")}


def acquire(out_dir: str) -> str:
    """Take the lock of out_dir for this process; returns a note when a stale lock was taken over ('' if none).
    Raises RunDirBusy when another live run owns it."""
    os.makedirs(out_dir, exist_ok=True)
    path = os.path.join(out_dir, LOCK)
    note = ""
    for _ in range(2):
        try:
            fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
        except FileExistsError:
            held = _read(path)
            reason = _stale(held)
            if not reason:
                raise RunDirBusy(
                    f"config key 'train.out_dir' = '{out_dir}' is in use by another run (pid {held.get('pid')} on "
                    f"host {held.get('host')}, SLURM job {held.get('slurm_job_id') or '-'}, since "
                    f"{held.get('started')}); wait for it, use another train.out_dir, or, if that job is dead, "
                    f"remove {path}") from None
            note = f"took over the lock of a {reason} ({path})"
            os.remove(path)
            continue
        with os.fdopen(fd, "w") as f:
            json.dump(_owner(), f)
        atexit.register(release, out_dir)
        return note
    raise RunDirBusy(f"could not take the lock {path}: another run took it at the same time")


def _read(path: str) -> dict:
    try:
        with open(path) as f:
            held = json.load(f)
        return held if isinstance(held, dict) else {}
    except (OSError, ValueError):
        return {}  # being written right now, or garbage: treated as held by an unknown run


def _stale(held: dict) -> str:
    """Why a held lock may be taken over, or '' if it may not."""
    job = os.environ.get("SLURM_JOB_ID", "")
    if job and held.get("slurm_job_id") == job:
        return f"requeued SLURM job {job}"
    if held.get("host") == socket.gethostname() and isinstance(held.get("pid"), int) and not _alive(held["pid"]):
        return f"dead run (pid {held['pid']}, started {held.get('started')})"
    return ""


def release(out_dir: str) -> None:
    """Remove the lock if this process holds it."""
    path = os.path.join(out_dir, LOCK)
    held = _read(path)
    if held.get("pid") == os.getpid() and held.get("host") == socket.gethostname():
        try:
            os.remove(path)
        except FileNotFoundError:
            pass

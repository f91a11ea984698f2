"""Checkpoints through DeepSpeed's save/load, made atomic with a manifest.

A checkpoint is `checkpoints/step_XXXXXXXX/` as DeepSpeed writes it (model and ZeRO-partitioned optimizer
states of every rank, client state with the step). It counts as complete only once rank 0 has written
`MANIFEST.json` (every file with its size and sha256) after all ranks finished writing; then `latest`
moves to it (write aside, rename). A crash during a save leaves a folder without manifest, which `load`
skips: it takes the newest checkpoint whose manifest matches its files and says which ones it refused.
Only the newest `keep` complete checkpoints are kept.
"""
from __future__ import annotations

import hashlib
import json
import os
import shutil

import torch
import torch.distributed as dist

MANIFEST = "MANIFEST.json"


def _sha256(path: str) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def _files(folder: str) -> list[str]:
    out = []
    for root, _, names in os.walk(folder):
        out += [os.path.relpath(os.path.join(root, n), folder) for n in names if n != MANIFEST]
    return sorted(out)


def verify(folder: str) -> str:
    """'' if the checkpoint folder is complete and intact, else why not."""
    if not os.path.isdir(folder):
        return "it does not exist"
    path = os.path.join(folder, MANIFEST)
    if not os.path.exists(path):
        return "no manifest (the save did not finish)"
    try:
        with open(path) as f:
            manifest = json.load(f)
    except json.JSONDecodeError:
        return "manifest is not valid JSON"
    if not isinstance(manifest, dict) or not isinstance(manifest.get("files"), dict):
        return "manifest has no file list"
    for name, meta in manifest["files"].items():
        fp = os.path.join(folder, name)
        if not os.path.exists(fp):
            return f"file {name} is missing"
        if os.path.getsize(fp) != meta["bytes"] or _sha256(fp) != meta["sha256"]:
            return f"file {name} does not match its manifest (size or checksum)"
    return ""


class CheckpointError(RuntimeError):
    """A checkpoint could not be written (the run stops; the newest complete checkpoint stays)."""


def _failure_on_any_rank(device, write, *args) -> str:
    """Run write(*args) on every rank; '' if it succeeded everywhere, else what failed. An OSError (ENOSPC, EIO,
    quota) on one rank must not leave the others waiting in the next collective: the outcome is all-reduced
    (on `device`, the engine's: NCCL reduces CUDA tensors only)."""
    error = ""
    try:
        write(*args)
    except OSError as e:
        error = f"{type(e).__name__}: {e.strerror or e} on rank {dist.get_rank()}"
    failed = torch.tensor([1.0 if error else 0.0], device=device)
    dist.all_reduce(failed)
    return (error or "a write failed on another rank") if failed.item() else ""


class CheckpointManager:
    def __init__(self, root: str, keep: int):
        self.root, self.keep = root, keep

    def tags(self) -> list[str]:
        if not os.path.isdir(self.root):
            return []
        return sorted(t for t in os.listdir(self.root) if t.startswith("step_") and not t.endswith(".old"))

    def save(self, engine, step: int) -> str:
        tag = f"step_{step:08d}"
        folder = os.path.join(self.root, tag)
        if dist.get_rank() == 0 and os.path.exists(folder):
            shutil.rmtree(folder)  # an unfinished earlier attempt at the same step
        dist.barrier()
        failure = _failure_on_any_rank(engine.device, self._write_shards, engine, tag, step)  # a full disk fails some ranks, or all
        if not failure:
            self.commit(folder, step)
        dist.barrier()
        if failure:
            if dist.get_rank() == 0:
                shutil.rmtree(folder, ignore_errors=True)  # never a partial folder (no manifest: never loaded anyway)
            raise CheckpointError(f"saving checkpoint {folder} failed ({failure}); the partial checkpoint was "
                                  f"removed and the newest complete one is kept: free space, then --resume")
        return folder

    def _write_shards(self, engine, tag: str, step: int) -> None:
        engine.save_checkpoint(self.root, tag=tag, client_state={"step": step}, save_latest=False)

    def commit(self, folder: str, step: int) -> None:
        """Called on every rank once all shards are written; rank 0 makes the checkpoint count: manifest,
        then `latest`, then retention."""
        if dist.get_rank() != 0:
            return
        tag = os.path.basename(folder)
        files = {n: {"bytes": os.path.getsize(os.path.join(folder, n)), "sha256": _sha256(os.path.join(folder, n))}
                 for n in _files(folder)}
        write_atomic(os.path.join(folder, MANIFEST), json.dumps({"step": step, "files": files}, indent=1))
        write_atomic(os.path.join(self.root, "latest"), tag)
        # retention counts back from the checkpoint just written: a newer tag left by a refused or
        # abandoned timeline is neither counted nor removed here (the next save of its step replaces it)
        complete = [t for t in self.tags() if t <= tag and os.path.exists(os.path.join(self.root, t, MANIFEST))]
        for old in complete[:-self.keep]:
            shutil.rmtree(os.path.join(self.root, old), ignore_errors=True)

    def latest_complete(self) -> tuple[str, list[str]]:
        """(newest intact tag or '', reasons for each newer tag refused)."""
        refused = []
        for tag in reversed(self.tags()):
            why = verify(os.path.join(self.root, tag))
            if not why:
                return tag, refused
            refused.append(f"{tag}: {why}")
        return "", refused

    def load(self, engine) -> int:
        """Load the newest complete checkpoint; returns its step (0 if there is none)."""
        tag, refused = self.latest_complete()
        if dist.get_rank() == 0:
            for line in refused:
                print(f"jigsaw-train: refusing checkpoint {line}")
        if not tag:
            if dist.get_rank() == 0:
                print(f"jigsaw-train: no complete checkpoint in {self.root}; starting from step 0")
            return 0
        _, client = engine.load_checkpoint(self.root, tag=tag)
        if dist.get_rank() == 0:
            print(f"jigsaw-train: resumed from {os.path.join(self.root, tag)} (step {client['step']})")
        return int(client["step"])


def write_atomic(path: str, text: str) -> None:
    """Write text to path so that a crash leaves either the old file or the whole new one."""
    tmp = path + ".tmp"
    with open(tmp, "w") as f:
        f.write(text)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)

"""Training checkpoints made atomic with a manifest, in the sharded format of sharded.py.

A checkpoint is `checkpoints/step_XXXXXXXX/`: every rank's DCP files and DCP's `.metadata`, then rank 0's
`jigsaw.json`. It counts as complete only once rank 0 has written `MANIFEST.json` (every file with its size
and the sha256 its writer computed) after all ranks finished writing; then `latest` moves to it (write aside,
rename). A crash during a save leaves a folder without manifest, which `load` skips, saying so. Finding the
newest complete checkpoint reads manifests and file sizes only; each rank then hashes just the files it reads
(sharded._VerifyingReader), and a damaged one makes the load fall back to the next older checkpoint. Only the
newest `keep` complete checkpoints are kept.
"""
from __future__ import annotations

import json
import os
import shutil

import torch
import torch.distributed as dist

from ..errors import CheckpointError
from ..files import write_atomic
from . import sharded
from .folder import MANIFEST, META, Checkpoints, CorruptCheckpoint, find_checkpoint, sha256
from .folder import verify  # noqa: F401 (re-exported: whether a checkpoint is complete, asked of the manager)
from .zero import set_step


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


class CheckpointManager(Checkpoints):
    def __init__(self, root: str, keep: int):
        super().__init__(root)
        self.keep = keep

    def save(self, engine, model, groups, step: int, run_config: dict) -> str:
        tag = f"step_{step:08d}"
        folder = os.path.join(self.root, tag)
        if dist.get_rank() == 0 and os.path.exists(folder):
            shutil.rmtree(folder)  # an unfinished earlier attempt at the same step
        dist.barrier()
        written = {}
        failure = _failure_on_any_rank(engine.device, self._write_shards, folder, engine, model, groups, written)
        if not failure:
            files = [None] * dist.get_world_size()
            dist.all_gather_object(files, written)  # each writer's own hashes: rank 0 hashes only its own files
            self.commit(folder, {name: meta for part in files for name, meta in part.items()},
                        sharded.meta_of(engine, model, step, run_config))
        dist.barrier()
        if failure:
            if dist.get_rank() == 0:
                shutil.rmtree(folder, ignore_errors=True)  # never a partial folder (no manifest: never loaded anyway)
            raise CheckpointError(f"saving checkpoint {folder} failed ({failure}); the partial checkpoint was "
                                  f"removed and the newest complete one is kept: free space, then --resume")
        return folder

    def _write_shards(self, folder: str, engine, model, groups, written: dict) -> None:
        written.update(sharded.save(folder, engine, model, groups))

    def commit(self, folder: str, files: dict, meta: dict) -> None:
        """Called on every rank once all shards are written; rank 0 makes the checkpoint count: jigsaw.json,
        manifest, then `latest`, then retention."""
        if dist.get_rank() != 0:
            return
        tag = os.path.basename(folder)
        write_atomic(os.path.join(folder, META), json.dumps(meta, indent=1))
        for name in (".metadata", META):  # written by rank 0 (DCP's coordinator) itself
            path = os.path.join(folder, name)
            files[name] = {"bytes": os.path.getsize(path), "sha256": sha256(path)}
        write_atomic(os.path.join(folder, MANIFEST), json.dumps({"step": meta["step"], "files": files}, indent=1))
        write_atomic(os.path.join(self.root, "latest"), tag)
        # retention counts back from the checkpoint just written: a newer tag left by a refused or
        # abandoned timeline is neither counted nor removed here (the next save of its step replaces it)
        complete = [t for t in self.tags() if t <= tag and os.path.exists(os.path.join(self.root, t, MANIFEST))]
        for old in complete[:-self.keep]:
            shutil.rmtree(os.path.join(self.root, old), ignore_errors=True)

    def load(self, engine, model, groups) -> int:
        """Load the newest complete checkpoint that reads back intact, at this run's layout (whatever layout
        wrote it); returns its step (0 if there is none)."""
        say = (lambda line: print(line, flush=True)) if dist.get_rank() == 0 else (lambda line: None)
        any_complete = False
        for tag, files, why in self.candidates():
            if not why:
                any_complete = True
                try:
                    meta = sharded.load(os.path.join(self.root, tag), files, engine, model, groups)
                except CorruptCheckpoint as e:  # raised on every rank alike (DCP gathers the ranks' errors)
                    why = str(e)
            if why:
                say(f"jigsaw-train: refusing checkpoint {tag}: {why}")
                continue
            set_step(engine, meta["step"])
            say(f"jigsaw-train: resumed from {os.path.join(self.root, tag)} (step {meta['step']}); saved at layout "
                f"{meta['config'].get('layout')} by {meta['world']} ranks")
            return int(meta["step"])
        if any_complete:  # complete checkpoints, every one damaged: starting over would overwrite the run
            raise CheckpointError(f"no checkpoint in {self.root} reads back intact (each refused above); nothing "
                                  f"was changed: restore the files, or pass --start-over")
        say(f"jigsaw-train: no complete checkpoint in {self.root}; starting from step 0")
        return 0


def load_full(path: str, moments: bool = True) -> dict:
    """The layout-free state (layout_free.py's structure) of a layout-free FILE, or of a sharded checkpoint
    (a checkpoint folder or a run directory), read in this one process."""
    from .layout_free import load_file

    if os.path.isdir(path):
        return sharded.read_full(*find_checkpoint(path), moments=moments)
    return load_file(path)


def source_config(path: str) -> dict:
    """The run config of a checkpoint source (FILE, checkpoint folder or run directory), tensors unread."""
    from .layout_free import load_file

    if os.path.isdir(path):
        return sharded.read_meta(find_checkpoint(path)[0])["config"]
    return load_file(path, mmap=True)["config"]

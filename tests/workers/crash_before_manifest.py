"""jigsaw-train, except that ranks die like a killed job while saving step N (the test double of a crash,
kept out of the library):

    torchrun ... tests/workers/crash_before_manifest.py N --config ...     every rank, after all shards are
                                                                           written, before the manifest
    torchrun ... tests/workers/crash_before_manifest.py N@R --config ...   rank R alone, before it writes its
                                                                           shards (the others are left waiting
                                                                           in the save's collectives until the
                                                                           launcher ends the job)
"""
import os
import sys

import torch.distributed as dist

from jigsaw_ds.checkpoint.manager import CheckpointManager
from jigsaw_ds.train.cli import main

step, _, rank = sys.argv.pop(1).partition("@")
CRASH_STEP, CRASH_RANK = int(step), int(rank) if rank else None
_commit, _write = CheckpointManager.commit, CheckpointManager._write_shards


def commit_or_die(self, folder, files, meta):
    if meta["step"] == CRASH_STEP and CRASH_RANK is None:
        os._exit(17)
    return _commit(self, folder, files, meta)


def write_or_die(self, folder, *args):
    if folder.endswith(f"step_{CRASH_STEP:08d}") and dist.get_rank() == CRASH_RANK:
        os._exit(17)
    return _write(self, folder, *args)


CheckpointManager.commit, CheckpointManager._write_shards = commit_or_die, write_or_die
sys.exit(main())

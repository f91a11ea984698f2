"""jigsaw-train, except that every rank dies like a killed job while saving step N: all shards are written,
no manifest is (the test double of a crash, kept out of the library).

    torchrun ... tests/workers/crash_before_manifest.py N --config ... --deepspeed_config ...
"""
import os
import sys

from jigsaw_ds.checkpoint.manager import CheckpointManager
from jigsaw_ds.train.cli import main

CRASH_STEP = int(sys.argv.pop(1))
_commit = CheckpointManager.commit


def commit_or_die(self, folder, files, meta):
    if meta["step"] == CRASH_STEP:
        os._exit(17)
    return _commit(self, folder, files, meta)


CheckpointManager.commit = commit_or_die
sys.exit(main())

"""jigsaw-train, except that writing the checkpoint of step N fails with ENOSPC on every rank, as on a full
disk (the test double of a full file system, kept out of the library).

    tests/workers/full_disk_at_step.py N --config ... --deepspeed_config ...
"""
import errno
import os
import sys

from jigsaw_ds.checkpoint.manager import CheckpointManager
from jigsaw_ds.train.cli import main

FULL_AT = int(sys.argv.pop(1))
_write = CheckpointManager._write_shards


def write_or_fail(self, folder, *args):
    if folder.endswith(f"step_{FULL_AT:08d}"):
        os.makedirs(folder, exist_ok=True)  # a partial folder, as a real failure leaves
        open(os.path.join(folder, "half_written.distcp"), "wb").close()
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
    return _write(self, folder, *args)


CheckpointManager._write_shards = write_or_fail
sys.exit(main())

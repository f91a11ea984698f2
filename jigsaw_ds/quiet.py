"""One place for the libraries' known-harmless chatter, so that a newcomer's terminal shows what matters.

Filtered on every rank (each names a fact that is expected on our machines, not a problem):
  - Megatron-core: "Transformer Engine and Apex are not installed" (4 warnings per process at import: we use
    neither, only its parallel_state);
  - zarr: "Consolidated metadata is currently not part in the Zarr format 3 specification" (our stores are
    consolidated on purpose, so that xarray opens them with one read);
  - DeepSpeed: "Setting accelerator to CPU" (a CPU-only machine; on a GPU machine it is not said) and
    "Attempting to get learning rate from scheduler before it has started" (said by DeepSpeed's own WarmupLR
    constructor; the trainer reads the rate from the optimizer, engine.get_lr(), which is right).
On ranks other than 0, DeepSpeed's logger keeps only errors: the same notices 4 or 256 times say nothing more.
It also keeps DeepSpeed's compiled ops (the CPU shared-memory comm op, 55-115 s to build) inside this Python
environment: in torch's default cache, shared by every venv of the user, a build from another venv's torch is
rebuilt each time the other one ran.
"""
from __future__ import annotations

import logging
import os
import sys
import warnings

HARMLESS_WARNINGS = ("Transformer Engine and Apex are not installed",
                     "Consolidated metadata is currently not part")
HARMLESS_DEEPSPEED = ("Setting accelerator to CPU", "Attempting to get learning rate from scheduler before")


class _DropHarmless(logging.Filter):
    def __init__(self, rank: int):
        super().__init__()
        self.rank = rank

    def filter(self, record: logging.LogRecord) -> bool:
        if self.rank != 0 and record.levelno < logging.ERROR:
            return False
        return not str(record.msg).startswith(HARMLESS_DEEPSPEED)


def quiet_libraries(rank: int) -> None:
    """Install the filters; call before importing deepspeed or megatron (their notices come at import)."""
    os.environ.setdefault("TORCH_EXTENSIONS_DIR", os.path.join(sys.prefix, "torch_extensions"))
    for text in HARMLESS_WARNINGS:
        warnings.filterwarnings("ignore", message=text)
    # DeepSpeed's logger (deepspeed.utils.logging, name "DeepSpeed") keeps filters added before it is created
    logging.getLogger("DeepSpeed").addFilter(_DropHarmless(rank))

"""One place for the libraries' known-harmless chatter, so that a newcomer's terminal shows what matters.

Filtered on every rank (each names a fact that is expected on our machines, not a problem):
  - Megatron-core: "Transformer Engine and Apex are not installed" (4 warnings per process at import: we use
    neither, only its parallel_state);
  - zarr: "Consolidated metadata is currently not part in the Zarr format 3 specification" (our stores are
    consolidated on purpose, so that xarray opens them with one read), and "Object at .jigsaw-prepare is not
    recognized as a component of a Zarr hierarchy" (prepare's own job state, data/parallel_prepare.STATE, kept
    inside STORE.partial while it works: a plain folder, not zarr, removed when the store is complete);
  - torch: the FutureWarning that `torch.distributed.all_gather_into_tensor` is deprecated, once per rank
    (DeepSpeed's ZeRO calls the old name, which torch still forwards to all_gather_single; our own collectives
    use the new name, parallel/mappings.py);
  - torch.distributed.checkpoint: "torch.distributed is disabled, unavailable or uninitialized, assuming the
    intent is to load in a single process" (`jigsaw-ckpt export` reads a checkpoint in one process without a
    process group on purpose: that is what it is for);
  - cfgrib: xarray's FutureWarning that the default `compat` of merge will change (cfgrib's own merge of one
    GRIB file's variables; prepare checks the coordinates that files share itself, data/prepare.py);
  - torch-harmonics: "Default SHT truncation changed in v0.9.0" (`jigsaw-data swe`: the version is pinned,
    0.9.3 in scripts/install.sh, so the truncation its stores are made with does not change under us);
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
# (message at the start of the warning, its category, the module it is attributed to): each narrow, see above
HARMLESS_LIBRARY_WARNINGS = (
    (r"Object at \.jigsaw-prepare is not recognized as a component of a Zarr hierarchy", UserWarning, "zarr"),
    (r"`torch\.distributed\.all_gather_into_tensor` is deprecated", FutureWarning, r"torch\.distributed"),
    (r"torch\.distributed is disabled, unavailable or uninitialized, assuming the intent is to load in a single",
     UserWarning, r"torch\.distributed\.checkpoint"),
    (r"In a future version of xarray the default value for compat will change", FutureWarning, "cfgrib"),
    (r"Default SHT truncation changed in v0\.9\.0", UserWarning, "torch_harmonics"),
)
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
    for message, category, module in HARMLESS_LIBRARY_WARNINGS:
        warnings.filterwarnings("ignore", message=message, category=category, module=module)
    # DeepSpeed's logger (deepspeed.utils.logging, name "DeepSpeed") keeps filters added before it is created
    logging.getLogger("DeepSpeed").addFilter(_DropHarmless(rank))

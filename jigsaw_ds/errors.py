"""The package's exceptions, and the one place a command turns them into an exit code (`run_main`).

Two bases, by what the user does next:
- `JigsawError` (a ValueError, as the checks raised before it existed): bad input, or a state the user must
  fix; the message names it. A command says it in one line "PROG: error: MESSAGE" and exits 2, no traceback.
- `RunStopped` (a RuntimeError): a run that had started stops (non-finite training, a checkpoint that cannot be
  written); the newest complete checkpoint stays the last good one. One line, exit 1.
Anything else is a bug and keeps its traceback: `run_main` catches these two bases only, never ValueError
itself (a ValueError from inside numpy or torch would otherwise pass for "bad input" and lose its traceback).

Who says it: an error every rank sees alike is said by rank 0 only; a `RankLocalError` (what only some ranks
can see: their own tile of the store) is said by the ranks whose `say` is set, since rank 0 does not know it.

A leaf module: it imports nothing from the package, so that every module (config.py included) can import it.
"""
from __future__ import annotations

import sys
from typing import Callable

BAD_INPUT, RUN_STOPPED = 2, 1  # exit codes


class JigsawError(ValueError):
    """Bad input or a state the user must fix; the message names it (exit 2, one line)."""


class ConfigError(JigsawError):
    """A config value or a command's option is wrong; the message names the key."""


class AllocationError(JigsawError):
    """The launcher's ranks do not fit the layout, or cannot be read; the message says what to change."""


class StoreError(JigsawError):
    """A store does not hold what the config asks for, or a path may not be written as one; the message names
    store, variable, coordinate."""


class SourceError(StoreError):
    """A source cannot be ingested (jigsaw-data prepare); the message names the file, the variable and the coordinate."""


class MissingLibrary(JigsawError):
    """An optional library a command needs (a generator's solver) is not installed; the message says how to
    install it."""


class ClimatologyError(JigsawError):
    """A given climatology store does not fit the data it is to be used with; the message says how."""


class InputsDiffer(JigsawError):
    """A model would read other inputs than it was trained on; the message names each difference."""


class EvalError(JigsawError):
    """jigsaw-eval or jigsaw-forecast cannot do what it was asked; the message says why."""


class NotACheckpoint(JigsawError):
    """A path names no complete jigsaw_ds checkpoint (folder, run directory or layout-free file); says why."""


class CorruptCheckpoint(JigsawError):
    """A checkpoint file differs from its manifest, or is missing."""


class RunDirBusy(JigsawError):
    """train.out_dir is owned by another live run."""


class ClusterError(JigsawError):
    """The Dask cluster cannot run the job (scheduler unreachable, a task that keeps killing its worker)."""


class RankLocalError(JigsawError):
    """An error only some ranks can see (bad values in their own tile of the store): each rank whose `say` is set
    prints it itself, rank 0 may not know it. Every rank that raises it exits 2."""

    def __init__(self, message: str, say: bool = True):
        super().__init__(message)
        self.say = say


class StoreReadError(StoreError, RankLocalError):
    """A chunk of a store cannot be read: only the ranks reading that tile see it, so each says it itself."""


class RunStopped(RuntimeError):
    """A run that had started stops, every rank alike; the newest complete checkpoint is the last good one (exit 1)."""


class NonFiniteError(RunStopped):
    """Training produced a non-finite loss or gradient norm."""


class CheckpointError(RunStopped):
    """A checkpoint could not be written or none reads back (the run stops; the newest complete checkpoint stays)."""


def run_main(prog: str, rank: int, main: Callable[..., int], *args) -> int:
    """main(*args)'s exit code. A JigsawError is "PROG: error: MESSAGE" on stderr and 2, a RunStopped the same
    line and 1: said by `rank` 0 (the launcher's rank: every rank runs this) for what every rank sees alike, by
    the rank itself for a RankLocalError whose `say` is set. Every other exception propagates with its traceback."""
    try:
        return main(*args)
    except (JigsawError, RunStopped) as e:
        say = e.say if isinstance(e, RankLocalError) else rank == 0
        if say:
            print(f"{prog}: error: {e}", file=sys.stderr)
        return RUN_STOPPED if isinstance(e, RunStopped) else BAD_INPUT

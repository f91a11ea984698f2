"""Counts what moves: bytes per collective type and group, per step.

Every collective in mappings.py calls `record` (not counted inside a torch.compile'd region). The byte
count of a collective is its payload: the tensor for an all-reduce, the gathered output for an all-gather,
the input for a reduce-scatter (the full-size side, independent of the algorithm the backend picks).
perf/comm_model.py predicts the same numbers.
"""
from __future__ import annotations

from collections import defaultdict

import torch

_names: dict[int, str] = {}
_bytes: dict[tuple[str, str], int] = defaultdict(int)
_calls: dict[tuple[str, str], int] = defaultdict(int)


def name_group(group, name: str) -> None:
    _names[id(group)] = name


def record(op: str, group, nbytes: int) -> None:
    if torch.compiler.is_compiling():  # a python side effect would break the graph at every collective
        return
    key = (op, _names.get(id(group), "unnamed"))
    _bytes[key] += nbytes
    _calls[key] += 1


def reset() -> None:
    _bytes.clear()
    _calls.clear()


def snapshot() -> dict[str, int]:
    """{'all_reduce/jigsaw': bytes, ...} since the last reset."""
    return {f"{op}/{group}": n for (op, group), n in sorted(_bytes.items())}


def calls() -> dict[str, int]:
    return {f"{op}/{group}": n for (op, group), n in sorted(_calls.items())}

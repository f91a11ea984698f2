"""Rank-0 outputs of a run: config.json, metrics.jsonl (one object per logged step), TensorBoard scalars, and
the same scalars through DeepSpeed's monitor (its `tensorboard`, `wandb`, `csv_monitor` or `comet` sections of
the DeepSpeed JSON), as DeepSpeed users expect. metrics.jsonl stays the record (it is what a resume trims)."""
from __future__ import annotations

import json
import os

from ..files import write_atomic


def _step(line: str) -> float:
    """The step of a metrics.jsonl line; a line a crash cut short counts as after every step."""
    try:
        return json.loads(line)["step"]
    except (ValueError, KeyError, TypeError):
        return float("inf")


def _scalars(record: dict):
    """(name, value) of every number in a record; nested dicts (bytes per collective) as 'key/sub'."""
    for key, value in record.items():
        if isinstance(value, dict):
            yield from ((f"{key}/{sub}", v) for sub, v in value.items())
        elif isinstance(value, (int, float)) and not isinstance(value, bool) and key != "step":
            yield key, value


class MetricsLogger:
    """`resume_step` > 0 continues a run: records after that step (logged before a crash, then lost with
    the checkpoint that was not written) are dropped from metrics.jsonl and TensorBoard, so that every
    step appears once, as the resumed run computed it."""

    def __init__(self, out_dir: str, enabled: bool, resume_step: int = 0, monitor=None):
        self.enabled = enabled
        self.out_dir = out_dir
        self.monitor = monitor if monitor is not None and monitor.enabled else None
        if not enabled:
            return
        os.makedirs(out_dir, exist_ok=True)
        path = os.path.join(out_dir, "metrics.jsonl")
        kept = []
        if resume_step and os.path.exists(path):
            with open(path) as f:
                kept = [line for line in f if _step(line) <= resume_step]
        write_atomic(path, "".join(kept))
        self.jsonl = open(path, "a")
        from torch.utils.tensorboard import SummaryWriter

        # events of steps after resume_step (all of them when starting at 0) are from a run that is gone
        self.tb = SummaryWriter(os.path.join(out_dir, "tensorboard"), purge_step=resume_step + 1)

    def write_config(self, resolved: dict) -> None:
        write_atomic(os.path.join(self.out_dir, "config.json"), json.dumps(resolved, indent=2, default=str))

    def log(self, record: dict) -> None:
        if not self.enabled:
            return
        self.jsonl.write(json.dumps(record) + "\n")
        self.jsonl.flush()
        step = record["step"]
        scalars = dict(_scalars(record))
        for name, value in scalars.items():
            self.tb.add_scalar(name, value, step)
        if self.monitor:
            self.monitor.write_events([(f"jigsaw/{name}", value, step) for name, value in scalars.items()])

    def close(self) -> None:
        if self.enabled:
            self.jsonl.close()
            self.tb.close()

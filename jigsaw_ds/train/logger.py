"""Rank-0 outputs of a run: config.json, metrics.jsonl (one object per logged step), TensorBoard scalars."""
from __future__ import annotations

import json
import os


class MetricsLogger:
    def __init__(self, out_dir: str, enabled: bool, append: bool = False):
        self.enabled = enabled
        self.out_dir = out_dir
        if not enabled:
            return
        os.makedirs(out_dir, exist_ok=True)
        self.jsonl = open(os.path.join(out_dir, "metrics.jsonl"), "a" if append else "w")
        from torch.utils.tensorboard import SummaryWriter

        self.tb = SummaryWriter(os.path.join(out_dir, "tensorboard"))

    def write_config(self, resolved: dict) -> None:
        with open(os.path.join(self.out_dir, "config.json"), "w") as f:
            json.dump(resolved, f, indent=2, default=str)

    def log(self, record: dict) -> None:
        if not self.enabled:
            return
        self.jsonl.write(json.dumps(record) + "\n")
        self.jsonl.flush()
        step = record["step"]
        for key, value in record.items():
            if isinstance(value, dict):
                for sub, v in value.items():
                    self.tb.add_scalar(f"{key}/{sub}", v, step)
            elif isinstance(value, (int, float)) and key != "step":
                self.tb.add_scalar(key, value, step)

    def close(self) -> None:
        if self.enabled:
            self.jsonl.close()
            self.tb.close()

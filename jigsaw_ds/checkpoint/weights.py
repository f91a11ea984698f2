"""The weights a checkpoint path names, for inference (jigsaw-eval, jigsaw-forecast, jigsaw_ds.inference): a
run directory (its newest complete checkpoint), one checkpoint folder, or a layout-free FILE."""
from __future__ import annotations

import os

from ..config import from_dict
from . import sharded
from .layout_free import build_model, load_file
from .manager import find_checkpoint, source_config


def load_model(path: str, groups):
    """WeatherMixer at the layout of `groups`, jigsaw config and the run's resolved config (grid, channel names).
    A sharded checkpoint is read rank by rank, each its own shards (collective); a layout-free FILE whole on
    every rank (small models)."""
    if os.path.isdir(path):
        folder, files = find_checkpoint(path)
        run_config = source_config(folder)
        model = build_model(run_config, groups)
        sharded.load_module(folder, files, model, groups)
    else:
        state = load_file(path)
        run_config = state["config"]
        model = build_model(run_config, groups)
        model.load_full_state_dict({**state["model"], **state["buffers"]})
    return model.eval(), from_dict(run_config["jigsaw"]), run_config


def checkpoint_record(path: str) -> dict:
    """Which weights a checkpoint path (run directory, checkpoint folder or layout-free FILE) names: the
    checkpoint itself (a run directory's newest complete one), its step and the run that trained it."""
    if os.path.isdir(path):
        folder = find_checkpoint(path)[0]
        meta = sharded.read_meta(folder)
        where, step, run_config = folder, meta["step"], meta["config"]
    else:
        state = load_file(path, mmap=True)
        where, step, run_config = path, state["step"], state["config"]
    return {"checkpoint": os.path.abspath(where), "step": int(step),
            "run": str(run_config["jigsaw"].get("train", {}).get("out_dir", ""))}

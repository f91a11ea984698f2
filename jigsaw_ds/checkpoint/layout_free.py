"""Layout-free checkpoint files: full tensors in one torch file, for inference, small models and exchange.

`jigsaw-ckpt export` writes one from a sharded checkpoint in one process (sharded.read_full). Import
(`jigsaw-train --init-from FILE`) cuts the full tensors with each parameter's Split (`local_shard`) at the
new layout and writes them into DeepSpeed's ZeRO partitions through safe_set_full_*.

File format (torch.save of a dict; `format` = FORMAT):
  step, config (resolved run config: jigsaw, deepspeed, layout, model_shape), model {name: tensor},
  buffers {name: tensor}, optimizer {exp_avg: {name: tensor}, exp_avg_sq: {...}, step: int},
  scheduler (DeepSpeed LR scheduler state_dict or None).
"""
from __future__ import annotations

import os
from typing import Optional

import torch

from ..errors import NotACheckpoint
from ..parallel.topology import JigsawGroups
from .zero import ADAM_STATES, init_adam_state

FORMAT = "jigsaw_ds.layout_free.v1"


def load_file(path: str, mmap: bool = False) -> dict:
    """A layout-free checkpoint file, checked to be one; NotACheckpoint naming the file otherwise. mmap: tensors
    are read from the file only when touched (for a look at the config)."""
    if not os.path.isfile(path):
        raise NotACheckpoint(f"checkpoint file '{path}' does not exist")
    try:
        state = torch.load(path, map_location="cpu", weights_only=False, mmap=mmap)
    except Exception as e:  # torch raises several types for a file that is not its format
        raise NotACheckpoint(f"'{path}' is not a layout-free jigsaw_ds checkpoint (torch.load: {e})") from None
    if not isinstance(state, dict) or state.get("format") != FORMAT:
        raise NotACheckpoint(f"'{path}' is not a layout-free jigsaw_ds checkpoint (format "
                             f"{state.get('format') if isinstance(state, dict) else None!r}, expected {FORMAT}); "
                             f"make one with `jigsaw-ckpt export RUN_DIR --out FILE`")
    return state


def build_model(run_config: dict, groups: Optional[JigsawGroups] = None):
    """The WeatherMixer a run's resolved config (config.json, or a checkpoint's `config`) describes, at the
    layout of `groups` (default: one process); parameters initialised from the run's seed."""
    from ..config import from_dict
    from ..model.shape import ModelShape

    cfg = from_dict(run_config["jigsaw"])
    return ModelShape.of_record(cfg.model, run_config["model_shape"]).build(groups, seed=cfg.train.seed)


def import_state(engine, model, groups: JigsawGroups, state: dict) -> int:
    """Scatter a layout-free state into this rank's engine (weights, Adam moments, scheduler); returns step."""
    from deepspeed.utils import safe_set_full_fp32_param, safe_set_full_optimizer_state

    model.load_full_state_dict({**state["model"], **state["buffers"]})  # names and shapes checked there
    init_adam_state(engine, state["optimizer"]["step"])
    for name, p in model.named_parameters():
        local = lambda full: p.jigsaw_split.local_shard(full.float(), groups, model.partition).to(p.device)
        safe_set_full_fp32_param(p, local(state["model"][name]))
        for key in ADAM_STATES:
            if state["optimizer"][key].get(name) is not None:  # None: exported before any step
                safe_set_full_optimizer_state(p, local(state["optimizer"][key][name]), key)
    restore_scheduler(engine, state["scheduler"])
    return int(state["step"])


def restore_scheduler(engine, scheduler_state) -> None:
    """Put a saved LR scheduler position into the engine's scheduler, and the LR it implies into the optimizer
    now, as DeepSpeed's own resume does by restoring param_groups (else the next step runs at the initial LR)."""
    if scheduler_state is None or engine.lr_scheduler is None:
        return
    sched = engine.lr_scheduler
    sched.load_state_dict(scheduler_state)
    for group, lr in zip(sched.optimizer.param_groups, sched.get_lr()):
        group["lr"] = lr

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

FORMAT = "jigsaw_ds.layout_free.v1"
ADAM_STATES = ("exp_avg", "exp_avg_sq")


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
    from ..model import WeatherMixer

    cfg = from_dict(run_config["jigsaw"])
    shape = run_config["model_shape"]
    return WeatherMixer(cfg.model, shape["n_lat"], shape["n_lon"], shape["in_channels"], shape["out_channels"],
                        groups, seed=cfg.train.seed)


def _adam_step(zero) -> int:
    steps = {int(s["step"]) for s in zero.optimizer.state.values() if "step" in s}
    return steps.pop() if steps else 0


def _zero_optimizer(engine):
    """DeepSpeed's optimizer wrapper that keeps fp32 master partitions: DeepSpeedZeroOptimizer (ZeRO-1/2, fp32
    or bf16) or BF16_Optimizer (bf16, ZeRO-1, data_types.grad_accum_dtype fp32). Both link per-parameter
    fragments for safe_get/set_full_*."""
    zero = engine.optimizer
    if fp32_partitions(zero) is None:
        raise ValueError("layout-free export/import needs ZeRO stage 1 or 2 (zero_optimization.stage in the "
                         "DeepSpeed config)")
    return zero


def fp32_partitions(zero):
    """The flat fp32 partitions Adam steps on (the names differ between the two wrappers)."""
    for name in ("single_partition_of_fp32_groups", "fp32_groups_flat_partition"):
        if hasattr(zero, name):
            return getattr(zero, name)
    return None


def _link_adam_state(zero) -> None:
    """Point DeepSpeed's per-parameter fragments at Adam's state on the flat fp32 partitions (DeepSpeed
    links them only after its first step), so safe_get/set_full_optimizer_state can reach them."""
    zero._hp_optimizer_states_linked = False
    zero._lazy_init_hp_params_optimizer_state()


def _init_zero_adam_state(engine, step: int) -> None:
    """Adam's state on ZeRO's flat fp32 partitions at `step` (torch creates it lazily at the first step): made
    where missing, its moment buffers reused where present (a loader overwrites them; no second copy)."""
    zero = _zero_optimizer(engine)
    for flat, group in zip(fp32_partitions(zero), zero.optimizer.param_groups):
        # as torch.optim.AdamW keeps it: the step count on the parameter's device for fused/capturable
        # kernels, else on the CPU
        on_device = group.get("fused") or group.get("capturable")
        count = torch.tensor(float(step), dtype=torch.float32, device=flat.device if on_device else "cpu")
        old = zero.optimizer.state.get(flat, {})
        zero.optimizer.state[flat] = {"step": count, **{key: old[key] if key in old else torch.zeros_like(flat)
                                                        for key in ADAM_STATES}}
    _link_adam_state(zero)


def import_state(engine, model, groups: JigsawGroups, state: dict) -> int:
    """Scatter a layout-free state into this rank's engine (weights, Adam moments, scheduler); returns step."""
    from deepspeed.utils import safe_set_full_fp32_param, safe_set_full_optimizer_state

    model.load_full_state_dict({**state["model"], **state["buffers"]})  # names and shapes checked there
    _init_zero_adam_state(engine, state["optimizer"]["step"])
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

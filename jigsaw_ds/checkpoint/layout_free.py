"""Layout-free checkpoints: full tensors in, any layout and ZeRO stage out.

Export gathers, for every parameter, its fp32 weight and Adam moments (exp_avg, exp_avg_sq) from
DeepSpeed's ZeRO partitions (deepspeed.utils.safe_get_full_*: full over the data axis), then over the
model replica with the parameter's Split tag (`Split.assemble`, the inverse of `Split.local_shard`: the
same metadata that drives gradient reduction). Import cuts the full tensors with `local_shard` at the new
layout and writes them back through safe_set_full_*.

File format (torch.save of a dict; `format` = FORMAT):
  step, config (resolved run config: jigsaw, deepspeed, layout, model_shape), model {name: tensor},
  buffers {name: tensor}, optimizer {exp_avg: {name: tensor}, exp_avg_sq: {...}, step: int},
  scheduler (DeepSpeed LR scheduler state_dict or None).
"""
from __future__ import annotations

import os
from typing import Optional

import torch
import torch.distributed as dist

from ..parallel.topology import JigsawGroups

FORMAT = "jigsaw_ds.layout_free.v1"
ADAM_STATES = ("exp_avg", "exp_avg_sq")


def load_file(path: str, mmap: bool = False) -> dict:
    """A layout-free checkpoint file, checked to be one; ValueError naming the file otherwise. mmap: tensors
    are read from the file only when touched (for a look at the config)."""
    if not os.path.isfile(path):
        raise ValueError(f"checkpoint file '{path}' does not exist")
    try:
        state = torch.load(path, map_location="cpu", weights_only=False, mmap=mmap)
    except Exception as e:  # torch raises several types for a file that is not its format
        raise ValueError(f"'{path}' is not a layout-free jigsaw_ds checkpoint (torch.load: {e})") from None
    if not isinstance(state, dict) or state.get("format") != FORMAT:
        raise ValueError(f"'{path}' is not a layout-free jigsaw_ds checkpoint (format "
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


def _gather_pieces(local: torch.Tensor, groups: JigsawGroups) -> dict:
    """Every replica rank's piece of one tensor, on every rank of the replica."""
    if groups.size("jigsaw") == 1:
        return {(0, 0): local}
    out = [None] * groups.size("jigsaw")
    dist.all_gather_object(out, ((groups.domain_rank, groups.tensor_rank), local.cpu()),
                           group=groups.handles["jigsaw"])
    return dict(out)


def export_state(engine, model, groups: JigsawGroups, step: int, run_config: dict) -> dict:
    """Collective over the whole world; returns the full state on every rank (rank 0 writes it)."""
    from deepspeed.utils import safe_get_full_fp32_param, safe_get_full_optimizer_state

    zero = _zero_optimizer(engine)
    if zero.optimizer.state:
        _link_adam_state(zero)
    state = {"format": FORMAT, "step": step, "config": run_config, "model": {},
             "buffers": {k: v.cpu() for k, v in model.named_buffers()},
             "optimizer": {key: {} for key in ADAM_STATES}, "scheduler": None}
    for name, p in model.named_parameters():
        def full(local):
            return p.jigsaw_split.assemble(_gather_pieces(local.detach().float().cpu(), groups), p.full_shape,
                                           groups.layout, model.partition)
        hp = safe_get_full_fp32_param(p)
        state["model"][name] = full(hp if hp is not None else p)
        for key in ADAM_STATES:
            state["optimizer"][key][name] = full(safe_get_full_optimizer_state(p, key)) if zero.optimizer.state else None
    state["optimizer"]["step"] = _adam_step(zero)
    if engine.lr_scheduler is not None:
        state["scheduler"] = engine.lr_scheduler.state_dict()
    return state


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
    """Create Adam's state on ZeRO's flat fp32 partitions (torch creates it lazily at the first step)."""
    zero = _zero_optimizer(engine)
    for flat, group in zip(fp32_partitions(zero), zero.optimizer.param_groups):
        # as torch.optim.AdamW keeps it: the step count on the parameter's device for fused/capturable
        # kernels, else on the CPU
        on_device = group.get("fused") or group.get("capturable")
        count = torch.tensor(float(step), dtype=torch.float32, device=flat.device if on_device else "cpu")
        zero.optimizer.state[flat] = {"step": count, "exp_avg": torch.zeros_like(flat),
                                      "exp_avg_sq": torch.zeros_like(flat)}
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
    if state["scheduler"] is not None and engine.lr_scheduler is not None:
        sched = engine.lr_scheduler
        sched.load_state_dict(state["scheduler"])
        # the scheduler's state holds its position only: put the LR it implies into the optimizer now, as
        # DeepSpeed's own resume does by restoring param_groups (else the next step runs at the initial LR)
        for group, lr in zip(sched.optimizer.param_groups, sched.get_lr()):
            group["lr"] = lr
    return int(state["step"])

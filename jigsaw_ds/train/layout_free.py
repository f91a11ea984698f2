"""Layout-free checkpoints: full tensors in, any layout and ZeRO stage out.

Export gathers, for every parameter, its fp32 weight and Adam moments (exp_avg, exp_avg_sq) from
DeepSpeed's ZeRO partitions (deepspeed.utils.safe_get_full_*: full over the data axis), then over the
model replica with the parameter's Split tag (`assemble_full`, the inverse of layers.local_shard: the
same metadata that drives gradient reduction). Import cuts the full tensors with local_shard at the new
layout and writes them back through safe_set_full_*.

File format (torch.save of a dict; `format` = FORMAT):
  step, config (resolved run config: jigsaw, deepspeed, layout, model_shape), model {name: tensor},
  buffers {name: tensor}, optimizer {exp_avg: {name: tensor}, exp_avg_sq: {...}, step: int},
  scheduler (DeepSpeed LR scheduler state_dict or None).
"""
from __future__ import annotations

import math

import torch
import torch.distributed as dist

from ..parallel.layers import Replicated, TokenSharded, local_shard, tensor_shard_shape
from ..parallel.topology import JigsawGroups, Layout

FORMAT = "jigsaw_ds.layout_free.v1"
ADAM_STATES = ("exp_avg", "exp_avg_sq")


def assemble_full(pieces: dict, split, full_shape, layout: Layout, partition) -> torch.Tensor:
    """Full tensor from every replica rank's piece; pieces[(domain_rank, tensor_rank)] = local tensor."""
    if isinstance(split, Replicated):
        return pieces[(0, 0)].clone()
    if isinstance(split, TokenSharded):
        full = torch.empty(full_shape, dtype=pieces[(0, 0)].dtype)
        for (d, t), piece in pieces.items():
            full.index_copy_(split.dim, partition.token_index(d, t), piece)
        return full
    groups = JigsawGroups(layout)  # only for sizes and shard shapes
    shard_shape = tensor_shard_shape(full_shape, split, groups)
    shards = []
    for t in range(layout.tensor):
        if split.over == "domain":
            ranks = [(d, t) for d in range(layout.domain)]
        else:  # jigsaw: flat over the whole replica, in jigsaw-rank order (tensor fastest)
            ranks = [(d, tt) for d in range(layout.domain) for tt in range(layout.tensor)]
        if len(ranks) == 1:
            shard = pieces[ranks[0]]  # nothing was flattened
        else:
            shard = torch.cat([pieces[r].reshape(-1) for r in ranks])[:math.prod(shard_shape)].view(shard_shape)
        shards.append(shard)
        if split.tensor_dim is None:
            break
    return shards[0].clone() if split.tensor_dim is None else torch.cat(shards, dim=split.tensor_dim)


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
            return assemble_full(_gather_pieces(local.detach().float().cpu(), groups), p.jigsaw_split,
                                 p.full_shape, groups.layout, model.partition)
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

    if state.get("format") != FORMAT:
        raise ValueError(f"not a jigsaw_ds layout-free checkpoint (format {state.get('format')!r}, expected {FORMAT})")
    model.load_full_state_dict({**state["model"], **state["buffers"]})  # names and shapes checked there
    _init_zero_adam_state(engine, state["optimizer"]["step"])
    for name, p in model.named_parameters():
        local = lambda full: local_shard(full.float(), p.jigsaw_split, groups, model.partition).to(p.device)
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

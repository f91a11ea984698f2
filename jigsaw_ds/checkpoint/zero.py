"""DeepSpeed's ZeRO internals that jigsaw_ds relies on, in one place.

DeepSpeed has no public API for what a sharded, layout-free checkpoint needs, so these are read from its
ZeRO stage 1/2 optimizer wrappers (DeepSpeedZeroOptimizer, BF16_Optimizer) as of DeepSpeed 0.19.8, setup.py's
pin: the flat fp32 partitions Adam steps on, each parameter's link into this rank's partition (`_hp_mapping`:
which flat range of the parameter it holds, and that range's fp32 values and Adam moments), the linking of
Adam's state before DeepSpeed's first step, the module weights' refresh from the master, and the engine's
step counters. Nothing else in the package touches them. `check_engine` runs right after
deepspeed.initialize and names whatever is missing, with the installed version, so a DeepSpeed that moved them
stops in one line at start-up instead of writing wrong checkpoints; tests/test_zero_adapter.py is the canary
against the installed DeepSpeed.
"""
from __future__ import annotations

from typing import Optional

import torch

from ..errors import MissingLibrary

CHECKED_WITH = "0.19.8"  # the DeepSpeed these names were read from
ADAM_STATES = ("exp_avg", "exp_avg_sq")
_FP32_PARTITIONS = ("single_partition_of_fp32_groups",  # DeepSpeedZeroOptimizer (ZeRO-1/2, fp32 or bf16)
                    "fp32_groups_flat_partition")        # BF16_Optimizer (bf16, ZeRO-1, fp32 gradient accumulation)


def fp32_partitions(zero) -> Optional[list]:
    """The flat fp32 partitions Adam steps on, one per parameter group; None for a wrapper without them."""
    for name in _FP32_PARTITIONS:
        if hasattr(zero, name):
            return getattr(zero, name)
    return None


def zero_optimizer(engine):
    """The engine's ZeRO optimizer wrapper (the one with fp32 partitions)."""
    zero = engine.optimizer
    if fp32_partitions(zero) is None:
        raise ValueError("jigsaw_ds checkpoints need ZeRO stage 1 or 2 (zero_optimization.stage in the "
                         "DeepSpeed config)")
    return zero


def fragment(p: torch.Tensor, key: Optional[str] = None) -> Optional[tuple[torch.Tensor, int]]:
    """(values, start): the flat range of parameter p's local tensor that this rank's ZeRO partition holds, from
    element `start` on, as a view of the fp32 master weights (key None) or of an Adam state ('exp_avg',
    'exp_avg_sq'); None where the partition holds none of p."""
    mapping = p._hp_mapping
    if mapping is None:
        return None
    return mapping.get_hp_fragment(key), mapping.lp_fragment_address.start


def has_adam_state(zero) -> bool:
    """Whether Adam's moments exist (torch makes them at the first step)."""
    return bool(zero.optimizer.state)


def adam_step(zero) -> int:
    steps = {int(s["step"]) for s in zero.optimizer.state.values() if "step" in s}
    return steps.pop() if steps else 0


def link_adam_state(zero) -> None:
    """Point the per-parameter fragments at Adam's state on the flat fp32 partitions (DeepSpeed links them
    only after its first step), so `fragment(p, 'exp_avg')` and safe_get/set_full_optimizer_state reach them."""
    zero._hp_optimizer_states_linked = False
    zero._lazy_init_hp_params_optimizer_state()


def init_adam_state(engine, step: int) -> None:
    """Adam's state on ZeRO's flat fp32 partitions at `step` (torch creates it lazily at the first step): made
    where missing, its moment buffers reused where present (a loader overwrites them; no second copy)."""
    zero = zero_optimizer(engine)
    for flat, group in zip(fp32_partitions(zero), zero.optimizer.param_groups):
        # as torch.optim.AdamW keeps it: the step count on the parameter's device for fused/capturable
        # kernels, else on the CPU
        on_device = group.get("fused") or group.get("capturable")
        count = torch.tensor(float(step), dtype=torch.float32, device=flat.device if on_device else "cpu")
        old = zero.optimizer.state.get(flat, {})
        zero.optimizer.state[flat] = {"step": count, **{key: old[key] if key in old else torch.zeros_like(flat)
                                                        for key in ADAM_STATES}}
    link_adam_state(zero)


def update_module_weights(engine) -> None:
    """The module's (bf16 or fp32) weights from the fp32 master partitions, all-gathered over the data axis."""
    zero_optimizer(engine).update_lp_params()


def set_step(engine, step: int) -> None:
    """The engine's step and sample counters, as a resume at `step` finds them."""
    engine.global_steps, engine.global_samples = step, step * engine.train_batch_size()


def missing(engine) -> list[str]:
    """What of the above the engine lacks (empty when DeepSpeed has all of it)."""
    out = [f"engine.{name}" for name in ("global_steps", "global_samples") if not hasattr(engine, name)]
    zero = engine.optimizer
    wrapper = type(zero).__name__
    if fp32_partitions(zero) is None:
        out.append(f"{wrapper}.{' or '.join(_FP32_PARTITIONS)}")
    out += [f"{wrapper}.{name}" for name in ("_lazy_init_hp_params_optimizer_state", "update_lp_params")
            if not hasattr(zero, name)]
    if not hasattr(getattr(zero, "optimizer", None), "state"):
        out.append(f"{wrapper}.optimizer.state")
    for name, p in engine.module.named_parameters():
        if not hasattr(p, "_hp_mapping"):
            out.append(f"parameter {name}._hp_mapping")
            break
        if p._hp_mapping is not None and not all(hasattr(p._hp_mapping, a) for a in ("get_hp_fragment",
                                                                                       "lp_fragment_address")):
            out.append(f"parameter {name}._hp_mapping.get_hp_fragment / lp_fragment_address")
            break
    return out


def check_engine(engine) -> None:
    """MissingLibrary naming what this DeepSpeed lacks of what jigsaw_ds's checkpoints use, if anything."""
    lacks = missing(engine)
    if lacks:
        import deepspeed

        raise MissingLibrary(f"DeepSpeed {deepspeed.__version__} lacks what jigsaw_ds's checkpoints read from its "
                             f"ZeRO optimizer: {', '.join(lacks)} (read from DeepSpeed {CHECKED_WITH}: "
                             f"pip install deepspeed=={CHECKED_WITH})")

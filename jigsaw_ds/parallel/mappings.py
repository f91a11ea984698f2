"""The collectives of the Jigsaw model, each an autograd function paired with its conjugate.

Every function takes its process group explicitly; a group of None means one rank and makes the
function the identity, so the serial model runs the same code. Tensors are split and gathered along
dim 0, which is the token dim of activations ([tokens, batch, channels]) and the only dim of flat
parameter shards.

    forward              backward             helper
    identity             all-reduce           copy_to_group        (replicated input, used differently per rank)
    all-reduce           identity             reduce_from_group    (partial sums -> replicated result)
    all-gather (dim 0)   reduce-scatter       gather_from_group    (own rows -> everybody's rows)
    reduce-scatter       all-gather (dim 0)   reduce_scatter_to_group (partial rows -> own rows, summed)
    all-gather + linear  all-gather again,    gathered_linear      (sequence-parallel column linear: keeps only
                         reduce-scatter                             the own rows for backward)

Overlap: gathers and reduce-scatters can be started (async_op) and waited for later (`Pending`):
gathered_linear's backward runs its input-gradient GEMM while the band is gathered again and its weight-
gradient GEMM while the input gradient is reduce-scattered (as Megatron's LinearWithGradAccumulationAndAsync-
Communication does), and gather_from_group takes an all-gather started ahead of the use (`start_all_gather`:
the model prefetches the next block's weights while the current block computes).
"""
from __future__ import annotations

from typing import Optional

import torch
import torch.distributed as dist
import torch.nn.functional as F

from . import comm_stats


# torch 2.13 renamed all_gather_into_tensor / reduce_scatter_tensor to *_single (the old names warn on every
# call); 2.11, on the GPU machine, has only the old names.
_all_gather_single = getattr(dist, "all_gather_single", None) or dist.all_gather_into_tensor
_reduce_scatter_single = getattr(dist, "reduce_scatter_single", None) or dist.reduce_scatter_tensor


# Sums travel in fp32: a bf16 all-reduce or reduce-scatter would round every partial sum (of partial
# products over tokens, of gradient pieces) to 8 bits of mantissa on each hop of the ring. Gathers only move
# values, so they keep the tensor's dtype.
REDUCTIONS = ("all_reduce", "reduce_scatter")


def payload_element_size(op: str, element_size: int) -> int:
    """Bytes per element a collective moves for a tensor of `element_size` (perf/comm_model.py uses it too)."""
    return max(element_size, 4) if op in REDUCTIONS else element_size


def _sum_dtype(dtype: torch.dtype) -> torch.dtype:
    return torch.float32 if dtype in (torch.bfloat16, torch.float16) else dtype


class Pending:
    """A collective started with async_op: `wait()` returns its result, in the dtype the caller gave it."""

    def __init__(self, out: torch.Tensor, work, dtype: torch.dtype):
        self.out, self.work, self.dtype = out, work, dtype

    def wait(self) -> torch.Tensor:
        self.work.wait()
        return self.out.to(self.dtype)


def _all_reduce(x: torch.Tensor, group) -> torch.Tensor:
    out = x.to(_sum_dtype(x.dtype), memory_format=torch.contiguous_format, copy=True)
    comm_stats.record("all_reduce", group, out.numel() * out.element_size())
    dist.all_reduce(out, group=group)
    return out.to(x.dtype)


def start_all_gather(x: torch.Tensor, group) -> Pending:
    x = x.detach().contiguous()
    out = x.new_empty((dist.get_world_size(group) * x.shape[0],) + tuple(x.shape[1:]))
    comm_stats.record("all_gather", group, out.numel() * out.element_size())
    return Pending(out, _all_gather_single(out, x, group=group, async_op=True), x.dtype)


def _all_gather(x: torch.Tensor, group) -> torch.Tensor:
    return start_all_gather(x, group).wait()


def start_reduce_scatter(x: torch.Tensor, group) -> Pending:
    size = dist.get_world_size(group)
    if x.shape[0] % size:
        raise ValueError(f"reduce-scatter of {x.shape[0]} rows over {size} ranks: rows must divide evenly")
    dtype = x.dtype
    x = x.to(_sum_dtype(dtype), memory_format=torch.contiguous_format)
    out = x.new_empty((x.shape[0] // size,) + tuple(x.shape[1:]))
    comm_stats.record("reduce_scatter", group, x.numel() * x.element_size())
    return Pending(out, _reduce_scatter_single(out, x, group=group, async_op=True), dtype)


def _reduce_scatter(x: torch.Tensor, group) -> torch.Tensor:
    return start_reduce_scatter(x, group).wait()


class _CopyToGroup(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, group):
        ctx.group = group
        return x.view_as(x)

    @staticmethod
    def backward(ctx, grad):
        return _all_reduce(grad, ctx.group), None


class _ReduceFromGroup(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, group):
        return _all_reduce(x, group)

    @staticmethod
    def backward(ctx, grad):
        return grad, None


class _GatherFromGroup(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, group, pending):
        ctx.group = group
        return (pending or start_all_gather(x, group)).wait()

    @staticmethod
    def backward(ctx, grad):
        return _reduce_scatter(grad, ctx.group), None, None


class _ReduceScatterToGroup(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, group):
        ctx.group = group
        return _reduce_scatter(x, group)

    @staticmethod
    def backward(ctx, grad):
        return _all_gather(grad, ctx.group), None


class _GatheredLinear(torch.autograd.Function):
    """y = all_gather(x) W^T + b, keeping only the own rows x for backward (Megatron's sequence-parallel column
    linear): backward gathers x again for W's gradient and reduce-scatters the band's gradient back to the own
    rows. Autograd of gather + linear would keep the whole gathered band, T times the own rows."""

    @staticmethod
    def forward(ctx, x, weight, bias, group):
        ctx.group, ctx.has_bias = group, bias is not None
        ctx.save_for_backward(x, weight)
        return F.linear(_all_gather(x, group), weight, bias)

    @staticmethod
    def backward(ctx, grad):
        x, weight = ctx.saved_tensors
        band = start_all_gather(x, ctx.group)                  # the band again, while
        grad_band = grad @ weight                               # the input gradient needs only the weight
        grad_input = start_reduce_scatter(grad_band, ctx.group)  # back to the own rows, while
        band = band.wait()
        grad_rows = grad.reshape(-1, grad.shape[-1])
        grad_weight = grad_rows.t() @ band.reshape(-1, band.shape[-1])  # the weight gradient needs the band
        grad_bias = grad_rows.sum(0) if ctx.has_bias else None
        return grad_input.wait(), grad_weight, grad_bias, None


def copy_to_group(x, group):
    return x if group is None else _CopyToGroup.apply(x, group)


def reduce_from_group(x, group):
    return x if group is None else _ReduceFromGroup.apply(x, group)


def gather_from_group(x, group, pending: Optional[Pending] = None):
    """pending: this all-gather of x, started earlier (start_all_gather), to be waited for here."""
    return x if group is None else _GatherFromGroup.apply(x, group, pending)


def reduce_scatter_to_group(x, group):
    return x if group is None else _ReduceScatterToGroup.apply(x, group)


def gathered_linear(x, weight, bias, group):
    """F.linear(gather_from_group(x, group), weight, bias) with only x kept for backward."""
    return F.linear(x, weight, bias) if group is None else _GatheredLinear.apply(x, weight, bias, group)

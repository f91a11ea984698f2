"""Jigsaw layers: every parameter is tagged with how it is split over the ranks of a model replica.

A parameter's `Split` is the one source of truth for its layout. It decides
  - its local shape and how a full (serial) tensor is cut into it (`local_shard`: init, loading a serial
    state dict, tests, checkpoint import) and how the pieces go back together (checkpoint export);
  - what the forward pass uses (`materialize`): a replicated parameter passes through copy_to_group, so
    its gradient is summed inside autograd over the ranks that see different tokens; a flat shard is
    all-gathered just before use and its gradient reduce-scattered back;
  - the Megatron attributes (`tensor_model_parallel`, `partition_dim`, `partition_stride`) by which
    DeepSpeed's gradient-norm counts a parameter on every model-parallel rank (sharded) or once (replicated).

Three kinds, and nothing else, so that DeepSpeed's binary norm rule is exact (DESIGN section 3):
  Replicated      full copy on every rank of the replica; gradient summed over the jigsaw group.
  TokenSharded    the rows/cols (dim `dim`) of the rank's own tokens: token-mixing weights.
  FlatSharded     optionally cut along `tensor_dim` into the tensor rank's Megatron shard, then flattened,
                  zero-padded and cut into equal chunks over `over` ('domain' or 'jigsaw'): every rank of
                  the replica holds a distinct 1/M piece; gathered over `over` before use.
"""
from __future__ import annotations

import math
import zlib
from dataclasses import dataclass
from typing import Optional

import torch
import torch.nn.functional as F
from torch import nn

from .mappings import copy_to_group, gather_from_group, reduce_from_group, reduce_scatter_to_group
from .partition import TokenPartition
from .topology import JigsawGroups

# Tests switch this off to show that the parallel-vs-serial comparison catches a missing reduction.
REDUCE_REPLICATED_GRADS = True


@dataclass(frozen=True)
class Replicated:
    kind = "replicated"


@dataclass(frozen=True)
class TokenSharded:
    dim: int
    kind = "tokens"


@dataclass(frozen=True)
class FlatSharded:
    over: str                         # 'domain' or 'jigsaw'
    tensor_dim: Optional[int] = None  # Megatron split over the tensor axis first (column: 0, row: 1)
    kind = "flat"


def tensor_shard_shape(full_shape, split, groups: JigsawGroups) -> tuple:
    """Shape of the tensor rank's Megatron shard (what FlatSharded gathers back to before use)."""
    shape = list(full_shape)
    if isinstance(split, FlatSharded) and split.tensor_dim is not None:
        tp = groups.size("tensor")
        if shape[split.tensor_dim] % tp:
            raise ValueError(f"dim {split.tensor_dim} of shape {tuple(full_shape)} is not divisible by tensor size {tp}")
        shape[split.tensor_dim] //= tp
    return tuple(shape)


def local_shard(full: torch.Tensor, split, groups: JigsawGroups, partition: TokenPartition) -> torch.Tensor:
    """Cut this rank's piece out of a full (serial) tensor."""
    if isinstance(split, Replicated):
        return full.clone()
    if isinstance(split, TokenSharded):
        index = partition.token_index(groups.domain_rank, groups.tensor_rank)
        return full.index_select(split.dim, index).clone()
    shard = full
    if split.tensor_dim is not None:
        shard = full.chunk(groups.size("tensor"), dim=split.tensor_dim)[groups.tensor_rank]
    k = groups.size(split.over)
    if k == 1:  # nothing to cut over `over`: keep the Megatron shard's shape (the serial model's shapes)
        return shard.clone()
    flat = shard.reshape(-1)
    chunk = math.ceil(flat.numel() / k)
    flat = F.pad(flat, (0, chunk * k - flat.numel()))
    return flat[groups.rank_in(split.over) * chunk:(groups.rank_in(split.over) + 1) * chunk].clone()


def materialize(p: torch.Tensor, groups: JigsawGroups) -> torch.Tensor:
    """The tensor the forward pass computes with, communication included."""
    split = p.jigsaw_split
    if isinstance(split, Replicated):
        return copy_to_group(p, groups.comm("jigsaw")) if REDUCE_REPLICATED_GRADS else p
    if isinstance(split, TokenSharded):
        return p
    group = groups.comm(split.over)
    if group is None:
        return p
    shape = tensor_shard_shape(p.full_shape, split, groups)
    flat = gather_from_group(p, group)
    return flat[:math.prod(shape)].view(shape)


class ParamInit:
    """Layout-free initialisation: the full tensor comes from a generator seeded by (seed, name)."""

    def __init__(self, kind: str, fan_in: int = 1):
        self.kind, self.fan_in = kind, fan_in

    def full(self, shape, seed: int, name: str) -> torch.Tensor:
        if self.kind == "zeros":
            return torch.zeros(shape)
        if self.kind == "ones":
            return torch.ones(shape)
        g = torch.Generator().manual_seed(seed * 1_000_003 + zlib.crc32(name.encode()))
        bound = 1.0 / math.sqrt(self.fan_in)
        return (torch.rand(shape, generator=g) * 2 - 1) * bound


class JigsawModule(nn.Module):
    """Base of the layers: knows its groups and the token partition, creates tagged parameters."""

    def __init__(self, groups: JigsawGroups, partition: TokenPartition):
        super().__init__()
        self.groups = groups
        self.partition = partition

    def new_param(self, full_shape, split, init: ParamInit) -> nn.Parameter:
        local = local_shard(torch.empty(full_shape), split, self.groups, self.partition)
        p = nn.Parameter(torch.empty_like(local))
        p.jigsaw_split, p.full_shape, p.jigsaw_init = split, tuple(full_shape), init
        # Megatron's attributes: DeepSpeed's gradient norm counts a parameter on every model-parallel
        # rank when tensor_model_parallel is true, else only on model-parallel rank 0.
        p.tensor_model_parallel = not isinstance(split, Replicated)
        p.partition_dim = split.dim if isinstance(split, TokenSharded) else 0
        p.partition_stride = 1
        return p

    def use(self, p: torch.Tensor) -> torch.Tensor:
        return materialize(p, self.groups)


class LayerNorm(JigsawModule):
    """LayerNorm over channels; weight and bias replicated (each rank normalises its own tokens)."""

    def __init__(self, dim, groups, partition, eps=1e-5):
        super().__init__(groups, partition)
        self.eps = eps
        self.weight = self.new_param((dim,), Replicated(), ParamInit("ones"))
        self.bias = self.new_param((dim,), Replicated(), ParamInit("zeros"))

    def forward(self, x):
        return F.layer_norm(x, x.shape[-1:], self.use(self.weight), self.use(self.bias), self.eps)


class TokenwiseLinear(JigsawModule):
    """A per-token linear (patch embedding, head) applied to the rank's own tokens.

    The weight is stored as a flat 1/M shard over the jigsaw group and gathered on use (ZeRO-3 style), so
    no rank keeps a full copy; the bias is small and replicated.
    """

    def __init__(self, d_in, d_out, groups, partition):
        super().__init__(groups, partition)
        self.weight = self.new_param((d_out, d_in), FlatSharded("jigsaw"), ParamInit("uniform", d_in))
        self.bias = self.new_param((d_out,), Replicated(), ParamInit("zeros"))

    def forward(self, x):
        return F.linear(x, self.use(self.weight), self.use(self.bias))


class ColumnParallelLinear(JigsawModule):
    """Megatron column-parallel linear: output features split over the tensor axis.

    Input: all tokens of the domain band (gathered over the tensor group); output: their Dc/TP features.
    Weight and bias shards are stored flat over the domain group too and gathered just before use.
    """

    def __init__(self, d_in, d_out, groups, partition):
        super().__init__(groups, partition)
        self.weight = self.new_param((d_out, d_in), FlatSharded("domain", tensor_dim=0), ParamInit("uniform", d_in))
        self.bias = self.new_param((d_out,), FlatSharded("domain", tensor_dim=0), ParamInit("zeros"))

    def forward(self, x):
        return F.linear(x, self.use(self.weight), self.use(self.bias))


class RowParallelLinear(JigsawModule):
    """Megatron row-parallel linear with sequence parallelism: input features split over tensor ranks;
    the partial outputs are reduce-scattered back to each rank's own tokens, then the bias is added."""

    def __init__(self, d_in, d_out, groups, partition):
        super().__init__(groups, partition)
        self.weight = self.new_param((d_out, d_in), FlatSharded("domain", tensor_dim=1), ParamInit("uniform", d_in))
        self.bias = self.new_param((d_out,), Replicated(), ParamInit("zeros"))

    def forward(self, x):
        tensor = self.groups.comm("tensor")
        if tensor is None:  # nothing to reduce: the bias goes into the GEMM's epilogue
            return F.linear(x, self.use(self.weight), self.use(self.bias))
        return reduce_scatter_to_group(F.linear(x, self.use(self.weight)), tensor) + self.use(self.bias)


class TokenMixing(JigsawModule):
    """Token mixing across all N tokens of the globe, per channel: Y = W2 act(W1 X + b1).

    DESIGN's output bias b2 [N] is left out: it adds a per-token constant over the D channels, which every
    later LayerNorm removes, so its gradient is exactly zero (and Adam would turn rounding noise in it into
    layout-dependent updates).

    X is [n_own, B, D]; rank r holds the columns W1[:, own tokens] and rows W2[own tokens, :].
    W1[:, own] X_own is a partial sum; one all-reduce of [Dt, B, D] over the jigsaw group
    completes it (its size does not grow with N). Every rank then uses the full result differently (for
    its own tokens), so its gradient is all-reduced too: reduce_from_group then copy_to_group.
    """

    def __init__(self, hidden, activation, groups, partition):
        super().__init__(groups, partition)
        n = partition.n_tokens
        self.act = activation
        self.w1 = self.new_param((hidden, n), TokenSharded(dim=1), ParamInit("uniform", n))
        self.b1 = self.new_param((hidden,), Replicated(), ParamInit("zeros"))
        self.w2 = self.new_param((n, hidden), TokenSharded(dim=0), ParamInit("uniform", hidden))

    def forward(self, x):
        n, b, d = x.shape
        jigsaw = self.groups.comm("jigsaw")
        partial = self.w1 @ x.reshape(n, b * d)                      # [Dt, B*D]: W @ X, no transpose
        z = copy_to_group(reduce_from_group(partial, jigsaw), jigsaw)
        h = self.act(z + self.use(self.b1).unsqueeze(1))
        y = self.w2 @ h                                               # [n_own, B*D]
        return y.view(n, b, d)

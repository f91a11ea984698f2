"""Jigsaw layers: every parameter is tagged with how it is split over the ranks of a model replica.

A parameter's `Split` is the one source of truth for its layout, and owns everything that follows from it:
  - `local_shape` and `chunks`: which regions of the full (serial) tensor this rank's piece holds, in the
    order of its storage (exact offsets and sizes, uneven token splits included). From them alone follow
    `local_shard` (cut a full tensor: init, loading a serial state dict, tests, checkpoint import) and a
    checkpoint's global metadata (`fragment_chunks`, `saves_chunks`: DCP puts the pieces back together);
  - `materialize`: what the forward pass uses. Replicated parameters are used through the views that
    `ReplicatedBucket` makes once per forward from one flat copy passed through copy_to_group, so their
    gradients (each rank's sum over its own tokens) are summed over the replica by one all-reduce at the end
    of backward; a flat shard is all-gathered just before use and its gradient reduce-scattered back;
  - `collectives`: what one use costs in communication (the analytic model walks these);
  - `megatron_attributes`: by which DeepSpeed's gradient norm counts a parameter on every model-parallel
    rank (sharded) or once (replicated).

Three kinds, and nothing else, so that DeepSpeed's binary norm rule is exact (DESIGN section 3):
  Replicated      full copy on every rank of the replica; gradient summed over the jigsaw group.
  TokenSharded    the rows/cols (dim `dim`) of the rank's own tokens: token-mixing weights.
  FlatSharded     optionally cut along `tensor_dim` into the tensor rank's Megatron shard (the "slab"), then
                  flattened, zero-padded and cut into equal chunks over `over` ('domain' or 'jigsaw'): every
                  rank of the replica holds a distinct 1/M piece; gathered over `over` before use.
A split method takes the rank as a JigsawGroups (its layout and coordinates; no process group is needed
except by `materialize`) and the TokenPartition.
"""
from __future__ import annotations

import math
import zlib
from dataclasses import dataclass
from typing import NamedTuple, Optional

import torch
import torch.nn.functional as F
from torch import nn

from .mappings import (copy_to_group, gather_from_group, gathered_linear, reduce_from_group, reduce_scatter_to_group,
                       start_all_gather)
from .partition import TokenPartition
from .topology import JigsawGroups


class Chunk(NamedTuple):
    """A box of the full tensor: offsets and sizes per dim."""
    offsets: tuple
    sizes: tuple

    def region(self) -> tuple:
        return tuple(slice(o, o + s) for o, s in zip(self.offsets, self.sizes))


class Split:
    """Base of the three kinds: the generic cut and assembly, from `chunks` and `chunk_views`."""

    sharded = True  # Megatron's tensor_model_parallel: DeepSpeed counts the parameter on every replica rank

    def local_shape(self, full_shape, groups: JigsawGroups, partition: TokenPartition) -> tuple:
        raise NotImplementedError

    def chunks(self, full_shape, groups: JigsawGroups, partition: TokenPartition) -> list[Chunk]:
        raise NotImplementedError

    def chunk_views(self, local: torch.Tensor, full_shape, groups, partition) -> list[torch.Tensor]:
        """Views of the local tensor, one per chunk, shaped like it."""
        raise NotImplementedError

    def materialize(self, p: torch.Tensor, groups: JigsawGroups) -> torch.Tensor:
        return p

    def collectives(self, full_shape, groups: JigsawGroups) -> list[tuple[str, int, str]]:
        """(collective/axis, elements, 'forward' | 'backward') of one use of the parameter."""
        return []

    def megatron_attributes(self) -> dict:
        return {"tensor_model_parallel": self.sharded, "partition_dim": 0, "partition_stride": 1}

    def local_shard(self, full: torch.Tensor, groups: JigsawGroups, partition: TokenPartition) -> torch.Tensor:
        """This rank's piece of a full tensor (padding, if any, is zero)."""
        local = full.new_zeros(self.local_shape(full.shape, groups, partition))
        for chunk, view in zip(self.chunks(full.shape, groups, partition),
                               self.chunk_views(local, full.shape, groups, partition)):
            view.copy_(full[chunk.region()])
        return local

    def saves_chunks(self, full_shape, groups: JigsawGroups, partition: TokenPartition) -> bool:
        """Whether this rank writes its chunks to a checkpoint: of the replica ranks that hold the same chunks
        (a replicated parameter, a domain shard repeated over tensor ranks) only the lowest one does."""
        mine = self.chunks(full_shape, groups, partition)
        layout = groups.layout
        for r in range(groups.jigsaw_rank):
            other = JigsawGroups(layout, layout.rank(0, r // layout.tensor, r % layout.tensor))
            if self.chunks(full_shape, other, partition) == mine:
                return False
        return True

    def fragment_chunks(self, fragment: torch.Tensor, start: int, full_shape, groups: JigsawGroups,
                        partition: TokenPartition) -> list[tuple[Chunk, torch.Tensor]]:
        """The boxes of the full tensor that a flat range of this rank's local tensor holds, each with its
        values as a view of `fragment` (the local tensor's row-major elements start .. start + len - 1).

        This is how a ZeRO partition is saved and loaded: DeepSpeed gives each data-parallel rank a flat
        range of every local parameter (its "fragment"); the chunk views' strides say where each element of a
        chunk lies in the local tensor, so no index tensor is built. A chunk cut by the range gives at most
        two partial rows per dimension besides its whole rows."""
        stop = start + fragment.numel()
        local = torch.empty(self.local_shape(full_shape, groups, partition), device="meta")
        out = []
        for chunk, view in zip(self.chunks(full_shape, groups, partition),
                               self.chunk_views(local, full_shape, groups, partition)):
            for offsets, sizes, at in _strided_boxes(view.shape, view.stride(), view.storage_offset(), start, stop):
                data = fragment.as_strided(sizes, view.stride(), fragment.storage_offset() + at - start)
                out.append((Chunk(tuple(o + c for o, c in zip(offsets, chunk.offsets)), tuple(sizes)), data))
        return out


@dataclass(frozen=True)
class Replicated(Split):
    sharded = False

    def local_shape(self, full_shape, groups, partition):
        return tuple(full_shape)

    def chunks(self, full_shape, groups, partition):
        return [Chunk((0,) * len(full_shape), tuple(full_shape))]

    def chunk_views(self, local, full_shape, groups, partition):
        return [local]

    def materialize(self, p, groups):
        if groups.comm("jigsaw") is None:
            return p
        view = getattr(p, "jigsaw_view", None)
        if view is None:
            raise RuntimeError("a Replicated parameter is used before its model's ReplicatedBucket.bind()")
        return view

    def collectives(self, full_shape, groups):
        return []  # its gradient's sum is the bucket's one all-reduce (ReplicatedBucket.collectives)


@dataclass(frozen=True)
class TokenSharded(Split):
    dim: int

    def megatron_attributes(self):
        return {**super().megatron_attributes(), "partition_dim": self.dim}

    def local_shape(self, full_shape, groups, partition):
        shape = list(full_shape)
        shape[self.dim] = partition.n_tokens_of(groups.domain_rank, groups.tensor_rank)
        return tuple(shape)

    def _runs(self, groups, partition):
        """(global token offset, length) of each own token row: a rank's tokens are a row-major tile."""
        (r0, r1), (c0, c1) = partition.rows_of(groups.domain_rank), partition.cols_of(groups.tensor_rank)
        return [(r * partition.token_cols + c0, c1 - c0) for r in range(r0, r1)]

    def chunks(self, full_shape, groups, partition):
        out = []
        for start, length in self._runs(groups, partition):
            offsets, sizes = [0] * len(full_shape), list(full_shape)
            offsets[self.dim], sizes[self.dim] = start, length
            out.append(Chunk(tuple(offsets), tuple(sizes)))
        return out

    def chunk_views(self, local, full_shape, groups, partition):
        views, at = [], 0
        for _, length in self._runs(groups, partition):
            views.append(local.narrow(self.dim, at, length))
            at += length
        return views


@dataclass(frozen=True)
class FlatSharded(Split):
    over: str                         # 'domain' or 'jigsaw'
    tensor_dim: Optional[int] = None  # Megatron split over the tensor axis first (column: 0, row: 1)

    def __post_init__(self):
        # a tensor rank's slab is cut over the ranks that share it, its domain group; cut over the whole replica,
        # the tensor ranks' pieces would interleave two slabs and lose half of each (tests/test_split_boxes.py)
        if self.over not in ("domain", "jigsaw") or (self.over == "jigsaw" and self.tensor_dim is not None):
            raise ValueError(f"FlatSharded(over={self.over!r}, tensor_dim={self.tensor_dim}): a flat cut is over "
                             "'domain' (of a tensor slab or the whole tensor) or 'jigsaw' (of the whole tensor)")

    def slab(self, full_shape, groups) -> Chunk:
        """The tensor rank's Megatron shard as a box of the full tensor (what `materialize` gathers back to)."""
        offsets, sizes = [0] * len(full_shape), list(full_shape)
        if self.tensor_dim is not None:
            tp = groups.size("tensor")
            if sizes[self.tensor_dim] % tp:
                raise ValueError(f"dim {self.tensor_dim} of shape {tuple(full_shape)} is not divisible by tensor "
                                 f"size {tp}")
            sizes[self.tensor_dim] //= tp
            offsets[self.tensor_dim] = groups.tensor_rank * sizes[self.tensor_dim]
        return Chunk(tuple(offsets), tuple(sizes))

    def _flat_range(self, full_shape, groups) -> tuple[int, int, int]:
        """(start, stop, padded length) of this rank's piece in the slab's row-major flat index."""
        numel, k = math.prod(self.slab(full_shape, groups).sizes), groups.size(self.over)
        length = math.ceil(numel / k)
        start = groups.rank_in(self.over) * length
        return min(start, numel), min(start + length, numel), length

    def local_shape(self, full_shape, groups, partition):
        if groups.size(self.over) == 1:  # nothing to cut over `over`: keep the slab's shape (the serial shapes)
            return self.slab(full_shape, groups).sizes
        return (self._flat_range(full_shape, groups)[2],)

    def chunks(self, full_shape, groups, partition):
        slab = self.slab(full_shape, groups)
        if groups.size(self.over) == 1:
            return [slab]
        start, stop, _ = self._flat_range(full_shape, groups)
        return [Chunk(tuple(o + so for o, so in zip(box.offsets, slab.offsets)), box.sizes)
                for box in _flat_range_boxes(slab.sizes, start, stop)]

    def chunk_views(self, local, full_shape, groups, partition):
        if groups.size(self.over) == 1:
            return [local]
        views, at = [], 0
        for chunk in self.chunks(full_shape, groups, partition):
            n = math.prod(chunk.sizes)
            views.append(local[at:at + n].view(chunk.sizes))
            at += n
        return views

    def materialize(self, p, groups):
        group = groups.comm(self.over)
        if group is None:
            return p
        shape = self.slab(p.full_shape, groups).sizes
        pending = p.__dict__.pop("jigsaw_prefetch", None)  # started by `prefetch`, else gathered now
        return gather_from_group(p, group, pending)[:math.prod(shape)].view(shape)

    def prefetch(self, p, groups) -> None:
        """Start the all-gather of `materialize` now (async); its use waits for it."""
        group = groups.comm(self.over)
        if group is not None:
            p.jigsaw_prefetch = start_all_gather(p, group)

    def collectives(self, full_shape, groups):
        k = groups.size(self.over)
        if k == 1:
            return []
        padded = k * math.ceil(math.prod(self.slab(full_shape, groups).sizes) / k)
        return [(f"all_gather/{self.over}", padded, "forward"), (f"reduce_scatter/{self.over}", padded, "backward")]


def _flat_range_boxes(shape, start: int, stop: int) -> list[Chunk]:
    """Boxes covering the row-major flat range [start, stop) of a tensor of `shape`, in order: at most a
    partial leading row, a block of whole rows and a partial trailing row, each recursively."""
    if start >= stop:
        return []
    if len(shape) == 1:
        return [Chunk((start,), (stop - start,))]
    row = math.prod(shape[1:])
    first, last = start // row, (stop - 1) // row
    inner = lambda r, a, b: [Chunk((r,) + c.offsets, (1,) + c.sizes) for c in _flat_range_boxes(shape[1:], a, b)]
    if first == last:
        return inner(first, start - first * row, stop - first * row)
    out = []
    if start % row:
        out += inner(first, start % row, row)
        first += 1
    whole_end = last if stop % row else last + 1
    if whole_end > first:
        out.append(Chunk((first,) + (0,) * (len(shape) - 1), (whole_end - first,) + tuple(shape[1:])))
    if stop % row:
        out += inner(last, 0, stop % row)
    return out


def _strided_boxes(sizes, strides, offset: int, start: int, stop: int) -> list[tuple[tuple, tuple, int]]:
    """Sub-boxes (offsets in the box, sizes, storage offset) of a strided box whose elements' storage positions
    lie in [start, stop). The box's rows along each dim are disjoint and ascending (views made by narrow and
    view of a row-major tensor), so the range takes a block of whole rows and cuts at most two rows."""
    if not sizes:
        return [((), (), offset)] if start <= offset < stop else []
    span = lambda sz, st: sum((n - 1) * t for n, t in zip(sz, st)) + 1   # first to last element's position
    if offset >= stop or offset + span(sizes, strides) <= start:
        return []
    if start <= offset and offset + span(sizes, strides) <= stop:
        return [((0,) * len(sizes), tuple(sizes), offset)]
    row = lambda i: [((i,) + o, (1,) + s, at)
                     for o, s, at in _strided_boxes(sizes[1:], strides[1:], offset + i * strides[0], start, stop)]
    if sizes[0] == 1:
        return row(0)
    t0, inner = strides[0], span(sizes[1:], strides[1:])
    ceil_div = lambda a, b: -(-a // b)
    first = max(0, ceil_div(start - offset - inner + 1, t0))            # rows first..last meet the range
    last = min(sizes[0], ceil_div(stop - offset, t0)) - 1
    lo = max(first, ceil_div(start - offset, t0))                       # rows lo..hi lie wholly inside
    hi = min(last, (stop - offset - inner) // t0)
    out = row(first) if first < lo else []
    if hi >= lo:
        out.append(((lo,) + (0,) * (len(sizes) - 1), (hi - lo + 1,) + tuple(sizes[1:]), offset + lo * t0))
    if last > max(hi, first if first < lo else -1):
        out += row(last)
    return out


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


def prefetch_weights(module: nn.Module, groups: JigsawGroups) -> None:
    """Start the gathers of `module`'s flat-sharded weights, so that they run while the caller computes
    something else (the model: the next block's weights during the current block). Each is waited for at the
    weight's use in the same forward."""
    if groups.layout.model_parallel == 1:  # nothing is gathered (and the serial forward stays compilable)
        return
    for p in module.parameters():
        if isinstance(p.jigsaw_split, FlatSharded):
            p.jigsaw_split.prefetch(p, groups)


def drop_prefetches(module: nn.Module, groups: JigsawGroups) -> None:
    """Forget gathers started but never used (a forward that stopped early): never stale weights later."""
    if groups.layout.model_parallel == 1:
        return
    for p in module.parameters():
        p.__dict__.pop("jigsaw_prefetch", None)


class ReplicatedBucket:
    """The Replicated parameters of a model, used through one flat copy per forward.

    `bind()` (at the start of the model's forward) concatenates them, passes the copy through copy_to_group
    and gives each parameter its view of it as `p.jigsaw_view` (what Replicated.materialize returns). In
    backward, torch.cat's gradient reaches the copy only once every use of every replicated parameter has
    added its part, so the sums over the replica's ranks (each used them on its own tokens) are one
    all-reduce per forward, at the end of backward, instead of one per parameter and use. Megatron's
    finalize_model_grads does the same for its sequence-parallel LayerNorm weights (outside autograd; here
    inside, so that DeepSpeed's gradient hooks see finished gradients). The views stay bound until the next
    bind: activation checkpointing recomputes blocks with them in backward.
    """

    def __init__(self, params: list[nn.Parameter], groups: JigsawGroups):
        self.params, self.groups = params, groups

    @classmethod
    def of(cls, model: nn.Module, groups: JigsawGroups) -> "ReplicatedBucket":
        return cls([p for p in model.parameters() if isinstance(p.jigsaw_split, Replicated)], groups)

    def bind(self) -> None:
        group = self.groups.comm("jigsaw")
        if group is None:  # one rank: nothing to sum, Replicated.materialize gives the parameters themselves
            return
        flat = copy_to_group(torch.cat([p.reshape(-1) for p in self.params]), group)
        for p, view in zip(self.params, flat.split([p.numel() for p in self.params])):
            p.jigsaw_view = view.view(p.shape)

    def collectives(self) -> list[tuple[str, int, str]]:
        if self.groups.size("jigsaw") == 1 or not self.params:
            return []
        return [("all_reduce/jigsaw", sum(math.prod(p.full_shape) for p in self.params), "backward")]


class JigsawModule(nn.Module):
    """Base of the layers: knows its groups and the token partition, creates tagged parameters."""

    def __init__(self, groups: JigsawGroups, partition: TokenPartition):
        super().__init__()
        self.groups = groups
        self.partition = partition

    def new_param(self, full_shape, split: Split, init: ParamInit) -> nn.Parameter:
        p = nn.Parameter(torch.empty(split.local_shape(full_shape, self.groups, self.partition)))
        p.jigsaw_split, p.full_shape, p.jigsaw_init = split, tuple(full_shape), init
        for name, value in split.megatron_attributes().items():
            setattr(p, name, value)
        return p

    def use(self, p: torch.Tensor) -> torch.Tensor:
        return p.jigsaw_split.materialize(p, self.groups)

    def collectives(self, micro_batch: int) -> list[tuple[str, int, str]]:
        """(collective/axis, elements, phase) this module's own forward + backward issues on activations,
        in the order they run (parameters' collectives come from their Split)."""
        return []


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
    """Megatron column-parallel linear with sequence parallelism: output features split over the tensor axis.

    Input: the rank's own tokens; they are all-gathered over the tensor group into the domain band inside the
    linear (`gathered_linear`), so backward keeps only the own tokens and gathers them again; output: the band's
    Dc/TP features. Weight and bias shards are stored flat over the domain group too and gathered before use.
    """

    def __init__(self, d_in, d_out, groups, partition):
        super().__init__(groups, partition)
        self.weight = self.new_param((d_out, d_in), FlatSharded("domain", tensor_dim=0), ParamInit("uniform", d_in))
        self.bias = self.new_param((d_out,), FlatSharded("domain", tensor_dim=0), ParamInit("zeros"))

    def forward(self, x):
        return gathered_linear(x, self.use(self.weight), self.use(self.bias), self.groups.comm("tensor"))

    def collectives(self, micro_batch):
        if self.groups.size("tensor") == 1:
            return []
        band = self.partition.n_tokens_of(self.groups.domain_rank, 0) * self.groups.size("tensor")
        elements = band * micro_batch * self.weight.full_shape[1]
        return [("all_gather/tensor", elements, "forward"), ("all_gather/tensor", elements, "backward"),
                ("reduce_scatter/tensor", elements, "backward")]


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

    def collectives(self, micro_batch):
        if self.groups.size("tensor") == 1:
            return []
        band = self.partition.n_tokens_of(self.groups.domain_rank, 0) * self.groups.size("tensor")
        elements = band * micro_batch * self.weight.full_shape[0]
        return [("reduce_scatter/tensor", elements, "forward"), ("all_gather/tensor", elements, "backward")]


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

    def __init__(self, dim, hidden, activation, groups, partition):
        super().__init__(groups, partition)
        n = partition.n_tokens
        self.act, self.embed_dim = activation, dim
        self.w1 = self.new_param((hidden, n), TokenSharded(dim=1), ParamInit("uniform", n))
        self.b1 = self.new_param((hidden,), Replicated(), ParamInit("zeros"))
        self.w2 = self.new_param((n, hidden), TokenSharded(dim=0), ParamInit("uniform", hidden))

    def forward(self, x, hidden_keep: Optional[torch.Tensor] = None):
        """hidden_keep [Dt, B*D] or None: dropout of the hidden units (the same on every rank: h is)."""
        n, b, d = x.shape
        jigsaw = self.groups.comm("jigsaw")
        partial = self.w1 @ x.reshape(n, b * d)                      # [Dt, B*D]: W @ X, no transpose
        z = copy_to_group(reduce_from_group(partial, jigsaw), jigsaw)
        h = self.act(z + self.use(self.b1).unsqueeze(1))
        if hidden_keep is not None:
            h = h * hidden_keep
        y = self.w2 @ h                                               # [n_own, B*D]
        return y.view(n, b, d)

    def collectives(self, micro_batch):
        if self.groups.size("jigsaw") == 1:
            return []
        elements = self.w1.full_shape[0] * micro_batch * self.embed_dim
        return [("all_reduce/jigsaw", elements, "forward"), ("all_reduce/jigsaw", elements, "backward")]

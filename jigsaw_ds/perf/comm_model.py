"""Bytes each collective moves in one training step (forward + backward), per rank, and parameters per rank,
read off the model itself: a WeatherMixer built on the meta device at the layout (no memory, no values) is
walked module by module; each parameter's Split says what one use of it costs (`Split.collectives`), and each
module says what its own forward issues on activations (`JigsawModule.collectives`). There is no second
table of which parameter is split how. The counters of parallel/comm_stats.py measure the same keys in a
real step and tests/test_parallel.py compares them.

Keys match comm_stats.snapshot() ('all_reduce/jigsaw', ...). Payload convention as there: all-reduce = tensor
size, all-gather = gathered output, reduce-scatter = input. What the walk gives, with n own tokens, micro-batch
B, widths D, Dt, Dc, tensor size T, domain size DD, replica size M, e bytes per element (gathers: the
tensor's; all-reduce and reduce-scatter: at least 4, since sums travel in fp32, parallel/mappings.py):

  per block, token mixing   all_reduce/jigsaw   2 Dt B D e          (partial sums fwd, their grads bwd)
  per block, channel mixing all_gather/tensor   3 n T B D e         (fc1's input fwd, again in its bwd; and the
                                                                     bwd of fc2's reduce-scatter)
                            reduce_scatter/tensor 2 n T B D e       (fc2's output fwd; fc1's input grad bwd)
                            all_gather/domain   DD ceil(s / DD) e   per weight shard of s elements (fwd)
                            reduce_scatter/domain  the same          (their gradients, bwd)
  embedding and head        all_gather/jigsaw, reduce_scatter/jigsaw  M ceil(s / M) e per weight
  replicated parameters     all_reduce/jigsaw   their size (gradient sum, bwd)

The token-mixing all-reduce does not grow with the number of tokens; the tensor-group traffic is the
rank's band of activations, as in Megatron sequence parallelism.
"""
from __future__ import annotations

from collections import defaultdict
from typing import NamedTuple, Optional

import torch

from ..config import ModelConfig
from ..parallel.mappings import payload_element_size
from ..parallel.topology import JigsawGroups, Layout


class Collective(NamedTuple):
    key: str          # 'all_reduce/jigsaw', ...
    elements: int
    phase: str        # 'forward' or 'backward'
    block: Optional[int]  # mixer block index, None for the embedding and the head


def meta_model(cfg: ModelConfig, n_lat: int, n_lon: int, c_in: int, c_out: int, layout: Layout,
               domain_rank: int = 0):
    """The model of data rank 0, tensor rank 0 at `domain_rank`, with shapes and tags but no storage."""
    from ..model import WeatherMixer

    with torch.device("meta"):
        return WeatherMixer(cfg, n_lat, n_lon, c_in, c_out, JigsawGroups(layout, layout.rank(0, domain_rank, 0)))


def step_collectives(model, micro_batch: int) -> list[Collective]:
    """Every Jigsaw collective of one forward + backward of `model`, in forward order within each module
    (a module's parameters are used before its own activation collective runs)."""
    blocks = {id(m): i for i, block in enumerate(model.blocks) for m in block.modules()}
    out = []
    for module in model.modules():
        block = blocks.get(id(module))
        for p in module.parameters(recurse=False):
            out += [Collective(k, n, ph, block) for k, n, ph in p.jigsaw_split.collectives(p.full_shape, model.groups)]
        if hasattr(module, "collectives"):
            out += [Collective(k, n, ph, block) for k, n, ph in module.collectives(micro_batch)]
    return out


def step_comm_bytes(cfg: ModelConfig, n_lat: int, n_lon: int, c_in: int, c_out: int, layout: Layout,
                    micro_batch: int, domain_rank: int = 0, bytes_per_elem: int = 4) -> dict[str, int]:
    model = meta_model(cfg, n_lat, n_lon, c_in, c_out, layout, domain_rank)
    return sum_bytes(step_collectives(model, micro_batch), bytes_per_elem)


def sum_bytes(collectives: list[Collective], bytes_per_elem: int) -> dict[str, int]:
    """Bytes per key of a list of collectives of tensors with `bytes_per_elem` (sums travel in fp32)."""
    out: dict[str, int] = defaultdict(int)
    for c in collectives:
        out[c.key] += c.elements * payload_element_size(c.key.split("/")[0], bytes_per_elem)
    return dict(sorted(out.items()))


def params_per_rank(cfg: ModelConfig, n_lat: int, n_lon: int, c_in: int, c_out: int, layout: Layout,
                    domain_rank: int = 0) -> dict[str, int]:
    """Parameter elements one rank holds: sharded (about total_sharded / M) and replicated (small)."""
    model = meta_model(cfg, n_lat, n_lon, c_in, c_out, layout, domain_rank)
    out = {"sharded": 0, "replicated": 0, "total_sharded": 0}
    for p in model.parameters():
        if p.jigsaw_split.sharded:
            out["sharded"] += p.numel()
            out["total_sharded"] += torch.Size(p.full_shape).numel()
        else:
            out["replicated"] += p.numel()
    return {**out, "total": out["total_sharded"] + out["replicated"]}

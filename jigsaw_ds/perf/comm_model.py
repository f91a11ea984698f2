"""Bytes each collective moves in one training step (forward + backward), per rank, from the config.

Keys match parallel/comm_stats.snapshot() ('all_reduce/jigsaw', ...). Payload convention as there:
all-reduce = tensor size, all-gather = gathered output, reduce-scatter = input. With n own tokens,
micro-batch B, widths D, Dt, Dc, tensor size T, domain size DD, replica size M, e bytes per element:

  per block, token mixing   all_reduce/jigsaw   2 Dt B D e          (partial sums fwd, their grads bwd)
  per block, channel mixing all_gather/tensor   n T B D e           (fwd; and bwd of the reduce-scatter)
                            reduce_scatter/tensor n T B D e         (fwd; and bwd of the all-gather)
                            all_gather/domain   DD ceil(s / DD) e   per weight shard of s elements (fwd)
                            reduce_scatter/domain  the same          (their gradients, bwd)
  embedding and head        all_gather/jigsaw, reduce_scatter/jigsaw  M ceil(s / M) e per weight
  replicated parameters     all_reduce/jigsaw   their size (gradient sum, bwd)

The token-mixing all-reduce does not grow with the number of tokens; the tensor-group traffic is the
rank's band of activations, as in Megatron sequence parallelism.
"""
from __future__ import annotations

import math
from collections import defaultdict

from ..config import ModelConfig
from ..parallel.partition import TokenPartition
from ..parallel.topology import Layout


def step_comm_bytes(cfg: ModelConfig, n_lat: int, n_lon: int, c_in: int, c_out: int, layout: Layout,
                    micro_batch: int, domain_rank: int = 0, bytes_per_elem: int = 4) -> dict[str, int]:
    part = TokenPartition(n_lat, n_lon, cfg.patch, layout.domain, layout.tensor)
    n = part.n_tokens_of(domain_rank, 0)
    T, DD, M, B, D, e = layout.tensor, layout.domain, layout.model_parallel, micro_batch, cfg.embed_dim, bytes_per_elem
    p2 = cfg.patch ** 2
    out: dict[str, int] = defaultdict(int)

    def flat_shard(elements: int, group: str, k: int):
        if k > 1:
            padded = k * math.ceil(elements / k) * e
            out[f"all_gather/{group}"] += padded
            out[f"reduce_scatter/{group}"] += padded

    def replicated(elements: int):
        if M > 1:
            out["all_reduce/jigsaw"] += elements * e

    # embedding and head: weights flat over the replica, biases replicated; head norm replicated
    flat_shard(c_in * p2 * D, "jigsaw", M)
    replicated(D)
    replicated(2 * D)
    flat_shard(D * c_out * p2, "jigsaw", M)
    replicated(c_out * p2)
    for _ in range(cfg.depth):
        replicated(2 * D)                      # token norm
        if M > 1:
            out["all_reduce/jigsaw"] += 2 * cfg.token_hidden * B * D * e
        replicated(cfg.token_hidden)           # b1
        replicated(2 * D)                      # channel norm
        if T > 1:
            out["all_gather/tensor"] += 2 * n * T * B * D * e
            out["reduce_scatter/tensor"] += 2 * n * T * B * D * e
        dc = cfg.channel_hidden // T
        flat_shard(dc * D, "domain", DD)       # fc1 weight
        flat_shard(dc, "domain", DD)           # fc1 bias
        flat_shard(D * dc, "domain", DD)       # fc2 weight
        replicated(D)                          # fc2 bias
    return dict(sorted(out.items()))


def params_per_rank(cfg: ModelConfig, n_lat: int, n_lon: int, c_in: int, c_out: int, layout: Layout,
                    domain_rank: int = 0) -> dict[str, int]:
    """Parameter elements one rank holds: sharded (about total_sharded / M) and replicated (small)."""
    part = TokenPartition(n_lat, n_lon, cfg.patch, layout.domain, layout.tensor)
    n, N = part.n_tokens_of(domain_rank, 0), part.n_tokens
    T, DD, M, D, p2 = layout.tensor, layout.domain, layout.model_parallel, cfg.embed_dim, cfg.patch ** 2
    Dt, Dc = cfg.token_hidden, cfg.channel_hidden
    shard = lambda s, k: math.ceil(s / k) if k > 1 else s
    sharded = shard(c_in * p2 * D, M) + shard(D * c_out * p2, M)
    replicated = D + 2 * D + c_out * p2
    for _ in range(cfg.depth):
        sharded += Dt * n + n * Dt                           # w1, w2 (own tokens)
        sharded += shard(Dc // T * D, DD) + shard(Dc // T, DD) + shard(D * Dc // T, DD)
        replicated += 2 * D + Dt + 2 * D + D
    total_sharded = (c_in * p2 * D + D * c_out * p2
                     + cfg.depth * (2 * Dt * N + Dc * D + Dc + D * Dc))
    return {"sharded": sharded, "replicated": replicated, "total_sharded": total_sharded,
            "total": total_sharded + replicated}

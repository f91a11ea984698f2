"""The box algebra of a parameter's Split, over random shapes and layouts (in one process, no groups).

A sharded checkpoint is right only if, for every Split kind, shape and layout:
  - each rank's chunks are where its local tensor's values come from (`chunks` / `chunk_views` /
    `local_shard` agree);
  - the ranks that write (`saves_chunks`) cover every element of the full tensor exactly once;
  - any flat range of a rank's local tensor (a ZeRO fragment, cut anywhere) maps by `fragment_chunks` to boxes
    whose values are the full tensor's there, and the fragments of one rank together give each element of its
    chunks exactly once (padding belongs to no box).
A seeded loop over random cases; a failure prints the case to rerun.
"""
import math
import random

import pytest
import torch

from jigsaw_ds.errors import ConfigError
from jigsaw_ds.parallel.layers import FlatSharded, Replicated, TokenSharded
from jigsaw_ds.parallel.partition import TokenPartition
from jigsaw_ds.parallel.topology import JigsawGroups, Layout

CASES = 300


def random_case(rng: random.Random):
    """(split, full shape, layout, partition): a valid random one."""
    while True:
        layout = Layout(data=rng.choice([1, 2]), domain=rng.randint(1, 4), tensor=rng.choice([1, 2, 3, 4]))
        try:
            partition = TokenPartition(n_lat=rng.randint(3, 21), n_lon=rng.choice([8, 12, 16, 24]),
                                       patch=rng.choice([1, 2, 4]), domain=layout.domain, tensor=layout.tensor)
        except ConfigError:
            continue
        kind = rng.choice(["replicated", "token", "flat"])
        other = rng.randint(1, 7)
        if kind == "replicated":
            return Replicated(), (other, rng.randint(1, 5)), layout, partition
        if kind == "token":
            dim = rng.choice([0, 1])
            shape = [other, other]
            shape[dim] = partition.n_tokens
            return TokenSharded(dim=dim), tuple(shape), layout, partition
        over = rng.choice(["domain", "jigsaw"])
        tensor_dim = rng.choice([None, 0, 1]) if over == "domain" else None
        shape = [rng.randint(1, 9), rng.randint(1, 9)]
        if tensor_dim is not None:
            shape[tensor_dim] *= layout.tensor
        return FlatSharded(over=over, tensor_dim=tensor_dim), tuple(shape), layout, partition


def random_cuts(rng: random.Random, n: int, parts: int) -> list[tuple[int, int]]:
    """`parts` contiguous ranges covering 0..n, some possibly empty, cut at random points."""
    points = sorted(rng.randint(0, n) for _ in range(parts - 1))
    bounds = [0, *points, n]
    return list(zip(bounds[:-1], bounds[1:]))


def test_chunks_cover_the_tensor_once_and_fragments_map_to_their_values():
    rng = random.Random(0)
    kinds = set()
    for case in range(CASES):
        split, shape, layout, partition = random_case(rng)
        kinds.add(type(split).__name__)
        what = f"case {case}: {split} shape {shape} layout {layout} partition {partition}"
        full = torch.arange(math.prod(shape), dtype=torch.float64).view(shape) + 1  # no element is 0 (= padding)
        written = torch.zeros(shape, dtype=torch.int64)
        for jigsaw_rank in range(layout.model_parallel):
            groups = JigsawGroups(layout, layout.rank(0, jigsaw_rank // layout.tensor, jigsaw_rank % layout.tensor))
            local = split.local_shard(full, groups, partition)
            assert tuple(local.shape) == tuple(split.local_shape(shape, groups, partition)), what
            chunks = split.chunks(shape, groups, partition)
            for chunk, view in zip(chunks, split.chunk_views(local, shape, groups, partition)):
                assert torch.equal(view, full[chunk.region()]), what
            if split.saves_chunks(shape, groups, partition):
                for chunk in chunks:
                    written[chunk.region()] += 1

            # a ZeRO partition of this rank's flat local tensor, cut at random over 1-4 data ranks
            held = torch.zeros(shape, dtype=torch.int64)
            flat = local.reshape(-1)
            for start, stop in random_cuts(rng, flat.numel(), rng.randint(1, 4)):
                for chunk, values in split.fragment_chunks(flat[start:stop], start, shape, groups, partition):
                    assert torch.equal(values, full[chunk.region()]), f"{what} fragment {start}:{stop} {chunk}"
                    held[chunk.region()] += 1
            mine = torch.zeros(shape, dtype=torch.int64)
            for chunk in chunks:
                mine[chunk.region()] += 1
            assert torch.equal(held, mine), f"{what}: the fragments of rank {jigsaw_rank} do not give its chunks once"
        assert torch.equal(written, torch.ones_like(written)), \
            f"{what}: elements written {sorted(set(written.flatten().tolist()))} times, not once each"
    assert kinds == {"Replicated", "TokenSharded", "FlatSharded"}


def test_the_coverage_check_fails_when_a_rank_writes_a_duplicate():
    """Negative control: a Replicated parameter written by every rank of a 2-rank replica is caught by the
    same count as above."""
    layout = Layout(domain=2)
    partition = TokenPartition(n_lat=8, n_lon=8, patch=2, domain=2)
    written = torch.zeros(3, 4, dtype=torch.int64)
    for jigsaw_rank in range(2):
        groups = JigsawGroups(layout, layout.rank(0, jigsaw_rank, 0))
        assert Replicated().saves_chunks((3, 4), groups, partition) == (jigsaw_rank == 0)
        for chunk in Replicated().chunks((3, 4), groups, partition):  # both ranks, ignoring saves_chunks
            written[chunk.region()] += 1
    assert not torch.equal(written, torch.ones_like(written))


def test_a_flat_cut_of_a_tensor_slab_over_the_whole_replica_is_refused():
    """Found by the loop above: FlatSharded('jigsaw', tensor_dim=0) gave each tensor rank's slab pieces to the
    other tensor rank's ranks, so half of each slab was never saved. No layer uses it; it is refused."""
    with pytest.raises(ValueError, match="a flat cut is over 'domain'"):
        FlatSharded("jigsaw", tensor_dim=0)

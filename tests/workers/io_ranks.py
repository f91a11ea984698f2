"""Multi-rank worker for tests/test_io_ranks.py: each rank reads only its tile; the tiles make the sample.

Run under torchrun with 4 ranks on a store written by `prepare` (33 x 128 grid, patch 4: 9 token rows, so the
split over 2 and 4 domain ranks is uneven: 5/4 and 3/2/2/2 token rows). For each (domain, tensor) in LAYOUTS
the data-parallel size is what the world leaves, and every rank does what the trainer does (train/loop.py):
its tile from TokenPartition, a PairDataset of that tile, the ReplicaBatches sampler of its data rank, and a
DataLoader with one prefetching worker process. It also counts the chunk bytes one item costs it
(ReadCounter, in this process, after a first read that fetched metadata and shard indexes). Rank 0 gathers everything, checks it against a serial full-grid read and
writes one JSON per layout:
  union_exact          every replica's tiles rebuild its full inputs and targets, every step, bit for bit
  weights_exact        the latitude weights of the tiles rebuild the full ones
  same_steps           every rank of a replica drew the same time steps
  replicas_differ      different replicas drew different time steps
  batch_is_global      the replicas' steps together are the global batch of a one-replica run
  bytes, full_bytes    chunk bytes of one item per rank, and the bytes of all inner chunks of the shards
                       that hold the item (from the shard indexes in the files)
  rows                 token rows per domain rank
"""
import argparse
import json

import numpy as np
import torch
import torch.distributed as dist

from jigsaw_ds.data.counting import ReadCounter
from jigsaw_ds.data.dataset import Loader, PairDataset, ReplicaBatches
from jigsaw_ds.data.store import WeatherStore
from jigsaw_ds.parallel.partition import TokenPartition
from jigsaw_ds.parallel.topology import JigsawGroups, Layout, init_distributed
from jigsaw_ds.grid import lat_cell_weights

LAYOUTS = [(2, 1), (4, 1), (2, 2)]  # (domain, tensor)
PATCH, LEAD, GLOBAL_BATCH, STEPS, SEED = 4, 1, 4, 3, 11
VARIABLES, SURFACE, LEVELS, STATIC = ["temperature"], ["2m_temperature"], [500, 850], ["land_sea_mask"]


def open_store(path: str) -> WeatherStore:
    return WeatherStore(path, VARIABLES, SURFACE, LEVELS, static_variables=STATIC)


def rank_view(path: str, layout: Layout, rank: int) -> dict:
    """What one rank reads for this layout: its tile, its batches, its sampler's steps, its bytes per item."""
    groups = JigsawGroups(layout, rank)  # the coordinates initialize() gives (checked against Megatron there)
    store = open_store(path)
    part = TokenPartition(store.n_lat, store.n_lon, PATCH, layout.domain, layout.tensor)
    lat, lon = part.lat_slice(groups.domain_rank), part.lon_slice(groups.tensor_rank)
    dataset = PairDataset(store, store.pair_starts(LEAD), LEAD, lat, lon, coord_feats=True)
    dataset[0]
    counter = ReadCounter()
    dataset[0]
    sampler = ReplicaBatches(len(dataset), GLOBAL_BATCH, groups.data_rank, layout.data, SEED, steps=STEPS)
    batches = [(x.numpy(), y.numpy()) for x, y, _ in Loader(dataset, sampler, "cpu", workers=1)]
    return {"coords": (groups.data_rank, groups.domain_rank, groups.tensor_rank), "lat": (lat.start, lat.stop),
            "lon": (lon.start, lon.stop), "batches": batches, "steps": [draw.indices for draw in sampler], "bytes": counter.bytes,
            "weights": lat_cell_weights(store.lat)[lat], "rows": part.rows_of(groups.domain_rank)}


def shard_chunk_bytes(path: str, var: str, t: int) -> int:
    """Bytes of all inner chunks of variable `var` at time t: the sizes in the shard's index (16 bytes per
    inner chunk and a crc32c at the end of the file; the reader's bytes are counted, these are not)."""
    import zarr

    array = zarr.open_array(f"{path}/{var}", mode="r")
    n_inner = int(np.prod([-(-s // c) for s, c in zip(array.shards, array.chunks)]))
    with open(f"{path}/{var}/{array.metadata.encode_chunk_key((int(t),) + (0,) * (array.ndim - 1))}", "rb") as f:
        f.seek(-(16 * n_inner + 4), 2)
        index = np.frombuffer(f.read(16 * n_inner), np.uint64).reshape(-1, 2)
    return int(index[:, 1].sum())


def check(path: str, layout: Layout, views: list[dict]) -> dict:
    """Rank 0: rebuild every replica's batches from its ranks' tiles and compare with a serial read."""
    store = open_store(path)
    full = PairDataset(store, store.pair_starts(LEAD), LEAD, slice(0, store.n_lat), slice(0, store.n_lon), True)
    full_bytes = sum(shard_chunk_bytes(path, var, t) for var in VARIABLES + SURFACE
                     for t in (full.starts[0], full.starts[0] + LEAD))
    serial = ReplicaBatches(len(full), GLOBAL_BATCH, 0, 1, SEED, steps=STEPS)
    union_exact, weights_exact = True, True
    for r in range(layout.data):
        ranks = [v for v in views if v["coords"][0] == r]
        replica = ReplicaBatches(len(full), GLOBAL_BATCH, r, layout.data, SEED, steps=STEPS)
        for step, (indices, _) in enumerate(replica):
            expected = [np.stack([full[i][k].numpy() for i in indices]) for k in (0, 1)]
            for k in (0, 1):
                rebuilt = np.full_like(expected[k], np.nan)
                for v in ranks:
                    rebuilt[..., slice(*v["lat"]), slice(*v["lon"])] = v["batches"][step][k]
                union_exact &= bool(np.array_equal(rebuilt, expected[k]))
        weights = np.full(store.n_lat, np.nan)
        for v in ranks:
            weights[slice(*v["lat"])] = v["weights"]
        weights_exact &= bool(np.array_equal(weights, lat_cell_weights(store.lat)))
    steps_of = {r: [v["steps"] for v in views if v["coords"][0] == r] for r in range(layout.data)}
    return {
        "union_exact": union_exact, "weights_exact": weights_exact,
        "same_steps": all(s == lists[0] for lists in steps_of.values() for s in lists),
        "replicas_differ": layout.data == 1 or steps_of[0][0] != steps_of[1][0],
        "batch_is_global": all(sum((steps_of[r][0][s] for r in range(layout.data)), []) == serial.indices_for_step(s)
                               for s in range(STEPS)),
        "bytes": {str(v["coords"]): v["bytes"] for v in views}, "full_bytes": full_bytes,
        "rows": sorted({tuple(v["rows"]) for v in views}),
    }


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--store", required=True)
    ap.add_argument("--out", required=True)
    args = ap.parse_args()
    rank, world, _ = init_distributed("gloo")
    torch.set_num_threads(1)
    results = {}
    for domain, tensor in LAYOUTS:
        layout = Layout.for_world(world, domain, tensor)
        views = [None] * world
        dist.all_gather_object(views, rank_view(args.store, layout, rank))
        if rank == 0:
            results[str((layout.data, domain, tensor))] = check(args.store, layout, views)
    if rank == 0:
        with open(args.out, "w") as f:
            json.dump(results, f, indent=1)
    dist.barrier()
    dist.destroy_process_group()


if __name__ == "__main__":
    main()

"""jigsaw-train: WeatherMixer on a DeepSpeed engine, at any data x domain x tensor layout.

Order of work, so that bad input fails before anything is lost or created:
  1. config + --set overrides, DeepSpeed JSON, store contents and grid are checked (ConfigError/StoreError);
  2. torch.distributed starts from the launcher's environment; the layout is checked against the world;
  3. process groups (megatron parallel_state), model shards, the DeepSpeed engine (ZeRO over data);
  4. the loop: each rank reads its tile, back-propagates its part of the loss; rank 0 logs
     metrics.jsonl, TensorBoard and a progress bar; checkpoints every train.ckpt_every steps.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
from typing import NoReturn

import numpy as np
import torch.distributed as dist

from .. import config as jconfig
from ..data.dataset import split_train_val
from ..data.store import StoreError, WeatherStore
from ..parallel.allocation import allocation_from_env, check_allocation_from_env, env_rank
from ..parallel.partition import TokenPartition
from ..parallel.topology import Layout, init_distributed


def parse_args(argv):
    ap = argparse.ArgumentParser(prog="jigsaw-train", description=__doc__.split("\n")[0])
    ap.add_argument("--config", required=True, help="jigsaw config JSON (model, data, parallel, train)")
    ap.add_argument("--deepspeed_config", "--deepspeed-config", required=True, help="DeepSpeed JSON config")
    ap.add_argument("--set", action="append", default=[], metavar="SECTION.KEY=VALUE", help="override a config value")
    ap.add_argument("--resume", action="store_true", help="continue from the latest complete checkpoint in out_dir")
    ap.add_argument("--init-from", default="", metavar="FILE",
                    help="start from a layout-free checkpoint (jigsaw-ckpt export): weights, Adam state, step")
    ap.add_argument("--local_rank", "--local-rank", type=int, default=None, help=argparse.SUPPRESS)  # deepspeed launcher
    return ap.parse_args(argv)


NAN_SCAN_LIMIT_BYTES = 2 * 2**30  # stores up to this size are scanned for NaN/inf before training starts


def load_deepspeed_config(path: str, cfg: jconfig.JigsawConfig, data_parallel: int) -> dict:
    """The user's DeepSpeed JSON with the batch sizes the jigsaw config implies (one source of truth)."""
    try:
        with open(path) as f:
            ds = json.load(f)
    except FileNotFoundError:
        raise jconfig.ConfigError(f"DeepSpeed config '{path}' does not exist") from None
    except json.JSONDecodeError as e:
        raise jconfig.ConfigError(f"DeepSpeed config '{path}' is not valid JSON: {e}") from None
    g = cfg.train.global_batch
    if g % data_parallel:
        raise jconfig.ConfigError(f"config key 'train.global_batch' = {g} is not divisible by the data-parallel "
                                  f"size {data_parallel} (world / (parallel.domain x parallel.tensor))")
    want = {"train_batch_size": g, "train_micro_batch_size_per_gpu": g // data_parallel,
            "gradient_accumulation_steps": 1}
    for key, value in want.items():
        if key in ds and ds[key] != value:
            raise jconfig.ConfigError(f"DeepSpeed config key '{key}' = {ds[key]} disagrees with the jigsaw config "
                                      f"(train.global_batch = {g}, data parallel = {data_parallel} -> {value}); "
                                      f"remove it from '{path}'")
    ds.update(want)
    ds.setdefault("steps_per_print", 10**9)
    return ds


def _fail(message: str, every_rank: bool = False) -> NoReturn:
    """Exit 2 with one message: printed by rank 0 for errors every rank sees alike, by the rank itself for
    errors only it can see (its own piece of the store)."""
    if every_rank or env_rank() == 0:  # under srun RANK is unset: the SLURM rank decides who prints
        print(f"jigsaw-train: error: {message}", file=sys.stderr)
    sys.exit(2)


def open_checked_store(cfg: jconfig.JigsawConfig, layout: Layout, rank: int) -> WeatherStore:
    """Open the store, check the config against its grid, and scan this rank's share of it for NaN/inf:
    its own tile (as it will read it in training) and, within its replica, 1/data of the times, so that
    the ranks together read the selection once."""
    store = WeatherStore(cfg.data.store, cfg.data.variables, cfg.data.surface_variables, cfg.data.levels,
                         cfg.model.static_variables)
    traj_lengths = np.bincount(np.unique(store.trajectory, return_inverse=True)[1])
    jconfig.check_against_grid(cfg, store.n_lat, store.n_lon, int(traj_lengths.max()))
    split_train_val(store, cfg.data.lead_steps * cfg.train.rollout_steps, cfg.data.val_fraction)  # both sides non-empty
    selected_bytes = 4 * len(store.channels) * len(store.times) * store.n_lat * store.n_lon
    if selected_bytes <= NAN_SCAN_LIMIT_BYTES:  # larger stores: `jigsaw-data prepare` checks them once
        data_rank, domain_rank, tensor_rank = layout.coords(rank)
        part = TokenPartition(store.n_lat, store.n_lon, cfg.model.patch, layout.domain, layout.tensor)
        n = len(store.times)
        times = slice(data_rank * n // layout.data, (data_rank + 1) * n // layout.data)
        try:
            store.check_finite(times, part.lat_slice(domain_rank), part.lon_slice(tensor_rank))
        except StoreError as e:
            _fail(str(e), every_rank=True)
    return store


def check_out_dir(cfg: jconfig.JigsawConfig, resume: bool) -> None:
    """A new run must not share train.out_dir with an earlier one: its checkpoints would be mixed with the
    earlier run's (retention and --resume go by step number, not by run)."""
    from .checkpoint import CheckpointManager

    earlier = CheckpointManager(os.path.join(cfg.train.out_dir, "checkpoints"), 1).tags()
    if earlier and not resume:
        raise jconfig.ConfigError(f"config key 'train.out_dir' = '{cfg.train.out_dir}' holds checkpoints of an "
                                  f"earlier run (newest {earlier[-1]}): pass --resume to continue that run, or "
                                  f"set a new train.out_dir (--set train.out_dir=...)")


def generate_store(cfg: jconfig.JigsawConfig) -> None:
    from ..data import generate

    generate.from_spec(cfg.data.generate, cfg.data.store)


def main(argv=None) -> int:
    args = parse_args(argv)
    try:
        cfg = jconfig.load(args.config, args.set)
        for warning in check_allocation_from_env(cfg.parallel.domain, cfg.parallel.tensor, cfg.train.global_batch):
            print(f"jigsaw-train: warning: {warning}", file=sys.stderr)
        allocation = allocation_from_env()
        layout = Layout.for_world(allocation.world, cfg.parallel.domain, cfg.parallel.tensor)
        store = None if (cfg.data.generate and not os.path.exists(cfg.data.store)) else \
            open_checked_store(cfg, layout, allocation.rank)
        ds_config = load_deepspeed_config(args.deepspeed_config, cfg, layout.data)
        check_out_dir(cfg, args.resume)
    except (jconfig.ConfigError, StoreError, ValueError) as e:
        _fail(str(e))
    from .loop import Trainer

    rank, world, _ = init_distributed()
    if store is None:  # the config asks for a generated store that does not exist yet
        if rank == 0:
            generate_store(cfg)
        dist.barrier()
        try:
            store = open_checked_store(cfg, layout, rank)
        except (jconfig.ConfigError, StoreError) as e:
            _fail(str(e))
    if args.init_from and not os.path.exists(args.init_from):
        _fail(f"--init-from: file '{args.init_from}' does not exist")
    trainer = Trainer(cfg, ds_config, store, resume=args.resume, init_from=args.init_from)
    trainer.fit()
    dist.barrier()
    if rank == 0:
        print(f"jigsaw-train: done. outputs in {os.path.abspath(cfg.train.out_dir)}: config.json, metrics.jsonl, "
              f"tensorboard/, checkpoints/")
    dist.destroy_process_group()
    return 0


if __name__ == "__main__":
    sys.exit(main())

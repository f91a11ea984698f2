"""jigsaw-train: WeatherMixer on a DeepSpeed engine, at any data x domain x tensor layout.

main reads top to bottom, so that bad input fails before anything is lost or created:
  1. `plan_run`: config + --set overrides, the allocation and layout, the store's contents and grid, the
     train/validation split, the model's shape, the DeepSpeed JSON and the output directory are checked and
     fixed once, into a `Run` (ConfigError/StoreError/ValueError: one message, exit 2);
  2. torch.distributed starts from the launcher's environment (and a configured store is generated if missing);
  3. `Trainer(run)` builds the process groups (megatron parallel_state), the model shards, the data and the
     DeepSpeed engine (ZeRO over data), and restores a checkpoint if asked (train/trainer.py);
  4. `Trainer.fit`: each rank reads its tile and back-propagates its part of the loss; rank 0 logs
     metrics.jsonl, TensorBoard and a progress bar; checkpoints every train.ckpt_every steps.
"""
from __future__ import annotations

import argparse
import os
import sys
import time
from dataclasses import dataclass
from typing import NoReturn, Optional

import numpy as np
import torch.distributed as dist

from .. import config as jconfig
from ..data.dataset import split_train_val
from ..data.store import StoreError, WeatherStore, default_read_threads
from ..model import input_channels
from ..parallel.allocation import allocation_from_env, check_allocation_from_env, env_rank
from ..parallel.partition import TokenPartition
from ..parallel.topology import Layout, init_distributed
from ..quiet import quiet_libraries
from . import run_lock


def parse_args(argv):
    ap = argparse.ArgumentParser(prog="jigsaw-train", description=__doc__.split("\n")[0])
    ap.add_argument("--config", required=True, help="jigsaw config JSON (model, data, parallel, train)")
    ap.add_argument("--deepspeed_config", "--deepspeed-config", required=True, help="DeepSpeed JSON config")
    ap.add_argument("--set", action="append", default=[], metavar="SECTION.KEY=VALUE", help="override a config value")
    ap.add_argument("--resume", action="store_true", help="continue from the latest complete checkpoint in out_dir")
    ap.add_argument("--start-over", action="store_true",
                    help="move the earlier run's outputs in out_dir aside (OUT/superseded-TIME/) and start at step 0")
    ap.add_argument("--init-from", default="", metavar="FILE",
                    help="start from a layout-free FILE (jigsaw-ckpt export: weights, Adam state, step) or from the "
                         "weights of a checkpoint folder or run directory (fine-tuning: step 0)")
    ap.add_argument("--local_rank", "--local-rank", type=int, default=None, help=argparse.SUPPRESS)  # deepspeed launcher
    return ap.parse_args(argv)


NAN_SCAN_LIMIT_BYTES = 2 * 2**30  # stores up to this size are scanned for NaN/inf before training starts


def load_deepspeed_config(path: str, cfg: jconfig.JigsawConfig, layout: Layout) -> dict:
    """The user's DeepSpeed JSON with the batch sizes the jigsaw config implies (one source of truth)."""
    ds = jconfig.read_json_object(path, "DeepSpeed config")
    jconfig.check_deepspeed_config(ds, path)
    g = cfg.train.global_batch
    try:
        micro = layout.micro_batch(g)
    except ValueError as e:
        raise jconfig.ConfigError(str(e)) from None
    want = {"train_batch_size": g, "train_micro_batch_size_per_gpu": micro, "gradient_accumulation_steps": 1}
    for key, value in want.items():
        if key in ds and ds[key] != value:
            raise jconfig.ConfigError(f"DeepSpeed config key '{key}' = {ds[key]} disagrees with the jigsaw config "
                                      f"(train.global_batch = {g}, data parallel = {layout.data} -> {value}); "
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


class OwnTileError(StoreError):
    """Bad values in this rank's own piece of the store: only this rank knows, so it says so itself."""


@dataclass
class Run:
    """What a training run is, fixed before any process group exists: the trainer takes it as it is."""
    cfg: jconfig.JigsawConfig
    ds_config: dict
    layout: Layout
    store: Optional[WeatherStore] = None  # None until a configured data.generate store has been made
    train_starts: Optional[np.ndarray] = None
    val_starts: Optional[np.ndarray] = None

    @property
    def model_shape(self) -> dict:
        """What the model needs of the store: grid and channel counts (also written to config.json)."""
        s = self.store
        return {"n_lat": s.n_lat, "n_lon": s.n_lon, "out_channels": len(s.channels),
                "in_channels": input_channels(self.cfg.model, len(s.channels), len(s.static_variables))}

    def open_store(self, rank: int) -> None:
        """Open the store, check the config against its grid, split it, and scan this rank's share of it for
        NaN/inf: its own tile (as it will read it in training) and, within its replica, 1/data of the times,
        so that the ranks together read the selection once."""
        cfg, layout = self.cfg, self.layout
        store = WeatherStore(cfg.data.store, cfg.data.variables, cfg.data.surface_variables, cfg.data.levels,
                             cfg.model.static_variables,
                             read_threads=cfg.data.read_threads or default_read_threads(cfg.data.num_workers))
        traj_lengths = np.bincount(np.unique(store.trajectory, return_inverse=True)[1])
        jconfig.check_against_grid(cfg, store.n_lat, store.lon, int(traj_lengths.max()))
        self.train_starts, self.val_starts = split_train_val(store, cfg.data.lead_steps * cfg.train.rollout_steps,
                                                             cfg.data.val_fraction,
                                                             cfg.data.lead_steps * cfg.model.history_steps)
        selected_bytes = 4 * len(store.channels) * len(store.times) * store.n_lat * store.n_lon
        if selected_bytes <= NAN_SCAN_LIMIT_BYTES:  # larger stores: `jigsaw-data prepare` checks them once
            data_rank, domain_rank, tensor_rank = layout.coords(rank)
            part = TokenPartition(store.n_lat, store.n_lon, cfg.model.patch, layout.domain, layout.tensor)
            n = len(store.times)
            times = slice(data_rank * n // layout.data, (data_rank + 1) * n // layout.data)
            try:
                store.check_finite(times, part.lat_slice(domain_rank), part.lon_slice(tensor_rank))
            except StoreError as e:
                raise OwnTileError(str(e)) from None
        self.store = store


def plan_run(args) -> Run:
    """Everything that can be checked before torch.distributed starts, in one place (each rank checks its own
    tile of the store, so a rank can fail where others pass: nothing is written here)."""
    cfg = jconfig.load(args.config, args.set)
    for warning in check_allocation_from_env(cfg.parallel.domain, cfg.parallel.tensor, cfg.train.global_batch):
        print(f"jigsaw-train: warning: {warning}", file=sys.stderr)
    allocation = allocation_from_env()
    layout = Layout.for_world(allocation.world, cfg.parallel.domain, cfg.parallel.tensor)
    run = Run(cfg, load_deepspeed_config(args.deepspeed_config, cfg, layout), layout)
    if cfg.data.generate and not os.path.exists(cfg.data.store):
        from ..data import generate

        generate.check_config(cfg)  # the store is made after the process group starts: check what it will hold
    else:
        run.open_store(allocation.rank)
    if args.init_from:
        from ..checkpoint.manager import source_config

        try:
            check_same_inputs(cfg, source_config(args.init_from), f"--init-from {args.init_from}")
        except ValueError as e:
            raise jconfig.ConfigError(f"--init-from: {e}") from None
    if not args.start_over:
        check_out_dir(cfg, args.resume)
    return run


def take_run_dir(cfg: jconfig.JigsawConfig, start_over: bool) -> str:
    """Rank 0, once every rank has passed plan_run: the run directory's lock (train/run_lock.py), the first
    thing written, then --start-over's move. Returns why the directory cannot be used, or ''."""
    try:
        note = run_lock.acquire(cfg.train.out_dir)
    except run_lock.RunDirBusy as e:
        return str(e)
    if note:
        print(f"jigsaw-train: {note}", file=sys.stderr)
    moved = move_aside(cfg.train.out_dir) if start_over else ""
    if moved:
        print(f"jigsaw-train: --start-over: moved the earlier run's outputs to {moved}", file=sys.stderr)
    return ""


def check_out_dir(cfg: jconfig.JigsawConfig, resume: bool) -> None:
    """A new run must not share train.out_dir with an earlier one: its checkpoints would be mixed with the
    earlier run's (retention and --resume go by step number, not by run). A resume needs a checkpoint it can
    load, if the run has any: starting over silently would overwrite the run."""
    from ..checkpoint.manager import CheckpointManager

    manager = CheckpointManager(os.path.join(cfg.train.out_dir, "checkpoints"), 1)
    earlier = manager.tags()
    if earlier and not resume:
        raise jconfig.ConfigError(f"config key 'train.out_dir' = '{cfg.train.out_dir}' holds checkpoints of an "
                                  f"earlier run (newest {earlier[-1]}): pass --resume to continue that run, "
                                  f"--start-over to move it aside, or set a new train.out_dir (--set train.out_dir=...)")
    if earlier and resume:
        run_config = os.path.join(cfg.train.out_dir, "config.json")
        if os.path.exists(run_config):
            check_same_inputs(cfg, jconfig.read_json_object(run_config, "run config"), f"the run in {cfg.train.out_dir}")
        tag, refused = manager.latest_complete()
        if not tag:
            raise jconfig.ConfigError(f"--resume: no checkpoint in {manager.root} can be loaded "
                                      f"({'; '.join(refused)}); nothing was changed. Pass --start-over to move the "
                                      f"run aside and start at step 0")


def check_same_inputs(cfg: jconfig.JigsawConfig, earlier: dict, where: str) -> None:
    """A model continues only with the inputs it was trained on: the forcings (and the other computed or
    static inputs) of the config must be those of the checkpoint's run."""
    defaults = jconfig.ModelConfig()
    for key in ("forcings", "forcings_at_target", "coord_features", "static_variables"):
        old = earlier["jigsaw"]["model"].get(key, getattr(defaults, key))
        if old != getattr(cfg.model, key):
            raise jconfig.ConfigError(f"config key 'model.{key}' = {getattr(cfg.model, key)!r}, but {where} was "
                                      f"trained with {old!r}")


RUN_OUTPUTS = ("checkpoints", "metrics.jsonl", "tensorboard", "config.json", "csv")


def move_aside(out_dir: str) -> str:
    """Move an earlier run's outputs into OUT/superseded-TIME/ (never deleted); returns that folder or ''."""
    present = [name for name in RUN_OUTPUTS if os.path.exists(os.path.join(out_dir, name))]
    if not present:
        return ""
    dest = os.path.join(out_dir, "superseded-" + time.strftime("%Y%m%d-%H%M%S"))
    os.makedirs(dest)
    for name in present:
        os.replace(os.path.join(out_dir, name), os.path.join(dest, name))
    return dest


def generate_store(cfg: jconfig.JigsawConfig) -> None:
    from ..data import generate

    generate.from_spec(cfg.data.generate, cfg.data.store)


def main(argv=None) -> int:
    quiet_libraries(env_rank())
    args = parse_args(argv)
    try:
        run = plan_run(args)
    except (jconfig.ConfigError, StoreError, ValueError) as e:
        _fail(str(e), every_rank=isinstance(e, OwnTileError))
    from ..checkpoint.manager import CheckpointError
    from .trainer import NonFiniteError, Trainer

    rank, world, _ = init_distributed()
    refusal = [take_run_dir(run.cfg, args.start_over) if rank == 0 else None]  # every rank has passed plan_run
    dist.broadcast_object_list(refusal, src=0)
    if refusal[0]:
        _fail(refusal[0])
    if run.store is None:  # the config asks for a generated store that does not exist yet
        if rank == 0:
            generate_store(run.cfg)
        dist.barrier()
        try:
            run.open_store(rank)
        except (jconfig.ConfigError, StoreError) as e:
            _fail(str(e), every_rank=isinstance(e, OwnTileError))
    try:
        Trainer(run, resume=args.resume and not args.start_over, init_from=args.init_from).fit()
    except (NonFiniteError, CheckpointError) as e:  # every rank raises alike: rank 0 says it, once
        if rank == 0:
            print(f"jigsaw-train: error: {e}", file=sys.stderr)
        return 1
    dist.barrier()
    if rank == 0:
        print(f"jigsaw-train: done. outputs in {os.path.abspath(run.cfg.train.out_dir)}: config.json, metrics.jsonl, "
              f"tensorboard/, checkpoints/")
    dist.destroy_process_group()
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""A training run resolved before any process group exists: the config with its overrides, the allocation and
layout, the store with its grid checks and train/validation split, the model's shape, the DeepSpeed JSON and
the output directory, checked and fixed once into a `Run` that the trainer takes as it is (train/trainer.py).
jigsaw-train's `main` (train/cli.py) calls `plan_run`, then starts torch.distributed and the trainer.

Everything here raises errors.JigsawError kinds (ConfigError, StoreError, InputsDiffer, ...) with one message;
nothing is written before every rank has passed `plan_run` (`take_run_dir`, rank 0, is the first write).
"""
from __future__ import annotations

import os
import sys
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Optional

import numpy as np

# torch, DeepSpeed and the store's libraries load in the functions that use them, so that jigsaw-train --help
# and a bad flag answer at once
from .. import config as jconfig
from ..errors import JigsawError, RankLocalError
from ..model import inputs
from . import run_lock

if TYPE_CHECKING:  # names in annotations only
    from ..data.store import WeatherStore
    from ..parallel.topology import Layout


NAN_SCAN_LIMIT_BYTES = 2 * 2**30  # stores up to this size are scanned for NaN/inf before training starts


def micro_batches(cfg: jconfig.JigsawConfig, layout: Layout) -> tuple[int, int]:
    """(samples per forward/backward of a replica, micro-batches accumulated per optimizer step)."""
    share = layout.micro_batch(cfg.train.global_batch)  # one replica's share of the global batch (or ConfigError)
    micro = cfg.train.micro_batch or share
    if share % micro:
        raise jconfig.ConfigError(f"config key 'train.micro_batch' = {micro} does not divide a replica's share of the "
                                  f"global batch ({cfg.train.global_batch} over {layout.data} data-parallel replicas "
                                  f"= {share}): the share is accumulated in whole micro-batches")
    return micro, share // micro


def load_deepspeed_config(path: str, cfg: jconfig.JigsawConfig, layout: Layout) -> dict:
    """The user's DeepSpeed JSON with the batch sizes and the LR schedule's length and warm-up that the jigsaw
    config implies (one source of truth: the same JSON serves any train.global_batch and train.steps)."""
    ds = jconfig.read_json_object(path, "DeepSpeed config")
    jconfig.check_deepspeed_config(ds, path)
    g, t = cfg.train.global_batch, cfg.train
    micro, accumulate = micro_batches(cfg, layout)
    # (section of the JSON, its key prefix, the values derived, from what)
    derived = [(ds, "", {"train_batch_size": g, "train_micro_batch_size_per_gpu": micro,
                         "gradient_accumulation_steps": accumulate},
                f"train.global_batch = {g}, train.micro_batch = {t.micro_batch}, data parallel = {layout.data}")]
    if "scheduler" in ds:
        derived.append((ds["scheduler"].setdefault("params", {}), "scheduler.params.",
                        jconfig.deepspeed_schedule(t, ds["scheduler"]["type"]),
                        f"train.steps = {t.steps}, train.warmup_fraction = {t.warmup_fraction}"))
    for section, prefix, want, source in derived:
        for key, value in want.items():
            if key in section and section[key] != value:
                raise jconfig.ConfigError(f"DeepSpeed config key '{prefix}{key}' = {section[key]} disagrees with the "
                                          f"jigsaw config ({source} -> {value}); remove it from '{path}'")
        section.update(want)
    ds.setdefault("steps_per_print", 10**9)
    return ds


@dataclass
class Run:
    """What a training run is, fixed before any process group exists: the trainer takes it as it is."""
    cfg: jconfig.JigsawConfig
    ds_config: dict
    layout: Layout
    store: Optional[WeatherStore] = None  # None until a configured data.generate store has been made
    train_starts: Optional[np.ndarray] = None
    val_starts: Optional[np.ndarray] = None
    # the normalisation of the model a run continues (--resume, --init-from), from its run config
    trained_statistics: Optional[dict] = None

    def use_trained_statistics(self, run_config: dict) -> None:
        """Normalise with the statistics the continued model was trained with (recorded since 2026-12-07;
        an older record has none: the store's own are used, as before)."""
        record = run_config.get("statistics")
        if record:
            self.store.use_statistics(record)
            self.trained_statistics = record

    @property
    def input_spec(self) -> inputs.InputSpec:
        """What the model reads, on this run's store's channels."""
        return inputs.InputSpec.of(self.cfg, [c.name for c in self.store.channels])

    @property
    def shape(self) -> "ModelShape":
        """The model's size on this run's store: its grid, and its channels as the store holds them."""
        from ..model.shape import ModelShape

        spec = self.input_spec
        return ModelShape(self.cfg.model, self.store.n_lat, self.store.n_lon, spec.n_in, spec.n_state)

    @property
    def model_shape(self) -> dict:
        """Its record in config.json and every checkpoint: the shape's sizes, and the grid's coordinates and time
        step that a model's inputs are checked by (model/inputs.py)."""
        return {**self.shape.record(), **inputs.grid_of(self.store)}

    def inputs(self) -> dict:
        """What this run's model reads, and its width (model/inputs.py's record), once the store is open."""
        return inputs.of_run({"jigsaw": self.cfg.to_dict(), "model_shape": self.model_shape,
                              "channels": [c.name for c in self.store.channels]})

    def open_store(self, rank: int) -> None:
        """Open the store, check the config against its grid, split it, and scan this rank's share of it for
        NaN/inf: its own tile (as it will read it in training) and, within its replica, 1/data of the times,
        so that the ranks together read the selection once."""
        from ..data.dataset import split_train_val
        from ..data.store import StoreError, WeatherStore, default_read_threads
        from ..parallel.partition import TokenPartition

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
            except StoreError as e:  # bad values in this rank's own piece: only it knows, so it says so itself
                raise RankLocalError(str(e)) from None
        self.store = store


def check_memory(run: Run, ranks_here: int) -> None:
    """Refuse a model that cannot fit before building it (a huge model.embed_dim would otherwise end in an
    allocation error on every rank, after the process group): perf/step_model's per-rank prediction (weights,
    gradients, optimizer shares, activations) against the GPU's memory, or on the CPU against the memory this
    machine has available now shared by its `ranks_here` ranks."""
    import torch

    from ..perf import step_model as pm

    cfg = run.cfg
    try:  # the store's own shape once it is open; before, what the config says
        shape = run.shape if run.store is not None else pm.ModelShape.from_config(cfg)
    except jconfig.ConfigError:  # a grid it cannot tell before the store exists: the allocation will say
        return
    micro, _ = micro_batches(cfg, run.layout)
    setup = pm.TrainSetup.from_deepspeed(run.ds_config, global_batch=cfg.train.global_batch, micro_batch=micro,
                                         checkpointing=cfg.model.activation_checkpointing)
    need = max(pm.memory_bytes(shape, run.layout, setup, domain_rank=d)["total"] for d in range(run.layout.domain))
    if torch.cuda.is_available():
        have, where = torch.cuda.mem_get_info()[1], "of the GPU's memory"
    else:
        with open("/proc/meminfo") as f:
            available = next(int(line.split()[1]) * 1024 for line in f if line.startswith("MemAvailable"))
        have, where = available // ranks_here, f"of this machine's available memory, shared by {ranks_here} ranks"
    if need > have:
        m = cfg.model
        raise jconfig.ConfigError(
            f"the model needs about {need / 2**30:.1f} GiB per rank (perf/step_model: weights, gradients, optimizer "
            f"and activations at model.embed_dim = {m.embed_dim}, token_hidden = {m.token_hidden}, channel_hidden = "
            f"{m.channel_hidden}, depth = {m.depth}, micro-batch {micro}) but has {have / 2**30:.1f} GiB {where}: "
            f"make the model smaller, split it over more ranks (parallel.domain, parallel.tensor), lower "
            f"train.micro_batch or turn on model.activation_checkpointing")


def plan_run(args) -> Run:
    """Everything that can be checked before torch.distributed starts, in one place (each rank checks its own
    tile of the store, so a rank can fail where others pass: nothing is written here)."""
    from ..parallel.allocation import allocation_from_env, check_allocation_from_env
    from ..parallel.topology import Layout

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
    check_memory(run, allocation.local_world_size or 1)
    resume_from = "" if args.start_over else check_out_dir(cfg, args.resume)
    if run.store is not None:  # else once the store is made (main)
        check_continues(run, resume_from, args.init_from)
    return run


def take_run_dir(cfg: jconfig.JigsawConfig, start_over: bool) -> str:
    """Rank 0, once every rank has passed plan_run: the run directory's lock (train/run_lock.py), the first
    thing written, then --start-over's move. Returns why the directory cannot be used, or ''."""
    try:
        note = run_lock.acquire(cfg.train.out_dir)
    except run_lock.RunDirBusy as e:
        return str(e)
    except OSError as e:  # read-only or not ours, where plan_run could not tell (root passes os.access)
        return (f"config key 'train.out_dir' = '{cfg.train.out_dir}' cannot be written "
                f"({e.strerror or e}: {e.filename or cfg.train.out_dir})")
    if note:
        print(f"jigsaw-train: {note}", file=sys.stderr)
    moved = move_aside(cfg.train.out_dir) if start_over else ""
    if moved:
        print(f"jigsaw-train: --start-over: moved the earlier run's outputs to {moved}", file=sys.stderr)
    return ""


def check_out_dir(cfg: jconfig.JigsawConfig, resume: bool) -> str:
    """A directory this run can write, and not shared with an earlier run: its checkpoints would be mixed with
    the earlier run's (retention and --resume go by step number, not by run), its metrics, config and
    TensorBoard events replaced. A resume needs a checkpoint it can load, if the run has any: starting over
    silently would overwrite the run. Returns the checkpoint folder --resume continues from, or ''."""
    from ..checkpoint.folder import Checkpoints

    out = cfg.train.out_dir
    existing = os.path.abspath(out)  # the folder, or the nearest folder above it that exists
    while not os.path.exists(existing):
        existing = os.path.dirname(existing)
    if not os.path.isdir(existing):
        raise jconfig.ConfigError(f"config key 'train.out_dir' = '{out}': '{existing}' is a file, not a directory: "
                                  f"set another train.out_dir (--set train.out_dir=...)")
    if not os.access(existing, os.W_OK | os.X_OK):
        raise jconfig.ConfigError(f"config key 'train.out_dir' = '{out}' cannot be written ('{existing}' is "
                                  f"read-only for this user)")
    manager = Checkpoints(os.path.join(out, "checkpoints"))
    earlier = manager.tags()
    if earlier and not resume:
        raise jconfig.ConfigError(f"config key 'train.out_dir' = '{out}' holds checkpoints of an "
                                  f"earlier run (newest {earlier[-1]}): pass --resume to continue that run, "
                                  f"--start-over to move it aside, or set a new train.out_dir (--set train.out_dir=...)")
    outputs = [name for name in RUN_OUTPUTS if os.path.exists(os.path.join(out, name))]
    if outputs and not resume:
        raise jconfig.ConfigError(f"config key 'train.out_dir' = '{out}' holds outputs of an earlier run "
                                  f"({', '.join(outputs)}; no checkpoint): pass --start-over to move them aside, "
                                  f"or set a new train.out_dir (--set train.out_dir=...)")
    if not earlier:
        return ""
    tag, refused = manager.latest_complete()
    if not tag:
        raise jconfig.ConfigError(f"--resume: no checkpoint in {manager.root} can be loaded "
                                  f"({'; '.join(refused)}); nothing was changed. Pass --start-over to move the "
                                  f"run aside and start at step 0")
    return os.path.join(manager.root, tag)


def check_continues(run: Run, resume_from: str, init_from: str) -> None:
    """A model continues only with the inputs and the width it was trained with (model/inputs.py): those of
    the run's checkpoint that --resume loads, and of an --init-from source."""
    from ..checkpoint.manager import source_config

    now = run.inputs()
    if resume_from:
        source = source_config(resume_from)
        inputs.check_same(inputs.of_run(source), now, inputs.CONTINUE_KEYS,
                          "--resume: this config", tail=f" (the run in {run.cfg.train.out_dir})")
        run.use_trained_statistics(source)
    if init_from:
        try:
            source = source_config(init_from)
        except JigsawError as e:  # not a checkpoint, none complete, or a damaged one: names the file or folder
            raise jconfig.ConfigError(f"--init-from: {e}") from None
        inputs.check_same(inputs.of_run(source), now, inputs.CONTINUE_KEYS, f"--init-from {init_from}: this config")
        if not resume_from:  # a requeued job resumes its own checkpoint (the trainer ignores the file then)
            run.use_trained_statistics(source)


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


def finished_step(cfg: jconfig.JigsawConfig) -> int:
    """The step of the run's newest complete checkpoint if it has reached train.steps, else 0."""
    from ..checkpoint.folder import Checkpoints

    tag, _ = Checkpoints(os.path.join(cfg.train.out_dir, "checkpoints")).latest_complete()
    step = int(tag.removeprefix("step_")) if tag else 0
    return step if step >= cfg.train.steps else 0

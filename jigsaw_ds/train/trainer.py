"""The Trainer: one DeepSpeed engine over the Jigsaw model, with logging, validation and checkpoints.

It takes a `Run` (train/run.py: config, layout, store, split, model shape, all checked) and builds, in order:
process groups and model shards (`_build_model`), the loss and datasets of this rank's tile (`_build_data`),
the DeepSpeed engine, then restores a checkpoint or an --init-from file (`_restore`) and opens the logs.
"""
from __future__ import annotations

import math
import os
import sys
import time
from dataclasses import dataclass

import numpy as np
import torch
import torch.distributed as dist

from ..checkpoint import sharded
from ..checkpoint.layout_free import import_state, load_file
from ..checkpoint.manager import CheckpointManager, find_checkpoint
from ..checkpoint.zero import check_engine
from ..data.dataset import Loader, ReplicaBatches
from ..errors import NonFiniteError
from ..grid import lat_cell_weights
from ..parallel import comm_stats
from ..parallel.topology import JigsawMPU, initialize, reduce_sum
from ..perf.timing import spread
from .run import Run
from .logger import MetricsLogger
from .loss import AreaWeightedMSE


TENDENCY_PAIRS = 256  # training pairs read at start-up to estimate the change over a model step of several


def lead_tendency_std(store, starts: np.ndarray, lead: int, lat: slice, lon: slice, groups) -> np.ndarray:
    """Per channel std of the change over the model's step, x[t + lead] - x[t] (the loss's units). One step: the
    store's statistic (prepare's, over every pair). More: the change follows no rule (ERA5's hourly UK t2m: 1.8x
    the one-step std at 2 steps, 4.2x at 6; neither L nor sqrt(L)), so it is estimated from up to TENDENCY_PAIRS
    training pairs t in `starts`, drawn with a fixed seed (every run of a store, split and lead gets the same
    units): each rank reads its tile of its data rank's share; the float64 sums over the replica and the data
    axis give every rank the same std."""
    if lead == 1:
        return store.tendency_std
    picked = np.sort(np.random.default_rng(0).choice(len(starts), min(len(starts), TENDENCY_PAIRS), replace=False))
    sums = np.zeros((3, len(store.channels)))  # points, sum of changes, sum of squares
    for i in picked[groups.data_rank::groups.size("data")]:
        t = int(starts[i])
        now, later = store.read_raw([t, t + lead], lat, lon).astype(np.float64)
        change = (later - now).reshape(len(store.channels), -1)
        sums += np.stack([np.full(len(change), change.shape[1]), change.sum(1), (change * change).sum(1)])
    n, total, squares = reduce_sum(reduce_sum(sums, groups, "jigsaw"), groups, "data")
    return np.sqrt(np.maximum(squares / n - (total / n) ** 2, 0.0)).astype(np.float32)


class Trainer:
    def __init__(self, run: Run, resume: bool = False, init_from: str = ""):
        import deepspeed

        self.run, self.cfg, self.store = run, run.cfg, run.store
        self.groups = initialize(run.layout)
        self.rank0 = dist.get_rank() == 0
        torch.manual_seed(self.cfg.train.seed)
        if torch.cuda.is_available():  # fp32 runs only; bf16 matmuls are unaffected
            torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = self.cfg.train.tf32
        self._build_model()
        self._build_data()
        if self.rank0:  # said before the slow part: on the CPU, DeepSpeed loads (the first time: builds) its shm op
            print("jigsaw-train: starting the DeepSpeed engine" + ("" if torch.cuda.is_available() else
                  " and its CPU shared-memory comm op (built once per environment, 1-2 min)"), flush=True)
        self.engine, *_ = deepspeed.initialize(model=self.model, model_parameters=self.model.parameters(),
                                               config=run.ds_config, mpu=JigsawMPU(self.groups))
        check_engine(self.engine)  # DeepSpeed's ZeRO internals the checkpoints read: here, before any step
        self.device = self.engine.device
        # samples per forward/backward of this replica, and how many of them make its share of a step
        self.micro = run.ds_config["train_micro_batch_size_per_gpu"]
        self.accumulate = run.ds_config["gradient_accumulation_steps"]
        self.start_step = self._restore(resume, init_from)
        if self.start_step == 0 and self.engine.lr_scheduler is not None:
            # DeepSpeed's schedulers start at position -1 (lr 0) and the engine advances them after each step:
            # without this, step 1 trains at lr 0 and the last step short of the floor (a resume's position
            # comes from its checkpoint)
            self.engine.lr_scheduler.step()
        self._open_logs()

    # ---- construction ----------------------------------------------------------------------------------
    def _build_model(self) -> None:
        shape = self.run.shape
        # its output scaling (tendency_scale) is set with the loss's units, in _build_data, once the tile is known
        self.model = shape.build(self.groups, seed=self.cfg.train.seed)
        # a K-step rollout runs the model K times per sample, forward and backward
        self.flops_per_step = shape.train_flops_per_sample() * self.cfg.train.global_batch \
            * self.cfg.train.rollout_steps

    def _build_data(self) -> None:
        cfg, store, part = self.cfg, self.store, self.model.partition
        self.lat, self.lon = part.lat_slice(self.groups.domain_rank), part.lon_slice(self.groups.tensor_rank)
        weights = torch.from_numpy(lat_cell_weights(store.lat)[self.lat]).float()
        # Errors in units of each channel's tendency std over the model's step (residual normalisation):
        # persistence scores about 1 on every channel, so no channel dominates just by changing slowly; the
        # model's output is scaled alike (next state = input + tendency_scale * network output).
        trained = self.run.trained_statistics  # a continued model keeps the units it was trained in
        if trained and "lead_tendency_std" in trained:
            tendency = np.array(trained["lead_tendency_std"], np.float32)
        else:
            tendency = lead_tendency_std(store, self.run.train_starts, cfg.data.lead_steps, self.lat, self.lon,
                                         self.groups)
        self.tendency = tendency
        self.model.tendency_scale.copy_(torch.from_numpy(tendency / store.std))
        self.loss_fn = AreaWeightedMSE(weights, store.n_lat, store.n_lon, channel_weights=(store.std / tendency) ** 2)
        pairs = lambda starts: self.run.input_spec.pairs(store, starts, self.lat, self.lon, cfg.train.rollout_steps)
        self.train_set, self.val_set = pairs(self.run.train_starts), pairs(self.run.val_starts)

    def _restore(self, resume: bool, init_from: str) -> int:
        """The step to start after: the run's own newest complete checkpoint (--resume, at any layout), else
        an --init-from source's: a layout-free FILE (weights, Adam state, step) or a sharded checkpoint
        (weights only: fine-tuning starts at step 0), else 0."""
        self.ckpt = CheckpointManager(os.path.join(self.cfg.train.out_dir, "checkpoints"), self.cfg.train.ckpt_keep)
        step = self.ckpt.load(self.engine, self.model, self.groups) if resume else 0
        if init_from and not step:
            if os.path.isdir(init_from):
                folder, files = find_checkpoint(init_from)
                sharded.load(folder, files, self.engine, self.model, self.groups, weights_only=True)
            else:
                step = import_state(self.engine, self.model, self.groups, load_file(init_from))
        elif init_from and self.rank0:  # a requeued job: its own checkpoint is newer than the file
            print(f"jigsaw-train: --init-from {init_from} not used: resumed the run's own checkpoint (step {step})")
        return step

    def run_config(self) -> dict:
        """The resolved run: config.json, and every checkpoint's jigsaw.json."""
        return {"jigsaw": self.cfg.to_dict(), "deepspeed": self.run.ds_config, "layout": vars(self.run.layout),
                "model_shape": self.run.model_shape, "channels": [c.name for c in self.store.channels],
                # the normalisation the weights are learned against: evaluation and continuations use it
                "statistics": {**self.store.statistics(), "lead_tendency_std": self.tendency.tolist()},
                "parameters_per_rank": sum(p.numel() for p in self.model.parameters())}

    def _open_logs(self) -> None:
        self.logger = MetricsLogger(self.cfg.train.out_dir, enabled=self.rank0, resume_step=self.start_step,
                                    monitor=self.engine.monitor)
        if self.rank0:
            self.logger.write_config(self.run_config())

    # ---- reductions over the replica and the data axis -------------------------------------------------
    def global_mean(self, local_part: torch.Tensor) -> torch.Tensor:
        """Sum a loss's parts over the replica, average over data-parallel replicas: one all-reduce over the
        world (= data x replica; not counted as traffic), on any shape (a window of steps' parts at once);
        stays on the device."""
        value = local_part.detach().float().clone()
        if dist.get_world_size() > 1:
            dist.all_reduce(value)
            value /= self.groups.size("data")
        return value

    # ---- one optimizer step ----------------------------------------------------------------------------
    def train_step(self, step: int, loader: Loader) -> tuple[torch.Tensor, float]:
        """One optimizer step over this replica's share of the global batch, taken from `loader` in
        `self.accumulate` micro-batches (gradient accumulation: DeepSpeed scales each micro-batch's loss by
        1 / their number and steps the optimizer after the last); with train.rollout_steps = K each loss is the
        mean over a K-step rollout, each prediction fed back with the static channels and the next step's
        forcings, gradient through all K steps. Returns this rank's part of the step's loss (on the device; the
        log step reduces a window of them at once, `global_mean`) and the seconds spent waiting for data."""
        loss, waited = 0.0, 0.0
        for a in range(self.accumulate):
            t0 = time.perf_counter()
            x, y, forcings = next(loader)  # fp32 on the device: the model casts to its weights' precision
            waited += time.perf_counter() - t0
            # its training noise is this step's and these samples', resumed or not, accumulated or not
            self.model.start_step(step, first_sample=self.groups.data_rank * self.micro * self.accumulate
                                  + a * self.micro)
            k_steps, part = y.shape[1], 0.0
            for k, pred in enumerate(self.model.rollout(x, k_steps, forcings, step=self.engine)):
                part = part + self.loss_fn(pred.float(), y[:, k]) / k_steps
            self.engine.backward(part)
            self.engine.step()
            loss = loss + part.detach() / self.accumulate
        return loss, waited

    def _replica_batches(self, n_items: int, seed: int, **kw) -> ReplicaBatches:
        """This replica's draws of the global batch stream, in micro-batches."""
        return ReplicaBatches(n_items, self.cfg.train.global_batch, self.groups.data_rank, self.groups.size("data"),
                              seed, accumulate=self.accumulate, **kw)

    @torch.no_grad()
    def validate(self) -> tuple[float, float]:
        """Model and persistence loss on the first val_batches global batches of the held-out pairs (read in
        micro-batches of equal size, so their mean is the batches' mean)."""
        n_state = len(self.store.channels)
        sampler = self._replica_batches(len(self.val_set), 0, steps=self.cfg.train.val_batches, shuffle=False)
        model_loss = persistence = 0.0
        with Loader(self.val_set, sampler, self.device) as batches:
            for x, y, forcings in batches:
                # one-step validation loss (first target of each item)
                pred = next(self.model.rollout(x, 1, forcings, step=self.engine))
                model_loss += self.global_mean(self.loss_fn(pred.float(), y[:, 0])).item()
                persistence += self.global_mean(self.loss_fn(x[:, :n_state].float(), y[:, 0])).item()
        n = len(sampler)
        return model_loss / n, persistence / n

    def _check_finite(self, window: "_Window", sampler: ReplicaBatches) -> None:
        """Stop at the first non-finite loss or gradient norm of the steps since the last check (checks run at
        every log, validation and checkpoint step), before any of their weights can be saved: the last
        checkpoint stays the last good one. Loss and norm are global, so every rank stops alike; the message
        names the step and the global batch's time steps (gathered over the data axis)."""
        bad = [(step, loss, norm) for step, loss, norm in zip(window.steps, window.losses, window.norms)
               if not math.isfinite(loss) or (norm is not None and not math.isfinite(norm))]
        if not bad:
            return
        step, loss, norm = bad[0]
        own = [str(self.store.times[int(self.train_set.starts[i])])[:19]
               for i in sampler.indices_for_step(step - 1)]
        times = [own]
        if self.groups.size("data") > 1:
            times = [None] * self.groups.size("data")
            dist.all_gather_object(times, own, group=self.groups.handles["data"])
        raise NonFiniteError(f"step {step}: loss {loss}, gradient norm {norm}; the batch's input times "
                             f"{sorted(t for part in times for t in part)} (store '{self.store.path}'). Stopped before "
                             f"saving; the newest checkpoint is from before this step (--resume continues from it)")

    def fit(self) -> None:
        """The loop. Loss parts and gradient norms stay on the device between the schedule's sync steps (log,
        validation, checkpoint, last): the host waits for the device only there, one reduction gives the
        window's losses, and times are taken over the steps between them."""
        cfg = self.cfg.train
        schedule = Schedule(cfg.steps, cfg.log_every, cfg.val_every, cfg.ckpt_every)
        sampler = self._replica_batches(len(self.train_set), cfg.seed, start_step=self.start_step,
                                        steps=cfg.steps - self.start_step,
                                        lon_roll=self.store.n_lon if self.cfg.data.lon_roll else 0)
        loader = Loader(self.train_set, sampler, self.device, self.cfg.data.prefetch_factor, self.cfg.data.num_workers)
        progress = None
        if self.rank0 and cfg.progress and sys.stderr.isatty():  # a log file gets the plain lines below instead
            from tqdm import tqdm
            progress = tqdm(total=cfg.steps, initial=self.start_step, desc="train", dynamic_ncols=True)
        window = _Window()  # the steps since the last sync step
        t_start, waits = time.perf_counter(), []  # this invocation's steps: the run's rate, said at the end
        with loader:
            for step in range(self.start_step + 1, cfg.steps + 1):
                comm_stats.reset()
                lr = self.engine.get_lr()[0]  # the optimizer's rate, which this step uses (engine.step advances it)
                loss_part, t_data = self.train_step(step, loader)
                window.add(step, loss_part, self.engine.get_global_grad_norm(), t_data)
                waits.append(t_data)
                if progress:
                    progress.update(1)
                if not schedule.syncs(step):
                    continue
                dt = window.sync(self.global_mean)  # the one host synchronisation of the window
                self._check_finite(window, sampler)
                record = self._record(step, lr, window, dt)
                if schedule.validates(step):
                    record["val_loss"], record["val_loss_persistence"] = self.validate()
                self.logger.log(record)
                self._say(record, progress)
                if schedule.saves(step):
                    self.ckpt.save(self.engine, self.model, self.groups, step, self.run_config())
                window = _Window()
        if progress:
            progress.close()
        if waits and self.rank0:
            # the run's rate: work over the total time of this invocation's steps (validation and saves included)
            seconds = time.perf_counter() - t_start
            wait = data_wait(waits, seconds)
            print(f"jigsaw-train: {len(waits)} steps in {seconds:.1f} s: "
                  f"{cfg.global_batch * len(waits) / seconds:.3g} samples/s; data wait "
                  f"{wait['data_wait_frac']:.1%} of the time (per step mean {wait['data_wait_mean_s'] * 1e3:.1f} ms, "
                  f"p95 {wait['data_wait_p95_s'] * 1e3:.1f}, max {wait['data_wait_max_s'] * 1e3:.1f})", flush=True)
        self.logger.close()

    def _record(self, step: int, lr: float, window: "_Window", dt: float) -> dict:
        """The metrics.jsonl record of a sync step (the window's last step; rates over the whole window)."""
        cfg = self.cfg.train
        record = {"step": step, "loss": window.losses[-1], "lr": lr, "grad_norm": window.norms[-1],
                  "step_time_s": dt, "samples_per_s": cfg.global_batch / dt,
                  "tflops_per_gpu": self.flops_per_step / dt / dist.get_world_size() / 1e12,
                  **data_wait(window.data_waits, dt * len(window.steps)), "peak_mem_gb": _peak_memory_gb(),
                  "comm_bytes": comm_stats.snapshot()}
        if cfg.peak_tflops:
            record["mfu"] = record["tflops_per_gpu"] / cfg.peak_tflops
        return record

    def _say(self, record: dict, progress) -> None:
        """Rank 0's line of a sync step: the bar's postfix, or a plain line (a log file, or no bar)."""
        if not self.rank0:
            return
        validated = "val_loss" in record
        if progress:
            progress.set_postfix(loss=f"{record['loss']:.4f}", **({"val": f"{record['val_loss']:.4f}",
                                                                  "persist": f"{record['val_loss_persistence']:.4f}"}
                                                                 if validated else {}))
            return
        print(f"step {record['step']}/{self.cfg.train.steps} loss {record['loss']:.4g} lr {record['lr']:.3g} "
              f"{record['step_time_s'] * 1e3:.0f} ms/step data wait {record['data_wait_frac']:.1%}"
              + (f" MFU {record['mfu']:.1%}" if "mfu" in record else "")
              + (f" val {record['val_loss']:.4g} (persistence {record['val_loss_persistence']:.4g})"
                 if validated else ""), flush=True)


@dataclass(frozen=True)
class Schedule:
    """Which steps of a run log, validate and save (train.log_every, val_every, ckpt_every; a ckpt_every of 0 saves
    at the end only): the last step does all three. A step that does any of them syncs with the device."""
    steps: int
    log_every: int
    val_every: int
    ckpt_every: int

    def validates(self, step: int) -> bool:
        return step % self.val_every == 0 or step == self.steps

    def saves(self, step: int) -> bool:
        return bool(self.ckpt_every and step % self.ckpt_every == 0) or step == self.steps

    def syncs(self, step: int) -> bool:
        return self.validates(step) or self.saves(step) or step % self.log_every == 0


class _Window:
    """The steps since the last host synchronisation: their device-side losses and gradient norms, data waits."""

    def __init__(self):
        self.t0 = time.perf_counter()
        self.steps, self.losses, self.norms, self.data_waits = [], [], [], []

    def add(self, step: int, loss: torch.Tensor, norm, t_data: float) -> None:
        self.steps.append(step)
        self.losses.append(loss)
        self.norms.append(norm)
        self.data_waits.append(t_data)

    def sync(self, global_mean) -> float:
        """The window's losses from the ranks' parts, reduced at once (`global_mean` of the stacked parts), read to
        the host with the norms (waits for the device); returns the seconds per step (total / steps)."""
        self.losses = global_mean(torch.stack(self.losses)).tolist()
        self.norms = [_float(n) for n in self.norms]
        return (time.perf_counter() - self.t0) / len(self.steps)


def data_wait(waits: list, seconds: float) -> dict:
    """Steps' data waits against their total time `seconds`: the waits' share of it, and their mean, p95, max."""
    w = spread(waits)
    return {"data_wait_frac": w["total"] / seconds, "data_wait_mean_s": w["mean"], "data_wait_p95_s": w["p95"],
            "data_wait_max_s": w["max"]}


def _float(x):
    if x is None:
        return None
    return float(x.item() if torch.is_tensor(x) else x)


def _peak_memory_gb() -> float:
    if torch.cuda.is_available():
        return torch.cuda.max_memory_allocated() / 2**30
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20  # KiB -> GiB

"""The training loop: one DeepSpeed engine over the Jigsaw model, with logging, validation and checkpoints."""
from __future__ import annotations

import os
import time

import torch
import torch.distributed as dist

from ..config import JigsawConfig
from ..data.dataset import DeviceBatches, PairDataset, ReplicaBatches, make_loader, split_train_val
from ..data.store import WeatherStore
from ..model import WeatherMixer, train_flops_per_sample
from ..parallel import comm_stats
from ..parallel.topology import JigsawMPU, Layout, initialize
from .checkpoint import CheckpointManager
from .layout_free import import_state
from .logger import MetricsLogger
from .loss import AreaWeightedMSE, lat_cell_weights


class Trainer:
    def __init__(self, cfg: JigsawConfig, ds_config: dict, store: WeatherStore, resume: bool = False,
                 init_from: str = ""):
        import deepspeed

        self.cfg, self.store = cfg, store
        layout = Layout.for_world(dist.get_world_size(), cfg.parallel.domain, cfg.parallel.tensor)
        self.groups = groups = initialize(layout)
        self.rank0 = dist.get_rank() == 0
        torch.manual_seed(cfg.train.seed)
        if torch.cuda.is_available():  # fp32 runs only; bf16 matmuls are unaffected
            torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = cfg.train.tf32

        n_state = len(store.channels)
        n_in = n_state + len(store.static_variables) + (3 if cfg.model.coord_features else 0)
        self.model = WeatherMixer(cfg.model, store.n_lat, store.n_lon, n_in, n_state, groups,
                                  tendency_scale=torch.from_numpy(store.tendency_std / store.std), seed=cfg.train.seed)
        part = self.model.partition
        self.lat, self.lon = part.lat_slice(groups.domain_rank), part.lon_slice(groups.tensor_rank)
        weights = torch.from_numpy(lat_cell_weights(store.lat)[self.lat]).float()
        # Errors in units of each channel's one-step tendency std (residual normalisation): persistence
        # scores about 1 on every channel, so no channel dominates just by changing slowly.
        tendency_units = (store.std / store.tendency_std) ** 2
        self.loss_fn = AreaWeightedMSE(weights, store.n_lat, store.n_lon, channel_weights=tendency_units)

        self.engine, *_ = deepspeed.initialize(model=self.model, model_parameters=self.model.parameters(),
                                               config=ds_config, mpu=JigsawMPU(groups))
        self.device = self.engine.device

        span = cfg.data.lead_steps * cfg.train.rollout_steps
        train_starts, val_starts = split_train_val(store, span, cfg.data.val_fraction)
        mk = lambda s: PairDataset(store, s, cfg.data.lead_steps, self.lat, self.lon, cfg.model.coord_features,
                                   cfg.train.rollout_steps)
        self.train_set, self.val_set = mk(train_starts), mk(val_starts)

        self.ckpt = CheckpointManager(os.path.join(cfg.train.out_dir, "checkpoints"), cfg.train.ckpt_keep)
        self.start_step = self.ckpt.load(self.engine) if resume else 0
        self.model_shape = {"n_lat": store.n_lat, "n_lon": store.n_lon, "in_channels": n_in, "out_channels": n_state}
        if init_from and not self.start_step:
            self.start_step = import_state(self.engine, self.model, groups,
                                           torch.load(init_from, map_location="cpu", weights_only=False))
        elif init_from and self.rank0:  # a requeued job: its own checkpoint is newer than the file
            print(f"jigsaw-train: --init-from {init_from} not used: resumed the run's own checkpoint "
                  f"(step {self.start_step})")
        # a K-step rollout runs the model K times per sample, forward and backward
        self.flops_per_step = train_flops_per_sample(cfg.model, store.n_lat, store.n_lon, n_in, n_state) \
            * cfg.train.global_batch * cfg.train.rollout_steps
        self.logger = MetricsLogger(cfg.train.out_dir, enabled=self.rank0, resume_step=self.start_step)
        if self.rank0:
            self.logger.write_config({"jigsaw": cfg.to_dict(), "deepspeed": ds_config, "layout": vars(layout),
                                      "model_shape": self.model_shape,
                                      "channels": [c.name for c in store.channels],
                                      "parameters_per_rank": sum(p.numel() for p in self.model.parameters())})

    # ---- reductions over the replica and the data axis -------------------------------------------------
    def global_mean(self, local_part: torch.Tensor) -> float:
        """Sum a loss's parts over the replica, average over data-parallel replicas (not counted as traffic)."""
        value = local_part.detach().float().clone()
        if self.groups.size("jigsaw") > 1:
            dist.all_reduce(value, group=self.groups.handles["jigsaw"])
        if self.groups.size("data") > 1:
            dist.all_reduce(value, group=self.groups.handles["data"])
            value /= self.groups.size("data")
        return value.item()

    # ---- one optimizer step ----------------------------------------------------------------------------
    def train_step(self, batch) -> float:
        """One optimizer step; with train.rollout_steps = K the loss is the mean over a K-step rollout,
        each prediction fed back with the static channels, gradient through all K steps."""
        x, y = batch  # fp32 on the device: the model casts to its weights' precision (WeatherMixer.forward)
        n_state, k_steps = y.shape[2], y.shape[1]
        loss = 0.0
        for k in range(k_steps):
            pred = self.engine(x)
            loss = loss + self.loss_fn(pred.float(), y[:, k]) / k_steps
            x = torch.cat([pred, x[:, n_state:]], dim=1)
        self.engine.backward(loss)
        self.engine.step()
        return self.global_mean(loss)

    @torch.no_grad()
    def validate(self) -> tuple[float, float]:
        """Model and persistence loss on the first val_batches global batches of the held-out pairs."""
        n_state = len(self.store.channels)
        sampler = ReplicaBatches(len(self.val_set), self.cfg.train.global_batch, self.groups.data_rank,
                                 self.groups.size("data"), seed=0, steps=self.cfg.train.val_batches, shuffle=False)
        model_loss = persistence = 0.0
        for x, y in DeviceBatches(make_loader(self.val_set, sampler, 0, 2), self.device):
            # one-step validation loss (first target of each item)
            model_loss += self.global_mean(self.loss_fn(self.engine(x).float(), y[:, 0]))
            persistence += self.global_mean(self.loss_fn(x[:, :n_state].float(), y[:, 0]))
        n = self.cfg.train.val_batches
        return model_loss / n, persistence / n

    def fit(self) -> None:
        cfg = self.cfg.train
        sampler = ReplicaBatches(len(self.train_set), cfg.global_batch, self.groups.data_rank,
                                 self.groups.size("data"), cfg.seed, start_step=self.start_step,
                                 steps=cfg.steps - self.start_step)
        loader = DeviceBatches(make_loader(self.train_set, sampler, self.cfg.data.num_workers,
                                           self.cfg.data.prefetch_factor), self.device)
        progress = None
        if self.rank0 and cfg.progress:
            from tqdm import tqdm
            progress = tqdm(total=cfg.steps, initial=self.start_step, desc="train", dynamic_ncols=True)
        world = dist.get_world_size()
        for step in range(self.start_step + 1, cfg.steps + 1):
            comm_stats.reset()
            t0 = time.perf_counter()
            batch = next(loader)
            t_data = time.perf_counter() - t0
            lr = self.engine.get_lr()[0]  # the rate this step uses (engine.step advances the schedule)
            loss = self.train_step(batch)
            if torch.cuda.is_available():
                torch.cuda.synchronize()
            dt = time.perf_counter() - t0
            record = {"step": step, "loss": loss, "lr": lr,
                      "grad_norm": _float(self.engine.get_global_grad_norm()),
                      "step_time_s": dt, "samples_per_s": cfg.global_batch / dt,
                      "tflops_per_gpu": self.flops_per_step / dt / world / 1e12,
                      "data_wait_frac": t_data / dt, "peak_mem_gb": _peak_memory_gb(),
                      "comm_bytes": comm_stats.snapshot()}
            if cfg.peak_tflops:
                record["mfu"] = record["tflops_per_gpu"] / cfg.peak_tflops
            if step % cfg.val_every == 0 or step == cfg.steps:
                record["val_loss"], record["val_loss_persistence"] = self.validate()
            if step % cfg.log_every == 0 or "val_loss" in record:
                self.logger.log(record)
            if progress:
                progress.update(1)
                progress.set_postfix(loss=f"{loss:.4f}", **({"val": f"{record['val_loss']:.4f}",
                                                            "persist": f"{record['val_loss_persistence']:.4f}"}
                                                           if "val_loss" in record else {}))
            if (cfg.ckpt_every and step % cfg.ckpt_every == 0) or step == cfg.steps:
                self.ckpt.save(self.engine, step)
        if progress:
            progress.close()
        self.logger.close()


def _float(x):
    if x is None:
        return None
    return float(x.item() if torch.is_tensor(x) else x)


def _peak_memory_gb() -> float:
    if torch.cuda.is_available():
        return torch.cuda.max_memory_allocated() / 2**30
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20  # KiB -> GiB

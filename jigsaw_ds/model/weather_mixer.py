"""WeatherMixer: an MLP-Mixer forecast model whose work grows linearly with the number of grid points.

One module serves the serial model and every Jigsaw layout: with JigsawGroups.serial() every collective
is the identity and every parameter is whole. Shapes (per rank; n = own tokens, B = batch):

  x [B, C_in, h, w]  this rank's tile of the normalised state (+ static and coordinate channels)
  patchify   -> [n, B, C_in p^2]        tokens first: mixing is then W @ X with no transpose
  embed      -> [n, B, D]
  L blocks   -> [n, B, D]               pre-norm residual: token mixing, then channel mixing
  head       -> [n, B, C_out p^2] -> unpatchify -> tendency [B, C_out, h, w]
  returns x[:, :C_out] + tendency_scale * tendency   (the next normalised state)
"""
from __future__ import annotations

from typing import Callable, Optional

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.checkpoint import checkpoint

from ..config import ModelConfig
from ..parallel.layers import (ColumnParallelLinear, LayerNorm, ReplicatedBucket, RowParallelLinear, TokenMixing,
                               TokenwiseLinear, drop_prefetches, prefetch_weights)
from ..parallel.partition import TokenPartition
from ..parallel.topology import JigsawGroups

ACTIVATIONS = {"gelu": F.gelu, "silu": F.silu, "relu": F.relu}


def rollout(step: Callable[[torch.Tensor], torch.Tensor], x: torch.Tensor, steps: int, n_state: int,
            forcings: Optional[torch.Tensor] = None, history: int = 0):
    """Yield `steps` successive states [B, n_state, h, w] from x = [state, its `history` predecessors (newest
    first), constant channels (static fields, coordinates)] [B, C, h, w]: step k's input is [state_k,
    state_k-1, .., state_k-history, constant channels, forcings[:, k]], so each prediction is fed back, the
    oldest state drops out, the constants stay and the forcings advance with time. forcings: [B, >= steps,
    F, h, w] or None (the order of inputs.InputSpec). `step` is any one-step model (a WeatherMixer, its DeepSpeed
    engine, a peer model)."""
    n_states = n_state * (1 + history)
    states, constant = x[:, :n_states], x[:, n_states:]
    for k in range(steps):
        inputs = [states, constant] + ([forcings[:, k]] if forcings is not None and forcings.shape[2] else [])
        state = step(torch.cat(inputs, dim=1))
        states = torch.cat([state, states[:, :n_states - n_state]], dim=1)
        yield state


def ensemble_mean(rollouts):
    """Yield, step by step, the mean over members of their states: the forecast of a seed ensemble (models
    trained alike but for their seed), from one rollout generator per member."""
    for states in zip(*rollouts):
        yield sum(states) / len(states)


class ChannelMixing(nn.Module):
    """Per-token MLP, Megatron tensor parallel with sequence parallelism over the tensor group: column-parallel
    Wc1 on the band all-gathered from the own tokens -> act -> row-parallel Wc2 -> reduce-scatter to own tokens."""

    def __init__(self, dim, hidden, activation, groups, partition):
        super().__init__()
        self.act = activation
        self.fc1 = ColumnParallelLinear(dim, hidden, groups, partition)
        self.fc2 = RowParallelLinear(hidden, dim, groups, partition)

    def forward(self, x, hidden_keep: Optional[torch.Tensor] = None):
        """hidden_keep [1, B, Dc/TP] or None: dropout of this rank's hidden features, the same at every token."""
        h = self.act(self.fc1(x))
        return self.fc2(h if hidden_keep is None else h * hidden_keep)


class MixerBlock(nn.Module):
    def __init__(self, cfg: ModelConfig, groups, partition):
        super().__init__()
        act = ACTIVATIONS[cfg.activation]
        self.token_norm = LayerNorm(cfg.embed_dim, groups, partition)
        self.token_mixing = TokenMixing(cfg.embed_dim, cfg.token_hidden, act, groups, partition)
        self.channel_norm = LayerNorm(cfg.embed_dim, groups, partition)
        self.channel_mixing = ChannelMixing(cfg.embed_dim, cfg.channel_hidden, act, groups, partition)

    def forward(self, x, keep: Optional[torch.Tensor] = None, hidden_keep: Optional[tuple] = None):
        """x [n, B, D]; keep [2, 1, B, 1] or None: per sample, 0 or 1/(1 - rate) on each residual branch
        (stochastic depth; WeatherMixer.drop_path_keep); hidden_keep (token, channel) or None: dropout of the
        mixing MLPs' hidden units (WeatherMixer.dropout_keep)."""
        token_keep, channel_keep = hidden_keep or (None, None)
        t = self.token_mixing(self.token_norm(x), token_keep)
        x = x + (t if keep is None else t * keep[0])
        c = self.channel_mixing(self.channel_norm(x), channel_keep)
        return x + (c if keep is None else c * keep[1])


class WeatherMixer(nn.Module):
    def __init__(self, cfg: ModelConfig, n_lat: int, n_lon: int, in_channels: int, out_channels: int,
                 groups: Optional[JigsawGroups] = None, tendency_scale: Optional[torch.Tensor] = None,
                 seed: int = 0):
        super().__init__()
        self.groups = groups or JigsawGroups.serial()
        layout = self.groups.layout
        self.cfg, self.in_channels, self.out_channels = cfg, in_channels, out_channels
        self.partition = TokenPartition(n_lat, n_lon, cfg.patch, layout.domain, layout.tensor)
        p2 = cfg.patch ** 2
        args = (self.groups, self.partition)
        self.embed = TokenwiseLinear(in_channels * p2, cfg.embed_dim, *args)
        self.blocks = nn.ModuleList(MixerBlock(cfg, *args) for _ in range(cfg.depth))
        self.head_norm = LayerNorm(cfg.embed_dim, *args)
        self.head = TokenwiseLinear(cfg.embed_dim, out_channels * p2, *args)
        self.replicated = ReplicatedBucket.of(self, self.groups)
        scale = torch.ones(out_channels) if tendency_scale is None else torch.as_tensor(tendency_scale).float()
        self.register_buffer("tendency_scale", scale.clone())
        self.reset_parameters(seed)
        self.noise_seed, self._noise_step, self._noise_forward, self._first_sample = seed, 0, 0, None  # start_step

    # ---- parameters: layout-free init and loading of a serial state dict --------------------------------
    def reset_parameters(self, seed: int) -> None:
        """Initialise every parameter as the serial model would, then keep this rank's piece."""
        with torch.no_grad():
            for name, p in self.named_parameters():
                if p.is_meta:  # a model built on the meta device for its shapes only (perf/comm_model.py)
                    continue
                full = p.jigsaw_init.full(p.full_shape, seed, name)
                p.copy_(p.jigsaw_split.local_shard(full, self.groups, self.partition))

    def load_full_state_dict(self, state: dict) -> None:
        """Scatter a serial (full-tensor) state dict into this rank's shards; names and shapes must match."""
        own = dict(self.named_parameters())
        missing = sorted(set(own) - set(state))
        if missing:
            raise KeyError(f"state dict lacks parameters: {', '.join(missing)}")
        with torch.no_grad():
            for name, p in own.items():
                full = state[name]
                if tuple(full.shape) != p.full_shape:
                    raise ValueError(f"parameter '{name}': checkpoint shape {tuple(full.shape)} != model shape "
                                     f"{p.full_shape}")
                p.copy_(p.jigsaw_split.local_shard(full.to(p.dtype), self.groups, self.partition))
            if "tendency_scale" in state:
                self.tendency_scale.copy_(state["tendency_scale"])

    # ---- patches ---------------------------------------------------------------------------------------
    def patchify(self, x: torch.Tensor) -> torch.Tensor:
        """[B, C, h, w] (this rank's real rows) -> [n_own, B, C p^2], padding the last band's rows."""
        p = self.cfg.patch
        pad = self.partition.pad_rows(self.groups.domain_rank)
        if pad:
            x = F.pad(x, (0, 0, 0, pad), mode="replicate")
        b, c, h, w = x.shape
        x = x.reshape(b, c, h // p, p, w // p, p).permute(2, 4, 0, 1, 3, 5)
        return x.reshape((h // p) * (w // p), b, c * p * p)

    def unpatchify(self, tokens: torch.Tensor, h_real: int, w: int) -> torch.Tensor:
        """[n_own, B, C p^2] -> [B, C, h_real, w], dropping padded rows."""
        p = self.cfg.patch
        n, b, cpp = tokens.shape
        c, rows, cols = cpp // (p * p), n // (w // p), w // p
        x = tokens.reshape(rows, cols, b, c, p, p).permute(2, 3, 0, 4, 1, 5)
        return x.reshape(b, c, rows * p, cols * p)[:, :, :h_real]

    # ---- forward ---------------------------------------------------------------------------------------
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.shape[1] != self.in_channels:
            raise ValueError(f"WeatherMixer expects {self.in_channels} input channels, got {x.shape[1]}")
        # Weights may be bf16; the state stays in the caller's precision (fp32): the residual
        # x + scale * tendency would otherwise round the state to 8 bits of mantissa, an error of the
        # order of a one-step change, and the output would carry it into the loss and the next rollout step.
        self.replicated.bind()  # the replicated parameters' gradients: one all-reduce, at the end of backward
        drop_prefetches(self, self.groups)
        # each stage's sharded weights are gathered while the stage before it computes
        stages = [*self.blocks, self.head]
        prefetch_weights(stages[0], self.groups)
        h = self.embed(self.patchify(x.to(self.head_norm.weight.dtype)))
        seeds = self.noise_seeds(x.shape[0])
        keep = self.drop_path_keep(seeds, h.device, h.dtype)
        hidden_keep = self.dropout_keep(seeds, h.device, h.dtype)
        for i, block in enumerate(self.blocks):
            prefetch_weights(stages[i + 1], self.groups)
            masks = (None if keep is None else keep[i], None if hidden_keep is None else hidden_keep[i])
            if self.cfg.activation_checkpointing and torch.is_grad_enabled():
                h = checkpoint(block, h, *masks, use_reentrant=False)  # keep only block inputs; recompute in backward
            else:
                h = block(h, *masks)
        tendency = self.unpatchify(self.head(self.head_norm(h)), x.shape[2], x.shape[3])
        return x[:, :self.out_channels] + self.tendency_scale.view(1, -1, 1, 1) * tendency.to(x.dtype)

    # ---- training noise (model.drop_path, model.dropout) ------------------------------------------------------
    def start_step(self, step: int, first_sample: Optional[int] = None) -> None:
        """The forwards that follow belong to optimizer step `step` (the trainer calls this before each step, and
        before each accumulated micro-batch, whose first sample's index in the global batch is `first_sample`;
        None: this replica's first, data rank x batch).

        Training noise is a function of (seed, step, forward within the step, sample's index in the global
        batch) alone, never of a random stream: so every rank of a replica draws the same, each replica only
        its own samples, any layout drops what one process would, and a run resumed at any layout draws what
        the uninterrupted run drew. Without calls, every forward counts as the next one of step 0."""
        self._noise_step, self._noise_forward, self._first_sample = step, 0, first_sample

    def noise_seeds(self, batch: int) -> Optional[np.ndarray]:
        """[batch, 2] seeds (stochastic depth, dropout) of this replica's samples for this forward, or None
        (no noise configured, or not training). Each call is the next forward of the step."""
        if not ((self.cfg.drop_path or self.cfg.dropout) and self.training and torch.is_grad_enabled()):
            return None
        step, forward = self._noise_step, self._noise_forward
        self._noise_forward += 1
        first = self.groups.data_rank * batch if self._first_sample is None else self._first_sample
        samples = range(first, first + batch)
        seeds = [np.random.SeedSequence([self.noise_seed, step, forward, g]).generate_state(2, np.uint64)
                 for g in samples]
        return np.stack(seeds) >> np.uint64(1)  # 63 bits: what manual_seed takes

    def drop_path_keep(self, seeds: Optional[np.ndarray], device, dtype) -> Optional[torch.Tensor]:
        """Stochastic depth masks [depth, 2, 1, batch, 1] for this forward (noise_seeds), or None: per sample,
        block i's two branches each kept with probability 1 - drop_path (i + 1) / depth, scaled by its inverse.
        Drawn before the blocks run, so activation checkpointing recomputes a block with the same mask."""
        if seeds is None or not self.cfg.drop_path:
            return None
        depth = len(self.blocks)
        rate = self.cfg.drop_path * torch.arange(1, depth + 1, dtype=torch.float64) / depth
        u = torch.stack([torch.rand(depth, 2, dtype=torch.float64, generator=torch.Generator().manual_seed(int(s)))
                         for s in seeds[:, 0]], dim=-1)                                    # [depth, 2, batch]
        keep = (u >= rate[:, None, None]).to(torch.float64) / (1 - rate[:, None, None])
        return keep.to(device, dtype)[:, :, None, :, None]

    def dropout_keep(self, seeds: Optional[np.ndarray], device, dtype) -> Optional[list]:
        """Dropout masks (model.dropout = p) for this forward (noise_seeds): per block (token [Dt, B*D],
        channel [1, B, Dc/TP]), entries 0 or 1/(1 - p); or None.

        The unit dropped is a hidden unit of a sample: token mixing's (j, channel d), which every rank of a
        replica holds whole, and channel mixing's feature k at every token of the sample (a per-element mask
        over N tokens would be as large as the activations, and the same for any split only if drawn for the
        whole field); each tensor rank keeps its features. Drawn on `device` from a generator per sample, so
        layouts agree on the same kind of device. (In bf16 the scale 1/(1 - p) is rounded, as drop_path's is:
        a bias under 0.2% for p <= 0.3.)"""
        p = self.cfg.dropout
        if seeds is None or not p:
            return None
        depth, dt, d, dc = len(self.blocks), self.cfg.token_hidden, self.cfg.embed_dim, self.cfg.channel_hidden
        tp, t, batch = self.groups.size("tensor"), self.groups.tensor_rank, len(seeds)
        token = torch.empty(depth, dt, batch, d, device=device)
        channel = torch.empty(depth, batch, dc, device=device)
        for b, s in enumerate(seeds[:, 1]):
            g = torch.Generator(device).manual_seed(int(s))
            token[:, :, b].bernoulli_(1 - p, generator=g)
            channel[:, b].bernoulli_(1 - p, generator=g)
        token = (token / (1 - p)).to(dtype).view(depth, dt, batch * d)                   # [L, Dt, B*D]
        channel = (channel[..., t * dc // tp:(t + 1) * dc // tp] / (1 - p)).to(dtype)  # [L, B, Dc/TP]
        return [(token[i], channel[i][None]) for i in range(depth)]

    def collectives(self, micro_batch: int) -> list[tuple[str, int, str]]:
        """What the model itself issues besides its layers (perf/comm_model.py walks it): the bucket's sum."""
        return self.replicated.collectives()

    def rollout(self, x: torch.Tensor, steps: int, forcings: Optional[torch.Tensor] = None,
                step: Optional[Callable] = None):
        """Yield the next `steps` states from x and the forcings (see `rollout`); `step` runs the model (default:
        this module; the trainer passes its DeepSpeed engine, which wraps it)."""
        return rollout(step or self, x, steps, self.out_channels, forcings, self.cfg.history_steps)

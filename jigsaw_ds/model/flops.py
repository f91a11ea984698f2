"""Model FLOPs of WeatherMixer from its config (matrix multiplies only, 2 FLOPs per multiply-add).

Per sample, with N tokens, D, Dt, Dc, L blocks, p patch and C_in/C_out channels:
  embed      2 N (C_in p^2) D
  per block  token mixing 2 * 2 N D Dt   +   channel mixing 2 * 2 N D Dc
  head       2 N D (C_out p^2)
Training (forward + backward) is 3x forward. Norms, activations and biases are O(N D) and left out,
as torch.utils.flop_counter does.
"""
from __future__ import annotations

from ..config import ModelConfig
from ..parallel.partition import token_grid


def n_tokens(n_lat: int, n_lon: int, patch: int) -> int:
    rows, cols = token_grid(n_lat, n_lon, patch)
    return rows * cols


def forward_flops_per_sample(cfg: ModelConfig, n_lat: int, n_lon: int, in_channels: int, out_channels: int) -> int:
    n, d, p2 = n_tokens(n_lat, n_lon, cfg.patch), cfg.embed_dim, cfg.patch ** 2
    embed = 2 * n * in_channels * p2 * d
    blocks = cfg.depth * 4 * n * d * (cfg.token_hidden + cfg.channel_hidden)
    head = 2 * n * d * out_channels * p2
    return embed + blocks + head


def train_flops_per_sample(cfg: ModelConfig, n_lat: int, n_lon: int, in_channels: int, out_channels: int) -> int:
    return 3 * forward_flops_per_sample(cfg, n_lat, n_lon, in_channels, out_channels)

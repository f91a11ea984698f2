"""Which piece of the globe each rank of a model replica owns.

The grid (n_lat x n_lon pixels) is cut into p x p patches: token_rows = ceil(n_lat / p) rows of
token_cols = n_lon / p tokens, numbered row-major. Latitudes are padded at the end of the latitude axis
(the south edge of a north-to-south grid) by repeating the last row, so 721 rows with p = 4 become 724;
the padded rows carry zero loss weight and are cropped from the output. Longitudes are not padded.

Rule for the split over a replica of domain x tensor ranks:
  - token rows are split over the domain axis as evenly as possible, the first (rows % domain) ranks
    taking one extra row (numpy.array_split's rule): uneven splits are allowed;
  - token columns are split evenly over the tensor axis (a longitude tile each): token_cols must be
    divisible by the tensor size, because the channel-mixing all-gather over the tensor group needs
    equal pieces.
So rank (d, t) owns the tile rows_of(d) x cols_of(t), and reads only those pixels from disk.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import torch

from ..errors import ConfigError


def token_grid(n_lat: int, n_lon: int, patch: int) -> tuple[int, int]:
    """(token_rows, token_cols): latitudes padded up to whole patches, longitudes not (the globe is periodic)."""
    return -(-n_lat // patch), n_lon // patch


def split_problems(n_lat: int, n_lon: int, patch: int, domain: int, tensor: int,
                   channel_hidden: Optional[int] = None) -> list[tuple[str, str]]:
    """Why a grid cannot be split over domain x tensor ranks, as (config key, reason) pairs; empty if it can.
    The one home of these rules: the config check, TokenPartition and the planner all ask here."""
    rows, cols = token_grid(n_lat, n_lon, patch)
    grid = f"the grid {n_lat}x{n_lon} with patch {patch}"
    out = []
    if patch > n_lat or patch > n_lon:
        out.append(("model.patch", f"{patch} is larger than the grid {n_lat}x{n_lon}"))
    elif n_lon % patch:
        valid = [p for p in range(1, min(n_lat, n_lon, 64) + 1) if n_lon % p == 0]
        out.append(("model.patch", f"{patch} does not divide the {n_lon} longitudes of the grid {n_lat}x{n_lon} "
                                   f"(latitudes are padded, longitudes are not: the globe is periodic); patches "
                                   f"that do: {', '.join(map(str, valid))}"))
    else:
        if domain > rows:
            out.append(("parallel.domain", f"{domain} exceeds the {rows} token rows of {grid}"))
        if cols % tensor:
            out.append(("parallel.tensor", f"{tensor} must divide the {cols} token columns of {grid} "
                                           f"(longitude tiles are even)"))
    if channel_hidden is not None and channel_hidden % tensor:
        out.append(("model.channel_hidden", f"{channel_hidden} must be divisible by 'parallel.tensor' = {tensor}"))
    return out


@dataclass(frozen=True)
class TokenPartition:
    n_lat: int
    n_lon: int
    patch: int
    domain: int = 1
    tensor: int = 1

    def __post_init__(self):
        problems = split_problems(self.n_lat, self.n_lon, self.patch, self.domain, self.tensor)
        if problems:
            raise ConfigError("; ".join(f"{key} = {why}" for key, why in problems))

    @property
    def token_rows(self) -> int:
        return token_grid(self.n_lat, self.n_lon, self.patch)[0]

    @property
    def token_cols(self) -> int:
        return token_grid(self.n_lat, self.n_lon, self.patch)[1]

    @property
    def n_tokens(self) -> int:
        return self.token_rows * self.token_cols

    def rows_of(self, d: int) -> tuple[int, int]:
        """Token rows [start, stop) of domain rank d."""
        base, extra = divmod(self.token_rows, self.domain)
        start = d * base + min(d, extra)
        return start, start + base + (1 if d < extra else 0)

    def cols_of(self, t: int) -> tuple[int, int]:
        """Token columns [start, stop) of tensor rank t."""
        width = self.token_cols // self.tensor
        return t * width, (t + 1) * width

    def token_index(self, d: int, t: int) -> torch.Tensor:
        """Global (row-major) indices of the tokens rank (d, t) owns, in the order it holds them."""
        r0, r1 = self.rows_of(d)
        c0, c1 = self.cols_of(t)
        rows = torch.arange(r0, r1).unsqueeze(1) * self.token_cols
        return (rows + torch.arange(c0, c1).unsqueeze(0)).reshape(-1)

    def n_tokens_of(self, d: int, t: int) -> int:
        r0, r1 = self.rows_of(d)
        c0, c1 = self.cols_of(t)
        return (r1 - r0) * (c1 - c0)

    def lat_slice(self, d: int) -> slice:
        """Real (unpadded) pixel rows rank d reads."""
        r0, r1 = self.rows_of(d)
        return slice(min(r0 * self.patch, self.n_lat), min(r1 * self.patch, self.n_lat))

    def lon_slice(self, t: int) -> slice:
        c0, c1 = self.cols_of(t)
        return slice(c0 * self.patch, c1 * self.patch)

    def pad_rows(self, d: int) -> int:
        """Rows of padding rank d appends below its real rows (non-zero only for the last band)."""
        r0, r1 = self.rows_of(d)
        s = self.lat_slice(d)
        return (r1 - r0) * self.patch - (s.stop - s.start)

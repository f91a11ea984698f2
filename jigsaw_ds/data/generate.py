"""Make a store from a generator spec (the `data.generate` config section and the jigsaw-data CLI)."""
from __future__ import annotations

from .writer import write_store


def from_spec(spec: dict, out: str) -> str:
    kind = spec.get("kind")
    grid = spec.get("grid", [33, 64])
    if kind == "synth":
        from .synth import synth_dataset

        ds = synth_dataset(grid[0], grid[1], int(spec.get("times", 400)), seed=int(spec.get("seed", 0)))
    elif kind == "swe":
        from .swe import swe_dataset

        ds = swe_dataset(grid[0], grid[1], int(spec.get("trajectories", 8)), int(spec.get("steps", 40)),
                         seed=int(spec.get("seed", 0)))
    else:
        raise ValueError(f"data.generate.kind {kind!r}: allowed synth, swe")
    return write_store(ds, out)

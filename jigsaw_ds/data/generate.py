"""Make a store from a generator spec (the `data.generate` config section and the jigsaw-data CLI)."""
from __future__ import annotations

from .writer import write_store


def from_spec(spec: dict, out: str) -> str:
    """spec: {"kind": "synth" | "swe", other keys as config.GENERATE_DEFAULTS (missing ones take its defaults)};
    a bad spec raises ConfigError before anything is generated."""
    from ..config import GENERATE_DEFAULTS, check_generate_spec

    check_generate_spec(spec)
    kind = spec["kind"]
    spec = {**GENERATE_DEFAULTS[kind], **spec}
    n_lat, n_lon = spec["grid"]
    if kind == "synth":
        from .synth import synth_dataset

        ds = synth_dataset(n_lat, n_lon, int(spec["times"]), seed=int(spec["seed"]))
    else:
        from .swe import swe_dataset

        ds = swe_dataset(n_lat, n_lon, int(spec["trajectories"]), int(spec["steps"]), seed=int(spec["seed"]))
    return write_store(ds, out)

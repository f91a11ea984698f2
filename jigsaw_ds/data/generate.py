"""Make a store from a generator spec (the `data.generate` config section and the jigsaw-data CLI)."""
from __future__ import annotations

from ..errors import MissingLibrary  # noqa: F401 (raised by the generators; importable from here too)
from .writer import write_store


def generated_grid(spec: dict) -> tuple[int, int]:
    """(n_lat, n_lon) of the store a data.generate spec makes, without making it."""
    from ..config import GENERATE_DEFAULTS

    spec = {**GENERATE_DEFAULTS[spec["kind"]], **spec}
    if spec["kind"] == "held-suarez":
        from .held_suarez import TRUNCATIONS

        return TRUNCATIONS[spec["truncation"]][0]
    return tuple(spec["grid"])


def schema(kind: str) -> dict:
    """What a generator writes: upper-air variables, their levels, surface variables, static fields."""
    if kind == "synth":
        from .synth import LEVELS, SURFACE, UPPER

        return {"variables": list(UPPER), "levels": list(LEVELS), "surface_variables": list(SURFACE),
                "static_variables": ["land_sea_mask", "geopotential_at_surface"]}
    if kind == "held-suarez":
        from .held_suarez import LEVELS, SURFACE, UPPER

        return {"variables": list(UPPER), "levels": list(LEVELS), "surface_variables": list(SURFACE),
                "static_variables": []}
    from .swe import LEVEL, VARIABLES

    return {"variables": list(VARIABLES), "levels": [LEVEL], "surface_variables": [], "static_variables": []}


def check_config(cfg) -> None:
    """A config that asks for a generated store must select what the generator writes: checked before the
    (possibly long) generation, with the error the store check would give afterwards."""
    from ..config import ConfigError

    kind = cfg.data.generate["kind"]
    made = schema(kind)
    for section, key, made_key in (("data", "variables", "variables"), ("data", "surface_variables", "surface_variables"),
                                   ("data", "levels", "levels"), ("model", "static_variables", "static_variables")):
        missing = [v for v in getattr(getattr(cfg, section), key) if v not in made[made_key]]
        if missing:
            raise ConfigError(f"config key '{section}.{key}' lists {missing}, which data.generate kind '{kind}' does "
                              f"not write; it writes {made[made_key]}")


def from_spec(spec: dict, out: str) -> str:
    """spec: {"kind": "synth" | "swe" | "held-suarez", other keys as config.GENERATE_DEFAULTS (missing ones take
    its defaults)}; a bad spec raises ConfigError before anything is generated."""
    from ..config import GENERATE_DEFAULTS, check_generate_spec

    check_generate_spec(spec)
    kind = spec["kind"]
    spec = {k: v for k, v in {**GENERATE_DEFAULTS[kind], **spec}.items() if k != "kind"}

    def say(what: str) -> None:  # one line before the slow part: what it is doing
        print(f"{kind}: {what}, for {out}", flush=True)

    if kind == "synth":
        say(f"making {spec['times']} times of travelling waves on a {spec['grid'][0]}x{spec['grid'][1]} grid")
        from .synth import synth_lazy

        ds = synth_lazy(*spec["grid"], spec["times"], seed=spec["seed"])  # made as written: a block in memory
    elif kind == "swe":
        say(f"running torch-harmonics' shallow-water solver: {spec['trajectories']} trajectories of "
            f"{spec['steps']} 6-hourly steps on a {spec['grid'][0]}x{spec['grid'][1]} grid")
        from .swe import swe_dataset

        ds = swe_dataset(*spec["grid"], spec["trajectories"], spec["steps"], seed=spec["seed"])
    else:
        say(f"running dinosaur's primitive equations with Held-Suarez forcing at T{spec['truncation']}: "
            f"{spec['spinup']} days of spin-up, then {spec['trajectories']} runs of {spec['steps']} 6-hourly "
            f"records {spec['gap']} days apart")
        from .held_suarez import held_suarez_dataset

        ds = held_suarez_dataset(**spec)
    return write_store(ds, out)

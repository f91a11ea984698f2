"""What a trained model reads, defined once: checked wherever a model continues (jigsaw-train --resume,
--init-from), is combined with others (jigsaw-eval's ensemble members) or meets a store (jigsaw-eval).

A model's weights fit one set of inputs: the config keys of INPUT_KEYS, the channel names in their order
(`channels` of a run config), and the grid: its size, its latitude and longitude values and the store's time
step (`model_shape` of a run config: train/run.Run writes them to config.json and every checkpoint's
jigsaw.json). Weights continue only at the same width (WIDTH_KEYS). A record without coordinates (written
before they were recorded) is compared by grid size only.
A store that holds the trained grid in another exact order (reorder_of: latitudes reversed, longitudes
rolled) is read in the trained order by jigsaw-eval; training refuses it, naming the reorder.

InputSpec is the same definition as an object: the channels in their order and how each step's input is
stacked from them. It counts the model's input channels (ModelShape's c_in) and builds the samples
(`pairs`: the PairDataset of a tile) for the trainer, the evaluation and the benchmarks.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional, Sequence

import numpy as np

from .. import forcings as forcing_kinds
from ..config import DataConfig, JigsawConfig, ModelConfig
from ..errors import InputsDiffer
from ..grid import N_COORD_FEATURES

# what and how the model reads (the variables and levels are in `channels`, as the store resolved them)
INPUT_KEYS = ("model.patch", "model.history_steps", "model.static_variables", "model.coord_features",
              "model.forcings", "model.forcings_at_target", "data.lead_steps")
# the store: the channels, the grid and the time step the model steps by (data.lead_steps of them)
STORE_KEYS = ("channels", "grid", "latitude", "longitude", "time_step_hours")
# the shape and function of the weights
WIDTH_KEYS = ("model.embed_dim", "model.token_hidden", "model.channel_hidden", "model.depth", "model.activation")
CONTINUE_KEYS = INPUT_KEYS + STORE_KEYS + WIDTH_KEYS  # --resume, --init-from
# the held-out times: an ensemble is scored on its first member's, which the others must not have trained on
MEMBER_KEYS = INPUT_KEYS + STORE_KEYS + ("data.val_fraction",)

COORD_TOLERANCE = 1e-4  # degrees: float32 against float64 coordinates, far below any grid spacing


@dataclass(frozen=True)
class InputSpec:
    """What a model reads at each step, in the order model.rollout stacks it: the state (`channels`), its
    `history` predecessors `lead` store steps apart (newest first), the static fields, the coordinate
    features, then the step's forcings (and its target time's, with `forcings_at_target`)."""
    channels: tuple[str, ...]
    static_variables: tuple[str, ...] = ()
    coord_features: bool = False
    forcings: tuple[str, ...] = ()
    forcings_at_target: bool = False
    history: int = 0
    lead: int = 1

    @classmethod
    def of(cls, cfg: JigsawConfig, channels: Sequence[str]) -> "InputSpec":
        """A config's inputs on `channels`: a store's channel names, or the ones a run was trained on."""
        m = cfg.model
        return cls(tuple(channels), tuple(m.static_variables), m.coord_features, tuple(m.forcings),
                   m.forcings_at_target, m.history_steps, cfg.data.lead_steps)

    @property
    def n_state(self) -> int:
        return len(self.channels)

    @property
    def n_states(self) -> int:
        """The state and its history: the leading channels, which a rollout feeds back."""
        return self.n_state * (1 + self.history)

    @property
    def n_in(self) -> int:
        """The model's input channels (C_in)."""
        return self.n_states + len(self.static_variables) + (N_COORD_FEATURES if self.coord_features else 0) \
            + forcing_kinds.n_channels(self.forcings, self.forcings_at_target)

    def pairs(self, store, starts, lat: slice, lon: slice, rollout: int = 1):
        """The samples from `store` starting at the time indices `starts`, on the tile (lat, lon), with
        `rollout` targets each (0: inputs only, for a forecast): a data.PairDataset."""
        from ..data.dataset import PairDataset

        given = ([c.name for c in store.channels], list(store.static_variables))
        if given != (list(self.channels), list(self.static_variables)):  # checked before: check_same, of_store
            raise ValueError(f"store channels {given} are not the inputs' {self.channels, self.static_variables}")
        return PairDataset(store, starts, self.lead, lat, lon, self.coord_features, rollout, self.forcings,
                           self.forcings_at_target, self.history)


def grid_of(store) -> dict:
    """A store's grid as a run config records it (in `model_shape`); a store of one time has no time step."""
    return {"latitude": [float(v) for v in store.lat], "longitude": [float(v) for v in store.lon],
            "time_step_hours": float(store.time_step / np.timedelta64(1, "h")) or None}


def of_store(store) -> dict:
    """The record of what a store gives (STORE_KEYS)."""
    return {"channels": [c.name for c in store.channels], "grid": f"{store.n_lat}x{store.n_lon}", **grid_of(store)}


def of_run(run_config: dict) -> dict:
    """The record of a resolved run config (config.json, a checkpoint's jigsaw.json, a layout-free file's
    config): every key of CONTINUE_KEYS it holds; a config key it lacks has its default."""
    defaults = {"model": ModelConfig(), "data": DataConfig()}
    record = {}
    for key in INPUT_KEYS + WIDTH_KEYS + ("data.val_fraction",):
        section, name = key.split(".")
        record[key] = run_config["jigsaw"].get(section, {}).get(name, getattr(defaults[section], name))
    shape = run_config.get("model_shape", {})
    record.update(channels=run_config.get("channels"),
                  grid=f"{shape['n_lat']}x{shape['n_lon']}" if "n_lat" in shape else None,
                  **{key: shape.get(key) for key in ("latitude", "longitude", "time_step_hours")})
    return record


def check_same(trained: dict, given: dict, keys: tuple, subject: str, trained_as: str = "trained with",
               tail: str = "") -> None:
    """Raise InputsDiffer "{subject} has 'key' = B, {trained_as} A; ...{tail}" naming every key of `keys`
    where the records differ (a key that either record lacks, or holds as None, is not compared)."""
    found, differ = [], set()
    for key in keys:
        a, b = trained.get(key), given.get(key)
        if a is None or b is None or _same(key, a, b) or (key in ("latitude", "longitude") and "grid" in differ):
            continue  # on a grid of another size, the coordinates differ too: the size says it
        differ.add(key)
        found.append(f"'{key}' = {_show(key, b)}, {trained_as} {_show(key, a)}{_reorder(key, a, b)}")
    if found:
        raise InputsDiffer(f"{subject} has " + "; ".join(found) + tail)


def _same(key: str, a, b) -> bool:
    if key == "longitude":
        return len(a) == len(b) and bool(np.all(np.abs(_circular(np.subtract(a, b))) <= COORD_TOLERANCE))
    if key == "latitude":
        return len(a) == len(b) and bool(np.allclose(a, b, rtol=0, atol=COORD_TOLERANCE))
    return a == b


def _circular(delta: np.ndarray) -> np.ndarray:
    """Longitude differences in -180..180 (0 and 360 are one meridian)."""
    return (np.asarray(delta) + 180.0) % 360.0 - 180.0


def _show(key: str, value) -> str:
    if key in ("latitude", "longitude"):
        return f"{value[0]:g}..{value[-1]:g} ({len(value)} points)"
    return value if key == "grid" else repr(value)


def _reorder(key: str, trained, given) -> str:
    """Where the store holds the trained grid's points in another order, what reorders it (training reads
    tiles in the trained order: the store must be in it; evaluation reorders it, reorder_of)."""
    if key == "latitude" and _reversed(trained, given):
        return (" (the trained latitudes reversed: write the store in the trained order, e.g. "
                "ds.isel(latitude=slice(None, None, -1)))")
    if key == "longitude":
        shift = rolled_by(trained, given)
        if shift is not None:
            return (f" (the trained longitudes rolled by {shift} columns: write the store in the trained order, "
                    f"e.g. ds.roll(longitude={-shift}, roll_coords=True) with longitudes taken modulo 360)")
    return ""


def rolled_by(trained, given) -> Optional[int]:
    """r where `given` is `trained` rolled by r columns (modulo 360 degrees), else None."""
    trained, given = np.asarray(trained), np.asarray(given)
    if len(trained) != len(given) or not len(given):
        return None
    for r in np.flatnonzero(np.abs(_circular(trained - given[0])) <= COORD_TOLERANCE):
        shift = -int(r) % len(trained)
        if np.all(np.abs(_circular(np.roll(trained, shift) - given)) <= COORD_TOLERANCE):
            return shift
    return None


def _reversed(trained, given) -> bool:
    """`given` latitudes are the `trained` ones in reverse order (WB2's ERA5 ascending, CDS's descending)."""
    return len(trained) == len(given) and _same("latitude", trained, list(given)[::-1])


def reorder_of(trained: dict, given: dict) -> Optional[tuple[bool, int]]:
    """(flip_lat, lon_shift) where the grid of record `given` (of_store) holds the points of `trained`'s
    (of_run) in another exact order: its latitudes reversed (flip_lat) and its longitudes rolled, trained column
    j being given's column (j + lon_shift) mod n (WeatherStore.reorder then reads in the trained order);
    (False, 0) where the order is the same; None where the coordinates differ otherwise or a record lacks them."""
    lat, lon = (trained.get(key) for key in ("latitude", "longitude"))
    given_lat, given_lon = (given.get(key) for key in ("latitude", "longitude"))
    if lat is None or lon is None or given_lat is None or given_lon is None:
        return None
    if _same("latitude", lat, given_lat):
        flip = False
    elif _reversed(lat, given_lat):
        flip = True
    else:
        return None
    shift = rolled_by(lon, given_lon)
    return None if shift is None else (flip, shift)

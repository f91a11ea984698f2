"""The jigsaw config: model, data, parallel and train sections, validated before any work starts.

A config is a JSON file whose sections map onto the dataclasses below. Every key is checked: an unknown
key, a wrong type or an impossible value raises one ConfigError naming the key and what is allowed,
before any process group, file or directory exists. `--set section.key=value` overrides any value.
"""
from __future__ import annotations

import dataclasses
import difflib
import json
import math
from dataclasses import dataclass, field
from typing import Optional

from .errors import ConfigError


@dataclass
class ModelConfig:
    patch: int = 4                      # p: tokens are p x p pixel patches
    embed_dim: int = 64                 # D: channels per token
    token_hidden: int = 64              # Dt: hidden width of token mixing
    channel_hidden: int = 128           # Dc: hidden width of channel mixing
    depth: int = 2                      # L: mixer blocks
    activation: str = "gelu"            # gelu | silu | relu
    static_variables: list = field(default_factory=list)  # static store fields fed as inputs
    coord_features: bool = True         # add sin(lat), cos(lat)cos(lon), cos(lat)sin(lon) as inputs
    activation_checkpointing: bool = False  # recompute each block in backward: activations L n B D instead of per block
    forcings: list = field(default_factory=list)  # computed inputs: toa_solar, time_of_day, day_of_year (jigsaw_ds/forcings.py)
    forcings_at_target: bool = False    # the forcings at the target (valid) time as well as at the input time
    drop_path: float = 0.0              # stochastic depth in training: block i's residual branches are skipped per
                                        # sample with probability drop_path (i + 1) / depth (0: off)
    dropout: float = 0.0                # dropout of the mixing MLPs' hidden units in training, per sample: token
                                        # mixing's unit (j, channel d), channel mixing's unit k at every token (0: off)
    history_steps: int = 0              # input history: the states 1..h model steps (data.lead_steps each) before
                                        # the input time as extra input channels (0: the current state only)


@dataclass
class DataConfig:
    store: str = ""                     # path of the zarr store
    variables: list = field(default_factory=list)   # upper-air variables (time, level, lat, lon)
    surface_variables: list = field(default_factory=list)  # (time, lat, lon)
    levels: list = field(default_factory=list)      # hPa; empty = all levels in the store
    lead_steps: int = 1                 # target = state this many store time steps later
    val_fraction: float = 0.2           # last fraction of times (or trajectories) held out
    num_workers: int = 0                # 0: read on threads of each rank's process into a ring of reused (pinned)
                                        # buffers (data/dataset.Loader); N > 0: N DataLoader worker processes instead
    read_threads: int = 0               # chunk decode threads per reading process; 0: its cores / num_workers
    prefetch_factor: int = 2            # batches read ahead of the step (the ring holds prefetch_factor + 1)
    lon_roll: bool = False              # augmentation: roll each training sample (state, targets, static fields,
                                        # forcings) by a random whole number of longitude columns; the coordinate
                                        # features stay. Only for longitude-invariant dynamics (the aquaplanet
                                        # shallow water), not ERA5, whose orography fixes where weather happens
    generate: dict = field(default_factory=dict)  # if set and the store is missing: make it (see data.generate)


@dataclass
class ParallelConfig:
    domain: int = 1                     # DD: ranks splitting the field (latitude bands)
    tensor: int = 1                     # TP: ranks splitting weights (and longitude tiles)


@dataclass
class TrainConfig:
    steps: int = 100
    global_batch: int = 4               # samples per optimizer step, over all data-parallel replicas
    micro_batch: int = 0                # samples per forward/backward of one replica; its share of the global batch
                                        # in share / micro_batch accumulated micro-batches (0: the whole share at once)
    seed: int = 0
    out_dir: str = "runs/default"
    log_every: int = 1
    val_every: int = 50
    val_batches: int = 4
    ckpt_every: int = 0                 # 0 = only at the end
    ckpt_keep: int = 2
    rollout_steps: int = 1              # K > 1: K-step autoregressive loss, gradient through the rollout
    peak_tflops: float = 0.0            # per-GPU peak TFLOP/s for MFU in metrics (0: not logged), e.g. 989 H100 bf16
    progress: bool = True
    tf32: bool = True                   # on NVIDIA GPUs, fp32 matmuls on TF32 tensor cores (the rate machine files assume)
    warmup_fraction: float = 0.04       # the DeepSpeed LR schedule's warm-up: round(fraction x steps) steps, at least 2
                                        # (500 steps: 20); its length is train.steps (train/run.load_deepspeed_config)


@dataclass
class JigsawConfig:
    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    parallel: ParallelConfig = field(default_factory=ParallelConfig)
    train: TrainConfig = field(default_factory=TrainConfig)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


ALLOWED = {
    ("model", "activation"): ("gelu", "silu", "relu"),
}
# Every numeric key's range, checked by `number` (the assert at the end of this file: no int or float key is
# left out).
RANGES = {
    **{("model", key): {"ge": 1} for key in ("patch", "embed_dim", "token_hidden", "channel_hidden", "depth")},
    ("model", "history_steps"): {"ge": 0},
    ("model", "drop_path"): {"ge": 0, "lt": 1},
    ("model", "dropout"): {"ge": 0, "lt": 1},
    ("data", "lead_steps"): {"ge": 1},
    ("data", "prefetch_factor"): {"ge": 1},
    ("data", "num_workers"): {"ge": 0},
    ("data", "read_threads"): {"ge": 0},
    ("data", "val_fraction"): {"gt": 0, "lt": 1},
    ("parallel", "domain"): {"ge": 1},
    ("parallel", "tensor"): {"ge": 1},
    **{("train", key): {"ge": 1} for key in ("steps", "global_batch", "log_every", "val_every", "val_batches",
                                             "ckpt_keep", "rollout_steps")},
    ("train", "ckpt_every"): {"ge": 0},
    ("train", "micro_batch"): {"ge": 0},
    ("train", "seed"): {"ge": 0},
    ("train", "peak_tflops"): {"ge": 0},
    ("train", "warmup_fraction"): {"ge": 0, "le": 1},
}
INT64_MAX = 2**63 - 1  # numpy and torch take integers (seeds, sizes) up to this
# data.generate: each kind's keys with their defaults (data/generate.py reads them from here).
GENERATE_DEFAULTS = {
    "synth": {"grid": [33, 64], "times": 400, "seed": 0},
    "swe": {"grid": [33, 64], "trajectories": 8, "steps": 40, "seed": 0},
    # spinup and gap in days; truncation one of data/held_suarez.py's TRUNCATIONS
    "held-suarez": {"truncation": 21, "layers": 8, "trajectories": 8, "steps": 40, "spinup": 200, "gap": 5, "seed": 0},
}
GENERATE_MAY_BE_ZERO = ("seed", "gap")


def _type_ok(value, annotation: str) -> bool:
    kind = {"int": int, "float": (int, float), "str": str, "bool": bool, "list": list, "dict": dict}[annotation]
    if annotation in ("int", "float") and isinstance(value, bool):
        return False
    return isinstance(value, kind)


def number(value, what: str, integer: bool = False, ge=None, gt=None, le=None, lt=None):
    """The one check of a numeric value in the configs (jigsaw and DeepSpeed): a finite number (an integer
    within int64 if `integer`; never a bool or a string) within the bounds given; else a ConfigError naming
    `what` (the key)."""
    lo, hi = (ge if ge is not None else gt), (le if le is not None else lt)
    if lo is not None and hi is not None:
        bounds = f" in {'[' if ge is not None else '('}{lo}, {hi}{']' if le is not None else ')'}"
    elif lo is not None:
        bounds = f" {'>=' if ge is not None else '>'} {lo}"
    elif hi is not None:
        bounds = f" {'<=' if le is not None else '<'} {hi}"
    else:
        bounds = ""
    kind = "a finite number"
    if integer:
        ok = _type_ok(value, "int") and -INT64_MAX - 1 <= value <= INT64_MAX
        kind = "an integer" if not _type_ok(value, "int") or ok else "an integer within int64 (|x| < 2**63)"
    else:
        try:  # NaN compares False both ways, so it would pass a `value < 0` test; a huge int overflows a float
            ok = _type_ok(value, "float") and math.isfinite(value)
        except OverflowError:
            ok = False
    ok = ok and (ge is None or value >= ge) and (gt is None or value > gt) and (le is None or value <= le) \
        and (lt is None or value < lt)
    if not ok:
        raise ConfigError(f"{what} must be {kind}{bounds}, got {value!r}")
    return value


def _suggest(key, allowed) -> str:
    close = difflib.get_close_matches(key, list(allowed), n=1)
    return f" (did you mean '{close[0]}'?)" if close else ""


def from_dict(raw: dict) -> JigsawConfig:
    """Build a config from nested dicts, checking every key and type."""
    if not isinstance(raw, dict):
        raise ConfigError("the config must be a JSON object with sections model, data, parallel, train")
    cfg = JigsawConfig()
    sections = {f.name: f for f in dataclasses.fields(JigsawConfig)}
    for sec_name, sec_raw in raw.items():
        if sec_name not in sections:
            raise ConfigError(f"unknown config section '{sec_name}'{_suggest(sec_name, sections)}; "
                              f"allowed: {', '.join(sections)}")
        if not isinstance(sec_raw, dict):
            raise ConfigError(f"config section '{sec_name}' must be an object, got {type(sec_raw).__name__}")
        section = getattr(cfg, sec_name)
        fields = {f.name: f for f in dataclasses.fields(section)}
        for key, value in sec_raw.items():
            if key not in fields:
                raise ConfigError(f"unknown config key '{sec_name}.{key}'{_suggest(key, fields)}; "
                                  f"allowed: {', '.join(fields)}")
            annotation = fields[key].type
            if not _type_ok(value, annotation):
                raise ConfigError(f"config key '{sec_name}.{key}' must be {annotation}, got {value!r}")
            if annotation == "float":
                value = float(value)
            setattr(section, key, value)
    validate(cfg)
    return cfg


def _parse_value(text: str):
    try:
        return json.loads(text)
    except json.JSONDecodeError:
        return text  # a bare string such as a path


def apply_overrides(raw: dict, overrides: list[str]) -> dict:
    """Apply `section.key=value` strings (value parsed as JSON, else taken as a string)."""
    for item in overrides or []:
        if "=" not in item or "." not in item.split("=", 1)[0]:
            raise ConfigError(f"--set takes section.key=value, got '{item}'")
        path, value = item.split("=", 1)
        section, key = path.split(".", 1)
        raw.setdefault(section, {})
        if not isinstance(raw[section], dict):
            raise ConfigError(f"--set {path}: '{section}' is not a section")
        raw[section][key] = _parse_value(value)
    return raw


def read_json_object(path: str, what: str) -> dict:
    """A JSON file that must hold one object (the jigsaw config, the DeepSpeed config); ConfigError naming
    the file otherwise."""
    try:
        with open(path) as f:
            raw = json.load(f)
    except FileNotFoundError:
        raise ConfigError(f"{what} '{path}' does not exist") from None
    except IsADirectoryError:
        raise ConfigError(f"{what} '{path}' is a directory, not a JSON file") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise ConfigError(f"{what} '{path}' is not valid JSON: {e}") from None
    if not isinstance(raw, dict):
        raise ConfigError(f"{what} '{path}' must hold a JSON object, got a {type(raw).__name__}")
    return raw


def load(path: str, overrides: Optional[list[str]] = None) -> JigsawConfig:
    return from_dict(apply_overrides(read_json_object(path, "config file"), overrides or []))


# What jigsaw-train accepts of a DeepSpeed JSON: checked here, before any process group, rather than by
# DeepSpeed after the group has started (a traceback on every rank). ZeRO 1 and 2 only: the layout-free
# checkpoint export/import (and so any change of layout) reads ZeRO's fp32 partitions and Adam's moments.
DEEPSPEED_OPTIMIZERS = ("Adam", "AdamW")
DEEPSPEED_ZERO_STAGES = (1, 2)
# The DeepSpeed LR schedules (deepspeed.runtime.lr_schedules) whose length follows train.steps, with the params
# each takes: total_num_steps and warmup_num_steps are derived (deepspeed_schedule). WarmupLR warms up, then
# holds the lr. OneCycle and LRRangeTest count their phases in steps of their own, which cannot follow
# train.steps; torch's schedulers cannot drive a ZeRO optimizer: refused. No scheduler: a constant lr.
DEEPSPEED_SCHEDULERS = {
    "WarmupCosineLR": ("total_num_steps", "warmup_num_steps", "warmup_min_ratio", "cos_min_ratio", "warmup_type"),
    "WarmupDecayLR": ("total_num_steps", "warmup_num_steps", "warmup_min_lr", "warmup_max_lr", "warmup_type"),
    "WarmupLR": ("warmup_num_steps", "warmup_min_lr", "warmup_max_lr", "warmup_type"),
}
SCHEDULE_RANGES = {"warmup_min_ratio": {"ge": 0, "le": 1}, "cos_min_ratio": {"ge": 0, "le": 1},
                   "warmup_min_lr": {"ge": 0}, "warmup_max_lr": {"ge": 0}}
WARMUP_TYPES = ("log", "linear")  # DeepSpeed would take any other as log, with a warning
# The optimizer params that are numbers (Adam and AdamW): betas are checked apart.
OPTIMIZER_RANGES = {"lr": {"ge": 0}, "eps": {"ge": 0}, "weight_decay": {"ge": 0}}


def deepspeed_schedule(train: TrainConfig, scheduler_type: str) -> dict:
    """What a DeepSpeed schedule of this type takes of train.steps: its length, and its warm-up (at least the 2
    steps DeepSpeed's schedulers warm up over whatever they are given)."""
    derived = {"total_num_steps": train.steps,
               "warmup_num_steps": max(2, round(train.warmup_fraction * train.steps))}
    return {key: value for key, value in derived.items() if key in DEEPSPEED_SCHEDULERS[scheduler_type]}


def check_deepspeed_config(ds: dict, path: str) -> None:
    where = f"DeepSpeed config '{path}'"
    opt = ds.get("optimizer")
    if not isinstance(opt, dict) or "type" not in opt:
        raise ConfigError(f"{where} has no optimizer section ({{\"optimizer\": {{\"type\": \"AdamW\", \"params\": "
                          f"{{...}}}}}}): jigsaw-train lets DeepSpeed build the optimizer")
    if str(opt["type"]).lower() not in [o.lower() for o in DEEPSPEED_OPTIMIZERS]:
        raise ConfigError(f"{where}: optimizer.type '{opt['type']}' is not supported; allowed: "
                          f"{', '.join(DEEPSPEED_OPTIMIZERS)} (checkpoints carry Adam's moments)")
    params = opt.get("params", {})
    if not isinstance(params, dict):
        raise ConfigError(f"{where}: optimizer.params must be an object")
    for key, bounds in OPTIMIZER_RANGES.items():
        if key in params:
            number(params[key], f"{where}: optimizer.params.{key}", **bounds)
    if "betas" in params:
        betas = params["betas"]
        if not (isinstance(betas, list) and len(betas) == 2):
            raise ConfigError(f"{where}: optimizer.params.betas must be two numbers in [0, 1), got {betas!r}")
        for beta in betas:
            number(beta, f"{where}: optimizer.params.betas: each", ge=0, lt=1)
    zero = ds.get("zero_optimization", {})
    if not isinstance(zero, dict):
        raise ConfigError(f"{where}: zero_optimization must be an object, got {zero!r}")
    stage = zero.get("stage", 0)
    if stage not in DEEPSPEED_ZERO_STAGES or isinstance(stage, bool):
        raise ConfigError(f"{where}: zero_optimization.stage = {stage!r}; allowed: "
                          f"{', '.join(map(str, DEEPSPEED_ZERO_STAGES))} (layout-free checkpoints read ZeRO's fp32 "
                          f"partitions; the Jigsaw layout already shards every large weight over the replica)")
    for section in ("fp16", "bf16", "scheduler", "data_types"):
        if section in ds and not isinstance(ds[section], dict):
            raise ConfigError(f"{where}: '{section}' must be an object, got {ds[section]!r}")
    if ds.get("fp16", {}).get("enabled"):
        raise ConfigError(f"{where}: fp16 is not supported (its loss scaling is not wired through the Jigsaw "
                          f"reductions); use \"bf16\": {{\"enabled\": true}}")
    number(ds.get("gradient_clipping", 0.0), f"{where}: gradient_clipping", ge=0)
    if "scheduler" in ds:
        check_deepspeed_scheduler(ds["scheduler"], where)


def check_deepspeed_scheduler(scheduler: dict, where: str) -> None:
    kind = scheduler.get("type")
    if not isinstance(kind, str) or kind not in DEEPSPEED_SCHEDULERS:
        raise ConfigError(f"{where}: scheduler.type {kind!r} is not supported"
                          f"{_suggest(str(kind), DEEPSPEED_SCHEDULERS)}: a schedule must follow train.steps; allowed: "
                          f"{', '.join(DEEPSPEED_SCHEDULERS)}, or no scheduler section (a constant lr)")
    params = scheduler.get("params", {})
    if not isinstance(params, dict):
        raise ConfigError(f"{where}: scheduler.params must be an object, got {params!r}")
    allowed = DEEPSPEED_SCHEDULERS[kind]
    for key, value in params.items():
        if key not in allowed:
            raise ConfigError(f"{where}: unknown key scheduler.params.{key} for {kind}{_suggest(key, allowed)}; "
                              f"allowed: {', '.join(allowed)}")
        if key in SCHEDULE_RANGES:
            number(value, f"{where}: scheduler.params.{key}", **SCHEDULE_RANGES[key])
    if params.get("warmup_type", "log") not in WARMUP_TYPES:
        raise ConfigError(f"{where}: scheduler.params.warmup_type {params['warmup_type']!r}; allowed: "
                          f"{', '.join(WARMUP_TYPES)}")


def validate(cfg: JigsawConfig) -> None:
    """Checks that need no data: ranges, choices. Grid-dependent checks are in check_against_grid."""
    for (sec, key), allowed in ALLOWED.items():
        value = getattr(getattr(cfg, sec), key)
        if value not in allowed:
            raise ConfigError(f"config key '{sec}.{key}' is '{value}'; allowed: {', '.join(allowed)}")
    for (sec, key), bounds in RANGES.items():
        number(getattr(getattr(cfg, sec), key), f"config key '{sec}.{key}'", _field_type(cfg, sec, key) == "int",
               **bounds)
    if not cfg.data.store:
        raise ConfigError("config key 'data.store' is empty: give the path of a zarr store")
    if not cfg.data.variables and not cfg.data.surface_variables:
        raise ConfigError("config keys 'data.variables' and 'data.surface_variables' are both empty")
    for sec, key in NAME_LISTS:  # names, not lists or objects: each is looked up in the store or a table
        values = getattr(getattr(cfg, sec), key)
        if not all(isinstance(v, str) for v in values):
            raise ConfigError(f"config key '{sec}.{key}' must be a list of names (strings), got {values!r}")
    for level in cfg.data.levels:
        number(level, "config key 'data.levels': each level (hPa)", integer=True, gt=0)
    for sec, key in NAME_LISTS + (("data", "levels"),):
        _unique(cfg, sec, key)
    from .forcings import KINDS

    unknown = [k for k in cfg.model.forcings if k not in KINDS]
    if unknown:
        raise ConfigError(f"config key 'model.forcings' lists {unknown}; allowed: {', '.join(KINDS)}")
    if cfg.data.generate:
        check_generate_spec(cfg.data.generate)
    if not cfg.train.out_dir:
        raise ConfigError("config key 'train.out_dir' is empty: give a directory for the run's outputs")


NAME_LISTS = (("data", "variables"), ("data", "surface_variables"), ("model", "static_variables"),
              ("model", "forcings"))


def _field_type(cfg: JigsawConfig, sec: str, key: str) -> str:
    return next(f.type for f in dataclasses.fields(getattr(cfg, sec)) if f.name == key)


def _unique(cfg, sec, key) -> None:
    values = getattr(getattr(cfg, sec), key)
    repeated = sorted({str(v) for v in values if values.count(v) > 1})
    if repeated:
        raise ConfigError(f"config key '{sec}.{key}' lists {', '.join(repeated)} more than once")


def check_generate_spec(spec: dict) -> None:
    """data.generate (and jigsaw-data synth/swe/held-suarez): a known kind, its keys only, sane values."""
    kind = spec.get("kind")
    if kind not in GENERATE_DEFAULTS:
        raise ConfigError(f"config key 'data.generate.kind' is {kind!r}; allowed: {', '.join(GENERATE_DEFAULTS)}")
    allowed = GENERATE_DEFAULTS[kind]
    for key, value in spec.items():
        if key == "kind":
            continue
        if key not in allowed:
            raise ConfigError(f"unknown config key 'data.generate.{key}' for kind '{kind}'{_suggest(key, allowed)}; "
                              f"allowed: kind, {', '.join(allowed)}")
        if key == "grid":
            if not (isinstance(value, list) and len(value) == 2):
                raise ConfigError(f"config key 'data.generate.grid' must be [n_lat, n_lon] (integers > 1), got {value!r}")
            for n in value:
                number(n, "config key 'data.generate.grid': n_lat and n_lon each", integer=True, gt=1)
            continue
        number(value, f"config key 'data.generate.{key}'", integer=True, ge=0 if key in GENERATE_MAY_BE_ZERO else 1)
        if key == "truncation":
            from .data.held_suarez import TRUNCATIONS

            if value not in TRUNCATIONS:
                raise ConfigError(f"config key 'data.generate.truncation' is {value}; allowed: "
                                  f"{', '.join(map(str, TRUNCATIONS))}")
        elif key == "layers":
            from .data.held_suarez import LEVELS, MIN_LAYERS

            if value < MIN_LAYERS:
                raise ConfigError(f"config key 'data.generate.layers' is {value}; at least {MIN_LAYERS} sigma levels "
                                  f"are needed to interpolate to {LEVELS} hPa")


def check_against_grid(cfg: JigsawConfig, n_lat: int, lon_deg, longest_traj: int) -> None:
    """Checks that need the store's grid: patch vs grid, the Jigsaw split, lead time vs trajectory, a global
    longitude circle for data.lon_roll."""
    from .grid import is_global_periodic_lon
    from .parallel.partition import split_problems

    n_lon = len(lon_deg)
    if cfg.data.lon_roll and not is_global_periodic_lon(lon_deg):
        raise ConfigError(f"config key 'data.lon_roll' needs longitudes that close the circle (n evenly spaced "
                          f"points, step x n = 360); the store's {n_lon} run from {float(lon_deg[0])} to "
                          f"{float(lon_deg[-1])}")

    for key, why in split_problems(n_lat, n_lon, cfg.model.patch, cfg.parallel.domain, cfg.parallel.tensor,
                                   cfg.model.channel_hidden):
        raise ConfigError(f"config key '{key}' = {why}")
    span = cfg.data.lead_steps * (cfg.train.rollout_steps + cfg.model.history_steps)
    if span >= longest_traj:
        raise ConfigError(f"config keys 'data.lead_steps' x ('train.rollout_steps' + 'model.history_steps') = {span} "
                          f"is not shorter than the longest trajectory ({longest_traj} time steps)")


# The type names that the dataclass annotations carry (from __future__ annotations keeps them strings), and a
# range for every numeric key.
assert all(f.type in ("int", "float", "str", "bool", "list", "dict")
           for sec in (ModelConfig, DataConfig, ParallelConfig, TrainConfig) for f in dataclasses.fields(sec))
assert {(sec.name, f.name) for sec in dataclasses.fields(JigsawConfig) for f in dataclasses.fields(sec.default_factory())
        if f.type in ("int", "float")} == set(RANGES)

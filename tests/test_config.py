"""Bad config input: one clear error naming the key, before any work starts."""
import json
import os
import subprocess
import sys

import inspect

import numpy as np
import pytest
import torch

from jigsaw_ds import config as jc
from jigsaw_ds.config import ConfigError
from jigsaw_ds.parallel.topology import Layout
from jigsaw_ds.train.run import load_deepspeed_config

from conftest import ROOT, spawn_env
from test_checkpoint import train
from test_reliability import cli_error, write_configs

BASE = {"data": {"store": "x.zarr", "variables": ["temperature"]}}


def cfg(**sections):
    raw = json.loads(json.dumps(BASE))
    for sec, values in sections.items():
        raw.setdefault(sec, {}).update(values)
    return jc.from_dict(raw)


@pytest.mark.parametrize("raw, message", [
    ({"modle": {}}, "unknown config section 'modle' (did you mean 'model'?)"),
    ({"model": {"embed_dm": 8}}, "unknown config key 'model.embed_dm' (did you mean 'embed_dim'?)"),
    ({"model": {"depth": "2"}}, "'model.depth' must be int"),
    ({"model": {"depth": 0}}, "'model.depth' must be an integer >= 1"),
    ({"model": {"activation": "tanh"}}, "allowed: gelu, silu, relu"),
    ({"train": {"global_batch": 2.5}}, "'train.global_batch' must be int"),
    ({"data": {"val_fraction": 1.5}}, "'data.val_fraction' must be a finite number in (0, 1)"),
    ({"model": {"drop_path": 1.0}}, "'model.drop_path' must be a finite number in [0, 1)"),
    ({"model": {"dropout": -0.1}}, "'model.dropout' must be a finite number in [0, 1)"),
    ({"data": {"generate": {"kind": "era6"}}}, "'data.generate.kind'"),
    ({"data": {"generate": {"kind": "synth", "time": 9}}}, "'data.generate.time' for kind 'synth' (did you mean 'times'?)"),
    ({"data": {"generate": {"kind": "synth", "grid": "17x32"}}}, "'data.generate.grid' must be [n_lat, n_lon]"),
    ({"data": {"generate": {"kind": "held-suarez", "truncation": 22}}}, "'data.generate.truncation' is 22; allowed: 21, 31"),
    ({"data": {"generate": {"kind": "held-suarez", "gap": -1}}}, "'data.generate.gap' must be an integer >= 0"),
    ({"data": {"generate": {"kind": "held-suarez", "spinup": 0}}}, "'data.generate.spinup' must be an integer >= 1"),
    ({"data": {"generate": {"kind": "held-suarez", "layers": 2}}}, "'data.generate.layers' is 2; at least 4 sigma levels"),
    ({"data": {"variables": ["temperature", "geopotential", "temperature"]}}, "'data.variables' lists temperature more than once"),
    ({"data": {"levels": [500, 500]}}, "'data.levels' lists 500 more than once"),
    ({"data": {"levels": ["abc"]}}, "'data.levels': each level (hPa) must be an integer > 0"),
    ({"train": {"seed": -1}}, "'train.seed' must be an integer >= 0"),
    ({"train": {"out_dir": ""}}, "'train.out_dir' is empty"),
    ({"train": {"peak_tflops": float("inf")}}, "'train.peak_tflops' must be a finite number"),
])
def test_bad_values_name_the_key(raw, message):
    full = json.loads(json.dumps(BASE))
    for sec, values in raw.items():
        full[sec] = {**full.get(sec, {}), **values}
    with pytest.raises(ConfigError) as e:
        jc.from_dict(full)
    assert message in str(e.value)


def test_overrides_parse_json_and_strings():
    raw = jc.apply_overrides(json.loads(json.dumps(BASE)), ["model.depth=3", "data.store=/tmp/a.zarr",
                                                            "data.levels=[500]"])
    c = jc.from_dict(raw)
    assert c.model.depth == 3 and c.data.store == "/tmp/a.zarr" and c.data.levels == [500]
    with pytest.raises(ConfigError, match="section.key=value"):
        jc.apply_overrides({}, ["depth3"])


GLOBAL_64 = np.arange(64) * 5.625  # a closed longitude circle
REGIONAL_64 = np.linspace(-20.0, 40.0, 64)


@pytest.mark.parametrize("change, grid, message", [
    ({"model": {"patch": 40}}, (33, GLOBAL_64, 100), "'model.patch' = 40 is larger than the grid 33x64"),
    ({"model": {"patch": 5}}, (33, GLOBAL_64, 100), "does not divide the 64 longitudes"),
    ({"parallel": {"tensor": 3}}, (33, GLOBAL_64, 100), "'parallel.tensor' = 3 must divide the 16 token columns"),
    ({"parallel": {"domain": 10}}, (33, GLOBAL_64, 100), "'parallel.domain' = 10 exceeds the 9 token rows"),
    ({"data": {"lead_steps": 12}}, (33, GLOBAL_64, 12), "'data.lead_steps' x ('train.rollout_steps' + 'model.history_steps') = 12 is not shorter than the longest trajectory"),
    ({"data": {"lead_steps": 4}, "model": {"history_steps": 2}}, (33, GLOBAL_64, 12), "= 12 is not shorter than the longest trajectory"),
    ({"data": {"lead_steps": 4}, "train": {"rollout_steps": 3}}, (33, GLOBAL_64, 12), "= 12 is not shorter than the longest trajectory"),
    ({"data": {"lon_roll": True}}, (33, REGIONAL_64, 100), "'data.lon_roll' needs longitudes that close the circle"),
])
def test_grid_checks(change, grid, message):
    with pytest.raises(ConfigError) as e:
        jc.check_against_grid(cfg(**change), *grid)
    assert message in str(e.value)


def test_lon_roll_accepts_a_global_grid():
    jc.check_against_grid(cfg(data={"lon_roll": True}), 33, GLOBAL_64, 100)
    jc.check_against_grid(cfg(data={"lon_roll": True}), 721, np.arange(1440) * 0.25, 100)


@pytest.mark.multirank
def test_cli_fails_before_creating_anything(tmp_path, synth_store):
    """A config naming a variable the store lacks: one message, exit 2, no output directory."""
    conf = {"data": {"store": synth_store, "variables": ["specific_humidity"]},
            "train": {"out_dir": str(tmp_path / "run")}}
    path = tmp_path / "c.json"
    path.write_text(json.dumps(conf))
    proc = subprocess.run([os.path.join(os.path.dirname(sys.executable), "jigsaw-train"), "--config", str(path),
                           "--deepspeed_config", os.path.join(ROOT, "configs", "ds_zero1_fp32.json")],
                          env=spawn_env(), capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2
    assert "no variable 'specific_humidity'" in proc.stderr
    assert not (tmp_path / "run").exists()


def nan_store_run(tmp_path, lat, lon, nproc, parallel):
    """jigsaw-train on a 9 x 16 store with one NaN in 2m_temperature at time index 7, (lat, lon)."""
    import numpy as np

    from jigsaw_ds.data.synth import synth_dataset
    from jigsaw_ds.data.writer import write_store

    ds = synth_dataset(9, 16, 20, seed=0)
    ds["2m_temperature"][7, lat, lon] = np.nan
    write_store(ds, str(tmp_path / "nan.zarr"))
    conf = {"model": {"patch": 4}, "data": {"store": str(tmp_path / "nan.zarr"), "variables": [],
                                             "surface_variables": ["2m_temperature"]},
            "parallel": parallel, "train": {"out_dir": str(tmp_path / "run")}}
    (tmp_path / "c.json").write_text(json.dumps(conf))
    bin_dir = os.path.dirname(sys.executable)
    launcher = [os.path.join(bin_dir, "torchrun"), "--standalone", "--nproc_per_node", str(nproc)] if nproc > 1 else []
    return subprocess.run(launcher + [os.path.join(bin_dir, "jigsaw-train"), "--config", str(tmp_path / "c.json"),
                                      "--deepspeed_config", os.path.join(ROOT, "configs", "ds_zero1_fp32.json")],
                          env=spawn_env(), capture_output=True, text=True, timeout=300)


@pytest.mark.multirank
def test_cli_refuses_a_store_with_nans(tmp_path):
    proc = nan_store_run(tmp_path, 3, 3, 1, {"domain": 1, "tensor": 1})
    assert proc.returncode == 2
    assert "variable '2m_temperature' has NaN/inf at time 2020-01-02T18" in proc.stderr
    assert not (tmp_path / "run").exists()


@pytest.mark.multirank
def test_nan_in_one_ranks_tile_is_found_by_that_rank(tmp_path):
    """Ranks scan only their own tile: a NaN in the south-east tile, rank 3 of (1,2,2), still stops the job."""
    proc = nan_store_run(tmp_path, 8, 12, 4, {"domain": 2, "tensor": 2})
    assert proc.returncode != 0
    assert "variable '2m_temperature' has NaN/inf at time 2020-01-02T18" in proc.stderr
    assert not (tmp_path / "run").exists()


def test_store_refuses_a_channel_constant_in_time_and_nan_static_fields(tmp_path):
    """A constant channel has no one-step change to scale the loss by (it belongs in static_variables);
    a NaN in a static field would make every input NaN."""
    import numpy as np

    from jigsaw_ds.data.store import StoreError, WeatherStore
    from jigsaw_ds.data.synth import synth_dataset
    from jigsaw_ds.data.writer import write_store

    ds = synth_dataset(9, 16, 6, seed=0)
    ds["2m_temperature"][:] = 280.0
    ds["land_sea_mask"][2, 3] = np.nan
    write_store(ds, str(tmp_path / "s.zarr"))
    with pytest.raises(StoreError, match=r"channels \['2m_temperature'\] never change .* model.static_variables"):
        WeatherStore(str(tmp_path / "s.zarr"), [], ["2m_temperature"], [])
    store = WeatherStore(str(tmp_path / "s.zarr"), ["temperature"], [], [], ["land_sea_mask"])
    with pytest.raises(StoreError, match="static field 'land_sea_mask' has NaN/inf"):
        store.check_finite()


SHIPPED = sorted(f[:-5] for f in os.listdir(os.path.join(ROOT, "configs")) if f.endswith(".json")
                 and not f.startswith("ds_"))


@pytest.mark.parametrize("name", SHIPPED)
def test_shipped_configs_load(name):
    cfg = jc.load(os.path.join(ROOT, "configs", f"{name}.json"))  # every key known, every value in range
    assert cfg.model.depth >= 1 and cfg.train.global_batch >= 1


# ---- the LR schedule follows train.steps ------------------------------------------------------------------------
DS_BF16 = os.path.join(ROOT, "configs", "ds_zero1_bf16.json")


@pytest.mark.parametrize("train_keys, derived", [
    ({"steps": 500}, (500, 20)),  # the quickstart
    ({"steps": 100000}, (100000, 4000)),  # configs/era5_025deg.json
    ({"steps": 60}, (60, 2)),
    ({"steps": 1000, "warmup_fraction": 0.1}, (1000, 100)),
])
def test_the_schedule_follows_train_steps(train_keys, derived):
    """One DeepSpeed JSON for any run length: the schedule's length and warm-up come from the jigsaw config,
    and the resolved DeepSpeed config (what config.json records) holds them."""
    ds = load_deepspeed_config(DS_BF16, cfg(train=train_keys), Layout())
    assert ds["scheduler"]["params"] == {"total_num_steps": derived[0], "warmup_num_steps": derived[1],
                                         "warmup_min_ratio": 0.1, "cos_min_ratio": 0.1}


def test_every_scheduler_gets_the_keys_it_takes(tmp_path):
    from deepspeed.runtime import lr_schedules

    for kind, keys in jc.DEEPSPEED_SCHEDULERS.items():  # our table names DeepSpeed's own parameters
        assert set(keys) <= set(inspect.signature(getattr(lr_schedules, kind)).parameters), kind
    (tmp_path / "ds.json").write_text(json.dumps({"optimizer": {"type": "AdamW"}, "zero_optimization": {"stage": 1},
                                                  "scheduler": {"type": "WarmupLR"}}))
    ds = load_deepspeed_config(str(tmp_path / "ds.json"), cfg(train={"steps": 200}), Layout())
    assert ds["scheduler"]["params"] == {"warmup_num_steps": 8}  # no length: it holds the lr after warm-up


@pytest.mark.parametrize("steps", [60, 100000])
def test_deepspeeds_cosine_schedule_from_the_derived_config(steps):
    """DeepSpeed's own WarmupCosineLR, built from the derived config as its engine builds it (the class from
    lr_schedules, the params as keywords) on a torch optimizer; step k runs at schedule position k - 1: the
    first step trains (at warmup_min_ratio x lr), the peak is reached at the end of the warm-up, the last step
    is at the floor (cos_min_ratio x lr)."""
    from deepspeed.runtime import lr_schedules

    ds = load_deepspeed_config(DS_BF16, cfg(train={"steps": steps}), Layout())
    peak, params = ds["optimizer"]["params"]["lr"], ds["scheduler"]["params"]
    optimizer = torch.optim.AdamW([torch.nn.Parameter(torch.zeros(1))], lr=peak)
    scheduler = getattr(lr_schedules, ds["scheduler"]["type"])(optimizer, **params)

    def lr_of_step(k):
        scheduler.step(k - 1)
        return optimizer.param_groups[0]["lr"]

    lrs = [lr_of_step(k) for k in range(1, steps + 1)]
    warmup = params["warmup_num_steps"]
    assert lrs[0] == pytest.approx(0.1 * peak)
    assert max(lrs) == pytest.approx(peak) and lrs[warmup - 1] == pytest.approx(peak)
    assert all(a >= b for a, b in zip(lrs[warmup - 1:], lrs[warmup:]))  # decays from the peak on
    assert lrs[-1] == pytest.approx(0.1 * peak) and lrs[-2] > lrs[-1]  # reaches the floor at the last step


@pytest.mark.multirank
def test_a_run_trains_at_step_1_and_ends_at_the_floor(tmp_path, synth_store):
    """What jigsaw-train actually applies (metrics.jsonl logs the lr each step uses), 4 steps, warm-up 2.
    DeepSpeed's schedulers start at position -1 (lr 0) and its engine advances them after each step: the
    trainer advances a fresh run's schedule once before step 1 (Trainer.__init__)."""
    args = write_configs(tmp_path, synth_store, tmp_path / "run", steps=4, ckpt_every=0,
                         scheduler={"type": "WarmupCosineLR", "params": {"warmup_min_ratio": 0.1,
                                                                         "cos_min_ratio": 0.1}})
    proc = train(args)
    assert proc.returncode == 0, proc.stderr[-3000:]
    with open(tmp_path / "run" / "metrics.jsonl") as f:
        lrs = [json.loads(line)["lr"] for line in f]
    assert lrs[0] > 0 and lrs[-1] == pytest.approx(0.1 * 1e-3)


def _set(path, dotted, value):
    raw = json.loads(path.read_text())
    *sections, key = dotted.split(".")
    section = raw
    for name in sections:
        section = section.setdefault(name, {})
    section[key] = value
    path.write_text(json.dumps(raw))


NAN, INF = float("nan"), float("inf")


@pytest.mark.parametrize("file, key, value, expected", [
    ("j", "train.seed", 2**63, "config key 'train.seed' must be an integer within int64"),
    ("j", "train.seed", -1, "config key 'train.seed' must be an integer >= 0"),
    ("j", "data.variables", [["temperature"]], "config key 'data.variables' must be a list of names"),
    ("j", "data.surface_variables", [{"x": 1}], "config key 'data.surface_variables' must be a list of names"),
    ("j", "model.forcings", [["toa_solar"]], "config key 'model.forcings' must be a list of names"),
    ("j", "model.static_variables", [{"x": 1}], "config key 'model.static_variables' must be a list of names"),
    ("j", "data.levels", [[500]], "config key 'data.levels': each level (hPa) must be an integer > 0"),
    ("j", "train.peak_tflops", NAN, "config key 'train.peak_tflops' must be a finite number >= 0"),
    ("j", "data.val_fraction", INF, "config key 'data.val_fraction' must be a finite number in (0, 1)"),
    ("j", "train.warmup_fraction", NAN, "config key 'train.warmup_fraction' must be a finite number in [0, 1]"),
    ("j", "train.warmup_fraction", 1.5, "config key 'train.warmup_fraction' must be a finite number in [0, 1]"),
    ("ds", "optimizer.params.lr", "1e-3", "optimizer.params.lr must be a finite number >= 0, got '1e-3'"),
    ("ds", "optimizer.params.lr", -1e-3, "optimizer.params.lr must be a finite number >= 0"),
    ("ds", "optimizer.params.betas", [0.9], "optimizer.params.betas must be two numbers in [0, 1), got [0.9]"),
    ("ds", "optimizer.params.betas", [0.9, NAN], "optimizer.params.betas: each must be a finite number in [0, 1)"),
    ("ds", "optimizer.params.betas", [0.9, 1.0], "optimizer.params.betas: each must be a finite number in [0, 1)"),
    ("ds", "optimizer.params.weight_decay", NAN, "optimizer.params.weight_decay must be a finite number >= 0"),
    ("ds", "optimizer.params.weight_decay", -0.01, "optimizer.params.weight_decay must be a finite number >= 0"),
    ("ds", "optimizer.params.eps", NAN, "optimizer.params.eps must be a finite number >= 0"),
    ("ds", "optimizer.params.eps", -1e-8, "optimizer.params.eps must be a finite number >= 0"),
    ("ds", "gradient_clipping", NAN, "gradient_clipping must be a finite number >= 0, got nan"),
    ("ds", "gradient_clipping", INF, "gradient_clipping must be a finite number >= 0, got inf"),
    ("ds", "scheduler", {"type": "OneCycle", "params": {}}, "scheduler.type 'OneCycle' is not supported"),
    ("ds", "scheduler", {"type": "StepLR"}, "scheduler.type 'StepLR' is not supported"),
    ("ds", "scheduler", {"type": ["WarmupLR"]}, "scheduler.type ['WarmupLR'] is not supported"),
    ("ds", "scheduler", {"type": "WarmupCosineLR", "params": {"total_num_steps": 500}},
     "DeepSpeed config key 'scheduler.params.total_num_steps' = 500 disagrees with the jigsaw config "
     "(train.steps = 4, train.warmup_fraction = 0.04 -> 4); remove it from"),
    ("ds", "scheduler", {"type": "WarmupDecayLR", "params": {"warmup_num_steps": 20}},
     "DeepSpeed config key 'scheduler.params.warmup_num_steps' = 20 disagrees"),
    ("ds", "scheduler", {"type": "WarmupCosineLR", "params": {"warmup_min_ratio": NAN}},
     "scheduler.params.warmup_min_ratio must be a finite number in [0, 1]"),
    ("ds", "scheduler", {"type": "WarmupCosineLR", "params": {"total_num_step": 4}},
     "unknown key scheduler.params.total_num_step for WarmupCosineLR (did you mean 'total_num_steps'?)"),
    ("ds", "scheduler", {"type": "WarmupLR", "params": {"warmup_type": "cosine"}},
     "scheduler.params.warmup_type 'cosine'; allowed: log, linear"),
])
def test_numbers_and_lists_are_one_line(tmp_path, capsys, synth_store, file, key, value, expected):
    """Every numeric value is a finite number in its range, every name list holds names: else one line naming
    the key, exit 2, before anything exists (NaN would pass a `< 0` check: gradient clipping NaN is off)."""
    args = write_configs(tmp_path, synth_store, tmp_path / "run")
    _set(tmp_path / f"{file}.json", key, value)
    assert expected in cli_error(capsys, args)
    assert not os.path.exists(tmp_path / "run")


def test_the_run_schedule_logs_validates_and_saves_where_the_config_says():
    from jigsaw_ds.train.trainer import Schedule

    schedule = Schedule(steps=10, log_every=3, val_every=4, ckpt_every=5)
    assert [s for s in range(1, 11) if schedule.syncs(s)] == [3, 4, 5, 6, 8, 9, 10]
    assert [s for s in range(1, 11) if schedule.validates(s)] == [4, 8, 10]
    assert [s for s in range(1, 11) if schedule.saves(s)] == [5, 10]
    at_end = Schedule(steps=10, log_every=20, val_every=20, ckpt_every=0)  # 0: the last step only
    assert [s for s in range(1, 11) if at_end.saves(s) or at_end.syncs(s)] == [10]

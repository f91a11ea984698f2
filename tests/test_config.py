"""Bad config input: one clear error naming the key, before any work starts."""
import json
import os
import subprocess
import sys

import numpy as np
import pytest

from jigsaw_ds import config as jc
from jigsaw_ds.config import ConfigError

from conftest import ROOT, spawn_env

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
    ({"model": {"depth": 0}}, "'model.depth' must be >= 1"),
    ({"model": {"activation": "tanh"}}, "allowed: gelu, silu, relu"),
    ({"train": {"global_batch": 2.5}}, "'train.global_batch' must be int"),
    ({"data": {"val_fraction": 1.5}}, "'data.val_fraction' must be in (0, 1)"),
    ({"model": {"drop_path": 1.0}}, "'model.drop_path' must be in [0, 1)"),
    ({"model": {"dropout": -0.1}}, "'model.dropout' must be in [0, 1)"),
    ({"data": {"generate": {"kind": "era6"}}}, "'data.generate.kind'"),
    ({"data": {"generate": {"kind": "synth", "time": 9}}}, "'data.generate.time' for kind 'synth' (did you mean 'times'?)"),
    ({"data": {"generate": {"kind": "synth", "grid": "17x32"}}}, "'data.generate.grid' must be [n_lat, n_lon]"),
    ({"data": {"generate": {"kind": "held-suarez", "truncation": 22}}}, "'data.generate.truncation' is 22; allowed: 21, 31"),
    ({"data": {"generate": {"kind": "held-suarez", "gap": -1}}}, "'data.generate.gap' must be an integer >= 0"),
    ({"data": {"generate": {"kind": "held-suarez", "spinup": 0}}}, "'data.generate.spinup' must be an integer >= 1"),
    ({"data": {"generate": {"kind": "held-suarez", "layers": 2}}}, "'data.generate.layers' is 2; at least 4 sigma levels"),
    ({"data": {"variables": ["temperature", "geopotential", "temperature"]}}, "'data.variables' lists temperature more than once"),
    ({"data": {"levels": [500, 500]}}, "'data.levels' lists 500 more than once"),
    ({"data": {"levels": ["abc"]}}, "'data.levels' must be a list of integers"),
    ({"train": {"seed": -1}}, "'train.seed' must be >= 0"),
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


def test_cli_refuses_a_store_with_nans(tmp_path):
    proc = nan_store_run(tmp_path, 3, 3, 1, {"domain": 1, "tensor": 1})
    assert proc.returncode == 2
    assert "variable '2m_temperature' has NaN/inf at time 2020-01-02T18" in proc.stderr
    assert not (tmp_path / "run").exists()


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


@pytest.mark.parametrize("name", ["quickstart", "swe_small", "era5_025deg", "tiny_025deg"])
def test_shipped_configs_load(name):
    cfg = jc.load(os.path.join(ROOT, "configs", f"{name}.json"))  # every key known, every value in range
    assert cfg.model.depth >= 1 and cfg.train.global_batch >= 1

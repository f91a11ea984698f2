"""The benchmarks that score models still run end to end (tiny sizes: a smoke test of the flags, no skill checked)."""
import json
import os
import subprocess
import sys

import numpy as np
import pytest

from conftest import ROOT, spawn_env


def test_peer_sfno_runs_and_scores_both_models(tmp_path):
    out = tmp_path / "peer.json"
    subprocess.run([sys.executable, os.path.join(ROOT, "bench", "peer_sfno.py"), "--store", str(tmp_path / "swe.zarr"),
                    "--trajectories", "4", "--traj-steps", "8", "--steps", "4", "--time-steps", "1", "--lead-steps", "2",
                    "--threads", "1", "--val-every", "4", "--log-every", "4", "--budget", "flops", "--train-trajectories", "2",
                    "--rollout-steps", "2", "--rollout-fraction", "0.5", "--lon-roll", "--history", "1", "--members", "2",
                    "--out", str(out), "--plot",
                    str(tmp_path / "peer.png")], cwd=ROOT, env=spawn_env(), check=True, capture_output=True, timeout=600)
    result = json.load(open(out))
    kinds = {"WeatherMixer", "SFNO", "persistence", "climatology"}
    rmse = [r for r in result["rows"] if r["metric"] == "rmse" and r["channel"] == "geopotential_500"]
    assert [r["lead_hours"] for r in rmse] == [6, 12] and all(kinds <= set(r) for r in rmse)
    assert (tmp_path / "peer.png").stat().st_size > 0
    assert result["training"]["lon_roll"] and result["training"]["rollout_steps"] == 2 and all(h[-1]["step"] == result["steps"][m]
                                                           for m, h in result["history"].items())
    assert result["train_pairs"] == 12  # 2 of the 3 training trajectories of 8 records: 6 pairs with history each
    assert result["models"]["WeatherMixer"]["config"]["history_steps"] == 1
    assert all(len(set(v)) == 2 for v in result["member_val_loss"].values())  # two members each, not alike
    flops = result["train_flops"]  # equal budgets: WeatherMixer's steps fill SFNO's FLOPs of 4 steps
    assert result["steps"]["SFNO"] == 4 and flops["SFNO"] - result["train_flops_per_step"]["WeatherMixer"] < \
        flops["WeatherMixer"] <= flops["SFNO"]


def test_peer_sfno_on_a_multilevel_primitive_equation_store(held_suarez_store, tmp_path):
    """Every level and variable of a held-suarez store as channels of both models; SFNO on its Gaussian grid."""
    out = tmp_path / "peer.json"
    subprocess.run([sys.executable, os.path.join(ROOT, "bench", "peer_sfno.py"), "--store", held_suarez_store,
                    "--variables", "geopotential,temperature,u_component_of_wind,v_component_of_wind",
                    "--levels", "250,500,850", "--surface-variables", "surface_pressure", "--val-fraction", "0.25",
                    "--steps", "2", "--time-steps", "1", "--lead-steps", "2", "--inits", "2", "--threads", "1",
                    "--val-every", "2", "--log-every", "2", "--out", str(out), "--plot", ""],
                   cwd=ROOT, env=spawn_env(), check=True, capture_output=True, timeout=600)
    result = json.load(open(out))
    assert result["models"]["SFNO"]["config"]["grid"] == "legendre-gauss"
    channels = {r["channel"] for r in result["rows"] if r["metric"] == "rmse"}
    assert {"temperature_850", "geopotential_250", "surface_pressure"} <= channels
    assert result["grid"] == [32, 64] and result["train_pairs"] == 3 * 5


def test_peer_sfno_budget_seconds_fixes_the_wall_budget_across_sizes(monkeypatch):
    import argparse

    monkeypatch.syspath_prepend(os.path.join(ROOT, "bench"))
    import peer_sfno

    ms = {"WeatherMixer": 20.0, "SFNO": 100.0}
    by_steps = argparse.Namespace(budget="wall", steps=400, budget_seconds=0.0)
    assert peer_sfno.budget_steps(by_steps, ms, {}) == {"WeatherMixer": 2000, "SFNO": 400}
    fixed = argparse.Namespace(budget="wall", steps=400, budget_seconds=60.0)  # 60 s whatever SFNO's step costs
    assert peer_sfno.budget_steps(fixed, ms, {}) == {"WeatherMixer": 3000, "SFNO": 600}
    assert peer_sfno.budget_steps(fixed, {"WeatherMixer": 40.0, "SFNO": 200.0}, {}) == {"WeatherMixer": 1500, "SFNO": 300}
    with pytest.raises(SystemExit):  # a seconds budget is a wall budget only
        peer_sfno.main(["--budget", "flops", "--budget-seconds", "60"])
    with pytest.raises(SystemExit):
        peer_sfno.main(["--budget", "wall", "--budget-seconds", "-1"])


def test_skill_compare_picks_each_models_best_run(tmp_path, monkeypatch, capsys):
    """Two committed skill runs (learning rate 2e-3 and 4e-3): the table and each model's best run per column."""
    import shutil

    monkeypatch.syspath_prepend(os.path.join(ROOT, "bench"))
    import skill_compare

    runs = ["wall_rollout8h_lonroll_hist1_128", "wall_rollout8h_lonroll_hist1_lr4e-3_128"]
    for run in runs:
        shutil.copy(os.path.join(ROOT, "bench", "results", "skill", f"peer_sfno_{run}.json"), tmp_path)
    assert skill_compare.main([*runs, "--name", "t", "--results", str(tmp_path)]) == 0
    out = json.load(open(tmp_path / "compare_t.json"))
    z24 = {run: out["runs"][run]["WeatherMixer"]["rmse"]["geopotential_500@24"] for run in runs}
    assert out["best_run"]["WeatherMixer"]["geopotential_500@24"] == min(z24, key=z24.get)
    assert set(out["best_run"]) == {"WeatherMixer", "SFNO"} and len(out["runs"][runs[0]]["SFNO"]["rmse"]) == 9
    # the curve against one value per run (here the learning rate), and a wrong count of values named
    assert skill_compare.main([*runs, "--name", "t", "--results", str(tmp_path), "--x", "learning rate=2e-3,4e-3",
                               "--plot", str(tmp_path / "lr.png")]) == 0
    assert (tmp_path / "lr.png").stat().st_size > 0
    assert json.load(open(tmp_path / "compare_t.json"))["x"] == {"label": "learning rate", "values": [2e-3, 4e-3]}
    with pytest.raises(SystemExit):
        skill_compare.main([*runs, "--results", str(tmp_path), "--x", "learning rate=2e-3", "--plot", "p.png"])
    assert "expected LABEL=V1,...,V2 (one number per run)" in capsys.readouterr().err


def test_skill_scaling_summarises_and_plots_finished_sizes(tmp_path, monkeypatch):
    """Finished sizes are read back, not retrained (and not mixed with runs of other flags): the ratio table, its
    JSON and the skill-vs-data plot."""
    import shutil

    monkeypatch.syspath_prepend(os.path.join(ROOT, "bench"))
    import skill_scaling

    for n in (16, 128):
        shutil.copy(os.path.join(ROOT, "bench", "results", "skill", f"peer_sfno_wall_{n}.json"), tmp_path)
    argv = ["--store", str(tmp_path), "--sizes", "16,128", "--results", str(tmp_path), "--plot", str(tmp_path / "s.png")]
    with pytest.raises(SystemExit, match="not with this command's flags"):  # these runs had --steps 400, --lead-steps 20
        skill_scaling.main(argv)
    assert skill_scaling.main([*argv, "--steps", "400", "--extra", "--lead-steps 20"]) == 0
    summary = json.load(open(tmp_path / "scaling_wall.json"))["summary"]
    assert set(summary) == {"16", "128"} and (tmp_path / "s.png").stat().st_size > 0
    assert summary["128"]["ratio"]["geopotential_500@24"] < summary["16"]["ratio"]["geopotential_500@24"]


def test_sfno_takes_the_stores_latitude_nodes(monkeypatch):
    """SFNO's spherical transforms are set up on the store's own latitudes: equiangular with poles (swe, WB2) or
    Gaussian (held-suarez), in either order; anything else is refused, not silently treated as equiangular."""
    monkeypatch.syspath_prepend(os.path.join(ROOT, "bench"))
    from peer_sfno import sfno_grid

    assert sfno_grid(np.linspace(90, -90, 33)) == "equiangular"
    gauss = np.rad2deg(np.arcsin(np.polynomial.legendre.leggauss(32)[0]))
    assert sfno_grid(gauss) == sfno_grid(gauss[::-1]) == "legendre-gauss"
    with pytest.raises(ValueError, match="32 latitudes"):
        sfno_grid(np.linspace(-88.6, 88.6, 32))

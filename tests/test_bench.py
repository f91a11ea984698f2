"""The benchmarks that score models still run end to end (tiny sizes: a smoke test of the flags, no skill checked)."""
import json
import os
import subprocess
import sys

import numpy as np
import pytest

from conftest import BIN, ROOT, run, spawn_env
from test_reliability import one_error


@pytest.fixture(scope="module")
def swe_store(tmp_path_factory):
    """4 shallow-water runs of 8 records on 33 x 64, made by the CLI (shared by this module's peer_sfno runs)."""
    path = str(tmp_path_factory.mktemp("data") / "swe.zarr")
    run([os.path.join(BIN, "jigsaw-data"), "swe", "--out", path, "--grid", "33x64", "--trajectories", "4",
         "--steps", "8", "--seed", "0"])
    return path


@pytest.mark.multirank
def test_peer_sfno_runs_and_scores_both_models(swe_store, tmp_path):
    """Every option at once under a FLOPs budget: each model stops within one step of F, rollout FLOPs counted."""
    out, budget = tmp_path / "peer.json", 3e9
    subprocess.run([sys.executable, os.path.join(ROOT, "bench", "peer_sfno.py"), "--store", swe_store,
                    "--lead-steps", "2", "--threads", "1", "--val-every", "4", "--log-every", "4",
                    "--budget", f"flops:{budget:g}", "--train-trajectories", "2",
                    "--rollout-steps", "2", "--rollout-fraction", "0.5", "--lon-roll", "--history", "1", "--members", "2",
                    "--out", str(out), "--plot",
                    str(tmp_path / "peer.png")], cwd=ROOT, env=spawn_env(), check=True, capture_output=True, timeout=600)
    result = json.load(open(out))
    kinds = {"WeatherMixer", "SFNO", "persistence", "climatology"}
    rmse = [r for r in result["rows"] if r["metric"] == "rmse" and r["channel"] == "geopotential_500"]
    assert [r["lead_hours"] for r in rmse] == [6, 12] and all(kinds <= set(r) for r in rmse)
    assert (tmp_path / "peer.png").stat().st_size > 0
    assert result["training"]["lon_roll"] and result["training"]["rollout_steps"] == 2
    assert result["train_pairs"] == 12  # 2 of the 3 training trajectories of 8 records: 6 pairs with history each
    assert result["models"]["WeatherMixer"]["config"]["history_steps"] == 1
    assert all(len(set(v)) == 2 for v in result["member_val_loss"].values())  # two members each, not alike
    for m, members in result["cost"].items():  # each member: F counted FLOPs, overshooting by less than one step
        assert len(members) == 2 and result["history"][m][-1]["step"] == members[0]["steps"]
        per_step = result["train_flops_per_step"][m]
        assert per_step["rollout"] > 1.9 * per_step["one_step"]  # a 2-step rollout costs two forwards and backwards
        for c in members:
            assert c["flops"] == per_step["one_step"] * (c["steps"] - c["rollout_steps"]) + per_step["rollout"] * c["rollout_steps"]
            assert budget <= c["flops"] < budget + per_step["rollout"] and c["rollout_steps"] > 0
        assert result["train_flops"][m] == sum(c["flops"] for c in members)
    ratio = result["train_flops"]["WeatherMixer"] / result["train_flops"]["SFNO"]  # F is a few steps: may be unequal
    assert result["cost_measure"] == "train_flops" and result["cost_ratio"] == pytest.approx(ratio, abs=1e-4)


@pytest.mark.multirank
def test_peer_sfno_on_a_multilevel_primitive_equation_store(held_suarez_store, tmp_path):
    """Every level and variable of a held-suarez store as channels of both models; SFNO on its Gaussian grid."""
    out = tmp_path / "peer.json"
    subprocess.run([sys.executable, os.path.join(ROOT, "bench", "peer_sfno.py"), "--store", held_suarez_store,
                    "--variables", "geopotential,temperature,u_component_of_wind,v_component_of_wind",
                    "--levels", "250,500,850", "--surface-variables", "surface_pressure", "--val-fraction", "0.25",
                    "--steps", "2", "--lead-steps", "2", "--inits", "2", "--threads", "1",
                    "--val-every", "2", "--log-every", "2", "--out", str(out), "--plot", ""],
                   cwd=ROOT, env=spawn_env(), check=True, capture_output=True, timeout=600)
    result = json.load(open(out))
    assert result["models"]["SFNO"]["config"]["grid"] == "legendre-gauss"
    channels = {r["channel"] for r in result["rows"] if r["metric"] == "rmse"}
    assert {"temperature_850", "geopotential_250", "surface_pressure"} <= channels
    assert result["grid"] == [32, 64] and result["train_pairs"] == 3 * 5


@pytest.mark.multirank
def test_peer_sfno_seconds_budget_stops_within_one_step_of_it(swe_store, tmp_path, monkeypatch):
    """--budget seconds:S: each model trains until S seconds of its own training (one-step and rollout steps) are
    spent, on the clock, and stops after the first step that reaches S; its rollout phase starts at the time
    fraction; the JSON records the cost of each and whether the two came out equal."""
    monkeypatch.syspath_prepend(os.path.join(ROOT, "bench"))
    import peer_sfno

    out, s = tmp_path / "peer.json", 2.0
    assert peer_sfno.main(["--store", swe_store, "--budget", f"seconds:{s}", "--rollout-steps", "2",
                           "--rollout-fraction", "0.5", "--lead-steps", "2", "--inits", "2", "--threads", "1",
                           "--val-every", "1000000", "--out", str(out), "--plot", ""]) == 0
    result = json.load(open(out))
    assert result["budget"] == {"kind": "seconds", "amount": s} and result["training"]["budget"] == "seconds:2"
    for m in ("WeatherMixer", "SFNO"):
        (c,) = result["cost"][m]
        assert s <= c["seconds"] < s + c["last_step_ms"] / 1000  # within one step of S
        assert s / 2 <= c["rollout_start_s"] < s / 2 + c["max_step_ms"] / 1000  # the phase starts at half the time
        assert 0 < c["rollout_steps"] < c["steps"] == result["steps"][m]
        assert result["train_seconds"][m] == c["seconds"] and len(c["loadavg"]["before"]) == 3
    ratio = result["train_seconds"]["WeatherMixer"] / result["train_seconds"]["SFNO"]
    assert result["cost_measure"] == "train_seconds" and result["cost_ratio"] == pytest.approx(ratio, abs=1e-4)
    assert result["unequal"] == (max(ratio, 1 / ratio) > 1.05)


def test_peer_sfno_schedule_is_laid_over_the_budget(capsys, monkeypatch):
    """The learning rate and the rollout phase are functions of the fraction of the budget spent (seconds / S,
    FLOPs / F or steps / N); the retired wall budget and a malformed one are one clear error each."""
    import argparse

    monkeypatch.syspath_prepend(os.path.join(ROOT, "bench"))
    import peer_sfno

    args = argparse.Namespace(warmup_fraction=0.1, warmup_min_ratio=0.1, cos_min_ratio=0.05)
    assert peer_sfno.lr_factor(0.0, args) == pytest.approx(0.1)
    assert peer_sfno.lr_factor(0.05, args) == pytest.approx(0.55)  # half-way through the warm-up
    assert peer_sfno.lr_factor(0.1, args) == pytest.approx(1.0)
    assert peer_sfno.lr_factor(0.55, args) == pytest.approx(0.05 + 0.95 * 0.5)  # half-way down the cosine
    assert peer_sfno.lr_factor(1.0, args) == pytest.approx(0.05)
    assert not peer_sfno.in_rollout_phase(0.49, 0.5) and peer_sfno.in_rollout_phase(0.5, 0.5)
    budget = peer_sfno.parse_budget("seconds:300")
    assert budget.progress(steps=10, seconds=150.0, flops=0) == 0.5
    assert peer_sfno.parse_budget("flops:2e12").progress(steps=1, seconds=1.0, flops=5e11) == 0.25
    assert peer_sfno.parse_budget("steps", steps=400).progress(steps=100, seconds=9.0, flops=9) == 0.25
    for argv, message in ((["--budget", "wall"], "--budget seconds:S"),
                          (["--budget", "seconds:0"], "seconds:S needs S > 0"),
                          (["--budget", "minutes:3"], "steps, seconds:S or flops:F"),
                          (["--budget", "seconds:60", "--steps", "400"], "--steps sets a steps budget")):
        with pytest.raises(SystemExit) as e:
            peer_sfno.main(argv)
        assert e.value.code == 2 and message in one_error(capsys.readouterr().err)


def unequal_run(tmp_path, name: str, seconds: dict) -> str:
    """A committed skill run copied as peer_sfno_<name>.json with a seconds budget and these training times."""
    with open(os.path.join(ROOT, "bench", "results", "skill", "peer_sfno_wall_rollout8h_lonroll_hist1_128.json")) as f:
        result = json.load(f)
    result["training"]["budget"], result["train_seconds"] = "seconds:1", seconds
    with open(tmp_path / f"peer_sfno_{name}.json", "w") as f:
        json.dump(result, f)
    return str(tmp_path / f"peer_sfno_{name}.json")


def test_unequal_training_times_are_marked_and_refused(tmp_path, monkeypatch, capsys):
    """A result whose models trained times more than 5% apart is not an equal-cost result: skill_compare refuses
    it (one error naming the file and the ratio) unless --allow-unequal; old results are judged by the same rule
    from their recorded train_seconds."""
    monkeypatch.syspath_prepend(os.path.join(ROOT, "bench"))
    import peer_sfno
    import skill_compare

    path = unequal_run(tmp_path, "t12", {"WeatherMixer": 1.2, "SFNO": 1.0})
    unequal_run(tmp_path, "t104", {"WeatherMixer": 1.0, "SFNO": 1.04})
    assert skill_compare.main(["t12", "--name", "t", "--results", str(tmp_path)]) == 2
    error = one_error(capsys.readouterr().err)
    assert path in error and "1.2" in error and "--allow-unequal" in error
    assert skill_compare.main(["t12", "t104", "--name", "t", "--results", str(tmp_path), "--allow-unequal"]) == 0
    assert json.load(open(tmp_path / "compare_t.json"))["cost"]["t12"]["unequal"]
    assert skill_compare.main(["t104", "--name", "t", "--results", str(tmp_path)]) == 0  # 4% apart: equal
    with open(os.path.join(ROOT, "bench", "results", "skill",
                           "peer_sfno_wall_rollout8h_lonroll_hist1_lr8e-3_128.json")) as f:
        headline = peer_sfno.cost_balance(json.load(f))  # the run behind the old "kept options" verdict
    assert headline["unequal"] and headline["cost_ratio"] == pytest.approx(2.28, abs=0.005)


def test_skill_compare_picks_each_models_best_run(tmp_path, monkeypatch, capsys):
    """Two committed skill runs (learning rate 2e-3 and 4e-3): the table and each model's best run per column."""
    import shutil

    monkeypatch.syspath_prepend(os.path.join(ROOT, "bench"))
    import skill_compare

    runs = ["wall_rollout8h_lonroll_hist1_128", "wall_rollout8h_lonroll_hist1_lr4e-3_128"]
    for run in runs:
        shutil.copy(os.path.join(ROOT, "bench", "results", "skill", f"peer_sfno_{run}.json"), tmp_path)
    assert skill_compare.main([*runs, "--name", "t", "--results", str(tmp_path)]) == 2  # trained 1.44x / 2.18x
    assert "--allow-unequal" in one_error(capsys.readouterr().err)
    assert skill_compare.main([*runs, "--name", "t", "--results", str(tmp_path), "--allow-unequal"]) == 0
    out = json.load(open(tmp_path / "compare_t.json"))
    z24 = {run: out["runs"][run]["WeatherMixer"]["rmse"]["geopotential_500@24"] for run in runs}
    assert out["best_run"]["WeatherMixer"]["geopotential_500@24"] == min(z24, key=z24.get)
    assert set(out["best_run"]) == {"WeatherMixer", "SFNO"} and len(out["runs"][runs[0]]["SFNO"]["rmse"]) == 9
    # the curve against one value per run (here the learning rate), and a wrong count of values named
    assert skill_compare.main([*runs, "--name", "t", "--results", str(tmp_path), "--x", "learning rate=2e-3,4e-3",
                               "--allow-unequal", "--plot", str(tmp_path / "lr.png")]) == 0
    assert (tmp_path / "lr.png").stat().st_size > 0
    assert json.load(open(tmp_path / "compare_t.json"))["x"] == {"label": "learning rate", "values": [2e-3, 4e-3]}
    with pytest.raises(SystemExit):
        skill_compare.main([*runs, "--results", str(tmp_path), "--x", "learning rate=2e-3", "--plot", "p.png"])
    assert "expected LABEL=V1,...,V2 (one number per run)" in capsys.readouterr().err


def test_skill_scaling_summarises_and_plots_finished_sizes(tmp_path, monkeypatch, capsys):
    """Finished sizes are read back, not retrained (and not mixed with runs of other flags, nor used when their
    models' training times came out unequal unless asked): the ratio table, its JSON and the skill-vs-data plot."""
    import shutil

    monkeypatch.syspath_prepend(os.path.join(ROOT, "bench"))
    import skill_scaling

    for n in (16, 128):
        shutil.copy(os.path.join(ROOT, "bench", "results", "skill", f"peer_sfno_wall_{n}.json"), tmp_path)
    argv = ["--store", str(tmp_path), "--sizes", "16,128", "--budget", "wall", "--results", str(tmp_path),
            "--plot", str(tmp_path / "s.png")]
    with pytest.raises(SystemExit, match="not with this command's flags"):  # these runs had --steps 400, --lead-steps 20
        skill_scaling.main(argv)
    argv += ["--steps", "400", "--extra", "--lead-steps 20"]
    assert skill_scaling.main(argv) == 2  # the old wall budget: WeatherMixer trained 1.74x SFNO's time at N = 16
    assert "peer_sfno_wall_16.json" in one_error(capsys.readouterr().err)
    assert skill_scaling.main([*argv, "--allow-unequal"]) == 0
    # a size still to train under the retired budget: refused before the store is made
    assert skill_scaling.main(["--store", str(tmp_path / "none.zarr"), "--sizes", "8", "--budget", "wall",
                               "--results", str(tmp_path)]) == 2
    assert "--budget seconds:S" in one_error(capsys.readouterr().err) and not (tmp_path / "none.zarr").exists()
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

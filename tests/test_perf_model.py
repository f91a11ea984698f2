"""The analytic step model (jigsaw_ds/perf/step_model.py) against what the real model does.

No process group is needed: one rank of a layout is emulated in this process with stand-in groups whose
collectives have the right shapes (all-gather repeats the local piece, reduce-scatter keeps the first one,
all-reduce is the identity). Every collective still goes through parallel/mappings.py and is counted by
parallel/comm_stats.py, and every tensor has the size it has on that rank, so bytes, FLOPs and saved
activations are those of the real rank (the values are not).
"""
import dataclasses
import json
import os

import pytest
import torch
from torch.utils.flop_counter import FlopCounterMode

from conftest import ROOT
from jigsaw_ds.config import ModelConfig, load
from jigsaw_ds.model import WeatherMixer
from jigsaw_ds.model import weather_mixer
from jigsaw_ds.parallel import comm_stats, mappings
from jigsaw_ds.parallel.topology import JigsawGroups, Layout
from jigsaw_ds.perf import step_model as pm
from jigsaw_ds.perf.comm_model import step_comm_bytes

CFG = ModelConfig(patch=2, embed_dim=16, token_hidden=12, channel_hidden=32, depth=2)
H, W, C_IN, C_OUT, B = 17, 32, 7, 5, 2          # 9 token rows (last one padded) x 16 columns
SHAPE = pm.ModelShape(CFG, H, W, C_IN, C_OUT)
LAYOUTS = [Layout(1, 1, 1), Layout(1, 2, 1), Layout(1, 1, 2), Layout(1, 2, 2), Layout(1, 4, 1), Layout(1, 3, 4),
           Layout(2, 2, 2)]
MACHINES = os.path.join(ROOT, "configs", "machines")


class FakeGroup:
    def __init__(self, size):
        self.size = size


class FakeDist:
    """Shape-exact stand-ins for the torch.distributed calls of parallel/mappings.py."""

    @staticmethod
    def get_world_size(group):
        return group.size

    @staticmethod
    def all_reduce(tensor, group=None):
        pass


class DoneWork:
    """What an async collective returns, already finished."""

    def wait(self):
        pass


def fake_all_gather(out, x, group=None, async_op=False):
    out.copy_(x.repeat((group.size,) + (1,) * (x.dim() - 1)))
    return DoneWork()


def fake_reduce_scatter(out, x, group=None, async_op=False):
    out.copy_(x[:out.shape[0]])
    return DoneWork()


@pytest.fixture
def one_rank(monkeypatch):
    """make(layout, domain_rank) -> JigsawGroups of that rank (tensor rank 0, data rank 0), emulated."""
    monkeypatch.setattr(mappings, "dist", FakeDist)
    monkeypatch.setattr(mappings, "_all_gather_single", fake_all_gather)
    monkeypatch.setattr(mappings, "_reduce_scatter_single", fake_reduce_scatter)
    keep = []

    def make(layout, domain_rank=0):
        sizes = {"tensor": layout.tensor, "domain": layout.domain, "jigsaw": layout.model_parallel,
                 "data": layout.data}
        handles = {axis: FakeGroup(size) for axis, size in sizes.items()}
        for name, group in handles.items():
            comm_stats.name_group(group, name)
        keep.append(handles)
        return JigsawGroups(layout, domain_rank * layout.tensor, handles)

    comm_stats.reset()
    yield make
    comm_stats.reset()


def rank_input(model, groups, batch=B):
    part = model.partition
    lat, lon = part.lat_slice(groups.domain_rank), part.lon_slice(groups.tensor_rank)
    return torch.randn(batch, C_IN, lat.stop - lat.start, lon.stop - lon.start)


def forward_backward(model, x):
    model(x).sum().backward()


# ---- FLOPs -------------------------------------------------------------------------------------------------
def embed_input_grad_flops(layout, domain_rank=0):
    """The one GEMM the 3x-forward rule counts that never runs: the embedding's input needs no gradient."""
    n = pm.own_tokens(SHAPE, layout, domain_rank)
    return 2 * n * B * C_IN * CFG.patch ** 2 * CFG.embed_dim


@pytest.mark.parametrize("layout", LAYOUTS[:6], ids=str)
def test_flops_per_rank_match_torch_flop_counter(one_rank, layout):
    groups = one_rank(layout)
    model = WeatherMixer(CFG, H, W, C_IN, C_OUT, groups)
    x = rank_input(model, groups)
    with FlopCounterMode(display=False) as counter:
        forward_backward(model, x)
    predicted = pm.flops_per_rank(SHAPE, layout, B) - embed_input_grad_flops(layout)
    assert counter.get_total_flops() == predicted


def test_gemm_list_adds_up_to_the_flop_formula():
    for layout in LAYOUTS:
        gemm = 3 * sum(2 * m * k * n for _, m, k, n in pm.gemms(SHAPE, layout, B))
        assert gemm == pm.flops_per_rank(SHAPE, layout, B)


def test_flops_of_the_025deg_config():
    cfg = load(os.path.join(ROOT, "configs", "era5_025deg.json"))
    shape = pm.ModelShape.from_config(cfg)
    assert (shape.n_lat, shape.n_lon, shape.c_in, shape.c_out, shape.n_tokens) == (721, 1440, 74, 69, 65160)
    per_sample = pm.flops_per_rank(shape, Layout(), 1)
    assert 3.2e13 < per_sample < 3.4e13           # about 3 x 4 N D (Dt + Dc) L = 32.8 TFLOP
    # the work splits with the tokens: the busiest of 4 domain ranks has ceil(181 / 4) of 181 rows
    assert pm.flops_per_rank(shape, Layout(1, 4, 1), 1) == pytest.approx(per_sample * 46 / 181)


# ---- parameters and memory ---------------------------------------------------------------------------------
@pytest.mark.parametrize("layout", LAYOUTS, ids=str)
def test_param_bytes_per_rank_match_the_sharded_model(one_rank, layout):
    setup = pm.TrainSetup(global_batch=4, precision="fp32")
    for d in range(layout.domain):
        model = WeatherMixer(CFG, H, W, C_IN, C_OUT, one_rank(layout, d))
        real = sum(p.numel() * p.element_size() for p in model.parameters())
        memory = pm.memory_bytes(SHAPE, layout, setup, domain_rank=d)
        assert memory["weights"] == real, f"{layout} domain rank {d}"
        assert memory["grads"] == real


def test_optimizer_and_grad_bytes_follow_zero_stage():
    layout = Layout(4, 2, 1)
    P = pm.params_held(SHAPE, layout)
    for stage, grads, opt in [(0, 2 * P, 16 * P), (1, 2 * P, 16 * -(-P // 4)), (2, 2 * -(-P // 4), 16 * -(-P // 4))]:
        m = pm.memory_bytes(SHAPE, layout, pm.TrainSetup(global_batch=8, zero_stage=stage))
        assert (m["grads"], m["optimizer"]) == (grads, opt), f"stage {stage}"
        assert m["total"] == sum(v for k, v in m.items() if k != "total")
    fp32 = pm.memory_bytes(SHAPE, Layout(), pm.TrainSetup(global_batch=8, zero_stage=0, precision="fp32"))
    assert fp32["optimizer"] == 8 * pm.params_held(SHAPE, Layout())      # Adam m, v; the weights are the master


def test_adamw_state_is_two_fp32_copies():
    model = WeatherMixer(CFG, H, W, C_IN, C_OUT)
    opt = torch.optim.AdamW(model.parameters())
    forward_backward(model, torch.randn(1, C_IN, H, W))
    opt.step()
    state = sum(t.numel() * t.element_size() for s in opt.state.values() for k, t in s.items() if k != "step")
    assert state == 8 * pm.params_held(SHAPE, Layout())


def saved_activation_bytes(model, x) -> int:
    """Bytes of the distinct storages autograd saves for backward, parameters excluded."""
    params = {p.untyped_storage().data_ptr() for p in model.parameters()}
    buffers = {b.untyped_storage().data_ptr() for b in model.buffers()}
    seen = {}

    def pack(t):
        s = t.untyped_storage()
        if s.data_ptr() not in params | buffers:
            seen[s.data_ptr()] = s.nbytes()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        out = model(x)
    out.sum().backward()
    return sum(seen.values())


@pytest.mark.parametrize("layout", LAYOUTS[:6], ids=str)
def test_activation_bytes_match_saved_tensors(one_rank, layout):
    groups = one_rank(layout)
    model = WeatherMixer(CFG, H, W, C_IN, C_OUT, groups)
    measured = saved_activation_bytes(model, rank_input(model, groups))
    predicted = pm.activation_bytes(SHAPE, layout, B, 4, loss=False)["total"]
    assert measured == predicted


@pytest.mark.parametrize("layout", [Layout(1, 1, 2), Layout(1, 2, 2), Layout(1, 3, 4)], ids=str)
def test_channel_mixing_keeps_own_tokens_only(one_rank, layout, monkeypatch):
    """Side by side in one run: gathered_linear saves (T-1) n B D fewer activation elements per block than the
    plain all-gather + linear (whose autograd keeps the gathered band), exactly."""
    from jigsaw_ds.parallel import layers, mappings

    groups = one_rank(layout)
    model = WeatherMixer(CFG, H, W, C_IN, C_OUT, groups)
    x = rank_input(model, groups)
    after = saved_activation_bytes(model, x)
    monkeypatch.setattr(layers, "gathered_linear",
                        lambda x, w, b, group: torch.nn.functional.linear(mappings.gather_from_group(x, group), w, b))
    before = saved_activation_bytes(model, x)
    n = pm.own_tokens(SHAPE, layout)
    assert before - after == CFG.depth * (layout.tensor - 1) * n * B * CFG.embed_dim * 4
    print(f"\n{layout}: saved activations {before} -> {after} bytes")


def test_checkpointing_keeps_one_block_input_per_block():
    big = dataclasses.replace(SHAPE, cfg=dataclasses.replace(CFG, depth=8))
    off = pm.activation_bytes(big, Layout(), B, 2)
    on = pm.activation_bytes(big, Layout(), B, 2, checkpointing=True)
    n = big.n_tokens
    per_block = (off["blocks"]) // 8
    assert on["blocks"] == 8 * n * B * CFG.embed_dim * 2 + per_block
    assert on["total"] < off["total"]


@pytest.mark.parametrize("checkpointing", [False, True], ids=["plain", "checkpointed"])
def test_step_memory_matches_the_allocators_timeline(tmp_path, checkpointing):
    """Predicted activations + gradients against the peak of live tensor bytes in one forward + backward
    (loss included), read from torch.profiler's memory timeline on the CPU: the single-rank check that
    torch.cuda.max_memory_allocated makes on a GPU. Measured 2026-11-26: 62.6 MiB vs 62.3 predicted
    (plain); 23.7 vs 26.7 (checkpointed: the model keeps every block input to the end, backward frees them)."""
    import numpy as np
    from torch.profiler import ProfilerActivity, profile

    from jigsaw_ds.grid import lat_cell_weights
    from jigsaw_ds.train.loss import AreaWeightedMSE

    if not hasattr(profile, "export_memory_timeline"):  # deprecated in torch 2.13: a later torch may drop it
        pytest.skip("this torch has no profiler memory timeline")

    cfg = ModelConfig(patch=4, embed_dim=128, token_hidden=128, channel_hidden=512, depth=4,
                      activation_checkpointing=checkpointing)
    h, w, c_in, c_out, b = 65, 128, 12, 9, 4
    model = WeatherMixer(cfg, h, w, c_in, c_out)
    x, y = torch.randn(b, c_in, h, w), torch.randn(b, c_out, h, w)
    loss_fn = AreaWeightedMSE(torch.from_numpy(lat_cell_weights(np.linspace(90, -90, h))).float(), h, w)
    loss_fn(model(x), y).backward()  # warm-up
    model.zero_grad(set_to_none=True)
    with profile(activities=[ProfilerActivity.CPU], profile_memory=True, record_shapes=True, with_stack=True) as prof:
        loss_fn(model(x), y).backward()
    prof.export_memory_timeline(str(tmp_path / "memory.json"), device="cpu")
    _, sizes = json.load(open(tmp_path / "memory.json"))
    live = np.asarray(sizes).sum(axis=1)
    peak = live.max() - live[0]
    mem = pm.memory_bytes(pm.ModelShape(cfg, h, w, c_in, c_out), Layout(),
                          pm.TrainSetup(global_batch=b, precision="fp32", zero_stage=0, checkpointing=checkpointing))
    predicted = mem["activations"] + mem["grads"]
    if checkpointing:
        assert peak <= predicted <= 1.2 * peak, (peak, predicted)
    else:
        assert predicted == pytest.approx(peak, rel=0.03), (peak, predicted)


# ---- collectives -------------------------------------------------------------------------------------------
MixerBlockForward = weather_mixer.MixerBlock.forward


def checkpointed_forward(self, x, *noise):
    """What activation checkpointing per block does (torch.utils.checkpoint, non-reentrant)."""
    from torch.utils.checkpoint import checkpoint

    return checkpoint(MixerBlockForward, self, x, *noise, use_reentrant=False)


@pytest.mark.parametrize("checkpointing", [False, True], ids=["plain", "checkpointed"])
@pytest.mark.parametrize("layout", LAYOUTS, ids=str)
def test_collective_bytes_and_calls_match_counters(one_rank, monkeypatch, layout, checkpointing):
    if checkpointing:
        monkeypatch.setattr(weather_mixer.MixerBlock, "forward", checkpointed_forward)
    groups = one_rank(layout)
    model = WeatherMixer(CFG, H, W, C_IN, C_OUT, groups)
    x = rank_input(model, groups)
    comm_stats.reset()
    forward_backward(model, x)
    counted, calls = comm_stats.snapshot(), comm_stats.calls()
    predicted = pm.predict_step(SHAPE, layout, load_machine("a100-40gb-4x-hdr200"),
                                pm.TrainSetup(global_batch=B * layout.data, precision="fp32",
                                              checkpointing=checkpointing))
    jigsaw = {k: v for k, v in predicted.collectives.items() if not k.endswith("/data")}
    assert jigsaw == counted
    assert pm.collective_calls(SHAPE, layout, checkpointing) == calls
    if not checkpointing:   # the model's Jigsaw bytes are comm_model's, exactly
        assert jigsaw == step_comm_bytes(CFG, H, W, C_IN, C_OUT, layout, B, 0, 4)


def test_data_parallel_traffic_is_the_gradient_and_parameter_bytes():
    layout = Layout(4, 2, 1)
    P = pm.params_held(SHAPE, layout)
    pred = pm.predict_step(SHAPE, layout, load_machine("a100-40gb-4x-hdr200"), pm.TrainSetup(global_batch=8))
    assert pred.collectives["reduce_scatter/data"] == pred.collectives["all_gather/data"] == 2 * P
    assert pm.data_parallel_bytes(P, layout, pm.TrainSetup(8, zero_stage=0)) == {"all_reduce/data": 2 * P}
    assert pm.data_parallel_bytes(P, Layout(1, 2, 1), pm.TrainSetup(8)) == {}


def test_read_bytes_per_rank_are_the_rank_tile():
    full = pm.read_bytes_per_rank(SHAPE, Layout(), 1)
    assert full == 2 * C_OUT * H * W * 4
    tiles = [pm.read_bytes_per_rank(SHAPE, Layout(1, 3, 2), 1, domain_rank=d) for d in range(3)]
    assert sum(tiles) * 2 == full           # 3 latitude bands x 2 longitude tiles cover the globe once
    with_history = dataclasses.replace(SHAPE, cfg=dataclasses.replace(SHAPE.cfg, history_steps=2))
    assert pm.read_bytes_per_rank(with_history, Layout(), 1) == 4 * C_OUT * H * W * 4  # + 2 earlier states


# ---- times -------------------------------------------------------------------------------------------------
def test_ring_alpha_beta():
    assert pm.ring_time("all_reduce", 8e9, 4, 100e9, 1e-5) == pytest.approx(6 * 1e-5 + 2 * 0.75 * 8e9 / 100e9)
    assert pm.ring_time("all_gather", 8e9, 4, 100e9, 1e-5, calls=3) == pytest.approx(9 * 1e-5 + 0.75 * 8e9 / 100e9)
    assert pm.ring_time("reduce_scatter", 8e9, 1, 100e9, 1e-5) == 0


def test_group_placement_tensor_fastest_then_domain_then_data():
    m = load_machine("a100-40gb-4x-hdr200")          # 4 GPUs per node
    lay = Layout(2, 2, 2)                              # ranks: tensor (0,1), domain (0,2), data (0,4)
    assert not pm.placement("tensor", lay, 4)["spans_nodes"]
    assert not pm.placement("domain", lay, 4)["spans_nodes"]
    assert not pm.placement("jigsaw", lay, 4)["spans_nodes"]
    data = pm.placement("data", lay, 4)
    assert data == {"size": 2, "spans_nodes": True, "groups_per_node": 4}
    assert pm.link("data", lay, m)[0] == pytest.approx(m.inter_gbps_per_gpu * 1e9)   # 4 rings share 4 NICs
    wide = Layout(1, 8, 1)                             # one domain ring over 2 nodes: all 4 NICs for it
    assert pm.link("domain", wide, m)[0] == pytest.approx(min(m.intra_gbps, 4 * m.inter_gbps_per_gpu) * 1e9)
    assert pm.link("tensor", wide, m) == (m.intra_gbps * 1e9, m.intra_latency_us * 1e-6)


def test_step_time_orders_and_bottlenecks():
    cfg = load(os.path.join(ROOT, "configs", "era5_025deg.json"))
    shape = pm.ModelShape.from_config(cfg)
    m = load_machine("h100-80gb-4x-ndr400")
    pred = pm.predict_step(shape, Layout(4, 4, 1), m, pm.TrainSetup(global_batch=16))
    t = pred.times
    assert t["overlapped"] <= t["prefetch"] <= t["serial"]
    assert pred.fits and pred.bottleneck() in ("compute", "communication", "I/O")
    too_big = pm.predict_step(shape, Layout(1, 1, 1), m, pm.TrainSetup(global_batch=16))
    assert not too_big.fits and too_big.bottleneck() == "memory"
    with pytest.raises(ValueError, match="parallel.tensor = 7"):
        pm.predict_step(shape, Layout(1, 1, 7), m, pm.TrainSetup(global_batch=16))


def test_bare_stack_rates_measured_on_h200_within_10_percent():
    """The eager mixer-stack rates measured on the H200 (STACK-NOTES) against the model's prediction."""
    m = load_machine("h200-1gpu")
    for tokens_hw, d, batch, measured in [((180, 360), 1024, 1, 459), ((90, 180), 2048, 2, 531), ((90, 180), 512, 8, 280)]:
        cfg = ModelConfig(patch=1, embed_dim=d, token_hidden=d, channel_hidden=4 * d, depth=8)
        shape = pm.ModelShape(cfg, *tokens_hw, 1, 1)
        blocks = [g for g in pm.gemms(shape, Layout(), batch) if g[0] not in ("embed", "head")]
        flops = 3 * sum(2 * a * b * c for _, a, b, c in blocks)
        rate = flops / pm.compute_time(shape, Layout(), m, batch, "bf16") / 1e12
        assert abs(rate / measured - 1) < 0.10, f"D={d}: predicted {rate:.0f}, measured {measured} TFLOP/s"


# ---- machine files and the planner -------------------------------------------------------------------------
def load_machine(name):
    return pm.Machine.load(os.path.join(MACHINES, name + ".json"))


def test_machine_files_load_and_cite_their_figures():
    names = sorted(f[:-5] for f in os.listdir(MACHINES) if f.endswith(".json"))
    assert {"a100-40gb-4x-hdr200", "h100-80gb-4x-ndr400", "h200-1gpu"} <= set(names)
    for name in names:
        m = load_machine(name)
        assert m.gemm_tflops["bf16"] <= m.peak_tflops["bf16"]
        assert "datasheet" in m.comment


def test_plan_ranks_feasible_layouts(capsys, tmp_path):
    from jigsaw_ds.perf import plan

    def run(gpus, *extra):
        out = tmp_path / f"plan{gpus}.json"
        code = plan.main(["--config", os.path.join(ROOT, "configs", "era5_025deg.json"), "--gpus", str(gpus),
                          "--machine", os.path.join(MACHINES, "a100-40gb-4x-hdr200.json"), "--json", str(out), *extra])
        assert code == 0
        return json.loads(out.read_text()), capsys.readouterr().out

    res, text = run(8)
    assert "rank" in text and "bottleneck" in text
    ranked = res["feasible"]
    assert len(ranked) >= 5 and all(r["world"] == 8 and r["micro_batch"] * r["layout"][0] == 16 for r in ranked)
    times = [r["t_step_s"] for r in ranked]
    assert times == sorted(times)
    assert all(r["memory_gb"] <= 40 and r["bottleneck"] in ("compute", "communication", "I/O") for r in ranked)

    res, text = run(4)                       # 16 samples on 4 A100-40GB: about 55 GB of activations per rank
    assert not res["feasible"] and all(r["reason"].startswith("memory") for r in res["infeasible"])
    assert "no layout fits" in text
    res, _ = run(4, "--accumulate")          # with gradient accumulation they fit
    assert res["feasible"] and all(r["accumulation"] > 1 for r in res["feasible"])


def test_the_grid_of_a_store_still_to_be_generated():
    """A config whose store is to be made: the grid of what its generator writes (held-suarez: its truncation's)."""
    from jigsaw_ds.config import from_dict

    def grid(generate):
        return pm.resolve_grid(from_dict({"data": {"store": "/nonexistent/x.zarr", "generate": generate,
                                                   "variables": ["geopotential"], "levels": [500]}}))

    assert grid({"kind": "held-suarez", "truncation": 42}) == (64, 128)
    assert grid({"kind": "held-suarez"}) == (32, 64)  # the default T21
    assert grid({"kind": "swe", "grid": [17, 32]}) == (17, 32)
    assert grid({"kind": "synth"}) == (33, 64)


def test_spread_is_mean_first_with_nearest_rank_p95():
    """Every reported time set (trainer log, bench/step.py, bench/loader.py) goes through perf.timing.spread:
    the mean is total / n (the rate), p95 the nearest rank (the 95th of 100 values, the 10th of 10)."""
    from jigsaw_ds.perf.timing import spread

    s = spread(range(100, 0, -1))
    assert (s["mean"], s["p95"], s["max"], s["median"], s["total"], s["n"]) == (50.5, 95, 100, 50.5, 5050, 100)
    assert spread([0.1] * 9 + [5.0])["p95"] == 5.0  # one stall in ten is the p95 of ten steps, not hidden
    assert spread([2.0])["p95"] == 2.0
    with pytest.raises(ValueError):
        spread([])


# ---- the paper's largest grid and model: configs/era5_0125deg.json, configs/era5_025deg_3b.json -----------------
def test_the_grid_named_in_a_store_path_without_a_decimal_point():
    """'era5_0125deg.zarr' is 0.125 deg (1441 x 2880), 'era5_025deg.zarr' 0.25 deg: a leading zero is the decimal
    point (it was read as 125 and 25 deg, a 2 x 3 and an 8 x 14 grid); a resolution that does not divide the
    circle is refused rather than rounded."""
    from jigsaw_ds.config import from_dict

    def grid(store):
        return pm.resolve_grid(from_dict({"data": {"store": store, "variables": ["geopotential"], "levels": [500]}}))

    assert grid("data/era5_0125deg.zarr") == (1441, 2880)
    assert grid("/nonexistent/era5_025deg.zarr") == (721, 1440)
    assert grid("data/era5_0.25deg.zarr") == grid("data/era5_0p25deg.zarr") == (721, 1440)
    assert grid("data/era5_1.5deg.zarr") == (121, 240)
    with pytest.raises(ValueError, match="7 deg does not divide"):
        grid("data/era5_7deg.zarr")


def test_a_rank_is_walked_once_per_layout(monkeypatch):
    """The planner asks for one rank's parameters and collectives in every memory check and prediction (each
    micro-batch candidate, each data size): the meta model is built once per (domain, tensor, rank) and
    micro-batch, not each time (a 3 B model's meta build takes ~0.2 s: bench/scaling.py took minutes per curve)."""
    from jigsaw_ds.perf import comm_model

    builds, build = [], comm_model.meta_model

    def counting(*args, **kwargs):
        builds.append(args[5])
        return build(*args, **kwargs)

    monkeypatch.setattr(pm, "meta_model", counting)
    monkeypatch.setattr(comm_model, "meta_model", counting)
    shape = dataclasses.replace(SHAPE, cfg=dataclasses.replace(CFG, depth=3))   # a shape no other test has walked
    m = load_machine("h100-80gb-4x-ndr400")
    for data in (1, 2, 4):
        lay = Layout(data, 2, 2)
        setup = pm.TrainSetup(global_batch=8, micro_batch=pm.best_micro_batch(shape, lay, m, pm.TrainSetup(8)))
        first = pm.predict_step(shape, lay, m, setup)
        again = pm.predict_step(shape, lay, m, setup)
        assert again.collectives == first.collectives and again.memory == first.memory
    # one walk of the parameters, one of the collectives per micro-batch used (B = 8, 4, 2, and 1 for the calls)
    assert len(builds) <= 1 + 4, builds
    # what makes the data size irrelevant to the walk: a rank's parameters and Jigsaw collectives do not depend on it
    walk = (shape.cfg, shape.n_lat, shape.n_lon, shape.c_in, shape.c_out)
    assert comm_model.params_per_rank(*walk, Layout(4, 2, 2)) == comm_model.params_per_rank(*walk, Layout(1, 2, 2))
    assert step_comm_bytes(*walk, Layout(4, 2, 2), 2) == step_comm_bytes(*walk, Layout(1, 2, 2), 2)


@pytest.mark.parametrize("name, grid, params", [("era5_0125deg", (1441, 2880), 1_144_151_360),
                                                ("era5_025deg_3b", (721, 1440), 3_122_970_704)])
def test_the_paper_scale_configs_load_and_split(name, grid, params):
    """The 0.125 deg and 3.1 B configs: every key valid, the paper's channel set (5 upper-air variables x 13
    levels + 4 surface fields), their layout accepted by the trainer's grid check, the parameter count that
    docs/perf.md states (3.1 B: within 5% of the paper's 3.2 B)."""
    import numpy as np

    from jigsaw_ds.config import check_against_grid

    cfg = load(os.path.join(ROOT, "configs", f"{name}.json"))
    shape = pm.ModelShape.from_config(cfg)            # the grid from the store name ('0125deg': 1441 x 2880)
    assert (shape.n_lat, shape.n_lon) == grid and shape.c_out == 5 * 13 + 4
    check_against_grid(cfg, shape.n_lat, np.arange(shape.n_lon) * 360 / shape.n_lon, longest_traj=10**5)
    assert pm.params_held(shape, Layout()) == params
    if name.endswith("3b"):
        assert abs(params / 3.2e9 - 1) < 0.05


def test_plan_answers_for_the_3b_model_on_256_gpus(capsys, tmp_path):
    from jigsaw_ds.perf import plan

    out = tmp_path / "plan.json"
    assert plan.main(["--config", os.path.join(ROOT, "configs", "era5_025deg_3b.json"), "--gpus", "256",
                      "--machine", os.path.join(MACHINES, "h100-80gb-4x-ndr400.json"), "--json", str(out)]) == 0
    res = json.loads(out.read_text())
    best = res["feasible"][0]
    assert best["world"] == 256 and best["layout"][0] * best["micro_batch"] == 16   # the config's global batch
    assert best["memory_gb"] <= 80 and "run the best" in capsys.readouterr().out

"""Multi-rank worker for tests/test_parallel.py: every Jigsaw layout must compute the serial function.

Run under torchrun with W ranks; for each layout of that world size it builds the serial model on every
rank (same seed), the parallel model, and compares, in fp32:
  forward      output tile, input gradient, every parameter gradient (local shard vs the serial slice)
  broken       the same with the replicated-gradient reduction switched off: must NOT match
  deepspeed    3 AdamW steps through deepspeed.initialize (ZeRO-1 and ZeRO-2, clipping active): the
               global grad norm DeepSpeed clips with, and every parameter after the steps, against the
               serial model trained with torch AdamW + clip_grad_norm_ on the global batch
  drop_path    stochastic depth (model.drop_path) and dropout (model.dropout) in training: output, input and
  dropout      parameter gradients of the replica's samples against the serial model on the global batch with
               the same seed (same masks)
  comm         bytes per collective and group of one training step vs perf/comm_model.py
  params       parameter elements per rank vs perf/comm_model.params_per_rank
Rank 0 writes one JSON with the largest error of each check over all ranks.
"""
import argparse
import dataclasses
import json
import sys
from unittest import mock

import numpy as np
import torch
import torch.distributed as dist

from jigsaw_ds.config import ModelConfig
from jigsaw_ds.forcings import forcing_channels, n_channels
from jigsaw_ds.grid import lat_cell_weights
from jigsaw_ds.model import WeatherMixer
from jigsaw_ds.parallel import comm_stats
from jigsaw_ds.parallel.layers import Replicated
from jigsaw_ds.parallel.partition import TokenPartition
from jigsaw_ds.parallel.topology import JigsawMPU, Layout, init_distributed, initialize
from jigsaw_ds.perf.comm_model import params_per_rank, step_comm_bytes
from jigsaw_ds.train.loss import AreaWeightedMSE

# 33 latitudes with patch 4: 9 token rows (padded to 36 pixel rows), split unevenly over 2 and 4 domain ranks.
H, W, C_IN, C_OUT, MICRO = 33, 32, 5, 3, 2
CFG = ModelConfig(patch=4, embed_dim=16, token_hidden=12, channel_hidden=24, depth=2, coord_features=False)
CFG_FORCED = dataclasses.replace(CFG, forcings=["toa_solar", "time_of_day", "day_of_year"], forcings_at_target=True)
C_IN_FORCED = C_IN + n_channels(CFG_FORCED.forcings, CFG_FORCED.forcings_at_target)
LAT, LON = np.linspace(90, -90, H), np.arange(W) * 360.0 / W
LAYOUTS = {2: [(1, 2, 1), (1, 1, 2), (2, 1, 1)],
           4: [(1, 2, 2), (2, 2, 1), (2, 1, 2), (1, 4, 1)]}
SEED, STEPS, LR = 7, 3, 1e-2


def rel_err(a: torch.Tensor, b: torch.Tensor, floor: float = 0.0) -> float:
    return ((a - b).abs().max() / max(b.abs().max().item(), floor, 1e-30)).item()


def max_over_ranks(value: float) -> float:
    t = torch.tensor([value], dtype=torch.float64)
    dist.all_reduce(t, op=dist.ReduceOp.MAX)
    return t.item()


def global_batch(dp: int):
    g = torch.Generator().manual_seed(123)
    x = torch.randn(MICRO * dp, C_IN, H, W, generator=g)
    y = torch.randn(MICRO * dp, C_OUT, H, W, generator=g) * 0.5 + x[:, :C_OUT]
    return x, y


def forcing_input(lat, lon, n) -> torch.Tensor:
    """[n, F, h, w]: the forcing channels of n samples at their input and target times (6 h apart)."""
    times = np.datetime64("2020-03-01T00") + np.arange(2 * n) * np.timedelta64(6, "h")
    f = forcing_channels(CFG_FORCED.forcings, lat, lon, times).reshape(n, 2, -1, len(lat), len(lon))
    return torch.from_numpy(f.reshape(n, -1, len(lat), len(lon)))  # input-time, then target-time channels


def tile(t, groups, part, data_axis=True):
    lat, lon = part.lat_slice(groups.domain_rank), part.lon_slice(groups.tensor_rank)
    if data_axis:
        t = t[groups.data_rank * MICRO:(groups.data_rank + 1) * MICRO]
    return t[:, :, lat, lon]


def forward_checks(groups, serial, x, y, weights, forcings: bool = False) -> dict:
    """Output, input grad and parameter grads of the parallel model on this replica's micro-batch. With
    `forcings`, the model (CFG_FORCED) takes forcing channels: the serial model the full field's, each rank
    the ones computed on its own tile's coordinates, as the data loader does."""
    cfg, c_in = (CFG_FORCED, C_IN_FORCED) if forcings else (CFG, C_IN)
    dp_slice = slice(groups.data_rank * MICRO, (groups.data_rank + 1) * MICRO)
    part = TokenPartition(H, W, CFG.patch, groups.layout.domain, groups.layout.tensor)
    xl = tile(x, groups, part)
    if forcings:
        la, lo = part.lat_slice(groups.domain_rank), part.lon_slice(groups.tensor_rank)
        xl = torch.cat([xl, forcing_input(LAT[la], LON[lo], len(x))[dp_slice]], dim=1)
        x = torch.cat([x, forcing_input(LAT, LON, len(x))], dim=1)
    xs = x[dp_slice].clone().requires_grad_()
    serial.zero_grad()
    out_s = serial(xs)
    AreaWeightedMSE(weights, H, W)(out_s, y[dp_slice]).backward()

    par = WeatherMixer(cfg, H, W, c_in, C_OUT, groups, seed=SEED)
    xl = xl.clone().requires_grad_()
    out = par(xl)
    AreaWeightedMSE(weights[part.lat_slice(groups.domain_rank)], H, W)(out, tile(y, groups, part)).backward()

    res = {"output": rel_err(out, tile(out_s.detach(), groups, part, False)),
           "input_grad": rel_err(xl.grad, tile(xs.grad, groups, part, False))}
    sp = dict(serial.named_parameters())
    floor = 1e-6 * max(p.grad.abs().max().item() for p in serial.parameters())
    res["param_grads"] = max(rel_err(p.grad, p.jigsaw_split.local_shard(sp[n].grad, groups, part), floor)
                             for n, p in par.named_parameters())
    return res


def serial_adamw(serial, x, y, weights, clip):
    """Serial reference: torch AdamW + clip_grad_norm_ on the global batch. Returns (norms, params)."""
    model = WeatherMixer(CFG, H, W, C_IN, C_OUT, seed=SEED)  # deepcopy would drop the split tags
    model.load_state_dict(serial.state_dict())
    opt = torch.optim.AdamW(model.parameters(), lr=LR, weight_decay=0.01)
    norms = []
    for _ in range(STEPS):
        opt.zero_grad()
        AreaWeightedMSE(weights, H, W)(model(x), y).backward()
        norms.append(torch.nn.utils.clip_grad_norm_(model.parameters(), clip).item())
        opt.step()
    return norms, dict(model.named_parameters())


def deepspeed_checks(groups, serial, x, y, weights, stage) -> dict:
    import deepspeed

    lay = groups.layout
    # clip at half the first step's norm, so clipping is active and its norm must be right
    first_norm = serial_adamw(serial, x, y, weights, 1e9)[0][0]
    clip = 0.5 * first_norm
    ref_norms, ref_params = serial_adamw(serial, x, y, weights, clip)

    par = WeatherMixer(CFG, H, W, C_IN, C_OUT, groups, seed=SEED)
    part = par.partition
    ds_config = {"train_batch_size": MICRO * lay.data, "train_micro_batch_size_per_gpu": MICRO,
                 "gradient_accumulation_steps": 1, "gradient_clipping": clip, "steps_per_print": 10**9,
                 "optimizer": {"type": "AdamW", "params": {"lr": LR, "weight_decay": 0.01, "torch_adam": True}},
                 "zero_optimization": {"stage": stage}}
    engine, *_ = deepspeed.initialize(model=par, model_parameters=par.parameters(), config=ds_config,
                                      mpu=JigsawMPU(groups))
    loss_fn = AreaWeightedMSE(weights[part.lat_slice(groups.domain_rank)], H, W)
    xl, yl = tile(x, groups, part), tile(y, groups, part)
    norms = []
    for _ in range(STEPS):
        engine.backward(loss_fn(engine(xl), yl))
        engine.step()
        norms.append(float(engine.get_global_grad_norm()))
    # Norm-wise over the whole model (squares summed over the replica: shards once, replicated on rank 0).
    init = dict(WeatherMixer(CFG, H, W, C_IN, C_OUT, groups, seed=SEED).named_parameters())
    sums = torch.zeros(3, dtype=torch.float64)
    elementwise = 0.0
    for n, p in engine.module.named_parameters():
        ref = p.jigsaw_split.local_shard(ref_params[n].detach(), groups, part)
        if p.tensor_model_parallel or groups.jigsaw_rank == 0:
            sums += torch.stack([(p.detach() - ref).double().square().sum(), ref.double().square().sum(),
                                 (ref - init[n].detach()).double().square().sum()])
        elementwise = max(elementwise, rel_err(p.detach(), ref))
    if groups.size("jigsaw") > 1:
        dist.all_reduce(sums, group=groups.handles["jigsaw"])
    diff, ref_norm, update = sums.sqrt().tolist()
    return {"clip_norm": max(abs(a - b) / b for a, b in zip(norms, ref_norms)),
            "adamw_params": diff / ref_norm, "adamw_vs_update": diff / update,
            "adamw_update_size": update / ref_norm, "adamw_elementwise_max": elementwise}


def stochastic_checks(groups, x, name: str, **changes) -> dict:
    """A model with training noise (model.drop_path, model.dropout): the serial model runs the global batch,
    each replica its micro-batch, every rank with its own state of the global random stream, so a sample is
    dropped alike in both only if the masks are a function of the global sample, the same on a replica's
    ranks and cut as the activations are. Output, input gradient, every parameter gradient, and how far the noise moved
    the output (so that a no-op cannot pass)."""
    cfg = dataclasses.replace(CFG, **changes)
    serial, par = WeatherMixer(cfg, H, W, C_IN, C_OUT, seed=SEED), WeatherMixer(cfg, H, W, C_IN, C_OUT, groups, seed=SEED)
    part = par.partition
    probe = torch.randn(x.shape[0], C_OUT, H, W, generator=torch.Generator().manual_seed(5))  # d loss / d out
    xs = x.clone().requires_grad_()
    torch.manual_seed(11)
    out_s = serial(xs)
    (out_s * probe).sum().backward()
    xl = tile(x, groups, part).clone().requires_grad_()
    torch.manual_seed(100 + groups.rank)  # the masks must not depend on the random stream
    out = par(xl)
    (out * tile(probe, groups, part)).sum().backward()
    data, sp = groups.comm("data"), dict(serial.named_parameters())
    floor = 1e-6 * max(p.grad.abs().max().item() for p in serial.parameters())
    grads = 0.0
    for n, p in par.named_parameters():  # the replica's gradient, summed over replicas: the global batch's
        if data is not None:
            dist.all_reduce(p.grad, group=data)
        grads = max(grads, rel_err(p.grad, p.jigsaw_split.local_shard(sp[n].grad, groups, part), floor))
    with torch.no_grad():
        plain = WeatherMixer(CFG, H, W, C_IN, C_OUT, seed=SEED)(x)  # no noise
    return {f"{name}_output": rel_err(out, tile(out_s.detach(), groups, part)),
            f"{name}_input_grad": rel_err(xl.grad, tile(xs.grad, groups, part)),
            f"{name}_param_grads": grads,
            f"{name}_effect": -rel_err(out_s.detach(), plain)}  # negated: the max over ranks is the smallest


def comm_and_param_checks(groups, x, y, weights) -> dict:
    par = WeatherMixer(CFG, H, W, C_IN, C_OUT, groups, seed=SEED)
    part = par.partition
    comm_stats.reset()
    out = par(tile(x, groups, part))
    AreaWeightedMSE(weights[part.lat_slice(groups.domain_rank)], H, W)(out, tile(y, groups, part)).backward()
    counted = comm_stats.snapshot()
    predicted = step_comm_bytes(CFG, H, W, C_IN, C_OUT, groups.layout, MICRO, groups.domain_rank)
    keys = set(counted) | set(predicted)
    comm_err = max([abs(counted.get(k, 0) - predicted.get(k, 0)) / max(predicted.get(k, 0), 1) for k in keys] or [0.0])
    pred = params_per_rank(CFG, H, W, C_IN, C_OUT, groups.layout, groups.domain_rank)
    held = sum(p.numel() for p in par.parameters())
    return {"comm_bytes": comm_err, "param_count": abs(held - pred["sharded"] - pred["replicated"]),
            "_comm_counted": counted, "_params": {"held": held, **pred}}


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", required=True)
    args = ap.parse_args()
    rank, world, _ = init_distributed("gloo")
    torch.set_num_threads(1)
    weights = torch.from_numpy(lat_cell_weights(torch.linspace(90, -90, H).numpy())).float()
    serial = WeatherMixer(CFG, H, W, C_IN, C_OUT, seed=SEED)
    serial_forced = WeatherMixer(CFG_FORCED, H, W, C_IN_FORCED, C_OUT, seed=SEED)
    results = {}
    for dims in LAYOUTS[world]:
        layout = Layout(*dims)
        groups = initialize(layout)
        x, y = global_batch(layout.data)
        res = forward_checks(groups, serial, x, y, weights)
        # a model whose replicated parameters skip their gradient sum (a test double of the Split's rule)
        with mock.patch.object(Replicated, "materialize", lambda self, p, groups: p):
            res["broken_param_grads"] = forward_checks(groups, serial, x, y, weights)["param_grads"]
        for key, value in forward_checks(groups, serial_forced, x, y, weights, forcings=True).items():
            res[f"forced_{key}"] = value
        for stage in (1, 2):
            for key, value in deepspeed_checks(groups, serial, x, y, weights, stage).items():
                res[f"zero{stage}_{key}"] = value
        res.update(stochastic_checks(groups, x, "drop_path", drop_path=0.5))
        res.update(stochastic_checks(groups, x, "dropout", dropout=0.3))
        extra = comm_and_param_checks(groups, x, y, weights)
        res.update({k: max_over_ranks(v) for k, v in res.items()})
        res.update({k: max_over_ranks(v) for k, v in extra.items() if not k.startswith("_")})
        res["rank0_comm_bytes"], res["rank0_params"] = extra["_comm_counted"], extra["_params"]
        results[str(dims)] = res
    if rank == 0:
        with open(args.out, "w") as f:
            json.dump(results, f, indent=1)
    dist.barrier()
    dist.destroy_process_group()


if __name__ == "__main__":
    sys.exit(main())

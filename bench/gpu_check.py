"""Does the serial WeatherMixer compute the same function on CUDA (fp32 and bf16) as on the CPU?

    python bench/gpu_check.py --out check.json          # on the GPU machine (bench/gpu.sh runs it first)
    python bench/gpu_check.py --grid 91x180             # anywhere: without CUDA only the CPU fp32 row runs

The 0.25 deg grid (721 x 1440, patch 4: 65160 tokens) with the config's 69 state channels, 2 statics and the
coordinate features, at a small width (D 128, Dt 128, Dc 512, 2 blocks), batch 1, fresh random inputs and
targets. Reference: the same model in float64 on the CPU. For each run (CPU fp32, CUDA fp32, CUDA bf16) it
reports ||out - ref|| / ||ref|| of the forecast, of the tendency (forecast minus input state: what the model
adds, so that the exact copy of the input does not hide an error), of the area-weighted MSE loss, and of every
parameter's gradient (the worst parameter and all gradients together). Limits (METHOD.md): fp32 far under
1e-3, bf16 operands 1e-3..1e-2; any non-finite value fails. Exit status 1 when a limit is exceeded.
"""
from __future__ import annotations

import argparse
import datetime
import json
import os
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

import numpy as np  # noqa: E402
import torch  # noqa: E402

from jigsaw_ds.config import ModelConfig  # noqa: E402
from jigsaw_ds.grid import lat_cell_weights  # noqa: E402
from jigsaw_ds.model import WeatherMixer  # noqa: E402
from jigsaw_ds.model.inputs import InputSpec  # noqa: E402
from jigsaw_ds.train.loss import AreaWeightedMSE  # noqa: E402

LIMITS = {"fp32": 1e-4, "bf16": 2e-2}   # relative error limits, forward and gradients


def rel(a: torch.Tensor, ref: torch.Tensor) -> float:
    a, ref = a.double().cpu(), ref.double().cpu()
    return float((a - ref).norm() / ref.norm())


def forward_backward(model, x, y, loss_fn):
    """Forecast, loss and every parameter's gradient (float64 on the host) of one forward + backward."""
    model.zero_grad(set_to_none=True)
    out = model(x)
    loss = loss_fn(out.float() if out.dtype == torch.bfloat16 else out, y)
    loss.backward()
    grads = {n: p.grad.double().cpu() for n, p in model.named_parameters()}
    return out.detach().double().cpu(), loss.detach().double().cpu(), grads


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--grid", default="721x1440")
    ap.add_argument("--width", type=int, default=128, help="D and Dt; Dc is 4x")
    ap.add_argument("--depth", type=int, default=2)
    ap.add_argument("--out", default=os.path.join(ROOT, "bench", "results", "gpu_check.json"))
    args = ap.parse_args(argv)
    n_lat, n_lon = (int(v) for v in args.grid.split("x"))
    torch.manual_seed(0)
    rng = np.random.default_rng(0)

    cfg = ModelConfig(patch=4, embed_dim=args.width, token_hidden=args.width, channel_hidden=4 * args.width,
                      depth=args.depth, static_variables=["land_sea_mask", "geopotential_at_surface"],
                      coord_features=True)
    n_state = 5 * 13 + 4  # configs/era5_025deg.json: 5 upper-air variables x 13 levels + 4 surface fields
    c_in = InputSpec(tuple(f"c{i}" for i in range(n_state)), tuple(cfg.static_variables), cfg.coord_features).n_in
    x = torch.from_numpy(rng.standard_normal((1, c_in, n_lat, n_lon), dtype=np.float32))
    y = x[:, :n_state] + 0.1 * torch.from_numpy(rng.standard_normal((1, n_state, n_lat, n_lon), dtype=np.float32))
    row_w = torch.from_numpy(lat_cell_weights(np.linspace(90, -90, n_lat))).float()

    def run(device, dtype):
        model = WeatherMixer(cfg, n_lat, n_lon, c_in, n_state, seed=1).to(device, dtype)
        # the state and the loss stay in the input's precision; bf16 is the weights' and activations'
        xin = x.to(device, torch.float64 if dtype == torch.float64 else torch.float32)
        return forward_backward(model, xin, y.to(device, xin.dtype), AreaWeightedMSE(row_w, n_lat, n_lon))

    ref_out, ref_loss, ref_grads = run("cpu", torch.float64)
    ref_tend = ref_out - x[:, :n_state].double()
    runs = [("cpu", "fp32")] + ([("cuda", "fp32"), ("cuda", "bf16")] if torch.cuda.is_available() else [])
    res = {"date": datetime.date.today().isoformat(), "grid": [n_lat, n_lon], "model": vars(cfg),
           "c_in": c_in, "c_out": n_state, "torch": torch.__version__,
           "device": torch.cuda.get_device_name() if torch.cuda.is_available() else "cpu",
           "tf32_matmul": torch.backends.cuda.matmul.allow_tf32, "limits": LIMITS, "runs": {}}
    failed = []
    print(f"{'run':12s} {'forecast':>10} {'tendency':>10} {'loss':>10} {'grads':>10} {'worst grad':>10}  worst parameter")
    for device, name in runs:
        out, loss, grads = run(device, {"fp32": torch.float32, "bf16": torch.bfloat16}[name])
        per_param = {n: rel(g, ref_grads[n]) for n, g in grads.items()}
        worst = max(per_param, key=per_param.get)
        flat = lambda gs: torch.cat([g.flatten() for g in gs.values()])
        row = {"forecast": rel(out, ref_out), "tendency": rel(out - x[:, :n_state].double(), ref_tend),
               "loss": rel(loss, ref_loss), "grads": rel(flat(grads), flat(ref_grads)),
               "worst_grad": per_param[worst], "worst_param": worst, "per_param": per_param,
               "finite": bool(torch.isfinite(out).all() and all(torch.isfinite(g).all() for g in grads.values()))}
        res["runs"][f"{device}_{name}"] = row
        keys = ("forecast", "tendency", "loss", "grads", "worst_grad")
        ok = row["finite"] and all(row[k] <= LIMITS[name] for k in keys)
        failed += [] if ok else [f"{device}_{name}"]
        print(f"{device + ' ' + name:12s} " + " ".join(f"{row[k]:10.2e}" for k in keys) + f"  {worst}"
              + ("" if ok else "  OVER LIMIT"), flush=True)
        os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
        with open(args.out, "w") as f:   # rewritten after each run: a cut-off run keeps what it measured
            json.dump(res, f, indent=1)
    res["failed"] = failed
    with open(args.out, "w") as f:
        json.dump(res, f, indent=1)
    print("FAILED: " + ", ".join(failed) if failed else "all runs within limits")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())

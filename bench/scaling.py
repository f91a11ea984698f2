"""Predicted strong and weak scaling, 1 to 256 GPUs, data-parallel only vs Jigsaw (perf/step_model.py; no GPU needed).

    python bench/scaling.py [--config CFG.json ...] [--precision bf16|fp32] [--extra] [--png PNG] [--out-dir DIR]

Each --config (default configs/era5_025deg.json; repeat it for several) gets bench/results/scaling_<name>.json
(scaling_<name>_fp32.json with --precision fp32): the strong and weak curves of every scenario, the 256-GPU
figures beside the paper's (PFLOP/s, % of peak, efficiency vs DP-only) and jigsaw-plan's answer (perf/plan.py's
`plan`, the same function) for 64, 128 and 256 GPUs of every configs/machines file. --png plots the first config.
These are predictions of the analytic model, not measurements.

Definitions (bf16, ZeRO-1, no activation checkpointing, step time with data prefetch = the trainer's overlap):
  strong  fixed global batch G = 256 samples; gradient accumulation where a micro-batch does not fit (small N).
          efficiency E(N) = t(N0) N0 / (N t(N)), against N0 = 1 GPU (or the smallest N that fits) and against
          N0 = one node (4 GPUs).
  weak    one sample per model replica per step (the large-sample regime of 0.25 deg data): DP-only has
          G = N, Jigsaw G = N / M. efficiency = model TFLOP/s per GPU at N / the same at N0 (1 GPU; one node).
  DP-only is (N, 1, 1). Jigsaw is, at each N, the fastest layout with M = domain x tensor > 1 (by the planner).
Scenarios: the two machine files, and the A100 machine with a shared file system limited to 2 GB/s per node
plus the page-cache model (1 year of 6-hourly data on the config's grid, 1460 time steps: 419 GB at 0.25 deg,
1.67 TB at 0.125 deg; 256 GB page cache per node).
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import os
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from jigsaw_ds import config as jconfig  # noqa: E402
from jigsaw_ds.parallel.topology import Layout  # noqa: E402
from jigsaw_ds.perf import plan as jplan  # noqa: E402
from jigsaw_ds.perf import step_model as pm  # noqa: E402
from jigsaw_ds.perf.step_model import Machine, ModelShape, TrainSetup  # noqa: E402

GPUS = [1, 2, 4, 8, 16, 32, 64, 128, 256]
STRONG_BATCH = 256
PLAN_GPUS = (64, 128, 256)
# Kieckhefen et al., arXiv:2507.05753 (abstract): 256 GPUs, two systems. The paper's peak, 9 PFLOP/s / 23% =
# 11 PFLOP/s / 28% = 39 PFLOP/s = 256 x 153 TFLOP/s, is the A100's TF32 dense peak (156): derived here, not stated.
PAPER_256 = {"pflops": (9, 11), "percent_of_peak": (23, 28), "efficiency_jigsaw": (68, 72), "efficiency_dp_only": 51}


def scenarios(extra: bool = False) -> dict:
    mdir = os.path.join(ROOT, "configs", "machines")
    a100 = Machine.load(os.path.join(mdir, "a100-40gb-4x-hdr200.json"))
    h100 = Machine.load(os.path.join(mdir, "h100-80gb-4x-ndr400.json"))
    shared_fs = dataclasses.replace(a100, name=a100.name + ", shared FS 2 GB/s/node + page cache",
                                    fs_gbps_per_node=2.0, loader_gbps_per_rank=4.0, page_cache_gb_per_node=256)
    return {"A100, loader-limited I/O": (a100, 0),
            "H100, fast I/O (compute/communication-limited)": (h100, 0),
            "A100, shared-FS-limited I/O + page cache": (shared_fs, 1460),
            **({"A100, fast I/O": (dataclasses.replace(a100, name=a100.name + ", fast I/O", loader_gbps_per_rank=8.0,
                                                       fs_gbps_per_node=40.0), 0)} if extra else {})}


def fastest(shape, machine, setups_by_layout) -> tuple:
    """(prediction, layout) of the fastest layout that fits, among {layout: setup}; (None, None) if none."""
    best = (None, None, None)
    for layout, setup in setups_by_layout.items():
        if pm.layout_problems(shape, layout, setup):
            continue
        if setup.micro_batch is None:
            micro = pm.best_micro_batch(shape, layout, machine, setup)
            if micro is None:
                continue
            setup = dataclasses.replace(setup, micro_batch=micro)
        pred = pm.predict_step(shape, layout, machine, setup)
        key = (round(pred.t_step(), 6), pred.times["serial"])          # ties (I/O-bound): less exposed work
        if pred.fits and (best[0] is None or key < best[2]):
            best = (pred, layout, key)
    return best[:2]


def strong(shape, machine, dataset_steps, precision="bf16") -> list[dict]:
    setup = TrainSetup(global_batch=STRONG_BATCH, micro_batch=None, dataset_steps=dataset_steps, precision=precision)
    rows = []
    for n in GPUS:
        dp, _ = fastest(shape, machine, {Layout(n, 1, 1): setup})
        jig, _ = fastest(shape, machine, {lay: setup for lay in pm.layouts_for(n) if lay.model_parallel > 1})
        rows.append({"gpus": n, "dp": summary(dp), "jigsaw": summary(jig)})
    rows[0]["jigsaw"] = dict(rows[0]["dp"])          # at N = 1 both series are the same single GPU
    add_efficiency(rows, machine, lambda r: 1 / (r["gpus"] * r["t_step_s"]))
    return rows


def weak(shape, machine, dataset_steps, precision="bf16") -> list[dict]:
    rows = []
    for n in GPUS:
        dp_setup = TrainSetup(global_batch=n, micro_batch=1, dataset_steps=dataset_steps, precision=precision)
        dp, _ = fastest(shape, machine, {Layout(n, 1, 1): dp_setup})
        best = None
        for lay in pm.layouts_for(n):              # by TFLOP/s per GPU, not step time (G differs with M)
            if lay.model_parallel == 1:
                continue
            st = TrainSetup(global_batch=lay.data, micro_batch=1, dataset_steps=dataset_steps, precision=precision)
            pred, _ = fastest(shape, machine, {lay: st})
            if pred and (best is None or pred.tflops_per_gpu() > best.tflops_per_gpu()):
                best = pred
        rows.append({"gpus": n, "dp": summary(dp), "jigsaw": summary(best)})
    rows[0]["jigsaw"] = dict(rows[0]["dp"])
    add_efficiency(rows, machine, lambda r: r["tflops_per_gpu"])
    return rows


def add_efficiency(rows, machine, rate) -> None:
    """efficiency = rate(N) / rate(N0), N0 = the smallest N that fits; efficiency_node: N0 = one node."""
    for key in ("dp", "jigsaw"):
        fitting = [r for r in rows if r[key]]
        if not fitting:
            continue
        first = fitting[0]
        node = next((r for r in fitting if r["gpus"] >= machine.gpus_per_node), None)
        for r in fitting:
            s = r[key]
            s["efficiency"] = rate(s | {"gpus": r["gpus"]}) / rate(first[key] | {"gpus": first["gpus"]})
            s["efficiency_node"] = (rate(s | {"gpus": r["gpus"]}) / rate(node[key] | {"gpus": node["gpus"]})
                                    if node and r["gpus"] >= node["gpus"] else None)


def summary(pred) -> dict:
    if pred is None:
        return {}
    lay = pred.layout
    return {"layout": [lay.data, lay.domain, lay.tensor], "micro_batch": pred.micro_batch,
            "accumulation": pred.accumulation, "t_step_s": pred.t_step(), "tflops_per_gpu": pred.tflops_per_gpu(),
            "bottleneck": pred.bottleneck(), "t_compute_s": pred.t_compute, "t_comm_s": pred.t_comm,
            "t_io_s": pred.t_io, "memory_gb": pred.memory["total"] / pm.GB}


def markdown(name: str, kind: str, rows: list[dict]) -> str:
    out = [f"**{kind} scaling, {name}**", "",
           "| GPUs | DP-only layout | step s | TFLOP/s/GPU | eff. vs N0 | vs 1 node | bound "
           "| Jigsaw layout | step s | TFLOP/s/GPU | eff. vs N0 | vs 1 node | bound |",
           "|---" * 13 + "|"]
    for r in rows:
        cells = [str(r["gpus"])]
        for key in ("dp", "jigsaw"):
            s = r[key]
            if not s:
                cells += ["does not fit / G < N", "", "", "", "", ""]
                continue
            lay = "(%d, %d, %d)" % tuple(s["layout"])
            if s["accumulation"] > 1:
                lay += f" micro {s['micro_batch']} x {s['accumulation']}"
            node = "" if s.get("efficiency_node") is None else f"{s['efficiency_node']:.0%}"
            cells += [lay, f"{s['t_step_s']:.3f}", f"{s['tflops_per_gpu']:.0f}", f"{s['efficiency']:.0%}", node,
                      s["bottleneck"]]
        out.append("| " + " | ".join(cells) + " |")
    return "\n".join(out)


def at_256(res: dict, machine: Machine, precision: str) -> dict:
    """The 256-GPU point of each study, in the paper's terms: PFLOP/s of all GPUs, % of the datasheet peak,
    scaling efficiency of Jigsaw and of DP-only against N0 (the smallest GPU count that fits: 1 GPU where the
    model fits one) and against one node."""
    out = {}
    for kind in ("strong", "weak"):
        last = res[kind][-1]
        out[kind] = {key: ({"layout": s["layout"], "pflops": s["tflops_per_gpu"] * last["gpus"] / 1e3,
                            "percent_of_peak": 100 * s["tflops_per_gpu"] / machine.peak_tflops[precision],
                            "efficiency": s["efficiency"], "n0": next(r["gpus"] for r in res[kind] if r[key]),
                            "efficiency_node": s["efficiency_node"]} if s else None)
                     for key in ("dp", "jigsaw") for s in [last[key]]}
    return out


def markdown_256(rows: list[tuple[str, str, dict]]) -> str:
    """One line per (scenario, study): Jigsaw and DP-only at 256 GPUs, the paper's figures in the last line."""
    out = ["| scenario | study | Jigsaw layout | PFLOP/s | % of peak | eff. vs N0 (N0) | vs 1 node "
           "| DP-only PFLOP/s | % of peak | eff. vs N0 (N0) | vs 1 node |", "|---" * 11 + "|"]
    def pct(v):
        return "" if v is None else f"{v:.0%}"

    for name, kind, r in rows:
        cells = [name, kind]
        for key in ("jigsaw", "dp"):
            s = r[key]
            if not s:
                cells += ([""] if key == "jigsaw" else []) + ["does not fit / G < N", "", "", ""]
                continue
            cells += (["(%d, %d, %d)" % tuple(s["layout"])] if key == "jigsaw" else []) + [
                f"{s['pflops']:.1f}", f"{s['percent_of_peak']:.0f}%", f"{pct(s['efficiency'])} ({s['n0']})",
                pct(s["efficiency_node"])]
        out.append("| " + " | ".join(cells) + " |")
    p = PAPER_256
    out.append(f"| **paper** (two HPC systems, measured) | not stated | | {p['pflops'][0]} and {p['pflops'][1]} "
               f"| {p['percent_of_peak'][0]}% and {p['percent_of_peak'][1]}% "
               f"| {p['efficiency_jigsaw'][0]}% and {p['efficiency_jigsaw'][1]}% | | | | "
               f"{p['efficiency_dp_only']}% | |")
    return "\n".join(out)


def machine_files() -> dict:
    mdir = os.path.join(ROOT, "configs", "machines")
    return {f[:-5]: Machine.load(os.path.join(mdir, f)) for f in sorted(os.listdir(mdir)) if f.endswith(".json")}


def plans(shape: ModelShape, config_batch: int, precision: str) -> list[dict]:
    """jigsaw-plan's best layout for PLAN_GPUS of every machine file: at the config's global batch as jigsaw-plan
    runs by default (no accumulation), and at the strong-scaling batch with --accumulate."""
    out = []
    for mname, machine in machine_files().items():
        for gpus in PLAN_GPUS:
            for batch, accumulate in ((config_batch, False), (STRONG_BATCH, True)):
                res = jplan.plan(shape, gpus, machine, TrainSetup(global_batch=batch, precision=precision), accumulate)
                best = res["feasible"][0] if res["feasible"] else None
                out.append({"machine": mname, "gpus": gpus, "global_batch": batch, "accumulate": accumulate,
                            "feasible": len(res["feasible"]),
                            "best": best and {k: best[k] for k in ("layout", "micro_batch", "accumulation", "t_step_s",
                                                                   "tflops_per_gpu", "mfu", "memory_gb", "bottleneck",
                                                                   "explanation")}})
    return out


def markdown_plans(rows: list[dict]) -> str:
    """One line per machine file and GPU count: the best layout at each of the two global batches."""
    batches = sorted({(r["global_batch"], r["accumulate"]) for r in rows})
    head = "| machine file | GPUs | " + " | ".join(
        f"G = {g}{' --accumulate' if acc else ''}: best (d, dom, t), micro x acc | step ms | TFLOP/s/GPU (MFU) "
        f"| mem GB | bound" for g, acc in batches) + " |"
    out = [head, "|---" * (2 + 5 * len(batches)) + "|"]
    for key in dict.fromkeys((r["machine"], r["gpus"]) for r in rows):
        cells = [key[0], str(key[1])]
        for batch in batches:
            b = next(r["best"] for r in rows if (r["machine"], r["gpus"]) == key
                     and (r["global_batch"], r["accumulate"]) == batch)
            cells += (["none fits", "", "", "", ""] if not b else
                      ["(%d, %d, %d), %d x %d" % (*b["layout"], b["micro_batch"], b["accumulation"]),
                       f"{b['t_step_s'] * 1e3:.0f}", f"{b['tflops_per_gpu']:.0f} ({b['mfu']:.1%})",
                       f"{b['memory_gb']:.1f}", b["bottleneck"]])
        out.append("| " + " | ".join(cells) + " |")
    return "\n".join(out)


def describe(shape: ModelShape) -> str:
    c = shape.cfg
    params = pm.params_held(shape, Layout())
    tflop = pm.flops_per_rank(shape, Layout(), 1) / 1e12
    return (f"{shape.n_lat} x {shape.n_lon}, patch {c.patch}, {shape.n_tokens} tokens, D {c.embed_dim}, "
            f"Dt {c.token_hidden}, Dc {c.channel_hidden}, {c.depth} blocks, {shape.c_in} -> {shape.c_out} channels, "
            f"{params:,} parameters, {tflop:.1f} TFLOP per training sample")


def plot(results: dict, path: str, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(2, len(results), figsize=(5 * len(results), 8), sharex=True)
    for col, (name, res) in enumerate(results.items()):
        for row, kind in enumerate(("strong", "weak")):
            ax = axes[row][col]
            for key, label, style in (("dp", "data-parallel only", "C0o--"), ("jigsaw", "Jigsaw (best M > 1)", "C1s-")):
                pts = [(r["gpus"], r[key]["efficiency"]) for r in res[kind] if r[key]]
                if pts:                      # a series that never fits (DP-only of the 3 B model on 40 GB) is left out
                    ax.plot(*zip(*pts), style, label=label)
            ax.axhline(1.0, color="grey", lw=0.8)
            top = max(r[key]["efficiency"] for r in res[kind] for key in ("dp", "jigsaw") if r[key])
            ax.set_ylim(0, max(1.25, 1.1 * top))
            ax.set_xscale("log", base=2)
            ax.set_title(f"{kind}: {name}", fontsize=9)
            ax.set_ylabel("efficiency vs N0" if kind == "strong" else "TFLOP/s per GPU vs N0")
            ax.set_xlabel("GPUs")
            ax.legend(fontsize=8)
    fig.suptitle(f"WeatherMixer {title}, predicted by jigsaw_ds/perf/step_model.py", fontsize=9)
    fig.tight_layout()
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    fig.savefig(path, dpi=110)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--precision", choices=["bf16", "fp32"], default="bf16")
    ap.add_argument("--extra", action="store_true", help="add the A100 machine with fast I/O as a fourth scenario")
    ap.add_argument("--config", action="append", default=[],
                    help="jigsaw config JSON; repeat for several (default configs/era5_025deg.json)")
    ap.add_argument("--png", default="", help="plot the first config's curves to this file (docs/scaling.png)")
    ap.add_argument("--out-dir", default=os.path.join(ROOT, "bench", "results"),
                    help="writes scaling_<config name>[_fp32].json here")
    args = ap.parse_args(argv)
    paths = args.config or [os.path.join(ROOT, "configs", "era5_025deg.json")]
    for n, path in enumerate(paths):
        cfg = jconfig.load(path)
        shape = ModelShape.from_config(cfg)
        name = os.path.splitext(os.path.basename(path))[0]
        print(f"## {name}: {describe(shape)}\n")
        results, summary = {}, []
        for scenario, (machine, dataset_steps) in scenarios(args.extra).items():
            res = {"strong": strong(shape, machine, dataset_steps, args.precision),
                   "weak": weak(shape, machine, dataset_steps, args.precision)}
            res["at_256"] = at_256(res, machine, args.precision)
            results[scenario] = res
            summary += [(scenario, kind, res["at_256"][kind]) for kind in ("strong", "weak")]
            for kind in ("strong", "weak"):
                print(markdown(scenario, kind, res[kind]) + "\n")
        print(f"**256 GPUs beside the paper ({args.precision}; model predictions)**\n\n{markdown_256(summary)}\n")
        planned = plans(shape, cfg.train.global_batch, args.precision)
        print(f"**jigsaw-plan, best layout ({args.precision}, ZeRO-1, prefetch)**\n\n{markdown_plans(planned)}\n")
        if n == 0 and args.png:
            plot(results, args.png, describe(shape))
            print(f"wrote {args.png}")
        out = os.path.join(args.out_dir, f"scaling_{name}" + ("_fp32" if args.precision == "fp32" else "") + ".json")
        os.makedirs(os.path.dirname(os.path.abspath(out)), exist_ok=True)
        with open(out, "w") as f:
            json.dump({"config": os.path.relpath(os.path.abspath(path), ROOT), "model": describe(shape),
                       "precision": args.precision, "prediction": "analytic model (jigsaw_ds/perf/step_model.py), "
                       "not a measurement", "paper_256_gpus": PAPER_256, "scenarios": results, "plans": planned},
                      f, indent=1)
        print(f"wrote {out}\n")


if __name__ == "__main__":
    main()

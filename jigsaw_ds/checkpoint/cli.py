"""jigsaw-ckpt: inspect checkpoints and convert them to the layout-free format.

  jigsaw-ckpt export RUN_DIR --out FILE [--tag step_XXXXXXXX]
      Gather a DeepSpeed checkpoint of RUN_DIR (default: its newest complete one) into full tensors
      (weights, Adam moments, step, LR scheduler, config). It starts CPU ranks (gloo) in the checkpoint's
      layout, so it runs on one machine whatever machine trained it.
  jigsaw-ckpt info PATH
      A layout-free FILE or a RUN_DIR: layout, step, model config, tensor count and bytes.
To continue from an exported file at any layout and ZeRO stage: jigsaw-train ... --init-from FILE.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys

import torch

from ..parallel.allocation import env_rank
from ..quiet import quiet_libraries
from .layout_free import FORMAT, build_model, load_file
from .manager import CheckpointManager, verify


def load_run_config(run_dir: str) -> dict:
    """The resolved config a jigsaw-train run wrote to RUN_DIR/config.json; ValueError naming it otherwise."""
    path = os.path.join(run_dir, "config.json")
    if not os.path.exists(path):
        raise ValueError(f"{path} does not exist (RUN_DIR is train.out_dir of a jigsaw-train run)")
    with open(path) as f:
        return json.load(f)


def export(run_dir: str, out: str, tag: str = "") -> None:
    run_config = load_run_config(run_dir)
    root = os.path.join(run_dir, "checkpoints")
    folder = os.path.dirname(os.path.abspath(out))
    if not os.path.isdir(folder):
        raise ValueError(f"--out {out}: folder {folder} does not exist")
    if not tag:
        tag, refused = CheckpointManager(root, 1).latest_complete()
        if not tag:
            raise ValueError(f"no complete checkpoint in {root} ({'; '.join(refused) or 'none'})")
    why = verify(os.path.join(root, tag))  # the same check as --resume and info: every reader verifies
    if why:
        raise ValueError(f"checkpoint {os.path.join(root, tag)} is refused: {why}")
    layout = run_config["layout"]
    world = layout["data"] * layout["domain"] * layout["tensor"]
    torchrun = os.path.join(os.path.dirname(sys.executable), "torchrun")
    env = dict(os.environ, OMP_NUM_THREADS=os.environ.get("OMP_NUM_THREADS", "1"), CUDA_VISIBLE_DEVICES="")
    for key in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT"):
        env.pop(key, None)
    subprocess.run([torchrun, "--standalone", "--nproc_per_node", str(world), "-m", "jigsaw_ds.checkpoint.cli",
                    "_export_worker", run_dir, tag, out], env=env, check=True)
    print(f"jigsaw-ckpt: wrote {out} from {os.path.join(root, tag)} (layout {layout})")


def _export_worker(run_dir: str, tag: str, out: str) -> None:
    """One rank of the export job: rebuild the engine at the checkpoint's layout, load, gather, write."""
    import deepspeed
    import torch.distributed as dist

    from ..parallel.topology import JigsawMPU, Layout, init_distributed, initialize
    from .layout_free import export_state

    run_config = load_run_config(run_dir)
    init_distributed("gloo")
    torch.set_num_threads(1)
    groups = initialize(Layout(**run_config["layout"]))
    model = build_model(run_config, groups)
    # The run's own DeepSpeed config: the optimizer wrapper (and so the checkpoint's file names) depends on
    # precision and ZeRO stage. bf16 runs on CPU ranks too; the fp32 master weights are what is exported.
    engine, *_ = deepspeed.initialize(model=model, model_parameters=model.parameters(), config=run_config["deepspeed"],
                                      mpu=JigsawMPU(groups))
    _, client = engine.load_checkpoint(os.path.join(run_dir, "checkpoints"), tag=tag)
    state = export_state(engine, model, groups, int(client["step"]), run_config)
    if dist.get_rank() == 0:
        tmp = out + ".partial"
        torch.save(state, tmp)
        os.replace(tmp, out)  # never a half-written file at `out`
    dist.barrier()
    dist.destroy_process_group()


def info(path: str) -> None:
    if os.path.isdir(path):
        run_config = load_run_config(path)
        root = os.path.join(path, "checkpoints")
        tag, refused = CheckpointManager(root, 1).latest_complete()
        print(f"run {path}: layout {run_config['layout']}, newest complete checkpoint: {tag or 'none'}")
        for line in refused:
            print(f"  refused {line}")
        print(f"model {run_config['jigsaw']['model']}, shape {run_config.get('model_shape')}")
        return
    state = load_file(path)
    n = sum(t.numel() for t in state["model"].values())
    print(f"{path}: {FORMAT}, step {state['step']}, trained at layout {state['config']['layout']}")
    print(f"model {state['config']['jigsaw']['model']}, shape {state['config'].get('model_shape')}")
    print(f"{len(state['model'])} tensors, {n} parameters ({4 * n / 2**20:.1f} MiB fp32), Adam state: "
          f"{'yes' if any(v is not None for v in state['optimizer']['exp_avg'].values()) else 'no'}, "
          f"optimizer step {state['optimizer']['step']}")


def main(argv=None) -> int:
    quiet_libraries(env_rank())  # export workers run under torchrun: ranks > 0 stay quiet
    argv = sys.argv[1:] if argv is None else argv
    if argv and argv[0] == "_export_worker":
        _export_worker(*argv[1:4])
        return 0
    ap = argparse.ArgumentParser(prog="jigsaw-ckpt", description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    sub = ap.add_subparsers(dest="cmd", required=True)
    e = sub.add_parser("export", help="DeepSpeed checkpoint of a run -> layout-free file")
    e.add_argument("run_dir")
    e.add_argument("--out", required=True)
    e.add_argument("--tag", default="")
    i = sub.add_parser("info", help="describe a layout-free file or a run directory")
    i.add_argument("path")
    args = ap.parse_args(argv)
    try:
        if args.cmd == "export":
            export(args.run_dir, args.out, args.tag)
        else:
            info(args.path)
    except ValueError as e:
        print(f"jigsaw-ckpt: error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())

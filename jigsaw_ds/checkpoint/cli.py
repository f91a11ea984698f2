"""jigsaw-ckpt: inspect checkpoints and convert them to one layout-free file.

  jigsaw-ckpt export PATH --out FILE [--weights-only]
      A sharded checkpoint (PATH: a run directory, whose newest complete checkpoint is taken, or one
      checkpoint folder) as full tensors in one torch file: weights, Adam moments (unless --weights-only),
      step, LR scheduler, config. One process, no process group, whatever layout trained it; it reads tensor
      by tensor, each file checked against the manifest. For inference, small models and exchange.
  jigsaw-ckpt info PATH
      A run directory, a checkpoint folder or a layout-free FILE: layout, step, tensors and bytes, from the
      metadata only.
To continue a run at another layout, no conversion is needed: jigsaw-train ... --resume (any layout reads the
sharded checkpoints). To start a new run from weights: --init-from PATH (a FILE also carries Adam's state).
"""
from __future__ import annotations

import argparse
import math
import os
import sys

# torch loads only where tensors are read (export, info of a FILE): --help and the info of a sharded checkpoint
# (its JSON metadata) answer without it, in a fraction of a second
from ..errors import ConfigError, NotACheckpoint, run_main
from ..files import write_atomic
from ..quiet import quiet_libraries
from .folder import Checkpoints, find_checkpoint, read_meta


def export(path: str, out: str, weights_only: bool = False) -> None:
    folder = os.path.dirname(os.path.abspath(out))
    if not os.path.isdir(folder):
        raise ConfigError(f"--out {out}: folder {folder} does not exist")
    if os.path.isdir(out):
        raise ConfigError(f"--out {out} is a directory: name the file to write (e.g. {os.path.join(out, 'model.pt')})")
    if not os.path.isdir(path):
        raise NotACheckpoint(f"{path} is not a run directory or checkpoint folder")
    import torch

    from .manager import load_full

    state = load_full(path, moments=not weights_only)
    write_atomic(out, lambda f: torch.save(state, f))  # never a half-written file at `out`
    print(f"jigsaw-ckpt: wrote {out} (step {state['step']}, trained at layout {state['config']['layout']})")


def shape_line(run_config: dict) -> str:
    """The model shape of a run config, its grid's coordinates as their ranges (not every value)."""
    shape = dict(run_config.get("model_shape") or {})
    for key in ("latitude", "longitude"):
        if shape.get(key):
            shape[key] = f"{shape[key][0]:g}..{shape[key][-1]:g}"
    return str(shape)


def info(path: str) -> None:
    if os.path.isdir(path):
        if os.path.exists(os.path.join(path, "config.json")):  # a run directory: what its checkpoints are
            tag, refused = Checkpoints(os.path.join(path, "checkpoints")).latest_complete()
            print(f"run {path}: newest complete checkpoint: {tag or 'none'}")
            for line in refused:
                print(f"  refused {line}")
        folder, files = find_checkpoint(path)
        meta = read_meta(folder, files)
        n = sum(math.prod(shape) for shape in meta["tensors"].values())
        print(f"{folder}: step {meta['step']}, saved at layout {meta['config']['layout']} by {meta['world']} ranks "
              f"({meta['optimizer_wrapper']}, module {meta['module_dtype']})")
        print(f"model {meta['config']['jigsaw']['model']}, shape {shape_line(meta['config'])}")
        print(f"{len(meta['tensors'])} tensors, {n} parameters; Adam state: {'yes' if meta['moments'] else 'no'}, "
              f"optimizer step {meta['adam_step']}; {len(files)} files, "
              f"{sum(f['bytes'] for f in files.values()) / 2**20:.1f} MiB")
        return
    from .layout_free import FORMAT, load_file

    state = load_file(path)
    n = sum(t.numel() for t in state["model"].values())
    print(f"{path}: {FORMAT}, step {state['step']}, trained at layout {state['config']['layout']}")
    print(f"model {state['config']['jigsaw']['model']}, shape {shape_line(state['config'])}")
    print(f"{len(state['model'])} tensors, {n} parameters ({4 * n / 2**20:.1f} MiB fp32), Adam state: "
          f"{'yes' if any(v is not None for v in state['optimizer']['exp_avg'].values()) else 'no'}, "
          f"optimizer step {state['optimizer']['step']}")


def main(argv=None) -> int:
    quiet_libraries(0)
    ap = argparse.ArgumentParser(prog="jigsaw-ckpt", description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    sub = ap.add_subparsers(dest="cmd", required=True)
    e = sub.add_parser("export", help="sharded checkpoint -> one layout-free file (one process)")
    e.add_argument("path", help="run directory (newest complete checkpoint) or checkpoint folder")
    e.add_argument("--out", required=True)
    e.add_argument("--weights-only", action="store_true", help="leave out the Adam moments")
    i = sub.add_parser("info", help="describe a run directory, checkpoint folder or layout-free file")
    i.add_argument("path")
    args = ap.parse_args(argv)
    # bad input (NotACheckpoint, CorruptCheckpoint naming the file, ...): one line, exit 2 (one process: rank 0)
    return run_main("jigsaw-ckpt", 0, _run, args)


def _run(args) -> int:
    if args.cmd == "export":
        export(args.path, args.out, args.weights_only)
    else:
        info(args.path)
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""jigsaw-train: WeatherMixer on a DeepSpeed engine, at any data x domain x tensor layout.

main reads top to bottom, so that bad input fails before anything is lost or created:
  1. `plan_run` (train/run.py): config + --set overrides, the allocation and layout, the store's contents and grid, the
     train/validation split, the model's shape, the DeepSpeed JSON and the output directory are checked and
     fixed once, into a `Run` (ConfigError, StoreError, ...: errors.JigsawError, one message, exit 2);
  2. torch.distributed starts from the launcher's environment (and a configured store is generated if missing);
  3. `Trainer(run)` builds the process groups (megatron parallel_state), the model shards, the data and the
     DeepSpeed engine (ZeRO over data), and restores a checkpoint if asked (train/trainer.py);
  4. `Trainer.fit`: each rank reads its tile and back-propagates its part of the loss; rank 0 logs
     metrics.jsonl, TensorBoard and a progress bar; checkpoints every train.ckpt_every steps.
"""
from __future__ import annotations

import argparse
import os
import sys

# torch, DeepSpeed and the store's libraries load in the functions that use them, so that --help and a bad
# flag answer at once (jigsaw_ds/quiet.py's filters are in place before DeepSpeed and Megatron load)
from ..errors import BAD_INPUT, JigsawError, run_main
from ..quiet import quiet_libraries
from .run import check_continues, check_out_dir, finished_step, generate_store, plan_run, take_run_dir


def parse_args(argv):
    ap = argparse.ArgumentParser(prog="jigsaw-train", description=__doc__.split("\n")[0])
    ap.add_argument("--config", required=True, help="jigsaw config JSON (model, data, parallel, train)")
    ap.add_argument("--deepspeed_config", "--deepspeed-config", required=True, help="DeepSpeed JSON config")
    ap.add_argument("--set", action="append", default=[], metavar="SECTION.KEY=VALUE", help="override a config value")
    ap.add_argument("--resume", action="store_true", help="continue from the latest complete checkpoint in out_dir")
    ap.add_argument("--start-over", action="store_true",
                    help="move the earlier run's outputs in out_dir aside (OUT/superseded-TIME/) and start at step 0")
    ap.add_argument("--init-from", default="", metavar="FILE",
                    help="start from a layout-free FILE (jigsaw-ckpt export: weights, Adam state, step) or from the "
                         "weights of a checkpoint folder or run directory (fine-tuning: step 0)")
    ap.add_argument("--local_rank", "--local-rank", type=int, default=None, help=argparse.SUPPRESS)  # deepspeed launcher
    return ap.parse_args(argv)


def main(argv=None) -> int:
    args = parse_args(argv)
    from ..parallel.allocation import env_rank

    rank = env_rank()  # under srun RANK is unset: the SLURM rank decides who prints
    quiet_libraries(rank)
    # bad input (errors.JigsawError): one line, exit 2; a run that stops (errors.RunStopped: non-finite training, a
    # checkpoint that cannot be written): one line, exit 1; a bug keeps its traceback (errors.run_main)
    code = run_main("jigsaw-train", rank, _train, args, rank)
    if code == BAD_INPUT:  # as argparse ends a bad flag: a caller in this process (a test) sees SystemExit(2)
        sys.exit(code)
    return code


def _train(args, rank: int) -> int:
    run = plan_run(args)
    finished = finished_step(run.cfg) if args.resume and not args.start_over else 0
    if finished:  # nothing to train: say so before any process group or engine starts
        if rank == 0:
            print(f"jigsaw-train: the run in {os.path.abspath(run.cfg.train.out_dir)} already finished at step "
                  f"{finished} (train.steps = {run.cfg.train.steps}): nothing to train. Raise train.steps to "
                  f"continue it, or pass --start-over to train it again")
        return 0
    import torch.distributed as dist

    from ..parallel.topology import init_distributed
    from .trainer import Trainer

    rank, _, _ = init_distributed()  # env_rank's, from the same launcher variables
    refusal = [take_run_dir(run.cfg, args.start_over) if rank == 0 else None]  # every rank has passed plan_run
    dist.broadcast_object_list(refusal, src=0)
    if refusal[0]:  # every rank raises it: rank 0 says it
        raise JigsawError(refusal[0])
    if run.store is None:  # the config asks for a generated store that does not exist yet
        if rank == 0:
            generate_store(run.cfg)
        dist.barrier()
        run.open_store(rank)
        check_continues(run, "" if args.start_over else check_out_dir(run.cfg, args.resume), args.init_from)
    Trainer(run, resume=args.resume and not args.start_over, init_from=args.init_from).fit()
    dist.barrier()
    if rank == 0:
        print(f"jigsaw-train: done. outputs in {os.path.abspath(run.cfg.train.out_dir)}: config.json, metrics.jsonl, "
              f"tensorboard/, checkpoints/")
    dist.destroy_process_group()
    return 0

if __name__ == "__main__":
    sys.exit(main())

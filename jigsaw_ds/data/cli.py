"""jigsaw-data: make and ingest stores in WeatherBench2's schema."""
from __future__ import annotations

import argparse
import sys


def _grid(text: str) -> list[int]:
    try:
        h, w = (int(v) for v in text.lower().split("x"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"--grid takes HxW such as 33x64, got '{text}'") from None
    return [h, w]


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="jigsaw-data", description=__doc__)
    sub = ap.add_subparsers(dest="cmd", required=True)
    s = sub.add_parser("synth", help="small synthetic WB2-schema store with smooth travelling waves")
    s.add_argument("--out", required=True)
    s.add_argument("--grid", type=_grid, default=[33, 64])
    s.add_argument("--times", type=int, default=400)
    s.add_argument("--seed", type=int, default=0)
    w = sub.add_parser("swe", help="shallow-water trajectories from torch-harmonics' solver")
    w.add_argument("--out", required=True)
    w.add_argument("--grid", type=_grid, default=[33, 64])
    w.add_argument("--trajectories", type=int, default=8)
    w.add_argument("--steps", type=int, default=40)
    w.add_argument("--seed", type=int, default=0)
    args = ap.parse_args(argv)

    from .generate import from_spec

    spec = {k: v for k, v in vars(args).items() if k not in ("cmd", "out")}
    out = from_spec({"kind": args.cmd, **spec}, args.out)
    print(f"jigsaw-data: wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""jigsaw-data: make and ingest stores in WeatherBench2's schema."""
from __future__ import annotations

import argparse
import os
import sys

from ..config import GENERATE_DEFAULTS
from ..errors import ConfigError, run_main
from ..quiet import quiet_libraries


def _grid(text: str) -> list[int]:
    try:
        h, w = (int(v) for v in text.lower().split("x"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"--grid takes HxW such as 33x64, got '{text}'") from None
    return [h, w]


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="jigsaw-data", description=__doc__)
    sub = ap.add_subparsers(dest="cmd", required=True)
    helps = {"synth": "small synthetic WB2-schema store with smooth travelling waves",
             "swe": "shallow-water trajectories from torch-harmonics' solver",
             "held-suarez": "multi-level primitive-equation trajectories (Held-Suarez forcing) from dinosaur; "
                            "--spinup and --gap in days"}
    for kind, defaults in GENERATE_DEFAULTS.items():
        g = sub.add_parser(kind, help=helps[kind], description=helps[kind])
        g.add_argument("--out", required=True)
        for key, default in defaults.items():
            g.add_argument(f"--{key}", type=_grid if key == "grid" else int, default=default)
    p = sub.add_parser("prepare", help="ingest WB2 zarr / netCDF / GRIB into the training layout + statistics",
                       description="Ingest WeatherBench2 zarr stores, CDS netCDF and GRIB files into a training "
                                   "store (WB2 names and dims, source values and grid kept exactly unless "
                                   "--grid regrids), with "
                                   "per-channel statistics and a climatology. See docs/data.md.")
    p.add_argument("sources", nargs="+", metavar="SRC", help="zarr stores, netCDF or GRIB files")
    p.add_argument("--out", required=True,
                   help="the store to write: a new path, an empty directory or a store prepare wrote (replaced "
                        "only when the new one is complete)")
    p.add_argument("--overwrite", action="store_true",
                   help="replace the store prepare wrote at --out from other arguments or sources")
    p.add_argument("--variables", nargs="+", help="WB2 or ECMWF short names (default: all, or the config's)")
    p.add_argument("--levels", nargs="+", type=int, help="pressure levels in hPa (default: all, or the config's)")
    p.add_argument("--member", type=int, default=0, help="ensemble member kept from files with a 'number' axis")
    p.add_argument("--config", help="jigsaw config: default variables/levels/patch, and its grid checks")
    p.add_argument("--patch", type=int, default=4, help="model patch size (latitude chunks are whole patch rows)")
    p.add_argument("--lat-chunk", type=int, default=0,
                   help="latitude rows per chunk, a multiple of the patch (default: one patch row)")
    p.add_argument("--lon-chunk", type=int, default=0,
                   help="longitude columns per chunk (default: all; set to the tile width for tensor > 1)")
    p.add_argument("--level-chunk", type=int, default=0, help="levels per chunk (default: all)")
    p.add_argument("--grid", type=_grid, metavar="HxW",
                   help="interpolate every source (bilinear, xarray.interp) to the global grid of H latitudes from "
                        "pole to pole and W longitudes, e.g. 1441x2880 for 0.125 deg (default: the source grid, kept "
                        "exactly)")
    p.add_argument("--time-block", type=int, default=0,
                   help="time steps per task, read and held in memory at once (default: ~256 MB)")
    p.add_argument("--no-climatology", dest="climatology", action="store_false")
    p.add_argument("--no-checksum", dest="checksum", action="store_false",
                   help="no crc32c on each chunk: reads 18-29%% faster, but a flipped bit is no longer caught "
                        "(docs/data.md)")
    p.add_argument("--workers", type=int, default=os.cpu_count() or 1,
                   help="worker processes of the local Dask cluster (default: the number of cores; 0: no cluster, "
                        "all in this process)")
    p.add_argument("--scheduler", metavar="ADDRESS",
                   help="run on an existing Dask cluster (tcp://HOST:8786 or a scheduler file) instead")
    p.add_argument("--plan", action="store_true",
                   help="print the layout, blocks, bytes and the estimated time (one block measured); write nothing")
    args = ap.parse_args(argv)
    quiet_libraries(0)
    # bad input (errors.JigsawError: a source, the store, an option, a missing library): one line, exit 2; a bug
    # keeps its traceback (errors.run_main)
    return run_main(f"jigsaw-data {args.cmd}", 0, _prepare if args.cmd == "prepare" else _generate, args)


def _generate(args) -> int:
    from .generate import from_spec
    from .writer import check_replaceable

    spec = {"kind": args.cmd, **{k: v for k, v in vars(args).items() if k not in ("cmd", "out")}}
    check_replaceable(os.path.abspath(args.out))  # before the generator's work, not after it
    try:
        out = from_spec(spec, args.out)
    except ConfigError as e:  # the spec's keys are this command's options
        raise ConfigError(str(e).replace("config key 'data.generate.", "option '--")) from None
    print(f"jigsaw-data: wrote {out}")
    return 0


def _prepare(args) -> int:
    import dataclasses

    from .prepare import PrepareOptions, plan, prepare

    options = {f.name: getattr(args, f.name) for f in dataclasses.fields(PrepareOptions)}  # --lat-chunk: lat_chunk
    if args.workers < 0:
        raise ConfigError(f"--workers {args.workers}: must be 0 (this process) or more")
    if args.plan:
        print(plan(args.sources, args.out, workers=max(args.workers, 1), **options))
        return 0
    out = prepare(args.sources, args.out, workers=args.workers, scheduler=args.scheduler, overwrite=args.overwrite,
                  **options)
    print(f"jigsaw-data: wrote {out}")
    print(describe(out))
    return 0


def describe(path: str) -> str:
    """A few lines on a store: times, grid, channels, chunks, ensemble member, climatology."""
    import xarray as xr

    from .store import all_channels

    ds = xr.open_zarr(path, chunks=None)
    lat, lon = ds["latitude"].values, ds["longitude"].values
    first = sorted(ds.data_vars, key=lambda v: -ds[v].ndim)[0]  # an upper-air variable if there is one
    chunks = {first: ds[first].encoding.get("chunks")}
    lines = [f"  time: {ds.sizes['time']} steps, {ds['time'].values[0]} .. {ds['time'].values[-1]}",
             f"  grid: {len(lat)} x {len(lon)}, latitude {lat[0]} .. {lat[-1]}, longitude {lon[0]} .. {lon[-1]}",
             f"  channels: {', '.join(c.name for c in all_channels(ds))}",
             f"  static: {', '.join(v for v, da in ds.data_vars.items() if 'time' not in da.dims) or 'none'}",
             f"  chunks: {chunks}, ensemble member: {ds.attrs.get('ensemble_member', 'none')}"]
    try:
        clim = xr.open_zarr(path, group="climatology", chunks=None)
        lines.append(f"  climatology: by {clim.attrs.get('grouping')} ({dict(clim.sizes)})")
    except Exception:  # no climatology group: the time span did not allow one
        lines.append("  climatology: none")
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())

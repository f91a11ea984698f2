"""jigsaw-eval's PNG plots, apart from the engine (evaluate.py calls `plot` on rank 0 once the scores are written):
scores against lead, maps of the truth, the forecast and its error, and the zonal spectra.

Maps are drawn by their coordinates (pcolormesh on the latitude and longitude values, axes in degrees), so north
is up and east to the right whatever order the store keeps its rows in (WeatherBench2's ERA5 stores: latitudes
ascending; ours: descending). Truth and forecast share one colour scale, the error has a symmetric one, the
colour bars carry the variable's units, the titles the initial time and the lead. Coastlines are drawn where
cartopy is installed (its Natural Earth coastlines; else a one-line note). Only every few points are read back
from forecast.zarr and the store, so a map never holds a whole fine field.
"""
from __future__ import annotations

import os
from typing import Optional

import numpy as np
import xarray as xr

from ..data.names import ATTRS

MAP_CHANNELS = 4  # maps of the store's first channels
MAP_COLUMNS = 360  # a map reads about this many columns (every few points of a finer grid)
FIELD_CMAP, ERROR_CMAP = "viridis", "RdBu_r"
ROW_KEYS = ("region", "channel", "lead_hours", "metric")  # a score row's keys; the others are forecast kinds


def plot(rows: list[dict], store, inits: np.ndarray, lead: int, leads, out: str,
         spectra: Optional[xr.Dataset] = None) -> None:
    """All of jigsaw-eval's plots into `out`: rmse.png and acc.png (the whole grid's scores), maps_<channel>.png
    of the first initial time (forecast.zarr in `out` against the store) and spectra.png where spectra are
    given; without matplotlib a one-line note instead."""
    plt = pyplot()
    if plt is None:
        print("jigsaw-eval: matplotlib is not installed: plots skipped (pip install matplotlib)")
        return
    score_plots(rows, store, out)
    map_plots(store, os.path.join(out, "forecast.zarr"), inits, lead, leads, out)
    if spectra is not None:
        spectra_plot(spectra, out)


def pyplot():
    """matplotlib.pyplot on the file-only backend, or None where matplotlib is not installed."""
    try:
        import matplotlib
    except ImportError:
        return None
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def units_of(store, var: str) -> str:
    """The variable's units: the store's `units` attribute, else WeatherBench2's for its name, else none."""
    return str(store.ds[var].attrs.get("units") or ATTRS.get(var, ("",))[0])


def score_plots(rows: list[dict], store, out: str) -> None:
    """rmse.png and acc.png: each channel's score against lead for every forecast kind, over the whole grid
    (the first region of the rows: "global", or "domain" for a regional grid)."""
    plt = pyplot()
    region = rows[0]["region"]
    kinds = [k for k in rows[0] if k not in ROW_KEYS]
    channels = store.channels
    for metric in ("rmse", "acc"):
        fig, axes = plt.subplots(1, len(channels), figsize=(3.2 * len(channels), 3.2), squeeze=False)
        for ax, ch in zip(axes[0], channels):
            sel = [r for r in rows if r["channel"] == ch.name and r["metric"] == metric and r["region"] == region]
            for kind in kinds:
                ax.plot([r["lead_hours"] for r in sel], [r[kind] for r in sel], marker="o", label=kind)
            ax.set_title(ch.name if metric == "acc" else f"{ch.name} [{units_of(store, ch.var)}]", fontsize=9)
            ax.set_xlabel("lead (h)")
        axes[0][0].set_ylabel(metric.upper())
        axes[0][0].legend(fontsize=7)
        fig.suptitle(f"{metric.upper()}, {region}", fontsize=10)
        fig.tight_layout()
        fig.savefig(os.path.join(out, f"{metric}.png"), dpi=80)
        plt.close(fig)


def coastlines():
    """Natural Earth's coastlines as a list of [n, 2] (longitude -180..180, latitude) arrays, through cartopy
    (which fetches them once); None, with a one-line note, where cartopy or its data are not there."""
    try:
        from cartopy.io import shapereader
    except ImportError:
        print("jigsaw-eval: cartopy is not installed: maps drawn without coastlines (pip install cartopy)")
        return None
    try:
        reader = shapereader.Reader(shapereader.natural_earth("110m", "physical", "coastline"))
        lines = []
        for geometry in reader.geometries():
            for part in getattr(geometry, "geoms", [geometry]):
                lines.append(np.asarray(part.coords)[:, :2])
        return lines
    except Exception as e:  # no network to fetch them, a damaged download: the maps are still worth drawing
        print(f"jigsaw-eval: cartopy has no coastlines here ({str(e).splitlines()[0] if str(e) else type(e).__name__}): "
              f"maps drawn without them")
        return None


def _edges(values: np.ndarray) -> tuple[float, float]:
    """The outer edges of cells centred on increasing or decreasing values (half a step beyond the outermost)."""
    v = np.sort(np.asarray(values, np.float64))
    if len(v) < 2:
        return float(v[0]) - 0.5, float(v[0]) + 0.5
    return float(v[0] - (v[1] - v[0]) / 2), float(v[-1] + (v[-1] - v[-2]) / 2)


def map_plots(store, forecast: str, inits: np.ndarray, lead: int, leads, out: str) -> list[str]:
    """maps_<channel>.png for the store's first channels: rows at the first, middle and last lead of the first
    initial time, columns truth, forecast and forecast - truth, drawn north up by their coordinates. Returns the
    paths written."""
    from matplotlib.collections import LineCollection

    plt = pyplot()
    coast = coastlines()
    every = max(1, len(store.lon) // MAP_COLUMNS)
    points = {"latitude": slice(None, None, every), "longitude": slice(None, None, every)}
    fc = xr.open_zarr(forecast)
    lat, lon = fc["latitude"].values[::every], fc["longitude"].values[::every]
    (west, east), (south, north) = _edges(lon), np.clip(_edges(lat), -90.0, 90.0)
    init = str(fc["time"].values[0].astype("datetime64[m]")).replace("T", " ")
    show = sorted({0, len(leads) // 2, len(leads) - 1})
    hours = [int(leads[k] / np.timedelta64(1, "h")) for k in show]
    paths = []
    for ch in store.channels[:MAP_CHANNELS]:
        truths, forecasts = [], []
        for k in show:
            at = {"time": 0, "prediction_timedelta": k, **points}
            store_at = {"time": int(inits[0]) + lead * (k + 1), **points}
            if ch.level_index is not None:
                at["level"] = [x for x in store.channels if x.var == ch.var].index(ch)
                store_at["level"] = ch.level_index
            forecasts.append(fc[ch.var].isel(at).transpose("latitude", "longitude").values.astype(np.float64))
            truths.append(store.ds[ch.var].isel(store_at).transpose("latitude", "longitude").values.astype(np.float64))
        # one scale for truth and forecast (from both), a symmetric one for the error, over every lead shown
        low = min(np.nanmin(v) for v in truths + forecasts)
        high = max(np.nanmax(v) for v in truths + forecasts)
        lim = max(np.nanmax(np.abs(f - t)) for f, t in zip(forecasts, truths)) or 1.0  # a perfect forecast: 0
        units = units_of(store, ch.var)
        fig, axes = plt.subplots(len(show), 3, figsize=(12, 2.7 * len(show) + 1.3), squeeze=False, layout="constrained")
        meshes = {}
        for row, (t, f, h) in enumerate(zip(truths, forecasts, hours)):
            for col, (values, title, cmap, vmin, vmax) in enumerate((
                    (t, "truth", FIELD_CMAP, low, high), (f, "forecast", FIELD_CMAP, low, high),
                    (f - t, "forecast - truth", ERROR_CMAP, -lim, lim))):
                ax = axes[row][col]
                meshes[cmap] = ax.pcolormesh(lon, lat, values, shading="nearest", cmap=cmap, vmin=vmin, vmax=vmax)
                if coast is not None:
                    # coastlines are -180..180: drawn a circle to each side too, the map's limits cut them
                    ax.add_collection(LineCollection([c + (shift, 0) for c in coast for shift in (-360, 0, 360)],
                                                     colors="k", linewidths=0.4))
                ax.set_xlim(west, east)
                ax.set_ylim(south, north)
                ax.set_aspect("equal")
                ax.set_title(f"{title}, +{h} h", fontsize=9)
                ax.set_xlabel("longitude (deg E)", fontsize=8)
                ax.set_ylabel("latitude (deg N)", fontsize=8)
                ax.tick_params(labelsize=7)
        fig.colorbar(meshes[FIELD_CMAP], ax=axes[:, :2], orientation="horizontal", shrink=0.6, aspect=40,
                     label=f"{ch.name} [{units}]")
        fig.colorbar(meshes[ERROR_CMAP], ax=axes[:, 2], orientation="horizontal", shrink=0.9, aspect=20,
                     label=f"forecast - truth [{units}]")
        fig.suptitle(f"{ch.name}: initialised {init} UTC, leads {', '.join(f'+{h} h' for h in hours)}", fontsize=10)
        path = os.path.join(out, f"maps_{ch.name}.png")
        fig.savefig(path, dpi=70)
        plt.close(fig)
        paths.append(path)
    return paths


def spectra_plot(spectra: xr.Dataset, out: str) -> None:
    """spectra.png: the forecast's (solid) and the truth's (dashed) zonal energy spectra at each lead kept."""
    plt = pyplot()
    names = list(spectra.data_vars)
    fig, axes = plt.subplots(1, len(names), figsize=(3.6 * len(names), 3.2), squeeze=False)
    k = spectra["zonal_wavenumber"].values[1:]
    for ax, name in zip(axes[0], names):
        for j, lt in enumerate(spectra["lead_time"].values):
            line, = ax.loglog(k, spectra[name].isel(source=0, lead_time=j).values[1:],
                              label=f"+{int(lt / np.timedelta64(1, 'h'))} h")
            ax.loglog(k, spectra[name].isel(source=1, lead_time=j).values[1:], ls="--", color=line.get_color())
        ax.set_title(name, fontsize=9)
        ax.set_xlabel("zonal wavenumber")
    axes[0][0].set_ylabel("energy (forecast solid, truth dashed)")
    axes[0][0].legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(os.path.join(out, "spectra.png"), dpi=80)
    plt.close(fig)

"""What jigsaw-eval reports from the reduced score sums: rows (scores.json, scores.csv), WeatherBench2's results
netCDF per forecast kind, the headline table, zonal spectra and the plots; rank 0 writes them."""
from __future__ import annotations

import csv
import os
from typing import Optional

import numpy as np
import xarray as xr

from ..data.store import WeatherStore
from .plots import plot

KINDS = ("model", "persistence", "climatology")


METRIC_NAMES = ("rmse", "bias", "acc")


# WeatherBench2's headline scores, where the store has them (global RMSE and ACC)
HEADLINE = ("geopotential_500", "temperature_850", "specific_humidity_700", "wind_vector_850", "2m_temperature",
            "10m_wind_vector", "mean_sea_level_pressure")


# channels whose zonal spectra are kept, where the store has them (else its first channel)
SPECTRUM_CHANNELS = ("geopotential_500", "temperature_850", "specific_humidity_700", "u_component_of_wind_850",
                     "v_component_of_wind_850", "2m_temperature", "10m_u_component_of_wind", "mean_sea_level_pressure")


def scores_to_rows(scores: dict, store: WeatherStore, leads) -> list[dict]:
    """Rows: region, channel, lead, metric, and one column per forecast kind. Where the store has u and v of the
    wind at a level (or at 10 m), a wind-vector RMSE row too: sqrt(<(u_f - u_o)^2 + (v_f - v_o)^2>), WB2's."""
    names = [c.name for c in store.channels]
    pairs = wind_vector_pairs(names)
    rows = []
    for region, by_kind in scores.items():
        for c, name in enumerate(names):
            for k, lead in enumerate(leads):
                hours = int(lead / np.timedelta64(1, "h"))
                for m in METRIC_NAMES:
                    rows.append({"region": region, "channel": name, "lead_hours": hours, "metric": m,
                                 **{kind: float(by_kind[kind][m][k, c]) for kind in by_kind}})
        for u, v, vector in pairs:
            rmse = {kind: wind_vector_rmse(metrics, names.index(u), names.index(v)) for kind, metrics in by_kind.items()}
            for k, lead in enumerate(leads):
                rows.append({"region": region, "channel": vector, "lead_hours": int(lead / np.timedelta64(1, "h")),
                             "metric": "rmse", **{kind: float(rmse[kind][k]) for kind in by_kind}})
    return rows


def wind_vector_rmse(metrics: dict, iu: int, iv: int) -> np.ndarray:
    """WB2's wind-vector RMSE per lead, sqrt(<(u_f - u_o)^2 + (v_f - v_o)^2>), from the mean squared errors
    ("se") of the u and v channels iu, iv in one forecast kind's finalized metrics."""
    return np.sqrt(metrics["se"][:, iu] + metrics["se"][:, iv])


def wind_vector_pairs(names: list[str]) -> list[tuple[str, str, str]]:
    """(u, v, vector name) of the channels where both wind components are present (per level, and at 10 m)."""
    return [(u, u.replace("u_component", "v_component"), u.replace("u_component_of_wind", "wind_vector"))
            for u in names if "u_component_of_wind" in u and u.replace("u_component", "v_component") in names]


def wb2_results(scores: dict, kind: str, store: WeatherStore, leads) -> xr.Dataset:
    """One forecast kind's scores in WeatherBench2's results layout (evaluation.py there writes one such file
    per evaluation): a variable per WB2 variable with dims metric, region, lead_time[, level]; wind_vector and
    10m_wind_vector carry the vector RMSE (NaN under the other metrics), as WB2's RMSE metric adds them."""
    metrics = {"rmse": "rmse", "mse": "se", "bias": "bias", "acc": "acc"}
    regions = list(scores)
    coords = {"metric": list(metrics), "region": regions, "lead_time": np.asarray(leads, "timedelta64[ns]")}
    levels = np.asarray(store.ds["level"].values) if "level" in store.ds.coords else None

    def array(values: np.ndarray, level_of: Optional[list]) -> xr.DataArray:  # values [metric, region, K, c]
        if level_of is None:
            return xr.DataArray(values[..., 0], dims=("metric", "region", "lead_time"), coords=coords)
        return xr.DataArray(values, dims=("metric", "region", "lead_time", "level"),
                            coords={**coords, "level": [int(v) for v in level_of]})

    data = {}
    for var, c0, var_levels in store.variable_blocks():
        n = 1 if var_levels is None else len(var_levels)
        values = np.stack([np.stack([scores[r][kind][m][:, c0:c0 + n] for r in regions]) for m in metrics.values()])
        data[var] = array(values, None if var_levels is None else [levels[i] for i in var_levels])
    names = [c.name for c in store.channels]
    vectors = {}
    for u, v, vector in wind_vector_pairs(names):
        ch = store.channels[names.index(u)]
        rmse = np.stack([wind_vector_rmse(scores[r][kind], names.index(u), names.index(v))
                         for r in regions])                                      # [region, K]
        values = np.full((len(metrics),) + rmse.shape + (1,), np.nan)
        values[0, ..., 0] = rmse
        var = "10m_wind_vector" if ch.level_index is None else "wind_vector"
        vectors.setdefault(var, []).append((values, None if ch.level_index is None else levels[ch.level_index]))
    for var, parts in vectors.items():
        data[var] = array(np.concatenate([p for p, _ in parts], axis=-1),
                          None if parts[0][1] is None else [lev for _, lev in parts])
    return xr.Dataset(data, attrs={"forecast": kind, "source": "jigsaw-eval"})


def write_netcdf(ds: xr.Dataset, path: str) -> None:
    """ds to path; a one-line note instead where no netCDF writer is installed."""
    try:
        ds.to_netcdf(path)
    except (ImportError, ValueError) as e:
        if "netcdf" not in str(e).lower():  # not the missing writer: a real error
            raise
        print(f"jigsaw-eval: no netCDF writer is installed: {os.path.basename(path)} skipped "
              f"(pip install netCDF4)")


def spectrum_channels(store: WeatherStore) -> list[int]:
    names = [c.name for c in store.channels]
    return [names.index(n) for n in SPECTRUM_CHANNELS if n in names] or [0]


def spectra_dataset(spectra: dict, store: WeatherStore, channels: list[int], leads) -> xr.Dataset:
    """spectra {kind: [leads, channels, K]} as one variable per channel, dims source (forecast, truth),
    lead_time, zonal_wavenumber."""
    k = next(iter(spectra.values())).shape[-1]
    data = {store.channels[c].name: xr.DataArray(
        np.stack([spectra["model"][:, j], spectra["truth"][:, j]]), dims=("source", "lead_time", "zonal_wavenumber"),
        attrs={"long_name": f"zonal energy spectrum of {store.channels[c].name}",
               "units": f"m ({store.ds[store.channels[c].var].attrs.get('units', '1')})^2"})
        for j, c in enumerate(channels)}
    return xr.Dataset(data, coords={"source": ["forecast", "truth"], "lead_time": np.asarray(leads, "timedelta64[ns]"),
                                    "zonal_wavenumber": np.arange(k)},
                      attrs={"latitudes": "mean over 30 <= |latitude| <= 60, weighted by cos(latitude)",
                             "definition": "WeatherBench2 derived_variables.ZonalEnergySpectrum"})


def write_headline(rows: list[dict], path: str) -> None:
    """headline.csv: WB2's headline variables present in the scores, one line per variable and lead: the whole
    grid's ("global", or "domain" for a regional grid: the rows' first region) RMSE of the model, persistence
    and climatology, and the model's ACC."""
    table, whole = {}, rows[0]["region"] if rows else "global"
    for r in rows:
        if r["region"] == whole and r["channel"] in HEADLINE and r["metric"] in ("rmse", "acc"):
            line = table.setdefault((HEADLINE.index(r["channel"]), r["lead_hours"]),
                                    {"region": whole, "channel": r["channel"], "lead_hours": r["lead_hours"]})
            if r["metric"] == "rmse":
                line.update(rmse_model=r["model"], rmse_persistence=r["persistence"], rmse_climatology=r["climatology"])
            else:
                line["acc_model"] = r["model"]
    fields = ["region", "channel", "lead_hours", "rmse_model", "rmse_persistence", "rmse_climatology", "acc_model"]
    with open(path, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=fields, restval="")
        writer.writeheader()
        writer.writerows(table[key] for key in sorted(table))


def write_reports(out: str, rows: list[dict], scores: dict, spectrum: Optional[dict], store: WeatherStore,
                  inits, lead: int, leads, spectrum_leads: list[int], channels: list[int], plots: bool) -> None:
    """scores.csv, headline.csv, scores_<kind>.nc, spectra.nc and the plots into `out` (rank 0)."""
    with open(os.path.join(out, "scores.csv"), "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    write_headline(rows, os.path.join(out, "headline.csv"))
    for kind in KINDS:
        write_netcdf(wb2_results(scores, kind, store, leads), os.path.join(out, f"scores_{kind}.nc"))
    spectra_ds = None
    if spectrum is None:  # a regional box: its rows are no latitude circles
        print(f"jigsaw-eval: the store's longitudes ({store.lon[0]:g}..{store.lon[-1]:g}) do not close a "
              f"latitude circle: no zonal spectra (spectra.nc, spectra.png)")
    else:
        spectra_ds = spectra_dataset(spectrum, store, channels, leads[spectrum_leads])
        write_netcdf(spectra_ds, os.path.join(out, "spectra.nc"))
    if plots:
        plot(rows, store, inits, lead, leads, out, spectra_ds)

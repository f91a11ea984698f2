"""A synthetic store in WeatherBench2's schema with smooth, learnable dynamics.

Every channel is a sum of zonal waves on a latitude-dependent background. Wave m of a channel travels
eastward at an angular speed that depends on latitude and on m (jet-like differential rotation):

    f(t, lat, lon) = base(lat) + sum_m A_m(lat) cos(m (lon - c_m(lat) t) + phase_m)

Each (latitude row, wavenumber) evolves by a fixed phase shift per step, so the next state is a linear
function of the current one (Markov, learnable by token mixing) yet nothing like white noise. Variables,
levels, units and coordinates follow WeatherBench2 (latitude 90 -> -90 with poles, longitude 0 -> 360).
"""
from __future__ import annotations

import numpy as np
import pandas as pd
import xarray as xr

from .names import describe

UPPER = {  # name: (base at equator, pole-to-equator contrast, wave amplitude, per-level scale)
    "geopotential": (55000.0, 4000.0, 800.0, lambda lev: (1000.0 - lev) / 500.0),
    "temperature": (260.0, 30.0, 5.0, lambda lev: 1.0 + (lev - 500.0) / 1000.0),
    "u_component_of_wind": (5.0, -15.0, 8.0, lambda lev: 1.5 - lev / 1000.0),
    "v_component_of_wind": (0.0, 0.0, 6.0, lambda lev: 1.5 - lev / 1000.0),
}
SURFACE = {
    "2m_temperature": (295.0, 40.0, 4.0),
    "mean_sea_level_pressure": (101325.0, 1500.0, 600.0),
}
LEVELS = (500, 850)


def synth_dataset(n_lat: int, n_lon: int, n_times: int, seed: int = 0, levels=LEVELS, step_hours: int = 6,
                  waves: int = 4, start: int = 0) -> xr.Dataset:
    """Time steps start .. start + n_times - 1 of the series of `seed` (pieces of one series can be made one at
    a time and joined: bench/prepare.py writes a large source that way)."""
    rng = np.random.default_rng(seed)
    lat = np.linspace(90.0, -90.0, n_lat)
    lon = np.arange(n_lon) * 360.0 / n_lon
    phi, lam = np.deg2rad(lat)[:, None], np.deg2rad(lon)[None, :]
    t = np.arange(start, start + n_times)[:, None, None]

    def field(base, contrast, amp):
        out = base - contrast * np.sin(phi) ** 2 + 0 * lam
        out = np.broadcast_to(out, (n_times, n_lat, n_lon)).copy()
        for m in range(1, waves + 1):
            speed = rng.uniform(0.05, 0.15) * np.cos(phi) ** 2 / m + rng.uniform(-0.02, 0.02)  # rad per step
            envelope = amp * rng.uniform(0.5, 1.0) * np.exp(-((phi - rng.uniform(-1, 1)) ** 2) / 0.5)
            out += envelope * np.cos(m * (lam - speed * t) + rng.uniform(0, 2 * np.pi))
        return out.astype(np.float32)

    data = {}
    for name, (base, contrast, amp, scale) in UPPER.items():
        # waves at least a tenth of their 500 hPa size: geopotential's scale is 0 at 1000 hPa, and a channel
        # constant in time is refused by the trainer (tendency std 0)
        stack = [field(base * (scale(lev) if name == "geopotential" else 1.0), contrast,
                       amp * max(scale(lev), 0.1)) for lev in levels]
        data[name] = (("time", "level", "latitude", "longitude"), np.stack(stack, axis=1))
    for name, (base, contrast, amp) in SURFACE.items():
        data[name] = (("time", "latitude", "longitude"), field(base, contrast, amp))
    data["land_sea_mask"] = (("latitude", "longitude"),
                             (np.sin(3 * lam) * np.cos(2 * phi) > 0.2).astype(np.float32))
    data["geopotential_at_surface"] = (("latitude", "longitude"),
                                       (2000.0 * np.clip(np.sin(2 * lam) * np.cos(phi), 0, None)).astype(np.float32))
    coords = {"time": _times(start, n_times, step_hours),
              "level": np.asarray(levels, dtype=np.int64), "latitude": lat, "longitude": lon}
    ds = xr.Dataset(data, coords=coords)
    ds.attrs["source"] = f"jigsaw-data synth seed={seed}"
    return describe(ds)


def synth_lazy(n_lat: int, n_lon: int, n_times: int, seed: int = 0, block: int = 1, levels=LEVELS,
               step_hours: int = 6) -> xr.Dataset:
    """The series of `synth_dataset`, as dask arrays made `block` time steps at a time, so that a writer that
    loads a block of time steps at a time (write_store) holds that block, not the store. Dask rather than a
    loop of our own: xarray's writer then streams it as it does any lazy source."""
    import dask
    import dask.array as da

    kw = dict(levels=levels, step_hours=step_hours)
    template = synth_dataset(n_lat, n_lon, 1, seed, **kw)  # coordinates, static fields, attributes
    blocks = [(start, min(block, n_times - start)) for start in range(0, n_times, block)]
    made = [dask.delayed(synth_dataset)(n_lat, n_lon, n, seed, start=start, **kw) for start, n in blocks]
    data = {}
    for name, var in template.data_vars.items():
        if "time" not in var.dims:
            data[name] = var
            continue
        pieces = [da.from_delayed(dask.delayed(lambda ds, name=name: ds[name].values)(part),
                                  shape=(n,) + var.shape[1:], dtype=var.dtype) for part, (_, n) in zip(made, blocks)]
        data[name] = xr.Variable(var.dims, da.concatenate(pieces, axis=0), var.attrs)
    ds = xr.Dataset(data, coords={**{k: v for k, v in template.coords.items() if k != "time"},
                                  "time": _times(0, n_times, step_hours)},
                    attrs=template.attrs)
    for name in ds.coords:
        ds[name].attrs.update(template[name].attrs)
    return ds


def _times(start: int, n_times: int, step_hours: int) -> np.ndarray:
    """Time steps start .. start + n_times - 1 of every synth series: 2020-01-01 00 UTC on, step_hours apart."""
    return pd.date_range("2020-01-01", periods=start + n_times, freq=f"{step_hours}h")[start:].values

"""Global shallow-water trajectories from torch-harmonics' spectral solver, in WeatherBench2's schema.

Each trajectory starts from a balanced random state: zonal jets (a random Gaussian jet in each
hemisphere) plus large-scale eddies from a random streamfunction (total wavenumbers 3-12), with the
geopotential from the nonlinear balance equation, as in the Galewsky test case. Balanced states evolve
like weather (jets meander, eddies roll up); the package's own random_initial_condition is gravity-wave
noise instead. After one day of spin-up the state is recorded every 6 hours.

The single layer is written as level 500 of geopotential, u_component_of_wind and v_component_of_wind
(dims time, level, latitude, longitude); the `trajectory` coordinate on time keeps trajectories apart,
so that no training pair spans two of them. Trajectories follow each other on the time axis.
"""
from __future__ import annotations

import numpy as np
import pandas as pd
import torch
import xarray as xr

from .names import describe

RECORD_HOURS = 6
SPINUP_RECORDS = 4


def _solver(n_lat: int, n_lon: int):
    from torch_harmonics.examples import ShallowWaterSolver

    # measured stable steps (STACK-NOTES): 600 s up to truncation 21, 300 s at 42; both divide 6 h
    lmax = ShallowWaterSolver(n_lat, n_lon, dt=300.0, grid="equiangular").lmax
    return ShallowWaterSolver(n_lat, n_lon, dt=600.0 if lmax <= 21 else 300.0, grid="equiangular").double()


def balanced_initial_state(solver, gen: torch.Generator) -> torch.Tensor:
    """Spectral state (geopotential, vorticity, divergence) of random jets + eddies in balance."""
    lat = solver.lats.view(-1, 1)
    u = torch.zeros(solver.nlat, solver.nlon, dtype=torch.float64)
    for hemisphere in (1.0, -1.0):  # one jet per hemisphere, random position, width and speed
        centre = hemisphere * np.deg2rad(30 + 25 * torch.rand(1, generator=gen).item())
        width = np.deg2rad(6 + 6 * torch.rand(1, generator=gen).item())
        speed = 25 + 25 * torch.rand(1, generator=gen).item()
        u = u + speed * torch.exp(-((lat - centre) / width) ** 2)
    # eddies: random streamfunction at large scales, divergence-free wind
    l = solver.l
    mask = ((l >= 3) & (l <= 12)).to(torch.complex128)
    psi = (torch.randn(solver.lmax, solver.mmax, generator=gen, dtype=torch.float64)
           + 1j * torch.randn(solver.lmax, solver.mmax, generator=gen, dtype=torch.float64)) * mask
    psi = torch.tril(psi)
    vrt = solver.lap * psi
    eddy_uv = solver.getuv(torch.stack([vrt, torch.zeros_like(vrt)]))
    eddy_uv = eddy_uv * (15.0 / eddy_uv.abs().max())  # eddy winds up to 15 m/s
    uv = torch.stack([u, torch.zeros_like(u)]) + eddy_uv
    vrtdiv = solver.vrtdivspec(uv)
    vrtdiv_grid = solver.spec2grid(vrtdiv)
    # nonlinear balance: lap(phi) = div((zeta + f) k x u) - lap(|u|^2 / 2), as in galewsky_initial_condition
    flux = solver.vrtdivspec(uv * (vrtdiv_grid + solver.coriolis))
    phi = (solver.invlap * flux[0] - solver.grid2spec(0.5 * (uv ** 2).sum(0))
           + solver.grid2spec(torch.full_like(u, solver.gravity * solver.havg)))
    state = torch.zeros(3, solver.lmax, solver.mmax, dtype=vrtdiv.dtype)
    state[0], state[1:] = phi, vrtdiv
    return torch.tril(state)


VARIABLES = ("geopotential", "u_component_of_wind", "v_component_of_wind")  # gethuv's order; written at LEVEL
LEVEL = 500


def swe_dataset(n_lat: int, n_lon: int, trajectories: int, steps: int, seed: int = 0) -> xr.Dataset:
    """`trajectories` runs of `steps` 6-hourly records each on an n_lat x n_lon equiangular grid."""
    solver = _solver(n_lat, n_lon)
    substeps = int(RECORD_HOURS * 3600 / solver.dt)
    gen = torch.Generator().manual_seed(seed)
    fields = []
    with torch.no_grad():
        for _ in range(trajectories):
            state = solver.timestep(balanced_initial_state(solver, gen), SPINUP_RECORDS * substeps)
            run = []
            for _ in range(steps):
                run.append(solver.gethuv(state).numpy())  # geopotential, u, v on the grid
                state = solver.timestep(state, substeps)
            fields.append(np.stack(run))
    data = np.concatenate(fields).astype(np.float32)[:, :, None]  # time, var, level, lat, lon
    if not np.isfinite(data).all():
        raise RuntimeError("shallow-water integration went unstable (NaN/inf); use a coarser grid or a smaller dt")
    lat = np.rad2deg(solver.lats.numpy())
    coords = {"time": pd.date_range("2000-01-01", periods=trajectories * steps, freq=f"{RECORD_HOURS}h").values,
              "level": np.array([LEVEL]), "latitude": np.round(lat, 6), "longitude": np.rad2deg(solver.lons.numpy()),
              "trajectory": ("time", np.repeat(np.arange(trajectories), steps))}
    dims = ("time", "level", "latitude", "longitude")
    ds = xr.Dataset({name: (dims, data[:, i]) for i, name in enumerate(VARIABLES)}, coords=coords)
    ds.attrs["source"] = f"jigsaw-data swe (torch-harmonics ShallowWaterSolver) seed={seed}"
    return describe(ds)

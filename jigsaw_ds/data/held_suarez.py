"""Held-Suarez primitive-equation trajectories from dinosaur (NeuralGCM's dynamical core), in WeatherBench2's schema.

The dry hydrostatic primitive equations on `layers` equidistant sigma levels at spectral truncation T (T21: a
32 x 64 Gaussian grid, T42: 64 x 128), forced as Held & Suarez (1994) propose: temperature relaxed towards a
zonally symmetric radiative equilibrium, Rayleigh friction in the boundary layer; flat surface, no moisture.
Unlike the shallow-water set (swe.py) the model sees several levels and variables, as with ERA5, and the flow
is driven: jets and baroclinic eddies are in statistical equilibrium, not decaying from a random start.

One integration, seeded: an isothermal atmosphere at rest with a random surface-pressure bump, spun up for
`spinup` days (at T21 the eddies are developed after about 100: 5 m/s eddy wind at the lowest level); then
each trajectory is `steps` 6-hourly records followed by `gap` unrecorded days, so that trajectories are
nearly independent samples of the same climate (eddies decorrelate in a few days). Times are the model's own
(from 2000-01-01 at the end of the spin-up), so the gaps between runs are in the time axis too; the
`trajectory` coordinate on time keeps the runs apart, so that no training pair spans two of them.

Recorded on pressure levels like ERA5's: geopotential, temperature, u and v at LEVELS hPa and the surface
pressure. The interpolation from sigma levels is linear in log(sigma) within each column (dinosaur's
interp_sigma_to_pressure with a log-pressure interpolant): hydrostatic geopotential is linear in log pressure
across an isothermal layer, so this is exact there, where linear in sigma is 2% high at 250 hPa.
Latitudes are the run's own Gaussian nodes, south to north: no pole rows, so u and v are defined everywhere.
The forcing and the surface do not depend on longitude, so longitude-roll augmentation is valid here.

dinosaur (`pip install -c constraints.txt dinosaur-dycore`, with jax for the CPU) is imported only here.
"""
from __future__ import annotations

import numpy as np
import pandas as pd
import xarray as xr

from ..errors import MissingLibrary
from .names import describe

RECORD_HOURS = 6
LEVELS = (250, 500, 850)  # hPa
UPPER = ("geopotential", "temperature", "u_component_of_wind", "v_component_of_wind")
SURFACE = ("surface_pressure",)
# truncation -> (Gaussian grid n_lat x n_lon, as dinosaur's Grid.T21() etc.; time step in minutes): 20 min is
# stable at T21 (measured: 2360 days), 10 min at T42 (dinosaur's own example), the others scaled between
TRUNCATIONS = {21: ((32, 64), 20), 31: ((48, 96), 15), 42: ((64, 128), 10), 85: ((128, 256), 5)}
MIN_LAYERS = 4  # 250 and 850 hPa must lie between sigma levels (one layer: no vertical structure at all)


def _dinosaur():
    try:
        import jax  # noqa: F401
        import dinosaur  # noqa: F401
    except ImportError as e:
        raise MissingLibrary(f"jigsaw-data held-suarez needs dinosaur-dycore and jax ({e}); install them with "
                             "`pip install -c constraints.txt dinosaur-dycore` (scripts/install.sh does)") from None


class HeldSuarezRun:
    """The model (grid, equations, step) and its jitted pieces: advance a state, record it on pressure levels."""

    def __init__(self, truncation: int, layers: int):
        _dinosaur()
        import jax
        from dinosaur import (coordinate_systems, held_suarez, primitive_equations, primitive_equations_states,
                              scales, sigma_coordinates, spherical_harmonic, time_integration, vertical_interpolation,
                              xarray_utils)

        units = scales.units
        (n_lat, _), self.dt_minutes = TRUNCATIONS[truncation]
        self.grid = spherical_harmonic.Grid.construct(max_wavenumber=truncation, gaussian_nodes=n_lat // 2)
        self.coords = coordinate_systems.CoordinateSystem(self.grid,
                                                          sigma_coordinates.SigmaCoordinates.equidistant(layers))
        specs = primitive_equations.PrimitiveEquationsSpecs.from_si()
        self._initial_state, aux = primitive_equations_states.isothermal_rest_atmosphere(
            self.coords, specs, p0=1e5 * units.pascal, p1=5e3 * units.pascal)
        ref_temperature = aux[xarray_utils.REF_TEMP_KEY]
        orography = primitive_equations.truncated_modal_orography(aux[xarray_utils.OROGRAPHY], self.coords)
        equations = time_integration.compose_equations([
            primitive_equations.PrimitiveEquations(ref_temperature, orography, self.coords, specs),
            held_suarez.HeldSuarezForcing(self.coords, specs, ref_temperature, p0=1e5 * units.pascal)])
        dt = specs.nondimensionalize(self.dt_minutes * units.minute)
        # the scale-selective filter of dinosaur's Held-Suarez example: damps the few smallest resolved scales
        step = time_integration.step_with_filters(
            time_integration.imex_rk_sil3(equations, dt),
            [time_integration.exponential_step_filter(self.grid, dt, tau=0.0087504, order=1.5, cutoff=0.8)])
        self.steps_per_record = RECORD_HOURS * 60 // self.dt_minutes
        self.steps_per_day = 24 * 60 // self.dt_minutes
        pressure = vertical_interpolation.PressureCoordinates(
            [specs.nondimensionalize(p * 100 * units.pascal) for p in LEVELS])
        log_linear = vertical_interpolation.vectorize_vertical_interpolation(
            lambda x, xp, fp: vertical_interpolation.linear_interp_with_linear_extrap(
                jax.numpy.log(x), jax.numpy.log(xp), fp))
        cos_lat = self.grid.cos_lat

        def record(state):
            """The state on pressure levels, in SI units: ({name: [level, lon, lat]}, surface pressure [lon, lat])."""
            diag = primitive_equations.compute_diagnostic_state(state, self.coords)
            geopotential = self.grid.to_nodal(primitive_equations.get_geopotential(
                state.temperature_variation, ref_temperature, orography, self.coords.vertical, specs.g, specs.R))
            surface_pressure = jax.numpy.exp(self.grid.to_nodal(state.log_surface_pressure))  # [1, lon, lat]
            on_sigma = {"geopotential": geopotential,
                        "temperature": ref_temperature[:, None, None] + diag.temperature_variation,
                        "u_component_of_wind": diag.cos_lat_u[0] / cos_lat,
                        "v_component_of_wind": diag.cos_lat_u[1] / cos_lat}
            on_pressure = vertical_interpolation.interp_sigma_to_pressure(
                on_sigma, pressure, self.coords.vertical, surface_pressure, log_linear)
            si = {"geopotential": units.meter ** 2 / units.second ** 2, "temperature": units.degK,
                  "u_component_of_wind": units.meter / units.second, "v_component_of_wind": units.meter / units.second}
            return ({k: specs.dimensionalize(v, si[k]).magnitude for k, v in on_pressure.items()},
                    specs.dimensionalize(surface_pressure[0], units.pascal).magnitude)

        self._advance_day = jax.jit(time_integration.repeated(step, self.steps_per_day))
        self._step = step
        self.record = jax.jit(record)
        self._trajectories = {}

    def initial_state(self, seed: int):
        import jax

        return self._initial_state(jax.random.PRNGKey(seed))

    def advance_days(self, state, days: int):
        for _ in range(days):  # one compiled day, called `days` times: compile cost independent of `days`
            state = self._advance_day(state)
        return state

    def trajectory(self, state, records: int):
        """`records` records 6 h apart from `state` on: (the state 6 h after the last record, {name: [time,
        level, lon, lat]}, surface pressure [time, lon, lat])."""
        import jax
        from dinosaur import time_integration

        if records not in self._trajectories:
            self._trajectories[records] = jax.jit(time_integration.trajectory_from_step(
                self._step, records, self.steps_per_record, start_with_input=True, post_process_fn=self.record))
        state, (upper, surface) = self._trajectories[records](state)
        return state, {k: np.asarray(v) for k, v in upper.items()}, np.asarray(surface)

    def latitudes_longitudes(self) -> tuple[np.ndarray, np.ndarray]:
        """Degrees: Gaussian latitudes south to north, longitudes from 0 east."""
        lon, sin_lat = self.grid.nodal_axes
        return np.rad2deg(np.arcsin(sin_lat)), np.rad2deg(lon)


def held_suarez_dataset(truncation: int, layers: int, trajectories: int, steps: int, spinup: int, gap: int,
                        seed: int = 0) -> xr.Dataset:
    """`trajectories` runs of `steps` 6-hourly records each (see the module docstring), held in memory:
    4 bytes x (4 x len(LEVELS) + 1) channels x grid points x trajectories x steps."""
    run = HeldSuarezRun(truncation, layers)
    state = run.advance_days(run.initial_state(seed), spinup)
    upper, surface, starts = {k: [] for k in UPPER}, [], []
    hours = 0  # since the end of the spin-up
    for _ in range(trajectories):
        starts.append(hours)
        state, fields, ps = run.trajectory(state, steps)
        for k in UPPER:
            upper[k].append(fields[k].transpose(0, 1, 3, 2))  # [time, level, lat, lon]
        surface.append(ps.transpose(0, 2, 1))
        state = run.advance_days(state, gap)
        hours += steps * RECORD_HOURS + 24 * gap
    data = {k: np.concatenate(v).astype(np.float32) for k, v in upper.items()}
    data["surface_pressure"] = np.concatenate(surface).astype(np.float32)
    bad = [k for k, v in data.items() if not np.isfinite(v).all()]
    if bad:
        raise RuntimeError(f"Held-Suarez integration went unstable (non-finite {', '.join(bad)}) at T{truncation}")
    lat, lon = run.latitudes_longitudes()
    hours = np.concatenate([start + RECORD_HOURS * np.arange(steps) for start in starts])
    coords = {"time": (pd.Timestamp("2000-01-01") + pd.to_timedelta(hours, unit="h")).values,
              "level": np.array(LEVELS), "latitude": np.round(lat, 6), "longitude": np.round(lon, 6),
              "trajectory": ("time", np.repeat(np.arange(trajectories), steps))}
    upper_dims, surface_dims = ("time", "level", "latitude", "longitude"), ("time", "latitude", "longitude")
    ds = xr.Dataset({k: (surface_dims if k in SURFACE else upper_dims, v) for k, v in data.items()}, coords=coords)
    ds.attrs["source"] = (f"jigsaw-data held-suarez (dinosaur, Held & Suarez 1994) T{truncation} L{layers} "
                          f"spinup={spinup}d gap={gap}d seed={seed}")
    return describe(ds)

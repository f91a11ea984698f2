"""Forcing channels: where the sun is, computed for any grid points and times, never stored or read.

Every ERA5 forecast model users compare against is told the time and the sun's position (GraphCast: TOA incident
solar radiation and time-of-day/year encodings at the input and target times). Each rank computes them on its
own tile's coordinates (the data loader passes the tile's latitudes and longitudes), so they are sliced exactly
like the data; a rollout advances their time by one model step per step.

Channels (`model.forcings` lists the kinds; each at the input time, and also at the target time with
`model.forcings_at_target`):
  toa_solar    1 channel: TOA incident solar irradiance / S0 (dimensionless, 0 at night, about 1 at the
               subsolar point): S0 E0 max(cos z, 0) / S0 with
                   cos z = sin(lat) sin(decl) + cos(lat) cos(decl) cos(h),
                   h = 2 pi (t_UTC_hours + lon / 15 + EoT / 60 - 12) / 24   (hour angle, true solar time),
               declination decl, eccentricity factor E0 and equation of time EoT (minutes) from Spencer's
               Fourier series in the day angle G = 2 pi (d - 1) / 365, d the (fractional) day of the year:
               J. W. Spencer (1971), "Fourier series representation of the position of the sun", Search 2(5):172;
               as tabulated in M. Iqbal (1983), An Introduction to Solar Radiation, ch. 1. S0 = 1361 W m-2
               (Kopp and Lean 2011). Accuracy: decl within 0.0006 rad, EoT within 35 s.
  time_of_day  2 channels: sin and cos of 2 pi (local mean solar time) / 24 h, local time = UTC + lon / 15 h.
  day_of_year  2 channels: sin and cos of 2 pi (fractional day of the year) / 365.25 (the same everywhere).
"""
from __future__ import annotations

import numpy as np

SOLAR_CONSTANT = 1361.0  # W m-2
KINDS = {"toa_solar": 1, "time_of_day": 2, "day_of_year": 2}


def n_channels(kinds, at_target: bool = False) -> int:
    return sum(KINDS[k] for k in kinds) * (2 if at_target else 1)


def _day_and_hour(times) -> tuple[np.ndarray, np.ndarray]:
    """(fractional day of the year, from 1.0 at Jan 1 00 UTC; UTC hour) of datetime64 times."""
    t = np.asarray(times, dtype="datetime64[s]")
    year_start = t.astype("datetime64[Y]").astype("datetime64[s]")
    days = (t - year_start) / np.timedelta64(1, "D")
    hours = (t - t.astype("datetime64[D]").astype("datetime64[s]")) / np.timedelta64(1, "h")
    return 1.0 + days, hours


def solar_geometry(times) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(declination [rad], eccentricity factor E0, equation of time [minutes]) per time (Spencer 1971)."""
    day, _ = _day_and_hour(times)
    g = 2 * np.pi * (day - 1) / 365.0
    decl = (0.006918 - 0.399912 * np.cos(g) + 0.070257 * np.sin(g) - 0.006758 * np.cos(2 * g)
            + 0.000907 * np.sin(2 * g) - 0.002697 * np.cos(3 * g) + 0.00148 * np.sin(3 * g))
    e0 = (1.000110 + 0.034221 * np.cos(g) + 0.001280 * np.sin(g) + 0.000719 * np.cos(2 * g)
          + 0.000077 * np.sin(2 * g))
    eot = 229.18 * (0.000075 + 0.001868 * np.cos(g) - 0.032077 * np.sin(g) - 0.014615 * np.cos(2 * g)
                    - 0.040849 * np.sin(2 * g))
    return decl, e0, eot


def toa_incident_solar(lat_deg, lon_deg, times) -> np.ndarray:
    """[T, h, w] TOA incident solar irradiance in W m-2 at the given instants (module docstring)."""
    decl, e0, eot = solar_geometry(times)
    _, hours = _day_and_hour(times)
    phi = np.deg2rad(np.asarray(lat_deg, np.float64))[None, :, None]
    lon = np.asarray(lon_deg, np.float64)[None, None, :]
    solar_hours = hours[:, None, None] + lon / 15.0 + eot[:, None, None] / 60.0
    hour_angle = 2 * np.pi * (solar_hours - 12.0) / 24.0
    d = decl[:, None, None]
    cos_zenith = np.sin(phi) * np.sin(d) + np.cos(phi) * np.cos(d) * np.cos(hour_angle)
    return SOLAR_CONSTANT * e0[:, None, None] * np.clip(cos_zenith, 0.0, None)


def forcing_channels(kinds, lat_deg, lon_deg, times) -> np.ndarray:
    """[T, F, h, w] float32: the chosen kinds, in the order given, at each time, on the tile (lat, lon)."""
    lat_deg, lon_deg = np.asarray(lat_deg, np.float64), np.asarray(lon_deg, np.float64)
    day, hours = _day_and_hour(times)
    shape = (len(day), len(lat_deg), len(lon_deg))
    out = []
    for kind in kinds:
        if kind == "toa_solar":
            out.append(toa_incident_solar(lat_deg, lon_deg, times) / SOLAR_CONSTANT)
        elif kind == "time_of_day":
            angle = 2 * np.pi * (hours[:, None, None] + lon_deg[None, None, :] / 15.0) / 24.0
            out += [np.broadcast_to(np.sin(angle), shape), np.broadcast_to(np.cos(angle), shape)]
        elif kind == "day_of_year":
            angle = 2 * np.pi * day / 365.25
            out += [np.broadcast_to(f(angle)[:, None, None], shape) for f in (np.sin, np.cos)]
        else:
            raise ValueError(f"unknown forcing '{kind}'; known: {', '.join(KINDS)}")
    return np.stack(out, axis=1).astype(np.float32) if out else np.zeros((shape[0], 0) + shape[1:], np.float32)

"""WeatherBench2's variables: units and long names, as in its ERA5 stores (CF attributes).

The generators (synth, swe, held-suarez) describe what they write with them, so that their stores and the
forecasts made from them carry units like real WB2 data.
"""
from __future__ import annotations

import xarray as xr

ATTRS = {  # WB2 name: (units, long_name)
    "geopotential": ("m**2 s**-2", "Geopotential"),
    "temperature": ("K", "Temperature"),
    "u_component_of_wind": ("m s**-1", "U component of wind"),
    "v_component_of_wind": ("m s**-1", "V component of wind"),
    "specific_humidity": ("kg kg**-1", "Specific humidity"),
    "vertical_velocity": ("Pa s**-1", "Vertical velocity"),
    "relative_humidity": ("%", "Relative humidity"),
    "2m_temperature": ("K", "2 metre temperature"),
    "2m_dewpoint_temperature": ("K", "2 metre dewpoint temperature"),
    "10m_u_component_of_wind": ("m s**-1", "10 metre U wind component"),
    "10m_v_component_of_wind": ("m s**-1", "10 metre V wind component"),
    "mean_sea_level_pressure": ("Pa", "Mean sea level pressure"),
    "surface_pressure": ("Pa", "Surface pressure"),
    "total_precipitation": ("m", "Total precipitation"),
    "land_sea_mask": ("(0 - 1)", "Land-sea mask"),
    "geopotential_at_surface": ("m**2 s**-2", "Geopotential at the surface (orography)"),
}
COORD_ATTRS = {"latitude": ("degrees_north", "latitude"), "longitude": ("degrees_east", "longitude"),
               "level": ("hPa", "pressure level")}


def describe(ds: xr.Dataset) -> xr.Dataset:
    """`ds` with WB2's units and long_name on every variable and coordinate this table knows (in place)."""
    for name, (units, long_name) in {**ATTRS, **COORD_ATTRS}.items():
        if name in ds.variables:
            ds[name].attrs.update(units=units, long_name=long_name)
    return ds

"""jigsaw_ds: train WeatherMixer with Jigsaw (domain x tensor) parallelism on DeepSpeed.

`from jigsaw_ds import Forecaster` (jigsaw_ds.inference): load a checkpoint and forecast from an xarray Dataset.
"""
__version__ = "0.1.0"


def __getattr__(name: str):
    # imported on first use, so that `import jigsaw_ds` (every CLI's start) does not import torch
    if name == "Forecaster":
        from .inference import Forecaster

        return Forecaster
    raise AttributeError(f"module 'jigsaw_ds' has no attribute '{name}'")

"""WeatherMixer (weather_mixer), its size (shape), what a trained model reads (inputs) and its FLOPs (flops).

The names below load on first use, so that `jigsaw_ds.model.inputs`, which the CLIs check their input against
before any model exists, comes without torch."""
_EXPORTS = {"WeatherMixer": "weather_mixer", "ensemble_mean": "weather_mixer", "InputSpec": "inputs",
            "rollout": "weather_mixer", "forward_flops_per_sample": "flops", "train_flops_per_sample": "flops",
            "ModelShape": "shape"}
__all__ = list(_EXPORTS)


def __getattr__(name: str):
    if name in _EXPORTS:
        import importlib

        return getattr(importlib.import_module(f".{_EXPORTS[name]}", __name__), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")

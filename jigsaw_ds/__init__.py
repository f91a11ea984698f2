"""jigsaw_ds: train WeatherMixer with Jigsaw (domain x tensor) parallelism on DeepSpeed."""
__version__ = "0.1.0"

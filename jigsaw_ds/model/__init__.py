from .flops import forward_flops_per_sample, train_flops_per_sample
from .weather_mixer import WeatherMixer

__all__ = ["WeatherMixer", "forward_flops_per_sample", "train_flops_per_sample"]

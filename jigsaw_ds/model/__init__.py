from .flops import forward_flops_per_sample, train_flops_per_sample
from .weather_mixer import WeatherMixer, input_channels, rollout

__all__ = ["WeatherMixer", "input_channels", "rollout", "forward_flops_per_sample", "train_flops_per_sample"]

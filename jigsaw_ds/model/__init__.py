from .flops import forward_flops_per_sample, train_flops_per_sample
from .weather_mixer import WeatherMixer, ensemble_mean, input_channels, rollout

__all__ = ["WeatherMixer", "ensemble_mean", "input_channels", "rollout", "forward_flops_per_sample", "train_flops_per_sample"]

"""chatops: start, watch and steer deep-learning training from chat."""

__version__ = "0.1.0"

"""geocmid: CMID self-supervised pretraining and georeferenced workflows on TorchGeo."""

__version__ = "0.1.0"

__all__ = ["__version__"]

"""Data layer: catalog entries → TorchGeo datasets, samplers, datamodules and statistics."""

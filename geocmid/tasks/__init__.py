"""Downstream tasks (classification, segmentation, change) initialised from CMID backbones."""

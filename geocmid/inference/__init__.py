"""Georeferenced prediction: windows, blending, bounded-memory blocks, rasters and vectors.

Journey 3 of ARCHITECTURE.md ("map a place"). Entry points:

- :func:`predict` (xarray in/out) and :func:`predict_scene` (files in/out);
- :class:`Predictor` bundles a model with its :class:`ModelCard` and task;
- :class:`RunSettings` (windows, overlap, blocks, batching, TTA) and :class:`OutputOptions`.

Module map: ``windows`` (layout + weights) → ``reader`` (common grid) → ``engine`` (block loop)
→ ``store`` (resumable block files) → ``assemble`` (regions → rasters) → ``writers`` (atomic COG)
→ ``vectorize`` / ``detections`` (vectors) → ``summary`` (JSON + PNG); ``run`` ties them together.
"""

from __future__ import annotations

from geocmid.inference.api import Prediction, predict
from geocmid.inference.card import ClassInfo, ModelCard
from geocmid.inference.engine import RunSettings
from geocmid.inference.predictor import ChangeModel, DetectionModel, Predictor, SegmentationModel
from geocmid.inference.run import OutputOptions, PredictionResult, predict_scene

__all__ = [
    "ChangeModel",
    "ClassInfo",
    "DetectionModel",
    "ModelCard",
    "OutputOptions",
    "Prediction",
    "PredictionResult",
    "Predictor",
    "RunSettings",
    "SegmentationModel",
    "predict",
    "predict_scene",
]

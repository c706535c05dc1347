"""QGIS style files for recipe outputs: the ones :mod:`geocmid.inference.styles` writes for
``geocmid predict`` (one definition, so both commands write the same styles)."""

from __future__ import annotations

from geocmid.inference.styles import raster_qml, vector_qml, write_styles

__all__ = ["raster_qml", "vector_qml", "write_styles"]

"""Model cards as seen by prediction: a re-export of :mod:`geocmid.models.card`.

There is one card for the whole package (:class:`~geocmid.models.card.ModelCard`, format
``geocmid-card/2``, which also reads the older layouts and the minimal hand-written prediction
cards ``{"bands", "mean", "std", "classes"}``) and one class table
(:class:`~geocmid.data.classes.ClassInfo`: ``value``, ``name``, ``color`` as an RGBA tuple).
Prediction uses ``bands``, ``in_chans``, ``mean``, ``std``, ``classes``, ``num_classes`` and
writes :meth:`~geocmid.models.card.ModelCard.to_dict` into the provenance of every output.
"""

from __future__ import annotations

from geocmid.data.classes import ClassInfo
from geocmid.models.card import ModelCard

__all__ = ["ClassInfo", "ModelCard"]

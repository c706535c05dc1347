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


#: Class names (lower case, spaces/underscores/hyphens removed) read as "no class of interest".
BACKGROUND_NAMES = frozenset(
    {"background", "nochange", "unchanged", "notchanged", "nodifference", "bg", "other"}
)


def background_value(card: ModelCard, task: str | None = None) -> int | None:
    """The background / no-change class of a model: the value vectors leave out.

    In order: the card's ``background`` key (an integer, or ``null`` for none); else the class
    whose name reads as background or no change (``"background"``, ``"no change"``,
    ``"unchanged"`` …, whatever its value: OSCD codes no change as 1); else, for change models,
    the class of logit channel 0; else ``None`` (every class is a class of interest).

    Args:
        card: the model card.
        task: the model's task (``"change"`` enables the channel-0 rule).
    """
    if "background" in card.extra:
        value = card.extra["background"]
        return None if value is None else int(value)
    for c in card.classes:
        key = "".join(ch for ch in c.name.lower() if ch.isalnum())
        if key in BACKGROUND_NAMES:
            return c.value
    if task == "change" and card.classes:
        return card.classes[0].value
    return None


__all__ += ["BACKGROUND_NAMES", "background_value"]

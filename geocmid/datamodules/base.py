"""What every geocmid datamodule shares: TorchGeo's base class and the loader settings.

geocmid's datamodules subclass :class:`torchgeo.datamodules.BaseDataModule`, so ``torchgeo fit``
and plain Lightning CLI configs accept them. They build their own datasets from catalog entries
(TorchGeo's ``dataset_class`` / ``aug`` machinery is not used): samples are normalised by the
dataset transforms (supervised) or on the device (pretraining), never by TorchGeo's default
``Normalize(0, 255)``.

Fine-tuning datamodules also tell the task what it is built for (:meth:`task_args`: bands, class
table, normalisation statistics, chip size), so a task may leave those arguments out of its
config, and take their normalisation statistics from a pretrained encoder's model card
(``stats_from``, :func:`stats_from_card`).
"""

from __future__ import annotations

import json
import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from torch.utils.data import DataLoader, Dataset
from torchgeo.datamodules import BaseDataModule
from torchgeo.datasets.utils import stack_samples

from geocmid.data.sampling import ChipBatch
from geocmid.errors import ModelError

log = logging.getLogger(__name__)

#: Key of the model card inside fine-tuned Lightning checkpoints (geocmid.tasks writes it).


class CatalogDataModule(BaseDataModule):
    """A TorchGeo datamodule whose datasets come from catalog entries.

    Args:
        batch_size: samples per batch.
        num_workers: data-loading processes.
    """

    def __init__(self, batch_size: int = 1, num_workers: int = 0) -> None:
        super().__init__(Dataset, batch_size=batch_size, num_workers=num_workers)

    def prepare_data(self) -> None:
        """Nothing to download: catalog data are local (``geocmid catalog download`` fetches)."""

    def on_after_batch_transfer(self, batch: Any, dataloader_idx: int) -> Any:
        """Batches are already normalised by the dataset transforms: pass them through."""
        return batch

    def task_args(self) -> dict[str, Any]:
        """What a fine-tuning task needs from the data, read after :meth:`setup`.

        Returns:
            ``in_channels`` (bands), ``num_classes`` (logit channels), ``classes``
            (``[{value, name, color}]`` in logit order), ``bands`` (names), ``mean`` / ``std``
            (raw units, what the images are normalised with) and ``chip_size`` (pixels).
        """
        self.setup()
        bands = list(self.bands)  # type: ignore[attr-defined]
        classes = class_dicts(self.classes)  # type: ignore[attr-defined]
        mean, std = self.normalisation  # type: ignore[attr-defined]
        return {
            "in_channels": len(bands),
            "num_classes": len(classes),
            "classes": classes,
            "bands": [str(b) for b in bands],
            "mean": [float(v) for v in mean],
            "std": [float(v) for v in std],
            "chip_size": int(self.hparams["chip_size"]),
        }


def worker_init(worker_id: int) -> None:
    """``worker_init_fn`` of geocmid's loaders: default SIGTERM, ignored SIGINT in workers.

    Forked workers inherit the main process's Python signal handlers (Lightning's SIGTERM
    notifier, the ``geocmid`` command's interrupt handler). When the loader shuts its workers
    down with SIGTERM, the inherited handler ran in the worker during interpreter teardown and
    printed "[rank: 0] Received SIGTERM" and "Error in sys.excepthook" at the end of every
    ``torchgeo fit`` / ``geocmid`` run with ``num_workers > 0``. Ctrl-C is the main process's to
    handle; it stops the workers itself.
    """
    import signal

    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    signal.signal(signal.SIGINT, signal.SIG_IGN)


def collate(samples: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """TorchGeo's ``stack_samples``, except that a batch a dataset's ``__getitems__`` read
    already stacked (:class:`~geocmid.data.sampling.ChipBatch`) is passed on as it is.

    Returns:
        key → the samples' tensors stacked along a new first axis ``[B, ...]``.
    """
    if isinstance(samples, ChipBatch):
        return dict(samples.batch)
    return stack_samples(samples)


def loader(dataset: Any, sampler: Any, batch_size: int, num_workers: int, **kw: Any) -> DataLoader:
    """A DataLoader over a geo sampler, collating TorchGeo samples (:func:`collate`: whole
    batches where the dataset reads them at once); workers persist between epochs (re-forking
    them every epoch costs seconds and empties their GDAL caches) and take default signal
    handling (:func:`worker_init`)."""
    kw.setdefault("worker_init_fn", worker_init if num_workers > 0 else None)
    return DataLoader(
        dataset,
        batch_size=batch_size,
        sampler=sampler,
        num_workers=num_workers,
        collate_fn=collate,
        persistent_workers=num_workers > 0,
        **kw,
    )


def class_dicts(classes: Sequence[Any]) -> list[dict[str, Any]]:
    """Class table entries (``ClassInfo``) → ``[{"value", "name", "color": "#rrggbb"}]``."""
    out = []
    for c in classes:
        if hasattr(c, "to_dict"):
            out.append(dict(c.to_dict()))
        else:
            out.append({"value": int(c.value), "name": str(c.name), "color": c.color})
    return out


def stats_from_card(
    path: str | Path | None, bands: Sequence[str], where: str
) -> tuple[list[float], list[float]] | None:
    """Per-band ``(mean, std)`` (raw units) recorded with a model, or None.

    ``path`` names a geocmid export (``NAME.safetensors``, its card ``NAME.json``, or the bare
    ``NAME``) or a fine-tuned checkpoint (``.ckpt``, the card inside); the statistics a
    pretrained encoder learnt with are the ones its features mean something for. Other weight
    files (a CMID release ``.pth``) carry none: None, and the data's own statistics are used.

    Raises:
        ModelError: the card's statistics are for another number of bands than ``bands``.
        ConfigError: the card is not a valid model card (the message names the key).
    """
    from geocmid.models.card import CHECKPOINT_KEY, ModelCard

    if not path:
        return None
    p = Path(path)
    raw: Any = None
    if p.suffix == ".ckpt" and p.is_file():
        import torch

        ckpt = torch.load(p, map_location="cpu", weights_only=True)
        raw = ckpt.get(CHECKPOINT_KEY) if isinstance(ckpt, dict) else None
    elif p.suffix in ("", ".safetensors", ".json") and p.with_suffix(".json").is_file():
        raw = json.loads(p.with_suffix(".json").read_text())
    if not raw:
        log.info("%s: no model card with statistics; normalising with the data's own", p)
        return None
    card = ModelCard.from_dict(raw, where=f"model card of '{p}'")
    if not card.mean or not card.std:
        return None
    if len(card.mean) != len(bands):
        named = f" ({', '.join(map(str, card.bands))})" if card.bands else ""
        raise ModelError(
            f"model card of '{p}' ({where})",
            f"the encoder was trained on {len(card.mean)} bands{named} but the data has "
            f"{len(bands)} ({', '.join(map(str, bands))})",
            "fine-tune on imagery with the same bands, or start from other weights",
        )
    return [float(v) for v in card.mean], [float(v) for v in card.std]

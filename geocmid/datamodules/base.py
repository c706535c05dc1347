"""What every geocmid datamodule shares: TorchGeo's base class and the loader settings.

geocmid's datamodules subclass :class:`torchgeo.datamodules.BaseDataModule`, so ``torchgeo fit``
and plain Lightning CLI configs accept them. They build their own datasets from catalog entries
(TorchGeo's ``dataset_class`` / ``aug`` machinery is not used): samples are normalised by the
dataset transforms (supervised) or on the device (pretraining), never by TorchGeo's default
``Normalize(0, 255)``.
"""

from __future__ import annotations

from typing import Any

from torch.utils.data import DataLoader, Dataset
from torchgeo.datamodules import BaseDataModule
from torchgeo.datasets.utils import stack_samples


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


def loader(dataset: Any, sampler: Any, batch_size: int, num_workers: int, **kw: Any) -> DataLoader:
    """A DataLoader over a geo sampler, collating TorchGeo samples; workers persist between
    epochs (re-forking them every epoch costs seconds and empties their GDAL caches)."""
    return DataLoader(
        dataset,
        batch_size=batch_size,
        sampler=sampler,
        num_workers=num_workers,
        collate_fn=stack_samples,
        persistent_workers=num_workers > 0,
        **kw,
    )

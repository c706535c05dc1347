"""Lightning datamodules over catalog entries (TorchGeo's layout: one package, one module each).

Every datamodule subclasses :class:`torchgeo.datamodules.BaseDataModule` (through
:class:`~geocmid.datamodules.base.CatalogDataModule`), so ``torchgeo fit`` configs accept them.
"""

from geocmid.datamodules.base import CatalogDataModule
from geocmid.datamodules.chip_pretrain import ChipPretrainDataModule
from geocmid.datamodules.chips import FeatureChipDataModule
from geocmid.datamodules.chipsets import ChipChangeDataModule, ChipSegmentationDataModule
from geocmid.datamodules.detection import DetectionDataModule
from geocmid.datamodules.detection_folder import DetectionFolderDataModule
from geocmid.datamodules.folder import ImageFolderDataModule
from geocmid.datamodules.geo import SupervisedGeoDataModule
from geocmid.datamodules.pretrain import PretrainDataModule
from geocmid.datamodules.segmentation import SegmentationDataModule
from geocmid.datamodules.torchgeo_chips import TorchGeoChipDataModule

__all__ = [
    "CatalogDataModule",
    "ChipChangeDataModule",
    "ChipPretrainDataModule",
    "ChipSegmentationDataModule",
    "DetectionDataModule",
    "DetectionFolderDataModule",
    "FeatureChipDataModule",
    "ImageFolderDataModule",
    "PretrainDataModule",
    "SegmentationDataModule",
    "SupervisedGeoDataModule",
    "TorchGeoChipDataModule",
]

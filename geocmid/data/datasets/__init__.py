"""TorchGeo datasets built from catalog entries."""

from geocmid.data.datasets.bitemporal import BitemporalDataset
from geocmid.data.datasets.factory import (
    bitemporal_dataset,
    dataset_from_entry,
    image_folder_dataset,
    imagery_dataset,
    raster_labels_dataset,
    vector_labels_dataset,
)
from geocmid.data.datasets.folder import ImageFolderDataset
from geocmid.data.datasets.labels import IGNORE_INDEX, ClassLookup, ClassMaskDataset
from geocmid.data.datasets.raster import CatalogRasterDataset

__all__ = [
    "IGNORE_INDEX",
    "BitemporalDataset",
    "CatalogRasterDataset",
    "ClassLookup",
    "ClassMaskDataset",
    "ImageFolderDataset",
    "bitemporal_dataset",
    "dataset_from_entry",
    "image_folder_dataset",
    "imagery_dataset",
    "raster_labels_dataset",
    "vector_labels_dataset",
]

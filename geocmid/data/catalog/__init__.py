"""Data catalog: YAML entries describing data sources, addressed by name."""

from geocmid.data.catalog.schema import (
    BitemporalEntry,
    ClassInfo,
    Entry,
    ImageFolderEntry,
    ImageryEntry,
    RasterLabelsEntry,
    TorchGeoDatasetEntry,
    VectorLabelsEntry,
)
from geocmid.data.catalog.store import Catalog, load_entry_file
from geocmid.data.catalog.validate import EntryReport, validate

__all__ = [
    "BitemporalEntry",
    "Catalog",
    "ClassInfo",
    "Entry",
    "EntryReport",
    "ImageFolderEntry",
    "ImageryEntry",
    "RasterLabelsEntry",
    "TorchGeoDatasetEntry",
    "VectorLabelsEntry",
    "load_entry_file",
    "validate",
]

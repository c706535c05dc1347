"""``catalog validate`` for chip datasets (``image_folder``, ``chip_segmentation``,
``chip_change``): headers of every file, and every mask's values or colours."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

from geocmid.data.catalog.schema import (
    ChipChangeEntry,
    ChipEntry,
    ChipSegmentationEntry,
    ImageFolderEntry,
)
from geocmid.errors import DataError, several_files

#: Masks up to this many pixels in total are decoded by ``catalog validate`` (every value and
#: colour checked against the class table); larger datasets are checked as they are read.
CHECK_PIXELS = 200_000_000


def validate_chip_entry(entry: ChipEntry) -> dict[str, int]:
    """Check a chip dataset; return image counts per class (image folders) or per split.

    Checks: the files pair up (segmentation, change), every image has the band count of the
    first (and ``bands`` if given), masks and labels have one band and their image's size, both
    dates of a change pair have the same size, every mask value / colour is in the class table
    (up to :data:`CHECK_PIXELS` pixels of masks), and a classification tree has two classes.

    Raises:
        ConfigError, DataError: naming the entry key or the file, what is wrong and the fix.
    """
    from geocmid.data.chipsets import band_names, mask_decoder, records

    recs = records(entry)
    header_of = _readable_headers(recs.files, entry.where)
    first = recs.files[0][0]
    bands = header_of[first][0]
    band_names(entry, bands)  # `bands` of the entry against the files
    for group in recs.files:
        headers = [header_of[f] for f in group]
        image = headers[0]
        if image[0] != bands:
            raise DataError(
                str(group[0]),
                f"has {image[0]} band(s), but {first} has {bands}",
                f"every image of {entry.where} needs the same bands",
            )
        for path, header in zip(group[1:], headers[1:], strict=True):
            is_label = isinstance(entry, ChipSegmentationEntry) or path == group[-1]
            if isinstance(entry, ChipChangeEntry) and not is_label and header[0] != image[0]:
                raise DataError(
                    str(path),
                    f"has {header[0]} band(s), its first date {group[0]} has {image[0]}",
                    "both dates need the same bands",
                )
            if header[1:] != image[1:]:
                raise DataError(
                    str(path),
                    f"is {header[2]}x{header[1]} pixels but {group[0]} is {image[2]}x{image[1]}",
                    "pairs must share their pixel grid: resample or crop one of them",
                )
            if (
                is_label
                and header[0] != 1
                and not (isinstance(entry, ChipSegmentationEntry) and entry.mask_format == "colors")
            ):
                raise DataError(
                    str(path),
                    f"label files need 1 band, this one has {header[0]}",
                    "for colour-coded masks set 'mask_format: colors' and the class colours",
                )
    if isinstance(entry, ImageFolderEntry):
        if entry.labels == "none":
            return dict(Counter(s or "images" for s in recs.splits))
        assert recs.labels is not None
        counts = Counter(recs.classes[i] for i in recs.labels)
        if len(counts) < 2:
            raise DataError(
                entry.where,
                f"has {len(counts)} class folder(s); scene classification needs at least 2",
                "add one sub-folder of images per class, or set 'labels: none'",
            )
        return {c: counts[c] for c in recs.classes}
    assert isinstance(entry, ChipSegmentationEntry | ChipChangeEntry)
    decode = mask_decoder(entry)
    pixels, checked = 0, 0
    broken: list[DataError] = []
    for group in recs.files:
        h, w = header_of[group[-1]][1:]
        pixels += h * w
        if pixels > CHECK_PIXELS:
            break
        checked += 1
        try:
            decode(group[-1])  # raises on a value / colour missing from the class table
        except DataError as error:
            if not error.problem.startswith("cannot be decoded"):
                raise
            broken.append(error)  # a corrupt file: every one is named below
    if broken:
        raise several_files(broken, checked, entry.where, "label files")
    return dict(Counter(s or "pairs" for s in recs.splits))


def _readable_headers(
    files: list[tuple[Path, ...]], where: str
) -> dict[Path, tuple[int, int, int]]:
    """``(bands, height, width)`` of every file of every group.

    Raises:
        DataError: one error for every file whose header cannot be read (how many, the first
            few named), not only for the first.
    """
    from geocmid.data.chipsets import image_header

    headers: dict[Path, tuple[int, int, int]] = {}
    failures: list[DataError] = []
    for group in files:
        for path in group:
            if path in headers:
                continue
            try:
                headers[path] = image_header(path)
            except DataError as error:
                failures.append(error)
    if failures:
        raise several_files(failures, len(headers) + len(failures), where)
    return headers

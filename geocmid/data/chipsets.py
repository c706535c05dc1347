"""Chip datasets: folders of plain image tiles (no georeferencing) with labels beside them.

Read on their pixel grid, never as a geographic footprint. Three layouts (catalog kinds in
:mod:`geocmid.data.catalog.schema`):

* ``image_folder``: images found recursively under ``root``; the class of an image is its first
  sub-folder below the split folder (``labels: folders``), or there is none (``labels: none``);
* ``chip_segmentation``: an image and its mask share their path but for one folder name
  (``images`` → ``masks``) and the file ending;
* ``chip_change``: first date, second date and change label share their path but for one folder
  name (``A``/``B``/``label``, ``image1``/``image2``/``label``, ``prev``/``curr``/``label``).

Images decode with Pillow (JPEG, PNG, BMP: what it reads fastest) or rasterio (TIFF: any band
count, 8/16-bit, float), keeping the file's dtype. Masks map to class indices through the
entry's class table (value masks) or its colours (colour-coded masks); a value or colour missing
from the table is a :class:`~geocmid.errors.DataError` naming the file, the value and how many
pixels have it.
"""

from __future__ import annotations

import fnmatch
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from geocmid.data.catalog.schema import (
    SPLITS,
    ChipChangeEntry,
    ChipEntry,
    ChipSegmentationEntry,
    ClassInfo,
    ImageFolderEntry,
)
from geocmid.errors import DataError

#: Mask value of pixels left out of losses and metrics (the tasks' ``ignore_index``).
IGNORE_INDEX = 255
#: File endings decoded with rasterio (any band count and dtype); the rest with Pillow.
RASTERIO_SUFFIXES = (".tif", ".tiff")
_PIL_MODES: dict[str, Any] = {
    "1": np.uint8, "L": np.uint8, "LA": np.uint8, "RGB": np.uint8, "RGBA": np.uint8,
    "I;16": np.uint16, "I;16L": np.uint16, "I;16B": np.uint16, "I": np.int32, "F": np.float32,
}  # fmt: skip


# ---- reading ------------------------------------------------------------------------------------
def read_image(path: Path) -> np.ndarray:
    """Decode an image file to ``[C, H, W]`` in its own dtype (uint8, uint16, int32, float32).

    Raises:
        DataError: the file cannot be decoded (names it).
    """
    path = Path(path)
    try:
        if path.suffix.lower() in RASTERIO_SUFFIXES:
            import rasterio

            with warnings.catch_warnings():
                warnings.simplefilter("ignore", rasterio.errors.NotGeoreferencedWarning)
                with rasterio.Env(GDAL_PAM_ENABLED="NO"), rasterio.open(path) as src:
                    return src.read()
        with Image.open(path) as img:
            if img.mode not in _PIL_MODES:  # palette, CMYK, YCbCr ... → RGB
                img = img.convert("RGB")
            array = np.asarray(img, dtype=_PIL_MODES[img.mode])
    except DataError:
        raise
    except Exception as error:  # Pillow / GDAL raise many types for broken files
        raise DataError(
            str(path), f"cannot be decoded as an image ({error})", "re-export or remove the file"
        ) from None
    return array[None] if array.ndim == 2 else np.ascontiguousarray(array.transpose(2, 0, 1))


def image_header(path: Path) -> tuple[int, int, int]:
    """``(bands, height, width)`` of an image file, from its header only."""
    path = Path(path)
    try:
        if path.suffix.lower() in RASTERIO_SUFFIXES:
            import rasterio

            with warnings.catch_warnings():
                warnings.simplefilter("ignore", rasterio.errors.NotGeoreferencedWarning)
                with rasterio.Env(GDAL_PAM_ENABLED="NO"), rasterio.open(path) as src:
                    return src.count, src.height, src.width
        with Image.open(path) as img:
            bands = len(img.getbands()) if img.mode in _PIL_MODES else 3
            return bands, img.height, img.width
    except Exception as error:
        raise DataError(
            str(path), f"cannot be read as an image ({error})", "re-export or remove the file"
        ) from None


def read_mask(path: Path) -> np.ndarray:
    """A mask file as ``[H, W]`` values (value masks; palette PNGs give their indices)."""
    path = Path(path)
    if path.suffix.lower() in RASTERIO_SUFFIXES:
        return read_image(path)[0]
    try:
        with Image.open(path) as img:
            if img.mode in ("RGB", "RGBA"):
                raise DataError(
                    str(path),
                    "is a colour image, but the entry declares value masks",
                    "set 'mask_format: colors' and give each class its mask colour",
                )
            return np.asarray(img)
    except DataError:
        raise
    except Exception as error:
        raise DataError(str(path), f"cannot be decoded ({error})", "re-export the file") from None


def read_color_mask(path: Path) -> np.ndarray:
    """A colour-coded mask as ``[H, W]`` int32 ``0xRRGGBB`` codes (palette PNGs → RGB first)."""
    path = Path(path)
    if path.suffix.lower() in RASTERIO_SUFFIXES:
        rgb = read_image(path)[:3].transpose(1, 2, 0)
    else:
        try:
            with Image.open(path) as img:
                rgb = np.asarray(img.convert("RGB"))
        except Exception as error:
            raise DataError(str(path), f"cannot be decoded ({error})", "re-export it") from None
    rgb = rgb.astype(np.int32)
    return (rgb[..., 0] << 16) | (rgb[..., 1] << 8) | rgb[..., 2]


# ---- labels -------------------------------------------------------------------------------------
class MaskDecoder:
    """Mask file → ``[H, W]`` uint8 class indices (position in the class table), 255 = ignore.

    Args:
        classes: the class table; index ``i`` is ``classes[i]``.
        mode: ``values`` (masks hold ``ClassInfo.value``), ``colors`` (masks are coloured with
            ``ClassInfo.color``) or ``change`` (0 = no change, any other value = change).
        ignore_value: mask value of unlabelled pixels (``values`` / ``change``).
        ignore_colors: ``'#rrggbb'`` colours of unlabelled pixels (``colors``).
        where: the catalog entry, for error messages.
    """

    def __init__(
        self,
        classes: Sequence[ClassInfo],
        mode: str = "values",
        ignore_value: int | None = None,
        ignore_colors: Sequence[str] = (),
        where: str = "",
    ) -> None:
        self.classes, self.mode, self.where = list(classes), mode, where
        self.ignore_value = ignore_value
        if mode == "colors":
            self.codes = {_code(c.hex): i for i, c in enumerate(self.classes)}
            self.codes.update({_code(c): IGNORE_INDEX for c in ignore_colors})
        else:
            self.codes = {int(c.value): i for i, c in enumerate(self.classes)}
            if ignore_value is not None:
                self.codes[int(ignore_value)] = IGNORE_INDEX

    def __call__(self, path: Path) -> np.ndarray:
        """Read and decode ``path``.

        Raises:
            DataError: a value / colour is not in the class table (file, value, pixel count).
        """
        if self.mode == "colors":
            return self._lookup(read_color_mask(path), path)
        raw = read_mask(path)
        if self.mode == "change":
            out = (raw != 0).astype(np.uint8)
            if self.ignore_value is not None:
                out[raw == self.ignore_value] = IGNORE_INDEX
            return out
        return self._lookup(raw.astype(np.int64), path)

    def _lookup(self, raw: np.ndarray, path: Path) -> np.ndarray:
        keys = np.array(sorted(self.codes), dtype=np.int64)
        table = np.array([self.codes[int(k)] for k in keys], dtype=np.uint8)
        pos = np.searchsorted(keys, raw).clip(0, len(keys) - 1)
        known = keys[pos] == raw
        if not known.all():
            values, counts = np.unique(raw[~known], return_counts=True)
            order = np.argsort(-counts)
            shown = ", ".join(
                f"{_show(int(values[i]), self.mode)} ({int(counts[i])} pixels)" for i in order[:5]
            )
            more = f" and {len(values) - 5} more" if len(values) > 5 else ""
            fix = (
                "add the colour to 'classes' (as a class's color) or to 'ignore_colors' of "
                if self.mode == "colors"
                else "add the value to 'classes' or set 'ignore_value' of "
            )
            raise DataError(
                str(path),
                f"has {'colours' if self.mode == 'colors' else 'values'} not in the class "
                f"table: {shown}{more}",
                fix + (self.where or "the catalog entry"),
            )
        return table[pos]


def _code(hex_color: str) -> int:
    return int(hex_color[1:7], 16)


def _show(value: int, mode: str) -> str:
    if mode == "colors":
        r, g, b = (value >> 16) & 255, (value >> 8) & 255, value & 255
        return f"#{value:06x} (RGB {r},{g},{b})"
    return str(value)


# ---- files and splits ---------------------------------------------------------------------------
def list_images(root: Path, extensions: Sequence[str]) -> list[Path]:
    """Image files under ``root``, recursively, in sorted order (hidden files skipped)."""
    exts = tuple(e.lower() for e in extensions)
    return sorted(
        p
        for p in Path(root).rglob("*")
        if p.suffix.lower() in exts
        and p.is_file()
        and not any(part.startswith(".") for part in p.relative_to(root).parts)
    )


def _in_spec(rel: Path, spec: str, listed: set[str] | None) -> bool:
    if listed is not None:
        return rel.as_posix() in listed or rel.name in listed or rel.stem in listed
    parts, pattern = rel.parts, Path(spec).parts
    return len(parts) > len(pattern) and all(
        fnmatch.fnmatchcase(p, q) for p, q in zip(parts, pattern, strict=False)
    )


def _listed(entry: ChipEntry, spec: str) -> set[str] | None:
    """The names in a split file (``.txt``/``.csv``, first column), or None for a folder."""
    if not spec.lower().endswith((".txt", ".csv", ".lst")):
        return None
    path = Path(spec).expanduser()
    path = path if path.is_absolute() else entry.root_path / spec
    if not path.is_file():
        path = entry.base_dir / spec
    if not path.is_file():
        raise entry.error("splits", f"split file not found: {spec}", "paths are relative to root")
    names = set()
    for line in path.read_text().splitlines():
        name = line.strip().split(",")[0].split()[0] if line.strip() else ""
        if name and not name.startswith("#"):
            names |= {name, Path(name).name, Path(name).stem}
    return names


def assign_splits(entry: ChipEntry, files: Sequence[Path]) -> list[str | None]:
    """The split of each file (relative to ``entry.root_path``) by the entry's ``splits``:
    ``train`` / ``val`` / ``test``, or None for files in no split (or when there are none)."""
    root = entry.root_path
    specs = {
        name: [(s, _listed(entry, s)) for s in entry.splits[name]]
        for name in SPLITS
        if name in entry.splits
    }
    out: list[str | None] = []
    for f in files:
        rel = f.relative_to(root)
        out.append(
            next(
                (n for n, items in specs.items() if any(_in_spec(rel, s, ls) for s, ls in items)),
                None,
            )
        )
    return out


def _strip_split(entry: ChipEntry, rel: Path) -> Path:
    """``rel`` without the split folder it lies in (the class folder comes next)."""
    for specs in entry.splits.values():
        for spec in specs:
            pattern = Path(spec).parts
            if _listed(entry, spec) is None and _in_spec(rel, spec, None):
                return Path(*rel.parts[len(pattern) :])
    return rel


@dataclass
class ChipRecords:
    """What a chip entry holds, as file lists.

    Attributes:
        files: per sample, the files it reads: ``(image,)``, ``(image, mask)`` or
            ``(before, after, label)``.
        labels: class index per sample (image folders with class folders), else None.
        splits: ``train`` / ``val`` / ``test`` / None per sample (None: no split given).
        classes: class names (image folders) or the class table's names.
    """

    files: list[tuple[Path, ...]]
    labels: list[int] | None
    splits: list[str | None]
    classes: list[str]


def image_folder_records(entry: ImageFolderEntry) -> ChipRecords:
    """The images of an ``image_folder`` entry with their class (``labels: folders``).

    Raises:
        ConfigError / DataError: no images, an image directly in a class-less place, a class
            named in ``classes`` without folder.
    """
    root = entry.root_path
    if not root.is_dir():
        raise entry.error("root", f"folder not found: {root}", "point 'root' at the images")
    files = list_images(root, entry.extensions)
    if not files:
        raise entry.error(
            "root",
            f"{root} holds no image ending in {', '.join(entry.extensions)}",
            "check 'root' and 'extensions'",
        )
    splits = assign_splits(entry, files)
    if entry.splits:
        keep = [i for i, s in enumerate(splits) if s is not None]
        files, splits = [files[i] for i in keep], [splits[i] for i in keep]
        if not files:
            raise entry.error("splits", "no image lies in any split", "check the split folders")
    if entry.labels == "none":
        return ChipRecords([(f,) for f in files], None, splits, [])
    class_of = []
    for f in files:
        rel = _strip_split(entry, f.relative_to(root))
        if len(rel.parts) < 2:
            raise DataError(
                str(f),
                "lies in no class folder",
                f"put it in a sub-folder named after its class, or set 'labels: none' in "
                f"{entry.where}",
            )
        class_of.append(rel.parts[0])
    found = sorted(set(class_of))
    classes = list(entry.classes) or found
    missing = [c for c in classes if c not in found]
    if missing:
        raise entry.error("classes", f"no folder for class(es) {missing}", "check the names")
    index = {c: i for i, c in enumerate(classes)}
    keep = [i for i, c in enumerate(class_of) if c in index]  # folders not listed: left out
    return ChipRecords(
        [(files[i],) for i in keep],
        [index[class_of[i]] for i in keep],
        [splits[i] for i in keep],
        classes,
    )


def _counterpart(path: Path, root: Path, role: str, other: str, index: dict) -> Path | None:
    rel = path.relative_to(root)
    parts = list(rel.parts[:-1])
    pos = len(parts) - 1 - parts[::-1].index(role)
    parts[pos] = other
    return index.get((Path(*parts).as_posix(), path.stem))


def paired_records(entry: ChipSegmentationEntry | ChipChangeEntry) -> ChipRecords:
    """Images with their mask (segmentation) or both dates with their label (change).

    Files pair by path: the same relative path and stem with the role folder name swapped.

    Raises:
        DataError: a file's counterpart is missing (names both), or there are no files.
    """
    root = entry.root_path
    if not root.is_dir():
        raise entry.error("root", f"folder not found: {root}", "point 'root' at the dataset")
    if isinstance(entry, ChipSegmentationEntry):
        roles = [entry.image_dir, entry.mask_dir]
    else:
        roles = [entry.before_dir, entry.after_dir, entry.label_dir]
    all_files = list_images(root, entry.extensions)
    by_role: dict[str, list[Path]] = {r: [] for r in roles}
    index: dict[tuple[str, str], Path] = {}
    for f in all_files:
        parents = f.relative_to(root).parts[:-1]
        role = next((r for r in reversed(parents) if r in by_role), None)
        if role is not None:
            by_role[role].append(f)
            index[(f.parent.relative_to(root).as_posix(), f.stem)] = f
    primary = by_role[roles[0]]
    if not primary:
        raise entry.error(
            "root",
            f"no image under a folder named '{roles[0]}' in {root}",
            "check 'root' and the folder names ("
            + ", ".join(f"'{r}'" for r in roles)
            + ") and 'extensions'",
        )
    files = []
    for f in primary:
        group = [f]
        for other in roles[1:]:
            match = _counterpart(f, root, roles[0], other, index)
            if match is None:
                rel = f.relative_to(root)
                expected = Path(*[other if p == roles[0] else p for p in rel.parts[:-1]])
                raise DataError(
                    str(f),
                    f"has no counterpart in '{other}' (looked for {root / expected}/{f.stem}.*)",
                    f"add the file or remove the image; files pair by name in {entry.where}",
                )
            group.append(match)
        files.append(tuple(group))
    unpaired = len(by_role[roles[-1]]) - len(files)
    if unpaired > 0:
        import logging

        logging.getLogger(__name__).warning(
            "%s: %d file(s) in '%s' folders have no image in '%s' and are left out",
            entry.where, unpaired, roles[-1], roles[0],
        )  # fmt: skip
    splits = assign_splits(entry, [g[0] for g in files])
    if entry.splits:
        keep = [i for i, s in enumerate(splits) if s is not None]
        files, splits = [files[i] for i in keep], [splits[i] for i in keep]
        if not files:
            raise entry.error("splits", "no file lies in any split", "check the split folders")
    return ChipRecords(files, None, splits, [c.name for c in entry.classes])


def records(entry: ChipEntry) -> ChipRecords:
    """:func:`image_folder_records` or :func:`paired_records` by the entry's kind."""
    if isinstance(entry, ImageFolderEntry):
        return image_folder_records(entry)
    assert isinstance(entry, ChipSegmentationEntry | ChipChangeEntry)
    return paired_records(entry)


def mask_decoder(entry: ChipSegmentationEntry | ChipChangeEntry) -> MaskDecoder:
    """The :class:`MaskDecoder` of a segmentation or change entry."""
    if isinstance(entry, ChipChangeEntry):
        return MaskDecoder(entry.classes, "change", entry.ignore_value, where=entry.where)
    return MaskDecoder(
        entry.classes, entry.mask_format, entry.ignore_value, entry.ignore_colors, entry.where
    )


def band_names(entry: ChipEntry, count: int) -> list[str]:
    """The entry's ``bands``, or ``red, green, blue`` for 3 bands, else ``b1 … bN``."""
    if entry.bands:
        if len(entry.bands) != count:
            raise entry.error(
                "bands",
                f"names {len(entry.bands)} bands but the images have {count}",
                "list one name per band of the images",
            )
        return list(entry.bands)
    return ["red", "green", "blue"] if count == 3 else [f"b{i + 1}" for i in range(count)]


def split_indices(recs: ChipRecords, fractions: Sequence[float], seed: int) -> dict[str, list[int]]:
    """Sample indices of train / val / test.

    Splits the entry defines are kept; a missing ``val`` (or ``test``) is drawn from ``train``
    with ``fractions`` (train, val, test shares), stratified by class where there are classes,
    seeded. Without any split in the entry everything is split that way.
    """
    rng = np.random.default_rng(seed)
    given = {s: [i for i, x in enumerate(recs.splits) if x == s] for s in SPLITS}
    has_splits = any(x is not None for x in recs.splits)
    pool = given["train"] if has_splits else list(range(len(recs.files)))
    missing = [s for s in ("val", "test") if not given[s]]
    out = {s: list(given[s]) for s in SPLITS}
    out["train"] = []
    groups: dict[int, list[int]] = {}
    for i in pool:
        groups.setdefault(recs.labels[i] if recs.labels is not None else 0, []).append(i)
    total = sum(fractions[:1]) + sum(fractions[1 + SPLITS[1:].index(s)] for s in missing)
    for ids in groups.values():
        ids = rng.permutation(ids).tolist()
        start = 0
        for s in missing:
            share = fractions[SPLITS.index(s)] / total if total else 0.0
            n = max(1, round(share * len(ids))) if len(ids) >= 3 else 0
            out[s] += ids[start : start + n]
            start += n
        out["train"] += ids[start:]
    return {s: sorted(v) for s, v in out.items()}

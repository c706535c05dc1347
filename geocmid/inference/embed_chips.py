"""Embeddings of a chip dataset: one backbone vector per image of a catalog chip entry.

Chip datasets (``image_folder``, ``chip_segmentation``, ``chip_change`` entries: folders of
plain JPEG / PNG / TIFF tiles, see ``docs/chip-datasets.md``) have no scene to cut into chips:
every image is one row. Each image is decoded in its own dtype, its bands picked (``bands``, or
all), resized to ``chip`` x ``chip`` (bilinear, antialiased: what classification fine-tuning
does) and normalised with the model card's mean and std (or, when the card has none, those of
up to 32 images of the entry, recorded in the file); the vector is the global average of the
backbone's final feature map, as for scenes (:mod:`geocmid.inference.embed`).

The file is **GeoParquet** like a scene's, so one reader (:func:`~geocmid.inference.embed.
read_embeddings`, a GeoDataFrame) and one search (:func:`~geocmid.inference.embed.nearest`)
serve both; one row per image:

- ``path``: the image's path relative to the entry's ``root`` (POSIX separators);
- ``label``: its class name (``image_folder`` entries with class folders only; no column
  otherwise: segmentation and change entries have no label per image);
- ``split``: ``train`` / ``val`` / ``test`` from the entry's ``splits`` (null without);
- ``height`` / ``width``: the image's own size, before resizing;
- ``embedding`` (``float32`` x D) and ``model_fingerprint``;
- ``geometry``: **null** for plain images, which have no footprint; a georeferenced TIFF's
  footprint otherwise (in the CRS of the first georeferenced image; others are transformed).

Why GeoParquet and not plain Parquet when no image has a footprint: a null geometry column costs
nothing, geopandas reads the file either way, and code written for scene embeddings (reading,
``nearest``, joining to footprints when there are some) works unchanged. The file's CRS is then
unknown (``crs: null`` in the ``geo`` metadata).

Images are embedded ``group`` at a time, each group saved in a work folder beside the output, so
memory is bounded by one group and an interrupted run resumes; the file is written group by
group under a temporary name and renamed. Entries of ``chip_change`` give two rows per sample
(both dates; their paths tell them apart).
"""

from __future__ import annotations

import hashlib
import json
import os
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from tqdm.auto import tqdm

from geocmid.errors import ConfigError, DataError, ModelError
from geocmid.inference.card import ModelCard
from geocmid.inference.embed import EmbedResult, EmbedSettings, forward_features
from geocmid.inference.store import RunLock, WorkDir, fingerprint_model

__all__ = ["ChipImage", "chip_images", "embed_chips", "embed_image", "prepare_image"]

#: Images whose mean and std stand in for a card without them.
STATS_IMAGES = 32


@dataclass(frozen=True)
class ChipImage:
    """One image of a chip entry: its file, path relative to the entry root, class, split."""

    file: Path
    path: str
    label: str | None
    split: str | None


def chip_images(entry: Any) -> tuple[list[ChipImage], bool]:
    """The images of a chip catalog entry and whether it labels them (one class per image).

    Raises:
        ConfigError: the entry is not an ``image_folder``, ``chip_segmentation`` or
            ``chip_change`` entry; errors of the entry's files (see
            :func:`geocmid.data.chipsets.records`).
    """
    from geocmid.data.catalog.schema import (
        ChipChangeEntry,
        ChipSegmentationEntry,
        ImageFolderEntry,
    )
    from geocmid.data.chipsets import records

    if not isinstance(entry, ImageFolderEntry | ChipSegmentationEntry | ChipChangeEntry):
        raise ConfigError(
            getattr(entry, "where", str(entry)),
            f"is a {getattr(entry, 'kind', type(entry).__name__)} entry, not a chip dataset",
            "embed image_folder, chip_segmentation or chip_change entries; scenes and imagery "
            "entries with SCENE / --entry as usual",
        )
    recs = records(entry)
    root = entry.root_path
    roles = 2 if isinstance(entry, ChipChangeEntry) else 1  # both dates; never masks / labels
    labelled = recs.labels is not None
    out = []
    for i, group in enumerate(recs.files):
        label = recs.classes[recs.labels[i]] if recs.labels is not None else None
        for file in group[:roles]:
            out.append(ChipImage(file, file.relative_to(root).as_posix(), label, recs.splits[i]))
    return out, labelled


def prepare_image(
    image: np.ndarray,
    chip: int,
    mean: np.ndarray,
    std: np.ndarray,
    bands: Sequence[int] | None = None,
    where: str = "image",
) -> Any:
    """``[C, H, W]`` image (any dtype) → normalised ``[C', chip, chip]`` float32 tensor.

    Raises:
        ModelError: its band count (after ``bands``) differs from the statistics'.
    """
    import torch
    import torch.nn.functional as F

    if bands:
        if max(bands) > image.shape[0] or min(bands) < 1:
            raise ModelError(where, f"has {image.shape[0]} bands; --bands names {list(bands)}",
                             "name 1-based bands the images have")  # fmt: skip
        image = image[[b - 1 for b in bands]]
    if image.shape[0] != len(mean):
        raise ModelError(
            where,
            f"has {image.shape[0]} bands but the model takes {len(mean)}",
            "pick the model's bands with --bands (e.g. 1,2,3), or use a model for these images",
        )
    x = torch.from_numpy(np.ascontiguousarray(image, dtype=np.float32))[None]
    if x.shape[-2:] != (chip, chip):
        x = F.interpolate(x, size=(chip, chip), mode="bilinear", antialias=True,
                          align_corners=False)  # fmt: skip
    x = (x[0] - torch.from_numpy(mean)[:, None, None]) / torch.from_numpy(std)[:, None, None]
    return torch.nan_to_num(x, nan=0.0, posinf=0.0, neginf=0.0)


def embed_image(
    model: Callable[..., Any],
    image: str | os.PathLike[str] | np.ndarray,
    chip: int,
    mean: Sequence[float],
    std: Sequence[float],
    *,
    bands: Sequence[int] | None = None,
    device: str = "cpu",
) -> np.ndarray:
    """One image (a file, or a ``[C, H, W]`` array) → its ``[D]`` embedding, as
    :func:`embed_chips` computes it (same resizing and normalisation; a torch module is put in
    eval mode on ``device``)."""
    import torch

    from geocmid.data.chipsets import read_image

    if isinstance(model, torch.nn.Module):
        model = model.to(device).eval()
    array = image if isinstance(image, np.ndarray) else read_image(Path(image))
    if array.ndim == 2:
        array = array[None]
    where = "image" if isinstance(image, np.ndarray) else str(image)
    stats = np.asarray(mean, np.float32), np.asarray(std, np.float32)
    x = prepare_image(array, chip, *stats, bands, where)
    return forward_features(model, x[None].numpy(), device)[0]


def _stats(images: list[ChipImage], bands: Sequence[int] | None) -> tuple[np.ndarray, np.ndarray]:
    """Per-band mean and std of up to :data:`STATS_IMAGES` images spread over the entry."""
    from geocmid.data.chipsets import read_image

    step = max(1, len(images) // STATS_IMAGES)
    total = square = count = 0.0
    for item in images[::step][:STATS_IMAGES]:
        array = read_image(item.file).astype(np.float64)
        if bands:
            array = array[[b - 1 for b in bands]]
        flat = array.reshape(array.shape[0], -1)
        total = total + flat.sum(1)
        square = square + (flat**2).sum(1)
        count += flat.shape[1]
    mean = np.asarray(total) / count
    std = np.sqrt(np.maximum(np.asarray(square) / count - mean**2, 0.0))
    return mean.astype(np.float32), np.where(std > 0, std, 1.0).astype(np.float32)


def _footprint(file: Path) -> tuple[list[float], str]:
    """``([left, bottom, right, top], crs WKT)`` of a georeferenced TIFF, else NaNs and ''."""
    from geocmid.data.chipsets import RASTERIO_SUFFIXES

    none = ([float("nan")] * 4, "")
    if file.suffix.lower() not in RASTERIO_SUFFIXES:
        return none
    import rasterio

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", rasterio.errors.NotGeoreferencedWarning)
        with rasterio.Env(GDAL_PAM_ENABLED="NO"), rasterio.open(file) as src:
            if src.crs is None or src.transform.is_identity:
                return none
            return list(src.bounds), src.crs.to_wkt()


def _files_digest(images: list[ChipImage]) -> str:
    """What identifies the entry's files for resuming: paths, sizes and modification times."""
    digest = hashlib.sha256()
    for item in images:
        stat = item.file.stat()
        digest.update(f"{item.path}\0{item.label}\0{item.split}\0{stat.st_size}\0"
                      f"{stat.st_mtime_ns}\n".encode())  # fmt: skip
    return digest.hexdigest()[:16]


def embed_chips(
    model: Callable[..., Any],
    card: ModelCard,
    entry: Any,
    output: str | os.PathLike[str],
    settings: EmbedSettings | None = None,
    *,
    bands: tuple[int, ...] | None = None,
    device: str = "cpu",
    overwrite: bool = False,
    progress: bool = True,
    group: int = 256,
) -> EmbedResult:
    """Write the embedding of every image of chip entry ``entry`` to the GeoParquet ``output``.

    Args:
        model: backbone, ``[B, C, S, S]`` float → ``[B, D, h, w]`` (averaged) or ``[B, D]``.
        card: the model's card (mean and std in raw units; ``chip_size``).
        entry: an ``image_folder``, ``chip_segmentation`` or ``chip_change`` catalog entry.
        output: the ``.parquet`` file to write.
        settings: ``chip`` (the edge images are resized to; 0: the card's ``chip_size``, else
            224) and ``batch_size``; ``stride`` and ``min_valid`` do not apply to chips.
        bands: 1-based bands of the images to use (default: all, in file order).
        group: images per saved group (memory is bounded by one group).

    Returns:
        :class:`~geocmid.inference.embed.EmbedResult` (``chips``: images written;
        ``strips_run``: groups computed in this call).

    Raises:
        ConfigError: not a chip entry; bad settings; another run writes the same output.
        DataError: an image cannot be decoded; the output exists (without ``overwrite``).
        ModelError: the images' band count differs from the model's.
    """
    settings = settings or EmbedSettings()
    chip = settings.chip or int(card.chip_size or 224)
    if chip < 1 or settings.batch_size < 1 or group < 1:
        raise ConfigError("--chip / --batch-size", "must be positive", "e.g. --chip 224")
    out = Path(output)
    if out.suffix.lower() not in (".parquet", ".geoparquet"):
        raise ConfigError(str(out), "is not a .parquet file", "name the output e.g. emb.parquet")
    images, labelled = chip_images(entry)
    if card.mean and card.std:
        mean, std = np.asarray(card.mean, np.float32), np.asarray(card.std, np.float32)
        stats_from = "card"
    else:
        mean, std = _stats(images, bands)
        stats_from = f"{min(len(images), STATS_IMAGES)} images of the entry"
    out.parent.mkdir(parents=True, exist_ok=True)
    import torch

    if isinstance(model, torch.nn.Module):
        model = model.to(device).eval()
    fingerprint = fingerprint_model(model)
    groups = [images[i : i + group] for i in range(0, len(images), group)]
    state = {
        "entry": entry.where, "root": str(entry.root_path), "files": _files_digest(images),
        "images": len(images), "group": group, "chip": chip,
        "bands": list(bands) if bands else None, "mean": mean.tolist(), "std": std.tolist(),
        "model": fingerprint, "card": card.to_dict(),
    }  # fmt: skip
    lock = RunLock(out.with_name(f".{out.name}.geocmid-lock"), True, f" of '{out.name}'")
    lock.acquire()
    try:
        work = WorkDir(out.with_name(f".{out.name}.geocmid-work"),
                       json.loads(json.dumps(state, default=str)))  # fmt: skip
        if not work.exists and out.exists() and not overwrite:
            raise DataError(str(out), "already exists", "pass --overwrite or another -o")
        work.prepare(overwrite)
        todo = [n for n in range(len(groups)) if not work.is_done((n, 0))]
        bar = tqdm(total=sum(len(groups[n]) for n in todo), unit="image", desc="embed",
                   disable=not progress)  # fmt: skip
        for n in todo:
            work.save_block((n, 0), _embed_group(model, groups[n], chip, mean, std, bands,
                                                 settings.batch_size, device, bar))  # fmt: skip
        bar.close()
        meta = {
            "kind": "chips", "entry": getattr(entry, "name", None), "root": str(entry.root_path),
            "chip": chip, "bands": list(bands) if bands else None, "mean": mean.tolist(),
            "std": std.tolist(), "stats_from": stats_from, "model_card": card.to_dict(),
            "model_fingerprint": fingerprint,
        }  # fmt: skip
        width = _write(out, work, groups, labelled, meta, fingerprint)
    except BaseException:
        lock.release()
        raise
    work.remove()
    lock.release(remove=True)
    return EmbedResult(out, len(images), width, len(todo))


def _embed_group(
    model: Callable[..., Any],
    items: list[ChipImage],
    chip: int,
    mean: np.ndarray,
    std: np.ndarray,
    bands: Sequence[int] | None,
    batch_size: int,
    device: str,
    bar: Any,
) -> dict[str, np.ndarray]:
    import torch

    from geocmid.data.chipsets import read_image

    vectors, sizes, bounds, crss = [], [], [], []
    for k in range(0, len(items), batch_size):
        batch = []
        for item in items[k : k + batch_size]:
            image = read_image(item.file)
            sizes.append(image.shape[1:])
            batch.append(prepare_image(image, chip, mean, std, bands, str(item.file)))
            box, crs = _footprint(item.file)
            bounds.append(box)
            crss.append(crs)
        vectors.append(forward_features(model, torch.stack(batch).numpy(), device))
        bar.update(len(batch))
    return {
        "vectors": np.concatenate(vectors).astype(np.float32),
        "size": np.asarray(sizes, np.int64).reshape(-1, 2),
        "bounds": np.asarray(bounds, np.float64).reshape(-1, 4),
        "crs": np.asarray(crss, dtype=str),
    }


def _write(
    out: Path,
    work: WorkDir,
    groups: list[list[ChipImage]],
    labelled: bool,
    meta: dict[str, Any],
    fingerprint: str,
) -> int:
    """Stream the saved groups into one GeoParquet file (temporary name, then rename)."""
    import pyarrow as pa
    import pyarrow.parquet as pq
    import pyproj
    import shapely
    from rasterio.crs import CRS
    from rasterio.warp import transform_bounds

    target = None  # the first georeferenced image's CRS (WKT), read from the saved groups
    for n in range(len(groups)):
        with work.load_block((n, 0)) as arrays:
            target = next((c for c in arrays["crs"].tolist() if c), None)
        if target:
            break
    geo_crs = pyproj.CRS.from_wkt(target).to_json_dict() if target else None
    geo = {
        "version": "1.0.0",
        "primary_column": "geometry",
        "columns": {"geometry": {"encoding": "WKB",
                                 "geometry_types": ["Polygon"] if target else [],
                                 "crs": geo_crs}},
    }  # fmt: skip
    tmp = out.with_name(f".{out.name}.{os.getpid()}.tmp")
    writer, width = None, 0
    try:
        for n, items in enumerate(groups):
            with work.load_block((n, 0)) as arrays:
                vec, size = arrays["vectors"], arrays["size"]
                bounds, crss = arrays["bounds"], arrays["crs"].tolist()
            width = vec.shape[1]
            wkb: list[bytes | None] = []
            for box, crs in zip(bounds, crss, strict=True):
                if not crs:
                    wkb.append(None)
                    continue
                if crs != target:
                    box = transform_bounds(CRS.from_wkt(crs), CRS.from_wkt(target), *box)
                wkb.append(shapely.to_wkb(shapely.box(*box)))
            columns: dict[str, Any] = {"path": pa.array([i.path for i in items], pa.string())}
            if labelled:
                columns["label"] = pa.array([i.label for i in items], pa.string())
            columns.update({
                "split": pa.array([i.split for i in items], pa.string()),
                "height": pa.array(size[:, 0]),
                "width": pa.array(size[:, 1]),
                "embedding": pa.FixedSizeListArray.from_arrays(pa.array(vec.ravel()), width),
                "model_fingerprint": pa.array([fingerprint] * len(items)),
                "geometry": pa.array(wkb, pa.binary()),
            })  # fmt: skip
            table = pa.table(columns)
            if writer is None:
                metadata = {b"geo": json.dumps(geo).encode(),
                            b"geocmid": json.dumps(meta, default=str).encode()}  # fmt: skip
                writer = pq.ParquetWriter(tmp, table.schema.with_metadata(metadata))
            writer.write_table(table)
        assert writer is not None  # an entry always has images (records() refuses none)
        writer.close()
        writer = None
        os.replace(tmp, out)
    finally:
        if writer is not None:
            writer.close()
        tmp.unlink(missing_ok=True)
    return width

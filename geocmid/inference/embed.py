"""Embeddings as a product: one backbone vector per chip of a scene, in GeoParquet.

A pretrained backbone (e.g. a CMID export, :func:`geocmid.models.weights.load_backbone`) turns
each ``chip`` x ``chip`` window of a scene (stepped by ``stride``) into one vector: the global
average of its final feature map (``[B, D, h, w]`` → ``[B, D]``; a model that returns ``[B, D]``
is used as is). Pixels are read and normalised exactly as prediction reads them (the model
card's bands, mean and std; nodata → 0, the band mean).

The output is a GeoParquet file (GeoParquet 1.0 metadata, WKB geometry): one row per chip with
its polygon in the scene's CRS, ``row`` / ``col`` (the chip's pixel origin), ``valid_fraction``,
the ``embedding`` (``float32`` x D) and the model fingerprint (``model_fingerprint`` column; the
card is in the file's ``geocmid`` metadata). Work is done one strip of chips at a time and saved
in a work folder beside the output (:class:`~geocmid.inference.store.WorkDir`), so memory is
bounded by a strip and an interrupted run resumes; the final file is written strip by strip
under a temporary name and renamed.

:func:`nearest` answers "where else looks like this?": the chips most similar (cosine
similarity) to a query chip, point or vector.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import rasterio
from tqdm.auto import tqdm

from geocmid.data.sources import RasterSource
from geocmid.errors import ConfigError, DataError
from geocmid.inference.card import ModelCard
from geocmid.inference.reader import BlockReader, SceneInput, plan_scenes
from geocmid.inference.store import RunLock, WorkDir, fingerprint_model
from geocmid.inference.writers import GDAL_ENV

__all__ = [
    "EmbedResult",
    "EmbedSettings",
    "embed_scene",
    "forward_features",
    "nearest",
    "read_embeddings",
]


@dataclass(frozen=True)
class EmbedSettings:
    """Chips of an embedding run.

    Attributes:
        chip: chip edge in pixels (0: the card's ``chip_size``, else 224).
        stride: pixels between chip origins (0: ``chip``, no overlap).
        batch_size: chips per forward pass.
        min_valid: chips with a smaller fraction of valid pixels are left out.
    """

    chip: int = 0
    stride: int = 0
    batch_size: int = 16
    min_valid: float = 0.5


@dataclass
class EmbedResult:
    """The GeoParquet written, how many chips it holds, their vector length, and how many
    strips were computed in this call (the rest came from the work folder)."""

    path: Path
    chips: int
    width: int
    strips_run: int


def embed_scene(
    model: Callable[..., Any],
    card: ModelCard,
    scene: SceneInput,
    output: str | os.PathLike[str],
    settings: EmbedSettings | None = None,
    *,
    bands: tuple[int, ...] | None = None,
    device: str = "cpu",
    overwrite: bool = False,
    progress: bool = True,
) -> EmbedResult:
    """Write the embeddings of every chip of ``scene`` to the GeoParquet file ``output``.

    Args:
        model: backbone, ``[B, C, S, S]`` float → ``[B, D, h, w]`` (averaged) or ``[B, D]``.
        card: the model's card (bands, mean, std in raw units; ``chip_size``).
        scene: a raster file (or GDAL path / URL) or a source (a catalog imagery entry's).
        output: the ``.parquet`` file to write.
        bands: 1-based band positions to use instead of the card's bands.

    Raises:
        DataError: the scene is smaller than a chip, has no valid chip, or the output exists
            (without ``overwrite``) or cannot be written.
        ModelError: the scene's bands do not match the card.
        ConfigError: bad settings; another run writes the same output.
    """
    import torch

    settings = settings or EmbedSettings()
    chip = settings.chip or int(card.chip_size or 224)
    stride = settings.stride or chip
    if chip < 1 or stride < 1 or settings.batch_size < 1:
        raise ConfigError("--chip / --stride / --batch-size", "must be positive", "e.g. --chip 224")
    out = Path(output)
    if out.suffix.lower() not in (".parquet", ".geoparquet"):
        raise ConfigError(str(out), "is not a .parquet file", "name the output e.g. emb.parquet")
    out.parent.mkdir(parents=True, exist_ok=True)
    plan = plan_scenes([scene], card, bands=bands)
    grid = plan.grid
    if grid.height < chip or grid.width < chip:
        raise DataError(
            str(scene),
            f"is {grid.width} x {grid.height} px, smaller than one {chip} px chip",
            "use a smaller --chip",
        )
    rows = list(range(0, grid.height - chip + 1, stride))
    cols = list(range(0, grid.width - chip + 1, stride))
    if isinstance(model, torch.nn.Module):
        model = model.to(device).eval()
    fingerprint = fingerprint_model(model)
    state = {
        "scene": scene.describe() if isinstance(scene, RasterSource) else os.fspath(scene),
        "bands": [list(s.bands) for s in plan.scenes],
        "chip": chip, "stride": stride, "min_valid": settings.min_valid,
        "model": fingerprint, "card": card.to_dict(),
    }  # fmt: skip
    lock = RunLock(out.with_name(f".{out.name}.geocmid-lock"), True, f" of '{out.name}'")
    lock.acquire()
    try:
        work = WorkDir(out.with_name(f".{out.name}.geocmid-work"), json.loads(json.dumps(
            state, default=str)))  # fmt: skip
        if not work.exists and out.exists() and not overwrite:
            raise DataError(str(out), "already exists", "pass --overwrite or another -o")
        work.prepare(overwrite)
        todo = [n for n in range(len(rows)) if not work.is_done((n, 0))]
        mean = np.asarray(card.mean, np.float32)[:, None, None]
        std = np.asarray(card.std, np.float32)[:, None, None]
        bar = tqdm(total=len(todo), unit="strip", desc="embed", disable=not progress)
        with rasterio.Env(**GDAL_ENV), BlockReader(plan) as reader:
            for n in todo:
                r0 = rows[n]
                data, valid = reader.read(r0, r0 + chip, 0, grid.width)
                vectors, keep, fractions = [], [], []
                for k in range(0, len(cols), settings.batch_size):
                    part = cols[k : k + settings.batch_size]
                    batch = np.stack(
                        [data[0, :, :, c : c + chip].astype(np.float32) for c in part]
                    )
                    ok = np.stack([valid[:, c : c + chip] for c in part])
                    batch -= mean
                    batch /= std
                    np.nan_to_num(batch, copy=False, nan=0.0, posinf=0.0, neginf=0.0)
                    batch *= ok[:, None]
                    vectors.append(forward_features(model, batch, device))
                    fractions += [float(o.mean()) for o in ok]
                    keep += part
                frac = np.asarray(fractions, np.float32)
                mask = frac >= settings.min_valid
                work.save_block(
                    (n, 0),
                    {
                        "cols": np.asarray(keep, np.int64)[mask],
                        "valid_fraction": frac[mask],
                        "vectors": np.concatenate(vectors)[mask],
                    },
                )
                bar.update(1)
        bar.close()
        chips, width = _write_geoparquet(out, work, rows, chip, grid, card, fingerprint)
    except BaseException:
        lock.release()
        raise
    work.remove()
    lock.release(remove=True)
    return EmbedResult(out, chips, width, len(todo))


def forward_features(model: Callable[..., Any], batch: np.ndarray, device: str) -> np.ndarray:
    """``[B, C, S, S]`` normalised float32 → ``[B, D]`` float32 embeddings: the backbone's
    output, globally averaged when it is a feature map.

    Raises:
        DataError: the model returns neither ``[B, D]`` nor ``[B, D, h, w]``.
    """
    import torch

    with torch.inference_mode():
        feats = model(torch.from_numpy(batch).to(device))
    feats = feats.float()
    if feats.ndim == 4:
        feats = feats.mean(dim=(2, 3))
    if feats.ndim != 2:
        raise DataError(
            "model",
            f"returned a {tuple(feats.shape)} tensor, not [B, D] or [B, D, h, w]",
            "pass a backbone (feature extractor), not a full network",
        )
    return feats.cpu().numpy()


def _write_geoparquet(
    out: Path,
    work: WorkDir,
    rows: list[int],
    chip: int,
    grid: Any,
    card: ModelCard,
    fingerprint: str,
) -> tuple[int, int]:
    """Stream the saved strips into one GeoParquet file (temporary name, then rename)."""
    import pyarrow as pa
    import pyarrow.parquet as pq
    import pyproj
    import shapely

    total, width = 0, 0
    t = grid.transform
    left, bottom, right, top = grid.bounds
    crs = pyproj.CRS.from_wkt(grid.crs.to_wkt()).to_json_dict() if grid.crs is not None else None
    geo = {
        "version": "1.0.0",
        "primary_column": "geometry",
        "columns": {
            "geometry": {
                "encoding": "WKB",
                "geometry_types": ["Polygon"],
                "crs": crs,
                "bbox": [left, bottom, right, top],
            }
        },
    }
    tmp = out.with_name(f".{out.name}.{os.getpid()}.tmp")
    writer = None
    try:
        for n, r0 in enumerate(rows):
            with work.load_block((n, 0)) as arrays:
                cols, frac, vec = arrays["cols"], arrays["valid_fraction"], arrays["vectors"]
            if not len(cols):
                continue
            width = vec.shape[1]
            xs0, ys0 = _apply(t, cols, r0)
            xs1, ys1 = _apply(t, cols + chip, r0 + chip)
            boxes = shapely.box(
                np.minimum(xs0, xs1), np.minimum(ys0, ys1), np.maximum(xs0, xs1),
                np.maximum(ys0, ys1),
            )  # fmt: skip
            table = pa.table(
                {
                    "row": pa.array(np.full(len(cols), r0, np.int64)),
                    "col": pa.array(cols),
                    "valid_fraction": pa.array(frac),
                    "embedding": pa.FixedSizeListArray.from_arrays(
                        pa.array(vec.astype(np.float32).ravel()), width
                    ),
                    "model_fingerprint": pa.array([fingerprint] * len(cols)),
                    "geometry": pa.array(shapely.to_wkb(boxes), pa.binary()),
                }
            )
            if writer is None:
                meta = {b"geo": json.dumps(geo).encode(), b"geocmid": json.dumps(
                    {"model_card": card.to_dict(), "model_fingerprint": fingerprint,
                     "chip": chip}, default=str).encode()}  # fmt: skip
                writer = pq.ParquetWriter(tmp, table.schema.with_metadata(meta))
            writer.write_table(table)
            total += len(cols)
        if writer is None:
            raise DataError(
                str(out),
                "no chip has enough valid pixels (min_valid)",
                "lower --min-valid, or check the scene's nodata",
            )
        writer.close()
        writer = None
        os.replace(tmp, out)
    finally:
        if writer is not None:
            writer.close()
        tmp.unlink(missing_ok=True)
    return total, width


def _apply(t: Any, cols: np.ndarray, row: int) -> tuple[np.ndarray, np.ndarray]:
    """Map pixel corners ``(cols, row)`` to CRS coordinates with the affine ``t``."""
    return t.c + t.a * cols + t.b * row, t.f + t.d * cols + t.e * row


def read_embeddings(path: str | os.PathLike[str]) -> Any:
    """The GeoParquet of :func:`embed_scene` (or of
    :func:`~geocmid.inference.embed_chips.embed_chips`) as a GeoDataFrame (``embedding``:
    arrays); the file's ``geocmid`` metadata (model card, chip size, ...) is in
    ``frame.attrs["geocmid"]``."""
    import geopandas as gpd
    import pyarrow.parquet as pq

    frame = gpd.read_parquet(path)
    meta = pq.read_schema(path).metadata or {}
    frame.attrs["geocmid"] = json.loads(meta[b"geocmid"]) if b"geocmid" in meta else {}
    return frame


def _query_image(frame: Any, image: str | os.PathLike[str], model: Any, device: str) -> Any:
    """The embedding of an image file not in ``frame``, made as the file's were."""
    from geocmid.inference.embed_chips import embed_image

    meta = frame.attrs.get("geocmid") or {}
    card = meta.get("model_card") or {}
    mean, std = meta.get("mean") or card.get("mean"), meta.get("std") or card.get("std")
    if not meta.get("chip") or not mean or not std:
        raise DataError(
            str(image), "cannot be embedded like the file's rows: the file records no chip size "
            "or statistics", "embed it yourself and pass the vector",
        )  # fmt: skip
    return embed_image(model, image, int(meta["chip"]), mean, std, bands=meta.get("bands"),
                       device=device)  # fmt: skip


def nearest(
    embeddings: Any,
    query: int | str | os.PathLike[str] | tuple[float, float] | Sequence[float] | np.ndarray,
    k: int = 10,
    *,
    model: Callable[..., Any] | None = None,
    device: str = "cpu",
) -> Any:
    """The ``k`` chips most similar to ``query`` (cosine similarity of the embeddings).

    Args:
        embeddings: a GeoDataFrame from :func:`read_embeddings`, or the GeoParquet path.
        query: a row position in ``embeddings`` (``int``), a point ``(x, y)`` in the file's
            CRS (the chip containing it; the nearest chip centre if several), a vector of
            the embeddings' length, or (chip datasets) an image's ``path`` as the file
            records it, or any image file, embedded with ``model`` as the file's images were
            (same chip size, bands and statistics, from the file's metadata).
        k: how many to return.
        model: the backbone that made the file (only for a query image file).

    Returns:
        The ``k`` best rows, best first, with ``similarity`` (cosine, -1..1) and ``rank``
        (0 = best; the query chip itself is rank 0 when it is in the file).

    Raises:
        DataError: a point outside every chip, a vector of another length, a path that is
            neither in the file nor an image file, an image file without ``model``.
    """
    import geopandas as gpd
    import shapely

    frame = embeddings if isinstance(embeddings, gpd.GeoDataFrame) else read_embeddings(
        embeddings)  # fmt: skip
    matrix = np.stack(frame["embedding"].to_numpy()).astype(np.float64)
    norms = np.linalg.norm(matrix, axis=1)
    norms[norms == 0] = 1.0
    unit = matrix / norms[:, None]
    own = -1
    if isinstance(query, int | np.integer):
        own = int(query)
        vector = unit[own]
    elif isinstance(query, str | os.PathLike):
        text = os.fspath(query)
        paths = frame["path"].to_numpy() if "path" in frame else np.asarray([])
        hit = np.flatnonzero(paths == text)
        if len(hit):
            own = int(hit[0])
            vector = unit[own]
        elif not Path(text).is_file():
            raise DataError(
                text, "is neither an image path of the embeddings nor an image file",
                "give a 'path' value of the file, or an existing image file",
            )  # fmt: skip
        elif model is None:
            raise DataError(text, "is an image file: embedding it needs the model",
                            "pass model=BACKBONE (the one that made the file)")  # fmt: skip
        else:
            vector = np.asarray(_query_image(frame, text, model, device), np.float64)
            vector = vector / (np.linalg.norm(vector) or 1.0)
    elif isinstance(query, tuple) and len(query) == 2 and matrix.shape[1] != 2:
        point = shapely.Point(*query)
        inside = np.flatnonzero(frame.geometry.contains(point).to_numpy())
        if not len(inside):
            raise DataError(f"point {query}", "is in no chip of the embeddings", "check its CRS")
        centres = frame.geometry.iloc[inside].centroid
        own = int(inside[int(np.argmin(centres.distance(point).to_numpy()))])
        vector = unit[own]
    else:
        vector = np.asarray(query, np.float64)
        if vector.shape != (matrix.shape[1],):
            raise DataError(
                "query vector",
                f"has shape {vector.shape}, the embeddings have {matrix.shape[1]} values",
                "embed the query chip with the same model",
            )
        vector = vector / (np.linalg.norm(vector) or 1.0)
    similarity = unit @ vector
    # Best first; on a tie the query chip itself comes first.
    order = np.lexsort((np.arange(len(unit)) != own, -similarity))[: max(0, k)]
    result = frame.iloc[order].copy()
    result["similarity"] = similarity[order]
    result["rank"] = np.arange(len(order))
    return result

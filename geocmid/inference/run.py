"""One prediction run, files in and files out: plan → blocks → assemble → outputs.

This is the function the command line and the Python API call. It is restartable: completed
blocks live in a work folder beside the outputs, so rerunning the same call after an interruption
finishes the job, and ``part=(i, n)`` lets ``n`` processes share the blocks (then one call with
``part=None`` assembles).
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import logging
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import geopandas as gpd
import numpy as np
import rasterio

from geocmid.data.paths import is_virtual
from geocmid.data.sources import RasterSource
from geocmid.errors import ConfigError, DataError
from geocmid.inference import assemble, summary
from geocmid.inference.detections import boxes_frame, merge_boxes
from geocmid.inference.engine import RunSettings, blocks_for_part, run_blocks
from geocmid.inference.predictor import Predictor
from geocmid.inference.reader import SceneInput, plan_scenes
from geocmid.inference.store import RunLock, WorkDir, write_error
from geocmid.inference.styles import write_styles
from geocmid.inference.vectorize import polygons, scene_cells
from geocmid.inference.writers import (
    GDAL_ENV,
    ensure_output_dir,
    provenance_tags,
    refuse_existing,
    write_class_cog,
    write_probability_cog,
    write_vectors,
)

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class OutputOptions:
    """What to write besides the class raster / main vector layer.

    Attributes:
        probabilities: also write the per-class probability COG (uint8 percent).
        vectors: polygons from the class raster (segmentation, change).
        simplify: polygon simplification tolerance in pixels (0: none).
        min_area: drop polygons smaller than this many m².
        geojson: also write the vectors as GeoJSON in EPSG:4326.
        quicklook: write a PNG preview.
        iou: detection merge threshold across windows.
        min_valid: scene classification: minimum valid fraction of a cell.
    """

    probabilities: bool = False
    vectors: bool = True
    simplify: float = 0.0
    min_area: float = 0.0
    geojson: bool = False
    quicklook: bool = True
    iou: float = 0.5
    min_valid: float = 0.5


@dataclass
class PredictionResult:
    """Paths written (``classes``, ``probabilities``, ``vectors``, ``geojson``, ``summary``,
    ``quicklook``), the summary dictionary, and whether the run is complete (a ``part`` run
    that is not the last to finish leaves assembling to a later call)."""

    outputs: dict[str, Path] = field(default_factory=dict)
    summary: dict[str, Any] = field(default_factory=dict)
    complete: bool = True
    blocks_run: int = 0


def output_paths(out_dir: Path, name: str, task: str, options: OutputOptions) -> dict[str, Path]:
    paths: dict[str, Path] = {}
    if task in ("segmentation", "change"):
        paths["classes"] = out_dir / f"{name}_classes.tif"
        if options.probabilities:
            paths["probabilities"] = out_dir / f"{name}_probabilities.tif"
    if task in ("classification", "detection") or options.vectors:
        paths["vectors"] = out_dir / f"{name}.gpkg"
        if options.geojson:
            paths["geojson"] = out_dir / f"{name}.geojson"
    paths["summary"] = out_dir / f"{name}_summary.json"
    if options.quicklook:
        paths["quicklook"] = out_dir / f"{name}_quicklook.png"
    paths["stac"] = out_dir / f"{name}_item.json"  # the STAC Item describing the others
    return paths


def default_name(inputs: list[Any]) -> str:
    """Output name stem: the file stems, or the source (entry) names, joined by ``_``."""
    return "_".join(p.name if isinstance(p, RasterSource) else Path(str(p)).stem for p in inputs)


def _label(scene: SceneInput) -> str:
    """How an input is named in the summary and the provenance tags."""
    return f"entry:{scene.name}" if isinstance(scene, RasterSource) else str(scene)


@dataclass
class SceneJob:
    """One prepared prediction: its plan, layout, work folder and outputs, before any block runs.

    Made by :func:`prepare_scene`; its blocks are then computed by :func:`run_blocks` (one
    process), by ``part`` runs, or by Dask workers (:mod:`geocmid.inference.distributed`), and
    :func:`finish_scene` assembles the outputs from the work folder.
    """

    predictor: Predictor
    inputs: list[SceneInput]
    name: str
    plan: Any
    layout: Any
    work: WorkDir
    paths: dict[str, Path]
    config: dict[str, Any]
    settings: RunSettings
    options: OutputOptions
    lock: RunLock

    def todo(self) -> list[Any]:
        """Blocks not yet in the work folder."""
        return [b for b in self.layout.blocks() if not self.work.is_done(b)]


def prepare_scene(
    predictor: Predictor,
    inputs: list[SceneInput],
    out_dir: str | os.PathLike[str],
    name: str | None = None,
    settings: RunSettings | None = None,
    options: OutputOptions | None = None,
    *,
    grid: str = "first",
    resampling: str = "bilinear",
    bands: tuple[int, ...] | None = None,
    overwrite: bool = False,
    exclusive: bool = True,
) -> SceneJob:
    """Check the inputs, plan the scene, take the output's lock and prepare the work folder.

    ``exclusive=False`` shares the lock with other ``part`` runs of the same output. The caller
    releases ``job.lock`` (:func:`finish_scene` does on success).

    Raises:
        ConfigError: see :func:`predict_scene`; also another run of the same output is running.
    """
    settings, options = settings or RunSettings(), options or OutputOptions()
    task, card = predictor.task, predictor.model_card
    expected = 2 if task == "change" else 1
    if len(inputs) != expected:
        raise ConfigError(
            "inputs",
            f"task '{task}' takes {expected} scene(s) per run, got {len(inputs)}",
            "pass two dated scenes for change, one scene otherwise",
        )
    out = ensure_output_dir(out_dir)
    name = name or default_name(list(inputs))
    plan = plan_scenes(list(inputs), card, grid=grid, resampling=resampling, bands=bands)
    layout = settings.layout(plan.grid.height, plan.grid.width, task)
    paths = output_paths(out, name, task, options)
    config = {
        "task": task,
        "inputs": [p.describe() if isinstance(p, RasterSource) else _file_id(p) for p in inputs],
        "grid": grid,
        "resampling": resampling,
        "bands": [list(s.bands) for s in plan.scenes],
        # Everything that changes pixels; prefetch does not, so a resume may change it.
        "settings": {k: v for k, v in dataclasses.asdict(settings).items() if k != "prefetch"},
        "model": predictor.fingerprint,
        "change_input": predictor.change_input,
        # mixed precision changes pixels; fp32 keeps the key of runs started before it existed
        **({"precision": predictor.precision} if predictor.precision != "32-true" else {}),
    }
    lock = RunLock(out / f".{name}.geocmid-lock", exclusive, f" of '{name}'").acquire()
    try:
        work = WorkDir(out / f".{name}.geocmid-work", {**config, "card": card.to_dict()})
        if not work.exists:
            refuse_existing(list(paths.values()), overwrite)
        work.prepare(overwrite)
    except BaseException:
        lock.release()
        raise
    return SceneJob(
        predictor, list(inputs), name, plan, layout, work, paths, config, settings, options, lock
    )


def finish_scene(job: SceneJob, predictor: Predictor | None = None) -> PredictionResult:
    """Assemble the outputs of a job whose blocks are all in its work folder; remove the work
    folder and release the lock.

    Raises:
        DataError: blocks are missing (not every block was computed), or outputs cannot be
            written.
    """
    predictor = predictor or job.predictor
    missing = len(job.todo())
    if missing:
        job.lock.release()
        raise DataError(
            str(job.work.path),
            f"{missing} block(s) are not computed yet",
            "run the prediction again without --part to compute and assemble them",
        )
    task, card, paths, config = predictor.task, predictor.model_card, job.paths, job.config
    result = PredictionResult()
    try:
        with rasterio.Env(**GDAL_ENV):
            tags = provenance_tags(card, {**config, "inputs": [_label(p) for p in job.inputs]})
            result.summary = {
                "task": task,
                "name": job.name,
                "inputs": [_label(p) for p in job.inputs],
                "grid": summary.grid_dict(job.plan.grid),
                "settings": {
                    **dataclasses.asdict(job.settings), "precision": predictor.precision
                },
                "model_card": card.to_dict(),
            }
            if task in ("segmentation", "change"):
                _finish_dense(
                    predictor, job.work, job.layout, job.plan, paths, job.options, tags, result
                )
            else:
                _finish_objects(
                    predictor, job.work, job.layout, job.plan, paths, job.options, result
                )
            result.summary["outputs"] = {k: str(v) for k, v in paths.items()}
            summary.write_summary(paths["summary"], result.summary)
            _write_stac_item(job, predictor, paths)
    except OSError as error:
        job.lock.release()
        raise write_error(job.work.path.parent, error) from error
    except BaseException:
        job.lock.release()
        raise
    result.outputs = paths
    job.work.remove()
    job.lock.release(remove=True)
    return result


def predict_scene(
    predictor: Predictor,
    inputs: list[SceneInput],
    out_dir: str | os.PathLike[str],
    name: str | None = None,
    settings: RunSettings | None = None,
    options: OutputOptions | None = None,
    *,
    grid: str = "first",
    resampling: str = "bilinear",
    bands: tuple[int, ...] | None = None,
    overwrite: bool = False,
    part: tuple[int, int] | None = None,
    progress: bool = True,
) -> PredictionResult:
    """Predict one scene (or one pair of dated scenes for ``change``) into ``out_dir``.

    A scene is a raster file (read on its own grid) or a
    :class:`~geocmid.data.sources.RasterSource`, e.g. a catalog imagery entry's
    (:func:`geocmid.data.sources.imagery_source`): read exactly as training reads it (band files,
    nodata override, ``assign_crs``) on the entry's grid, which the outputs then share. An entry
    of several files is one mosaic on that grid (the first file with data wins a pixel).

    Only one run of an output runs at a time (a second is refused with the first one's PID);
    ``part`` runs of one job may run together, and a plain run afterwards assembles them.

    Raises:
        DataError: unreadable or non-overlapping inputs, unwritable or existing outputs, a full
            disk.
        ModelError: the model's bands or outputs do not fit the card / the image.
        ConfigError: invalid settings, an unfinished run with other settings is in the way, or
            another run of the same output is running.
    """
    job = prepare_scene(
        predictor, inputs, out_dir, name, settings, options, grid=grid,
        resampling=resampling, bands=bands, overwrite=overwrite, exclusive=part is None,
    )  # fmt: skip
    try:
        with rasterio.Env(**GDAL_ENV):
            blocks = blocks_for_part(job.layout, part)
            blocks_run = run_blocks(
                predictor, job.plan, job.layout, job.work, blocks, job.settings, progress
            )
    except BaseException:
        job.lock.release()
        raise
    if part is not None:
        # Parts never assemble (two finishing together would race); a plain call does.
        left = len(job.todo())
        job.lock.release()
        log.info("part %s/%s done; %d block(s) left to other parts", *part, left)
        return PredictionResult(complete=False, blocks_run=blocks_run)
    result = finish_scene(job)
    result.blocks_run = blocks_run
    return result


def _write_stac_item(job: SceneJob, predictor: Predictor, paths: dict[str, Path]) -> None:
    """The STAC Item beside the outputs (:func:`geocmid.data.stac.output_item`): the outputs as
    assets, the model card as properties, the input files as ``derived_from`` links."""
    from geocmid.data import stac

    links: list[str] = []
    for scene in job.inputs:
        links += list(scene.files) if isinstance(scene, RasterSource) else [os.fspath(scene)]
    stamps = [re.search(stac.STAC_DATE_PATTERN, Path(str(f)).name) for f in links]
    dates = [dt.datetime.strptime(m.group("date"), "%Y%m%d").date() for m in stamps if m]
    item = stac.output_item(
        job.name,
        paths.get("classes"),
        job.plan.grid,
        {**predictor.model_card.to_dict(), "task": predictor.task},
        predictor.fingerprint,
        [link if is_virtual(link) else str(Path(link).resolve()) for link in links],
        {k: v for k, v in paths.items() if k != "stac"},
        dates,
    )
    stac.write_item(item, paths["stac"])


def _file_id(path: Any) -> dict[str, Any]:
    """Identity of an input file for the resume fingerprint: local files by size and mtime,
    GDAL virtual paths / URLs (``/vsizip/``, ``https://``, ``s3://``) without reading their data
    (:func:`geocmid.data.paths.file_identity`)."""
    from geocmid.data.paths import file_identity

    try:
        return file_identity(os.fspath(path))
    except (OSError, rasterio.errors.RasterioIOError) as error:
        raise DataError(str(path), f"cannot be opened ({error})", "check the path") from None


def _finish_dense(
    predictor: Predictor,
    work: WorkDir,
    layout: Any,
    plan: Any,
    paths: dict[str, Path],
    options: OutputOptions,
    tags: dict[str, str],
    result: PredictionResult,
) -> None:
    grid = plan.grid
    card = predictor.model_card
    cls_tmp, prob_tmp, stats = assemble.assemble_dense(work, layout, grid, card, work.path)
    if "probabilities" in paths:
        # Copy first: the class step below reads the temporary probabilities for vectors.
        write_probability_cog(prob_tmp, paths["probabilities"], card, tags)
    write_class_cog(cls_tmp, paths["classes"], card, tags, predictor.background)
    frame = None
    if "vectors" in paths:
        frame = polygons(
            paths["classes"],
            prob_tmp,
            card,
            predictor.background,
            options.simplify,
            options.min_area,
        )
        _write_vectors(frame, paths, "changes" if predictor.task == "change" else "polygons")
    if "quicklook" in paths:
        scenes = _quicklook_scenes(plan, work.path)
        summary.quicklook_classes(
            paths["classes"], card, paths["quicklook"], scenes, predictor.background
        )
    write_styles(paths, card.classes, predictor.task, predictor.background)
    result.summary["nodata_pixels"] = stats.nodata_pixels
    result.summary["classes"] = summary.class_table(card, stats.pixels, stats.area_m2, frame)


def _finish_objects(
    predictor: Predictor,
    work: WorkDir,
    layout: Any,
    plan: Any,
    paths: dict[str, Path],
    options: OutputOptions,
    result: PredictionResult,
) -> None:
    card, grid = predictor.model_card, plan.grid
    parts: dict[str, list[np.ndarray]] = {}
    for block in layout.blocks():
        with work.load_block(block) as arrays:
            for key in arrays.files:
                parts.setdefault(key, []).append(arrays[key])
    if predictor.task == "detection":
        merged = merge_boxes(np.concatenate(parts["boxes"]), options.iou)
        frame = boxes_frame(merged, grid, card)
        layer = "detections"
    else:
        frame = scene_cells(
            np.concatenate(parts["cells"]),
            np.concatenate(parts["probs"]),
            np.concatenate(parts["valid_fraction"]),
            layout,
            grid,
            card,
            options.min_valid,
        )
        layer = "cells"
    _write_vectors(frame, paths, layer)
    write_styles(paths, card.classes, predictor.task, predictor.background)
    if "quicklook" in paths:
        scene = _quicklook_scenes(plan, work.path)[0]
        summary.quicklook_scene(scene.path, grid, frame, card, paths["quicklook"])
    result.summary["classes"] = summary.class_table(card, objects=frame)


def _write_vectors(frame: gpd.GeoDataFrame, paths: dict[str, Path], layer: str) -> None:
    write_vectors(frame, paths, layer)  # GPKG (+ column descriptions), RFC 7946 GeoJSON


@dataclass(frozen=True)
class _QuicklookScene:
    path: str
    bands: tuple[int, ...]


def _quicklook_scenes(plan: Any, folder: Path) -> list[Any]:
    """Scenes the quick-look can open: a scene of one file as it is; any other (band files,
    mosaics) as a small preview GeoTIFF of its model bands on its grid, in ``folder``."""
    out: list[Any] = []
    for t, spec in enumerate(plan.scenes):
        if spec.path is not None:
            out.append(spec)
            continue
        data, valid, grid = spec.source.preview(summary.QUICKLOOK_SIZE, [b - 1 for b in spec.bands])
        data = data.astype(np.float32)
        nodata = float(np.finfo(np.float32).min)  # not NaN: the quick-look stretch casts to uint8
        data[:, ~valid] = nodata
        path = folder / f"preview{t}.tif"
        with rasterio.open(
            path, "w", driver="GTiff", width=grid.width, height=grid.height, count=len(data),
            dtype="float32", crs=grid.crs, transform=grid.transform, nodata=nodata,
        ) as dst:  # fmt: skip
            dst.write(data)
        out.append(_QuicklookScene(str(path), tuple(range(1, len(data) + 1))))
    return out

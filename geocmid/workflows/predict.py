"""Whole-scene prediction as one request: scenes or catalog entries in, georeferenced maps out.

``geocmid predict`` and the recipes' predict step both build a :class:`PredictRequest` and call
:func:`predict`; the engine underneath is :mod:`geocmid.inference` (bounded-memory blocks,
resumable block store, COG / GPKG writers).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

from geocmid.errors import ConfigError

log = logging.getLogger("geocmid.predict")


@dataclass
class PredictRequest:
    """Everything one prediction run needs.

    Attributes:
        model: a ``geocmid fit`` checkpoint (``.ckpt``; task, classes and normalisation come
            from its model card), a TorchScript / ``.pt2`` file, or ``module:factory``.
        inputs: raster files (one per scene; two dates for change).
        entries: catalog imagery entries (one per scene; two for change) or one bitemporal
            entry, read exactly as training reads them, on the entry's grid. Not with ``inputs``.
        catalog: catalog folder of ``entries`` (None: ``data_catalog`` / ``$GEOCMID_CATALOG``).
        output: output folder.
        card: model card JSON (not needed for a ``.ckpt``).
        task: ``segmentation``, ``change``, ``classification`` or ``detection`` (default: the
            checkpoint's, else segmentation).
        name: output name stem (default: the input stem(s) / entry name(s)).
        window, overlap, block_size: window and block edges in pixels; overlap in pixels.
        batch_size: windows per forward pass.
        tta: test-time augmentation, ``none`` / ``flips`` / ``d4``.
        device: torch device (``cpu``, ``cuda:0``).
        precision: ``32-true`` (default), ``bf16-mixed`` or ``16-mixed`` (CUDA): autocast dtype
            of the model (:class:`~geocmid.inference.predictor.Predictor`).
        bands: 1-based raster bands to feed the model, in model order (default: the card's).
        grid: change only: the grid both dates are read on (``first``, ``second``,
            ``intersection``); ``resampling`` the warping method.
        pair_input: change model takes two tensors ``(a, b)`` instead of ``[B, 2, C, H, W]``.
        background: class value left out of the vectors: ``"auto"`` (default) takes the
            background / no-change class from the model card
            (:func:`geocmid.inference.card.background_value`); ``None`` vectorises every class.
        probabilities, vectors, geojson: which outputs to write besides the class raster.
        simplify: polygon simplification tolerance in pixels; ``min_area`` drops polygons
            smaller than this many m² (geodesic areas).
        iou: detection: IoU above which boxes from overlapping windows are merged.
        overwrite: replace existing final outputs.
        part: ``(i, n)``: compute only part i of n of the blocks (another run assembles).
        progress: show a progress bar.
        workers: run the blocks of every scene as one Dask job on a local cluster of this
            many worker processes (0: in this process); see
            :mod:`geocmid.inference.distributed`.
        scheduler: address of an existing Dask scheduler to run the job on instead.
    """

    model: str | Path
    inputs: Sequence[str | Path] = ()
    entries: Sequence[str] = ()
    catalog: str | Path | None = None
    output: str | Path = "maps"
    card: str | Path | None = None
    task: str | None = None
    name: str | None = None
    window: int = 512
    overlap: int = 64
    block_size: int = 2048
    batch_size: int = 8
    tta: str = "none"
    device: str = "cpu"
    precision: str = "32-true"
    bands: tuple[int, ...] | None = None
    grid: str = "first"
    resampling: str = "bilinear"
    pair_input: bool = False
    background: int | str | None = "auto"
    probabilities: bool = False
    vectors: bool = True
    geojson: bool = False
    simplify: float = 0.0
    min_area: float = 0.0
    iou: float = 0.5
    overwrite: bool = False
    part: tuple[int, int] | None = None
    progress: bool = True
    workers: int = 0
    scheduler: str | None = None

    def display(self) -> str:
        """The equivalent ``geocmid predict`` command line (for plans and logs)."""
        defaults = PredictRequest(model=self.model)
        words = ["geocmid"] + (["--catalog", str(self.catalog)] if self.catalog else [])
        words += ["predict", "--model", str(self.model)]
        words += [str(p) for p in self.inputs]
        words += [f"--entry {e}" for e in self.entries]
        words += ["-o", str(self.output)]
        skip = {"model", "inputs", "entries", "catalog", "output", "progress", "vectors", "part"}
        for f in fields(self):
            value = getattr(self, f.name)
            if f.name in skip or value == getattr(defaults, f.name):
                continue
            flag = "--" + f.name.replace("_", "-")
            words.append(flag if value is True else f"{flag} {value}")
        if not self.vectors:
            words.append("--no-vectors")
        return " ".join(words)


@dataclass
class PredictResult:
    """What :func:`predict` wrote.

    Attributes:
        runs: one :class:`geocmid.inference.run.PredictionResult` per scene (or date pair).
        task: the task the model predicts.
    """

    runs: list[Any] = field(default_factory=list)
    task: str = "segmentation"

    @property
    def complete(self) -> bool:
        """False when only a part of the blocks was computed (``part``)."""
        return all(run.complete for run in self.runs)

    @property
    def outputs(self) -> dict[str, Path]:
        """Output kind → path, over every run (a later run's kind wins: use ``runs`` for
        several scenes)."""
        merged: dict[str, Path] = {}
        for run in self.runs:
            merged.update(run.outputs)
        return merged


def predict(request: PredictRequest) -> PredictResult:
    """Load the model once and predict every scene (or the date pair) of ``request``.

    Returns:
        :class:`PredictResult`.

    Raises:
        ConfigError: no input, both files and entries, a wrong number of dates, an unknown
            entry; DataError / ModelError: unreadable inputs, a model that does not fit them.
    """
    from geocmid.inference.engine import RunSettings
    from geocmid.inference.loading import load_predictor
    from geocmid.inference.run import OutputOptions, predict_scene

    inputs = _inputs(request)  # catalog entries are checked before the model is loaded
    _check_readable(inputs)  # every scene file, before any block of any scene runs
    predictor = load_predictor(
        str(request.model),
        str(request.card) if request.card else None,
        request.task,
        device=request.device,
        change_input="pair" if request.pair_input else "stacked",
        background=None,
        precision=request.precision,
    )
    predictor.background = _background(request.background, predictor)
    for group in inputs:
        for scene in group:
            _warn_if_not_georeferenced(scene)
    r = request
    settings = RunSettings(r.window, r.overlap, r.block_size, r.batch_size, r.tta)
    options = OutputOptions(
        probabilities=r.probabilities,
        vectors=r.vectors,
        simplify=r.simplify,
        min_area=r.min_area,
        geojson=r.geojson,
        iou=r.iou,
    )
    result = PredictResult(task=predictor.task)
    name = request.name
    if name is None and len(request.entries) == 1 and predictor.task == "change":
        name = request.entries[0]  # a bitemporal entry: its name, not its two dates'
    if request.workers or request.scheduler:
        from geocmid.inference.distributed import predict_request_distributed

        runs = _runs(request, inputs, predictor.task)
        result.runs = predict_request_distributed(request, predictor, runs, name, settings, options)
        return result
    for scenes in _runs(request, inputs, predictor.task):
        run = predict_scene(
            predictor,
            scenes,
            request.output,
            name,
            settings,
            options,
            grid=request.grid,
            resampling=request.resampling,
            bands=request.bands,
            overwrite=request.overwrite,
            part=request.part,
            progress=request.progress,
        )
        result.runs.append(run)
        if not run.complete:
            names = " ".join(getattr(s, "name", None) or str(s) for s in scenes)
            log.info("%s: part done; run again without --part to assemble", names)
    return result


def _background(value: int | str | None, predictor: Any) -> int | None:
    """The class left out of the vectors: ``"auto"`` reads it from the model card."""
    from geocmid.inference.card import background_value

    if value is None or (isinstance(value, str) and value.lower() == "none"):
        return None
    if isinstance(value, str) and value.lower() == "auto":
        found = background_value(predictor.card, predictor.task)
        if found is not None:
            names = {c.value: c.name for c in predictor.card.classes}
            log.info("vectors leave out class %s (%s), the model card's background", found,
                     names.get(found, "?"))  # fmt: skip
        return found
    try:
        number = int(value)
    except (TypeError, ValueError):
        raise ConfigError(
            "--background", f"{value!r} is not a class value", "give a value, 'auto' or 'none'"
        ) from None
    values = [c.value for c in predictor.card.classes]
    if number not in values:
        raise ConfigError(
            "--background",
            f"{number} is not one of the model's class values {values}",
            "give one of them, 'auto' (the model card's background) or 'none'",
        )
    return number


def _check_readable(inputs: list[list[Any]]) -> None:
    """Read a sample of blocks of every scene file (:func:`geocmid.data.rasters.check_readable`),
    so that a missing, truncated or corrupt file is named in one line before any work starts,
    not after the scenes before it were predicted. Catalog entries were checked by
    :func:`geocmid.inference.reader.entry_sources` (as ``catalog validate`` does).

    Raises:
        DataError: naming the first unreadable file, the block and the fix.
    """
    from geocmid.data.rasters import check_readable
    from geocmid.data.sources import RasterSource

    for group in inputs:
        for scene in group:
            if not isinstance(scene, RasterSource):
                check_readable(scene)


def _warn_if_not_georeferenced(scene: Any) -> None:
    """One warning per scene without georeferencing: its outputs are on its pixel grid."""
    from geocmid.data.sources import PIXEL_GRID_TRANSFORM, RasterSource, file_source

    source = scene if isinstance(scene, RasterSource) else file_source(scene)
    if source.grid.crs is None:
        placed = source.grid.transform == PIXEL_GRID_TRANSFORM
        log.warning(
            "%s has no %s: its outputs are written on its pixel grid without a CRS and their "
            "areas are NULL; georeference it (a world file, or gdal_translate -a_srs -a_ullr) "
            "for maps that overlay other data",
            source.name, "georeferencing" if placed else "CRS",
        )  # fmt: skip


def _inputs(request: PredictRequest) -> list[list[Any]]:
    """Scene files as given (one list each), or the sources of each entry name (one for an
    imagery entry, two for a bitemporal entry)."""
    if request.entries and request.inputs:
        raise ConfigError(
            "SCENE / --entry",
            "scene files and --entry were both given",
            "pass either raster files or catalog entries",
        )
    if not request.entries and not request.inputs:
        raise ConfigError(
            "SCENE",
            "nothing to predict",
            "pass raster files, or --entry NAME for a catalog imagery entry",
        )
    if not request.entries:
        return [[str(scene)] for scene in request.inputs]
    from geocmid.data.catalog import Catalog
    from geocmid.inference.reader import entry_sources

    catalog = Catalog(request.catalog)
    return [list(entry_sources(catalog, [name])) for name in request.entries]


def _runs(request: PredictRequest, inputs: list[list[Any]], task: str) -> list[list[Any]]:
    """The scenes of each run: two dates for change, else one scene per run."""
    scenes = [scene for group in inputs for scene in group]
    if request.entries:
        if task != "change" and any(len(group) > 1 for group in inputs):
            raise ConfigError(
                "--entry",
                "a bitemporal entry holds two dates, but this model predicts one scene",
                "name an imagery entry, or use a change model",
            )
        what, fix = "entries", "pass --entry BEFORE --entry AFTER, or one bitemporal entry"
    else:
        what, fix = "scenes", "pass DATE1 DATE2"
    if task == "change":
        if len(scenes) != 2:
            where = "--entry" if request.entries else "SCENE"
            raise ConfigError(where, f"change needs exactly two dates, got {len(scenes)}", fix)
        return [scenes]
    if request.name and len(scenes) > 1:
        raise ConfigError("--name", f"cannot name several {what}' outputs", "drop --name")
    return [[scene] for scene in scenes]

"""Checks that run before anything else: configs, catalog entries, files, bands, CRS, overlap.

Everything here reads headers only (no pixels, no model weights), so it runs on every
``geocmid run`` and ``--dry-run``. Data that an earlier step of the same recipe will write (the
demo data, the fine-tuned model) is checked when it exists: the runner calls :func:`check_data`
again before each step.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from geocmid.errors import ConfigError, DataError, ModelError
from geocmid.recipes.resolve import Resolved, is_raster_path


@dataclass
class SceneInfo:
    """One input raster of the predict step (header facts, CRS units)."""

    name: str
    path: Path
    crs: str
    res: float
    width: int
    height: int
    count: int
    bounds: tuple[float, float, float, float]
    entry: str | None = None  # the imagery entry it is read from (None: a file path)

    @property
    def area_km2(self) -> float:
        """Footprint area (geodesic in a geographic CRS, unit-aware otherwise); NaN without CRS."""
        import shapely
        from rasterio.crs import CRS

        from geocmid.inference.areas import geometry_areas_m2

        crs = CRS.from_user_input(self.crs) if self.crs else None
        return float(geometry_areas_m2([shapely.box(*self.bounds)], crs)[0]) / 1e6


@dataclass
class Facts:
    """What the checks learned, for the plan."""

    task: str | None = None
    training_bands: list[str] | None = None
    training_res: float | None = None
    scenes: list[SceneInfo] = field(default_factory=list)
    overlap: float | None = None
    warnings: list[str] = field(default_factory=list)
    pending: list[str] = field(default_factory=list)


def fit_config(res: Resolved) -> dict[str, Any]:
    """The finetune step's config as it will run: file + recipe shortcuts + ``set`` values,
    checked by the workflow layer (keys, class paths, init arguments) without running."""
    from geocmid.recipes.steps import finetune_call
    from geocmid.workflows.training import prepare_config

    call = finetune_call(res)
    try:
        config, _, _ = prepare_config(call.config, overrides=call.overrides, weights=call.weights)
    except ConfigError as error:
        raise _step_error(res, "finetune", call.overrides, error) from None
    return config


def pretrain_config(res: Resolved) -> dict[str, Any]:
    """The pretrain step's config as it will run (defaults filled in), checked without data."""
    from geocmid.recipes.steps import pretrain_call
    from geocmid.workflows.pretrain import assemble, check_task_args

    call = pretrain_call(res)
    try:
        config, where = assemble(call.config, call.overrides)
        check_task_args(config, where)
    except ConfigError as error:
        if "data.init_args.entry" in error.where and res.steps["pretrain"]["entry"] is None:
            raise res.recipe.error(
                "steps.pretrain.entry", "no imagery entry to pretrain on",
                "set steps.pretrain.entry: ENTRY (`geocmid catalog list` shows them)",
            ) from None  # fmt: skip
        raise _step_error(res, "pretrain", call.overrides, error) from None
    return config


def _step_error(
    res: Resolved, step: str, overrides: list[tuple[str, Any]], error: ConfigError
) -> ConfigError:
    """Point an error about an override of the step's ``set`` block at its recipe line."""
    for key in res.steps[step]["set"]:
        head, _, rest = key.partition(".")
        long = f"{head}.init_args.{rest}" if head in ("model", "data") and rest else key
        if any(k in text for k in (key, long) for text in (error.where, error.problem)):
            return res.recipe.error(f"steps.{step}.set.{key}", error.problem, error.fix)
    return error


def task_of(config: dict[str, Any]) -> str:
    """Registry name of a fit config's task (segmentation, change, classification, detection)."""
    from geocmid.registry import task_of_class_path

    path = str(config.get("model", {}).get("class_path", ""))
    return task_of_class_path(path) or "segmentation"


def check_configs(res: Resolved) -> None:
    """Keys of the step overrides against the workflows' own checks (no data needed)."""
    if "pretrain" in res.steps:
        pretrain_config(res)
    if "finetune" in res.steps:
        fit_config(res)


def _catalog(res: Resolved):
    from geocmid.data.catalog import Catalog

    return Catalog(res.catalog)


def _entry_bands(res: Resolved, name: str) -> tuple[list[str] | None, float | None]:
    from geocmid.data.catalog import BitemporalEntry, ImageryEntry
    from geocmid.data.rasters import raster_info

    entry = _catalog(res).get(name)
    if isinstance(entry, BitemporalEntry):
        entry = _catalog(res).get(entry.before)
    if isinstance(entry, ImageryEntry):
        files = entry.files()
        return list(entry.bands), (entry.res or raster_info(files[0]).res[0]) if files else None
    return None, None


def _scenes(res: Resolved, key: str, item: str) -> list[SceneInfo]:
    """Scenes of one ``steps.predict.scenes`` item: a raster file, an imagery entry (read on
    its grid exactly as training reads it: band files, nodata, assign_crs, mosaics) or a
    bitemporal entry (its two dates)."""
    from geocmid.data.catalog import BitemporalEntry, ImageryEntry
    from geocmid.data.rasters import raster_info
    from geocmid.data.sources import imagery_source

    if is_raster_path(item) or Path(item).is_file():
        path = Path(item)
        if not path.is_file():
            raise res.recipe.error(key, f"scene file '{item}' not found", "check the path")
        info = raster_info(path)
        crs = info.crs.to_string() if info.crs else ""
        return [SceneInfo(path.stem, path, crs, float(info.res[0]), info.width, info.height,
                          info.count, tuple(info.bounds))]  # fmt: skip
    entry = _catalog(res).get(item)
    if isinstance(entry, BitemporalEntry):
        return _scenes(res, key, entry.before) + _scenes(res, key, entry.after)
    if not isinstance(entry, ImageryEntry):
        raise res.recipe.error(
            key, f"'{item}' is a {entry.kind} entry", "name imagery or bitemporal entries or files"
        )
    source = imagery_source(entry)
    grid = source.grid
    crs = grid.crs.to_string() if grid.crs else ""
    path = Path(source.files[0]) if source.files else Path(item)
    return [SceneInfo(item, path, crs, float(grid.res[0]), grid.width, grid.height,
                      len(source.bands), tuple(grid.bounds), entry=item)]  # fmt: skip


def scene_infos(res: Resolved) -> list[SceneInfo]:
    scenes = res.steps["predict"]["scenes"]
    items = [scenes] if isinstance(scenes, str) else list(scenes)
    out = []
    for i, item in enumerate(items):
        key = "steps.predict.scenes" + (f"[{i}]" if not isinstance(scenes, str) else "")
        out += _scenes(res, key, str(item))
    if len({s.entry is None for s in out}) > 1:
        raise res.recipe.error(
            "steps.predict.scenes", "mixes raster files and catalog entries",
            "name either files or entries (an entry for a file: an imagery entry with its path)",
        )  # fmt: skip
    return out


def model_card(res: Resolved) -> dict[str, Any] | None:
    """The card of the predict step's model (a ``geocmid fit`` run's model_card.json)."""
    from geocmid.models.card import ModelCard

    model = res.model()
    card = model.parent.parent / "model_card.json"
    return ModelCard.from_file(card).to_dict() if card.is_file() else None


def _overlap(a: SceneInfo, b: SceneInfo) -> float:
    """Fraction of scene ``a``'s footprint that scene ``b`` covers (in ``a``'s CRS)."""
    import shapely
    from rasterio.warp import transform_geom

    box_b = shapely.geometry.shape(
        transform_geom(b.crs, a.crs, shapely.geometry.mapping(shapely.box(*b.bounds)))
    )
    box_a = shapely.box(*a.bounds)
    return box_a.intersection(box_b).area / box_a.area if box_a.area else 0.0


def check_data(res: Resolved) -> Facts:
    """Cross-check the data the steps will read; data still to be written is listed as pending.

    Raises:
        ConfigError / DataError / ModelError: an entry or file is missing, bands differ between
            the pretraining data, the fine-tuning data and the scenes, two dates do not overlap.
    """
    facts = Facts()
    if "finetune" in res.steps:
        facts.task = task_of(fit_config(res))
    if res.demo_dir is not None and not (res.demo_dir / "catalog").is_dir():
        facts.pending.append(f"data: written by step demo_data into {res.demo_dir}")
        if res.catalog == res.demo_dir / "catalog":
            return facts
    if res.catalog is not None and not res.catalog.is_dir():
        raise res.recipe.error(
            "catalog", f"catalog folder '{res.catalog}' not found",
            "run `geocmid demo-data DIR` or point 'catalog' at your data_catalog folder",
        )  # fmt: skip
    steps = res.steps
    pre_bands = None
    if "pretrain" in steps:
        entry = steps["pretrain"]["entry"] or (
            pretrain_config(res)["data"]["init_args"].get("entry")
        )
        if entry is None:
            raise res.recipe.error("steps.pretrain.entry", "no imagery entry to pretrain on",
                                   "set steps.pretrain.entry: ENTRY")  # fmt: skip
        pre_bands, _ = _entry_bands(res, entry)
    if "finetune" in steps:
        config = fit_config(res)
        facts.task = task_of(config)
        entry = config.get("data", {}).get("init_args", {}).get("entry")
        if entry:
            facts.training_bands, facts.training_res = _entry_bands(res, entry)
            for key in ("labels",):
                name = config["data"]["init_args"].get(key)
                if isinstance(name, str) and not is_raster_path(name):
                    _catalog(res).get(name)
        weights = res.weights()
        if weights and steps["finetune"]["weights"] != "pretrain" and not Path(weights).is_file():
            raise res.recipe.error("steps.finetune.weights", f"file '{weights}' not found",
                                   "give a geocmid export (.safetensors) or null")  # fmt: skip
        if pre_bands and steps["finetune"]["weights"] == "pretrain":
            bands = facts.training_bands
            if bands is None and facts.task == "classification":
                bands = ["red", "green", "blue"]  # image folders are RGB pictures
            if bands is not None and len(bands) != len(pre_bands):
                raise ModelError(
                    res.recipe.where("steps.finetune.weights"),
                    f"the pretrained backbone sees {len(pre_bands)} bands ({', '.join(pre_bands)})"
                    f" but the fine-tuning data has {len(bands)} ({', '.join(bands)})",
                    "pretrain on imagery with the same bands, or set steps.finetune.weights: null",
                )
    if "predict" in steps:
        _check_predict(res, facts)
    return facts


def _check_predict(res: Resolved, facts: Facts) -> None:
    step = res.steps["predict"]
    if step["model"] == "finetune":
        bands, task = facts.training_bands, facts.task
    else:
        if not res.model().is_file():
            raise res.recipe.error(
                "steps.predict.model",
                f"model '{step['model']}' not found",
                "give a checkpoint from `geocmid fit` (RUN/checkpoints/*.ckpt)",
            )
        card = model_card(res) or {}
        bands, task = card.get("bands"), card.get("task")
        facts.task = task
        facts.training_res = card.get("gsd") or card.get("res")
    facts.scenes = scene_infos(res)
    if not facts.scenes:
        raise res.recipe.error("steps.predict.scenes", "no scenes", "name one or two scenes")
    if task == "change":
        if len(facts.scenes) != 2:
            raise res.recipe.error(
                "steps.predict.scenes", f"a change map needs two dated scenes, got "
                f"{len(facts.scenes)}", "name a bitemporal entry or two imagery entries / files",
            )  # fmt: skip
        facts.overlap = _overlap(*facts.scenes)
        if facts.overlap <= 0:
            raise DataError(
                res.recipe.where("steps.predict.scenes"),
                f"the two dates do not overlap ({facts.scenes[0].path}, {facts.scenes[1].path})",
                "pick two scenes of the same place",
            )
        if facts.overlap < 0.5:
            facts.warnings.append(f"the dates overlap on {facts.overlap:.0%} of the first only")
    for scene in facts.scenes:
        if bands is not None and scene.count != len(bands):
            raise ModelError(
                res.recipe.where("steps.predict.scenes"),
                f"{scene.path} has {scene.count} bands but the model was trained on "
                f"{len(bands)} ({', '.join(map(str, bands))})",
                "predict scenes with the training bands, or train on these",
            )
        if facts.training_res and not 0.5 <= scene.res / float(facts.training_res) <= 2:
            facts.warnings.append(
                f"{scene.name}: {scene.res:g} CRS units per pixel vs {facts.training_res:g} in "
                "training; objects will look another size to the model"
            )
    crss = {s.crs for s in facts.scenes}
    if len(crss) > 1:
        facts.warnings.append(
            f"scenes in {', '.join(sorted(crss))}: the second date is warped onto the first's grid"
        )

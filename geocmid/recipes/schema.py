"""What a recipe may say: sections, steps, keys, types and defaults, and the tiny profile.

A recipe is validated against :data:`TOP` and :data:`STEPS` before anything runs: an unknown key
gets a did-you-mean and the line it is on, a wrong type names the expected one.
"""

from __future__ import annotations

import copy
from typing import Any

from geocmid.errors import did_you_mean
from geocmid.recipes.loader import Recipe, set_profile_overrides

NoneType = type(None)
NUMBER = (int, float)
#: (types, default, help) per top-level key.
TOP: dict[str, tuple[tuple[type, ...], Any, str]] = {
    "recipe": ((str,), None, "name of the workflow (default: the file stem)"),
    "description": ((str,), "", "what the recipe does, one line"),
    "run_dir": ((str,), None, "run folder (default: runs/RECIPE); a rerun resumes in it"),
    "catalog": ((str, NoneType), None, "catalog folder (default: the demo's, or --catalog)"),
    "device": ((str,), "cpu", "cpu, cuda, cuda:0 … for training and prediction"),
    "threads": ((int, NoneType), None, "CPU threads for torch (default: torch's choice)"),
    "gdal_env": (
        (dict, NoneType),
        {},
        "GDAL configuration options set while the recipe runs, for every step's data access "
        "(e.g. {GDAL_HTTP_TIMEOUT: 30, AWS_NO_SIGN_REQUEST: 'YES'})",
    ),
    "profile": ((str,), "normal", "normal, or tiny: every step in seconds (tests, smoke runs)"),
    "tiny": ((dict,), {}, "extra dotted-key overrides used by profile tiny"),
    "steps": ((dict,), None, "the steps, run in the order of STEP_ORDER"),
}
#: Steps in the order they run, whatever the order in the file.
STEP_ORDER = ("demo_data", "pretrain", "finetune", "predict", "embed", "evaluate", "report")
STEPS: dict[str, dict[str, tuple[tuple[type, ...], Any, str]]] = {
    "demo_data": {
        "out": ((str, NoneType), None, "folder (default: RUN_DIR/demo)"),
        "size": ((int,), 512, "first-date scene edge, px"),
        "seed": ((int,), 0, "landscape seed"),
    },
    "pretrain": {
        "config": ((str,), None, "pretraining config, relative to the recipe (required)"),
        "entry": ((str, NoneType), None, "imagery entry (default: the config's)"),
        "backbone": ((str, NoneType), None, "backbone (default: the config's)"),
        "epochs": ((int, NoneType), None, "epochs (default: the config's)"),
        "set": ((dict,), {}, "any other config value: {data.chip_size: 64}"),
    },
    "finetune": {
        "config": ((str,), None, "fine-tuning config, relative to the recipe (required)"),
        "entry": ((str, NoneType), None, "data entry (default: the config's)"),
        "labels": ((str, NoneType), None, "labels entry (default: the config's)"),
        "weights": ((str, NoneType), None, "'pretrain' (that step's export), a file, or null"),
        "epochs": ((int, NoneType), None, "epochs (default: the config's)"),
        "set": ((dict,), {}, "any other config value: {model.lr: 1e-3}"),
    },
    "predict": {
        "model": ((str,), "finetune", "'finetune' (that step's best checkpoint) or a .ckpt"),
        "scenes": ((str, list), None, "imagery / bitemporal entries or raster files (required)"),
        "name": ((str,), "map", "output name stem"),
        "window": ((int,), 512, "window edge, px"),
        "overlap": ((int,), 64, "window overlap, px"),
        "block_size": ((int,), 2048, "block edge, px (memory is bounded by it)"),
        "batch_size": ((int,), 8, "windows per forward pass"),
        "tta": ((str,), "none", "none, flips or d4"),
        "probabilities": ((bool,), False, "also write the probability COG"),
        "vectors": ((bool,), True, "write polygons (GPKG)"),
        "min_area": (NUMBER, 0.0, "drop polygons smaller than this, m²"),
        "simplify": (NUMBER, 0.0, "polygon simplification, px"),
        "geojson": ((bool,), False, "also write GeoJSON (EPSG:4326)"),
    },
    "embed": {
        "scene": ((str,), None, "imagery entry or raster file to embed (required)"),
        "query": (
            (list, dict),
            None,
            "the chip to match (required): a point [x, y] in the scene's CRS, {lon: .., lat: ..} "
            "in degrees, or a pixel {row: .., col: ..}",
        ),
        "model": (
            (str,),
            "pretrain",
            "'pretrain' (that step's export), a `geocmid export` (.safetensors), or a backbone "
            "name (resnet18 ...) with random weights (smoke runs)",
        ),
        "chip": ((int,), 64, "chip edge, px"),
        "stride": ((int, NoneType), None, "px between chip origins (default: chip)"),
        "batch_size": ((int,), 16, "chips per forward pass"),
        "min_valid": (NUMBER, 0.5, "leave out chips with a smaller valid fraction"),
        "k": ((int,), 10, "matches in the map (besides the query chip)"),
        "name": ((str,), "matches", "map name: maps/NAME.gpkg, maps/NAME_quicklook.png"),
    },
    "evaluate": {
        "labels": ((str,), None, "reference raster_labels entry or raster file (required)"),
        "areas": (
            (str,),
            "test",
            "pixels scored: 'test' (the fine-tuning's test split), a vector file of held-out "
            "areas, or 'all' (the whole map, training area included)",
        ),
    },
    "report": {
        "title": ((str, NoneType), None, "report title (default: the recipe description)"),
    },
}
REQUIRED = {"pretrain": ["config"], "finetune": ["config"], "predict": ["scenes"]}
REQUIRED.update({"evaluate": ["labels"], "embed": ["scene", "query"]})

#: Overrides of profile ``tiny`` for every recipe: one short epoch, few chips, small windows.
TINY: dict[str, Any] = {
    "steps.demo_data.size": 160,
    "steps.pretrain.epochs": 1,
    "steps.pretrain.set.data.chips_per_epoch": 8,
    "steps.pretrain.set.data.batch_size": 4,
    "steps.pretrain.set.model.warmup_epochs": 0,
    "steps.pretrain.set.trainer.accelerator": "cpu",
    "steps.pretrain.set.trainer.devices": 1,  # GPU recipes ask for several devices
    "steps.pretrain.set.trainer.strategy": "auto",
    "steps.pretrain.set.trainer.callbacks.HealthMonitor.every_n_epochs": 100,
    "steps.finetune.epochs": 1,
    # the 160 px demo dealt in blocks of two 64 px chips leaves no room for a training chip
    "steps.finetune.set.data.chip_size": 32,
    "steps.finetune.set.trainer.limit_train_batches": 2,
    "steps.finetune.set.trainer.limit_val_batches": 1,
    "steps.finetune.set.trainer.num_sanity_val_steps": 0,
    "steps.finetune.set.trainer.accelerator": "cpu",
    "steps.finetune.set.trainer.devices": 1,
    "steps.predict.window": 128,
    "steps.predict.overlap": 16,
    "steps.predict.batch_size": 4,
    "steps.embed.chip": 32,
    "steps.embed.k": 5,
    "device": "cpu",
}


def _type_names(types: tuple[type, ...]) -> str:
    names = {int: "a whole number", float: "a number", str: "text", bool: "true or false"}
    names.update({dict: "a mapping", list: "a list", NoneType: "null"})
    return " or ".join(names.get(t, t.__name__) for t in types)


def _check(recipe: Recipe, key: str, value: Any, types: tuple[type, ...]) -> None:
    ok = isinstance(value, types) and not (isinstance(value, bool) and bool not in types)
    if not ok:
        raise recipe.error(key, f"is {value!r}; expected {_type_names(types)}", "fix the value")


def _check_keys(recipe: Recipe, prefix: str, given: dict[str, Any], spec: dict[str, Any]) -> None:
    for key in given:
        if key not in spec:
            dotted = f"{prefix}{key}"
            raise recipe.error(
                dotted, f"unknown key '{key}'{did_you_mean(key, spec)}", f"keys: {', '.join(spec)}"
            )


def normalise(recipe: Recipe, tiny: bool = False) -> dict[str, Any]:
    """Validate the recipe's structure and return it with every default filled in.

    With ``tiny`` (or ``profile: tiny`` in the recipe) the :data:`TINY` overrides and the
    recipe's own ``tiny`` block are applied first (command-line overrides still win).

    Raises:
        ConfigError: unknown key (with a suggestion and line), wrong type, missing required key,
            a step without the step it needs.
    """
    data = recipe.data
    _check_keys(recipe, "", data, TOP)
    for key, (types, _, _) in TOP.items():
        if key in data:
            _check(recipe, key, data[key], types)
    _check_gdal_env(recipe, data.get("gdal_env") or {})
    if data.get("profile", "normal") not in ("normal", "tiny"):
        raise recipe.error("profile", f"is '{data['profile']}'", "use normal or tiny")
    if tiny or data.get("profile") == "tiny":
        data["profile"] = "tiny"
        steps_present = set(data.get("steps") or {})
        generic = {k: v for k, v in TINY.items() if _step_of(k) in steps_present | {None}}
        set_profile_overrides(recipe, generic, "profile tiny")
        set_profile_overrides(recipe, data.get("tiny") or {}, f"{recipe.path}, key 'tiny'")
    steps = data.get("steps")
    if not steps:
        raise recipe.error("steps", "the recipe has no steps", f"add some of {', '.join(STEPS)}")
    _check_keys(recipe, "steps.", steps, STEPS)
    out: dict[str, Any] = {k: copy.deepcopy(data.get(k, d)) for k, (_, d, _) in TOP.items()}
    out["gdal_env"] = out["gdal_env"] or {}
    out["recipe"] = out["recipe"] or recipe.path.stem
    out["run_dir"] = out["run_dir"] or f"runs/{out['recipe']}"
    out["steps"] = {}
    for name in STEP_ORDER:
        if name not in steps:
            continue
        given = steps[name] if steps[name] is not None else {}
        if not isinstance(given, dict):
            raise recipe.error(
                f"steps.{name}", "must be a mapping of settings", "or {} for defaults"
            )
        spec = STEPS[name]
        _check_keys(recipe, f"steps.{name}.", given, spec)
        step = {}
        for key, (types, default, _) in spec.items():
            value = given.get(key, copy.deepcopy(default))
            if value is not None or key in given:
                _check(recipe, f"steps.{name}.{key}", value, types)
            step[key] = value
        for key in REQUIRED.get(name, []):
            if step[key] is None:
                raise recipe.error(
                    f"steps.{name}.{key}", f"step '{name}' needs '{key}'", STEPS[name][key][2]
                )
        out["steps"][name] = step
    _check_links(recipe, out["steps"])
    return out


def _check_gdal_env(recipe: Recipe, options: dict[str, Any]) -> None:
    """Every ``gdal_env`` key a GDAL option name, every value a text or a number."""
    from geocmid.data.paths import gdal_option_problem

    for name, value in options.items():
        problem = gdal_option_problem(name, value)
        if problem:
            raise recipe.error(
                f"gdal_env.{name}", problem,
                "see https://gdal.org/en/stable/user/configoptions.html, e.g. gdal_env: "
                "{GDAL_DISABLE_READDIR_ON_OPEN: EMPTY_DIR, GDAL_HTTP_TIMEOUT: 30}",
            )  # fmt: skip


def _step_of(key: str) -> str | None:
    parts = key.split(".")
    return parts[1] if parts[0] == "steps" and len(parts) > 1 else None


def _check_links(recipe: Recipe, steps: dict[str, Any]) -> None:
    """A step that uses another step's output needs that step in the recipe."""
    if steps.get("finetune", {}).get("weights") == "pretrain" and "pretrain" not in steps:
        raise recipe.error(
            "steps.finetune.weights", "is 'pretrain' but the recipe has no pretrain step",
            "add a pretrain step, or give an export file (.safetensors), or null",
        )  # fmt: skip
    if steps.get("predict", {}).get("model") == "finetune" and "finetune" not in steps:
        raise recipe.error(
            "steps.predict.model", "is 'finetune' but the recipe has no finetune step",
            "add a finetune step or give a checkpoint (.ckpt) from `geocmid fit`",
        )  # fmt: skip
    if "evaluate" in steps and "predict" not in steps:
        raise recipe.error("steps.evaluate", "needs a predict step", "add a predict step")
    if "embed" in steps:
        _check_embed(recipe, steps)


def _check_embed(recipe: Recipe, steps: dict[str, Any]) -> None:
    """The embed step's model link, query form and sizes."""
    step = steps["embed"]
    if step["model"] == "pretrain" and "pretrain" not in steps:
        raise recipe.error(
            "steps.embed.model", "is 'pretrain' but the recipe has no pretrain step",
            "add a pretrain step, or give an export (.safetensors) or a backbone name",
        )  # fmt: skip
    for key in ("chip", "batch_size", "k"):
        if step[key] < 1:
            raise recipe.error(f"steps.embed.{key}", f"is {step[key]}", "give a positive number")
    if step["stride"] is not None and step["stride"] < 1:
        raise recipe.error("steps.embed.stride", f"is {step['stride']}", "give a positive number")
    query = step["query"]

    def number(v: Any) -> bool:
        return isinstance(v, int | float) and not isinstance(v, bool)

    forms = ({"x", "y"}, {"lon", "lat"}, {"row", "col"})
    if isinstance(query, list):
        ok = len(query) == 2 and all(number(v) for v in query)
    else:
        ok = set(query) in forms and all(number(v) for v in query.values())
        if ok and "row" in query:
            ok = all(isinstance(query[k], int) and query[k] >= 0 for k in ("row", "col"))
    if not ok:
        raise recipe.error(
            "steps.embed.query", f"is {query!r}",
            "give a point [x, y] in the scene's CRS, {lon: 12.5, lat: 41.9}, or a pixel "
            "{row: 120, col: 64}",
        )  # fmt: skip

"""``geocmid run RECIPE [key=value ...]``: a whole workflow from one YAML recipe."""

from __future__ import annotations

import argparse
from typing import Any

EPILOG = """\
examples:
  geocmid run recipes/quickstart.yaml            # demo data → pretrain → fine-tune → change map
  geocmid run recipes/quickstart.yaml --dry-run  # plan: steps, inputs, windows, memory, time
  geocmid run recipes/landcover.yaml steps.finetune.epochs=10 device=cuda
  geocmid run recipes/change-map.yaml steps.predict.model=runs/x/finetune/checkpoints/best.ckpt
  geocmid run recipes/quickstart.yaml --tiny          # every step in seconds (smoke test)

Overrides are dotted keys into the recipe, values read as YAML. Everything is validated before
anything runs. One run folder per run (run_dir, default runs/RECIPE) with the resolved recipe,
logs/, one folder per step, maps/ (COG, GPKG, QML styles) and report.md. Rerunning the same command
skips the steps whose outputs are complete and resumes an interrupted one.
"""


def register(subparsers: Any) -> None:
    """Add the ``run`` subcommand."""
    from geocmid.cli import HelpFormatter

    parser = subparsers.add_parser(
        "run",
        help="run a workflow recipe (recipes/*.yaml): imagery to map in one command",
        description="Run a recipe: demo data, pretraining, fine-tuning, prediction, report.",
        epilog=EPILOG,
        formatter_class=HelpFormatter,
    )
    parser.add_argument("recipe", help="recipe YAML file (see recipes/)")
    parser.add_argument("overrides", nargs="*", metavar="KEY=VALUE", help="recipe overrides")
    parser.add_argument("--dry-run", action="store_true", help="validate, print the plan, stop")
    parser.add_argument("--tiny", action="store_true", help="profile tiny: seconds per step")
    parser.add_argument("--run-dir", help="run folder (recipe key run_dir)")
    parser.add_argument(
        "--redo", action="append", default=[], metavar="STEP",
        help="rerun STEP even if its outputs are complete (repeatable)",
    )  # fmt: skip
    # KEY=VALUE overrides may also follow the options (`run R --tiny a.b=1`); main() routes them.
    parser.set_defaults(func=handler, trailing_overrides="overrides")


def prepare(args: argparse.Namespace) -> Any:
    """Load, override, validate and resolve the recipe; returns (resolved, facts)."""
    from geocmid.recipes.checks import check_configs, check_data
    from geocmid.recipes.loader import apply_overrides, load_recipe
    from geocmid.recipes.resolve import resolve
    from geocmid.recipes.schema import STEP_ORDER, normalise

    recipe = load_recipe(args.recipe)
    overrides = list(args.overrides)
    if args.run_dir:
        overrides.append(f"run_dir={args.run_dir}")
    apply_overrides(recipe, overrides)
    spec = normalise(recipe, tiny=args.tiny)
    for step in args.redo:
        if step not in spec["steps"]:
            from geocmid.errors import ConfigError, did_you_mean

            raise ConfigError(f"--redo {step}", f"no step '{step}'{did_you_mean(step, STEP_ORDER)}",
                              f"steps of this recipe: {', '.join(spec['steps'])}")  # fmt: skip
    from geocmid.data.paths import gdal_env_scope

    catalog = args.catalog if args.catalog != "data_catalog" or _exists(args.catalog) else None
    res = resolve(recipe, spec, catalog)
    check_configs(res)
    with gdal_env_scope(spec["gdal_env"]):  # the checks read headers (maybe remote) too
        return res, check_data(res)


def _exists(path: str) -> bool:
    from pathlib import Path

    return Path(path).is_dir()


def embed_plan(res: Any, plans: list[Any]) -> list[Any]:
    """``plans`` with the embed step's line (it checks the scene and query, reading headers)."""
    from geocmid.data.paths import gdal_env_scope
    from geocmid.recipes.embed import insert_plan

    with gdal_env_scope(res.spec["gdal_env"]):
        return insert_plan(res, plans)


def handler(args: argparse.Namespace) -> int:
    from geocmid.recipes.calibrate import measuring
    from geocmid.recipes.planner import format_plan, make_plan
    from geocmid.recipes.runner import Runner

    res, facts = prepare(args)
    with measuring(bool(args.dry_run)):  # a real run starts at once; its steps time themselves
        plan = make_plan(res, facts)
    plan = embed_plan(res, plan)
    print(format_plan(res, facts, plan), flush=True)
    if args.dry_run:
        print("\n--dry-run: nothing was run")
        return 0
    print()
    out = Runner(res, redo=args.redo).run()
    print(f"\ndone: {out}")
    return 0

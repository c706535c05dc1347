"""Turn a normalised recipe into concrete paths: run folder, configs, catalog, scenes, models.

Paths of training configs (``steps.*.config``) are relative to the recipe file, so a recipe in
``recipes/`` can name ``finetune-change.yaml`` and run from any folder; every other path (run
folder, catalog, scenes, models) is relative to the working folder, like any command argument.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from geocmid.data.catalog.schema import RASTER_SUFFIXES
from geocmid.recipes.loader import Recipe


@dataclass
class Resolved:
    """Where a run reads and writes.

    Attributes:
        recipe: the loaded recipe (for error locations).
        spec: the normalised recipe (every default filled in).
        run_dir: the run folder.
        catalog: the catalog folder the steps use (None: the global --catalog).
        configs: step name → training config path.
        demo_dir: the demo data folder, when the recipe makes demo data.
    """

    recipe: Recipe
    spec: dict[str, Any]
    run_dir: Path
    catalog: Path | None
    configs: dict[str, Path] = field(default_factory=dict)
    demo_dir: Path | None = None

    @property
    def steps(self) -> dict[str, Any]:
        return self.spec["steps"]

    def step_dir(self, name: str) -> Path:
        return self.run_dir / name

    @property
    def export_stem(self) -> Path:
        """The pretrain step's export, without suffix (``.safetensors`` + ``.json``)."""
        return self.step_dir("pretrain") / "backbone"

    @property
    def maps_dir(self) -> Path:
        return self.run_dir / "maps"

    def weights(self) -> str | None:
        weights = self.steps.get("finetune", {}).get("weights")
        if weights == "pretrain":
            return str(self.export_stem.with_suffix(".safetensors"))
        return weights

    def model(self) -> Path:
        """The predict step's checkpoint (the finetune step's best one, once it exists)."""
        model = self.steps["predict"]["model"]
        if model != "finetune":
            return Path(model)
        ckpts = self.step_dir("finetune") / "checkpoints"
        best = sorted(ckpts.glob("best*.ckpt"))
        if best:
            return best[-1]
        # no validation score yet (e.g. a tiny run): fit falls back to the last checkpoint too
        return ckpts / "last.ckpt" if (ckpts / "last.ckpt").is_file() else ckpts / "best.ckpt"


def resolve(recipe: Recipe, spec: dict[str, Any], global_catalog: str | None) -> Resolved:
    """Concrete paths of ``spec`` (nothing is checked here but the config files' existence)."""
    run_dir = Path(spec["run_dir"])
    demo_dir = None
    if "demo_data" in spec["steps"]:
        demo_dir = Path(spec["steps"]["demo_data"]["out"] or run_dir / "demo")
    if spec["catalog"]:
        catalog: Path | None = Path(spec["catalog"])
    elif demo_dir is not None:
        catalog = demo_dir / "catalog"
    else:
        catalog = Path(global_catalog) if global_catalog else None
    resolved = Resolved(recipe, spec, run_dir, catalog, demo_dir=demo_dir)
    for name in ("pretrain", "finetune"):
        if name not in spec["steps"]:
            continue
        text = spec["steps"][name]["config"]
        candidates = [recipe.path.parent / text, Path(text)]
        found = next((p for p in candidates if p.is_file()), None)
        if found is None:
            raise recipe.error(
                f"steps.{name}.config",
                f"config file '{text}' not found (looked beside the recipe and in the working "
                "folder)",
                "name one of the recipes/pretrain-*.yaml or recipes/finetune-*.yaml files",
            )
        resolved.configs[name] = found
    return resolved


def is_raster_path(text: str) -> bool:
    return text.lower().endswith(RASTER_SUFFIXES) or "/" in text

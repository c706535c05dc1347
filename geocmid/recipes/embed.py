"""The recipe step ``embed``: "where else looks like this?" end to end.

The step embeds every chip of a scene (an imagery entry or a raster file) with a backbone
(:func:`geocmid.inference.embed.embed_scene`: resumable, bounded in memory), finds the ``k``
chips most similar to the query chip (:func:`geocmid.inference.embed.nearest`; the query is a
point, a pixel or a longitude / latitude) and writes a map of the matches:

- ``RUN_DIR/embed/embeddings.parquet``: every chip's embedding (GeoParquet), reused on a rerun
  with the same scene, model and chips (a changed query only searches again);
- ``RUN_DIR/maps/NAME.gpkg``: the top-``k`` chip footprints with ``rank`` (0: the query chip
  itself), ``similarity`` (cosine), ``row`` / ``col`` and ``is_query``;
- ``RUN_DIR/maps/NAME_quicklook.png``: the scene (its RGB bands, stretched) with the matches
  outlined and numbered by rank, the query chip in red.

The model is ``pretrain`` (that step's export), a ``geocmid export`` file, or a backbone name
(``resnet18`` …) with random weights (seeded; statistics from the scene) for smoke runs.
"""

from __future__ import annotations

import json
import math
import os
from pathlib import Path
from typing import Any

import numpy as np

from geocmid.errors import ConfigError, DataError
from geocmid.recipes.resolve import Resolved, is_raster_path

#: Rough CPU seconds per chip pixel of a ResNet-18 forward pass on 2 cores (plan only).
EMBED_S_PER_PX = 2e-5
#: Longest side of the quick-look PNG, px.
QUICKLOOK_PX = 1024


def step(res: Resolved) -> dict[str, Any]:
    return res.steps["embed"]


def embeddings_path(res: Resolved) -> Path:
    return res.step_dir("embed") / "embeddings.parquet"


def embed_outputs(res: Resolved) -> dict[str, Path]:
    """The map of the matches: ``{"matches": GPKG, "quicklook": PNG}``."""
    name = step(res)["name"]
    return {"matches": res.maps_dir / f"{name}.gpkg",
            "quicklook": res.maps_dir / f"{name}_quicklook.png"}  # fmt: skip


def embed_complete(res: Resolved) -> bool:
    return all(p.is_file() for p in embed_outputs(res).values())


def _is_file_model(model: str) -> bool:
    return model.endswith((".safetensors", ".json")) or "/" in model or os.sep in model


def check_model(res: Resolved) -> None:
    """The model setting names the pretrain step (which the recipe has), an existing export,
    or a known backbone."""
    model = step(res)["model"]
    if model == "pretrain":
        return  # schema checked the recipe has a pretrain step
    if _is_file_model(model):
        if not Path(model).with_suffix(".safetensors").is_file():
            raise res.recipe.error("steps.embed.model", f"export '{model}' not found",
                                   "give a `geocmid export` file (.safetensors)")  # fmt: skip
        return
    from geocmid.models.backbones import resolve_name

    try:
        resolve_name(model)
    except ConfigError as error:
        raise res.recipe.error("steps.embed.model", error.problem,
                               "'pretrain', an export (.safetensors) or a backbone name such "
                               "as resnet18") from None  # fmt: skip


def scene_source(res: Resolved) -> Any:
    """The scene as :func:`~geocmid.inference.embed.embed_scene` takes it: a raster path, or
    the source of an imagery entry (read as training reads it)."""
    scene = step(res)["scene"]
    if is_raster_path(scene) or Path(scene).is_file():
        if not Path(scene).is_file():
            raise res.recipe.error("steps.embed.scene", f"scene file '{scene}' not found",
                                   "check the path")  # fmt: skip
        return scene
    from geocmid.data.catalog import Catalog, ImageryEntry
    from geocmid.inference.reader import entry_sources

    entry = Catalog(res.catalog).get(scene)
    if not isinstance(entry, ImageryEntry):
        raise res.recipe.error("steps.embed.scene", f"'{scene}' is a {entry.kind} entry",
                               "name one imagery entry (one date) or a raster file")  # fmt: skip
    return entry_sources(Catalog(res.catalog), [scene])[0]


def _grid(source: Any) -> Any:
    """The :class:`~geocmid.data.sources.Grid` of a source or a raster file (header only)."""
    if hasattr(source, "grid"):
        return source.grid
    from geocmid.data.rasters import open_raster
    from geocmid.data.sources import Grid

    with open_raster(source) as src:
        return Grid(src.crs, src.transform, src.width, src.height)


def _band_count(source: Any) -> int:
    if hasattr(source, "bands"):
        return len(source.bands)
    from geocmid.data.rasters import raster_info

    return raster_info(source).count


def query_point(res: Resolved, grid: Any) -> tuple[float, float]:
    """The recipe's query as a point in the scene's CRS; checked to lie in the scene.

    Raises:
        ConfigError: the point is outside the scene (names the scene's bounds).
    """
    query = step(res)["query"]
    if isinstance(query, list):
        x, y = float(query[0]), float(query[1])
    elif "row" in query:
        x, y = grid.transform * (float(query["col"]) + 0.5, float(query["row"]) + 0.5)
    elif "lon" in query:
        from rasterio.warp import transform

        if grid.crs is None:
            raise res.recipe.error("steps.embed.query", "is a longitude / latitude but the scene "
                                   "has no CRS", "give [x, y] or {row, col}")  # fmt: skip
        xs, ys = transform("EPSG:4326", grid.crs, [float(query["lon"])], [float(query["lat"])])
        x, y = xs[0], ys[0]
    else:
        x, y = float(query["x"]), float(query["y"])
    left, bottom, right, top = grid.bounds
    if not (left <= x <= right and bottom <= y <= top):
        raise res.recipe.error(
            "steps.embed.query",
            f"is at ({x:.1f}, {y:.1f}), outside the scene (bounds {left:.1f}, {bottom:.1f}, "
            f"{right:.1f}, {top:.1f} in its CRS)",
            "give a point in the scene, e.g. its centre "
            f"[{(left + right) / 2:.1f}, {(bottom + top) / 2:.1f}]",
        )
    return x, y


def _pending(res: Resolved) -> str | None:
    """Why the scene cannot be read yet (an earlier step writes it), or None."""
    scene = step(res)["scene"]
    if is_raster_path(scene) or Path(scene).is_file():
        return None
    if res.catalog is not None and not res.catalog.is_dir() and res.demo_dir is not None:
        return f"scene '{scene}': written by step demo_data"
    return None


def embed_plan(res: Resolved) -> Any:
    """The step's line of the dry-run plan (checks the model, scene and query on the way)."""
    from geocmid.recipes.planner import StepPlan

    s = step(res)
    check_model(res)
    model = {"pretrain": "the pretrain step's export"}.get(s["model"], s["model"])
    outputs = embed_outputs(res)
    summary = (f"embeddings of {s['chip']} px chips (stride {s['stride'] or s['chip']}) of "
               f"'{s['scene']}' with {model} → {embeddings_path(res)}; the {s['k']} chips most "
               f"like the query {s['query']} → {outputs['matches']}, "
               f"{outputs['quicklook'].name}")  # fmt: skip
    scene = s["scene"] if is_raster_path(s["scene"]) else f"--entry {s['scene']}"
    if s["model"] == "pretrain":
        command = f"geocmid embed {scene} --model {res.export_stem}.safetensors"
    elif _is_file_model(s["model"]):
        command = f"geocmid embed {scene} --model {s['model']}"
    else:
        command = f"(in Python: random-weight {s['model']}) geocmid embed {scene}"
    command += f" --chip {s['chip']}" + (f" --stride {s['stride']}" if s["stride"] else "")
    command += f" -o {embeddings_path(res)}"
    seconds, memory = 10.0, 1.0
    if _pending(res) is None:
        grid = _grid(scene_source(res))
        query_point(res, grid)
        stride = s["stride"] or s["chip"]
        chips = (max(0, (grid.height - s["chip"]) // stride + 1)
                 * max(0, (grid.width - s["chip"]) // stride + 1))  # fmt: skip
        factor = 1 / 40 if res.spec["device"] != "cpu" else 1
        seconds = 5 + chips * s["chip"] ** 2 * EMBED_S_PER_PX * factor
        memory = 0.8 + grid.width * s["chip"] * 16 * 4 / 1e9  # one strip of chips
        summary += f" ({chips} chips)"
    return StepPlan("embed", summary, [command], embed_complete(res), seconds, memory)


def insert_plan(res: Resolved, plans: list[Any]) -> list[Any]:
    """``plans`` with the embed step's line in its place (before evaluate / report)."""
    if "embed" not in res.steps:
        return plans
    after = [i for i, p in enumerate(plans) if p.name in ("evaluate", "report")]
    at = after[0] if after else len(plans)
    return [*plans[:at], embed_plan(res), *plans[at:]]


# ---- running ------------------------------------------------------------------------------------
def decimated(
    source: Any, card: Any, bands: list[int] | None = None, longest: int = QUICKLOOK_PX
) -> np.ndarray:
    """The scene as ``card`` reads it, every n-th pixel (longest side ≤ ``longest``), float32
    ``[C, h, w]`` with NaN where it has no data; read in strips (memory: one strip)."""
    from geocmid.inference.reader import BlockReader, plan_scenes

    plan = plan_scenes([source], card)
    height, width = plan.grid.height, plan.grid.width
    n = max(1, math.ceil(max(height, width) / longest))
    rows = []
    with BlockReader(plan) as reader:
        for r0 in range(0, height, 256 * n):
            data, valid = reader.read(r0, min(height, r0 + 256 * n), 0, width)
            picked = data[0] if bands is None else data[0][bands]
            picked = picked[:, ::n, ::n].astype(np.float32)
            picked[:, ~valid[::n, ::n]] = np.nan
            rows.append(picked)
    return np.concatenate(rows, axis=1)


def _scene_stats(source: Any, count: int) -> tuple[list[float], list[float]]:
    """Per-band mean and std of the scene's valid pixels (random-weight models need some)."""
    from geocmid.inference.card import ModelCard

    card = ModelCard.from_dict({"bands": list(range(1, count + 1)), "in_chans": count,
                                "mean": [0.0] * count, "std": [1.0] * count,
                                "task": "backbone"})  # raw pixels
    data = decimated(source, card, longest=512).reshape(count, -1)
    mean = np.nan_to_num(np.nanmean(data, axis=1), nan=0.0)
    std = np.nan_to_num(np.nanstd(data, axis=1), nan=1.0)
    return mean.tolist(), np.maximum(std, 1e-6).tolist()


def load_model(res: Resolved, source: Any) -> tuple[Any, Any]:
    """``(backbone, card)`` for the step's ``model`` setting."""
    from geocmid.inference.card import ModelCard
    from geocmid.models.weights import load_backbone

    s = step(res)
    if s["model"] == "pretrain":
        return load_backbone(res.export_stem.with_suffix(".safetensors"))
    if _is_file_model(s["model"]):
        return load_backbone(s["model"])
    import torch

    from geocmid.models.backbones import create_backbone

    count = _band_count(source)
    mean, std = _scene_stats(source, count)
    torch.manual_seed(0)
    backbone = create_backbone(s["model"], count, img_size=s["chip"])
    card = ModelCard.from_dict({
        "bands": list(range(1, count + 1)), "in_chans": count, "mean": mean, "std": std,
        "task": "backbone", "architecture": s["model"], "chip_size": s["chip"],
        "init_weights": "random",
    })  # fmt: skip
    return backbone, card


def run_embed(res: Resolved) -> None:
    """Embed the scene (or reuse its embeddings), search, and write the map of the matches."""
    from geocmid.inference.embed import EmbedSettings, embed_scene, nearest, read_embeddings
    from geocmid.inference.store import fingerprint_model

    s = step(res)
    source = scene_source(res)
    grid = _grid(source)
    point = query_point(res, grid)
    backbone, card = load_model(res, source)
    device = "cuda" if res.spec["device"] == "gpu" else res.spec["device"]
    out = embeddings_path(res)
    settings = {"scene": s["scene"], "model": fingerprint_model(backbone), "chip": s["chip"],
                "stride": s["stride"], "min_valid": s["min_valid"]}  # fmt: skip
    record = out.with_suffix(".settings.json")
    if out.is_file() and record.is_file() and json.loads(record.read_text()) == settings:
        print(f"[embed] embeddings     {out} (reused: same scene, model and chips)", flush=True)
    else:
        record.unlink(missing_ok=True)
        result = embed_scene(
            backbone, card, source, out,
            EmbedSettings(s["chip"], s["stride"] or 0, s["batch_size"], s["min_valid"]),
            device=device, overwrite=True, progress=False,
        )  # fmt: skip
        record.write_text(json.dumps(settings))
        print(f"[embed] embeddings     {out}  ({result.chips} chips x {result.width} values)",
              flush=True)  # fmt: skip
    frame = read_embeddings(out)
    try:
        hits = nearest(frame, point, k=s["k"] + 1)  # the query chip and k matches
    except DataError as error:
        raise res.recipe.error(
            "steps.embed.query",
            f"{error.problem} (only chips with at least {s['min_valid']:.0%} valid pixels are "
            "embedded)",
            "pick a point on valid data, or lower steps.embed.min_valid",
        ) from None
    query_rc = (int(hits["row"].iloc[0]), int(hits["col"].iloc[0]))
    hits["is_query"] = [(int(r), int(c)) == query_rc
                        for r, c in zip(hits["row"], hits["col"], strict=True)]  # fmt: skip
    columns = ["rank", "similarity", "row", "col", "valid_fraction", "is_query",
               "model_fingerprint", "geometry"]  # fmt: skip
    table = hits[columns]
    outputs = embed_outputs(res)
    res.maps_dir.mkdir(parents=True, exist_ok=True)
    tmp = outputs["matches"].with_name(f".{outputs['matches'].stem}.tmp.gpkg")
    tmp.unlink(missing_ok=True)
    table.to_file(tmp, layer=s["name"], driver="GPKG")
    os.replace(tmp, outputs["matches"])
    quicklook(source, card, table, outputs["quicklook"], s["chip"])
    sims = table["similarity"].to_numpy()[1:]
    print(f"[embed] matches        {outputs['matches']}  (query chip + top {len(sims)}, "
          f"similarity {sims.min():.3f}–{sims.max():.3f})", flush=True)  # fmt: skip
    print(f"[embed] quick-look     {outputs['quicklook']}", flush=True)


def _rgb_bands(source: Any, card: Any) -> list[int]:
    """Positions (0-based, among the bands embed reads) of red, green and blue by name; else
    the first three, or the first as grey."""
    source_bands = list(getattr(source, "bands", None) or [])
    names = []
    for b in card.bands:  # names as written, or positions in the source
        if isinstance(b, int) and 0 < b <= len(source_bands):
            names.append(str(source_bands[b - 1]).lower())
        else:
            names.append(str(b).lower())
    if all(c in names for c in ("red", "green", "blue")):
        return [names.index(c) for c in ("red", "green", "blue")]
    return [0, 1, 2] if len(card.bands) >= 3 else [0]


def quicklook(source: Any, card: Any, table: Any, path: Path, chip: int) -> None:
    """The scene (decimated to :data:`QUICKLOOK_PX`, 2–98 % stretch) with the matches outlined
    and numbered by rank, the query chip in red; written under a temporary name, renamed."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.patches import Rectangle

    grid = _grid(source)
    height, width = grid.height, grid.width
    image = decimated(source, card, _rgb_bands(source, card))
    lo, hi = np.nanpercentile(image, 2), np.nanpercentile(image, 98)
    image = np.nan_to_num(np.clip((image - lo) / max(hi - lo, 1e-6), 0, 1), nan=0.0)
    image = image.transpose(1, 2, 0)
    fig, ax = plt.subplots(figsize=(8, 8 * height / max(width, 1)), dpi=100)
    ax.imshow(image[..., 0] if image.shape[2] == 1 else image, cmap="gray",
              extent=(0, width, height, 0))  # fmt: skip
    for row in table.itertuples():
        colour = "red" if row.is_query else "yellow"
        ax.add_patch(Rectangle((row.col, row.row), chip, chip, fill=False, edgecolor=colour,
                               linewidth=2 if row.is_query else 1.2))  # fmt: skip
        ax.text(row.col + 2, row.row + 2, str(row.rank), color=colour, fontsize=8, va="top",
                ha="left", fontweight="bold")  # fmt: skip
    ax.set_title(f"where else looks like this? query chip (red) and its top {len(table) - 1} "
                 "matches by rank")  # fmt: skip
    ax.set_axis_off()
    fig.tight_layout()
    tmp = path.with_name(f".{path.stem}.tmp.png")
    fig.savefig(tmp)
    plt.close(fig)
    os.replace(tmp, path)

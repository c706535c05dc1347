"""The run report: ``RUN/report.md`` with the map, its classes, scores and training curves.

Markdown with relative image links, so it reads on GitHub, in VS Code or any Markdown viewer and
travels with the run folder. Curves are drawn from the commands' own ``metrics.csv`` files.
"""

from __future__ import annotations

import csv
import json
import os
from pathlib import Path
from typing import Any

from geocmid.recipes import steps as S
from geocmid.recipes.checks import Facts
from geocmid.recipes.resolve import Resolved


def _read_csv(path: Path) -> list[dict[str, str]]:
    with path.open() as f:
        return list(csv.DictReader(f))


def _series(rows: list[dict[str, str]], key: str, x: str = "epoch") -> tuple[list, list]:
    pts = [(float(r[x]), float(r[key])) for r in rows if r.get(key) not in (None, "")]
    return [p[0] for p in pts], [p[1] for p in pts]


def plot_curves(csv_path: Path, keys: list[str], out: Path, title: str) -> Path | None:
    """Line plot of ``keys`` of a Lightning ``metrics.csv`` per epoch (None if nothing to plot)."""
    if not csv_path.is_file():
        return None
    rows = _read_csv(csv_path)
    present = [k for k in keys if any(r.get(k) for r in rows)]
    if not present:
        return None
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(present), figsize=(3.2 * len(present), 2.6), squeeze=False)
    for ax, key in zip(axes[0], present, strict=True):
        xs, ys = _series(rows, key)
        ax.plot(xs, ys, marker="o", ms=3)
        ax.set_title(key, fontsize=9)
        ax.set_xlabel("epoch", fontsize=8)
        ax.tick_params(labelsize=7)
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=90)
    plt.close(fig)
    return out


def _rel(path: Path, base: Path) -> str:
    return Path(os.path.relpath(path, base)).as_posix()


def _training_section(res: Resolved, lines: list[str]) -> None:
    figures = res.run_dir / "report_files"
    pre_csv = res.step_dir("pretrain") / "csv" / "version_0" / "metrics.csv"
    if "pretrain" in res.steps:
        png = plot_curves(pre_csv, ["train/loss_epoch", "train/loss_global_epoch",
                                    "train/loss_mim_epoch"], figures / "pretrain.png",
                          "CMID pretraining")  # fmt: skip
        lines += ["## Pretraining (CMID)", ""]
        card = res.export_stem.with_suffix(".json")
        if card.is_file():
            c = json.loads(card.read_text())
            lines.append(
                f"Backbone `{c.get('backbone', c.get('architecture', '?'))}` exported "
                f"to `{_rel(res.export_stem.with_suffix('.safetensors'), res.run_dir)}`."
            )
        if png:
            lines += ["", f"![pretraining curves]({_rel(png, res.run_dir)})"]
        lines.append("")
    if "finetune" in res.steps:
        root = res.step_dir("finetune")
        rows = _read_csv(root / "metrics.csv") if (root / "metrics.csv").is_file() else []
        keys = ["val_loss", "val_change_F1", "val_mIoU", "val_OA", "val_map_50", "val_obb_map_50"]
        png = plot_curves(root / "metrics.csv", keys, figures / "finetune.png", "fine-tuning")
        lines += ["## Fine-tuning", ""]
        last = {}
        for r in rows:
            last.update({k: v for k, v in r.items() if v not in ("", None) and k.startswith("val")})
        shown = [k for k in [*keys, "val_change_precision", "val_change_recall"] if k in last]
        if shown:
            lines += ["| validation metric (last epoch) | value |", "|---|---|"]
            lines += [f"| {k} | {float(last[k]):.3f} |" for k in shown]
        if png:
            lines += ["", f"![fine-tuning curves]({_rel(png, res.run_dir)})"]
        for extra in sorted((root / "reports").glob("*.png")):
            lines += ["", f"![{extra.stem}]({_rel(extra, res.run_dir)})"]
        lines.append("")


def write_report(res: Resolved, facts: Facts, state: dict[str, Any]) -> Path:
    """Write ``RUN/report.md`` from what the steps left in the run folder."""
    spec = res.spec
    title = res.steps["report"]["title"] or spec["description"] or spec["recipe"]
    lines = [f"# {title}", "", f"Recipe `{res.recipe.path}` (profile {spec['profile']}), "
             f"run folder `{res.run_dir}`.", ""]  # fmt: skip
    times = [(n, s.get("seconds")) for n, s in state.items() if s.get("seconds") is not None]
    if times:
        lines += ["| step | seconds |", "|---|---|"] + [f"| {n} | {t:.0f} |" for n, t in times]
        lines.append("")
    if "predict" in res.steps:
        outputs = S.predict_outputs(res, facts.task)
        summary = json.loads(outputs["summary"].read_text()) if outputs["summary"].is_file() else {}
        lines += ["## Map", ""]
        if outputs.get("quicklook") and outputs["quicklook"].is_file():
            lines += [f"![map]({_rel(outputs['quicklook'], res.run_dir)})", ""]
        if summary.get("classes"):
            lines += ["| class | pixels | area (m²) | polygons |", "|---|---|---|---|"]
            for c in summary["classes"]:
                area = c.get("area_m2") or 0  # None for a scene without a CRS
                lines.append(f"| {c['name']} | {c.get('pixels', '')} | {area:.0f} |"
                             f" {c.get('objects', '')} |")  # fmt: skip
            lines.append("")
        lines += ["Open in QGIS (styles load with the layers):", ""]
        for kind, path in outputs.items():
            if path.is_file():
                lines.append(f"- {kind}: `{_rel(path, res.run_dir)}`")
                if path.with_suffix(".qml").is_file() and kind in ("classes", "vectors"):
                    lines.append(f"  (style `{_rel(path.with_suffix('.qml'), res.run_dir)}`)")
        lines.append("")
        evaluation = res.maps_dir / f"{res.steps['predict']['name']}_evaluation.json"
        if evaluation.is_file():
            e = json.loads(evaluation.read_text())
            lines += [f"## Scores against `{e['labels']}`", ""]
            if e.get("scored_area"):
                from geocmid.recipes.evaluate import describe_scored_area

                lines += [describe_scored_area(e["scored_area"]).capitalize() + ".", ""]
            if e.get("warning"):
                lines += [f"**Warning:** {e['warning']}.", ""]
            lines += ["| score | value |", "|---|---|"]
            for key in ("f1", "precision", "recall", "mIoU", "overall_accuracy",
                        "positive_fraction_reference", "positive_fraction_map"):  # fmt: skip
                if key in e:
                    lines.append(f"| {key} | {e[key]:.3f} |")
            lines.append("")
    _training_section(res, lines)
    lines += ["## Files", "", "- resolved recipe: `recipe.yaml`", "- log: `logs/run.log`", ""]
    path = res.run_dir / "report.md"
    tmp = path.with_suffix(".md.tmp")
    tmp.write_text("\n".join(lines))
    tmp.replace(path)
    print(f"[report] {path}", flush=True)
    return path

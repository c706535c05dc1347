"""The task registry: one record per downstream task, read by everything else.

It sits at the bottom of the package (beside ``errors``), so every layer can read it: the model
card (which tasks a card may name), the datamodules, the tasks, inference, workflows, recipes
and the CLI.

The CLI (``geocmid fit`` short names, ``predict --task`` choices), the checkpoint loader
(:func:`geocmid.tasks.task_class`), prediction (which outputs a task writes) and recipes (which
outputs make a step complete) all read :data:`TASKS`; nothing else lists the tasks.

This module imports nothing heavy: classes are named by dotted path and imported on demand.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass

from geocmid.errors import ConfigError, did_you_mean


@dataclass(frozen=True)
class TaskRecord:
    """What geocmid knows about one downstream task.

    Attributes:
        name: the task's short name, as written in model cards (``task``) and configs.
        task_class: dotted path of the Lightning module (a TorchGeo ``BaseTask`` subclass).
        datamodule_class: dotted path of the default datamodule for this task.
        monitor: metric that selects the best checkpoint (higher is better).
        outputs: map products ``geocmid predict`` writes for it (``classes``: class raster,
            ``vectors``: polygons / points / boxes, ``summary``: JSON summary).
        description: one line for ``--help``.
    """

    name: str
    task_class: str
    datamodule_class: str
    monitor: str
    outputs: tuple[str, ...]
    description: str

    @property
    def mode(self) -> str:
        """``"min"`` for a loss, else ``"max"``."""
        return "min" if self.monitor.endswith("loss") else "max"

    def load_task_class(self) -> type:
        """Import and return the task class."""
        return import_dotted(self.task_class)

    def load_datamodule_class(self) -> type:
        """Import and return the default datamodule class."""
        return import_dotted(self.datamodule_class)


TASKS: dict[str, TaskRecord] = {
    record.name: record
    for record in (
        TaskRecord(
            "segmentation",
            "geocmid.tasks.segmentation.SegmentationTask",
            "geocmid.datamodules.SegmentationDataModule",
            "val_mIoU",
            ("classes", "vectors", "summary"),
            "semantic segmentation (land cover, buildings) with smp decoders",
        ),
        TaskRecord(
            "change",
            "geocmid.tasks.change.ChangeTask",
            "geocmid.datamodules.SegmentationDataModule",
            "val_change_F1",
            ("classes", "vectors", "summary"),
            "bitemporal change detection (Siamese or early fusion)",
        ),
        TaskRecord(
            "classification",
            "geocmid.tasks.classification.ClassificationTask",
            "geocmid.datamodules.FeatureChipDataModule",
            "val_OA",
            ("vectors", "summary"),
            "scene classification of chips (points, polygons or image folders)",
        ),
        TaskRecord(
            "detection",
            "geocmid.tasks.detection.DetectionTask",
            "geocmid.datamodules.DetectionDataModule",
            "val_map_50",
            ("vectors", "summary"),
            "object detection (boxes) with torchvision detectors",
        ),
    )
}

#: Task names in registry order (for ``choices=`` in argument parsers).
TASK_NAMES: tuple[str, ...] = tuple(TASKS)


def get_task(name: str, where: str = "task") -> TaskRecord:
    """The record of task ``name``.

    Raises:
        ConfigError: ``name`` is not a registered task (with a did-you-mean).
    """
    if name not in TASKS:
        raise ConfigError(
            where,
            f"unknown task '{name}'{did_you_mean(str(name), list(TASKS))}",
            f"use one of: {', '.join(TASKS)}",
        )
    return TASKS[name]


def import_dotted(path: str) -> type:
    """Import ``package.module.Name`` and return ``Name``."""
    module, _, name = path.rpartition(".")
    return getattr(importlib.import_module(module), name)


def task_of_class_path(class_path: str) -> str | None:
    """Registry name of a task ``class_path`` (full, ``geocmid.tasks.X`` or bare class name),
    or None when it names no registered task."""
    short = str(class_path).rsplit(".", 1)[-1]
    for name, record in TASKS.items():
        if class_path == name or short == record.task_class.rsplit(".", 1)[-1]:
            return name
    return None

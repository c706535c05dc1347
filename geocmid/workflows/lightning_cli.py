""":class:`GeocmidCLI`: the Lightning CLI every geocmid training command runs through.

Import it from :mod:`geocmid.workflows.config` (``from geocmid.workflows.config import
GeocmidCLI``); it lives in its own module so that reading configs does not import Lightning.
"""

from __future__ import annotations

import logging
import warnings
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from lightning.pytorch import LightningDataModule, LightningModule, Trainer
from lightning.pytorch.callbacks import Callback, ModelCheckpoint
from lightning.pytorch.cli import LightningCLI, SaveConfigCallback
from lightning.pytorch.loggers import CSVLogger, TensorBoardLogger
from lightning.pytorch.loggers.csv_logs import ExperimentWriter


def one_log_handler() -> None:
    """Importing ``lightning`` gives its logger a console handler of its own; when the root
    logger has one (the ``geocmid`` command's), remove Lightning's so each line prints once."""
    if not logging.getLogger().handlers:
        return
    for name in ("lightning", "lightning.pytorch", "lightning.fabric"):
        logger = logging.getLogger(name)
        for handler in list(logger.handlers):
            if type(handler) is logging.StreamHandler:
                logger.removeHandler(handler)
        logger.propagate = True


one_log_handler()

#: Trainer defaults of every geocmid run (a config may change all but the sampler).
TRAINER_DEFAULTS: dict[str, Any] = {
    "accelerator": "auto",
    "log_every_n_steps": 10,
    # geocmid's samplers shard by rank themselves; Lightning must not wrap them
    "use_distributed_sampler": False,
}


def monitor_of(model: LightningModule) -> str | None:
    """The metric that selects the best checkpoint of ``model``: the task registry's monitor
    for a registered task (by its ``card_task``), else None (keep the last checkpoint only)."""
    from geocmid.registry import TASKS

    record = TASKS.get(getattr(model, "card_task", "") or "")
    return record.monitor if record else None


def best_checkpoint(
    root: str | Path, monitor: str | None, last_every_n_steps: int = 0
) -> ModelCheckpoint:
    """``checkpoints/best.ckpt`` by ``monitor`` (higher is better unless it is a loss) plus
    ``checkpoints/last.ckpt`` after every epoch (and every ``last_every_n_steps`` steps);
    without a monitor, ``last.ckpt`` only (:class:`~geocmid.tasks.guards.RunCheckpoint`).

    The names are stable: users and recipes point ``geocmid predict`` at ``checkpoints/best.ckpt``.
    """
    from geocmid.tasks.guards import RunCheckpoint

    return RunCheckpoint(
        Path(root) / "checkpoints", monitor=monitor, last_every_n_steps=last_every_n_steps
    )


def show_progress() -> bool:
    """Progress bars only on a terminal, and not with ``--quiet`` (``GEOCMID_CONSOLE``)."""
    import os
    import sys

    if os.environ.get("GEOCMID_CONSOLE") == "quiet":
        return False
    stream = sys.stderr
    return bool(getattr(stream, "isatty", lambda: False)())


class GeocmidCLI(LightningCLI):
    """geocmid's :class:`~lightning.pytorch.cli.LightningCLI`.

    Differences from a plain ``LightningCLI`` (a config that runs here also runs there):

    * ``model`` and ``data`` in subclass mode (``class_path`` / ``init_args``);
    * no automatic ``optimizer`` / ``lr_scheduler`` keys: geocmid tasks build their own
      parameter groups (``model.init_args.lr`` / ``backbone_lr`` / ``scheduler``);
    * trainer defaults :data:`TRAINER_DEFAULTS` (``use_distributed_sampler=False``);
    * when ``trainer.logger`` is unset or ``true``: a CSV logger (``metrics.csv``) and a
      TensorBoard logger writing straight into ``trainer.default_root_dir``;
    * when ``trainer.callbacks`` has no ``ModelCheckpoint``: one keeping
      ``checkpoints/best.ckpt`` by the task registry's monitor plus ``checkpoints/last.ckpt``
      after every epoch (:class:`~geocmid.tasks.guards.RunCheckpoint`; a config listing one
      with ``dirpath: null`` gets the run folder's);
    * a :class:`~geocmid.tasks.guards.TrainingGuard`: an epoch without optimizer steps, a
      non-finite loss or a validation epoch without valid target fails the run;
    * progress bars only on a terminal (:func:`show_progress`);
    * checkpoints streamed to a temporary file and renamed
      (:class:`~geocmid.tasks.guards.FileCheckpointIO`) unless ``trainer.plugins`` names a
      ``CheckpointIO``: Lightning's own holds a second copy of the checkpoint in RAM;
    * a :class:`geocmid.tasks.reports.ReportCallback` (confusion matrices, sample panels) for
      fine-tuning tasks, unless the config lists one;
    * the config is not saved by a callback (``save_config_callback=None``): the workflow writes
      the resolved ``config.yaml`` into the run folder itself.

    Args:
        model_class, datamodule_class: base classes (subclass mode).
        args: the config, as a dict (``{"model": ..., "data": ..., "trainer": ...}``) or a list
            of command-line arguments; None reads ``sys.argv``.
        run: run a subcommand (``fit`` / ``validate`` / ...) taken from ``args``; the workflows
            use ``run=False`` and call the trainer themselves.
        default_callbacks: add the checkpoint and report callbacks described above.
        monitor: metric of the best checkpoint; ``"auto"``: the registry's for the model.
        kwargs: passed to :class:`LightningCLI` (``trainer_defaults`` are merged with ours).
    """

    def __init__(
        self,
        model_class: type[LightningModule] | None = None,
        datamodule_class: type[LightningDataModule] | None = None,
        *,
        args: Any = None,
        run: bool = False,
        default_callbacks: bool = True,
        monitor: str | None = "auto",
        trainer_defaults: dict[str, Any] | None = None,
        save_config_callback: type[SaveConfigCallback] | None = None,
        seed_everything_default: bool | int = True,
        parser_kwargs: dict[str, Any] | None = None,
        **kwargs: Any,
    ) -> None:
        one_log_handler()
        self.default_callbacks = default_callbacks
        self.monitor = monitor
        parser_kwargs = {"exit_on_error": False, **(parser_kwargs or {})}
        if run:  # subcommand parsers take the same options
            flag = {"exit_on_error": parser_kwargs["exit_on_error"]}
            parser_kwargs = {
                **{k: v for k, v in parser_kwargs.items() if k != "exit_on_error"},
                **{s: dict(flag) for s in self.subcommands()},
            }
        super().__init__(
            model_class=model_class or LightningModule,
            datamodule_class=datamodule_class or LightningDataModule,
            subclass_mode_model=True,
            subclass_mode_data=True,
            auto_configure_optimizers=False,
            save_config_callback=save_config_callback,
            trainer_defaults={**TRAINER_DEFAULTS, **(trainer_defaults or {})},
            seed_everything_default=seed_everything_default,
            parser_kwargs=parser_kwargs,
            args=args,
            run=run,
            **kwargs,
        )

    # --------------------------------------------------------------------------------------------
    def parse_arguments(self, parser: Any, args: Any) -> None:
        """As LightningCLI's; a config given as a dict does not warn about ``sys.argv`` (which
        holds the geocmid command's own options)."""
        with warnings.catch_warnings():
            if isinstance(args, Mapping):
                warnings.filterwarnings("ignore", message="LightningCLI's args parameter")
            super().parse_arguments(parser, args)

    def instantiate_trainer(self, **kwargs: Any) -> Trainer:
        """The trainer, with geocmid's loggers and default callbacks filled in."""
        config = dict(self._get(self.config_init, "trainer", default={}) or {})
        root = Path(config.get("default_root_dir") or Path.cwd())
        if "logger" not in kwargs and config.get("logger") in (None, True):
            # metrics.csv and the TensorBoard events straight in the run folder
            # A rerun that resumes from last.ckpt appends to the run's metrics.csv (Lightning's
            # writer would delete it, losing the epochs before the interruption).
            resuming = (root / "checkpoints" / "last.ckpt").is_file()
            kwargs["logger"] = [
                (AppendingCSVLogger if resuming else CSVLogger)(root, name="", version=""),
                TensorBoardLogger(root, name="", version=""),
            ]
        if not show_progress():
            kwargs["enable_progress_bar"] = False
        if "plugins" not in kwargs:
            from lightning.fabric.plugins import CheckpointIO

            from geocmid.tasks.guards import FileCheckpointIO

            plugins = config.get("plugins") or []
            plugins = list(plugins) if isinstance(plugins, list) else [plugins]
            if not any(isinstance(p, CheckpointIO) for p in plugins):
                # checkpoints streamed to disk, not built in RAM first (FileCheckpointIO)
                kwargs["plugins"] = [*plugins, FileCheckpointIO()]
        if self.default_callbacks and "callbacks" not in kwargs:
            callbacks = config.get("callbacks") or []
            callbacks = list(callbacks) if isinstance(callbacks, list) else [callbacks]
            callbacks += self.extra_callbacks(callbacks, root)
            kwargs["callbacks"] = callbacks
        return super().instantiate_trainer(**kwargs)

    def extra_callbacks(self, present: list[Callback], root: Path) -> list[Callback]:
        """Callbacks added to those of the config: a best/last checkpoint unless one is
        configured, and the fine-tuning reports for tasks that have them."""
        from geocmid.tasks.guards import RunCheckpoint, TrainingGuard

        extra: list[Callback] = []
        monitor = monitor_of(self.model) if self.monitor == "auto" else self.monitor
        for i, callback in enumerate(present):
            if isinstance(callback, RunCheckpoint) and callback.dirpath is None:
                wanted = callback.requested_monitor  # a listed RunCheckpoint: the run's folder
                present[i] = best_checkpoint(
                    root, monitor if wanted == "auto" else wanted, callback.last_every_n_steps
                )
            elif type(callback) is ModelCheckpoint and callback.save_last:
                # Lightning's writes last.ckpt at an epoch's end only when the monitored metric
                # improved: a killed run would resume from an older epoch. RunCheckpoint is a
                # ModelCheckpoint that always does (same settings, same state).
                callback.__class__ = RunCheckpoint
                callback.last_every_n_steps = 0  # type: ignore[attr-defined]
                callback.requested_monitor = callback.monitor  # type: ignore[attr-defined]
        if not any(isinstance(c, ModelCheckpoint) for c in present):
            extra.append(best_checkpoint(root, monitor))
        if not any(isinstance(c, TrainingGuard) for c in present):
            extra.append(TrainingGuard())
        from geocmid.tasks.reports import ReportCallback

        wants_reports = callable(getattr(self.model, "report_samples", None))
        if wants_reports and not any(isinstance(c, ReportCallback) for c in present):
            extra.append(ReportCallback())
        return extra


__all__ = ["TRAINER_DEFAULTS", "GeocmidCLI", "best_checkpoint", "monitor_of", "show_progress"]


class _AppendingWriter(ExperimentWriter):
    """Lightning's CSV writer, keeping an existing ``metrics.csv`` and its columns."""

    def _check_log_dir_exists(self) -> None:
        if self._fs.isfile(self.metrics_file_path):
            with self._fs.open(self.metrics_file_path, "r", newline="") as file:
                header = file.readline().strip()
            self.metrics_keys = sorted(k for k in header.split(",") if k)


class AppendingCSVLogger(CSVLogger):
    """A :class:`~lightning.pytorch.loggers.CSVLogger` that appends to the run's
    ``metrics.csv`` instead of replacing it (used when a run resumes from ``last.ckpt``)."""

    @property
    def experiment(self) -> ExperimentWriter:  # type: ignore[override]
        if self._experiment is None:
            self._fs.makedirs(self.root_dir, exist_ok=True)
            self._experiment = _AppendingWriter(log_dir=self.log_dir)
        return self._experiment

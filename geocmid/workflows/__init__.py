"""The workflow layer: one Python API under the command line and the recipes.

``geocmid.workflows.config`` holds the configuration system (Lightning CLI configs, the
``class_path`` allow-list, ``KEY=VALUE`` overrides, :class:`GeocmidCLI`);
``geocmid.workflows.training`` runs fine-tuning and evaluation (:func:`fit`),
``geocmid.workflows.pretrain`` CMID pretraining (:func:`pretrain`), ``geocmid.workflows.export``
the backbone export (:func:`export`), ``geocmid.workflows.predict`` whole-scene prediction
(:func:`predict` of a :class:`PredictRequest`). Nothing here
imports ``geocmid.cli`` or ``geocmid.recipes``; both import from here. Heavy modules (torch,
Lightning) are imported on first use, so ``import geocmid.workflows`` stays instant.
"""

from __future__ import annotations

from typing import Any

_LAZY = {
    "ConfigError": "geocmid.errors",
    "GeocmidCLI": "geocmid.workflows.config",
    "TRUSTED_PREFIXES": "geocmid.workflows.config",
    "apply_overrides": "geocmid.workflows.config",
    "check_class_paths": "geocmid.workflows.config",
    "load_config": "geocmid.workflows.config",
    "parse_overrides": "geocmid.workflows.config",
    "FitResult": "geocmid.workflows.training",
    "fit": "geocmid.workflows.training",
    "PretrainResult": "geocmid.workflows.pretrain",
    "export": "geocmid.workflows.export",
    "PredictRequest": "geocmid.workflows.predict",
    "PredictResult": "geocmid.workflows.predict",
    "predict": "geocmid.workflows.predict",
    "pretrain": "geocmid.workflows.pretrain",
}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'geocmid.workflows' has no attribute '{name}'")


__all__ = sorted(_LAZY)

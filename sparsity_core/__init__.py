"""The science of the study: models, data, optimizers, sparsity measurement and the training loop.

Imports torch and torchvision only (no Ray, Optuna or Parquet), so `train(cfg)` runs in a notebook.
The public names are imported on first use (PEP 562): `sparsity_core.config` alone, as the results
and report code need it, costs no torch import (about 2 s and 650 MB).
"""

from __future__ import annotations

import importlib
import sys
import types
from typing import Any

__all__ = [
    "TrialConfig",
    "DataConfig",
    "ModelConfig",
    "TrainConfig",
    "DatasetError",
    "ImageData",
    "check_dataset",
    "load_dataset",
    "BasicNet",
    "build_model",
    "conv_blocks",
    "dead_by_gamma",
    "filter_stats",
    "EpochMetrics",
    "LayerMetrics",
    "FilterMetrics",
    "PruneMetrics",
    "TrialResult",
    "train",
    "PackedConvNet",
    "can_pack",
    "train_packed",
]

_HOMES = {
    **dict.fromkeys(("TrialConfig", "DataConfig", "ModelConfig", "TrainConfig"), "config"),
    **dict.fromkeys(("DatasetError", "ImageData", "check_dataset", "load_dataset"), "data"),
    **dict.fromkeys(("BasicNet", "build_model", "conv_blocks"), "models"),
    **dict.fromkeys(("dead_by_gamma", "filter_stats"), "sparsity"),
    **dict.fromkeys(("EpochMetrics", "LayerMetrics", "FilterMetrics", "PruneMetrics"), "metrics"),
    **dict.fromkeys(("TrialResult", "train"), "train"),
    **dict.fromkeys(("PackedConvNet", "can_pack", "train_packed"), "packed"),
}


def __getattr__(name: str) -> Any:
    if name not in _HOMES:
        raise AttributeError(f"module 'sparsity_core' has no attribute {name!r}")
    value = globals()[name] = getattr(importlib.import_module(f".{_HOMES[name]}", __name__), name)
    return value


class _Package(types.ModuleType):
    """`sparsity_core.train` stays the training function: loading a submodule binds it to its
    package's attribute of the same name, and `train` is both a submodule and the function."""

    def __setattr__(self, name: str, value: Any) -> None:
        if not (name in _HOMES and isinstance(value, types.ModuleType)):
            super().__setattr__(name, value)


sys.modules[__name__].__class__ = _Package


def __dir__() -> list[str]:
    return sorted([*globals(), *__all__])

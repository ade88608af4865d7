"""The science of the study: models, data, optimizers, sparsity measurement and the training loop.

Imports torch and torchvision only (no Ray, Optuna or Parquet), so `train(cfg)` runs in a notebook.
The public names are imported on first use (PEP 562): `sparsity_core.config` alone, as the results
and report code need it, costs no torch import (about 2 s and 650 MB).
"""

from __future__ import annotations

import importlib
from typing import Any

_HOMES = {
    **dict.fromkeys(("TrialConfig", "DataConfig", "ModelConfig", "TrainConfig", "PruneConfig", "DatasetError"),
                    "config"),
    **dict.fromkeys(("ImageData", "check_dataset", "load_dataset"), "data"),
    **dict.fromkeys(("BasicNet", "build_model", "conv_blocks"), "models"),
    **dict.fromkeys(("dead_by_gamma", "filter_stats"), "sparsity"),
    **dict.fromkeys(("EpochMetrics", "LayerMetrics", "FilterMetrics", "PruneMetrics"), "metrics"),
    **dict.fromkeys(("PackedConvNet", "can_pack", "pack_key"), "packed"),
    **dict.fromkeys(("TrialResult", "train", "train_packed"), "loop"),
}
__all__ = list(_HOMES)


def __getattr__(name: str) -> Any:
    if name not in _HOMES:
        raise AttributeError(f"module 'sparsity_core' has no attribute {name!r}")
    value = globals()[name] = getattr(importlib.import_module(f".{_HOMES[name]}", __name__), name)
    return value


def __dir__() -> list[str]:
    return sorted([*globals(), *__all__])

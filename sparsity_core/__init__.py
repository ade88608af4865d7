"""The science of the study: models, data, optimizers, sparsity measurement and the training loop.

Imports torch and torchvision only (no Ray, Optuna or Parquet), so `train(cfg)` runs in a notebook.
"""

from .config import DataConfig, ModelConfig, TrainConfig, TrialConfig
from .data import DatasetError, ImageData, check_dataset, load_dataset
from .models import BasicNet, build_model, conv_blocks
from .metrics import EpochMetrics, FilterMetrics, LayerMetrics, PruneMetrics
from .packed import PackedConvNet, can_pack, pack_key
from .sparsity import dead_by_gamma, filter_stats
from .train import TrialResult, train, train_packed

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
    "pack_key",
    "train_packed",
]

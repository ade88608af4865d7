"""Remedies for collapsed filters, as one `Remedy` interface the training loop calls.

`none` changes nothing. Each remedy is looked up by name in `REMEDIES`.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn

from .config import TrialConfig
from .data import ImageData

__all__ = ["Remedy", "REMEDIES", "build_remedy"]


class Remedy:
    """Hooks of the training loop; the base class is the `none` remedy."""

    def configure(self, cfg: TrialConfig) -> TrialConfig:
        """The config actually trained (a remedy may set, e.g., the activation)."""
        return cfg

    def prepare_model(self, model: nn.Module) -> nn.Module:
        """Called once, before the optimizer is built."""
        return model

    def after_epoch(
        self, model: nn.Module, optimizer: torch.optim.Optimizer, epoch: int, data: ImageData
    ) -> dict[str, int] | None:
        """Called after each epoch's training steps; returns filters revived per layer, or None."""
        return None


REMEDIES: dict[str, Callable[[TrialConfig], Remedy]] = {
    "none": lambda cfg: Remedy(),
}


def build_remedy(cfg: TrialConfig) -> Remedy:
    return REMEDIES[cfg.train.remedy](cfg)

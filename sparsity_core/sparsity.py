"""Dead filters, as the paper counts them, and feature universality.

- dead by gamma: |gamma| < 1e-3 for the filter's BN scale;
- dead by activation: the filter's maximum activation (after BN and the activation function) over
  the whole training set, in eval mode, without augmentation, in fp32, is < 1e-12;
- universality: the fraction of training images on which the filter activates (its maximum over
  the image's spatial positions exceeds the same 1e-12).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from .data import BatchLoader, ImageData
from .models import conv_blocks

__all__ = ["GAMMA_THRESHOLD", "ACT_THRESHOLD", "LayerFilters", "dead_by_gamma", "filter_stats"]

GAMMA_THRESHOLD = 1e-3
ACT_THRESHOLD = 1e-12


def dead_by_gamma(model: nn.Module, threshold: float = GAMMA_THRESHOLD) -> dict[str, torch.Tensor]:
    """Per layer, a 0-d tensor counting filters with |gamma| < threshold (stays on the device)."""
    return {name: (block.bn.weight.detach().abs() < threshold).sum() for name, block in conv_blocks(model)}


@dataclass(frozen=True)
class LayerFilters:
    """Per-filter measurements of one conv layer, as CPU float32 tensors of length n_filters."""

    gamma: torch.Tensor
    beta: torch.Tensor
    max_act: torch.Tensor | None = None
    universality: torch.Tensor | None = None

    @property
    def dead_act(self) -> torch.Tensor | None:
        return None if self.max_act is None else self.max_act < ACT_THRESHOLD


@torch.no_grad()
def filter_stats(
    model: nn.Module, data: ImageData | None = None, batch_size: int = 1000
) -> dict[str, LayerFilters]:
    """Per-filter gamma and beta; with `data`, also max activation and universality over the
    training set (one eval-mode pass, no augmentation, autocast off so values stay fp32)."""
    blocks = dict(conv_blocks(model))
    max_act: dict[str, torch.Tensor] = {}
    active: dict[str, torch.Tensor] = {}
    if data is not None:
        hooks = []

        def record(name: str):
            def hook(_module: nn.Module, _inputs: tuple, out: torch.Tensor) -> None:
                per_image = out.float().amax(dim=(2, 3))  # [B, C]
                batch_max = per_image.amax(dim=0)
                max_act[name] = torch.maximum(max_act[name], batch_max) if name in max_act else batch_max
                hits = (per_image > ACT_THRESHOLD).sum(dim=0)
                active[name] = active[name] + hits if name in active else hits
            return hook

        for name, block in blocks.items():
            hooks.append(block.register_forward_hook(record(name)))
        was_training = model.training
        model.eval()
        try:
            device_type = data.train_x.device.type
            with torch.autocast(device_type, enabled=False):
                for x, _ in BatchLoader(data, "train", batch_size, shuffle=False, flip=False):
                    model(x)
        finally:
            model.train(was_training)
            for h in hooks:
                h.remove()
    n_images = len(data.train_y) if data is not None else 0
    return {
        name: LayerFilters(
            gamma=block.bn.weight.detach().float().cpu(),
            beta=block.bn.bias.detach().float().cpu(),
            max_act=max_act[name].cpu() if name in max_act else None,
            universality=(active[name].float() / n_images).cpu() if name in active else None,
        )
        for name, block in blocks.items()
    }

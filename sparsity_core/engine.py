"""What a training step is for one trial (`SoloEngine`) and for a pack of trials (`PackedEngine`).

The one loop (`sparsity_core.loop`) sees an `Engine`: the model that trains, torch's optimizer
whose state a checkpoint holds, each trial's LR factors, the step (one batch per trial in, each
trial's loss out, no device sync) and each trial's model as a plain ConvNet. Everything else a trial
does (setup, schedule, measurement, report, checkpoints, divergence, remedies) is the loop's.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Protocol

import torch
import torch.nn.functional as F
from torch import nn

from .config import TrainConfig, TrialConfig
from .optim import build_optimizer, regularize_, set_lr
from .packed import PackedConvNet, PackedOptimizer, pack_refusal
from .remedies import Remedy

__all__ = ["Batch", "Engine", "SoloEngine", "PackedEngine", "training_step", "packed_training_step"]

Batch = tuple[torch.Tensor, torch.Tensor]  # images [B, C, H, W], labels [B]
Step = Callable[[Sequence[Batch]], torch.Tensor]


class Engine(Protocol):
    """How N trials (1 for a solo trial) train together; built from their initialised models."""

    model: nn.Module  # what trains: the trial's ConvNet, or the pack's PackedConvNet
    optimizer: torch.optim.Optimizer  # torch's own; with `model`, the state a checkpoint holds
    step: Step  # one batch per trial -> each trial's training loss [N], on the device

    def __init__(self, models: Sequence[nn.Module], cfgs: Sequence[TrainConfig], device: torch.device) -> None:
        """From the trials' initialised models (on `device`) and their training settings."""

    @staticmethod
    def refusal(remedies: Sequence[Remedy], run_cfgs: Sequence[TrialConfig]) -> str | None:
        """None when these trials (their remedies and configured settings) can train on this
        engine, else why not."""

    def set_lr_factors(self, factors: Sequence[float]) -> None:
        """Each trial's LR multiplier (lr_t / lr_base) for the coming steps."""

    def trial(self, i: int) -> nn.Module:
        """Trial i as a plain ConvNet, for the remedy hooks and measurement."""


def _step_parts(
    model: nn.Module, update: Callable[[], object], cfg: TrainConfig, device: torch.device
) -> tuple[Callable[[torch.Tensor], torch.Tensor], Callable[[], object], torch.autocast]:
    """The forward and the update, compiled with `cfg.compile` (the update alone is ~20% of a small
    model's step on CPU), and the step's autocast (bf16 on CUDA when asked)."""
    if cfg.compile:
        model, update = torch.compile(model), torch.compile(update)
    autocast = torch.autocast(device.type, dtype=torch.bfloat16,
                              enabled=device.type == "cuda" and cfg.precision == "bf16")
    return model, update, autocast


def training_step(
    model: nn.Module, optimizer: torch.optim.Optimizer, cfg: TrainConfig, device: torch.device
) -> Callable[[torch.Tensor, torch.Tensor, float], torch.Tensor]:
    """`step(x, y, lr_factor) -> loss` for one trial's batch: forward, backward, the regularizer's
    own part, torch's update."""
    forward, update, autocast = _step_parts(model, optimizer.step, cfg, device)

    def step(x: torch.Tensor, y: torch.Tensor, factor: float) -> torch.Tensor:
        with autocast:
            loss = F.cross_entropy(forward(x), y)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        regularize_(optimizer, cfg, factor)
        update()
        return loss.detach()

    return step


def packed_training_step(model: PackedConvNet, optimizer: PackedOptimizer, cfg: TrainConfig,
                         device: torch.device) -> Step:
    """`step(batches) -> losses [N]` for a pack: one forward and backward for all its trials. With
    `cfg.compile` the forward and torch's own update are compiled; the per-trial scaling is not."""
    forward, update, autocast = _step_parts(model, optimizer.optimizer.step, cfg, device)
    alive = torch.ones(model.n, dtype=torch.bool, device=device)  # finite loss so far, kept on the device

    def step(batches: Sequence[Batch]) -> torch.Tensor:
        x = torch.cat([b[0] for b in batches], dim=1)  # [B, N*Cin, H, W]
        y = torch.stack([b[1] for b in batches], dim=1)  # [B, N]
        with autocast:
            # [B, classes, N] against [B, N]: each trial's mean cross-entropy, [N]
            losses = F.cross_entropy(forward(x).transpose(1, 2), y, reduction="none").mean(dim=0)
        alive.logical_and_(losses.isfinite())
        model.zero_grad(set_to_none=True)
        # Summed, each trial's gradients are its solo gradients. A diverged trial's loss is masked
        # out so the sum stays finite; no layer mixes trials, so its NaNs stay in its own slices.
        torch.where(alive, losses, 0.0).sum().backward()
        optimizer.step(update)
        return losses.detach()

    return step


class SoloEngine:
    """One trial: its model and torch's own optimizer (`build_optimizer` + `regularize_`)."""

    def __init__(self, models: Sequence[nn.Module], cfgs: Sequence[TrainConfig], device: torch.device) -> None:
        (model,), (cfg,) = models, cfgs
        self.model = model.to(memory_format=torch.channels_last) if device.type == "cuda" else model
        self.optimizer = build_optimizer(self.model, cfg)
        self._factor = 1.0
        one = training_step(self.model, self.optimizer, cfg, device)
        self.step: Step = lambda batches: one(*batches[0], self._factor)

    @staticmethod
    def refusal(remedies: Sequence[Remedy], run_cfgs: Sequence[TrialConfig]) -> str | None:
        return None if len(run_cfgs) == 1 else f"one trial at a time, not {len(run_cfgs)}"

    def set_lr_factors(self, factors: Sequence[float]) -> None:
        (self._factor,) = factors
        set_lr(self.optimizer, self._factor)

    def trial(self, i: int) -> nn.Module:
        return self.model  # the live model: a remedy hook changes what trains


class PackedEngine:
    """Trials of one architecture as one `PackedConvNet`, each updated by `PackedOptimizer`.

    A trial's model is a copy unpacked from the pack, which is why only remedies that just
    configure a trial may pack (`Remedy.only_configures`).
    """

    def __init__(self, models: Sequence[nn.Module], cfgs: Sequence[TrainConfig], device: torch.device) -> None:
        model = PackedConvNet(models)
        self.model = model.to(memory_format=torch.channels_last) if device.type == "cuda" else model
        packed = PackedOptimizer(self.model, cfgs)
        self.optimizer = packed.optimizer
        self.set_lr_factors = packed.set_lr_factors
        self.step = packed_training_step(self.model, packed, cfgs[0], device)

    @staticmethod
    def refusal(remedies: Sequence[Remedy], run_cfgs: Sequence[TrialConfig]) -> str | None:
        reason = pack_refusal(remedies, run_cfgs)
        return None if reason is None else f"cannot pack these trials: {reason}"

    def trial(self, i: int) -> nn.Module:
        return self.model.unpack(i)

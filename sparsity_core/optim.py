"""Optimizers by name with the paper's base LRs, BN gamma/beta param groups, regularizers, LR schedule.

Regularizers (lambda = `strength`):
- `l2`: lambda * p enters the gradient (the optimizer's coupled `weight_decay`), so adaptive methods
  rescale it along with the loss gradient: the mechanism behind implicit sparsity.
- `wd`: decoupled decay scaled with the LR schedule but not with the LR itself:
  p <- p * (1 - lambda * lr_t / lr_base) each step (the paper's reading, not AdamW's).
- `l1_gamma`: lambda * sign(gamma) added to BN gamma's gradient (network slimming), nothing else.
- `none`.
All parameters are regularized, BN gamma and beta included, as in the paper. Each regularizer is
its `Penalty` terms (`REGULARIZERS`), applied by `build_optimizer` + `regularize_` for one trial and
by `sparsity_core.packed.PackedOptimizer` for each trial of a pack.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from .config import PAPER_LRS, TrainConfig

__all__ = ["OptimizerSpec", "OPTIMIZERS", "Penalty", "REGULARIZERS", "penalty", "param_groups", "group_lrs",
           "build_optimizer", "lr_factor", "set_lr", "regularize_"]


@dataclass(frozen=True)
class OptimizerSpec:
    cls: Callable[..., torch.optim.Optimizer]
    lr: float  # the paper's base LR for this optimizer (config.PAPER_LRS)
    kwargs: dict[str, Any] = field(default_factory=dict)
    # Takes `capturable=True`, which keeps its step counter on the device so that a step captured
    # in a CUDA graph (sparsity_core.engine) counts on replay. The others are graph-safe at a
    # constant LR as they are: SGD keeps no counter; Adagrad's stays on the host and enters the
    # update only through lr_decay, 0 here (a graphed run's checkpoints keep its `step` at 0).
    capturable: bool = False


# Each update is lr times a function of the gradients alone (the parameter's value enters only
# through weight_decay): packs run these classes at lr=1 and scale the update per trial
# (sparsity_core.packed; tests/test_packed.py checks every entry against its solo step).
# Every state tensor they create at their first step starts at zero (SGD's momentum buffer starts
# as the first gradient, which is what a zero buffer gives without dampening): a captured step's
# warm-up is undone by zeroing them (tests/test_graph.py checks every entry).
OPTIMIZERS: dict[str, OptimizerSpec] = {
    "sgd": OptimizerSpec(torch.optim.SGD, PAPER_LRS["sgd"], {"momentum": 0.9}),
    "adam": OptimizerSpec(torch.optim.Adam, PAPER_LRS["adam"], {"betas": (0.9, 0.99), "eps": 1e-8}, capturable=True),
    "amsgrad": OptimizerSpec(torch.optim.Adam, PAPER_LRS["amsgrad"],
                             {"betas": (0.9, 0.99), "eps": 1e-8, "amsgrad": True}, capturable=True),
    "adamax": OptimizerSpec(torch.optim.Adamax, PAPER_LRS["adamax"], capturable=True),
    "rmsprop": OptimizerSpec(torch.optim.RMSprop, PAPER_LRS["rmsprop"], capturable=True),
    "adagrad": OptimizerSpec(torch.optim.Adagrad, PAPER_LRS["adagrad"]),
    "adadelta": OptimizerSpec(torch.optim.Adadelta, PAPER_LRS["adadelta"], {"rho": 0.9, "eps": 1e-6}, capturable=True),
}


@dataclass(frozen=True)
class Penalty:
    """What a regularizer does in one step, for one trial."""

    l2: float = 0.0  # l2 * p added to every gradient (the optimizer's coupled weight_decay)
    decay: float = 1.0  # every parameter multiplied by this before the update
    l1_gamma: float = 0.0  # l1_gamma * sign(gamma) added to BN gamma's gradient


# regularizer -> its terms, given lambda (`strength`) and the LR multiplier lr_t / lr_base
REGULARIZERS: dict[str, Callable[[float, float], Penalty]] = {
    "none": lambda strength, factor: Penalty(),
    "l2": lambda strength, factor: Penalty(l2=strength),
    "wd": lambda strength, factor: Penalty(decay=1.0 - strength * factor),
    "l1_gamma": lambda strength, factor: Penalty(l1_gamma=strength),
}


def penalty(cfg: TrainConfig, factor: float) -> Penalty:
    return REGULARIZERS[cfg.reg](cfg.strength, factor)


def param_groups(model: nn.Module) -> dict[str, list[nn.Parameter]]:
    groups: dict[str, list[nn.Parameter]] = {"weights": [], "gamma": [], "beta": []}
    for module in model.modules():
        if isinstance(module, nn.modules.batchnorm._BatchNorm):
            groups["gamma"].append(module.weight)
            groups["beta"].append(module.bias)
        else:
            groups["weights"].extend(module.parameters(recurse=False))
    return groups


def group_lrs(cfg: TrainConfig) -> dict[str, float]:
    """Each param group's LR before the schedule: the base LR (`lr`, else the paper's for the
    optimizer), times gamma_lr_scale / beta_lr_scale for BN gamma / beta."""
    return {"weights": cfg.base_lr, "gamma": cfg.base_lr * cfg.gamma_lr_scale, "beta": cfg.base_lr * cfg.beta_lr_scale}


def build_optimizer(model: nn.Module, cfg: TrainConfig) -> torch.optim.Optimizer:
    """Three param groups, named by `group["name"]`: weights, gamma (LR x gamma_lr_scale), beta."""
    spec = OPTIMIZERS[cfg.optimizer]
    lrs = group_lrs(cfg)
    groups = [
        {"name": name, "params": params, "lr": lrs[name], "base_lr": lrs[name]}
        for name, params in param_groups(model).items()
        if params
    ]
    return spec.cls(groups, lr=lrs["weights"], weight_decay=penalty(cfg, 1.0).l2, **spec.kwargs)


def lr_factor(cfg: TrainConfig, epoch: int) -> float:
    """Multiplier on the base LR during 0-based `epoch` (step schedule over the rescaled milestones)."""
    return cfg.lr_decay ** sum(epoch >= m for m in cfg.milestones)


def set_lr(optimizer: torch.optim.Optimizer, factor: float) -> None:
    for group in optimizer.param_groups:
        group["lr"] = group["base_lr"] * factor


@torch.no_grad()
def regularize_(optimizer: torch.optim.Optimizer, cfg: TrainConfig, factor: float) -> None:
    """The regularizer's part that the optimizer's own `weight_decay` does not do; call between
    backward() and step(). `factor` is the current LR multiplier (lr_t / lr_base)."""
    terms = penalty(cfg, factor)
    if terms.decay != 1.0:
        torch._foreach_mul_([p for g in optimizer.param_groups for p in g["params"]], terms.decay)
    if terms.l1_gamma != 0.0:
        for group in optimizer.param_groups:
            if group["name"] == "gamma":
                for p in group["params"]:
                    if p.grad is not None:
                        p.grad.add_(torch.sign(p), alpha=terms.l1_gamma)

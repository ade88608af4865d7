"""Optimizers by name with the paper's base LRs, BN gamma/beta param groups, regularizers, LR schedule.

Regularizers (lambda = `strength`):
- `l2`: lambda * p enters the gradient (the optimizer's coupled `weight_decay`), so adaptive methods
  rescale it along with the loss gradient: the mechanism behind implicit sparsity.
- `wd`: decoupled decay scaled with the LR schedule but not with the LR itself:
  p <- p * (1 - lambda * lr_t / lr_base) each step (the paper's reading, not AdamW's).
- `l1_gamma`: lambda * sign(gamma) added to BN gamma's gradient (network slimming), nothing else.
- `none`.
All parameters are regularized, BN gamma and beta included, as in the paper.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from .config import PAPER_LRS, TrainConfig

__all__ = ["OptimizerSpec", "OPTIMIZERS", "param_groups", "build_optimizer", "lr_factor", "set_lr", "regularize_"]


@dataclass(frozen=True)
class OptimizerSpec:
    cls: Callable[..., torch.optim.Optimizer]
    lr: float  # the paper's base LR for this optimizer (config.PAPER_LRS)
    kwargs: dict[str, Any] = field(default_factory=dict)


OPTIMIZERS: dict[str, OptimizerSpec] = {
    "sgd": OptimizerSpec(torch.optim.SGD, PAPER_LRS["sgd"], {"momentum": 0.9}),
    "adam": OptimizerSpec(torch.optim.Adam, PAPER_LRS["adam"], {"betas": (0.9, 0.99), "eps": 1e-8}),
    "amsgrad": OptimizerSpec(torch.optim.Adam, PAPER_LRS["amsgrad"], {"betas": (0.9, 0.99), "eps": 1e-8, "amsgrad": True}),
    "adamax": OptimizerSpec(torch.optim.Adamax, PAPER_LRS["adamax"]),
    "rmsprop": OptimizerSpec(torch.optim.RMSprop, PAPER_LRS["rmsprop"]),
    "adagrad": OptimizerSpec(torch.optim.Adagrad, PAPER_LRS["adagrad"]),
    "adadelta": OptimizerSpec(torch.optim.Adadelta, PAPER_LRS["adadelta"], {"rho": 0.9, "eps": 1e-6}),
}


def param_groups(model: nn.Module) -> dict[str, list[nn.Parameter]]:
    groups: dict[str, list[nn.Parameter]] = {"weights": [], "gamma": [], "beta": []}
    for module in model.modules():
        if isinstance(module, nn.modules.batchnorm._BatchNorm):
            groups["gamma"].append(module.weight)
            groups["beta"].append(module.bias)
        else:
            groups["weights"].extend(module.parameters(recurse=False))
    return groups


def build_optimizer(model: nn.Module, cfg: TrainConfig) -> torch.optim.Optimizer:
    """Three param groups, named by `group["name"]`: weights, gamma (LR x gamma_lr_scale), beta."""
    spec = OPTIMIZERS[cfg.optimizer]
    base_lr = cfg.lr if cfg.lr is not None else spec.lr
    scales = {"weights": 1.0, "gamma": cfg.gamma_lr_scale, "beta": cfg.beta_lr_scale}
    coupled = cfg.strength if cfg.reg == "l2" else 0.0
    groups = [
        {"name": name, "params": params, "lr": base_lr * scales[name], "base_lr": base_lr * scales[name]}
        for name, params in param_groups(model).items()
        if params
    ]
    return spec.cls(groups, lr=base_lr, weight_decay=coupled, **spec.kwargs)


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
    if cfg.strength == 0 or cfg.reg in ("none", "l2"):
        return
    if cfg.reg == "wd":
        params = [p for g in optimizer.param_groups for p in g["params"]]
        torch._foreach_mul_(params, 1.0 - cfg.strength * factor)
    elif cfg.reg == "l1_gamma":
        for group in optimizer.param_groups:
            if group["name"] == "gamma":
                for p in group["params"]:
                    if p.grad is not None:
                        p.grad.add_(torch.sign(p), alpha=cfg.strength)

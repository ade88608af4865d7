"""Remedies for collapsed filters, as one `Remedy` interface the training loop calls.

Each remedy is looked up by name in `REMEDIES` (the `remedy` setting):
- `none`: changes nothing.
- `leaky_relu`: the activation becomes LeakyReLU (the configured `negative_slope`); the paper's
  supplement finds it lowers sparsity only slightly.
- `gamma_lr_scale`: BN gamma trains at 0.1 x the LR (the paper's remedy), unless the config already
  sets its own scale.
  These two only change settings (`config.REMEDY_SETTINGS`, applied by `TrialConfig.as_trained`), so
  they are the base `Remedy` here and a results row's settings show what they trained.
- `revive`: RandomOut-style; every `revive_every` epochs each filter dead by gamma is re-initialised
  (see `revive_dead_filters`).
- `psbn`: this project's reading of post-shifted BN (see `ShiftCompensatedBN`); every
  `revive_every` epochs collapsed filters are shifted back into the trainable region.

`revive` and `psbn` act after every `revive_every`-th epoch except the last (a filter re-initialised
then would be measured untrained). `after_epoch` returns, per layer, the filters revived (`revive`)
or newly shifted (`psbn`) on the epochs where the remedy acted (the `revived` column), and None on
the others. `acted_on` gives the filters revived or shifted so far, whose function the end of the
trial measures (`sparsity_core.sparsity.functional`): a filter is only recovered if it does something.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from .config import TrialConfig
from .data import ImageData
from .models import conv_blocks
from .sparsity import GAMMA_THRESHOLD

__all__ = [
    "Remedy",
    "ReviveRemedy",
    "PsbnRemedy",
    "ShiftCompensatedBN",
    "revive_dead_filters",
    "REMEDIES",
    "build_remedy",
    "configured",
    "PSBN_SHIFT",
]

# Pre-activation given to a shifted filter's trainable branch: one standard deviation of a fresh
# filter's pre-activation (gamma init 1), so with |gamma| < 1e-3 it stays positive for |x_hat| < 1000.
PSBN_SHIFT = 1.0


class Remedy:
    """Hooks of the training loop; the base class is the `none` remedy (and those that only set
    settings, see the module doc)."""

    def prepare_model(self, model: nn.Module) -> nn.Module:
        """Called once, before the optimizer is built."""
        return model

    def after_epoch(
        self, model: nn.Module, optimizer: torch.optim.Optimizer, epoch: int, data: ImageData
    ) -> dict[str, int] | None:
        """Called after each epoch's training steps; returns filters revived (or shifted) per layer
        on the epochs where the remedy acted, else None."""
        return None

    def acted_on(self, model: nn.Module) -> dict[str, torch.Tensor] | None:
        """Per layer, a bool mask (on the CPU) of the filters revived or shifted so far; None for a
        remedy that acts on no filter."""
        return None

    def state_dict(self) -> dict[str, Any]:
        """What the remedy keeps between epochs beyond the model (a checkpoint holds it)."""
        return {}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Continue from `state_dict()`'s output."""


def _rows(mask: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """A per-filter bool mask [C] shaped to broadcast over a tensor [C, ...] (no device sync)."""
    return mask.view(-1, *([1] * (like.dim() - 1)))


def _reset_optimizer_rows(
    optimizer: torch.optim.Optimizer, param: torch.Tensor, mask: torch.Tensor, group: dict[str, Any]
) -> None:
    """Give the filters in `mask` the optimizer state of a parameter that has not trained yet.

    Every state tensor shaped like the parameter is per-element history (exp_avg, exp_avg_sq,
    max_exp_avg_sq, momentum_buffer, square_avg, acc_delta, exp_inf, ...) and starts at 0, except
    Adagrad's `sum`, which starts at `initial_accumulator_value`. The scalar `step` is shared by the
    whole tensor and is left alone.
    """
    for key, value in optimizer.state.get(param, {}).items():
        if isinstance(value, torch.Tensor) and value.shape == param.shape:
            start = group.get("initial_accumulator_value", 0.0) if key == "sum" else 0.0
            value.masked_fill_(_rows(mask, value), start)


@torch.no_grad()
def revive_dead_filters(
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    *,
    gamma_init: float = 1.0,
    beta_init: float = 0.0,
    threshold: float = GAMMA_THRESHOLD,
) -> dict[str, torch.Tensor]:
    """Re-initialise every filter with |gamma| < threshold, as `models.init_weights` would; returns
    per layer (every layer) the bool mask of the filters revived, on the model's device.

    A revived filter gets fresh Xavier-uniform (ReLU gain) conv weights, gamma_init / beta_init, BN
    running statistics 0 / 1, and fresh optimizer state for those rows. The next layer's weights
    for its channel are left as they are, as in RandomOut.
    """
    group_of = {id(p): group for group in optimizer.param_groups for p in group["params"]}
    gain = nn.init.calculate_gain("relu")
    dead: dict[str, torch.Tensor] = {}
    for name, block in conv_blocks(model):
        conv, bn = block.conv, block.bn
        mask = bn.weight.abs() < threshold
        # Drawn for the whole tensor so the fans, hence the bound, are those of the layer.
        fresh = nn.init.xavier_uniform_(torch.empty_like(conv.weight), gain=gain)
        conv.weight.copy_(torch.where(_rows(mask, conv.weight), fresh, conv.weight))
        bn.weight.masked_fill_(mask, gamma_init)
        bn.bias.masked_fill_(mask, beta_init)
        bn.running_mean.masked_fill_(mask, 0.0)
        bn.running_var.masked_fill_(mask, 1.0)
        for param in (conv.weight, bn.weight, bn.bias):
            _reset_optimizer_rows(optimizer, param, mask, group_of[id(param)])
        dead[name] = mask
    return dead


def _acts(epoch: int, every: int, last: int) -> bool:
    return epoch % every == 0 and epoch < last


class ReviveRemedy(Remedy):
    def __init__(self, every: int, last: int, gamma_init: float = 1.0, beta_init: float = 0.0):
        self.every, self.last, self.gamma_init, self.beta_init = every, last, gamma_init, beta_init
        self.revived: dict[str, torch.Tensor] = {}  # per layer, every filter revived so far (CPU)

    def after_epoch(
        self, model: nn.Module, optimizer: torch.optim.Optimizer, epoch: int, data: ImageData
    ) -> dict[str, int] | None:
        if not _acts(epoch, self.every, self.last):
            return None
        revived = revive_dead_filters(model, optimizer, gamma_init=self.gamma_init, beta_init=self.beta_init)
        flat = torch.cat(list(revived.values())).cpu()  # one device sync
        masks = dict(zip(revived, flat.split([mask.numel() for mask in revived.values()]), strict=True))
        for name, mask in masks.items():
            self.revived[name] = self.revived[name] | mask if name in self.revived else mask
        return {name: int(mask.sum()) for name, mask in masks.items()}

    def acted_on(self, model: nn.Module) -> dict[str, torch.Tensor] | None:
        sizes = {name: block.bn.num_features for name, block in conv_blocks(model)}
        return {name: self.revived.get(name, torch.zeros(n, dtype=torch.bool)) for name, n in sizes.items()}

    def state_dict(self) -> dict[str, Any]:
        return {"revived": dict(self.revived)}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.revived = dict(state["revived"])


class ShiftCompensatedBN(nn.BatchNorm2d):
    """BatchNorm2d with its activation phi inside and a frozen post-activation compensation: this
    project's reading of psBN ("post-shifted BN", Zhou et al., arXiv:2001.11216).

    The paper's formula was not available to us (only its abstract: psBN "has the same
    representation ability as BN while being able to automatically make BN parameters trainable
    again as they saturate"), so this is our construction with those two properties, not theirs.

    Per filter, with x_hat the normalized conv response (batch statistics in training, running ones
    in eval), trainable gamma (`weight`), beta (`bias`) and buffers s (`shift`), g0
    (`frozen_weight`), b0 (`frozen_bias`), all 0 until the filter is shifted:

        out = phi(gamma * x_hat + beta + s) - phi(g0 * x_hat + s) + phi(g0 * x_hat + b0)

    Unshifted (s = g0 = b0 = 0) this is exactly phi(BN(x)). A filter collapses when gamma ~ 0 and
    beta <= 0: phi(gamma * x_hat + beta) is (about) 0 on every input and, under ReLU, gamma, beta and
    its conv weights get (about) no gradient. `shift_collapsed_` copies such a filter's gamma into g0
    (gamma keeps its value), moves its beta into b0 (the trainable beta is re-centred at 0) and sets
    s = PSBN_SHIFT. The first two terms then cancel exactly, so the output is unchanged on every
    input, in both modes, yet the trainable branch now sits in phi's linear region: gamma and beta
    get gradient at once, the conv weights as soon as gamma leaves g0 (at the shift the output does
    not depend on the conv weights any more than before). For g0 ~ 0 the frozen terms are the
    constant phi(b0) - s, a post-activation shift, hence the name. L2 then pulls the trainable beta
    towards 0, i.e. the pre-activation towards s > 0, away from the collapsed region.

    "Gamma" stays `weight`: the scale of the trainable branch, which is what sparsity measures; the
    frozen slope g0 is < 1e-3 by construction. A filter is shifted at most once: shifting it again
    would need a second frozen pair. The output of a shifted filter can be negative (down to about
    -s); the next BatchNorm absorbs the constant.

    Why the activation lives here: with ReLU applied after the module, an output that stays 0 on
    every input needs a pre-activation <= 0 everywhere, hence zero gradient, so no
    re-parameterisation of BN alone can keep the function and restore the gradient. A ConvBlock
    holding this module must therefore have `act` = Identity (what `PsbnRemedy.prepare_model` does).
    """

    def __init__(
        self,
        num_features: int,
        act: nn.Module,
        eps: float = 1e-5,
        momentum: float | None = 0.1,
        device: torch.device | None = None,
        dtype: torch.dtype | None = None,
    ):
        super().__init__(num_features, eps=eps, momentum=momentum, device=device, dtype=dtype)
        self.act = act
        for name in ("shift", "frozen_weight", "frozen_bias"):
            self.register_buffer(name, torch.zeros(num_features, device=device, dtype=dtype))
        # Python-side, so the forward needs no device sync; until a filter is shifted the frozen
        # terms are 0 and skipped.
        self._any_shifted = False

    @classmethod
    @torch.no_grad()
    def wrap(cls, bn: nn.BatchNorm2d, act: nn.Module) -> ShiftCompensatedBN:
        """A module computing act(bn(x)) exactly, with `bn`'s parameters and statistics."""
        new = cls(bn.num_features, act, eps=bn.eps, momentum=bn.momentum,
                  device=bn.weight.device, dtype=bn.weight.dtype)
        for name in ("weight", "bias", "running_mean", "running_var", "num_batches_tracked"):
            getattr(new, name).copy_(getattr(bn, name))
        return new

    def _load_from_state_dict(self, *args: Any, **kwargs: Any) -> None:
        super()._load_from_state_dict(*args, **kwargs)
        self._any_shifted = bool(self.shift.any())

    def _normalized(self, x: torch.Tensor) -> torch.Tensor:
        """x_hat, updating the running statistics in training as nn.BatchNorm2d does."""
        self._check_input_dim(x)
        factor = 0.0
        if self.training:
            self.num_batches_tracked.add_(1)
            factor = 1.0 / float(self.num_batches_tracked) if self.momentum is None else self.momentum
        return F.batch_norm(x, self.running_mean, self.running_var, None, None, self.training, factor, self.eps)

    def respond(self, x_hat: torch.Tensor) -> torch.Tensor:
        """The output for a normalized response x_hat [N, C, ...] (the formula in the class doc)."""
        shape = (1, -1, *([1] * (x_hat.dim() - 2)))
        gamma, beta = self.weight.view(shape), self.bias.view(shape)
        if not self._any_shifted:
            return self.act(x_hat * gamma + beta)
        s, g0, b0 = (t.view(shape) for t in (self.shift, self.frozen_weight, self.frozen_bias))
        frozen = x_hat * g0
        # Bracketed so the cancelling pair is subtracted first: exactly 0 at the shift.
        return (self.act(x_hat * gamma + (beta + s)) - self.act(frozen + s)) + self.act(frozen + b0)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.respond(self._normalized(x))

    def collapsed(self) -> torch.Tensor:
        """Bool [C]: unshifted filters with |gamma| < 1e-3 and beta <= 0 (no gradient under ReLU)."""
        return (self.weight.abs() < GAMMA_THRESHOLD) & (self.bias <= 0) & (self.shift == 0)

    @torch.no_grad()
    def shift_collapsed_(self) -> int:
        """Shift every `collapsed` filter (see the class doc); returns how many."""
        mask = self.collapsed()
        n = int(mask.sum())
        if n:
            self.frozen_weight.copy_(torch.where(mask, self.weight, self.frozen_weight))
            self.frozen_bias.copy_(torch.where(mask, self.bias, self.frozen_bias))
            self.shift.masked_fill_(mask, PSBN_SHIFT)
            self.bias.masked_fill_(mask, 0.0)
            self._any_shifted = True
        return n

    @torch.no_grad()
    def zero_response(self) -> torch.Tensor:
        """Per filter, the eval-mode output when the conv response is 0: [C] (for pruning)."""
        x_hat = -self.running_mean / torch.sqrt(self.running_var + self.eps)
        return self.respond(x_hat.view(1, -1, 1, 1)).flatten()

    @torch.no_grad()
    def select(self, keep: torch.Tensor) -> ShiftCompensatedBN:
        """A copy with only the filters in the bool mask `keep` (for pruning)."""
        new = type(self)(int(keep.sum()), self.act, eps=self.eps, momentum=self.momentum,
                         device=self.weight.device, dtype=self.weight.dtype)
        for name in ("weight", "bias", "running_mean", "running_var", "shift", "frozen_weight", "frozen_bias"):
            getattr(new, name).copy_(getattr(self, name)[keep])
        new.num_batches_tracked.copy_(self.num_batches_tracked)
        new._any_shifted = bool(new.shift.any())
        return new


class PsbnRemedy(Remedy):
    def __init__(self, every: int, last: int):
        self.every, self.last = every, last

    def prepare_model(self, model: nn.Module) -> nn.Module:
        for _, block in conv_blocks(model):
            block.bn = ShiftCompensatedBN.wrap(block.bn, block.act)
            block.act = nn.Identity()  # applied inside block.bn now
        return model

    def after_epoch(
        self, model: nn.Module, optimizer: torch.optim.Optimizer, epoch: int, data: ImageData
    ) -> dict[str, int] | None:
        if not _acts(epoch, self.every, self.last):
            return None
        counts = {}
        for name, block in conv_blocks(model):
            if not isinstance(block.bn, ShiftCompensatedBN):
                raise TypeError(f"{name}: psbn needs the model from PsbnRemedy.prepare_model")
            counts[name] = block.bn.shift_collapsed_()
        return counts

    def acted_on(self, model: nn.Module) -> dict[str, torch.Tensor] | None:
        # A shifted filter keeps its shift (a buffer, so checkpoints hold it): the model says which.
        return {name: (block.bn.shift != 0).cpu() for name, block in conv_blocks(model)}


REMEDIES: dict[str, Callable[[TrialConfig], Remedy]] = {
    "none": lambda cfg: Remedy(),
    "leaky_relu": lambda cfg: Remedy(),
    "gamma_lr_scale": lambda cfg: Remedy(),
    "revive": lambda cfg: ReviveRemedy(cfg.train.revive_every, cfg.train.total_epochs,
                                       cfg.model.gamma_init, cfg.model.beta_init),
    "psbn": lambda cfg: PsbnRemedy(cfg.train.revive_every, cfg.train.total_epochs),
}


def build_remedy(cfg: TrialConfig) -> Remedy:
    return REMEDIES[cfg.train.remedy](cfg)


def configured(cfg: TrialConfig) -> tuple[Remedy, TrialConfig]:
    """The trial's remedy and the config it actually trains (`TrialConfig.as_trained`)."""
    return build_remedy(cfg), cfg.as_trained()

"""Many trials of one architecture trained as one network (HFTA, Wang et al., MLSys 2021).

N ConvNets become one `PackedConvNet`: every conv a grouped conv (groups = N, trial-major output
channels), every BatchNorm one BatchNorm over N*C channels (per channel, so exactly N separate
BNs), every Linear a batched matmul, the pools and activations shared (they act per channel). The
N trials' batches enter concatenated along channels, so one forward and one backward serve all N
and nothing ever mixes two trials' channels: a trial's gradients equal its solo gradients (up to
float rounding), and one trial's NaNs stay in its own slices.

Each parameter's first dimension is N * k, trial i owning rows [i*k, (i+1)*k), so per-trial
hyperparameters (LR, regularizer terms) broadcast over that dimension: `PackedOptimizer` runs
torch's own optimizer for all trials at once and scales its update per trial. Which trials may
share a pack is read from the settings' declarations (`PER_TRIAL` in config.py) and from the
remedies (`config.MODEL_REMEDIES`: those that act on the model between epochs). The pack trains in the one loop of
`sparsity_core.loop` (`train_packed`), measured per trial on `unpack(i)`, a plain ConvNet.
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Hashable, Sequence
from typing import Any

import torch
from pydantic import BaseModel
from torch import nn
from torch.nn.utils import skip_init

from .config import MODEL_REMEDIES, PER_TRIAL, REMEDY_NAMES, TrainConfig, TrialConfig
from .models import ConvNet
from .optim import OPTIMIZERS, group_lrs, param_groups, penalty

__all__ = ["PackedConvNet", "PackedOptimizer", "can_pack", "pack_key", "pack_refusal"]


# ---- the packed network ---------------------------------------------------------------------


class _GroupedLinear(nn.Module):
    """N Linears on a trial-major [B, N*in] input: weight [N*out, in], bias [N*out]."""

    def __init__(self, n: int, in_features: int, out_features: int, *, device: torch.device,
                 dtype: torch.dtype) -> None:
        super().__init__()
        self.n, self.in_features, self.out_features = n, in_features, out_features
        self.weight = nn.Parameter(torch.empty(n * out_features, in_features, device=device, dtype=dtype))
        self.bias = nn.Parameter(torch.empty(n * out_features, device=device, dtype=dtype))

    def extra_repr(self) -> str:
        return f"n={self.n}, in_features={self.in_features}, out_features={self.out_features}"

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        batch = x.shape[0]
        x = x.reshape(batch, self.n, self.in_features).transpose(0, 1)  # [N, B, in]
        w = self.weight.view(self.n, self.out_features, self.in_features).transpose(1, 2)
        out = torch.baddbmm(self.bias.view(self.n, 1, self.out_features), x, w)  # addmm, as nn.Linear
        return out.transpose(0, 1).reshape(batch, self.n * self.out_features)


# Empty layers (skip_init: no RNG drawn, no init work) shaped for N trials or for one, which
# `_packed_leaf` / `_solo_leaf` then fill. Looked up by exact type: a BN subclass (psBN) is not a BN.
def _packed_conv(m: nn.Conv2d, n: int) -> nn.Module:
    return skip_init(nn.Conv2d, n * m.in_channels, n * m.out_channels, m.kernel_size, stride=m.stride,
                     padding=m.padding, dilation=m.dilation, groups=n * m.groups, bias=m.bias is not None,
                     padding_mode=m.padding_mode, device=m.weight.device, dtype=m.weight.dtype)


def _solo_conv(m: nn.Conv2d, n: int) -> nn.Module:
    return skip_init(nn.Conv2d, m.in_channels // n, m.out_channels // n, m.kernel_size, stride=m.stride,
                     padding=m.padding, dilation=m.dilation, groups=m.groups // n, bias=m.bias is not None,
                     padding_mode=m.padding_mode, device=m.weight.device, dtype=m.weight.dtype)


def _bn(m: nn.BatchNorm2d, features: int) -> nn.Module:
    return skip_init(nn.BatchNorm2d, features, eps=m.eps, momentum=m.momentum, affine=m.affine,
                     track_running_stats=m.track_running_stats, device=m.weight.device, dtype=m.weight.dtype)


def _packed_linear(m: nn.Linear, n: int) -> nn.Module:
    if m.bias is None:
        raise TypeError("packing needs Linear layers with a bias")
    return _GroupedLinear(n, m.in_features, m.out_features, device=m.weight.device, dtype=m.weight.dtype)


def _solo_linear(m: _GroupedLinear, n: int) -> nn.Module:
    return skip_init(nn.Linear, m.in_features, m.out_features, device=m.weight.device, dtype=m.weight.dtype)


_PACK: dict[type, Callable[[Any, int], nn.Module]] = {
    nn.Conv2d: _packed_conv,
    nn.BatchNorm2d: lambda m, n: _bn(m, n * m.num_features),
    nn.Linear: _packed_linear,
}
_UNPACK: dict[type, Callable[[Any, int], nn.Module]] = {
    nn.Conv2d: _solo_conv,
    nn.BatchNorm2d: lambda m, n: _bn(m, m.num_features // n),
    _GroupedLinear: _solo_linear,
}


def _tensors(m: nn.Module) -> dict[str, torch.Tensor]:
    return {**dict(m.named_parameters(recurse=False)), **dict(m.named_buffers(recurse=False))}


def _leaves(net: nn.Module) -> dict[str, nn.Module]:
    """The modules that hold tensors of their own, by qualified name."""
    return {name: m for name, m in net.named_modules() if _tensors(m)}


def _convert(m: nn.Module, table: dict[type, Callable[[Any, int], nn.Module]], n: int) -> nn.Module:
    if type(m) not in table:
        raise TypeError(f"cannot pack a {type(m).__name__}: only {', '.join(t.__name__ for t in table)}")
    return table[type(m)](m, n)


@torch.no_grad()
def _packed_leaf(mods: list[nn.Module]) -> nn.Module:
    """One layer of the N trials as one layer, their tensors concatenated along dim 0."""
    packed = _convert(mods[0], _PACK, len(mods))
    for key, t in _tensors(packed).items():
        parts = [_tensors(m)[key] for m in mods]
        # num_batches_tracked (0-dim): one count, the same for every trial.
        t.copy_(torch.cat(parts) if t.dim() > 0 else parts[0])
    return packed


@torch.no_grad()
def _solo_leaf(packed: nn.Module, n: int, i: int) -> nn.Module:
    """Trial i's slice of a packed layer as a layer of its own."""
    solo = _convert(packed, _UNPACK, n)
    for key, t in _tensors(packed).items():
        _tensors(solo)[key].copy_(t.unflatten(0, (n, -1))[i] if t.dim() > 0 else t)
    return solo


class PackedConvNet(nn.Module):
    """N ConvNets of one architecture as one network.

    Input [B, N*Cin, H, W] (trial i's batch in channels [i*Cin, (i+1)*Cin)); output [B, N, classes].
    Built from the trials' initialised models, whose parameters and BN statistics it copies.
    """

    def __init__(self, nets: Sequence[ConvNet]) -> None:
        super().__init__()
        if not nets:
            raise ValueError("a pack needs at least one network")
        # repr lists every layer's type, shape and settings (kernel, BN eps, activation slope).
        if any(repr(net) != repr(nets[0]) for net in nets):
            raise ValueError("packed networks must share one architecture")
        self.n = len(nets)
        leaves = [_leaves(net) for net in nets]
        # deepcopy with a memo that maps each tensor-holding layer to its packed version: the
        # skeleton (Sequentials, pools, activations, ConvNet.forward) is copied, the layers replaced.
        memo: dict[int, Any] = {
            id(m): _packed_leaf([trial[name] for trial in leaves]) for name, m in leaves[0].items()
        }
        self.net = copy.deepcopy(nets[0], memo)
        self.train(nets[0].training)  # the new layers start in training mode

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x).view(x.shape[0], self.n, -1)

    def unpack(self, i: int) -> ConvNet:
        """Trial i as a plain ConvNet: a copy of its current parameters and BN statistics."""
        if not 0 <= i < self.n:
            raise IndexError(f"trial {i} of a pack of {self.n}")
        memo: dict[int, Any] = {id(m): _solo_leaf(m, self.n, i) for m in _leaves(self.net).values()}
        net = copy.deepcopy(self.net, memo)
        net.train(self.training)
        return net


# ---- the optimizer, per trial ---------------------------------------------------------------


def _per_trial(values: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """Per-trial values [N] shaped to broadcast over a parameter viewed as [N, k, ...]."""
    return values.view(-1, *([1] * (like.dim() - 1)))


class PackedOptimizer:
    """`build_optimizer` + `regularize_` of each trial, applied to its slice of every packed parameter.

    torch's own optimizer (`OPTIMIZERS`) runs at lr=1 without weight decay on one zero "delta" per
    parameter, whose gradient is the packed gradient with each trial's regularizer terms: every
    optimizer there updates by lr times a function of the gradients alone, so it writes exactly
    -update into the delta, and `p += lr_i * delta` applies each trial's LR (its base LR, gamma/beta
    scale and schedule). A trial's slice thus moves as its solo step moves it, up to one rounding.
    Its state (`optimizer`, torch's) is the pack's optimizer state in a checkpoint.

    Nothing in a step depends on a host value that changes between steps (torch's LR is the
    constant 1, the per-trial values live in device tensors that keep their identity, and with
    `capturable` torch's step counters live on the device): the step can be captured as a CUDA
    graph (`sparsity_core.engine`). Which per-trial buffers exist is fixed at construction.
    """

    def __init__(self, model: nn.Module, cfgs: Sequence[TrainConfig], *, capturable: bool = False) -> None:
        spec = OPTIMIZERS[cfgs[0].optimizer]
        self._cfgs = list(cfgs)
        self._params = [(group, p) for group, params in param_groups(model).items() for p in params]
        self._deltas = [torch.zeros_like(p) for _, p in self._params]
        graph_safe = {"capturable": True} if capturable and spec.capturable else {}
        self.optimizer = spec.cls(self._deltas, lr=1.0, weight_decay=0.0, **spec.kwargs, **graph_safe)
        self._device = self._deltas[0].device
        self._lrs = [group_lrs(c) for c in cfgs]
        # Per-trial values [N] live on the device and change in place, once an epoch; a regularizer
        # term that no trial uses stays None and out of the step. Which terms are used is settled
        # here, at factor 1: l2 and l1 do not depend on the factor, and decay (1 - strength x
        # factor) moves away from 1 as the factor grows, which it never does past 1.
        self._lr = {group: torch.zeros(len(cfgs), device=self._device) for group in self._lrs[0]}
        self._decay: torch.Tensor | None = None
        self._l1: torch.Tensor | None = None
        self._l2: torch.Tensor | None = None
        self.set_lr_factors([1.0] * len(cfgs))

    def set_lr_factors(self, factors: Sequence[float]) -> None:
        """Each trial's LR multiplier (its `lr_factor`, lr_t / lr_base) for the coming steps."""
        for group, buffer in self._lr.items():
            self._put(buffer, [lrs[group] * f for lrs, f in zip(self._lrs, factors)])
        terms = [penalty(c, f) for c, f in zip(self._cfgs, factors)]
        self._decay = self._put(self._decay, [t.decay for t in terms], unused=1.0)
        self._l1 = self._put(self._l1, [t.l1_gamma for t in terms], unused=0.0)
        self._l2 = self._put(self._l2, [t.l2 for t in terms], unused=0.0)

    def _put(self, buffer: torch.Tensor | None, values: list[float],
             unused: float | None = None) -> torch.Tensor | None:
        """`values` into `buffer`, made when first needed (not while every value is `unused`).
        Computed in Python floats, as torch's own step takes its LR, then rounded once to float32."""
        if buffer is None:
            if all(v == unused for v in values):
                return None
            buffer = torch.empty(len(values), device=self._device)
        return buffer.copy_(torch.tensor(values, dtype=torch.float64))

    def step(self, update: Callable[[], object] | None = None) -> None:
        """One update of every trial, from the gradients in the packed parameters' `.grad`.
        `update` is the torch optimizer's step (`optimizer.step`, or a compiled version of it)."""
        self._regularize_()
        (update or self.optimizer.step)()
        self._apply_()

    @torch.no_grad()
    def _regularize_(self) -> None:
        """Each trial's regularizer terms, into its slices of the parameters and their gradients,
        which become the deltas' gradients."""
        n = len(self._cfgs)
        for (group, p), delta in zip(self._params, self._deltas):
            delta.grad = p.grad
            if p.grad is None:
                continue
            pv, g = p.unflatten(0, (n, -1)), p.grad.unflatten(0, (n, -1))  # [N, k, ...] views
            if self._decay is not None:
                pv.mul_(_per_trial(self._decay, pv))
            if self._l1 is not None and group == "gamma":
                g.addcmul_(torch.sign(pv), _per_trial(self._l1, pv))
            if self._l2 is not None:
                g.addcmul_(pv, _per_trial(self._l2, pv))
        torch._foreach_zero_(self._deltas)

    @torch.no_grad()
    def _apply_(self) -> None:
        """p += lr_i * delta on trial i's slice of every parameter."""
        n = len(self._cfgs)
        for (group, p), delta in zip(self._params, self._deltas):
            if p.grad is not None:
                pv = p.unflatten(0, (n, -1))
                pv.addcmul_(delta.unflatten(0, (n, -1)), _per_trial(self._lr[group], pv))


# ---- which trials pack ----------------------------------------------------------------------


def _shared_settings(cfg: BaseModel, prefix: str = "") -> dict[str, Any]:
    """Every setting that a pack's trials share (those not marked PER_TRIAL), by dotted path."""
    out: dict[str, Any] = {}
    for name, field in type(cfg).model_fields.items():
        if field.json_schema_extra == PER_TRIAL:
            continue
        value = getattr(cfg, name)
        if isinstance(value, BaseModel):
            out.update(_shared_settings(value, f"{prefix}{name}."))
        else:
            out[f"{prefix}{name}"] = value
    return out


def _alone(cfg: TrialConfig) -> str | None:
    """Why this trial can share a pack with no other, or None."""
    if cfg.prune.explicit and cfg.prune.finetune_epochs:
        return "it fine-tunes its own pruned network (prune.finetune_epochs > 0), which a pack cannot hold"
    if cfg.train.remedy not in MODEL_REMEDIES:
        return None
    packable = [name for name in REMEDY_NAMES if name not in MODEL_REMEDIES]
    return (f"remedy {cfg.train.remedy!r} changes the model or acts between epochs; "
            f"packable remedies: {', '.join(packable)}")


def pack_refusal(run_cfgs: Sequence[TrialConfig]) -> str | None:
    """None when trials with these configured settings (`TrialConfig.as_trained`) can train as one
    pack, else why not."""
    if not run_cfgs:
        return "no trials to pack"
    for i, cfg in enumerate(run_cfgs):
        reason = _alone(cfg)
        if reason is not None:
            return f"trial {i}: {reason}"
    # Compared as trained (`TrialConfig.as_trained`): what is trained must match, not how it was asked for.
    settings = [_shared_settings(cfg) for cfg in run_cfgs]
    for key, first in settings[0].items():
        for i, other in enumerate(settings[1:], start=1):
            if other[key] != first:
                return f"{key} differs: {first!r} (trial 0) vs {other[key]!r} (trial {i})"
    return None


def can_pack(cfgs: Sequence[TrialConfig]) -> str | None:
    """None when `cfgs` can train as one pack, else the reason they cannot."""
    return pack_refusal([cfg.as_trained() for cfg in cfgs])


def pack_key(cfg: TrialConfig) -> Hashable | None:
    """Trials with equal keys can train as one pack (`can_pack` says None); None for a trial that
    can share a pack with no other."""
    run_cfg = cfg.as_trained()
    return None if _alone(run_cfg) else tuple(_shared_settings(run_cfg).items())

"""Many trials of one architecture trained as one network (HFTA, Wang et al., MLSys 2021).

N ConvNets become one `PackedConvNet`: every conv a grouped conv (groups = N, trial-major output
channels), every BatchNorm one BatchNorm over N*C channels (per channel, so exactly N separate
BNs), every Linear a batched matmul, the pools and activations shared (they act per channel). The
N trials' batches enter concatenated along channels, so one forward and one backward serve all N
and nothing ever mixes two trials' channels: a trial's gradients equal its solo gradients (up to
float rounding), and one trial's NaNs stay in its own slices.

Each parameter's first dimension is N * k, trial i owning rows [i*k, (i+1)*k), so per-trial
hyperparameters (LR, regularizer strength) broadcast over that dimension: `_PackedOptimizer`
applies the torch optimizers' update math (`torch/optim/*.py`, single-tensor path) to all trials at
once. Measurement runs on `unpack(i)`, a plain ConvNet, with train.py's own helpers, so a packed
trial's metrics come from the same code as `train()`'s.
"""

from __future__ import annotations

import copy
import math
import time
from collections.abc import Callable, Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.utils import skip_init

from .config import TrainConfig, TrialConfig
from .data import BatchLoader, ImageData, load_dataset
from .models import ConvNet, build_model
from .optim import OPTIMIZERS, lr_factor, param_groups
from .remedies import build_remedy
from .train import EpochMetrics, Status, TrialResult, measure_epoch, resolve_device

__all__ = ["PackReport", "PackedConvNet", "can_pack", "train_packed"]

# report(trial index in the pack, that trial's metrics of one epoch)
PackReport = Callable[[int, EpochMetrics], None]

# Settings that may differ between pack-mates: initialisation, per-trial optimizer hyperparameters
# (broadcast over the trial dimension), the LR schedule (per-trial factors) and measurement cadence
# (done per trial on unpacked models). Every other setting, including any added later, must match.
_MAY_DIFFER = frozenset({
    "seed", "gamma_init", "beta_init",
    "lr", "reg", "strength", "gamma_lr_scale", "beta_lr_scale", "lr_steps", "lr_decay",
    "act_every", "snapshot_every", "eval_batch_size",
    "remedy", "revive_every",
})
# Remedies that act only through `configure` (no model change, no after-epoch hook): a packed trial
# trains its configured settings exactly. Their configured settings must still match (activation).
_CONFIG_ONLY_REMEDIES = ("none", "leaky_relu", "gamma_lr_scale")


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


# ---- the optimizers, per trial --------------------------------------------------------------
#
# Each update is torch's single-tensor step (torch/optim/<name>.py) on a packed parameter viewed as
# [N, k, ...], with `lr` a float64 [N, 1, ...] tensor: the per-trial scalar math is done in float64
# and cast to the parameter's dtype, as torch does with its Python-float LR. torch's
# `p.addcdiv_(a, b, value=-s)` computes p + (-s * a) / b, so `p.addcdiv_(a * s, b, value=-1)` rounds
# the same with s per trial. `g` already holds the coupled L2 term; the updates never write to it.

_Update = Callable[[torch.Tensor, torch.Tensor, dict[str, torch.Tensor], torch.Tensor, int, dict[str, Any]], None]


def _sgd(p: torch.Tensor, g: torch.Tensor, state: dict[str, torch.Tensor], lr: torch.Tensor, step: int,
         o: dict[str, Any]) -> None:
    if o["momentum"] != 0:
        if "momentum_buffer" in state:
            state["momentum_buffer"].mul_(o["momentum"]).add_(g, alpha=1 - o["dampening"])
        else:  # torch starts the buffer at the first gradient, undamped
            state["momentum_buffer"] = g.clone()
        g = state["momentum_buffer"]
    p.addcmul_(g, lr.to(p.dtype), value=-1)


def _adam(p: torch.Tensor, g: torch.Tensor, state: dict[str, torch.Tensor], lr: torch.Tensor, step: int,
          o: dict[str, Any]) -> None:
    beta1, beta2 = o["betas"]
    if not state:
        names = ("exp_avg", "exp_avg_sq", "max_exp_avg_sq") if o["amsgrad"] else ("exp_avg", "exp_avg_sq")
        state.update({name: torch.zeros_like(p) for name in names})
    state["exp_avg"].lerp_(g, 1 - beta1)
    state["exp_avg_sq"].mul_(beta2).addcmul_(g, g, value=1 - beta2)
    second = state["exp_avg_sq"]
    if o["amsgrad"]:
        second = torch.maximum(state["max_exp_avg_sq"], second, out=state["max_exp_avg_sq"])
    denom = (second.sqrt() / (1 - beta2**step) ** 0.5).add_(o["eps"])
    step_size = (lr / (1 - beta1**step)).to(p.dtype)
    p.addcdiv_(state["exp_avg"] * step_size, denom, value=-1)


def _adamax(p: torch.Tensor, g: torch.Tensor, state: dict[str, torch.Tensor], lr: torch.Tensor, step: int,
            o: dict[str, Any]) -> None:
    beta1, beta2 = o["betas"]
    if not state:
        state.update(exp_avg=torch.zeros_like(p), exp_inf=torch.zeros_like(p))
    state["exp_avg"].lerp_(g, 1 - beta1)
    torch.maximum(state["exp_inf"].mul_(beta2), g.abs().add_(o["eps"]), out=state["exp_inf"])
    clr = (lr / (1 - beta1**step)).to(p.dtype)
    p.addcdiv_(state["exp_avg"] * clr, state["exp_inf"], value=-1)


def _rmsprop(p: torch.Tensor, g: torch.Tensor, state: dict[str, torch.Tensor], lr: torch.Tensor, step: int,
             o: dict[str, Any]) -> None:
    if not state:
        state["square_avg"] = torch.zeros_like(p)
    state["square_avg"].mul_(o["alpha"]).addcmul_(g, g, value=1 - o["alpha"])
    avg = state["square_avg"].sqrt().add_(o["eps"])
    p.addcdiv_(g * lr.to(p.dtype), avg, value=-1)


def _adagrad(p: torch.Tensor, g: torch.Tensor, state: dict[str, torch.Tensor], lr: torch.Tensor, step: int,
             o: dict[str, Any]) -> None:
    if not state:
        state["sum"] = torch.full_like(p, o["initial_accumulator_value"])
    clr = (lr / (1 + (step - 1) * o["lr_decay"])).to(p.dtype)
    state["sum"].addcmul_(g, g, value=1)
    std = state["sum"].sqrt().add_(o["eps"])
    p.addcdiv_(g * clr, std, value=-1)


def _adadelta(p: torch.Tensor, g: torch.Tensor, state: dict[str, torch.Tensor], lr: torch.Tensor, step: int,
              o: dict[str, Any]) -> None:
    rho, eps = o["rho"], o["eps"]
    if not state:
        state.update(square_avg=torch.zeros_like(p), acc_delta=torch.zeros_like(p))
    state["square_avg"].mul_(rho).addcmul_(g, g, value=1 - rho)
    std = state["square_avg"].add(eps).sqrt_()
    delta = state["acc_delta"].add(eps).sqrt_().div_(std).mul_(g)
    state["acc_delta"].mul_(rho).addcmul_(delta, delta, value=1 - rho)
    p.addcmul_(delta, lr.to(p.dtype), value=-1)


# By torch optimizer class: the update, and the options it assumes (torch's defaults; other values
# of these, were OPTIMIZERS to set them, are not implemented and make `can_pack` refuse).
_UPDATES: dict[type[torch.optim.Optimizer], tuple[_Update, dict[str, Any]]] = {
    torch.optim.SGD: (_sgd, {"nesterov": False, "maximize": False}),
    torch.optim.Adam: (_adam, {"maximize": False, "decoupled_weight_decay": False}),
    torch.optim.Adamax: (_adamax, {"maximize": False}),
    torch.optim.RMSprop: (_rmsprop, {"momentum": 0, "centered": False, "maximize": False}),
    torch.optim.Adagrad: (_adagrad, {"maximize": False}),
    torch.optim.Adadelta: (_adadelta, {"maximize": False}),
}


def _options(name: str) -> dict[str, Any]:
    """Every setting of optimizer `name` as torch fills it in (OPTIMIZERS' kwargs over torch's defaults)."""
    spec = OPTIMIZERS[name]
    return spec.cls([torch.zeros(1, requires_grad=True)], lr=spec.lr, **spec.kwargs).defaults


def _unsupported_optimizer(name: str) -> str | None:
    cls = OPTIMIZERS[name].cls
    if cls not in _UPDATES:
        return f"optimizer {name!r} ({cls.__name__}) has no packed update"
    options = _options(name)
    other = {k: options[k] for k, v in _UPDATES[cls][1].items() if options.get(k, v) != v}
    return f"optimizer {name!r} with {other} has no packed update" if other else None


class _PackedOptimizer:
    """`build_optimizer` + `regularize_` of each trial, applied to its slice of every packed parameter:
    the gamma/beta/weights groups with the trial's LR scales, and its own regularizer and strength."""

    def __init__(self, model: PackedConvNet, cfgs: Sequence[TrainConfig]) -> None:
        spec = OPTIMIZERS[cfgs[0].optimizer]
        self._update = _UPDATES[spec.cls][0]
        self._options = _options(cfgs[0].optimizer)
        self._cfgs = list(cfgs)
        self._device = next(model.parameters()).device
        self._params = [(group, p) for group, params in param_groups(model).items() for p in params]
        self._state: list[dict[str, torch.Tensor]] = [{} for _ in self._params]
        self._step = 0
        base = [c.lr if c.lr is not None else spec.lr for c in cfgs]
        scales = {"weights": [1.0] * len(cfgs), "gamma": [c.gamma_lr_scale for c in cfgs],
                  "beta": [c.beta_lr_scale for c in cfgs]}
        self._base_lr = {group: [b * s for b, s in zip(base, scales[group])] for group in scales}
        self._l2 = self._per_trial([c.strength if c.reg == "l2" else 0.0 for c in cfgs], skip=0.0)
        self._l1 = self._per_trial([c.strength if c.reg == "l1_gamma" else 0.0 for c in cfgs], skip=0.0)
        self._factors = [1.0] * len(cfgs)
        self._lr: dict[str, torch.Tensor] = {}
        self._decay: torch.Tensor | None = None
        self.set_lr_factors(self._factors)

    def _per_trial(self, values: list[float], skip: float) -> torch.Tensor | None:
        """Values as a float32 device tensor [N]; None when all equal `skip`, the no-op (its op is left out)."""
        return None if all(v == skip for v in values) else torch.tensor(values, device=self._device)

    def set_lr_factors(self, factors: Sequence[float]) -> None:
        """Each trial's multiplier on its base LRs (its `lr_factor`) for the coming steps."""
        self._factors = list(factors)
        self._lr = {group: torch.tensor([b * f for b, f in zip(base, factors)], dtype=torch.float64,
                                        device=self._device)
                    for group, base in self._base_lr.items()}
        # regularize_'s decoupled decay, scaled with the schedule but not with the LR itself
        self._decay = self._per_trial(
            [1.0 - c.strength * f if c.reg == "wd" else 1.0 for c, f in zip(self._cfgs, factors)], skip=1.0)

    def lr(self, i: int) -> float:
        """Trial i's current weights LR, as train() reports it."""
        return self._base_lr["weights"][i] * self._factors[i]

    @torch.no_grad()
    def step(self) -> None:
        self._step += 1
        n = len(self._cfgs)
        for (group, p), state in zip(self._params, self._state):
            if p.grad is None:
                continue
            pv, g = p.unflatten(0, (n, -1)), p.grad.unflatten(0, (n, -1))  # [N, k, ...] views
            shape = (n,) + (1,) * (pv.dim() - 1)
            if self._decay is not None:
                pv.mul_(self._decay.view(shape))
            if self._l1 is not None and group == "gamma":
                g.addcmul_(torch.sign(pv), self._l1.view(shape))
            if self._l2 is not None:
                g = torch.addcmul(g, pv, self._l2.view(shape))
            self._update(pv, g, state, self._lr[group].view(shape), self._step, self._options)


# ---- packing rules and the loop -------------------------------------------------------------


def can_pack(cfgs: Sequence[TrialConfig]) -> str | None:
    """None when `cfgs` can train as one pack, else the reason they cannot."""
    if not cfgs:
        return "no trials to pack"
    for i, cfg in enumerate(cfgs):
        if cfg.train.remedy not in _CONFIG_ONLY_REMEDIES:
            return (f"trial {i}: remedy {cfg.train.remedy!r} changes the model or acts between epochs; "
                    f"packable remedies: {', '.join(_CONFIG_ONLY_REMEDIES)}")
        if cfg.train.compile:
            return f"trial {i}: compile=True is not supported in a pack"
    # Compared after each remedy's `configure`: what is trained must match, not how it was asked for.
    settings = [build_remedy(cfg).configure(cfg).flat() for cfg in cfgs]
    for key, first in settings[0].items():
        if key in _MAY_DIFFER:
            continue
        for i, other in enumerate(settings[1:], start=1):
            if other[key] != first:
                return f"{key} differs: {first!r} (trial 0) vs {other[key]!r} (trial {i})"
    return _unsupported_optimizer(cfgs[0].train.optimizer)


def _initial_pack(cfgs: Sequence[TrialConfig], run_cfgs: Sequence[TrialConfig], data: ImageData) -> PackedConvNet:
    nets = []
    for cfg, run_cfg in zip(cfgs, run_cfgs):
        # train()'s initialisation: the trial's seed, then its model (load_dataset draws nothing
        # from torch's global RNG, so loading once for the pack changes no trial's weights).
        torch.manual_seed(cfg.seed)
        nets.append(build_model(run_cfg.model, num_classes=data.num_classes, in_channels=data.in_channels))
    return PackedConvNet(nets)


def _train_epoch(model: PackedConvNet, loaders: Sequence[BatchLoader], optimizer: _PackedOptimizer,
                 alive: torch.Tensor, autocast: torch.autocast) -> torch.Tensor:
    """One pass over every trial's batches; returns each trial's loss summed over the steps [N]."""
    model.train()
    loss_sum = torch.zeros(model.n, device=alive.device)
    for batches in zip(*loaders):
        x = torch.cat([b[0] for b in batches], dim=1)  # [B, N*Cin, H, W]
        y = torch.stack([b[1] for b in batches], dim=1)  # [B, N]
        with autocast:
            # [B, classes, N] against [B, N]: each trial's mean cross-entropy, [N]
            losses = F.cross_entropy(model(x).transpose(1, 2), y, reduction="none").mean(dim=0)
        alive &= losses.isfinite()
        model.zero_grad(set_to_none=True)
        # Summed, each trial's gradients are its solo gradients. A diverged trial's loss is masked
        # out so the sum stays finite; no layer mixes trials, so its NaNs stay in its own slices.
        torch.where(alive, losses, 0.0).sum().backward()
        optimizer.step()
        loss_sum += losses.detach()
    return loss_sum


def train_packed(cfgs: Sequence[TrialConfig], report: PackReport | None = None) -> list[TrialResult]:
    """Train `cfgs` as one packed network; trial i ends as `train(cfgs[i])` would, up to float rounding.

    `report(i, metrics)` is called after each epoch for every trial still training. A trial whose
    loss turns NaN/inf reports that epoch (diverged) and stops being reported, as in train(); the
    others train on. Each result's `wall_time_s` is the pack's time until that trial finished.
    """
    reason = can_pack(cfgs)
    if reason is not None:
        raise ValueError(f"cannot pack these trials: {reason}")
    start_time = time.perf_counter()
    device = resolve_device(cfgs[0].device)
    run_cfgs = [build_remedy(cfg).configure(cfg) for cfg in cfgs]
    data = load_dataset(run_cfgs[0].dataset, device)
    model = _initial_pack(cfgs, run_cfgs, data).to(device)
    on_gpu = device.type == "cuda"
    if on_gpu:
        model = model.to(memory_format=torch.channels_last)
    optimizer = _PackedOptimizer(model, [c.train for c in run_cfgs])
    train_cfg = run_cfgs[0].train  # batching, epochs and precision are the same for the whole pack
    autocast = torch.autocast(device.type, dtype=torch.bfloat16, enabled=on_gpu and train_cfg.precision == "bf16")
    # Each trial draws its own batches from its own generator, seeded as in train().
    loaders = [
        BatchLoader(data, "train", train_cfg.batch_size, shuffle=True, flip=run_cfg.dataset.augment,
                    generator=torch.Generator(device=device).manual_seed(cfg.seed), drop_last=True,
                    channels_last=on_gpu)
        for cfg, run_cfg in zip(cfgs, run_cfgs)
    ]
    steps = len(loaders[0])
    if steps == 0:
        raise ValueError(f"batch_size {train_cfg.batch_size} exceeds the {len(data.train_y)} "
                         f"training images of {run_cfgs[0].dataset.name!r}; use a smaller train.batch_size")
    total = train_cfg.total_epochs
    histories: list[list[EpochMetrics]] = [[] for _ in cfgs]
    results: dict[int, TrialResult] = {}
    alive = torch.ones(len(cfgs), dtype=torch.bool, device=device)  # finite loss so far, kept on the device
    for epoch in range(1, total + 1):
        optimizer.set_lr_factors([lr_factor(c.train, epoch - 1) for c in run_cfgs])
        loss_sums = _train_epoch(model, loaders, optimizer, alive, autocast).tolist()  # the epoch's one sync
        for i in [i for i in range(len(cfgs)) if i not in results]:
            train_loss = loss_sums[i] / steps
            diverged = not math.isfinite(train_loss)
            trial = model.unpack(i)
            metrics = measure_epoch(trial, run_cfgs[i], data, epoch, optimizer.lr(i), train_loss, diverged)
            histories[i].append(metrics)
            if report is not None:
                report(i, metrics)
            if diverged or epoch == total:
                status: Status = "diverged" if diverged else "ok"
                message = f"training loss became {train_loss} at epoch {epoch}" if diverged else ""
                results[i] = TrialResult(cfgs[i], status, histories[i], time.perf_counter() - start_time,
                                         trial, message)
        if len(results) == len(cfgs):
            break
    return [results[i] for i in range(len(cfgs))]

"""Physical removal of conv filters from a `ConvNet`: the dead ones, and two pruning baselines.

One core, `remove_filters(model, keep)`, returns a smaller deep copy: each ConvBlock keeps the
filters its mask keeps, the next conv (or, after the last conv, the classifier's first Linear) loses
the matching input channels. `prune_dead` (the paper's experiment), `slim_prune` (network slimming,
Liu et al. 2017) and `l1_norm_prune` (Li et al. 2017) only choose the masks. Beside the surgery,
what it saves: `conv_weight_count`, `count_flops`, `inference_latency` (a trial's pruned network is
measured in `sparsity_core.measure`).

Why the pruned model is eval-equivalent. In eval mode a filter outputs act(gamma / s * z + beta')
with z its conv response, s = sqrt(running_var + eps) and beta' = beta - gamma * running_mean / s.
A removed filter is replaced by the constant c = act(beta'): its exact output when gamma = 0 or its
conv weights are 0 (a dead-by-gamma filter with 0 < |gamma| < 1e-3 deviates by gamma / s * z, which
`pruned_test_err` measures). With ReLU and beta' <= 0, c = 0 and there is nothing to fold; a
positive c (or a negative one under leaky ReLU) travels on: a max-pool keeps a constant map constant
(its windows are clipped at the border, never zero-padded), and then
- into the next conv (3x3, zero padding 1) the constant channel contributes c * sum(W[o, f]) inside
  the map but only a partial sum along the zero-padded border. That is not a per-channel bias, so
  folding it into BN's running_mean would be exact only away from the border. `ConstConv2d` keeps
  it exactly instead: it adds conv2d(ones[1, 1, H, W], sum_f c_f * W[:, f]), one 1-input-channel
  conv on one ones-map per forward (cost independent of the batch, and counted as FLOPs);
- into the classifier, the global average pool of a constant map is the constant, so the first
  Linear's bias gains W1[:, f] * c.
Both are exact for any input size. A BN variant that is more than an affine map (the psBN
remedy's `ShiftCompensatedBN`) supplies its own `zero_response()` and `select(keep)`.

Graph surgery is done here rather than with Torch-Pruning: these networks are a plain chain
(ConvBlocks and max-pools, a global pool, a Linear), and the folding needs the next layer's weights
of the removed channels and a module (`ConstConv2d`) that Torch-Pruning does not know.
"""

from __future__ import annotations

import copy
import statistics
import time
from collections.abc import Mapping
from typing import Any, Literal

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from .models import ConvBlock, ConvNet, conv_blocks
from .sparsity import ACT_THRESHOLD, GAMMA_THRESHOLD

__all__ = [
    "Criterion",
    "ConstConv2d",
    "remove_filters",
    "prune_dead",
    "dead_keep_masks",
    "slim_prune",
    "l1_norm_prune",
    "zero_response",
    "conv_weight_count",
    "count_flops",
    "inference_latency",
]

Criterion = Literal["gamma", "activation"]

class ConstConv2d(nn.Conv2d):
    """A conv whose input had constant channels that were removed.

    `const_weight` [out, 1, kh, kw] is sum_f c_f * W[:, f] over the removed channels f with constant
    value c_f; convolving it with a ones-map reproduces their contribution exactly, zero-padded
    border included. A buffer, not a parameter: it stands for fixed inputs, not a learned filter.
    """

    const_weight: torch.Tensor

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        if self.groups != 1 or self.padding_mode != "zeros":
            raise ValueError("ConstConv2d needs groups=1 and zero padding")
        self.register_buffer(
            "const_weight",
            torch.zeros(self.out_channels, 1, *self.kernel_size, dtype=self.weight.dtype, device=self.weight.device),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        ones = x.new_ones(1, 1, *x.shape[-2:])
        const = F.conv2d(ones, self.const_weight, None, self.stride, self.padding, self.dilation)
        return super().forward(x) + const


@torch.no_grad()
def zero_response(block: ConvBlock) -> torch.Tensor:
    """Per filter, the block's eval-mode output when the conv response is 0: [n_filters].

    For nn.BatchNorm2d that is act(beta'); a BN variant that computes more than an affine map (the
    psBN remedy's `ShiftCompensatedBN`) provides its own `zero_response()`.
    """
    bn = block.bn
    if callable(getattr(bn, "zero_response", None)):
        return block.act(bn.zero_response())
    if bn.running_mean is None or bn.running_var is None or bn.weight is None or bn.bias is None:
        raise ValueError("pruning needs BatchNorm with affine parameters and running statistics")
    beta_prime = bn.bias - bn.weight * bn.running_mean / torch.sqrt(bn.running_var + bn.eps)
    return block.act(beta_prime)


def _check_masks(model: nn.Module, keep: Mapping[str, torch.Tensor]) -> None:
    sizes = {name: block.bn.num_features for name, block in conv_blocks(model)}
    unknown = set(keep) - set(sizes)
    if unknown:
        raise KeyError(f"no conv layers named {sorted(unknown)}; the model has {list(sizes)}")
    for name, mask in keep.items():
        if mask.dtype != torch.bool or mask.shape != (sizes[name],):
            raise ValueError(f"{name}: keep mask must be a bool tensor of shape ({sizes[name]},)")
        if not bool(mask.any()):
            raise ValueError(f"{name}: a layer must keep at least one filter")


def _pruned_conv(
    conv: nn.Conv2d, keep_out: torch.Tensor, keep_in: torch.Tensor | None, const_in: torch.Tensor | None
) -> nn.Conv2d:
    """`conv` with outputs `keep_out` and inputs `keep_in`; removed inputs with nonzero constant
    values `const_in` ([in], 0 where kept) go into a `ConstConv2d`'s const_weight."""
    weight = conv.weight
    const = conv.const_weight if isinstance(conv, ConstConv2d) else None
    if keep_in is not None:
        if const_in is not None and bool(const_in.any()):
            folded = (weight * const_in.to(weight)[None, :, None, None]).sum(1, keepdim=True)
            const = folded if const is None else const + folded
        weight = weight[:, keep_in]
    kind = nn.Conv2d if const is None else ConstConv2d
    new = kind(weight.shape[1], int(keep_out.sum()), conv.kernel_size, stride=conv.stride, padding=conv.padding,
               dilation=conv.dilation, bias=conv.bias is not None, device=weight.device, dtype=weight.dtype)
    new.weight.copy_(weight[keep_out])
    if conv.bias is not None:
        new.bias.copy_(conv.bias[keep_out])
    if const is not None:
        new.const_weight.copy_(const[keep_out])
    return new


def _pruned_bn(bn: nn.BatchNorm2d, keep: torch.Tensor) -> nn.BatchNorm2d:
    """`bn` for the filters in `keep`; a BN variant with extra per-filter state provides `select(keep)`."""
    if callable(getattr(bn, "select", None)):
        return bn.select(keep)
    new = nn.BatchNorm2d(int(keep.sum()), eps=bn.eps, momentum=bn.momentum,
                         device=bn.weight.device, dtype=bn.weight.dtype)
    for name in ("weight", "bias", "running_mean", "running_var"):
        getattr(new, name).copy_(getattr(bn, name)[keep])
    new.num_batches_tracked.copy_(bn.num_batches_tracked)
    return new


def _pruned_linear(linear: nn.Linear, keep_in: torch.Tensor, const_in: torch.Tensor) -> nn.Linear:
    """`linear` without inputs ~keep_in; their constant values `const_in` (0 where kept) go into the bias."""
    new = nn.Linear(int(keep_in.sum()), linear.out_features, device=linear.weight.device, dtype=linear.weight.dtype)
    new.weight.copy_(linear.weight[:, keep_in])
    bias = linear.bias if linear.bias is not None else torch.zeros_like(new.bias)
    new.bias.copy_(bias + linear.weight @ const_in.to(linear.weight))
    return new


@torch.no_grad()
def remove_filters(
    model: nn.Module,
    keep: Mapping[str, torch.Tensor],
    *,
    fill: Mapping[str, torch.Tensor] | None = None,
) -> nn.Module:
    """A smaller deep copy of `model` (a ConvNet) without the filters whose mask is False.

    keep: per conv layer ("C1", ...), a bool mask [n_filters]; layers left out keep every filter,
        and every layer must keep at least one.
    fill: per layer, the constant [n_filters] each removed filter is replaced with; by default its
        `zero_response` (see the module docstring for how it is folded, exactly).
    """
    if not isinstance(model, ConvNet):
        raise TypeError(f"remove_filters prunes a ConvNet, not a {type(model).__name__}")
    _check_masks(model, keep)
    pruned = copy.deepcopy(model)
    names = iter(name for name, _ in conv_blocks(model))
    keep_in: torch.Tensor | None = None
    const_in: torch.Tensor | None = None
    for layer in pruned.features:
        if isinstance(layer, nn.MaxPool2d):  # a constant map stays constant: nothing to do
            continue
        if not isinstance(layer, ConvBlock):
            raise TypeError(f"cannot prune through {type(layer).__name__}; features must be ConvBlocks and max-pools")
        name = next(names)
        mask = keep.get(name)
        if mask is None:
            mask = torch.ones(layer.bn.num_features, dtype=torch.bool)
        mask = mask.to(layer.bn.weight.device)
        values = fill[name] if fill is not None and name in fill else zero_response(layer)
        layer.conv = _pruned_conv(layer.conv, mask, keep_in, const_in)
        layer.bn = _pruned_bn(layer.bn, mask)
        keep_in, const_in = mask, torch.where(mask, 0.0, values.to(layer.bn.weight))
    head = pruned.classifier[0]
    if keep_in is None or const_in is None or not isinstance(head, nn.Linear):
        raise TypeError("remove_filters needs conv layers and a classifier that starts with a Linear")
    # After the global average pool a constant channel is that constant: it folds into the bias.
    pruned.classifier[0] = _pruned_linear(head, keep_in, const_in)
    return pruned.train(model.training)  # the new modules start in training mode


def _keep_at_least_one(remove: torch.Tensor, score: torch.Tensor) -> torch.Tensor:
    """The keep mask ~remove, with the highest-scoring filter kept if it would remove them all."""
    keep = ~remove
    if not bool(keep.any()):
        keep[score.argmax()] = True
    return keep


@torch.no_grad()
def dead_keep_masks(
    model: nn.Module,
    *,
    by: Criterion = "gamma",
    threshold: float | None = None,
    max_act: Mapping[str, torch.Tensor] | None = None,
) -> dict[str, torch.Tensor]:
    """Per layer, the keep mask of the filters that are not dead (the paper's two criteria).

    by="gamma": dead if |gamma| < threshold (default 1e-3). by="activation": dead if the training-set
    maximum activation `max_act[layer]` is < threshold (default 1e-12). A layer whose filters are all
    dead keeps its highest-scoring one.
    """
    masks = {}
    for name, block in conv_blocks(model):
        if by == "gamma":
            score = block.bn.weight.abs()
            limit = GAMMA_THRESHOLD if threshold is None else threshold
        elif by == "activation":
            if max_act is None:
                raise ValueError("by='activation' needs max_act (see sparsity.filter_stats)")
            score = max_act[name].to(block.bn.weight)
            limit = ACT_THRESHOLD if threshold is None else threshold
        else:
            raise ValueError(f"unknown criterion {by!r}; use 'gamma' or 'activation'")
        masks[name] = _keep_at_least_one(score < limit, score)
    return masks


def prune_dead(
    model: nn.Module,
    *,
    by: Criterion = "gamma",
    threshold: float | None = None,
    max_act: Mapping[str, torch.Tensor] | None = None,
) -> nn.Module:
    """A smaller, eval-equivalent copy of `model` without its dead filters (see `dead_keep_masks`).

    Under by="activation" a removed filter's constant is its `zero_response` capped at its measured
    maximum activation: a ReLU filter never seen above 1e-12 is replaced by (about) 0.
    """
    keep = dead_keep_masks(model, by=by, threshold=threshold, max_act=max_act)
    fill = None
    if by == "activation":
        assert max_act is not None  # checked by dead_keep_masks
        blocks = dict(conv_blocks(model))
        fill = {name: torch.minimum(zero_response(blocks[name]), max_act[name].to(blocks[name].bn.weight))
                for name in keep}
    return remove_filters(model, keep, fill=fill)


def _check_ratio(ratio: float) -> None:
    if not 0.0 <= ratio <= 1.0:
        raise ValueError(f"ratio is the fraction of filters removed, in [0, 1]; got {ratio}")


@torch.no_grad()
def slim_prune(model: nn.Module, ratio: float) -> nn.Module:
    """Network slimming: remove the globally smallest-|gamma| filters, round(ratio * all filters) of
    them, capped so that every layer keeps its largest-|gamma| filter."""
    _check_ratio(ratio)
    gammas = {name: block.bn.weight.abs() for name, block in conv_blocks(model)}
    # The largest |gamma| of each layer scores +inf, so it is removed last (never, given the cap).
    scores = []
    for gamma in gammas.values():
        score = gamma.clone()
        score[gamma.argmax()] = torch.inf
        scores.append(score)
    flat = torch.cat(scores)
    n_remove = min(round(ratio * flat.numel()), flat.numel() - len(scores))
    remove = torch.zeros_like(flat, dtype=torch.bool)
    remove[torch.argsort(flat, stable=True)[:n_remove]] = True
    parts = remove.split([g.numel() for g in gammas.values()])
    keep = {name: ~part for name, part in zip(gammas, parts, strict=True)}
    return remove_filters(model, keep)


@torch.no_grad()
def l1_norm_prune(model: nn.Module, ratio: float | Mapping[str, float]) -> nn.Module:
    """Li et al.: in each layer remove the round(ratio * n_filters) filters of smallest L1 weight norm
    (at most n_filters - 1). `ratio` is one fraction for all layers or one per layer name (a layer
    left out keeps every filter)."""
    keep = {}
    for name, block in conv_blocks(model):
        r = ratio.get(name, 0.0) if isinstance(ratio, Mapping) else ratio
        _check_ratio(r)
        l1 = block.conv.weight.abs().sum(dim=(1, 2, 3))
        n_remove = min(round(r * l1.numel()), l1.numel() - 1)
        mask = torch.ones_like(l1, dtype=torch.bool)
        mask[torch.argsort(l1, stable=True)[:n_remove]] = False
        keep[name] = mask
    return remove_filters(model, keep)


def conv_weight_count(model: nn.Module) -> int:
    """Conv weights of the ConvBlocks (the paper's "conv parameters"; ConstConv2d's fixed
    const_weight is a buffer and not counted)."""
    return sum(block.conv.weight.numel() for _, block in conv_blocks(model))


@torch.no_grad()
def count_flops(model: nn.Module, x: torch.Tensor) -> int:
    """FLOPs (2 per multiply-add, convs and matmuls) of one eval-mode forward of `x`, as counted by
    torch.utils.flop_counter."""
    was_training = model.training
    model.eval()
    try:
        with FlopCounterMode(display=False) as counter:
            model(x)
    finally:
        model.train(was_training)
    return counter.get_total_flops()


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


@torch.inference_mode()
def inference_latency(
    model: nn.Module, x: torch.Tensor, *, warmup: int = 1, repeats: int = 3, budget_s: float | None = None
) -> float:
    """Median wall-clock seconds of one eval-mode forward of `x`, after `warmup` untimed ones.

    With `budget_s`, the timed repeats are cut to about budget_s / (seconds of the last warm-up),
    at least one.
    """
    was_training = model.training
    model.eval()
    try:
        warm = [_timed_forward(model, x) for _ in range(warmup)]
        if budget_s is not None:
            if not warm:
                raise ValueError("budget_s needs warmup >= 1 to estimate one forward's time")
            repeats = max(1, min(repeats, int(budget_s / warm[-1])))
        times = [_timed_forward(model, x) for _ in range(repeats)]
    finally:
        model.train(was_training)
    return statistics.median(times)


def _timed_forward(model: nn.Module, x: torch.Tensor) -> float:
    _sync(x.device)
    start = time.perf_counter()
    model(x)
    _sync(x.device)
    return time.perf_counter() - start

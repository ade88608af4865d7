"""Physical removal of conv filters from a `ConvNet`: the dead ones (exactly), and the explicit
pruning methods the paper compares with.

Dead filters. One core, `remove_filters(model, keep)`, returns a smaller deep copy: each ConvBlock
keeps the filters its mask keeps, the next conv (or, after the last conv, the classifier's first
Linear) loses the matching input channels, and a removed filter's constant output is folded into
that next layer. `prune_dead` (the paper's experiment) only chooses the masks. Beside the surgery,
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
remedy's `ShiftCompensatedBN`) supplies its own `zero_response()` and `select(keep)`. This surgery
is ours, not Torch-Pruning's: the folding needs the next layer's weights of the removed channels
and a module (`ConstConv2d`) that Torch-Pruning does not know, as it does not know psBN's module.

Explicit methods (`EXPLICIT_METHODS`, the `prune.method` setting): network slimming (Liu et al.
2017) removes the filters of smallest |gamma| over the whole network, L1-norm filter pruning (Li et
al. 2017) those of smallest L1 weight norm in each layer. Both are done with Torch-Pruning where it
fits: its importance criteria (`BNScaleImportance`; `MagnitudeImportance(p=1, group_reduction=
"first")`, the L1 norm of the group's first layer, i.e. of the filter itself) scored on its
dependency graph, and its graph surgery, which removes a filter from its conv and BN and its input
channel from every layer that reads it (the next conv, or the Linear behind the global pool). Like
the methods' papers, it drops the removed filters without folding anything: what they lose, their
fine-tuning recovers. The ranking is ours (`_remove_smallest`): Torch-Pruning's global threshold
removes every filter tied at it, and it skips a layer it would empty instead of keeping its best
filter, so the counts would miss the target fraction.
"""

from __future__ import annotations

import copy
import statistics
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, Literal

import torch
import torch.nn.functional as F
import torch_pruning as tp
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
    "ExplicitMethod",
    "EXPLICIT_METHODS",
    "prune_explicit",
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


@dataclass(frozen=True)
class ExplicitMethod:
    """An explicit pruning method: Torch-Pruning's score of each filter, and where it is ranked."""

    importance: Callable[[], tp.importance.Importance]
    ranked: Literal["network", "layer"]  # over all filters at once, or within each layer


EXPLICIT_METHODS: dict[str, ExplicitMethod] = {
    # Liu et al.: the BN scale |gamma| (trained under L1), one global ranking.
    "slimming": ExplicitMethod(lambda: tp.importance.BNScaleImportance(normalizer=None), "network"),
    # Li et al.: the sum of a filter's absolute kernel weights, the same fraction from each layer.
    "l1norm": ExplicitMethod(
        lambda: tp.importance.MagnitudeImportance(p=1, group_reduction="first", normalizer=None), "layer"),
}


def _remove_smallest(scores: torch.Tensor, n_remove: int) -> torch.Tensor:
    """The keep mask without the n_remove lowest scores (ties broken by index)."""
    keep = torch.ones_like(scores, dtype=torch.bool)
    keep[torch.argsort(scores, stable=True)[:n_remove]] = False
    return keep


def _keep_masks(scores: Mapping[str, torch.Tensor], fraction: float, ranked: str) -> dict[str, torch.Tensor]:
    """Remove round(fraction x filters) of the lowest scores, over the network or in each layer;
    every layer keeps at least its best filter."""
    if not 0.0 < fraction < 1.0:
        raise ValueError(f"fraction is the share of filters removed, in (0, 1); got {fraction}")
    if ranked == "layer":
        return {name: _remove_smallest(s, min(round(fraction * s.numel()), s.numel() - 1))
                for name, s in scores.items()}
    # Each layer's best filter scores +inf, so it goes last (never, given the cap).
    capped = []
    for s in scores.values():
        s = s.clone()
        s[s.argmax()] = torch.inf
        capped.append(s)
    flat = torch.cat(capped)
    keep = _remove_smallest(flat, min(round(fraction * flat.numel()), flat.numel() - len(capped)))
    return dict(zip(scores, keep.split([s.numel() for s in capped]), strict=True))


def _graph(model: nn.Module, example: torch.Tensor) -> tp.DependencyGraph:
    """Torch-Pruning's dependency graph of `model` (a ConvNet), traced on one input `example`."""
    if not isinstance(model, ConvNet):
        raise TypeError(f"explicit pruning prunes a ConvNet, not a {type(model).__name__}")
    with torch.enable_grad():  # it traces the forward through autograd
        return tp.DependencyGraph().build_dependency(model, example_inputs=example)


def _filter_group(graph: tp.DependencyGraph, block: ConvBlock, idxs: list[int]) -> Any:
    """The dependency group of removing filters `idxs` of a conv block (its conv's out channels)."""
    return graph.get_pruning_group(block.conv, tp.prune_conv_out_channels, idxs=idxs)


@torch.no_grad()
def _explicit_masks(model: nn.Module, graph: tp.DependencyGraph, method: str, fraction: float
                    ) -> dict[str, torch.Tensor]:
    if method not in EXPLICIT_METHODS:
        raise ValueError(f"unknown explicit pruning method {method!r}; valid: {', '.join(EXPLICIT_METHODS)}")
    spec = EXPLICIT_METHODS[method]
    importance = spec.importance()
    scores = {name: importance(_filter_group(graph, block, list(range(block.conv.out_channels)))).float().cpu()
              for name, block in conv_blocks(model)}
    return _keep_masks(scores, fraction, spec.ranked)


@torch.no_grad()
def prune_explicit(model: nn.Module, method: str, fraction: float, example: torch.Tensor
                   ) -> tuple[nn.Module, dict[str, torch.Tensor]]:
    """A smaller deep copy of `model` with `fraction` of its filters removed by `method`
    (`EXPLICIT_METHODS`; Torch-Pruning's surgery: removed filters are dropped, nothing folded), and
    the keep masks (CPU) it applied. `example`: one input, for tracing the model."""
    pruned = copy.deepcopy(model)
    graph = _graph(pruned, example)
    keep = _explicit_masks(pruned, graph, method, fraction)
    for name, block in conv_blocks(pruned):
        removed = (~keep[name]).nonzero().flatten().tolist()
        if removed:
            _filter_group(graph, block, removed).prune()
    return pruned, keep


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

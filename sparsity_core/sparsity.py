"""Dead filters, as the paper counts them, feature universality, and whether a filter does anything.

- dead by gamma: |gamma| < 1e-3 for the filter's BN scale;
- dead by activation: the filter's maximum activation (after BN and the activation function) over
  the whole training set, in eval mode, without augmentation, in fp32, is < 1e-12;
- universality: the fraction of training images on which the filter activates (its maximum over
  the image's spatial positions exceeds the same 1e-12);
- functional (`functional`): a filter does something when its output varies over the training set
  (std over images and positions at least VARIES x its layer's typical std) and replacing it by its
  mean output changes the training loss by more than LOSS_CHANGE of it. The two thresholds above
  are met by a filter whose gamma moved off 0 by one Adam step while its output stayed all but
  constant; a remedy's "recovered" filter must pass this test instead.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from .data import BatchLoader, ImageData
from .models import conv_blocks

__all__ = ["GAMMA_THRESHOLD", "ACT_THRESHOLD", "VARIES", "LOSS_CHANGE", "ABLATION_IMAGES", "LayerFilters",
           "dead_by_gamma", "filter_stats", "varies", "loss_change", "functional"]

GAMMA_THRESHOLD = 1e-3
ACT_THRESHOLD = 1e-12
# A filter varies when the std of its output over the training set is at least this share of its
# layer's typical std: the median over the layer's filters that are alive by activation. A shifted
# psBN filter that one Adam step moved by ~lr (1e-3) varies by ~1e-3 of a unit-variance input.
# Measured on digits (BasicNet 1/8, Adam, L2 1e-3, 150 epochs, psbn and revive): the filters
# that vary at all sit at 0.12 to 2.6 of their layer's median, all others at 0.021 or below.
VARIES = 0.1
# A filter matters when replacing its output by its mean over the training set moves the mean
# training cross-entropy by more than this share of it, either way. In the same runs the filters
# that vary moved it by 3e-5 to 60 times over (median 0.22; 1 of ~440 below 1e-4), the others by
# up to 7e-5: the loss alone cannot tell them apart, hence both tests. This one catches a filter
# that varies but that the next layer no longer reads (its weights there decayed while it was dead).
LOSS_CHANGE = 1e-4
# The loss change is measured on at most this many training images (the first ones, no
# augmentation): one eval forward per tested filter, so the whole of CIFAR would cost minutes.
ABLATION_IMAGES = 10_000


_Moments = tuple[int, torch.Tensor, torch.Tensor]


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
    act_mean: torch.Tensor | None = None  # over the training set's images and positions
    act_std: torch.Tensor | None = None

    @property
    def dead_act(self) -> torch.Tensor | None:
        return None if self.max_act is None else self.max_act < ACT_THRESHOLD


@torch.no_grad()
def filter_stats(
    model: nn.Module, data: ImageData | None = None, batch_size: int = 1000
) -> dict[str, LayerFilters]:
    """Per-filter gamma and beta; with `data`, also max activation, universality, and the mean and
    std of the output over the training set (one eval-mode pass, no augmentation, autocast off so
    values stay fp32)."""
    blocks = dict(conv_blocks(model))
    max_act: dict[str, torch.Tensor] = {}
    active: dict[str, torch.Tensor] = {}
    moments: dict[str, _Moments] = {}  # values seen, mean (less `reference`), sum of squared deviations
    reference: dict[str, torch.Tensor] = {}
    if data is not None:
        hooks = []

        def record(name: str):
            def hook(_module: nn.Module, _inputs: tuple, out: torch.Tensor) -> None:
                out = out.float()
                per_image = out.amax(dim=(2, 3))  # [B, C]
                batch_max = per_image.amax(dim=0)
                max_act[name] = torch.maximum(max_act[name], batch_max) if name in max_act else batch_max
                hits = (per_image > ACT_THRESHOLD).sum(dim=0)
                active[name] = active[name] + hits if name in active else hits
                # Shifted by a value of the filter's own (exact in fp32 for values near it), each
                # batch centred on its mean, batches merged in float64 (Chan et al.): a nearly
                # constant output keeps its tiny variance instead of losing it to cancellation.
                ref = reference.setdefault(name, out[0, :, 0, 0].clone())
                shifted = out - ref[None, :, None, None]
                n, mean = shifted.numel() // shifted.shape[1], shifted.mean(dim=(0, 2, 3))
                m2 = (shifted - mean[None, :, None, None]).square().sum(dim=(0, 2, 3)).double()
                moments[name] = _merged(moments.get(name), (n, mean.double(), m2))
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
            act_mean=(moments[name][1] + reference[name].double()).float().cpu() if name in moments else None,
            act_std=(moments[name][2] / moments[name][0]).sqrt().float().cpu() if name in moments else None,
        )
        for name, block in blocks.items()
    }



def _merged(a: _Moments | None, b: _Moments) -> _Moments:
    """Count, mean and sum of squared deviations of two sets of values together."""
    if a is None:
        return b
    (na, ma, m2a), (nb, mb, m2b) = a, b
    n = na + nb
    delta = mb - ma
    return n, ma + delta * (nb / n), m2a + m2b + delta.square() * (na * nb / n)


def varies(stats: LayerFilters) -> torch.Tensor:
    """Bool [n_filters]: the output's std over the training set is at least VARIES x the layer's
    typical std (the median over its filters alive by activation; with none alive, nothing varies)."""
    if stats.act_std is None or stats.dead_act is None:
        raise ValueError("varies needs filter_stats measured on the training set (pass `data`)")
    alive = stats.act_std[~stats.dead_act]
    if not alive.numel():
        return torch.zeros_like(stats.act_std, dtype=torch.bool)
    return stats.act_std >= VARIES * alive.median()


@torch.no_grad()
def loss_change(
    model: nn.Module, data: ImageData, layer: str, filters: torch.Tensor, fill: torch.Tensor,
    batch_size: int = 1000, images: int = ABLATION_IMAGES,
) -> torch.Tensor:
    """Per filter of `layer` in `filters` (indices), the mean training cross-entropy with that
    filter's output replaced by `fill[filter]`, relative to the loss without the replacement:
    (replaced - intact) / intact, float [k]. Eval mode, no augmentation, the first `images`
    training images, one forward per filter."""
    if not len(filters):
        return torch.zeros(0)
    block = dict(conv_blocks(model))[layer]
    fill = fill.to(data.train_x.device)  # once, not per batch and filter
    replaced: list[int] = []  # the filter being replaced, if any

    def replace(_module: nn.Module, _inputs: tuple, out: torch.Tensor) -> torch.Tensor:
        if not replaced:
            return out
        out = out.clone()
        out[:, replaced[0]] = fill[replaced[0]].to(out)
        return out

    def loss() -> torch.Tensor:
        total, seen = torch.zeros((), dtype=torch.float64, device=data.train_x.device), 0
        for x, y in BatchLoader(data, "train", batch_size, shuffle=False, flip=False):
            x, y = x[: images - seen], y[: images - seen]
            total += torch.nn.functional.cross_entropy(model(x).float(), y, reduction="sum").double()
            seen += len(y)
            if seen >= images:
                break
        return total / seen

    was_training = model.training
    model.eval()
    hook = block.register_forward_hook(replace)
    try:
        with torch.autocast(data.train_x.device.type, enabled=False):
            base = loss()
            changes = []
            for f in filters.tolist():
                replaced[:] = [f]
                changes.append((loss() - base) / base)
    finally:
        hook.remove()
        model.train(was_training)
    return torch.stack(changes).float().cpu()


def functional(
    model: nn.Module, data: ImageData, stats: dict[str, LayerFilters], candidates: dict[str, torch.Tensor],
    batch_size: int = 1000,
) -> dict[str, torch.Tensor]:
    """Per layer, which of the `candidates` (bool masks [n_filters]) do something: they vary
    (`varies`) and replacing one by its mean output moves the training loss by more than
    LOSS_CHANGE of it (`loss_change`; run only for candidates that vary). `stats`: `filter_stats`
    with data."""
    out = {}
    for name, wanted in candidates.items():
        tested = wanted & varies(stats[name])
        index = tested.nonzero().flatten()
        matters = loss_change(model, data, name, index, stats[name].act_mean, batch_size).abs() > LOSS_CHANGE
        result = torch.zeros_like(wanted)
        result[index[matters]] = True
        out[name] = result
    return out

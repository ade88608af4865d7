"""What a trial measures after an epoch, below the training loop: test loss and error, dead filters,
per-filter snapshots, the pruned network (`pruned_metrics`, `explicit_cut`) and what a remedy's
revived filters do (`sparsity.functional`), as one `EpochMetrics`.

Every function takes a plain ConvNet (a solo trial's model, or one trial unpacked from a pack), so
the two kinds of trial are measured by the same code.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from .config import PruneConfig, TrialConfig
from .data import BatchLoader, ImageData
from .metrics import EpochMetrics, FilterMetrics, LayerMetrics, PruneMetrics
from .models import conv_blocks
from .prune import (
    Criterion,
    conv_weight_count,
    count_flops,
    dead_keep_masks,
    inference_latency,
    prune_dead,
    prune_explicit,
)
from .sparsity import ACT_THRESHOLD, GAMMA_THRESHOLD, LayerFilters, dead_by_gamma, filter_stats, functional

__all__ = ["due", "evaluate", "measure_epoch", "pruned_metrics", "Cut", "explicit_cut"]

# pruned_metrics runs at the end of every trial: up to 5 timed forwards per model, cut to about
# 0.25 s of timing each (one warm-up forward), so a 1/8-width BasicNet on CPU spends ~1 s timing.
_LATENCY_REPEATS = 5
_LATENCY_BUDGET_S = 0.25


def due(epoch: int, every: int, last: int) -> bool:
    """Whether something done every `every` epochs (0: only at the end) is done after `epoch`."""
    return epoch == last or (every > 0 and epoch % every == 0)


@torch.no_grad()
def evaluate(model: nn.Module, data: ImageData, batch_size: int) -> tuple[float, float]:
    """(mean cross-entropy, percent error) on the test split, in eval mode."""
    was_training = model.training
    model.eval()
    loss_sum = torch.zeros((), device=data.test_x.device)
    wrong = torch.zeros((), device=data.test_x.device, dtype=torch.long)
    for x, y in BatchLoader(data, "test", batch_size, shuffle=False, flip=False):
        logits = model(x)
        loss_sum += F.cross_entropy(logits, y, reduction="sum")
        wrong += (logits.argmax(1) != y).sum()
    model.train(was_training)
    n = len(data.test_y)
    return loss_sum.item() / n, 100.0 * wrong.item() / n


def measure_epoch(
    model: nn.Module,
    cfg: TrialConfig,
    data: ImageData,
    epoch: int,
    lr: float,
    train_loss: float,
    diverged: bool,
    revived: dict[str, int] | None = None,
    *,
    cut: Cut | None = None,
    remedied: Mapping[str, torch.Tensor] | None = None,
) -> EpochMetrics:
    """Everything measured after an epoch of training: test loss and error, dead filters by gamma;
    on `act_every` / `snapshot_every` epochs and the last one, per-filter stats (activations too);
    on the last epoch (`cfg.last_epoch`), the pruned network (`cut`: what an explicit pipeline cut
    before fine-tuning `model`) and, with `remedied` (the filters a remedy revived or shifted, per
    layer), which of them are alive and which recovered."""
    t, last = cfg.train, cfg.last_epoch
    test_loss, test_err = (math.nan, math.nan) if diverged else evaluate(model, data, t.eval_batch_size)
    measure_act = not diverged and due(epoch, t.act_every, last)
    snapshot = measure_act or due(epoch, t.snapshot_every, last)
    filters = filter_stats(model, data if measure_act else None, t.eval_batch_size) if snapshot else None
    final = epoch == last and not diverged
    # The paper's practical claim, checked on every trial: remove the dead filters (or prune as the
    # trial's explicit method does), re-test.
    pruned = _final_pruning(model, test_err, cfg.prune, data, t.eval_batch_size, cut) if final else None
    remedy = (_remedied(model, data, filters, remedied, t.eval_batch_size)
              if final and remedied is not None and filters is not None else None)
    return _epoch_metrics(model, epoch, lr, train_loss, test_loss, test_err, filters, diverged, revived, pruned,
                          remedy)


def _remedied(model: nn.Module, data: ImageData, filters: dict[str, LayerFilters],
              remedied: Mapping[str, torch.Tensor], batch_size: int) -> dict[str, tuple[int, int, int]]:
    """Per layer: filters the remedy acted on, of those alive by the paper's thresholds, of those functional."""
    alive = {name: (lf.gamma.abs() >= GAMMA_THRESHOLD) & (lf.max_act >= ACT_THRESHOLD)
             for name, lf in filters.items() if lf.max_act is not None}
    works = functional(model, data, filters, {name: remedied[name] & alive[name] for name in alive}, batch_size)
    return {name: (int(remedied[name].sum()), int((remedied[name] & alive[name]).sum()), int(works[name].sum()))
            for name in alive}


def _epoch_metrics(
    model: nn.Module,
    epoch: int,
    lr: float,
    train_loss: float,
    test_loss: float,
    test_err: float,
    filters: dict[str, LayerFilters] | None,
    diverged: bool,
    revived: dict[str, int] | None,
    pruned: PruneMetrics | None,
    remedy: dict[str, tuple[int, int, int]] | None,
) -> EpochMetrics:
    counts = dead_by_gamma(model)
    dead = dict(zip(counts, torch.stack(list(counts.values())).tolist()))  # one device sync
    sizes = {name: block.bn.num_features for name, block in conv_blocks(model)}
    layers = tuple(
        LayerMetrics(
            layer=name,
            n_filters=sizes[name],
            dead_gamma=dead[name],
            dead_act=None if filters is None or filters[name].dead_act is None
            else int(filters[name].dead_act.sum()),
            revived=None if revived is None else revived.get(name, 0),
            **({} if remedy is None else dict(zip(_REMEDY_COUNTS, remedy[name]))),
        )
        for name in dead
    )
    n_total = sum(sizes.values())
    dead_act = [layer.dead_act for layer in layers]
    return EpochMetrics(
        epoch=epoch,
        lr=lr,
        train_loss=train_loss,
        test_loss=test_loss,
        test_err=test_err,
        dead_gamma_pct=100.0 * sum(dead.values()) / n_total,
        layers=layers,
        dead_act_pct=None if None in dead_act else 100.0 * sum(dead_act) / n_total,
        filters=None if filters is None else _filter_rows(filters),
        diverged=diverged,
        pruned=pruned,
        **({} if remedy is None else {k: sum(getattr(layer, k) for layer in layers) for k in _REMEDY_COUNTS}),
    )


_REMEDY_COUNTS = ("remedied", "remedied_alive", "recovered")


def _filter_rows(filters: dict[str, LayerFilters]) -> tuple[FilterMetrics, ...]:
    def values(t: torch.Tensor | None, n: int) -> list[float | None]:
        return [None] * n if t is None else t.tolist()

    rows = []
    for name, lf in filters.items():
        n = len(lf.gamma)
        rows += [FilterMetrics(name, i, g, b, m, u, sd) for i, (g, b, m, u, sd) in enumerate(zip(
            lf.gamma.tolist(), lf.beta.tolist(), values(lf.max_act, n), values(lf.universality, n),
            values(lf.act_std, n)))]
    return tuple(rows)


def _latency(model: nn.Module, x: torch.Tensor) -> float:
    return inference_latency(model, x, warmup=1, repeats=_LATENCY_REPEATS, budget_s=_LATENCY_BUDGET_S)


def _removed_pct(keep: Mapping[str, torch.Tensor]) -> float:
    return 100.0 * sum(int((~mask).sum()) for mask in keep.values()) / sum(mask.numel() for mask in keep.values())


def _compared(trained: nn.Module, pruned: nn.Module, data: ImageData, eval_batch_size: int, **measured) -> PruneMetrics:
    """PruneMetrics of `pruned` against the `trained` network it was cut from: conv weights and
    FLOPs removed, and the speedup. Latency is timed on the model's device at batch
    min(eval_batch_size, test-set size); FLOPs for one input of the data's shape."""
    device = next(trained.parameters()).device
    one = data.normalize(data.test_x[:1]).to(device)
    batch = data.normalize(data.test_x[: min(eval_batch_size, len(data.test_y))]).to(device)
    return PruneMetrics(
        conv_params_pruned_pct=100.0 * (1 - conv_weight_count(pruned) / conv_weight_count(trained)),
        flops_pruned_pct=100.0 * (1 - count_flops(pruned, one) / count_flops(trained, one)),
        pruned_speedup=_latency(trained, batch) / _latency(pruned, batch),
        **measured,
    )


def pruned_metrics(
    model: nn.Module,
    data: ImageData,
    eval_batch_size: int,
    by: Criterion = "gamma",
    *,
    max_act: Mapping[str, torch.Tensor] | None = None,
    trained_test_err: float | None = None,
) -> PruneMetrics:
    """Prune `model`'s dead filters and measure what that costs and saves (see `PruneMetrics`;
    no fine-tuning, so `unfinetuned_test_err` is `pruned_test_err`). by="activation" measures max
    activations over the training set unless `max_act` is given; `model` is tested unless its
    `trained_test_err` is given (the epoch's own measurement)."""
    if by == "activation" and max_act is None:
        stats = filter_stats(model, data, eval_batch_size)
        max_act = {name: s.max_act for name, s in stats.items() if s.max_act is not None}
    pruned = prune_dead(model, by=by, max_act=max_act)
    _, pruned_err = evaluate(pruned, data, eval_batch_size)
    return _compared(
        model, pruned, data, eval_batch_size, pruned_by=f"dead_{'act' if by == 'activation' else 'gamma'}",
        filters_removed_pct=_removed_pct(dead_keep_masks(model, by=by, max_act=max_act)),
        trained_test_err=evaluate(model, data, eval_batch_size)[1] if trained_test_err is None else trained_test_err,
        unfinetuned_test_err=pruned_err,
        pruned_test_err=pruned_err, finetuned=False,
    )


@dataclass
class Cut:
    """A trained network pruned by an explicit method, and what it was cut from: the training
    loop fine-tunes `model`, and the last epoch measures it against `trained` (`pruned_metrics`)."""

    method: str
    trained: nn.Module  # not trained any further
    model: nn.Module
    keep: dict[str, torch.Tensor]  # per layer, the filters kept (CPU)
    trained_test_err: float
    unfinetuned_test_err: float


def explicit_cut(model: nn.Module, prune: PruneConfig, data: ImageData, eval_batch_size: int,
                 trained_test_err: float) -> Cut:
    """Prune the trained `model` (whose test error is `trained_test_err`) as `prune` says
    (`prune_explicit`) and test the cut network."""
    assert prune.fraction is not None  # PruneConfig requires one for an explicit method
    example = data.normalize(data.test_x[:1]).to(next(model.parameters()).device)
    pruned, keep = prune_explicit(model, prune.method, prune.fraction, example)
    return Cut(prune.method, model, pruned.train(model.training), keep, trained_test_err,
               evaluate(pruned, data, eval_batch_size)[1])


def _final_pruning(model: nn.Module, test_err: float, prune: PruneConfig, data: ImageData, eval_batch_size: int,
                   cut: Cut | None) -> PruneMetrics:
    """The last epoch's PruneMetrics of `model` (its test error measured this epoch: `test_err`):
    the dead filters removed (method none); an explicit method's cut made now (no fine-tuning) or
    before the fine-tuning that left `model` (`cut`)."""
    if not prune.explicit:
        return pruned_metrics(model, data, eval_batch_size, trained_test_err=test_err)
    finetuned = cut is not None
    cut = cut or explicit_cut(model, prune, data, eval_batch_size, test_err)
    final = model if finetuned else cut.model
    return _compared(
        cut.trained, final, data, eval_batch_size, pruned_by=cut.method, filters_removed_pct=_removed_pct(cut.keep),
        trained_test_err=cut.trained_test_err, unfinetuned_test_err=cut.unfinetuned_test_err,
        pruned_test_err=test_err if finetuned else cut.unfinetuned_test_err, finetuned=finetuned,
    )

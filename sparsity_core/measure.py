"""What a trial measures after an epoch, below the training loop: test loss and error, dead filters,
per-filter snapshots, and the pruned network (`pruned_metrics`), as one `EpochMetrics`.

Every function takes a plain ConvNet (a solo trial's model, or one trial unpacked from a pack), so
the two kinds of trial are measured by the same code.
"""

from __future__ import annotations

import math
from collections.abc import Mapping

import torch
import torch.nn.functional as F
from torch import nn

from .config import TrialConfig
from .data import BatchLoader, ImageData
from .metrics import EpochMetrics, FilterMetrics, LayerMetrics, PruneMetrics
from .models import conv_blocks
from .prune import (
    Criterion,
    conv_weight_count,
    count_flops,
    dead_keep_masks,
    inference_latency,
    l1_norm_prune,
    prune_dead,
    slim_prune,
)
from .sparsity import LayerFilters, dead_by_gamma, filter_stats

__all__ = ["due", "evaluate", "measure_epoch", "pruned_metrics"]

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
) -> EpochMetrics:
    """Everything measured after an epoch of training: test loss and error, dead filters by gamma;
    on `act_every` / `snapshot_every` epochs and the last one, per-filter stats (activations too);
    on the last epoch, the pruned network."""
    t, total = cfg.train, cfg.train.total_epochs
    test_loss, test_err = (math.nan, math.nan) if diverged else evaluate(model, data, t.eval_batch_size)
    measure_act = not diverged and due(epoch, t.act_every, total)
    snapshot = measure_act or due(epoch, t.snapshot_every, total)
    filters = filter_stats(model, data if measure_act else None, t.eval_batch_size) if snapshot else None
    # The paper's practical claim, checked on every trial: remove the dead filters, re-test.
    pruned = pruned_metrics(model, data, t.eval_batch_size) if epoch == total and not diverged else None
    return _epoch_metrics(model, epoch, lr, train_loss, test_loss, test_err, filters, diverged, revived, pruned)


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
    )


def _filter_rows(filters: dict[str, LayerFilters]) -> tuple[FilterMetrics, ...]:
    def values(t: torch.Tensor | None, n: int) -> list[float | None]:
        return [None] * n if t is None else t.tolist()

    rows = []
    for name, lf in filters.items():
        n = len(lf.gamma)
        rows += [FilterMetrics(name, i, g, b, m, u) for i, (g, b, m, u) in enumerate(zip(
            lf.gamma.tolist(), lf.beta.tolist(), values(lf.max_act, n), values(lf.universality, n)))]
    return tuple(rows)


def _latency(model: nn.Module, x: torch.Tensor) -> float:
    return inference_latency(model, x, warmup=1, repeats=_LATENCY_REPEATS, budget_s=_LATENCY_BUDGET_S)


def pruned_metrics(
    model: nn.Module,
    data: ImageData,
    eval_batch_size: int,
    by: Criterion = "gamma",
    *,
    max_act: Mapping[str, torch.Tensor] | None = None,
) -> PruneMetrics:
    """Prune `model`'s dead filters and measure what that costs and saves (see `PruneMetrics`).

    Latency is timed on the model's device at batch min(eval_batch_size, test-set size); FLOPs for
    one input of the data's shape. The L1-norm baseline removes as many filters in each layer, the
    slimming baseline as many in the whole network. by="activation" measures max activations over
    the training set unless `max_act` is given.
    """
    if by == "activation" and max_act is None:
        stats = filter_stats(model, data, eval_batch_size)
        max_act = {name: s.max_act for name, s in stats.items() if s.max_act is not None}
    pruned = prune_dead(model, by=by, max_act=max_act)
    _, pruned_err = evaluate(pruned, data, eval_batch_size)
    keep = dead_keep_masks(model, by=by, max_act=max_act)
    removed = {name: 1.0 - mask.float().mean().item() for name, mask in keep.items()}
    total_removed = sum((~mask).sum().item() for mask in keep.values()) / sum(m.numel() for m in keep.values())
    _, l1norm_err = evaluate(l1_norm_prune(model, removed), data, eval_batch_size)
    _, slim_err = evaluate(slim_prune(model, total_removed), data, eval_batch_size)
    device = next(model.parameters()).device
    one = data.normalize(data.test_x[:1]).to(device)
    batch = data.normalize(data.test_x[: min(eval_batch_size, len(data.test_y))]).to(device)
    full_flops, pruned_flops = count_flops(model, one), count_flops(pruned, one)
    return PruneMetrics(
        pruned_test_err=pruned_err,
        conv_params_pruned_pct=100.0 * (1 - conv_weight_count(pruned) / conv_weight_count(model)),
        flops_pruned_pct=100.0 * (1 - pruned_flops / full_flops),
        pruned_speedup=_latency(model, batch) / _latency(pruned, batch),
        l1norm_pruned_test_err=l1norm_err,
        slim_pruned_test_err=slim_err,
    )

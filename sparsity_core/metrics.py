"""What a trial reports: one typed record per epoch, the single source of every metric's name.

`EpochMetrics` holds one epoch's measurements; its scalar fields are the per-epoch metrics, its
`layers` one `LayerMetrics` per conv layer, its `filters` (on snapshot epochs) per-filter values and
its `pruned` (last epoch only) the `PruneMetrics` of the trial's pruning: its dead filters removed,
or its explicit pruning pipeline (`config.PruneConfig`). `to_record()` turns it
into plain Python values that cross process boundaries (a Ray Tune report); the orchestrator derives
its Parquet schemas and column lists from these dataclasses' fields (`scalar_fields`), so a metric
is named here and nowhere else.
"""

from __future__ import annotations

import dataclasses
import functools
import types
import typing
from dataclasses import dataclass, field
from typing import Any, NamedTuple

__all__ = ["LayerMetrics", "FilterMetrics", "PruneMetrics", "EpochMetrics", "Column", "scalar_fields"]


@dataclass(frozen=True)
class LayerMetrics:
    """Filter counts of one conv layer after an epoch."""

    layer: str  # C1..Cn in forward order
    n_filters: int
    dead_gamma: int  # |gamma| < 1e-3
    dead_act: int | None = None  # max activation over the training set < 1e-12; where measured
    revived: int | None = None  # re-initialised (`revive`) or shifted (`psbn`) by a remedy this epoch
    # The last epoch of a remedy that acts on filters (revive, psbn): the filters it revived or
    # shifted during training, those of them alive by the paper's thresholds (|gamma| >= 1e-3 and
    # max activation >= 1e-12), and those that do something (`sparsity.functional`: their output
    # varies and the training loss depends on it), the only ones counted as recovered.
    remedied: int | None = None
    remedied_alive: int | None = None
    recovered: int | None = None


@dataclass(frozen=True)
class FilterMetrics:
    """One filter on an epoch where per-filter values were snapshot."""

    layer: str
    filter: int  # index within its layer
    gamma: float
    beta: float
    max_act: float | None  # over the training set, eval mode, fp32; where activations were measured
    universality: float | None  # fraction of training images on which it activates
    act_std: float | None = None  # std of its output over the training set's images and positions


@dataclass(frozen=True)
class PruneMetrics:
    """The trained network pruned physically (`sparsity_core.prune`) and measured: its dead filters
    removed (the paper's experiment, no fine-tuning), or an explicit method's fraction of its
    filters removed and the result fine-tuned (`config.PruneConfig`). Every share is of the trained
    network, and latency is compared with it."""

    pruned_test_err: float  # % test error of the pruned network as the method leaves it (after its fine-tuning)
    conv_params_pruned_pct: float  # % of conv weights removed
    flops_pruned_pct: float  # % of FLOPs of one forward removed
    pruned_speedup: float  # eval latency unpruned / pruned on the trial's device
    pruned_by: str  # what chose the filters: dead_gamma, dead_act, or the explicit method (slimming, l1norm)
    filters_removed_pct: float  # % of all conv filters removed
    trained_test_err: float  # % test error of the trained network, before any removal
    unfinetuned_test_err: float  # % test error right after the removal, before any fine-tuning
    finetuned: bool  # fine-tuned after the removal (the epochs' test_err then follow the pruned network)


@dataclass(frozen=True)
class EpochMetrics:
    """What one epoch measured. `epoch` is 1-based (the number of epochs trained so far)."""

    epoch: int
    lr: float  # the weights' learning rate during this epoch
    train_loss: float  # mean training cross-entropy over the epoch's steps
    test_loss: float
    test_err: float  # % of test images misclassified
    dead_gamma_pct: float  # % of all conv filters with |gamma| < 1e-3
    dead_act_pct: float | None = None  # only on epochs where activations were measured
    diverged: bool = False  # the training loss is NaN/inf; training stops after this epoch
    # The last epoch, remedies that act on filters: LayerMetrics' remedied / remedied_alive / recovered, summed.
    remedied: int | None = None
    remedied_alive: int | None = None
    recovered: int | None = None
    layers: tuple[LayerMetrics, ...] = ()
    filters: tuple[FilterMetrics, ...] | None = field(default=None, repr=False)  # snapshot epochs only
    pruned: PruneMetrics | None = None  # last epoch only

    def to_record(self) -> dict[str, Any]:
        """Plain Python values: the scalars and the pruning results at the top level (so a search can
        optimise e.g. `pruned_test_err`; None before the last epoch), `layers` and `filters` as lists
        of dicts."""
        record = {f.name: getattr(self, f.name) for f in scalar_fields(EpochMetrics)}
        for f in scalar_fields(PruneMetrics):
            record[f.name] = None if self.pruned is None else getattr(self.pruned, f.name)
        record["layers"] = [dataclasses.asdict(layer) for layer in self.layers]
        record["filters"] = None if self.filters is None else [dataclasses.asdict(f) for f in self.filters]
        return record


_SCALARS = (int, float, str, bool)


class Column(NamedTuple):
    """One scalar field of a record: its name, Python type and whether it may be None."""

    name: str
    type: type
    nullable: bool


@functools.cache
def scalar_fields(record: type) -> tuple[Column, ...]:
    """The fields of a record dataclass that hold one int, float, str or bool (or None): the columns
    a table of such records has, in field order."""
    hints = typing.get_type_hints(record)
    out = []
    for f in dataclasses.fields(record):
        hint = hints[f.name]
        args = typing.get_args(hint) if typing.get_origin(hint) in (typing.Union, types.UnionType) else (hint,)
        kinds = [a for a in args if a is not type(None)]
        if len(kinds) == 1 and kinds[0] in _SCALARS:
            out.append(Column(f.name, kinds[0], len(kinds) < len(args)))
    return tuple(out)

"""The one training loop: `train(cfg, report) -> TrialResult`.

The data stay on the training device as uint8 tensors; batches are gathered by index and flipped as
batch ops, and the loop reads nothing back from the device inside an epoch (one sync per epoch for
its metrics). A run whose loss turns NaN/inf stops and returns status "diverged": data, not a crash.
"""

from __future__ import annotations

import copy
import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Literal

import torch
import torch.nn.functional as F
from torch import nn

from .config import TrainConfig, TrialConfig
from .data import BatchLoader, ImageData, load_dataset
from .metrics import EpochMetrics, FilterMetrics, LayerMetrics, PruneMetrics
from .models import build_model, conv_blocks
from .optim import build_optimizer, lr_factor, regularize_, set_lr
from .prune import pruned_metrics
from .remedies import build_remedy
from .sparsity import LayerFilters, dead_by_gamma, filter_stats

__all__ = ["LayerMetrics", "EpochMetrics", "TrialResult", "Report", "Status", "train", "training_step",
           "measure_epoch", "resolve_device", "evaluate"]

Status = Literal["ok", "diverged"]


@dataclass
class TrialResult:
    config: TrialConfig
    status: Status
    history: list[EpochMetrics]
    wall_time_s: float
    model: nn.Module = field(repr=False)
    message: str = ""

    @property
    def trial_id(self) -> str:
        return self.config.trial_id

    @property
    def final(self) -> EpochMetrics | None:
        return self.history[-1] if self.history else None


# report(metrics, state): `state` is a checkpoint (see `train`'s `resume`) on checkpoint epochs, else None.
Report = Callable[[EpochMetrics, dict[str, Any] | None], None]


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


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


def training_step(
    model: nn.Module, optimizer: torch.optim.Optimizer, cfg: TrainConfig, device: torch.device
) -> Callable[[torch.Tensor, torch.Tensor, float], torch.Tensor]:
    """`step(x, y, lr_factor) -> loss` for one batch: forward (bf16 autocast on CUDA when asked),
    backward, the regularizer's own part, the update. With `cfg.compile` the model and the
    optimizer's update are compiled (the update alone is ~20% of a small model's step on CPU)."""
    forward = torch.compile(model) if cfg.compile else model
    update = torch.compile(optimizer.step) if cfg.compile else optimizer.step
    autocast = torch.autocast(device.type, dtype=torch.bfloat16,
                              enabled=device.type == "cuda" and cfg.precision == "bf16")

    def step(x: torch.Tensor, y: torch.Tensor, factor: float) -> torch.Tensor:
        with autocast:
            loss = F.cross_entropy(forward(x), y)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        regularize_(optimizer, cfg, factor)
        update()
        return loss.detach()

    return step


def _due(epoch: int, every: int, last: int) -> bool:
    return epoch == last or (every > 0 and epoch % every == 0)


def train(
    cfg: TrialConfig,
    report: Report | None = None,
    *,
    resume: dict[str, Any] | None = None,
    checkpoint_every: int = 0,
) -> TrialResult:
    """Train one configuration and measure its sparsity every epoch.

    `report(metrics, state)` is called after each epoch; every `checkpoint_every` epochs (and at
    the last) `state` holds everything needed to continue: pass it back as `resume` and training
    picks up after that epoch, bit for bit on the same device.
    """
    start_time = time.perf_counter()
    device = resolve_device(cfg.device)
    torch.manual_seed(cfg.seed)
    remedy = build_remedy(cfg)
    run_cfg = remedy.configure(cfg)
    data = load_dataset(run_cfg.dataset, device)
    model = build_model(run_cfg.model, num_classes=data.num_classes, in_channels=data.in_channels)
    model = remedy.prepare_model(model).to(device)
    optimizer = build_optimizer(model, run_cfg.train)
    generator = torch.Generator(device=device)
    generator.manual_seed(cfg.seed)
    start_epoch = 0
    if resume is not None:
        model.load_state_dict(resume["model"])
        optimizer.load_state_dict(resume["optimizer"])
        generator.set_state(resume["generator"])
        torch.set_rng_state(resume["torch_rng"])
        start_epoch = resume["epoch"]

    on_gpu = device.type == "cuda"
    if on_gpu:
        model = model.to(memory_format=torch.channels_last)
    step = training_step(model, optimizer, run_cfg.train, device)
    # drop_last: a final batch of one image would break BatchNorm's training statistics.
    loader = BatchLoader(data, "train", run_cfg.train.batch_size, shuffle=True, flip=run_cfg.dataset.augment,
                         generator=generator, drop_last=True, channels_last=on_gpu)
    if len(loader) == 0:
        raise ValueError(f"batch_size {run_cfg.train.batch_size} exceeds the {len(data.train_y)} "
                         f"training images of {run_cfg.dataset.name!r}; use a smaller train.batch_size")
    total = run_cfg.train.total_epochs
    history: list[EpochMetrics] = []
    status: Status = "ok"
    message = ""
    for epoch in range(start_epoch + 1, total + 1):
        factor = lr_factor(run_cfg.train, epoch - 1)
        set_lr(optimizer, factor)
        model.train()
        loss_sum = torch.zeros((), device=device)
        for x, y in loader:
            loss_sum += step(x, y, factor)
        train_loss = loss_sum.item() / len(loader)
        diverged = not math.isfinite(train_loss)
        revived = None if diverged else remedy.after_epoch(model, optimizer, epoch, data)

        metrics = measure_epoch(model, run_cfg, data, epoch, optimizer.param_groups[0]["lr"], train_loss,
                                diverged, revived)
        history.append(metrics)
        state = None
        if not diverged and checkpoint_every > 0 and _due(epoch, checkpoint_every, total):
            # A snapshot, not views of the live tensors that the next epoch would overwrite.
            state = copy.deepcopy({
                "epoch": epoch,
                "model": model.state_dict(),
                "optimizer": optimizer.state_dict(),
                "generator": generator.get_state(),
                "torch_rng": torch.get_rng_state(),
            })
        if report is not None:
            report(metrics, state)
        if diverged:
            status, message = "diverged", f"training loss became {train_loss} at epoch {epoch}"
            break
    return TrialResult(cfg, status, history, time.perf_counter() - start_time, model, message)


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
    on the last epoch, the pruned network. Shared by `train` and the packed trainer."""
    t, total = cfg.train, cfg.train.total_epochs
    test_loss, test_err = (math.nan, math.nan) if diverged else evaluate(model, data, t.eval_batch_size)
    measure_act = not diverged and _due(epoch, t.act_every, total)
    snapshot = measure_act or _due(epoch, t.snapshot_every, total)
    filters = filter_stats(model, data if measure_act else None, t.eval_batch_size) if snapshot else None
    # The paper's practical claim, checked on every trial: remove the dead filters, re-test.
    pruned = PruneMetrics(**pruned_metrics(model, data, t.eval_batch_size)) if epoch == total and not diverged else None
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

"""The one training loop: `train(cfg, report)` for a trial, `train_packed(cfgs, report)` for a pack.

Both run `_run`; what differs (the model, the optimizer step, how many trials one step serves, how
a trial's model is seen) is its `Engine` (`sparsity_core.engine`). The data stay on the training
device as uint8 tensors; batches are gathered by index and flipped as batch ops, and the loop reads
nothing back from the device inside an epoch (one sync per epoch for its metrics). A trial whose
loss turns NaN/inf stops and returns status "diverged": data, not a crash.

An explicit pruning pipeline that fine-tunes (`prune.finetune_epochs`) runs on in the same loop:
after the last training epoch its network is cut (`measure.explicit_cut`), a new engine is built
around the cut network with the fine-tuning settings (`TrialConfig.finetuning`), and the epochs go
on to `cfg.last_epoch`, measured as every epoch is.
"""

from __future__ import annotations

import copy
import logging
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

import torch
from torch import nn

from .config import TrialConfig
from .data import BatchLoader, ImageData, load_dataset
from .engine import Engine, engine_for, graphed
from .measure import Cut, due, explicit_cut, measure_epoch
from .metrics import EpochMetrics
from .models import build_model
from .optim import group_lrs, lr_factor
from .remedies import Remedy, configured

__all__ = ["Status", "TrialResult", "Report", "PackReport", "Training", "resolve_device", "build_training", "train",
           "train_packed"]

_log = logging.getLogger(__name__)

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
# report(metrics by trial index, state): once an epoch for the whole pack (see `train_packed`).
PackReport = Callable[[dict[int, EpochMetrics], dict[str, Any] | None], None]


def resolve_device(name: str) -> torch.device:
    """The training device: `auto` is CUDA where torch has it, else the CPU. Raises ValueError,
    naming the fix, for `cuda` where torch has none."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        why = ("was built without CUDA" if torch.version.cuda is None
               else f"(CUDA {torch.version.cuda}) finds no usable GPU")
        raise ValueError(f"device 'cuda': torch {torch.__version__} {why}; set device: cpu (or auto), "
                         "or run where a CUDA GPU is visible")
    return torch.device(name)


@dataclass
class Training:
    """What a run of N trials trains with (N = 1 for a solo trial), built once by `build_training`."""

    remedies: list[Remedy]
    run_cfgs: list[TrialConfig]  # each trial's config as trained (`TrialConfig.as_trained`)
    device: torch.device
    data: ImageData
    engine: Engine
    generators: list[torch.Generator]  # each trial's batches, seeded with its seed
    loaders: list[BatchLoader]  # each trial's training batches; zip them for the engine's steps


def build_training(cfgs: Sequence[TrialConfig], *, packed: bool, data: ImageData | None = None) -> Training:
    """The engine, data and loaders of `cfgs` as a pack (`packed`) or as one solo trial, after
    every check that can refuse them (ValueError); `data`, when given, is the loaded dataset."""
    configs = [configured(cfg) for cfg in cfgs]  # each trial's remedy built here, once
    remedies, run_cfgs = [remedy for remedy, _ in configs], [run_cfg for _, run_cfg in configs]
    device = resolve_device(cfgs[0].device)
    shared = run_cfgs[0].train  # batching, epochs, precision and the step's form are the same for a whole pack
    if shared.cuda_graph and not graphed(shared, device):
        _log.warning("train.cuda_graph ignored: the step runs on %s, and CUDA graphs need a CUDA device", device)
    engine_type = engine_for(packed, shared, device)
    reason = engine_type.refusal(run_cfgs)
    if reason is not None:
        raise ValueError(reason)
    data = load_dataset(run_cfgs[0].dataset, device) if data is None else data
    models = []
    for cfg, run_cfg, remedy in zip(cfgs, run_cfgs, remedies):
        # A trial's initial weights come from its seed alone (load_dataset draws nothing from torch's RNG).
        torch.manual_seed(cfg.seed)
        model = build_model(run_cfg.model, num_classes=data.num_classes, in_channels=data.in_channels)
        models.append(remedy.prepare_model(model).to(device))
    engine = engine_type(models, [c.train for c in run_cfgs], device)
    generators = [torch.Generator(device=device).manual_seed(cfg.seed) for cfg in cfgs]
    # drop_last: a final batch of one image would break BatchNorm's training statistics.
    loaders = [BatchLoader(data, "train", shared.batch_size, shuffle=True, flip=run_cfg.dataset.augment,
                           generator=generator, drop_last=True, channels_last=device.type == "cuda")
               for run_cfg, generator in zip(run_cfgs, generators)]
    if len(loaders[0]) == 0:
        raise ValueError(f"batch_size {shared.batch_size} exceeds the {len(data.train_y)} training images "
                         f"of {run_cfgs[0].dataset.name!r}; use a smaller train.batch_size")
    return Training(remedies, run_cfgs, device, data, engine, generators, loaders)


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
    each = None if report is None else lambda metrics, state: report(metrics[0], state)
    return _run([cfg], False, each, resume, checkpoint_every)[0]


def train_packed(
    cfgs: Sequence[TrialConfig],
    report: PackReport | None = None,
    *,
    resume: dict[str, Any] | None = None,
    checkpoint_every: int = 0,
) -> list[TrialResult]:
    """Train `cfgs` as one packed network; trial i ends as `train(cfgs[i])` would, up to float
    rounding. Raises ValueError when they cannot share a pack (see `can_pack`).

    `report(metrics, state)` is called once after each epoch, `metrics` mapping the index of every
    trial that trained in it to its metrics. A trial whose loss turns NaN/inf reports that epoch
    (diverged) and no more, as in train(); the others train on. Every `checkpoint_every` epochs (and
    at the last) `state` is the pack's checkpoint, given once for all its trials: pass it back as
    `resume` with the same `cfgs` in the same order and training picks up after that epoch, bit for
    bit on the same device; trials that had already ended report their final epoch again first
    (state None), so a recorder that lost it sees every trial's end. Each result's `wall_time_s` is
    the pack's time until that trial ended.
    """
    return _run(cfgs, True, report, resume, checkpoint_every)


def _ended(cfg: TrialConfig, history: list[EpochMetrics], model: nn.Module, start_time: float) -> TrialResult:
    last = history[-1]
    message = f"training loss became {last.train_loss} at epoch {last.epoch}" if last.diverged else ""
    status: Status = "diverged" if last.diverged else "ok"
    return TrialResult(cfg, status, history, time.perf_counter() - start_time, model, message)


def _snapshot(epoch: int, engine: Engine, generators: list[torch.Generator], ended: dict[int, EpochMetrics],
              remedies: list[Remedy], cut: Cut | None) -> dict[str, Any]:
    """A checkpoint after `epoch`: a copy, not views of the live tensors that the next epoch would
    overwrite. `ended` holds the final metrics of every trial that has ended, reported again on
    resume; `cut`, a fine-tuning pipeline's cut network (its architecture is not the config's)."""
    return copy.deepcopy({
        "epoch": epoch,
        "model": engine.model.state_dict(),
        "optimizer": engine.optimizer.state_dict(),
        "generators": [generator.get_state() for generator in generators],
        "torch_rng": torch.get_rng_state(),
        "ended": ended,
        "remedies": [remedy.state_dict() for remedy in remedies],
        "cut": cut,
    })


def _restore(state: dict[str, Any], engine: Engine, generators: list[torch.Generator], remedies: list[Remedy]) -> None:
    # Before the first step: a captured step (engine.GraphedStep) records the tensors made here.
    engine.model.load_state_dict(state["model"])
    engine.optimizer.load_state_dict(state["optimizer"])
    for generator, generator_state in zip(generators, state["generators"], strict=True):
        generator.set_state(generator_state)
    torch.set_rng_state(state["torch_rng"])
    for remedy, remedy_state in zip(remedies, state.get("remedies", [{}] * len(remedies)), strict=True):
        if remedy_state:  # a checkpoint of an older version holds none
            remedy.load_state_dict(remedy_state)


def _finetuning(cut: Cut, engine_type: type[Engine], run_cfg: TrialConfig, device: torch.device) -> Engine:
    """The engine that fine-tunes a cut network with the trial's fine-tuning settings."""
    return engine_type([cut.model], [run_cfg.finetuning().train], device)


def _run(
    cfgs: Sequence[TrialConfig],
    packed: bool,
    report: PackReport | None,
    resume: dict[str, Any] | None,
    checkpoint_every: int,
) -> list[TrialResult]:
    start_time = time.perf_counter()
    training = build_training(cfgs, packed=packed)
    remedies, run_cfgs, device, data = training.remedies, training.run_cfgs, training.device, training.data
    engine, generators, loaders = training.engine, training.generators, training.loaders
    shared = run_cfgs[0].train
    steps = len(loaders[0])

    histories: list[list[EpochMetrics]] = [[] for _ in cfgs]
    results: dict[int, TrialResult] = {}  # the trials that have ended, by index
    start_epoch = 0
    total, last = shared.total_epochs, run_cfgs[0].last_epoch  # a pack shares its pruning settings
    # A fine-tuning pipeline's cut network (a solo trial: packs do not fine-tune, see `pack_refusal`).
    cut: Cut | None = None
    if resume is not None:
        cut = resume.get("cut")
        if cut is not None:
            engine = _finetuning(cut, type(engine), run_cfgs[0], device)
        _restore(resume, engine, generators, remedies)
        if cut is not None:
            cut.model = engine.model
        start_epoch = resume["epoch"]
        for i, final in resume["ended"].items():
            histories[i].append(final)
            results[i] = _ended(cfgs[i], histories[i], engine.trial(i), start_time)
        if report is not None and resume["ended"]:
            report(dict(resume["ended"]), None)

    for epoch in range(start_epoch + 1, last + 1):
        if len(results) == len(cfgs):
            break
        # Training's schedule, then fine-tuning's own, counted from its first epoch.
        phases = [(c.train, epoch - 1) if epoch <= total else (c.finetuning().train, epoch - 1 - total)
                  for c in run_cfgs]
        factors = [lr_factor(t, e) for t, e in phases]
        engine.set_lr_factors(factors)
        engine.model.train()
        loss_sum = torch.zeros(len(cfgs), device=device)
        for batches in zip(*loaders):
            loss_sum += engine.step(batches)
        train_losses = [s / steps for s in loss_sum.tolist()]  # the epoch's one device sync

        measured: dict[int, EpochMetrics] = {}
        seen: dict[int, nn.Module] = {}
        for i in [i for i in range(len(cfgs)) if i not in results]:
            diverged = not math.isfinite(train_losses[i])
            seen[i] = model = engine.trial(i)
            revived = None if diverged else remedies[i].after_epoch(model, engine.optimizer, epoch, data)
            lr = group_lrs(phases[i][0])["weights"] * factors[i]
            measured[i] = measure_epoch(model, run_cfgs[i], data, epoch, lr, train_losses[i], diverged, revived,
                                        cut=cut, remedied=remedies[i].acted_on(model) if epoch == last else None)
            histories[i].append(measured[i])
        if epoch == total < last and not measured[0].diverged:  # training is done: cut, then fine-tune
            cut = explicit_cut(seen[0], run_cfgs[0].prune, data, run_cfgs[0].train.eval_batch_size,
                               measured[0].test_err)
            engine = _finetuning(cut, type(engine), run_cfgs[0], device)
            cut.model = engine.model
        ending = {i: m for i, m in measured.items() if m.diverged or epoch == last}
        state = None
        # Of use while a trial trains on, or has ended well (at the last epoch).
        useful = not all(m.diverged for m in measured.values())
        if checkpoint_every > 0 and due(epoch, checkpoint_every, last) and useful:
            ended = {**{i: r.final for i, r in results.items()}, **ending}
            state = _snapshot(epoch, engine, generators, ended, remedies, cut)
        if report is not None:
            report(measured, state)
        for i in ending:
            results[i] = _ended(cfgs[i], histories[i], seen[i], start_time)
    return [results[i] for i in range(len(cfgs))]

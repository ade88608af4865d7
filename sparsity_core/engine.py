"""What a training step is for one trial (`SoloEngine`) and for a pack of trials (`PackedEngine`).

The one loop (`sparsity_core.loop`) sees an `Engine`: the model that trains, torch's optimizer
whose state a checkpoint holds, each trial's LR factors, the step (one batch per trial in, each
trial's loss out, no device sync) and each trial's model as a plain ConvNet. Everything else a trial
does (setup, schedule, measurement, report, checkpoints, divergence, remedies) is the loop's.

With `train.cuda_graph` on a CUDA device the packed step (forward, backward, regularizer and update)
is captured once as a CUDA graph and replayed: a step then costs the host its batches' gathering,
two copies into the graph's input buffers and one launch, where the eager step launches a few
hundred kernels, which at batch 40 take longer to launch than to run. A solo trial trains as a pack of one there (`engine_for`),
whose update keeps its LR and regularizer terms in device tensors, so the schedule changes them in
place and the graph stays valid. Capture mechanisms are looked up by device type in `CAPTURES`.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Sequence
from typing import Protocol

import torch
import torch.nn.functional as F
from torch import nn

from .config import TrainConfig, TrialConfig
from .optim import build_optimizer, regularize_, set_lr
from .packed import PackedConvNet, PackedOptimizer, pack_refusal

__all__ = ["Batch", "Engine", "SoloEngine", "PackedEngine", "training_step", "packed_training_step",
           "GraphedStep", "CAPTURES", "graphed", "engine_for"]

Batch = tuple[torch.Tensor, torch.Tensor]  # images [B, C, H, W], labels [B]
Step = Callable[[Sequence[Batch]], torch.Tensor]
# capture(fn) -> replay: records `fn` (which it does not run) and returns what runs it again.
Capture = Callable[[Callable[[], torch.Tensor]], Callable[[], torch.Tensor]]

# Steps run before capture, on a side stream: they make every lazily created thing (optimizer
# state, cuDNN plans, autograd's buffers, compiled code) exist before the graph records addresses.
_WARMUP_STEPS = 3


def _cuda_graph(fn: Callable[[], torch.Tensor]) -> Callable[[], torch.Tensor]:
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        out = fn()

    def replay() -> torch.Tensor:
        graph.replay()
        return out

    return replay


CAPTURES: dict[str, Capture] = {"cuda": _cuda_graph}


def graphed(cfg: TrainConfig, device: torch.device) -> bool:
    """Whether the step is captured once and replayed: asked for (`cuda_graph`) and possible on
    `device` (CUDA; elsewhere the setting is ignored and the loop logs why)."""
    return cfg.cuda_graph and device.type in CAPTURES


class Engine(Protocol):
    """How N trials (1 for a solo trial) train together; built from their initialised models."""

    model: nn.Module  # what trains: the trial's ConvNet, or the pack's PackedConvNet
    optimizer: torch.optim.Optimizer  # torch's own; with `model`, the state a checkpoint holds
    step: Step  # one batch per trial -> each trial's training loss [N], on the device

    def __init__(self, models: Sequence[nn.Module], cfgs: Sequence[TrainConfig], device: torch.device) -> None:
        """From the trials' initialised models (on `device`) and their training settings."""

    @staticmethod
    def refusal(run_cfgs: Sequence[TrialConfig]) -> str | None:
        """None when these trials (their configured settings) can train on this engine, else why not."""

    def set_lr_factors(self, factors: Sequence[float]) -> None:
        """Each trial's LR multiplier (lr_t / lr_base) for the coming steps."""

    def trial(self, i: int) -> nn.Module:
        """Trial i as a plain ConvNet, for the remedy hooks and measurement."""


def _step_parts(
    model: nn.Module, update: Callable[[], object], cfg: TrainConfig, device: torch.device
) -> tuple[Callable[[torch.Tensor], torch.Tensor], Callable[[], object], torch.autocast]:
    """The forward and the update, compiled with `cfg.compile` (the update alone is ~20% of a small
    model's step on CPU), and the step's autocast (bf16 on CUDA when asked)."""
    if cfg.compile:
        model, update = torch.compile(model), torch.compile(update)
    # Autocast's cache of bf16 weight copies must stay off in a captured step: a copy cached during
    # the warm-up would be read by the graph, never made again as the weights change.
    autocast = torch.autocast(device.type, dtype=torch.bfloat16, cache_enabled=not graphed(cfg, device),
                              enabled=device.type == "cuda" and cfg.precision == "bf16")
    return model, update, autocast


def training_step(
    model: nn.Module, optimizer: torch.optim.Optimizer, cfg: TrainConfig, device: torch.device
) -> Callable[[torch.Tensor, torch.Tensor, float], torch.Tensor]:
    """`step(x, y, lr_factor) -> loss` for one trial's batch: forward, backward, the regularizer's
    own part, torch's update."""
    forward, update, autocast = _step_parts(model, optimizer.step, cfg, device)

    def step(x: torch.Tensor, y: torch.Tensor, factor: float) -> torch.Tensor:
        with autocast:
            loss = F.cross_entropy(forward(x), y)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        regularize_(optimizer, cfg, factor)
        update()
        return loss.detach()

    return step


class GraphedStep:
    """`step(x, y) -> out`, captured once by `capture` at its first call and replayed after.

    The first call copies its inputs into static buffers, runs `_WARMUP_STEPS` steps on them (on a
    side stream on CUDA), captures one, then puts back in place everything the warm-up changed (the
    model's parameters and buffers, the optimizer's state, `extra` tensors), so training starts
    from where it stood; then it replays. Each later call copies its inputs into the buffers and
    replays. The output is the graph's own tensor, rewritten by the next replay.

    `step` must read nothing from the host that changes between calls and must not sync (no
    `.item()`); every tensor it updates must keep its identity. State that torch's optimizer
    creates at its first step is undone by zeroing (see `OPTIMIZERS` in sparsity_core.optim).
    """

    def __init__(self, step: Callable[[torch.Tensor, torch.Tensor], torch.Tensor], model: nn.Module,
                 optimizer: torch.optim.Optimizer, capture: Capture, extra: Sequence[torch.Tensor] = ()) -> None:
        self._step, self._model, self._optimizer, self._capture = step, model, optimizer, capture
        self._extra = list(extra)
        self._inputs: tuple[torch.Tensor, torch.Tensor] | None = None
        self._replay: Callable[[], torch.Tensor] | None = None

    def __call__(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        if self._replay is None:
            self._replay = self._record(x, y)
        else:
            assert self._inputs is not None
            self._inputs[0].copy_(x)
            self._inputs[1].copy_(y)
        return self._replay()

    def _record(self, x: torch.Tensor, y: torch.Tensor) -> Callable[[], torch.Tensor]:
        self._inputs = inputs = (x.clone(), y.clone())  # clone keeps the memory format (channels_last)
        restore = self._saved()
        with _side_stream(x.device):
            for _ in range(_WARMUP_STEPS):
                self._step(*inputs)
        replay = self._capture(lambda: self._step(*inputs))
        restore()
        return replay

    @torch.no_grad()
    def _saved(self) -> Callable[[], None]:
        """A copy of what the steps change, and the function that writes it back in place."""
        model = {name: t.clone() for name, t in self._model.state_dict().items()}
        optimizer = {p: {k: v.clone() for k, v in s.items() if torch.is_tensor(v)}
                     for p, s in self._optimizer.state.items()}
        extra = [t.clone() for t in self._extra]

        @torch.no_grad()
        def restore() -> None:
            for name, t in self._model.state_dict().items():
                t.copy_(model[name])
            for p, state in self._optimizer.state.items():
                for key, value in state.items():
                    if torch.is_tensor(value):
                        before = optimizer.get(p, {}).get(key)
                        value.zero_() if before is None else value.copy_(before)
            for t, before in zip(self._extra, extra):
                t.copy_(before)

        return restore


def _side_stream(device: torch.device) -> contextlib.AbstractContextManager:
    """A side stream for the warm-up on CUDA, as torch's graph capture asks; nothing elsewhere."""
    if device.type != "cuda":
        return contextlib.nullcontext()
    stream = torch.cuda.Stream(device)
    stream.wait_stream(torch.cuda.current_stream(device))

    @contextlib.contextmanager
    def on_side_stream():
        with torch.cuda.stream(stream):
            yield
        torch.cuda.current_stream(device).wait_stream(stream)

    return on_side_stream()


def packed_training_step(model: PackedConvNet, optimizer: PackedOptimizer, cfg: TrainConfig,
                         device: torch.device) -> Step:
    """`step(batches) -> losses [N]` for a pack: one forward and backward for all its trials. With
    `cfg.compile` the forward and torch's own update are compiled; the per-trial scaling is not.
    With `graphed(cfg, device)` the whole step is captured once and replayed (`GraphedStep`)."""
    forward, update, autocast = _step_parts(model, optimizer.optimizer.step, cfg, device)
    alive = torch.ones(model.n, dtype=torch.bool, device=device)  # finite loss so far, kept on the device

    def step(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        with autocast:
            # [B, classes, N] against [B, N]: each trial's mean cross-entropy, [N]
            losses = F.cross_entropy(forward(x).transpose(1, 2), y, reduction="none").mean(dim=0)
        alive.logical_and_(losses.isfinite())
        model.zero_grad(set_to_none=True)
        # Summed, each trial's gradients are its solo gradients. A diverged trial's loss is masked
        # out so the sum stays finite; no layer mixes trials, so its NaNs stay in its own slices.
        torch.where(alive, losses, 0.0).sum().backward()
        optimizer.step(update)
        return losses.detach()

    run = step
    if graphed(cfg, device):
        run = GraphedStep(step, model, optimizer.optimizer, CAPTURES[device.type], [alive])

    def packed(batches: Sequence[Batch]) -> torch.Tensor:
        x = torch.cat([b[0] for b in batches], dim=1)  # [B, N*Cin, H, W]
        y = torch.stack([b[1] for b in batches], dim=1)  # [B, N]
        return run(x, y)

    return packed


class SoloEngine:
    """One trial: its model and torch's own optimizer (`build_optimizer` + `regularize_`)."""

    def __init__(self, models: Sequence[nn.Module], cfgs: Sequence[TrainConfig], device: torch.device) -> None:
        (model,), (cfg,) = models, cfgs
        self.model = model.to(memory_format=torch.channels_last) if device.type == "cuda" else model
        self.optimizer = build_optimizer(self.model, cfg)
        self._factor = 1.0
        one = training_step(self.model, self.optimizer, cfg, device)
        self.step: Step = lambda batches: one(*batches[0], self._factor)

    @staticmethod
    def refusal(run_cfgs: Sequence[TrialConfig]) -> str | None:
        return None if len(run_cfgs) == 1 else f"one trial at a time, not {len(run_cfgs)}"

    def set_lr_factors(self, factors: Sequence[float]) -> None:
        (self._factor,) = factors
        set_lr(self.optimizer, self._factor)

    def trial(self, i: int) -> nn.Module:
        return self.model  # the live model: a remedy hook changes what trains


class PackedEngine:
    """Trials of one architecture as one `PackedConvNet`, each updated by `PackedOptimizer`.

    A trial's model is a copy unpacked from the pack, which is why only remedies that just
    set a trial's settings may pack (`config.MODEL_REMEDIES` act on the model).
    """

    def __init__(self, models: Sequence[nn.Module], cfgs: Sequence[TrainConfig], device: torch.device) -> None:
        model = PackedConvNet(models)
        self.model = model.to(memory_format=torch.channels_last) if device.type == "cuda" else model
        # torch's step counters on the device where a graph replays the step (CUDA only).
        capturable = graphed(cfgs[0], device) and device.type == "cuda"
        packed = PackedOptimizer(self.model, cfgs, capturable=capturable)
        self.optimizer = packed.optimizer
        self.set_lr_factors = packed.set_lr_factors
        self.step = packed_training_step(self.model, packed, cfgs[0], device)

    @staticmethod
    def refusal(run_cfgs: Sequence[TrialConfig]) -> str | None:
        reason = pack_refusal(run_cfgs)
        return None if reason is None else f"cannot pack these trials: {reason}"

    def trial(self, i: int) -> nn.Module:
        return self.model.unpack(i)


def engine_for(packed: bool, cfg: TrainConfig, device: torch.device) -> type[Engine]:
    """The engine of a pack, or of a solo trial: `SoloEngine`, except where its step is captured
    (`graphed`), where it trains as a pack of one, whose update is graph-safe."""
    return PackedEngine if packed or graphed(cfg, device) else SoloEngine

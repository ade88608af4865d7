"""How many trials of one configuration a training device holds as one pack, and how fast packs train.

Measured, not modelled: `probe_packs` trains a few steps of packs of 1, 2, 4, ... trials as
`train_packed` trains them (`build_training`: the same engine, captured step and loaders) and
records each size's rate and, on CUDA, the peak device memory the process reserved. A pack's memory
grows linearly with its size (each trial adds its parameters, gradients, optimizer state and
activations; the dataset and CUDA's own buffers are paid once), so the two largest sizes measured
predict the largest pack that fits.
"""

from __future__ import annotations

import gc
import itertools
import math
import time
from collections.abc import Sequence
from dataclasses import dataclass

import torch

from .config import TrialConfig
from .data import load_dataset
from .loop import build_training, resolve_device

__all__ = ["PackProbe", "probe_packs"]

# Of the device memory free before the probe, what a pack may plan on: the caching allocator's
# fragmentation and cuDNN's workspaces differ a little from run to run.
_HEADROOM = 0.9
# Doubling the pack must raise the rate by this factor for the next doubling to be tried.
_GAIN = 1.1
# The smallest pack within this fraction of the best rate is chosen: a smaller pack leaves more
# packs to train side by side (on other GPUs) and less of a last, part-filled pack.
_NEAR = 0.95
_UNTIMED_STEPS = 3  # before timing; a captured step is recorded in the first
_TIMED_STEPS = 10
_GIB = 2**30


@dataclass(frozen=True)
class PackProbe:
    """What `probe_packs` measured on one device for one configuration."""

    device: str  # "cuda (NVIDIA H100 80GB HBM3)", "cpu"
    free_bytes: int | None  # device memory free before the probe loaded anything; None on the CPU
    rates: dict[int, float]  # pack size -> trials x steps per second (size / seconds per step)
    peak_bytes: dict[int, int]  # pack size -> peak device memory reserved, the dataset included (CUDA)
    out_of_memory: int | None = None  # the pack size that ran out of device memory, if one did

    def largest_fit(self) -> int | None:
        """The largest pack predicted to fit in `_HEADROOM` of the free memory (0: not even one
        trial); None where memory sets no limit here (the CPU) or one size alone was measured."""
        if self.free_bytes is None:
            return None
        if self.out_of_memory == 1 or not self.peak_bytes:
            return 0
        budget = _HEADROOM * self.free_bytes
        line = self._linear()
        if line is None:
            return 0 if max(self.peak_bytes.values()) > budget else None
        fixed, per_trial = line
        fit = max(0, math.floor((budget - fixed) / per_trial))
        return fit if self.out_of_memory is None else min(fit, self.out_of_memory - 1)

    def need_bytes(self, size: int) -> float | None:
        """Predicted peak memory of a pack of `size`; None where memory was not measured at two sizes."""
        line = self._linear()
        return None if line is None else line[0] + size * line[1]

    def _linear(self) -> tuple[float, float] | None:
        """(fixed, per trial) bytes through the two largest sizes measured."""
        sizes = sorted(self.peak_bytes)
        if len(sizes) < 2:
            return None
        a, b = sizes[-2:]
        # Reserved memory grows in allocator segments: where it did not grow between two sizes,
        # the larger size's whole peak bounds a trial's share instead.
        per_trial = (self.peak_bytes[b] - self.peak_bytes[a]) / (b - a)
        if per_trial <= 0:
            per_trial = self.peak_bytes[b] / b
        return max(0.0, self.peak_bytes[a] - a * per_trial), per_trial

    def best(self) -> int:
        """The smallest pack size measured whose rate is within `_NEAR` of the best rate."""
        top = max(self.rates.values())
        return min(size for size, rate in self.rates.items() if rate >= _NEAR * top)

    def describe(self) -> str:
        rates = ", ".join(f"{size}: {rate:.3g}" for size, rate in sorted(self.rates.items()))
        text = f"{self.device}: trials x steps/s by pack size {rates}"
        if self.free_bytes is not None:
            peaks = ", ".join(f"{size}: {peak / _GIB:.2f}" for size, peak in sorted(self.peak_bytes.items()))
            text += f"; peak GiB {peaks} of {self.free_bytes / _GIB:.1f} GiB free"
        if self.out_of_memory is not None:
            text += f"; a pack of {self.out_of_memory} ran out of memory"
        return text


def probe_packs(cfgs: Sequence[TrialConfig], largest: int) -> PackProbe:
    """Train packs of 1, 2, 4, ... of the first of `cfgs` (trials that can share a pack) for a
    few steps each, up to `largest` trials: doubling stops where the memory measured so far
    predicts no fit, a pack runs out of memory, or the rate grows by less than `_GAIN`."""
    if largest > len(cfgs):
        raise ValueError(f"a pack of {largest} needs {largest} trials, not {len(cfgs)}")
    device = resolve_device(cfgs[0].device)
    cuda = device.type == "cuda"
    if cuda:
        torch.cuda.init()
        free_bytes: int | None = torch.cuda.mem_get_info(device)[0]
        name = f"cuda ({torch.cuda.get_device_name(device)})"
    else:
        free_bytes, name = None, device.type
    data = load_dataset(cfgs[0].dataset, device)
    probe = PackProbe(name, free_bytes, {}, {})
    size = 1
    while size <= largest:
        fit = probe.largest_fit()
        if fit is not None and size > fit:
            break
        if cuda:
            gc.collect()
            torch.cuda.empty_cache()
            torch.cuda.reset_peak_memory_stats(device)
        try:
            seconds = _seconds_per_step(cfgs[:size], data)
        except torch.OutOfMemoryError:
            return PackProbe(name, free_bytes, probe.rates, probe.peak_bytes, out_of_memory=size)
        peaks = {**probe.peak_bytes, size: torch.cuda.max_memory_reserved(device)} if cuda else {}
        probe = PackProbe(name, free_bytes, {**probe.rates, size: size / seconds}, peaks)
        if size > 1 and probe.rates[size] < _GAIN * probe.rates[size // 2]:
            break
        size *= 2
    return probe


def _seconds_per_step(cfgs: Sequence[TrialConfig], data) -> float:
    """Mean seconds per step of `cfgs` as one pack, after a warm-up."""
    training = build_training(cfgs, packed=True, data=data)
    engine, device = training.engine, training.device
    engine.model.train()
    batches = itertools.chain.from_iterable(zip(*training.loaders) for _ in itertools.count())
    losses = torch.zeros(len(cfgs), device=device)
    for step in itertools.islice(batches, _UNTIMED_STEPS):
        losses += engine.step(step)
    _sync(device)
    start = time.perf_counter()
    for step in itertools.islice(batches, _TIMED_STEPS):
        losses += engine.step(step)
    _sync(device)
    return (time.perf_counter() - start) / _TIMED_STEPS


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)

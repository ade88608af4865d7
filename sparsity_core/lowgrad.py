"""The supplement's low-gradient simulation (Fig. 3, claim 9 of the study).

One scalar parameter starts at 1. Its loss gradient is pure noise: N(0, 1e-3) for the first 100
iterations, then N(0, 1e-5), the regime of a selective feature whose loss gradient has faded. L2 of
strength lambda adds lambda * p to that gradient, and each optimizer of `sparsity_core.optim` (with its
base LR) takes the steps. Under SGD the scalar shrinks by lambda * lr / (1 - momentum) a step; an
adaptive optimizer divides the whole gradient by its running scale, which the tiny noise keeps small,
so the L2 term can take far larger steps and drive the scalar to ~0.

Reading of the paper's N(0, s): `s` is the standard deviation (the text gives no other hint).
The paper draws one noise sequence; a figure of one draw cannot say which differences are the
noise's, so the simulation runs several (`noise_seeds`) and every optimizer sees the same ones.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch

from .optim import OPTIMIZERS

__all__ = ["Trajectory", "simulate_low_gradient", "DEFAULT_STRENGTHS", "NOISE_SEEDS"]

DEFAULT_STRENGTHS = (1e-3, 1e-4, 1e-5)
NOISE_SEEDS = 10  # noise sequences drawn: enough for a t interval over them, at no extra cost (see below)


@dataclass(frozen=True)
class Trajectory:
    """The scalar's value under one optimizer, L2 strength and noise sequence (`seed`), at the
    recorded iterations (iteration 0 is the initial value 1)."""

    optimizer: str
    strength: float
    seed: int
    iterations: tuple[int, ...]
    values: tuple[float, ...]


def _noise(iterations: int, switch_at: int, early_std: float, late_std: float, seeds: Sequence[int]) -> torch.Tensor:
    """(iterations, len(seeds)): a column per seed, each drawn by its own generator."""
    columns = [torch.randn(iterations, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)
               for seed in seeds]
    noise = torch.stack(columns, dim=1)
    noise[:switch_at] *= early_std
    noise[switch_at:] *= late_std
    return noise


def simulate_low_gradient(
    strengths: Sequence[float] = DEFAULT_STRENGTHS,
    optimizers: Sequence[str] = tuple(OPTIMIZERS),
    *,
    iterations: int = 10_000,
    switch_at: int = 100,
    early_std: float = 1e-3,
    late_std: float = 1e-5,
    record_every: int = 10,
    noise_seeds: int = NOISE_SEEDS,
) -> list[Trajectory]:
    """One trajectory per optimizer, strength and noise seed (0 .. noise_seeds - 1); every optimizer
    sees the same noise sequences.

    The strengths and seeds run side by side as the elements of one parameter vector (element
    `strength_index * noise_seeds + seed`): every optimizer here is elementwise, and adding
    lambda * p to the gradient by hand is exactly its coupled `weight_decay`. A step costs the
    same for one element as for thirty, so seeds add nothing to the time.
    """
    if iterations <= 0 or record_every <= 0 or noise_seeds <= 0:
        raise ValueError("iterations, record_every and noise_seeds must be positive")
    unknown = [name for name in optimizers if name not in OPTIMIZERS]
    if unknown:
        raise ValueError(f"unknown optimizer(s) {', '.join(unknown)}; valid: {', '.join(OPTIMIZERS)}")
    seeds = range(noise_seeds)
    noise = _noise(iterations, switch_at, early_std, late_std, seeds).repeat(1, len(strengths))
    lam = torch.tensor(list(strengths), dtype=torch.float64).repeat_interleave(noise_seeds)
    recorded = [0, *range(record_every, iterations + 1, record_every)]
    out: list[Trajectory] = []
    for name in optimizers:
        spec = OPTIMIZERS[name]
        p = torch.ones(len(lam), dtype=torch.float64, requires_grad=True)
        optimizer = spec.cls([p], lr=spec.lr, **spec.kwargs)
        history = [p.detach().clone()]
        with torch.no_grad():
            for i in range(iterations):
                p.grad = noise[i] + lam * p
                optimizer.step()
                if (i + 1) % record_every == 0:
                    history.append(p.detach().clone())
        values = torch.stack(history).T.tolist()  # [element][recorded iteration]
        elements = [(float(s), seed) for s in strengths for seed in seeds]
        out.extend(Trajectory(name, s, seed, tuple(recorded), tuple(v)) for (s, seed), v in zip(elements, values))
    return out

"""Non-dominated sorting, crowding distance and the survivors of a cut, on plain numpy arrays.

Every function takes costs: an (n points, m objectives) float array where smaller is better in each
column (`to_costs` flips maximised objectives and turns None into NaN). A point with a NaN cost is
incomparable: it ranks after every front of comparable points, dominates nothing and is dominated
by nothing. Optuna computes the same ranks and distances only in private helpers
(`optuna.study._multi_objective`, `optuna.samplers.nsgaii`) and scipy has none, so they are written
here, without an engine: the report imports this module.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Literal

import numpy as np

__all__ = ["to_costs", "non_dominated_ranks", "crowding_distance", "survivors"]

Mode = Literal["min", "max"]


def to_costs(values: Sequence[Sequence[float | None]] | np.ndarray, modes: Sequence[Mode]) -> np.ndarray:
    """Objective values (one row per point, one column per objective) as costs to minimise."""
    costs = np.array(values, dtype=float).reshape(-1, len(modes))  # None -> NaN
    return costs * np.array([-1.0 if mode == "max" else 1.0 for mode in modes])


def non_dominated_ranks(costs: np.ndarray) -> np.ndarray:
    """Per point, its front: 0 for the non-dominated points, 1 for those dominated only by front 0,
    and so on (Deb's fast non-dominated sort). Equal points share a front. Points with a NaN cost
    all get the rank after the last front."""
    costs = np.asarray(costs, dtype=float)
    ranks = np.zeros(len(costs), dtype=int)
    valid = ~np.isnan(costs).any(axis=1)
    c = costs[valid]
    # dominates[i, j]: i is no worse than j everywhere and better somewhere.
    dominates = (c[:, None, :] <= c[None, :, :]).all(axis=2) & (c[:, None, :] < c[None, :, :]).any(axis=2)
    dominated_by = dominates.sum(axis=0)
    left = np.ones(len(c), dtype=bool)
    valid_ranks = np.zeros(len(c), dtype=int)
    rank = 0
    while left.any():
        front = left & (dominated_by == 0)
        valid_ranks[front] = rank
        left &= ~front
        dominated_by -= dominates[front].sum(axis=0)
        rank += 1
    ranks[valid] = valid_ranks
    ranks[~valid] = rank
    return ranks


def crowding_distance(costs: np.ndarray, ranks: np.ndarray) -> np.ndarray:
    """NSGA-II's crowding distance of each point within its front: per objective, the gap between
    its two neighbours on that front over the front's range, summed; the ends of a front get inf.

    Neighbours are the next distinct values, so equal points get equal distances and the result
    does not depend on the order of the rows. An objective that is constant on a front adds
    nothing. Points with a NaN cost get 0.
    """
    costs = np.asarray(costs, dtype=float)
    distance = np.zeros(len(costs))
    valid = ~np.isnan(costs).any(axis=1)
    for rank in np.unique(ranks[valid]):
        members = np.flatnonzero(valid & (ranks == rank))
        for column in costs[members].T:
            levels, where = np.unique(column, return_inverse=True)
            if len(levels) == 1:
                continue
            padded = np.concatenate(([-np.inf], levels, [np.inf]))
            gaps = (padded[2:] - padded[:-2]) / (levels[-1] - levels[0])
            distance[members] += gaps[where]
    return distance


def survivors(costs: np.ndarray, keep_fraction: float) -> np.ndarray:
    """Which points are in the best `keep_fraction` (at least one point) by front rank, then by
    crowding distance (larger first).

    A point survives when fewer than ceil(n * keep_fraction) points are strictly ahead of it, so
    points tied at the cut all survive: no trial is stopped by a coin flip, and the answer does not
    depend on the order of the rows.
    """
    if not 0.0 < keep_fraction <= 1.0:
        raise ValueError(f"keep_fraction must be in (0, 1], got {keep_fraction}")
    costs = np.asarray(costs, dtype=float)
    if not len(costs):
        return np.zeros(0, dtype=bool)
    ranks = non_dominated_ranks(costs)
    crowding = crowding_distance(costs, ranks)
    # 1e-9: n * (1 / eta) lands a hair above an integer for some eta in floating point.
    keep = max(1, math.ceil(len(costs) * keep_fraction - 1e-9))
    better_rank = ranks[None, :] < ranks[:, None]
    less_crowded = (ranks[None, :] == ranks[:, None]) & (crowding[None, :] > crowding[:, None])
    ahead = (better_rank | less_crowded).sum(axis=1)
    return ahead < keep

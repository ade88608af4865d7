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
from collections.abc import Iterator, Sequence
from typing import Literal

import numpy as np

__all__ = ["to_costs", "non_dominated_ranks", "crowding_distance", "survivors"]

Mode = Literal["min", "max"]


def to_costs(values: Sequence[Sequence[float | None]] | np.ndarray, modes: Sequence[Mode]) -> np.ndarray:
    """Objective values (one row per point, one column per objective) as costs to minimise."""
    costs = np.array(values, dtype=float).reshape(-1, len(modes))  # None -> NaN
    return costs * np.array([-1.0 if mode == "max" else 1.0 for mode in modes])


def non_dominated_ranks(costs: np.ndarray, enough: int | None = None) -> np.ndarray:
    """Per point, its front: 0 for the non-dominated points, 1 for those dominated only by front 0,
    and so on (Deb's fast non-dominated sort). Equal points share a front. Points with a NaN cost
    all get the rank after the last front. With `enough`, fronts are peeled only until at least
    `enough` points are ranked; the points left share the next rank (a cut needs no more)."""
    costs = np.asarray(costs, dtype=float)
    valid = np.flatnonzero(~np.isnan(costs).any(axis=1))
    peel = _fronts_2d if costs.shape[1] == 2 else _fronts
    ranks = np.full(len(costs), -1)
    rank = 0
    for rank, front in enumerate(peel(costs[valid]), start=1):
        ranks[valid[front]] = rank - 1
        if enough is not None and (ranks >= 0).sum() >= enough:
            break
    ranks[ranks < 0] = rank  # past `enough`, and the points with a NaN cost
    return ranks


def _fronts(c: np.ndarray) -> Iterator[np.ndarray]:
    """The fronts of points without NaN, any number of objectives, best first (indices into `c`):
    the dominance matrix, peeled front by front (memory and time n^2)."""
    # dominates[i, j]: i is no worse than j everywhere and better somewhere.
    dominates = (c[:, None, :] <= c[None, :, :]).all(axis=2) & (c[:, None, :] < c[None, :, :]).any(axis=2)
    dominated_by = dominates.sum(axis=0)
    left = np.ones(len(c), dtype=bool)
    while left.any():
        front = left & (dominated_by == 0)
        yield np.flatnonzero(front)
        left &= ~front
        dominated_by -= dominates[front].sum(axis=0)


def _fronts_2d(c: np.ndarray) -> Iterator[np.ndarray]:
    """`_fronts` for two objectives in time n log n + n per front (a replay judges a thousand trials
    at a rung a thousand times). In the order of (first cost, second cost), a point is dominated
    exactly when an earlier point with a smaller first cost has a second cost no larger, or an
    earlier point with the same first cost has a smaller second cost."""
    left = np.lexsort((c[:, 1], c[:, 0]))  # still unranked, in that order
    while left.size:
        x, y = c[left, 0], c[left, 1]
        starts = np.ones(len(x), dtype=bool)  # the first point of each run of equal first costs
        starts[1:] = x[1:] != x[:-1]
        group = np.cumsum(starts) - 1
        first = np.flatnonzero(starts)
        before = np.empty(len(first))  # per run, the least second cost of the earlier runs
        before[0] = np.inf
        before[1:] = np.minimum.accumulate(y)[first[1:] - 1]
        dominated = (before[group] <= y) | (y[first][group] < y)
        yield left[~dominated]
        left = left[dominated]


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
    # 1e-9: n * (1 / eta) lands a hair above an integer for some eta in floating point.
    keep = max(1, math.ceil(len(costs) * keep_fraction - 1e-9))
    ranks = non_dominated_ranks(costs, enough=keep)  # the fronts past the cut are all out
    counts = np.bincount(ranks)
    before = np.cumsum(counts) - counts  # per front, the points in better fronts
    out = before[ranks] + counts[ranks] <= keep  # whole fronts inside the cut
    # The one front the cut falls in, if any, is ordered by crowding: a point survives when fewer
    # than `keep` points are ahead of it (better fronts, and more crowding in its own front).
    cut = np.flatnonzero((before < keep) & (before + counts > keep))
    if cut.size:
        members = np.flatnonzero(ranks == cut[0])
        crowding = crowding_distance(costs[members], np.zeros(len(members), dtype=int))
        more_crowded = (crowding[None, :] > crowding[:, None]).sum(axis=1)
        out[members] = before[cut[0]] + more_crowded < keep
    return out

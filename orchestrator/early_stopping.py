"""Multi-objective asynchronous successive halving: the rule, its settings, and its offline replay.

What is judged at a rung. A rung is an epoch (grace_period * eta^k, or explicit `rungs`). When a trial
reports that epoch, its objective vector there (the objectives' values at exactly that epoch, every
maximised one negated) is recorded beside those of all trials that reached the rung before it,
including the ones stopped there. Once `min_trials_per_rung` trials have reached the rung, the new
arrival continues only if it is among the best ceil(n / eta) of the n recorded, ranked by
non-dominated front and then by crowding distance; otherwise it stops. As in ASHA the rule is
asynchronous: nobody waits for a rung to fill, a decision is never revisited (a trial that passed
a rung is not judged there again, say after a retry), and no trial is stopped on any other epoch.
Until `min_trials_per_rung` trials have arrived nobody stops there: the first arrivals are compared
with too few others for a cut to mean anything (with eta 3 and two trials the cut would keep one of
two). The default, ceil(eta), makes the first cut keep one of eta: the proportion of every later one.

Why crowding distance breaks ties within a front. It needs no scale: each objective is normalised by
the front's own range, so percent dead filters and percent test error weigh alike without a
per-objective epsilon that an epsilon-net would need before the ranges are known. And the ends of a
front get infinite distance, so the sparsest and the most accurate trials at a rung always go on:
exactly the extremes a sparsity-against-error trade-off is read from. Points tied at the cut all
continue (`pareto.survivors`), so no trial is stopped by a coin flip.

A point measured early. A stopped trial's objectives are its values at the rung epoch. Filters die
late and error keeps falling, so such a point is not comparable with a finished trial's final
values: it would look dominated (or, for an objective that worsens with training, flatter than it
is). The report must keep the two apart: the final Pareto front, its hypervolume and
`on_pareto_front` are computed over the trials that ran to the end (`store.COMPLETED`; a stopped
row's flag is null, not false); stopped trials are drawn as their own series, labelled with the
epoch they reached, and compared only with other trials' values at the same rung.

Replay. `replay` takes a finished sweep's epochs and trials tables and runs the same `RungJudge` over
them. Trials reach a rung in the order of their estimated arrival there: a trial started at
`finished_at - wall_time_s` and spent `wall_time_s / epochs_run` per epoch (epoch time taken as
constant), so it reached epoch r at `start + wall_time_s * r / epochs_run`. Trials without
timestamps come last, by trial id. The estimate uses the full run's schedule: live, a stopped trial
frees its slot and later trials start sooner, so arrival orders (and with them a few decisions) can
differ. Rank correlations between a rung's values and the final ones use Kendall's tau-b: the rule
only compares trials pairwise (dominance is a pairwise relation), and tau is P(a pair is ordered the
same at the rung and at the end) minus P(ordered oppositely); tau-b also handles the many ties of an
early rung (0 % dead filters for most trials), where Spearman's rho on mid-ranks is harder to read.
"""

from __future__ import annotations

import dataclasses
import json
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import polars as pl
from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator
from scipy import stats

from sparsity_core.metrics import EpochMetrics, scalar_fields

from .pareto import non_dominated_ranks, survivors, to_costs
from .objectives import Objective, default_objectives, distinct
from .store import COMPLETED

__all__ = ["EarlyStopping", "RungJudge", "ReplayResult", "replay", "per_epoch_metrics"]


def per_epoch_metrics() -> list[str]:
    """The metrics every epoch's report carries (a rung can be judged on): float, never None."""
    return [c.name for c in scalar_fields(EpochMetrics) if c.type is float and not c.nullable]


class EarlyStopping(BaseModel):
    """The `early_stopping:` section of a sweep file."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    objectives: list[Objective] | None = Field(
        None, description="None: the search's objectives (a grid: most dead filters, least test error)"
    )
    grace_period: int = Field(10, ge=1, description="the first rung, in epochs")
    reduction_factor: float = Field(3.0, gt=1, description="eta: rungs at grace_period * eta^k; "
                                                            "1 / eta of the trials at a rung go on")
    rungs: list[int] | None = Field(None, min_length=1, description="rung epochs instead of grace_period * eta^k")
    min_trials_per_rung: int | None = Field(None, ge=2, description="trials that must reach a rung before it "
                                                                    "stops any (None: ceil(eta))")

    @field_validator("objectives")
    @classmethod
    def _judgeable(cls, objectives: list[Objective] | None) -> list[Objective] | None:
        if objectives is not None:
            _check_judgeable(distinct(objectives), "list here")
        return objectives

    @field_validator("rungs")
    @classmethod
    def _increasing(cls, rungs: list[int] | None) -> list[int] | None:
        if rungs is not None and (rungs[0] < 1 or any(b <= a for a, b in zip(rungs, rungs[1:]))):
            raise ValueError(f"rungs must be increasing epochs >= 1, got {rungs}")
        return rungs

    @model_validator(mode="after")
    def _one_schedule(self) -> EarlyStopping:
        if self.rungs is not None and "grace_period" in self.model_fields_set:
            raise ValueError("give `rungs` or `grace_period`, not both (rungs fix every rung epoch)")
        return self

    @property
    def min_trials(self) -> int:
        return self.min_trials_per_rung or math.ceil(self.reduction_factor)

    def objectives_for(self, search: Sequence[Objective] | None) -> list[Objective]:
        """The objectives judged: this section's, else the search's (`search`; None for a grid:
        the search's defaults). Raises ValueError naming the key when one is not reported every epoch."""
        if self.objectives is not None:
            return list(self.objectives)
        objectives = list(search) if search is not None else default_objectives()
        _check_judgeable(objectives, "set early_stopping.objectives to")
        return objectives

    def rung_epochs(self, last_epoch: int) -> tuple[int, ...]:
        """The rung epochs for trials of `last_epoch` epochs: each before the last epoch (stopping
        a trial at its last epoch saves nothing). Raises ValueError naming the key and the fix."""
        if self.rungs is not None:
            late = [r for r in self.rungs if r >= last_epoch]
            if late:
                raise ValueError(f"early_stopping.rungs: {late} not before the last epoch ({last_epoch}); "
                                 "keep rungs below train.epochs")
            return tuple(self.rungs)
        if self.grace_period >= last_epoch:
            raise ValueError(f"early_stopping.grace_period: {self.grace_period} is not before the last epoch "
                             f"({last_epoch}); use a smaller grace_period or more train.epochs")
        rungs: list[int] = []
        k = 0
        while (rung := round(self.grace_period * self.reduction_factor**k)) < last_epoch:
            if not rungs or rung > rungs[-1]:
                rungs.append(rung)
            k += 1
        return tuple(rungs)

    def judge(self, search: Sequence[Objective] | None, last_epoch: int) -> RungJudge:
        """A fresh rule for these settings, trials of `last_epoch` epochs and the search's objectives."""
        return RungJudge(
            objectives=tuple((o.metric, o.mode) for o in self.objectives_for(search)),
            rungs=self.rung_epochs(last_epoch),
            reduction_factor=self.reduction_factor,
            min_trials=self.min_trials,
        )


def _check_judgeable(objectives: Sequence[Objective], fix: str) -> None:
    valid = per_epoch_metrics()
    late = [o.metric for o in objectives if o.metric not in valid]
    if late:
        raise ValueError(f"{', '.join(late)} not reported every epoch, so no rung can judge it; "
                         f"{fix} metrics from: {', '.join(valid)}")


@dataclass
class RungJudge:
    """The asynchronous rule (see the module docstring), keyed by any trial key. No engine: the Tune
    scheduler and the offline replay drive the same object, so they take the same decisions."""

    objectives: tuple[tuple[str, str], ...]  # (metric, "min" | "max")
    rungs: tuple[int, ...]
    reduction_factor: float
    min_trials: int
    # rung -> trial key -> cost vector (minimised) recorded there
    recorded: dict[int, dict[str, np.ndarray]] = field(init=False)
    # rung -> [trials judged there, trials stopped there]
    counts: dict[int, list[int]] = field(init=False)

    def __post_init__(self) -> None:
        self.recorded = {r: {} for r in self.rungs}
        self.counts = {r: [0, 0] for r in self.rungs}

    def record(self, key: str, epoch: int, metrics: Mapping[str, Any]) -> bool:
        """Remember a trial's values at a rung without a decision (e.g. trials of an earlier run of
        the sweep). False if `epoch` is no rung or the trial is already recorded there."""
        at = self.recorded.get(epoch)
        if at is None or key in at:
            return False
        missing = [m for m, _ in self.objectives if m not in metrics]
        if missing:
            raise ValueError(f"early stopping judges {', '.join(missing)}, but trial {key}'s report at epoch "
                             f"{epoch} has no such key; objectives must be among {', '.join(per_epoch_metrics())}")
        values = [metrics[m] for m, _ in self.objectives]
        at[key] = to_costs([values], [mode for _, mode in self.objectives])[0]
        return True

    def keeps(self, key: str, epoch: int, metrics: Mapping[str, Any]) -> bool:
        """Whether the trial `key`, reporting `metrics` at `epoch`, goes on. Only a first report at a
        rung, once `min_trials` trials have reached it, can say no."""
        if not self.record(key, epoch, metrics):
            return True
        at = self.recorded[epoch]
        if len(at) < self.min_trials:
            return True
        # `key` was recorded last: its row is the last.
        keep = survivors(np.array(list(at.values())), 1.0 / self.reduction_factor)[-1]
        self.counts[epoch][0] += 1
        self.counts[epoch][1] += int(not keep)
        return bool(keep)

    def summary(self) -> list[dict[str, int]]:
        """Per rung: the epoch, trials that reached it, were judged there and were stopped there."""
        return [{"epoch": r, "reached": len(self.recorded[r]), "judged": j, "stopped": s}
                for r, (j, s) in self.counts.items()]


@dataclass(frozen=True)
class ReplayResult:
    """What the rule would have done to a finished sweep. `epochs_saved_pct` = 100 * epochs the
    stopped trials would not have run / epochs the sweep ran. The front is over the finished
    trials' final objectives; `front_stopped` lists its points the rule would have stopped."""

    epochs_saved_pct: float
    front_size: int
    front_kept: int
    front_stopped: list[dict[str, Any]]  # {trial_id, epoch}
    epochs_run: int
    epochs_saved: int
    trials: int
    trials_stopped: int
    objectives: list[str]  # "metric:mode"
    reduction_factor: float
    min_trials_per_rung: int
    rungs: list[dict[str, int]]  # RungJudge.summary()
    # per rung and objective: n finished trials compared, Kendall's tau-b and its p-value (None
    # where n < 3 or one side is constant)
    rank_correlation: list[dict[str, Any]]

    def to_json(self) -> str:
        """One JSON line."""
        return json.dumps(dataclasses.asdict(self), separators=(",", ":"), allow_nan=False)


def _arrival_order(epochs: pl.DataFrame, trials: pl.DataFrame, rungs: Sequence[int]) -> pl.DataFrame:
    """The rows of `epochs` at a rung, in the order the trials reached them (module docstring)."""
    run = epochs.group_by("trial_id").agg(pl.col("epoch").max().alias("epochs_run"))
    start = pl.col("finished_at").dt.epoch("ms").cast(pl.Float64) / 1000.0 - pl.col("wall_time_s")
    timing = trials.select("trial_id", start.alias("start_s"), "wall_time_s").join(run, on="trial_id")
    return (
        epochs.filter(pl.col("epoch").is_in(list(rungs)))
        .join(timing, on="trial_id")
        .with_columns(arrival_s=pl.col("start_s") + pl.col("wall_time_s") * pl.col("epoch") / pl.col("epochs_run"))
        .sort(["arrival_s", "epoch", "trial_id"], nulls_last=True)
    )


def _kendall(rung_values: np.ndarray, final_values: np.ndarray) -> dict[str, Any]:
    both = ~(np.isnan(rung_values) | np.isnan(final_values))
    x, y = rung_values[both], final_values[both]
    if len(x) < 3 or len(np.unique(x)) < 2 or len(np.unique(y)) < 2:
        return {"n": int(len(x)), "kendall_tau": None, "p_value": None}
    result = stats.kendalltau(x, y)  # tau-b: ties counted on each side
    return {"n": int(len(x)), "kendall_tau": float(result.statistic), "p_value": float(result.pvalue)}


def replay(
    epochs: pl.DataFrame,
    trials: pl.DataFrame,
    settings: EarlyStopping,
    search: Sequence[Objective] | None = None,
) -> ReplayResult:
    """Replay the rule over a sweep that ran its trials to the end.

    `epochs`: one row per trial and epoch (trial_id, epoch, the objectives); `trials`: one row per
    trial (trial_id, status, finished_at, wall_time_s, the objectives' final values). `search`: the
    search's objectives, used unless `settings` names its own. Trials without a trials row are left
    out; a trial already `stopped` by a live run counts with the epochs it ran.
    """
    objectives = settings.objectives_for(search)
    metrics = [o.metric for o in objectives]
    epochs = epochs.join(trials.select("trial_id"), on="trial_id", how="semi")
    epochs_run = dict(epochs.group_by("trial_id").agg(pl.col("epoch").max()).iter_rows())
    finished = trials.filter(pl.col("status").is_in(list(COMPLETED)))
    last_epoch = max((epochs_run.get(t, 0) for t in finished["trial_id"]), default=0)
    if not last_epoch:
        raise ValueError("no finished trial with epoch rows: nothing to replay (run the sweep first)")
    judge = settings.judge(objectives, last_epoch)

    stopped: dict[str, int] = {}
    for row in _arrival_order(epochs, trials, judge.rungs).iter_rows(named=True):
        if row["trial_id"] not in stopped and not judge.keeps(row["trial_id"], row["epoch"], row):
            stopped[row["trial_id"]] = row["epoch"]

    final = finished.select("trial_id", *metrics)
    costs = to_costs(final.select(metrics).to_numpy(), [o.mode for o in objectives])
    front = [t for t, rank, ok in zip(final["trial_id"], non_dominated_ranks(costs), ~np.isnan(costs).any(axis=1))
             if rank == 0 and ok]

    correlation = []
    for rung in judge.rungs:
        at_rung = final.join(epochs.filter(pl.col("epoch") == rung), on="trial_id", suffix="_rung")
        for metric in metrics:
            values = at_rung.select(pl.col(f"{metric}_rung"), pl.col(metric)).cast(pl.Float64).fill_null(math.nan)
            correlation.append({"epoch": rung, "metric": metric,
                                **_kendall(values[f"{metric}_rung"].to_numpy(), values[metric].to_numpy())})

    total = sum(epochs_run.values())
    saved = sum(epochs_run[t] - rung for t, rung in stopped.items())
    return ReplayResult(
        epochs_saved_pct=100.0 * saved / total if total else 0.0,
        front_size=len(front),
        front_kept=sum(t not in stopped for t in front),
        front_stopped=[{"trial_id": t, "epoch": stopped[t]} for t in front if t in stopped],
        epochs_run=total,
        epochs_saved=saved,
        trials=trials.height,
        trials_stopped=len(stopped),
        objectives=[f"{o.metric}:{o.mode}" for o in objectives],
        reduction_factor=settings.reduction_factor,
        min_trials_per_rung=settings.min_trials,
        rungs=judge.summary(),
        rank_correlation=correlation,
    )

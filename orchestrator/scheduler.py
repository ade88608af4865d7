"""Ray Tune's side of early stopping: `MultiObjectiveASHA` (the scheduler around
`early_stopping.RungJudge`) and `OptunaSearchWithStops` (a search that records a stopped trial as
pruned, a diverged one as failed).

Tune's own schedulers take one metric and read it (and its mode) from TuneConfig; a multi-objective
OptunaSearch keeps its metric and mode lists to itself. So this scheduler is given its objectives
(inside the judge) when it is built, and refuses a metric set on TuneConfig, which would also turn
the search single-objective. It stops trials only on rung epochs, never pauses one, and runs pending
trials first come first served (FIFOScheduler's choice, as Tune's ASHA does).

FIFOScheduler's no-ops are right for a trial that completes, errs or is removed: what it recorded
at its rungs stays, because a trial that finished still counts against later arrivals (as in ASHA),
and one that Tune retries after an error is not judged again at rungs it already passed.
"""

from __future__ import annotations

import math
from collections.abc import Container
from typing import TYPE_CHECKING, Any

from ray.tune.experiment import Trial
from ray.tune.schedulers import FIFOScheduler, TrialScheduler
from ray.tune.search.optuna import OptunaSearch

from .early_stopping import RungJudge

if TYPE_CHECKING:
    from ray.tune.execution.tune_controller import TuneController

__all__ = ["MultiObjectiveASHA", "OptunaSearchWithStops"]


class MultiObjectiveASHA(FIFOScheduler):
    """Stop a trial at a rung when it is not among the best 1/eta of the trials that reached that
    rung, by non-dominated rank and crowding distance (see `orchestrator.early_stopping`).

    `time_attr`: the reported key that counts epochs. `key_attr`: the reported key that names a
    trial to the judge (None: Tune's trial id), so that trials of an earlier run, recorded in the
    judge under the same names, are the same trials. `stopped`: Tune trial id -> the epoch it was
    stopped at; its last report (the one Tune's callbacks saw last) is that rung's.
    """

    def __init__(self, judge: RungJudge, time_attr: str = "epoch", key_attr: str | None = None):
        super().__init__()
        self.judge = judge
        self.time_attr = time_attr
        self.key_attr = key_attr
        self.stopped: dict[str, int] = {}

    def set_search_properties(self, metric: str | None, mode: str | None, **spec: Any) -> bool:
        # False makes Tune refuse TuneConfig(metric=...): the objectives are the judge's.
        return metric is None and mode is None

    def on_trial_result(self, tune_controller: TuneController, trial: Trial, result: dict) -> str:
        epoch = result.get(self.time_attr)
        key = trial.trial_id if self.key_attr is None else result[self.key_attr]
        if epoch is None or self.judge.keeps(key, int(epoch), result):
            return TrialScheduler.CONTINUE
        self.stopped[trial.trial_id] = int(epoch)
        return TrialScheduler.STOP

    def debug_string(self) -> str:
        rungs = " | ".join(f"epoch {r['epoch']}: {r['reached']} reached, {r['stopped']} stopped"
                           for r in self.judge.summary())
        return f"Using MultiObjectiveASHA ({len(self.stopped)} stopped): {rungs}"


class OptunaSearchWithStops(OptunaSearch):
    """Ray Tune's OptunaSearch, except for how two kinds of trial end in the study:

    - a trial in `stopped` (Tune ids; an early-stopping scheduler's, filled as the sweep runs) is
      PRUNED instead of COMPLETE with its rung's values;
    - a trial whose objectives are not all finite numbers (a diverged one: its test error is NaN)
      is FAIL, so that samplers ignore it. Told COMPLETE with NaN, Optuna refuses (OptunaSearch
      only logs that), and the study's trial would stay RUNNING forever.

    OptunaSearch records a trial that ends without values as PRUNED, or as FAIL with an error, so
    each is handed no values."""

    def __init__(self, stopped: Container[str], **kwargs: Any):
        super().__init__(**kwargs)
        self.stopped = stopped

    def on_trial_complete(self, trial_id: str, result: dict | None = None, error: bool = False) -> None:
        metrics = self.metric if isinstance(self.metric, list) else [self.metric]
        if trial_id in self.stopped:
            result = None
        elif result is not None and not all(_finite(result.get(m)) for m in metrics):
            result, error = None, True
        super().on_trial_complete(trial_id, result, error)


def _finite(value: Any) -> bool:
    """A finite number (not None, not NaN or inf)."""
    try:
        return math.isfinite(value)
    except TypeError:
        return False

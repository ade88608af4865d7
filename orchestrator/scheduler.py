"""`MultiObjectiveASHA`: Ray Tune's side of `early_stopping.RungJudge`.

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

from typing import TYPE_CHECKING, Any

from ray.tune.experiment import Trial
from ray.tune.schedulers import FIFOScheduler, TrialScheduler

from .early_stopping import RungJudge

if TYPE_CHECKING:
    from ray.tune.execution.tune_controller import TuneController

__all__ = ["MultiObjectiveASHA"]


class MultiObjectiveASHA(FIFOScheduler):
    """Stop a trial at a rung when it is not among the best 1/eta of the trials that reached that
    rung, by non-dominated rank and crowding distance (see `orchestrator.early_stopping`).

    `time_attr`: the reported key that counts epochs. `stopped`: Tune trial id -> the epoch it was
    stopped at; its last report (the one Tune's callbacks saw last) is that rung's.
    """

    def __init__(self, judge: RungJudge, time_attr: str = "epoch"):
        super().__init__()
        self.judge = judge
        self.time_attr = time_attr
        self.stopped: dict[str, int] = {}

    def set_search_properties(self, metric: str | None, mode: str | None, **spec: Any) -> bool:
        # False makes Tune refuse TuneConfig(metric=...): the objectives are the judge's.
        return metric is None and mode is None

    def on_trial_result(self, tune_controller: TuneController, trial: Trial, result: dict) -> str:
        epoch = result.get(self.time_attr)
        if epoch is None or self.judge.keeps(trial.trial_id, int(epoch), result):
            return TrialScheduler.CONTINUE
        self.stopped[trial.trial_id] = int(epoch)
        return TrialScheduler.STOP

    def debug_string(self) -> str:
        rungs = " | ".join(f"epoch {r['epoch']}: {r['reached']} reached, {r['stopped']} stopped"
                           for r in self.judge.summary())
        return f"Using MultiObjectiveASHA ({len(self.stopped)} stopped): {rungs}"

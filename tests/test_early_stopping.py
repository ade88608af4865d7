"""Multi-objective early stopping: the sorting, the rung rule, the Tune scheduler, the offline replay."""

from __future__ import annotations

import dataclasses
import datetime as dt
import json
import math
import subprocess
import sys

import numpy as np
import optuna
import polars as pl
import pytest
from optuna.study._multi_objective import _fast_non_domination_rank
from pydantic import ValidationError
from ray.tune.experiment import Trial
from ray.tune.schedulers import TrialScheduler
from scipy import stats

from orchestrator import report
from orchestrator.early_stopping import EarlyStopping, replay
from orchestrator.objectives import Objective, default_objectives
from orchestrator.pareto import crowding_distance, non_dominated_ranks, survivors, to_costs
from orchestrator.results import load_results, pareto_front
from orchestrator.runner import _grid_plan, _search_plan, mark_pareto_front
from orchestrator.scheduler import MultiObjectiveASHA
from orchestrator.search import OptunaSpec, default_storage, make_searcher
from orchestrator.spec import load_spec
from orchestrator.store import ResultStore

from .integration import TINY, run_cli, table, write_sweep
from .rows import row

SPARSE = [("dead_gamma_pct", "max"), ("test_err", "min")]

# --- sorting and survivors ------------------------------------------------------------------------


def test_a_dominated_point_ranks_behind() -> None:
    costs = np.array([[1.0, 1.0], [2.0, 2.0], [0.0, 3.0], [3.0, 3.0]])
    assert non_dominated_ranks(costs).tolist() == [0, 1, 0, 2]


def test_modes_are_respected() -> None:
    # (dead 50, err 10) beats (40, 12) when dead is maximised; minimised, neither beats the other.
    values = [[50.0, 10.0], [40.0, 12.0]]
    assert non_dominated_ranks(to_costs(values, ["max", "min"])).tolist() == [0, 1]
    assert non_dominated_ranks(to_costs(values, ["min", "min"])).tolist() == [0, 0]
    assert non_dominated_ranks(to_costs(values, ["min", "max"])).tolist() == [1, 0]


def test_nan_and_none_rank_last_and_do_not_survive_a_cut() -> None:
    costs = to_costs([[1.0, 5.0], [None, 0.0], [2.0, 6.0], [math.nan, math.nan], [0.0, 9.0]], ["min", "min"])
    assert non_dominated_ranks(costs).tolist() == [0, 2, 1, 2, 0]
    assert survivors(costs, 0.6).tolist() == [True, False, True, False, True]


def test_ranks_agree_with_optuna_and_front_with_pareto_front() -> None:
    rng = np.random.default_rng(0)
    costs = rng.integers(0, 6, size=(60, 3)).astype(float)  # small integers: many ties and duplicates
    assert non_dominated_ranks(costs).tolist() == _fast_non_domination_rank(costs).tolist()
    costs[[3, 17], 1] = math.nan
    frame = pl.DataFrame(costs, schema=["a", "b", "c"])
    front = (non_dominated_ranks(costs) == 0) & ~np.isnan(costs).any(axis=1)
    assert front.tolist() == pareto_front(frame, {c: "min" for c in "abc"}).to_list()


def test_two_objectives_rank_as_the_general_sort_does() -> None:
    # Two objectives take a sort-based path; a constant third objective changes no dominance and
    # takes the general one. Small integers: ties in either objective and duplicate points.
    rng = np.random.default_rng(1)
    for n in (0, 1, 2, 7, 60):
        costs = rng.integers(0, 5, size=(n, 2)).astype(float)
        if n > 2:
            costs[1, 0] = math.nan
        general = non_dominated_ranks(np.column_stack([costs, np.zeros(n)]))
        assert non_dominated_ranks(costs).tolist() == general.tolist()


def test_ranks_peeled_until_enough_agree_with_all_fronts() -> None:
    # A cut needs only the fronts that hold its first `enough` points: those keep their ranks, the
    # rest (NaN points too) share the next one.
    rng = np.random.default_rng(2)
    for columns in (2, 3):
        costs = rng.integers(0, 5, size=(40, columns)).astype(float)
        costs[5, 0] = math.nan
        full = non_dominated_ranks(costs)
        for enough in range(1, 41):
            peeled = non_dominated_ranks(costs, enough=enough)
            last = peeled.max()
            assert (full[peeled < last] == peeled[peeled < last]).all()
            assert (full[peeled == last] >= last).all()
            assert (peeled < last).sum() >= enough or (peeled == full).all()


def test_crowding_breaks_ties_within_a_front() -> None:
    # One front on a line; the ends are infinitely uncrowded, then the widest gaps go first.
    costs = np.array([[0.0, 4.0], [1.0, 3.0], [1.1, 2.9], [3.0, 1.0], [4.0, 0.0]])
    ranks = non_dominated_ranks(costs)
    assert ranks.tolist() == [0] * 5
    assert crowding_distance(costs, ranks) == pytest.approx([math.inf, 0.55, 1.0, 1.45, math.inf])
    assert survivors(costs, 0.6).tolist() == [True, False, False, True, True]
    # The order of the rows does not matter.
    order = np.array([3, 0, 4, 2, 1])
    assert survivors(costs[order], 0.6).tolist() == survivors(costs, 0.6)[order].tolist()


def test_points_tied_at_the_cut_all_survive_and_one_always_does() -> None:
    same = np.ones((4, 2))
    assert survivors(same, 0.25).tolist() == [True] * 4
    assert survivors(np.array([[0.0, 0.0], [1.0, 1.0], [2.0, 2.0]]), 0.01).tolist() == [True, False, False]
    assert survivors(np.empty((0, 2)), 0.5).tolist() == []


def test_the_replay_side_imports_no_ray() -> None:
    code = "import sys, orchestrator.early_stopping; sys.exit('ray' in sys.modules)"
    assert subprocess.run([sys.executable, "-c", code]).returncode == 0


# --- settings -----------------------------------------------------------------------------------


def test_default_settings_make_asha_rungs() -> None:
    settings = EarlyStopping()
    assert settings.rung_epochs(150) == (10, 30, 90)
    assert settings.rung_epochs(300) == (10, 30, 90, 270)
    assert settings.min_trials == 3
    assert EarlyStopping(grace_period=4, reduction_factor=2.5).rung_epochs(70) == (4, 10, 25, 62)
    assert [o.metric for o in settings.objectives_for(None)] == ["dead_gamma_pct", "test_err"]
    search = [Objective(metric="test_loss", mode="min")]
    assert settings.objectives_for(search) == search
    assert EarlyStopping(rungs=[5, 50]).judge(None, 60).rungs == (5, 50)


@pytest.mark.parametrize(("raw", "words"), [
    ({"objectives": [{"metric": "pruned_test_err", "mode": "min"}]}, ["objectives", "pruned_test_err", "test_err"]),
    ({"rungs": [10, 5]}, ["rungs", "increasing"]),
    ({"rungs": [10], "grace_period": 5}, ["rungs", "grace_period", "not both"]),
    ({"reduction_factor": 1}, ["reduction_factor", "greater than 1"]),
    ({"min_trials_per_rung": 1}, ["min_trials_per_rung"]),
    ({"grace": 5}, ["grace", "Extra inputs"]),
])
def test_bad_settings_name_the_key(raw, words) -> None:
    with pytest.raises(ValidationError) as info:
        EarlyStopping.model_validate(raw)
    text = str(info.value)
    assert all(word in text for word in words), text


def test_settings_that_do_not_fit_the_sweep_say_the_fix() -> None:
    with pytest.raises(ValueError, match=r"early_stopping.rungs: \[30\] not before the last epoch \(20\)"):
        EarlyStopping(rungs=[10, 30]).rung_epochs(20)
    with pytest.raises(ValueError, match="early_stopping.grace_period: 10 .* smaller grace_period"):
        EarlyStopping().rung_epochs(10)
    search = OptunaSpec.model_validate({"n_trials": 2, "space": {"strength": {"type": "loguniform", "low": 1e-5,
                                        "high": 1e-3}}, "objectives": [{"metric": "pruned_test_err", "mode": "min"}]})
    with pytest.raises(ValueError, match="pruned_test_err not reported every epoch.*set early_stopping.objectives"):
        EarlyStopping().objectives_for(search.objectives)


# --- the scheduler on real Tune trials ----------------------------------------------------------


def _scheduler(rungs=(2,), min_trials=3) -> MultiObjectiveASHA:
    settings = EarlyStopping(rungs=list(rungs), reduction_factor=3, min_trials_per_rung=min_trials)
    return MultiObjectiveASHA(settings.judge(None, 10))


def _report(scheduler: MultiObjectiveASHA, trial: Trial, epoch: int, dead: float, err: float) -> str:
    return scheduler.on_trial_result(None, trial, {"epoch": epoch, "dead_gamma_pct": dead, "test_err": err})


def test_scheduler_stops_a_dominated_trial_at_its_rung_only() -> None:
    scheduler = _scheduler()
    c, a, b, d = (Trial("__fake", config={"name": n}, stub=True) for n in "cabd")
    for trial in (c, a, b, d):
        scheduler.on_trial_add(None, trial)
    # Off the rung nothing stops, however bad.
    assert _report(scheduler, d, 1, 0.0, 100.0) == TrialScheduler.CONTINUE
    # c is dominated by a, but arrives first: nobody stops before 3 trials have reached the rung.
    assert _report(scheduler, c, 2, 20.0, 20.0) == TrialScheduler.CONTINUE
    assert _report(scheduler, a, 2, 50.0, 10.0) == TrialScheduler.CONTINUE
    # b is non-dominated (an end of the front: least error): it goes on although it keeps 1 of 3.
    assert _report(scheduler, b, 2, 10.0, 5.0) == TrialScheduler.CONTINUE
    # d is dominated by all three: stopped at the rung.
    assert _report(scheduler, d, 2, 5.0, 30.0) == TrialScheduler.STOP
    # a retried trial that reports the rung again is not judged again; later epochs are no rungs.
    assert _report(scheduler, a, 2, 0.0, 100.0) == TrialScheduler.CONTINUE
    assert _report(scheduler, b, 3, 0.0, 100.0) == TrialScheduler.CONTINUE
    assert scheduler.stopped == {d.trial_id: 2}
    assert scheduler.judge.summary() == [{"epoch": 2, "reached": 4, "judged": 2, "stopped": 1}]
    assert "1 stopped" in scheduler.debug_string()
    assert scheduler.set_search_properties(None, None)
    assert not scheduler.set_search_properties("test_err", "min")


def test_trials_of_an_earlier_run_count_at_a_rung() -> None:
    # A resumed sweep remembers its finished trials' rung values: the first new arrival is judged.
    scheduler = _scheduler()
    for key, (dead, err) in {"old-a": (50.0, 10.0), "old-b": (10.0, 5.0)}.items():
        assert scheduler.judge.record(key, 2, {"dead_gamma_pct": dead, "test_err": err})
    assert not scheduler.judge.record("old-a", 2, {"dead_gamma_pct": 0.0, "test_err": 0.0})
    assert _report(scheduler, Trial("__fake", stub=True), 2, 5.0, 30.0) == TrialScheduler.STOP


def test_scheduler_says_which_objective_a_report_lacks() -> None:
    scheduler = _scheduler()
    trial = Trial("__fake", stub=True)
    with pytest.raises(ValueError, match="judges test_err.*epoch 2 has no such key"):
        scheduler.on_trial_result(None, trial, {"epoch": 2, "dead_gamma_pct": 1.0})


# --- the scheduler in real Tune runs ------------------------------------------------------------

EPOCHS = 6


def _planted_trainable():
    """Reports `EPOCHS` epochs of planted values: dead % grows to `dead`, error falls to `err`.
    A closure, so Ray's workers unpickle it by value."""

    def trainable(config: dict) -> None:
        from ray import tune

        for epoch in range(1, EPOCHS + 1):
            tune.report({"epoch": epoch, "dead_gamma_pct": config["dead"] * epoch / EPOCHS,
                         "test_err": config["err"] + 10.0 / epoch})

    return trainable


def _fit(tmp_path, trainable, scheduler, param_space=None, **tune_config):
    """One trial at a time, so trials reach each rung in the order Tune starts them."""
    from ray import tune

    return tune.Tuner(
        trainable,
        param_space=param_space,
        tune_config=tune.TuneConfig(scheduler=scheduler, max_concurrent_trials=1, **tune_config),
        run_config=tune.RunConfig(storage_path=str(tmp_path / "tune"), verbose=0),
    ).fit()


@pytest.mark.integration
def test_tuner_grid_stops_the_dominated_trial_at_its_rung(local_ray, tmp_path) -> None:
    from ray import tune

    scheduler = _scheduler(rungs=(2, 4))
    # In grid order; the third is dominated by the first two at epoch 2 and stops there.
    planted = [{"dead": 50.0, "err": 10.0}, {"dead": 10.0, "err": 5.0}, {"dead": 5.0, "err": 30.0},
               {"dead": 60.0, "err": 8.0}]
    trainable = _planted_trainable()
    results = _fit(tmp_path, lambda config: trainable(config["planted"]), scheduler,
                   param_space={"planted": tune.grid_search(planted)})
    assert not results.errors
    assert {r.config["planted"]["dead"]: r.metrics["epoch"] for r in results} == {
        50.0: EPOCHS, 10.0: EPOCHS, 5.0: 2, 60.0: EPOCHS}
    assert list(scheduler.stopped.values()) == [2]


@pytest.mark.integration
def test_tuner_under_multi_objective_optuna_search(local_ray, tmp_path) -> None:
    spec = OptunaSpec.model_validate({
        "n_trials": 6, "sampler": "nsga2", "population_size": 6, "seed": 1,
        "space": {"strength": {"type": "loguniform", "low": 1e-6, "high": 1e-2}},
    })
    url = default_storage(str(tmp_path / "results" / "search"))
    scheduler = _scheduler(rungs=(2, 4))
    trainable = _planted_trainable()

    def planted(config: dict) -> None:
        # Error rises with dead %: every trial is on the front at every rung, so crowding alone decides.
        dead = 25.0 * math.log10(config["strength"] / 1e-6)
        trainable({"dead": dead, "err": dead / 2.0})

    searcher = make_searcher(spec, "search", url, scheduler.stopped)
    results = _fit(tmp_path, planted, scheduler, search_alg=searcher, num_samples=6)
    assert not results.errors and len(results) == 6
    stopped = {r.metrics["trial_id"]: r.metrics["epoch"] for r in results if r.metrics["epoch"] < EPOCHS}
    assert stopped and stopped == scheduler.stopped and set(stopped.values()) <= set(scheduler.judge.rungs)
    # A stopped trial's values are a rung's: the study records it as pruned, without values.
    study = optuna.load_study(study_name="search", storage=url)
    pruned = study.get_trials(states=(optuna.trial.TrialState.PRUNED,))
    assert len(pruned) == len(stopped) and all(t.values is None for t in pruned)
    assert len(study.get_trials(states=(optuna.trial.TrialState.COMPLETE,))) == 6 - len(stopped)


# --- replay -------------------------------------------------------------------------------------


def _planted_sweep() -> tuple[pl.DataFrame, pl.DataFrame]:
    """Five 9-epoch trials. (dead %, error %) at the rung (epoch 3) and at the end (epoch 9):

        trial  start  wall  reaches epoch 3  rung      final
        t0       0    450    150             (10, 50)  (40, 10)   starts first, finishes third
        t1     200     90    230             (20, 40)  (50, 12)
        t2     300     90    330             ( 5, 60)  (60, 20)   dominated early, on the final front
        t3     400     90    430             (30, 45)  (45, 30)
        t4     500     90    530             ( 1, 70)  (10, 50)
    """
    rung = {"t0": (10, 50), "t1": (20, 40), "t2": (5, 60), "t3": (30, 45), "t4": (1, 70)}
    final = {"t0": (40, 10), "t1": (50, 12), "t2": (60, 20), "t3": (45, 30), "t4": (10, 50)}
    timing = {"t0": (0, 450), "t1": (200, 90), "t2": (300, 90), "t3": (400, 90), "t4": (500, 90)}
    epochs = []
    for t in rung:
        for e in range(1, 10):
            (d0, e0), (d1, e1) = rung[t], final[t]
            # rung value at 3, final at 9, straight lines elsewhere
            frac = (e - 3) / 6
            epochs.append({"trial_id": t, "epoch": e, "dead_gamma_pct": float(d0 + (d1 - d0) * frac),
                           "test_err": float(e0 + (e1 - e0) * frac)})
    t0 = dt.datetime(2025, 1, 1, tzinfo=dt.timezone.utc)
    trials = [{"trial_id": t, "status": "ok", "finished_at": t0 + dt.timedelta(seconds=start + wall),
               "wall_time_s": float(wall), "dead_gamma_pct": float(final[t][0]), "test_err": float(final[t][1])}
              for t, (start, wall) in timing.items()]
    return pl.DataFrame(epochs), pl.DataFrame(trials)


def test_replay_of_a_planted_sweep() -> None:
    epochs, trials = _planted_sweep()
    result = replay(epochs, trials, EarlyStopping(rungs=[3], reduction_factor=3, min_trials_per_rung=3))
    # In arrival order t0, t1, t2, t3, t4: t2 (dominated by t0 and t1) and t4 stop at epoch 3. Had
    # the order been by finish time (t1, t2, t0, ...), t2 would not have been judged and t0 would stop.
    assert result.trials_stopped == 2
    assert result.epochs_run == 45 and result.epochs_saved == 12
    assert result.epochs_saved_pct == pytest.approx(100 * 12 / 45)
    assert (result.front_size, result.front_kept) == (3, 2)
    assert result.front_stopped == [{"trial_id": "t2", "epoch": 3}]
    assert result.rungs == [{"epoch": 3, "reached": 5, "judged": 3, "stopped": 2}]
    dead = next(c for c in result.rank_correlation if c["metric"] == "dead_gamma_pct")
    expected = stats.kendalltau([10, 20, 5, 30, 1], [40, 50, 60, 45, 10])
    assert dead["n"] == 5 and dead["kendall_tau"] == pytest.approx(expected.statistic)
    line = result.to_json()
    assert "\n" not in line and json.loads(line)["front_kept"] == 2


def test_replay_takes_the_search_objectives_and_handles_constant_rungs() -> None:
    epochs, trials = _planted_sweep()
    epochs = epochs.with_columns(pl.when(pl.col("epoch") == 3).then(0.0).otherwise(pl.col("dead_gamma_pct"))
                                 .alias("dead_gamma_pct"))
    result = replay(epochs, trials, EarlyStopping(rungs=[3]), [Objective(metric="dead_gamma_pct", mode="max")])
    assert result.objectives == ["dead_gamma_pct:max"]
    # Nobody died by the rung: all tie, all go on, and the correlation is undefined.
    assert result.trials_stopped == 0 and result.front_kept == result.front_size == 1
    assert result.rank_correlation == [{"epoch": 3, "metric": "dead_gamma_pct", "n": 5, "kendall_tau": None,
                                        "p_value": None}]
    with pytest.raises(ValueError, match="nothing to replay"):
        replay(epochs, trials.with_columns(status=pl.lit("failed")), EarlyStopping(rungs=[3]))



# --- a sweep with early stopping: spec, runner, store, report -----------------------------------

ES_TINY = TINY.replace("epochs: 2, lr_steps: [1]", "epochs: 4, lr_steps: [3]").replace(
    "resources: {cpu: 1}", "resources: {cpu: 1, max_concurrent: 1}") + """\
early_stopping:
  rungs: [2]
  objectives: [{metric: train_loss, mode: min}]
"""


def test_cli_refuses_early_stopping_that_does_not_fit(tmp_path) -> None:
    sweep = write_sweep(tmp_path, ES_TINY.replace("rungs: [2]", "rungs: [2, 4]"))
    out = run_cli(sweep, "--results", tmp_path / "results")
    assert out.returncode == 2 and "Traceback" not in out.stderr
    assert out.stderr.strip() == (f"error: {sweep}: early_stopping.rungs: [4] not before the last epoch (4); "
                                  "keep rungs below train.epochs")
    assert not (tmp_path / "results").exists()


@pytest.mark.integration
def test_a_stopped_trial_is_a_result_that_a_rerun_keeps(tmp_path) -> None:
    # One trial at a time, in grid order: the third (an LR that cannot learn) is the first judged
    # at epoch 2 and, with the worst training loss of three, stops there.
    sweep = write_sweep(tmp_path, ES_TINY + "grid: {lr: [1.0e-2, 3.0e-3, 1.0e-9]}\n")
    results = tmp_path / "results"
    out = run_cli(sweep, "--results", results)
    assert out.returncode == 0, out.stdout + out.stderr
    assert "early stopping at epochs 2" in out.stdout and "3/3 done (2 ok, 1 stopped)" in out.stdout
    assert "3 trials: 0 already finished, 2 ok, 0 diverged, 1 stopped, 0 failed" in out.stdout

    trials = table(results, "tiny", "trials")
    stopped = trials.filter(pl.col("status") == "stopped").row(0, named=True)
    assert (stopped["lr"], stopped["epochs_run"]) == (1e-9, 2)
    at_rung = table(results, "tiny", "epochs").filter(pl.col("trial_id") == stopped["trial_id"])
    assert at_rung["epoch"].to_list() == [1, 2]
    assert stopped["train_loss"] == at_rung["train_loss"][1] and stopped["test_err"] == at_rung["test_err"][1]
    assert stopped["pruned_test_err"] is None and stopped["on_pareto_front"] is None
    assert set(trials.filter(pl.col("status") == "ok")["epochs_run"]) == {4}

    files = sorted((results / "tiny").glob("*/*.parquet"))
    stamps = {p: p.stat().st_mtime_ns for p in files}
    again = run_cli(sweep, "--results", results)
    assert again.returncode == 0 and "3 already finished, 0 to run" in again.stdout
    assert {p: p.stat().st_mtime_ns for p in files} == stamps
    store = ResultStore(str(results), "tiny")
    assert _grid_plan(load_spec(sweep), store, force=True, checkpoints={}).todo == 3  # --force runs it again

    # A grown sweep judges its new trial against the earlier three (read from their epoch rows):
    # the first to arrive at the rung in this run, it is stopped there.
    grown = write_sweep(tmp_path, ES_TINY + "grid: {lr: [1.0e-2, 3.0e-3, 1.0e-9, 2.0e-9]}\n")
    more = run_cli(grown, "--results", results)
    assert more.returncode == 0, more.stdout + more.stderr
    assert "3 already finished, 1 to run" in more.stdout and "(3 earlier trials there already)" in more.stdout
    trials = table(results, "tiny", "trials")
    assert trials.filter(pl.col("lr") == 2e-9).select("status", "epochs_run").row(0) == ("stopped", 2)
    assert {p: p.stat().st_mtime_ns for p in files} == stamps


@pytest.mark.integration
def test_a_search_with_early_stopping_counts_stopped_trials(tmp_path) -> None:
    results = tmp_path / "results"
    tiny = ["--set", "train.epochs=4", "--set", "train.lr_steps=[3]", "--set", "dataset.name=synthetic",
            "--set", "optuna.population_size=2", "--set", "optuna.n_trials=5", "--set", "resources.max_concurrent=1",
            "--set", "optuna.space={lr: {type: loguniform, low: 1.0e-9, high: 1.0e-1}}",
            "--set", "early_stopping.rungs=[2]", "--set", "early_stopping.objectives=[{metric: train_loss, mode: min}]"]
    out = run_cli("sweeps/quick_pareto_asha.yaml", "--results", results, *tiny)
    assert out.returncode == 0, out.stdout + out.stderr
    trials = table(results, "quick_pareto_asha", "trials")
    stopped = trials.filter(pl.col("status") == "stopped")
    assert trials.height == 5 and stopped.height >= 1 and set(trials["status"]) == {"ok", "stopped"}
    assert set(stopped["epochs_run"]) == {2} and stopped["on_pareto_front"].null_count() == stopped.height
    assert trials.filter(pl.col("status") == "ok")["on_pareto_front"].null_count() == 0
    study = optuna.load_study(study_name="quick_pareto_asha",
                              storage=f"sqlite:///{results}/quick_pareto_asha/optuna.db")
    states = [t.state.name for t in study.trials]
    assert states.count("PRUNED") == stopped.height and states.count("COMPLETE") == 5 - stopped.height
    assert study.metric_names == ["dead_gamma_pct", "test_err"]


def test_stopped_trials_are_unfinished_once_the_sweep_no_longer_stops_early(tmp_path) -> None:
    """Left as they are, they would be missing from every table: the rule that stopped them is gone."""
    without_rule = ES_TINY.split("early_stopping:")[0]
    grid = "grid: {lr: [1.0e-2, 3.0e-3, 1.0e-9]}\n"
    stopping = load_spec(write_sweep(tmp_path, ES_TINY + grid))
    plain = load_spec(write_sweep(tmp_path, without_rule + grid, name="plain"))
    store = ResultStore(str(tmp_path / "results"), "tiny")
    ok, diverged, stopped = (t.trial_id for t in stopping.trials)
    for trial_id, status in ((ok, "ok"), (diverged, "diverged"), (stopped, "stopped")):
        store.write("trials", trial_id, [row("trials", trial_id=trial_id, status=status)])

    assert _grid_plan(stopping, store, force=False, checkpoints={}).todo == 0
    plan = _grid_plan(plain, store, force=False, checkpoints={})
    assert plan.todo == 1 and set(plan.earlier) == {ok, diverged}
    assert any(line.startswith("1 trials stopped early by an earlier run's early_stopping are unfinished")
               for line in plan.lines)
    # A search counts the trials finished in the store the same way.
    search = ["optuna={n_trials: 5, space: {strength: {type: uniform, low: 0.0, high: 1.0}}}"]
    assert _search_plan(load_spec(write_sweep(tmp_path, ES_TINY, name="s"), search), store, False, {}).todo == 2
    assert _search_plan(load_spec(write_sweep(tmp_path, without_rule, name="p"), search), store, False, {}).todo == 3


def _planted_store(tmp_path) -> ResultStore:
    """The planted sweep of `_planted_sweep` in a real store, its trials each a real config."""
    epochs, trials = _planted_sweep()
    store = ResultStore(str(tmp_path / "results"), "planted")
    for index, trial in enumerate(trials.iter_rows(named=True)):
        store.write("trials", trial["trial_id"], [row("trials", **trial, sweep="planted", epochs_run=9, seed=index)])
        rows = epochs.filter(pl.col("trial_id") == trial["trial_id"]).iter_rows(named=True)
        store.write("epochs", trial["trial_id"], [row("epochs", **r, lr=0.1, train_loss=1.0, test_loss=1.0,
                                                      diverged=False) for r in rows])
    return store


PLANTED_SWEEP = TINY.replace("epochs: 2, lr_steps: [1]", "epochs: 9, lr_steps: [5]") + """\
early_stopping: {rungs: [3], reduction_factor: 3, min_trials_per_rung: 3}
"""


def test_replay_cli_on_a_planted_store(tmp_path, capsys) -> None:
    store = _planted_store(tmp_path)
    sweep = write_sweep(tmp_path, PLANTED_SWEEP)
    assert report.main([store.path, "--replay-early-stopping", "--sweep", str(sweep)]) == 0
    printed = capsys.readouterr().out.strip().splitlines()
    result = json.loads(printed[-1])
    assert len(printed) == 1
    assert (result["front_size"], result["front_kept"], result["trials_stopped"]) == (3, 2, 2)
    assert result["epochs_saved_pct"] == pytest.approx(100 * 12 / 45)

    # The report's page says the same.
    page = report.early_stopping_markdown(load_results(store.path), load_spec(sweep).spec, "planted")
    assert "2 of 5 trials stopped, 12 of 45 epochs saved (**26.7%**)" in page
    assert "size 3, **2 kept**; stopped: t2 (at epoch 3)" in page and "the sweep file's settings" in page
    # Two trials: too few for a rank correlation, which the page shows blank.
    two = dataclasses.replace(load_results(store.path), trials=load_results(store.path).trials.head(2))
    assert "| 3 | test_err | 2 |  |  |" in report.early_stopping_markdown(two, load_spec(sweep).spec, "planted")
    # The scheduler's defaults (first rung at epoch 10) cannot judge 9-epoch trials: the page says why.
    assert "Not replayed" in report.early_stopping_markdown(load_results(store.path), None, "planted")


@pytest.mark.parametrize(("args", "words"), [
    (["--replay-early-stopping"], "grace_period: 10 is not before the last epoch (9)"),
    (["--replay-early-stopping", "--sweep", "nope.yaml"], "--sweep nope.yaml: no such sweep file"),
    (["--replay-early-stopping", "--sweep", "BAD"], "early_stopping.rung: unknown key"),
])
def test_replay_cli_bad_input_is_one_error_line(tmp_path, capsys, args, words) -> None:
    store = _planted_store(tmp_path)
    bad = write_sweep(tmp_path, PLANTED_SWEEP.replace("{rungs: [3],", "{rung: [3],"), name="bad")
    args = [str(bad) if a == "BAD" else a for a in args]
    assert report.main([store.path, *args]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: ") and len(err.splitlines()) == 1 and words in err, err


def test_pareto_flags_leave_stopped_trials_out(tmp_path) -> None:
    store = ResultStore(str(tmp_path), "s")
    planted = {"a": ("ok", 10.0, 5.0), "b": ("ok", 5.0, 10.0), "c": ("stopped", 50.0, 1.0), "d": ("failed", None, None)}
    for trial_id, (status, dead, err) in planted.items():
        store.write("trials", trial_id, [row("trials", trial_id=trial_id, status=status, dead_gamma_pct=dead,
                                             test_err=err)])
    mark_pareto_front(store, default_objectives())
    flags = {t: store.read("trials", t)[0]["on_pareto_front"] for t in planted}
    # c would dominate both, but it was measured at a rung: it is not compared, and not flagged.
    assert flags == {"a": True, "b": False, "c": None, "d": False}


def test_stopped_trials_are_their_own_series_in_the_pareto_figure(tmp_path) -> None:
    from orchestrator import plots, results

    store = _planted_store(tmp_path)
    trial = store.read("trials", "t4")[0]
    store.write("trials", "t4", [{**trial, "status": "stopped", "epochs_run": 3, "dead_gamma_pct": 1.0,
                                  "test_err": 70.0}])
    tables = load_results(store.path)
    stopped = results.stopped_points(tables.trials)
    assert stopped.select("trial_id", "epochs_run", "test_err").rows() == [("t4", 3, 70.0)]
    # Kept out of the seed averages: the configurations average the four trials that ran to the end.
    assert results.aggregate(results.per_trial(tables.trials, tables.layers))["n_seeds"].sum() == 4
    fig = plots.pareto_figure(results.pareto_points(results.aggregate(results.per_trial(tables.trials, tables.layers))), stopped=stopped)
    early = [t for t in fig.data if t.name == "stopped at epoch 3"]
    assert len(early) == 1 and list(early[0].x) == [70.0] and list(early[0].y) == [1.0]

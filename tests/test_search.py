"""Pareto flags, the `optuna:` spec, and a real multi-objective Optuna study on SQLite driven by Ray Tune."""

from __future__ import annotations

import math

import optuna
import pytest
from pydantic import ValidationError

from orchestrator.search import (
    Categorical,
    LogUniform,
    OptunaSpec,
    default_storage,
    make_searcher,
    open_storage,
)


def test_spec_parses_every_param_type_and_defaults() -> None:
    spec = OptunaSpec.model_validate({
        "n_trials": 8,
        "space": {
            "strength": {"type": "loguniform", "low": 1e-6, "high": 1e-2},
            "beta_init": {"type": "uniform", "low": -0.5, "high": 1.0},
            "batch_size": {"type": "int", "low": 16, "high": 256, "log": True},
            "optimizer": {"type": "categorical", "choices": ["adam", "sgd"]},
        },
    })
    assert isinstance(spec.space["strength"], LogUniform)
    assert isinstance(spec.space["optimizer"], Categorical)
    assert [(o.metric, o.mode) for o in spec.objectives] == [("dead_gamma_pct", "max"), ("test_err", "min")]
    assert spec.sampler == "nsga2" and spec.storage is None and spec.seed == 0
    dists = spec.distributions()
    assert isinstance(dists["batch_size"], optuna.distributions.IntDistribution) and dists["batch_size"].log


@pytest.mark.parametrize(
    ("raw", "message"),
    [
        ({"n_trials": 0, "space": {"strength": {"type": "uniform", "low": 0, "high": 1}}}, "greater than 0"),
        ({"n_trials": 2, "space": {"strenght": {"type": "uniform", "low": 0, "high": 1}}}, "did you mean 'strength'"),
        ({"n_trials": 2, "space": {"strength": {"type": "normal", "low": 0, "high": 1}}}, "does not match any"),
        ({"n_trials": 2, "space": {"strength": {"type": "loguniform", "low": 1e-2, "high": 1e-4}}}, "greater than low"),
        ({"n_trials": 2, "space": {"optimizer": {"type": "categorical", "choices": ["adam", "adamw"]}}},
         "unknown optimizer"),
        ({"n_trials": 2, "space": {"strength": {"type": "uniform", "low": 0, "high": 1}},
          "objectives": [{"metric": "test_error", "mode": "min"}]}, "did you mean 'test_err'"),
        # trials columns that no Tune report carries: a setting, the epochs run, the wall time
        *(({"n_trials": 2, "space": {"strength": {"type": "uniform", "low": 0, "high": 1}},
            "objectives": [{"metric": column, "mode": "min"}]}, f"unknown metric '{column}'")
          for column in ("strength", "epochs_run", "wall_time_s")),
        ({"n_trials": 2, "space": {"strength": {"type": "uniform", "low": 0, "high": 1}}, "sampler": "cmaes"}, "nsga2"),
        ({"n_trials": 2, "space": {"strength": {"type": "uniform", "low": 0, "high": 1}}, "budget": 3}, "Extra inputs"),
    ],
)
def test_bad_spec_names_the_problem(raw: dict, message: str) -> None:
    with pytest.raises(ValidationError, match=message):
        OptunaSpec.model_validate(raw)


def test_default_storage_and_bad_urls(tmp_path) -> None:
    url = default_storage(str(tmp_path / "results" / "search"))
    assert url == f"sqlite:///{tmp_path.resolve()}/results/search/optuna.db"
    assert default_storage(f"file://{tmp_path}/results/search") == url
    # s3:// results keep their study in S3 (tests/test_s3.py); where no default fits, the fix is named.
    assert default_storage("s3://bucket/results/search") == "s3://bucket/results/search/optuna-journal"
    with pytest.raises(ValueError, match="set optuna.storage to a database URL"):
        default_storage("gs://bucket/results/search")
    with pytest.raises(ValueError, match="expected a database URL"):
        open_storage(str(tmp_path / "study.db"))
    assert isinstance(open_storage(str(tmp_path / "j" / "study.log")), optuna.storages.JournalStorage)


def test_postgresql_urls_reach_the_installed_driver() -> None:
    """`postgresql://` as docs/cluster.md writes it: SQLAlchemy's default driver (psycopg) is
    installed, so the URL gets as far as connecting (nothing listens on port 1 here)."""
    sqlalchemy = pytest.importorskip("sqlalchemy")
    pytest.importorskip("psycopg", reason="pyproject lists psycopg[binary]: pip install -e .")
    assert sqlalchemy.create_engine("postgresql://user:pass@127.0.0.1:1/optuna").dialect.driver == "psycopg"
    with pytest.raises(sqlalchemy.exc.OperationalError, match="127.0.0.1"):
        open_storage("postgresql://user:pass@127.0.0.1:1/optuna")


def test_directions_of_an_existing_study_are_checked(tmp_path) -> None:
    url = default_storage(str(tmp_path / "s"))
    optuna.create_study(storage=open_storage(url), study_name="s", directions=["minimize", "minimize"])
    spec = OptunaSpec(n_trials=2, space={"strength": {"type": "loguniform", "low": 1e-6, "high": 1e-2}})
    with pytest.raises(ValueError, match="optimizes"):
        make_searcher(spec, "s", url)


def test_the_study_names_its_objectives_prunes_stopped_trials_and_fails_diverged_ones(tmp_path) -> None:
    """On SQLite, through Ray Tune's searcher API without a Tune run: optuna-dashboard reads the
    axes' names from the study; a trial stopped early ends PRUNED; one whose objectives are not
    finite (diverged: NaN test error) or missing ends FAIL, never left RUNNING."""
    spec = OptunaSpec(n_trials=3, space={"strength": {"type": "loguniform", "low": 1e-6, "high": 1e-2}})
    url = default_storage(str(tmp_path / "s"))
    stopped: set[str] = set()
    searcher = make_searcher(spec, "s", url, stopped)
    assert optuna.load_study(study_name="s", storage=url).metric_names == ["dead_gamma_pct", "test_err"]
    for trial_id in ("a", "b", "c", "d"):
        assert searcher.suggest(trial_id) is not None
    stopped.add("a")  # as the scheduler does when it stops a trial at a rung
    searcher.on_trial_complete("a", result={"dead_gamma_pct": 0.0, "test_err": 50.0, "epoch": 10})
    searcher.on_trial_complete("b", result={"dead_gamma_pct": 20.0, "test_err": 5.0, "epoch": 100})
    searcher.on_trial_complete("c", result={"dead_gamma_pct": 30.0, "test_err": math.nan, "epoch": 1})
    searcher.on_trial_complete("d", result={"test_err": 5.0, "epoch": 1})
    study = optuna.load_study(study_name="s", storage=url)
    assert [t.state.name for t in study.trials] == ["PRUNED", "COMPLETE", "FAIL", "FAIL"]
    assert study.trials[1].values == [20.0, 5.0] and [t.number for t in study.best_trials] == [1]
    # Named again when the search resumes; the names stay.
    make_searcher(spec, "s", url)
    assert optuna.load_study(study_name="s", storage=url).metric_names == ["dead_gamma_pct", "test_err"]


# --- a real Ray Tune run on a real SQLite study -------------------------------------------------


def _make_trainable():
    """A trainable Ray's workers can unpickle: a closure travels by value, while a module-level
    function would need this test module importable on the workers."""

    def trainable(config: dict) -> None:
        from ray import tune

        # Two conflicting objectives of the sampled settings, like sparsity vs error.
        dead = 25.0 * math.log10(config["strength"] / 1e-6) + (5.0 if config["optimizer"] == "adam" else 0.0)
        tune.report({"dead_gamma_pct": dead, "test_err": 5.0 + dead / 10.0})

    return trainable


def _run_search(spec: OptunaSpec, study: str, url: str, storage_path: str, n: int) -> None:
    from ray import tune

    tuner = tune.Tuner(
        _make_trainable(),
        tune_config=tune.TuneConfig(search_alg=make_searcher(spec, study, url), num_samples=n),
        run_config=tune.RunConfig(storage_path=storage_path, verbose=0),
    )
    tuner.fit()


@pytest.mark.integration
def test_real_study_on_sqlite_through_tune_and_resume(local_ray, tmp_path) -> None:
    spec = OptunaSpec.model_validate({
        "n_trials": 6,
        "space": {
            "strength": {"type": "loguniform", "low": 1e-6, "high": 1e-2},
            "optimizer": {"type": "categorical", "choices": ["adam", "sgd"]},
        },
        "sampler": "nsga2",
        "population_size": 4,
    })
    url = default_storage(str(tmp_path / "results" / "search"))
    _run_search(spec, "search", url, str(tmp_path / "tune"), n=4)

    study = optuna.load_study(study_name="search", storage=url)
    complete = study.get_trials(states=(optuna.trial.TrialState.COMPLETE,))
    assert len(complete) == 4
    assert all(len(t.values) == 2 for t in complete)
    assert [d.name for d in study.directions] == ["MAXIMIZE", "MINIMIZE"]
    assert all(1e-6 <= t.params["strength"] <= 1e-2 and t.params["optimizer"] in ("adam", "sgd") for t in complete)

    # Same storage and study name: the study continues rather than starting over.
    _run_search(spec, "search", url, str(tmp_path / "tune"), n=spec.n_trials - len(complete))
    study = optuna.load_study(study_name="search", storage=url)
    assert len(study.get_trials(states=(optuna.trial.TrialState.COMPLETE,))) == 6 == len(study.trials)

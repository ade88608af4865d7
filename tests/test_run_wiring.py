"""What run.py wires around the runner, on a real local Ray: a trial one sweep finished reused by
another sweep under the same results root (the S3 case is in test_s3.py), what a sweep's console
shows, and a driver that lost its lock writing nothing sweep-wide."""

import polars as pl
import pytest

from orchestrator.runner import run_sweep
from orchestrator.spec import load_spec
from orchestrator.store import TABLES, ResultStore

from .integration import TINY, run_cli, table, write_sweep

pytestmark = pytest.mark.integration


def test_a_second_sweep_reuses_a_finished_trial_and_force_trains_it(tmp_path):
    results = tmp_path / "results"
    first = write_sweep(tmp_path, TINY + "checkpoint_every: 1\n", name="a")
    out = run_cli(first, "--results", results)
    assert out.returncode == 0, out.stdout + out.stderr
    # Tune's per-checkpoint INFO lines from the workers stay off the console; progress and the
    # way to the report are there, the report command last.
    assert "Checkpoint successfully created" not in out.stdout + out.stderr
    assert "1/1 done (1 ok)" in out.stdout
    assert out.stdout.splitlines()[-2:] == [f"results in {results / 'a'}",
                                            f"report: python orchestrator/report.py {results / 'a'}"]
    assert list((results / "a" / "_tune").rglob("checkpoint_*"))  # it did checkpoint
    shared = load_spec(first).trials[0].trial_id
    stamps = {p: p.stat().st_mtime_ns for p in (results / "a").glob("*/*.parquet")}

    second = write_sweep(tmp_path, TINY + "grid: {optimizer: [adam, sgd]}\n", name="b")
    out = run_cli(second, "--results", results)
    assert out.returncode == 0, out.stdout + out.stderr
    assert "reused 1 trials finished in other sweeps under the same results root, not trained again: " \
           "1 from 'a'" in out.stdout
    assert "2 trials, 1 already finished, 1 to run" in out.stdout and "1/1 done (1 ok)" in out.stdout
    assert "2 trials: 1 already finished (1 reused from other sweeps), 1 ok, 0 diverged, 0 stopped, 0 failed" in out.stdout
    trials = table(results, "b", "trials")
    assert dict(zip(trials["trial_id"], trials["reused_from"])) == {
        t.trial_id: "a" if t.trial_id == shared else None for t in load_spec(second).trials}
    # Not trained again: no Tune trial of it in b, and every row as sweep a wrote it.
    assert not list((results / "b" / "_tune").rglob(f"{shared}*"))
    for name in TABLES:
        copied = table(results, "b", name).filter(pl.col("trial_id") == shared)
        original = table(results, "a", name)
        if name == "trials":
            copied = copied.with_columns(sweep=pl.lit("a"), reused_from=pl.lit(None, pl.String))
        assert copied.height and copied.equals(original), name
    assert {p: p.stat().st_mtime_ns for p in (results / "a").glob("*/*.parquet")} == stamps

    retrained = run_cli(write_sweep(tmp_path, TINY, name="c"), "--results", results, "--force")
    assert retrained.returncode == 0, retrained.stdout + retrained.stderr
    assert "reused" not in retrained.stdout and "1/1 done (1 ok)" in retrained.stdout
    assert table(results, "c", "trials")["reused_from"].to_list() == [None]


def test_a_driver_that_lost_its_lock_marks_no_pareto_front(tmp_path, local_ray):
    """Another driver may own the results by then: the Pareto flags, set on every trial row at the
    end of a search, are left alone (an owner of the lock sets them, as test_runner shows)."""
    search = write_sweep(tmp_path, TINY + """\
optuna:
  n_trials: 2
  population_size: 2
  space: {strength: {type: loguniform, low: 1.0e-5, high: 1.0e-2}}
""", name="search")
    store = ResultStore(str(tmp_path / "results"), "search")
    summary = run_sweep(load_spec(search), store, still_locked=lambda: False)
    assert summary.statuses and set(summary.statuses.values()) == {"ok"}
    assert table(tmp_path / "results", "search", "trials")["on_pareto_front"].to_list() == [None, None]

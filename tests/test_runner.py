"""The runner on a real local Ray, through the real CLI, with real Parquet files."""

import os
import signal
import time

import polars as pl
import pytest
import torch

from orchestrator.spec import load_spec
from orchestrator.store import ResultStore
from sparsity_core import train, train_packed

from .integration import TINY, run_cli, start_cli, table, write_sweep

pytestmark = pytest.mark.integration


def _kill_when(proc, ready, failure: str, timeout_s: float = 240) -> None:
    """SIGKILL the CLI run `proc` as soon as `ready()` holds (polled every 0.2 s)."""
    deadline = time.monotonic() + timeout_s
    while not ready():
        if time.monotonic() > deadline:
            proc.kill()
            pytest.fail(f"{failure} in time")
        time.sleep(0.2)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()


def test_two_trial_sweep_lands_in_parquet_and_resumes(tmp_path):
    sweep = write_sweep(tmp_path, TINY + "grid: {optimizer: [adam, sgd]}\n")
    results = tmp_path / "results"
    out = run_cli(sweep, "--results", results)
    assert out.returncode == 0, out.stdout + out.stderr
    assert "2/2 done (2 ok)" in out.stdout

    trials = table(results, "tiny", "trials")
    assert sorted(trials["optimizer"]) == ["adam", "sgd"]
    assert set(trials["status"]) == {"ok"}
    for column in ("trial_id", "reg", "strength", "batch_size", "seed", "dataset", "model", "train_loss",
                   "test_loss", "test_err", "dead_gamma_pct", "dead_act_pct", "wall_time_s", "code_version"):
        assert trials[column].null_count() == 0, column
    epochs = table(results, "tiny", "epochs")
    assert epochs.height == 4 and sorted(epochs["epoch"].unique()) == [1, 2]
    assert sorted(epochs.filter(epochs["epoch"] == 2)["lr"]) == pytest.approx([1e-4, 1e-2])
    layers = table(results, "tiny", "layers")
    assert layers.height == 2 * 2 * 7
    assert layers.filter(layers["epoch"] == 2)["dead_act"].null_count() == 0
    assert table(results, "tiny", "filters")["gamma"].len() > 0

    files = sorted((results / "tiny").glob("*/*.parquet"))
    stamps = {p: p.stat().st_mtime_ns for p in files}
    again = run_cli(sweep, "--results", results)
    assert again.returncode == 0
    assert "2 already finished, 0 to run" in again.stdout
    assert {p: p.stat().st_mtime_ns for p in files} == stamps

    grown = write_sweep(tmp_path, TINY + "grid: {optimizer: [adam, sgd, rmsprop]}\n")
    more = run_cli(grown, "--results", results)
    assert "2 already finished, 1 to run" in more.stdout
    assert table(results, "tiny", "trials").height == 3
    assert {p: p.stat().st_mtime_ns for p in files} == stamps


def test_diverged_and_failing_trials(tmp_path):
    # A planted NaN (an absurd SGD learning rate) and a planted exception (a corrupt image file).
    data = tmp_path / "images"
    for split in ("train", "val"):
        for cls in ("a", "b"):
            folder = data / split / cls
            folder.mkdir(parents=True)
            (folder / "broken.png").write_bytes(b"not a png")
    sweep = write_sweep(tmp_path, TINY + f"""\
retries: 1
variants:
  - {{optimizer: sgd, lr: 1.0e+8}}
  - {{dataset: imagefolder, root: {data}, image_size: 8}}
""")
    out = run_cli(sweep, "--results", tmp_path / "results")
    assert out.returncode == 1, out.stdout + out.stderr
    trials = table(tmp_path / "results", "tiny", "trials")
    status = dict(zip(trials["dataset"], trials["status"]))
    assert status == {"synthetic": "diverged", "imagefolder": "failed"}
    error = trials.filter(trials["status"] == "failed")["error"][0]
    assert "UnidentifiedImageError" in error or "cannot identify image" in error
    assert "1 diverged, 1 failed" in out.stdout


def test_killed_sweep_resumes_without_rerunning_or_duplicating(tmp_path):
    sweep = write_sweep(tmp_path, """\
dataset: {name: digits}
model: {width: 0.125}
train: {epochs: 40, lr_steps: [30], optimizer: adam, reg: l2, strength: 1.0e-3, snapshot_every: 0}
device: cpu
grid: {optimizer: [adam, sgd]}
resources: {cpu: 1, max_concurrent: 1}
checkpoint_every: 4
""")
    results = tmp_path / "results"
    proc = start_cli(sweep, "--results", results)
    trials_dir = results / "tiny" / "trials"
    first_done, running = None, None

    def second_trial_past_epoch_8() -> bool:
        nonlocal first_done, running
        done = sorted(trials_dir.glob("*.parquet")) if trials_dir.exists() else []
        first_done = first_done or (done[0] if done else None)
        if first_done is not None:
            epochs = table(results, "tiny", "epochs").filter(pl.col("trial_id") != first_done.stem)
            if epochs.height and epochs["epoch"].max() >= 8:
                running = epochs["trial_id"][0]
        return running is not None

    _kill_when(proc, second_trial_past_epoch_8, "the sweep did not reach the second trial")
    stamp = first_done.stat().st_mtime_ns

    out = run_cli(sweep, "--results", results)
    assert out.returncode == 0, out.stdout + out.stderr
    assert "1 already finished, 1 to run" in out.stdout
    assert "1 unfinished trials continue from their last checkpoint" in out.stdout
    assert first_done.stat().st_mtime_ns == stamp
    assert not list((results / "tiny").glob("*/.tmp-*"))

    epochs = table(results, "tiny", "epochs")
    assert epochs.height == 80
    assert epochs.select(["trial_id", "epoch"]).is_duplicated().sum() == 0
    trials = table(results, "tiny", "trials")
    assert trials.height == 2 and set(trials["status"]) == {"ok"}

    # The resumed trial ends where an uninterrupted run with the same seed ends.
    resumed = next(t for t in load_spec(sweep).trials if t.trial_id == running)
    torch.set_num_threads(1)
    reference = train(resumed).final
    row = trials.filter(trials["trial_id"] == resumed.trial_id).row(0, named=True)
    assert row["train_loss"] == pytest.approx(reference.train_loss, rel=1e-4)
    assert row["test_err"] == pytest.approx(reference.test_err, abs=0.5)
    assert row["dead_gamma_pct"] == pytest.approx(reference.dead_gamma_pct, abs=0.5)


def test_second_orchestrator_on_the_same_results_refuses(tmp_path):
    sweep = write_sweep(tmp_path, TINY.replace("epochs: 2", "epochs: 400").replace("lr_steps: [1]", "lr_steps: []"))
    results = tmp_path / "results"
    first = start_cli(sweep, "--results", results)
    try:
        deadline = time.monotonic() + 60
        while not (results / "tiny" / ".lock").exists() and time.monotonic() < deadline:
            time.sleep(0.2)
        time.sleep(0.5)
        second = run_cli(sweep, "--results", results, timeout=60)
        assert second.returncode == 2
        assert "another orchestrator" in second.stderr and "Traceback" not in second.stderr
    finally:
        first.kill()
        first.wait()


def test_quick_pareto_search_runs_on_sqlite_and_resumes(tmp_path):
    import optuna

    results = tmp_path / "results"
    small = ["--set", "train.epochs=2", "--set", "train.lr_steps=[1]", "--set", "dataset.name=synthetic",
             "--set", "optuna.population_size=2"]
    out = run_cli("sweeps/quick_pareto.yaml", "--results", results, *small, "--set", "optuna.n_trials=3")
    assert out.returncode == 0, out.stdout + out.stderr
    storage = f"sqlite:///{results}/quick_pareto/optuna.db"
    study = optuna.load_study(study_name="quick_pareto", storage=storage)
    assert len(study.trials) == 3 and all(len(t.values) == 2 for t in study.trials)
    trials = table(results, "quick_pareto", "trials")
    assert trials.height == 3 and trials["on_pareto_front"].null_count() == 0
    assert trials["on_pareto_front"].any()

    more = run_cli("sweeps/quick_pareto.yaml", "--results", results, *small, "--set", "optuna.n_trials=5")
    assert more.returncode == 0, more.stdout + more.stderr
    assert "3 already finished, 2 to run" in more.stdout
    study = optuna.load_study(study_name="quick_pareto", storage=storage)
    assert len(study.trials) == 5
    trials = table(results, "quick_pareto", "trials")
    assert trials.height == 5
    best = trials.filter(pl.col("on_pareto_front"))
    # No trial off the front dominates one on it.
    for row in trials.filter(~pl.col("on_pareto_front")).iter_rows(named=True):
        assert not any(row["dead_gamma_pct"] >= b["dead_gamma_pct"] and row["test_err"] <= b["test_err"]
                       and (row["dead_gamma_pct"], row["test_err"]) != (b["dead_gamma_pct"], b["test_err"])
                       for b in best.iter_rows(named=True))


def test_diverged_search_trials_fail_in_the_study_and_a_rerun_runs_nothing(tmp_path):
    import optuna

    # Every trial diverges (SGD at LR 1e8): its objectives are NaN, which Optuna refuses as values.
    search = write_sweep(tmp_path, TINY.replace("optimizer: adam", "optimizer: sgd, lr: 1.0e+8") + """\
optuna:
  n_trials: 2
  population_size: 2
  space: {strength: {type: loguniform, low: 1.0e-5, high: 1.0e-2}}
""", name="search")
    results = tmp_path / "results"
    out = run_cli(search, "--results", results)
    assert out.returncode == 0, out.stdout + out.stderr
    assert "2/2 done (2 diverged)" in out.stdout
    storage = f"sqlite:///{results}/search/optuna.db"
    # Failed, so samplers ignore them; none left RUNNING.
    assert [t.state.name for t in optuna.load_study(study_name="search", storage=storage).trials] == ["FAIL", "FAIL"]
    trials = table(results, "search", "trials")
    assert trials["status"].to_list() == ["diverged"] * 2 and trials["on_pareto_front"].to_list() == [False] * 2

    # As if the driver had been killed after the last trial, before the Pareto flags were set.
    store = ResultStore(str(results), "search")
    for trial_id in store.finished():
        store.write("trials", trial_id, [{**store.read("trials", trial_id)[0], "on_pareto_front": None}])
    again = run_cli(search, "--results", results)
    assert again.returncode == 0, again.stdout + again.stderr
    assert "2 trials, 2 already finished, 0 to run" in again.stdout
    assert len(optuna.load_study(study_name="search", storage=storage).trials) == 2
    assert table(results, "search", "trials")["on_pareto_front"].to_list() == [False] * 2


def test_packed_trials_run_as_one_tune_trial_and_land_separately(tmp_path):
    sweep = write_sweep(tmp_path, TINY + "grid: {strength: [1.0e-3, 1.0e-4]}\nseeds: [0, 1]\npack: 3\n")
    results = tmp_path / "results"
    out = run_cli(sweep, "--results", results)
    assert out.returncode == 0, out.stdout + out.stderr
    assert "4 trials packed into 2 packed models" in out.stdout
    trials = table(results, "tiny", "trials")
    assert trials.height == 4 and set(trials["status"]) == {"ok"}
    assert sorted(zip(trials["strength"], trials["seed"])) == [(1e-4, 0), (1e-4, 1), (1e-3, 0), (1e-3, 1)]
    epochs = table(results, "tiny", "epochs")
    assert epochs.height == 8 and epochs.select(["trial_id", "epoch"]).is_duplicated().sum() == 0
    assert table(results, "tiny", "layers").height == 4 * 2 * 7


def test_packed_sweep_with_pack_auto_sizes_its_packs_by_a_probe(tmp_path):
    sweep = write_sweep(tmp_path, TINY + "grid: {strength: [1.0e-3, 1.0e-4]}\nseeds: [0, 1]\npack: auto\n")
    results = tmp_path / "results"
    out = run_cli(sweep, "--results", results)
    assert out.returncode == 0, out.stdout + out.stderr
    assert "pack: auto: 4 trials of this sweep in packs of up to " in out.stdout
    assert "(cpu: trials x steps/s by pack size 1: " in out.stdout
    trials = table(results, "tiny", "trials")
    assert trials.height == 4 and set(trials["status"]) == {"ok"}


def test_killed_packed_sweep_resumes_from_the_packs_checkpoint(tmp_path):
    sweep = write_sweep(tmp_path, """\
dataset: {name: digits, image_size: 16}
model: {width: 0.125}
train: {epochs: 24, lr_steps: [16], optimizer: adam, reg: l2, snapshot_every: 0}
device: cpu
grid: {strength: [1.0e-3, 1.0e-4]}
resources: {cpu: 1}
checkpoint_every: 4
pack: 2
""")
    results = tmp_path / "results"
    proc = start_cli(sweep, "--results", results)
    epochs_dir = results / "tiny" / "epochs"
    _kill_when(proc, lambda: len(list(epochs_dir.glob("*.parquet"))) == 2
               and table(results, "tiny", "epochs")["epoch"].max() >= 8, "the pack did not reach epoch 8")
    assert not (results / "tiny" / "trials").exists()

    out = run_cli(sweep, "--results", results)
    assert out.returncode == 0, out.stdout + out.stderr
    assert "2 trials packed into 1 packed models" in out.stdout
    assert "2 unfinished trials continue from their last checkpoint" in out.stdout
    epochs = table(results, "tiny", "epochs")
    assert epochs.height == 48 and epochs.select(["trial_id", "epoch"]).is_duplicated().sum() == 0
    trials = table(results, "tiny", "trials")
    assert trials.height == 2 and set(trials["status"]) == {"ok"}

    # Each trial ends where the uninterrupted pack ends.
    torch.set_num_threads(1)
    for cfg, reference in zip(cfgs := load_spec(sweep).trials, train_packed(cfgs)):
        row = trials.filter(trials["trial_id"] == cfg.trial_id).row(0, named=True)
        assert row["train_loss"] == pytest.approx(reference.final.train_loss, rel=1e-6)
        assert row["test_err"] == reference.final.test_err

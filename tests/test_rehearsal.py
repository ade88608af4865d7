"""The used-by line rehearsed as on a cluster: `ray job submit --working-dir . -- python
orchestrator/run.py sweeps/<file>.yaml` against a token-authenticated head with a second node (two
`ray start`s on this machine), results on an S3 server (moto's) through $FILTER_SPARSITY_RESULTS as
the cluster configs set it, CIFAR-10 files in their real format on a "shared filesystem" (one
absolute path that both nodes see), and the shipped table1 and pareto sweeps shrunk by `--set`.
Both drivers are killed mid-sweep and the jobs resubmitted as they were.

The S3 lock's lease is 3 s here ($FILTER_SPARSITY_LEASE_S on the head), so a resubmitted driver
takes over a killed one's within seconds instead of a minute.
"""

from __future__ import annotations

import json
import os
import secrets
import signal
import subprocess
import time
from pathlib import Path

import optuna
import polars as pl
import pyarrow.fs as pafs
import pyarrow.parquet as pq
import pytest

from orchestrator.guard import LEASE_ENV, RESULTS_ENV
from orchestrator.search import default_storage, open_storage
from orchestrator.store import TABLES, ResultStore

from .cifar import FIXTURE_ENV, write_cifar10
from .integration import RAY, ROOT, free_port, start_ray_node
from .test_s3 import BUCKET, CREDENTIALS, endpoint  # noqa: F401 (endpoint: the moto server, a fixture)

pytestmark = [pytest.mark.integration, pytest.mark.slow]

EPOCHS = 4
# The shipped sweeps shrunk to a few seconds a trial on one CPU; the CIFAR root on the shared path
# is added per test. Everything else (table1's grid axes, pareto's NSGA-II search) is as shipped.
SMALL = ["device=cpu", "resources.cpu=1", "resources.gpu=0", "model.width=0.125", f"train.epochs={EPOCHS}",
         "train.lr_steps=[3]", "checkpoint_every=1"]
TABLE1 = ["grid.dataset=[cifar10]", "grid.optimizer=[sgd,adam]", "grid.strength=[1.0e-4]", "seeds=[0]"]
PARETO = ["optuna.n_trials=4", "optuna.population_size=2", "train.reference_batch_size=null"]
SWEEPS = {"grid": ("sweeps/table1.yaml", TABLE1), "search": ("sweeps/pareto.yaml", PARETO)}  # job name -> sweep


@pytest.fixture(scope="module")
def cluster(endpoint, tmp_path_factory):  # noqa: F811 (the imported fixture)
    """(environment of a shell that talks to the cluster, dashboard address, results URI, data root)."""
    tmp = tmp_path_factory.mktemp("rehearsal")
    data = tmp / "shared" / "cifar"  # mounted at the same path on every node
    write_cifar10(data, per_file=100)
    token = tmp / "auth_token"
    token.write_text(secrets.token_hex(32))
    env = {k: v for k, v in os.environ.items() if k not in ("RAY_ADDRESS", "PYTHONPATH")}
    env.update(CREDENTIALS, RAY_AUTH_MODE="token", RAY_AUTH_TOKEN_PATH=str(token),
               PATH=f"{RAY.parent}:{env['PATH']}")
    results = f"s3://{BUCKET}/rehearsal?endpoint_override={endpoint}&scheme=http"
    port, dashboard = free_port(), free_port()
    nodes = []
    try:
        # The head runs the drivers, so it has the results location (as both cluster configs set it).
        nodes.append(start_ray_node(
            ["--head", f"--port={port}", "--num-cpus=1", "--include-dashboard=true",
             "--dashboard-host=127.0.0.1", f"--dashboard-port={dashboard}", f"--ray-client-server-port={free_port()}"],
            {**env, RESULTS_ENV: results, LEASE_ENV: "3"}, tmp / "head.log"))
        nodes.append(start_ray_node([f"--address=127.0.0.1:{port}", "--num-cpus=1"], env, tmp / "worker.log"))
        yield env, f"http://127.0.0.1:{dashboard}", results, data
    finally:
        # Ray's logs stay with the test's files (pytest keeps the last three runs').
        for index, node in reversed(list(enumerate(nodes))):
            node.stop(keep_logs=tmp / f"ray-logs-{index}")


@pytest.fixture
def jobs(cluster, monkeypatch):
    """The job client (the token in its header), and submit(id, sweep, overrides, *flags):
    `ray job submit --no-wait` from the repository root, as docs/cluster.md has it, of the sweep
    shrunk by SMALL and `overrides`, on the fixture's root. Jobs still running at the end are stopped."""
    from ray.job_submission import JobSubmissionClient

    env, address, _, data = cluster
    for name, value in CREDENTIALS.items():  # this process reads the results on S3 too
        monkeypatch.setenv(name, value)
    token = Path(env["RAY_AUTH_TOKEN_PATH"]).read_text()
    client = JobSubmissionClient(address, headers={"Authorization": f"Bearer {token}"})
    # Trial workers accept the fixture's md5s (not CIFAR-10's official ones).
    runtime_env = {"worker_process_setup_hook": "tests.cifar.accept_fixture_checksums",
                   "env_vars": {FIXTURE_ENV: str(data)}}
    submitted = []

    def submit(submission_id: str, sweep: str, overrides: list[str], *flags: str,
               wait: bool = False) -> subprocess.CompletedProcess:
        submitted.append(submission_id)
        sets = [a for o in [*SMALL, f"dataset.root={data}", *overrides] for a in ("--set", o)]
        command = [RAY, "job", "submit", "--address", address, "--submission-id", submission_id,
                   "--working-dir", ".", "--runtime-env-json", json.dumps(runtime_env),
                   *([] if wait else ["--no-wait"]), "--", "python", "orchestrator/run.py", sweep, *sets, *flags]
        return subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)

    yield client, submit
    for submission_id in submitted:
        if not client.get_job_status(submission_id).is_terminal():
            client.stop_job(submission_id)


def _frame(store: ResultStore, table: str) -> pl.DataFrame:
    selector = pafs.FileSelector(f"{store.path}/{table}", allow_not_found=True)
    files = [i.path for i in store.fs.get_file_info(selector) if i.base_name.endswith(".parquet")]
    if not files:
        return pl.DataFrame(schema=pl.from_arrow(TABLES[table].empty_table()).schema)
    return pl.from_arrow(pq.read_table(files, filesystem=store.fs, schema=TABLES[table]))


def _mid_sweep(store: ResultStore) -> bool:
    """A trial has finished, and another has checkpointed epochs but no result yet. A running trial
    rewrites its epochs file, and a file replaced while it is read in ranged requests can mix two
    versions (OSError): then not yet, asked again at the next poll."""
    try:
        finished = set(_frame(store, "trials")["trial_id"])
        started = set(_frame(store, "epochs")["trial_id"])
    except OSError:
        return False
    return bool(finished) and bool(started - finished)


def _wait(client, submission_id: str, timeout_s: float = 300) -> str:
    deadline = time.monotonic() + timeout_s
    while not (status := client.get_job_status(submission_id)).is_terminal():
        assert time.monotonic() < deadline, f"job {submission_id} still {status}"
        time.sleep(1)
    return str(status)


def test_local_results_are_refused_on_two_nodes(cluster, jobs, tmp_path):
    client, submit = jobs
    local = tmp_path / "local"
    out = submit("refused", "sweeps/table1.yaml", TABLE1, "--results", str(local), wait=True)
    logs = client.get_job_logs("refused")
    assert out.returncode != 0 and "FAILED" in str(client.get_job_status("refused")), out.stdout + out.stderr
    assert f"error: results folder {local / 'table1'} is on this machine's disk, but the Ray cluster has 2 " \
           "nodes" in logs
    assert "--results-shared" in logs and "Traceback" not in logs
    assert not local.exists()


def test_killed_drivers_resubmitted_finish_every_trial_once(cluster, jobs):
    client, submit = jobs
    _, _, results, data = cluster
    grid, search = ResultStore(results, "table1"), ResultStore(results, "pareto")
    started = time.monotonic()
    for name, (sweep, extra) in SWEEPS.items():
        out = submit(f"{name}-1", sweep, extra)
        assert out.returncode == 0, out.stdout + out.stderr

    # SIGKILL each driver mid-sweep, as a lost head or a killed job would.
    killed: set[str] = set()
    while len(killed) < 2:
        for submission_id, store in (("grid-1", grid), ("search-1", search)):
            if submission_id not in killed and _mid_sweep(store):
                os.kill(int(client.get_job_info(submission_id).driver_info.pid), signal.SIGKILL)
                killed.add(submission_id)
            status = client.get_job_status(submission_id)
            assert submission_id in killed or not status.is_terminal(), (
                f"{submission_id} ended ({status}) before it could be killed mid-sweep:\n"
                + client.get_job_logs(submission_id))
        assert time.monotonic() - started < 240, "the sweeps did not get going"
        time.sleep(0.5)
    assert _wait(client, "grid-1") == _wait(client, "search-1") == "FAILED"
    before = _frame(grid, "trials").select("trial_id", "finished_at")
    storage = default_storage(search.uri)
    study = optuna.load_study(study_name="pareto", storage=open_storage(storage))
    first_run = [(t.number, t.params) for t in study.get_trials(states=(optuna.trial.TrialState.COMPLETE,))]
    assert 1 <= len(first_run) < 4

    # The same commands again: they take over the dead drivers' leases and finish the sweeps.
    for name, (sweep, extra) in SWEEPS.items():
        out = submit(f"{name}-2", sweep, extra)
        assert out.returncode == 0, out.stdout + out.stderr
    assert _wait(client, "grid-2") == "SUCCEEDED", client.get_job_logs("grid-2")
    assert _wait(client, "search-2") == "SUCCEEDED", client.get_job_logs("search-2")

    grid_logs, search_logs = client.get_job_logs("grid-2"), client.get_job_logs("search-2")
    for logs, store in ((grid_logs, grid), (search_logs, search)):
        assert "data ready on 2 nodes" in logs and "Checkpoint successfully created" not in logs
        assert f"results in {store.uri}\nreport: python orchestrator/report.py '{store.uri}'\n" in logs
    assert f"{before.height} already finished, {4 - before.height} to run" in grid_logs
    assert "unfinished trials continue from their last checkpoint" in grid_logs
    assert f"search 'pareto': 4 trials, {len(first_run)} already finished, {4 - len(first_run)} to run" in search_logs

    # Every trial once, ok, on the data's absolute path; each epoch once; nothing finished rewritten.
    for store in (grid, search):
        trials, epochs = _frame(store, "trials"), _frame(store, "epochs")
        assert trials.height == 4 and trials["trial_id"].n_unique() == 4 and set(trials["status"]) == {"ok"}
        assert set(trials["root"]) == {str(data)}
        done = epochs.filter(pl.col("trial_id").is_in(trials["trial_id"].to_list()))
        assert done.select("trial_id", "epoch").is_duplicated().sum() == 0
        assert done.group_by("trial_id").agg(pl.col("epoch").sort())["epoch"].to_list() == \
            [list(range(1, EPOCHS + 1))] * 4
    assert before.join(_frame(grid, "trials"), on=["trial_id", "finished_at"]).height == before.height
    assert _frame(search, "trials")["on_pareto_front"].null_count() == 0

    # The study went on from the first run's trials, to exactly n_trials complete.
    study = optuna.load_study(study_name="pareto", storage=open_storage(storage))
    complete = study.get_trials(states=(optuna.trial.TrialState.COMPLETE,))
    assert len(complete) == 4 and [(t.number, t.params) for t in complete][:len(first_run)] == first_run

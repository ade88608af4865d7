"""Results on object storage: a real S3-compatible server (moto's, on 127.0.0.1) behind a custom
endpoint, reached the way a cluster reaches MinIO: `s3://bucket/prefix?endpoint_override=...`."""

from __future__ import annotations

import json
import os
import pickle
import signal
import socket
import subprocess
import sys

import optuna
import polars as pl
import pyarrow.fs as pafs
import pytest

from orchestrator import report, results
from orchestrator.guard import GuardError, S3Lease, SweepLock
from orchestrator.runner import reuse_finished
from orchestrator.journal import S3JournalBackend
from orchestrator.s3 import S3Location
from orchestrator.search import OptunaSpec, default_storage, make_searcher, open_storage
from orchestrator.spec import load_spec
from orchestrator.store import TABLES, ResultStore, SweepWriter
from sparsity_core import train

from .integration import ROOT, TINY, cli_env, run_cli, write_sweep
from .rows import row
from .test_report import OLD_RESULTS, RUNS, write_trial

moto_server = pytest.importorskip("moto.server", reason="needs moto's S3 server: pip install 'moto[server]'")

BUCKET = "results"
CREDENTIALS = {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing", "AWS_DEFAULT_REGION": "us-east-1"}


@pytest.fixture(scope="module")
def endpoint():
    """host:port of a running S3 server holding an empty bucket BUCKET."""
    s3 = moto_server.ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    s3.start()
    host, port = s3.get_host_and_port()
    fs = pafs.S3FileSystem(access_key="testing", secret_key="testing", region="us-east-1", scheme="http",
                           endpoint_override=f"{host}:{port}", allow_bucket_creation=True)
    fs.create_dir(BUCKET)
    yield f"{host}:{port}"
    s3.stop()


@pytest.fixture
def aws_env(monkeypatch):
    for name, value in CREDENTIALS.items():
        monkeypatch.setenv(name, value)


def _objects(endpoint: str, prefix: str) -> list[str]:
    fs, path = pafs.FileSystem.from_uri(f"s3://{BUCKET}/{prefix}?endpoint_override={endpoint}&scheme=http")
    infos = fs.get_file_info(pafs.FileSelector(path, recursive=True))
    return [i.path for i in infos if i.type == pafs.FileType.File]


def test_store_round_trip_on_s3(endpoint, aws_env, tiny):
    store = ResultStore(f"s3://{BUCKET}/unit?endpoint_override={endpoint}&scheme=http", "sweep")
    assert store.path == f"{BUCKET}/unit/sweep"
    assert store.uri == f"s3://{BUCKET}/unit/sweep?endpoint_override={endpoint}&scheme=http"
    assert store.finished() == {}

    cfg = tiny()
    epochs = [row("epochs", trial_id=cfg.trial_id, epoch=e, lr=0.1, train_loss=1.0 / e, test_loss=1.0,
                  test_err=0.5, dead_gamma_pct=0.0, dead_act_pct=0.0, diverged=False) for e in (1, 2)]
    store.write("epochs", cfg.trial_id, epochs)
    ok = row("trials", trial_id=cfg.trial_id, sweep="sweep", status="ok", **cfg.flat())
    store.write("trials", cfg.trial_id, [ok])
    store.write("trials", "f" * 12, [row("trials", trial_id="f" * 12, sweep="sweep", status="failed")])

    assert store.read("epochs", cfg.trial_id) == epochs
    assert store.read("epochs", "0" * 12) == []
    assert store.finished() == {cfg.trial_id: "ok", "f" * 12: "failed"}
    assert sorted(_objects(endpoint, "unit")) == [f"{BUCKET}/unit/sweep/epochs/{cfg.trial_id}.parquet",
                                                  f"{BUCKET}/unit/sweep/trials/{cfg.trial_id}.parquet",
                                                  f"{BUCKET}/unit/sweep/trials/{'f' * 12}.parquet"]

    store.fs.open_output_stream(f"{store.path}/trials/.tmp-killed-{cfg.trial_id}").close()
    store.remove_temporaries()
    assert not [key for key in _objects(endpoint, "unit") if ".tmp-" in key]


@pytest.mark.integration
def test_cli_sweep_writes_results_and_checkpoints_to_s3(endpoint, aws_env, tmp_path):
    sweep = write_sweep(tmp_path, TINY + "retries: 0\ncheckpoint_every: 1\n")
    run = run_cli(sweep, "--results", f"s3://{BUCKET}/cli?endpoint_override={endpoint}&scheme=http")
    assert run.returncode == 0, run.stdout + run.stderr
    assert f"results in s3://{BUCKET}/cli/tiny?endpoint_override={endpoint}&scheme=http" in run.stdout

    # Read back the way the analysis does: polars over the table's files.
    options = {"aws_endpoint_url": f"http://{endpoint}", "aws_allow_http": "true"}
    trials = pl.read_parquet(f"s3://{BUCKET}/cli/tiny/trials/*.parquet", storage_options=options)
    assert trials.select("status", "epochs_run", "dataset").rows() == [("ok", 2, "synthetic")]
    epochs = pl.read_parquet(f"s3://{BUCKET}/cli/tiny/epochs/*.parquet", storage_options=options)
    assert epochs["epoch"].to_list() == [1, 2]

    trial_id = trials["trial_id"].item()
    keys = _objects(endpoint, "cli")
    assert all("?" not in key and key.startswith(f"{BUCKET}/cli/tiny/") for key in keys)
    # Tune's storage is the same bucket: the worker uploaded the trial's checkpoint there.
    assert any("/_tune/" in key and f"/{trial_id}/checkpoint_" in key for key in keys), keys


# --- an Optuna study beside the results: a journal of conditional writes --------------------------


def test_moto_honours_conditional_writes(endpoint, aws_env):
    """What the journal and the lock rely on, checked against the server the tests use."""
    from botocore.exceptions import ClientError

    location = S3Location.from_uri(f"s3://{BUCKET}/conditions/object?endpoint_override={endpoint}&scheme=http")
    client = location.client()
    etag = client.put_object(Bucket=BUCKET, Key=location.key, Body=b"1", IfNoneMatch="*")["ETag"]
    for condition in ({"IfNoneMatch": "*"}, {"IfMatch": '"not-the-etag"'}):
        with pytest.raises(ClientError, match="PreconditionFailed"):
            client.put_object(Bucket=BUCKET, Key=location.key, Body=b"2", **condition)
    client.put_object(Bucket=BUCKET, Key=location.key, Body=b"3", IfMatch=etag)
    with pytest.raises(ClientError, match="PreconditionFailed"):
        client.delete_object(Bucket=BUCKET, Key=location.key, IfMatch=etag)


def test_default_storage_of_s3_results_is_a_journal_beside_them(endpoint):
    store = ResultStore(f"s3://{BUCKET}/unit?endpoint_override={endpoint}&scheme=http", "search")
    assert default_storage(store.uri) == (f"s3://{BUCKET}/unit/search/optuna-journal"
                                          f"?endpoint_override={endpoint}&scheme=http")


def test_journal_writers_with_stale_cursors_never_overwrite(endpoint, aws_env):
    uri = f"s3://{BUCKET}/journal-raw?endpoint_override={endpoint}&scheme=http"
    first, second = S3JournalBackend(uri), S3JournalBackend(uri)
    first.append_logs([{"n": 0}, {"n": 1}])
    second.append_logs([{"n": 2}])  # its cursor still says 0: logs 0 and 1 exist, it takes 2
    first.append_logs([{"n": 3}])  # and this one's says 2
    assert list(first.read_logs(0)) == list(second.read_logs(0)) == [{"n": i} for i in range(4)]
    assert list(second.read_logs(3)) == [{"n": 3}]
    assert list(pickle.loads(pickle.dumps(second)).read_logs(2)) == [{"n": 2}, {"n": 3}]


def test_a_study_on_s3_survives_its_driver(endpoint, aws_env):
    store = ResultStore(f"s3://{BUCKET}/study?endpoint_override={endpoint}&scheme=http", "search")
    url = default_storage(store.uri)
    spec = OptunaSpec.model_validate({"n_trials": 5, "space": {"strength": {"type": "loguniform", "low": 1e-6,
                                                                             "high": 1e-2}}})
    study = optuna.create_study(storage=open_storage(url), study_name="search", directions=["maximize", "minimize"],
                                sampler=optuna.samplers.RandomSampler(seed=0))
    study.optimize(lambda t: (t.suggest_float("strength", 1e-6, 1e-2, log=True), 1.0), n_trials=3)
    # Another driver (a resubmitted job on a new cluster) finds the study where the results are.
    again = optuna.load_study(study_name="search", storage=open_storage(url))
    assert [t.params for t in again.trials] == [t.params for t in study.trials]
    assert [t.state.name for t in again.trials] == ["COMPLETE"] * 3
    searcher = make_searcher(spec, "search", url)  # Tune pickles its searcher, storage included
    assert pickle.loads(pickle.dumps(searcher)) is not None


# --- one orchestrator per results prefix: a lease on S3 -------------------------------------------

HOLDER = """
import sys, time
from orchestrator.guard import SweepLock
from orchestrator.store import ResultStore
lock = SweepLock(ResultStore(sys.argv[1], "sweep"), lease_s=float(sys.argv[2]))
try:
    with lock:
        print("locked", flush=True)
        time.sleep(600)
except KeyboardInterrupt:  # how a driver that lost its lease is stopped
    print("lost" if lock.lost else "interrupted", flush=True)
    sys.exit(1)
"""
LEASE_S = 3.0  # renewed every second; short, so takeovers in the test take seconds


def _holder(results: str) -> subprocess.Popen:
    """A driver holding the sweep's lock in its own process, once it has printed `locked`."""
    proc = subprocess.Popen([sys.executable, "-c", HOLDER, results, str(LEASE_S)], cwd=ROOT, env=cli_env(),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    assert proc.stdout.readline() == "locked\n", proc.stderr.read()
    return proc


def _lock_body(store: ResultStore) -> dict | None:
    location = S3Location.from_uri(store.uri).child(".lock")
    client = location.client()
    try:
        return json.loads(client.get_object(Bucket=BUCKET, Key=location.key)["Body"].read())
    except client.exceptions.NoSuchKey:
        return None


@pytest.mark.integration
def test_s3_lock_keeps_drivers_apart_and_a_dead_ones_lease_is_taken_over(endpoint, aws_env):
    results = f"s3://{BUCKET}/locked?endpoint_override={endpoint}&scheme=http"
    store = ResultStore(results, "sweep")
    me = f"{socket.gethostname()} pid {os.getpid()}"

    alive = _holder(results)
    try:
        # A live holder renews while the second driver waits out its lease: refused, as locally.
        with pytest.raises(GuardError, match="another orchestrator") as err:
            with SweepLock(store, lease_s=LEASE_S):
                pass
        assert f"pid {alive.pid}" in str(err.value) and store.uri in str(err.value)

        # A stalled holder (stopped longer than its lease) is taken over; when it wakes, its next
        # renewal fails and it stops itself.
        alive.send_signal(signal.SIGSTOP)
        with SweepLock(store, lease_s=LEASE_S):
            assert _lock_body(store)["holder"] == me
            alive.send_signal(signal.SIGCONT)
            assert alive.wait(timeout=30) != 0
            assert "another orchestrator took over the lock" in alive.stderr.read()
            assert alive.stdout.read() == "lost\n"  # so the runner writes nothing sweep-wide
            assert _lock_body(store)["holder"] == me
    finally:
        alive.kill()
    assert _lock_body(store) is None  # released

    # A killed driver's lease expires and the resubmitted one takes it over.
    killed = _holder(results)
    killed.kill()
    killed.wait()
    with SweepLock(store, lease_s=LEASE_S):
        assert _lock_body(store)["holder"] == me


def test_s3_lease_that_cannot_be_taken_names_the_holder(endpoint, aws_env):
    location = S3Location.from_uri(f"s3://{BUCKET}/lease?endpoint_override={endpoint}&scheme=http").child(".lock")
    first, second = S3Lease(location, lease_s=LEASE_S), S3Lease(location, lease_s=LEASE_S)
    first.holder = "first driver"
    assert first.acquire() is None
    try:
        assert second.acquire() == "first driver"
    finally:
        first.release()
    assert second.acquire() is None  # released: taken at once
    second.release()


def test_report_straight_from_s3(endpoint, aws_env, tmp_path, monkeypatch):
    """A sweep written to S3 through the store is reported from its URI; the report lands in the
    local report/<sweep>/."""
    root = f"s3://{BUCKET}/reports?endpoint_override={endpoint}&scheme=http"
    store = ResultStore(root, "demo")
    for optimizer, strength in RUNS:
        for seed in (0, 1):
            write_trial(store, optimizer, strength, seed)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    monkeypatch.chdir(tmp_path)
    assert report.main([store.uri, "--lowgrad-iterations", "100"]) == 0
    out = tmp_path / "report" / "demo"
    assert {"index.html", "table.md", report.PLOTLY_JS, *report.FIGURES} <= {p.name for p in out.iterdir()}
    local = ResultStore(str(tmp_path / "local"), "demo")
    for optimizer, strength in RUNS:
        for seed in (0, 1):
            write_trial(local, optimizer, strength, seed)
    # the same numbers as from a local folder
    assert (out / "table.csv").read_text() == (report.build_report(local.path, lowgrad_iterations=100)
                                                / "table.csv").read_text()


def test_report_of_old_results_on_s3(endpoint, aws_env, tmp_path, monkeypatch):
    """Files of version 0.1.0 (another timestamp unit) read through S3 as they do locally."""
    store = ResultStore(f"s3://{BUCKET}/old?endpoint_override={endpoint}&scheme=http", "quick")
    for path in sorted(OLD_RESULTS.rglob("*.parquet")):
        with store.fs.open_output_stream(f"{store.path}/{path.relative_to(OLD_RESULTS).as_posix()}") as f:
            f.write(path.read_bytes())
    remote = results.load_results(store.uri)
    local = results.load_results(OLD_RESULTS)
    assert remote.trials.sort("trial_id").equals(local.trials.sort("trial_id"))
    assert remote.epochs.collect().sort("trial_id", "epoch").equals(local.epochs.collect().sort("trial_id", "epoch"))
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    out = report.build_report(store.uri, tmp_path / "out", lowgrad_iterations=100)
    assert "| adam | l2 |" in (out / "table.md").read_text()


def test_report_of_a_missing_sweep_on_s3_is_bad_input(endpoint, aws_env, capsys):
    assert report.main([f"s3://{BUCKET}/nowhere/sweep?endpoint_override={endpoint}&scheme=http"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and "no such results folder" in err and err.count("\n") == 1


# --- a trial finished in one sweep is reused by another under the same S3 root --------------------


def test_a_finished_trial_is_reused_across_sweeps_on_s3(endpoint, aws_env, tmp_path, tiny):
    root = f"s3://{BUCKET}/reuse?endpoint_override={endpoint}&scheme=http"
    shared, other = (tiny(optimizer=o, reg="l2", strength=1e-3) for o in ("adam", "sgd"))  # TINY's trials
    first = SweepWriter(ResultStore(root, "a"), "v1")
    train(shared, lambda metrics, state: first.add(shared, metrics.to_record()))
    first.finish(shared)

    sweep = load_spec(write_sweep(tmp_path, TINY + "grid: {optimizer: [adam, sgd]}\n", name="b"))
    assert {t.trial_id for t in sweep.trials} == {shared.trial_id, other.trial_id}
    store = ResultStore(root, "b")
    assert reuse_finished(sweep, store, SweepWriter(store, "v2")) == {shared.trial_id: "a"}
    assert store.finished() == {shared.trial_id: "ok"}  # the other trial is left to train
    for table in TABLES:
        copied, original = store.read(table, shared.trial_id), first.store.read(table, shared.trial_id)
        assert copied, table
        if table == "trials":
            assert (copied[0]["sweep"], copied[0]["reused_from"], copied[0]["code_version"]) == ("b", "a", "v1")
            copied = [{**r, "sweep": "a", "reused_from": None} for r in copied]
        assert copied == original, table
    # Again: nothing left to copy; a third sweep names the sweep that trained it.
    assert reuse_finished(sweep, store, SweepWriter(store, "v2")) == {}
    third = ResultStore(root, "c")
    assert reuse_finished(sweep, third, SweepWriter(third, "v3")) == {shared.trial_id: "a"}

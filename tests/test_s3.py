"""Results on object storage: a real S3-compatible server (moto's, on 127.0.0.1) behind a custom
endpoint, reached the way a cluster reaches MinIO: `s3://bucket/prefix?endpoint_override=...`."""

from __future__ import annotations

import polars as pl
import pyarrow.fs as pafs
import pytest

from orchestrator import report, results
from orchestrator.store import ResultStore

from .integration import TINY, run_cli, write_sweep
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
    epochs = [{"trial_id": cfg.trial_id, "epoch": e, "lr": 0.1, "train_loss": 1.0 / e, "test_loss": 1.0,
               "test_err": 0.5, "dead_gamma_pct": 0.0, "dead_act_pct": 0.0} for e in (1, 2)]
    store.write("epochs", cfg.trial_id, epochs)
    store.write("trials", cfg.trial_id, [{"trial_id": cfg.trial_id, "sweep": "sweep", "status": "ok", **cfg.flat()}])
    store.write("trials", "f" * 12, [{"trial_id": "f" * 12, "sweep": "sweep", "status": "failed"}])

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

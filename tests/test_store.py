"""The Parquet store: schemas derived from what a trial reports, whole rows only, results of earlier
versions still readable. Real trials, real Parquet files."""

from __future__ import annotations

import shutil
from pathlib import Path

import polars as pl
import pyarrow as pa
import pytest

from orchestrator.store import COMPLETED, FINISHED, TABLES, TRIAL_METRICS, ResultStore, SweepWriter
from sparsity_core import train
from sparsity_core.config import TrialConfig, settings
from sparsity_core.metrics import EpochMetrics, FilterMetrics, LayerMetrics, PruneMetrics, scalar_fields

from .rows import row

FIXTURE = Path(__file__).resolve().parent / "fixtures" / "results-0.1.0"


def test_every_reported_field_and_setting_is_a_column_of_its_type():
    kinds = {str: pa.string(), int: pa.int64(), float: pa.float64(), bool: pa.bool_()}
    for table, record in [("epochs", EpochMetrics), ("layers", LayerMetrics), ("filters", FilterMetrics)]:
        for column in scalar_fields(record):
            assert TABLES[table].field(column.name).type == kinds[column.type], (table, column)
    trials = TABLES["trials"]
    for column in scalar_fields(PruneMetrics):
        assert trials.field(column.name).type == kinds[column.type]
    assert set(TRIAL_METRICS) <= set(trials.names)
    for setting in settings():
        kind = pa.list_(kinds[setting.type]) if setting.sequence else kinds[setting.type]
        assert trials.field(setting.alias).type == kind, setting
    assert trials.field("strength").type == pa.float64() and trials.field("lr_steps").type == pa.list_(pa.int64())


def test_a_row_must_hold_exactly_the_tables_columns(tmp_path, tiny):
    store = ResultStore(str(tmp_path), "sweep")
    cfg = tiny()
    whole = row("epochs", trial_id=cfg.trial_id, epoch=1, lr=0.1, train_loss=1.0, test_loss=1.0, test_err=50.0,
                dead_gamma_pct=0.0, dead_act_pct=None, diverged=False)
    missing = {k: v for k, v in whole.items() if k != "test_err"}
    with pytest.raises(ValueError, match=r"missing \['test_err'\], unknown none"):
        store.write("epochs", cfg.trial_id, [whole, missing])
    with pytest.raises(ValueError, match=r"missing none, unknown \['test_error'\]"):
        store.write("epochs", cfg.trial_id, [{**whole, "test_error": 50.0}])
    assert store.read("epochs", cfg.trial_id) == []  # nothing written by a refused call
    store.write("epochs", cfg.trial_id, [whole])
    assert store.read("epochs", cfg.trial_id) == [whole]


def test_a_real_trials_records_round_trip_through_the_writer(tmp_path, tiny):
    """What a trial reports reaches Parquet whole: every value the records hold, pruning included,
    comes back from its column (the driver's writer on real records, real files)."""
    cfg = tiny(reg="l2", strength=1e-3, snapshot_every=1, act_every=1)
    records = []
    result = train(cfg, lambda metrics, state: records.append(metrics.to_record()))
    assert result.status == "ok" and records[-1]["pruned_test_err"] is not None
    store = ResultStore(str(tmp_path), "sweep")
    writer = SweepWriter(store, "test")
    for record in records:
        writer.add(cfg, record, wall_time_s=3.0)
    assert writer.finish(cfg) == "ok"

    def read(table: str) -> pl.DataFrame:
        frame = pl.read_parquet(f"{store.path}/{table}/{cfg.trial_id}.parquet")
        assert frame.columns == TABLES[table].names
        return frame

    epochs = read("epochs").sort("epoch")
    for record, got in zip(records, epochs.iter_rows(named=True), strict=True):
        for column in scalar_fields(EpochMetrics):
            assert got[column.name] == record[column.name], column.name
            assert column.nullable or got[column.name] is not None, column.name
    layers = read("layers").sort("epoch", "layer")
    reported = sorted(({**layer, "epoch": r["epoch"]} for r in records for layer in r["layers"]),
                      key=lambda x: (x["epoch"], x["layer"]))
    assert [{k: v for k, v in got.items() if k != "trial_id"} for got in layers.iter_rows(named=True)] == reported
    filters = read("filters")
    assert filters.height == sum(len(r["filters"]) for r in records)
    for column in scalar_fields(FilterMetrics):
        assert filters[column.name].null_count() == sum(f[column.name] is None for r in records for f in r["filters"])

    trial = read("trials").row(0, named=True)
    last = records[-1]
    assert {k: trial[k] for k in TRIAL_METRICS} == {k: last[k] for k in TRIAL_METRICS}
    assert all(trial[k] is not None for k in TRIAL_METRICS if last[k] is not None)
    assert {k: trial[k] for k in cfg.flat()} == cfg.flat()
    assert (trial["status"], trial["epochs_run"], trial["wall_time_s"]) == ("ok", 2, 3.0)


def test_a_trial_stopped_early_is_a_result_with_the_epoch_it_reached(tmp_path, tiny):
    """An early-stopping rule ends a 3-epoch trial after epoch 2: its row says `stopped`, with that
    epoch and its metrics (no pruning: that runs after the last epoch), and a re-run skips it."""
    cfg = tiny(epochs=3, lr_steps=[2])
    records = []
    train(cfg, lambda metrics, state: records.append(metrics.to_record()))
    store = ResultStore(str(tmp_path), "sweep")
    writer = SweepWriter(store, "test")
    for record in records[:2]:
        writer.add(cfg, record, wall_time_s=2.0)
    assert writer.finish(cfg, stopped=True) == "stopped"
    trial = store.read("trials", cfg.trial_id)[0]
    assert (trial["status"], trial["epochs_run"], trial["error"]) == ("stopped", 2, "")
    assert {k: trial[k] for k in ("train_loss", "test_err", "dead_gamma_pct")} == {
        k: records[1][k] for k in ("train_loss", "test_err", "dead_gamma_pct")}
    assert trial["pruned_test_err"] is None and trial["on_pareto_front"] is None
    assert [r["epoch"] for r in store.read("epochs", cfg.trial_id)] == [1, 2]
    assert store.finished() == {cfg.trial_id: "stopped"} and "stopped" in FINISHED and "stopped" not in COMPLETED


def test_a_record_missing_a_metric_fails_instead_of_writing_nulls(tmp_path, tiny):
    cfg = tiny()
    record = EpochMetrics(epoch=1, lr=0.1, train_loss=1.0, test_loss=1.0, test_err=50.0,
                          dead_gamma_pct=0.0).to_record()
    writer = SweepWriter(ResultStore(str(tmp_path), "sweep"), "test")
    del record["pruned_test_err"]
    writer.add(cfg, record, flush=True)
    with pytest.raises(KeyError, match="pruned_test_err"):
        writer.finish(cfg)


def test_results_of_version_0_1_0_stay_readable(tmp_path):
    """The 0.1.0 store wrote no `diverged` epoch column and millisecond timestamps: its files read
    in today's columns (the new one null) and can be written back whole, as a resumed trial does."""
    shutil.copytree(FIXTURE, tmp_path, dirs_exist_ok=True)
    store = ResultStore(str(tmp_path), "quick")
    finished = store.finished()
    assert len(finished) == 4 and set(finished.values()) == {"ok"}
    for trial_id in finished:
        for table, schema in TABLES.items():
            rows = store.read(table, trial_id)
            assert rows and all(list(r) == schema.names for r in rows), table
            store.write(table, trial_id, rows)
            assert store.read(table, trial_id) == rows
        epochs = store.read("epochs", trial_id)
        assert all(r["diverged"] is None and r["test_err"] is not None for r in epochs)
        trial = store.read("trials", trial_id)[0]
        assert trial["code_version"].startswith("0.1.0") and trial["strength"] is not None


def test_another_sweep_takes_over_finished_trials_of_version_0_1_0(tmp_path):
    """Reuse across sweeps reads the trials of an earlier version, which had no `reused_from`
    column (null: trained there), and copies every row of each into the new sweep."""
    shutil.copytree(FIXTURE, tmp_path, dirs_exist_ok=True)
    quick = ResultStore(str(tmp_path), "quick")
    ids = sorted(quick.finished())
    new = ResultStore(str(tmp_path), "new")
    sources = new.finished_elsewhere([*ids[:2], "f" * 12])
    assert {i: s.sweep for i, s in sources.items()} == dict.fromkeys(ids[:2], "quick")
    writer = SweepWriter(new, "unused")
    for trial_id, source in sources.items():
        assert writer.reuse(source, trial_id) == "ok"
    assert new.finished() == dict.fromkeys(ids[:2], "ok")
    for trial_id in ids[:2]:
        for table in TABLES:
            copied, original = new.read(table, trial_id), quick.read(table, trial_id)
            if table == "trials":
                assert copied[0]["sweep"] == "new" and copied[0]["reused_from"] == "quick"
                copied = [{**r, "sweep": "quick", "reused_from": None} for r in copied]
            assert copied == original, table
    # A third sweep prefers the sweep that trained a trial ("quick") to one that reused it ("new").
    third = ResultStore(str(tmp_path), "third").finished_elsewhere(ids)
    assert {i: s.sweep for i, s in third.items()} == dict.fromkeys(ids, "quick")


def test_a_row_records_the_settings_trained_under_the_asked_configs_id(tmp_path, tiny):
    """`remedy: gamma_lr_scale` trains gamma_lr_scale 0.1 and `leaky_relu` activation leaky_relu: the
    row says so, its id stays the asked config's. A row written before rows recorded them (the
    asked 1.0 beside the remedy) reads as trained too."""
    from orchestrator.results import load_results

    store = ResultStore(str(tmp_path), "sweep")
    writer = SweepWriter(store, "test")
    asked = {remedy: TrialConfig.model_validate({**tiny().model_dump(), "train": {**tiny().train.model_dump(),
                                                                                  "remedy": remedy}})
             for remedy in ("gamma_lr_scale", "leaky_relu")}
    for cfg in asked.values():
        writer.add(cfg, EpochMetrics(epoch=1, lr=0.1, train_loss=1.0, test_loss=1.0, test_err=50.0,
                                     dead_gamma_pct=0.0).to_record())
        writer.finish(cfg)
    rows = {r["remedy"]: r for r in pl.read_parquet(f"{store.path}/trials/*.parquet").to_dicts()}
    assert rows["gamma_lr_scale"]["gamma_lr_scale"] == 0.1 and rows["leaky_relu"]["activation"] == "leaky_relu"
    assert {r["trial_id"] for r in rows.values()} == {cfg.trial_id for cfg in asked.values()}
    assert all(TrialConfig.model_validate_json(r["config_json"]).trial_id == r["trial_id"] for r in rows.values())
    old = {**rows["gamma_lr_scale"], "gamma_lr_scale": 1.0, "trial_id": "0" * 12}  # as an earlier version wrote it
    own = {**old, "gamma_lr_scale": 0.5, "trial_id": "1" * 12}  # a sweep's own scale, kept by the remedy
    for r in (old, own):
        store.write("trials", r["trial_id"], [r])
    trials = load_results(store).trials
    scales = dict(trials.select("trial_id", "gamma_lr_scale").rows())
    assert (scales["0" * 12], scales["1" * 12]) == (0.1, 0.5)

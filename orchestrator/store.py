"""Parquet results: one file per trial and table, written atomically by the driver alone.

Layout under `<results>/<sweep>/` (a local folder or any URI pyarrow.fs understands, e.g.
`s3://bucket/prefix`, or `s3://bucket/prefix?endpoint_override=host:9000&scheme=http` for an
S3-compatible server such as MinIO; credentials come from the usual AWS_* variables):
- `trials/<trial_id>.parquet`: one row per finished trial (status ok / diverged / stopped / failed);
  a trial another sweep under the same root already finished is copied from there, not trained
  again, and its row names that sweep (`reused_from`);
- `epochs/<trial_id>.parquet`: one row per epoch, rewritten as the trial runs;
- `layers/<trial_id>.parquet`: per epoch and conv layer, filter counts dead by gamma / activation;
- `filters/<trial_id>.parquet`: per-filter gamma, beta, max activation, universality and the std of
  the activation (`act_std`) on the epochs where they were measured.
Each table has one fixed Arrow schema, derived from the records a trial reports
(`sparsity_core.metrics`) and from TrialConfig's settings (`sparsity_core.config.settings`), so
`polars.scan_parquet("<dir>/<table>/*.parquet")` reads all. A file is written to a hidden temporary
name and renamed, so readers never see half a file (on S3 the rename is a server-side copy, which is
all or nothing too). Files written before a column existed read with that column null.

`SweepWriter` is the driver's one writer: it turns a trial's reported records into these rows.
"""

from __future__ import annotations

import datetime as dt
import time
import urllib.parse
import uuid
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.fs as pafs
import pyarrow.parquet as pq

from sparsity_core.config import TrialConfig, settings
from sparsity_core.metrics import EpochMetrics, FilterMetrics, LayerMetrics, PruneMetrics, scalar_fields

__all__ = ["TABLES", "FINISHED", "COMPLETED", "TRIAL_METRICS", "ResultStore", "SweepWriter"]

# Statuses that a re-run skips (`--force` re-runs them); "failed" trials run again. "stopped": an
# early-stopping rule ended the trial at a rung; its metrics are that epoch's.
FINISHED = ("ok", "diverged", "stopped")
# Of those, the trials that were not stopped early: their metrics are the end of training, which
# a Pareto front compares.
COMPLETED = ("ok", "diverged")
FLUSH_EVERY_S = 10.0  # a running trial's epoch rows reach Parquet at least this often

_ARROW = {str: pa.string(), int: pa.int64(), float: pa.float64(), bool: pa.bool_()}
# Of an epoch's scalars, those a trial row says otherwise: `epoch` is `epochs_run`, `diverged` is
# the status, and the schedule's `lr` is a setting's consequence, not an outcome.
_NOT_OUTCOMES = ("epoch", "lr", "diverged")
# The last epoch's outcomes and its pruning results: a finished trial's metrics, in column order.
TRIAL_METRICS = (*(c.name for c in scalar_fields(EpochMetrics) if c.name not in _NOT_OUTCOMES),
                 *(c.name for c in scalar_fields(PruneMetrics)))


def _columns(record: type) -> list[pa.Field]:
    return [pa.field(c.name, _ARROW[c.type]) for c in scalar_fields(record)]


def _trials_schema() -> pa.Schema:
    outcomes = {f.name: f for f in [*_columns(EpochMetrics), *_columns(PruneMetrics)]}
    return pa.schema([
        pa.field("trial_id", pa.string()),
        pa.field("sweep", pa.string()),
        pa.field("status", pa.string()),
        *(pa.field(s.alias, pa.list_(_ARROW[s.type]) if s.sequence else _ARROW[s.type]) for s in settings()),
        pa.field("epochs_run", pa.int64()),
        # null where not measured (pruning: the last epoch of a trial that did not diverge)
        *(outcomes[name] for name in TRIAL_METRICS),
        # multi-objective searches only: non-dominated among the sweep's completed trials (null
        # for a stopped one: its metrics were measured early)
        pa.field("on_pareto_front", pa.bool_()),
        pa.field("wall_time_s", pa.float64()),
        pa.field("code_version", pa.string()),
        # the sweep that trained this trial, when this one took it over finished (null: trained here)
        pa.field("reused_from", pa.string()),
        pa.field("error", pa.string()),
        pa.field("finished_at", pa.timestamp("s", tz="UTC")),
        pa.field("config_json", pa.string()),
    ])


_TRIAL_ID = pa.field("trial_id", pa.string())
_EPOCH = pa.field("epoch", pa.int64())
TABLES: dict[str, pa.Schema] = {
    "trials": _trials_schema(),
    "epochs": pa.schema([_TRIAL_ID, *_columns(EpochMetrics)]),
    # per epoch: a LayerMetrics per conv layer, and on snapshot epochs a FilterMetrics per filter
    "layers": pa.schema([_TRIAL_ID, _EPOCH, *_columns(LayerMetrics)]),
    "filters": pa.schema([_TRIAL_ID, _EPOCH, *_columns(FilterMetrics)]),
}
# The per-epoch tables and the columns that identify one of their rows within a trial.
ROW_KEYS = {"epochs": ("epoch",), "layers": ("epoch", "layer"), "filters": ("epoch", "layer", "filter")}


def _sweep_uri(root: str, sweep: str) -> str:
    """`root` with `/<sweep>` appended to its path, for the logs.

    The query holds filesystem options, not path: `s3://bucket/prefix?endpoint_override=host:9000&scheme=http`
    becomes `s3://bucket/prefix/<sweep>?endpoint_override=host:9000&scheme=http`. Credentials written
    into the URI (`s3://KEY:SECRET@bucket`) are left out.
    """
    parts = urllib.parse.urlsplit(root)
    host = parts.netloc.rpartition("@")[2]
    return urllib.parse.urlunsplit((parts.scheme, host, f"{parts.path.rstrip('/')}/{sweep}", parts.query, ""))


class ResultStore:
    """The results of one sweep: `<root>/<sweep>/<table>/<trial_id>.parquet`."""

    def __init__(self, root: str, sweep: str):
        if "://" in root:
            self.fs, base = pafs.FileSystem.from_uri(root)
            self.uri = _sweep_uri(root, sweep)
        else:
            self.fs, base = pafs.LocalFileSystem(), str(Path(root).resolve())
            self.uri = str(Path(base) / sweep)
        self.root = root  # as given: every sweep's store under it is `ResultStore(root, <sweep>)`
        self.path = f"{base.rstrip('/')}/{sweep}"  # in `fs`: no scheme, no query (`bucket/prefix/<sweep>`)
        self.sweep = sweep

    @property
    def is_local(self) -> bool:
        return isinstance(self.fs, pafs.LocalFileSystem)

    def _file(self, table: str, trial_id: str) -> str:
        return f"{self.path}/{table}/{trial_id}.parquet"

    def write(self, table: str, trial_id: str, rows: list[dict[str, Any]]) -> None:
        """Replace the table's file for this trial with `rows`, atomically. Each row holds exactly
        the table's columns (None where a value is missing), so a renamed metric fails here
        instead of becoming a column of nulls."""
        schema = TABLES[table]
        for row in rows:
            if row.keys() != set(schema.names):
                missing = [c for c in schema.names if c not in row]
                extra = [k for k in row if k not in schema.names]
                raise ValueError(f"{table} row of trial {trial_id} does not hold the table's columns: "
                                 f"missing {missing or 'none'}, unknown {extra or 'none'}")
        final = self._file(table, trial_id)
        folder = final.rsplit("/", 1)[0]
        self.fs.create_dir(folder, recursive=True)
        tmp = f"{folder}/.tmp-{uuid.uuid4().hex}-{trial_id}"
        pq.write_table(pa.Table.from_pylist(rows, schema=schema), tmp, filesystem=self.fs)
        self.fs.move(tmp, final)

    def read(self, table: str, trial_id: str) -> list[dict[str, Any]]:
        """The trial's rows in today's columns: one added since the file was written reads as None,
        one since dropped is left out."""
        path = self._file(table, trial_id)
        if self.fs.get_file_info(path).type != pafs.FileType.File:
            return []
        return pq.read_table(path, filesystem=self.fs, schema=TABLES[table]).to_pylist()

    def _trials_columns(self, path: str, columns: list[str], ids: set[str] | None = None) -> list[tuple]:
        """`columns` of the trials files under the sweep folder `path` (only those of `ids`, if
        given): one listing, one read."""
        selector = pafs.FileSelector(f"{path}/trials", allow_not_found=True)
        files = [i.path for i in self.fs.get_file_info(selector) if i.base_name.endswith(".parquet")
                 and (ids is None or i.base_name.removesuffix(".parquet") in ids)]
        if not files:
            return []
        table = pq.read_table(files, filesystem=self.fs, columns=columns, schema=TABLES["trials"])
        return list(zip(*(table[c].to_pylist() for c in columns)))

    def finished(self) -> dict[str, str]:
        """trial_id -> status for every trial with a trials file."""
        return dict(self._trials_columns(self.path, ["trial_id", "status"]))

    def finished_elsewhere(self, trial_ids: Iterable[str]) -> dict[str, ResultStore]:
        """trial_id -> the store of another sweep under the same results root where that trial
        finished (a COMPLETED status: trained to its end), for each of `trial_ids` finished anywhere. A sweep that
        trained the trial is preferred to one that reused it, then sweeps in name order.

        One listing of the root and one of each sweep's trials/ folder; only the matching trial
        files are read."""
        wanted = set(trial_ids)
        if not wanted:
            return {}
        root = self.path.rsplit("/", 1)[0]
        listed = self.fs.get_file_info(pafs.FileSelector(root, allow_not_found=True))
        sweeps = sorted(i.base_name for i in listed if i.type == pafs.FileType.Directory and i.base_name != self.sweep)
        found: dict[str, tuple[bool, ResultStore]] = {}  # trial_id -> (reused there, that sweep's store)
        for sweep in sweeps:
            rows = self._trials_columns(f"{root}/{sweep}", ["trial_id", "status", "reused_from"], wanted)
            other = ResultStore(self.root, sweep) if rows else None
            for trial_id, status, origin in rows:
                if status in COMPLETED and (trial_id not in found or (found[trial_id][0] and origin is None)):
                    found[trial_id] = (origin is not None, other)
        return {trial_id: store for trial_id, (_, store) in found.items()}

    def remove_temporaries(self) -> None:
        """Delete temp files a killed driver left behind (never read: they lack the .parquet suffix)."""
        for table in TABLES:
            selector = pafs.FileSelector(f"{self.path}/{table}", allow_not_found=True)
            for info in self.fs.get_file_info(selector):
                if info.base_name.startswith(".tmp-"):
                    self.fs.delete_file(info.path)


@dataclass
class _Running:
    cfg: TrialConfig
    # table -> row key (epoch first, see ROW_KEYS) -> row
    rows: dict[str, dict[tuple, dict[str, Any]]] = field(default_factory=lambda: {t: {} for t in ROW_KEYS})
    last: dict[str, Any] | None = None  # the latest record
    wall_time_s: float | None = None
    flushed_at: float = 0.0
    loaded: bool = False


def _epoch_rows(trial_id: str, record: dict[str, Any]) -> dict[str, list[dict[str, Any]]]:
    """The rows of the per-epoch tables that one reported record (`EpochMetrics.to_record()`) makes."""
    epoch = int(record["epoch"])
    return {
        "epochs": [{"trial_id": trial_id, **{c.name: record[c.name] for c in scalar_fields(EpochMetrics)}}],
        "layers": [{"trial_id": trial_id, "epoch": epoch, **row} for row in record["layers"]],
        "filters": [{"trial_id": trial_id, "epoch": epoch, **row} for row in record["filters"] or []],
    }


class SweepWriter:
    """The driver's writer of a sweep's results: epoch/layer/filter rows as a trial's records
    arrive, its trial row when it ends.

    Rows are keyed by trial id and epoch, so a trial that restarts (a retry, or a resume from its
    checkpoint) replaces what it reports again instead of duplicating it.
    """

    def __init__(self, store: ResultStore, version: str):
        self.store = store
        self.version = version
        self.running: dict[str, _Running] = {}
        self.statuses: dict[str, str] = {}  # trial_id -> status of every trial finished so far

    def add(self, cfg: TrialConfig, record: dict[str, Any], *, wall_time_s: float | None = None,
            flush: bool = False) -> None:
        """One epoch's record of the trial `cfg`; `flush` writes its rows now (at a checkpoint, so
        the rows of every checkpointed epoch are on disk), else they are written every FLUSH_EVERY_S."""
        tid = cfg.trial_id
        run = self.running.setdefault(tid, _Running(cfg))
        epoch = int(record["epoch"])
        if not run.loaded:  # keep the rows of epochs finished before a resume from a checkpoint
            for table, key in ROW_KEYS.items():
                for row in self.store.read(table, tid):
                    if row["epoch"] < epoch:
                        run.rows[table][tuple(row[k] for k in key)] = row
            run.loaded = True
        for table, new in _epoch_rows(tid, record).items():
            rows = run.rows[table]
            for stale in [k for k in rows if k[0] >= epoch]:  # a restart reports these again
                del rows[stale]
            for row in new:
                rows[tuple(row[k] for k in ROW_KEYS[table])] = row
        run.last, run.wall_time_s = record, wall_time_s
        if flush or time.monotonic() - run.flushed_at > FLUSH_EVERY_S:
            self._flush(run)

    def _flush(self, run: _Running) -> None:
        for table, rows in run.rows.items():
            if rows:
                self.store.write(table, run.cfg.trial_id, [rows[k] for k in sorted(rows)])
        run.flushed_at = time.monotonic()

    def finish(self, cfg: TrialConfig, failure: str | None = None, *, stopped: bool = False) -> str:
        """Write the trial's remaining rows and its trial row; `failure` is the error of a trial
        that raised, `stopped` says an early-stopping rule ended it (its row then holds the epoch
        it reached and that epoch's metrics). Returns its status."""
        run = self.running.pop(cfg.trial_id, None) or _Running(cfg)
        self._flush(run)
        last = run.last
        status = ("failed" if failure is not None else "diverged" if last and last["diverged"]
                  else "stopped" if stopped else "ok")
        self.store.write("trials", cfg.trial_id, [{
            "trial_id": cfg.trial_id,
            "sweep": self.store.sweep,
            "status": status,
            **cfg.as_trained().flat(),  # the settings trained (a remedy's rewrite applied); the id is the asked config's
            "epochs_run": last["epoch"] if last else 0,
            **{name: last[name] if last else None for name in TRIAL_METRICS},
            "on_pareto_front": None,
            "wall_time_s": run.wall_time_s,
            "code_version": self.version,
            "reused_from": None,
            "error": failure or "",
            "finished_at": dt.datetime.now(dt.timezone.utc),
            "config_json": cfg.model_dump_json(),
        }])
        self.statuses[cfg.trial_id] = status
        return status

    def reuse(self, source: ResultStore, trial_id: str) -> str:
        """Take over a trial that finished in the sweep of `source` (under the same results root):
        its rows copied here as they are, the trials row last (a copy cut short is made again),
        saying where it was trained. Returns its status."""
        for table in ROW_KEYS:
            rows = source.read(table, trial_id)
            if rows:
                self.store.write(table, trial_id, rows)
        (row,) = source.read("trials", trial_id)
        self.store.write("trials", trial_id, [{
            **row,
            "sweep": self.store.sweep,
            "reused_from": row["reused_from"] or source.sweep,
            "on_pareto_front": None,  # judged among the other sweep's trials, not this one's
        }])
        return row["status"]

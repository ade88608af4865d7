"""Parquet results: one file per trial and table, written atomically by the driver alone.

Layout under `<results>/<sweep>/` (a local folder or any URI pyarrow.fs understands, e.g.
`s3://bucket/prefix`, or `s3://bucket/prefix?endpoint_override=host:9000&scheme=http` for an
S3-compatible server such as MinIO; credentials come from the usual AWS_* variables):
- `trials/<trial_id>.parquet`: one row per finished trial (status ok / diverged / failed);
- `epochs/<trial_id>.parquet`: one row per epoch, rewritten as the trial runs;
- `layers/<trial_id>.parquet`: per epoch and conv layer, filter counts dead by gamma / activation;
- `filters/<trial_id>.parquet`: per-filter gamma, beta, max activation, universality on the epochs
  where they were measured.
Each table has one fixed Arrow schema, so `polars.scan_parquet("<dir>/<table>/*.parquet")` reads all.
A file is written to a hidden temporary name and renamed, so readers never see half a file (on S3
the rename is a server-side copy, which is all or nothing too).
"""

from __future__ import annotations

import types
import typing
import urllib.parse
import uuid
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.fs as pafs
import pyarrow.parquet as pq
from pydantic import BaseModel

from sparsity_core.config import TrialConfig, alias_paths

__all__ = ["TABLES", "FINISHED", "ResultStore", "trials_schema"]

FINISHED = ("ok", "diverged")  # statuses that a re-run skips; "failed" trials run again


def _arrow_type(annotation: Any) -> pa.DataType:
    """Arrow type of a TrialConfig field annotation (str, int, float, bool, Optional, tuple[int, ...], Literal)."""
    origin = typing.get_origin(annotation)
    args = [a for a in typing.get_args(annotation) if a is not type(None)]
    if origin in (typing.Union, types.UnionType):
        return _arrow_type(args[0])
    if origin is tuple:
        return pa.list_(_arrow_type(args[0]))
    if origin is typing.Literal:
        return pa.string()
    return {str: pa.string(), int: pa.int64(), float: pa.float64(), bool: pa.bool_()}[annotation]


def _setting_fields() -> list[pa.Field]:
    fields = []
    for alias, path in alias_paths().items():
        model: type[BaseModel] = TrialConfig
        *sections, leaf = path.split(".")
        for section in sections:
            model = model.model_fields[section].annotation
        fields.append(pa.field(alias, _arrow_type(model.model_fields[leaf].annotation)))
    return fields


def trials_schema() -> pa.Schema:
    return pa.schema(
        [
            pa.field("trial_id", pa.string()),
            pa.field("sweep", pa.string()),
            pa.field("status", pa.string()),
            *_setting_fields(),
            pa.field("epochs_run", pa.int64()),
            pa.field("train_loss", pa.float64()),
            pa.field("test_loss", pa.float64()),
            pa.field("test_err", pa.float64()),
            pa.field("dead_gamma_pct", pa.float64()),
            pa.field("dead_act_pct", pa.float64()),
            # end-of-trial physical pruning of the dead filters (null where not measured)
            pa.field("pruned_test_err", pa.float64()),
            pa.field("conv_params_pruned_pct", pa.float64()),
            pa.field("flops_pruned_pct", pa.float64()),
            pa.field("pruned_speedup", pa.float64()),
            # the explicit baselines at the same reduction, on the same trained network
            pa.field("l1norm_pruned_test_err", pa.float64()),
            pa.field("slim_pruned_test_err", pa.float64()),
            # multi-objective searches only: non-dominated among the sweep's finished trials
            pa.field("on_pareto_front", pa.bool_()),
            pa.field("wall_time_s", pa.float64()),
            pa.field("code_version", pa.string()),
            pa.field("error", pa.string()),
            pa.field("finished_at", pa.timestamp("s", tz="UTC")),
            pa.field("config_json", pa.string()),
        ]
    )


TABLES: dict[str, pa.Schema] = {
    "trials": trials_schema(),
    "epochs": pa.schema(
        [
            ("trial_id", pa.string()),
            ("epoch", pa.int64()),
            ("lr", pa.float64()),
            ("train_loss", pa.float64()),
            ("test_loss", pa.float64()),
            ("test_err", pa.float64()),
            ("dead_gamma_pct", pa.float64()),
            ("dead_act_pct", pa.float64()),
        ]
    ),
    "layers": pa.schema(
        [
            ("trial_id", pa.string()),
            ("epoch", pa.int64()),
            ("layer", pa.string()),
            ("n_filters", pa.int64()),
            ("dead_gamma", pa.int64()),
            ("dead_act", pa.int64()),
            ("revived", pa.int64()),  # filters re-initialised this epoch by the `revive` remedy
        ]
    ),
    "filters": pa.schema(
        [
            ("trial_id", pa.string()),
            ("epoch", pa.int64()),
            ("layer", pa.string()),
            ("filter", pa.int64()),
            ("gamma", pa.float64()),
            ("beta", pa.float64()),
            ("max_act", pa.float64()),
            ("universality", pa.float64()),
        ]
    ),
}


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
        self.path = f"{base.rstrip('/')}/{sweep}"  # in `fs`: no scheme, no query (`bucket/prefix/<sweep>`)
        self.sweep = sweep

    @property
    def is_local(self) -> bool:
        return isinstance(self.fs, pafs.LocalFileSystem)

    def _file(self, table: str, trial_id: str) -> str:
        return f"{self.path}/{table}/{trial_id}.parquet"

    def write(self, table: str, trial_id: str, rows: list[dict[str, Any]]) -> None:
        """Replace the table's file for this trial with `rows`, atomically."""
        final = self._file(table, trial_id)
        folder = final.rsplit("/", 1)[0]
        self.fs.create_dir(folder, recursive=True)
        tmp = f"{folder}/.tmp-{uuid.uuid4().hex}-{trial_id}"
        pq.write_table(pa.Table.from_pylist(rows, schema=TABLES[table]), tmp, filesystem=self.fs)
        self.fs.move(tmp, final)

    def read(self, table: str, trial_id: str) -> list[dict[str, Any]]:
        path = self._file(table, trial_id)
        if self.fs.get_file_info(path).type != pafs.FileType.File:
            return []
        return pq.read_table(path, filesystem=self.fs).to_pylist()

    def finished(self) -> dict[str, str]:
        """trial_id -> status for every trial with a trials file."""
        selector = pafs.FileSelector(f"{self.path}/trials", allow_not_found=True)
        files = [f.path for f in self.fs.get_file_info(selector) if f.path.endswith(".parquet")]
        if not files:
            return {}
        table = pq.read_table(files, filesystem=self.fs, columns=["trial_id", "status"], schema=TABLES["trials"])
        return dict(zip(table["trial_id"].to_pylist(), table["status"].to_pylist()))

    def remove_temporaries(self) -> None:
        """Delete temp files a killed driver left behind (never read: they lack the .parquet suffix)."""
        for table in TABLES:
            selector = pafs.FileSelector(f"{self.path}/{table}", allow_not_found=True)
            for info in self.fs.get_file_info(selector):
                if info.base_name.startswith(".tmp-"):
                    self.fs.delete_file(info.path)

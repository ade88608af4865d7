"""A sweep's Parquet tables read into frames, configurations averaged over seeds, the Pareto front.

Everything here takes and returns polars frames (no drawing); only the reading section touches files.
Percentages are in percent (0-100), as in the paper's tables. A *configuration* is every trial setting
except the seed and where the data lives (`root`, `download`); its `config` label names the settings that vary across the sweep
(`optimizer=adam reg=l2 strength=0.001`).
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping, Sequence
import urllib.parse
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl
import pyarrow as pa
import pyarrow.fs as pafs

from sparsity_core.config import REMEDY_SETTINGS, TrialConfig, settings
from sparsity_core.metrics import EpochMetrics, PruneMetrics, scalar_fields

from .objectives import default_objectives
from .pareto import Mode, non_dominated_ranks, to_costs
from .store import TABLES, TRIAL_METRICS, ResultStore

__all__ = [
    "Frame",
    "Results",
    "open_sweep",
    "table_files",
    "load_results",
    "CONFIG_COLUMNS",
    "NETWORK_SETTINGS",
    "METRICS",
    "layer_columns",
    "varying_settings",
    "label_columns",
    "format_setting",
    "final_layers",
    "labelled_trials",
    "per_trial",
    "implicit_trials",
    "aggregate",
    "Mode",
    "pareto_front",
    "PARETO_OBJECTIVES",
    "pareto_points",
    "stopped_points",
]

# The study's main axes lead, as in the paper's tables; then every other setting but the seed and
# where the data lives (`location`: a reused row keeps its source's root, a resubmitted job's root is
# another upload folder; the same configuration either way).
_LEAD = ("optimizer", "reg", "strength")
CONFIG_COLUMNS: list[str] = [*_LEAD, *(s.alias for s in settings()
                                       if s.alias not in (*_LEAD, "seed") and not s.location)]
# The network and data a configuration trained: pruning methods are compared only within one.
NETWORK_SETTINGS = ("dataset", "image_size", "model", "width")
# Per-trial results averaged over seeds (besides the per-layer C1..Cn columns): the numeric ones.
_NUMERIC = {c.name for record in (EpochMetrics, PruneMetrics) for c in scalar_fields(record) if c.type in (int, float)}
METRICS = tuple(m for m in TRIAL_METRICS if m in _NUMERIC)
_LAYER = re.compile(r"^C(\d+)$")


# --- reading ---------------------------------------------------------------------------------------

# A table as the functions here take it: read (tests, notebooks) or a lazy scan (the report), so
# that only the columns and rows a function asks for are read.
Frame = pl.DataFrame | pl.LazyFrame


@dataclass(frozen=True)
class Results:
    """A sweep's tables. `trials` (a row a trial) is read whole; the others are lazy scans, read
    when a table or figure collects what it needs. A table the sweep never wrote is empty, with its
    schema, and every file reads into today's schema (a column added since reads as null)."""

    sweep: str
    trials: pl.DataFrame
    epochs: pl.LazyFrame
    layers: pl.LazyFrame
    filters: pl.LazyFrame


def open_sweep(source: str | Path) -> ResultStore:
    """The store holding the sweep at `source`: a folder (`results/quick`) or a URI the store
    writes (`s3://bucket/prefix/quick?endpoint_override=host:9000&scheme=http`): its last path
    element is the sweep. Raises what pyarrow.fs raises for a URI it cannot open."""
    text = str(source)
    if "://" not in text:
        folder = Path(text).resolve()
        return ResultStore(str(folder.parent), folder.name)
    parts = urllib.parse.urlsplit(text)
    parent, _, sweep = parts.path.rstrip("/").rpartition("/")
    return ResultStore(urllib.parse.urlunsplit((parts.scheme, parts.netloc, parent, parts.query, "")), sweep)


def table_files(store: ResultStore, table: str) -> list[str]:
    """The table's Parquet files in `store.fs` (temporary files of a running writer left out)."""
    selector = pafs.FileSelector(f"{store.path}/{table}", allow_not_found=True)
    return sorted(info.path for info in store.fs.get_file_info(selector)
                  if info.type == pafs.FileType.File and info.base_name.endswith(".parquet"))


def _scan(store: ResultStore, table: str) -> pl.LazyFrame:
    # from an empty table built of batches: `Schema.empty_table()` would import pandas (~0.5 s)
    schema = pl.from_arrow(pa.Table.from_batches([], schema=TABLES[table])).schema
    files = table_files(store, table)
    if not files:
        return pl.LazyFrame(schema=schema)
    if store.is_local:  # polars' own reader: ~4x faster here, and it decodes filtered rows only
        return pl.scan_parquet(files, schema=schema, glob=False, missing_columns="insert", extra_columns="ignore")
    # Any other filesystem (S3, GCS, HDFS): the store's own, so a report reads every URI it writes.
    import pyarrow.dataset as pads  # here, not above: it imports pandas (~0.25 s) that a local report skips

    dataset = pads.dataset(files, schema=TABLES[table], format="parquet", filesystem=store.fs)
    return pl.scan_pyarrow_dataset(dataset)


def _fill_new_settings(trials: pl.DataFrame) -> pl.DataFrame:
    """A setting added after a trial ran reads as null; that trial ran with its default (trial ids
    omit defaults for the same reason), so fill it in. Settings whose default is None stay null."""
    defaults = TrialConfig().flat()
    return trials.with_columns(
        pl.col(alias).fill_null(value) for alias, value in defaults.items()
        if value is not None and not isinstance(value, list)
    )


def _as_trained(trials: pl.DataFrame) -> pl.DataFrame:
    """Each row's settings as trained: a results row records them since this was added, an older
    row the settings asked for (`remedy: gamma_lr_scale` with `gamma_lr_scale: 1.0`). The remedy's
    settings are applied where a row leaves them at their default, as `TrialConfig.as_trained` does."""
    defaults = TrialConfig().flat()
    for remedy, rewrite in REMEDY_SETTINGS.items():
        trials = trials.with_columns(
            pl.when((pl.col("remedy") == remedy) & (pl.col(alias) == defaults[alias]))
            .then(pl.lit(value)).otherwise(pl.col(alias)).alias(alias)
            for alias, value in rewrite.items()
        )
    return trials


def load_results(source: str | Path | ResultStore) -> Results:
    """The tables of the sweep at `source` (a folder, a URI, or its `ResultStore`; see `open_sweep`).
    Reads the trials table; the others are scanned lazily. Every trials row says the settings it
    trained (`_as_trained`)."""
    store = source if isinstance(source, ResultStore) else open_sweep(source)
    scans = {table: _scan(store, table) for table in TABLES}
    trials = _as_trained(_fill_new_settings(scans.pop("trials").collect()))
    return Results(sweep=store.sweep, trials=trials, **scans)


# --- configurations --------------------------------------------------------------------------------


def layer_columns(columns: Iterable[str]) -> list[str]:
    """The C1..Cn names among `columns`, in network order (C10 after C9)."""
    return sorted((c for c in columns if _LAYER.match(c)), key=lambda c: int(c[1:]))


def varying_settings(df: pl.DataFrame) -> list[str]:
    """Configuration settings with more than one value among the rows of `df`."""
    return [c for c in CONFIG_COLUMNS if c in df.columns and df[c].n_unique() > 1]


def label_columns(df: pl.DataFrame) -> list[str]:
    """The settings that name a configuration: those that vary, or (when none does) the study's
    three main ones, so a single-configuration sweep still has a readable label."""
    return varying_settings(df) or list(_LEAD)


def format_setting(value: Any) -> str:
    """A setting as a label shows it: floats in short form (0.001, 1e-05)."""
    return f"{value:g}" if isinstance(value, float) else str(value)


def _with_config_label(df: pl.DataFrame, columns: Sequence[str]) -> pl.DataFrame:
    labels = [" ".join(f"{c}={format_setting(v)}" for c, v in zip(columns, row))
              for row in df.select(columns).rows()]
    return df.with_columns(pl.Series("config", labels, dtype=pl.String))


def final_layers(layers: Frame, trials: pl.DataFrame) -> pl.DataFrame:
    """The per-layer rows of `trials` at their last epoch (`epochs_run`), with `dead_gamma_pct` and
    `dead_act_pct`. A join on (trial, epoch) reads the layers table's columns once, where a window
    over each trial's epochs would hold all of it."""
    last = trials.lazy().select("trial_id", pl.col("epochs_run").alias("epoch"))
    return layers.lazy().join(last, on=["trial_id", "epoch"], how="semi").with_columns(
        (100.0 * pl.col("dead_gamma") / pl.col("n_filters")).alias("dead_gamma_pct"),
        (100.0 * pl.col("dead_act") / pl.col("n_filters")).alias("dead_act_pct"),
    ).collect()


def labelled_trials(trials: pl.DataFrame) -> pl.DataFrame:
    """Trials that finished ok, with their `config` label. Diverged and failed trials have no
    metrics to average."""
    ok = trials.filter(pl.col("status") == "ok")
    return _with_config_label(ok, label_columns(ok))


def per_trial(trials: pl.DataFrame, layers: Frame) -> pl.DataFrame:
    """`labelled_trials`, with the final % dead by gamma of each conv layer as columns C1..Cn."""
    ok = labelled_trials(trials)
    final = final_layers(layers, ok)
    if final.height:
        wide = final.pivot(on="layer", index="trial_id", values="dead_gamma_pct")
        ok = ok.join(wide.select("trial_id", *layer_columns(wide.columns)), on="trial_id", how="left")
    return ok


def implicit_trials(trials: Frame) -> Frame:
    """The trials whose last epoch measured a trained network (prune.method none): an explicit
    pruning pipeline's measures the network it pruned and fine-tuned."""
    return trials.filter(pl.col("method") == "none") if "method" in trials.columns else trials


def aggregate(rows: pl.DataFrame) -> pl.DataFrame:
    """One row per configuration of the per-trial `rows` (`per_trial`): its settings, `config`,
    `n_seeds`, `<metric>_mean`/`<metric>_std` over seeds for METRICS and C1..Cn (std is null for one
    seed), and provenance (`trial_ids`, `code_versions`). Rows are sorted by the varying settings."""
    metrics = [*METRICS[:3], *layer_columns(rows.columns), *METRICS[3:]]
    out = rows.group_by(CONFIG_COLUMNS, maintain_order=True).agg(
        pl.col("config").first(),
        pl.col("seed").n_unique().alias("n_seeds"),
        *(pl.col(m).mean().alias(f"{m}_mean") for m in metrics),
        *(pl.col(m).std().alias(f"{m}_std") for m in metrics),
        pl.col("trial_id").sort().str.join(";").alias("trial_ids"),
        pl.col("code_version").unique().sort().str.join(";").alias("code_versions"),
    )
    sortable = [c for c in varying_settings(out) if not isinstance(out.schema[c], pl.List)]
    return out.sort(sortable, nulls_last=True) if sortable else out



# --- the Pareto front ------------------------------------------------------------------------------

def pareto_front(df: pl.DataFrame, objectives: Mapping[str, Mode]) -> pl.Series:
    """Per row, whether no other row dominates it (at least as good in every objective, better in
    one). Equal rows do not dominate each other, so duplicates on the front are all on it; a row
    with a null or NaN objective is never on it and dominates nothing.

    `objectives`: {column: "max" | "min"}.
    """
    if not objectives:
        raise ValueError("pareto_front needs at least one objective")
    missing = [c for c in objectives if c not in df.columns]
    if missing:
        raise ValueError(f"pareto_front: no column(s) {', '.join(missing)}; columns: {', '.join(df.columns)}")
    values = df.select(pl.col(c).cast(pl.Float64) for c in objectives).to_numpy()
    costs = to_costs(values, list(objectives.values()))
    on_front = (non_dominated_ranks(costs) == 0) & ~np.isnan(costs).any(axis=1)
    return pl.Series("on_pareto_front", on_front, dtype=pl.Boolean)


# The study's trade-off (`objectives.default_objectives`), on the means over seeds of `aggregate`.
PARETO_OBJECTIVES: dict[str, Mode] = {f"{o.metric}_mean": o.mode for o in default_objectives()}


def pareto_points(agg: pl.DataFrame) -> pl.DataFrame:
    """`agg` with `on_front`: not dominated in PARETO_OBJECTIVES (most dead filters, least test error)."""
    return agg.with_columns(pareto_front(agg, PARETO_OBJECTIVES).alias("on_front"))


def stopped_points(trials: pl.DataFrame) -> pl.DataFrame:
    """The trials an early-stopping rule stopped, with their `config` label, the epoch they reached
    (`epochs_run`) and their metrics there: points measured early, so neither averaged with
    finished seeds (`aggregate` takes ok trials) nor compared with them on the front."""
    return _with_config_label(trials, label_columns(trials)).filter(pl.col("status") == "stopped")

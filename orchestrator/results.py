"""A sweep's Parquet tables read into frames, configurations averaged over seeds, the Pareto front.

Everything here takes and returns polars DataFrames (no drawing); only `load_results` reads files.
Percentages are in percent (0-100), as in the paper's tables. A *configuration* is every trial setting
except the seed; its `config` label names the settings that vary across the sweep
(`optimizer=adam reg=l2 strength=0.001`).
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl

from sparsity_core.config import TrialConfig, alias_paths

from .pareto import Mode, non_dominated_ranks, to_costs
from .store import TABLES, TRIAL_METRICS

__all__ = [
    "Results",
    "load_results",
    "CONFIG_COLUMNS",
    "METRICS",
    "layer_columns",
    "varying_settings",
    "label_columns",
    "format_setting",
    "final_layers",
    "labelled_trials",
    "per_trial",
    "aggregate",
    "Mode",
    "pareto_front",
    "PARETO_OBJECTIVES",
    "pareto_points",
    "stopped_points",
]

# The study's main axes lead, as in the paper's tables; then every other setting but the seed.
_LEAD = ("optimizer", "reg", "strength")
CONFIG_COLUMNS: list[str] = [*_LEAD, *(a for a in alias_paths() if a not in (*_LEAD, "seed"))]
# Per-trial results averaged over seeds (besides the per-layer C1..Cn columns).
METRICS = TRIAL_METRICS
_LAYER = re.compile(r"^C(\d+)$")


# --- reading ---------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Results:
    """A sweep's tables; a table the sweep never wrote is an empty frame with its schema."""

    trials: pl.DataFrame
    epochs: pl.DataFrame
    layers: pl.DataFrame
    filters: pl.DataFrame


def _read_table(sweep_dir: Path, table: str) -> pl.DataFrame:
    # Every file is read into today's schema: a column added since a file was written reads as null.
    schema = pl.from_arrow(TABLES[table].empty_table()).schema
    if not any((sweep_dir / table).glob("*.parquet")):
        return pl.DataFrame(schema=schema)
    return pl.scan_parquet(f"{sweep_dir}/{table}/*.parquet", schema=schema,
                           missing_columns="insert", extra_columns="ignore").collect()


def _fill_new_settings(trials: pl.DataFrame) -> pl.DataFrame:
    """A setting added after a trial ran reads as null; that trial ran with its default (trial ids
    omit defaults for the same reason), so fill it in. Settings whose default is None stay null."""
    defaults = TrialConfig().flat()
    return trials.with_columns(
        pl.col(alias).fill_null(value) for alias, value in defaults.items()
        if value is not None and not isinstance(value, list)
    )


def load_results(sweep_dir: str | Path) -> Results:
    """Every table of `<results>/<sweep>/` (local folders only); a missing table is empty."""
    folder = Path(sweep_dir)
    tables = {table: _read_table(folder, table) for table in TABLES}
    tables["trials"] = _fill_new_settings(tables["trials"])
    return Results(**tables)


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


def final_layers(layers: pl.DataFrame) -> pl.DataFrame:
    """Each trial's per-layer rows at its last measured epoch, with `dead_gamma_pct`/`dead_act_pct`."""
    return layers.filter(pl.col("epoch") == pl.col("epoch").max().over("trial_id")).with_columns(
        (100.0 * pl.col("dead_gamma") / pl.col("n_filters")).alias("dead_gamma_pct"),
        (100.0 * pl.col("dead_act") / pl.col("n_filters")).alias("dead_act_pct"),
    )


def labelled_trials(trials: pl.DataFrame) -> pl.DataFrame:
    """Trials that finished ok, with their `config` label. Diverged and failed trials have no
    metrics to average."""
    ok = trials.filter(pl.col("status") == "ok")
    return _with_config_label(ok, label_columns(ok))


def per_trial(trials: pl.DataFrame, layers: pl.DataFrame) -> pl.DataFrame:
    """`labelled_trials`, with the final % dead by gamma of each conv layer as columns C1..Cn."""
    ok = labelled_trials(trials)
    final = final_layers(layers.filter(pl.col("trial_id").is_in(ok["trial_id"].implode())))
    if final.height:
        wide = final.pivot(on="layer", index="trial_id", values="dead_gamma_pct")
        ok = ok.join(wide.select("trial_id", *layer_columns(wide.columns)), on="trial_id", how="left")
    return ok


def aggregate(trials: pl.DataFrame, layers: pl.DataFrame) -> pl.DataFrame:
    """One row per configuration: its settings, `config`, `n_seeds`, `<metric>_mean`/`<metric>_std`
    over seeds for METRICS and C1..Cn (std is null for one seed), and provenance (`trial_ids`,
    `code_versions`). Rows are sorted by the varying settings."""
    rows = per_trial(trials, layers)
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


PARETO_OBJECTIVES: dict[str, Mode] = {"dead_gamma_pct_mean": "max", "test_err_mean": "min"}


def pareto_points(agg: pl.DataFrame) -> pl.DataFrame:
    """`agg` with `on_front`: not dominated in (most dead filters, least test error)."""
    return agg.with_columns(pareto_front(agg, PARETO_OBJECTIVES).alias("on_front"))


def stopped_points(trials: pl.DataFrame) -> pl.DataFrame:
    """The trials an early-stopping rule stopped, with their `config` label, the epoch they reached
    (`epochs_run`) and their metrics there: points measured early, so neither averaged with
    finished seeds (`aggregate` takes ok trials) nor compared with them on the front."""
    return _with_config_label(trials, label_columns(trials)).filter(pl.col("status") == "stopped")

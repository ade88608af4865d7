"""The data behind each figure of the report: frames in, frames out (`orchestrator.plots` draws them).

The per-epoch and per-filter tables may come as lazy scans (`results.load_results`): each function
here asks for the columns and rows it needs, and polars reads only those.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

import polars as pl

from sparsity_core.metrics import PruneMetrics, scalar_fields

from .results import CONFIG_COLUMNS, NETWORK_SETTINGS, Frame, format_setting, labelled_trials, layer_columns

if TYPE_CHECKING:  # the simulation itself needs torch; its output is plain numbers
    from sparsity_core.lowgrad import Trajectory

__all__ = ["layer_profile", "seed_points", "snapshot_layers", "default_layers", "QUANTILES", "gamma_beta_quantiles",
           "universality_histogram", "TRAJECTORY_METRICS", "trajectories", "LOWGRAD_SCHEMA", "lowgrad_frame",
           "lowgrad_bands",
           "METHOD_NAMES", "PRUNING_COLUMNS", "pruning_table"]


def layer_profile(agg: pl.DataFrame) -> pl.DataFrame:
    """Long form of the per-layer columns: config, optimizer, reg, layer, layer_index, mean, std."""
    layers = layer_columns(c.removesuffix("_mean") for c in agg.columns if c.endswith("_mean"))
    return pl.concat([
        agg.select(
            "config", "optimizer", "reg",
            pl.lit(layer).alias("layer"),
            pl.lit(int(layer[1:])).alias("layer_index"),
            pl.col(f"{layer}_mean").alias("mean"),
            pl.col(f"{layer}_std").alias("std"),
        )
        for layer in layers
    ]) if layers else pl.DataFrame(schema={"config": pl.String, "optimizer": pl.String, "reg": pl.String,
                                           "layer": pl.String, "layer_index": pl.Int32,
                                           "mean": pl.Float64, "std": pl.Float64})


def seed_points(trials: pl.DataFrame) -> pl.DataFrame:
    """The seeds behind each configuration's mean in `results.pareto_points`: per trial that finished
    ok, config, optimizer, reg, seed, test_err and dead_gamma_pct (final, %)."""
    return labelled_trials(trials).select("config", "optimizer", "reg", "seed", "test_err", "dead_gamma_pct")


def _trial_configs(trials: pl.DataFrame) -> pl.LazyFrame:
    # categorical: joined to and grouped by over millions of filter rows, it costs a third less
    # than text; `_config_text` turns it back in the (small) results
    return labelled_trials(trials).select("trial_id", pl.col("config").cast(pl.Categorical)).lazy()


_config_text = pl.col("config").cast(pl.String)


QUANTILES = (0.05, 0.25, 0.5, 0.75, 0.95)
_PARAMS = ("gamma", "beta")


def snapshot_layers(filters: Frame) -> list[str]:
    """The conv layers in the filters table, in network order."""
    return layer_columns(filters.lazy().select(pl.col("layer").unique()).collect()["layer"])


def default_layers(names: Sequence[str]) -> list[str]:
    """The first and the last of `names` (conv layers in network order)."""
    return list(dict.fromkeys([names[0], names[-1]])) if names else []


def gamma_beta_quantiles(filters: Frame, trials: pl.DataFrame, layers: Sequence[str] | None = None) -> pl.DataFrame:
    """Distribution of BN gamma and beta over the filters of each configuration (seeds pooled), per
    layer and snapshot epoch: config, layer, epoch, param (gamma | beta), q05, q25, q50, q75, q95."""
    chosen = list(layers) if layers is not None else default_layers(snapshot_layers(filters))
    names = {q: f"q{round(q * 100):02d}" for q in QUANTILES}
    data = filters.lazy().filter(pl.col("layer").is_in(chosen)).join(_trial_configs(trials), on="trial_id")
    # both parameters in one pass over the filters (an unpivot to long form first doubles the rows)
    wide = data.group_by("config", "layer", "epoch").agg(
        pl.col(param).quantile(q, interpolation="linear").alias(f"{param}_{name}")
        for param in _PARAMS for q, name in names.items()
    ).collect()
    return pl.concat([
        wide.select(_config_text, "layer", "epoch", pl.lit(param).alias("param"),
                    *(pl.col(f"{param}_{name}").alias(name) for name in names.values()))
        for param in _PARAMS
    ]).sort("config", "layer", "param", "epoch")


def universality_histogram(filters: Frame, trials: pl.DataFrame, bins: int = 10) -> pl.DataFrame:
    """Histogram of feature universality (fraction of training images a filter fires on) per
    configuration and layer, at each trial's last epoch where it was measured: config, layer,
    bin_low, bin_high, count, fraction (every bin, empty ones too). Dead filters fall in the first bin."""
    # counted per trial first: the last epoch and the configuration are then found among
    # trials x layers x bins rows, not among every filter's
    per_trial = filters.lazy().filter(pl.col("universality").is_not_null()).with_columns(
        (pl.col("universality") * bins).floor().cast(pl.Int64).clip(0, bins - 1).alias("bin")
    ).group_by("trial_id", "epoch", "layer", "bin").agg(pl.len().cast(pl.Int64).alias("count"))
    counts = per_trial.filter(pl.col("epoch") == pl.col("epoch").max().over("trial_id")).join(
        _trial_configs(trials), on="trial_id"
    ).group_by("config", "layer", "bin").agg(pl.col("count").sum()).with_columns(_config_text).collect()
    # every bin of every (config, layer), empty ones as 0, so panels share their bins
    grid = counts.select("config", "layer").unique().join(pl.DataFrame({"bin": list(range(bins))}), how="cross")
    return grid.join(counts, on=["config", "layer", "bin"], how="left").with_columns(
        pl.col("count").fill_null(0),
        (pl.col("bin") / bins).alias("bin_low"),
        ((pl.col("bin") + 1) / bins).alias("bin_high"),
    ).with_columns(
        (pl.col("count") / pl.col("count").sum().over("config", "layer")).alias("fraction"),
    ).select("config", "layer", "bin_low", "bin_high", "count", "fraction").sort("config", "layer", "bin_low")


# From the epochs table, drawn over the epochs: % dead by gamma, % dead by activation, test error (%).
TRAJECTORY_METRICS = ("dead_gamma_pct", "dead_act_pct", "test_err")


def trajectories(epochs: Frame, trials: pl.DataFrame) -> pl.DataFrame:
    """The seeds' spread of each TRAJECTORY_METRICS over the epochs, per configuration (trials that
    finished ok): config, metric, epoch, n (seeds with a value), mean, std, min, max. Epochs where a
    metric was not measured (dead by activation between `act_every` epochs) or is not finite are
    left out."""
    long = epochs.lazy().join(_trial_configs(trials), on="trial_id").unpivot(
        index=["config", "epoch"], on=list(TRAJECTORY_METRICS), variable_name="metric", value_name="value",
    ).filter(pl.col("value").is_finite())
    return long.group_by("config", "metric", "epoch").agg(
        pl.len().cast(pl.Int64).alias("n"),
        pl.col("value").mean().alias("mean"),
        pl.col("value").std().alias("std"),
        pl.col("value").min().alias("min"),
        pl.col("value").max().alias("max"),
    ).with_columns(_config_text).sort("config", "metric", "epoch").collect()


LOWGRAD_SCHEMA = pl.Schema({"optimizer": pl.String, "strength": pl.Float64, "seed": pl.Int64, "iteration": pl.Int64,
                            "value": pl.Float64})


def lowgrad_frame(trajectories: Sequence[Trajectory]) -> pl.DataFrame:
    """The simulation's trajectories in long form: optimizer, strength, seed (of the noise), iteration, value."""
    return pl.DataFrame(
        {
            "optimizer": [t.optimizer for t in trajectories for _ in t.iterations],
            "strength": [t.strength for t in trajectories for _ in t.iterations],
            "seed": [t.seed for t in trajectories for _ in t.iterations],
            "iteration": [i for t in trajectories for i in t.iterations],
            "value": [v for t in trajectories for v in t.values],
        },
        schema=LOWGRAD_SCHEMA,
    )


def lowgrad_bands(lowgrad: pl.DataFrame) -> pl.DataFrame:
    """The scalar over the noise seeds of `lowgrad_frame`, per optimizer, strength and iteration:
    `median`, `low` and `high` (the lowest and highest seed's value), `seeds`."""
    return lowgrad.group_by("optimizer", "strength", "iteration").agg(
        pl.col("value").median().alias("median"), pl.col("value").min().alias("low"),
        pl.col("value").max().alias("high"), pl.len().cast(pl.Int64).alias("seeds"),
    ).sort("optimizer", "strength", "iteration")


# --- implicit vs explicit pruning ----------------------------------------------------------------

# `prune.method` as the pruning table names it: `none` removes the dead filters (implicit sparsity).
METHOD_NAMES = {"none": "implicit", "slimming": "slimming", "l1norm": "l1norm"}
# pruning.csv's numbers, averaged over seeds under the trials' own names: PruneMetrics' numeric
# fields (pruned_test_err: the pruned network as its method leaves it, after any fine-tuning).
PRUNING_COLUMNS = tuple(c.name for c in scalar_fields(PruneMetrics) if c.type is float)


def pruning_table(trials: pl.DataFrame) -> pl.DataFrame:
    """One row per configuration whose pruning was measured (trials that finished ok): `method`
    (METHOD_NAMES), `curve` (the method, fine-tuned or not, and the network and data where the table
    holds several: one curve of pruning.html), `configuration` (its label), the network settings,
    `fraction`, `finetune_epochs`, per PRUNING_COLUMNS the mean, `_std`, `_min` and `_max` over
    seeds, `finetuned` and `seeds`; sorted by curve and FLOPs removed. Results written before
    explicit pruning existed read as implicit, not fine-tuned, with `filters_removed_pct` null."""
    ok = labelled_trials(trials).filter(pl.col("pruned_test_err").is_not_null())
    ok = ok.with_columns(pl.col("method").replace_strict(METHOD_NAMES, default=pl.col("method")),
                         pl.col("finetuned").fill_null(False))
    stats = [agg for col in PRUNING_COLUMNS for agg in (
        pl.col(col).mean(), pl.col(col).std().alias(f"{col}_std"),
        pl.col(col).min().alias(f"{col}_min"), pl.col(col).max().alias(f"{col}_max"))]
    table = ok.group_by(CONFIG_COLUMNS, maintain_order=True).agg(
        pl.col("config").first().alias("configuration"), *stats, pl.col("finetuned").any(),
        pl.col("seed").n_unique().alias("seeds"))
    networks = [c for c in NETWORK_SETTINGS if table[c].n_unique() > 1]
    curve = [row["method"] + (" (fine-tuned)" if row["finetuned"] and row["method"] != "implicit" else "")
             + "".join(f" {c}={format_setting(row[c])}" for c in networks)
             for row in table.select("method", "finetuned", *networks).to_dicts()]
    columns = ["method", "curve", "configuration", *NETWORK_SETTINGS, "fraction", "finetune_epochs",
               *(f"{col}{suffix}" for col in PRUNING_COLUMNS for suffix in ("", "_std", "_min", "_max")),
               "finetuned", "seeds"]
    return table.with_columns(pl.Series("curve", curve, dtype=pl.String)).select(columns).sort(
        "curve", "flops_pruned_pct", nulls_last=True)

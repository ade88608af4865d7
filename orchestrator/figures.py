"""The data behind each figure of the report: frames in, frames out (`orchestrator.plots` draws them)."""

from __future__ import annotations

from collections.abc import Sequence

import polars as pl

from sparsity_core.lowgrad import Trajectory

from .results import labelled_trials, layer_columns

__all__ = ["layer_profile", "default_layers", "QUANTILES", "gamma_beta_quantiles", "universality_histogram",
           "lowgrad_frame"]


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


def _trial_configs(trials: pl.DataFrame) -> pl.DataFrame:
    return labelled_trials(trials).select("trial_id", "config")


QUANTILES = (0.05, 0.25, 0.5, 0.75, 0.95)


def default_layers(filters: pl.DataFrame) -> list[str]:
    """The first and the last conv layer present."""
    names = layer_columns(filters["layer"].unique())
    return list(dict.fromkeys([names[0], names[-1]])) if names else []


def gamma_beta_quantiles(
    filters: pl.DataFrame, trials: pl.DataFrame, layers: Sequence[str] | None = None
) -> pl.DataFrame:
    """Distribution of BN gamma and beta over the filters of each configuration (seeds pooled), per
    layer and snapshot epoch: config, layer, epoch, param (gamma | beta), q05, q25, q50, q75, q95."""
    chosen = list(layers) if layers is not None else default_layers(filters)
    data = filters.filter(pl.col("layer").is_in(chosen)).join(_trial_configs(trials), on="trial_id")
    long = data.unpivot(index=["config", "layer", "epoch"], on=["gamma", "beta"],
                        variable_name="param", value_name="value")
    return long.group_by("config", "layer", "epoch", "param").agg(
        pl.col("value").quantile(q, interpolation="linear").alias(f"q{round(q * 100):02d}") for q in QUANTILES
    ).sort("config", "layer", "param", "epoch")


def universality_histogram(filters: pl.DataFrame, trials: pl.DataFrame, bins: int = 10) -> pl.DataFrame:
    """Histogram of feature universality (fraction of training images a filter fires on) per
    configuration and layer, at each trial's last epoch where it was measured: config, layer,
    bin_low, bin_high, count, fraction (every bin, empty ones too). Dead filters fall in the first bin."""
    measured = filters.filter(pl.col("universality").is_not_null())
    last = measured.filter(pl.col("epoch") == pl.col("epoch").max().over("trial_id"))
    data = last.join(_trial_configs(trials), on="trial_id").with_columns(
        (pl.col("universality") * bins).floor().cast(pl.Int64).clip(0, bins - 1).alias("bin")
    )
    counts = data.group_by("config", "layer", "bin").agg(pl.len().cast(pl.Int64).alias("count"))
    # every bin of every (config, layer), empty ones as 0, so panels share their bins
    grid = data.select("config", "layer").unique().join(pl.DataFrame({"bin": list(range(bins))}), how="cross")
    return grid.join(counts, on=["config", "layer", "bin"], how="left").with_columns(
        pl.col("count").fill_null(0),
        (pl.col("bin") / bins).alias("bin_low"),
        ((pl.col("bin") + 1) / bins).alias("bin_high"),
    ).with_columns(
        (pl.col("count") / pl.col("count").sum().over("config", "layer")).alias("fraction"),
    ).select("config", "layer", "bin_low", "bin_high", "count", "fraction").sort("config", "layer", "bin_low")


def lowgrad_frame(trajectories: Sequence[Trajectory]) -> pl.DataFrame:
    """The simulation's trajectories in long form: optimizer, strength, iteration, value."""
    return pl.DataFrame(
        {
            "optimizer": [t.optimizer for t in trajectories for _ in t.iterations],
            "strength": [t.strength for t in trajectories for _ in t.iterations],
            "iteration": [i for t in trajectories for i in t.iterations],
            "value": [v for t in trajectories for v in t.values],
        },
        schema={"optimizer": pl.String, "strength": pl.Float64, "iteration": pl.Int64, "value": pl.Float64},
    )

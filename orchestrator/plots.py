"""Figures of the report: each takes a DataFrame from `orchestrator.figures` or `orchestrator.results` and returns a plotly
figure (no computation beyond layout, no files). An empty input gives a figure that says what is
missing and how to get it."""

from __future__ import annotations

import plotly.express as px
import plotly.graph_objects as go
import polars as pl
from plotly.subplots import make_subplots

from .results import CONFIG_COLUMNS, layer_columns

__all__ = [
    "empty_figure",
    "pareto_figure",
    "layers_figure",
    "gamma_beta_figure",
    "universality_figure",
    "lowgrad_figure",
]

_PALETTE = px.colors.qualitative.Plotly
_PERCENT_RANGE = (-3, 103)  # the whole 0-100% scale, markers at the ends not clipped


def empty_figure(title: str, message: str) -> go.Figure:
    fig = go.Figure()
    fig.add_annotation(text=message, x=0.5, y=0.5, xref="paper", yref="paper", showarrow=False)
    fig.update_layout(title=title, xaxis_visible=False, yaxis_visible=False)
    return fig


def _hover_columns(df: pl.DataFrame) -> tuple[pl.DataFrame, list[str]]:
    """Every setting of the configuration, lists shown as text, for the hover box."""
    columns = [c for c in CONFIG_COLUMNS if c in df.columns]
    lists = [c for c in columns if isinstance(df.schema[c], pl.List)]
    shown = df.with_columns(pl.col(c).cast(pl.List(pl.String)).list.join(",") for c in lists)
    return shown, [*columns, "n_seeds"]


def pareto_figure(points: pl.DataFrame, stopped: pl.DataFrame | None = None) -> go.Figure:
    """Total % dead filters (by gamma) against test error, one point per configuration (mean over
    seeds, bars one std), the non-dominated front as a line. Input: `results.pareto_points`.
    `stopped` (`results.stopped_points`): trials stopped early, as open markers, one series per
    epoch reached: measured then, not at the end."""
    title = "Sparsity vs test error (Pareto front: most dead filters, least error)"
    points = points.filter(pl.col("dead_gamma_pct_mean").is_finite() & pl.col("test_err_mean").is_finite())
    if points.is_empty():
        return empty_figure(title, "no configuration has both a test error and a sparsity")
    shown, hover = _hover_columns(points)
    fig = px.scatter(
        shown, x="test_err_mean", y="dead_gamma_pct_mean", color="optimizer", symbol="reg",
        error_x="test_err_std", error_y="dead_gamma_pct_std", hover_name="config", hover_data=hover,
        labels={"test_err_mean": "test error (%)", "dead_gamma_pct_mean": "dead filters by gamma (%)"},
        title=title,
    )
    fig.update_yaxes(range=_PERCENT_RANGE)
    front = points.filter(pl.col("on_front")).sort("test_err_mean")
    fig.add_trace(go.Scatter(
        x=front["test_err_mean"].to_list(), y=front["dead_gamma_pct_mean"].to_list(), mode="lines",
        line={"dash": "dash", "color": "black"}, name="Pareto front", hoverinfo="skip",
    ))
    for epoch in sorted(stopped["epochs_run"].unique()) if stopped is not None else []:
        early = stopped.filter(pl.col("epochs_run") == epoch)
        fig.add_trace(go.Scatter(
            x=early["test_err"].to_list(), y=early["dead_gamma_pct"].to_list(), mode="markers",
            marker={"symbol": "circle-open", "size": 9, "color": "grey"}, name=f"stopped at epoch {epoch}",
            hovertext=early["config"].to_list(),
        ))
    return fig


def layers_figure(profile: pl.DataFrame) -> go.Figure:
    """% dead filters by gamma per conv layer, one line per configuration. Input: `figures.layer_profile`."""
    title = "Dead filters by gamma per layer (final epoch, mean over seeds)"
    if profile.is_empty():
        return empty_figure(title, "no per-layer counts: the sweep's `layers` table is empty")
    order = layer_columns(profile["layer"].unique())
    fig = px.line(
        profile.sort("layer_index"), x="layer", y="mean", error_y="std", color="config", markers=True,
        category_orders={"layer": order}, labels={"mean": "dead filters by gamma (%)"}, title=title,
    )
    fig.update_yaxes(range=_PERCENT_RANGE)
    return fig


def _band(fig: go.Figure, d: pl.DataFrame, low: str, high: str, color: str, opacity: float,
          row: int, col: int, group: str) -> None:
    """A shaded band between two quantile columns (the upper edge first, then filled down to the lower)."""
    x = d["epoch"].to_list()
    fill = f"rgba({','.join(str(int(color[i:i + 2], 16)) for i in (1, 3, 5))},{opacity})"
    fig.add_trace(go.Scatter(x=x, y=d[high].to_list(), mode="lines", line={"width": 0}, legendgroup=group,
                             showlegend=False, hoverinfo="skip"), row=row, col=col)
    fig.add_trace(go.Scatter(x=x, y=d[low].to_list(), mode="lines", line={"width": 0}, fill="tonexty",
                             fillcolor=fill, legendgroup=group, showlegend=False, hoverinfo="skip"),
                  row=row, col=col)


def gamma_beta_figure(quantiles: pl.DataFrame) -> go.Figure:
    """BN gamma (left) and beta (right) over training for the chosen layers (rows): per configuration
    the median filter, a band over the middle 50% and a fainter one over 90% (the supplement's Fig. 1).
    Input: `figures.gamma_beta_quantiles`."""
    title = "BN gamma and beta over training (median, 25-75% and 5-95% of filters)"
    if quantiles.is_empty():
        return empty_figure(title, "no per-filter snapshots: set train.snapshot_every > 0 in the sweep")
    layers = layer_columns(quantiles["layer"].unique())
    configs = sorted(quantiles["config"].unique())
    fig = make_subplots(rows=len(layers), cols=2, shared_xaxes=True,
                        subplot_titles=[f"{layer} {param}" for layer in layers for param in ("gamma", "beta")])
    for i, config in enumerate(configs):
        color = _PALETTE[i % len(_PALETTE)]
        for r, layer in enumerate(layers, start=1):
            for c, param in enumerate(("gamma", "beta"), start=1):
                d = quantiles.filter((pl.col("config") == config) & (pl.col("layer") == layer)
                                     & (pl.col("param") == param)).sort("epoch")
                if d.is_empty():
                    continue
                _band(fig, d, "q05", "q95", color, 0.12, r, c, config)
                _band(fig, d, "q25", "q75", color, 0.3, r, c, config)
                fig.add_trace(go.Scatter(
                    x=d["epoch"].to_list(), y=d["q50"].to_list(), mode="lines+markers", name=config,
                    line={"color": color}, legendgroup=config, showlegend=(r, c) == (1, 1),
                    hovertemplate=f"{config}<br>{layer} {param}<br>epoch %{{x}}: median %{{y:.3g}}<extra></extra>",
                ), row=r, col=c)
    fig.update_xaxes(title_text="epoch", row=len(layers))
    fig.update_layout(title=title, height=max(400, 300 * len(layers)))
    return fig


def universality_figure(hist: pl.DataFrame) -> go.Figure:
    """Histogram of feature universality per layer (one panel each), bars per configuration (the
    supplement's Fig. 2). Input: `figures.universality_histogram`."""
    title = "Feature universality: fraction of training images a filter activates on"
    if hist.is_empty():
        return empty_figure(title, "no universality measured: the sweep's `filters` table has none")
    layers = layer_columns(hist["layer"].unique())
    shown = hist.with_columns(
        pl.format("{}-{}", pl.col("bin_low").round(2), pl.col("bin_high").round(2)).alias("universality")
    )
    fig = px.bar(
        shown, x="universality", y="fraction", color="config", barmode="group", facet_col="layer",
        facet_col_wrap=4, category_orders={"layer": layers}, hover_data=["count"],
        labels={"fraction": "fraction of filters"}, title=title, facet_row_spacing=0.12,
    )
    _plain_facet_titles(fig)
    fig.update_layout(height=max(400, 320 * ((len(layers) + 3) // 4)))
    return fig


def _plain_facet_titles(fig: go.Figure) -> None:
    """Facet titles as the value alone ("C1", not "layer=C1")."""
    fig.for_each_annotation(lambda a: a.update(text=a.text.split("=", 1)[-1]))


def lowgrad_figure(lowgrad: pl.DataFrame) -> go.Figure:
    """The low-gradient simulation: the scalar against iterations, one panel per L2 strength, one
    line per optimizer (the supplement's Fig. 3). Input: `figures.lowgrad_frame`."""
    title = "Low-gradient regime: an L2-regularized scalar under each optimizer"
    if lowgrad.is_empty():
        return empty_figure(title, "no simulation data")
    strengths = sorted(lowgrad["strength"].unique(), reverse=True)
    names = {s: f"L2 {s:g}" for s in strengths}
    shown = lowgrad.with_columns(pl.col("strength").replace_strict(names, return_dtype=pl.String).alias("L2"))
    fig = px.line(shown, x="iteration", y="value", color="optimizer", facet_col="L2",
                  category_orders={"L2": list(names.values())}, labels={"value": "scalar value"}, title=title)
    # SGD is the reference every adaptive optimizer is compared with: drawn last, on top
    fig.update_traces(selector={"name": "sgd"}, line={"color": "black", "dash": "dash", "width": 3})
    fig.data = [t for t in fig.data if t.name != "sgd"] + [t for t in fig.data if t.name == "sgd"]
    _plain_facet_titles(fig)
    return fig

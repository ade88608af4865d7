"""Figures of the report: each takes a DataFrame from `orchestrator.figures` or `orchestrator.results`
and returns a plotly figure (no computation beyond layout, no files). An empty input gives a figure that says what is
missing and how to get it.

Drawn with plotly's graph objects alone: plotly.express would import pandas (~0.4 s a report), and
adding a figure's traces at once (`_panels`) keeps a 1000-trial report's figures under a second."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import numpy as np
import plotly.graph_objects as go
import polars as pl
from plotly.colors import qualitative
from plotly.subplots import make_subplots

from .results import CONFIG_COLUMNS, format_setting, layer_columns

__all__ = [
    "empty_figure",
    "pareto_figure",
    "layers_figure",
    "trajectories_figure",
    "gamma_beta_figure",
    "universality_figure",
    "lowgrad_figure",
    "pruning_figure",
]

_PALETTE = qualitative.Plotly
_SYMBOLS = ("circle", "diamond", "square", "x", "cross", "triangle-up", "star")
_PERCENT_RANGE = (-3, 103)  # the whole 0-100% scale, markers at the ends not clipped


def empty_figure(title: str, message: str) -> go.Figure:
    fig = go.Figure()
    fig.add_annotation(text=message, x=0.5, y=0.5, xref="paper", yref="paper", showarrow=False)
    fig.update_layout(title=title, xaxis_visible=False, yaxis_visible=False)
    return fig


def _colors(names: Iterable[str]) -> dict[str, str]:
    """A color per name, in sorted order, the same in every panel."""
    return {name: _PALETTE[i % len(_PALETTE)] for i, name in enumerate(sorted(set(names), key=str))}


def _hover_text(df: pl.DataFrame) -> list[str]:
    """Per row, its configuration's label, seeds and every setting, for the hover box."""
    columns = [c for c in CONFIG_COLUMNS if c in df.columns]

    def shown(value: Any) -> str:
        return ",".join(map(str, value)) if isinstance(value, list) else format_setting(value)

    return [f"<b>{row['config']}</b> (n={row['n_seeds']})<br>" + "<br>".join(f"{c}: {shown(row[c])}" for c in columns)
            for row in df.select("config", "n_seeds", *columns).iter_rows(named=True)]


# A trace for `_panels`: the keyword arguments of a plotly trace, with its `type`.
Trace = dict[str, Any]


def _panels(panels: list[tuple[Trace, int, int]], rows: int, cols: int, titles: list[str],
            shared_xaxes: bool = True) -> go.Figure:
    """A grid of panels with the traces at (row, col), added at once and as dicts: plotly checks
    each trace once when it is added (a `go.Scatter` would be checked twice, ~1 ms a trace, and a
    1000-trial report draws about a thousand)."""
    fig = make_subplots(rows=rows, cols=cols, shared_xaxes=shared_xaxes, vertical_spacing=0.3 / rows,
                        subplot_titles=titles)
    if panels:
        traces, r, c = zip(*panels)
        fig.add_traces(list(traces), rows=list(r), cols=list(c))
    return fig


def pareto_figure(points: pl.DataFrame, seeds: pl.DataFrame | None = None,
                  stopped: pl.DataFrame | None = None) -> go.Figure:
    """Total % dead filters (by gamma) against test error: one point per configuration (mean over
    seeds, bars one std on both axes; color: optimizer, symbol: regularizer), each seed's own point
    faint behind it, and the non-dominated configurations ringed and joined, so a front of one
    configuration shows too. Input: `results.pareto_points`, `figures.seed_points`. `stopped`
    (`results.stopped_points`): trials stopped early, as open grey markers, one series per epoch
    reached: measured then, not at the end."""
    title = "Sparsity vs test error (Pareto front: most dead filters, least error)"
    points = points.filter(pl.col("dead_gamma_pct_mean").is_finite() & pl.col("test_err_mean").is_finite())
    if points.is_empty():
        return empty_figure(title, "no configuration has both a test error and a sparsity")
    if seeds is not None:
        seeds = seeds.filter(pl.col("dead_gamma_pct").is_finite() & pl.col("test_err").is_finite())
    colors = _colors([*points["optimizer"], *([] if seeds is None else seeds["optimizer"])])
    symbols = {reg: _SYMBOLS[i % len(_SYMBOLS)] for i, reg in enumerate(sorted(set(points["reg"]), key=str))}
    traces: list[go.BaseTraceType] = []
    if seeds is not None and seeds.height:
        traces.append(go.Scatter(
            x=seeds["test_err"].to_numpy(), y=seeds["dead_gamma_pct"].to_numpy(), mode="markers",
            marker={"color": [colors[o] for o in seeds["optimizer"]], "size": 6, "opacity": 0.3},
            name="each seed", text=[f"{c}<br>seed {s}" for c, s in zip(seeds["config"], seeds["seed"])],
            hovertemplate="%{text}<br>test error %{x:.2f}%<br>dead %{y:.1f}%<extra></extra>",
        ))
    for (optimizer, reg), d in points.sort("optimizer", "reg").partition_by("optimizer", "reg", as_dict=True).items():
        traces.append(go.Scatter(
            x=d["test_err_mean"].to_numpy(), y=d["dead_gamma_pct_mean"].to_numpy(), mode="markers",
            name=f"{optimizer}, {reg}", marker={"color": colors[optimizer], "symbol": symbols[reg], "size": 10},
            error_x={"type": "data", "array": d["test_err_std"].to_numpy()},
            error_y={"type": "data", "array": d["dead_gamma_pct_std"].to_numpy()},
            text=_hover_text(d), hovertemplate="%{text}<br>test error %{x:.2f}%<br>dead %{y:.1f}%<extra></extra>",
        ))
    front = points.filter(pl.col("on_front")).sort("test_err_mean")
    traces.append(go.Scatter(
        x=front["test_err_mean"].to_numpy(), y=front["dead_gamma_pct_mean"].to_numpy(), mode="lines+markers",
        line={"dash": "dash", "color": "black"}, name=f"Pareto front ({front.height} of {points.height})",
        marker={"symbol": "circle-open", "size": 18, "color": "black", "line": {"width": 2}},
        text=front["config"].to_list(), hovertemplate="front: %{text}<extra></extra>",
    ))
    for epoch in sorted(stopped["epochs_run"].unique()) if stopped is not None else []:
        early = stopped.filter(pl.col("epochs_run") == epoch)
        traces.append(go.Scatter(
            x=early["test_err"].to_list(), y=early["dead_gamma_pct"].to_list(), mode="markers",
            marker={"symbol": "circle-open", "size": 9, "color": "grey"}, name=f"stopped at epoch {epoch}",
            hovertext=early["config"].to_list(),
        ))
    fig = go.Figure(traces)
    fig.update_layout(title=title, xaxis_title="test error (%)", yaxis_title="dead filters by gamma (%)",
                      yaxis_range=_PERCENT_RANGE)
    return fig


def layers_figure(profile: pl.DataFrame) -> go.Figure:
    """% dead filters by gamma per conv layer, one line per configuration (bars: one std over
    seeds). Input: `figures.layer_profile`."""
    title = "Dead filters by gamma per layer (final epoch, mean over seeds)"
    if profile.is_empty():
        return empty_figure(title, "no per-layer counts: the sweep's `layers` table is empty")
    colors = _colors(profile["config"])
    series = profile.sort("config", "layer_index").partition_by("config", as_dict=True)
    fig = go.Figure([
        go.Scatter(x=d["layer"].to_list(), y=d["mean"].to_numpy(), mode="lines+markers", name=config,
                   error_y={"type": "data", "array": d["std"].to_numpy()}, line={"color": colors[config]},
                   hovertemplate=f"{config}<br>%{{x}}: %{{y:.1f}}% dead<extra></extra>")
        for (config,), d in series.items()
    ])
    fig.update_layout(title=title, yaxis_title="dead filters by gamma (%)", yaxis_range=_PERCENT_RANGE,
                      xaxis={"title": "layer", "categoryorder": "array",
                             "categoryarray": layer_columns(profile["layer"].unique())})
    return fig


_TRAJECTORY_TITLES = {"dead_gamma_pct": "dead filters by gamma (%)", "dead_act_pct": "dead filters by activation (%)",
                      "test_err": "test error (%)"}
_SHORT = 30  # a series of this few epochs gets markers and min-max bars; a longer one a band


def trajectories_figure(traj: pl.DataFrame) -> go.Figure:
    """Dead filters by gamma, by activation (where measured) and test error over the epochs (one
    panel each), one line per configuration: the mean over seeds and a band from the lowest to the
    highest seed (a series of few epochs: markers with min-max bars). Input: `figures.trajectories`."""
    title = "Over training: dead filters and test error (mean over seeds, band: min to max)"
    if traj.is_empty():
        return empty_figure(title, "no per-epoch rows: the sweep's `epochs` table is empty")
    metrics = [m for m in _TRAJECTORY_TITLES if m in set(traj["metric"])]
    colors = _colors(traj["config"])
    series = traj.sort("epoch").partition_by("config", "metric", as_dict=True)
    panels: list[tuple[Trace, int, int]] = []
    for config, color in colors.items():
        in_legend = False
        for r, metric in enumerate(metrics, start=1):
            d = series.get((config, metric))
            if d is None:
                continue
            short = d.height <= _SHORT
            if not short:
                panels.append((_band(d, "min", "max", color, 0.15, config), r, 1))
            panels.append((dict(
                type="scatter", x=d["epoch"].to_numpy(), y=d["mean"].to_numpy(),
                mode="lines+markers" if short else "lines",
                name=config, line={"color": color}, legendgroup=config, showlegend=not in_legend,
                error_y={"type": "data", "symmetric": False, "array": (d["max"] - d["mean"]).to_numpy(),
                         "arrayminus": (d["mean"] - d["min"]).to_numpy()} if short else None,
                customdata=d.select("n", "min", "max").to_numpy(),
                hovertemplate=f"{config}<br>epoch %{{x}}: mean %{{y:.3g}} "
                              "(min %{customdata[1]:.3g}, max %{customdata[2]:.3g}, n %{customdata[0]})<extra></extra>",
            ), r, 1))
            in_legend = True
    fig = _panels(panels, rows=len(metrics), cols=1, titles=[_TRAJECTORY_TITLES[m] for m in metrics])
    for r, metric in enumerate(metrics, start=1):
        if metric != "test_err":
            fig.update_yaxes(range=_PERCENT_RANGE, row=r, col=1)
    fig.update_xaxes(title_text="epoch", row=len(metrics), col=1)
    fig.update_layout(title=title, height=max(450, 320 * len(metrics)))
    return fig


def _band(d: pl.DataFrame, low: str, high: str, color: str, opacity: float, group: str, x: str = "epoch") -> Trace:
    """A shaded band between two columns along `x` (the epochs): one closed outline, along the upper
    edge and back along the lower."""
    x = d[x].to_numpy()
    fill = f"rgba({','.join(str(int(color[i:i + 2], 16)) for i in (1, 3, 5))},{opacity})"
    return dict(type="scatter", x=np.concatenate([x, x[::-1]]),
                y=np.concatenate([d[high].to_numpy(), d[low].to_numpy()[::-1]]), mode="lines", line={"width": 0},
                fill="toself", fillcolor=fill, legendgroup=group, showlegend=False, hoverinfo="skip")


def gamma_beta_figure(quantiles: pl.DataFrame) -> go.Figure:
    """BN gamma (left) and beta (right) over training for the chosen layers (rows): per configuration
    the median filter, a band over the middle 50% and a fainter one over 90% (the supplement's Fig. 1).
    Input: `figures.gamma_beta_quantiles`."""
    title = "BN gamma and beta over training (median, 25-75% and 5-95% of filters)"
    if quantiles.is_empty():
        return empty_figure(title, "no per-filter snapshots: set train.snapshot_every > 0 in the sweep")
    layers = layer_columns(quantiles["layer"].unique())
    colors = _colors(quantiles["config"])
    series = quantiles.sort("epoch").partition_by("config", "layer", "param", as_dict=True)
    panels: list[tuple[Trace, int, int]] = []
    for config, color in colors.items():
        for r, layer in enumerate(layers, start=1):
            for c, param in enumerate(("gamma", "beta"), start=1):
                d = series.get((config, layer, param))
                if d is None:
                    continue
                panels += [(_band(d, "q05", "q95", color, 0.12, config), r, c),
                           (_band(d, "q25", "q75", color, 0.3, config), r, c)]
                panels.append((dict(
                    type="scatter", x=d["epoch"].to_numpy(), y=d["q50"].to_numpy(), mode="lines+markers", name=config,
                    line={"color": color}, legendgroup=config, showlegend=(r, c) == (1, 1),
                    hovertemplate=f"{config}<br>{layer} {param}<br>epoch %{{x}}: median %{{y:.3g}}<extra></extra>",
                ), r, c))
    fig = _panels(panels, rows=len(layers), cols=2,
                  titles=[f"{layer} {param}" for layer in layers for param in ("gamma", "beta")])
    fig.update_xaxes(title_text="epoch", row=len(layers))
    fig.update_layout(title=title, height=max(400, 300 * len(layers)))
    return fig


def universality_figure(hist: pl.DataFrame) -> go.Figure:
    """Histogram of feature universality per layer (one panel each, four to a row), bars per
    configuration (the supplement's Fig. 2). Input: `figures.universality_histogram`."""
    title = "Feature universality: fraction of training images a filter activates on"
    if hist.is_empty():
        return empty_figure(title, "no universality measured: the sweep's `filters` table has none")
    layers = layer_columns(hist["layer"].unique())
    colors = _colors(hist["config"])
    shown = hist.with_columns(
        pl.format("{}-{}", pl.col("bin_low").round(2), pl.col("bin_high").round(2)).alias("universality")
    ).sort("bin_low").partition_by("config", "layer", as_dict=True)
    width = min(4, len(layers))
    panels = [
        (dict(type="bar", x=d["universality"].to_list(), y=d["fraction"].to_numpy(),
              customdata=d["count"].to_numpy(), name=config, marker_color=color, legendgroup=config,
              showlegend=i == 0,
              hovertemplate=f"{config}<br>{layer} universality %{{x}}: %{{y:.2f}} (%{{customdata}} filters)"
                            "<extra></extra>"),
         i // width + 1, i % width + 1)
        for config, color in colors.items() for i, layer in enumerate(layers)
        if (d := shown.get((config, layer))) is not None
    ]
    rows = (len(layers) + width - 1) // width
    fig = _panels(panels, rows=rows, cols=width, titles=layers, shared_xaxes=False)
    fig.update_yaxes(title_text="fraction of filters", col=1)
    fig.update_layout(title=title, barmode="group", height=max(400, 320 * rows))
    return fig


def lowgrad_figure(bands: pl.DataFrame) -> go.Figure:
    """The low-gradient simulation: the scalar against iterations, one panel per L2 strength, one
    line per optimizer (the supplement's Fig. 3): the median over the noise seeds and a band from
    the lowest to the highest seed. Input: `figures.lowgrad_bands`."""
    title = "Low-gradient regime: an L2-regularized scalar per optimizer (median over noise seeds, band: min to max)"
    if bands.is_empty():
        return empty_figure(title, "no simulation data")
    strengths = sorted(bands["strength"].unique(), reverse=True)
    # SGD is the reference every adaptive optimizer is compared with: drawn last, on top, black
    optimizers = sorted(set(bands["optimizer"]), key=lambda o: (o == "sgd", o))
    colors = {**_colors(o for o in optimizers if o != "sgd"), "sgd": "#000000"}
    # float32 is exact enough to draw and halves the page (three curves of 1001 points a series)
    series = bands.sort("iteration").with_columns(pl.col("median", "low", "high").cast(pl.Float32)) \
        .partition_by("optimizer", "strength", as_dict=True)
    panels = [
        trace
        for optimizer in optimizers for c, strength in enumerate(strengths, start=1)
        if (d := series.get((optimizer, strength))) is not None
        for trace in (
            (_band(d, "low", "high", colors[optimizer], 0.2, optimizer, x="iteration"), 1, c),
            (dict(type="scatter", x=d["iteration"].to_numpy(), y=d["median"].to_numpy(), mode="lines", name=optimizer,
                  legendgroup=optimizer, showlegend=c == 1,
                  line={"color": colors[optimizer], **({"dash": "dash", "width": 3} if optimizer == "sgd" else {})},
                  hovertemplate=f"{optimizer}, L2 {strength:g}<br>iteration %{{x}}: median %{{y:.3g}} over "
                                f"{d['seeds'].max()} seeds<extra></extra>"),
             1, c),
        )
    ]
    fig = _panels(panels, rows=1, cols=len(strengths), titles=[f"L2 {s:g}" for s in strengths], shared_xaxes=False)
    fig.update_xaxes(title_text="iteration")
    fig.update_yaxes(title_text="scalar value", col=1)
    fig.update_layout(title=title)
    return fig


def pruning_figure(table: pl.DataFrame) -> go.Figure:
    """Test error of the pruned network against the % of FLOPs removed, one curve per method (and
    network): a point per configuration at its mean over seeds, a band and bars from the lowest to
    the highest seed's error, horizontal bars one std of FLOPs removed. Implicit points are the dead
    filters removed, without fine-tuning. Input: `figures.pruning_table`."""
    title = "Implicit vs explicit pruning: test error against FLOPs removed (band: min to max over seeds)"
    table = table.filter(pl.col("flops_pruned_pct").is_not_null() & pl.col("pruned_test_err").is_not_null())
    if table.is_empty():
        return empty_figure(title, "no pruning measured: the trials table has no pruned_test_err")
    colors = _colors(table["curve"])
    traces: list[Trace] = []
    for (curve,), d in table.sort("flops_pruned_pct").partition_by("curve", as_dict=True).items():
        traces.append(_band(d, "pruned_test_err_min", "pruned_test_err_max", colors[curve], 0.15, curve,
                            x="flops_pruned_pct"))
        traces.append(dict(
            type="scatter", x=d["flops_pruned_pct"].to_numpy(), y=d["pruned_test_err"].to_numpy(),
            mode="lines+markers", name=curve, legendgroup=curve, line={"color": colors[curve]},
            error_x={"type": "data", "array": d["flops_pruned_pct_std"].fill_null(0.0).to_numpy()},
            error_y={"type": "data", "symmetric": False,
                     "array": (d["pruned_test_err_max"] - d["pruned_test_err"]).to_numpy(),
                     "arrayminus": (d["pruned_test_err"] - d["pruned_test_err_min"]).to_numpy()},
            customdata=d.select("filters_removed_pct", "seeds").to_numpy(), text=d["configuration"].to_list(),
            hovertemplate=f"{curve}<br>%{{text}}<br>FLOPs removed %{{x:.1f}}%, filters %{{customdata[0]:.1f}}%"
                          "<br>test error %{y:.2f}% (n %{customdata[1]})<extra></extra>",
        ))
    fig = go.Figure(traces)
    fig.update_layout(title=title, xaxis_title="FLOPs removed (%)", yaxis_title="test error after pruning (%)",
                      xaxis_range=_PERCENT_RANGE)
    return fig

"""Write a sweep's report: `python orchestrator/report.py RESULTS/<sweep>` -> `RESULTS/<sweep>/report/`.

Files: table.md / table.csv (configurations averaged over seeds, the paper's values beside them where
a supplement table has the configuration), claims.md (the paper's claims checked on the data),
pareto.html, layers.html, gamma_beta.html, universality.html, lowgrad.html, early_stopping.md (what
early stopping would have saved and lost on this sweep) and index.html linking them. Every HTML page
embeds plotly.js, so it opens with no network.

`python orchestrator/report.py --lowgrad OUTDIR` writes only the low-gradient simulation (lowgrad.html).
`python orchestrator/report.py RESULTS/<sweep> --replay-early-stopping [--sweep FILE]` prints only the
replay, as one JSON line (the scheduler's default settings, or the sweep file's).
Exit codes: 0 written, 2 bad input (nothing written).
"""

from __future__ import annotations

import argparse
import html
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

if __package__ in (None, ""):  # run as a script: make the repository importable
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import plotly.graph_objects as go  # noqa: E402
import polars as pl  # noqa: E402

from orchestrator import claims, early_stopping, figures, paper, plots, results  # noqa: E402
from sparsity_core.lowgrad import simulate_low_gradient  # noqa: E402

if TYPE_CHECKING:
    from orchestrator.spec import SweepSpec

__all__ = ["ReportError", "build_report", "replay_early_stopping", "write_lowgrad", "markdown_table", "main"]

FIGURES = ("pareto.html", "layers.html", "gamma_beta.html", "universality.html", "lowgrad.html")
# Table columns: (metric, header, decimals). Percentages and errors in percent, losses as they are.
_COLUMNS = (
    ("train_loss", "train loss", 2),
    ("test_loss", "test loss", 2),
    ("test_err", "test err", 1),
    ("dead_gamma_pct", "total (gamma)", 1),
    ("dead_act_pct", "total (act.)", 1),
    ("conv_params_pruned_pct", "conv params pruned", 1),
    ("pruned_test_err", "pruned test err", 1),
)


class ReportError(ValueError):
    """Bad input for a report; the message says what is wrong and how to fix it."""


# --- tables ----------------------------------------------------------------------------------------


def markdown_table(df: pl.DataFrame) -> str:
    """A GitHub Markdown table of `df` (every value shown as text, null as blank)."""
    cells = [[("" if v is None else str(v)).replace("|", "\\|") for v in row] for row in df.rows()]
    lines = ["| " + " | ".join(df.columns) + " |", "|" + "---|" * len(df.columns)]
    lines += ["| " + " | ".join(row) + " |" for row in cells]
    return "\n".join(lines)


def _mean_std(agg: pl.DataFrame, metric: str, decimals: int) -> list[str | None]:
    return [None if m is None else f"{m:.{decimals}f}" + ("" if s is None else f" ± {s:.{decimals}f}")
            for m, s in zip(agg[f"{metric}_mean"], agg[f"{metric}_std"])]


def _metrics(agg: pl.DataFrame) -> list[tuple[str, str, int]]:
    """Table columns in the supplement's order: losses and error, C1..Cn, totals, pruning; a
    column nobody measured (all null) is left out of the Markdown table."""
    layers = [(c, c, 1) for c in results.layer_columns(c.removesuffix("_mean") for c in agg.columns)]
    ordered = [*_COLUMNS[:3], *layers, *_COLUMNS[3:]]
    return [m for m in ordered if f"{m[0]}_mean" in agg.columns and agg[f"{m[0]}_mean"].null_count() < agg.height]


def _labels(agg: pl.DataFrame) -> pl.DataFrame:
    """The row-label settings, list settings (lr_steps) as text."""
    labels = results.label_columns(agg)
    return agg.select(
        pl.col(c).cast(pl.List(pl.String)).list.join(",") if isinstance(agg.schema[c], pl.List) else pl.col(c)
        for c in labels
    )


def _label_text(agg: pl.DataFrame) -> dict[str, pl.Series]:
    labels = _labels(agg)
    return {c: labels[c].map_elements(results.format_setting, return_dtype=pl.String) for c in labels.columns}


def results_markdown(agg: pl.DataFrame) -> pl.DataFrame:
    """The supplement-shaped table as text: row labels, n seeds, `mean ± std` per metric."""
    columns = _label_text(agg)
    columns["n"] = agg["n_seeds"].cast(pl.String)
    for metric, header, decimals in _metrics(agg):
        columns[header] = pl.Series(_mean_std(agg, metric, decimals), dtype=pl.String)
    return pl.DataFrame(columns)


def paper_markdown(agg: pl.DataFrame) -> pl.DataFrame | None:
    """Ours / paper (ours minus paper) for the configurations with a paper row; None if none has."""
    if "paper_source" not in agg.columns:
        return None
    matched = agg.filter(pl.col("paper_source").is_not_null())
    columns = _label_text(matched)
    columns["paper"] = matched["paper_source"]
    for metric, header, decimals in _metrics(matched):
        if f"paper_{metric}" not in matched.columns:
            continue
        columns[header] = pl.Series([
            None if p is None or m is None else f"{m:.{decimals}f} / {p:.{decimals}f} ({d:+.{decimals}f})"
            for m, p, d in zip(matched[f"{metric}_mean"], matched[f"paper_{metric}"], matched[f"diff_{metric}"])
        ], dtype=pl.String)
    return pl.DataFrame(columns)


# Implicit vs explicit pruning: the same trained networks, the same number of filters removed.
_PRUNING = (
    ("conv_params_pruned_pct", "conv params removed", 1),
    ("flops_pruned_pct", "FLOPs removed", 1),
    ("pruned_speedup", "speedup", 2),
    ("test_err", "test err", 1),
    ("pruned_test_err", "dead removed (implicit)", 1),
    ("slim_pruned_test_err", "network slimming", 1),
    ("l1norm_pruned_test_err", "L1-norm (Li et al.)", 1),
)


def pruning_markdown(agg: pl.DataFrame) -> pl.DataFrame | None:
    """Test error after removing the dead filters vs after explicit pruning of as many filters, for
    the configurations that had dead filters; None when none had."""
    if "conv_params_pruned_pct_mean" not in agg.columns:
        return None
    pruned = agg.filter(pl.col("conv_params_pruned_pct_mean") > 0)
    if pruned.is_empty():
        return None
    columns = _label_text(pruned)
    for metric, header, decimals in _PRUNING:
        columns[header] = _mean_std(pruned, metric, decimals)
    return pl.DataFrame(columns)


def _csv_frame(agg: pl.DataFrame) -> pl.DataFrame:
    """table.csv: the varying settings as row labels, then every number, then provenance."""
    numbers = [c for c in agg.columns if c.endswith(("_mean", "_std")) or c.startswith(("paper_", "diff_"))]
    return pl.concat([_labels(agg), agg.select("config", "n_seeds", *numbers, "trial_ids", "code_versions")],
                     how="horizontal")


def write_tables(agg: pl.DataFrame, out: Path, sweep: str) -> None:
    _csv_frame(agg).write_csv(out / "table.csv")
    parts = [
        f"# {sweep}: results by configuration",
        "",
        "Mean ± std over seeds (n: seeds). Dead filters in % of a layer's filters at the final epoch: "
        "C1..Cn and total (gamma) count |gamma| < 1e-3; total (act.) counts filters that never activate "
        "on the training set. Test errors in %.",
        "",
        markdown_table(results_markdown(agg)),
    ]
    paper = paper_markdown(agg)
    if paper is not None:
        parts += [
            "",
            "## Beside the paper",
            "",
            "ours / paper (ours minus paper), against the supplement row named under `paper` "
            "(a sweep on another dataset is set beside the CIFAR-10 rows).",
            "",
            markdown_table(paper),
        ]
    pruning = pruning_markdown(agg)
    if pruning is not None:
        parts += [
            "",
            "## Implicit vs explicit pruning",
            "",
            "Test error (%) of each trained network after its dead filters are removed, and after the "
            "same number of filters is removed by network slimming (smallest |gamma| overall) or by "
            "L1-norm pruning (smallest filters in each layer), without fine-tuning.",
            "",
            markdown_table(pruning),
        ]
    (out / "table.md").write_text("\n".join(parts) + "\n")


def write_claims(claims: pl.DataFrame, out: Path, sweep: str) -> None:
    lines = [f"# The paper's claims, checked on {sweep}", "",
             "holds / fails / not testable, with the comparisons behind each verdict (sparsity: "
             "total % dead by gamma, mean over seeds).", ""]
    for row in claims.to_dicts():
        lines += [f"{row['claim']}. **{row['status']}**: {row['text']}", f"   {row['evidence']}", ""]
    (out / "claims.md").write_text("\n".join(lines))


# --- early stopping --------------------------------------------------------------------------------


def replay_early_stopping(tables: results.Results, spec: SweepSpec | None = None) -> early_stopping.ReplayResult:
    """What early stopping would have done to this sweep: with the `early_stopping:` settings of the
    sweep file `spec` and its search's objectives, else the scheduler's defaults (which judge the
    default objectives). ReportError when the sweep cannot be replayed."""
    settings = (spec.early_stopping if spec is not None else None) or early_stopping.EarlyStopping()
    search = spec.optuna.objectives if spec is not None and spec.optuna is not None else None
    try:
        return early_stopping.replay(tables.epochs, tables.trials, settings, search)
    except ValueError as e:
        raise ReportError(f"cannot replay early stopping on this sweep: {e}") from None


def write_early_stopping(tables: results.Results, spec: SweepSpec | None, out: Path, sweep: str) -> None:
    """early_stopping.md: the replay's savings, the front points it would have lost, per rung the
    trials it would have stopped and how well the rung ranks the trials as they end; or why the
    sweep cannot be replayed."""
    lines = [f"# {sweep}: early stopping, replayed", ""]
    try:
        r = replay_early_stopping(tables, spec)
    except ReportError as e:
        (out / "early_stopping.md").write_text("\n".join([*lines, f"Not replayed: {e}", ""]))
        return
    source = "the sweep file's settings" if spec is not None and spec.early_stopping else "the scheduler's defaults"
    lost = ", ".join(f"{p['trial_id']} (at epoch {p['epoch']})" for p in r.front_stopped) or "none"
    lines += [
        f"Objectives {', '.join(r.objectives)}; rungs at epochs {', '.join(str(g['epoch']) for g in r.rungs)}; "
        f"reduction factor {r.reduction_factor:g}; at least {r.min_trials_per_rung} trials at a rung before "
        f"it stops any ({source}). Trials reach a rung in the order estimated from their start and wall "
        "time; a live run frees slots early and can decide a few trials differently.",
        "",
        f"- {r.trials_stopped} of {r.trials} trials stopped, {r.epochs_saved} of {r.epochs_run} epochs saved "
        f"(**{r.epochs_saved_pct:.1f}%**).",
        f"- Final Pareto front (trials that ran to the end): size {r.front_size}, **{r.front_kept} kept**; "
        f"stopped: {lost}.",
        *([f"- {live} trials were stopped when the sweep ran; here they count with the epochs they ran."]
          if (live := tables.trials.filter(pl.col("status") == "stopped").height) else []),
        "",
        "## Per rung",
        "",
        markdown_table(pl.DataFrame(r.rungs)),
        "",
        "## Rank correlation of a rung with the end (Kendall's tau-b over the trials that ran to the end)",
        "",
        markdown_table(pl.DataFrame(r.rank_correlation).with_columns(pl.col("kendall_tau", "p_value").cast(pl.Float64).round(3))),
        "",
    ]
    (out / "early_stopping.md").write_text("\n".join(lines))


# --- figures and index -----------------------------------------------------------------------------


def _write_figure(fig: go.Figure, path: Path) -> None:
    # plotly.js inline in every page: reports are read offline, and a page may be sent on alone.
    fig.write_html(path, include_plotlyjs=True, full_html=True)


def _lowgrad_data(iterations: int) -> pl.DataFrame:
    return figures.lowgrad_frame(simulate_low_gradient(iterations=iterations))


def write_lowgrad(out: str | Path, iterations: int = 10_000) -> Path:
    """Run the low-gradient simulation and write `<out>/lowgrad.html`."""
    folder = Path(out)
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "lowgrad.html"
    _write_figure(plots.lowgrad_figure(_lowgrad_data(iterations)), path)
    return path


def _index(sweep: str, tables: results.Results, agg: pl.DataFrame, verdicts: pl.DataFrame) -> str:
    statuses = tables.trials["status"].value_counts(sort=True).rows()
    varying = ", ".join(results.varying_settings(agg)) or "nothing"
    links = [("table.md", "results by configuration (Markdown)"), ("table.csv", "the same, every number (CSV)"),
             ("claims.md", "the paper's claims checked"),
             ("early_stopping.md", "early stopping replayed: epochs it would save, front points it would lose"),
             ("pareto.html", "sparsity vs test error, Pareto front"), ("layers.html", "dead filters per layer"),
             ("gamma_beta.html", "BN gamma and beta over training (Fig. 1)"),
             ("universality.html", "feature universality per layer (Fig. 2)"),
             ("lowgrad.html", "low-gradient simulation (Fig. 3)")]
    items = "\n".join(f'<li><a href="{f}">{f}</a>: {html.escape(text)}</li>' for f, text in links)
    verdicts = "\n".join(f"<li>{c}. <b>{html.escape(s)}</b>: {html.escape(t)}</li>"
                         for c, t, s in verdicts.select("claim", "text", "status").rows())
    return f"""<!DOCTYPE html>
<html><head><meta charset="utf-8"><title>{html.escape(sweep)} report</title></head>
<body style="font-family: sans-serif; max-width: 60em">
<h1>{html.escape(sweep)}</h1>
<p>{tables.trials.height} trials ({html.escape(", ".join(f"{n} {s}" for s, n in statuses))});
{agg.height} configurations, averaged over seeds; varying: {html.escape(varying)}.</p>
<ul>
{items}
</ul>
<h2>Claims</h2>
<ul>
{verdicts}
</ul>
</body></html>
"""


def _check_input(sweep_dir: Path) -> None:
    if not sweep_dir.is_dir():
        raise ReportError(f"{sweep_dir}: no such results folder; pass RESULTS/<sweep>, the folder "
                          "orchestrator/run.py wrote (e.g. results/quick)")
    if not any((sweep_dir / "trials").glob("*.parquet")):
        raise ReportError(f"{sweep_dir}: no trials (no trials/*.parquet there); run the sweep first "
                          "(python orchestrator/run.py sweeps/<sweep>.yaml) or pass its results folder")


def _load(folder: Path) -> results.Results:
    _check_input(folder)
    try:
        return results.load_results(folder)
    except (pl.exceptions.PolarsError, OSError) as e:
        raise ReportError(f"{folder}: cannot read its Parquet tables ({type(e).__name__}: {e}); "
                          "re-run the sweep's failed trials or remove the damaged files") from None


def build_report(
    sweep_dir: str | Path,
    out: str | Path | None = None,
    *,
    layers: Sequence[str] | None = None,
    lowgrad_iterations: int = 10_000,
    spec: SweepSpec | None = None,
) -> Path:
    """Write every report file for the sweep in `sweep_dir` into `out` (default: `<sweep_dir>/report`).
    `spec`: the sweep file, whose early-stopping settings the replay uses (default: the scheduler's)."""
    folder = Path(sweep_dir)
    tables = _load(folder)
    agg = results.aggregate(tables.trials, tables.layers)
    if agg.is_empty():
        counts = ", ".join(f"{n} {s}" for s, n in tables.trials["status"].value_counts().rows())
        raise ReportError(f"{folder}: no trial finished ok ({counts}); see the `error` column of "
                          "trials/*.parquet, fix the cause and run the sweep again")
    known = results.layer_columns(tables.filters["layer"].unique())
    unknown = [layer for layer in layers or () if layer not in known]
    if unknown:
        raise ReportError(f"--layers {','.join(unknown)}: not in the sweep's filters table; "
                          f"valid: {', '.join(known) or 'none (no per-filter snapshots)'}")

    target = Path(out) if out is not None else folder / "report"
    target.mkdir(parents=True, exist_ok=True)
    sweep = folder.resolve().name
    agg = paper.compare_with_paper(agg, paper.load_reference())
    lowgrad = _lowgrad_data(lowgrad_iterations)
    verdicts = claims.check_claims(agg, lowgrad)
    write_tables(agg, target, sweep)
    write_claims(verdicts, target, sweep)
    write_early_stopping(tables, spec, target, sweep)
    pages = {
        "pareto.html": plots.pareto_figure(results.pareto_points(agg), results.stopped_points(tables.trials)),
        "layers.html": plots.layers_figure(figures.layer_profile(agg)),
        "gamma_beta.html": plots.gamma_beta_figure(
            figures.gamma_beta_quantiles(tables.filters, tables.trials, layers)),
        "universality.html": plots.universality_figure(
            figures.universality_histogram(tables.filters, tables.trials)),
        "lowgrad.html": plots.lowgrad_figure(lowgrad),
    }
    for name, fig in pages.items():
        _write_figure(fig, target / name)
    (target / "index.html").write_text(_index(sweep, tables, agg, verdicts))
    return target


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="orchestrator/report.py", description=__doc__.splitlines()[0])
    p.add_argument("sweep_dir", nargs="?", help="a sweep's results folder, e.g. results/quick")
    p.add_argument("--out", default=None, help="report folder (default: SWEEP_DIR/report)")
    p.add_argument("--layers", default=None, metavar="C1,C7",
                   help="conv layers shown in gamma_beta.html (default: the first and the last)")
    p.add_argument("--lowgrad", default=None, metavar="OUTDIR",
                   help="only run the low-gradient simulation and write OUTDIR/lowgrad.html")
    p.add_argument("--lowgrad-iterations", type=int, default=10_000,
                   help="iterations of the low-gradient simulation (default: 10000)")
    p.add_argument("--replay-early-stopping", action="store_true",
                   help="only print, as one JSON line, what early stopping would have saved and lost")
    p.add_argument("--sweep", default=None, metavar="FILE",
                   help="the sweep file whose early_stopping settings and objectives the replay uses "
                        "(default: the scheduler's defaults)")
    return p


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    if (args.sweep_dir is None) == (args.lowgrad is None):
        print("error: pass a sweep's results folder (e.g. results/quick) or --lowgrad OUTDIR, "
              "one of the two", file=sys.stderr)
        return 2
    if args.lowgrad_iterations <= 0:
        print("error: --lowgrad-iterations must be a positive number of iterations", file=sys.stderr)
        return 2
    if args.lowgrad is not None:
        if args.replay_early_stopping or args.sweep:
            print("error: --replay-early-stopping and --sweep replay a sweep's results: pass its results "
                  "folder instead of --lowgrad", file=sys.stderr)
            return 2
        print(f"wrote {write_lowgrad(args.lowgrad, args.lowgrad_iterations)}")
        return 0
    layers = [x.strip() for x in args.layers.split(",") if x.strip()] if args.layers else None
    try:
        spec = _sweep_spec(args.sweep)
        if args.replay_early_stopping:
            print(replay_early_stopping(_load(Path(args.sweep_dir)), spec).to_json())
            return 0
        target = build_report(args.sweep_dir, args.out, layers=layers, lowgrad_iterations=args.lowgrad_iterations,
                              spec=spec)
    except ReportError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(f"wrote {target}/: index.html, table.md, table.csv, claims.md, early_stopping.md, {', '.join(FIGURES)}")
    return 0


def _sweep_spec(path: str | None) -> SweepSpec | None:
    if path is None:
        return None
    from orchestrator.spec import SpecError, load_spec  # Optuna, for the sweep file's search section

    try:
        return load_spec(path).spec
    except SpecError as e:
        raise ReportError(f"--sweep {e}") from None


if __name__ == "__main__":
    sys.exit(main())

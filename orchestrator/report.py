"""Write a sweep's report: `python orchestrator/report.py RESULTS/<sweep>` -> `RESULTS/<sweep>/report/`.

The sweep's results are read where they live: a folder (`results/quick`) or any URI the store writes
(`s3://bucket/prefix/quick?endpoint_override=host:9000&scheme=http`, credentials from the AWS_*
variables); a remote sweep's report goes to the local folder `report/<sweep>/` unless `--out` says.
Files: table.md / table.csv (configurations of implicit sparsity averaged over seeds, the paper's
values beside them where a supplement table has the configuration's setup), claims.md / claims.csv
(the paper's claims checked on the per-seed values), early_stopping.md (what early stopping would have
saved and lost on this sweep), pruning.csv (implicit vs explicit pruning, a row per configuration;
explicit pipelines appear only there, in pruning.html, table.md's pruning section and claim 10),
pareto.html, layers.html,
trajectories.html, gamma_beta.html, universality.html, lowgrad.html, pruning.html and index.html
linking them. The pages share one plotly.min.js written beside them, so the folder opens with no
network.

`python orchestrator/report.py --lowgrad OUTDIR` writes only the low-gradient simulation (lowgrad.html).
`python orchestrator/report.py RESULTS/<sweep> --replay-early-stopping [--sweep FILE]` prints only the
replay, as one JSON line (the scheduler's default settings, or the sweep file's).
Exit codes: 0 written, 2 bad input (nothing written).
"""

from __future__ import annotations

import argparse
import hashlib
import html
import importlib.util
import json
import os
import sys
from collections.abc import Callable, Mapping, Sequence
from importlib import metadata
from pathlib import Path
from typing import TYPE_CHECKING, TypeVar

if __package__ in (None, ""):  # run as a script: make the repository importable
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import plotly.graph_objects as go  # noqa: E402
import plotly.offline  # noqa: E402
import polars as pl  # noqa: E402
import pyarrow as pa  # noqa: E402
import pyarrow.fs as pafs  # noqa: E402

from orchestrator import claims, early_stopping, figures, paper, plots, results, stats  # noqa: E402
from orchestrator.store import ResultStore  # noqa: E402

if TYPE_CHECKING:
    from orchestrator.spec import SweepSpec

__all__ = ["ReportError", "build_report", "lowgrad_data", "replay_early_stopping", "write_lowgrad",
           "markdown_table", "main"]

FIGURES = ("pareto.html", "layers.html", "trajectories.html", "gamma_beta.html", "universality.html",
           "lowgrad.html", "pruning.html")
PLOTLY_JS = "plotly.min.js"
T = TypeVar("T")
# Table columns: (metric, header, decimals). Percentages and errors in percent, losses as they are.
_COLUMNS = (
    ("train_loss", "train loss", 2),
    ("test_loss", "test loss", 2),
    ("test_err", "test err", 1),
    ("dead_gamma_pct", "total (gamma)", 1),
    ("dead_act_pct", "total (act.)", 1),
    ("conv_params_pruned_pct", "conv params pruned", 1),
    ("pruned_test_err", "pruned test err", 1),
    # remedies that act on filters, at the last epoch: revived or shifted, of those alive by the
    # paper's thresholds, of those functionally recovered (sparsity_core.sparsity.functional)
    ("remedied", "revived/shifted", 1),
    ("remedied_alive", "of those alive (thresholds)", 1),
    ("recovered", "of those recovered (function)", 1),
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


def paper_markdown(matched: pl.DataFrame) -> pl.DataFrame:
    """Ours / paper (ours minus paper) for `paper.compare_with_paper`'s rows: configurations trained
    in the supplement's setup, once per supplement row of theirs."""
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


_EFFECT_NAMES = {"dead_gamma_pct": "dead filters (gamma)", "test_err": "test err"}


def effects_markdown(effects: pl.DataFrame) -> pl.DataFrame:
    """`paper.paper_effects` as text: the pair, the metric, the effect here with its interval and
    seeds, the paper's effect and table, and whether the directions agree."""
    here = [
        "no value" if e is None else
        (f"{e:+.1f}" if lo is None else f"{e:+.1f} [{lo:+.1f}, {hi:+.1f}]") + f" (n={nl} vs {nr})"
        for e, lo, hi, nl, nr in effects.select("effect", "interval_low", "interval_high", "n_left", "n_right").rows()
    ]
    return pl.DataFrame({
        "left vs right": [f"{a} vs {b}" for a, b in effects.select("left", "right").rows()],
        "metric": effects["metric"].replace_strict(_EFFECT_NAMES, default=effects["metric"]),
        "here": here,
        "paper": [f"{p:+.1f} ({src})" for p, src in effects.select("paper_effect", "paper_source").rows()],
        "direction": effects["agreement"],
    })


def _paper_section(agg: pl.DataFrame, per_seed: pl.DataFrame | None) -> list[str]:
    """table.md's "Beside the paper": numbers against the rows of the same setup, directions elsewhere."""
    reference = paper.load_reference()
    matched = paper.compare_with_paper(agg, reference)
    effects = paper.paper_effects(per_seed, reference) if per_seed is not None else None
    mismatch = paper.setup_mismatch(agg, reference)
    if matched.is_empty() and (effects is None or effects.is_empty()):
        return []
    parts = ["", "## Beside the paper", ""]
    if not matched.is_empty():
        parts += ["ours / paper (ours minus paper), against the supplement's rows of the same setup (dataset, "
                  "BasicNet at full width, native image size, batch 40, 325 epochs with LR / 10 at 250, the "
                  "paper's base LRs, no remedy, and the settings the row names); a configuration in two "
                  "tables has a line for each.", "", markdown_table(paper_markdown(matched)), ""]
    if mismatch:
        outside = sum(not paper.same_setup(c, reference) for c in agg.select(results.CONFIG_COLUMNS).to_dicts())
        parts += [f"{outside} of the {agg.height} configurations here were not trained in the supplement's "
                  f"setup: {'; '.join(mismatch)}. No supplement row is theirs, so their numbers are not set "
                  "beside the paper's.", ""]
    if effects is not None and not effects.is_empty():
        parts += [f"Effects here and in the paper, left minus right, in points, for pairs of configurations "
                  f"that differ in one setting a supplement table varies. Here: mean over seeds with its "
                  f"{stats.CONFIDENCE:.0%} interval (as in claims.md); paper: from its table (averages of 3 "
                  "runs, possibly another setup). Only the directions are compared (`same`, `opposite`, "
                  "`undecided` when our interval holds 0, or has none: a side with one seed), never the sizes.", "",
                  markdown_table(effects_markdown(effects)), ""]
    return parts[:-1]


# pruning.csv (`figures.PRUNING_COLUMNS`) as table.md shows it: column -> (header, decimals), in this order
_PRUNING = {
    "filters_removed_pct": ("filters removed", 1),
    "conv_params_pruned_pct": ("conv params removed", 1),
    "flops_pruned_pct": ("FLOPs removed", 1),
    "pruned_speedup": ("speedup", 2),
    "trained_test_err": ("trained test err", 2),
    "pruned_test_err": ("pruned test err", 2),
}


def pruning_markdown(table: pl.DataFrame) -> pl.DataFrame | None:
    """`figures.pruning_table` as text (mean ± std over seeds), for the configurations that removed
    something; None when none did."""
    pruned = table.filter(pl.col("flops_pruned_pct") > 0)
    if pruned.is_empty():
        return None
    columns: dict[str, pl.Series | list] = {"curve": pruned["curve"], "configuration": pruned["configuration"]}
    for column, (header, decimals) in _PRUNING.items():
        columns[header] = _mean_std(pruned.rename({column: f"{column}_mean"}), column, decimals)
    columns["n"] = pruned["seeds"].cast(pl.String)
    return pl.DataFrame(columns)


def _csv_frame(agg: pl.DataFrame) -> pl.DataFrame:
    """table.csv: the varying settings as row labels, then every number, then provenance."""
    numbers = [c for c in agg.columns if c.endswith(("_mean", "_std"))]
    return pl.concat([_labels(agg), agg.select("config", "n_seeds", *numbers, "trial_ids", "code_versions")],
                     how="horizontal")


def tables_markdown(agg: pl.DataFrame, sweep: str, per_seed: pl.DataFrame | None = None,
                    pruning: pl.DataFrame | None = None) -> str:
    """table.md: `agg` (`results.aggregate` of the implicit-sparsity trials), the paper beside it,
    and with `pruning` (`figures.pruning_table`) the pruning section, the only place explicit
    pipelines appear."""
    explicit = 0 if pruning is None else pruning.filter(pl.col("method") != figures.METHOD_NAMES["none"]).height
    parts = [
        f"# {sweep}: results by configuration",
        "",
        "Mean ± std over seeds (n: seeds). Dead filters in % of a layer's filters at the final epoch: "
        "C1..Cn and total (gamma) count |gamma| < 1e-3; total (act.) counts filters that never activate "
        "on the training set. Test errors in %. Trials of prune.method none only (implicit sparsity)"
        + (f"; the {explicit} explicit pruning configuration(s) (slimming, l1norm) are in the pruning section "
           "below only: their last epoch measures the cut, fine-tuned network, not a trained one."
           if explicit else "."),
        "",
        markdown_table(results_markdown(agg)) if agg.height else "No configuration of implicit sparsity.",
    ]
    parts += _paper_section(agg, per_seed)
    if pruning is not None:
        shown = pruning_markdown(pruning)
        if shown is not None:
            parts += [
                "",
                "## Implicit vs explicit pruning",
                "",
                "Each configuration's trained network pruned as its `prune.method` says: implicit removes the "
                "dead filters (|gamma| < 1e-3, their constant output folded into the next layer) without "
                "fine-tuning; slimming (Liu et al. 2017: trained with L1 on gamma, the smallest |gamma| over "
                "the network) and l1norm (Li et al. 2017: the smallest filters by L1 weight norm in each layer) "
                "remove a fraction of the filters and fine-tune where the curve says so. Shares of the trained "
                "network; test errors in %, the pruned one after any fine-tuning. pruning.csv has every "
                "number, pruning.html the curves; claim 10 compares them at matched test error.",
                "",
                markdown_table(shown),
            ]
    return "\n".join(parts) + "\n"


def _claims_method() -> list[str]:
    """claims.md's reading guide; every number is the one the code uses."""
    return [
        "How to read it:",
        "",
        "- A claim is tested by comparisons between configurations that differ only in the settings the claim "
        "varies. Each gives both sides (the total % of filters dead by gamma at the last epoch, claim 10 the % of "
        "FLOPs removed: mean ± std over seeds, n seeds), the effect (left minus right, in points) with its "
        f"{stats.CONFIDENCE:.0%} confidence interval (two-sided), and a status: **holds** when the whole "
        "interval clears the claim's threshold, **fails** when none of it does (the data contradict the claim "
        "beyond noise), **inconclusive** when it straddles the threshold or no interval can be formed.",
        "- Intervals: Welch's t interval over the seeds (scipy.stats.ttest_ind, equal_var=False) when both sides "
        "have two seeds or more; claim 8's paired change, a t interval of its mean over the seeds. A side with "
        f"one seed has no spread to estimate: the comparison shows its effect, no interval, and is **inconclusive "
        f"({stats.TOO_FEW_SEEDS})**, whatever the effect's size; it never holds or fails. Claim 9's simulation "
        "runs several noise seeds and is decided the same way, on the mean over them.",
        f"- Thresholds, from the paper's numbers: far more = more than {claims.FAR_MORE:g}x (claim 1); much "
        f"fewer = under {claims.MUCH_LESS:g}x (claim 4); slightly = by at most {claims.SLIGHTLY:.0%} (claims 5 "
        f"and 6); unchanged = within ±{claims.UNCHANGED:g} points (claim 8, an equivalence margin); claim 10 "
        f"compares % of FLOPs removed at matched test error (every explicit configuration of the same network, "
        f"data and training schedule whose mean error is within {claims.MATCHED_ERR:g} points of the implicit "
        f"one's, chosen by error alone, never by the FLOPs it removes), far more = over {claims.FAR_MORE:g}x, "
        f"about as much = at most {claims.COMPARABLE:g} points fewer; more, "
        "fewer, raises, lowers = the direction alone (threshold 0). Each *test* is a contrast that must be "
        "above 0 (far more: adam - 2 x sgd > 0); *tested* gives its value and interval, the effect itself when "
        "no side is scaled. \"Only slightly\" adds a second contrast, the bound on the change's size (after the "
        "semicolon): the comparison holds when both hold and fails when either fails.",
        "- Pairs in which neither side has a dead filter are left out (training too short to show a "
        "direction); their number is given.",
        f"- {claims.RULE}",
        "- Comparisons marked *(not counted)* are shown for context and do not enter the verdict (claims.csv "
        "still gives their status against the same test).",
        "- claims.csv: a row per claim and per comparison, every number above; its `interval` column says how "
        "an interval was made: " + "; ".join(f"`{k}`, {v}" for k, v in stats.INTERVAL_METHODS.items()) + ".",
        "",
    ]


def claims_markdown(verdicts: pl.DataFrame, sweep: str) -> str:
    """claims.md: every claim (what the paper states and where, how it is tested, its verdict and
    comparisons) of `claims.check_claims`."""
    lines = [f"# The paper's claims, checked on {sweep}", "", *_claims_method()]
    for row in verdicts.to_dicts():
        lines += [f"## {row['claim']}. {row['status']}: {row['text']}", "",
                  f"Paper: {row['source']}", "", f"Tested: {row['test']}", "",
                  f"Verdict: **{row['status']}**. {row['evidence']}."
                  + (f" Note: {row['note']}." if row["note"] else ""), ""]
        if row["comparisons"]:
            table = pl.DataFrame([{
                "comparison": c["comparison"], "left": c["left_text"], "right": c["right_text"],
                "effect": c["effect_text"], "test": "; ".join(filter(None, (c["test"], c["bound"]))),
                "tested": c["tested_text"],
                "status": (c["status"] + (f" ({c['why']})" if c["why"] else "")) if c["counted"] else "(not counted)",
            } for c in row["comparisons"]])
            lines += [markdown_table(table), ""]
    return "\n".join(lines).rstrip() + "\n"


# --- early stopping --------------------------------------------------------------------------------


def replay_early_stopping(tables: results.Results, spec: SweepSpec | None = None) -> early_stopping.ReplayResult:
    """What early stopping would have done to this sweep: with the `early_stopping:` settings of the
    sweep file `spec` and its search's objectives, else the scheduler's defaults (which judge the
    default objectives). ReportError when the sweep cannot be replayed."""
    settings = (spec.early_stopping if spec is not None else None) or early_stopping.EarlyStopping()
    search = spec.optuna.objectives if spec is not None and spec.optuna is not None else None
    try:
        objectives = [o.metric for o in settings.objectives_for(search)]
        epochs = tables.epochs.select("trial_id", "epoch", *objectives).collect()
        return early_stopping.replay(epochs, tables.trials, settings, search)
    except ValueError as e:
        raise ReportError(f"cannot replay early stopping on this sweep: {e}") from None


def early_stopping_markdown(tables: results.Results, spec: SweepSpec | None, sweep: str) -> str:
    """early_stopping.md: the replay's savings, the front points it would have lost, per rung the
    trials it would have stopped and how well the rung ranks the trials as they end; or why the
    sweep cannot be replayed."""
    lines = [f"# {sweep}: early stopping, replayed", ""]
    try:
        r = replay_early_stopping(tables, spec)
    except ReportError as e:
        return "\n".join([*lines, f"Not replayed: {e}", ""])
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
    return "\n".join(lines)


# --- figures and index -----------------------------------------------------------------------------


def _write_pages(pages: Mapping[str, go.Figure], folder: Path) -> None:
    # One plotly.js beside the pages (4.8 MB, not a copy in each), loaded by a relative path: the
    # folder opens with no network. Rewritten every time, so it is the plotly the pages were drawn by.
    (folder / PLOTLY_JS).write_text(plotly.offline.get_plotlyjs(), encoding="utf-8")
    for name, fig in pages.items():
        fig.write_html(folder / name, include_plotlyjs=PLOTLY_JS, full_html=True)


# What the simulation's result depends on, besides its iterations: its code, the optimizers' code
# (their default LRs live there) and torch.
_LOWGRAD_CODE = ("sparsity_core.lowgrad", "sparsity_core.optim")


def _cache_dir() -> Path:
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "filter-sparsity"


def lowgrad_data(iterations: int = 10_000, noise_seeds: int | None = None) -> pl.DataFrame:
    """The low-gradient simulation (`figures.lowgrad_frame`) over `noise_seeds` noise sequences (None:
    the simulation's own default, `sparsity_core.lowgrad.NOISE_SEEDS`), computed once per iterations
    count, number of seeds and version of its code and of torch, then read from a small cache file
    under `$XDG_CACHE_HOME/filter-sparsity/` (default `~/.cache`): its result never changes, and
    computing it costs seconds and importing torch (~650 MB). No writable cache: computed every time."""
    params = {"iterations": iterations, "noise_seeds": noise_seeds}
    key = hashlib.sha256(json.dumps({**params, "torch": metadata.version("torch")}).encode())
    for module in _LOWGRAD_CODE:
        key.update(Path(importlib.util.find_spec(module).origin).read_bytes())
    path = _cache_dir() / f"lowgrad-{key.hexdigest()[:16]}.parquet"
    try:
        cached = pl.read_parquet(path)
        if cached.schema == figures.LOWGRAD_SCHEMA:
            return cached
    except (OSError, pl.exceptions.PolarsError):
        pass  # not cached yet, or a damaged file: computed and written again below
    from sparsity_core.lowgrad import simulate_low_gradient  # torch, on a cache miss only

    frame = figures.lowgrad_frame(simulate_low_gradient(**{k: v for k, v in params.items() if v is not None}))
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.{os.getpid()}")  # renamed into place: readers see whole files
        frame.write_parquet(tmp)
        tmp.replace(path)
    except OSError:
        pass  # a read-only home: the next report computes it again, nothing else is lost
    return frame


def write_lowgrad(out: str | Path, iterations: int = 10_000) -> Path:
    """Write `<out>/lowgrad.html` (and the plotly.min.js it loads) from `lowgrad_data`."""
    folder = Path(out)
    folder.mkdir(parents=True, exist_ok=True)
    _write_pages({"lowgrad.html": plots.lowgrad_figure(figures.lowgrad_bands(lowgrad_data(iterations)))}, folder)
    return folder / "lowgrad.html"


def _index(sweep: str, trials: pl.DataFrame, agg: pl.DataFrame, pruning: pl.DataFrame, verdicts: pl.DataFrame) -> str:
    statuses = trials["status"].value_counts(sort=True).rows()
    explicit = pruning.filter(pl.col("method") != figures.METHOD_NAMES["none"]).height
    varying = ", ".join(results.varying_settings(agg)) or "nothing"
    links = [("table.md", "results by configuration (Markdown)"), ("table.csv", "the same, every number (CSV)"),
             ("claims.md", "the paper's claims checked"),
             ("early_stopping.md", "early stopping replayed: epochs it would save, front points it would lose"),
             ("pareto.html", "sparsity vs test error, Pareto front"), ("layers.html", "dead filters per layer"),
             ("trajectories.html", "dead filters and test error over the epochs"),
             ("gamma_beta.html", "BN gamma and beta over training (Fig. 1)"),
             ("universality.html", "feature universality per layer (Fig. 2)"),
             ("lowgrad.html", "low-gradient simulation (Fig. 3)"),
             ("pruning.html", "implicit vs explicit pruning: test error against FLOPs removed"),
             ("pruning.csv", "the same, every number (CSV)")]
    items = "\n".join(f'<li><a href="{f}">{f}</a>: {html.escape(text)}</li>' for f, text in links)
    verdicts = "\n".join(f"<li>{c}. <b>{html.escape(s)}</b>: {html.escape(t)}</li>"
                         for c, t, s in verdicts.select("claim", "text", "status").rows())
    return f"""<!DOCTYPE html>
<html><head><meta charset="utf-8"><title>{html.escape(sweep)} report</title></head>
<body style="font-family: sans-serif; max-width: 60em">
<h1>{html.escape(sweep)}</h1>
<p>{trials.height} trials ({html.escape(", ".join(f"{n} {s}" for s, n in statuses))});
{agg.height} configurations of implicit sparsity, averaged over seeds; varying: {html.escape(varying)}{
f"; {explicit} explicit pruning configurations (pruning.html, pruning.csv)" if explicit else ""}.</p>
<ul>
{items}
</ul>
<h2>Claims</h2>
<ul>
{verdicts}
</ul>
</body></html>
"""


# --- the sweep's results ---------------------------------------------------------------------------

_READ_ERRORS = (pl.exceptions.PolarsError, pa.ArrowException, OSError)


def _open(source: str | Path) -> ResultStore:
    """The sweep's store, checked to hold trials; ReportError (what is wrong, and the fix) if not."""
    try:
        store = results.open_sweep(source)
        info = store.fs.get_file_info(store.path)
        has_trials = info.type == pafs.FileType.Directory and bool(results.table_files(store, "trials"))
    except _READ_ERRORS as e:
        raise ReportError(f"{source}: cannot open it ({type(e).__name__}: {e}); pass a results folder "
                          "(results/<sweep>) or a URI the sweep wrote to "
                          "(s3://bucket/prefix/<sweep>?endpoint_override=host:port&scheme=http)") from None
    if info.type != pafs.FileType.Directory:
        raise ReportError(f"{source}: no such results folder; pass RESULTS/<sweep>, the folder "
                          "orchestrator/run.py wrote (e.g. results/quick), or its URI (s3://...)")
    if not has_trials:
        raise ReportError(f"{source}: no trials (no trials/*.parquet there); run the sweep first "
                          "(python orchestrator/run.py sweeps/<sweep>.yaml) or pass its results folder")
    return store


def _default_out(store: ResultStore) -> Path:
    """Where a report goes without --out: `<sweep folder>/report`, or for results elsewhere (S3)
    the local folder `report/<sweep>`."""
    return Path(store.path) / "report" if store.is_local else Path("report") / store.sweep


def _read(store: ResultStore, compute: Callable[[results.Results], T]) -> T:
    """`compute` over the sweep's tables (read lazily, so reading happens inside it); ReportError when
    they cannot be read. A sweep still running rewrites its trials' epochs files, and on S3 a file
    replaced while it is read in ranged requests can mix two versions: a failed read is tried once
    more before it counts."""
    for _ in range(2):
        try:
            return compute(results.load_results(store))
        except _READ_ERRORS as e:
            error = e
    raise ReportError(f"{store.uri}: cannot read its Parquet tables ({type(error).__name__}: {error}); if the "
                      "sweep is still running, run the report again; otherwise re-run the sweep's failed "
                      "trials or remove the damaged files") from None


def _contents(
    store: ResultStore,
    tables: results.Results,
    layers: Sequence[str] | None,
    lowgrad_iterations: int,
    spec: SweepSpec | None,
) -> tuple[dict[str, str | pl.DataFrame], dict[str, go.Figure]]:
    """Every report file's content (`build_report`): the text and CSV files, and the figures."""
    if results.labelled_trials(tables.trials).is_empty():
        counts = ", ".join(f"{n} {s}" for s, n in tables.trials["status"].value_counts().rows())
        raise ReportError(f"{store.uri}: no trial finished ok ({counts}); see the `error` column of "
                          "trials/*.parquet, fix the cause and run the sweep again")
    implicit = results.implicit_trials(tables.trials)
    per_seed = results.per_trial(tables.trials, tables.layers)
    # implicit sparsity's trials labelled by the settings that vary among them, as the figures label
    # them (labels over every trial would name the explicit pipelines' settings too)
    implicit_seeds = results.labelled_trials(results.implicit_trials(per_seed))
    agg = results.aggregate(implicit_seeds)
    # the network's conv layers, from the final per-layer counts already read (every finished
    # trial snapshots its filters at its last epoch, so the filters table has the same ones)
    known = results.layer_columns(c.removesuffix("_mean") for c in agg.columns)
    unknown = [layer for layer in layers or () if layer not in known]
    if unknown:
        raise ReportError(f"--layers {','.join(unknown)}: not a conv layer of the sweep; "
                          f"valid: {', '.join(known) or 'none (no per-layer counts)'}")
    chosen = list(layers) if layers else figures.default_layers(known)
    lowgrad = lowgrad_data(lowgrad_iterations)
    verdicts = claims.check_claims(per_seed, lowgrad)
    pruning = figures.pruning_table(tables.trials)
    files: dict[str, str | pl.DataFrame] = {
        "table.md": tables_markdown(agg, store.sweep, implicit_seeds, pruning),
        "table.csv": _csv_frame(agg),
        "pruning.csv": pruning,
        "claims.md": claims_markdown(verdicts, store.sweep),
        "claims.csv": claims.claims_table(verdicts),
        "early_stopping.md": early_stopping_markdown(tables, spec, store.sweep),
        "index.html": _index(store.sweep, tables.trials, agg, pruning, verdicts),
    }
    pages = {
        "pareto.html": plots.pareto_figure(results.pareto_points(agg), figures.seed_points(implicit),
                                           results.stopped_points(implicit)),
        "layers.html": plots.layers_figure(figures.layer_profile(agg)),
        "trajectories.html": plots.trajectories_figure(figures.trajectories(tables.epochs, implicit)),
        "gamma_beta.html": plots.gamma_beta_figure(figures.gamma_beta_quantiles(tables.filters, implicit, chosen)),
        "universality.html": plots.universality_figure(figures.universality_histogram(tables.filters, implicit)),
        "lowgrad.html": plots.lowgrad_figure(figures.lowgrad_bands(lowgrad)),
        "pruning.html": plots.pruning_figure(pruning),
    }
    return files, pages


def build_report(
    sweep_dir: str | Path,
    out: str | Path | None = None,
    *,
    layers: Sequence[str] | None = None,
    lowgrad_iterations: int = 10_000,
    spec: SweepSpec | None = None,
) -> Path:
    """Write every report file for the sweep at `sweep_dir` (a folder or a URI; see
    `results.open_sweep`) into the local folder `out` (default: `_default_out`). Every file's
    content is computed before the first file is written, so bad input leaves nothing behind.
    table.md/.csv and the figures but pruning.html show implicit sparsity (prune.method none); the
    explicit pipelines appear in pruning.csv/.html, table.md's pruning section and claim 10.
    `spec`: the sweep file, whose early-stopping settings the replay uses (default: the scheduler's)."""
    if out is not None and "://" in str(out):
        raise ReportError(f"--out {out}: the report is written to a local folder; pass a path (e.g. report/)")
    store = _open(sweep_dir)
    files, pages = _read(store, lambda tables: _contents(store, tables, layers, lowgrad_iterations, spec))

    target = Path(out) if out is not None else _default_out(store)
    target.mkdir(parents=True, exist_ok=True)
    for name, content in files.items():
        if isinstance(content, pl.DataFrame):
            content.write_csv(target / name)
        else:
            (target / name).write_text(content)
    _write_pages(pages, target)
    return target


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="orchestrator/report.py", description=__doc__.splitlines()[0])
    p.add_argument("sweep_dir", nargs="?",
                   help="a sweep's results: a folder (results/quick) or a URI "
                        "(s3://bucket/prefix/quick?endpoint_override=host:9000&scheme=http)")
    p.add_argument("--out", default=None,
                   help="local report folder (default: SWEEP_DIR/report; for a URI, report/<sweep>)")
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
            store = _open(args.sweep_dir)
            print(_read(store, lambda tables: replay_early_stopping(tables, spec)).to_json())
            return 0
        target = build_report(args.sweep_dir, args.out, layers=layers, lowgrad_iterations=args.lowgrad_iterations,
                              spec=spec)
    except ReportError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(f"wrote {target}/: index.html, table.md, table.csv, claims.md, claims.csv, early_stopping.md, "
          f"pruning.csv, {', '.join(FIGURES)}, {PLOTLY_JS}")
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

"""A sweep's Parquet tables -> the report's data: configurations averaged over seeds, the paper's
values beside them, the paper's claims checked, and the data behind each figure.

Everything here takes and returns polars DataFrames (no drawing); only `load_results` and
`load_reference` read files. Percentages are in percent (0-100), as in the paper's tables.
A *configuration* is every trial setting except the seed; its `config` label names the settings that
vary across the sweep (`optimizer=adam reg=l2 strength=0.001`).
"""

from __future__ import annotations

import itertools
import math
import re
from collections import defaultdict
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any, Literal

import polars as pl

from sparsity_core.config import OPTIMIZER_NAMES, TrialConfig, alias_paths
from sparsity_core.lowgrad import Trajectory

from .search import pareto_front
from .store import TABLES

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
    "PaperTable",
    "PAPER_TABLES",
    "load_reference",
    "compare_with_paper",
    "Status",
    "Claim",
    "CLAIMS",
    "check_claims",
    "claim9_low_gradient",
    "pareto_points",
    "PARETO_OBJECTIVES",
    "layer_profile",
    "default_layers",
    "gamma_beta_quantiles",
    "universality_histogram",
    "QUANTILES",
    "lowgrad_frame",
    "SETTLED",
    "lowgrad_decay",
]

# The study's main axes lead, as in the paper's tables; then every other setting but the seed.
_LEAD = ("optimizer", "reg", "strength")
CONFIG_COLUMNS: list[str] = [*_LEAD, *(a for a in alias_paths() if a not in (*_LEAD, "seed"))]
# Per-trial results averaged over seeds (besides the per-layer C1..Cn columns).
METRICS = ("train_loss", "test_loss", "test_err", "dead_gamma_pct", "dead_act_pct",
           "conv_params_pruned_pct", "pruned_test_err", "flops_pruned_pct", "pruned_speedup",
           "l1norm_pruned_test_err", "slim_pruned_test_err")
ADAPTIVE = tuple(name for name in OPTIMIZER_NAMES if name != "sgd")
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


# --- the paper's tables ----------------------------------------------------------------------------


@dataclass(frozen=True)
class PaperTable:
    """One of the supplement's tables as shipped in `orchestrator/reference/`."""

    file: str
    source: str
    # settings every row of the table shares without a column for them (from the table's caption)
    fixed: dict[str, Any] = field(default_factory=dict)


PAPER_TABLES: tuple[PaperTable, ...] = (
    PaperTable("supp_table1_cifar10.csv", "supp. Table 1", {"dataset": "cifar10"}),
    PaperTable("supp_table2_cifar100.csv", "supp. Table 2", {"dataset": "cifar100"}),
    PaperTable("supp_table3_cifar100_adam_l2_1e-4.csv", "supp. Table 3",
               {"dataset": "cifar100", "optimizer": "adam", "reg": "l2", "strength": 1e-4}),
    PaperTable("supp_table4_l2.csv", "supp. Table 4"),
)
# The settings a paper row is matched on. The supplement's tables are all BasicNet with ReLU, BN
# gamma init 1, beta init 0 and unscaled BN learning rates unless a column says otherwise.
_PAPER_DEFAULTS: dict[str, Any] = {
    "model": "basicnet", "activation": "relu", "negative_slope": None, "gamma_init": 1.0,
    "beta_init": 0.0, "gamma_lr_scale": 1.0, "beta_lr_scale": 1.0,
}
MATCH_KEYS = ("optimizer", "reg", "strength", *_PAPER_DEFAULTS)
_FLOAT_KEYS = ("strength", "negative_slope", "gamma_init", "beta_init", "gamma_lr_scale", "beta_lr_scale")
_PAPER_RENAME = {"total": "dead_gamma_pct", "sparsity_by_gamma": "dead_gamma_pct", "sparsity_by_act": "dead_act_pct"}
PAPER_METRICS = (*METRICS[:3], *(f"C{i}" for i in range(1, 8)), *METRICS[3:])


def load_reference() -> pl.DataFrame:
    """All of the supplement's tables in one frame: `source`, `dataset`, MATCH_KEYS and PAPER_METRICS
    (null where a table lacks the column), in PAPER_TABLES order."""
    frames = []
    folder = resources.files("orchestrator") / "reference"
    for table in PAPER_TABLES:
        df = pl.read_csv(folder.joinpath(table.file).read_bytes()).rename(_PAPER_RENAME, strict=False)
        source = pl.lit(table.source)
        if "variant" in df.columns:
            source = pl.format("{} ({})", source, pl.col("variant"))
        columns = {**_PAPER_DEFAULTS, **table.fixed}
        df = df.with_columns(
            source.alias("source"),
            *(pl.lit(v).alias(k) for k, v in columns.items() if k not in df.columns),
        )
        frames.append(df.select(
            pl.col("source").cast(pl.String),
            pl.col("dataset").cast(pl.String),
            *(pl.col(k).cast(pl.Float64 if k in _FLOAT_KEYS else pl.String) for k in MATCH_KEYS),
            *(pl.col(m).cast(pl.Float64) if m in df.columns else pl.lit(None, pl.Float64).alias(m)
              for m in PAPER_METRICS),
        ))
    return pl.concat(frames)


def _same(ours: Any, paper: Any) -> bool:
    """A paper key matches when it is not given (null) or equal; floats to 6 significant digits."""
    if paper is None:
        return True
    if isinstance(paper, float):
        return ours is not None and math.isclose(float(ours), paper, rel_tol=1e-6, abs_tol=1e-12)
    return ours == paper


def _paper_row(config: dict[str, Any], reference: list[dict[str, Any]], datasets: set[str]) -> dict[str, Any] | None:
    """The first reference row matching the configuration. Its dataset must match too when the
    configuration's dataset is one the paper reports; otherwise (digits, synthetic) any dataset
    does, so the earliest table (CIFAR-10) stands beside it, named in `paper_source`."""
    for row in reference:
        if config["dataset"] in datasets and row["dataset"] != config["dataset"]:
            continue
        if all(_same(config[k], row[k]) for k in MATCH_KEYS):
            return row
    return None


def compare_with_paper(agg: pl.DataFrame, reference: pl.DataFrame) -> pl.DataFrame:
    """`agg` with `paper_source`, `paper_<m>` and `diff_<m>` (ours minus the paper's) for each metric
    the matched paper rows report. Unchanged when no configuration matches a paper row."""
    ref_rows = reference.to_dicts()
    datasets = set(reference["dataset"].drop_nulls())
    matches = [_paper_row(config, ref_rows, datasets) for config in agg.select(CONFIG_COLUMNS).to_dicts()]
    if not any(matches):
        return agg
    metrics = [m for m in PAPER_METRICS if f"{m}_mean" in agg.columns
               and any(r is not None and r[m] is not None for r in matches)]
    paper = pl.DataFrame(
        {"paper_source": [f"{r['source']} {r['dataset']}" if r else None for r in matches],
         **{f"paper_{m}": [r[m] if r else None for r in matches] for m in metrics}},
        schema={"paper_source": pl.String, **{f"paper_{m}": pl.Float64 for m in metrics}},
    )
    return pl.concat([agg, paper], how="horizontal").with_columns(
        (pl.col(f"{m}_mean") - pl.col(f"paper_{m}")).alias(f"diff_{m}") for m in metrics
    )


# --- the paper's claims ----------------------------------------------------------------------------

Status = Literal["holds", "fails", "not testable"]
Check = Callable[[pl.DataFrame], tuple[Status, str]]
_SPARSITY = "dead_gamma_pct_mean"


@dataclass(frozen=True)
class Claim:
    number: int
    text: str
    check: Check


def _hashable(value: Any) -> Any:
    return tuple(value) if isinstance(value, list) else value


def _pairs(agg: pl.DataFrame, free: Sequence[str], left: pl.Expr, right: pl.Expr) -> list[tuple[dict, dict]]:
    """(a, b) for configurations a in `left`, b in `right` that agree on every setting but `free`."""
    fixed = [c for c in CONFIG_COLUMNS if c not in free]
    by_key: dict[tuple, list[dict]] = defaultdict(list)
    for b in agg.filter(right).to_dicts():
        by_key[tuple(_hashable(b[c]) for c in fixed)].append(b)
    return [(a, b) for a in agg.filter(left).to_dicts()
            for b in by_key[tuple(_hashable(a[c]) for c in fixed)]]


def _series(agg: pl.DataFrame, axis: str, where: pl.Expr) -> list[list[dict]]:
    """Groups of configurations that differ only in `axis` (two values at least), sorted along it."""
    by_key: dict[tuple, list[dict]] = defaultdict(list)
    fixed = [c for c in CONFIG_COLUMNS if c != axis]
    for row in agg.filter(where).to_dicts():
        by_key[tuple(_hashable(row[c]) for c in fixed)].append(row)
    return [sorted(rows, key=lambda r: r[axis]) for rows in by_key.values() if len(rows) > 1]


def _pct(row: dict) -> str:
    return f"{row[_SPARSITY]:.1f}%"


def _verdict(results: list[tuple[bool, str]], untestable: str, skipped: int = 0) -> tuple[Status, str]:
    """holds when every comparison does; the evidence lists each comparison. `skipped`
    comparisons had no dead filters on either side: they cannot show a direction."""
    note = f" ({skipped} left out: no dead filters on either side)" if skipped else ""
    if not results:
        return "not testable", (f"no comparison with dead filters on either side{note}; train longer or "
                                "regularize more" if skipped else untestable)
    failing = [text for ok, text in results if not ok]
    status: Status = "fails" if failing else "holds"
    head = f"{len(results) - len(failing)} of {len(results)} comparisons agree{note}"
    return status, f"{head}: " + "; ".join(text for _, text in results)


def _compare_pairs(
    pairs: list[tuple[dict, dict]], agree: Callable[[float, float], bool], untestable: str
) -> tuple[Status, str]:
    measured = [(a, b) for a, b in pairs if a[_SPARSITY] is not None and b[_SPARSITY] is not None]
    informative = [(a, b) for a, b in measured if a[_SPARSITY] > 0 or b[_SPARSITY] > 0]
    results = [(agree(a[_SPARSITY], b[_SPARSITY]), f"[{a['config']}] {_pct(a)} vs [{b['config']}] {_pct(b)}")
               for a, b in informative]
    return _verdict(results, untestable, len(measured) - len(informative))


def claim1_adaptive_vs_sgd(agg: pl.DataFrame) -> tuple[Status, str]:
    """Adaptive optimizer + L2 has more dead filters than SGD + L2 with everything else equal."""
    l2 = pl.col("reg") == "l2"
    pairs = _pairs(agg, ["optimizer"], l2 & pl.col("optimizer").is_in(ADAPTIVE), l2 & (pl.col("optimizer") == "sgd"))
    return _compare_pairs(pairs, lambda a, s: a > s,
                          "needs an adaptive optimizer and SGD, both with L2, otherwise equal")


def claim2_adam_l2_vs_wd(agg: pl.DataFrame) -> tuple[Status, str]:
    """Adam: L2 sparser than decoupled WD whose strength is within a factor 2 (the paper pairs
    L2 1e-4 with WD 1e-4 and 2e-4)."""
    adam = pl.col("optimizer") == "adam"
    pairs = [(a, b) for a, b in _pairs(agg, ["reg", "strength"], adam & (pl.col("reg") == "l2"),
                                       adam & (pl.col("reg") == "wd"))
             if a["strength"] > 0 and 0.5 <= b["strength"] / a["strength"] <= 2.0]
    return _compare_pairs(pairs, lambda l2, wd: l2 > wd,
                          "needs Adam with L2 and with WD of similar strength (within 2x), otherwise equal")


def _trend(agg: pl.DataFrame, axis: str, where: pl.Expr, rising: bool, untestable: str) -> tuple[Status, str]:
    """Sparsity never moves against the direction along `axis` and ends strictly past where it began."""
    results, skipped = [], 0
    for rows in _series(agg, axis, where):
        values = [r[_SPARSITY] for r in rows]
        if any(v is None for v in values):
            continue
        if not any(values):
            skipped += 1
            continue
        sign = 1.0 if rising else -1.0
        ok = all(sign * (b - a) >= 0 for a, b in itertools.pairwise(values)) and sign * (values[-1] - values[0]) > 0
        context = " ".join(p for p in rows[0]["config"].split() if not p.startswith(f"{axis}="))
        steps = ", ".join(f"{format_setting(r[axis])}: {_pct(r)}" for r in rows)
        results.append((ok, f"[{context or 'all'}] {axis} {steps}"))
    return _verdict(results, untestable, skipped)


def claim3_strength(agg: pl.DataFrame) -> tuple[Status, str]:
    """Stronger regularization -> more dead filters, for every optimizer and regularizer."""
    return _trend(agg, "strength", pl.col("reg") != "none", rising=True,
                  untestable="needs two or more strengths of a regularizer, otherwise equal")


def claim4_amsgrad_vs_adam(agg: pl.DataFrame) -> tuple[Status, str]:
    """AMSGrad is much less sparse than Adam at L2 1e-4 (the paper: 13% vs 47%, CIFAR-100);
    'much' read as at most half of Adam's dead filters."""
    at = (pl.col("reg") == "l2") & ((pl.col("strength") - 1e-4).abs() < 1e-10)
    pairs = _pairs(agg, ["optimizer"], at & (pl.col("optimizer") == "amsgrad"), at & (pl.col("optimizer") == "adam"))
    return _compare_pairs(pairs, lambda ams, adam: adam > 0 and ams <= adam / 2,
                          "needs AMSGrad and Adam with L2 1e-4, otherwise equal")


def claim5_leaky_relu(agg: pl.DataFrame) -> tuple[Status, str]:
    """Leaky ReLU only slightly lowers sparsity (47% -> 41-43%): read as lower or equal, by at most
    a quarter of ReLU's dead filters."""
    pairs = _pairs(agg, ["activation", "negative_slope"],
                   pl.col("activation") == "leaky_relu", pl.col("activation") == "relu")
    return _compare_pairs(pairs, lambda leaky, relu: leaky <= relu and relu - leaky <= 0.25 * relu,
                          "needs leaky_relu and relu runs, otherwise equal")


def claim6_bn_knobs(agg: pl.DataFrame) -> tuple[Status, str]:
    """Higher beta init raises sparsity; a lower LR scale on gamma lowers it; a lower LR scale on
    beta raises it (the paper: 46% -> 53%, 33%, 51%)."""
    parts = [
        ("beta_init", True),  # (axis, sparsity rises with the axis)
        ("gamma_lr_scale", True),
        ("beta_lr_scale", False),
    ]
    results = [_trend(agg, axis, pl.lit(True), rising, "") for axis, rising in parts]
    testable = [(axis, r) for (axis, _), r in zip(parts, results) if r[0] != "not testable"]
    if not testable:
        return "not testable", "needs runs that differ only in beta_init, gamma_lr_scale or beta_lr_scale"
    status: Status = "fails" if any(r[0] == "fails" for _, r in testable) else "holds"
    return status, " | ".join(f"{axis}: {r[0]} ({r[1]})" for axis, r in testable)


def claim7_batch_size(agg: pl.DataFrame) -> tuple[Status, str]:
    """Larger mini-batches -> fewer dead filters."""
    return _trend(agg, "batch_size", pl.lit(True), rising=False,
                  untestable="needs two or more batch sizes, otherwise equal")


def claim8_pruning(agg: pl.DataFrame) -> tuple[Status, str]:
    """Removing the dead filters leaves test error within 0.5 points."""
    results = [
        (abs(r["pruned_test_err_mean"] - r["test_err_mean"]) <= 0.5,
         f"[{r['config']}] error {r['test_err_mean']:.2f} -> {r['pruned_test_err_mean']:.2f} pruned"
         + (f", {r['conv_params_pruned_pct_mean']:.0f}% of conv params removed"
            if r["conv_params_pruned_pct_mean"] is not None else ""))
        for r in agg.to_dicts()
        if r["pruned_test_err_mean"] is not None and r["test_err_mean"] is not None
    ]
    return _verdict(results, "no pruning measured (pruned_test_err is null)")


CLAIMS: tuple[Claim, ...] = (
    Claim(1, "Adaptive optimizers with L2 give more dead filters than SGD with L2 at the same strength.",
          claim1_adaptive_vs_sgd),
    Claim(2, "For Adam, L2 gives more sparsity than decoupled weight decay of similar strength.",
          claim2_adam_l2_vs_wd),
    Claim(3, "Stronger regularization gives more sparsity.", claim3_strength),
    Claim(4, "AMSGrad is much less sparse than Adam at L2 1e-4.", claim4_amsgrad_vs_adam),
    Claim(5, "Leaky ReLU only slightly lowers sparsity.", claim5_leaky_relu),
    Claim(6, "beta init 1.0 raises sparsity; LR scale 0.1 on gamma lowers it; on beta raises it slightly.",
          claim6_bn_knobs),
    Claim(7, "Larger mini-batches give less sparsity.", claim7_batch_size),
    Claim(8, "Removing the dead filters leaves test error unchanged (within 0.5 points).", claim8_pruning),
)
CLAIM9_TEXT = ("In the low-gradient regime an L2-regularized scalar decays to ~0 far faster under adaptive "
               "optimizers than under SGD (supplement Fig. 3).")


def check_claims(agg: pl.DataFrame, lowgrad: pl.DataFrame | None = None) -> pl.DataFrame:
    """One row per claim: `claim`, `text`, `status`, `evidence`. Claim 9 is checked on the
    low-gradient simulation (`lowgrad_frame`) when given."""
    rows = []
    for c in CLAIMS:
        status, evidence = c.check(agg)
        rows.append({"claim": c.number, "text": c.text, "status": status, "evidence": evidence})
    status, evidence = (claim9_low_gradient(lowgrad) if lowgrad is not None
                        else ("not testable", "the low-gradient simulation was not run"))
    rows.append({"claim": 9, "text": CLAIM9_TEXT, "status": status, "evidence": evidence})
    return pl.DataFrame(rows, schema={"claim": pl.Int64, "text": pl.String, "status": pl.String, "evidence": pl.String})


# --- figure data -----------------------------------------------------------------------------------

PARETO_OBJECTIVES = (("dead_gamma_pct_mean", "max"), ("test_err_mean", "min"))


def pareto_points(agg: pl.DataFrame) -> pl.DataFrame:
    """`agg` with `on_front`: not dominated in (most dead filters, least test error)."""
    return agg.with_columns(pareto_front(agg, PARETO_OBJECTIVES).alias("on_front"))


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


SETTLED = 0.05  # |scalar| below this, from its start value 1, counts as "driven to ~0"


def lowgrad_decay(lowgrad: pl.DataFrame, threshold: float = SETTLED) -> pl.DataFrame:
    """Per optimizer and strength, `iters_to_zero`: the first recorded iteration from which
    |value| stays below `threshold` to the end (null if it never settles there)."""
    settled = (pl.col("value").abs() < threshold).cast(pl.Int8).reverse().cum_min().reverse() == 1
    return lowgrad.sort("iteration").group_by("optimizer", "strength", maintain_order=True).agg(
        pl.col("iteration").filter(settled.over("optimizer", "strength")).min().alias("iters_to_zero"),
        pl.col("iteration").max().alias("iterations"),
    )


def _iterations(n: int | None) -> str:
    return "never" if n is None else str(n)


def claim9_low_gradient(lowgrad: pl.DataFrame, factor: float = 2.0) -> tuple[Status, str]:
    """Each adaptive optimizer settles at ~0 at least `factor` times sooner than SGD (or settles
    where SGD never does), at every simulated strength where any optimizer settles."""
    decay = lowgrad_decay(lowgrad)
    sgd = {r["strength"]: r["iters_to_zero"] for r in decay.filter(pl.col("optimizer") == "sgd").to_dicts()}
    settles = set(decay.filter(pl.col("iters_to_zero").is_not_null())["strength"])
    results = []
    for r in decay.filter(pl.col("optimizer").is_in(ADAPTIVE) & pl.col("strength").is_in(sorted(settles))).to_dicts():
        if r["strength"] not in sgd:
            continue
        ours, ref = r["iters_to_zero"], sgd[r["strength"]]
        faster = ours is not None and (ref is None or ours * factor <= ref)
        results.append((faster, f"{r['optimizer']} L2 {r['strength']:g}: {_iterations(ours)} vs {_iterations(ref)}"))
    status, evidence = _verdict(results, f"no optimizer brought the scalar below {SETTLED:g} for good: "
                                         "simulate more iterations")
    if status == "not testable":
        return status, evidence
    return status, (f"iterations until |scalar| stays below {SETTLED:g}, adaptive vs SGD (far faster: {factor:g}x "
                    f"sooner, or SGD never): {evidence}")

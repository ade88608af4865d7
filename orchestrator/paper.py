"""The supplement's tables (shipped in `orchestrator/reference/`) and our configurations beside them.

Numbers are set side by side only for a configuration trained in the supplement's own setup
(`SETUP`, the dataset and the table's settings): `compare_with_paper`. Across setups (digits, a
narrower net, another schedule) only directions are set beside each other: `paper_effects` gives,
for each pair of our configurations that differ in one setting a supplement table varies, the effect
here (with its interval) and the effect in the paper.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from importlib import resources
from typing import Any

import polars as pl

from sparsity_core.config import PAPER_LRS, REMEDY_SETTINGS

from .claims import configurations, pairs
from .results import CONFIG_COLUMNS, METRICS, format_setting, implicit_trials
from .stats import TOO_FEW_SEEDS, Sample, difference, direction, too_few

__all__ = ["PaperTable", "PAPER_TABLES", "SETUP", "MATCH_KEYS", "PAPER_METRICS", "EFFECT_METRICS", "load_reference",
           "same_setup", "setup_mismatch", "compare_with_paper", "paper_effects"]


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
# The supplement's training setup, shared by every row (shared/paper/README.md, "Training setup"):
# setting -> the values that reproduce it. Native 32x32 CIFAR images, flips, batch 40, 325 epochs
# with LR / 10 at 250, each optimizer's base LR (`lr` None takes it), no remedy (one that only sets
# settings trained what its row's settings say), no explicit pruning, fp32.
SETUP: dict[str, tuple[Any, ...]] = {
    "model": ("basicnet",), "width": (1.0,), "image_size": (None, 32), "augment": (True,), "batch_size": (40,),
    "reference_batch_size": (None, 40), "epochs": (325,), "lr_steps": ([250],), "lr_decay": (0.1,),
    "remedy": ("none", *REMEDY_SETTINGS), "method": ("none",), "precision": ("fp32",),
}
# The settings a paper row is matched on besides SETUP. The supplement's tables are all BasicNet with
# ReLU, BN gamma init 1, beta init 0 and unscaled BN learning rates unless a column says otherwise.
_PAPER_DEFAULTS: dict[str, Any] = {
    "activation": "relu", "negative_slope": None, "gamma_init": 1.0,
    "beta_init": 0.0, "gamma_lr_scale": 1.0, "beta_lr_scale": 1.0,
}
MATCH_KEYS = ("optimizer", "reg", "strength", *_PAPER_DEFAULTS)
# What a table varies, one setting (or a setting and its companion) at a time: the pairs set beside the paper.
_VARIED = (("optimizer",), ("reg",), ("strength",), ("activation", "negative_slope"), ("gamma_init",),
           ("beta_init",), ("gamma_lr_scale",), ("beta_lr_scale",))
_FLOAT_KEYS = ("strength", "negative_slope", "gamma_init", "beta_init", "gamma_lr_scale", "beta_lr_scale")
_PAPER_RENAME = {"total": "dead_gamma_pct", "sparsity_by_gamma": "dead_gamma_pct", "sparsity_by_act": "dead_act_pct"}
PAPER_METRICS = (*METRICS[:3], *(f"C{i}" for i in range(1, 8)), *METRICS[3:])
EFFECT_METRICS = ("dead_gamma_pct", "test_err")  # the effects set beside the paper's


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


def _setup_misses(config: dict[str, Any], datasets: set[str]) -> dict[str, Any]:
    """The settings of `config` outside the supplement's setup, with their value."""
    misses = {k: config[k] for k, accepted in SETUP.items() if config[k] not in accepted}
    if config["dataset"] not in datasets:
        misses["dataset"] = config["dataset"]
    if config["lr"] is not None and not _same(config["lr"], PAPER_LRS[config["optimizer"]]):
        misses["lr"] = config["lr"]
    return misses


def same_setup(config: dict[str, Any], reference: pl.DataFrame) -> bool:
    """Whether `config` (settings by alias) was trained in the supplement's setup, on one of its datasets."""
    return not _setup_misses(config, set(reference["dataset"].drop_nulls()))


def setup_mismatch(agg: pl.DataFrame, reference: pl.DataFrame) -> list[str]:
    """For the configurations outside the supplement's setup: each setting that puts them there,
    `setting=ours (paper: theirs)`, in CONFIG_COLUMNS order."""
    datasets = set(reference["dataset"].drop_nulls())
    seen: dict[str, set[str]] = {}
    for config in agg.select(CONFIG_COLUMNS).to_dicts():
        for k, v in _setup_misses(config, datasets).items():
            seen.setdefault(k, set()).add(format_setting(tuple(v) if isinstance(v, list) else v))
    paper = {**{k: [format_setting(v) for v in accepted] for k, accepted in SETUP.items()},
             "dataset": sorted(datasets), "lr": ["each optimizer's base LR"]}
    return [f"{k}={', '.join(sorted(seen[k]))} (paper: {' or '.join(str(v) for v in paper[k] if v != 'None')})"
            for k in CONFIG_COLUMNS if k in seen]


def _matches(config: dict[str, Any], reference: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [row for row in reference if row["dataset"] == config["dataset"]
            and all(_same(config[k], row[k]) for k in MATCH_KEYS)]


def compare_with_paper(agg: pl.DataFrame, reference: pl.DataFrame) -> pl.DataFrame:
    """One row per configuration of `agg` trained in the supplement's setup and per supplement row
    of that configuration (a configuration in two tables appears twice): `agg`'s columns, then
    `paper_source`, `paper_<m>` and `diff_<m>` (ours minus the paper's) for each metric the matched
    rows report. Empty (with `agg`'s columns) when none matches."""
    ref_rows = reference.to_dicts()
    configs = agg.select(CONFIG_COLUMNS).to_dicts()
    hits = [(i, row) for i, config in enumerate(configs) if same_setup(config, reference)
            for row in _matches(config, ref_rows)]
    if not hits:
        return agg.clear()
    metrics = [m for m in PAPER_METRICS if f"{m}_mean" in agg.columns and any(r[m] is not None for _, r in hits)]
    paper = pl.DataFrame(
        {"paper_source": [f"{r['source']} {r['dataset']}" for _, r in hits],
         **{f"paper_{m}": [r[m] for _, r in hits] for m in metrics}},
        schema={"paper_source": pl.String, **{f"paper_{m}": pl.Float64 for m in metrics}},
    )
    ours = agg[[i for i, _ in hits]]
    return pl.concat([ours, paper], how="horizontal").with_columns(
        (pl.col(f"{m}_mean") - pl.col(f"paper_{m}")).alias(f"diff_{m}") for m in metrics
    )


_AGREEMENT = {1: "same", -1: "opposite", 0: "undecided", None: "undecided"}


def _paper_pairs(a: dict, b: dict, reference: list[dict[str, Any]]) -> list[tuple[dict, dict]]:
    """(row of a, row of b) from one supplement table and dataset, for each table that has both."""
    out = []
    for ra in reference:
        if not all(_same(a[k], ra[k]) for k in MATCH_KEYS):
            continue
        out += [(ra, rb) for rb in reference if rb["source"] == ra["source"] and rb["dataset"] == ra["dataset"]
                and rb is not ra and all(_same(b[k], rb[k]) for k in MATCH_KEYS)]
    return out


def paper_effects(trials: pl.DataFrame, reference: pl.DataFrame,
                  metrics: Sequence[str] = EFFECT_METRICS) -> pl.DataFrame:
    """For each pair of our configurations that differ in one setting a supplement table varies
    (all else equal), and each table and dataset that has both of its settings: per metric, the
    effect here (left minus right, per-seed values of `results.per_trial` `trials`, with interval),
    the paper's effect (from its table's averages), and whether their directions agree (`same`,
    `opposite`, `undecided` when our interval straddles 0, `undecided (needs 2+ seeds per side)`
    without an interval, `paper: no change`). Directions only: the effects' sizes are not comparable
    across setups."""
    configs = configurations(implicit_trials(trials), metrics)
    ref_rows = reference.to_dicts()
    order = {row["config"]: i for i, row in enumerate(configs.to_dicts())}
    rows = []
    for free in _VARIED:
        for a, b in pairs(configs, free, pl.lit(True), pl.lit(True)):
            if order[a["config"]] >= order[b["config"]]:
                continue  # each unordered pair once, in the table's order
            for ra, rb in _paper_pairs(a, b, ref_rows):
                for m in metrics:
                    if ra[m] is None or rb[m] is None:
                        continue
                    left, right = Sample.of(a[m] or []), Sample.of(b[m] or [])
                    ours = difference(left, right) if left.n and right.n else None
                    theirs = ra[m] - rb[m]
                    sign = None if ours is None else direction(ours)
                    agree = None if sign is None else sign * (1 if theirs > 0 else -1)
                    agreement = "paper: no change" if theirs == 0 else _AGREEMENT[agree] + (
                        f" ({TOO_FEW_SEEDS})" if ours is not None and too_few(left, right) else "")
                    rows.append({
                        "left": a["config"], "right": b["config"], "metric": m,
                        "effect": None if ours is None else ours.effect,
                        "interval_low": None if ours is None else ours.low,
                        "interval_high": None if ours is None else ours.high,
                        "n_left": left.n, "n_right": right.n,
                        "paper_effect": theirs, "paper_source": f"{ra['source']} {ra['dataset']}",
                        "agreement": agreement,
                    })
    return pl.DataFrame(rows, schema={
        "left": pl.String, "right": pl.String, "metric": pl.String, "effect": pl.Float64,
        "interval_low": pl.Float64, "interval_high": pl.Float64, "n_left": pl.Int64, "n_right": pl.Int64,
        "paper_effect": pl.Float64, "paper_source": pl.String, "agreement": pl.String})

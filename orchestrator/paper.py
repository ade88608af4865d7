"""The supplement's tables (shipped in `orchestrator/reference/`) and our configurations beside them."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from importlib import resources
from typing import Any

import polars as pl

from .results import CONFIG_COLUMNS, METRICS

__all__ = ["PaperTable", "PAPER_TABLES", "MATCH_KEYS", "PAPER_METRICS", "load_reference", "compare_with_paper"]



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

"""What a search, or an early-stopping rule, optimises: numeric metrics a trial reports.

Apart from `search` (which imports Optuna) so that the report, which replays early stopping over a
sweep's results, needs neither Optuna nor Ray.
"""

from __future__ import annotations

import pyarrow as pa
from pydantic import BaseModel, ConfigDict, field_validator

from sparsity_core.config import did_you_mean

from .pareto import Mode
from .store import TABLES, TRIAL_METRICS

__all__ = ["Objective", "default_objectives", "distinct"]


def _numeric_metrics() -> list[str]:
    """The numeric metrics of a finished trial (`store.TRIAL_METRICS`, from sparsity_core.metrics):
    what a Tune report carries, so a searcher can be told it. Settings, `epochs_run` or
    `wall_time_s` are trials columns too, but no report holds them."""
    schema: pa.Schema = TABLES["trials"]
    return [name for name in TRIAL_METRICS
            if pa.types.is_floating(schema.field(name).type) or pa.types.is_integer(schema.field(name).type)]


class Objective(BaseModel):
    """One objective: a numeric metric a trial reports, maximised or minimised."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    metric: str
    mode: Mode

    @field_validator("metric")
    @classmethod
    def _reported_metric(cls, v: str) -> str:
        valid = _numeric_metrics()
        if v not in valid:
            raise ValueError(f"unknown metric {v!r}{did_you_mean(v, valid)}; valid: {', '.join(valid)}")
        return v


def default_objectives() -> list[Objective]:
    """The study's trade-off: most dead filters, least test error."""
    return [Objective(metric="dead_gamma_pct", mode="max"), Objective(metric="test_err", mode="min")]


def distinct(objectives: list[Objective]) -> list[Objective]:
    """`objectives`, or ValueError when a metric appears twice (a validator's body)."""
    metrics = [o.metric for o in objectives]
    if len(set(metrics)) != len(metrics):
        raise ValueError(f"each metric may appear once; got {', '.join(metrics)}")
    return objectives

"""Planted results for the report's data step: real trials-table rows of real TrialConfigs, with
chosen per-seed values, read back the way the report reads a sweep (`results.per_trial`)."""

from __future__ import annotations

from typing import Any

import polars as pl

from orchestrator import results
from orchestrator.store import TABLES, TRIAL_METRICS
from sparsity_core.config import TrialConfig, alias_paths


def trial_row(status: str = "ok", **settings: Any) -> dict[str, Any]:
    """A trials-table row of a real TrialConfig (settings by alias; metrics by name)."""
    metrics = {k: settings.pop(k) for k in list(settings) if k in TRIAL_METRICS}
    seed = settings.pop("seed", 0)
    sections: dict[str, dict[str, Any]] = {}
    for alias, value in settings.items():
        section, leaf = alias_paths()[alias].split(".")
        sections.setdefault(section, {})[leaf] = value
    cfg = TrialConfig.model_validate({**sections, "seed": seed})
    return {"trial_id": cfg.trial_id, "sweep": "t", "status": status, **cfg.flat(), "epochs_run": 2,
            **{m: None for m in TRIAL_METRICS}, **metrics, "code_version": "v1",
            "config_json": cfg.model_dump_json()}


def frame(rows: list[dict[str, Any]], table: str) -> pl.DataFrame:
    """Rows in the store's schema for `table`."""
    schema = pl.from_arrow(TABLES[table].empty_table()).schema
    return pl.DataFrame(rows, schema=schema) if rows else pl.DataFrame(schema=schema)


def seeds(specs: list[tuple[dict[str, Any], list[float]]], metric: str = "dead_gamma_pct",
          **fixed: Any) -> list[dict[str, Any]]:
    """Trial rows: for each (settings, values), one trial per value, seeds 0, 1, ..., `metric` set
    to the value; `fixed` settings and metrics go into every row."""
    return [trial_row(**{"test_err": 10.0, **fixed, **settings}, seed=seed, **{metric: value})
            for settings, values in specs for seed, value in enumerate(values)]


def per_seed(rows: list[dict[str, Any]]) -> pl.DataFrame:
    """The rows as the report reads them: ok trials with their `config` label."""
    return results.per_trial(frame(rows, "trials"), frame([], "layers"))

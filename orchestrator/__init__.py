"""The machinery of a sweep: spec, search, Ray Tune runner, Parquet store, results, claims, reports.

Depends on `sparsity_core`, never the reverse. Importing it starts nothing (no `ray.init`) and loads no
submodule: the report's modules (results, paper, claims, figures, plots) need neither Optuna nor Ray.
"""

from __future__ import annotations

import importlib
from typing import Any

__all__ = ["SpecError", "SweepSpec", "Sweep", "load_spec", "ResultStore"]

_HOMES = {"SpecError": "spec", "SweepSpec": "spec", "Sweep": "spec", "load_spec": "spec", "ResultStore": "store"}


def __getattr__(name: str) -> Any:  # PEP 562: the public names, imported on first use
    if name not in _HOMES:
        raise AttributeError(f"module 'orchestrator' has no attribute {name!r}")
    return getattr(importlib.import_module(f".{_HOMES[name]}", __name__), name)

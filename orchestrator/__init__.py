"""The machinery of a sweep: spec, search, Ray Tune runner, Parquet store, analysis, reports.

Depends on `sparsity_core`, never the reverse. Importing it starts nothing (no `ray.init`).
"""

from .spec import SpecError, Sweep, SweepSpec, load_spec
from .store import ResultStore

__all__ = ["SpecError", "Sweep", "SweepSpec", "load_spec", "ResultStore"]

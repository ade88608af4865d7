"""Hand-made result rows for tests that write through the real ResultStore."""

from __future__ import annotations

from typing import Any

from orchestrator.store import TABLES


def row(table: str, **values: Any) -> dict[str, Any]:
    """A row of `table` holding `values` and None in every other column: the store takes only rows
    with all of a table's columns, so a test says outright which ones it leaves empty."""
    return {**dict.fromkeys(TABLES[table].names), **values}

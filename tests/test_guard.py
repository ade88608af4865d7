"""Checks before a sweep starts that need no Ray: results every node can reach."""

from __future__ import annotations

import pytest

from orchestrator.guard import LEASE_ENV, LEASE_S, RESULTS_ENV, GuardError, check_results_shared, lease_seconds
from orchestrator.store import ResultStore


def test_local_results_with_checkpoints_are_refused_on_several_nodes(tmp_path) -> None:
    local = ResultStore(str(tmp_path / "results"), "table1")
    with pytest.raises(GuardError) as err:
        check_results_shared(local, nodes=3, checkpoint_every=25, shared=False)
    message = str(err.value)
    assert local.uri in message and "3 nodes" in message
    for fix in ("--results s3://", RESULTS_ENV, "--results-shared", "checkpoint_every=0"):
        assert fix in message
    # One node, no checkpoints, a folder stated as shared, or remote results: nothing to refuse.
    check_results_shared(local, nodes=1, checkpoint_every=25, shared=False)
    check_results_shared(local, nodes=3, checkpoint_every=0, shared=False)
    check_results_shared(local, nodes=3, checkpoint_every=25, shared=True)
    check_results_shared(ResultStore("s3://bucket/prefix?endpoint_override=127.0.0.1:1&scheme=http", "table1"),
                         nodes=3, checkpoint_every=25, shared=False)


def test_lease_from_the_environment(monkeypatch) -> None:
    monkeypatch.delenv(LEASE_ENV, raising=False)
    assert lease_seconds() == LEASE_S
    monkeypatch.setenv(LEASE_ENV, "4")
    assert lease_seconds() == 4.0
    for bad in ("soon", "0.5", "nan"):
        monkeypatch.setenv(LEASE_ENV, bad)
        with pytest.raises(GuardError, match=LEASE_ENV):
            lease_seconds()

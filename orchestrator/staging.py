"""Datasets ready on every node a trial can run on, before the sweep's first trial starts.

The driver's own check (`check_dataset`) sees the driver's disk only; trials read the files on
their node. `stage_datasets` runs `prepare_dataset` once on each such node, as a Ray task pinned
there: with `download: true` each node (or each shared root, once) downloads now, under the root's
lock, instead of in every trial; without it, a node that lacks the files stops the sweep here with
one error that names the nodes, the roots and the fix. A node that joins later (an autoscaler's)
is prepared by its first trial: `load_dataset` runs `prepare_dataset` too, under the same lock.
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path
from typing import Any

import ray
from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

from sparsity_core.config import DataConfig, DatasetError
from sparsity_core.data import prepare_dataset

__all__ = ["trial_nodes", "stage_datasets"]

_DOCS = "docs/cluster.md (Datasets on a cluster)"


def trial_nodes(cpu: float = 0.0, gpu: float = 0.0) -> list[dict[str, Any]]:
    """The alive nodes (as `ray.nodes()` lists them) with room for a trial of `cpu` CPUs and
    `gpu` GPUs: a head started with no CPUs runs no trials and needs no data."""
    return [
        node for node in ray.nodes()
        if node["Alive"] and node["Resources"].get("CPU", 0) >= cpu and node["Resources"].get("GPU", 0) >= gpu
    ]


def _prepare_here(configs: list[DataConfig]) -> tuple[str, list[str]]:
    """On one node: this node's id and the problem with each dataset that is not ready."""
    problems = []
    for cfg in configs:
        try:
            prepare_dataset(cfg)
        except DatasetError as err:
            problems.append(str(err))
    return ray.get_runtime_context().get_node_id(), problems


def _where(node: dict[str, Any]) -> str:
    return f"node {node['NodeManagerAddress']} (id {node['NodeID'][:12]})"


def stage_datasets(configs: Iterable[DataConfig], *, cpu: float = 0.0, gpu: float = 0.0) -> list[str]:
    """Prepare every distinct dataset root of `configs` on every node with room for a trial of
    `cpu` CPUs and `gpu` GPUs, all nodes at once; return the ids of the nodes staged.

    Roots must be absolute (`DataConfig.resolve_root`): a relative one would mean a different folder in every
    process. Datasets with no files (digits, synthetic) need no node and start no task; with no
    node up yet, nothing is staged (an empty list). Raises
    DatasetError, after every node has answered, listing each node and dataset not ready.
    """
    distinct = {(c.name, c.root, c.download): c for c in configs if c.root is not None}
    relative = sorted({c.root for c in distinct.values() if not Path(c.root).is_absolute()})
    if relative:
        raise ValueError(f"dataset roots {relative} are relative: resolve them first (DataConfig.resolve_root)")
    if not distinct:
        return []
    nodes = trial_nodes(cpu, gpu)  # none yet on an autoscaling cluster that starts with its head alone
    prepare = ray.remote(num_cpus=0, max_retries=0)(_prepare_here)
    pending = {
        node["NodeID"]: prepare.options(
            scheduling_strategy=NodeAffinitySchedulingStrategy(node["NodeID"], soft=False)
        ).remote(list(distinct.values()))
        for node in nodes
    }
    staged, problems = [], []
    for node in nodes:
        try:
            ran_on, node_problems = ray.get(pending[node["NodeID"]])
        except ray.exceptions.RayError as err:
            problems.append(f"{_where(node)}: staging did not finish ({type(err).__name__}: {err})")
            continue
        staged.append(ran_on)
        problems += [f"{_where(node)}: {problem}" for problem in node_problems]
    if problems:
        raise DatasetError(
            "the data is not ready on every node trials run on:\n  " + "\n  ".join(problems) + "\n"
            f"Put the files at the same absolute path on every node (a shared filesystem, or baked into "
            f"the image), as {_DOCS} says, or set dataset.download: true to fetch them once per root"
        )
    return staged

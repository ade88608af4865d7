"""Datasets staged on every node of a real two-node Ray cluster (`ray.cluster_utils.Cluster`, both
nodes on this machine), with CIFAR-10 files in the real on-disk format."""

from __future__ import annotations

from pathlib import Path

import pytest
import ray
from ray.cluster_utils import Cluster
from torchvision import datasets

from orchestrator.staging import stage_datasets, trial_nodes
from sparsity_core.config import DataConfig, DatasetError
from sparsity_core.data import prepare_dataset

from .cifar import write_cifar10

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def cluster():
    """A head with 1 CPU and a worker with 2, this process its driver."""
    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 1, "include_dashboard": False})
    cluster.add_node(num_cpus=2)
    ray.init(address=cluster.address, log_to_driver=False)
    cluster.wait_for_nodes()
    yield cluster
    ray.shutdown()
    cluster.shutdown()


@pytest.fixture
def two_nodes(cluster):
    """The node ids, head first."""
    return cluster.head_node.node_id, cluster.list_all_nodes()[1].node_id


def test_a_resolved_root_is_checked_on_every_node(two_nodes, tmp_path: Path) -> None:
    write_cifar10(tmp_path / "sweeps" / "data")
    cfg = DataConfig(name="cifar10", root="data").resolve_root(tmp_path / "sweeps")
    # The same dataset in several trials (other image sizes) is staged once per node.
    configs = [cfg, cfg.model_copy(update={"image_size": 16}), DataConfig(name="synthetic")]
    assert sorted(stage_datasets(configs)) == sorted(two_nodes)
    # Only nodes with room for a trial: a 2-CPU trial fits the worker alone.
    assert [n["NodeID"] for n in trial_nodes(cpu=2)] == [two_nodes[1]]
    assert stage_datasets([cfg], cpu=2) == [two_nodes[1]]


def test_missing_data_names_each_node_root_and_fix(two_nodes, tmp_path: Path) -> None:
    write_cifar10(tmp_path / "present")
    present = DataConfig(name="cifar10", root=str(tmp_path / "present"))
    absent = DataConfig(name="cifar100", root=str(tmp_path / "absent"))
    with pytest.raises(DatasetError) as err:
        stage_datasets([present, absent])
    message = str(err.value)
    for node_id in two_nodes:
        assert f"id {node_id[:12]}" in message
    assert message.count(str(tmp_path / "absent")) >= 2 and str(tmp_path / "present") not in message
    assert "download: true" in message and "docs/cluster.md" in message


def test_nothing_to_stage_starts_no_task(two_nodes) -> None:
    assert stage_datasets([DataConfig(name="digits"), DataConfig(name="synthetic", download=True)]) == []
    with pytest.raises(ValueError, match="relative"):
        stage_datasets([DataConfig(name="cifar10", root="data")])
    # No node with a GPU yet (an autoscaler adds them later): their first trials prepare the data.
    assert stage_datasets([DataConfig(name="cifar10", root="/nowhere")], gpu=1) == []


def test_nodes_sharing_a_root_download_it_once(cluster, two_nodes, cifar_release, tmp_path: Path) -> None:
    requests, written = cifar_release
    prepare_dataset(DataConfig(name="cifar10", root=str(tmp_path / "alone"), download=True))
    per_download = len(requests)  # what one download asks of the server
    # The workers of both nodes see the served release, as this process does (cifar_release).
    served = {name: getattr(datasets.CIFAR10, name) for name in ("url", "tgz_md5", "train_list", "test_list", "meta")}

    def serve_release() -> None:
        from torchvision import datasets

        for name, value in served.items():
            setattr(datasets.CIFAR10, name, value)

    ray.shutdown()
    ray.init(address=cluster.address, log_to_driver=False, runtime_env={"worker_process_setup_hook": serve_release})
    try:
        # Both nodes at once on one root, as on a shared filesystem: one downloads, one waits.
        cfg = DataConfig(name="cifar10", root=str(tmp_path / "shared"), download=True)
        assert sorted(stage_datasets([cfg])) == sorted(two_nodes)
        assert len(requests) == 2 * per_download
    finally:
        ray.shutdown()
        ray.init(address=cluster.address, log_to_driver=False)

"""Shared fixtures. Tests run on CPU with small threads so the suite fits a 2-core machine."""

from __future__ import annotations

import os

import pytest
import torch

from .cifar import cifar_release  # noqa: F401 (a fixture for every test module)

os.environ.setdefault("TUNE_DISABLE_AUTO_CALLBACK_LOGGERS", "1")
torch.set_num_threads(1)


def tiny_config(**train):
    """A synthetic-data, 1/8-width BasicNet trial that trains in about a second."""
    from sparsity_core import TrialConfig

    settings = {"epochs": 2, "lr_steps": [1], "batch_size": 64, **train}
    return TrialConfig.model_validate(
        {"dataset": {"name": "synthetic", "n_train": 256, "n_test": 64}, "model": {"width": 0.125},
         "train": settings, "device": "cpu"}
    )


@pytest.fixture
def tiny():
    return tiny_config


@pytest.fixture(scope="module")
def local_ray():
    """An embedded Ray with 2 CPUs for one test module (started only by tests that ask for it)."""
    import ray

    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    yield ray
    ray.shutdown()

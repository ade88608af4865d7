"""CIFAR-10/100 in their real on-disk formats (Python 2 pickles, torchvision's md5 table pointed at
them) and a local HTTP server for CIFAR-10's release archive: nothing is downloaded from the internet."""

from __future__ import annotations

import hashlib
import http.server
import os
import pickle
import struct
import tarfile
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from torchvision import datasets

__all__ = ["write_cifar10", "write_cifar100", "accept_checksums", "accept_fixture_checksums", "FIXTURE_ENV",
           "images", "cifar_release"]



class _Py2Pickler(pickle._Pickler):
    """Pickles `bytes` as Python 2 `str`, as the CIFAR files (written by Python 2) store their keys
    and strings: they read back as b"data" with encoding="bytes" (the dataset page's recipe) and as
    "data" with encoding="latin1" (torchvision's)."""

    dispatch = dict(pickle._Pickler.dispatch)

    def _save_py2_str(self, obj: bytes) -> None:
        n = len(obj)
        if n < 256:
            self.write(pickle.SHORT_BINSTRING + bytes([n]) + obj)
        else:
            self.write(pickle.BINSTRING + struct.pack("<i", n) + obj)
        self.memoize(obj)

    dispatch[bytes] = _save_py2_str


def _dump(path: Path, entry: dict[bytes, Any]) -> None:
    with path.open("wb") as f:
        _Py2Pickler(f, protocol=2).dump(entry)


def _batch(rng: np.random.Generator, n: int, num_classes: int) -> tuple[np.ndarray, list[int]]:
    # One row per image: 1024 R, then 1024 G, then 1024 B values, each plane row-major.
    return rng.integers(0, 256, (n, 3072), dtype=np.uint8), rng.integers(0, num_classes, n).tolist()


def write_cifar10(root: Path, per_file: int = 10) -> dict[str, tuple[np.ndarray, list[int]]]:
    folder = root / "cifar-10-batches-py"
    folder.mkdir(parents=True)
    rng = np.random.default_rng(0)
    written = {}
    for name in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
        data, labels = written[name] = _batch(rng, per_file, 10)
        entry = {
            b"batch_label": name.encode(),
            b"labels": labels,
            b"data": data,
            b"filenames": [f"img_{name}_{i}.png".encode() for i in range(per_file)],
        }
        _dump(folder / name, entry)
    names = b"airplane automobile bird cat deer dog frog horse ship truck".split()
    meta = {b"num_cases_per_batch": per_file, b"label_names": names, b"num_vis": 3072}
    _dump(folder / "batches.meta", meta)
    return written


def write_cifar100(root: Path, per_file: int = 10) -> dict[str, tuple[np.ndarray, list[int]]]:
    folder = root / "cifar-100-python"
    folder.mkdir(parents=True)
    rng = np.random.default_rng(1)
    written = {}
    for name in ("train", "test"):
        data, fine = written[name] = _batch(rng, per_file, 100)
        entry = {
            b"filenames": [f"img_{i}.png".encode() for i in range(per_file)],
            b"batch_label": f"{name}ing batch 1 of 1".encode(),
            b"fine_labels": fine,
            b"coarse_labels": [label // 5 for label in fine],
            b"data": data,
        }
        _dump(folder / name, entry)
    meta = {
        b"fine_label_names": [f"fine_{i}".encode() for i in range(100)],
        b"coarse_label_names": [f"coarse_{i}".encode() for i in range(20)],
    }
    _dump(folder / "meta", meta)
    return written


def _checksums(cls: type[datasets.CIFAR10], folder: Path) -> dict[str, Any]:
    """torchvision's md5 table of `cls` (its class attributes by name) for the files under `folder`."""

    def md5(name: str) -> str:
        return hashlib.md5((folder / name).read_bytes()).hexdigest()

    return {
        "train_list": [[name, md5(name)] for name, _ in cls.train_list],
        "test_list": [[name, md5(name)] for name, _ in cls.test_list],
        "meta": {**cls.meta, "md5": md5(cls.meta["filename"])},
    }


def accept_checksums(
    monkeypatch: pytest.MonkeyPatch, cls: type[datasets.CIFAR10], folder: Path
) -> None:
    """Point torchvision's md5 table at the fixture's files: its integrity check still runs, now
    against what the fixture wrote instead of the official release."""
    for name, value in _checksums(cls, folder).items():
        monkeypatch.setattr(cls, name, value)


FIXTURE_ENV = "FILTER_SPARSITY_TEST_CIFAR10"  # the root write_cifar10 wrote, for the hook below


def accept_fixture_checksums() -> None:
    """`accept_checksums` for CIFAR-10 in every worker of a Ray job, as its runtime env's
    `worker_process_setup_hook` ("tests.cifar.accept_fixture_checksums"), the root in $FILTER_SPARSITY_TEST_CIFAR10."""
    cls = datasets.CIFAR10
    for name, value in _checksums(cls, Path(os.environ[FIXTURE_ENV]) / cls.base_folder).items():
        setattr(cls, name, value)


def images(data: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(data.reshape(-1, 3, 32, 32))


class _SlowArchiveServer(http.server.SimpleHTTPRequestHandler):
    """Serves its folder and records each GET; slow enough that concurrent callers overlap."""

    requests: list[str] = []

    def do_GET(self) -> None:
        self.requests.append(self.path)
        time.sleep(0.5)
        super().do_GET()

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture
def cifar_release(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    """CIFAR-10's release archive, in its real layout, served over HTTP on 127.0.0.1 with
    torchvision's URL and md5 table pointed at it. Yields (the GETs it served, the written batches)."""
    release = tmp_path / "release"
    written = write_cifar10(release)
    accept_checksums(monkeypatch, datasets.CIFAR10, release / "cifar-10-batches-py")
    served = tmp_path / "served"
    served.mkdir()
    archive = served / datasets.CIFAR10.filename
    with tarfile.open(archive, "w:gz") as tar:
        tar.add(release / "cifar-10-batches-py", arcname="cifar-10-batches-py")
    monkeypatch.setattr(datasets.CIFAR10, "tgz_md5", hashlib.md5(archive.read_bytes()).hexdigest())

    class Handler(_SlowArchiveServer):
        requests: list[str] = []

        def __init__(self, *args: Any, **kwargs: Any) -> None:
            super().__init__(*args, directory=str(served), **kwargs)

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    monkeypatch.setattr(datasets.CIFAR10, "url", f"http://127.0.0.1:{server.server_port}/{archive.name}")
    yield Handler.requests, written
    server.shutdown()



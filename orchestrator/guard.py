"""Checks made before a sweep starts, so a mistake costs seconds and touches no result.

- the Ray address answers (ray.init itself retries a dead address for minutes);
- the results location can be written;
- no other orchestrator runs on the same results (an exclusive lock file, local folders only).
"""

from __future__ import annotations

import fcntl
import os
import socket
import uuid
from pathlib import Path
from urllib.parse import urlparse

import pyarrow.fs as pafs

from .store import ResultStore

__all__ = ["GuardError", "check_reachable", "check_writable", "SweepLock"]


class GuardError(ValueError):
    """A problem with the environment of a sweep; the message names it and the fix."""


def check_reachable(address: str | None, timeout_s: float = 5.0) -> None:
    """Fail fast when a `host:port` or `ray://host:port` address accepts no TCP connection."""
    if not address or address in ("auto", "local"):
        return
    parsed = urlparse(address if "://" in address else f"tcp://{address}")
    if parsed.hostname is None or parsed.port is None:
        return
    try:
        with socket.create_connection((parsed.hostname, parsed.port), timeout=timeout_s):
            pass
    except OSError as e:
        raise GuardError(
            f"Ray address {address!r} is unreachable ({e.strerror or e}); start the cluster with "
            "`ray start --head`, check the address (or $RAY_ADDRESS), or leave it out for a local Ray"
        ) from None


def check_writable(store: ResultStore) -> None:
    """Create the sweep's folder and write and delete a probe file in it."""
    probe = f"{store.path}/.write-probe-{uuid.uuid4().hex}"
    try:
        store.fs.create_dir(store.path, recursive=True)
        with store.fs.open_output_stream(probe) as f:
            f.write(b"ok")
        store.fs.delete_file(probe)
    except OSError as e:
        raise GuardError(
            f"results location {store.uri!r} cannot be written ({e}); pass --results with a "
            "folder you can write to, or fix its permissions"
        ) from None


class SweepLock:
    """An exclusive lock on a local sweep's results for the life of the orchestrator process.

    The OS releases it when the process dies, even by SIGKILL, so a killed sweep never leaves a
    stale lock. Remote stores (s3://) have no such primitive and are not locked.
    """

    def __init__(self, store: ResultStore):
        self.store = store
        self._fd: int | None = None

    def __enter__(self) -> SweepLock:
        if not isinstance(self.store.fs, pafs.LocalFileSystem):
            return self
        path = Path(self.store.path) / ".lock"
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.read(fd, 64).decode(errors="replace").strip() or "another process"
            os.close(fd)
            raise GuardError(
                f"another orchestrator (pid {holder}) is running sweep {self.store.sweep!r} on "
                f"{self.store.uri}; wait for it to finish, or use a different --results folder"
            ) from None
        os.ftruncate(fd, 0)
        os.write(fd, str(os.getpid()).encode())
        self._fd = fd
        return self

    def __exit__(self, *exc: object) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None

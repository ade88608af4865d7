"""Checks made before a sweep starts, so a mistake costs seconds and touches no result.

- `device: cuda` has a GPU to run on, where the trials run on this machine;
- the Ray address answers (ray.init itself retries a dead address for minutes);
- the results location can be written;
- on a cluster of several nodes, the results are where every node can write its checkpoints;
- no other orchestrator runs on the same results (an OS lock on a local folder, a lease on S3).

What a lock says while a sweep runs (waiting for a lease, losing it) goes to the logger
`orchestrator.guard`: the CLI prints it, on stderr.
"""

from __future__ import annotations

import datetime as dt
import email.utils
import fcntl
import json
import logging
import os
import signal
import socket
import threading
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

import pyarrow.fs as pafs

from .s3 import Conflict, S3Location, conditional_put
from .store import ResultStore

__all__ = ["GuardError", "RESULTS_ENV", "LEASE_ENV", "LEASE_S", "check_device", "check_reachable", "check_writable",
           "check_results_shared", "lease_seconds", "SweepLock", "S3Lease"]

# The CLI's default for --results when set: the cluster configs (docker/) put their bucket here, so
# `ray job submit -- python orchestrator/run.py sweeps/table1.yaml` needs no --results.
RESULTS_ENV = "FILTER_SPARSITY_RESULTS"
# Seconds of the S3 lock's lease when set: how long a resubmitted job waits for a killed driver's
# lease to run out (the tests shorten it; a driver renews every third of it).
LEASE_ENV = "FILTER_SPARSITY_LEASE_S"
LEASE_S = 60.0

_log = logging.getLogger(__name__)


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


def check_device(device: str, address: str | None) -> None:
    """Refuse `device: cuda` where the trials would run on this machine (an embedded local Ray: no
    address) and torch finds no CUDA GPU here. On a cluster the GPUs are the workers' (an autoscaler
    may start them later), and a trial on a node without one refuses by itself."""
    if device != "cuda" or address:
        return
    from sparsity_core.loop import resolve_device  # torch, imported only for a CUDA sweep

    try:
        resolve_device(device)
    except ValueError as e:
        raise GuardError(f"{e}, or pass --address of a Ray cluster with GPU workers") from None


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


def check_results_shared(store: ResultStore, nodes: int, checkpoint_every: int, shared: bool) -> None:
    """Refuse a local results folder when trials on other nodes would write checkpoints to it.

    Tune's checkpoints go to `<results>/<sweep>/_tune`, written by each trial on its own node; Ray
    raises at the first checkpoint of a trial off the driver's node when that path is local. So with
    more than one alive node (`nodes`) and checkpoints on, the results must be remote (s3://) or a
    folder the user states is shared (`shared`: the CLI's --results-shared), mounted at the same
    path on every node. An autoscaling cluster that starts with the head alone is not caught here:
    its configs set $FILTER_SPARSITY_RESULTS to a bucket.
    """
    if nodes <= 1 or checkpoint_every == 0 or shared or not store.is_local:
        return
    raise GuardError(
        f"results folder {store.uri} is on this machine's disk, but the Ray cluster has {nodes} nodes and "
        f"the sweep checkpoints every {checkpoint_every} epochs: trials on the other nodes cannot write "
        f"their checkpoints there. Pass --results s3://bucket/prefix (or set ${RESULTS_ENV}), add "
        f"--results-shared if the folder is a shared filesystem mounted at the same path on every node, "
        "or turn checkpoints off with --set checkpoint_every=0"
    )


def lease_seconds() -> float:
    """The S3 lock's lease: ${LEASE_ENV} if set, else LEASE_S."""
    text = os.environ.get(LEASE_ENV)
    if text is None:
        return LEASE_S
    try:
        seconds = float(text)
    except ValueError:
        seconds = 0.0
    if not seconds >= 1.0:
        raise GuardError(f"${LEASE_ENV}={text!r}: expected the S3 lock's lease in seconds, at least 1 "
                         f"(default {LEASE_S:.0f}); set a number or unset it")
    return seconds


def _busy(holder: str, store: ResultStore) -> GuardError:
    return GuardError(
        f"another orchestrator ({holder}) is running sweep {store.sweep!r} on {store.uri}; wait for it "
        "to finish, or use a different --results location"
    )


class SweepLock:
    """An exclusive lock on a sweep's results for the life of the orchestrator process.

    A local folder: an OS lock file, which the OS releases when the process dies, even by SIGKILL,
    so a killed sweep never leaves a stale lock. S3: an `S3Lease` on `<sweep>/.lock`, which a killed
    driver's successor takes over once it has expired (within `lease_s` seconds). Other remote
    filesystems have no primitive for it and are not locked. `lost` turns true when another
    driver took over the lease (or it could not be renewed): this one then stops (`_lost_lease`).
    """

    def __init__(self, store: ResultStore, *, lease_s: float = LEASE_S):
        self.store = store
        self.lease_s = lease_s
        self.lost = False
        self._fd: int | None = None
        self._lease: S3Lease | None = None

    def __enter__(self) -> SweepLock:
        if isinstance(self.store.fs, pafs.S3FileSystem):
            from botocore.exceptions import BotoCoreError, ClientError

            lease = S3Lease(S3Location.from_uri(self.store.uri).child(".lock"), self.lease_s, on_lost=self._on_lost)
            try:
                holder = lease.acquire()
            except (BotoCoreError, ClientError) as e:
                raise GuardError(f"cannot lock {self.store.uri} ({e}); check the bucket and the AWS_* credentials") from None
            if holder is not None:
                raise _busy(holder, self.store)
            self._lease = lease
            return self
        if not self.store.is_local:
            return self
        path = Path(self.store.path) / ".lock"
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.read(fd, 64).decode(errors="replace").strip() or "another process"
            os.close(fd)
            raise _busy(f"pid {holder}", self.store) from None
        os.ftruncate(fd, 0)
        os.write(fd, str(os.getpid()).encode())
        self._fd = fd
        return self

    def _on_lost(self, reason: str) -> None:
        self.lost = True
        _lost_lease(reason)

    def __exit__(self, *exc: object) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None
        if self._lease is not None:
            self._lease.release()
            self._lease = None


def _lost_lease(reason: str) -> None:
    """Stop this driver: another one may be writing the same results now. Ctrl-C's path (SIGINT to
    the main thread, which also wakes it from a blocking call), so Tune stops its trials and what
    was written stays: every file is whole."""
    _log.error(f"error: {reason}; stopping this orchestrator")
    signal.pthread_kill(threading.main_thread().ident, signal.SIGINT)


class S3Lease:
    """Exclusive hold on one S3 object for as long as its holder renews it, by conditional writes.

    `acquire` creates the object with If-None-Match. If it exists, the holder's lease runs out
    `lease_s` (the holder's own, stored in the object) after the object's Last-Modified, judged
    against the Date of the server's answer: the server's clock, so the drivers' clocks need not
    agree. An expired lease is taken over with If-Match on the ETag that was read, so of several
    successors one wins. A live holder rewrites the object (If-Match on its last ETag) every third
    of its lease; a successor that finds a lease still running waits for it once, and gives up if
    the holder renewed meanwhile. A holder whose renewal fails because someone else took over, or
    that cannot renew for a whole lease, calls `on_lost`.
    """

    def __init__(self, location: S3Location, lease_s: float = 60.0,
                 on_lost: Callable[[str], None] = _lost_lease):
        self.location = location
        self.lease_s = lease_s
        self.on_lost = on_lost
        self.holder = f"{socket.gethostname()} pid {os.getpid()}"
        self._id = uuid.uuid4().hex
        self._renewals = 0
        self._etag: str | None = None
        self._client: Any = None
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def _body(self) -> bytes:
        self._renewals += 1  # a new body each time, so each write has a new ETag
        return json.dumps({"holder": self.holder, "id": self._id, "lease_s": self.lease_s,
                           "renewal": self._renewals}).encode()

    def _read(self) -> tuple[str, dict[str, Any], float] | None:
        """(ETag, body, seconds of lease left by the server's clock) of the object, None if absent."""
        from botocore.exceptions import ClientError

        try:
            got = self._client.get_object(Bucket=self.location.bucket, Key=self.location.key)
        except ClientError as err:
            if err.response["Error"]["Code"] in ("NoSuchKey", "404"):
                return None
            raise
        body = json.loads(got["Body"].read())
        date = got["ResponseMetadata"]["HTTPHeaders"].get("date")
        now = email.utils.parsedate_to_datetime(date) if date else dt.datetime.now(dt.timezone.utc)
        left = (got["LastModified"] - now).total_seconds() + float(body["lease_s"])
        return got["ETag"], body, left

    def acquire(self) -> str | None:
        """Take the lease and start renewing it; or return the live holder's description."""
        self._client = self.location.client()
        waited_on: str | None = None
        while True:
            try:
                self._etag = conditional_put(self._client, self.location, self._body())
                break
            except Conflict:
                seen = self._read()
            if seen is None:  # released between the two calls
                continue
            etag, body, left = seen
            if left <= 0:
                try:
                    self._etag = conditional_put(self._client, self.location, self._body(), if_match=etag)
                    break
                except Conflict:  # another successor was faster, or the holder renewed late
                    continue
            if waited_on is not None and etag != waited_on:
                return body["holder"]
            waited_on = etag
            _log.warning(f"results locked by {body['holder']} (lease: {left:.0f} s left); waiting for it in case "
                         "that orchestrator is gone")
            time.sleep(left + 1.0)  # Last-Modified has 1 s resolution
        self._thread = threading.Thread(target=self._renew, name="s3-lease", daemon=True)
        self._thread.start()
        return None

    def _renew(self) -> None:
        from botocore.exceptions import BotoCoreError, ClientError

        renewed = time.monotonic()
        while not self._stop.wait(self.lease_s / 3):
            try:
                try:
                    self._etag = conditional_put(self._client, self.location, self._body(), if_match=self._etag)
                except Conflict:
                    seen = self._read()
                    if seen is None or seen[1]["id"] != self._id:
                        return self._lose(f"another orchestrator took over the lock {self.location.key}")
                    self._etag = seen[0]  # our write landed but its answer was lost
                renewed = time.monotonic()
            except (BotoCoreError, ClientError) as err:  # network trouble: retry while the lease lasts
                if time.monotonic() - renewed > self.lease_s:
                    return self._lose(f"could not renew the lock {self.location.key} for {self.lease_s:.0f} s ({err})")

    def _lose(self, reason: str) -> None:
        self._etag = None  # not ours any more: release must not delete it
        self.on_lost(reason)

    def release(self) -> None:
        """Stop renewing and delete the object, unless someone else holds it by now."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
        if self._etag is None:
            return
        from botocore.exceptions import ClientError

        try:
            self._client.delete_object(Bucket=self.location.bucket, Key=self.location.key, IfMatch=self._etag)
        except ClientError as err:
            if err.response["Error"]["Code"] not in ("PreconditionFailed", "NoSuchKey", "404"):
                raise
        self._etag = None

"""Conditional writes on S3, for what pyarrow's filesystem cannot do there: a lease lock on a
results prefix (guard.py) and an Optuna journal beside the results (`S3JournalBackend`).

S3 (and MinIO, Ceph, moto) create an object only if it does not exist with `If-None-Match: *`, and
replace it only if it is unchanged with `If-Match: <etag>`; a failed condition answers 412, and a
concurrent conditional write to the same key 409. Both are `Conflict` here.

Locations are `s3://bucket/key` URIs with pyarrow's query options (`endpoint_override`, `scheme`,
`region`, `access_key`, `secret_key`, `session_token`), so one results URI serves both libraries.
Credentials otherwise come from the usual AWS_* variables or the instance profile, as for pyarrow.
"""

from __future__ import annotations

import json
import time
import urllib.parse
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

from optuna.storages.journal import BaseJournalBackend

__all__ = ["Conflict", "S3Location", "conditional_put", "S3JournalBackend"]

_CONFLICT_CODES = ("PreconditionFailed", "ConditionalRequestConflict")


class Conflict(Exception):
    """A conditional write lost: the object exists (If-None-Match) or changed (If-Match)."""


@dataclass(frozen=True)
class S3Location:
    """An object or key prefix on S3 and how to reach it."""

    bucket: str
    key: str  # no leading or trailing "/"
    options: tuple[tuple[str, str], ...] = ()  # pyarrow's query options, as given

    @classmethod
    def from_uri(cls, uri: str) -> S3Location:
        parts = urllib.parse.urlsplit(uri)
        if parts.scheme != "s3" or not parts.hostname:
            raise ValueError(f"{uri!r} is not an s3://bucket/key URI")
        options = urllib.parse.parse_qsl(parts.query)
        if parts.username:  # pyarrow also reads s3://KEY:SECRET@bucket
            options += [("access_key", urllib.parse.unquote(parts.username)),
                        ("secret_key", urllib.parse.unquote(parts.password or ""))]
        return cls(parts.hostname, parts.path.strip("/"), tuple(options))

    def child(self, name: str) -> S3Location:
        return S3Location(self.bucket, f"{self.key}/{name}".strip("/"), self.options)

    def client(self) -> Any:
        """A boto3 S3 client for this location. With an endpoint (MinIO, moto), path-style
        addressing, as pyarrow uses there: `host/bucket/key`, not `bucket.host/key`."""
        import boto3  # only where a lock or a journal lives on S3
        from botocore.config import Config

        opts = dict(self.options)
        endpoint = opts.get("endpoint_override")
        if endpoint and "://" not in endpoint:
            endpoint = f"{opts.get('scheme', 'https')}://{endpoint}"
        return boto3.session.Session().client(
            "s3",
            endpoint_url=endpoint,
            region_name=opts.get("region"),
            aws_access_key_id=opts.get("access_key"),
            aws_secret_access_key=opts.get("secret_key"),
            aws_session_token=opts.get("session_token"),
            config=Config(s3={"addressing_style": "path"} if endpoint else {}, retries={"mode": "standard"}),
        )


def conditional_put(client: Any, location: S3Location, body: bytes, *, if_match: str | None = None) -> str:
    """Create the object (if_match None) or replace it if its ETag is still `if_match`; return
    the new ETag. Raises Conflict when the condition fails."""
    from botocore.exceptions import ClientError

    condition = {"IfNoneMatch": "*"} if if_match is None else {"IfMatch": if_match}
    try:
        return client.put_object(Bucket=location.bucket, Key=location.key, Body=body, **condition)["ETag"]
    except ClientError as err:
        if err.response["Error"]["Code"] in _CONFLICT_CODES:
            raise Conflict(location.key) from None
        raise


class S3JournalBackend(BaseJournalBackend):
    """Optuna's journal (an append-only list of operations) as numbered objects under a prefix.

    Log n is the object `<prefix>/<n, 12 digits>.json`, created with If-None-Match, so two writers
    never both create log n: the loser sees 412 and tries n + 1. A log is created only after every
    lower one exists, so the numbers have no gaps, and S3 lists keys in order with strong
    consistency: `read_logs` lists from a number and reads each object. One PUT per log; a study
    of a few hundred trials holds a few thousand small objects.
    """

    def __init__(self, uri: str):
        self._prefix = S3Location.from_uri(uri)
        self._client: Any = None
        self._next = 0  # no log below this number is free: where the next append starts trying

    def __getstate__(self) -> dict[str, Any]:  # Tune pickles the searcher with its storage
        return {**self.__dict__, "_client": None}

    @property
    def _s3(self) -> Any:
        if self._client is None:
            self._client = self._prefix.client()
        return self._client

    def _log(self, number: int) -> S3Location:
        return self._prefix.child(f"{number:012d}.json")

    def _listed(self, log_number_from: int) -> Iterator[tuple[int, str]]:
        pages = self._s3.get_paginator("list_objects_v2").paginate(
            Bucket=self._prefix.bucket, Prefix=f"{self._prefix.key}/",
            StartAfter=self._log(log_number_from - 1).key if log_number_from else "",
        )
        for page in pages:
            for obj in page.get("Contents", []):
                name = obj["Key"].rsplit("/", 1)[-1]
                if name.endswith(".json") and name[:-5].isdigit():
                    yield int(name[:-5]), obj["Key"]

    def read_logs(self, log_number_from: int) -> Iterator[dict[str, Any]]:
        expected = log_number_from
        for number, key in self._listed(log_number_from):
            if number != expected:  # cannot happen (see the class docstring); never skip a log
                break
            body = self._s3.get_object(Bucket=self._prefix.bucket, Key=key)["Body"].read()
            yield json.loads(body)
            expected += 1
            self._next = max(self._next, expected)

    def append_logs(self, logs: list[dict[str, Any]]) -> None:
        for log in logs:
            body = json.dumps(log).encode()
            while True:
                try:
                    conditional_put(self._s3, self._log(self._next), body)
                except Conflict:
                    # 412: another writer's log holds this number, ours goes after it. (A 409,
                    # a write to the same key still in flight, may yet fail: trying the next
                    # number could then leave a gap, so it tries this one again.)
                    if self._s3_exists(self._log(self._next)):
                        self._next += 1
                    else:
                        time.sleep(0.05)
                    continue
                self._next += 1
                break

    def _s3_exists(self, location: S3Location) -> bool:
        from botocore.exceptions import ClientError

        try:
            self._s3.head_object(Bucket=location.bucket, Key=location.key)
        except ClientError as err:
            if err.response["Error"]["Code"] in ("404", "NoSuchKey", "NotFound"):
                return False
            raise
        return True

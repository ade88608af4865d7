"""Conditional writes on S3, for what pyarrow's filesystem cannot do there: a lease lock on a
results prefix (guard.py) and an Optuna journal beside the results (`journal.S3JournalBackend`).
Optuna is not imported here: the lock's path (run.py, guard.py) needs none.

S3 (and MinIO, Ceph, moto) create an object only if it does not exist with `If-None-Match: *`, and
replace it only if it is unchanged with `If-Match: <etag>`; a failed condition answers 412, and a
concurrent conditional write to the same key 409. Both are `Conflict` here.

Locations are `s3://bucket/key` URIs with pyarrow's query options (`endpoint_override`, `scheme`,
`region`, `access_key`, `secret_key`, `session_token`), so one results URI serves both libraries.
Credentials otherwise come from the usual AWS_* variables or the instance profile, as for pyarrow.
"""

from __future__ import annotations

import urllib.parse
from dataclasses import dataclass
from typing import Any

__all__ = ["Conflict", "S3Location", "conditional_put"]

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

"""An Optuna journal on S3 (`S3JournalBackend`): the study of a search whose results live on S3
stays beside them, written by conditional writes (`orchestrator.s3`)."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from typing import Any

from optuna.storages.journal import BaseJournalBackend

from .s3 import Conflict, S3Location, conditional_put

__all__ = ["S3JournalBackend"]


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

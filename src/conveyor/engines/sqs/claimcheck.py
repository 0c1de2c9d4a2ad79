"""Claim-check: large payloads (and results) go to S3; messages and records keep a pointer.

Objects are deleted when their job is (completion without keeping, retention, purge); an S3
lifecycle rule on the prefix is the backstop for anything a crash leaves behind.
"""

from __future__ import annotations

import logging
import os
from collections import OrderedDict
from collections.abc import Sequence

from conveyor.engines.sqs.aws import Clients, error_code
from conveyor.engines.sqs.options import SQSOptions

log = logging.getLogger("conveyor.engines.sqs")

#: Payloads are immutable under their key, so a small cache saves S3 reads when the same
#: job is read again (``job.result()`` polls, ``dlq show``).
CACHE_ENTRIES = 32
#: S3's limit on keys per DeleteObjects request.
DELETE_BATCH = 1000


class ClaimCheck:
    """Stores blobs in ``s3://bucket/prefix/`` under keys derived from the job."""

    def __init__(self, options: SQSOptions, clients: Clients) -> None:
        where = options.claim_check_bucket
        assert where is not None
        self.bucket, self.prefix = where
        self.options = options
        self.clients = clients
        self._cache: OrderedDict[str, bytes] = OrderedDict()

    async def ensure_bucket(self) -> None:
        """Create the bucket when ``create`` is on and it is missing."""
        try:
            await self.clients.s3.head_bucket(Bucket=self.bucket)
            return
        except Exception as exc:
            missing = error_code(exc) in ("404", "NoSuchBucket", "NotFound")
            if not missing or not self.options.create:
                raise
        kwargs: dict[str, object] = {"Bucket": self.bucket}
        region = self.options.region or "us-east-1"
        if region != "us-east-1":  # us-east-1 refuses an explicit location constraint
            kwargs["CreateBucketConfiguration"] = {"LocationConstraint": region}
        await self.clients.s3.create_bucket(**kwargs)

    def key(self, queue: str, job_id: str, kind: str) -> str:
        """A fresh object key for one job's ``payload`` or ``result``."""
        name = f"{queue}/{job_id.encode().hex()[:200]}/{kind}-{os.urandom(6).hex()}"
        return f"{self.prefix}/{name}" if self.prefix else name

    async def put(self, key: str, data: bytes) -> str:
        """Store ``data`` under ``key``; returns the key."""
        await self.clients.s3.put_object(Bucket=self.bucket, Key=key, Body=data)
        self._remember(key, data)
        return key

    async def get(self, key: str) -> bytes:
        """The blob under ``key``."""
        cached = self._cache.get(key)
        if cached is not None:
            self._cache.move_to_end(key)
            return cached
        response = await self.clients.s3.get_object(Bucket=self.bucket, Key=key)
        async with response["Body"] as body:
            data: bytes = await body.read()
        self._remember(key, data)
        return data

    async def delete(self, keys: Sequence[str]) -> None:
        """Delete blobs; failures are logged (the lifecycle rule cleans up leftovers)."""
        keys = [k for k in keys if k]
        for key in keys:
            self._cache.pop(key, None)
        for i in range(0, len(keys), DELETE_BATCH):
            chunk = keys[i : i + DELETE_BATCH]
            try:
                await self.clients.s3.delete_objects(
                    Bucket=self.bucket, Delete={"Objects": [{"Key": k} for k in chunk]}
                )
            except Exception as exc:
                log.warning("could not delete %d claim-check object(s): %s", len(chunk), exc)

    def _remember(self, key: str, data: bytes) -> None:
        self._cache[key] = data
        self._cache.move_to_end(key)
        while len(self._cache) > CACHE_ENTRIES:
            self._cache.popitem(last=False)

"""Object storage for originals and results: a small interface, a local directory, and S3.

Both implementations are synchronous (boto3 is); the task calls them in a thread.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path, PurePosixPath
from typing import Any, Protocol, runtime_checkable
from urllib.parse import parse_qs, urlsplit


class ObjectNotFound(LookupError):
    """No object is stored under the key."""


class InvalidKey(ValueError):
    """A key that could name something outside the storage (absolute, ``..``, empty)."""


@runtime_checkable
class Storage(Protocol):
    """Where originals and results live, by key (``originals/img-1.jpg``)."""

    def get(self, key: str) -> bytes:
        """The object's bytes; raises :class:`ObjectNotFound`."""
        ...

    def put(self, key: str, data: bytes, content_type: str | None = None) -> None:
        """Store ``data`` under ``key``, replacing any object there, all or nothing."""
        ...

    def exists(self, key: str) -> bool:
        """Whether an object is stored under ``key``."""
        ...

    def delete(self, key: str) -> None:
        """Remove the object if there is one."""
        ...

    def location(self, key: str = "") -> str:
        """Where ``key`` (or the whole storage) is, for people: a path or an ``s3://`` URL."""
        ...


def check_key(key: str) -> str:
    """``key`` if it is a relative path without ``..``; raises :class:`InvalidKey`."""
    path = PurePosixPath(key)
    if not key or path.is_absolute() or ".." in path.parts or "\\" in key:
        raise InvalidKey(f"storage keys are relative paths without '..', got {key!r}")
    return key


class LocalStorage:
    """Objects as files under ``root`` (created on first write)."""

    def __init__(self, root: str | os.PathLike[str]) -> None:
        self.root = Path(root).resolve()

    def __repr__(self) -> str:
        return f"LocalStorage({str(self.root)!r})"

    def _path(self, key: str) -> Path:
        return self.root / check_key(key)

    def get(self, key: str) -> bytes:
        """Read the file of ``key``."""
        try:
            return self._path(key).read_bytes()
        except FileNotFoundError:
            raise ObjectNotFound(f"no object {key!r} in {self.root}") from None

    def put(self, key: str, data: bytes, content_type: str | None = None) -> None:
        """Write to a temporary file and rename it, so readers never see half a file."""
        path = self._path(key)
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
        try:
            with os.fdopen(fd, "wb") as f:
                f.write(data)
            os.replace(tmp, path)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise

    def exists(self, key: str) -> bool:
        """Whether the file exists."""
        return self._path(key).is_file()

    def delete(self, key: str) -> None:
        """Remove the file if it exists."""
        self._path(key).unlink(missing_ok=True)

    def location(self, key: str = "") -> str:
        """The file's path."""
        return str(self._path(key)) if key else str(self.root)


class S3Storage:
    """Objects in an S3 bucket (or anything speaking its API: MinIO, moto, R2...).

    ``prefix`` is prepended to every key. Pass a ready ``client``, or ``endpoint_url`` and
    ``region_name`` to build one with boto3's usual credential chain.
    """

    def __init__(
        self,
        bucket: str,
        *,
        prefix: str = "",
        client: Any = None,
        endpoint_url: str | None = None,
        region_name: str | None = None,
    ) -> None:
        if client is None:
            import boto3  # imported here: only S3 deployments need it

            client = boto3.client("s3", endpoint_url=endpoint_url, region_name=region_name)
        self.client = client
        self.bucket = bucket
        self.prefix = prefix.strip("/") + "/" if prefix.strip("/") else ""

    def __repr__(self) -> str:
        return f"S3Storage({self.location()!r})"

    def _key(self, key: str) -> str:
        return self.prefix + check_key(key)

    def ensure_bucket(self) -> None:
        """Create the bucket if it does not exist (for demos and tests)."""
        from botocore.exceptions import ClientError

        try:
            self.client.head_bucket(Bucket=self.bucket)
        except ClientError:
            self.client.create_bucket(Bucket=self.bucket)

    def get(self, key: str) -> bytes:
        """Download the object."""
        try:
            response = self.client.get_object(Bucket=self.bucket, Key=self._key(key))
        except self.client.exceptions.NoSuchKey:
            raise ObjectNotFound(f"no object {key!r} in {self.location()}") from None
        data: bytes = response["Body"].read()
        return data

    def put(self, key: str, data: bytes, content_type: str | None = None) -> None:
        """Upload the object (a single PUT: S3 never shows a partial object)."""
        extra = {"ContentType": content_type} if content_type else {}
        self.client.put_object(Bucket=self.bucket, Key=self._key(key), Body=data, **extra)

    def exists(self, key: str) -> bool:
        """``HEAD`` the object."""
        from botocore.exceptions import ClientError

        try:
            self.client.head_object(Bucket=self.bucket, Key=self._key(key))
        except ClientError as exc:
            if exc.response.get("Error", {}).get("Code") in ("404", "NoSuchKey", "NotFound"):
                return False
            raise
        return True

    def delete(self, key: str) -> None:
        """Delete the object (S3 deletes of missing keys succeed)."""
        self.client.delete_object(Bucket=self.bucket, Key=self._key(key))

    def location(self, key: str = "") -> str:
        """``s3://bucket/prefix/key``."""
        return f"s3://{self.bucket}/{self.prefix}{key}"


def storage_from_url(url: str) -> Storage:
    """A storage from a URL: a directory path (or ``file://``), or
    ``s3://bucket/prefix?endpoint_url=http://...&region=us-east-1``."""
    parts = urlsplit(url)
    if parts.scheme == "s3":
        query = {k: v[-1] for k, v in parse_qs(parts.query).items()}
        unknown = set(query) - {"endpoint_url", "region"}
        if unknown or not parts.netloc:
            raise ValueError(
                f"storage URL {url!r}: expected s3://bucket/prefix with optional "
                "?endpoint_url=...&region=..."
            )
        return S3Storage(
            parts.netloc,
            prefix=parts.path,
            endpoint_url=query.get("endpoint_url"),
            region_name=query.get("region"),
        )
    if parts.scheme == "file":
        return LocalStorage(parts.path)
    if parts.scheme:
        raise ValueError(f"storage URL {url!r}: expected a directory, file:// or s3://")
    return LocalStorage(url)

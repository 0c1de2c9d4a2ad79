"""The SQS engine's test URLs and a look at moto's queues from outside."""

from __future__ import annotations

import os
from collections.abc import Iterator
from types import SimpleNamespace
from typing import Any
from urllib.parse import urlencode

import boto3
import pytest


def make_sqs_url(endpoint: str, *, tracked: bool = True, **options: Any) -> str:
    """A fresh ``sqs://`` URL on ``endpoint``: its own queue prefix and (when ``tracked``)
    DynamoDB state table, both created on first use, plus any extra URL options."""
    tag = os.urandom(4).hex()
    query: dict[str, str] = {
        "region": "us-east-1",
        "endpoint_url": endpoint,
        "prefix": f"t{tag}-",
        "create": "true",
    }
    if tracked:
        query["state_table"] = f"conveyor-{tag}"
    query.update({k: str(v) for k, v in options.items()})
    return "sqs://?" + urlencode(query)


@pytest.fixture
def sqs_url(moto_endpoint: str) -> Iterator[str]:
    """A fresh ``sqs://`` URL with its own queue prefix and state table on the moto server."""
    yield make_sqs_url(moto_endpoint)


@pytest.fixture
def moto_aws(moto_endpoint: str) -> SimpleNamespace:
    """Plain boto3 clients (``sqs``, ``s3``) on the moto server, to look from outside."""
    kw: dict[str, Any] = {"region_name": "us-east-1", "endpoint_url": moto_endpoint}
    return SimpleNamespace(sqs=boto3.client("sqs", **kw), s3=boto3.client("s3", **kw))


def queue_depth(aws: SimpleNamespace, url: str) -> dict[str, int]:
    """SQS's counts of one queue: visible, hidden (in flight) and delayed messages."""
    attributes = aws.sqs.get_queue_attributes(QueueUrl=url, AttributeNames=["All"])["Attributes"]
    return {
        "visible": int(attributes["ApproximateNumberOfMessages"]),
        "hidden": int(attributes["ApproximateNumberOfMessagesNotVisible"]),
        "delayed": int(attributes["ApproximateNumberOfMessagesDelayed"]),
    }

"""The SQS engine's test URL: a fresh queue prefix and state table on the moto server."""

from __future__ import annotations

import os
from collections.abc import Iterator

import pytest


@pytest.fixture
def sqs_url(moto_endpoint: str) -> Iterator[str]:
    """A fresh ``sqs://`` URL with its own queue prefix and DynamoDB table, created on use."""
    tag = os.urandom(4).hex()
    yield (
        f"sqs://?region=us-east-1&endpoint_url={moto_endpoint}&prefix=t{tag}-"
        f"&state_table=conveyor-{tag}&create=true"
    )

"""The SQS engine's test server, URLs, and a look at its queues from outside.

The engine's tests talk to their own moto server, started here, which differs from
``moto_server`` in one way: DynamoDB requests are served one at a time. moto checks a
conditional write's condition and then applies it without a lock, so two concurrent
``PutItem``s with ``attribute_not_exists`` can both succeed; real DynamoDB applies each
conditional write atomically, and the engine relies on it (job-id dedup, lease tokens).
SQS requests (long polls included) stay concurrent.
"""

from __future__ import annotations

import os
import sys
import threading
from collections.abc import Iterable, Iterator
from types import SimpleNamespace
from typing import Any
from urllib.parse import urlencode

import boto3
import pytest

from tests.servers import aws_emulator, free_port


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


@pytest.fixture(scope="session")
def sqs_endpoint() -> Iterator[str]:
    """The URL of this session's moto server for the SQS engine (fails if it cannot start)."""
    port = free_port()
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join([os.getcwd(), os.environ.get("PYTHONPATH", "")]),
    }
    command = [sys.executable, "-m", "tests.servers.sqs_fixture", str(port)]
    with aws_emulator(command, port, env) as url:
        yield url


@pytest.fixture
def sqs_url(sqs_endpoint: str) -> Iterator[str]:
    """A fresh ``sqs://`` URL with its own queue prefix and state table on the moto server."""
    yield make_sqs_url(sqs_endpoint)


@pytest.fixture
def moto_aws(sqs_endpoint: str) -> SimpleNamespace:
    """Plain boto3 clients (``sqs``, ``s3``) on the same server, to look from outside."""
    kw: dict[str, Any] = {"region_name": "us-east-1", "endpoint_url": sqs_endpoint}
    return SimpleNamespace(sqs=boto3.client("sqs", **kw), s3=boto3.client("s3", **kw))


def queue_depth(aws: SimpleNamespace, url: str) -> dict[str, int]:
    """SQS's counts of one queue: visible, hidden (in flight) and delayed messages."""
    attributes = aws.sqs.get_queue_attributes(QueueUrl=url, AttributeNames=["All"])["Attributes"]
    return {
        "visible": int(attributes["ApproximateNumberOfMessages"]),
        "hidden": int(attributes["ApproximateNumberOfMessagesNotVisible"]),
        "delayed": int(attributes["ApproximateNumberOfMessagesDelayed"]),
    }


def serve(port: int) -> None:
    """Run moto's server on ``port`` with DynamoDB requests serialised (see the module doc)."""
    from moto.moto_server.werkzeug_app import (
        DomainDispatcherApplication,
        MotoRequestHandler,
        create_backend_app,
    )
    from werkzeug.serving import run_simple

    app = DomainDispatcherApplication(create_backend_app)
    dynamodb = threading.Lock()

    def wsgi(environ: dict[str, Any], start_response: Any) -> Iterable[bytes]:
        if str(environ.get("HTTP_X_AMZ_TARGET", "")).startswith("DynamoDB_"):
            with dynamodb:
                return list(app(environ, start_response))
        return app(environ, start_response)  # type: ignore[no-any-return]

    run_simple("127.0.0.1", port, wsgi, threaded=True, request_handler=MotoRequestHandler)


if __name__ == "__main__":
    serve(int(sys.argv[1]))

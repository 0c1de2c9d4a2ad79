"""The Lambda adapter, driven with SQS events in Lambda's shape, built from messages received
from moto's server; after each invocation the test deletes what Lambda would delete (every
record not in ``batchItemFailures``)."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Iterator
from types import SimpleNamespace
from typing import Any

import pytest

import conveyor
from conveyor.aws_lambda import SQSBatchHandler, handler
from conveyor.engines.sqs import SQSEngine
from tests.servers.sqs_fixture import make_sqs_url as make_url
from tests.servers.sqs_fixture import queue_depth as depth


class FakeContext:
    """The one method of Lambda's context object the adapter reads."""

    def __init__(self, seconds: float) -> None:
        self.deadline = time.monotonic() + seconds

    def get_remaining_time_in_millis(self) -> int:
        return int((self.deadline - time.monotonic()) * 1000)


class Queue:
    """One Conveyor queue seen from outside: receives batches as Lambda's poller does."""

    def __init__(self, aws: SimpleNamespace, app: conveyor.App, queue: str) -> None:
        self.aws = aws
        engine = app.run_sync(app.engine())
        assert isinstance(engine, SQSEngine)
        info = app.run_sync(engine.queues.get(queue))
        self.url, self.arn, self.dlq_url = info.url, info.arn, info.dlq_url

    def event(self, wait: int = 1) -> dict[str, Any]:
        """Receive up to 10 messages and wrap them as an SQS event for Lambda."""
        response = self.aws.sqs.receive_message(
            QueueUrl=self.url,
            MaxNumberOfMessages=10,
            VisibilityTimeout=60,
            WaitTimeSeconds=wait,
            MessageSystemAttributeNames=["All"],
            MessageAttributeNames=["All"],
        )
        return {"Records": [self._record(m) for m in response.get("Messages", [])]}

    def _record(self, m: dict[str, Any]) -> dict[str, Any]:
        return {
            "messageId": m["MessageId"],
            "receiptHandle": m["ReceiptHandle"],
            "body": m["Body"],
            "attributes": m.get("Attributes", {}),
            "messageAttributes": {
                name: {
                    "stringValue": value.get("StringValue"),
                    "stringListValues": [],
                    "binaryListValues": [],
                    "dataType": value["DataType"],
                }
                for name, value in m.get("MessageAttributes", {}).items()
            },
            "md5OfBody": m["MD5OfBody"],
            "eventSource": "aws:sqs",
            "eventSourceARN": self.arn,
            "awsRegion": "us-east-1",
        }

    def finish(self, event: dict[str, Any], response: dict[str, Any]) -> list[str]:
        """Do what Lambda does with the response: delete the records that succeeded. Returns
        the failed message ids."""
        failed = [f["itemIdentifier"] for f in response["batchItemFailures"]]
        for record in event["Records"]:
            if record["messageId"] not in failed:
                self.aws.sqs.delete_message(
                    QueueUrl=self.url, ReceiptHandle=record["receiptHandle"]
                )
        return failed


def ids_of(event: dict[str, Any]) -> dict[str, str]:
    """job id -> message id of each record."""
    return {json.loads(r["body"])["id"]: r["messageId"] for r in event["Records"]}


@pytest.fixture
def lambda_app(sqs_endpoint: str, request: pytest.FixtureRequest) -> Iterator[conveyor.App]:
    """An app on a fresh SQS URL; ``request.param`` holds extra URL options."""
    options = dict(getattr(request, "param", {}))
    app = conveyor.App(make_url(sqs_endpoint, **options))
    yield app
    app.close_sync()


@pytest.fixture
def lambda_handler(lambda_app: conveyor.App) -> Iterator[SQSBatchHandler]:
    """The handler under test, closed after the test."""
    h = handler(lambda_app)
    yield h
    h.close()


def test_partial_batch_response_reports_only_records_to_retry(
    lambda_app: conveyor.App, lambda_handler: SQSBatchHandler, moto_aws: SimpleNamespace
) -> None:
    app = lambda_app
    calls: dict[int, int] = {}

    @app.task(retries=2, backoff=conveyor.Backoff.fixed(1))
    async def work(n: int) -> int:
        calls[n] = calls.get(n, 0) + 1
        if n == 3 and calls[n] == 1:
            raise ConnectionError("upstream down")
        if n == 4:
            raise conveyor.Unrecoverable("bad input")
        return n * 10

    jobs = [work.enqueue_sync(n) for n in range(5)]
    queue = Queue(moto_aws, app, "default")
    event = queue.event()
    assert len(event["Records"]) == 5
    response = lambda_handler(event, FakeContext(60))
    by_job = ids_of(event)
    assert queue.finish(event, response) == [by_job[jobs[3].id]]
    assert [jobs[n].result_sync(timeout=5) for n in range(3)] == [0, 10, 20]
    dead = app.run_sync(app.dlq.show("default", jobs[4].id))
    assert dead.failures[-1].error_type.endswith("Unrecoverable")
    # The failed record's message is hidden for its backoff, then delivered again.
    assert depth(moto_aws, queue.url) == {"visible": 0, "hidden": 1, "delayed": 0}
    time.sleep(1.2)
    retry = queue.event()
    assert list(ids_of(retry)) == [jobs[3].id]
    assert queue.finish(retry, lambda_handler(retry, FakeContext(60))) == []
    assert jobs[3].result_sync(timeout=5) == 30
    record = jobs[3].refresh_sync()
    assert record.attempts == 2 and [a.error_type for a in record.failures] == ["ConnectionError"]
    assert depth(moto_aws, queue.url) == {"visible": 0, "hidden": 0, "delayed": 0}


@pytest.mark.parametrize("lambda_app", [{"tracked": False}], indirect=True)
def test_delivery_only_dead_letter_after_the_last_attempt_carries_the_log(
    lambda_app: conveyor.App, lambda_handler: SQSBatchHandler, moto_aws: SimpleNamespace
) -> None:
    app = lambda_app

    @app.task(name="reports.build", retries=1, backoff=conveyor.Backoff.fixed(0))
    async def build(n: int) -> None:
        raise LookupError(f"report {n} has no data")

    job = build.enqueue_sync(5)
    queue = Queue(moto_aws, app, "default")
    for _ in range(2):  # the retry travels as a new message carrying the first failure
        event = queue.event()
        assert list(ids_of(event)) == [job.id]
        assert queue.finish(event, lambda_handler(event, FakeContext(60))) == []
    assert queue.dlq_url is not None
    dead_letters = moto_aws.sqs.receive_message(QueueUrl=queue.dlq_url, VisibilityTimeout=0)
    (message,) = dead_letters["Messages"]
    body = json.loads(message["Body"])
    assert [(f["number"], f["error_type"]) for f in body["failures"]] == [
        (1, "LookupError"),
        (2, "LookupError"),
    ]
    assert all("raise LookupError" in f["traceback"] for f in body["failures"])
    dead = app.run_sync(app.dlq.show("default", job.id))
    assert dead.attempts == 2 and len(dead.failures) == 2
    assert depth(moto_aws, queue.url) == {"visible": 0, "hidden": 0, "delayed": 0}


@pytest.mark.parametrize("lambda_app", [{"fifo": "true"}], indirect=True)
def test_fifo_stops_at_the_first_failure_and_returns_the_rest(
    lambda_app: conveyor.App, lambda_handler: SQSBatchHandler, moto_aws: SimpleNamespace
) -> None:
    app = lambda_app
    ran: list[int] = []

    @app.task(retries=1, backoff=conveyor.Backoff.fixed(1))
    async def step(n: int) -> None:
        ran.append(n)
        if n == 1 and ran.count(1) == 1:
            raise RuntimeError("transient")

    jobs = [step.enqueue_sync(n) for n in range(4)]
    queue = Queue(moto_aws, app, "default")
    event = queue.event()
    by_job = ids_of(event)
    assert list(by_job) == [j.id for j in jobs]
    failed = queue.finish(event, lambda_handler(event, FakeContext(60)))
    assert ran == [0, 1]  # nothing after the failure ran
    assert failed == [by_job[j.id] for j in jobs[1:]]
    time.sleep(1.2)  # the failed head's backoff; the group waits behind it
    again = queue.event()
    assert list(ids_of(again)) == [j.id for j in jobs[1:]]
    assert queue.finish(again, lambda_handler(again, FakeContext(60))) == []
    assert ran == [0, 1, 1, 2, 3]


def test_jobs_still_running_near_the_function_timeout_are_given_back(
    lambda_app: conveyor.App, moto_aws: SimpleNamespace
) -> None:
    app = lambda_app

    @app.task(timeout=60)
    async def slow() -> None:
        await asyncio.sleep(30)

    job = slow.enqueue_sync()
    queue = Queue(moto_aws, app, "default")
    event = queue.event()
    h = handler(app, stop_margin=1.0)
    try:
        started = time.monotonic()
        response = h(event, FakeContext(1.3))  # 0.3 s of work, then the margin
        assert time.monotonic() - started < 5
    finally:
        h.close()
    assert queue.finish(event, response) == [event["Records"][0]["messageId"]]
    record = job.refresh_sync()
    assert record.state is conveyor.State.QUEUED and record.attempts == 0


def test_handler_needs_an_sqs_app(tmp_path: Any) -> None:
    app = conveyor.App(f"sqlite:///{tmp_path / 'x.db'}")
    h = handler(app)
    try:
        with pytest.raises(conveyor.ConfigurationError, match="SQS engine"):
            h({"Records": []}, FakeContext(10))
    finally:
        h.close()

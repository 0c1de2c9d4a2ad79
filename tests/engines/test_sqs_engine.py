"""SQS-specific guarantees, against moto's server over HTTP: long backoffs through
ChangeMessageVisibility, the failure log in the DLQ, the crash-loop safety net, FIFO, claim
check, redrive in batches, and request accounting."""

from __future__ import annotations

import asyncio
import json
import logging
import os
from collections.abc import Iterator
from types import SimpleNamespace
from typing import Any

import pytest
from click.testing import CliRunner

import conveyor
from conveyor.cli import cli
from conveyor.engines.sqs import SQSEngine, SQSOptions, StateTableRequired
from conveyor.testing import drain
from tests.servers.sqs_fixture import make_sqs_url as make_url
from tests.servers.sqs_fixture import queue_depth as depth

MODES = [pytest.param(True, id="state-table"), pytest.param(False, id="delivery-only")]


def queue_url(moto_aws: SimpleNamespace, engine: SQSEngine, queue: str, dlq: bool = False) -> str:
    name = engine.queues.sqs_name(queue, dlq=dlq)
    return str(moto_aws.sqs.get_queue_url(QueueName=name)["QueueUrl"])


def peek(moto_aws: SimpleNamespace, url: str) -> list[dict[str, Any]]:
    """Every message of a queue, left visible (visibility timeout 0)."""
    response = moto_aws.sqs.receive_message(
        QueueUrl=url,
        MaxNumberOfMessages=10,
        VisibilityTimeout=0,
        MessageAttributeNames=["All"],
        MessageSystemAttributeNames=["All"],
    )
    return list(response.get("Messages", []))


def capture(engine: SQSEngine, operation: str) -> list[dict[str, Any]]:
    """Record the parameters of every ``operation`` request the engine sends."""
    seen: list[dict[str, Any]] = []

    def hook(params: dict[str, Any], **_: Any) -> None:
        seen.append(params)

    engine.clients.sqs.meta.events.register(f"before-parameter-build.sqs.{operation}", hook)
    return seen


@pytest.fixture
def cli_url(monkeypatch: pytest.MonkeyPatch) -> Iterator[Any]:
    """Run ``conveyor`` commands against a given URL."""

    def run(url: str, *args: str) -> str:
        monkeypatch.setenv("CONVEYOR_URL", url)
        result = CliRunner().invoke(cli, list(args), catch_exceptions=False)
        assert result.exit_code == 0, result.output
        return result.output

    yield run


# -- URL ----------------------------------------------------------------------------------


def test_url_options_are_parsed_and_bad_ones_refused() -> None:
    options = SQSOptions.from_url(
        "sqs://?region=eu-west-1&prefix=app-&fifo=orders,mail&state_table=jobs&create=yes"
        "&max_receive_count=5&claim_check=s3://bucket/big&group_by=task"
    )
    assert options.region == "eu-west-1" and options.prefix == "app-" and options.create
    assert options.is_fifo("orders") and not options.is_fifo("images")
    assert options.tracked and options.max_receive_count == 5
    assert options.claim_check_bucket == ("bucket", "big")
    bad = {
        "sqs://?pool=3": "unknown SQS URL options",
        "sqs://?prefix=a.b": "prefix",
        "sqs://?max_receive_count=0": "max_receive_count",
        "sqs://?max_delay=50000": "12 hours",
        "sqs://?group_by=user": "group_by",
        "sqs://?claim_check=bucket": "s3://bucket/prefix",
        "sqs://host?region=x": "query",
    }
    for url, message in bad.items():
        with pytest.raises(conveyor.ConfigurationError, match=message):
            SQSOptions.from_url(url)


def test_queue_names_must_map_to_sqs_names(sqs_endpoint: str) -> None:
    engine = SQSEngine.from_url(make_url(sqs_endpoint), conveyor.SystemClock())
    assert engine.queues.sqs_name("media").endswith("-media")
    with pytest.raises(conveyor.ConfigurationError, match="letters, digits"):
        engine.queues.sqs_name("image.processing")
    with pytest.raises(conveyor.ConfigurationError, match="DLQ suffix"):
        engine.queues.sqs_name("media-dlq")


# -- backoff ------------------------------------------------------------------------------


async def test_thirty_minute_backoff_hides_the_failed_message_with_change_visibility(
    sqs_endpoint: str, moto_aws: SimpleNamespace
) -> None:
    clock = conveyor.ManualClock()
    app = conveyor.App(make_url(sqs_endpoint), clock=clock)
    calls = 0

    @app.task(retries=1, backoff=conveyor.Backoff.schedule(1800))
    async def flaky() -> str:
        nonlocal calls
        calls += 1
        if calls == 1:
            raise ConnectionError("storage unreachable")
        return "ok"

    try:
        engine = await app.engine()
        assert isinstance(engine, SQSEngine)
        changes = capture(engine, "ChangeMessageVisibilityBatch")
        handle = await flaky.enqueue()
        counts = await drain(app, run_scheduled=False)
        assert counts.retried == 1
        # SQS's DelaySeconds stops at 15 minutes; the failed message itself is hidden 30.
        timeouts = [e["VisibilityTimeout"] for c in changes for e in c["Entries"]]
        assert timeouts == [1800]
        url = queue_url(moto_aws, engine, "default")
        assert depth(moto_aws, url) == {"visible": 0, "hidden": 1, "delayed": 0}
        assert peek(moto_aws, url) == []
        await drain(app)  # the manual clock jumps 30 minutes; the state table says it is due
        assert await handle.result(timeout=10) == "ok"
        await handle.refresh()
        first = handle.failures[0]
        assert first.retry_at is not None and first.ended_at is not None
        assert first.retry_at - first.ended_at == 1800
    finally:
        await app.close()


async def test_delays_beyond_twelve_hours_are_refused_and_long_backoffs_capped(
    sqs_endpoint: str, caplog: pytest.LogCaptureFixture
) -> None:
    clock = conveyor.ManualClock()
    app = conveyor.App(make_url(sqs_endpoint), clock=clock)

    @app.task(retries=1, backoff=conveyor.Backoff.schedule(50_000))
    async def slow_retry() -> None:
        raise ValueError("no")

    try:
        with pytest.raises(conveyor.ConfigurationError, match="12 hours"):
            await slow_retry.enqueue(delay=13 * 3600)
        handle = await slow_retry.enqueue(delay=12 * 3600)  # the limit itself is fine
        clock.advance(12 * 3600)
        with caplog.at_level(logging.ERROR, logger="conveyor.engines.sqs"):
            await drain(app, run_scheduled=False)
        assert "beyond SQS's limit" in caplog.text
        await handle.refresh()
        assert handle.state is conveyor.State.SCHEDULED
        assert handle.record is not None
        assert handle.record.run_at == clock.now() + 43_200
    finally:
        await app.close()


# -- the failure log and the DLQ ----------------------------------------------------------


async def test_delivery_only_dead_letter_carries_every_attempt_to_the_dlq(
    sqs_endpoint: str, moto_aws: SimpleNamespace, cli_url: Any
) -> None:
    url = make_url(sqs_endpoint, tracked=False)
    app = conveyor.App(url)

    @app.task(name="reports.build", retries=2, backoff=conveyor.Backoff.fixed(0))
    async def build(n: int) -> None:
        raise LookupError(f"report {n} has no data")

    try:
        handle = await build.enqueue(7)
        # drain(run_scheduled=False): without a table there is no listing of scheduled jobs
        counts = await drain(app, run_scheduled=False)
        assert (counts.retried, counts.dead) == (2, 1)
        engine = await app.engine()
        assert isinstance(engine, SQSEngine)
        (message,) = peek(moto_aws, queue_url(moto_aws, engine, "default", dlq=True))
        body = json.loads(message["Body"])
        assert body["id"] == handle.id and body["attempts"] == 3
        assert [f["number"] for f in body["failures"]] == [1, 2, 3]
        assert all("raise LookupError" in f["traceback"] for f in body["failures"])
        assert "conveyor-dead" in message["MessageAttributes"]
        dead = await app.dlq.show("default", handle.id)
        assert [a.error_type for a in dead.failures] == ["LookupError"] * 3
        with pytest.raises(StateTableRequired, match="state_table="):
            await engine.list_jobs("default", conveyor.State.COMPLETED)
        other = await build.enqueue(8)
        with pytest.raises(StateTableRequired, match="state table"):
            await engine.get("default", other.id)
    finally:
        await app.close()
    shown = await asyncio.to_thread(cli_url, url, "dlq", "show", "default", handle.id)
    assert "attempt 3" in shown and "LookupError: report 7 has no data" in shown
    assert "Traceback" in shown


@pytest.mark.parametrize("tracked", MODES)
async def test_crash_loop_reaches_the_dlq_through_max_receive_count(
    sqs_endpoint: str, tracked: bool, cli_url: Any
) -> None:
    # Conveyor would allow 6 tries; SQS's redrive policy stops the job after 2 receives.
    url = make_url(sqs_endpoint, tracked=tracked, max_receive_count=2)
    app = conveyor.App(url)

    @app.task(name="oom", retries=5)
    async def oom() -> None:
        return None

    try:
        handle = await oom.enqueue()
        engine = await app.engine()
        for attempt in (1, 2):  # each worker dies: its 1-second lease runs out
            (record,) = await engine.reserve(["default"], 1, 1.0, "dies")
            assert record.attempts == attempt
            await asyncio.sleep(1.3)
        # The third receive finds the message gone: SQS moved it to the DLQ.
        assert await engine.reserve(["default"], 1, 1.0, "next") == []
        dead = await app.dlq.show("default", handle.id)
        last = dead.failures[-1]
        assert last.outcome is conveyor.Outcome.LOST
        assert last.error_type == "MaxReceiveCountExceeded"
        assert "redrive policy" in last.message and "after 2 receives" in last.message
    finally:
        await app.close()
    shown = await asyncio.to_thread(cli_url, url, "dlq", "show", "default", handle.id)
    assert "MaxReceiveCountExceeded" in shown


async def test_delivery_only_redrive_moves_dead_jobs_back_in_batches_with_history(
    sqs_endpoint: str, moto_aws: SimpleNamespace
) -> None:
    app = conveyor.App(make_url(sqs_endpoint, tracked=False))
    fixed: set[int] = set()

    @app.task(retries=0)
    async def fragile(n: int) -> int:
        if n not in fixed:
            raise ValueError(f"bad {n}")
        return n

    try:
        handles = await fragile.enqueue_many(range(12))
        assert (await drain(app, concurrency=4, run_scheduled=False)).dead == 12
        engine = await app.engine()
        assert isinstance(engine, SQSEngine)
        assert len(await app.dlq.list("default")) == 12
        before = engine.request_stats().by_operation
        chosen = [h.id for h in handles[:11]]
        assert await app.dlq.redrive("default", chosen) == 11
        after = engine.request_stats().by_operation
        # receive -> send -> delete, ten per request
        assert after["sqs.SendMessageBatch"] - before.get("sqs.SendMessageBatch", 0) == 2
        assert after["sqs.DeleteMessageBatch"] - before.get("sqs.DeleteMessageBatch", 0) == 2
        assert depth(moto_aws, queue_url(moto_aws, engine, "default", dlq=True))["visible"] == 1
        fixed.update(range(5))
        counts = await drain(app, concurrency=4, run_scheduled=False)
        assert (counts.completed, counts.dead) == (5, 6)
        again = await app.dlq.show("default", handles[5].id)
        assert [(a.round, a.number) for a in again.failures] == [(0, 1), (1, 1)]
    finally:
        await app.close()


# -- FIFO ---------------------------------------------------------------------------------


@pytest.mark.parametrize("tracked", MODES)
async def test_fifo_deduplicates_job_ids(
    sqs_endpoint: str, moto_aws: SimpleNamespace, tracked: bool
) -> None:
    app = conveyor.App(make_url(sqs_endpoint, tracked=tracked, fifo="true"))
    charged: list[str] = []

    @app.task(keep_completed=conveyor.Keep(count=0))
    async def charge(order: str) -> None:
        charged.append(order)

    try:
        first = await charge.enqueue("a", job_id="order-1")
        second = await charge.enqueue("b", job_id="order-1")
        assert first.created
        assert second.created is (not tracked)  # without a table SQS cannot tell
        engine = await app.engine()
        assert isinstance(engine, SQSEngine)
        url = queue_url(moto_aws, engine, "default")
        assert url.endswith(".fifo")
        if not tracked:
            # The job id is the MessageDeduplicationId: SQS dropped the repeated one.
            assert depth(moto_aws, url)["visible"] == 1
        await drain(app, run_scheduled=tracked)
        assert charged == ["a"]
        assert depth(moto_aws, url) == {"visible": 0, "hidden": 0, "delayed": 0}
        if tracked:
            # The record is gone (Keep(count=0)): the id may be used again at once, which
            # SQS's own 5-minute deduplication would have refused.
            third = await charge.enqueue("c", job_id="order-1")
            assert third.created
            await drain(app)
            assert charged == ["a", "c"]
    finally:
        await app.close()


async def test_fifo_runs_a_group_in_order_even_with_a_retry_and_concurrency(
    sqs_endpoint: str,
) -> None:
    app = conveyor.App(make_url(sqs_endpoint, fifo="true"), clock=conveyor.ManualClock())
    ran: list[int] = []
    failed_once: set[int] = set()

    @app.task(retries=2, backoff=conveyor.Backoff.fixed(5))
    async def step(n: int) -> None:
        await asyncio.sleep(0.01 * (6 - n))  # later jobs are quicker: order must not come
        ran.append(n)  # from speed
        if n == 2 and n not in failed_once:
            failed_once.add(n)
            raise RuntimeError("transient")

    try:
        for n in range(6):
            await step.enqueue(n)
        counts = await drain(app, concurrency=4)
        assert (counts.completed, counts.retried) == (6, 1)
        assert ran == [0, 1, 2, 2, 3, 4, 5]
    finally:
        await app.close()


# -- payload size and claim check ---------------------------------------------------------


@pytest.mark.parametrize("tracked", MODES)
async def test_claim_check_carries_large_payloads_through_s3_and_cleans_up(
    sqs_endpoint: str, moto_aws: SimpleNamespace, tracked: bool
) -> None:
    bucket = f"claims-{os.urandom(4).hex()}"
    url = make_url(
        sqs_endpoint,
        tracked=tracked,
        claim_check=f"s3://{bucket}/jobs",
        claim_check_threshold=1024,
    )
    app = conveyor.App(url, max_payload_bytes=3_000_000)
    seen: list[int] = []

    @app.task(keep_completed=conveyor.Keep(count=0))
    async def measure(data: str) -> None:
        seen.append(len(data))

    try:
        await measure.enqueue("x" * 1_500_000)  # over SQS's 1 MiB and DynamoDB's 400 KiB
        engine = await app.engine()
        assert isinstance(engine, SQSEngine) and engine.max_payload_bytes is None
        assert moto_aws.s3.list_objects_v2(Bucket=bucket)["KeyCount"] == 1
        (message,) = peek(moto_aws, queue_url(moto_aws, engine, "default"))
        assert len(message["Body"]) < 2048  # a pointer travels, not the data
        assert (await drain(app, run_scheduled=tracked)).completed == 1
        assert seen == [1_500_000]
        assert moto_aws.s3.list_objects_v2(Bucket=bucket)["KeyCount"] == 0
    finally:
        await app.close()


async def test_payload_over_the_queues_maximum_message_size_is_refused_with_advice(
    sqs_endpoint: str, moto_aws: SimpleNamespace
) -> None:
    url = make_url(sqs_endpoint, tracked=False)
    prefix = SQSOptions.from_url(url).prefix
    dlq = moto_aws.sqs.create_queue(QueueName=f"{prefix}small-dlq")["QueueUrl"]
    arn = moto_aws.sqs.get_queue_attributes(QueueUrl=dlq, AttributeNames=["QueueArn"])
    policy = {"deadLetterTargetArn": arn["Attributes"]["QueueArn"], "maxReceiveCount": "5"}
    moto_aws.sqs.create_queue(
        QueueName=f"{prefix}small",
        Attributes={"MaximumMessageSize": "2048", "RedrivePolicy": json.dumps(policy)},
    )
    app = conveyor.App(url, max_payload_bytes=100_000)

    @app.task(queue="small")
    async def upload(data: str) -> None:
        return None

    try:
        await upload.enqueue("x" * 1000)
        with pytest.raises(conveyor.PayloadTooLarge) as caught:
            await upload.enqueue("x" * 3000)
        assert "3,002 bytes" in str(caught.value) and "identifiers" in str(caught.value)
    finally:
        await app.close()


async def test_state_table_payload_limit_is_dynamodbs_item_size(sqs_endpoint: str) -> None:
    app = conveyor.App(make_url(sqs_endpoint), max_payload_bytes=1_000_000)

    @app.task
    async def upload(data: str) -> None:
        return None

    try:
        with pytest.raises(conveyor.PayloadTooLarge, match="393,216"):
            await upload.enqueue("x" * 500_000)
    finally:
        await app.close()


# -- pause, requests ----------------------------------------------------------------------


async def test_pause_is_a_queue_tag_every_engine_sees(sqs_endpoint: str) -> None:
    url = make_url(sqs_endpoint)
    producer, worker = conveyor.App(url), conveyor.App(url)

    @producer.task(queue="mail")
    async def send() -> None:
        return None

    worker.tasks[send.name] = send
    try:
        await send.enqueue()
        await (await producer.engine()).set_paused("mail", True)
        assert (await drain(worker)).completed == 0
        (stats,) = await worker.stats()
        assert stats.paused and stats.counts[conveyor.State.QUEUED] == 1
        await (await producer.engine()).set_paused("mail", False)
        engine = await worker.engine()
        assert isinstance(engine, SQSEngine)
        assert not await engine.queues.is_paused("mail", fresh=True)
        assert (await drain(worker)).completed == 1
    finally:
        await producer.close()
        await worker.close()


@pytest.mark.parametrize("tracked", MODES)
async def test_requests_per_job_at_steady_state_with_batching(
    sqs_endpoint: str, tracked: bool, capsys: pytest.CaptureFixture[str]
) -> None:
    app = conveyor.App(make_url(sqs_endpoint, tracked=tracked))

    @app.task(keep_completed=conveyor.Keep(count=0))
    async def noop(n: int) -> None:
        return None

    try:
        await noop.enqueue_many(range(100))
        counts = await drain(app, concurrency=10, run_scheduled=tracked)
        assert counts.completed == 100
        engine = await app.engine()
        assert isinstance(engine, SQSEngine)
        stats = engine.request_stats()
        ops = stats.by_operation
        assert stats.jobs_finished == 100 and stats.attempts == 100
        assert ops["sqs.SendMessageBatch"] == 10  # ten messages per request
        assert ops["sqs.ReceiveMessage"] <= 20
        assert ops["sqs.DeleteMessageBatch"] <= 30
        assert stats.service("sqs") / 100 < 0.8
        if tracked:  # one conditional write to store, one to lease, one to settle
            assert stats.service("dynamodb") / 100 < 3.3
        else:
            assert stats.service("dynamodb") == 0
        with capsys.disabled():
            mode = "state table" if tracked else "delivery-only"
            print(f"\n[{mode}] {stats.summary()}; {dict(sorted(ops.items()))}")
    finally:
        await app.close()


# -- stale and orphan messages ------------------------------------------------------------


async def test_left_over_and_orphan_messages_are_recognised(
    sqs_endpoint: str, moto_aws: SimpleNamespace
) -> None:
    app = conveyor.App(make_url(sqs_endpoint, commit_grace=1))
    ran: list[str] = []

    @app.task
    async def work(name: str) -> None:
        ran.append(name)

    try:
        await work.enqueue("real")
        engine = await app.engine()
        assert isinstance(engine, SQSEngine)
        url = queue_url(moto_aws, engine, "default")
        (original,) = peek(moto_aws, url)
        assert (await drain(app)).completed == 1
        # A second copy of a finished job's message (SQS delivers at least once): dropped.
        moto_aws.sqs.send_message(QueueUrl=url, MessageBody=original["Body"])
        # A message whose job was never written (its producer died between the two calls):
        # put back while the write could still land, dropped after commit_grace.
        ghost = json.loads(original["Body"]) | {"id": "ghost", "nonce": "0123"}
        moto_aws.sqs.send_message(QueueUrl=url, MessageBody=json.dumps(ghost))
        assert await engine.reserve(["default"], 10, 30, "w") == []
        assert depth(moto_aws, url) == {"visible": 0, "hidden": 1, "delayed": 0}
        await asyncio.sleep(2.2)
        assert await engine.reserve(["default"], 10, 30, "w") == []
        assert depth(moto_aws, url) == {"visible": 0, "hidden": 0, "delayed": 0}
        assert ran == ["real"]
    finally:
        await app.close()


async def test_a_message_that_is_not_a_conveyor_job_goes_to_the_dlq(
    sqs_endpoint: str, moto_aws: SimpleNamespace
) -> None:
    app = conveyor.App(make_url(sqs_endpoint))

    @app.task
    async def work() -> None:
        return None

    try:
        engine = await app.engine()
        assert isinstance(engine, SQSEngine)
        await engine.queues.get("default")  # created on first use
        url = queue_url(moto_aws, engine, "default")
        moto_aws.sqs.send_message(QueueUrl=url, MessageBody="hello from another system")
        assert await engine.reserve(["default"], 10, 30, "w") == []
        (moved,) = peek(moto_aws, queue_url(moto_aws, engine, "default", dlq=True))
        assert moved["Body"] == "hello from another system"
        assert "not a Conveyor job" in moved["MessageAttributes"]["conveyor-error"]["StringValue"]
        assert depth(moto_aws, url)["visible"] == 0
    finally:
        await app.close()


async def test_delivery_only_status_uses_queue_attributes(sqs_endpoint: str, cli_url: Any) -> None:
    url = make_url(sqs_endpoint, tracked=False)
    app = conveyor.App(url)

    @app.task(queue="mail")
    async def send(n: int) -> None:
        return None

    try:
        await send.enqueue_many(range(3))
        (stats,) = await app.stats()
        assert stats.queue == "mail" and stats.counts[conveyor.State.QUEUED] == 3
    finally:
        await app.close()
    status = await asyncio.to_thread(cli_url, url, "status")
    assert "mail" in status


async def test_metrics_export_the_engines_request_counts(sqs_url: str) -> None:
    from prometheus_client.parser import text_string_to_metric_families

    from conveyor.metrics import instrument

    app = conveyor.App(sqs_url)

    @app.task(queue="billing")
    async def noop(n: int) -> None:
        return None

    metrics = instrument(app)
    try:
        await noop.enqueue_many(range(12))
        await conveyor.testing.drain(app, concurrency=4)
        families = {
            f.name: f for f in text_string_to_metric_families((await metrics.render()).decode())
        }
        finished = families["conveyor_engine_jobs_finished"].samples[0].value
        assert finished == 12
        requests = {
            s.labels["operation"]: s.value
            for s in families["conveyor_engine_requests"].samples
            if s.name.endswith("_total")
        }
        assert requests.get("sqs.SendMessageBatch", 0) + requests.get("sqs.SendMessage", 0) >= 1
        assert sum(requests.values()) > 0
    finally:
        await app.close()

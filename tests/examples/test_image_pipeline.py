"""The seed's image pipeline (examples/image_pipeline), end to end on a real SQLite file.

Workers run for real with the seed's retry schedule scaled down by ``TIME_SCALE``; outputs
are opened with Pillow; S3 storage runs against moto's server over HTTP.
"""

from __future__ import annotations

import asyncio
import io
import os
import shlex
import subprocess
import sys
from collections.abc import AsyncIterator, Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner
from image_pipeline import (
    Convert,
    ImageProcessJob,
    ObjectNotFound,
    Pipeline,
    PipelineConfig,
    Resize,
    S3Storage,
    Settings,
    build_pipeline,
)
from image_pipeline.demo import demo
from image_pipeline.demo_run import MARKER
from image_pipeline.faults import FaultPlan
from image_pipeline.imaging import check_formats
from image_pipeline.repair import repair_original
from image_pipeline.samples import Sample, make_image, make_samples
from image_pipeline.storage import InvalidKey, LocalStorage
from PIL import Image as PILImage

import conveyor

#: 1 min -> 5 min -> 30 min becomes 0.03 s -> 0.15 s -> 0.9 s.
TIME_SCALE = 0.0005
SEED_DELAYS = (60.0, 300.0, 1800.0)
PIL_NAMES = {"webp": "WEBP", "avif": "AVIF", "jpeg": "JPEG"}
EXTENSIONS = {"webp": "webp", "avif": "avif", "jpeg": "jpg"}
FINISHED = (conveyor.State.COMPLETED, conveyor.State.DEAD)


@dataclass
class Harness:
    """A pipeline in a temporary directory, with the alerts it sent."""

    pipeline: Pipeline
    alerts: list[conveyor.Alert] = field(default_factory=list)

    async def add(self, sample: Sample) -> None:
        """Upload and register a sample's original."""
        await self.pipeline.add_image(sample.image_id, sample.user_id, sample.data, sample.ext)

    async def enqueue(self, sample: Sample, job_id: str | None = None) -> conveyor.Job[Any]:
        """Enqueue the sample's job (job id = image id unless given)."""
        payload = ImageProcessJob(
            image_id=sample.image_id, user_id=sample.user_id, operations=list(sample.operations)
        )
        return await self.pipeline.process_image.enqueue(payload, job_id=job_id or sample.image_id)

    async def run(self, job_ids: Sequence[str]) -> dict[str, conveyor.Job[Any]]:
        """Run a worker until every job in ``job_ids`` is completed or dead; return them."""
        app, queue = self.pipeline.app, self.pipeline.queue
        worker = conveyor.Worker(app, concurrency=5, idle_wait=0.05)
        running = asyncio.create_task(worker.run())
        try:
            async with asyncio.timeout(60):
                while True:
                    jobs = [await app.get_job(queue, i) for i in job_ids]
                    if all(j.state in FINISHED for j in jobs):
                        break
                    if running.done():
                        running.result()
                    await asyncio.sleep(0.02)
        finally:
            worker.stop()
            await running  # drains: dead-letter hooks and alerts have run after this
        return {j.id: await j.refresh() for j in jobs}


MakeHarness = Callable[..., Harness]


@pytest.fixture
async def make_harness(tmp_path: Path) -> AsyncIterator[MakeHarness]:
    """Build a pipeline in ``tmp_path`` (options passed on to ``build_pipeline``)."""
    built: list[Harness] = []

    def make(**options: Any) -> Harness:
        alerts: list[conveyor.Alert] = []
        pipeline = build_pipeline(
            tmp_path,
            f"sqlite:///{tmp_path / 'conveyor.db'}?poll_interval=0.005",
            time_scale=TIME_SCALE,
            alerts=conveyor.Alerts([conveyor.CallableSink(alerts.append)]),
            **options,
        )
        harness = Harness(pipeline, alerts)
        built.append(harness)
        return harness

    yield make
    for harness in built:
        await harness.pipeline.close()


def sample(index: int, image_id: str, *ops: Resize | Convert) -> Sample:
    """The picture of the demo's sample ``index``, under ``image_id``, with ``ops``."""
    data, ext, width, height = make_image(index, image_id, seed=7)
    return Sample(image_id, "user-1", data, ext, width, height, ops)


def expected_size(width: int, height: int, ops: Sequence[Resize | Convert]) -> tuple[int, int]:
    """Fit inside each resize box in turn, keeping the aspect ratio, never enlarging."""
    w, h = float(width), float(height)
    for op in ops:
        if isinstance(op, Resize):
            scale = min(1.0, op.width / w, op.height / h)
            w, h = w * scale, h * scale
    return round(w), round(h)


def expected_format(s: Sample) -> str:
    """The last Convert's format."""
    return [op.format for op in s.operations if isinstance(op, Convert)][-1]


# -- healthy images ---------------------------------------------------------------------------


async def test_healthy_images_are_processed_to_the_requested_size_and_format(
    make_harness: MakeHarness,
) -> None:
    harness = make_harness()
    pipeline = harness.pipeline
    # Seven samples cover every operation plan: shrink, never enlarge (a 2048 box on an
    # 800x600 original), two resizes in a row, webp/avif/jpeg, JPEG and PNG originals.
    samples = make_samples(7)
    for s in samples:
        await harness.add(s)
        await harness.enqueue(s)

    jobs = await harness.run([s.image_id for s in samples])

    for s in samples:
        job = jobs[s.image_id]
        assert job.state is conveyor.State.COMPLETED, job.failures
        fmt = expected_format(s)
        key = f"processed/{s.image_id}.{EXTENSIONS[fmt]}"
        data = pipeline.storage.get(key)
        assert await job.result() == {"processed_key": key, "size": len(data)}
        with PILImage.open(io.BytesIO(data)) as out:
            assert out.format == PIL_NAMES[fmt]
            want = expected_size(s.width, s.height, s.operations)
            assert abs(out.width - want[0]) <= 1 and abs(out.height - want[1]) <= 1, (
                s.image_id,
                out.size,
                want,
            )
            assert out.width <= s.width and out.height <= s.height  # never enlarged
        row = pipeline.db.get_image(s.image_id)
        assert row is not None
        assert (row.status, row.processed_key, row.processed_size) == ("processed", key, len(data))
        assert row.processed_at is not None
        assert job.percent == 100
        assert job.logs[0].message.startswith(f"downloaded originals/{s.image_id}.")
        assert job.logs[-1].message == f"uploaded {key}: {len(data):,} bytes"
    assert harness.alerts == []
    assert pipeline.db.failed_jobs() == []


async def test_a_small_image_is_never_enlarged(make_harness: MakeHarness) -> None:
    harness = make_harness()
    s = sample(7, "small", Resize(width=4000, height=4000), Convert(format="jpeg"))  # 640x480
    await harness.add(s)
    await harness.enqueue(s)

    await harness.run(["small"])

    with PILImage.open(io.BytesIO(harness.pipeline.storage.get("processed/small.jpg"))) as out:
        assert out.size == (640, 480)


async def test_processing_an_image_twice_leaves_the_same_state(make_harness: MakeHarness) -> None:
    harness = make_harness()
    pipeline = harness.pipeline
    s = sample(0, "twice", Resize(width=500, height=500), Convert(format="webp"))
    await harness.add(s)
    first = await harness.enqueue(s, job_id="twice-1")
    assert (await harness.enqueue(s, job_id="twice-1")).created is False  # same id: one job
    await harness.run(["twice-1"])
    row_before = pipeline.db.get_image("twice")
    data_before = pipeline.storage.get("processed/twice.webp")

    await harness.enqueue(s, job_id="twice-2")  # a second delivery of the same work
    jobs = await harness.run(["twice-2"])

    assert await jobs["twice-2"].result() == await first.result()
    assert pipeline.storage.get("processed/twice.webp") == data_before
    outputs = sorted(p.name for p in (pipeline.workdir / "storage" / "processed").iterdir())
    assert outputs == ["twice.webp"]
    row_after = pipeline.db.get_image("twice")
    assert row_before is not None and row_after is not None
    assert (row_after.status, row_after.processed_key, row_after.processed_size) == (
        row_before.status,
        row_before.processed_key,
        row_before.processed_size,
    )
    assert len(pipeline.db.images()) == 1


# -- faults -----------------------------------------------------------------------------------


async def test_a_flaky_download_succeeds_after_retries_spaced_by_the_scaled_schedule(
    make_harness: MakeHarness, tmp_path: Path
) -> None:
    s = sample(1, "flaky", Resize(width=300, height=300), Convert(format="webp"))
    plan = FaultPlan({"originals/flaky.jpg": 2}, tmp_path / "faults")
    harness = make_harness(faults=plan)
    await harness.add(s)
    await harness.enqueue(s)

    job = (await harness.run(["flaky"]))["flaky"]

    assert job.state is conveyor.State.COMPLETED
    assert job.attempts == 3
    failures = job.failures
    assert [(a.number, a.error_type) for a in failures] == [
        (1, "ConnectionError"),
        (2, "ConnectionError"),
    ]
    for attempt, delay in zip(failures, SEED_DELAYS, strict=False):
        assert attempt.retry_at is not None and attempt.ended_at is not None
        assert attempt.retry_at - attempt.ended_at == pytest.approx(delay * TIME_SCALE)
    # Each retry started only once its backoff was over.
    assert failures[1].started_at is not None and failures[0].retry_at is not None
    assert failures[1].started_at >= failures[0].retry_at
    assert job.record is not None and job.record.started_at is not None
    assert failures[1].retry_at is not None
    assert job.record.started_at >= failures[1].retry_at
    assert plan.failures_so_far("originals/flaky.jpg") == 2
    assert harness.pipeline.db.failed_jobs() == []
    assert harness.alerts == []


async def test_a_corrupt_image_is_dead_lettered_once_with_its_history_a_row_and_an_alert(
    make_harness: MakeHarness,
) -> None:
    harness = make_harness()
    pipeline = harness.pipeline
    s = sample(2, "corrupt", Convert(format="webp"))
    await pipeline.add_image("corrupt", s.user_id, s.data[: len(s.data) // 3], s.ext)
    await harness.enqueue(s)

    job = (await harness.run(["corrupt"]))["corrupt"]

    assert job.state is conveyor.State.DEAD
    assert job.attempts == 4  # 1 try + 3 retries
    history = job.failures
    assert [a.number for a in history] == [1, 2, 3, 4]
    assert {a.error_type for a in history} == {"image_pipeline.imaging.CorruptImage"}
    assert all("cannot be decoded" in a.message and a.traceback for a in history)
    for attempt, delay in zip(history[:3], SEED_DELAYS, strict=True):
        assert attempt.retry_at is not None and attempt.ended_at is not None
        assert attempt.retry_at - attempt.ended_at == pytest.approx(delay * TIME_SCALE)
    assert history[3].retry_at is None
    dead = await pipeline.app.dlq.list(pipeline.queue)
    assert [d.id for d in dead] == ["corrupt"]

    [row] = pipeline.db.failed_jobs()
    assert (row.queue, row.job_id, row.round) == ("image-processing", "corrupt", 0)
    assert row.payload == {
        "image_id": "corrupt",
        "user_id": s.user_id,
        "operations": [{"type": "convert", "format": "webp"}],
    }
    assert row.error.startswith("image_pipeline.imaging.CorruptImage: originals/corrupt.jpg")
    assert [a["number"] for a in row.attempts] == [1, 2, 3, 4]
    assert all(a["error_type"].endswith("CorruptImage") for a in row.attempts)
    assert row.resolved_at is None
    image = pipeline.db.get_image("corrupt")
    assert image is not None and image.status == "failed"

    [alert] = harness.alerts
    assert (alert.kind, alert.queue, alert.job_id) == ("dead_letter", "image-processing", "corrupt")
    assert "CorruptImage" in alert.message


async def test_redrive_after_repairing_the_original_completes_the_job(
    make_harness: MakeHarness,
) -> None:
    harness = make_harness()
    pipeline = harness.pipeline
    s = sample(3, "img-004", Resize(width=200, height=200), Convert(format="jpeg"))
    await pipeline.add_image(s.image_id, s.user_id, s.data[:100], s.ext)
    await harness.enqueue(s)
    await harness.run([s.image_id])

    await repair_original(pipeline, s.image_id)
    assert await pipeline.app.dlq.redrive(pipeline.queue, [s.image_id]) == 1
    job = (await harness.run([s.image_id]))[s.image_id]

    assert job.state is conveyor.State.COMPLETED
    assert await job.result() == {
        "processed_key": "processed/img-004.jpg",
        "size": len(pipeline.storage.get("processed/img-004.jpg")),
    }
    assert [(a.round, a.number) for a in job.failures] == [(0, 1), (0, 2), (0, 3), (0, 4)]
    [row] = pipeline.db.failed_jobs()
    assert row.resolved_at is not None
    image = pipeline.db.get_image(s.image_id)
    assert image is not None and image.status == "processed"
    assert len(harness.alerts) == 1


async def test_a_format_the_deployment_does_not_write_is_dead_lettered_without_retries(
    make_harness: MakeHarness,
) -> None:
    harness = make_harness(config=PipelineConfig(formats=("webp", "jpeg")))
    s = sample(0, "wants-avif", Convert(format="avif"))
    await harness.add(s)
    await harness.enqueue(s)

    job = (await harness.run(["wants-avif"]))["wants-avif"]

    assert job.state is conveyor.State.DEAD
    [attempt] = job.failures
    assert attempt.outcome is conveyor.Outcome.UNRECOVERABLE
    assert "does not write avif" in attempt.message
    assert len(harness.pipeline.db.failed_jobs()) == 1


def test_start_up_fails_clearly_when_pillow_cannot_write_a_format() -> None:
    with pytest.raises(conveyor.ConfigurationError, match=r"cannot write AVIF.*pillow-avif"):
        check_formats(["webp", "avif"], can_write=lambda fmt: fmt != "avif")
    check_formats(["webp", "jpeg"], can_write=lambda fmt: fmt != "avif")  # not asked: fine


# -- validation at enqueue --------------------------------------------------------------------


@pytest.mark.parametrize(
    ("payload", "complaint"),
    [
        (
            {"operations": [{"type": "resize", "width": -10, "height": 100}]},
            "operations.0.resize.width: Input should be greater than 0",
        ),
        (
            {"operations": [{"type": "resize", "width": 100, "height": 0}]},
            "operations.0.resize.height: Input should be greater than 0",
        ),
        (
            {"operations": [{"type": "convert", "format": "gif"}]},
            "operations.0.convert.format: Input should be 'webp', 'avif' or 'jpeg'",
        ),
        ({"operations": [{"type": "rotate", "degrees": 90}]}, "does not match any of the"),
        ({"operations": []}, "operations: List should have at least 1 item"),
        ({"image_id": "../../etc/passwd"}, "image_id: String should match pattern"),
    ],
)
async def test_invalid_operations_are_refused_at_enqueue_with_a_clear_error(
    make_harness: MakeHarness, payload: dict[str, Any], complaint: str
) -> None:
    harness = make_harness()
    good = {
        "image_id": "img-1",
        "user_id": "u-1",
        "operations": [{"type": "convert", "format": "webp"}],
    }
    with pytest.raises(conveyor.PayloadInvalid) as caught:
        await harness.pipeline.process_image.enqueue({**good, **payload}, job_id="bad")
    assert complaint in str(caught.value)
    with pytest.raises(conveyor.JobNotFound):
        await harness.pipeline.app.get_job(harness.pipeline.queue, "bad")


# -- storage ----------------------------------------------------------------------------------


def test_local_storage_refuses_keys_that_leave_its_directory(tmp_path: Path) -> None:
    storage = LocalStorage(tmp_path / "store")
    for key in ("../outside", "/etc/passwd", "", "a/../../b"):
        with pytest.raises(InvalidKey):
            storage.put(key, b"x")
    with pytest.raises(ObjectNotFound):
        storage.get("originals/missing.jpg")


def test_s3_storage_round_trip_against_moto_server(moto_endpoint: str) -> None:
    storage = S3Storage("conveyor-test-storage", prefix="tenant-1", endpoint_url=moto_endpoint)
    storage.ensure_bucket()
    storage.ensure_bucket()  # idempotent

    storage.put("originals/a.jpg", b"original bytes", "image/jpeg")

    assert storage.get("originals/a.jpg") == b"original bytes"
    assert storage.exists("originals/a.jpg")
    head = storage.client.head_object(
        Bucket="conveyor-test-storage", Key="tenant-1/originals/a.jpg"
    )
    assert head["ContentType"] == "image/jpeg"
    storage.delete("originals/a.jpg")
    assert not storage.exists("originals/a.jpg")
    with pytest.raises(ObjectNotFound, match=r"originals/a\.jpg"):
        storage.get("originals/a.jpg")
    assert storage.location("processed") == "s3://conveyor-test-storage/tenant-1/processed"


async def test_the_pipeline_processes_images_stored_in_s3(
    make_harness: MakeHarness, moto_endpoint: str
) -> None:
    storage = S3Storage("conveyor-test-pipeline", endpoint_url=moto_endpoint)
    storage.ensure_bucket()
    harness = make_harness(storage=storage)
    s = sample(5, "s3-image", Resize(width=400, height=400), Convert(format="webp"))
    await harness.add(s)
    await harness.enqueue(s)

    job = (await harness.run(["s3-image"]))["s3-image"]

    assert job.state is conveyor.State.COMPLETED
    with PILImage.open(io.BytesIO(storage.get("processed/s3-image.webp"))) as out:
        assert out.format == "WEBP"
        assert max(out.size) == 400
    assert not (harness.pipeline.workdir / "storage").exists()  # nothing went to disk


# -- configuration ----------------------------------------------------------------------------


def test_worker_settings_come_from_the_environment(tmp_path: Path) -> None:
    settings = Settings.from_env(
        {
            "PIPELINE_DIR": str(tmp_path),
            "PIPELINE_TIME_SCALE": "0.01",
            "PIPELINE_FORMATS": "webp,jpeg",
        }
    )
    assert settings.url == f"sqlite:///{tmp_path}/conveyor.db"
    assert (settings.time_scale, settings.formats) == (0.01, ("webp", "jpeg"))
    with pytest.raises(conveyor.ConfigurationError, match="PIPELINE_TIME_SCALE"):
        Settings.from_env({"PIPELINE_TIME_SCALE": "fast"})
    with pytest.raises(conveyor.ConfigurationError, match="gif"):
        Settings.from_env({"PIPELINE_FORMATS": "webp,gif"})


def test_the_time_scale_shortens_only_the_backoff(tmp_path: Path) -> None:
    pipeline = build_pipeline(tmp_path, time_scale=0.01)
    options = pipeline.process_image.options
    assert (options.queue, options.retries, options.timeout) == ("image-processing", 3, 300)
    assert [options.backoff.delay(n) for n in (1, 2, 3)] == pytest.approx([0.6, 3.0, 18.0])
    real = build_pipeline(tmp_path / "real")
    assert [real.process_image.options.backoff.delay(n) for n in (1, 2, 3)] == [60, 300, 1800]
    with pytest.raises(conveyor.ConfigurationError, match="time_scale"):
        build_pipeline(tmp_path, time_scale=0)


# -- the demo ---------------------------------------------------------------------------------


def run_demo(directory: Path, *extra: str) -> str:
    """Run ``conveyor demo`` with small sizes; return its output (it must succeed)."""
    args = ["--images", "6", "--dir", str(directory), "--time-scale", str(TIME_SCALE), *extra]
    result = CliRunner().invoke(demo, args, catch_exceptions=False)
    assert result.exit_code == 0, result.output
    return result.output


def printed_commands(output: str) -> list[str]:
    """The shell commands the summary prints (comments dropped)."""
    lines = [line.split("  #")[0].strip() for line in output.splitlines()]
    return [line for line in lines if line.startswith(("conveyor ", "python -m "))]


def test_the_demo_runs_end_to_end_and_its_printed_commands_work(tmp_path: Path) -> None:
    directory = tmp_path / "demo"
    output = run_demo(directory)

    assert "Created" in output
    assert "processed      5 of 6 images (1 after retries: img-002)" in output
    assert "dead-lettered  1: img-003 (CorruptImage after 4 attempts)" in output
    assert "1 row(s) in" in output and "1 alert(s) in" in output
    assert "saved" in output
    assert len(list((directory / "storage" / "processed").iterdir())) == 5
    commands = printed_commands(output)
    assert commands == [
        "conveyor status --app image_pipeline.worker:app",
        "conveyor job img-002 --app image_pipeline.worker:app",
        "conveyor dlq list image-processing --app image_pipeline.worker:app",
        "conveyor dlq show image-processing img-003 --app image_pipeline.worker:app",
        "python -m image_pipeline.repair img-003",
        "conveyor dlq redrive image-processing img-003 --app image_pipeline.worker:app",
        "conveyor worker image_pipeline.worker:app --burst",
    ]
    assert f"export PIPELINE_DIR={directory}" in output

    # Every printed command works, in a fresh process, as a user would run it.
    env = {**os.environ, "PIPELINE_DIR": str(directory)}
    outputs = []
    for command in commands:
        argv = shlex.split(command)
        if argv[0] == "conveyor":
            argv = [sys.executable, "-m", "conveyor.cli", *argv[1:]]
        else:
            argv = [sys.executable, *argv[1:]]
        done = subprocess.run(
            argv, env=env, cwd=tmp_path, capture_output=True, text=True, timeout=60
        )
        assert done.returncode == 0, (command, done.stdout, done.stderr)
        outputs.append(done.stdout + done.stderr)
    assert "attempt 2" in outputs[1] and "ConnectionError" in outputs[1]
    assert "img-003" in outputs[2]
    assert "attempt 4" in outputs[3] and "Traceback" in outputs[3]
    assert "redrove 1 job(s)" in outputs[5]

    # After the fix and the redrive, the image is processed and its failure resolved.
    check = build_pipeline(directory)
    image = check.db.get_image("img-003")
    assert image is not None and image.status == "processed"
    [row] = check.db.failed_jobs()
    assert row.resolved_at is not None
    check.db.close()


def test_running_the_demo_twice_starts_afresh(tmp_path: Path) -> None:
    directory = tmp_path / "demo"
    run_demo(directory, "--fail-rate", "0")
    output = run_demo(directory, "--fail-rate", "0")

    assert f"Reusing {directory}" in output
    assert "processed      6 of 6 images" in output
    assert "dead-lettered  0" in output
    assert (directory / MARKER).exists()


def test_the_demo_refuses_a_directory_it_did_not_create(tmp_path: Path) -> None:
    (tmp_path / "notes.txt").write_text("mine")

    result = CliRunner().invoke(demo, ["--images", "2", "--dir", str(tmp_path)])

    assert result.exit_code != 0
    assert "was not created by the demo" in result.output
    assert (tmp_path / "notes.txt").read_text() == "mine"


def test_the_demo_runs_with_worker_processes(tmp_path: Path) -> None:
    directory = tmp_path / "demo"
    output = run_demo(directory, "--workers", "2", "--images", "4")

    assert "Workers: 2 x concurrency 5 in 2 processes" in output
    assert "dead-lettered  1" in output
    logs = sorted(p.name for p in directory.glob("worker-*.log"))
    assert logs == ["worker-1.log", "worker-2.log"]
    assert "failed_jobs row #1" in output

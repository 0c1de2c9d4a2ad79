"""The seed's image pipeline on Conveyor: the ``process_image`` task and its dead-letter hook.

``build_pipeline(workdir)`` wires an App, storage and the app database together, so tests,
the demo and worker processes (:mod:`image_pipeline.worker`) all build the same thing.
"""

from __future__ import annotations

import asyncio
import json
import os
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from typing_extensions import TypedDict

import conveyor
from image_pipeline import imaging
from image_pipeline.config import TASK_NAME, PipelineConfig, sqlite_url
from image_pipeline.db import Database, Image
from image_pipeline.faults import FaultPlan, FlakyStorage
from image_pipeline.models import Convert, ImageProcessJob, Resize
from image_pipeline.storage import LocalStorage, Storage, check_key


class ProcessResult(TypedDict):
    """What ``process_image`` returns (the seed's ``{ processedKey, size }``)."""

    processed_key: str
    size: int


class ImageNotFound(LookupError):
    """The job names an image the app database does not know (yet).

    Retried like any error: the usual cause is a producer that enqueued before committing.
    """


@dataclass
class Pipeline:
    """Everything the pipeline is made of, built by :func:`build_pipeline`."""

    app: conveyor.App
    process_image: conveyor.Task[ProcessResult]
    storage: Storage
    db: Database
    config: PipelineConfig
    workdir: Path

    @property
    def queue(self) -> str:
        """The queue the task uses (``image-processing``)."""
        return self.config.queue

    async def add_image(self, image_id: str, user_id: str, data: bytes, ext: str) -> Image:
        """Upload an original as ``originals/<image_id>.<ext>`` and (re)register it in the
        database as "uploaded" — what the application's upload endpoint would do."""
        key = check_key(f"originals/{image_id}.{ext}")
        await asyncio.to_thread(self.storage.put, key, data)
        return await asyncio.to_thread(
            self.db.save_image,
            image_id,
            user_id=user_id,
            original_key=key,
            original_size=len(data),
        )

    async def close(self) -> None:
        """Close the engine connection of this event loop and the database pool."""
        await self.app.close()
        self.db.close()


def build_pipeline(
    workdir: str | os.PathLike[str],
    url: str | None = None,
    *,
    config: PipelineConfig | None = None,
    time_scale: float | None = None,
    storage: Storage | None = None,
    db_url: str | None = None,
    alerts: conveyor.Alerts | None = None,
    faults: FaultPlan | None = None,
) -> Pipeline:
    """Build the pipeline for ``workdir``.

    Defaults: the queue in ``<workdir>/conveyor.db`` (or ``url``), the app database in
    ``<workdir>/app.db`` (or ``db_url``), objects under ``<workdir>/storage`` (or
    ``storage``). ``time_scale`` overrides ``config.time_scale``: it multiplies the backoff
    delays and nothing else. ``faults`` makes the task's downloads fail as planned (the demo).

    Raises :class:`conveyor.ConfigurationError` at once if the installed Pillow cannot write
    one of ``config.formats``.
    """
    workdir = Path(workdir).resolve()
    config = config or PipelineConfig()
    if time_scale is not None:
        config = replace(config, time_scale=time_scale)
    imaging.check_formats(config.formats)

    app = conveyor.App(url or sqlite_url(workdir / "conveyor.db"), alerts=alerts)
    storage = storage if storage is not None else LocalStorage(workdir / "storage")
    db = Database(db_url or sqlite_url(workdir / "app.db"))
    # The storage as the task sees it: with the demo's injected faults, when there are some.
    objects: Storage = FlakyStorage(storage, faults) if faults else storage
    policy = config.retry

    @app.task(
        name=TASK_NAME,
        queue=config.queue,  # "image-processing"
        retries=policy.retries,  # 3 retries: 4 tries in all, then the dead-letter queue
        backoff=policy.backoff(config.time_scale),  # 1 min -> 5 min -> 30 min, x time_scale
        timeout=policy.timeout,  # 300 s per attempt
        keep_completed=conveyor.Keep(count=config.keep_completed),
    )
    async def process_image(job: conveyor.Job[ImageProcessJob]) -> ProcessResult:
        """Resize/convert one image: load its record, download the original, apply the
        operations with Pillow, upload ``processed/<image_id>.<ext>``, update the record.

        Idempotent: the output key and bytes depend only on the image and the operations, and
        the upload and the update overwrite, so a second run leaves the same state.
        """
        request = job.payload
        unwritable = {op.format for op in request.operations if isinstance(op, Convert)}
        if unwritable - set(config.formats):
            raise conveyor.Unrecoverable(
                f"this deployment does not write {', '.join(sorted(unwritable))} "
                f"(PipelineConfig.formats = {', '.join(config.formats)}); retrying cannot help"
            )
        await job.progress(0)
        image = await asyncio.to_thread(db.get_image, request.image_id)
        if image is None:
            raise ImageNotFound(f"image {request.image_id!r} is not in the app database")
        original = await asyncio.to_thread(objects.get, image.original_key)
        picture = await asyncio.to_thread(imaging.decode, original, image.original_key)
        await job.log(
            f"downloaded {image.original_key}: {len(original):,} bytes, "
            f"{picture.width}x{picture.height} {picture.format}"
        )
        fmt = imaging.target_format(request.operations, imaging.source_format(picture))

        steps = len(request.operations)
        for index, op in enumerate(request.operations):
            await job.progress(round(index / steps * 80))
            if isinstance(op, Resize):
                before = f"{picture.width}x{picture.height}"
                picture = await asyncio.to_thread(imaging.resize, picture, op)
                await job.log(
                    f"resize to fit {op.width}x{op.height}: {before} -> "
                    f"{picture.width}x{picture.height}"
                )
            else:
                await job.log(f"convert to {op.format}")  # applied by the encoder below
        encoded = await asyncio.to_thread(imaging.encode, picture, fmt, config.quality)
        await job.progress(80)

        key = f"processed/{request.image_id}.{encoded.extension}"
        await asyncio.to_thread(objects.put, key, encoded.data, imaging.CONTENT_TYPES[fmt])
        size = len(encoded.data)
        await asyncio.to_thread(db.mark_processed, request.image_id, job.queue, job.id, key, size)
        await job.log(f"uploaded {key}: {size:,} bytes")
        await job.progress(100)
        return {"processed_key": key, "size": size}

    @process_image.on_dead_letter
    async def record_failure(job: conveyor.Job[ImageProcessJob], attempt: conveyor.Attempt) -> None:
        """Write the ``failed_jobs`` row of a job that failed for good (the seed's
        ``failedJob.create``) and mark its image "failed".

        Conveyor calls this once per dead-lettered job, after its last attempt, never per
        attempt. The alert follows from the app's :class:`conveyor.Alerts` (the seed's
        ``sendAlert``), which also folds a burst of identical failures into one summary.
        """
        payload = _stored_payload(job)
        image_id = payload.get("image_id") if isinstance(payload, dict) else None
        await asyncio.to_thread(
            db.record_failure,
            queue=job.queue,
            job_id=job.id,
            round=attempt.round,
            payload=payload,
            error=f"{attempt.error_type}: {attempt.message}",
            attempts=[_attempt_summary(a) for a in job.failures],
            image_id=image_id if isinstance(image_id, str) else None,
        )

    return Pipeline(app, process_image, storage, db, config, workdir)


def _stored_payload(job: conveyor.Job[Any]) -> Any:
    """The payload as stored (JSON), even when it no longer validates."""
    if job.record is None:
        return None
    try:
        return json.loads(job.record.payload)
    except ValueError:
        return job.record.payload.decode(errors="replace")


def _attempt_summary(attempt: conveyor.Attempt) -> dict[str, Any]:
    """An attempt without its traceback (``conveyor dlq show`` has those)."""
    summary = attempt.to_dict()
    summary.pop("traceback", None)
    summary["outcome"] = attempt.outcome.value
    return summary

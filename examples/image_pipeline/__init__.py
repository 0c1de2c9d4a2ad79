"""The seed's image pipeline on Conveyor: a real, importable example (issue 3).

::

    from image_pipeline import ImageProcessJob, Resize, Convert, build_pipeline

    pipeline = build_pipeline("./work")              # queue, app.db and storage in ./work
    await pipeline.add_image("img-1", "user-1", data, "jpg")
    await pipeline.process_image.enqueue(
        ImageProcessJob(image_id="img-1", user_id="user-1",
                        operations=[Resize(width=800, height=800), Convert(format="webp")]),
        job_id="img-1",
    )

Workers import :mod:`image_pipeline.worker` (``conveyor worker image_pipeline.worker:app``);
``conveyor demo`` (:mod:`image_pipeline.demo`) runs the whole thing with faults injected.
"""

from image_pipeline.config import FAST_TIME_SCALE, QUEUE, PipelineConfig, RetryPolicy, Settings
from image_pipeline.db import Database, FailedJob, Image
from image_pipeline.imaging import CorruptImage
from image_pipeline.models import Convert, ImageProcessJob, Operation, Resize
from image_pipeline.pipeline import ImageNotFound, Pipeline, ProcessResult, build_pipeline
from image_pipeline.storage import LocalStorage, ObjectNotFound, S3Storage, Storage

__all__ = [
    "FAST_TIME_SCALE",
    "QUEUE",
    "Convert",
    "CorruptImage",
    "Database",
    "FailedJob",
    "Image",
    "ImageNotFound",
    "ImageProcessJob",
    "LocalStorage",
    "ObjectNotFound",
    "Operation",
    "Pipeline",
    "PipelineConfig",
    "ProcessResult",
    "Resize",
    "RetryPolicy",
    "S3Storage",
    "Settings",
    "Storage",
    "build_pipeline",
]

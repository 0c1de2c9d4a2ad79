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

The names below are loaded on first use: the ``conveyor`` CLI imports
:mod:`image_pipeline.demo` for every command, and should not pay for SQLAlchemy and Pillow.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # what type checkers and IDEs see
    from image_pipeline.config import (
        FAST_TIME_SCALE as FAST_TIME_SCALE,
    )
    from image_pipeline.config import (
        QUEUE as QUEUE,
    )
    from image_pipeline.config import (
        PipelineConfig as PipelineConfig,
    )
    from image_pipeline.config import (
        RetryPolicy as RetryPolicy,
    )
    from image_pipeline.config import (
        Settings as Settings,
    )
    from image_pipeline.db import (
        Database as Database,
    )
    from image_pipeline.db import (
        FailedJob as FailedJob,
    )
    from image_pipeline.db import (
        Image as Image,
    )
    from image_pipeline.imaging import (
        CorruptImage as CorruptImage,
    )
    from image_pipeline.models import (
        Convert as Convert,
    )
    from image_pipeline.models import (
        ImageProcessJob as ImageProcessJob,
    )
    from image_pipeline.models import (
        Operation as Operation,
    )
    from image_pipeline.models import (
        Resize as Resize,
    )
    from image_pipeline.pipeline import (
        ImageNotFound as ImageNotFound,
    )
    from image_pipeline.pipeline import (
        Pipeline as Pipeline,
    )
    from image_pipeline.pipeline import (
        ProcessResult as ProcessResult,
    )
    from image_pipeline.pipeline import (
        build_pipeline as build_pipeline,
    )
    from image_pipeline.storage import (
        LocalStorage as LocalStorage,
    )
    from image_pipeline.storage import (
        ObjectNotFound as ObjectNotFound,
    )
    from image_pipeline.storage import (
        S3Storage as S3Storage,
    )
    from image_pipeline.storage import (
        Storage as Storage,
    )

_EXPORTS = {
    "config": ("FAST_TIME_SCALE", "QUEUE", "PipelineConfig", "RetryPolicy", "Settings"),
    "db": ("Database", "FailedJob", "Image"),
    "imaging": ("CorruptImage",),
    "models": ("Convert", "ImageProcessJob", "Operation", "Resize"),
    "pipeline": ("ImageNotFound", "Pipeline", "ProcessResult", "build_pipeline"),
    "storage": ("LocalStorage", "ObjectNotFound", "S3Storage", "Storage"),
}
_MODULE_OF = {name: module for module, names in _EXPORTS.items() for name in names}

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


def __getattr__(name: str) -> Any:
    module = _MODULE_OF.get(name)
    if module is None:
        raise AttributeError(f"module 'image_pipeline' has no attribute {name!r}")
    value = getattr(importlib.import_module(f"image_pipeline.{module}"), name)
    globals()[name] = value
    return value

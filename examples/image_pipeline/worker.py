"""The pipeline as worker processes and the CLI import it, configured from the environment.

::

    conveyor worker image_pipeline.worker:app --concurrency 5
    conveyor dlq list image-processing --app image_pipeline.worker:app

See :class:`image_pipeline.config.Settings` for the variables (``PIPELINE_DIR``,
``CONVEYOR_URL``, ``PIPELINE_DB_URL``, ``PIPELINE_STORAGE``, ``PIPELINE_TIME_SCALE``).
Importing this module touches no file: the queue, the database and the storage are opened
on first use.
"""

from __future__ import annotations

import conveyor
from image_pipeline.config import ALERTS_FILE, PipelineConfig, Settings
from image_pipeline.faults import FaultPlan
from image_pipeline.pipeline import Pipeline, build_pipeline
from image_pipeline.sinks import JsonLinesSink
from image_pipeline.storage import storage_from_url


def from_settings(settings: Settings) -> Pipeline:
    """Build the pipeline described by ``settings``; alerts go to the log and to
    ``<workdir>/alerts.jsonl``."""
    return build_pipeline(
        settings.workdir,
        settings.url,
        config=PipelineConfig(formats=settings.formats),
        time_scale=settings.time_scale,
        storage=storage_from_url(settings.storage) if settings.storage else None,
        db_url=settings.db_url,
        alerts=conveyor.Alerts([conveyor.LogSink(), JsonLinesSink(settings.workdir / ALERTS_FILE)]),
        faults=FaultPlan.load(settings.faults) if settings.faults else None,
    )


settings = Settings.from_env()
pipeline = from_settings(settings)
#: The conveyor.App, for ``--app image_pipeline.worker:app``.
app = pipeline.app
process_image = pipeline.process_image

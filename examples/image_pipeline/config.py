"""The pipeline's settings: the seed's retry policy, the demo's time scale, and the
environment variables the worker module reads."""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import cast, get_args

import conveyor
from image_pipeline.models import OutputFormat

QUEUE = "image-processing"
TASK_NAME = "image_pipeline.process_image"
#: The app as worker processes and the CLI name it (``--app``).
WORKER_APP = "image_pipeline.worker:app"
DEFAULT_DIR = "conveyor-demo"
#: Where worker processes append their alerts, in the working directory (JSON lines).
ALERTS_FILE = "alerts.jsonl"
#: ``--fast`` in the demo: one minute of backoff takes 0.3 s (1 min -> 5 min -> 30 min becomes
#: 0.3 s -> 1.5 s -> 9 s), so every retry of the seed's schedule fits in a short demo.
FAST_TIME_SCALE = 1 / 200
#: The seed's ``removeOnComplete: { count: 1000 }``.
KEEP_COMPLETED = 1000
#: Every output format the payload model accepts.
ALL_FORMATS: tuple[OutputFormat, ...] = get_args(OutputFormat)


@dataclass(frozen=True)
class RetryPolicy:
    """The seed's rules: 3 retries (4 tries in all) 1 min -> 5 min -> 30 min apart, a timeout
    on every attempt, then the dead-letter queue."""

    retries: int = 3
    delays: tuple[float, ...] = (60.0, 300.0, 1800.0)
    timeout: float = 300.0

    def backoff(self, time_scale: float = 1.0) -> conveyor.Backoff:
        """The retry schedule with every delay multiplied by ``time_scale``.

        Only waiting is scaled. The timeout is not: it bounds real work (a download, a
        resize), which does not get faster in a demo, so scaling it would only make healthy
        jobs time out.
        """
        if time_scale <= 0:
            raise conveyor.ConfigurationError(
                f"time_scale must be > 0 (1.0 is real time), got {time_scale}"
            )
        return conveyor.Backoff.schedule(*(d * time_scale for d in self.delays))


@dataclass(frozen=True)
class PipelineConfig:
    """What the pipeline's task is built from. Every field has the seed's value by default.

    ``time_scale`` multiplies the backoff delays (``FAST_TIME_SCALE`` in the demo); the code
    path is the same at every scale. ``formats`` are the output formats this deployment must be
    able to write: start-up fails with a clear error if the installed Pillow cannot.
    """

    queue: str = QUEUE
    retry: RetryPolicy = field(default_factory=RetryPolicy)
    time_scale: float = 1.0
    formats: tuple[OutputFormat, ...] = ALL_FORMATS
    #: Encoder quality (1-100) for webp, avif and jpeg.
    quality: int = 80
    keep_completed: int = KEEP_COMPLETED


@dataclass(frozen=True)
class Settings:
    """Where a worker process finds everything, read from the environment.

    ``PIPELINE_DIR`` (default ``./conveyor-demo``): the working directory;
    ``CONVEYOR_URL`` (default ``sqlite:///$PIPELINE_DIR/conveyor.db``): the queue;
    ``PIPELINE_DB_URL`` (default ``sqlite:///$PIPELINE_DIR/app.db``): the app database;
    ``PIPELINE_STORAGE`` (default ``$PIPELINE_DIR/storage``): a directory or
    ``s3://bucket/prefix?endpoint_url=...``;
    ``PIPELINE_TIME_SCALE`` (default 1): the backoff scale;
    ``PIPELINE_FORMATS`` (default ``webp,avif,jpeg``): the output formats to support;
    ``PIPELINE_FAULTS``: the demo's fault plan (JSON file); unset in real deployments.
    """

    workdir: Path
    url: str
    db_url: str | None = None
    storage: str | None = None
    time_scale: float = 1.0
    formats: tuple[OutputFormat, ...] = ALL_FORMATS
    faults: Path | None = None

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> Settings:
        """Read the settings from ``env`` (default: ``os.environ``)."""
        env = os.environ if env is None else env
        workdir = Path(env.get("PIPELINE_DIR") or DEFAULT_DIR).resolve()
        scale_text = env.get("PIPELINE_TIME_SCALE") or "1"
        try:
            time_scale = float(scale_text)
        except ValueError:
            raise conveyor.ConfigurationError(
                f"PIPELINE_TIME_SCALE must be a number such as 1 or 0.005, got {scale_text!r}"
            ) from None
        faults = env.get("PIPELINE_FAULTS")
        formats = tuple(
            f.strip() for f in (env.get("PIPELINE_FORMATS") or "").split(",") if f.strip()
        )
        unknown = set(formats) - set(ALL_FORMATS)
        if unknown:
            raise conveyor.ConfigurationError(
                f"PIPELINE_FORMATS may name webp, avif and jpeg, got {', '.join(sorted(unknown))}"
            )
        return cls(
            workdir=workdir,
            url=env.get("CONVEYOR_URL") or sqlite_url(workdir / "conveyor.db"),
            db_url=env.get("PIPELINE_DB_URL") or None,
            storage=env.get("PIPELINE_STORAGE") or None,
            time_scale=time_scale,
            formats=cast("tuple[OutputFormat, ...]", formats) or ALL_FORMATS,
            faults=Path(faults) if faults else None,
        )


def sqlite_url(path: Path) -> str:
    """``sqlite:///`` URL of a file, absolute so that every process agrees on it."""
    return f"sqlite:///{path.resolve()}"

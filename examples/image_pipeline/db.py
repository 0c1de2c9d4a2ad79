"""The application's own database (SQLAlchemy 2): ``images`` and ``failed_jobs``.

This is the seed's Prisma schema: the job payload carries only ids and the worker reads the
image record here; jobs that fail for good leave a ``failed_jobs`` row for people to read.
It is separate from the queue's storage on purpose, as it would be in a real application.
"""

from __future__ import annotations

import datetime as dt
import threading
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import Any

from sqlalchemy import (
    JSON,
    DateTime,
    Integer,
    String,
    UniqueConstraint,
    create_engine,
    event,
    select,
    update,
)
from sqlalchemy.engine import Engine
from sqlalchemy.exc import IntegrityError, OperationalError
from sqlalchemy.orm import DeclarativeBase, Mapped, Session, mapped_column, sessionmaker

#: Seconds an SQLite connection waits for another writer (workers share the file).
SQLITE_BUSY_TIMEOUT = 30.0


def utcnow() -> dt.datetime:
    """The current time in UTC."""
    return dt.datetime.now(dt.UTC)


class Base(DeclarativeBase):
    """Declarative base of the pipeline's tables."""


class Image(Base):
    """An uploaded image and what became of it."""

    __tablename__ = "images"

    id: Mapped[str] = mapped_column(String(128), primary_key=True)
    user_id: Mapped[str] = mapped_column(String(128), index=True)
    original_key: Mapped[str] = mapped_column(String(512))
    original_size: Mapped[int] = mapped_column(Integer)
    #: "uploaded", then "processed" or "failed" (dead-lettered; back to "processed" after a
    #: successful redrive).
    status: Mapped[str] = mapped_column(String(16), default="uploaded")
    processed_key: Mapped[str | None] = mapped_column(String(512), default=None)
    processed_size: Mapped[int | None] = mapped_column(Integer, default=None)
    processed_at: Mapped[dt.datetime | None] = mapped_column(DateTime(timezone=True), default=None)
    created_at: Mapped[dt.datetime] = mapped_column(DateTime(timezone=True), default=utcnow)


class FailedJob(Base):
    """One permanently failed job: its payload and every attempt's error (the seed's
    ``failedJob`` table). ``round`` tells a redriven job's second failure from its first."""

    __tablename__ = "failed_jobs"
    __table_args__ = (UniqueConstraint("queue", "job_id", "round"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    queue: Mapped[str] = mapped_column(String(128))
    job_id: Mapped[str] = mapped_column(String(256), index=True)
    round: Mapped[int] = mapped_column(Integer, default=0)
    payload: Mapped[Any] = mapped_column(JSON)
    #: The last attempt's ``ErrorType: message``.
    error: Mapped[str] = mapped_column(String)
    #: Every attempt: number, outcome, error_type, message, started_at, ended_at, retry_at.
    attempts: Mapped[list[dict[str, Any]]] = mapped_column(JSON)
    failed_at: Mapped[dt.datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
    #: Set when the job later completed after a redrive.
    resolved_at: Mapped[dt.datetime | None] = mapped_column(DateTime(timezone=True), default=None)


class Database:
    """The app database at ``url`` (any SQLAlchemy URL; SQLite by default).

    Tables are created on first use. Every method is one transaction and returns detached
    rows, so callers may use them after the session is gone.
    """

    def __init__(self, url: str) -> None:
        self.url = url
        self.engine: Engine = create_engine(url, **_engine_options(url))
        if self.engine.dialect.name == "sqlite":
            event.listen(self.engine, "connect", _sqlite_pragmas)
        self._sessions = sessionmaker(self.engine, expire_on_commit=False)
        self._ready = False
        self._ready_lock = threading.Lock()

    def __repr__(self) -> str:
        return f"Database({self.engine.url.render_as_string(hide_password=True)!r})"

    def create_schema(self) -> None:
        """Create the tables if they do not exist (idempotent)."""
        with self._ready_lock:
            if self._ready:
                return
            try:
                Base.metadata.create_all(self.engine)
            except OperationalError:
                # Another process created them between the check and the CREATE.
                Base.metadata.create_all(self.engine)
            self._ready = True

    @contextmanager
    def session(self) -> Iterator[Session]:
        """A session in one transaction, committed on success."""
        self.create_schema()
        with self._sessions.begin() as session:
            yield session

    def close(self) -> None:
        """Close every pooled connection."""
        self.engine.dispose()

    # -- images -----------------------------------------------------------------------------

    def save_image(
        self,
        image_id: str,
        *,
        user_id: str,
        original_key: str,
        original_size: int,
    ) -> Image:
        """Insert or reset an image record to "uploaded" (a re-upload starts over)."""
        with self.session() as s:
            image = s.get(Image, image_id)
            if image is None:
                image = Image(id=image_id)
                s.add(image)
            image.user_id = user_id
            image.original_key = original_key
            image.original_size = original_size
            image.status = "uploaded"
            image.processed_key = image.processed_size = image.processed_at = None
            return image

    def get_image(self, image_id: str) -> Image | None:
        """The image record, or ``None``."""
        with self.session() as s:
            return s.get(Image, image_id)

    def images(self) -> Sequence[Image]:
        """Every image, by id."""
        with self.session() as s:
            return s.scalars(select(Image).order_by(Image.id)).all()

    def mark_processed(self, image_id: str, queue: str, job_id: str, key: str, size: int) -> None:
        """Record the result (the seed's ``prisma.image.update``) and close any failure of
        this job left open before a redrive."""
        now = utcnow()
        with self.session() as s:
            s.execute(
                update(Image)
                .where(Image.id == image_id)
                .values(
                    status="processed", processed_key=key, processed_size=size, processed_at=now
                )
            )
            s.execute(
                update(FailedJob)
                .where(
                    FailedJob.queue == queue,
                    FailedJob.job_id == job_id,
                    FailedJob.resolved_at.is_(None),
                )
                .values(resolved_at=now)
            )

    # -- failed jobs ------------------------------------------------------------------------

    def record_failure(
        self,
        *,
        queue: str,
        job_id: str,
        round: int,
        payload: Any,
        error: str,
        attempts: list[dict[str, Any]],
        image_id: str | None,
    ) -> bool:
        """Write the ``failed_jobs`` row of a dead job and mark its image "failed".

        Idempotent: a second call for the same ``(queue, job_id, round)`` writes nothing and
        returns ``False``.
        """
        try:
            with self.session() as s:
                s.add(
                    FailedJob(
                        queue=queue,
                        job_id=job_id,
                        round=round,
                        payload=payload,
                        error=error,
                        attempts=attempts,
                    )
                )
                if image_id is not None:
                    s.execute(update(Image).where(Image.id == image_id).values(status="failed"))
        except IntegrityError:
            return False
        return True

    def failed_jobs(self, job_id: str | None = None) -> Sequence[FailedJob]:
        """``failed_jobs`` rows, oldest first, optionally of one job."""
        query = select(FailedJob).order_by(FailedJob.id)
        if job_id is not None:
            query = query.where(FailedJob.job_id == job_id)
        with self.session() as s:
            return s.scalars(query).all()


def _engine_options(url: str) -> dict[str, Any]:
    if url.startswith("sqlite"):
        return {"connect_args": {"timeout": SQLITE_BUSY_TIMEOUT}}
    return {"pool_pre_ping": True}


def _sqlite_pragmas(dbapi_connection: Any, _record: Any) -> None:
    # WAL lets the demo's view read while workers write; busy_timeout makes writers queue.
    cursor = dbapi_connection.cursor()
    cursor.execute("PRAGMA journal_mode = WAL")
    cursor.execute(f"PRAGMA busy_timeout = {int(SQLITE_BUSY_TIMEOUT * 1000)}")
    cursor.close()

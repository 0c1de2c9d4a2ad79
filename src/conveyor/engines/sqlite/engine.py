"""The SQLite engine: every transition is one transaction on one WAL-mode file.

Calls run on one dedicated thread per engine, so the event loop never blocks on the file,
and several processes may share the file: writers take ``BEGIN IMMEDIATE`` and wait up to
``busy_timeout`` for each other. Idle workers notice other processes' commits through
``PRAGMA data_version`` polled every ``poll_interval`` seconds, and this process's own
enqueues at once.
"""

from __future__ import annotations

import asyncio
import json
import os
import random
import sqlite3
import threading
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, TypeVar
from urllib.parse import parse_qs, unquote, urlsplit

from conveyor.clock import Clock
from conveyor.engines import named_sql
from conveyor.errors import ConfigurationError
from conveyor.records import (
    Complete,
    DeadLetter,
    JobRecord,
    Lease,
    NewJob,
    QueueStats,
    Release,
    Retry,
    Settlement,
    State,
    load_failures_or_empty,
    load_logs_or_empty,
    load_options,
)

_PACKAGE = "conveyor.engines.sqlite"
T = TypeVar("T")

DEFAULT_BUSY_TIMEOUT = 10.0
DEFAULT_POLL_INTERVAL = 0.01
#: Pause between tries to set up a connection while other connections set up the same file.
SETUP_RETRY_SECONDS = 0.005


class SQLiteEngine:
    """Jobs in one SQLite file. URL: ``sqlite:///relative.db`` or ``sqlite:////abs.db``.

    Query options: ``busy_timeout`` (seconds to wait for another writer, default 10),
    ``poll_interval`` (seconds between checks for other processes' commits, default 0.01),
    ``synchronous`` (``NORMAL`` by default: a process crash loses nothing, a power cut may lose
    the last commits; ``FULL`` survives power cuts at a cost in speed).
    """

    max_payload_bytes: int | None = None

    def __init__(
        self,
        path: str | Path,
        clock: Clock,
        *,
        busy_timeout: float = DEFAULT_BUSY_TIMEOUT,
        poll_interval: float = DEFAULT_POLL_INTERVAL,
        synchronous: str = "NORMAL",
    ) -> None:
        if synchronous.upper() not in ("OFF", "NORMAL", "FULL", "EXTRA"):
            raise ConfigurationError(
                f"sqlite synchronous must be OFF, NORMAL, FULL or EXTRA, got {synchronous!r}"
            )
        self.path = Path(path)
        self.clock = clock
        self.busy_timeout = busy_timeout
        self.poll_interval = poll_interval
        self.synchronous = synchronous.upper()
        self._sql = named_sql.load(_PACKAGE, "queries.sql")
        self._db: sqlite3.Connection | None = None
        self._thread = ThreadPoolExecutor(max_workers=1, thread_name_prefix="conveyor-sqlite")
        self._enqueued = asyncio.Event()
        self._local = threading.local()
        self._blocking_lock = threading.Lock()
        self._blocking_conns: list[sqlite3.Connection] = []

    @classmethod
    def from_url(cls, url: str, clock: Clock) -> SQLiteEngine:
        """Build from ``sqlite:///path?busy_timeout=..&poll_interval=..&synchronous=..``."""
        parts = urlsplit(url)
        path = unquote(parts.path)
        if parts.netloc not in ("", "localhost"):
            raise ConfigurationError(f"sqlite URLs name a local file, got host {parts.netloc!r}")
        if path.startswith("/") and not path.startswith("//"):
            path = path[1:]  # sqlite:///rel.db -> rel.db ; sqlite:////abs.db -> /abs.db
        elif path.startswith("//"):
            path = path[1:]
        if not path:
            raise ConfigurationError("sqlite URL has no file name, e.g. sqlite:///conveyor.db")
        query = {k: v[-1] for k, v in parse_qs(parts.query).items()}
        unknown = set(query) - {"busy_timeout", "poll_interval", "synchronous"}
        if unknown:
            raise ConfigurationError(f"unknown sqlite URL options: {sorted(unknown)}")
        try:
            busy = float(query.get("busy_timeout", DEFAULT_BUSY_TIMEOUT))
            poll = float(query.get("poll_interval", DEFAULT_POLL_INTERVAL))
        except ValueError as exc:
            raise ConfigurationError(f"sqlite URL option is not a number: {exc}") from None
        return cls(
            path,
            clock,
            busy_timeout=busy,
            poll_interval=poll,
            synchronous=query.get("synchronous", "NORMAL"),
        )

    # -- plumbing ---------------------------------------------------------------------------

    async def _run(self, fn: Callable[..., T], *args: Any) -> T:
        return await asyncio.get_running_loop().run_in_executor(self._thread, fn, *args)

    def _conn(self) -> sqlite3.Connection:
        if self._db is None:
            raise RuntimeError("SQLiteEngine used before connect()")
        return self._db

    def _write(self, fn: Callable[[sqlite3.Connection], T]) -> T:
        """Run ``fn`` in one ``BEGIN IMMEDIATE`` transaction."""
        db = self._conn()
        db.execute("BEGIN IMMEDIATE")
        try:
            out = fn(db)
        except BaseException:
            db.execute("ROLLBACK")
            raise
        db.execute("COMMIT")
        return out

    def _open(self) -> None:
        if self._db is not None:
            return
        self._db = self._connect()

    def _connect(self) -> sqlite3.Connection:
        """A new connection to the file (created owner-only if missing), schema applied."""
        if str(self.path) != ":memory:":
            self.path.parent.mkdir(parents=True, exist_ok=True)
            if not self.path.exists():
                # Owner-only from the first byte: job payloads may be private.
                os.close(os.open(self.path, os.O_CREAT | os.O_WRONLY, 0o600))
        db = sqlite3.connect(
            str(self.path),
            timeout=self.busy_timeout,
            isolation_level=None,
            check_same_thread=False,
        )
        db.row_factory = sqlite3.Row
        db.execute(f"PRAGMA busy_timeout = {int(self.busy_timeout * 1000)}")
        deadline = time.monotonic() + self.busy_timeout
        while True:
            try:
                self._prepare(db)
                return db
            except sqlite3.OperationalError as exc:
                # Switching a new file to WAL needs an exclusive lock, and SQLite answers
                # "locked" at once, without its busy handler, while other connections opening
                # the same new file hold theirs: wait for them as busy_timeout promises.
                if "locked" not in str(exc) or time.monotonic() > deadline:
                    db.close()
                    raise
                time.sleep(SETUP_RETRY_SECONDS * (1 + random.random()))

    def _prepare(self, db: sqlite3.Connection) -> None:
        db.execute("PRAGMA journal_mode = WAL")
        db.execute(f"PRAGMA synchronous = {self.synchronous}")
        # executescript commits on its own; every statement in it is idempotent.
        db.executescript(named_sql.script(_PACKAGE, "schema.sql"))

    def _close(self) -> None:
        if self._db is not None:
            self._db.close()
            self._db = None
        self.close_blocking()

    def close_blocking(self) -> None:
        """Close the connections opened by :meth:`enqueue_blocking` callers' threads."""
        with self._blocking_lock:
            conns, self._blocking_conns = self._blocking_conns, []
        for db in conns:
            db.close()

    # -- Engine -----------------------------------------------------------------------------

    async def connect(self) -> None:
        """Open the file (created owner-only if missing) and apply the schema."""
        await self._run(self._open)

    async def close(self) -> None:
        """Close the file and stop the engine's thread."""
        await self._run(self._close)
        self._thread.shutdown(wait=False)

    async def enqueue(self, jobs: Sequence[NewJob]) -> list[bool]:
        """Insert jobs in one transaction; existing ``(queue, id)`` pairs are left alone."""
        rows = _rows(jobs)
        created: list[bool] = await self._run(self._write, lambda db: self._insert(db, rows))
        self._enqueued.set()
        return created

    @property
    def blocking_enqueue(self) -> bool:
        """Whether :meth:`enqueue_blocking` can be used (not on a private ``:memory:`` db)."""
        return str(self.path) != ":memory:"

    def enqueue_blocking(self, jobs: Sequence[NewJob]) -> list[bool]:
        """:meth:`enqueue` for synchronous callers: runs on the calling thread, on a
        connection of that thread's own, with no event loop and no thread hop.

        Workers in this process notice these jobs by polling, as they notice other processes'.
        """
        db: sqlite3.Connection | None = getattr(self._local, "db", None)
        if db is None:
            db = self._local.db = self._connect()
            with self._blocking_lock:
                self._blocking_conns.append(db)
        rows = _rows(jobs)
        db.execute("BEGIN IMMEDIATE")
        try:
            out = self._insert(db, rows)
        except BaseException:
            db.execute("ROLLBACK")
            raise
        db.execute("COMMIT")
        return out

    def _insert(self, db: sqlite3.Connection, rows: list[dict[str, Any]]) -> list[bool]:
        """Insert ``rows`` inside the caller's transaction; which of them were new.

        A batch whose ids are all new (the usual case, checked with one query) goes in with
        ``executemany``; otherwise row by row, so that each duplicate is reported.
        """
        sql = self._sql["insert_job"]
        if len(rows) > 1 and not self._any_exists(db, rows):
            db.executemany(sql, rows)
            return [True] * len(rows)
        return [db.execute(sql, row).rowcount == 1 for row in rows]

    def _any_exists(self, db: sqlite3.Connection, rows: list[dict[str, Any]]) -> bool:
        """Whether any row's ``(queue, id)`` is stored already or repeats within ``rows``."""
        by_queue: dict[str, list[str]] = {}
        for row in rows:
            by_queue.setdefault(row["queue"], []).append(row["id"])
        sql = self._sql["any_exists"]
        for queue, ids in by_queue.items():
            if len(set(ids)) != len(ids):
                return True
            if db.execute(sql, {"queue": queue, "ids": json.dumps(ids)}).fetchone() is not None:
                return True
        return False

    async def reserve(
        self, queues: Sequence[str], limit: int, lease_seconds: float, worker: str
    ) -> list[JobRecord]:
        """Reclaim expired leases, then lease up to ``limit`` due jobs, in one transaction."""
        now = self.clock.now()
        names = json.dumps(list(queues))
        reclaim, reserve = self._sql["reclaim_expired"], self._sql["reserve"]

        def take(db: sqlite3.Connection) -> list[sqlite3.Row]:
            db.execute(reclaim, {"now": now, "queues": names})
            params = {
                "now": now,
                "expires_at": now + lease_seconds,
                "queues": names,
                "limit": limit,
                "worker": worker,
            }
            return db.execute(reserve, params).fetchall()

        rows = await self._run(self._write, take)
        records = [self._record(row, now) for row in rows]
        records.sort(key=lambda r: (-r.priority, r.run_at))
        return records

    async def wait(self, queues: Sequence[str], timeout: float) -> None:
        """Sleep until a commit by anyone, this process's enqueue, the next due time, or
        ``timeout``."""
        self._enqueued.clear()
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        names = json.dumps(list(queues))
        next_due, version = await self._run(self._next_due_and_version, names)
        if next_due is not None:
            deadline = min(deadline, loop.time() + max(0.0, next_due - self.clock.now()))
        while (remaining := deadline - loop.time()) > 0:
            try:
                await asyncio.wait_for(self._enqueued.wait(), min(remaining, self.poll_interval))
                return
            except TimeoutError:
                pass
            if await self._run(self._data_version) != version:
                return

    def _next_due_and_version(self, names: str) -> tuple[float | None, int]:
        db = self._conn()
        (next_due,) = db.execute(self._sql["next_due"], {"queues": names}).fetchone()
        return next_due, self._data_version()

    def _data_version(self) -> int:
        return int(self._conn().execute(self._sql["data_version"]).fetchone()[0])

    async def extend(self, leases: Sequence[Lease], lease_seconds: float) -> list[bool]:
        """Push lease expiries forward in one transaction."""
        expires_at = self.clock.now() + lease_seconds
        sql = self._sql["extend"]

        def extend(db: sqlite3.Connection) -> list[bool]:
            return [
                db.execute(sql, {**_key(lease), "expires_at": expires_at}).rowcount == 1
                for lease in leases
            ]

        return await self._run(self._write, extend)

    async def settle(self, settlements: Sequence[Settlement]) -> list[bool]:
        """Apply a batch of settlements in one transaction (each guarded by its token)."""
        now = self.clock.now()
        statements = [self._settle_statement(s, now) for s in settlements]

        def apply(db: sqlite3.Connection) -> list[bool]:
            return [db.execute(sql, params).rowcount == 1 for sql, params in statements]

        return await self._run(self._write, apply)

    def _settle_statement(self, s: Settlement, now: float) -> tuple[str, dict[str, Any]]:
        params: dict[str, Any] = {**_key(s.lease), "now": now}
        if isinstance(s, Complete):
            params["result"] = s.result
            return self._sql["complete" if s.keep else "complete_and_forget"], params
        if isinstance(s, Retry):
            params.update(run_at=s.run_at, attempt=json.dumps(s.attempt.to_dict()))
            return self._sql["retry"], params
        if isinstance(s, DeadLetter):
            params["attempt"] = json.dumps(s.attempt.to_dict())
            return self._sql["dead_letter"], params
        if isinstance(s, Release):
            return self._sql["release"], params
        raise TypeError(f"not a settlement: {s!r}")

    async def report(
        self, lease: Lease, progress: float | None = None, log: str | None = None
    ) -> bool:
        """Store progress and/or append a log line for a leased job."""
        line = None if log is None else json.dumps({"at": self.clock.now(), "message": log})
        params = {**_key(lease), "progress": progress, "log": line}
        sql = self._sql["report"]
        return await self._run(self._write, lambda db: db.execute(sql, params).rowcount == 1)

    async def get(self, queue: str, job_id: str) -> JobRecord | None:
        """Read one job."""
        now = self.clock.now()
        row = await self._run(self._fetchone, self._sql["get"], {"queue": queue, "id": job_id})
        return None if row is None else self._record(row, now)

    async def list_jobs(
        self, queue: str, state: State, limit: int = 100, offset: int = 0
    ) -> list[JobRecord]:
        """Jobs of one queue in one state, paged."""
        now = self.clock.now()
        name = {
            State.QUEUED: "list_due",
            State.SCHEDULED: "list_scheduled",
            State.ACTIVE: "list_active",
        }.get(state, "list_finished")
        params = {"queue": queue, "state": state.value, "now": now, "limit": limit}
        params["offset"] = offset
        rows = await self._run(self._fetchall, self._sql[name], params)
        return [self._record(row, now) for row in rows]

    async def stats(self) -> list[QueueStats]:
        """Counts by state for every queue that has jobs or is paused."""
        now = self.clock.now()

        def read() -> list[QueueStats]:
            db = self._conn()
            by_queue: dict[str, QueueStats] = {}

            def entry(queue: str) -> QueueStats:
                return by_queue.setdefault(queue, QueueStats(queue, {s: 0 for s in State}))

            for queue, shown, count in db.execute(self._sql["counts"], {"now": now}):
                entry(queue).counts[State(shown)] = count
            for queue, oldest in db.execute(self._sql["oldest_dead"]):
                entry(queue).oldest_dead_at = oldest
            for (queue,) in db.execute(self._sql["paused"]):
                entry(queue).paused = True
            return sorted(by_queue.values(), key=lambda s: s.queue)

        return await self._run(read)

    async def redrive(self, queue: str, job_ids: Sequence[str]) -> int:
        """Dead jobs back to queued, attempts reset, failure log kept."""
        n = await self._each(self._sql["redrive"], queue, job_ids, now=self.clock.now())
        self._enqueued.set()
        return n

    async def delete(self, queue: str, job_ids: Sequence[str]) -> int:
        """Delete jobs that are not active."""
        return await self._each(self._sql["delete"], queue, job_ids)

    async def trim(self, queue: str, task: str, keep: int | None, older_than: float | None) -> int:
        """Apply a retention rule to completed jobs of one task."""

        def trim(db: sqlite3.Connection) -> int:
            deleted = 0
            if older_than is not None:
                params = {"queue": queue, "task": task, "older_than": older_than}
                deleted += db.execute(self._sql["trim_by_age"], params).rowcount
            if keep is not None:
                params = {"queue": queue, "task": task, "keep": keep}
                deleted += db.execute(self._sql["trim_by_count"], params).rowcount
            return deleted

        return await self._run(self._write, trim)

    async def set_paused(self, queue: str, paused: bool) -> None:
        """Pause or resume one queue."""
        sql = self._sql["pause" if paused else "resume"]
        await self._run(self._write, lambda db: db.execute(sql, {"queue": queue}))
        if not paused:
            self._enqueued.set()

    # -- helpers ----------------------------------------------------------------------------

    async def _each(self, sql: str, queue: str, job_ids: Sequence[str], **extra: Any) -> int:
        def run(db: sqlite3.Connection) -> int:
            return sum(
                db.execute(sql, {"queue": queue, "id": job_id, **extra}).rowcount
                for job_id in job_ids
            )

        return await self._run(self._write, run)

    def _fetchone(self, sql: str, params: dict[str, Any]) -> sqlite3.Row | None:
        row: sqlite3.Row | None = self._conn().execute(sql, params).fetchone()
        return row

    def _fetchall(self, sql: str, params: dict[str, Any]) -> list[sqlite3.Row]:
        return self._conn().execute(sql, params).fetchall()

    @staticmethod
    def _record(row: sqlite3.Row, now: float) -> JobRecord:
        state = State(row["state"])
        if state is State.QUEUED and row["run_at"] > now:
            state = State.SCHEDULED
        payload = row["payload"]
        return JobRecord(
            queue=row["queue"],
            id=row["id"],
            task=row["task"],
            payload=payload if isinstance(payload, bytes) else str(payload).encode(),
            state=state,
            priority=row["priority"],
            run_at=row["run_at"],
            created_at=row["created_at"],
            attempts=row["attempts"],
            options=load_options(row["options"]),
            started_at=row["started_at"],
            finished_at=row["finished_at"],
            progress=row["progress"],
            result=row["result"],
            failures=load_failures_or_empty(row["failures"]),
            logs=load_logs_or_empty(row["logs"]),
            lease_token=row["lease_token"],
            lease_expires_at=row["lease_expires_at"],
            worker=row["worker"],
        )


def _rows(jobs: Sequence[NewJob]) -> list[dict[str, Any]]:
    """Parameters of ``insert_job`` for each job."""
    return [
        {
            "queue": j.queue,
            "id": j.id,
            "task": j.task,
            "payload": j.payload,
            "priority": j.priority,
            "run_at": j.run_at,
            "created_at": j.created_at,
            "options": json.dumps(j.options) if j.options else "{}",
        }
        for j in jobs
    ]


def _key(lease: Lease) -> dict[str, Any]:
    return {"queue": lease.queue, "id": lease.job_id, "token": lease.token}

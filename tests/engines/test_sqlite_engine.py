"""SQLite-specific guarantees: file permissions, WAL, several processes on one file."""

from __future__ import annotations

import multiprocessing
import os
import sqlite3
import stat
from pathlib import Path

import conveyor
from conveyor.clock import SystemClock
from conveyor.engines.sqlite.engine import SQLiteEngine
from conveyor.records import Complete, NewJob


async def test_database_file_is_owner_only_and_in_wal_mode(tmp_path: Path) -> None:
    path = tmp_path / "private.db"
    engine = SQLiteEngine(path, SystemClock())
    await engine.connect()
    await engine.close()
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    with sqlite3.connect(path) as db:
        assert db.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
        assert db.execute("PRAGMA integrity_check").fetchone()[0] == "ok"


def test_url_forms() -> None:
    clock = SystemClock()
    assert SQLiteEngine.from_url("sqlite:///rel.db", clock).path == Path("rel.db")
    assert SQLiteEngine.from_url("sqlite:////abs/x.db", clock).path == Path("/abs/x.db")
    engine = SQLiteEngine.from_url("sqlite:///a.db?poll_interval=0.5&synchronous=full", clock)
    assert engine.poll_interval == 0.5 and engine.synchronous == "FULL"


def test_unknown_url_option_is_refused() -> None:
    try:
        SQLiteEngine.from_url("sqlite:///a.db?pool=3", SystemClock())
    except conveyor.ConfigurationError as exc:
        assert "pool" in str(exc)
    else:
        raise AssertionError("unknown options must be refused")


def _claim_all(path: str, out: str) -> None:
    import asyncio

    async def run() -> None:
        engine = SQLiteEngine(path, SystemClock(), busy_timeout=30)
        await engine.connect()
        claimed = []
        while batch := await engine.reserve(["q"], 7, 300, f"pid-{os.getpid()}"):
            claimed.extend(r.id for r in batch)
            await engine.settle([Complete(r.lease, None) for r in batch])
        await engine.close()
        Path(out).write_text("\n".join(claimed))

    asyncio.run(run())


async def test_several_processes_never_claim_the_same_job(tmp_path: Path) -> None:
    path = str(tmp_path / "shared.db")
    engine = SQLiteEngine(path, SystemClock())
    await engine.connect()
    now = SystemClock().now()
    jobs = [NewJob("q", f"j{i}", "t", b"null", 0, now, now) for i in range(2000)]
    assert all(await engine.enqueue(jobs))
    ctx = multiprocessing.get_context("spawn")
    outs = [str(tmp_path / f"claimed-{n}.txt") for n in range(4)]
    procs = [ctx.Process(target=_claim_all, args=(path, out)) for out in outs]
    for p in procs:
        p.start()
    for p in procs:
        p.join(120)
        assert p.exitcode == 0
    claimed = [line for out in outs for line in Path(out).read_text().split()]
    assert len(claimed) == len(set(claimed)) == 2000
    (stats,) = await engine.stats()
    assert stats.counts[conveyor.State.COMPLETED] == 2000
    await engine.close()


def test_many_first_connections_to_a_new_file_all_succeed(tmp_path: Path) -> None:
    """Ten producers opening a brand-new file at once: switching it to WAL used to answer
    'database is locked' to some of them at once, without waiting (busy_timeout)."""
    import threading

    for round_ in range(30):
        path = tmp_path / f"new-{round_}.db"
        errors: list[BaseException] = []

        def produce(i: int, path: Path = path, errors: list[BaseException] = errors) -> None:
            engine = SQLiteEngine(path, SystemClock())
            try:
                engine.enqueue_blocking([NewJob("q", f"j{i}", "t", b"null", 0, 0, 0)])
            except BaseException as exc:
                errors.append(exc)
            finally:
                engine.close_blocking()

        threads = [threading.Thread(target=produce, args=(i,)) for i in range(10)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(60)
        assert errors == [], (round_, errors)
        with sqlite3.connect(path) as db:
            assert db.execute("SELECT count(*) FROM jobs").fetchone()[0] == 10

"""Reference limits measured on the same machine and server: what one Python process can get
out of Redis and out of an SQLite WAL file, and ``redis-benchmark``'s own figures."""

from __future__ import annotations

import asyncio
import csv
import io
import sqlite3
import subprocess
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import redis
import redis.asyncio

from bench.common import Summary

#: Seconds each raw measurement may take at most.
CAP = 1.5


def _rate(fn: Callable[[], int], reps: int) -> dict[str, Any]:
    """Run ``fn`` (which returns how many operations it did) ``reps`` times; ops/s summary."""
    rates = []
    for _ in range(reps):
        start = time.perf_counter()
        ops = fn()
        rates.append(ops / (time.perf_counter() - start))
    summary = Summary.of(rates)
    assert summary is not None
    return summary.as_dict()


def redis_py(port: int, reps: int) -> dict[str, Any]:
    """redis-py: one SET per call (sync and asyncio), and pipelines of 100 SETs."""
    client = redis.Redis(host="127.0.0.1", port=port)

    def sync_single(n: int = 20_000) -> int:
        deadline = time.perf_counter() + CAP
        for i in range(n):
            client.set("raw:k", i)
            if i % 100 == 0 and time.perf_counter() > deadline:
                return i + 1
        return n

    def pipelined(n: int = 200_000) -> int:
        done = 0
        deadline = time.perf_counter() + CAP
        while done < n and time.perf_counter() < deadline:
            pipe = client.pipeline(transaction=False)
            for i in range(100):
                pipe.set("raw:k", i)
            pipe.execute()
            done += 100
        return done

    def async_single(n: int = 20_000) -> int:
        async def run() -> int:
            aclient = redis.asyncio.Redis(host="127.0.0.1", port=port)
            deadline = time.perf_counter() + CAP
            done = n
            for i in range(n):
                await aclient.set("raw:k", i)
                if i % 100 == 0 and time.perf_counter() > deadline:
                    done = i + 1
                    break
            await aclient.aclose()
            return done

        return asyncio.run(run())

    out = {
        "sync_one_command_per_call": _rate(sync_single, reps),
        "asyncio_one_command_per_call": _rate(async_single, reps),
        "pipelined_100_per_call": _rate(pipelined, reps),
    }
    client.delete("raw:k")
    client.close()
    return out


def sqlite_wal(workdir: Path, reps: int) -> dict[str, Any]:
    """SQLite WAL, synchronous=NORMAL: transactions of one INSERT + one UPDATE, and
    transactions of 100 INSERTs (rows/s)."""
    path = workdir / "raw.db"
    for suffix in ("", "-wal", "-shm"):
        Path(f"{path}{suffix}").unlink(missing_ok=True)
    db = sqlite3.connect(path, isolation_level=None)
    db.execute("PRAGMA journal_mode = WAL")
    db.execute("PRAGMA synchronous = NORMAL")
    db.execute("CREATE TABLE t (id INTEGER PRIMARY KEY, state TEXT, payload BLOB)")
    counter = iter(range(10**9))

    def small(n: int = 100_000) -> int:
        deadline = time.perf_counter() + CAP
        for i in range(n):
            row = next(counter)
            db.execute("BEGIN IMMEDIATE")
            db.execute("INSERT INTO t VALUES (?, 'queued', x'00')", (row,))
            db.execute("UPDATE t SET state = 'active' WHERE id = ?", (row,))
            db.execute("COMMIT")
            if i % 100 == 0 and time.perf_counter() > deadline:
                return i + 1
        return n

    def batches(n: int = 2_000_000) -> int:
        done = 0
        deadline = time.perf_counter() + CAP
        while done < n and time.perf_counter() < deadline:
            rows = [(next(counter),) for _ in range(100)]
            db.execute("BEGIN IMMEDIATE")
            db.executemany("INSERT INTO t VALUES (?, 'queued', x'00')", rows)
            db.execute("COMMIT")
            done += 100
        return done

    out = {
        "insert_update_transactions": _rate(small, reps),
        "rows_in_100_row_transactions": _rate(batches, reps),
    }
    db.close()
    return out


def redis_benchmark(port: int) -> dict[str, Any]:
    """``redis-benchmark`` SET/GET/LPUSH/RPOP: 50 clients plain, 50 clients pipelined by 16,
    and one client plain (one round trip at a time)."""
    runs = {
        "50_clients": ["-c", "50"],
        "50_clients_pipeline_16": ["-c", "50", "-P", "16"],
        "1_client": ["-c", "1", "-n", "20000"],
    }
    out: dict[str, Any] = {}
    for name, extra in runs.items():
        cmd = ["redis-benchmark", "-h", "127.0.0.1", "-p", str(port), "-q", "--csv"]
        cmd += ["-t", "set,get,lpush,rpop", "-n", "100000", *extra]
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
        rows = list(csv.reader(io.StringIO(proc.stdout)))
        out[name] = {r[0]: float(r[1]) for r in rows[1:] if len(r) > 1}
    return out

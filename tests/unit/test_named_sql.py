"""Named-query files split at their headers."""

from __future__ import annotations

from conveyor.engines import named_sql, redact


def test_parse_splits_at_headers() -> None:
    text = "-- preamble\n-- name: one\nSELECT 1;\n\n-- name: two\nSELECT 2;\n"
    assert named_sql.parse(text) == {"one": "SELECT 1;", "two": "SELECT 2;"}


def test_sqlite_queries_load_once_with_every_name_the_engine_uses() -> None:
    queries = named_sql.load("conveyor.engines.sqlite", "queries.sql")
    assert {"insert_job", "reserve", "complete", "retry", "dead_letter", "release"} <= set(queries)
    assert named_sql.load("conveyor.engines.sqlite", "queries.sql") is queries


def test_redact_hides_passwords() -> None:
    assert redact("redis://user:s3cret@host:6379/0") == "redis://user:***@host:6379/0"
    assert redact("sqlite:///x.db") == "sqlite:///x.db"

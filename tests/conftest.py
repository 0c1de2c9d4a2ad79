"""Shared fixtures. The conformance suite runs once per engine listed in ENGINE_FIXTURES.

Each engine's fixture yields a fresh, isolated engine URL (its own file, key prefix or queue
prefix) backed by a real server that the fixture starts or finds. ``CONVEYOR_TEST_ENGINES``
(comma-separated names) narrows the run; a listed engine whose server cannot start fails
the run rather than skipping it.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest

pytest_plugins: list[str] = [
    "tests.servers.moto_server",
    "tests.servers.redis_server",
    "tests.servers.sqs_fixture",
]

#: engine name -> name of the fixture that yields a fresh URL for it.
ENGINE_FIXTURES: dict[str, str] = {"sqlite": "sqlite_url", "redis": "redis_url", "sqs": "sqs_url"}


def _selected_engines() -> list[str]:
    wanted = os.environ.get("CONVEYOR_TEST_ENGINES")
    if not wanted:
        return sorted(ENGINE_FIXTURES)
    names = [n.strip() for n in wanted.split(",") if n.strip()]
    unknown = set(names) - set(ENGINE_FIXTURES)
    if unknown:
        raise pytest.UsageError(f"CONVEYOR_TEST_ENGINES names unknown engines: {sorted(unknown)}")
    return names


@pytest.fixture
def sqlite_url(tmp_path: Path) -> Iterator[str]:
    """A fresh SQLite file; fast polling so cross-process tests do not wait."""
    yield f"sqlite:///{tmp_path / 'conveyor.db'}?poll_interval=0.005"


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    if "engine_url" in metafunc.fixturenames:
        metafunc.parametrize("engine_name", _selected_engines(), scope="function")


@pytest.fixture
def engine_url(request: pytest.FixtureRequest, engine_name: str) -> str:
    """A fresh URL for the engine under test (parametrised over every engine)."""
    url: str = request.getfixturevalue(ENGINE_FIXTURES[engine_name])
    return url

"""Fixtures of the conformance suite: an App on the engine under test with a manual clock."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest

import conveyor


@pytest.fixture
def clock() -> conveyor.ManualClock:
    """A clock the test moves by hand (retry delays of minutes run at once)."""
    return conveyor.ManualClock()


@pytest.fixture
async def app(engine_url: str, clock: conveyor.ManualClock) -> AsyncIterator[conveyor.App]:
    """A fresh App on the engine under test, closed afterwards."""
    application = conveyor.App(engine_url, clock=clock)
    yield application
    await application.close()

"""The Conveyor dashboard: an ASGI app to see and fix queues from a browser.

Mount it in a Starlette or FastAPI app::

    from conveyor.dashboard import create_dashboard

    api.mount("/conveyor", create_dashboard(app, token=os.environ["CONVEYOR_TOKEN"]))

or run it on its own with :func:`serve` (``conveyor dashboard``). It needs the
``dashboard`` extra: ``pip install 'conveyor[dashboard]'``.
"""

from __future__ import annotations

from conveyor.dashboard.app import (
    DEFAULT_PAGE_SIZE,
    DEFAULT_POLL_INTERVAL,
    create_dashboard,
)
from conveyor.dashboard.server import DEFAULT_HOST, DEFAULT_PORT, is_loopback, serve

__all__ = [
    "DEFAULT_HOST",
    "DEFAULT_PAGE_SIZE",
    "DEFAULT_POLL_INTERVAL",
    "DEFAULT_PORT",
    "create_dashboard",
    "is_loopback",
    "serve",
]

"""``create_dashboard``: the dashboard as a Starlette ASGI app, ready to mount or serve."""

from __future__ import annotations

import os

from starlette.applications import Starlette
from starlette.middleware import Middleware

from conveyor.app import App
from conveyor.dashboard.forms import Problem
from conveyor.dashboard.security import Credentials, Csrf, Gate, SecurityMiddleware, Signer
from conveyor.dashboard.views import Views
from conveyor.errors import ConfigurationError, ConveyorError
from conveyor.metrics import instrument

#: Seconds between two polls of a page's JSON endpoint for live updates.
DEFAULT_POLL_INTERVAL = 3.0
#: Jobs per page in listings.
DEFAULT_PAGE_SIZE = 50
SECRET_BYTES = 32


def create_dashboard(
    app: App,
    *,
    token: str | None = None,
    basic_auth: tuple[str, str] | None = None,
    secret: bytes | None = None,
    poll_interval: float = DEFAULT_POLL_INTERVAL,
    page_size: int = DEFAULT_PAGE_SIZE,
    metrics: bool = True,
) -> Starlette:
    """The dashboard of ``app`` as an ASGI application.

    ``token`` requires a bearer token (or a login with it); ``basic_auth=(user, password)``
    requires HTTP basic auth; with both, either works; with neither, anyone who can reach the
    app can use it, so mount it behind your own authentication or serve it on loopback only
    (:func:`conveyor.dashboard.serve` enforces that). ``secret`` signs CSRF tokens and login
    cookies (default: random per process, so a restart logs browsers out). ``metrics=True``
    adds a Prometheus ``/metrics`` route and instruments ``app`` (see
    :func:`conveyor.metrics.instrument`). Pages poll for live updates every
    ``poll_interval`` seconds.
    """
    if token is not None and not token.strip():
        raise ConfigurationError("token must be a non-empty string (or None for no token)")
    if basic_auth is not None and (len(basic_auth) != 2 or not all(basic_auth)):
        raise ConfigurationError("basic_auth must be a (user, password) pair of non-empty strings")
    if poll_interval <= 0:
        raise ConfigurationError(f"poll_interval must be > 0 seconds, got {poll_interval}")
    if page_size < 1:
        raise ConfigurationError(f"page_size must be >= 1, got {page_size}")
    signer = Signer(secret or os.urandom(SECRET_BYTES))
    gate = Gate(Credentials(token, basic_auth), signer)
    views = Views(
        app,
        csrf=Csrf(signer),
        gate=gate,
        poll_interval=poll_interval,
        page_size=page_size,
        metrics=instrument(app) if metrics else None,
    )
    return Starlette(
        routes=views.routes(),
        middleware=[Middleware(SecurityMiddleware, gate=gate, login_page=views.login_page)],
        exception_handlers={Problem: views.problem, ConveyorError: views.problem},
    )

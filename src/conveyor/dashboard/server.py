"""``serve``: run the dashboard with uvicorn, on loopback unless authentication is on."""

from __future__ import annotations

import asyncio
import ipaddress

import uvicorn

from conveyor.app import App
from conveyor.dashboard.app import DEFAULT_POLL_INTERVAL, create_dashboard
from conveyor.errors import ConfigurationError

DEFAULT_HOST = "127.0.0.1"
DEFAULT_PORT = 8765


def is_loopback(host: str) -> bool:
    """Whether ``host`` only accepts connections from this machine."""
    if host.strip().lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False  # a host name: it may resolve to anything


def serve(
    app: App,
    host: str = DEFAULT_HOST,
    port: int = DEFAULT_PORT,
    token: str | None = None,
    *,
    basic_auth: tuple[str, str] | None = None,
    poll_interval: float = DEFAULT_POLL_INTERVAL,
    log_level: str = "info",
) -> None:
    """Serve ``app``'s dashboard until interrupted.

    Binding anywhere but loopback (``127.0.0.1``, ``::1``, ``localhost``) requires ``token``
    or ``basic_auth``: otherwise anyone on the network could redrive or purge jobs.
    """
    if not is_loopback(host) and token is None and basic_auth is None:
        raise ConfigurationError(
            f"the dashboard would listen on {host!r}, reachable from other machines, without "
            "authentication: pass a token (--token or CONVEYOR_DASHBOARD_TOKEN) or basic auth, "
            "or bind to 127.0.0.1"
        )
    dashboard = create_dashboard(
        app, token=token, basic_auth=basic_auth, poll_interval=poll_interval
    )
    config = uvicorn.Config(
        dashboard, host=host, port=port, log_level=log_level, proxy_headers=False
    )
    server = uvicorn.Server(config)

    async def main() -> None:
        try:
            await server.serve()
        finally:
            await app.close()

    asyncio.run(main())

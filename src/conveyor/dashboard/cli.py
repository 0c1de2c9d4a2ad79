"""``conveyor dashboard``: the click command (registered by ``conveyor.cli``)."""

from __future__ import annotations

import click

# Repeated from conveyor.dashboard.server so that importing this module (which conveyor.cli
# does at start-up) needs neither uvicorn nor starlette.
DEFAULT_HOST = "127.0.0.1"
DEFAULT_PORT = 8765


@click.command("dashboard")
@click.option("--host", default=DEFAULT_HOST, show_default=True, help="Address to bind.")
@click.option("--port", default=DEFAULT_PORT, show_default=True, type=int, help="Port.")
@click.option(
    "--token",
    envvar="CONVEYOR_DASHBOARD_TOKEN",
    help="Require this token (Bearer header or login form). Required off loopback.",
)
@click.option(
    "--app", "app_path", metavar="MODULE:ATTR", help="The conveyor.App (or CONVEYOR_APP)."
)
@click.option("--url", help="Engine URL when no --app is given (or CONVEYOR_URL).")
def dashboard(
    host: str, port: int, token: str | None, app_path: str | None, url: str | None
) -> None:
    """Serve the web dashboard (queues, jobs, DLQ, metrics) on HOST:PORT."""
    try:
        from conveyor.dashboard.server import is_loopback, serve
    except ImportError as exc:
        raise click.ClickException(
            f"the dashboard needs its extra: pip install 'conveyor[dashboard]' ({exc})"
        ) from exc
    from conveyor.cli import load_app
    from conveyor.errors import ConfigurationError

    if not is_loopback(host) and not token:
        raise click.UsageError(
            f"--host {host} is reachable from other machines: give --token "
            "(or CONVEYOR_DASHBOARD_TOKEN), or bind to 127.0.0.1"
        )
    app = load_app(app_path, url)
    shown = f"[{host}]" if ":" in host else host
    click.echo(f"Conveyor dashboard on http://{shown}:{port}/ (Ctrl+C to stop)")
    try:
        serve(app, host=host, port=port, token=token or None)
    except ConfigurationError as exc:
        raise click.ClickException(str(exc)) from exc

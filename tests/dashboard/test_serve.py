"""``serve`` and ``conveyor dashboard``: loopback by default, authentication required elsewhere."""

from __future__ import annotations

import pytest
from click.testing import CliRunner

import conveyor
from conveyor.dashboard import is_loopback, serve
from conveyor.dashboard.cli import dashboard


@pytest.mark.parametrize(
    ("host", "loopback"),
    [
        ("127.0.0.1", True),
        ("127.0.0.2", True),
        ("::1", True),
        ("[::1]", True),
        ("localhost", True),
        ("0.0.0.0", False),
        ("::", False),
        ("192.168.1.10", False),
        ("example.com", False),
    ],
)
def test_loopback_hosts(host: str, loopback: bool) -> None:
    assert is_loopback(host) is loopback


def test_serve_refuses_a_public_address_without_authentication(sqlite_url: str) -> None:
    app = conveyor.App(sqlite_url)
    with pytest.raises(conveyor.ConfigurationError, match="without authentication"):
        serve(app, host="0.0.0.0", port=1)


def test_dashboard_command_refuses_a_public_address_without_a_token(sqlite_url: str) -> None:
    result = CliRunner().invoke(dashboard, ["--host", "0.0.0.0", "--url", sqlite_url])
    assert result.exit_code == 2
    assert "--token" in result.output


def test_dashboard_command_is_registered_in_the_conveyor_cli() -> None:
    from conveyor.cli import cli

    result = CliRunner().invoke(cli, ["dashboard", "--help"])
    assert result.exit_code == 0, result.output
    for option in ("--host", "--port", "--token", "--app", "--url"):
        assert option in result.output

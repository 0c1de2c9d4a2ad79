"""moto's server mode: a real AWS API (SQS, S3) over HTTP on a loopback port."""

from __future__ import annotations

import os
import shutil
import sys
from collections.abc import Iterator

import pytest

from tests.servers import aws_emulator, free_port


@pytest.fixture(scope="session")
def moto_endpoint() -> Iterator[str]:
    """The URL of a moto server started for this test session (fails if it cannot start)."""
    port = free_port()
    exe = shutil.which("moto_server") or os.path.join(
        os.path.dirname(sys.executable), "moto_server"
    )
    with aws_emulator([exe, "-H", "127.0.0.1", "-p", str(port)], port) as url:
        yield url

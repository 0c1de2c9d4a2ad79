"""Redis over TLS (``rediss://``) with an ACL user, against a local TLS-enabled redis-server
with certificates made at test time; the password never shows in logs, errors or the CLI.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import ipaddress
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import redis
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

import conveyor
from chaos import tasks, truth
from chaos.harness import ROOT, child_env
from chaos.redis_faults import free_port

USER, PASSWORD = "conveyor-app", "s3cret-Pa55word-never-logged"


def _key() -> ec.EllipticCurvePrivateKey:
    return ec.generate_private_key(ec.SECP256R1())


def _write_pem(path: Path, data: bytes) -> None:
    path.write_bytes(data)
    path.chmod(0o600)


def make_certs(directory: Path) -> tuple[Path, Path, Path]:
    """A throwaway CA and a server certificate for 127.0.0.1 and localhost."""
    now = dt.datetime.now(dt.UTC)
    ca_key, server_key = _key(), _key()
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "conveyor test CA")])
    ca = (
        x509.CertificateBuilder()
        .subject_name(ca_name)
        .issuer_name(ca_name)
        .public_key(ca_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(ca_key, hashes.SHA256())
    )
    server = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "localhost")]))
        .issuer_name(ca_name)
        .public_key(server_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=1))
        .add_extension(
            x509.SubjectAlternativeName(
                [x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]
            ),
            critical=False,
        )
        .sign(ca_key, hashes.SHA256())
    )
    ca_pem, cert_pem = directory / "ca.pem", directory / "server.pem"
    key_pem = directory / "key.pem"
    _write_pem(ca_pem, ca.public_bytes(serialization.Encoding.PEM))
    _write_pem(cert_pem, server.public_bytes(serialization.Encoding.PEM))
    _write_pem(
        key_pem,
        server_key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        ),
    )
    return ca_pem, cert_pem, key_pem


@dataclass
class TLSRedis:
    """A TLS-only redis-server whose default user is off and one ACL user may do anything."""

    port: int
    ca: Path

    def url(self, password: str = PASSWORD, user: str = USER) -> str:
        """A ``rediss://`` URL for the ACL user, trusting the test CA."""
        return (
            f"rediss://{user}:{password}@127.0.0.1:{self.port}/0"
            f"?prefix=tls{os.urandom(3).hex()}&ssl_ca_certs={self.ca}"
        )


@pytest.fixture(scope="module")
def tls_redis(tmp_path_factory: pytest.TempPathFactory) -> Iterator[TLSRedis]:
    directory = tmp_path_factory.mktemp("tls-redis")
    ca, cert, key = make_certs(directory)
    port = free_port()
    exe = shutil.which("redis-server")
    assert exe is not None, "redis-server is needed (apt-get install redis-server)"
    proc = subprocess.Popen(
        [exe, "--bind", "127.0.0.1", "--port", "0", "--tls-port", str(port),
         "--tls-cert-file", str(cert), "--tls-key-file", str(key),
         "--tls-ca-cert-file", str(ca), "--tls-auth-clients", "no",
         "--save", "", "--appendonly", "no", "--dir", str(directory),
         "--user", "default", "off",
         "--user", USER, "on", f">{PASSWORD}", "~*", "&*", "+@all"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )  # fmt: skip
    client = redis.Redis(
        host="127.0.0.1", port=port, ssl=True, ssl_ca_certs=str(ca),
        username=USER, password=PASSWORD, socket_timeout=1,
    )  # fmt: skip
    deadline = time.monotonic() + 20
    while True:
        try:
            if client.ping():
                break
        except redis.RedisError:
            pass
        assert time.monotonic() < deadline, "the TLS redis-server did not start"
        time.sleep(0.1)
    client.close()
    yield TLSRedis(port, ca)
    proc.send_signal(signal.SIGKILL)
    proc.wait(10)


def test_jobs_run_over_tls_as_an_acl_user(tls_redis: TLSRedis) -> None:
    url = tls_redis.url()

    async def scenario() -> conveyor.State:
        app = conveyor.App(url)
        app.tasks[tasks.typed.name] = tasks.typed
        try:
            engine = await app.engine()
            await engine.enqueue([tasks.typed.build(tasks.Typed(n=3, name="tls"), job_id="t1")])
            await conveyor.Worker(app, queues=["hostile"], burst=True, idle_wait=0.05).run()
            record = await engine.get("hostile", "t1")
            assert record is not None
            return record.state
        finally:
            await app.close()

    assert asyncio.run(scenario()) is conveyor.State.COMPLETED


def test_plain_tcp_to_the_tls_port_is_refused(tls_redis: TLSRedis) -> None:
    url = f"redis://{USER}:{PASSWORD}@127.0.0.1:{tls_redis.port}/0?socket_timeout=2"

    async def connect() -> None:
        app = conveyor.App(url)
        try:
            await app.engine()
        finally:
            await app.close()

    with pytest.raises(conveyor.ConveyorError) as info:
        asyncio.run(connect())
    assert PASSWORD not in str(info.value)


def test_a_wrong_password_fails_without_showing_either_password(tls_redis: TLSRedis) -> None:
    wrong = "Wr0ng-password-also-secret"

    async def connect() -> None:
        app = conveyor.App(tls_redis.url(password=wrong))
        try:
            await app.engine()
        finally:
            await app.close()

    with pytest.raises(conveyor.ConveyorError) as info:
        asyncio.run(connect())
    text = f"{info.value!r} {info.value} {info.value.__cause__!r}"
    assert wrong not in text and PASSWORD not in text
    assert "***" in str(info.value)  # the URL is shown, redacted
    assert PASSWORD not in repr(conveyor.App(tls_redis.url()))


def _cli(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "conveyor.cli", *args],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=ROOT,
        env=env,
        check=False,
    )


def test_the_cli_never_prints_the_password(tls_redis: TLSRedis) -> None:
    good = _cli("status", "--url", tls_redis.url())
    assert good.returncode == 0, good.stderr
    bad = _cli("status", "--url", tls_redis.url(password="Wr0ng-password-also-secret"))
    assert bad.returncode != 0
    assert "***" in bad.stderr  # the error names the server, password hidden
    for out in (good, bad):
        assert PASSWORD not in out.stdout + out.stderr
        assert "Wr0ng-password-also-secret" not in out.stdout + out.stderr
    debug = _cli("--debug", "status", "--url", tls_redis.url(password="Wr0ng-password-also-secret"))
    assert "Wr0ng-password-also-secret" not in debug.stdout + debug.stderr


def test_worker_logs_never_show_the_password(tls_redis: TLSRedis, tmp_path: Path) -> None:
    url = tls_redis.url()

    async def enqueue() -> None:
        app = conveyor.App(url)
        try:
            engine = await app.engine()
            bad = tasks.typed.build(tasks.Typed(n=1, name="x"), job_id="logged")
            bad.payload = b"not json"  # a dead letter: error and alert lines in the log
            await engine.enqueue([bad])
        finally:
            await app.close()

    asyncio.run(enqueue())
    cmd = [sys.executable, "-m", "conveyor.cli", "worker", "chaos.tasks:app", "--queues",
           "hostile", "--log-level", "DEBUG"]  # fmt: skip
    proc = subprocess.Popen(
        cmd, env=child_env(url, tmp_path, 30.0), cwd=ROOT, stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT, text=True,
    )  # fmt: skip
    try:
        deadline = time.monotonic() + 30
        while not any(e["ev"] == "dead" for e in truth.read(tmp_path, "truth")):
            assert time.monotonic() < deadline, "the bad job was not dead-lettered"
            time.sleep(0.1)
        proc.send_signal(signal.SIGTERM)
        output, _ = proc.communicate(timeout=30)
    finally:
        proc.kill()
    assert "dead-lettered" in output  # the log did say things
    assert PASSWORD not in output

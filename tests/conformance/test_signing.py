"""HMAC signing: signed jobs run; unsigned, unknown-key and tampered jobs never run."""

from __future__ import annotations

import dataclasses

import conveyor
from conveyor.testing import drain

OLD = "0" * 32
NEW = "1" * 32


async def test_signed_jobs_run_and_rotation_keeps_old_ones_valid(engine_url: str) -> None:
    old_app = conveyor.App(engine_url, signing=conveyor.Signing({"2026-06": OLD}, "2026-06"))
    keys = {"2026-06": OLD, "2026-12": NEW}
    new_app = conveyor.App(engine_url, signing=conveyor.Signing(keys, "2026-12"))
    ran: list[int] = []
    for app in (old_app, new_app):
        app.task(name="pay")(ran.append)
    try:
        await old_app.tasks["pay"].enqueue(1)
        await new_app.tasks["pay"].enqueue(2)
        counts = await drain(new_app)
        assert counts.completed == 2 and sorted(ran) == [1, 2]
    finally:
        await old_app.close()
        await new_app.close()


async def test_tampered_unsigned_and_unknown_key_jobs_are_dead_lettered(engine_url: str) -> None:
    signing = conveyor.Signing({"k": NEW}, "k")
    app = conveyor.App(engine_url, signing=signing)
    stranger = conveyor.App(engine_url, signing=conveyor.Signing({"x": OLD}, "x"))
    unsigned = conveyor.App(engine_url)
    ran: list[int] = []
    for a in (app, stranger, unsigned):
        a.task(name="pay")(ran.append)
    try:
        engine = await app.engine()
        tampered = app.tasks["pay"].build(10)
        tampered = dataclasses.replace(tampered, payload=b"1000000")
        await engine.enqueue([tampered])
        foreign = await stranger.tasks["pay"].enqueue(20)
        plain = await unsigned.tasks["pay"].enqueue(30)
        counts = await drain(app)
        assert counts.dead == 3 and counts.completed == 0 and ran == []
        reasons = {}
        for job_id in (tampered.id, foreign.id, plain.id):
            dead = await app.dlq.show("default", job_id)
            assert dead.failures[-1].error_type == "SignatureInvalid"
            reasons[job_id] = dead.failures[-1].message
        assert "altered" in reasons[tampered.id]
        assert "unknown key id 'x'" in reasons[foreign.id]
        assert "not signed" in reasons[plain.id]
    finally:
        for a in (app, stranger, unsigned):
            await a.close()


def test_short_keys_are_refused() -> None:
    try:
        conveyor.Signing({"k": "short"}, "k")
    except conveyor.ConfigurationError as exc:
        assert "shorter than 16 bytes" in str(exc)
    else:
        raise AssertionError("a short key must be refused")

"""The dashboard over HTTP (httpx on the ASGI app): auth, CSRF, DLQ actions, escaping, mounts."""

from __future__ import annotations

import base64
import datetime as dt
import re
from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest
from starlette.applications import Starlette
from starlette.routing import Mount

import conveyor
from conveyor.dashboard import create_dashboard
from tests.dashboard.conftest import Image, Shop, csrf_token, make_shop, work

#: 2026-01-01 00:00 UTC: round minutes make the datetime-local filters exact.
HIDDEN = re.compile(r'<input type="hidden" name="([^"]+)" value="([^"]*)">')
START = dt.datetime(2026, 1, 1, tzinfo=dt.UTC).timestamp()


@pytest.fixture
def clock() -> conveyor.ManualClock:
    return conveyor.ManualClock(START)


@pytest.fixture
async def shop(sqlite_url: str, clock: conveyor.ManualClock) -> AsyncIterator[Shop]:
    s = make_shop(sqlite_url, clock)
    yield s
    await s.app.close()


def client(dashboard: Any, **kwargs: Any) -> httpx.AsyncClient:
    return httpx.AsyncClient(
        transport=httpx.ASGITransport(app=dashboard), base_url="http://testserver", **kwargs
    )


async def run(shop: Shop) -> conveyor.worker.WorkerCounts:
    return await work(shop.app)


async def stats(shop: Shop) -> dict[str, conveyor.records.QueueStats]:
    return {s.queue: s for s in await shop.app.stats()}


# -- CSRF ---------------------------------------------------------------------------------------


async def test_post_without_csrf_token_is_refused_and_changes_nothing(shop: Shop) -> None:
    await shop.send_email.enqueue("ada@example.com")
    async with client(create_dashboard(shop.app)) as http:
        page = await http.get("/")
        assert page.status_code == 200
        token = csrf_token(page.text)

        missing = await http.post("/queues/emails/pause", data={"paused": "1"})
        assert missing.status_code == 403
        assert "CSRF" in missing.text
        forged = await http.post(
            "/queues/emails/pause", data={"paused": "1", "csrf_token": "abc.123.def"}
        )
        assert forged.status_code == 403
        assert (await stats(shop))["emails"].paused is False

        ok = await http.post("/queues/emails/pause", data={"paused": "1", "csrf_token": token})
        assert ok.status_code == 303
        assert (await stats(shop))["emails"].paused is True


async def test_csrf_token_is_bound_to_the_browser_cookie(shop: Shop) -> None:
    await shop.send_email.enqueue("ada@example.com")
    dashboard = create_dashboard(shop.app)
    async with client(dashboard) as victim, client(dashboard) as attacker:
        token = csrf_token((await attacker.get("/")).text)  # the attacker's own valid token
        await victim.get("/")  # the victim has a cookie of their own
        stolen = await victim.post(
            "/queues/emails/pause", data={"paused": "1", "csrf_token": token}
        )
        assert stolen.status_code == 403
        assert (await stats(shop))["emails"].paused is False


async def test_tokens_from_another_process_secret_are_refused(shop: Shop) -> None:
    await shop.send_email.enqueue("ada@example.com")
    async with client(create_dashboard(shop.app, secret=b"a" * 32)) as first:
        await first.get("/")
        token = csrf_token((await first.get("/")).text)
        cookies = first.cookies
    async with client(create_dashboard(shop.app, secret=b"b" * 32), cookies=cookies) as second:
        refused = await second.post(
            "/queues/emails/pause", data={"paused": "1", "csrf_token": token}
        )
        assert refused.status_code == 403


# -- authentication -----------------------------------------------------------------------------


async def test_token_auth_refuses_anonymous_requests_and_accepts_the_token(shop: Shop) -> None:
    await shop.send_email.enqueue("ada@example.com", job_id="welcome-ada")
    async with client(create_dashboard(shop.app, token="t0ken")) as http:
        for path in ("/", "/api/overview", "/metrics", "/queues/emails/job/welcome-ada"):
            refused = await http.get(path)
            assert refused.status_code == 401, path
            assert "Bearer" in refused.headers["www-authenticate"]
            assert "welcome-ada" not in refused.text
        wrong = await http.get("/", headers={"Authorization": "Bearer nope"})
        assert wrong.status_code == 401
        assert (await http.get("/static/dashboard.css")).status_code == 200  # public

        bearer = await http.get("/api/overview", headers={"Authorization": "Bearer t0ken"})
        assert bearer.status_code == 200

        link = await http.get("/queues/emails?state=queued&token=t0ken")
        assert link.status_code == 303
        assert link.headers["location"] == "/queues/emails?state=queued"  # token not kept
        assert "t0ken" not in link.headers["set-cookie"]  # the cookie is a signature
        assert (await http.get("/queues/emails?state=queued")).status_code == 200


async def test_basic_auth(shop: Shop) -> None:
    def basic(user: str, password: str) -> dict[str, str]:
        raw = base64.b64encode(f"{user}:{password}".encode()).decode()
        return {"Authorization": f"Basic {raw}"}

    async with client(create_dashboard(shop.app, basic_auth=("ops", "pa55"))) as http:
        refused = await http.get("/", headers={"Accept": "text/html"})
        assert refused.status_code == 401
        assert refused.headers["www-authenticate"].startswith("Basic")
        assert (await http.get("/", headers=basic("ops", "wrong"))).status_code == 401
        assert (await http.get("/", headers=basic("root", "pa55"))).status_code == 401
        assert (await http.get("/", headers=basic("ops", "pa55"))).status_code == 200


async def test_bad_auth_options_are_refused(shop: Shop) -> None:
    with pytest.raises(conveyor.ConfigurationError, match="token"):
        create_dashboard(shop.app, token=" ")
    with pytest.raises(conveyor.ConfigurationError, match="basic_auth"):
        create_dashboard(shop.app, basic_auth=("ops", ""))


async def test_every_response_forbids_framing_and_inline_scripts(shop: Shop) -> None:
    async with client(create_dashboard(shop.app)) as http:
        response = await http.get("/")
        assert response.headers["x-frame-options"] == "DENY"
        assert "script-src 'self'" in response.headers["content-security-policy"]
        csrf_cookie = response.headers["set-cookie"]
        assert "HttpOnly" in csrf_cookie and "SameSite=lax" in csrf_cookie


# -- DLQ: filters, confirmation counts, actions -------------------------------------------------


async def fill_dlq(shop: Shop, clock: conveyor.ManualClock) -> None:
    """emails DLQ: bounce-1 at 00:00, bounce-2 at 01:00, bounce-3 and 'nobody' at 02:00."""
    await shop.send_email.enqueue("bounce-1@example.com", job_id="bounce-1")
    await run(shop)
    clock.advance(3600)
    await shop.send_email.enqueue("bounce-2@example.com", job_id="bounce-2")
    await run(shop)
    clock.advance(3600)
    await shop.send_email.enqueue("bounce-3@example.com", job_id="bounce-3")
    await shop.send_email.enqueue("nobody", job_id="nobody")
    await run(shop)


async def test_dlq_filters_by_task_error_and_time(shop: Shop, clock: conveyor.ManualClock) -> None:
    await fill_dlq(shop, clock)
    async with client(create_dashboard(shop.app)) as http:
        everything = await http.get("/queues/emails/dlq")
        assert '<strong data-field="matching">4</strong> of 4' in everything.text
        assert '<option value="ConnectionError"' in everything.text
        assert '<option value="ValueError"' in everything.text

        by_error = await http.get("/queues/emails/dlq", params={"error": "ConnectionError"})
        assert '<strong data-field="matching">3</strong> of 4' in by_error.text
        assert "nobody" not in by_error.text

        by_time = await http.get(
            "/queues/emails/dlq",
            params={"error": "ConnectionError", "since": "2026-01-01T00:30"},
        )
        assert '<strong data-field="matching">2</strong> of 4' in by_time.text
        assert "bounce-1" not in by_time.text

        window = await http.get(
            "/queues/emails/dlq",
            params={"since": "2026-01-01T00:30", "until": "2026-01-01T01:30"},
        )
        assert '<strong data-field="matching">1</strong> of 4' in window.text
        assert "bounce-2" in window.text

        bad = await http.get("/queues/emails/dlq", params={"since": "yesterday"})
        assert bad.status_code == 400


async def test_redrive_all_matching_confirms_the_count_and_touches_only_those_jobs(
    shop: Shop, clock: conveyor.ManualClock
) -> None:
    await fill_dlq(shop, clock)
    async with client(create_dashboard(shop.app)) as http:
        token = csrf_token((await http.get("/queues/emails/dlq")).text)
        confirm = await http.post(
            "/queues/emails/dlq/confirm",
            data={"intent": "redrive:matching", "error": "ConnectionError", "csrf_token": token},
        )
        assert confirm.status_code == 200
        assert '<strong data-field="count">3</strong>' in confirm.text
        assert "error ConnectionError" in confirm.text
        assert (await stats(shop))["emails"].dead == 4  # confirming changed nothing

        # a job that dies after the confirmation page is not part of what was confirmed
        clock.advance(60)
        await shop.send_email.enqueue("bounce-4@example.com", job_id="bounce-4")
        await run(shop)

        form = _hidden_fields(confirm.text)
        applied = await http.post("/queues/emails/dlq/apply", data=form)
        assert applied.status_code == 303
        assert "done=redrive" in applied.headers["location"]
        assert "n=3" in applied.headers["location"]
        after = await stats(shop)
        assert after["emails"].dead == 2  # nobody + bounce-4
        assert after["emails"].counts[conveyor.State.QUEUED] == 3
        flash = await http.get(applied.headers["location"])
        assert "Redrove 3 jobs" in flash.text


async def test_delete_selected_and_purge_all_matching(
    shop: Shop, clock: conveyor.ManualClock
) -> None:
    await fill_dlq(shop, clock)
    async with client(create_dashboard(shop.app)) as http:
        token = csrf_token((await http.get("/queues/emails/dlq")).text)
        confirm = await http.post(
            "/queues/emails/dlq/confirm",
            data={"intent": "delete:ids", "id": ["nobody", "bounce-1"], "csrf_token": token},
        )
        assert '<strong data-field="count">2</strong>' in confirm.text
        assert "gone for good" in confirm.text
        applied = await http.post("/queues/emails/dlq/apply", data=_hidden_fields(confirm.text))
        assert applied.status_code == 303
        assert (await http.get("/queues/emails/job/nobody")).status_code == 404

        purge = await http.post(
            "/queues/emails/dlq/confirm", data={"intent": "delete:matching", "csrf_token": token}
        )
        assert '<strong data-field="count">2</strong>' in purge.text
        await http.post("/queues/emails/dlq/apply", data=_hidden_fields(purge.text))
        assert "emails" not in await stats(shop)  # no jobs left at all

        nothing = await http.post(
            "/queues/emails/dlq/confirm", data={"intent": "redrive:matching", "csrf_token": token}
        )
        assert "Nothing to redrive" in nothing.text
        empty = await http.post(
            "/queues/emails/dlq/confirm", data={"intent": "redrive:ids", "csrf_token": token}
        )
        assert empty.status_code == 400


async def test_apply_without_csrf_token_is_refused(shop: Shop, clock: conveyor.ManualClock) -> None:
    await fill_dlq(shop, clock)
    async with client(create_dashboard(shop.app)) as http:
        await http.get("/")
        refused = await http.post("/queues/emails/dlq/apply", data={"intent": "delete:matching"})
        assert refused.status_code == 403
        assert (await stats(shop))["emails"].dead == 4


# -- pages --------------------------------------------------------------------------------------


async def test_payloads_logs_and_errors_are_escaped(shop: Shop) -> None:
    shop.failing["on"] = True
    await shop.resize.enqueue(
        Image(image_id="bad-<b>1</b>", note="<script>alert(1)</script>"), job_id="x<i>y"
    )
    await run(shop)
    async with client(create_dashboard(shop.app)) as http:
        page = await http.get("/queues/images/job/x%3Ci%3Ey")
        assert page.status_code == 200
        assert "<script>alert(1)</script>" not in page.text
        assert "&lt;script&gt;alert(1)&lt;/script&gt;" in page.text
        assert "<b>1</b>" not in page.text  # in the log line and the error message
        assert "x&lt;i&gt;y" in page.text


async def test_overview_counts_and_last_hour_rates(shop: Shop, clock: conveyor.ManualClock) -> None:
    for n in range(3):
        await shop.resize.enqueue(Image(image_id=f"img-{n}"))
    await shop.send_email.enqueue("bounce@example.com")
    await shop.send_email.enqueue("later@example.com", delay=600)
    await run(shop)
    clock.advance(90)
    async with client(create_dashboard(shop.app)) as http:
        data = (await http.get("/api/overview")).json()
        rows = {r["queue"]: r for r in data["queues"]}
        assert set(rows) == {"emails", "images", "reports"}  # reports: registered, empty
        assert rows["images"]["counts"]["completed"] == 3
        assert rows["images"]["completed_last_window"] == 3
        assert rows["images"]["failure_rate"] == 0
        assert rows["emails"]["counts"]["scheduled"] == 1
        assert rows["emails"]["dlq_depth"] == 1
        assert rows["emails"]["oldest_dead_age_seconds"] == 90
        assert rows["emails"]["failure_rate"] == 1.0
        clock.advance(3600)  # everything finished more than an hour ago now
        later = {r["queue"]: r for r in (await http.get("/api/overview")).json()["queues"]}
        assert later["images"]["completed_last_window"] == 0
        assert later["images"]["failure_rate"] is None


async def test_jobs_by_state_are_paged_and_found_by_id(shop: Shop) -> None:
    for n in range(5):
        await shop.resize.enqueue(Image(image_id=f"img-{n}"), job_id=f"img-{n}")
        shop.app.clock.advance(1)  # type: ignore[attr-defined]
    await run(shop)
    async with client(create_dashboard(shop.app, page_size=2)) as http:
        first = await http.get("/queues/images", params={"state": "completed"})
        assert [f"img-{n}" in first.text for n in range(5)].count(True) == 2
        assert "page=2" in first.text and "Next" in first.text
        last = await http.get("/queues/images", params={"state": "completed", "page": "3"})
        assert [f"img-{n}" in last.text for n in range(5)].count(True) == 1
        assert "Next" not in last.text

        found = await http.get("/search", params={"id": "img-3"})
        assert found.status_code == 303
        assert found.headers["location"] == "/queues/images/job/img-3"
        in_queue = await http.get("/queues/images", params={"id": "img-4"})
        assert in_queue.headers["location"] == "/queues/images/job/img-4"
        missing = await http.get("/search", params={"id": "nope"})
        assert "No queue has a job with this id" in missing.text
        assert (await http.get("/queues/images", params={"state": "lost"})).status_code == 400


async def test_job_ids_with_slashes_link_to_their_page(shop: Shop) -> None:
    await shop.resize.enqueue(Image(image_id="img-1"), job_id="tenant/42")
    async with client(create_dashboard(shop.app)) as http:
        listing = await http.get("/queues/images")
        assert 'href="/queues/images/job/tenant%2F42"' in listing.text
        page = await http.get("/queues/images/job/tenant%2F42")
        assert page.status_code == 200 and "tenant/42" in page.text
        api = await http.get("/api/queues/images/job/tenant%2F42")
        assert api.json()["state"] == "queued"


async def test_mounted_under_a_prefix_every_link_and_cookie_keeps_the_prefix(shop: Shop) -> None:
    await shop.send_email.enqueue("ada@example.com", job_id="welcome-ada")
    outer = Starlette(routes=[Mount("/ops/conveyor", create_dashboard(shop.app))])
    async with client(outer) as http:
        page = await http.get("/ops/conveyor/")
        assert page.status_code == 200
        assert 'href="/ops/conveyor/static/dashboard.css"' in page.text
        assert 'href="/ops/conveyor/queues/emails"' in page.text
        assert 'action="/ops/conveyor/queues/emails/pause"' in page.text
        assert "Path=/ops/conveyor/" in page.headers["set-cookie"]
        assert (await http.get("/ops/conveyor/static/dashboard.js")).status_code == 200
        token = csrf_token(page.text)
        paused = await http.post(
            "/ops/conveyor/queues/emails/pause", data={"paused": "1", "csrf_token": token}
        )
        assert paused.headers["location"].startswith("/ops/conveyor/?")
        assert (await stats(shop))["emails"].paused is True


async def test_unknown_job_is_a_404_page(shop: Shop) -> None:
    async with client(create_dashboard(shop.app)) as http:
        page = await http.get("/queues/images/job/ghost")
        assert page.status_code == 404
        assert "Job not found" in page.text
        api = await http.get("/api/queues/images/job/ghost")
        assert api.status_code == 404 and api.json()["error"] == "Job not found"


def _hidden_fields(html: str) -> dict[str, list[str]]:
    """The hidden inputs of the confirmation form (a name may repeat: the job ids)."""
    start = html.index("confirm-form")
    form = html[start : html.index("</form>", start)]
    fields: dict[str, list[str]] = {}
    for name, value in HIDDEN.findall(form):
        fields.setdefault(name, []).append(value)
    return fields


async def test_engines_that_cannot_list_finished_jobs_still_get_an_overview_and_metrics(
    shop: Shop, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Like SQS without a state table: only dead jobs can be listed."""
    await shop.send_email.enqueue("bounce@example.com")
    await run(shop)
    engine = await shop.app.engine()
    list_jobs = engine.list_jobs

    async def dead_only(queue: str, state: conveyor.State, *args: Any, **kw: Any) -> Any:
        if state is not conveyor.State.DEAD:
            raise conveyor.ConfigurationError("listing needs the state table")
        return await list_jobs(queue, state, *args, **kw)

    monkeypatch.setattr(engine, "list_jobs", dead_only)
    async with client(create_dashboard(shop.app)) as http:
        page = await http.get("/")
        assert page.status_code == 200
        assert "n/a" in page.text
        row = {r["queue"]: r for r in (await http.get("/api/overview")).json()["queues"]}
        assert row["emails"]["dlq_depth"] == 1
        assert row["emails"]["completed_last_window"] is None
        metrics = (await http.get("/metrics")).text
        assert "conveyor_engine_up 1.0" in metrics
        assert 'conveyor_dlq_depth{queue="emails"} 1.0' in metrics
        listing = await http.get("/queues/emails", params={"state": "completed"})
        assert listing.status_code == 500
        assert "state table" in listing.text

"""The dashboard in a real headless Chromium: see a dead job, redrive it, watch it complete."""

from __future__ import annotations

from typing import Any

from playwright.sync_api import expect

from tests.dashboard.conftest import DOCS_IMAGES, Image, Shop, in_thread, served

VIEWPORT = {"width": 1280, "height": 860}


def seed(shop: Shop) -> None:
    """Completed, dead (with real tracebacks), scheduled and paused jobs in three queues."""
    for n in range(1, 9):
        shop.resize.enqueue_sync(Image(image_id=f"img-{n}"), job_id=f"img-{n}")
    shop.resize.enqueue_sync(
        Image(image_id="bad-7", note="<script>alert('x')</script>"), job_id="bad-7"
    )
    shop.send_email.enqueue_sync("ada@example.com", job_id="welcome-ada")
    shop.send_email.enqueue_sync("bounce@example.com", job_id="welcome-bounce")
    shop.send_email.enqueue_sync("later@example.com", job_id="reminder", delay=3600)

    async def pause_reports() -> None:
        await (await shop.app.engine()).set_paused("reports", True)

    shop.app.run_sync(pause_reports())
    for month in ("2026-01", "2026-02", "2026-03"):
        shop.build_report.enqueue_sync(month, job_id=f"report-{month}")


def test_overview_drill_into_dead_job_redrive_and_see_it_complete(shop: Shop, browser: Any) -> None:
    in_thread(seed, shop)
    counts = shop.run_worker()
    assert (counts.completed, counts.dead) == (9, 2)

    with served(shop.app, poll_interval=0.25) as url:
        context = browser.new_context(viewport=VIEWPORT)
        page = context.new_page()
        dialogs: list[str] = []
        page.on("dialog", lambda d: (dialogs.append(d.message), d.dismiss()))

        page.goto(url + "/")
        images = page.locator('tr[data-queue="images"]')
        expect(images.locator('[data-state="completed"]')).to_have_text("8")
        expect(images.locator('[data-state="dead"]')).to_have_text("1")
        expect(page.locator('tr[data-queue="emails"] [data-state="scheduled"]')).to_have_text("1")
        reports = page.locator('tr[data-queue="reports"]')
        expect(reports.locator('[data-state="queued"]')).to_have_text("3")
        expect(reports.locator(".badge")).to_have_text("paused")
        DOCS_IMAGES.mkdir(parents=True, exist_ok=True)
        page.screenshot(path=str(DOCS_IMAGES / "dashboard-overview.png"), full_page=True)

        # drill down: the DLQ count, then the dead job
        images.locator('[data-state="dead"]').click()
        expect(page.locator("h1")).to_contain_text("Dead-letter queue")
        page.get_by_role("link", name="bad-7").click()
        expect(page.locator('[data-field="state"]')).to_have_text("dead")
        traceback = page.locator("pre.traceback").first
        expect(traceback).to_contain_text("in decode_image")
        expect(traceback).to_contain_text("ValueError: cannot decode image bad-7: not a PNG")
        expect(page.locator(".attempt")).to_have_count(2)  # 1 try + 1 retry
        # the payload is shown as text, never run as markup
        expect(page.locator('[data-field="payload"]')).to_contain_text(
            "<script>alert('x')</script>"
        )
        assert dialogs == []
        page.screenshot(path=str(DOCS_IMAGES / "dashboard-job.png"), full_page=True)

        # redrive, through the confirmation page that shows the count
        page.get_by_role("button", name="Redrive", exact=True).click()
        expect(page.locator('[data-field="count"]')).to_have_text("1")
        page.get_by_role("button", name="Redrive 1 job").click()
        expect(page.locator(".flash")).to_contain_text("Redrove 1 job")
        expect(page.locator('[data-field="state"]')).to_have_text("queued")

        # the worker runs it; the open page updates itself without a reload
        page.evaluate("window.__not_reloaded = true")
        shop.failing["on"] = False
        counts = shop.run_worker(["images"])
        assert counts.completed == 1
        expect(page.locator('[data-field="state"]')).to_have_text("completed")
        expect(page.locator('[data-field="progress"]')).to_have_text("100%")
        assert page.evaluate("window.__not_reloaded") is True
        context.close()


def test_action_without_csrf_token_is_refused_in_the_browser(shop: Shop, browser: Any) -> None:
    in_thread(shop.send_email.enqueue_sync, "ada@example.com", job_id="welcome-ada")
    with served(shop.app) as url:
        context = browser.new_context(viewport=VIEWPORT)
        page = context.new_page()
        page.goto(url + "/")
        row = page.locator('tr[data-queue="emails"]')
        # a forged form: the same POST, without the token
        row.locator('input[name="csrf_token"]').evaluate("el => el.remove()")
        with page.expect_response(lambda r: r.request.method == "POST") as posted:
            row.get_by_role("button", name="Pause").click()
        assert posted.value.status == 403
        expect(page.locator("h1")).to_contain_text("CSRF")
        assert shop.stats()["emails"].paused is False

        # the real form still works
        page.goto(url + "/")
        page.locator('tr[data-queue="emails"]').get_by_role("button", name="Pause").click()
        expect(page.locator('tr[data-queue="emails"] .badge')).to_have_text("paused")
        context.close()


def test_access_without_the_token_is_refused_when_auth_is_on(shop: Shop, browser: Any) -> None:
    in_thread(shop.send_email.enqueue_sync, "ada@example.com", job_id="welcome-ada")
    with served(shop.app, token="s3cret-token") as url:
        context = browser.new_context(viewport=VIEWPORT)
        page = context.new_page()
        response = page.goto(url + "/queues/emails")
        assert response is not None and response.status == 401
        expect(page.locator("h1")).to_have_text("Sign in")
        expect(page.locator("body")).not_to_contain_text("welcome-ada")
        api = context.request.get(url + "/api/overview")
        assert api.status == 401

        page.fill('input[name="token"]', "wrong")
        page.get_by_role("button", name="Sign in").click()
        expect(page.locator(".flash")).to_contain_text("not valid")

        page.fill('input[name="token"]', "s3cret-token")
        page.get_by_role("button", name="Sign in").click()
        expect(page.locator("h1")).to_contain_text("Queue emails")
        assert context.request.get(url + "/api/overview").status == 200
        context.close()

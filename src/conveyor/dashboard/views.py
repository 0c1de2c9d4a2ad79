"""The dashboard's pages, JSON endpoints and actions.

Every state-changing action is a POST that must carry a valid CSRF token; DLQ actions go
through a confirmation page that shows how many jobs they will touch.
"""

from __future__ import annotations

from typing import Any
from urllib.parse import urlencode

from markupsafe import Markup
from starlette.datastructures import FormData
from starlette.requests import Request
from starlette.responses import HTMLResponse, JSONResponse, Response
from starlette.routing import BaseRoute, Mount, Route
from starlette.staticfiles import StaticFiles

import conveyor
from conveyor.app import App
from conveyor.dashboard import forms, queries, urls
from conveyor.dashboard.forms import ACTIONS, CONFIRM_LIST_LIMIT, FilterForm, Problem
from conveyor.dashboard.render import STATIC, age, clip, environment, pretty_json
from conveyor.dashboard.security import (
    CSRF_COOKIE,
    CSRF_FIELD,
    Csrf,
    Gate,
    cookie_path,
)
from conveyor.engines import redact
from conveyor.errors import EngineUnavailable
from conveyor.job import failure_log
from conveyor.metrics import CONTENT_TYPE, ConveyorMetrics
from conveyor.records import JobRecord, State
from conveyor.tracing import trace_context


class Views:
    """Handlers of one dashboard, bound to one :class:`conveyor.App`."""

    def __init__(
        self,
        app: App,
        *,
        csrf: Csrf,
        gate: Gate,
        poll_interval: float,
        page_size: int,
        metrics: ConveyorMetrics | None,
    ) -> None:
        self.app = app
        self.csrf = csrf
        self.gate = gate
        self.poll_interval = poll_interval
        self.page_size = page_size
        self.metrics = metrics
        self.env = environment()

    def routes(self) -> list[BaseRoute]:
        """Every route of the dashboard, relative to where it is mounted."""
        routes: list[BaseRoute] = [
            Route("/", self.overview, name="overview"),
            Route("/search", self.search),
            Route("/login", self.login, methods=["GET", "POST"]),
            Route("/queues/{queue}", self.queue),
            Route("/queues/{queue}/job/{job_id:path}", self.job),
            Route("/queues/{queue}/dlq", self.dlq),
            Route("/queues/{queue}/dlq/confirm", self.confirm, methods=["POST"]),
            Route("/queues/{queue}/dlq/apply", self.apply, methods=["POST"]),
            Route("/queues/{queue}/pause", self.pause, methods=["POST"]),
            Route("/api/overview", self.api_overview),
            Route("/api/queues/{queue}/jobs", self.api_jobs),
            Route("/api/queues/{queue}/job/{job_id:path}", self.api_job),
            Mount("/static", StaticFiles(directory=STATIC), name="static"),
        ]
        if self.metrics is not None:
            routes.append(Route("/metrics", self.metrics_endpoint))
        return routes

    # -- rendering --------------------------------------------------------------------------

    async def render(
        self, request: Request, template: str, status: int = 200, **context: Any
    ) -> HTMLResponse:
        """Render ``template`` with the common context; issue a CSRF cookie if needed."""
        cookie = request.cookies.get(CSRF_COOKIE)
        nonce = cookie if cookie is not None and Csrf.well_formed(cookie) else Csrf.new_nonce()
        token = self.csrf.token(nonce)
        now = self.app.clock.now()
        if "nav_queues" not in context:
            try:
                context["nav_queues"] = queries.all_queues(self.app, await self.app.stats())
            except Exception:  # the error page must render even when the engine is down
                context["nav_queues"] = self.app.queues
        base = urls.base(request)
        html = self.env.get_template(template).render(
            base=base,
            csrf_input=Markup('<input type="hidden" name="{}" value="{}">').format(
                CSRF_FIELD, token
            ),
            poll_ms=int(self.poll_interval * 1000),
            version=conveyor.__version__,
            engine=redact(self.app.url),
            now=now,
            age_of=lambda t: age(None if t is None else now - t),
            flash=_flash(request),
            search_id=request.query_params.get("id", "") if template == "search.html" else "",
            current_queue=request.path_params.get("queue"),
            **context,
        )
        response = HTMLResponse(html, status_code=status)
        if nonce != cookie:
            # Lax, not Strict: a Strict cookie is not sent when the dashboard is opened from a
            # link elsewhere, and the fresh nonce set then would void the forms of other tabs.
            # The token check, not SameSite, is what stops cross-site posts.
            response.set_cookie(
                CSRF_COOKIE,
                nonce,
                httponly=True,
                samesite="lax",
                secure=request.url.scheme == "https",
                path=cookie_path(request.scope),
            )
        return response

    async def problem(self, request: Request, exc: Exception) -> Response:
        """Exception handler: a :class:`Problem` or an engine error as an error page."""
        if isinstance(exc, Problem):
            status, title, message = exc.status, exc.title, exc.message
        elif isinstance(exc, EngineUnavailable):
            status, title, message = 503, "Engine unavailable", str(exc)
        else:
            status, title, message = 500, type(exc).__name__, str(exc)
        if _wants_json(request):
            return JSONResponse({"error": title, "message": message}, status_code=status)
        return await self.render(request, "error.html", status, title=title, message=message)

    async def form(self, request: Request) -> FormData:
        """The POSTed form, after checking its CSRF token against the cookie."""
        form = await request.form()
        token = form.get(CSRF_FIELD)
        if not isinstance(token, str) or not self.csrf.valid(
            token, request.cookies.get(CSRF_COOKIE)
        ):
            raise Problem(
                403,
                "Refused: missing or invalid CSRF token",
                "This action must come from a form of this dashboard. Reload the page and "
                "try again (tokens expire after a while, and cookies must be enabled).",
            )
        return form

    # -- pages ------------------------------------------------------------------------------

    async def overview(self, request: Request) -> Response:
        """Every queue: counts by state, the last hour's throughput and failure rate, DLQ."""
        now = self.app.clock.now()
        rows = await queries.overview(self.app, now)
        return await self.render(
            request,
            "overview.html",
            rows=rows,
            totals=queries.totals(rows),
            fingerprint=queries.overview_fingerprint(rows, now),
            window_minutes=int(queries.RATE_WINDOW // 60),
            nav_queues=[r.queue for r in rows],
        )

    async def api_overview(self, request: Request) -> Response:
        """JSON of the overview (polled by the page for live updates)."""
        now = self.app.clock.now()
        rows = await queries.overview(self.app, now)
        return JSONResponse(
            {
                "queues": [r.to_json(now) for r in rows],
                "generated_at": now,
                "fingerprint": queries.overview_fingerprint(rows, now),
            }
        )

    async def search(self, request: Request) -> Response:
        """Find a job by id in every queue; go straight to it when there is one match."""
        job_id = request.query_params.get("id", "").strip()
        found: list[JobRecord] = []
        if job_id:
            engine = await self.app.engine()
            for queue in queries.all_queues(self.app, await self.app.stats()):
                record = await engine.get(queue, job_id)
                if record is not None:
                    found.append(record)
        if len(found) == 1:
            return urls.redirect(urls.job_url(request, found[0].queue, found[0].id))
        return await self.render(request, "search.html", job_id=job_id, found=found)

    async def queue(self, request: Request) -> Response:
        """Jobs of one queue in one state, paged; ``?id=`` finds one job."""
        queue = request.path_params["queue"]
        job_id = request.query_params.get("id", "").strip()
        if job_id:
            record = await (await self.app.engine()).get(queue, job_id)
            if record is not None:
                return urls.redirect(urls.job_url(request, queue, job_id))
        state, page, records, has_next = await self._jobs(request)
        stats = await self.app.stats()
        counts = queries.counts_of(stats, queue)
        return await self.render(
            request,
            "queue.html",
            queue=queue,
            state=state,
            states=[s.value for s in State],
            counts=counts,
            paused=any(s.queue == queue and s.paused for s in stats),
            nav_queues=queries.all_queues(self.app, stats),
            jobs=records,
            page=page,
            has_next=has_next,
            not_found=job_id,
            fingerprint=queries.jobs_fingerprint(records, counts),
        )

    async def api_jobs(self, request: Request) -> Response:
        """JSON of one page of :meth:`queue`."""
        queue = request.path_params["queue"]
        state, page, records, has_next = await self._jobs(request)
        counts = queries.counts_of(await self.app.stats(), queue)
        return JSONResponse(
            {
                "queue": queue,
                "state": state,
                "page": page,
                "has_next": has_next,
                "counts": counts,
                "jobs": [queries.job_summary(r) for r in records],
                "fingerprint": queries.jobs_fingerprint(records, counts),
            }
        )

    async def job(self, request: Request) -> Response:
        """One job: payload, progress, logs, result and every attempt with its traceback."""
        record = await self._record(request)
        task = self.app.tasks.get(record.task)
        max_attempts = task.effective(record.options).max_attempts if task else None
        trace = trace_context(record.options).get("traceparent", "")
        trace_id = trace.split("-")[1] if trace.count("-") == 3 else ""
        return await self.render(
            request,
            "job.html",
            queue=record.queue,
            job=record,
            attempts=failure_log(record),
            max_attempts=max_attempts,
            known_task=task is not None,
            payload=clip(pretty_json(record.payload)),
            result=clip(pretty_json(record.result)) if record.result is not None else None,
            redriven=record.redrive_round,
            trace_id=trace_id,
            clip=clip,
            fingerprint=queries.job_fingerprint(record),
        )

    async def api_job(self, request: Request) -> Response:
        """JSON of one job's live fields (polled by the job page)."""
        record = await self._record(request)
        return JSONResponse(
            {**queries.job_summary(record), "fingerprint": queries.job_fingerprint(record)}
        )

    async def dlq(self, request: Request) -> Response:
        """Dead jobs of one queue, filtered by task, error type and time, with actions."""
        queue = request.path_params["queue"]
        form = FilterForm.read(request.query_params)
        page = forms.page_number(request)
        offset = (page - 1) * self.page_size
        result = await queries.dead_page(self.app, queue, form.to_filter(), offset, self.page_size)
        return await self.render(
            request,
            "dlq.html",
            queue=queue,
            filters=form,
            result=result,
            page=page,
            has_next=offset + len(result.jobs) < result.matching,
            page_query=lambda n: urlencode({**form.params(), "page": n}),
            last_error=queries.last_error,
        )

    # -- actions ----------------------------------------------------------------------------

    async def confirm(self, request: Request) -> Response:
        """Step one of a DLQ action: show how many jobs it would touch, ask to confirm."""
        queue = request.path_params["queue"]
        form = await self.form(request)
        action, scope = forms.intent(form)
        filters = FilterForm.read(form)
        back = forms.back_target(form)
        ids: list[str] = []
        frozen: float | None = None
        if scope == "ids":
            ids = await self._dead_ids(queue, forms.selected_ids(form))
            count = len(ids)
        else:
            # Jobs that die after this page is shown are not part of what the user confirms.
            frozen = self.app.clock.now()
            count = await self.app.dlq.count(queue, filters.to_filter(frozen))
        return await self.render(
            request,
            "confirm.html",
            queue=queue,
            action=action,
            verb=ACTIONS[action],
            scope=scope,
            intent=f"{action}:{scope}",
            count=count,
            ids=ids,
            shown_ids=ids[:CONFIRM_LIST_LIMIT],
            filters=filters,
            frozen_until=repr(frozen) if frozen is not None else "",
            back=back,
            cancel_url=self._after_url(request, queue, back, ids, filters, None, 0),
        )

    async def apply(self, request: Request) -> Response:
        """Step two of a DLQ action: do it, then go back with the number of jobs touched."""
        queue = request.path_params["queue"]
        form = await self.form(request)
        action, scope = forms.intent(form)
        filters = FilterForm.read(form)
        back = forms.back_target(form)
        ids = forms.selected_ids(form)
        if scope == "ids":
            if action == "redrive":
                done = await self.app.dlq.redrive(queue, job_ids=ids)
            else:
                done = await self.app.dlq.purge(queue, job_ids=ids)
        else:
            frozen = forms.parse_time(form.get("frozen_until"))
            where = filters.to_filter(frozen)
            if action == "redrive":
                done = await self.app.dlq.redrive(queue, where=where)
            else:
                done = await self.app.dlq.purge(queue, where=where)
        return urls.redirect(self._after_url(request, queue, back, ids, filters, action, done))

    async def pause(self, request: Request) -> Response:
        """Pause (``paused=1``) or resume (``paused=0``) a queue."""
        queue = request.path_params["queue"]
        form = await self.form(request)
        paused = form.get("paused") == "1"
        await (await self.app.engine()).set_paused(queue, paused)
        done = "paused" if paused else "resumed"
        target = urls.base(request) + "/"
        if form.get("back") == "queue":
            target = urls.queue_url(request, queue)
        return urls.redirect(f"{target}?{urlencode({'done': done, 'q': queue})}")

    async def login(self, request: Request) -> Response:
        """The token form (only when the dashboard has a token); signs the browser in."""
        gate = self.gate
        if gate.credentials.token is None:
            return urls.redirect(urls.base(request) + "/")
        if request.method == "GET":
            nxt = request.query_params.get("next", "/")
            if gate.authorized(request.scope):
                return urls.redirect(urls.safe_next(request, nxt))
            return await self.login_page(request, 200, nxt=nxt)
        form = await request.form()
        token, nxt = form.get("token"), str(form.get("next", "/"))
        if isinstance(token, str) and gate.authorized_token(token):
            response = urls.redirect(urls.safe_next(request, nxt))
            gate.set_auth_cookie(response, request)
            return response
        return await self.login_page(request, 401, nxt=nxt, error="That token is not valid.")

    async def login_page(
        self, request: Request, status: int, *, nxt: str | None = None, error: str = ""
    ) -> Response:
        """The login form, also the answer to an unauthenticated page request."""
        return await self.render(
            request,
            "login.html",
            status,
            next=nxt if nxt is not None else urls.relative(request),
            error=error,
            nav_queues=[],
        )

    async def metrics_endpoint(self, request: Request) -> Response:
        """Prometheus metrics of the app (text exposition format)."""
        assert self.metrics is not None
        return Response(await self.metrics.render(), media_type=CONTENT_TYPE)

    # -- helpers ----------------------------------------------------------------------------

    async def _jobs(self, request: Request) -> tuple[str, int, list[JobRecord], bool]:
        queue = request.path_params["queue"]
        state_name = request.query_params.get("state", State.QUEUED.value)
        try:
            state = State(state_name)
        except ValueError:
            states = ", ".join(s.value for s in State)
            raise Problem(400, "Unknown state", f"{state_name!r} is not one of {states}") from None
        page = forms.page_number(request)
        engine = await self.app.engine()
        records = await engine.list_jobs(
            queue, state, limit=self.page_size + 1, offset=(page - 1) * self.page_size
        )
        return state.value, page, records[: self.page_size], len(records) > self.page_size

    async def _record(self, request: Request) -> JobRecord:
        queue, job_id = request.path_params["queue"], request.path_params["job_id"]
        record = await (await self.app.engine()).get(queue, job_id)
        if record is None:
            raise Problem(
                404,
                "Job not found",
                f"No job {job_id!r} in queue {queue!r}: it may have been purged, or removed "
                "by the task's keep_completed retention.",
            )
        return record

    async def _dead_ids(self, queue: str, ids: list[str]) -> list[str]:
        engine = await self.app.engine()
        dead = []
        for job_id in ids:
            record = await engine.get(queue, job_id)
            if record is not None and record.state is State.DEAD:
                dead.append(job_id)
        return dead

    def _after_url(
        self,
        request: Request,
        queue: str,
        back: str,
        ids: list[str],
        filters: FilterForm,
        action: str | None,
        done: int,
    ) -> str:
        result = {"done": action, "n": str(done)} if action else {}
        if back == "job" and len(ids) == 1 and action != "delete":
            url = urls.job_url(request, queue, ids[0])
            return f"{url}?{urlencode(result)}" if result else url
        query = urlencode({**filters.params(), **result})
        return urls.dlq_url(request, queue) + (f"?{query}" if query else "")


# -- small helpers ---------------------------------------------------------------------------------


def _wants_json(request: Request) -> bool:
    return request.url.path.startswith(urls.base(request) + "/api/")


def _flash(request: Request) -> str:
    done = request.query_params.get("done")
    n = request.query_params.get("n", "0")
    count = int(n) if n.isdigit() else 0
    jobs = f"{count} job{'s' if count != 1 else ''}"
    if done == "redrive":
        return f"Redrove {jobs}: queued again with their attempts reset."
    if done == "delete":
        return f"Deleted {jobs}."
    if done in ("paused", "resumed"):
        return f"Queue {request.query_params.get('q', '')} {done}."
    return ""

"""The dashboard's pages, JSON endpoints and actions.

Every state-changing action is a POST that must carry a valid CSRF token; DLQ actions go
through a confirmation page that shows how many jobs they will touch.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlencode

from markupsafe import Markup
from starlette.datastructures import FormData
from starlette.requests import Request
from starlette.responses import HTMLResponse, JSONResponse, RedirectResponse, Response
from starlette.routing import BaseRoute, Mount, Route
from starlette.staticfiles import StaticFiles

import conveyor
from conveyor.app import App
from conveyor.dashboard import queries
from conveyor.dashboard.render import (
    STATIC,
    age,
    clip,
    environment,
    parse_local,
    pretty_json,
)
from conveyor.dashboard.security import (
    CSRF_COOKIE,
    CSRF_FIELD,
    Csrf,
    Gate,
    cookie_path,
)
from conveyor.dlq import DeadFilter
from conveyor.engines import redact
from conveyor.job import failure_log
from conveyor.metrics import CONTENT_TYPE, ConveyorMetrics
from conveyor.records import JobRecord, State
from conveyor.tracing import trace_context

#: At most this many job ids are accepted in one "selected" action.
MAX_SELECTED = 1000
#: Job ids listed on a confirmation page (the count is always exact).
CONFIRM_LIST_LIMIT = 20
ACTIONS = {"redrive": "Redrive", "delete": "Delete"}
SCOPES = ("ids", "matching")


class Problem(Exception):
    """A request the dashboard refuses, rendered as an error page with ``status``."""

    def __init__(self, status: int, title: str, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.title = title
        self.message = message


@dataclass
class FilterForm:
    """The DLQ filter as typed in the form (kept as text to show it again)."""

    task: str = ""
    error: str = ""
    since: str = ""
    until: str = ""

    @classmethod
    def read(cls, data: Mapping[str, Any]) -> FilterForm:
        """From query parameters or form fields."""
        return cls(
            *(str(data.get(k, "") or "").strip() for k in ("task", "error", "since", "until"))
        )

    def to_filter(self, frozen_until: float | None = None) -> DeadFilter:
        """The :class:`DeadFilter`; ``frozen_until`` caps the time (see confirmation)."""
        try:
            since, until = parse_local(self.since), parse_local(self.until)
        except ValueError as exc:
            raise Problem(400, "Bad filter", str(exc)) from None
        if frozen_until is not None:
            until = frozen_until if until is None else min(until, frozen_until)
        return DeadFilter(self.task or None, self.error or None, since, until)

    def params(self) -> dict[str, str]:
        """The non-empty fields, for links that keep the filter."""
        return {k: v for k, v in vars(self).items() if v}

    def describe(self) -> str:
        """The filter in words, for the confirmation page."""
        parts = []
        if self.task:
            parts.append(f"task {self.task}")
        if self.error:
            parts.append(f"error {self.error}")
        if self.since:
            parts.append(f"died after {self.since.replace('T', ' ')} UTC")
        if self.until:
            parts.append(f"died before {self.until.replace('T', ' ')} UTC")
        return ", ".join(parts) or "no filter (the whole DLQ)"


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
        nonce = request.cookies.get(CSRF_COOKIE)
        fresh = not Csrf.well_formed(nonce)
        if fresh or nonce is None:
            nonce = Csrf.new_nonce()
        token = self.csrf.token(nonce)
        now = self.app.clock.now()
        if "nav_queues" not in context:
            try:
                context["nav_queues"] = queries.all_queues(self.app, await self.app.stats())
            except Exception:  # the error page must render even when the engine is down
                context["nav_queues"] = self.app.queues
        base = _base(request)
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
        if fresh:
            response.set_cookie(
                CSRF_COOKIE,
                nonce,
                httponly=True,
                samesite="strict",
                secure=request.url.scheme == "https",
                path=cookie_path(request.scope),
            )
        return response

    async def problem(self, request: Request, exc: Exception) -> Response:
        """Exception handler: a :class:`Problem` or an engine error as an error page."""
        if isinstance(exc, Problem):
            status, title, message = exc.status, exc.title, exc.message
        else:
            status, title = 503, "Engine error"
            message = f"{type(exc).__name__}: {exc}"
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
            fingerprint=_overview_fingerprint(rows, now),
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
                "fingerprint": _overview_fingerprint(rows, now),
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
            return _redirect(_job_url(request, found[0].queue, found[0].id))
        return await self.render(request, "search.html", job_id=job_id, found=found)

    async def queue(self, request: Request) -> Response:
        """Jobs of one queue in one state, paged; ``?id=`` finds one job."""
        queue = request.path_params["queue"]
        job_id = request.query_params.get("id", "").strip()
        if job_id:
            record = await (await self.app.engine()).get(queue, job_id)
            if record is not None:
                return _redirect(_job_url(request, queue, job_id))
        state, page, records, has_next = await self._jobs(request)
        counts = await self._counts(queue)
        return await self.render(
            request,
            "queue.html",
            queue=queue,
            state=state,
            states=[s.value for s in State],
            counts=counts,
            paused=await self._paused(queue),
            jobs=records,
            page=page,
            has_next=has_next,
            not_found=job_id,
            fingerprint=_jobs_fingerprint(records, counts),
        )

    async def api_jobs(self, request: Request) -> Response:
        """JSON of one page of :meth:`queue`."""
        queue = request.path_params["queue"]
        state, page, records, has_next = await self._jobs(request)
        counts = await self._counts(queue)
        return JSONResponse(
            {
                "queue": queue,
                "state": state,
                "page": page,
                "has_next": has_next,
                "counts": counts,
                "jobs": [_job_summary(r) for r in records],
                "fingerprint": _jobs_fingerprint(records, counts),
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
            redriven=int(record.options.get("redriven", 0)),
            trace_id=trace_id,
            clip=clip,
            fingerprint=_job_fingerprint(record),
        )

    async def api_job(self, request: Request) -> Response:
        """JSON of one job's live fields (polled by the job page)."""
        record = await self._record(request)
        return JSONResponse({**_job_summary(record), "fingerprint": _job_fingerprint(record)})

    async def dlq(self, request: Request) -> Response:
        """Dead jobs of one queue, filtered by task, error type and time, with actions."""
        queue = request.path_params["queue"]
        form = FilterForm.read(request.query_params)
        page = _page(request)
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
        action, scope = _intent(form)
        filters = FilterForm.read(form)
        back = _back(form)
        ids: list[str] = []
        frozen: float | None = None
        if scope == "ids":
            ids = await self._dead_ids(queue, _ids(form))
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
        action, scope = _intent(form)
        filters = FilterForm.read(form)
        back = _back(form)
        ids = _ids(form)
        if scope == "ids":
            if action == "redrive":
                done = await self.app.dlq.redrive(queue, job_ids=ids)
            else:
                done = await self.app.dlq.purge(queue, job_ids=ids)
        else:
            frozen = _float(form.get("frozen_until"))
            where = filters.to_filter(frozen)
            if action == "redrive":
                done = await self.app.dlq.redrive(queue, where=where)
            else:
                done = await self.app.dlq.purge(queue, where=where)
        return _redirect(self._after_url(request, queue, back, ids, filters, action, done))

    async def pause(self, request: Request) -> Response:
        """Pause (``paused=1``) or resume (``paused=0``) a queue."""
        queue = request.path_params["queue"]
        form = await self.form(request)
        paused = form.get("paused") == "1"
        await (await self.app.engine()).set_paused(queue, paused)
        done = "paused" if paused else "resumed"
        target = _base(request) + "/"
        if form.get("back") == "queue":
            target = _queue_url(request, queue)
        return _redirect(f"{target}?{urlencode({'done': done, 'q': queue})}")

    async def login(self, request: Request) -> Response:
        """The token form (only when the dashboard has a token); signs the browser in."""
        gate = self.gate
        if gate.credentials.token is None:
            return _redirect(_base(request) + "/")
        if request.method == "GET":
            nxt = request.query_params.get("next", "/")
            if gate.authorized(request.scope):
                return _redirect(_safe_next(request, nxt))
            return await self.login_page(request, 200, nxt=nxt)
        form = await request.form()
        token, nxt = form.get("token"), str(form.get("next", "/"))
        if isinstance(token, str) and gate.authorized_token(token):
            response = _redirect(_safe_next(request, nxt))
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
            next=nxt if nxt is not None else _relative(request),
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
        page = _page(request)
        engine = await self.app.engine()
        records = await engine.list_jobs(
            queue, state, limit=self.page_size + 1, offset=(page - 1) * self.page_size
        )
        return state.value, page, records[: self.page_size], len(records) > self.page_size

    async def _counts(self, queue: str) -> dict[str, int]:
        for stat in await self.app.stats():
            if stat.queue == queue:
                return {s.value: stat.counts.get(s, 0) for s in State}
        return {s.value: 0 for s in State}

    async def _paused(self, queue: str) -> bool:
        return any(s.queue == queue and s.paused for s in await self.app.stats())

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
            url = _job_url(request, queue, ids[0])
            return f"{url}?{urlencode(result)}" if result else url
        query = urlencode({**filters.params(), **result})
        return _dlq_url(request, queue) + (f"?{query}" if query else "")


# -- small pure helpers -----------------------------------------------------------------------


def _base(request: Request) -> str:
    return str(request.scope.get("root_path", "")).rstrip("/")


def _queue_url(request: Request, queue: str) -> str:
    from conveyor.dashboard.render import segment

    return f"{_base(request)}/queues/{segment(queue)}"


def _job_url(request: Request, queue: str, job_id: str) -> str:
    from conveyor.dashboard.render import segment

    return f"{_queue_url(request, queue)}/job/{segment(job_id)}"


def _dlq_url(request: Request, queue: str) -> str:
    return f"{_queue_url(request, queue)}/dlq"


def _relative(request: Request) -> str:
    path = request.url.path[len(_base(request)) :] or "/"
    return path + (f"?{request.url.query}" if request.url.query else "")


def _safe_next(request: Request, nxt: str) -> str:
    """A redirect target inside the dashboard only (no open redirects)."""
    if not nxt.startswith("/") or nxt.startswith("//") or "\\" in nxt:
        nxt = "/"
    return _base(request) + nxt


def _redirect(url: str) -> RedirectResponse:
    return RedirectResponse(url, status_code=303)


def _page(request: Request) -> int:
    try:
        return max(1, int(request.query_params.get("page", "1")))
    except ValueError:
        return 1


def _intent(form: FormData) -> tuple[str, str]:
    action, _, scope = str(form.get("intent", "")).partition(":")
    if action not in ACTIONS or scope not in SCOPES:
        raise Problem(400, "Unknown action", f"{form.get('intent')!r} is not a DLQ action")
    if scope == "ids" and not _ids(form):
        raise Problem(400, "Nothing selected", "Select at least one job, or use 'all matching'.")
    return action, scope


def _ids(form: FormData) -> list[str]:
    ids = [v for v in form.getlist("id") if isinstance(v, str) and v]
    if len(ids) > MAX_SELECTED:
        raise Problem(400, "Too many jobs", f"Select at most {MAX_SELECTED} jobs at once.")
    return list(dict.fromkeys(ids))


def _back(form: FormData) -> str:
    return "job" if form.get("back") == "job" else "dlq"


def _float(value: Any) -> float | None:
    try:
        return float(value) if value else None
    except (TypeError, ValueError):
        raise Problem(400, "Bad request", f"{value!r} is not a time") from None


def _wants_json(request: Request) -> bool:
    return request.url.path.startswith(_base(request) + "/api/")


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


def _job_summary(record: JobRecord) -> dict[str, Any]:
    return {
        "queue": record.queue,
        "id": record.id,
        "task": record.task,
        "state": record.state.value,
        "attempts": record.attempts,
        "progress": record.progress,
        "created_at": record.created_at,
        "finished_at": record.finished_at,
        "logs": len(record.logs),
        "failures": len(record.failures),
    }


def _job_fingerprint(record: JobRecord) -> str:
    return queries.fingerprint(_job_summary(record))


def _jobs_fingerprint(records: list[JobRecord], counts: dict[str, int]) -> str:
    return queries.fingerprint([counts, [(r.id, r.state.value, r.attempts) for r in records]])


def _overview_fingerprint(rows: list[queries.QueueSummary], now: float) -> str:
    shown = [
        (
            r.queue,
            r.counts,
            r.paused,
            age(None if r.oldest_dead_at is None else now - r.oldest_dead_at),
            r.completed_recent,
            r.dead_recent,
        )
        for r in rows
    ]
    return queries.fingerprint(shown)

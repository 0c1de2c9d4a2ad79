"""URLs inside the dashboard, correct wherever it is mounted."""

from __future__ import annotations

from starlette.requests import Request
from starlette.responses import RedirectResponse

from conveyor.dashboard.render import segment


def base(request: Request) -> str:
    """The path the dashboard is mounted at ('' at the root)."""
    return str(request.scope.get("root_path", "")).rstrip("/")


def queue_url(request: Request, queue: str) -> str:
    """The jobs page of ``queue``."""
    return f"{base(request)}/queues/{segment(queue)}"


def job_url(request: Request, queue: str, job_id: str) -> str:
    """The page of one job."""
    return f"{queue_url(request, queue)}/job/{segment(job_id)}"


def dlq_url(request: Request, queue: str) -> str:
    """The DLQ page of ``queue``."""
    return f"{queue_url(request, queue)}/dlq"


def relative(request: Request) -> str:
    """The request's path and query relative to the mount point."""
    path = request.url.path[len(base(request)) :] or "/"
    return path + (f"?{request.url.query}" if request.url.query else "")


def safe_next(request: Request, nxt: str) -> str:
    """A redirect target inside the dashboard only (no open redirects)."""
    if not nxt.startswith("/") or nxt.startswith("//") or "\\" in nxt:
        nxt = "/"
    return base(request) + nxt


def redirect(url: str) -> RedirectResponse:
    """A 303 redirect (the answer to a POST)."""
    return RedirectResponse(url, status_code=303)

"""Parsing and checking the dashboard's forms: DLQ filters and actions, paging."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from starlette.datastructures import FormData
from starlette.requests import Request

from conveyor.dashboard.render import parse_local
from conveyor.dlq import DeadFilter

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


def page_number(request: Request) -> int:
    """The ``page`` query parameter, 1 or more."""
    try:
        return max(1, int(request.query_params.get("page", "1")))
    except ValueError:
        return 1


def intent(form: FormData) -> tuple[str, str]:
    """``(action, scope)`` of a DLQ form: redrive|delete and ids|matching."""
    action, _, scope = str(form.get("intent", "")).partition(":")
    if action not in ACTIONS or scope not in SCOPES:
        raise Problem(400, "Unknown action", f"{form.get('intent')!r} is not a DLQ action")
    if scope == "ids" and not selected_ids(form):
        raise Problem(400, "Nothing selected", "Select at least one job, or use 'all matching'.")
    return action, scope


def selected_ids(form: FormData) -> list[str]:
    """The job ids ticked in a form, without duplicates, at most :data:`MAX_SELECTED`."""
    ids = [v for v in form.getlist("id") if isinstance(v, str) and v]
    if len(ids) > MAX_SELECTED:
        raise Problem(400, "Too many jobs", f"Select at most {MAX_SELECTED} jobs at once.")
    return list(dict.fromkeys(ids))


def back_target(form: FormData) -> str:
    """Where a DLQ action returns: the job page or the DLQ listing."""
    return "job" if form.get("back") == "job" else "dlq"


def parse_time(value: Any) -> float | None:
    """An epoch time from a hidden form field (``None`` if empty)."""
    try:
        return float(value) if value else None
    except (TypeError, ValueError):
        raise Problem(400, "Bad request", f"{value!r} is not a time") from None

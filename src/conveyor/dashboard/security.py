"""Access control of the dashboard: token or basic auth, CSRF tokens, security headers.

CSRF protection is a signed double-submit cookie: the browser holds a random nonce in an
HttpOnly, SameSite=Strict cookie, and every form carries ``nonce.timestamp.signature``, an
HMAC of the nonce under a per-process secret. A POST is accepted only when the form's nonce
equals the cookie's and the signature is valid and recent. Another site can neither read the
token nor, without the secret, forge a pair that matches a cookie it managed to plant.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import os
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from urllib.parse import parse_qsl, urlencode

from starlette.datastructures import Headers, MutableHeaders
from starlette.requests import Request
from starlette.responses import PlainTextResponse, RedirectResponse, Response
from starlette.types import ASGIApp, Message, Receive, Scope, Send

AUTH_COOKIE = "conveyor_auth"
CSRF_COOKIE = "conveyor_csrf"
#: Name of the hidden form field that carries the CSRF token.
CSRF_FIELD = "csrf_token"
#: How long a CSRF token stays valid, in seconds (a page left open longer must be reloaded).
CSRF_MAX_AGE = 12 * 3600.0
NONCE_BYTES = 16

#: Sent with every response: no framing, no inline scripts, no third-party anything.
SECURITY_HEADERS = {
    "content-security-policy": (
        "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
        "frame-ancestors 'none'; form-action 'self'; base-uri 'none'"
    ),
    "x-frame-options": "DENY",
    "x-content-type-options": "nosniff",
    "referrer-policy": "same-origin",
    "cache-control": "no-store",
}


class Signer:
    """HMAC-SHA256 under one secret, with a purpose string so signatures never cross uses."""

    def __init__(self, secret: bytes) -> None:
        self._secret = secret

    def sign(self, purpose: str, value: str) -> str:
        """Hex signature of ``value`` for ``purpose``."""
        message = f"{purpose}\x00{value}".encode()
        return hmac.new(self._secret, message, hashlib.sha256).hexdigest()

    def verify(self, purpose: str, value: str, signature: str) -> bool:
        """Whether ``signature`` is :meth:`sign` of ``value`` (constant time)."""
        return _same(self.sign(purpose, value), signature)


class Csrf:
    """Issues and checks the tokens of the signed double-submit scheme (module docstring)."""

    def __init__(self, signer: Signer, max_age: float = CSRF_MAX_AGE) -> None:
        self.signer = signer
        self.max_age = max_age

    @staticmethod
    def new_nonce() -> str:
        """A fresh random nonce for the cookie."""
        return os.urandom(NONCE_BYTES).hex()

    @staticmethod
    def well_formed(nonce: str | None) -> bool:
        """Whether a cookie value looks like a nonce we issued."""
        return nonce is not None and len(nonce) == 2 * NONCE_BYTES and _is_hex(nonce)

    def token(self, nonce: str, now: float | None = None) -> str:
        """The form token for ``nonce``."""
        issued = str(int(now if now is not None else time.time()))
        return f"{nonce}.{issued}.{self.signer.sign('csrf', f'{nonce}.{issued}')}"

    def valid(self, token: str | None, cookie_nonce: str | None, now: float | None = None) -> bool:
        """Whether ``token`` was issued for ``cookie_nonce``, by us, recently."""
        if not token or not cookie_nonce:
            return False
        parts = token.split(".")
        if len(parts) != 3 or not parts[1].isdigit():
            return False
        nonce, issued, signature = parts
        if not _same(nonce, cookie_nonce):
            return False
        if not self.signer.verify("csrf", f"{nonce}.{issued}", signature):
            return False
        age = (now if now is not None else time.time()) - int(issued)
        return -60 <= age <= self.max_age


@dataclass(frozen=True)
class Credentials:
    """Who may use the dashboard: a bearer token, a basic-auth pair, either, or anyone."""

    token: str | None = None
    basic_auth: tuple[str, str] | None = None

    @property
    def required(self) -> bool:
        """Whether any authentication is configured."""
        return self.token is not None or self.basic_auth is not None


def cookie_path(scope: Scope) -> str:
    """The path cookies are scoped to: the dashboard's mount point."""
    return str(scope.get("root_path", "")).rstrip("/") + "/"


class Gate:
    """Checks credentials and issues the login cookie; shared by the middleware and views."""

    def __init__(self, credentials: Credentials, signer: Signer) -> None:
        self.credentials = credentials
        self.signer = signer

    def authorized(self, scope: Scope) -> bool:
        """Whether the request carries valid credentials."""
        creds = self.credentials
        headers = Headers(scope=scope)
        scheme, _, value = headers.get("authorization", "").partition(" ")
        scheme = scheme.lower()
        if creds.token is not None:
            if scheme == "bearer" and self.authorized_token(value.strip()):
                return True
            cookie = Request(scope).cookies.get(AUTH_COOKIE)
            if cookie and _same(cookie, self.auth_cookie_value()):
                return True
        if creds.basic_auth is not None and scheme == "basic":
            try:
                decoded = base64.b64decode(value.strip(), validate=True).decode()
            except (binascii.Error, UnicodeDecodeError):
                return False
            user, _, password = decoded.partition(":")
            want_user, want_password = creds.basic_auth
            # Both compared, always, so timing does not tell which one was wrong.
            ok_user = _same(user, want_user)
            ok_password = _same(password, want_password)
            return ok_user and ok_password
        return False

    def authorized_token(self, token: str) -> bool:
        """Whether ``token`` is the dashboard's token (constant time)."""
        return self.credentials.token is not None and _same(token, self.credentials.token)

    def auth_cookie_value(self) -> str:
        """The cookie that proves a login: a signature of the token, not the token."""
        assert self.credentials.token is not None
        return self.signer.sign("auth", self.credentials.token)

    def set_auth_cookie(self, response: Response, request: Request) -> None:
        """Mark the browser as logged in (HttpOnly, SameSite=Lax, scoped to the mount)."""
        response.set_cookie(
            AUTH_COOKIE,
            self.auth_cookie_value(),
            httponly=True,
            samesite="lax",
            secure=request.url.scheme == "https",
            path=cookie_path(request.scope),
        )


class SecurityMiddleware:
    """ASGI middleware: refuses unauthenticated requests and adds security headers.

    With a token, requests authenticate with ``Authorization: Bearer <token>``, with the
    cookie set by the login form, or once with ``?token=<token>`` (which sets the cookie and
    redirects to the same URL without it). With basic auth, the browser's own prompt is used.
    Static files and the login form are public.
    """

    def __init__(
        self,
        app: ASGIApp,
        *,
        gate: Gate,
        login_page: Callable[[Request, int], Awaitable[Response]],
    ) -> None:
        self.app = app
        self.gate = gate
        self.login_page = login_page

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        """Check access, then pass the request on with the headers added."""
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return

        async def send_with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                headers = MutableHeaders(scope=message)
                for name, value in SECURITY_HEADERS.items():
                    headers.setdefault(name, value)
            await send(message)

        gate = self.gate
        if not gate.credentials.required or _public(scope) or gate.authorized(scope):
            await self.app(scope, receive, send_with_headers)
            return
        response = await self._refusal(Request(scope, receive))
        await response(scope, receive, send_with_headers)

    async def _refusal(self, request: Request) -> Response:
        creds = self.gate.credentials
        token = request.query_params.get("token")
        if token is not None and request.method == "GET" and self.gate.authorized_token(token):
            rest = [(k, v) for k, v in parse_qsl(request.url.query) if k != "token"]
            target = request.url.path + (f"?{urlencode(rest)}" if rest else "")
            response: Response = RedirectResponse(target, status_code=303)
            self.gate.set_auth_cookie(response, request)
            return response
        challenges = []
        if creds.token is not None:
            challenges.append('Bearer realm="conveyor"')
        if creds.basic_auth is not None:
            challenges.append('Basic realm="conveyor", charset="UTF-8"')
        wants_html = "text/html" in request.headers.get("accept", "")
        if creds.token is not None and wants_html:
            response = await self.login_page(request, 401)
        else:
            response = PlainTextResponse("authentication required", status_code=401)
        response.headers["www-authenticate"] = ", ".join(challenges)
        return response


def _public(scope: Scope) -> bool:
    path = _route_path(scope)
    return path.startswith("/static/") or path == "/login"


def _route_path(scope: Scope) -> str:
    path = str(scope.get("path", ""))
    root = str(scope.get("root_path", ""))
    return path[len(root) :] if root and path.startswith(root) else path


def _is_hex(text: str) -> bool:
    try:
        bytes.fromhex(text)
    except ValueError:
        return False
    return True


def _same(a: str, b: str) -> bool:
    """Constant-time equality of two strings (any characters)."""
    return hmac.compare_digest(a.encode(), b.encode())

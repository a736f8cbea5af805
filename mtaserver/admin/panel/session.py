"""Web panel sessions: sign-in with an admin API token, a server-side session, CSRF on every POST.

DESCRIPTION
    Sign-in takes a token of admin.token_file (tokens.py). A good one makes a `Session`: a
    random id (256 bits) kept in memory in the admin process (a restart signs everybody out),
    sent to the browser in the cookie `mtaserver_session` (HttpOnly, SameSite=Strict, Path=/,
    Secure when the request came over https). The session keeps a SHA-256 digest of the token,
    never the token: each request looks the token up again among the tokens loaded now, so a
    token removed from the file (SIGHUP) ends its sessions, and a changed role applies at once.
    A session ends after IDLE_TTL without a request, or ABSOLUTE_TTL after sign-in, or at
    sign-out.

    Each session has its own CSRF token. Every POST must carry it (form field `csrf` or the
    header X-CSRF-Token), compared with hmac.compare_digest. The sign-in form, which has no
    session yet, uses a double-submit cookie (`mtaserver_signin`) the same way.

    Roles: a `read` session sees every page, its forms are rendered disabled and every POST it
    makes is refused (403). `require_session(role)` is the FastAPI dependency of each page: no
    session -> 303 to /signin?next=<page>; a session of a lower role -> the 403 page.

    Failed sign-ins are limited per client IP: SIGNIN_FAILURES in SIGNIN_WINDOW seconds, then
    every attempt (even a good token) is refused until the window has passed. The log names the
    IP, never the token.

    `SessionStore` and `SigninLimiter` are pure (`now` is an argument); the dependency is the
    thin shell that reads the cookie and the clock.

SECURITY
    The token is typed into the sign-in form by the administrator; it is compared in constant
    time (tokens.find_token) and never logged nor stored. Session ids and CSRF tokens come from
    secrets.token_urlsafe. Sessions live only in this process's memory.

STANDARDS
    RFC 6265 (cookies; SameSite per RFC 6265bis), OWASP CSRF prevention (synchronizer token).

CONFIG
    admin.token_file (through the API's loaded tokens)
"""

from __future__ import annotations

import hashlib
import hmac
import logging
import secrets
import time
from collections import deque
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import quote

from fastapi import Request

from ...logutil import sanitize
from ..tokens import Role, Token

log = logging.getLogger("admin")

COOKIE = "mtaserver_session"
SIGNIN_COOKIE = "mtaserver_signin"
IDLE_TTL = 8 * 3600.0  # seconds without a request before a session ends
ABSOLUTE_TTL = 24 * 3600.0  # seconds after sign-in before a session ends, used or not
SIGNIN_FAILURES = 5  # failed sign-ins per client IP within SIGNIN_WINDOW before all are refused
SIGNIN_WINDOW = 60.0
MAX_SESSIONS = 1000  # the oldest goes first beyond this (a flood of sign-ins cannot fill memory)
MAX_FLASHES = 5


def token_digest(secret: str) -> str:
    return hashlib.sha256(secret.encode("utf-8", "surrogateescape")).hexdigest()


@dataclass(slots=True, kw_only=True)
class Session:
    """One signed-in browser. Mutable: the store updates `last_seen`, `role`, `flashes`."""

    id: str
    name: str  # the token's name: what the audit log records
    role: Role
    digest: str  # SHA-256 of the token (to find it again among the tokens loaded now)
    csrf: str
    created: float
    last_seen: float
    ip: str
    flashes: list[str] = field(default_factory=list)

    @property
    def role_name(self) -> str:
        return self.role.name.lower()

    @property
    def readonly(self) -> bool:
        return self.role < Role.OPERATOR

    def may(self, role: Role | str) -> bool:
        want = role if isinstance(role, Role) else Role[role.upper()]
        return self.role >= want

    def flash(self, text: str) -> None:
        """A message for the next page this session sees ("saved: changed a, b")."""
        self.flashes = [*self.flashes, text][-MAX_FLASHES:]

    def take_flashes(self) -> list[str]:
        out, self.flashes = self.flashes, []
        return out

    def __repr__(self) -> str:  # no id, no CSRF token in a traceback
        return f"Session(name={self.name!r}, role={self.role_name}, ip={self.ip})"


def csrf_ok(session: Session, presented: str | None) -> bool:
    """The CSRF token of a POST, compared in constant time. Pure."""
    if not presented:
        return False
    return hmac.compare_digest(session.csrf.encode(), presented.encode("utf-8", "surrogateescape"))


def _current_token(tokens: Iterable[Token], digest: str) -> Token | None:
    found = None
    for t in tokens:
        if hmac.compare_digest(token_digest(t.secret), digest):
            found = t
    return found


class SessionStore:
    """Sessions by id, in memory. Pure: every call takes `now`."""

    def __init__(
        self, *, idle: float = IDLE_TTL, absolute: float = ABSOLUTE_TTL, new_id: Callable[[], str] | None = None
    ) -> None:
        self.idle = idle
        self.absolute = absolute
        self._new_id = new_id or (lambda: secrets.token_urlsafe(32))
        self._by_id: dict[str, Session] = {}

    def __len__(self) -> int:
        return len(self._by_id)

    def create(self, token: Token, ip: str, now: float) -> Session:
        self.expire(now)
        while len(self._by_id) >= MAX_SESSIONS:
            oldest = min(self._by_id.values(), key=lambda s: s.created)
            del self._by_id[oldest.id]
        s = Session(id=self._new_id(), name=token.name, role=token.role, digest=token_digest(token.secret),
                    csrf=self._new_id(), created=now, last_seen=now, ip=ip)  # fmt: skip
        self._by_id[s.id] = s
        return s

    def get(self, sid: str | None, now: float, tokens: Iterable[Token]) -> Session | None:
        """The live session of a cookie value, touched; None when unknown, expired, or its token
        is no longer in the token file (then it is dropped)."""
        if not sid:
            return None
        s = self._by_id.get(sid)
        if s is None:
            return None
        token = _current_token(tokens, s.digest)
        if token is None or now - s.last_seen > self.idle or now - s.created > self.absolute:
            del self._by_id[sid]
            return None
        s.role, s.name, s.last_seen = token.role, token.name, now
        return s

    def drop(self, sid: str | None) -> bool:
        return self._by_id.pop(sid or "", None) is not None

    def expire(self, now: float) -> int:
        dead = [k for k, s in self._by_id.items() if now - s.last_seen > self.idle or now - s.created > self.absolute]
        for k in dead:
            del self._by_id[k]
        return len(dead)


class SigninLimiter:
    """Failed sign-ins per client IP in a sliding window. Pure: every call takes `now`."""

    def __init__(self, *, limit: int = SIGNIN_FAILURES, window: float = SIGNIN_WINDOW) -> None:
        self.limit = limit
        self.window = window
        self._fails: dict[str, deque[float]] = {}

    def _recent(self, ip: str, now: float) -> deque[float]:
        q = self._fails.get(ip)
        if q is None:
            return deque()
        while q and now - q[0] >= self.window:
            q.popleft()
        if not q:
            del self._fails[ip]
        return q

    def blocked(self, ip: str, now: float) -> float:
        """0 when `ip` may try now, else the seconds until it may."""
        q = self._recent(ip, now)
        if len(q) < self.limit:
            return 0.0
        return max(q[0] + self.window - now, 0.0)

    def failed(self, ip: str, now: float) -> None:
        if len(self._fails) > 10000:  # bounded: forget the quietest addresses
            for k in [k for k, q in self._fails.items() if not q or now - q[-1] >= self.window]:
                del self._fails[k]
        self._fails.setdefault(ip, deque(maxlen=self.limit)).append(now)

    def succeeded(self, ip: str) -> None:
        self._fails.pop(ip, None)


def safe_next(target: str | None) -> str:
    """Where to go after sign-in: a path of this site only (no scheme, no //host). Pure."""
    if not target or not target.startswith("/") or target.startswith("//") or "\\" in target or "\n" in target:
        return "/"
    return target


# ---------------------------------------------------------------------------------------------
# The FastAPI side.


class PageError(Exception):
    """Answered by the panel's handler (install()): a redirect, or an error page."""

    def __init__(self, status: int, message: str = "", location: str | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.location = location


def client_ip(request: Request) -> str:
    return request.client.host if request.client else "-"


def is_https(request: Request) -> bool:
    return request.url.scheme == "https"


def set_cookie(response: Any, request: Request, name: str, value: str, max_age: int | None) -> None:
    response.set_cookie(name, value, max_age=max_age, path="/", secure=is_https(request), httponly=True, samesite="strict")


async def presented_csrf(request: Request) -> str | None:
    header = request.headers.get("x-csrf-token")
    if header:
        return header
    ctype = request.headers.get("content-type", "")
    if ctype.startswith(("application/x-www-form-urlencoded", "multipart/form-data")):
        form = await request.form()  # starlette keeps it: the endpoint reads the same form
        value = form.get("csrf")
        return value if isinstance(value, str) else None
    return None


def require_session(role: Role = Role.READ, *, changes: bool = True) -> Callable[..., Any]:
    """The dependency of a panel page: the live Session with at least `role`. On a POST it also
    checks the CSRF token and, when the POST `changes` something (all but sign-out), refuses a
    read session."""

    async def dependency(request: Request) -> Session:
        panel = request.app.state.panel
        s = panel.sessions.get(request.cookies.get(COOKIE), panel.clock(), panel.admin.tokens)
        if s is None:
            if request.method != "GET":
                raise PageError(401, "your session has ended: sign in again")
            here = request.url.path + (f"?{request.url.query}" if request.url.query else "")
            raise PageError(303, location="/signin" + (f"?next={quote(here, safe='')}" if here != "/" else ""))
        request.state.session = s
        if request.method not in ("GET", "HEAD"):
            if not csrf_ok(s, await presented_csrf(request)):
                log.warning("panel: %s %s by %s from %s: missing or wrong CSRF token", request.method,
                            sanitize(request.url.path, 100), s.name, client_ip(request))  # fmt: skip
                raise PageError(403, "this form is out of date (wrong CSRF token): load the page again")
            needed = max(role, Role.OPERATOR) if changes else role  # a read session changes nothing
        else:
            needed = role
        if s.role < needed:
            log.warning("panel: %s %s by %s (%s) from %s: needs role %s", request.method, sanitize(request.url.path, 100),
                        s.name, s.role_name, client_ip(request), needed.name.lower())  # fmt: skip
            raise PageError(403, f"this needs role {needed.name.lower()}; you are signed in as {s.name} with role {s.role_name}")
        return s

    return dependency


def now_wall() -> float:
    return time.time()

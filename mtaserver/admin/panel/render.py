"""Web panel pages: the Jinja2 environment and `render`.

DESCRIPTION
    `render(request, template, **ctx)` renders templates/<template> into an HTMLResponse with
    the panel's security headers. Every template sees, besides `ctx`:

      session       the Session of the request (name, role_name, readonly, may(role)) or None
      csrf_field()  the hidden <input name="csrf"> of the session (every POST form has it)
      csrf_token    the same token as text (for X-CSRF-Token from scripts)
      nav           NAV: (path, label) of every page, in menu order; `here` is the current path
      static(name)  the URL of a file under static/ (with its version, so caches renew)
      node          server.hostname of this node
      flashes       the session's pending messages ("saved: changed a, b"), shown once
      readonly      True for a read session: templates render every form control disabled

    Templates are autoescaped (.html). Pages are sent with Cache-Control: no-store and a
    Content-Security-Policy that allows scripts and styles from this server only (the vendor
    libraries are under static/vendor/, no CDN).

SECURITY
    Everything shown that came from mail (addresses, replies, headers) is escaped by Jinja2's
    autoescape; templates never use |safe on such values.

CONFIG
    server.hostname
"""

from __future__ import annotations

import hashlib
from functools import lru_cache
from pathlib import Path
from typing import Any

from fastapi import Request
from fastapi.responses import HTMLResponse
from jinja2 import Environment, FileSystemLoader, pass_context, select_autoescape
from markupsafe import Markup, escape

HERE = Path(__file__).parent
TEMPLATES = HERE / "templates"
STATIC = HERE / "static"

NAV: tuple[tuple[str, str], ...] = (
    ("/", "Overview"),
    ("/inbound", "Inbound Flow & Security"),
    ("/postscreen", "Postscreen Tuning"),
    ("/outbound", "Outbound Flow"),
    ("/antispam", "Antivirus & Antispam"),
    ("/advanced", "Advanced"),
    ("/queues", "Queues"),
    ("/server", "Single Server"),
)

SECURITY_HEADERS = {
    "Content-Security-Policy": (
        "default-src 'self'; script-src 'self'; style-src 'self' 'unsafe-inline'; img-src 'self' data:; "
        "connect-src 'self'; frame-ancestors 'none'; form-action 'self'; base-uri 'none'"
    ),
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "same-origin",
    "X-Frame-Options": "DENY",
    "Cache-Control": "no-store",
}


@lru_cache(maxsize=64)
def _version(name: str) -> str:
    try:
        return hashlib.sha256((STATIC / name).read_bytes()).hexdigest()[:10]
    except OSError:
        return "0"


def static(name: str) -> str:
    """The URL of static/<name>, with a content hash so a new version is fetched."""
    return f"/static/{name}?v={_version(name)}"


@pass_context
def _csrf_field(ctx: Any) -> Markup:
    token = ctx.get("csrf_token") or ""
    return Markup('<input type="hidden" name="csrf" value="{}">').format(escape(token))


def _when(t: float | None, fmt: str = "%Y-%m-%d %H:%M:%S") -> str:
    import time

    return time.strftime(fmt, time.localtime(t)) if t else "-"


def _age(seconds: float | None) -> str:
    if seconds is None:
        return "-"
    s = int(max(seconds, 0))
    if s < 120:
        return f"{s}s"
    if s < 7200:
        return f"{s // 60}m"
    if s < 172800:
        return f"{s // 3600}h {s % 3600 // 60}m"
    return f"{s // 86400}d {s % 86400 // 3600}h"


def _build() -> Environment:
    env = Environment(
        loader=FileSystemLoader(str(TEMPLATES)),
        autoescape=select_autoescape(["html"], default_for_string=True),
        trim_blocks=True,
        lstrip_blocks=True,
    )
    env.globals.update(csrf_field=_csrf_field, nav=NAV, static=static)
    env.filters.update(when=_when, age=_age)
    return env


environment = _build()


def render(request: Request, template: str, *, status_code: int = 200, **ctx: Any) -> HTMLResponse:
    """The page `template` for this request (see the module docstring for what it sees)."""
    session = getattr(request.state, "session", None)
    panel = getattr(request.app.state, "panel", None)
    base: dict[str, Any] = {
        "request": request,
        "session": session,
        "csrf_token": session.csrf if session is not None else ctx.pop("csrf_token", ""),
        "here": request.url.path,
        "node": panel.admin.node if panel is not None else "",
        "flashes": session.take_flashes() if session is not None else [],
        "readonly": session.readonly if session is not None else True,
    }
    base.update(ctx)
    html = environment.get_template(template).render(base)
    return HTMLResponse(html, status_code=status_code, headers=SECURITY_HEADERS)

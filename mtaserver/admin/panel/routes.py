"""The panel's own pages: sign-in and out, Overview, Queues and a message's detail.

DESCRIPTION
      GET  /signin, POST /signin      the token form (a double-submit CSRF cookie, rate-limited)
      POST /signout
      GET  /                          Overview: charts, totals, services, what needs attention
      GET  /overview/live             its live part (an htmx fragment, polled every 30 s)
      GET  /overview/series.json?window=hour|day   the charts' data
      GET  /queues                    per server: counts per state and the time of the count
      POST /queues/scan, /queues/flush    RESTART SCAN, FLUSH
      GET  /queues/{state}?q=&by=&age=&after=     a state's messages: search, age, keyset pages
      POST /queues/{state}/confirm    the selection and action -> the count it will touch
      POST /queues/{state}/act        do it (QueueOps through the queue manager, like the API)
      GET  /queues/message/{id}       envelope, recipients, last reply, next attempt, headers,
                                      decision trail

    Queue actions go through the same AdminServer.ops() (QueueOps with the queue manager) as
    the API and are written to the audit log with the same action names (queue.hold, ...),
    under the session's token name. A change is POST, then a redirect to a page that shows
    what changed (the session's flash messages).

SECURITY
    Every page needs a session (session.require_session); actions need the operator role and
    the session's CSRF token. Queue ids from the browser are checked by QueueOps before any
    path is built. Sign-in failures are logged with the client IP only.

CONFIG
    server.hostname, queue.delay_warning, outbound.relay_host; queue.* through QueueOps
"""

from __future__ import annotations

import asyncio
import hmac
import logging
import secrets
import time
from typing import Annotated, Any

from fastapi import Depends, Query, Request
from fastapi.responses import JSONResponse, RedirectResponse, Response

from ...logutil import sanitize
from ..tokens import Role, find_token
from .attention import attention
from .history import DAY_SLOTS, DAY_STEP, HOUR_SLOTS, SAMPLE_STEP
from .pages import router
from .render import render
from .session import (
    COOKIE,
    SIGNIN_COOKIE,
    PageError,
    Session,
    client_ip,
    require_session,
    safe_next,
    set_cookie,
)

log = logging.getLogger("admin")

Reader = Annotated[Session, Depends(require_session(Role.READ))]
Operator = Annotated[Session, Depends(require_session(Role.OPERATOR))]
Leaving = Annotated[Session, Depends(require_session(Role.READ, changes=False))]  # sign-out: any role, with CSRF

STATE_LABELS = {"incoming": "Incoming", "active": "Queued", "deferred": "Deferred", "hold": "On Hold", "corrupt": "Corrupted"}
AGES = {  # the age filter of a message list: label, (older_than, newer_than) in seconds
    "": ("any age", (None, None)),
    "new": ("under 1 hour", (None, 3600.0)),
    "5m": ("over 5 minutes", (300.0, None)),
    "1h": ("over 1 hour", (3600.0, None)),
    "1d": ("over 1 day", (86400.0, None)),
    "5d": ("over 5 days", (5 * 86400.0, None)),
}
PAGE = 50  # messages per page of a list
ATTENTION_SAMPLE = 200  # deferred messages read for the attention list
FLOW = ("accepted", "rejected", "deferred", "bounced", "delivered")
HOUR_SPAN = HOUR_SLOTS * SAMPLE_STEP  # seconds the charts' x axis shows
DAY_SPAN = DAY_SLOTS * DAY_STEP


def _panel(request: Request) -> Any:
    return request.app.state.panel


def _redirect(url: str) -> RedirectResponse:
    return RedirectResponse(url, status_code=303)


# ---------------------------------------------------------------------------------------------
# Sign-in and out.


@router.get("/signin")
async def signin_form(request: Request, next: str = "/") -> Response:
    panel = _panel(request)
    if panel.sessions.get(request.cookies.get(COOKIE), panel.clock(), panel.admin.tokens) is not None:
        return _redirect(safe_next(next))
    return _signin_page(request, next)


def _signin_page(request: Request, next: str, error: str = "", status: int = 200) -> Response:
    token = secrets.token_urlsafe(32)
    response = render(request, "signin.html", status_code=status, csrf_token=token, next=safe_next(next), error=error,
                      title="Sign in")  # fmt: skip
    set_cookie(response, request, SIGNIN_COOKIE, token, max_age=3600)
    return response


@router.post("/signin")
async def signin(request: Request) -> Response:
    panel = _panel(request)
    form = await request.form()
    ip = client_ip(request)
    nxt = str(form.get("next") or "/")
    now = panel.clock()
    cookie = request.cookies.get(SIGNIN_COOKIE, "")
    presented = str(form.get("csrf") or "")
    if not cookie or not hmac.compare_digest(cookie.encode(), presented.encode("utf-8", "surrogateescape")):
        log.warning("panel: sign-in from %s: the form's CSRF token does not match its cookie", ip)
        return _signin_page(request, nxt, "The form was out of date: try again.", 400)
    wait = panel.limiter.blocked(ip, now)
    if wait:
        log.warning("panel: sign-in from %s refused: too many failed sign-ins (retry in %.0fs)", ip, wait)
        return _signin_page(request, nxt, f"Too many failed sign-ins from your address: wait {wait:.0f} seconds.", 429)
    token = find_token(panel.admin.tokens, str(form.get("token") or "").strip())
    if token is None:
        panel.limiter.failed(ip, now)
        log.warning("panel: sign-in from %s refused: not a token of the token file", ip)
        return _signin_page(request, nxt, "That is not a valid token.", 401)
    panel.limiter.succeeded(ip)
    s = panel.sessions.create(token, ip, now)
    log.info("panel: sign-in by %s (%s) from %s", token.name, s.role_name, ip)
    response = _redirect(safe_next(nxt))
    set_cookie(response, request, COOKIE, s.id, max_age=None)
    response.delete_cookie(SIGNIN_COOKIE, path="/")
    return response


@router.post("/signout")
async def signout(request: Request, s: Leaving) -> Response:
    _panel(request).sessions.drop(s.id)
    log.info("panel: sign-out by %s from %s", s.name, client_ip(request))
    response = _redirect("/signin")
    response.delete_cookie(COOKIE, path="/")
    return response


# ---------------------------------------------------------------------------------------------
# Overview.


@router.get("/")
async def overview(request: Request, s: Reader) -> Response:
    return render(request, "overview.html", title="Overview")


async def _deferred_sample(panel: Any) -> list[dict[str, Any]]:
    try:
        listing = await asyncio.to_thread(panel.admin.ops().list, "deferred", None, None, ATTENTION_SAMPLE)
    except Exception as exc:  # noqa: BLE001 - the overview shows the rest
        log.warning("panel: cannot list deferred/: %s", exc)
        return []
    return list(listing.get("messages", []))


@router.get("/overview/live")
async def overview_live(request: Request, s: Reader) -> Response:
    panel = _panel(request)
    admin = panel.admin
    cfg = admin.worker.config
    services, deferred, stats, values = await asyncio.gather(
        admin.services(), _deferred_sample(panel), asyncio.to_thread(admin.ops().stats), asyncio.to_thread(panel.sampler.read)
    )
    now = time.time()
    items = attention(services, deferred, relay_host=cfg.outbound.relay_host, delay_warning=cfg.queue.delay_warning, now=now)
    hour = panel.history.totals("hour")
    live = panel.history.peek(now, values)
    last_hour = {n: hour.get(n, 0.0) + live.get(n, 0.0) for n in FLOW}
    rejected = sorted(((n.split(":", 1)[1], v) for n, v in values.items() if n.startswith("rejected:") and v),
                      key=lambda x: -x[1])  # fmt: skip
    return render(request, "overview_live.html", services=services, attention=items, stats=stats, labels=STATE_LABELS,
                  totals={n: values.get(n, 0.0) for n in FLOW}, last_hour=last_hour, rejected=rejected, now=now)  # fmt: skip


CHARTS = (  # id, title, names (a name ending in ":" takes every name with that prefix)
    ("flow", "Messages", FLOW),
    ("rejected", "Rejected by reason", ("rejected:",)),
    ("postscreen", "Postscreen verdicts", ("postscreen:",)),
    ("queue", "Queue depth", ("queue:incoming", "queue:active", "queue:deferred", "queue:hold", "queue:corrupt")),
)


@router.get("/overview/series.json")
async def overview_series(request: Request, s: Reader, window: str = "hour") -> Response:
    panel = _panel(request)
    if window not in ("hour", "day"):
        raise PageError(400, "window: hour or day")
    history = panel.history
    now = time.time()
    live = (now, history.peek(now, await asyncio.to_thread(panel.sampler.read)))
    known = sorted(set(history.names()) | set(live[1]))
    charts = []
    for cid, title, wanted in CHARTS:
        names: list[str] = []
        for w in wanted:
            names += [n for n in known if n.startswith(w) and n != w] if w.endswith(":") else [w]
        if cid == "postscreen":  # passes are most connections: the chart is about what was caught
            names = [n for n in names if not n.endswith((":pass", ":cache", ":access"))] or names
        table = history.table(window, names, live)  # type: ignore[arg-type]
        charts.append({"id": cid, "title": title, "names": names, "data": [table["t"], *(table[n] for n in names)]})
    span = HOUR_SPAN if window == "hour" else DAY_SPAN
    return JSONResponse({"node": panel.admin.node, "window": window, "now": now, "span": span, "last_sample": history.last_time,
                         "charts": charts}, headers={"Cache-Control": "no-store"})  # fmt: skip


# ---------------------------------------------------------------------------------------------
# Queues.


@router.get("/queues")
async def queues(request: Request, s: Reader) -> Response:
    admin = _panel(request).admin
    stats = await asyncio.to_thread(admin.ops().stats)
    return render(request, "queues.html", title="Queues", stats=stats, labels=STATE_LABELS,
                  manager=admin.worker.manager is not None)  # fmt: skip


@router.post("/queues/scan")
async def queues_scan(request: Request, s: Operator) -> Response:
    admin = _panel(request).admin
    manager = admin.worker.manager
    if manager is not None:
        from ...queue.manager import RESCAN
        from ...queue.ops import SCAN_TOKEN

        manager.announce([RESCAN, SCAN_TOKEN])  # a full listing of incoming/ and deferred/ now
    stats = await asyncio.to_thread(admin.ops().stats)
    admin.audit.write(s.name, client_ip(request), "queue.scan", {}, {"status": 200, "manager": manager is not None})
    counted = time.strftime("%H:%M:%S", time.localtime(stats["time"]))
    s.flash(f"scan restarted; counted at {counted}" if manager is not None
            else f"counted at {counted} (no queue manager runs on this node: nothing to rescan)")  # fmt: skip
    return _redirect("/queues")


@router.post("/queues/flush")
async def queues_flush(request: Request, s: Operator) -> Response:
    from ...queue.ops import OpsError

    admin = _panel(request).admin
    ip = client_ip(request)
    try:
        result = await admin.ops().flush()
    except OpsError as exc:
        admin.audit.write(s.name, ip, "queue.flush", {}, {"status": 400, "error": str(exc)})
        s.flash(f"flush refused: {exc}")
        return _redirect("/queues")
    admin.audit.write(s.name, ip, "queue.flush", {}, {"status": 200, "count": result.get("count")})
    s.flash(f"flush: {result.get('count', 0)} deferred message(s) to be tried now")
    return _redirect("/queues")


def _state(state: str) -> str:
    from ...queue.store import STATES

    if state not in STATES:
        raise PageError(404, f"no queue named {sanitize(state, 40)!r}")
    return state


def _actions(state: str) -> list[str]:
    """The actions that take messages from `state` (QueueOps's sources; delete also from corrupt/)."""
    from ...queue.ops import NAMED_ONLY, SOURCES

    return [a for a, where in SOURCES.items() if state in where + NAMED_ONLY.get(a, ())]


def _filters(q: str, by: str, age: str) -> dict[str, Any]:
    """Selector fields of a list's filters (search by sender or recipient, age)."""
    q = q.strip()
    older, newer = AGES.get(age, AGES[""])[1]
    return {"sender": q if q and by == "sender" else None, "recipient": q if q and by != "sender" else None,
            "older_than": older, "newer_than": newer}  # fmt: skip


@router.get("/queues/message/{queue_id}")
async def message(request: Request, queue_id: str, s: Reader) -> Response:
    admin = _panel(request).admin
    found = await asyncio.to_thread(admin.ops().show, queue_id)
    if found is None:
        raise PageError(404, "no such message in the queue (delivered, deleted, or a wrong id)")
    actions = _actions(found["queue_name"])
    return render(request, "message.html", title=f"Message {queue_id}", m=found, labels=STATE_LABELS, actions=actions)


@router.get("/queues/{state}")
async def queue_list(
    request: Request, state: str, s: Reader, q: str = "", by: str = "recipient", age: str = "",
    after: Annotated[str | None, Query()] = None,
) -> Response:  # fmt: skip
    from ...queue.ops import OpsError, Selector

    state = _state(state)
    admin = _panel(request).admin
    sel = Selector(queue=state, **_filters(q, by, age))
    try:
        listing = await asyncio.to_thread(admin.ops().list, state, sel, after or None, PAGE)
    except (OpsError, ValueError) as exc:
        raise PageError(400, str(exc)) from None
    actions = _actions(state)
    return render(request, "queues_list.html", title=STATE_LABELS[state], state=state, labels=STATE_LABELS,
                  messages=listing["messages"], next=listing.get("next"), after=after, q=q, by=by, age=age, ages=AGES,
                  actions=actions, now=time.time())  # fmt: skip


async def _selection(request: Request, state: str) -> tuple[str, Any, dict[str, Any], dict[str, Any]]:
    """(action, Selector, the audit log's selector, the form's fields) of a confirm or act POST."""
    from ...queue.ops import ACTIONS, Selector

    form = await request.form()
    action = str(form.get("action") or "")
    if action not in ACTIONS:
        raise PageError(400, f"unknown action {sanitize(action, 20)!r}")
    every = form.get("all") == "1"
    ids = [] if every else [str(x) for x in form.getlist("ids")][:10000]
    fields = {"q": str(form.get("q") or ""), "by": str(form.get("by") or "recipient"), "age": str(form.get("age") or "")}
    f = _filters(fields["q"], fields["by"], fields["age"]) if every else {}
    sel = Selector(ids=ids, all=every, queue=state, **f)
    audit = {"ids": ids} if ids else {"all": True}
    audit["queue"] = state
    if f.get("sender"):
        audit["from"] = f["sender"]
    if f.get("recipient"):
        audit["to"] = f["recipient"]
    for k in ("older_than", "newer_than"):
        if f.get(k) is not None:
            audit[k] = f[k]
    return action, sel, audit, {"action": action, "all": every, "ids": ids, **fields}


def _back(state: str, fields: dict[str, Any]) -> str:
    from urllib.parse import urlencode

    query = {k: fields[k] for k in ("q", "by", "age") if fields.get(k)}
    return f"/queues/{state}" + (f"?{urlencode(query)}" if query else "")


@router.post("/queues/{state}/confirm")
async def queue_confirm(request: Request, state: str, s: Operator) -> Response:
    from ...queue.ops import OpsError

    state = _state(state)
    action, sel, _, fields = await _selection(request, state)
    if not sel.ids and not sel.all:
        s.flash(f"{action}: select messages first (or all that match)")
        return _redirect(_back(state, fields))
    try:
        chosen, missing = await asyncio.to_thread(_panel(request).admin.ops().select, action, sel)
    except (OpsError, ValueError) as exc:
        s.flash(f"{action}: {exc}")
        return _redirect(_back(state, fields))
    return render(request, "queues_confirm.html", title=f"{action.upper()} {len(chosen)} message(s)?", state=state,
                  labels=STATE_LABELS, action=action, count=len(chosen), sample=[q for q, _ in chosen[:20]], missing=missing,
                  fields=fields, back=_back(state, fields))  # fmt: skip


@router.post("/queues/{state}/act")
async def queue_act(request: Request, state: str, s: Operator) -> Response:
    from ...queue.ops import OpsError

    state = _state(state)
    action, sel, audit, fields = await _selection(request, state)
    admin = _panel(request).admin
    ip = client_ip(request)
    ops = admin.ops()
    try:
        result = await getattr(ops, action)(sel)
    except (OpsError, ValueError) as exc:
        admin.audit.write(s.name, ip, f"queue.{action}", audit, {"status": 400, "error": str(exc)})
        s.flash(f"{action}: {exc}")
        return _redirect(_back(state, fields))
    admin.audit.write(s.name, ip, f"queue.{action}", audit, {"status": 200, "count": result.get("count"), "dry_run": False})
    log.info("panel: queue %s of %d message(s) by %s from %s", action, result.get("count", 0), s.name, ip)
    note = f"{action}: {result.get('count', 0)} message(s)"
    if result.get("pending"):
        note += f" ({len(result['pending'])} being delivered now: done when the attempt ends)"
    s.flash(note)
    return _redirect(_back(state, fields))

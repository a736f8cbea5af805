"""The web admin panel: server-rendered pages at / of the admin listener, beside the JSON API.

DESCRIPTION
    `router` (a FastAPI APIRouter) holds every page; `install(app, admin)` adds it to the admin
    API's FastAPI app with the static files (/static/), the handler of PageError (redirects and
    error pages) and the panel's state (`app.state.panel`, a `Panel`: sessions, the sign-in
    limiter, the chart history and its sampler). The AdminServer calls `Panel.start()` when it
    starts serving and `await Panel.close()` when it stops.

      routes.py     sign-in and out, Overview, Queues (this module's pages)
      settings.py   the settings pages, when present (imported here; they add to `router`)
      session.py    sessions, CSRF, roles: `require_session(role)`
      render.py     the Jinja2 environment: `render(request, template, **ctx)`, NAV
      history.py    the sampler and the ring buffers behind the charts

    Pages are HTML with small scripts (static/panel.js) and two libraries from the npm registry
    shipped in static/vendor/ (htmx, uPlot; scripts/vendor-frontend.sh fetches and checks them).
    Nothing is loaded from elsewhere: the panel works with no outside network.

SECURITY
    Same listener and process as the admin API (loopback by default). Every page needs a
    session made from an admin token; every POST a CSRF token; read sessions change nothing.
    Static files are public (the libraries, the style sheet and the script: no data).

CONFIG
    admin.listen, admin.token_file, server.data_dir (data_dir/state/history.json)
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from typing import Any

from fastapi import FastAPI, Request
from fastapi.responses import HTMLResponse, RedirectResponse, Response
from fastapi.staticfiles import StaticFiles

from .history import History, Sampler, load, read_metrics
from .pages import router
from .render import STATIC, render
from .session import PageError, SessionStore, SigninLimiter


class Panel:
    """The panel's state in the admin process."""

    def __init__(self, admin: Any, *, clock: Callable[[], float] = time.time) -> None:
        self.admin = admin
        self.clock = clock
        self.sessions = SessionStore()
        self.limiter = SigninLimiter()
        cfg = admin.worker.config
        self.history_path = cfg.data_path / "state" / "history.json"
        self.history: History = load(self.history_path)
        root = admin.worker.store.root
        self.sampler = Sampler(self.history, lambda: read_metrics(root), self.history_path, clock=clock)
        self._stop = asyncio.Event()
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        """Start the sampler (its first sample now), in the running loop."""
        if self._task is None:
            self._stop.clear()
            self._task = asyncio.get_running_loop().create_task(self.sampler.run(self._stop))

    async def close(self) -> None:
        """Stop the sampler; it saves the history."""
        if self._task is not None:
            self._stop.set()
            task, self._task = self._task, None
            await asyncio.gather(task, return_exceptions=True)


async def _page_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, PageError)
    if exc.location is not None:
        return RedirectResponse(exc.location, status_code=exc.status)
    if request.url.path.endswith(".json") or request.headers.get("hx-request"):
        return HTMLResponse(exc.message, status_code=exc.status)
    title = {401: "Signed out", 403: "Not allowed", 404: "Not found"}.get(exc.status, "Error")
    return render(request, "error.html", status_code=exc.status, title=title, message=exc.message)


def install(app: FastAPI, admin: Any) -> Panel:
    """Serve the panel from `app` (the admin API's) for `admin` (the AdminServer)."""
    panel = Panel(admin)
    app.state.panel = panel
    app.add_exception_handler(PageError, _page_error)
    app.mount("/static", StaticFiles(directory=str(STATIC)), name="panel-static")
    app.include_router(router)
    return panel


from . import routes, settings  # noqa: F401 - the pages register on `router`

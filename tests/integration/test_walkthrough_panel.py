"""The panel as an admin first sees it: every page of the menu and every queue page, in a real
browser (headless chromium, tests/integration/browser.py), without one console error, page
error or failed response.

Found by walking README.md: Chromium asks every new origin for /favicon.ico, the panel had none,
and its 404 was a console error ("Failed to load resource") on the first page of every visit.
"""

from __future__ import annotations

from typing import Any

import pytest
from browser import PanelPage, chromium, page, panel_mta  # noqa: F401 - fixtures

pytestmark = pytest.mark.integration


def test_every_page_loads_without_a_console_error_or_a_failed_request(make_mta, page):  # noqa: F811
    mta = panel_mta(make_mta)
    p = PanelPage(page, mta)
    problems: list[Any] = []
    page.on("console", lambda m: problems.append(("console", m.text, page.url)) if m.type == "error" else None)
    page.on("pageerror", lambda e: problems.append(("pageerror", str(e), page.url)))
    page.on("response", lambda r: problems.append(("http", r.status, r.url)) if r.status >= 400 else None)
    requested: list[str] = []
    page.on("request", lambda r: requested.append(r.url))

    p.goto("/")  # not signed in: the sign-in page, a new origin for this browser context
    page.wait_for_load_state("networkidle")
    p.signin("admin")
    links = page.locator("nav.nav a").evaluate_all("els => els.map(e => e.getAttribute('href'))")
    assert len(links) == 8, links
    paths = [*links, *(f"/queues/{q}" for q in ("incoming", "active", "deferred", "hold", "corrupt"))]
    for path in paths:
        response = p.goto(path)
        page.wait_for_load_state("networkidle")
        assert response is not None and response.status == 200, (path, response and response.status)
    assert not problems, problems
    assert not [u for u in requested if u.endswith("/favicon.ico")]
    assert page.locator("link[rel=icon]").get_attribute("href") == "data:,"  # what keeps chromium from asking

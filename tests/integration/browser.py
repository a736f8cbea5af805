"""The web panel's browser fixture: Playwright driving Debian's chromium, headless.

Import the fixtures into a test module (`from browser import chromium, page  # noqa: F401`) and
use the helpers:

    mta = panel_mta(make_mta, overrides)     a server whose token file has TOKENS (read, operator, admin)
    p = PanelPage(page, mta)                 p.signin("admin"), p.goto("/queues"), p.shot("queues")
    p.shot(name, width=375)                  a full-page screenshot, <name>.png in $MTASERVER_SHOTS

The browser is Debian's `chromium` package (scripts/test-services.sh installs it), launched
through `executable_path`: never `playwright install`, which downloads browsers from a CDN. A
missing chromium (or playwright) skips locally and fails under CI=true (conftest.require_tool).
"""

from __future__ import annotations

import os
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from conftest import IN_CI, Mta, require_tool

# Screenshots go to docs/panel/ only when asked for (`make shots`: MTASERVER_SHOTS=docs/panel): a
# test run must not rewrite tracked files (the pages show the time and random keys).
DOCS = Path(os.environ.get("MTASERVER_SHOTS") or Path(os.environ.get("TMPDIR", "/tmp")) / "mtaserver-panel-shots")
TOKENS = {
    "read": ("r" * 24 + "readtoken", "viewer"),
    "operator": ("o" * 24 + "operatortoken", "ops"),
    "admin": ("a" * 24 + "admintoken", "boss"),
}


def panel_mta(make_mta: Any, overrides: dict[str, Any] | None = None) -> Mta:
    """A started server with the three tokens of TOKENS in its token file."""
    mta = make_mta(overrides, start=False)
    mta.data_dir.mkdir(parents=True, exist_ok=True)
    path = mta.data_dir / "admin.token"
    path.write_text("".join(f"{role} {secret} {name}\n" for role, (secret, name) in TOKENS.items()))
    os.chmod(path, 0o600)
    mta.start()
    deadline = time.monotonic() + 10
    while "admin API ready" not in mta.log():
        if time.monotonic() > deadline:
            raise AssertionError(f"the admin API did not start: {mta.log()[-2000:]}")
        time.sleep(0.05)
    return mta


# Module scope, not session: Playwright's sync API keeps an event loop marked as running in this
# thread while it is started, and every asyncio test after it (pytest-asyncio) would then fail with
# "Runner.run() cannot be called from a running event loop". Stopped at the end of each panel module.
@pytest.fixture(scope="module")
def chromium() -> Iterator[Any]:
    path = require_tool("chromium")
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        if IN_CI:
            pytest.fail("playwright is not installed (pip install -e .[test])")
        pytest.skip("playwright is not installed")
    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=path, headless=True,
                                     args=["--no-sandbox", "--disable-dev-shm-usage", "--disable-gpu"])  # fmt: skip
        try:
            yield browser
        finally:
            browser.close()


@pytest.fixture
def page(chromium: Any) -> Iterator[Any]:
    context = chromium.new_context(viewport={"width": 1280, "height": 900}, locale="en-GB", timezone_id="UTC")
    context.set_default_timeout(15000)
    pg = context.new_page()
    try:
        yield pg
    finally:
        context.close()


class PanelPage:
    """One browser tab on one server's panel."""

    def __init__(self, page: Any, mta: Mta) -> None:
        self.page = page
        self.mta = mta
        self.base = mta.admin_url

    def goto(self, path: str) -> Any:
        return self.page.goto(self.base + path)

    def signin(self, role: str = "admin", *, token: str | None = None) -> None:
        self.goto("/signin")
        self.page.get_by_label("Admin token").fill(token if token is not None else TOKENS[role][0])
        self.page.get_by_role("button", name="Sign in").click()
        self.page.wait_for_load_state()

    def shot(self, name: str, *, width: int = 1280) -> Path:
        """A full-page screenshot of what the tab shows, at `width` px, into DOCS ($MTASERVER_SHOTS)."""
        DOCS.mkdir(parents=True, exist_ok=True)
        size = self.page.viewport_size or {"width": 1280, "height": 900}
        if size["width"] != width:
            self.page.set_viewport_size({"width": width, "height": size["height"]})
            self.page.wait_for_timeout(300)  # let the charts take the new width
        path = DOCS / f"{name}.png"
        self.page.screenshot(path=str(path), full_page=True)
        if size["width"] != width:
            self.page.set_viewport_size(size)
        return path

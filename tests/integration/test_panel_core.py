"""The web panel in a real browser (headless chromium): sign-in, roles, Overview, Queues.

Each test runs a real mtaserver (tests/conftest.py) with a token file of three roles and drives
its panel with Playwright (tests/integration/browser.py). Screenshots of every page go to
docs/panel/.
"""

from __future__ import annotations

import json
import re

import pytest
from browser import TOKENS, PanelPage, chromium, page, panel_mta  # noqa: F401 - fixtures
from helpers import Sink, delivering, send, wait_for

pytestmark = pytest.mark.integration


def csrf_of(pg) -> str:
    return pg.locator('meta[name="csrf-token"]').get_attribute("content")


def audit_rows(mta) -> list[tuple[str, str, dict, dict]]:
    rows = []
    path = mta.data_dir / "admin-audit.log"
    for line in path.read_text().splitlines() if path.exists() else []:
        _, name, _, action, rest = line.split(" ", 4)
        selector, end = json.JSONDecoder().raw_decode(rest)
        rows.append((name, action, selector, json.loads(rest[end:])))
    return rows


def test_signin_required_wrong_token_refused_and_signout(make_mta, page):  # noqa: F811
    mta = panel_mta(make_mta)
    p = PanelPage(page, mta)
    # No session: every page sends the browser to the sign-in form, which comes back to the page after.
    p.goto("/queues")
    assert re.search(r"/signin\?next=%2Fqueues$", page.url)
    p.shot("signin")
    page.get_by_label("Admin token").fill("x" * 30 + "wrongtoken")
    page.get_by_role("button", name="Sign in").click()
    assert page.locator("#signin-error").inner_text() == "That is not a valid token."
    assert "/signin" in page.url and not [c for c in page.context.cookies() if c["name"] == "mtaserver_session"]
    assert "panel: sign-in from 127.0.0.1 refused: not a token of the token file" in mta.log()
    assert "wrongtoken" not in mta.log()

    page.get_by_label("Admin token").fill(TOKENS["admin"][0])
    page.get_by_role("button", name="Sign in").click()
    page.wait_for_url(re.compile(r"/queues$"))
    cookie = next(c for c in page.context.cookies() if c["name"] == "mtaserver_session")
    assert cookie["httpOnly"] and cookie["sameSite"] == "Strict" and cookie["path"] == "/"
    assert page.locator(".who").inner_text().startswith("boss")
    # Every page of the seed is in the menu.
    assert page.locator("nav.nav a").all_inner_texts() == [
        "Overview", "Inbound Flow & Security", "Postscreen Tuning", "Outbound Flow", "Antivirus & Antispam", "Advanced",
        "Queues", "Single Server",
    ]  # fmt: skip
    # A POST without the session's CSRF token is refused, with it accepted.
    assert page.request.post(mta.admin_url + "/queues/flush", form={"csrf": "forged"}, max_redirects=0).status == 403
    assert page.request.post(mta.admin_url + "/queues/flush", form={"csrf": csrf_of(page)}, max_redirects=0).status == 303

    page.get_by_role("button", name="Sign out").click()
    page.wait_for_url(re.compile(r"/signin$"))
    p.goto("/")
    assert "/signin" in page.url
    assert TOKENS["admin"][0] not in mta.log() + (mta.data_dir / "admin-audit.log").read_text()


def test_failed_signins_are_rate_limited(make_mta, page):  # noqa: F811
    mta = panel_mta(make_mta)
    p = PanelPage(page, mta)
    for _ in range(5):
        p.signin(token="z" * 30)
    p.signin("admin")  # the right token, but this address has failed too often
    assert "Too many failed sign-ins" in page.locator("#signin-error").inner_text()
    assert "too many failed sign-ins" in mta.log()


def test_read_token_sees_but_cannot_change(make_mta, page):  # noqa: F811
    mta = panel_mta(make_mta)
    send(mta, "a@example.test", ["b@relay.test"])  # stays in incoming/ (no queue manager)
    p = PanelPage(page, mta)
    p.signin("read")
    assert "Read-only" in page.locator(".readonly-note").inner_text()
    p.goto("/queues")
    assert page.locator("[data-queue=incoming]").inner_text() == "1"
    assert page.get_by_role("button", name="Flush").is_disabled()
    assert page.get_by_role("button", name="Restart scan").is_disabled()
    page.locator("[data-queue=incoming] a").click()
    page.wait_for_url(re.compile(r"/queues/incoming$"))
    assert page.locator("#messages tbody tr[data-id]").count() == 1
    assert page.get_by_role("button", name="HOLD").is_disabled()
    assert page.locator('input[name="ids"]').first.is_disabled()
    # Even a well-formed POST (with the session's CSRF token) changes nothing.
    qid = mta.queued("incoming")[0]
    form = {"csrf": csrf_of(page), "action": "hold", "ids": qid}
    resp = page.request.post(mta.admin_url + "/queues/incoming/act", form=form, max_redirects=0)
    assert resp.status == 403 and "needs role operator" in resp.text()
    assert mta.queued("incoming") == [qid] and mta.queued("hold") == []
    # It can open the message.
    p.goto(f"/queues/message/{qid}")
    assert page.locator("#recipients").inner_text().count("b@relay.test") == 1
    # And sign out.
    page.get_by_role("button", name="Sign out").click()
    page.wait_for_url(re.compile(r"/signin$"))


def test_hold_from_the_queues_page_is_not_delivered_release_is(make_mta, page):  # noqa: F811
    with Sink(data_replies=["451 4.3.0 relay busy, try later", "451 4.3.0 relay busy, try later"]) as sink:
        mta = panel_mta(make_mta, delivering(relay=sink.port, min_backoff="1h", max_backoff="1h"))
        send(mta, "alice@example.test", ["held@relay.test"], b"Subject: keep me\r\n\r\nheld\r\n")
        send(mta, "alice@example.test", ["free@relay.test"], b"Subject: go\r\n\r\nfree\r\n")
        wait_for(lambda: len(mta.queued("deferred")) == 2, what="both deferred by the relay")
        held = next(q for q in mta.queued("deferred") if b"keep me" in mta.body(q, "deferred"))

        p = PanelPage(page, mta)
        p.signin("operator")
        p.goto("/queues")
        assert page.locator("[data-queue=deferred]").inner_text() == "2"
        assert page.locator("#server-counts").inner_text().count(mta.config["server"]["hostname"]) == 1
        p.shot("queues")
        page.locator("[data-queue=deferred] a").click()
        page.wait_for_url(re.compile(r"/queues/deferred$"))
        assert "451 4.3.0 relay busy" in page.locator(f'tr[data-id="{held}"]').inner_text()
        p.shot("queues-deferred")

        # The message's detail: envelope, recipients with the relay's reply, next attempt, headers.
        page.locator(f'tr[data-id="{held}"] a').click()
        assert page.locator("h1").inner_text() == held
        assert "451 4.3.0 relay busy" in page.locator("#recipients").inner_text()
        assert "Subject: keep me" in page.locator("pre.headers").inner_text()
        p.shot("message")
        page.go_back()

        # Search narrows the list to one; HOLD it, after a confirmation that says how many.
        page.get_by_label("Search").fill("held@relay.test")
        page.get_by_role("button", name="Apply").click()
        assert page.locator("#messages tbody tr[data-id]").count() == 1
        page.check(f'input[name="ids"][value="{held}"]')
        page.get_by_role("button", name="HOLD").click()
        assert page.locator("#confirm-h").inner_text() == "HOLD 1 message?"
        p.shot("queues-confirm")
        page.locator("#confirm").click()
        assert page.locator(".flash").inner_text() == "hold: 1 message(s)"
        assert mta.queued("hold") == [held]

        # FLUSH retries the deferred mail now: the other message goes, the held one stays.
        p.goto("/queues")
        page.get_by_role("button", name="Flush").click()
        assert "flush: 1 deferred message(s)" in page.locator(".flash").inner_text()
        wait_for(lambda: any(r == ["free@relay.test"] for _, r, _ in sink.messages), what="the other message delivered")
        assert mta.queued("hold") == [held]
        assert not any(r == ["held@relay.test"] for _, r, _ in sink.messages)

        # RELEASE it from On Hold, selecting all that match: it is delivered.
        p.goto("/queues/hold")
        page.check("#all-matching")
        page.get_by_role("button", name="RELEASE").click()
        assert "This will release 1 message" in page.locator("#confirm-count").inner_text()
        page.locator("#confirm").click()
        assert page.locator(".flash").inner_text() == "release: 1 message(s)"
        wait_for(lambda: any(r == ["held@relay.test"] for _, r, _ in sink.messages), what="the released message delivered")
        wait_for(lambda: not mta.queued("hold") and not mta.queued("deferred"), what="the queue empty")

        rows = [(n, a, s, r) for n, a, s, r in audit_rows(mta) if a.startswith("queue.")]
        assert rows == [
            ("ops", "queue.hold", {"ids": [held], "queue": "deferred"}, {"count": 1, "dry_run": False, "status": 200}),
            ("ops", "queue.flush", {}, {"count": 1, "status": 200}),
            ("ops", "queue.release", {"all": True, "queue": "hold"}, {"count": 1, "dry_run": False, "status": 200}),
        ]


def test_overview_shows_the_counts_charts_services_and_attention(make_mta, page):  # noqa: F811
    with Sink() as sink:
        # A scanner that does not answer (on_error: accept, so mail still flows): it needs attention.
        down = {"enabled": True, "on_error": "accept", "clamd": {"address": "127.0.0.1:9"}}
        mta = panel_mta(make_mta, {**delivering(relay=sink.port), "antivirus": down})
        for i in range(3):
            send(mta, "a@example.test", [f"r{i}@relay.test"])
        wait_for(lambda: len(sink.messages) == 3, what="three delivered")
        p = PanelPage(page, mta)
        p.signin("admin")
        assert page.url.rstrip("/") == mta.admin_url  # the Overview is the first page
        page.wait_for_selector('#totals [data-total="accepted"]')

        def counted() -> bool:
            if [page.locator(f'[data-total="{n}"]').inner_text() for n in ("accepted", "delivered")] == ["3", "3"]:
                return True
            page.reload()
            page.wait_for_selector('#totals [data-total="accepted"]')
            return False

        wait_for(counted, what="the overview's counts")
        assert page.locator('[data-hour="accepted"]').inner_text() == "3"
        # Charts drawn from the history (the first sample was taken at start).
        page.wait_for_selector('[data-chart="flow"] canvas')
        page.wait_for_selector('[data-chart="queue"] canvas')
        assert "accepted" in page.locator('[data-chart="flow"]').inner_text().lower()
        # The services table probes now; the scanner that does not answer needs attention.
        assert "down" in page.locator('tr[data-service="antivirus"]').inner_text()
        assert "not enabled" in page.locator('tr[data-service="antispam"]').inner_text()
        assert "antivirus is down (clamd)" in page.locator("#attention").inner_text()
        p.shot("overview")
        p.shot("overview-phone", width=375)
        # The day window.
        page.get_by_role("button", name="Last day").click()
        page.wait_for_selector('#charts[data-loaded="day"]')
        assert (mta.data_dir / "state").is_dir()
    mta.stop()
    assert (mta.data_dir / "state" / "history.json").exists()  # kept for the next start

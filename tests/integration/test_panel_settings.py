"""The panel's settings pages in headless Chromium against a running server: a change made in
the browser is validated, written to the file and applied with no restart (the next SMTP
session sees it); a bad value is shown at its field and changes nothing; read sessions see
disabled controls; a DKIM key is made from the page; a node's override is set and taken back.
Screenshots of every settings page go to docs/panel/."""

from __future__ import annotations

import os
import re
import stat
from typing import Any

import pytest
import yaml
from browser import PanelPage, chromium, page, panel_mta  # noqa: F401 - fixtures
from smtpclient import UNTRUSTED, UNTRUSTED2, SmtpClient, wait_for_log

pytestmark = pytest.mark.integration

QUIET = {"inbound": {"notify_admin": False, "notify_recipient": False}}
PAGES = {"inbound": "/inbound", "postscreen": "/postscreen", "outbound": "/outbound", "antivirus": "/antispam",
         "advanced": "/advanced", "server": "/server"}  # fmt: skip


def message_with(filename: str) -> bytes:
    return (
        "From: s@client.test\r\nTo: a@example.test\r\nSubject: files\r\nMIME-Version: 1.0\r\n"
        'Content-Type: multipart/mixed; boundary="b"\r\n\r\n--b\r\nContent-Type: text/plain\r\n\r\nhello\r\n'
        f'--b\r\nContent-Type: application/octet-stream\r\nContent-Disposition: attachment; filename="{filename}"\r\n'
        "Content-Transfer-Encoding: base64\r\n\r\nTVqQAA==\r\n--b--\r\n"
    ).encode()


def send(mta: Any, filename: str, source: str = UNTRUSTED) -> Any:
    with SmtpClient(mta.port, source) as c:
        c.greeting()
        c.ehlo()
        return c.send_message("s@client.test", ["a@example.test"], message_with(filename))


def flash(p: PanelPage) -> str:
    return p.page.locator(".flashes").inner_text()


def audit_lines(mta: Any) -> list[str]:
    path = mta.data_dir / "admin-audit.log"
    return path.read_text().splitlines() if path.exists() else []


def test_blocked_extension_added_with_the_chip_input_is_refused_live(make_mta, page):  # noqa: F811
    mta = panel_mta(make_mta, QUIET)
    pid = mta.proc.pid
    assert send(mta, "notes.xyz").code == 250  # not blocked yet
    p = PanelPage(page, mta)
    p.signin("admin")
    p.goto("/inbound")
    chip_input = page.locator("#f-inbound-blocked-extensions")
    chip_input.click()
    chip_input.type("xyz ")  # space adds the chip
    chips = page.locator("[data-chips] .chip input[type=hidden]")
    assert [chips.nth(i).get_attribute("value") for i in range(chips.count())] == ["xyz"]
    chip_input.type("a.b ")  # not letters and digits: kept in the input, an error at the field
    assert page.locator("#f-inbound-blocked-extensions-error").is_visible()
    assert chip_input.input_value() == "a.b"
    chip_input.fill("")
    # ADD COMMONLY BLOCKED EXTENSIONS merges the 27, de-duplicated; a click on a chip removes it
    page.get_by_role("button", name=re.compile("Add commonly blocked extensions", re.IGNORECASE)).click()
    page.get_by_role("button", name=re.compile("Add commonly blocked extensions", re.IGNORECASE)).click()
    assert chips.count() == 28
    page.get_by_role("button", name="remove exe").click()
    assert chips.count() == 27
    page.locator("#save").click()
    page.wait_for_load_state()
    assert "saved: changed inbound.blocked_extensions" in flash(p)
    written = yaml.safe_load(mta.config_path.read_text())["inbound"]["blocked_extensions"]
    assert written[0] == "xyz" and "exe" not in written and "bat" in written and len(written) == 27
    # applied with no restart: the same process, the next SMTP session refuses the file
    reply = send(mta, "notes.xyz")
    assert (reply.code, reply.status) == (550, "5.7.1"), reply
    assert 'File "notes.xyz" has the unacceptable extension "xyz"' in reply.text
    assert send(mta, "setup.exe").code == 250  # removed with a click
    assert mta.proc.pid == pid and mta.proc.poll() is None
    # the page shows the saved chips; the audit log has the change under the session's token
    assert page.locator("[data-chips] .chip").first.inner_text().startswith("xyz")
    line = [ln for ln in audit_lines(mta) if " config.patch " in ln][-1]
    assert " boss 127.0.0.1 config.patch " in line and "inbound.blocked_extensions" in line and '"status":200' in line


def test_postscreen_access_list_and_action_apply_to_the_next_session(make_mta, page):  # noqa: F811
    mta = panel_mta(make_mta, {"postscreen": {"greet": {"banner": ""}}})
    mta.stop()  # the listener screened: a restart (panel_mta starts the server with its tokens)
    mta.config["server"]["listeners"][0]["postscreen"] = True
    mta.write_config()
    mta.log_path.rename(mta.log_path.with_name("first-run.log"))  # start() waits for "ready:" in a new log
    mta.start()
    wait_for_log(mta, "admin API ready")
    with SmtpClient(mta.port, UNTRUSTED2) as c:
        assert c.greeting().code == 220
    p = PanelPage(page, mta)
    p.signin("admin")
    p.goto("/postscreen")
    page.locator("#f-postscreen-access-list").fill(f"permit_mynetworks\n{UNTRUSTED2}/32 reject")
    page.locator("#f-postscreen-blacklist-action").select_option("drop")
    page.locator("#save").click()
    page.wait_for_load_state()
    assert "saved: changed postscreen.access_list, postscreen.blacklist_action" in flash(p)
    with SmtpClient(mta.port, UNTRUSTED2) as c:
        g = c.reply()
        assert (g.code, g.text) == (521, "5.3.2 Service currently unavailable")
    with SmtpClient(mta.port, UNTRUSTED) as c:  # not on the list: screened as before
        assert c.greeting().code == 220
    wait_for_log(mta, f"DENYLISTED [{UNTRUSTED2}]")
    p.goto("/postscreen")
    assert page.locator("#f-postscreen-blacklist-action").input_value() == "drop"
    assert "1 dropped (521)" in page.locator('[data-stats="blacklist"]').inner_text()  # what it did (metrics)
    assert "permitted" not in page.locator('[data-stats="access"]').inner_text()
    p.shot("postscreen")


def test_a_bad_relay_host_is_shown_at_its_field_and_changes_nothing(make_mta, page):  # noqa: F811
    mta = panel_mta(make_mta)
    before = mta.config_path.read_bytes()
    p = PanelPage(page, mta)
    p.signin("admin")
    p.goto("/outbound")
    page.locator("#f-outbound-relay-host").fill("[foo")
    page.locator("#f-outbound-add-username-header").check(force=True)  # a good change beside it: not saved either
    page.locator("#save").click()
    page.wait_for_load_state()
    error = page.locator("#f-outbound-relay-host-error")
    assert error.is_visible() and "[foo" in error.inner_text()
    assert page.locator("#f-outbound-relay-host").input_value() == "[foo"  # what the user typed stays
    assert page.locator("#f-outbound-add-username-header").is_checked()
    assert page.locator(".field.has-error").count() == 1
    assert "Not saved: nothing was changed. 1 field below says why." in page.locator("#page-errors").inner_text()
    assert mta.config_path.read_bytes() == before
    assert not (mta.config_path.parent / (mta.config_path.name + ".bak")).exists()
    status, _, body = mta.api("GET", "/api/config", token=mta.admin_token())
    assert status == 200 and body["config"]["outbound"]["relay_host"] is None
    line = [ln for ln in audit_lines(mta) if " config.patch " in ln][-1]
    assert '"status":422' in line and "outbound.relay_host" in line
    p.shot("outbound-error")


def test_read_session_sees_every_control_disabled(make_mta, page):  # noqa: F811
    mta = panel_mta(make_mta)
    p = PanelPage(page, mta)
    p.signin("read")
    for path in PAGES.values():
        p.goto(path)
        assert page.locator("#save").is_disabled(), path
        enabled = page.locator("form.settings input:enabled:not([type=hidden]), form.settings select:enabled, "
                               "form.settings textarea:enabled, form.settings button:enabled")  # fmt: skip
        assert enabled.count() == 0, path
    # a read session's POST is refused, even with its CSRF token
    csrf = page.locator("meta[name=csrf-token]").get_attribute("content")
    resp = page.request.post(mta.admin_url + "/inbound", form={"csrf": csrf, "inbound.blocked_extensions": "exe"})
    assert resp.status == 403
    assert "blocked_extensions: [exe]" not in mta.config_path.read_text()


def test_dkim_key_made_from_the_page(make_mta, page):  # noqa: F811
    mta = panel_mta(make_mta)
    p = PanelPage(page, mta)
    p.signin("admin")
    p.goto("/antispam")
    page.locator("#f-dkim-new-domain").fill("example.test")
    page.locator("#f-dkim-new-selector").fill("panel")
    page.locator("#f-dkim-new-type").select_option("ed25519")
    page.locator("#dkim-generate").click()
    page.wait_for_load_state()
    assert "made a new ed25519 key for panel._domainkey.example.test" in flash(p)
    key = mta.data_dir / "dkim" / "example.test.panel.key"
    assert stat.S_IMODE(os.stat(key).st_mode) == 0o600
    record = page.locator('[data-record="panel._domainkey.example.test"]').inner_text()
    assert record.startswith('panel._domainkey.example.test. IN TXT "v=DKIM1; k=ed25519; p=')
    sign = yaml.safe_load(mta.config_path.read_text())["dkim"]["sign"]
    assert sign == [{"domain": "example.test", "selector": "panel", "key": "dkim/example.test.panel.key"}]
    _, _, body = mta.api("GET", "/api/services", token=mta.admin_token())
    dkim = next(s for s in body["services"] if s["name"] == "dkim")
    assert dkim["keys"][0]["loaded"] is True
    assert any(" dkim.keygen " in ln for ln in audit_lines(mta))
    # a bad selector: said at the new key's fields, nothing written
    page.locator("#f-dkim-new-domain").fill("example.test")
    page.locator("#f-dkim-new-selector").fill("bad_selector!")
    page.locator("#dkim-generate").click()
    page.wait_for_load_state()
    assert "selector: expected a selector like mail" in page.locator("#f-dkim-new-error").inner_text()
    assert page.locator("#f-dkim-new-selector").input_value() == "bad_selector!"
    assert len(yaml.safe_load(mta.config_path.read_text())["dkim"]["sign"]) == 1
    p.shot("antivirus")


def test_single_server_override_and_back_to_inherited(make_mta, page):  # noqa: F811
    mta = panel_mta(make_mta)
    p = PanelPage(page, mta)
    p.signin("admin")
    p.goto("/server")
    block = page.locator('[data-override="outbound.relay_host"]')
    assert block.locator(".badge").inner_text() == "inherited"
    assert page.locator("#f-outbound-relay-host").is_disabled()
    page.locator("#f-outbound-relay-host-override").check(force=True)
    page.locator("#f-outbound-relay-host").fill("[relay2.example.test]:2525")
    page.locator("#save").click()
    page.wait_for_load_state()
    assert "saved: changed outbound.relay_host" in flash(p)
    doc = yaml.safe_load(mta.config_path.read_text())
    assert doc["servers"] == {"mx.example.test": {"outbound": {"relay_host": "[relay2.example.test]:2525"}}}
    assert doc["outbound"].get("relay_host") is None  # the global value is untouched
    assert block.locator(".badge").inner_text() == "overridden"
    _, _, body = mta.api("GET", "/api/config", token=mta.admin_token())
    assert body["config"]["outbound"]["relay_host"] == "[relay2.example.test]:2525"  # this node's effective value
    p.goto("/outbound")  # the global page says the node overrides it
    assert "outbound.relay_host" in page.locator(".alert.note").inner_text()
    p.goto("/server")
    p.shot("server")
    page.locator("#f-outbound-relay-host-override").uncheck(force=True)
    page.locator("#save").click()
    page.wait_for_load_state()
    assert "saved: changed outbound.relay_host" in flash(p)
    assert not yaml.safe_load(mta.config_path.read_text()).get("servers")
    _, _, body = mta.api("GET", "/api/config", token=mta.admin_token())
    assert body["config"]["outbound"]["relay_host"] is None


def test_screenshots_of_the_settings_pages(make_mta, page):  # noqa: F811
    mta = panel_mta(make_mta, {"inbound": {"blocked_extensions": ["@common"]},
                               "postscreen": {"dnsbl": {"sites": ["zen.spamhaus.org=127.0.0.[2..11]*3", "list.dnswl.org*-2"]}},
                               "antivirus": {"definitions": {"mirrors": ["database.clamav.net"],
                                                             "custom_signatures": ["https://example.com/local.ndb"]}}})  # fmt: skip
    p = PanelPage(page, mta)
    p.signin("admin")
    for name, path in PAGES.items():
        p.goto(path)
        assert page.locator("h1").inner_text()
        if name in ("inbound", "outbound", "advanced"):
            p.shot(name)
    # Phone width: the settings pages fit the screen (no sideways scrolling) and the nav wraps.
    p.goto("/inbound")
    p.shot("inbound-phone", width=375)
    page.set_viewport_size({"width": 375, "height": 800})
    for path in PAGES.values():
        p.goto(path)
        overflow = page.evaluate("document.documentElement.scrollWidth - document.documentElement.clientWidth")
        assert overflow <= 1, f"{path}: {overflow} px wider than a 375 px screen"
    page.set_viewport_size({"width": 1280, "height": 900})
    p.goto("/advanced")
    assert page.locator("#f-advanced-max-message-size-mb").input_value() == "9.77"
    assert page.locator("#f-advanced-max-message-size").is_checked()  # Custom, not No limit

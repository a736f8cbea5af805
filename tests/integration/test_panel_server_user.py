"""The web panel of a server that runs as server.user (started as root, as in production): a
save goes through the root supervisor (admin/rootwriter.py), is applied in every process before
the page says so, and keeps the root-owned file's owner and mode. (The keys the supervisor keeps
for root are tested through the API in test_root_writer.py.)"""

from __future__ import annotations

import os
import stat

import pytest
import yaml
from browser import TOKENS, PanelPage, chromium, page  # noqa: F401 - fixtures
from conftest import Mta
from helpers import as_root, open_dir_fixture  # noqa: F401  (the fixture open_dir)
from scanners import message_with_attachment
from smtpclient import UNTRUSTED, SmtpClient, wait_for_log

pytestmark = pytest.mark.integration


def send(mta: Mta, filename: str) -> tuple[int, str]:
    with SmtpClient(mta.port, UNTRUSTED) as c:
        c.greeting()
        c.ehlo()
        r = c.send_message("s@client.test", ["a@example.test"], message_with_attachment(b"MZ", filename))
        return r.code, r.text


def test_the_panel_under_server_user_saves_through_the_root_supervisor(open_dir, page):  # noqa: F811
    as_root()
    mta = Mta(open_dir, {"server": {"workers": 2, "user": "nobody"},
                         "inbound": {"notify_admin": False, "notify_recipient": False}})  # fmt: skip
    mta.data_dir.mkdir(parents=True, exist_ok=True)
    tokens = mta.data_dir / "admin.token"
    tokens.write_text("".join(f"{role} {secret} {name}\n" for role, (secret, name) in TOKENS.items()))
    tokens.chmod(0o600)
    mta.config_path.chmod(0o644)  # root's, readable by the mail user (it reloads it)
    mta.start()
    try:
        wait_for_log(mta, "admin API ready")
        assert send(mta, "notes.xyz")[0] == 250
        p = PanelPage(page, mta)
        p.signin("admin")
        p.goto("/inbound")
        chips = page.locator("#f-inbound-blocked-extensions")
        chips.click()
        chips.type("xyz ")
        page.locator("#save").click()
        page.wait_for_load_state()
        text = page.locator(".flashes").inner_text()
        assert "saved: changed inbound.blocked_extensions" in text and "not yet applied" not in text, text
        st = os.stat(mta.config_path)
        assert (st.st_uid, stat.S_IMODE(st.st_mode)) == (0, 0o644)  # written by root, as it was
        assert yaml.safe_load(mta.config_path.read_text())["inbound"]["blocked_extensions"] == ["xyz"]
        # in effect in both SMTP workers when the page said saved: every connection refuses it
        for _ in range(4):
            code, reply = send(mta, "notes.xyz")
            assert code == 550 and 'unacceptable extension "xyz"' in reply, reply
    finally:
        assert mta.stop() == 0

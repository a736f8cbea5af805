"""Live configuration under server.user (admin/rootwriter.py), against running servers started as
root: the root supervisor writes the file for the admin API. A PATCH of inbound.blocked_extensions
applies live (the next message with that attachment gets 550) and keeps the file's comments, owner
and mode; a PATCH of a key that names a file (server.data_dir, a DKIM key) is refused naming it,
and nothing changes; `workers: 1` with server.user runs a supervisor, one SMTP worker and the
queue manager's process."""

from __future__ import annotations

import base64
import os
import pwd
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml
from conftest import Mta, _children
from smtpclient import UNTRUSTED, SmtpClient, wait_for_log

pytestmark = pytest.mark.integration

NOBODY = "nobody"
HEAD = "# the operator's own words: kept by every write\n"


@pytest.fixture
def open_dir() -> Iterator[Path]:
    """A directory every user may traverse (tmp_path is root's, 0700): the mail user must reach
    its data_dir and read the config file."""
    if os.geteuid() != 0:
        pytest.skip("needs root (server.user)")
    d = Path(tempfile.mkdtemp(prefix="mtaserver-rootwriter-", dir="/tmp"))
    d.chmod(0o755)
    yield d
    shutil.rmtree(d, ignore_errors=True)


def started(open_dir: Path, workers: int = 1) -> Mta:
    mta = Mta(open_dir, {"server": {"workers": workers, "user": NOBODY}, "inbound": {"notify_admin": False}})
    text = mta.config_path.read_text().replace("inbound:\n", "inbound:                # what comes in\n", 1)
    mta.config_path.write_text(HEAD + text)
    mta.config_path.chmod(0o644)  # root's, readable by the mail user (it reloads it)
    mta.start()
    wait_for_log(mta, "admin API ready")
    return mta


def attachment_message(name: str) -> bytes:
    return (
        "From: s@client.test\r\nTo: a@example.test\r\nSubject: files\r\nMIME-Version: 1.0\r\n"
        'Content-Type: multipart/mixed; boundary="b"\r\n\r\n--b\r\nContent-Type: text/plain\r\n\r\nhello\r\n'
        f'--b\r\nContent-Type: application/octet-stream\r\nContent-Disposition: attachment; filename="{name}"\r\n'
        "Content-Transfer-Encoding: base64\r\n\r\n" + base64.b64encode(b"MZ not a program").decode() + "\r\n--b--\r\n"
    ).encode()


def send(mta: Mta, content: bytes) -> tuple[int, str]:
    with SmtpClient(mta.port, UNTRUSTED, timeout=30) as c:
        c.greeting()
        c.ehlo("client.test")
        r = c.send_message("s@client.test", ["a@example.test"], content)
        return r.code, r.line


def test_workers_1_under_server_user_runs_a_supervisor_a_worker_and_a_manager(open_dir):
    mta = started(open_dir)
    try:
        wait_for_log(mta, "queue manager process ready")
        assert "worker 0 ready" in mta.log()
        assert mta.proc is not None
        kids = _children(mta.proc.pid)
        assert len(kids) == 2, kids
        nobody = pwd.getpwnam(NOBODY).pw_uid
        assert os.stat(f"/proc/{mta.proc.pid}").st_uid == 0  # the supervisor stays root
        assert [os.stat(f"/proc/{k}").st_uid for k in kids] == [nobody, nobody]
    finally:
        assert mta.stop() == 0


@pytest.mark.parametrize("workers", [1, 2])
def test_a_patch_under_server_user_applies_live_and_keeps_comments_owner_and_mode(open_dir, workers):
    mta = started(open_dir, workers)
    try:
        assert send(mta, attachment_message("setup.exe"))[0] == 250  # nothing blocked yet
        st = mta.config_path.stat()
        before = mta.config_path.read_text()
        patch = {"inbound": {"blocked_extensions": ["exe"]}}
        status, _, body = mta.api("PATCH", "/api/config", patch, token=mta.admin_token())
        assert status == 200 and body["changed"] == ["inbound.blocked_extensions"], body
        after = mta.config_path.read_text()
        assert after.startswith(HEAD) and "inbound:                # what comes in" in after
        assert yaml.safe_load(after)["inbound"]["blocked_extensions"] == ["exe"]
        now = mta.config_path.stat()
        assert (now.st_uid, now.st_gid, now.st_mode) == (st.st_uid, st.st_gid, st.st_mode) == (0, 0, st.st_mode)
        bak = Path(str(mta.config_path) + ".bak")
        assert bak.read_text() == before and bak.stat().st_uid == 0
        # Every SMTP worker took it: the next messages with that attachment are refused, no restart.
        for _ in range(2 * workers):
            code, line = send(mta, attachment_message("setup.exe"))
            assert code == 550 and 'unacceptable extension "exe"' in line, line
        assert "config channel:" in mta.log() and "written for the admin API" in mta.log()
        audit = (mta.data_dir / "admin-audit.log").read_text()
        assert "config.patch" in audit and '"status":200' in audit
        assert mta.api("GET", "/api/config", token=mta.admin_token())[2]["config"]["inbound"]["blocked_extensions"] == ["exe"]
    finally:
        assert mta.stop() == 0


@pytest.mark.parametrize(("patch", "named"), [
    ({"server": {"data_dir": "/etc"}}, "server.data_dir"),
    ({"dkim": {"sign": [{"domain": "example.test", "selector": "s1", "key": "/etc/shadow"}]}}, "dkim.sign[0].key"),
    ({"admin": {"listen": "0.0.0.0:8025"}}, "admin.listen"),
    ({"servers": {"mx.example.test": {"advanced": {"log_target": "file", "log_file": "/etc/cron.d/x"}}}},
     "servers.mx.example.test.advanced.log_file"),
])  # fmt: skip
def test_a_key_that_names_a_file_is_refused_naming_it_and_nothing_changes(open_dir, patch, named):
    mta = started(open_dir)
    try:
        before = mta.config_path.read_text()
        status, _, body = mta.api("PATCH", "/api/config", patch, token=mta.admin_token())
        assert status == 409, body
        assert any(e.startswith(f"{named}: cannot be changed through the API while server.user is set; edit the file as root")
                   for e in body["errors"]), body  # fmt: skip
        assert mta.config_path.read_text() == before and not Path(str(mta.config_path) + ".bak").exists()
        audit = (mta.data_dir / "admin-audit.log").read_text()
        assert "config.patch" in audit and '"status":409' in audit and named in audit
        assert "reload: applied" not in mta.log()  # no reload at all
        # The server goes on; a change that names no file still works after a refusal.
        status, _, body = mta.api("PATCH", "/api/config", {"server": {"limits": {"recipients": 7}}}, token=mta.admin_token())
        assert status == 200 and body["changed"] == ["server.limits.recipients"], body
    finally:
        assert mta.stop() == 0


def test_an_invalid_document_is_refused_at_its_key_and_the_channel_stays_usable(open_dir):
    mta = started(open_dir)
    try:
        before = mta.config_path.read_text()
        status, _, body = mta.api("PATCH", "/api/config", {"server": {"limits": {"recipients": 0}}}, token=mta.admin_token())
        assert status == 422 and body["errors"][0].startswith("server.limits.recipients:"), body
        assert mta.config_path.read_text() == before
        status, _, body = mta.api("PATCH", "/api/config", {"inbound": {"blocked_extensions": ["iso"]}}, token=mta.admin_token())
        assert status == 200 and body["changed"] == ["inbound.blocked_extensions"], body
    finally:
        assert mta.stop() == 0

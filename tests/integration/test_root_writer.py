"""Live configuration under server.user (admin/rootwriter.py), against running servers started as
root: the root supervisor writes the file for the admin API. A PATCH of inbound.blocked_extensions
applies live (the next message with that attachment gets 550) and keeps the file's comments, owner
and mode; a PATCH of a key that names a file (server.data_dir, a DKIM key) is refused naming it,
and nothing changes; `workers: 1` with server.user runs a supervisor, one SMTP worker and the
queue manager's process; the supervisor's side alone refuses, bounds and drops what it must; the
channel survives a restart of the queue manager's process."""

from __future__ import annotations

import base64
import json
import os
import pwd
import re
import shutil
import signal
import socket
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml
from conftest import Mta, _children
from smtpclient import UNTRUSTED, SmtpClient, wait_for, wait_for_log

from mtaserver.admin import rootwriter
from mtaserver.admin.configfile import ROOT_ONLY_WHY
from mtaserver.admin.rootwriter import RootWriter
from mtaserver.runtime import check_files

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


# -- the supervisor's side alone, over a real socket pair: it does not rely on the API's checks ------


def writer(tmp_path: Path) -> tuple[RootWriter, socket.socket, Path, list[int]]:
    path = tmp_path / "mtaserver.yaml"
    path.write_text(HEAD + yaml.safe_dump({"server": {"hostname": "mx.example.test", "data_dir": str(tmp_path / "var")}}))
    ours, theirs = rootwriter.channel()
    theirs.settimeout(5)
    reloads: list[int] = []
    return RootWriter(ours, str(path), check_files=check_files, reload=lambda: reloads.append(1)), theirs, path, reloads


def ask(w: RootWriter, theirs: socket.socket, op: str, text: str = "", rid: int = 1) -> dict:
    data = text.encode()
    theirs.send(b"B" + json.dumps({"id": rid, "op": op, "size": len(data)}).encode())
    w.on_readable()
    for i in range(0, len(data), rootwriter.CHUNK):
        theirs.send(b"D" + data[i : i + rootwriter.CHUNK])
        w.on_readable()
    packet = theirs.recv(1 << 20)
    assert packet[:1] == b"A"
    return json.loads(packet[1:])


def edited(path: Path, **section: dict) -> str:
    doc = yaml.safe_load(path.read_text())
    for k, v in section.items():
        doc.setdefault(k, {}).update(v)
    return HEAD + yaml.safe_dump(doc)


def test_the_supervisor_applies_the_policy_itself_writes_reverts_and_reloads(tmp_path):
    w, theirs, path, reloads = writer(tmp_path)
    before = path.read_text()
    answer = ask(w, theirs, "change", edited(path, server={"data_dir": "/etc"}))
    assert answer["status"] == 409 and answer["errors"] == [f"server.data_dir: {ROOT_ONLY_WHY}"], answer
    assert path.read_text() == before and reloads == []
    answer = ask(w, theirs, "change", "server: [not, a, mapping]\n", rid=2)
    assert answer["id"] == 2 and answer["status"] == 422 and answer["errors"][0].startswith("server:"), answer
    new = edited(path, inbound={"blocked_extensions": ["exe"]})
    answer = ask(w, theirs, "change", new, rid=3)
    assert answer["ok"] and answer["changed"] == ["inbound.blocked_extensions"], answer
    assert path.read_text() == new and Path(str(path) + ".bak").read_text() == before and reloads == [1]
    assert ask(w, theirs, "revert", rid=4)["ok"] and path.read_text() == before and reloads == [1, 1]
    answer = ask(w, theirs, "revert", rid=5)  # only once, and only over what the change wrote
    assert answer["status"] == 409 and path.read_text() == before


def test_a_broken_request_is_dropped_and_the_channel_goes_on(tmp_path):
    w, theirs, path, reloads = writer(tmp_path)
    answer = ask(w, theirs, "change", "", rid=1)  # an empty file: every default, data_dir's included
    assert answer["status"] == 409 and answer["errors"][0].startswith("server.data_dir: "), answer
    theirs.send(b"B" + json.dumps({"id": 2, "op": "change", "size": rootwriter.MAX_TEXT + 1}).encode())
    w.on_readable()
    assert json.loads(theirs.recv(65536)[1:])["status"] == 400  # too large: refused before a byte of it
    theirs.send(b"B" + json.dumps({"id": 3, "op": "rm -rf", "size": 0}).encode())
    w.on_readable()
    assert json.loads(theirs.recv(65536)[1:])["status"] == 400
    for junk in (b"Xjunk", b"B{not json", b"Dstray data", b"B" + b"[" * 30000):  # the last: a RecursionError in json
        theirs.send(junk)
        w.on_readable()
    # Incomplete: half a request, then nothing until it expires (now injected); its rest is then stray.
    theirs.send(b"B" + json.dumps({"id": 4, "op": "change", "size": 10}).encode())
    theirs.send(b"D12345")
    w.on_readable()
    assert w.timeout(time.monotonic()) is not None
    w.expire(time.monotonic() + rootwriter.REQUEST_TIMEOUT + 1)
    assert w.timeout(time.monotonic()) is None
    theirs.send(b"D67890")
    w.on_readable()
    theirs.settimeout(0.2)
    with pytest.raises(TimeoutError):
        theirs.recv(65536)  # no answer to any of that
    theirs.settimeout(5)
    answer = ask(w, theirs, "change", edited(path, inbound={"blocked_extensions": ["iso"]}), rid=5)
    assert answer["id"] == 5 and answer["ok"], answer
    assert reloads == [1]


def test_the_queue_manager_restarted_keeps_the_channel(open_dir):
    mta = started(open_dir)
    try:
        manager = int(re.search(r"\[(\d+)\]: queue manager process ready", mta.log()).group(1))
        os.kill(manager, signal.SIGKILL)
        wait_for(lambda: mta.log().count("admin API ready") == 2, timeout=15, what="the queue manager's process restarted")
        status, _, body = mta.api("PATCH", "/api/config", {"inbound": {"blocked_extensions": ["exe"]}}, token=mta.admin_token())
        assert status == 200 and body["changed"] == ["inbound.blocked_extensions"], body
        assert send(mta, attachment_message("setup.exe"))[0] == 550
    finally:
        assert mta.stop() == 0

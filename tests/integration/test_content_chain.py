"""The content-filter chain as a whole, over real sockets: several filters at once, the time
budget, the decision trail in the queue file, the notifications queued before the reply, and
the actions of blocked attachments (reject, bounce, discard), with a real clamd and spamd
(tests/integration/scanners.py)."""

from __future__ import annotations

import re
import socket
import threading

import pytest
from builders import encrypted_flag, zip_of
from conftest import free_port
from scanners import (  # noqa: F401  (the fixtures spamd and clamd)
    VIRUS_NAME,
    VIRUS_PAYLOAD,
    clamd_fixture,
    message,
    message_with_attachment,
    spamd_fixture,
)
from smtpclient import TRUSTED, UNTRUSTED, queue_id_of, send_one, wait_for, wait_for_log

pytestmark = pytest.mark.integration


def header(mta, qid: str, name: str) -> str | None:
    head = mta.body(qid).split(b"\r\n\r\n", 1)[0].decode("utf-8", "replace").replace("\r\n\t", " ").replace("\r\n ", " ")
    for line in head.split("\r\n"):
        k, _, v = line.partition(": ")
        if k.lower() == name.lower():
            return v
    return None


def queued(mta) -> dict[str, tuple[str, list[str], str | None]]:
    """queue id -> (sender, recipients, Subject) of everything in incoming/."""
    out = {}
    for qid in mta.queued():
        env = mta.envelope(qid)
        out[qid] = (env.sender, [r.address for r in env.recipients], header(mta, qid, "Subject"))
    return out


ALL_FILTERS = {
    "inbound": {"blocked_extensions": ["@common"]},
    "dkim": {"verify": True},
}


def with_scanners(spamd, clamd, **over) -> dict:
    cfg = {
        "antispam": {"enabled": True, "spamd": {"address": spamd.address, "timeout": "20s"}},
        "antivirus": {"enabled": True, "clamd": {"address": clamd.address, "timeout": "10s"}},
        "advanced": {"postmaster": "postmaster@example.test"},
        **ALL_FILTERS,
    }
    for k, v in over.items():
        cfg[k] = {**cfg.get(k, {}), **v}
    return cfg


def test_every_filter_leaves_its_step_in_the_decision_trail(make_mta, spamd, clamd):
    mta = make_mta(with_scanners(spamd, clamd))
    content = message_with_attachment(b"quarterly figures\r\n", filename="report.pdf")
    qid = queue_id_of(send_one(mta, content))
    trail = mta.envelope(qid).trail
    assert [(t["filter"], t["result"]) for t in trail] == [
        ("attachments", "clean"), ("antivirus", "clean"), ("dkim-verify", "none"), ("antispam", "ham"),
    ], trail  # fmt: skip
    assert all(isinstance(t["ms"], float) and t["ms"] >= 0 for t in trail)
    assert trail[0]["detail"] == "1 file name(s)" and trail[3]["score"] is not None
    assert header(mta, qid, "Authentication-Results") == "mx.example.test; dkim=none"
    assert header(mta, qid, "X-Spam-Status").startswith("No, score=")
    assert mta.body(qid).startswith(b"Received: "), "our Received: stays on top"
    wait_for_log(mta, re.compile(rf"{qid}: filters: attachments=clean \(1 file name\(s\)\) \d+ms, antivirus=clean \d+ms, "
                                 r"dkim-verify=none \(none\) \d+ms, antispam=ham score="))  # fmt: skip


def test_a_forged_authentication_results_of_ours_is_removed_and_others_kept(make_mta):
    mta = make_mta({"dkim": {"verify": True}})
    forged = (b"Authentication-Results: mx.example.test; dkim=pass header.d=example.test\r\n"
              b"Authentication-Results: other.example; dkim=fail\r\n")  # fmt: skip
    qid = queue_id_of(send_one(mta, forged + message()))
    body = mta.body(qid)
    assert body.count(b"Authentication-Results: mx.example.test;") == 1
    assert b"Authentication-Results: mx.example.test; dkim=none\r\n" in body
    assert b"Authentication-Results: other.example; dkim=fail\r\n" in body


@pytest.mark.parametrize("in_memory", ["256K", "1K"])  # the rewrite in memory, or of a spool on disk
def test_a_blocked_attachment_is_refused_and_the_postmaster_and_local_recipients_told(make_mta, in_memory):
    mta = make_mta({"inbound": {"blocked_extensions": ["exe"]}, "advanced": {"postmaster": "postmaster@example.test"},
                    "queue": {"spool_in_memory": in_memory}})  # fmt: skip
    content = message_with_attachment(b"MZ" + b"\x00" * 3000, filename="Invoice.EXE")
    r = send_one(mta, content, rcpts=("a@example.test", "b@example.test", "someone@relay.test"))
    assert r.line == '550 5.7.1 Attachment type not allowed. File "Invoice.EXE" has the unacceptable extension "EXE"'
    assert sorted(queued(mta).values()) == [
        ("", ["a@example.test", "b@example.test"], "A message for you was blocked"),  # remote ones are never told
        ("", ["postmaster@example.test"], "Blocked message from <s@client.test>"),
    ]
    for qid in mta.queued():
        body = mta.body(qid)
        assert b"Invoice.EXE" in body and b"MZ\x00" not in body and b"TVoA" not in body, "the file itself is never sent"
        assert b"Auto-Submitted: auto-generated" in body and b"The message was refused; its sender was told so." in body
    assert mta.queued("tmp") == []


def test_bounce_returns_only_the_headers_to_the_sender_and_says_why(make_mta):
    mta = make_mta({"inbound": {"blocked_extensions": ["exe"], "blocked_extensions_action": "bounce",
                                "notify_admin": False, "notify_recipient": False}})  # fmt: skip
    r = send_one(mta, message_with_attachment(b"MZ payload", filename="setup.exe"), client=TRUSTED)
    assert r.code == 250, "the client is told 250; the sender learns from the DSN"
    original = queue_id_of(r)
    (dsn_id,) = mta.queued()
    assert dsn_id != original
    env = mta.envelope(dsn_id)
    assert env.sender == "" and [x.address for x in env.recipients] == ["s@client.test"]
    dsn = mta.body(dsn_id)
    assert b"Content-Type: multipart/report; report-type=delivery-status" in dsn
    assert b"Status: 5.7.1" in dsn and b'has the unacceptable extension "exe"' in dsn
    assert b"Content-Type: text/rfc822-headers" in dsn and b"TVogcGF5bG9hZA==" not in dsn
    wait_for_log(mta, f"{original}: sender non-delivery notification: {dsn_id}")


def test_bounce_is_not_sent_to_the_null_sender_nor_for_list_or_automatic_mail(make_mta):
    mta = make_mta({"inbound": {"blocked_extensions": ["exe"], "blocked_extensions_action": "bounce",
                                "notify_admin": False, "notify_recipient": False}})  # fmt: skip
    assert send_one(mta, message_with_attachment(b"MZ", filename="a.exe"), sender="", client=TRUSTED).code == 250
    listmail = b"Precedence: list\r\n" + message_with_attachment(b"MZ", filename="a.exe")
    assert send_one(mta, listmail, client=TRUSTED).code == 250
    automatic = b"Auto-Submitted: auto-generated\r\n" + message_with_attachment(b"MZ", filename="a.exe")
    assert send_one(mta, automatic, client=TRUSTED).code == 250
    assert mta.queued() == []


def test_discard_tells_nobody_but_whom_the_switches_name(make_mta):
    mta = make_mta({"inbound": {"blocked_extensions": ["exe"], "blocked_extensions_action": "discard",
                                "notify_recipient": False}, "advanced": {"postmaster": "postmaster@example.test"}})  # fmt: skip
    r = send_one(mta, message_with_attachment(b"MZ", filename="a.exe"))
    assert r.code == 250
    assert list(queued(mta).values()) == [("", ["postmaster@example.test"], "Blocked message from <s@client.test>")]
    body = mta.body(mta.queued()[0])
    assert b"The message was not delivered." in body and queue_id_of(r).encode() in body


def test_an_encrypted_archive_is_a_virus_unless_allowed(make_mta, clamd):
    secret = encrypted_flag(zip_of({"secret.docx": b"x" * 1000}))
    content = message_with_attachment(secret, filename="secret.zip")
    av = {"enabled": True, "clamd": {"address": clamd.address}, "notify_admin": False, "notify_recipient": False}
    mta = make_mta({"antivirus": av})
    assert send_one(mta, content).line == "554 5.7.0 Rejected: virus found: Heuristics.Encrypted.Zip"
    mta.stop()
    mta2 = make_mta({"antivirus": {**av, "block_encrypted_archives": False}}, subdir="mta2")
    qid = queue_id_of(send_one(mta2, content))
    assert [(t["filter"], t["result"]) for t in mta2.envelope(qid).trail] == [("antivirus", "clean"), ("dkim-verify", "none")]


def test_a_blocked_file_in_a_zip_in_a_forwarded_message_and_equal_verdicts(make_mta, spamd, clamd):
    mta = make_mta(with_scanners(spamd, clamd, antivirus={"notify_admin": False, "notify_recipient": False},
                                 inbound={"notify_admin": False, "notify_recipient": False}))  # fmt: skip
    inner = message_with_attachment(zip_of({"docs/run.js": b"alert(1)"}), filename="docs.zip")
    forwarded = (
        b"From: Alice <alice@client.test>\r\nTo: Bob <bob@example.test>\r\nSubject: fwd\r\nMIME-Version: 1.0\r\n"
        b'Content-Type: multipart/mixed; boundary="outer"\r\n\r\n'
        b"--outer\r\nContent-Type: text/plain\r\n\r\nsee below\r\n"
        b"--outer\r\nContent-Type: message/rfc822\r\n\r\n" + inner + b"\r\n--outer--\r\n"
    )
    r = send_one(mta, forwarded)
    assert r.line == '550 5.7.1 Attachment type not allowed. File "docs/run.js" has the unacceptable extension "js"', r.line
    wait_for_log(mta, re.compile(r"filters: attachments=blocked \(blocked extension js: .*docs\.zip > docs/run\.js\)"))
    # A blocked file that is also a virus: two REJECTs, the first filter in the chain's order wins
    # (attachments), and both are in the log line.
    r = send_one(mta, message_with_attachment(VIRUS_PAYLOAD + b"\r\n", filename="run.js"))
    assert r.line == '550 5.7.1 Attachment type not allowed. File "run.js" has the unacceptable extension "js"'
    wait_for_log(mta, re.compile(rf"attachments=blocked .* antivirus=virus \({VIRUS_NAME}\.UNOFFICIAL\)"))


class Silent:
    """A TCP server that accepts and never answers: a scanner that hangs."""

    def __init__(self) -> None:
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", free_port()))
        self.sock.listen(16)
        self.address = "{}:{}".format(*self.sock.getsockname())
        self.conns: list[socket.socket] = []
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                c, _ = self.sock.accept()
            except OSError:
                return
            self.conns.append(c)

    def close(self) -> None:
        self.sock.close()
        for c in self.conns:
            c.close()


def test_the_budget_bounds_the_whole_chain_and_a_late_filter_gives_its_on_error(make_mta, clamd):
    hung = Silent()
    try:
        mta = make_mta({
            "antispam": {"enabled": True, "spamd": {"address": hung.address, "timeout": "60s"}},
            "antivirus": {"enabled": True, "clamd": {"address": clamd.address}},
            "advanced": {"filter_budget": "1s"},
        })  # fmt: skip
        r = send_one(mta, message())
        assert r.line == "451 4.7.1 Try again later: content scanner unavailable"
        wait_for_log(mta, re.compile(r"filters: antivirus=clean \d+ms, dkim-verify=none \(none\) \d+ms, "
                                     r"antispam=timeout \(no verdict within the budget of 1s\) \d+ms"))
        assert mta.queued() == []
        cfg = mta.config
        cfg["antispam"]["on_error"] = "accept"
        mta.write_config(cfg)
        mta.signal(1)  # SIGHUP: the filters are rebuilt from the new config
        wait_for_log(mta, "reload: applied")
        qid = queue_id_of(send_one(mta, message()))
        trail = [(t["filter"], t["result"]) for t in mta.envelope(qid).trail]
        assert trail == [("antivirus", "clean"), ("dkim-verify", "none"), ("antispam", "timeout")]
    finally:
        hung.close()


def test_trusted_mail_is_not_judged_by_dkim_but_gets_the_originating_header(make_mta):
    mta = make_mta({"dkim": {"verify": True}})
    qid = queue_id_of(send_one(mta, message(), client=TRUSTED))
    assert header(mta, qid, "Authentication-Results") is None
    assert header(mta, qid, "X-Originating-IP") == "[127.0.0.1]"
    assert mta.envelope(qid).trail == []


def test_forged_authentication_results_and_client_spam_headers_go_from_trusted_clients_too(make_mta, spamd):
    mta = make_mta({"dkim": {"verify": True}, "antispam": {"enabled": True, "spamd": {"address": spamd.address},
                                                            "check_outbound": False}})  # fmt: skip
    forged = (b"Authentication-Results: mx.example.test; dkim=pass header.d=bank.example\r\n"
              b"X-Spam-Status: No, score=-100\r\nX-Spam-Flag: NO\r\n")  # fmt: skip
    qid = queue_id_of(send_one(mta, forged + message(), client=TRUSTED))  # trusted: neither verified nor spam-checked
    body = mta.body(qid)
    assert b"Authentication-Results" not in body and b"X-Spam-" not in body
    assert b"Subject: test\r\n" in body


def test_an_encrypted_member_one_level_too_deep_is_still_blocked(make_mta, clamd):
    inner = encrypted_flag(zip_of({"secret.exe": b"MZ" * 100}))
    for level in range(4):  # zip in zip in zip in zip: the walker opens 3 levels
        inner = zip_of({f"level{level}.zip": inner})
    mta = make_mta({"antivirus": {"enabled": True, "clamd": {"address": clamd.address}, "notify_admin": False,
                                  "notify_recipient": False}})  # fmt: skip
    r = send_one(mta, message_with_attachment(inner, filename="nested.zip"))
    assert r.line == "554 5.7.0 Rejected: virus found: Heuristics.Limits.Exceeded"
    wait_for_log(mta, re.compile(r"antivirus=virus \(Heuristics\.Limits\.Exceeded: archive too deep"))


def test_bounce_for_an_outsider_is_a_reject_in_data(make_mta):
    mta = make_mta({"inbound": {"blocked_extensions": ["exe"], "blocked_extensions_action": "bounce",
                                "notify_admin": False, "notify_recipient": False}})  # fmt: skip
    r = send_one(mta, message_with_attachment(b"MZ", filename="a.exe"), client=UNTRUSTED)
    assert r.line == '550 5.7.1 Attachment type not allowed. File "a.exe" has the unacceptable extension "exe"'
    assert mta.queued() == [], "no bounce to a sender who may be forged"


def test_the_notices_reach_the_postmasters_and_the_recipients_mailboxes(make_mta):
    mta = make_mta({"inbound": {"blocked_extensions": ["exe"]}, "advanced": {"postmaster": "postmaster@example.test"},
                    "queue": {"manager": True}})  # fmt: skip
    r = send_one(mta, message_with_attachment(b"MZ" * 50, filename="tool.exe"), rcpts=("a@example.test",))
    assert r.code == 550
    maildir = mta.data_dir / "mail" / "example.test"

    def delivered(user: str) -> list[bytes]:
        new = maildir / user / "new"
        return [f.read_bytes() for f in new.iterdir()] if new.is_dir() else []

    wait_for(lambda: delivered("a") and delivered("postmaster"), 15, what="both notices in their mailboxes")
    (to_rcpt,), (to_admin,) = delivered("a"), delivered("postmaster")
    assert b"Subject: A message for you was blocked" in to_rcpt and b"Delivered-To: a@example.test" in to_rcpt
    assert b"Subject: Blocked message from <s@client.test>" in to_admin and b"tool.exe" in to_admin
    assert b"MZMZ" not in to_rcpt + to_admin

"""The content filter chain against a real spamd (GTUBE) and a real clamd (a test signature
built by the fixture): verdicts at the end of DATA, tags, scanner failures."""

from __future__ import annotations

import re

import pytest
from conftest import free_port
from scanners import (  # noqa: F401  (the fixtures spamd and clamd)
    GTUBE,
    VIRUS_NAME,
    VIRUS_PAYLOAD,
    clamd_fixture,
    message,
    message_with_attachment,
    spamd_fixture,
)
from smtpclient import TRUSTED, queue_id_of, send_one, wait_for_log

pytestmark = pytest.mark.integration

CLEAN = message("Hello Bob,\r\nLet us meet tomorrow at ten to discuss the quarterly report.\r\n", subject="meeting")
SPAM = message(f"Hello,\r\n{GTUBE}\r\n", subject="offer")


def filters(spamd_address: str | None, clamd_address: str | None, **antispam: object) -> dict:
    return {
        "antispam": {"enabled": spamd_address is not None, "spamd": {"address": spamd_address or "127.0.0.1:1", "timeout": "20s"}, **antispam},
        "antivirus": {"enabled": clamd_address is not None, "clamd": {"address": clamd_address or "127.0.0.1:1", "timeout": "10s"}},
    }


def notices(mta) -> list[tuple[str, list[str], str]]:
    """(sender, recipients, Subject) of every queued message."""
    out = []
    for qid in mta.queued():
        env = mta.envelope(qid)
        out.append((env.sender, [r.address for r in env.recipients], headers_of(mta, qid)["Subject"]))
    return out


def headers_of(mta, qid: str) -> dict[str, str]:
    head = mta.body(qid).split(b"\r\n\r\n", 1)[0].decode()
    out = {}
    for line in head.replace("\r\n\t", " ").split("\r\n"):
        k, _, v = line.partition(": ")
        out.setdefault(k, v)
    return out


def test_clean_message_is_queued_with_the_spam_report(make_mta, spamd, clamd):
    mta = make_mta(filters(spamd.address, clamd.address))
    qid = queue_id_of(send_one(mta, CLEAN))
    h = headers_of(mta, qid)
    assert "X-Spam-Flag" not in h and h["Subject"] == "meeting"
    assert h["X-Spam-Status"].startswith("No, score=") and "required=6.6" in h["X-Spam-Status"]
    assert float(h["X-Spam-Score"]) < 5
    assert next(iter(h)) == "Received", "our Received: stays the topmost header"
    assert mta.body(qid).endswith(b"discuss the quarterly report.\r\n")
    trail = mta.envelope(qid).trail
    assert [(t["filter"], t["result"]) for t in trail] == [("antivirus", "clean"), ("dkim-verify", "none"), ("antispam", "ham")], trail
    assert trail[2]["score"] == float(h["X-Spam-Score"]) and trail[2]["detail"], "the score and spamd's rules are kept"
    wait_for_log(mta, re.compile(rf"{qid}: filters: antivirus=clean \d+ms, dkim-verify=none \(none\) \d+ms, antispam=ham score=[-0-9.]+ \(.+\) \d+ms"))


def test_gtube_is_discarded_by_default(make_mta, spamd):
    mta = make_mta(filters(spamd.address, None))
    r = send_one(mta, SPAM)
    assert r.code == 250, "the sender is not told (Amavis D_DISCARD, Postfix DISCARD)"
    assert mta.queued() == [] and mta.queued("tmp") == []
    wait_for_log(mta, re.compile(rf"{queue_id_of(r)}: filter-discard: END-OF-MESSAGE from unknown\[127\.0\.0\.2\]: spam: score (99\d|10\d\d)\.\d \(\d+%\), tag 6\.6 \(33%\), kill 15\.0 \(75%\)"))


def test_gtube_rejected(make_mta, spamd):
    mta = make_mta(filters(spamd.address, None, blocked_spam_action="reject"))
    r = send_one(mta, SPAM)
    assert r.line == "550 5.7.1 Rejected: message looks like spam"
    assert mta.queued() == []
    wait_for_log(mta, re.compile(r"filter-reject: END-OF-MESSAGE from unknown\[127\.0\.0\.2\]: 550 5\.7\.1 Rejected: message looks like spam "
                                 r"\(spam: score (99\d|10\d\d)\.\d \(\d+%\), tag 6\.6 \(33%\), kill 15\.0 \(75%\)\); from=<s@client\.test> to=<a@example\.test>"))


@pytest.mark.parametrize("in_memory", ["256K", "1K"])  # held in memory, or spilled to tmp/ while it arrived
def test_spam_delivered_anyway_is_tagged(make_mta, spamd, in_memory):
    mta = make_mta({**filters(spamd.address, None, blocked_spam_action="deliver"), "queue": {"spool_in_memory": in_memory}})
    qid = queue_id_of(send_one(mta, SPAM + b"padding\r\n" * 200))
    h = headers_of(mta, qid)
    assert h["X-Spam-Flag"] == "YES" and h["Subject"] == "[SPAM] offer"
    assert re.match(r"Yes, score=(99\d|10\d\d)\.\d required=6\.6 tests=\[.*\bGTUBE\b", h["X-Spam-Status"]), h["X-Spam-Status"]
    assert mta.queued("tmp") == []
    wait_for_log(mta, re.compile(rf"{qid}: filter: spam tagged: score (99\d|10\d\d)\.\d \(\d+%\), tag 6\.6 \(33%\)"))


@pytest.mark.parametrize("content", [message_with_attachment(VIRUS_PAYLOAD), message(b"see: " + VIRUS_PAYLOAD + b"\r\n")], ids=["attachment", "body"])
def test_virus_is_rejected(make_mta, clamd, content):
    mta = make_mta(filters(None, clamd.address))
    r = send_one(mta, content)
    assert r.line == f"554 5.7.0 Rejected: virus found: {VIRUS_NAME}.UNOFFICIAL"
    assert mta.queued("tmp") == []
    # Only the notices are queued (antivirus.notify_admin and notify_recipient default on):
    # the postmaster's and the local recipient's, from the null sender, never the virus.
    assert sorted(notices(mta)) == [("", ["a@example.test"], "A message for you was blocked"),
                                    ("", ["postmaster@localhost"], "Blocked message from <s@client.test>")]
    for qid in mta.queued():
        body = mta.body(qid)
        assert VIRUS_PAYLOAD not in body and b"Auto-Submitted: auto-generated" in body
        assert f"a virus ({VIRUS_NAME}.UNOFFICIAL)".encode() in body and b"The message was refused" in body


def test_virus_from_a_trusted_client_is_rejected_too_and_its_spam_check_can_be_skipped(make_mta, spamd, clamd):
    mta = make_mta(filters(spamd.address, clamd.address, check_outbound=False))
    assert send_one(mta, message_with_attachment(VIRUS_PAYLOAD), TRUSTED).code == 554
    qid = queue_id_of(send_one(mta, SPAM, TRUSTED))  # outbound mail is not spam-checked
    assert "X-Spam-Status" not in headers_of(mta, qid)


def test_virus_discarded(make_mta, clamd):
    mta = make_mta(filters(None, clamd.address) | {"antivirus": {"enabled": True, "clamd": {"address": clamd.address}, "action": "discard"}})
    r = send_one(mta, message_with_attachment(VIRUS_PAYLOAD))
    assert r.code == 250 and queue_id_of(r) not in mta.queued() and len(notices(mta)) == 2
    wait_for_log(mta, f"filter-discard: END-OF-MESSAGE from unknown[127.0.0.2]: virus {VIRUS_NAME}.UNOFFICIAL")


def test_a_large_message_is_scanned_for_viruses_but_not_for_spam(make_mta, spamd, clamd):
    mta = make_mta({**filters(spamd.address, clamd.address), "queue": {"spool_in_memory": "64K"}})
    big = message(GTUBE + "\r\n" + ("y" * 998 + "\r\n") * 600)  # ~600 KB: spamc's limit is 500K
    qid = queue_id_of(send_one(mta, big))
    assert "X-Spam-Status" not in headers_of(mta, qid)
    big_virus = message_with_attachment(b"\x00" * 600_000 + VIRUS_PAYLOAD)
    assert send_one(mta, big_virus).code == 554, "clamd sees all of a message that spilled to disk"


@pytest.mark.parametrize("down", ["spamd", "clamd"])
def test_a_scanner_that_is_down_means_try_again_later(make_mta, spamd, clamd, down):
    dead = f"127.0.0.1:{free_port()}"
    mta = make_mta(filters(dead if down == "spamd" else spamd.address, dead if down == "clamd" else clamd.address))
    r = send_one(mta, CLEAN)
    assert r.line == "451 4.7.1 Try again later: content scanner unavailable"
    assert mta.queued() == []
    wait_for_log(mta, f"filter-reject: END-OF-MESSAGE from unknown[127.0.0.2]: 451 4.7.1 Try again later: content scanner unavailable ({'antispam' if down == 'spamd' else 'antivirus'} unavailable: {down}: ")


def test_on_error_accept_queues_the_message_unscanned(make_mta):
    dead = f"127.0.0.1:{free_port()}"
    cfg = filters(dead, dead, on_error="accept")
    cfg["antivirus"]["on_error"] = "accept"
    mta = make_mta(cfg)
    qid = queue_id_of(send_one(mta, CLEAN))
    assert "X-Spam-Status" not in headers_of(mta, qid)
    wait_for_log(mta, "antivirus unavailable, message accepted unchecked (on_error: accept): clamd: ")
    wait_for_log(mta, "antispam unavailable, message accepted unchecked (on_error: accept): spamd: ")

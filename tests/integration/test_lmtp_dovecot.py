"""Local delivery by LMTP to a real Dovecot (Debian dovecot-lmtpd) on 127.0.0.1.

First the client alone against Dovecot (TCP and UNIX socket, a good and an unknown
recipient, 8-bit and SMTPUTF8 messages), then the whole path: SMTP in, queue manager,
LMTP to Dovecot for the good recipient, and the DSN for the unknown one through the relay
host (an aiosmtpd sink) back to the remote sender.
"""

from __future__ import annotations

import email
import uuid

import pytest
from dovecot import Dovecot
from helpers import Sink, queue_empty, send, wait_for

from mtaserver.config import parse_endpoint
from mtaserver.delivery import lmtp
from mtaserver.model import Fate

from conftest import free_port


@pytest.fixture(scope="module")
def dovecot(tmp_path_factory):
    server = Dovecot().start()  # one for the module: Dovecot takes ~2.5 s to stop
    yield server
    server.stop(keep_log_in=tmp_path_factory.mktemp("dovecot-log"))


def with_marker(text: str) -> tuple[str, bytes]:
    marker = uuid.uuid4().hex
    return marker, f"Subject: {text} {marker}\r\nMessage-ID: <{marker}@client.test>\r\n\r\nhello\r\n.a line with a dot\r\n".encode()


def mailbox_has(dovecot: Dovecot, address: str, marker: str) -> list[bytes]:
    return [m for m in dovecot.messages(address) if marker.encode() in m]


async def test_client_delivers_to_dovecot_and_gets_a_reply_per_recipient(dovecot):
    marker, body = with_marker("direct")
    out = await lmtp.deliver(
        parse_endpoint(dovecot.address), sender="s@client.test", recipients=["other@example.test", "unknown@example.test"],
        body=body, lhlo_name="mx.example.test", timeout=10,
    )  # fmt: skip
    good, bad = out["other@example.test"], out["unknown@example.test"]
    assert good.fate is Fate.SENT and good.status == "2.0.0", good
    assert good.remote == f"lmtp:{dovecot.address}" and good.text.startswith("250 2.0.0 <other@example.test>")
    assert bad.fate is Fate.BOUNCED and bad.status == "5.1.1", bad
    assert bad.text.startswith("550 5.1.1 <unknown@example.test>")
    [msg] = mailbox_has(dovecot, "other@example.test", marker)
    # Dovecot stores maildir files with LF line endings; the dot-stuffed line lost its extra dot.
    assert msg.startswith(b"Return-Path: <s@client.test>\nDelivered-To: other@example.test\n")
    assert msg.endswith(b"\n\nhello\n.a line with a dot\n")
    assert not dovecot.maildir("unknown@example.test").exists()


async def test_client_over_the_unix_socket_with_an_8bit_body(dovecot):
    marker = uuid.uuid4().hex
    body = f"Subject: 8bit {marker}\r\nContent-Type: text/plain; charset=utf-8\r\nContent-Transfer-Encoding: 8bit\r\n\r\ncaf\u00e9\r\n".encode()
    out = await lmtp.deliver(
        parse_endpoint(f"unix:{dovecot.unix_path}"), sender="", recipients=["good@example.test"], body=body,
        lhlo_name="mx.example.test", eightbit=True, timeout=10,
    )  # fmt: skip
    assert out["good@example.test"].fate is Fate.SENT, out
    assert out["good@example.test"].remote == f"lmtp:unix:{dovecot.unix_path}"
    [msg] = mailbox_has(dovecot, "good@example.test", marker)
    assert "caf\u00e9".encode() in msg


async def test_smtputf8_without_the_extension(dovecot):
    """Dovecot 2.3 does not offer SMTPUTF8: an ASCII recipient of an ASCII-header message still
    gets it, a UTF-8 recipient bounces 5.6.7 without being tried."""
    marker, body = with_marker("utf8")
    out = await lmtp.deliver(
        parse_endpoint(dovecot.address), sender="s@client.test", recipients=["other@example.test", "j\u00f6rg@example.test"],
        body=body, lhlo_name="mx.example.test", smtputf8=True, timeout=10,
    )  # fmt: skip
    assert out["other@example.test"].fate is Fate.SENT, out
    assert out["j\u00f6rg@example.test"].fate is Fate.BOUNCED and out["j\u00f6rg@example.test"].status == "5.6.7"
    assert mailbox_has(dovecot, "other@example.test", marker)


async def test_dovecot_down_defers():
    out = await lmtp.deliver(parse_endpoint(f"127.0.0.1:{free_port()}"), sender="", recipients=["good@example.test"], body=b"x\r\n", lhlo_name="mx")
    assert out["good@example.test"].fate is Fate.DEFERRED and out["good@example.test"].status == "4.4.1"


def test_end_to_end_good_recipient_in_dovecot_unknown_one_bounces_to_the_remote_sender(make_mta, dovecot):
    with Sink() as sink:
        mta = make_mta({
            "domains": {"local_delivery": {"type": "lmtp", "address": dovecot.address}},
            "queue": {"manager": True, "min_backoff": "1s", "max_backoff": "2s"},
            "outbound": {"relay_host": f"[127.0.0.1]:{sink.port}"},
        })  # fmt: skip
        marker, body = with_marker("end to end")
        send(mta, "s@client.test", ["good@example.test", "unknown@example.test"], body)

        [msg] = wait_for(lambda: mailbox_has(dovecot, "good@example.test", marker), what="delivery to Dovecot")
        assert b"Received: from " in msg and b"by mx.example.test" in msg
        assert msg.startswith(b"Return-Path: <s@client.test>\nDelivered-To: good@example.test\n")
        assert msg.endswith(b"\n\nhello\n.a line with a dot\n")

        [(dsn_from, dsn_to, dsn)] = wait_for(lambda: sink.messages, what="the DSN at the relay host")
        assert dsn_from == "<>" and dsn_to == ["s@client.test"]
        report = dsn.decode(errors="replace")
        assert "Final-Recipient: rfc822; unknown@example.test" in report
        assert "Action: failed" in report and "Status: 5.1.1" in report
        assert "Diagnostic-Code: smtp; 550 5.1.1 <unknown@example.test>" in report
        assert "good@example.test" not in report.split("Delivery report")[1].split("Undelivered Message")[0]
        assert email.message_from_bytes(dsn).get_content_type() == "multipart/report"

        wait_for(lambda: queue_empty(mta), what="empty queue")
        log = mta.log()
        assert f"to=<good@example.test>, relay=lmtp:{dovecot.address}" in log and "status=sent (250 2.0.0 <good@example.test>" in log
        assert "to=<unknown@example.test>" in log and "status=bounced (550 5.1.1" in log

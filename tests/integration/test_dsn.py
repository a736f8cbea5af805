"""DSN (RFC 3461) end to end: what the sender asked with NOTIFY, RET, ENVID and ORCPT decides
which notifications it gets and what they hold, and the request goes on to a next hop that
offers DSN (ours), not to one that does not (an aiosmtpd sink)."""

from __future__ import annotations

import email
import time

from helpers import Sink, delivering, maildir_messages, queue_empty, wait_for
from smtpclient import TRUSTED, SmtpClient, queue_id_of

from mtaserver.queue.store import parse_envelope


def submit(mta, mail: str, rcpts: list[str], body: bytes = b"Subject: dsn test\r\nMessage-ID: <m@client.test>\r\n\r\nthe body\r\n") -> str:
    with SmtpClient(mta.port, TRUSTED) as c:
        c.greeting()
        c.ehlo()
        c.expect(f"MAIL FROM:{mail}", 250)
        for r in rcpts:
            c.expect(f"RCPT TO:{r}", 250)
        c.expect("DATA", 354)
        c.send(body + b".\r\n")
        return queue_id_of(c.reply())


def report(dsn: bytes) -> tuple[email.message.Message, str, str]:
    """The DSN, its delivery-status part as text, and what it attaches (content type)."""
    msg = email.message_from_bytes(dsn)
    parts = msg.get_payload()
    return msg, parts[1].as_string(), parts[2].get_content_type()


def test_notify_decides_who_hears_what(make_mta):
    """NOTIFY=NEVER: no bounce; NOTIFY=FAILURE with RET=HDRS: a bounce with the headers only,
    ENVID and ORCPT in it; NOTIFY=SUCCESS: a success report, "delivered" for our maildir,
    "relayed" for a next hop without DSN (it will not report)."""
    refuse = "550 5.1.1 no such user"
    with Sink(rcpt_replies={"never@remote.test": refuse, "fail@remote.test": refuse}) as sink:
        mta = make_mta(delivering(relay=sink.port))
        submit(mta, "<s@example.test> RET=HDRS ENVID=E+2B1", [
            "<never@remote.test> NOTIFY=NEVER",
            "<fail@remote.test> NOTIFY=FAILURE ORCPT=rfc822;Orig+2Bfail@remote.test",
            "<ok@remote.test> NOTIFY=SUCCESS",
            "<local@example.test> NOTIFY=SUCCESS,FAILURE",
            "<plain@example.test>",
        ])  # fmt: skip
        dsns = wait_for(lambda: len(maildir_messages(mta, "s@example.test")) >= 2 and maildir_messages(mta, "s@example.test"),
                        what="two notifications")  # fmt: skip
        wait_for(lambda: queue_empty(mta), what="empty queue")
        time.sleep(0.5)  # nothing more comes
        dsns = maildir_messages(mta, "s@example.test")
    assert len(dsns) == 2, [d[:300] for d in dsns]
    by_subject = {report(d)[0]["Subject"]: report(d) for d in dsns}
    bounce, status, attached = by_subject["Undelivered Mail Returned to Sender"]
    assert "Original-Envelope-Id: E+1" in status and attached == "text/rfc822-headers"
    assert "Final-Recipient: rfc822; fail@remote.test" in status and "Original-Recipient: rfc822; Orig+fail@remote.test" in status
    assert "never@remote.test" not in dsns[0].decode() + dsns[1].decode()
    assert b"the body" not in b"".join(dsns)
    _, status, attached = by_subject["Successful Mail Delivery Report"]
    blocks = {line.split("; ")[1]: block for block in status.split("\n\n") for line in block.splitlines() if line.startswith("Final-Recipient")}
    assert set(blocks) == {"ok@remote.test", "local@example.test"}
    assert "Action: relayed" in blocks["ok@remote.test"] and "Action: delivered" in blocks["local@example.test"]
    assert attached == "text/rfc822-headers"
    assert "sender delivery status notification" in mta.log()


def test_the_request_goes_on_to_a_next_hop_that_offers_dsn(make_mta):
    """Our own server as the next hop: it offers DSN, so RET, ENVID, NOTIFY and ORCPT go on
    and no success report is made here (the next hop makes it)."""
    hop = make_mta()  # receive-only: the message stays in its incoming/ for us to read
    mta = make_mta(delivering(relay=hop.port))
    submit(mta, "<s@example.test> RET=FULL ENVID=id+3D7", [
        "<a@remote.test> NOTIFY=SUCCESS,DELAY ORCPT=rfc822;A+2Bb@remote.test", "<b@remote.test>",
    ])  # fmt: skip
    [qid] = wait_for(lambda: hop.queued(), what="the relayed message")
    wait_for(lambda: queue_empty(mta), what="empty queue")
    env = parse_envelope((hop.queue / "incoming" / qid).read_bytes())
    assert (env.ret, env.envid) == ("FULL", "id=7")
    assert [(r.address, r.notify, r.orcpt) for r in env.recipients] == [
        ("a@remote.test", "SUCCESS,DELAY", "rfc822;A+b@remote.test"), ("b@remote.test", None, None),
    ]  # fmt: skip
    time.sleep(0.5)
    assert maildir_messages(mta, "s@example.test") == []  # the next hop reports success, not us

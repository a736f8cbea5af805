"""Delivery: relay host, fallback, retries, bounces, maildir, crash safety.

The relay targets are real SMTP servers on loopback: aiosmtpd sinks run by the test (so
they can answer 4xx/5xx on cue and survive a kill -9 of mtaserver).
"""

from __future__ import annotations

import email
import smtplib

from conftest import free_port
from helpers import Sink, delivering, maildir_messages, queue_empty, send, wait_for


def test_relay_host_gets_the_mail_and_the_queue_empties(make_mta):
    with Sink() as sink:
        mta = make_mta(delivering(relay=sink.port))
        send(mta, "s@client.test", ["a@remote.test", "b@remote.test"])
        wait_for(lambda: sink.messages, what="delivery")
        wait_for(lambda: queue_empty(mta), what="empty queue")
        sender, rcpts, content = sink.messages[0]
        assert sender == "s@client.test" and sorted(rcpts) == ["a@remote.test", "b@remote.test"]
        assert content.startswith(b"Received: from ") and content.endswith(b"hello\r\n")
        assert "status=sent (250 2.0.0 Ok: kept)" in mta.log() and ": removed" in mta.log()


def test_local_domain_goes_to_maildir(make_mta):
    mta = make_mta(delivering())
    send(mta, "s@client.test", ["user@example.test"])
    [msg] = wait_for(lambda: maildir_messages(mta, "user@example.test"), what="maildir delivery")
    assert msg.startswith(b"Return-Path: <s@client.test>\nDelivered-To: user@example.test\nReceived: from ")
    assert b"\r\n" not in msg  # a maildir holds LF line endings
    wait_for(lambda: queue_empty(mta), what="empty queue")


def test_fallback_relay_gets_what_the_primary_could_not_take(make_mta):
    dead = free_port()  # nothing listens there
    with Sink() as fallback:
        mta = make_mta(delivering(relay=dead, fallback=fallback.port))
        send(mta, "s@client.test", ["a@remote.test"])
        wait_for(lambda: fallback.messages, what="delivery through the fallback")
        assert f"relay=127.0.0.1[127.0.0.1]:{dead}" in mta.log() and "status=deferred" in mta.log()


def test_fallback_is_not_used_after_a_5xx(make_mta):
    with Sink(rcpt_replies={"a@remote.test": "550 5.1.1 no such user"}) as primary, Sink() as fallback:
        mta = make_mta(delivering(relay=primary.port, fallback=fallback.port))
        send(mta, "s@example.test", ["a@remote.test"])
        wait_for(lambda: maildir_messages(mta, "s@example.test"), what="the DSN")
        assert fallback.messages == []


def test_4xx_then_accept_is_delivered_on_retry(make_mta):
    with Sink(data_replies=["451 4.3.0 try again later"]) as sink:
        mta = make_mta(delivering(relay=sink.port))
        send(mta, "s@client.test", ["a@remote.test"])
        wait_for(lambda: sink.messages, timeout=20, what="delivery on retry")  # when: queue/backoff.py, unit-tested with a given now
        assert "status=deferred (451 4.3.0 try again later)" in mta.log()
        wait_for(lambda: queue_empty(mta), what="empty queue")


def test_5xx_bounces_to_the_sender_with_an_rfc3464_report(make_mta):
    with Sink(rcpt_replies={"bad@remote.test": "550 5.1.1 <bad@remote.test>: user unknown"}) as sink:
        mta = make_mta(delivering(relay=sink.port))
        send(mta, "s@example.test", ["bad@remote.test", "good@remote.test"], b"Subject: t\r\nMessage-ID: <m1@client.test>\r\n\r\nhello\r\n")
        [dsn] = wait_for(lambda: maildir_messages(mta, "s@example.test"), what="the DSN")
        wait_for(lambda: queue_empty(mta), what="empty queue")
        assert [r for _, rs, _ in sink.messages for r in rs] == ["good@remote.test"]
        msg = email.message_from_bytes(dsn)
        assert msg["Auto-Submitted"] == "auto-replied"
        assert msg["In-Reply-To"] == "<m1@client.test>"
        assert msg.get_content_type() == "multipart/report"
        assert msg.get_param("report-type") == "delivery-status"
        parts = [p.get_content_type() for p in msg.get_payload()]
        assert parts == ["text/plain", "message/delivery-status", "message/rfc822"]
        assert msg.get_payload()[2].get_payload()[0]["Message-ID"] == "<m1@client.test>"
        report = dsn.decode()
        assert "Final-Recipient: rfc822; bad@remote.test" in report and "Action: failed" in report
        assert "Status: 5.1.1" in report and "Diagnostic-Code: smtp; 550 5.1.1 <bad@remote.test>: user unknown" in report
        assert "Remote-MTA: dns; 127.0.0.1" in report
        assert "good@remote.test" not in report.split("Content-Description: Undelivered Message")[0].split("Delivery report")[1]
        # The DSN itself came from the null sender.
        assert "from=<>, size=" in mta.log()


def test_never_a_bounce_of_a_bounce(make_mta):
    with Sink(rcpt_replies={"bad@remote.test": "550 5.1.1 user unknown"}) as sink:
        mta = make_mta(delivering(relay=sink.port))
        send(mta, "", ["bad@remote.test"])
        wait_for(lambda: queue_empty(mta) and ": removed" in mta.log(), what="the message to be dropped")
        assert "non-delivery notification" not in mta.log()


def test_expired_message_returns_to_sender(make_mta):
    with Sink(data_replies=["451 4.7.1 greylisted"] * 100) as sink:
        mta = make_mta(delivering(relay=sink.port, max_lifetime="2s", bounce_lifetime="2s"))
        send(mta, "s@example.test", ["a@remote.test"])
        [dsn] = wait_for(lambda: maildir_messages(mta, "s@example.test"), timeout=20, what="the expiry DSN")
        assert b"Status: 4.7.1" in dsn and b"Action: failed" in dsn
        assert "status=expired, returned to sender" in mta.log()
        assert sink.messages == []


def test_kill_9_during_delivery_loses_nothing(make_mta):
    n = 60
    with Sink(delay=0.05) as sink:
        mta = make_mta(delivering(relay=sink.port, destination_concurrency=2))
        with smtplib.SMTP("127.0.0.1", mta.port, source_address=("127.0.0.1", 0)) as c:
            for i in range(n):
                c.sendmail("s@client.test", ["a@remote.test"], b"Subject: m%d\r\n\r\nbody\r\n" % i)
        wait_for(lambda: len(sink.messages) >= 5, what="delivery to start")
        mta.kill9()
        assert len(sink.messages) < n, "the kill came too late to test anything"
        mta.start()
        got = lambda: {email.message_from_bytes(m)["Subject"] for _, _, m in sink.messages}
        wait_for(lambda: len(got()) == n, timeout=30, what=f"all {n} messages at the sink")
        assert got() == {f"m{i}" for i in range(n)}
        wait_for(lambda: queue_empty(mta), what="empty queue")

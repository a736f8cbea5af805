"""UTF-8 reads as UTF-8 where a person reads it: an SMTPUTF8 recipient shows as itself in the
Received: header (RFC 6532 allows UTF-8 there), in the log, and as its maildir's directory name."""

from __future__ import annotations

import smtplib

from helpers import delivering, maildir_messages, queue_empty, wait_for

RCPT = "j\u00f6rg.m\u00fcller@example.test"


def test_an_smtputf8_recipient_reads_as_utf8(make_mta):
    mta = make_mta(delivering())
    with smtplib.SMTP("127.0.0.1", mta.port, source_address=("127.0.0.1", 0)) as c:
        c.ehlo("client.test")
        assert c.sendmail("s@client.test", [RCPT], b"Subject: t\r\n\r\nhello\r\n", mail_options=["SMTPUTF8"]) == {}
    [msg] = wait_for(lambda: maildir_messages(mta, RCPT), what="maildir delivery")  # the directory is jörg.müller
    received = msg.split(b"\nReceived: ", 1)[1].split(b";", 1)[0].decode("utf-8")
    assert f"for <{RCPT}>" in received and "with UTF8SMTP" in received, received
    wait_for(lambda: queue_empty(mta), what="empty queue")
    log = mta.log()
    assert f"to=<{RCPT}>" in log and "\\xc3" not in log, log


def test_without_smtputf8_the_header_stays_ascii(make_mta):
    mta = make_mta(delivering())
    with smtplib.SMTP("127.0.0.1", mta.port, source_address=("127.0.0.1", 0)) as c:
        c.ehlo("client.test")
        assert c.sendmail("s@client.test", ["plain@example.test"], b"Subject: t\r\n\r\nhello\r\n") == {}
    [msg] = wait_for(lambda: maildir_messages(mta, "plain@example.test"), what="maildir delivery")
    assert msg.split(b"\n\n", 1)[0].isascii()

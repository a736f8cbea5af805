"""What hostile or careless peers found in the SMTP session (issue 15), over real sockets:
recipient overshoot, slow senders, hop count, and the DSN and CHUNKING extensions."""

from __future__ import annotations

import pytest
from smtpclient import UNTRUSTED, Mta, SmtpClient, queue_id_of

from mtaserver.queue.store import parse_envelope

LIMITS = {"server": {"limits": {"recipients": 3, "hard_error_limit": 4}}}


@pytest.fixture(scope="module")
def srv(tmp_path_factory: pytest.TempPathFactory):
    m = Mta(tmp_path_factory.mktemp("hardening"), LIMITS).start()
    yield m
    m.stop()


def envelope(srv: Mta, qid: str):
    return parse_envelope((srv.queue / "incoming" / qid).read_bytes())


def test_pipelined_recipients_past_the_limit_keep_the_transaction(srv):
    """8 RCPTs in one pipelined group, limit 3, hard error limit 4: five 452s that are no
    errors (smtpd_recipient_overshoot_limit), then DATA for the three accepted."""
    with SmtpClient(srv.port, UNTRUSTED) as c:
        c.greeting()
        c.ehlo()
        rcpts = "".join(f"RCPT TO:<r{i}@example.test>\r\n" for i in range(8))
        c.send(f"MAIL FROM:<s@client.test>\r\n{rcpts}DATA\r\n")
        replies = [r.line for r in c.replies(10)]
        assert replies == ["250 2.1.0 Ok"] + ["250 2.1.5 Ok"] * 3 + ["452 4.5.3 Error: too many recipients"] * 5 + [
            "354 End data with <CR><LF>.<CR><LF>"
        ]
        c.send(b"Subject: many\r\n\r\nx\r\n.\r\n")
        qid = queue_id_of(c.reply())
        assert c.cmd("QUIT").code == 221
    assert [r.address for r in envelope(srv, qid).recipients] == [f"r{i}@example.test" for i in range(3)]

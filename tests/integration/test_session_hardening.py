"""What hostile or careless peers found in the SMTP session (issue 15), over real sockets:
recipient overshoot, slow senders, hop count, and the DSN and CHUNKING extensions."""

from __future__ import annotations

import pytest
from smtpclient import UNTRUSTED, Mta, SmtpClient, queue_id_of, wait_for_log

LIMITS = {"server": {"limits": {"recipients": 3, "hard_error_limit": 4, "hop_count": 5}}}


@pytest.fixture(scope="module")
def srv(tmp_path_factory: pytest.TempPathFactory):
    with Mta(tmp_path_factory.mktemp("hardening"), LIMITS).start() as m:
        yield m


def test_pipelined_recipients_past_the_limit_keep_the_transaction(srv):
    """8 RCPTs in one pipelined group, limit 3, hard error limit 4: five 452s that are no
    errors (smtpd_recipient_overshoot_limit), then DATA for the three accepted."""
    with SmtpClient(srv.port, UNTRUSTED).hello() as c:
        rcpts = "".join(f"RCPT TO:<r{i}@example.test>\r\n" for i in range(8))
        c.send(f"MAIL FROM:<s@client.test>\r\n{rcpts}DATA\r\n")
        replies = [r.line for r in c.replies(10)]
        assert replies == ["250 2.1.0 Ok"] + ["250 2.1.5 Ok"] * 3 + ["452 4.5.3 Error: too many recipients"] * 5 + [
            "354 End data with <CR><LF>.<CR><LF>"
        ]
        c.send(b"Subject: many\r\n\r\nx\r\n.\r\n")
        qid = queue_id_of(c.reply())
        assert c.cmd("QUIT").code == 221
    assert [r.address for r in srv.envelope(qid).recipients] == [f"r{i}@example.test" for i in range(3)]


def _hops(n: int) -> bytes:
    return b"".join(b"Received: from h%d.test by h%d.test; Mon, 1 Jan 2026 00:00:00 +0000\r\n" % (i, i + 1) for i in range(n))


def test_too_many_hops_is_refused_at_the_end_of_data(srv):
    """hop_count 5: with ours, 4 Received: headers of the client make 5, a loop: 554 5.4.0 after
    DATA and nothing queued (so no bounce); 3 are fine."""
    before = set(srv.queued())
    with SmtpClient(srv.port, UNTRUSTED).hello() as c:
        reply = c.send_message("s@client.test", ["a@example.test"], _hops(4) + b"Subject: loop\r\n\r\nx\r\n")
        assert reply.line == "554 5.4.0 Error: too many hops"
        assert set(srv.queued()) == before and srv.queued("tmp") == []
        qid = queue_id_of(c.send_message("s@client.test", ["a@example.test"], _hops(3) + b"Subject: ok\r\n\r\nx\r\n"))
        assert c.cmd("QUIT").code == 221
    assert srv.body(qid).count(b"\r\nReceived: ") == 3 and srv.body(qid).startswith(b"Received: from client.test")


def test_a_trickling_sender_is_cut_off_inside_data(make_mta):
    """server.limits.min_data_rate: a byte every 0.25 s, every gap well inside data_timeout (1 s),
    used to hold the session for ever; now the DATA deadline is met after about one timeout:
    421 4.4.2 and the connection closed, nothing queued."""
    mta = make_mta({"server": {"limits": {"data_timeout": "1s", "min_data_rate": 500}}})
    with SmtpClient(mta.port, UNTRUSTED).hello() as c:
        c.open_data()
        got = b""
        for _ in range(40):  # 10 s at most; the old rule never ends it
            try:
                c.send(b"x")
            except OSError:
                break
            got += c.pending(0.25)
            if got:
                break
        assert got.startswith(b"421 4.4.2 mx.example.test Error: timeout exceeded\r\n"), got
        assert c.closed_by_server(2)
    wait_for_log(mta, "timeout after DATA from unknown[127.0.0.2]")
    assert mta.queued() == [] and mta.queued("tmp") == []


# -- CHUNKING (RFC 3030) --------------------------------------------------------------------------


def test_bdat_pipelined_in_one_write(srv):
    """MAIL, RCPT and two chunks in one write: content as is (no dot-stuffing, no end of data:
    a smuggled "<CRLF>.<CRLF>MAIL FROM" stays content), one message, committed before its 250."""
    part1 = b"Subject: chunks\r\n\r\n..not unstuffed\r\n.\r\nMAIL FROM:<evil@client.test>\r\n"
    part2 = b"RCPT TO:<victim@example.test>\r\nDATA\r\nthe end\r\n"
    with SmtpClient(srv.port, UNTRUSTED) as c:
        c.greeting()
        assert "CHUNKING" in c.ehlo().lines
        c.send(b"MAIL FROM:<s@client.test>\r\nRCPT TO:<a@example.test>\r\nBDAT %d\r\n%sBDAT %d LAST\r\n%sNOOP\r\n"
               % (len(part1), part1, len(part2), part2))  # fmt: skip
        assert [r.line for r in c.replies(3)] == ["250 2.1.0 Ok", "250 2.1.5 Ok", f"250 2.0.0 Ok: {len(part1)} bytes"]
        qid = queue_id_of(c.reply())
        assert c.reply().line == "250 2.0.0 Ok"
        assert c.cmd("QUIT").code == 221
    body = srv.body(qid)
    assert body.startswith(b"Received: from client.test") and body.endswith(part1 + part2)
    env = srv.envelope(qid)
    assert env.sender == "s@client.test" and [r.address for r in env.recipients] == ["a@example.test"]


def test_bdat_large_chunk_over_many_reads(srv):
    payload = b"Subject: big\r\n\r\n" + b"".join(b"%07d %s\r\n" % (i, b"z" * 70) for i in range(5000))
    with SmtpClient(srv.port, UNTRUSTED).hello() as c:
        c.expect("MAIL FROM:<s@client.test>", 250)
        c.expect("RCPT TO:<a@example.test>", 250)
        c.send(b"BDAT %d LAST\r\n" % len(payload))
        for i in range(0, len(payload), 7000):
            c.send(payload[i : i + 7000])
        qid = queue_id_of(c.reply())
        assert c.cmd("NOOP").line == "250 2.0.0 Ok"
    assert srv.body(qid).endswith(payload)


def test_bdat_after_failed_recipients_and_mixing(srv):
    with SmtpClient(srv.port, UNTRUSTED).hello() as c:
        c.expect("MAIL FROM:<s@client.test>", 250)
        assert c.cmd("RCPT TO:<u@remote.test>").code == 554  # relay denied
        c.send(b"BDAT 14 LAST\r\nQUIT\r\nRSET\r\n\r\n")  # discarded, never run
        assert c.reply().line == "554 5.5.1 Error: no valid recipients"
        assert c.cmd("NOOP").line == "250 2.0.0 Ok"
        c.expect("MAIL FROM:<s@client.test>", 250)
        c.expect("RCPT TO:<a@example.test>", 250)
        c.send(b"BDAT 3\r\nabc")
        assert c.reply().line == "250 2.0.0 Ok: 3 bytes"
        assert c.cmd("DATA").line == "503 5.5.1 Error: DATA after BDAT"
        assert c.cmd("RSET").line == "250 2.0.0 Ok"  # the chunked message is dropped
        assert c.cmd("QUIT").code == 221
    assert srv.queued("tmp") == []


# -- DSN parameters (RFC 3461) ----------------------------------------------------------------------


def test_dsn_parameters_go_into_the_queue_envelope(srv):
    with SmtpClient(srv.port, UNTRUSTED) as c:
        c.greeting()
        assert "DSN" in c.ehlo().lines
        c.expect("MAIL FROM:<s@client.test> RET=HDRS ENVID=env+2B1", 250)
        c.expect("RCPT TO:<a@example.test> NOTIFY=SUCCESS,DELAY ORCPT=rfc822;A+2Bx@example.test", 250)
        c.expect("RCPT TO:<b@example.test> NOTIFY=NEVER", 250)
        c.expect("RCPT TO:<c@example.test>", 250)
        assert c.cmd("RCPT TO:<d@example.test> NOTIFY=SOMETIMES").line == "501 5.5.4 Error: Bad NOTIFY parameter syntax"
        c.expect("DATA", 354)
        c.send(b"Subject: dsn\r\n\r\nx\r\n.\r\n")
        qid = queue_id_of(c.reply())
    env = srv.envelope(qid)
    assert (env.ret, env.envid) == ("HDRS", "env+1")
    assert [(r.address, r.notify, r.orcpt) for r in env.recipients] == [
        ("a@example.test", "SUCCESS,DELAY", "rfc822;A+x@example.test"), ("b@example.test", "NEVER", None), ("c@example.test", None, None),
    ]  # fmt: skip

"""Session limits, each with its config key lowered: the reply, and what happens after it."""

from __future__ import annotations

import select
import socket
import time

import pytest
from smtpclient import TRUSTED, UNTRUSTED, UNTRUSTED2, Mta, SmtpClient, queue_id_of, wait_for_log

LIMITS = {
    "server": {"limits": {"command_line": 100, "text_line": 1000, "recipients": 3, "header_size": 2000}},
    "advanced": {"max_message_size": 10000},
}


@pytest.fixture(scope="module")
def srv(tmp_path_factory: pytest.TempPathFactory):
    with Mta(tmp_path_factory.mktemp("limits"), LIMITS).start() as m:
        yield m


def session(srv: Mta, source: str = TRUSTED) -> SmtpClient:
    c = SmtpClient(srv.port, source)
    c.greeting()
    c.ehlo()
    return c


def start_data(c: SmtpClient) -> None:
    c.expect("MAIL FROM:<s@client.test>", 250)
    c.expect("RCPT TO:<a@example.test>", 250)
    c.expect("DATA", 354)


def test_command_line_limit(srv):
    with session(srv) as c:
        ok = "NOOP " + "x" * (100 - len("NOOP ") - 2)  # exactly 100 octets with the CRLF
        assert c.cmd(ok).line == "250 2.0.0 Ok"
        assert c.cmd(ok + "x").line == "500 5.5.2 Error: command line too long"
        assert c.cmd("MAIL FROM:<" + "s" * 100 + "@client.test>").line == "500 5.5.2 Error: command line too long"
        # the session goes on, and the over-long line was not executed
        assert c.cmd("MAIL FROM:<s@client.test>").line == "250 2.1.0 Ok"


def test_command_line_longer_than_the_read_buffer(srv):
    """A line far past every buffer (256 KiB, no newline for a long time) is skipped, not buffered."""
    with session(srv) as c:
        c.send(b"NOOP " + b"y" * (256 * 1024) + b"\r\nNOOP\r\n")
        assert c.reply().line == "500 5.5.2 Error: command line too long"
        assert c.reply().line == "250 2.0.0 Ok"
        assert c.cmd("QUIT").code == 221


def test_text_line_limit(srv):
    with session(srv) as c:
        start_data(c)
        c.send(b"Subject: long\r\n\r\n" + b"a" * 998 + b"\r\n.\r\n")  # 1000 octets with the CRLF: the RFC limit
        qid = queue_id_of(c.reply())
        start_data(c)
        c.send(b"Subject: too long\r\n\r\n" + b"a" * 999 + b"\r\nmore\r\n.\r\n")
        assert c.reply().line == "500 5.5.2 Error: message line too long"
        # the session goes on; the refused message is nowhere
        assert c.cmd("NOOP").line == "250 2.0.0 Ok"
        start_data(c)
        c.send(b"Subject: huge line\r\n\r\n" + b"b" * 300_000 + b"\r\n.\r\n")  # one line across many reads
        assert c.reply().line == "500 5.5.2 Error: message line too long"
        assert c.cmd("RSET").line == "250 2.0.0 Ok"
    assert srv.queued() == [qid]
    assert srv.queued("tmp") == []
    _clear(srv)


def test_recipient_limit(srv):
    with session(srv, UNTRUSTED) as c:
        c.expect("MAIL FROM:<s@client.test>", 250)
        for i in range(3):
            c.expect(f"RCPT TO:<r{i}@example.test>", 250, "2.1.5")
        assert c.cmd("RCPT TO:<r3@example.test>").line == "452 4.5.3 Error: too many recipients"
        assert c.cmd("RCPT TO:<r4@example.test>").line == "452 4.5.3 Error: too many recipients"
        c.expect("DATA", 354)
        c.send(b"Subject: t\r\n\r\nx\r\n.\r\n")
        qid = queue_id_of(c.reply())
    env = srv.envelope(qid)
    assert [r.address for r in env.recipients] == ["r0@example.test", "r1@example.test", "r2@example.test"]
    _clear(srv)


def test_ehlo_advertises_the_configured_size(srv):
    with SmtpClient(srv.port) as c:
        c.greeting()
        assert "SIZE 10000" in c.ehlo().lines
        assert c.cmd("MAIL FROM:<s@client.test> SIZE=10001").line == "552 5.3.4 Message size exceeds fixed limit"


def _content(size: int) -> bytes:
    head = b"Subject: size\r\n\r\n"
    lines, n = [head], len(head)
    while n < size:
        take = min(78, size - n - 2) if size - n > 2 else 0
        line = b"z" * take + b"\r\n"
        lines.append(line)
        n += len(line)
    out = b"".join(lines)
    assert len(out) == size, (len(out), size)
    return out


def test_message_size_limit(srv):
    with session(srv) as c:
        start_data(c)
        c.send(_content(10000) + b".\r\n")  # exactly the limit
        qid = queue_id_of(c.reply())
        start_data(c)
        c.send(_content(10002) + b".\r\n")
        assert c.reply().line == "552 5.3.4 Error: message file too big"
        start_data(c)
        c.send(_content(2_000_000) + b".\r\n")  # drained to the end, then refused
        assert c.reply().line == "552 5.3.4 Error: message file too big"
        # the session is still usable
        assert c.cmd("NOOP").line == "250 2.0.0 Ok"
        qid2 = queue_id_of(c.send_message("s@client.test", ["a@example.test"], b"Subject: small\r\n\r\nok\r\n"))
    assert srv.queued() == [qid, qid2]
    assert srv.body(qid).endswith(_content(10000))
    assert srv.queued("tmp") == []
    _clear(srv)


def test_header_size_limit(srv):
    with session(srv) as c:
        start_data(c)
        header = b"".join(b"X-Filler-%03d: %s\r\n" % (i, b"h" * 60) for i in range(40))  # ~3 KB of header
        c.send(header + b"\r\nshort body\r\n.\r\n")
        assert c.reply().line == "552 5.3.4 Error: message header too big"
        assert c.cmd("NOOP").line == "250 2.0.0 Ok"
        # the same bytes in the body are fine: the limit is on the header only
        start_data(c)
        c.send(b"Subject: t\r\n\r\n" + header + b".\r\n")
        qid = queue_id_of(c.reply())
    assert srv.queued() == [qid]
    _clear(srv)


def _clear(srv: Mta) -> None:
    for q in srv.queued():
        (srv.queue / "incoming" / q).unlink()


# -- time and error limits: a server each ---------------------------------------------------


def test_command_timeout(make_mta):
    """The configured 1 s, not the default 300 s: the 421 comes within the client's 5 s read timeout.
    Not at once either: the busy session is served (EHLO, MAIL) before its timeout."""
    mta = make_mta({"server": {"limits": {"command_timeout": "1s"}}})
    idle = SmtpClient(mta.port, UNTRUSTED)
    busy = SmtpClient(mta.port, UNTRUSTED2)  # in the middle of a transaction, at the same time
    with idle, busy:
        idle.greeting()
        busy.greeting()
        busy.ehlo()
        busy.expect("MAIL FROM:<s@client.test>", 250)
        busy.send(b"RCPT TO:<a@exa")  # half a command does not reset the clock
        assert idle.reply().line == "421 4.4.2 mx.example.test Error: timeout exceeded"
        assert busy.reply().line == "421 4.4.2 mx.example.test Error: timeout exceeded"
        assert idle.closed_by_server(2) and busy.closed_by_server(2)
    wait_for_log(mta, "timeout after CONNECT from unknown[127.0.0.2]")
    wait_for_log(mta, "timeout after MAIL from unknown[127.0.0.3]")


def test_data_timeout(make_mta):
    """No progress within DATA for data_timeout: 421 and nothing queued. A slow but steady
    sender (every gap shorter than the timeout, the whole longer) is not cut off when no minimum
    data rate is asked (min_data_rate: test_session_hardening.py). The slow one starts when the
    stalled one stops and sends until that one is cut off, and once more: its whole is longer than
    the timeout by construction, measured by the server. (When the deadline falls, for any gaps and
    sizes: DataDeadline, unit-tested with given times in tests/unit/test_datastream.py.)"""
    mta = make_mta({"server": {"limits": {"data_timeout": "1s", "min_data_rate": 0}}})
    stalled = SmtpClient(mta.port, UNTRUSTED)
    slow = SmtpClient(mta.port, UNTRUSTED2)
    with stalled, slow:
        for c in (stalled, slow):
            c.greeting()
            c.ehlo()
            start_data(c)
        stalled.send(b"Subject: stalled\r\n\r\n" + b"x" * 5000 + b"\r\npartial")
        slow.send(b"Subject: slow\r\n\r\n")
        lines = 0
        while not (got := stalled.pending(0.3)) and lines < 30:  # a line every 0.3 s until the stalled one is cut off
            slow.send(b"line\r\n")
            lines += 1
        assert got == b"421 4.4.2 mx.example.test Error: timeout exceeded\r\n"
        assert stalled.closed_by_server(2)
        slow.send(b"line\r\n.\r\n")
        qid = queue_id_of(slow.reply())
    wait_for_log(mta, "timeout after DATA from unknown[127.0.0.2]")
    assert mta.body(qid).endswith(b"Subject: slow\r\n\r\n" + b"line\r\n" * (lines + 1))
    time.sleep(0.1)
    assert mta.queued() == [qid] and mta.queued("tmp") == []


def test_hard_error_limit(make_mta):
    mta = make_mta({"server": {"limits": {"hard_error_limit": 3}}})
    with SmtpClient(mta.port, UNTRUSTED) as c:
        c.greeting()
        assert c.cmd("BOGUS1").code == 502
        assert c.cmd("MAIL FROM:<s@client.test>").code == 503
        c.send(b"BOGUS3\r\n")
        assert c.reply().line == "502 5.5.2 Error: command not recognized"
        assert c.reply().line == "421 4.7.0 mx.example.test Error: too many errors"
        assert c.closed_by_server(2)
    wait_for_log(mta, "too many errors after UNKNOWN from unknown[127.0.0.2]")


def test_error_count_restarts_after_a_delivered_message(make_mta):
    mta = make_mta({"server": {"limits": {"hard_error_limit": 3}}})
    with SmtpClient(mta.port, UNTRUSTED).hello() as c:
        assert c.cmd("BOGUS").code == 502
        assert c.cmd("RCPT TO:<a@example.test>").code == 503
        queue_id_of(c.send_message("s@client.test", ["a@example.test"], b"Subject: t\r\n\r\nx\r\n"))
        assert c.cmd("BOGUS").code == 502
        assert c.cmd("BOGUS").code == 502
        assert c.cmd("NOOP").line == "250 2.0.0 Ok"


def _nothing_arrived(c: SmtpClient) -> bool:
    """Nothing from the server yet: neither buffered nor readable in the socket (a poll that does not wait)."""
    return not c.buf and not select.select([c.sock], [], [], 0)[0]


def test_soft_error_limit_slows_the_client_down(make_mta):
    """Past soft_error_limit the session pauses error_sleep after an error reply: its next command
    waits while another session is served, then it is answered and the session goes on. (Which
    errors pause, not the first with soft_error_limit 1: the engine, tests/unit/test_smtp_engine.py.)"""
    mta = make_mta({"server": {"limits": {"soft_error_limit": 1, "error_sleep": 2}}})
    with SmtpClient(mta.port, UNTRUSTED) as c, SmtpClient(mta.port, UNTRUSTED2) as other:
        c.greeting()
        other.greeting()
        assert c.cmd("BOGUS").code == 502
        assert c.cmd("NOOP").code == 250
        assert c.cmd("BOGUS").code == 502  # second error: past the soft limit
        c.send(b"NOOP\r\n")
        assert other.cmd("NOOP").code == 250 and other.cmd("NOOP").code == 250  # sent later, answered first
        assert _nothing_arrived(c), "the session did not pause"
        assert c.reply().line == "250 2.0.0 Ok"
        assert c.cmd("NOOP").code == 250


def test_junk_command_limit(mta):
    with SmtpClient(mta.port, UNTRUSTED) as c:
        c.greeting()
        c.send(b"NOOP\r\n" * 100)
        assert [r.line for r in c.replies(100)] == ["250 2.0.0 Ok"] * 100
        assert c.cmd("NOOP").line == "421 4.7.0 mx.example.test Error: too many errors"
        assert c.closed_by_server(2)


def test_connections_per_ip(make_mta):
    mta = make_mta({"server": {"limits": {"connections_per_ip": 2}}})
    a = SmtpClient(mta.port, UNTRUSTED)
    b = SmtpClient(mta.port, UNTRUSTED)
    try:
        a.greeting()
        b.greeting()
        with SmtpClient(mta.port, UNTRUSTED) as c:
            assert c.reply().line == "421 4.7.0 mx.example.test Error: too many connections from 127.0.0.2"
            assert c.closed_by_server(2)
        with SmtpClient(mta.port, UNTRUSTED2) as d:  # another client is not affected
            d.greeting()
            assert d.cmd("QUIT").code == 221
        # the first two still work
        assert a.cmd("NOOP").code == 250 and b.cmd("NOOP").code == 250
        assert a.cmd("QUIT").code == 221
        assert a.closed_by_server(2)
        # a slot is free again once the server has seen the close
        deadline = time.monotonic() + 3
        while True:
            with SmtpClient(mta.port, UNTRUSTED) as e:
                r = e.reply()
                if r.code == 220 or time.monotonic() > deadline:
                    break
            time.sleep(0.05)
        assert r.code == 220, r
    finally:
        a.close()
        b.close()
    wait_for_log(mta, "NOQUEUE: reject: CONNECT from unknown[127.0.0.2]: too many connections")


def test_client_that_never_reads_is_cut_off(make_mta):
    """Replies the client does not read still count against command_timeout: a client that
    pipelines commands and never reads the replies cannot pin a session (and its buffers)."""
    mta = make_mta({"server": {"limits": {"command_timeout": "1s"}}})
    s = socket.socket()
    s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    s.bind((UNTRUSTED, 0))
    s.connect(("127.0.0.1", mta.port))
    s.setblocking(False)
    try:
        t0 = time.monotonic()
        sent = 0
        while time.monotonic() - t0 < 1.0:  # fill every buffer on the way, never read
            try:
                sent += s.send(b"EHLO x\r\n" * 512)
            except BlockingIOError:
                time.sleep(0.01)
            except OSError:
                break
        assert sent > 100_000
        wait_for_log(mta, "timeout after EHLO from unknown[127.0.0.2]", timeout=5)  # the 1 s timeout, not the default 300 s
    finally:
        s.close()
    # the session is gone (the server aborts a closed connection it cannot flush, at the latest)
    wait_for_log(mta, "disconnect from unknown[127.0.0.2]", timeout=8)


def test_junk_count_restarts_after_a_delivered_message(mta):
    """Postfix: 'The junk command count is reset after mail is delivered.' A client that
    sends RSET (or NOOP) before each of many messages on one connection is not cut off."""
    with SmtpClient(mta.port, TRUSTED).hello() as c:
        qids = []
        for i in range(120):
            c.send(b"RSET\r\nNOOP\r\nMAIL FROM:<s@client.test>\r\nRCPT TO:<a@example.test>\r\nDATA\r\n")
            replies = [r.line for r in c.replies(5)]
            assert replies == ["250 2.0.0 Ok", "250 2.0.0 Ok", "250 2.1.0 Ok", "250 2.1.5 Ok",
                               "354 End data with <CR><LF>.<CR><LF>"], (i, replies)  # fmt: skip
            c.send(b"Subject: %d\r\n\r\nx\r\n.\r\n" % i)
            qids.append(queue_id_of(c.reply()))
        assert c.cmd("QUIT").code == 221
    assert len(mta.queued()) == 120

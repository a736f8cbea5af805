"""RFC 2920 PIPELINING: replies in order, batched; DATA ends a group; content before 354 is refused."""

from __future__ import annotations

from smtpclient import TRUSTED, UNTRUSTED, SmtpClient, queue_id_of, wait_for_log


def test_pipelined_envelope_then_message_and_quit(mta):
    with SmtpClient(mta.port, UNTRUSTED).hello() as c:
        c.send(
            b"MAIL FROM:<s@client.test>\r\n"
            b"RCPT TO:<a@example.test>\r\n"
            b"RCPT TO:<nobody@remote.test>\r\n"
            b"RCPT TO:<b@relay.test>\r\n"
            b"DATA\r\n"
        )
        replies = c.replies(5)
        assert [r.line for r in replies] == [
            "250 2.1.0 Ok",
            "250 2.1.5 Ok",
            "554 5.7.1 <nobody@remote.test>: Relay access denied",
            "250 2.1.5 Ok",
            "354 End data with <CR><LF>.<CR><LF>",
        ]
        c.send(b"Subject: pipelined\r\n\r\nbody\r\n.\r\nQUIT\r\n")
        r = c.reply()
        qid = queue_id_of(r)
        assert c.reply().line == "221 2.0.0 Bye"
        assert c.closed_by_server(2)
    env = mta.envelope(qid)
    assert [x.address for x in env.recipients] == ["a@example.test", "b@relay.test"]
    assert mta.body(qid).endswith(b"Subject: pipelined\r\n\r\nbody\r\n")


def test_pipelined_group_without_data_replies_in_order(mta):
    with SmtpClient(mta.port, TRUSTED).hello() as c:
        c.send(b"MAIL FROM:<s@client.test>\r\nRCPT TO:<a@example.test>\r\nRCPT TO:<b@example.test>\r\nRSET\r\nNOOP\r\n")
        got = [r.line for r in c.replies(5)]
        assert got == ["250 2.1.0 Ok", "250 2.1.5 Ok", "250 2.1.5 Ok", "250 2.0.0 Ok", "250 2.0.0 Ok"]


def test_several_messages_pipelined_in_one_session(mta):
    n = 5
    with SmtpClient(mta.port, UNTRUSTED).hello() as c:
        qids = []
        for i in range(n):
            c.send(b"MAIL FROM:<s%d@client.test>\r\nRCPT TO:<a%d@example.test>\r\nDATA\r\n" % (i, i))
            assert [r.code for r in c.replies(3)] == [250, 250, 354]
            # the message, its end, and the next transaction's first command in one write
            tail = b"MAIL FROM:<next@client.test>\r\n" if i < n - 1 else b"QUIT\r\n"
            c.send(b"Subject: m%d\r\n\r\n..dot\r\n.\r\n" % i + tail)
            qids.append(queue_id_of(c.reply()))
            last = c.reply()
            if i < n - 1:
                assert last.line == "250 2.1.0 Ok"
                c.expect("RSET", 250, "2.0.0")
            else:
                assert last.line == "221 2.0.0 Bye"
    assert mta.queued() == sorted(qids) and len(set(qids)) == n
    for i, q in enumerate(qids):
        env = mta.envelope(q)
        assert env.sender == f"s{i}@client.test"
        assert [r.address for r in env.recipients] == [f"a{i}@example.test"]
        assert mta.body(q).endswith(b"Subject: m%d\r\n\r\n.dot\r\n" % i)


def test_two_whole_transactions_in_one_write(mta):
    """After DATA's 354 the client may send the message and a whole next transaction
    up to its DATA; the server answers each in order."""
    with SmtpClient(mta.port, TRUSTED).hello() as c:
        c.send(b"MAIL FROM:<s@client.test>\r\nRCPT TO:<a@example.test>\r\nDATA\r\n")
        assert [r.code for r in c.replies(3)] == [250, 250, 354]
        c.send(b"Subject: one\r\n\r\n1\r\n.\r\nMAIL FROM:<t@client.test>\r\nRCPT TO:<b@example.test>\r\nDATA\r\n")
        q1 = queue_id_of(c.reply())
        assert [r.line for r in c.replies(3)] == ["250 2.1.0 Ok", "250 2.1.5 Ok", "354 End data with <CR><LF>.<CR><LF>"]
        c.send(b"Subject: two\r\n\r\n2\r\n.\r\nQUIT\r\n")
        q2 = queue_id_of(c.reply())
        assert c.reply().code == 221
    assert mta.queued() == [q1, q2]
    assert mta.body(q2).endswith(b"Subject: two\r\n\r\n2\r\n")


def test_content_before_354_is_improper_pipelining(mta):
    with SmtpClient(mta.port, UNTRUSTED).hello() as c:
        c.send(b"MAIL FROM:<s@client.test>\r\nRCPT TO:<a@example.test>\r\n")
        assert [r.code for r in c.replies(2)] == [250, 250]
        c.send(b"DATA\r\nSubject: too early\r\n\r\nbody\r\n.\r\n")
        r = c.reply()
        assert r.line == "503 5.5.0 <DATA>: Data command rejected: Improper use of SMTP command pipelining"
        # the early content is then read as commands, never as a message: a header line is
        # not SMTP, and the server hangs up (Postfix: non-SMTP command)
        assert c.reply().line == "221 2.7.0 Error: I can break rules, too. Goodbye."
        assert c.closed_by_server(2)
    wait_for_log(mta, "non-SMTP command from unknown[127.0.0.2]: Subject: too early")
    wait_for_log(mta, "improper command pipelining after DATA from unknown[127.0.0.2]")
    assert mta.queued("tmp") == [] and mta.queued() == []


def test_whole_session_in_one_write_is_refused_at_data(mta):
    """A client that does not wait for 354 (the classic smuggling/spam-bot shape) queues nothing."""
    with SmtpClient(mta.port, UNTRUSTED) as c:
        c.greeting()
        c.send(
            b"EHLO bot.test\r\nMAIL FROM:<s@client.test>\r\nRCPT TO:<a@example.test>\r\nDATA\r\n"
            b"Subject: spam\r\n\r\nbuy\r\n.\r\nQUIT\r\n"
        )
        ehlo = c.reply()
        assert ehlo.code == 250
        assert [r.line for r in c.replies(3)] == [
            "250 2.1.0 Ok",
            "250 2.1.5 Ok",
            "503 5.5.0 <DATA>: Data command rejected: Improper use of SMTP command pipelining",
        ]
        assert c.reply().line == "221 2.7.0 Error: I can break rules, too. Goodbye."
        assert c.closed_by_server(2)
    assert mta.queued() == []

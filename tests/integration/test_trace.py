"""Trace data: the Received header, queue ids, and the Postfix-style log lines."""

from __future__ import annotations

import re
import smtplib

from smtpclient import TRUSTED, UNTRUSTED, SmtpClient, queue_id_of, wait_for_log

from mtaserver.queue.store import is_queue_id


def test_received_header_with_one_recipient(mta):
    with SmtpClient(mta.port, TRUSTED).hello() as c:
        qid = queue_id_of(c.send_message("s@client.test", ["a@example.test"], b"Subject: t\r\n\r\nx\r\n"))
    body = mta.body(qid).decode()
    header, _, rest = body.partition("\r\nSubject: t\r\n")
    assert rest == "\r\nx\r\n"
    lines = header.split("\r\n")
    assert lines[0] == "Received: from client.test (unknown [127.0.0.1])"
    assert lines[1] == f"\tby mx.example.test (mtaserver) with ESMTP id {qid}"
    assert re.fullmatch(r"\tfor <a@example\.test>; \w{3}, \d{2} \w{3} \d{4} \d{2}:\d{2}:\d{2} [+-]\d{4}", lines[2]), lines[2]
    # a mynetworks client: outbound.add_client_ip_header (on by default) adds its address
    assert lines[3:] == ["X-Originating-IP: [127.0.0.1]"]


def test_received_header_with_two_recipients_has_no_for_clause(mta):
    with SmtpClient(mta.port, UNTRUSTED) as c:
        c.greeting()
        c.cmd("HELO old.client.test")
        qid = queue_id_of(c.send_message("s@client.test", ["a@example.test", "b@example.test"], b"Subject: t\r\n\r\nx\r\n"))
    lines = mta.body(qid).decode().split("\r\n")
    assert lines[0] == "Received: from old.client.test (unknown [127.0.0.2])"
    assert lines[1] == f"\tby mx.example.test (mtaserver) with SMTP id {qid};"  # HELO: SMTP, not ESMTP
    assert re.fullmatch(r"\t\w{3}, \d{2} \w{3} \d{4} \d{2}:\d{2}:\d{2} [+-]\d{4}", lines[2]), lines[2]
    assert "for <" not in mta.body(qid).decode()


def test_queue_ids_are_unique_and_time_ordered(mta):
    qids = []
    with SmtpClient(mta.port, TRUSTED).hello() as c:
        for i in range(60):
            qids.append(queue_id_of(c.send_message("s@client.test", ["a@example.test"], b"Subject: %d\r\n\r\nx\r\n" % i)))
    # a second session in parallel order: still later than all of the first
    with SmtpClient(mta.port, UNTRUSTED).hello() as c:
        qids.append(queue_id_of(c.send_message("s@client.test", ["a@example.test"], b"Subject: last\r\n\r\nx\r\n")))
    assert len(set(qids)) == len(qids) == 61
    assert all(is_queue_id(q) for q in qids)
    assert sorted(qids) == qids  # the name sorts by arrival
    assert mta.queued() == qids
    for i, q in enumerate(qids[:60]):
        env = mta.envelope(q)
        assert env.queue_id == q
        assert mta.body(q).endswith(b"Subject: %d\r\n\r\nx\r\n" % i)


def test_log_lines_of_one_delivery(mta):
    with SmtpClient(mta.port, TRUSTED).hello() as c:
        qid = queue_id_of(c.send_message("s@client.test", ["a@example.test"], b"Subject: t\r\n\r\nx\r\n"))
        c.expect("QUIT", 221, "2.0.0")
    log = wait_for_log(mta, "disconnect from unknown[127.0.0.1]")
    size = len(mta.body(qid))
    expected = [
        "connect from unknown[127.0.0.1]",
        f"{qid}: client=unknown[127.0.0.1]",
        f"{qid}: from=<s@client.test>, size={size}, nrcpt=1 (queue active)",
        "disconnect from unknown[127.0.0.1] ehlo=1 mail=1 rcpt=1 data=1 quit=1 commands=5",
    ]
    lines = [re.sub(r"^.*?\]: ", "", x) for x in log.splitlines()]
    pos = [lines.index(e) if e in lines else -1 for e in expected]
    assert -1 not in pos, (expected, lines)
    assert pos == sorted(pos), lines


def test_disconnect_line_counts_failed_commands(mta):
    with SmtpClient(mta.port, UNTRUSTED).hello() as c:
        c.expect("MAIL FROM:<s@client.test>", 250)
        c.expect("RCPT TO:<a@remote.test>", 554, "5.7.1")
        c.expect("RCPT TO:<a@example.test>", 250)
        c.expect("RSET", 250)
        c.expect("BOGUS", 502)
        c.expect("QUIT", 221)
    log = wait_for_log(mta, "disconnect from unknown[127.0.0.2]")
    line = [x for x in log.splitlines() if "disconnect from unknown[127.0.0.2]" in x][0]
    assert line.endswith("disconnect from unknown[127.0.0.2] ehlo=1 mail=1 rcpt=1/2 rset=1 unknown=0/1 quit=1 commands=5/7"), line


def test_noqueue_reject_line(mta):
    with SmtpClient(mta.port, UNTRUSTED).hello() as c:
        c.expect("MAIL FROM:<s@client.test>", 250)
        c.expect("RCPT TO:<u@remote.test>", 554, "5.7.1")
    wait_for_log(
        mta,
        "NOQUEUE: reject: RCPT from unknown[127.0.0.2]: 554 5.7.1 <u@remote.test>: Relay access denied; "
        "from=<s@client.test> to=<u@remote.test> proto=ESMTP helo=<client.test>",
    )


def test_client_bytes_are_escaped_in_the_log(mta):
    helo = b"evil\x01\x1b[31m\xc3\xa9\xff\\name"
    with SmtpClient(mta.port, UNTRUSTED) as c:
        c.greeting()
        c.expect(b"EHLO " + helo, 250)
        c.expect(b"MAIL FROM:<s@client.test>", 250)
        c.expect(b"RCPT TO:<u\xc3\xa9@remote.test>", 553, "5.6.7")  # no SMTPUTF8: refused before the policy
        c.expect(b"RCPT TO:<u@remote.test>", 554, "5.7.1")
    with SmtpClient(mta.port, UNTRUSTED) as c:
        c.greeting()
        c.send(b"GET /\x1b]0;pwned\x07\r\n")
        assert c.reply().code == 221
    wait_for_log(mta, "non-SMTP command")
    wait_for_log(mta, "disconnect from unknown[127.0.0.2]")
    raw = mta.log_path.read_bytes()
    # controls and invalid bytes escaped; valid UTF-8 (é) shown as UTF-8 (issue 15)
    assert "helo=<evil\\x01\\x1b[31mé\\xff\\\\name>".encode() in raw, raw.decode(errors="replace")
    assert b"GET /\\x1b]0;pwned\\x07" in raw
    # nothing but printable UTF-8 and newlines in the whole log: no control character, no invalid byte
    text = raw.decode("utf-8")  # raises on an invalid byte
    bad = {c for c in text if (c < " " and c != "\n") or "\x7f" <= c <= "\x9f"}
    assert not bad, f"raw control characters in the log: {sorted(bad)}"


def test_received_header_escapes_the_helo_name(make_mta):
    # reject_invalid_helo_hostname (on by default) would refuse this HELO at RCPT
    mta = make_mta({"inbound": {"protocol_checks": {"reject_invalid_helo_hostname": False}}})
    with SmtpClient(mta.port, UNTRUSTED) as c:
        c.greeting()
        c.expect(b"EHLO a(b)\xc3\xa9\x01", 250)
        qid = queue_id_of(c.send_message("s@client.test", ["a@example.test"], b"Subject: t\r\n\r\nx\r\n"))
    first = mta.body(qid).split(b"\r\n", 1)[0]
    assert first == b"Received: from a?b?\\xc3\\xa9\\x01 (unknown [127.0.0.2])"


def test_log_client_port(make_mta):
    mta = make_mta({"advanced": {"log_client_port": True}})
    with SmtpClient(mta.port, UNTRUSTED) as c:
        port = c.sock.getsockname()[1]
        c.greeting()
        c.expect("QUIT", 221)
    wait_for_log(mta, f"connect from unknown[127.0.0.2]:{port}")
    wait_for_log(mta, f"disconnect from unknown[127.0.0.2]:{port} quit=1 commands=1")


def test_disconnect_counts_a_queued_message_after_refused_recipients(mta):
    """The error budget is reset when a message is queued; the DATA still counts as a success."""
    with smtplib.SMTP("127.0.0.1", mta.port, source_address=("127.0.0.2", 0)) as c:
        c.ehlo("client.test")
        c.mail("s@client.test")
        assert c.rcpt("x@remote.test")[0] == 554
        assert c.rcpt("a@example.test")[0] == 250
        assert c.data(b"Subject: x\r\n\r\nhi\r\n")[0] == 250
    wait_for_log(mta, "disconnect from")
    assert "ehlo=1 mail=1 rcpt=1/2 data=1 quit=1 commands=5/6" in mta.log()

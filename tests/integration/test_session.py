"""Session basics over real sockets: greeting, EHLO, command order, syntax errors, replies.

Every expected reply is the exact line mtaserver.smtpd sends (Postfix's texts with
enhanced status codes).
"""

from __future__ import annotations

import smtplib
import socket
import struct
import subprocess
import time

import pytest
from smtpclient import TRUSTED, UNTRUSTED, Mta, SmtpClient, queue_id_of, require_tool, wait_for, wait_for_log

from mtaserver.queue.store import parse_envelope


@pytest.fixture(scope="module")
def srv(tmp_path_factory: pytest.TempPathFactory):
    """One server for the tests of this module that queue nothing (or check only their own qid)."""
    m = Mta(tmp_path_factory.mktemp("session")).start()
    yield m
    m.stop()


def client(srv: Mta, source: str = TRUSTED) -> SmtpClient:
    c = SmtpClient(srv.port, source)
    c.greeting()
    return c


def test_greeting_is_220_with_the_banner(srv):
    with SmtpClient(srv.port) as c:
        r = c.reply()
        assert r.line == "220 mx.example.test ESMTP mtaserver"
        assert r.status == ""


def test_ehlo_advertises_the_extensions_without_starttls_when_no_cert(srv):
    with client(srv) as c:
        r = c.cmd("EHLO client.test")
    assert r.code == 250
    assert r.lines[0] == "mx.example.test"
    ext = r.lines[1:]
    for word in ("PIPELINING", "SIZE 10240000", "8BITMIME", "SMTPUTF8", "ENHANCEDSTATUSCODES", "CHUNKING", "DSN"):
        assert word in ext, r
    assert "STARTTLS" not in ext, r
    assert len(ext) == len(set(ext)) == 7, r


def test_helo_is_a_one_line_250(srv):
    with client(srv) as c:
        r = c.cmd("HELO client.test")
    assert r.line == "250 mx.example.test"


@pytest.mark.parametrize("verb", ["EHLO", "HELO"])
def test_helo_without_a_name_is_a_syntax_error(srv, verb):
    with client(srv) as c:
        assert c.cmd(verb).line == f"501 5.5.4 Syntax: {verb} hostname"


def test_mail_before_helo(srv):
    with client(srv) as c:
        assert c.cmd("MAIL FROM:<s@client.test>").line == "503 5.5.1 Error: send HELO/EHLO first"


def test_nested_mail(srv):
    with client(srv) as c:
        c.ehlo()
        c.expect("MAIL FROM:<s@client.test>", 250, "2.1.0")
        assert c.cmd("MAIL FROM:<t@client.test>").line == "503 5.5.1 Error: nested MAIL command"


def test_rcpt_before_mail(srv):
    with client(srv) as c:
        c.ehlo()
        assert c.cmd("RCPT TO:<a@example.test>").line == "503 5.5.1 Error: need MAIL command"


def test_data_before_mail_and_before_rcpt(srv):
    with client(srv) as c:
        c.ehlo()
        assert c.cmd("DATA").line == "503 5.5.1 Error: need MAIL command"
        c.expect("MAIL FROM:<s@client.test>", 250, "2.1.0")
        assert c.cmd("DATA").line == "503 5.5.1 Error: need RCPT command"


def test_unknown_command(srv):
    with client(srv) as c:
        assert c.cmd("XYZZY plugh").line == "502 5.5.2 Error: command not recognized"
        assert c.cmd("NOOP").line == "250 2.0.0 Ok"  # the session goes on


def test_empty_line_is_bad_syntax(srv):
    with client(srv) as c:
        assert c.cmd("").line == "500 5.5.2 Error: bad syntax"
        assert c.cmd("NOOP").line == "250 2.0.0 Ok"


def test_rset_and_noop(srv):
    with client(srv) as c:
        c.ehlo()
        assert c.cmd("NOOP").line == "250 2.0.0 Ok"
        c.expect("MAIL FROM:<s@client.test>", 250, "2.1.0")
        assert c.cmd("RSET").line == "250 2.0.0 Ok"
        # RSET ended the transaction: MAIL is not nested now, RCPT without MAIL is refused
        assert c.cmd("RCPT TO:<a@example.test>").line == "503 5.5.1 Error: need MAIL command"
        assert c.cmd("MAIL FROM:<s@client.test>").line == "250 2.1.0 Ok"


def test_vrfy_is_disabled(srv):
    with client(srv) as c:
        c.ehlo()
        assert c.cmd("VRFY postmaster").line == "502 5.5.1 VRFY command is disabled"


def test_quit(srv):
    with client(srv) as c:
        assert c.cmd("QUIT").line == "221 2.0.0 Bye"
        assert c.closed_by_server(2)


@pytest.mark.parametrize("line", ["GET / HTTP/1.0", "POST /cgi-bin/x HTTP/1.1", "CONNECT 10.0.0.1:25 HTTP/1.0"])
def test_http_request_gets_goodbye_and_close(srv, line):
    with client(srv, UNTRUSTED) as c:
        c.send(line + "\r\nHost: x\r\n\r\n")
        assert c.reply().line == "221 2.7.0 Error: I can break rules, too. Goodbye."
        assert c.closed_by_server(2)


@pytest.mark.parametrize("arg", ["FROM:<a b@client.test>", "FROM:<s@client..test>", "FROM:<s@client.test", "FROM:<<s@client.test>>"])
def test_bad_sender_syntax(srv, arg):
    with client(srv) as c:
        c.ehlo()
        assert c.cmd(f"MAIL {arg}").line == "501 5.1.7 Bad sender address syntax"


@pytest.mark.parametrize("arg", ["TO:<a b@example.test>", "TO:<a@exa_mple.test>", "TO:<a@example.test", "TO:<>"])
def test_bad_recipient_syntax(srv, arg):
    with client(srv) as c:
        c.ehlo()
        c.expect("MAIL FROM:<s@client.test>", 250, "2.1.0")
        assert c.cmd(f"RCPT {arg}").line == "501 5.1.3 Bad recipient address syntax"


def test_mail_and_rcpt_without_colon(srv):
    with client(srv) as c:
        c.ehlo()
        assert c.cmd("MAIL FROM <s@client.test>").line == "501 5.5.4 Syntax: MAIL FROM:<address>"
        assert c.cmd("MAIL").line == "501 5.5.4 Syntax: MAIL FROM:<address>"
        c.expect("MAIL FROM:<s@client.test>", 250, "2.1.0")
        assert c.cmd("RCPT TO <a@example.test>").line == "501 5.5.4 Syntax: RCPT TO:<address>"


def test_unsupported_mail_parameter(srv):
    with client(srv) as c:
        c.ehlo()
        assert c.cmd("MAIL FROM:<s@client.test> XFOO=bar").line == "555 5.5.4 Unsupported option: XFOO"
        # and a parameter after HELO (no ESMTP) is refused too
        c.expect("HELO client.test", 250)
        assert c.cmd("MAIL FROM:<s@client.test> BODY=8BITMIME").line == "555 5.5.4 Unsupported option: BODY"


def test_unsupported_rcpt_parameter(srv):
    with client(srv) as c:
        c.ehlo()
        c.expect("MAIL FROM:<s@client.test>", 250, "2.1.0")
        assert c.cmd("RCPT TO:<a@example.test> XFOO").line == "555 5.5.4 Unsupported option: XFOO"


def test_size_parameter(srv):
    with client(srv) as c:
        c.ehlo()
        assert c.cmd("MAIL FROM:<s@client.test> SIZE=10240001").line == "552 5.3.4 Message size exceeds fixed limit"
        assert c.cmd("MAIL FROM:<s@client.test> SIZE=ten").line == "501 5.5.4 Bad message size syntax"
        assert c.cmd("MAIL FROM:<s@client.test> SIZE=10240000").line == "250 2.1.0 Ok"


def test_body_parameter(srv):
    with client(srv) as c:
        c.ehlo()
        assert c.cmd("MAIL FROM:<s@client.test> BODY=BINARYMIME").line == "501 5.5.4 Bad BODY keyword: BINARYMIME"
        assert c.cmd("MAIL FROM:<s@client.test> BODY=8BITMIME").line == "250 2.1.0 Ok"


def test_non_ascii_sender_needs_smtputf8(srv):
    with client(srv) as c:
        c.ehlo()
        assert c.cmd("MAIL FROM:<jörg@client.test>").line == "553 5.6.7 Must declare SMTPUTF8 to send unicode address"
        assert c.cmd("MAIL FROM:<s@client.test>").line == "250 2.1.0 Ok"
        assert c.cmd("RCPT TO:<jürgen@example.test>").line == "553 5.6.7 Must declare SMTPUTF8 to send unicode address"


def test_non_ascii_addresses_accepted_with_smtputf8(srv):
    with client(srv, UNTRUSTED) as c:
        c.ehlo()
        r = c.send_message("jörg@client.test", ["jürgen@example.test"], "Subject: ü\r\n\r\nhällo\r\n".encode(), mail_params="SMTPUTF8")
        qid = queue_id_of(r)
        c.expect("QUIT", 221)
    env = parse_envelope((srv.queue / "incoming" / qid).read_bytes())
    assert env.sender == "jörg@client.test"
    assert [r.address for r in env.recipients] == ["jürgen@example.test"]
    assert env.smtputf8 is True
    assert b" with UTF8SMTP id " + qid.encode() in srv.body(qid)
    assert srv.body(qid).endswith("Subject: ü\r\n\r\nhällo\r\n".encode())


def test_postmaster_without_domain_is_accepted_from_outside(srv):
    with client(srv, UNTRUSTED) as c:
        c.ehlo()
        c.expect("MAIL FROM:<s@client.test>", 250, "2.1.0")
        assert c.cmd("RCPT TO:<postmaster>").line == "250 2.1.5 Ok"
        assert c.cmd("RCPT TO:<Postmaster>").line == "250 2.1.5 Ok"
        c.expect("DATA", 354)
        c.send(b"Subject: to postmaster\r\n\r\nhi\r\n.\r\n")
        qid = queue_id_of(c.reply())
    env = parse_envelope((srv.queue / "incoming" / qid).read_bytes())
    assert [r.address for r in env.recipients] == ["postmaster@example.test", "Postmaster@example.test"]


def test_null_sender_is_accepted(srv):
    with client(srv, UNTRUSTED) as c:
        c.ehlo()
        r = c.send_message("", ["a@example.test"], b"Subject: bounce\r\n\r\nx\r\n")
        qid = queue_id_of(r)
    assert parse_envelope((srv.queue / "incoming" / qid).read_bytes()).sender == ""


def test_auth_is_not_enabled(srv):
    with client(srv) as c:
        c.ehlo()
        assert c.cmd("AUTH PLAIN AGVtAGU=").line == "503 5.5.1 Error: authentication not enabled"


def test_smtplib_session_and_envelope(srv):
    with smtplib.SMTP("127.0.0.1", srv.port, source_address=(UNTRUSTED, 0)) as s:
        s.ehlo("client.test")
        assert s.mail("s@client.test") == (250, b"2.1.0 Ok")
        assert s.rcpt("a@example.test") == (250, b"2.1.5 Ok")
        assert s.rcpt("b@relay.test") == (250, b"2.1.5 Ok")
        code, text = s.data(b"Subject: smtplib\r\n\r\n.leading dot\r\nbody\r\n")
        assert code == 250
    qid = text.decode().rsplit(" ", 1)[1]
    env = parse_envelope((srv.queue / "incoming" / qid).read_bytes())
    assert env.queue_id == qid
    assert env.sender == "s@client.test"
    assert [r.address for r in env.recipients] == ["a@example.test", "b@relay.test"]
    assert env.client.ip == UNTRUSTED and env.client.helo == "client.test" and env.client.protocol == "ESMTP"
    assert env.client.trusted is False
    assert env.size == len(srv.body(qid))
    assert srv.body(qid).endswith(b"Subject: smtplib\r\n\r\n.leading dot\r\nbody\r\n")  # dot-unstuffed


def test_swaks_session_is_queued(srv):
    swaks = require_tool("swaks")
    out = subprocess.run(
        [swaks, "--server", f"127.0.0.1:{srv.port}", "--from", "s@client.test", "--to", "a@example.test",
         "--helo", "client.test", "--header", "Subject: swaks test", "--body", "hello from swaks", "--timeout", "10"],
        capture_output=True, text=True, timeout=30,
    )  # fmt: skip
    assert out.returncode == 0, out.stdout + out.stderr
    lines = [x for x in out.stdout.splitlines() if "queued as" in x]
    assert len(lines) == 1 and "<-  250 2.0.0 Ok: queued as " in lines[0], out.stdout
    qid = lines[0].rsplit(" ", 1)[1]
    assert qid in srv.queued()
    assert b"Subject: swaks test" in srv.body(qid)
    assert b"hello from swaks" in srv.body(qid)
    wait_for_log(srv, f"{qid}: from=<s@client.test>")


def test_ehlo_resets_the_transaction(srv):
    with client(srv) as c:
        c.ehlo()
        c.expect("MAIL FROM:<s@client.test>", 250)
        c.expect("RCPT TO:<a@example.test>", 250)
        c.ehlo("again.test")
        assert c.cmd("DATA").line == "503 5.5.1 Error: need MAIL command"
        assert c.cmd("RCPT TO:<a@example.test>").line == "503 5.5.1 Error: need MAIL command"


def test_empty_message_and_dot_lines(srv):
    with client(srv, UNTRUSTED) as c:
        c.ehlo()
        c.expect("MAIL FROM:<s@client.test>", 250)
        c.expect("RCPT TO:<a@example.test>", 250)
        c.expect("DATA", 354)
        c.send(b".\r\n")  # an empty message
        q1 = queue_id_of(c.reply())
        c.expect("MAIL FROM:<s@client.test> BODY=8BITMIME", 250)
        c.expect("RCPT TO:<a@example.test>", 250)
        c.expect("DATA", 354)
        c.send(b"..\r\n...\r\n. \r\n.x\r\n..\r\nend\r\n.\r\n")  # dot-stuffed lines of dots
        q2 = queue_id_of(c.reply())
    b1 = srv.body(q1)
    # the trace and our DKIM verdict only (dkim.verify is on by default)
    assert b1.startswith(b"Received: from client.test") and b1.endswith(b"\r\nAuthentication-Results: mx.example.test; dkim=none\r\n")
    assert b1.count(b"\r\n") == 4
    assert srv.body(q2).endswith(b"\r\n" + b".\r\n..\r\n \r\nx\r\n.\r\nend\r\n")
    env = envelope_of(srv, q2)
    assert env.body_type == "8BITMIME" and env.size == len(srv.body(q2))


def envelope_of(srv: Mta, qid: str):
    return parse_envelope((srv.queue / "incoming" / qid).read_bytes())


def test_replies_after_the_client_half_closes(srv):
    """A client may send its last commands and shut down its side at once: it still gets
    every reply (Postfix does the same)."""
    with client(srv, UNTRUSTED) as c:
        c.send(b"EHLO client.test\r\nNOOP\r\nQUIT\r\n")
        c.sock.shutdown(socket.SHUT_WR)
        assert c.reply().code == 250
        assert c.reply().line == "250 2.0.0 Ok"
        assert c.reply().line == "221 2.0.0 Bye"
        assert c.closed_by_server(2)


@pytest.mark.parametrize("how", ["half-close", "reset"])
def test_client_gone_in_the_middle_of_data_leaves_nothing(srv, how):
    before = set(srv.queued())
    lost = srv.log().count("lost connection after DATA")
    c = client(srv, UNTRUSTED)
    c.ehlo()
    c.expect("MAIL FROM:<s@client.test>", 250)
    c.expect("RCPT TO:<a@example.test>", 250)
    c.expect("DATA", 354)
    c.send(b"Subject: gone\r\n\r\n" + b"half a message\r\n" * 5000)
    if how == "reset":
        c.sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        c.close()
    else:
        c.sock.shutdown(socket.SHUT_WR)
        assert c.closed_by_server(3)
        c.close()
    # logged as Postfix does: the lost connection, and a DATA command that did not succeed
    wait_for(lambda: srv.log().count("lost connection after DATA (") > lost, 5, "the lost connection log line")
    log = wait_for_log(srv, "disconnect from unknown[127.0.0.2] ehlo=1 mail=1 rcpt=1 data=0/1 commands=3/4")
    assert log.count("data=0/1 commands=3/4") == lost + 1
    time.sleep(0.1)
    assert set(srv.queued()) == before
    assert srv.queued("tmp") == []

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


@pytest.fixture(scope="module")
def srv(tmp_path_factory: pytest.TempPathFactory):
    """One server for the tests of this module that queue nothing (or check only their own qid)."""
    with Mta(tmp_path_factory.mktemp("session")).start() as m:
        yield m


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


MAIL_OK = ("MAIL FROM:<s@client.test>", "250 2.1.0 Ok")
NEED_MAIL = "503 5.5.1 Error: need MAIL command"
NOOP_OK = ("NOOP", "250 2.0.0 Ok")
UTF8_NEEDED = "553 5.6.7 Must declare SMTPUTF8 to send unicode address"

# (name, EHLO first, [(command, the exact reply line)]): one session of the trusted client each.
DIALOGUES = [
    *((f"helo_without_a_name_is_a_syntax_error[{verb}]", False, [(verb, f"501 5.5.4 Syntax: {verb} hostname")])
      for verb in ("EHLO", "HELO")),
    ("mail_before_helo", False, [("MAIL FROM:<s@client.test>", "503 5.5.1 Error: send HELO/EHLO first")]),
    ("nested_mail", True, [MAIL_OK, ("MAIL FROM:<t@client.test>", "503 5.5.1 Error: nested MAIL command")]),
    ("rcpt_before_mail", True, [("RCPT TO:<a@example.test>", NEED_MAIL)]),
    ("data_before_mail_and_before_rcpt", True, [("DATA", NEED_MAIL), MAIL_OK, ("DATA", "503 5.5.1 Error: need RCPT command")]),
    ("unknown_command", False, [("XYZZY plugh", "502 5.5.2 Error: command not recognized"), NOOP_OK]),  # the session goes on
    ("empty_line_is_bad_syntax", False, [("", "500 5.5.2 Error: bad syntax"), NOOP_OK]),
    # RSET ends the transaction: MAIL is not nested after it, RCPT without MAIL is refused
    ("rset_and_noop", True, [NOOP_OK, MAIL_OK, ("RSET", "250 2.0.0 Ok"), ("RCPT TO:<a@example.test>", NEED_MAIL), MAIL_OK]),
    ("vrfy_is_disabled", True, [("VRFY postmaster", "502 5.5.1 VRFY command is disabled")]),
    *((f"bad_sender_syntax[{arg}]", True, [(f"MAIL {arg}", "501 5.1.7 Bad sender address syntax")])
      for arg in ("FROM:<a b@client.test>", "FROM:<s@client..test>", "FROM:<s@client.test", "FROM:<<s@client.test>>")),
    *((f"bad_recipient_syntax[{arg}]", True, [MAIL_OK, (f"RCPT {arg}", "501 5.1.3 Bad recipient address syntax")])
      for arg in ("TO:<a b@example.test>", "TO:<a@exa_mple.test>", "TO:<a@example.test", "TO:<>")),
    ("mail_and_rcpt_without_colon", True, [("MAIL FROM <s@client.test>", "501 5.5.4 Syntax: MAIL FROM:<address>"),
                                           ("MAIL", "501 5.5.4 Syntax: MAIL FROM:<address>"), MAIL_OK,
                                           ("RCPT TO <a@example.test>", "501 5.5.4 Syntax: RCPT TO:<address>")]),
    # and a parameter after HELO (no ESMTP) is refused too
    ("unsupported_mail_parameter", True, [("MAIL FROM:<s@client.test> XFOO=bar", "555 5.5.4 Unsupported option: XFOO"),
                                          ("HELO client.test", "250 mx.example.test"),
                                          ("MAIL FROM:<s@client.test> BODY=8BITMIME", "555 5.5.4 Unsupported option: BODY")]),
    ("unsupported_rcpt_parameter", True, [MAIL_OK, ("RCPT TO:<a@example.test> XFOO", "555 5.5.4 Unsupported option: XFOO")]),
    ("size_parameter", True, [("MAIL FROM:<s@client.test> SIZE=10240001", "552 5.3.4 Message size exceeds fixed limit"),
                              ("MAIL FROM:<s@client.test> SIZE=ten", "501 5.5.4 Bad message size syntax"),
                              ("MAIL FROM:<s@client.test> SIZE=10240000", "250 2.1.0 Ok")]),
    ("body_parameter", True, [("MAIL FROM:<s@client.test> BODY=BINARYMIME", "501 5.5.4 Bad BODY keyword: BINARYMIME"),
                              ("MAIL FROM:<s@client.test> BODY=8BITMIME", "250 2.1.0 Ok")]),
    ("non_ascii_sender_needs_smtputf8", True, [("MAIL FROM:<jörg@client.test>", UTF8_NEEDED), MAIL_OK,
                                               ("RCPT TO:<jürgen@example.test>", UTF8_NEEDED)]),
    ("auth_is_not_enabled", True, [("AUTH PLAIN AGVtAGU=", "503 5.5.1 Error: authentication not enabled")]),
]  # fmt: skip


@pytest.mark.parametrize(("ehlo", "dialogue"), [d[1:] for d in DIALOGUES], ids=[d[0] for d in DIALOGUES])
def test_command_replies(srv, ehlo, dialogue):
    with client(srv) as c:
        if ehlo:
            c.ehlo()
        for command, want in dialogue:
            assert c.cmd(command).line == want, command


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


def test_non_ascii_addresses_accepted_with_smtputf8(srv):
    with client(srv, UNTRUSTED) as c:
        c.ehlo()
        r = c.send_message("jörg@client.test", ["jürgen@example.test"], "Subject: ü\r\n\r\nhällo\r\n".encode(), mail_params="SMTPUTF8")
        qid = queue_id_of(r)
        c.expect("QUIT", 221)
    env = srv.envelope(qid)
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
    env = srv.envelope(qid)
    assert [r.address for r in env.recipients] == ["postmaster@example.test", "Postmaster@example.test"]


def test_null_sender_is_accepted(srv):
    with client(srv, UNTRUSTED) as c:
        c.ehlo()
        r = c.send_message("", ["a@example.test"], b"Subject: bounce\r\n\r\nx\r\n")
        qid = queue_id_of(r)
    assert srv.envelope(qid).sender == ""


def test_smtplib_session_and_envelope(srv):
    with smtplib.SMTP("127.0.0.1", srv.port, source_address=(UNTRUSTED, 0)) as s:
        s.ehlo("client.test")
        assert s.mail("s@client.test") == (250, b"2.1.0 Ok")
        assert s.rcpt("a@example.test") == (250, b"2.1.5 Ok")
        assert s.rcpt("b@relay.test") == (250, b"2.1.5 Ok")
        code, text = s.data(b"Subject: smtplib\r\n\r\n.leading dot\r\nbody\r\n")
        assert code == 250
    qid = text.decode().rsplit(" ", 1)[1]
    env = srv.envelope(qid)
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
    return srv.envelope(qid)


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

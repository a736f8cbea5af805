"""STARTTLS (RFC 3207) with a self-signed certificate made by openssl for the test."""

from __future__ import annotations

import signal
import socket
import smtplib
import ssl
import re
import subprocess
import sys

import pytest
from smtpclient import TRUSTED, UNTRUSTED, Mta, SmtpClient, queue_id_of, wait_for, wait_for_log

from mtaserver.queue.store import parse_envelope


@pytest.fixture(scope="module")
def srv(tmp_path_factory: pytest.TempPathFactory, cert):
    crt, key = cert
    m = Mta(tmp_path_factory.mktemp("tls"), {"server": {"tls": {"cert": str(crt), "key": str(key)}}}).start()
    yield m
    m.stop()


def verifying_context(crt) -> ssl.SSLContext:
    ctx = ssl.create_default_context(cafile=str(crt))
    ctx.check_hostname = True
    return ctx


def tls_session(srv: Mta, crt, source: str = UNTRUSTED) -> SmtpClient:
    c = SmtpClient(srv.port, source)
    c.greeting()
    assert "STARTTLS" in c.ehlo().lines
    assert c.cmd("STARTTLS").line == "220 2.0.0 Ready to start TLS"
    c.starttls(verifying_context(crt))
    return c


def test_starttls_is_advertised(srv):
    with SmtpClient(srv.port) as c:
        c.greeting()
        ext = c.ehlo().lines[1:]
        assert "STARTTLS" in ext
        assert {"PIPELINING", "SIZE 10240000", "8BITMIME", "SMTPUTF8", "ENHANCEDSTATUSCODES"} <= set(ext)


def test_starttls_handshake_and_session(srv, cert):
    crt, _ = cert
    with tls_session(srv, crt) as c:
        tls = c.sock
        assert isinstance(tls, ssl.SSLSocket)
        assert tls.version() in ("TLSv1.2", "TLSv1.3")
        assert tls.getpeercert()["subject"] == ((("commonName", "mx.example.test"),),)
        # RFC 3207 4.2: the server forgets the EHLO; MAIL needs a new one
        assert c.cmd("MAIL FROM:<s@client.test>").line == "503 5.5.1 Error: send HELO/EHLO first"
        r = c.ehlo("client.test")
        assert "STARTTLS" not in r.lines
        assert {"PIPELINING", "SIZE 10240000", "8BITMIME", "SMTPUTF8", "ENHANCEDSTATUSCODES"} <= set(r.lines[1:])
        assert c.cmd("STARTTLS").line == "554 5.5.1 Error: TLS already active"
        # TLS is not authentication: an outsider still may not relay
        c.expect("MAIL FROM:<s@client.test>", 250)
        assert c.cmd("RCPT TO:<u@remote.test>").line == "554 5.7.1 <u@remote.test>: Relay access denied"
        c.expect("RSET", 250)
        qid = queue_id_of(c.send_message("s@client.test", ["a@example.test"], b"Subject: over tls\r\n\r\nsecret\r\n"))
        assert c.cmd("QUIT").line == "221 2.0.0 Bye"
        version, cipher = tls.version(), tls.cipher()[0]
    body = srv.body(qid).decode()
    lines = body.split("\r\n")
    assert lines[0] == "Received: from client.test (unknown [127.0.0.2])"
    assert lines[1] == f"\t(using {version} with cipher {cipher})"
    assert lines[2] == f"\tby mx.example.test (mtaserver) with ESMTPS id {qid}"
    assert body.endswith("Subject: over tls\r\n\r\nsecret\r\n")
    assert parse_envelope((srv.queue / "incoming" / qid).read_bytes()).client.protocol == "ESMTPS"
    wait_for_log(srv, f"TLS connection established from unknown[127.0.0.2]: {version} with cipher {cipher}")


def test_starttls_forgets_the_transaction(srv, cert):
    crt, _ = cert
    with SmtpClient(srv.port, TRUSTED) as c:
        c.greeting()
        c.ehlo()
        c.expect("MAIL FROM:<s@client.test>", 250)
        c.expect("RCPT TO:<a@example.test>", 250)
        assert c.cmd("STARTTLS").code == 220
        c.starttls(verifying_context(crt))
        c.ehlo()
        assert c.cmd("DATA").line == "503 5.5.1 Error: need MAIL command"


def test_smtplib_starttls(srv, cert):
    crt, _ = cert
    with smtplib.SMTP("127.0.0.1", srv.port, source_address=(UNTRUSTED, 0)) as s:
        s.ehlo("client.test")
        ctx = verifying_context(crt)
        ctx.check_hostname = False  # smtplib checks the name it connected to: 127.0.0.1
        assert s.starttls(context=ctx)[0] == 220
        s.ehlo("client.test")
        assert not s.has_extn("starttls")
        assert s.sendmail("s@client.test", ["a@example.test"], b"Subject: smtplib tls\r\n\r\nx\r\n") == {}


def test_plaintext_pipelined_after_starttls_is_not_executed_inside_tls(srv, cert):
    """CVE-2011-0411: a command injected after STARTTLS in the same plaintext packet must be
    discarded, not read from the buffer after the handshake as if the client sent it over TLS."""
    crt, _ = cert
    with SmtpClient(srv.port, UNTRUSTED) as c:
        c.greeting()
        c.ehlo()
        c.send(b"STARTTLS\r\nRSET\r\nMAIL FROM:<injected@evil.test>\r\n")
        assert c.reply().line == "220 2.0.0 Ready to start TLS"
        c.starttls(verifying_context(crt))
        # the next reply we read is for our own command, not for the injected ones
        r = c.cmd("EHLO client.test")
        assert r.code == 250 and r.lines[0] == "mx.example.test", r
        assert c.cmd("NOOP").line == "250 2.0.0 Ok"
        # no transaction was opened by the injected MAIL
        assert c.cmd("MAIL FROM:<s@client.test>").line == "250 2.1.0 Ok"
        assert c.pending(0.3) == b""
    wait_for_log(srv, "discarding 38 bytes of plaintext pipelined after STARTTLS from unknown[127.0.0.2]")


def test_starttls_with_an_argument(srv):
    with SmtpClient(srv.port) as c:
        c.greeting()
        c.ehlo()
        assert c.cmd("STARTTLS now").line == "501 5.5.4 Syntax: STARTTLS"
        assert c.cmd("NOOP").code == 250  # still plaintext, still talking


def test_failed_handshake_closes_only_that_session(srv, cert):
    crt, _ = cert
    with SmtpClient(srv.port, UNTRUSTED) as c:
        c.greeting()
        c.ehlo()
        assert c.cmd("STARTTLS").code == 220
        c.send(b"this is not a TLS ClientHello\r\n" * 4)
        assert c.closed_by_server(5)
    log = wait_for_log(srv, "SSL_accept error from unknown[127.0.0.2]")
    assert "disconnect from unknown[127.0.0.2] ehlo=1 starttls=0/1 commands=1/2" in wait_for_log(srv, "starttls=0/1"), log
    with tls_session(srv, crt) as c:  # the server is fine
        c.ehlo()


def test_no_starttls_without_a_certificate(mta):
    with SmtpClient(mta.port) as c:
        c.greeting()
        assert "STARTTLS" not in c.ehlo().lines
        assert c.cmd("STARTTLS").line == "502 5.5.1 Error: command not implemented"
        assert c.cmd("NOOP").line == "250 2.0.0 Ok"


def test_client_silent_after_starttls_is_timed_out(tmp_path_factory, cert):
    """A client that says STARTTLS and then never starts the handshake cannot pin the session."""
    crt, key = cert
    m = Mta(tmp_path_factory.mktemp("tls-timeout"),
            {"server": {"tls": {"cert": str(crt), "key": str(key)}, "limits": {"command_timeout": "1s"}}}).start()  # fmt: skip
    try:
        with SmtpClient(m.port, UNTRUSTED) as c:
            c.greeting()
            c.ehlo()
            assert c.cmd("STARTTLS").code == 220
            c.sock.settimeout(5)  # command_timeout is 1s: a server that never closes fails the test here
            try:
                rest = c.sock.recv(4096)
                while rest and not rest.endswith(b"\r\n"):  # whatever the server says, then EOF
                    rest += c.sock.recv(4096)
                assert c.sock.recv(4096) == b""
            except ConnectionResetError:
                pass
        log = wait_for_log(m, "disconnect from unknown[127.0.0.2]")
        assert "timeout after STARTTLS from unknown[127.0.0.2]" in log
        assert "TLS connection established" not in log  # no TLS session was made
        assert "disconnect from unknown[127.0.0.2] ehlo=1 starttls=0/1 commands=1/2" in log
    finally:
        m.stop()


def test_listener_without_tls_does_not_offer_starttls(tmp_path_factory, cert):
    crt, key = cert
    m = Mta(tmp_path_factory.mktemp("tls-none"), {"server": {"tls": {"cert": str(crt), "key": str(key)}}})
    m.config["server"]["listeners"][0]["tls"] = "none"
    m.write_config()
    m.start()
    try:
        with SmtpClient(m.port) as c:
            c.greeting()
            assert "STARTTLS" not in c.ehlo().lines
            assert c.cmd("STARTTLS").line == "502 5.5.1 Error: command not implemented"
    finally:
        m.stop()


def test_sighup_adds_a_certificate(make_mta, cert):
    crt, key = cert
    mta = make_mta()
    with SmtpClient(mta.port) as c:
        c.greeting()
        assert "STARTTLS" not in c.ehlo().lines
    cfg = dict(mta.config)
    cfg["server"] = {**cfg["server"], "tls": {"cert": str(crt), "key": str(key)}}
    mta.write_config(cfg)
    mta.signal(signal.SIGHUP)
    wait_for_log(mta, "reload: applied from")
    with SmtpClient(mta.port, UNTRUSTED) as c:
        c.greeting()
        assert "STARTTLS" in c.ehlo().lines
        assert c.cmd("STARTTLS").code == 220
        c.starttls(verifying_context(crt))
        assert "STARTTLS" not in c.ehlo().lines


def test_sighup_with_an_unloadable_certificate_is_refused(make_mta, cert, tmp_path):
    """The file validates but the certificate cannot be loaded: the reload is refused as a
    whole (not half applied), and the running TLS keeps working."""
    crt, key = cert
    mta = make_mta({"server": {"tls": {"cert": str(crt), "key": str(key)}}})
    cfg = dict(mta.config)
    bad = tmp_path / "garbage.pem"
    bad.write_text("-----BEGIN CERTIFICATE-----\nnot base64\n-----END CERTIFICATE-----\n")
    for broken in ({"cert": str(tmp_path / "missing.pem"), "key": str(key)}, {"cert": str(bad), "key": str(key)}):
        cfg["server"] = {**cfg["server"], "banner": "{hostname} ESMTP half-applied", "tls": broken}
        mta.write_config(cfg)
        before = mta.log().count("reload refused:")
        mta.signal(signal.SIGHUP)
        wait_for(lambda before=before: mta.log().count("reload refused:") > before, 5, "the refusal")
        assert f"reload refused: {mta.config_path}: server.tls: cannot load the certificate and key: " in mta.log()
        assert "reload: applied from" not in mta.log()
        with SmtpClient(mta.port, UNTRUSTED) as c:
            assert c.reply().line == "220 mx.example.test ESMTP mtaserver"
            c.ehlo()
            assert c.cmd("STARTTLS").code == 220
            c.starttls(verifying_context(crt))
            c.ehlo()
    assert "Traceback" not in mta.log()


@pytest.mark.parametrize("workers", [1, 2])
def test_start_with_an_unloadable_certificate_fails_cleanly(make_mta, tmp_path, workers):
    mta = make_mta({"server": {"workers": workers, "tls": {"cert": str(tmp_path / "missing.pem"), "key": str(tmp_path / "missing.key")}}},
                   start=False)  # fmt: skip
    with open(mta.log_path, "ab") as logf:
        proc = subprocess.Popen([sys.executable, "-m", "mtaserver", "run", "-c", str(mta.config_path)],
                                stdout=logf, stderr=subprocess.STDOUT, cwd=mta.tmp)  # fmt: skip
    try:
        assert proc.wait(10) == 1  # not a worker crash loop
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    log = mta.log()
    assert re.search(re.escape(str(mta.config_path)) + r":\d+: server\.tls: cannot load the certificate and key: ", log), log
    assert "Traceback" not in log and "restarting" not in log


def test_implicit_tls_listener(make_mta, cert):
    """tls: implicit (port 465 style): TLS from the first byte, no STARTTLS offered, ESMTPS trace."""
    crt, key = cert
    m = make_mta({"server": {"tls": {"cert": str(crt), "key": str(key)},
                             "listeners": [{"name": "smtps", "address": "127.0.0.1:0", "tls": "implicit"}]}},
                 start=False)  # fmt: skip
    m.config["server"]["listeners"][0]["address"] = f"127.0.0.1:{m.port}"
    m.write_config()
    m.start()
    ctx = verifying_context(crt)
    ctx.check_hostname = False  # we connect to 127.0.0.1; the chain is still verified
    with smtplib.SMTP_SSL("127.0.0.1", m.port, context=ctx, source_address=(TRUSTED, 0)) as c:
        code, caps = c.ehlo("client.test")
        assert code == 250 and b"STARTTLS" not in caps
        assert c.docmd("STARTTLS") == (554, b"5.5.1 Error: TLS already active")
        assert c.sendmail("s@client.test", ["a@example.test"], b"Subject: x\r\n\r\nhi\r\n") == {}
    [qid] = m.queued()
    head = m.body(qid).split(b"\r\n\r\n")[0]
    assert b"with ESMTPS id" in head and b"(using TLSv1." in head


def test_implicit_tls_needs_a_certificate(tmp_path):
    p = tmp_path / "c.yaml"
    p.write_text("server:\n  listeners:\n    - {name: smtps, address: '127.0.0.1:4650', tls: implicit}\n")
    out = subprocess.run([sys.executable, "-m", "mtaserver", "check-config", "-c", str(p)], capture_output=True, text=True)
    assert out.returncode == 1 and "tls implicit needs server.tls.cert" in out.stderr


def test_tls_log_level_0_1_2_and_implicit_tls(make_mta, cert):
    """advanced.tls_log_level: 0 no TLS line, 1 the summary (Postfix's wording, bits), 2 also the
    session line; an implicit-TLS (port 465 style) session logs its handshake too."""
    crt, key = cert
    tls = {"server": {"tls": {"cert": str(crt), "key": str(key)}}}
    quiet = make_mta({**tls, "advanced": {"tls_log_level": 0}}, subdir="quiet")
    with tls_session(quiet, crt) as c:
        c.ehlo("client.test")
        c.expect("QUIT", 221)
    wait_for_log(quiet, "disconnect from unknown[127.0.0.2]")
    assert "TLS connection established" not in quiet.log()
    verbose = make_mta({**tls, "advanced": {"tls_log_level": 2}}, subdir="verbose")
    with tls_session(verbose, crt) as c:
        c.ehlo("client.test")
        c.expect("QUIT", 221)
    wait_for_log(verbose, re.compile(r"TLS connection established from unknown\[127\.0\.0\.2\]: TLSv1\.[23] with cipher \S+ \((\d+)/\1 bits\)"))
    wait_for_log(verbose, "unknown[127.0.0.2]: TLS session new, compression none")
    implicit = make_mta(tls, start=False, subdir="implicit")
    implicit.config["server"]["listeners"] = [{"name": "smtps", "address": f"127.0.0.1:{implicit.port}", "tls": "implicit"}]
    implicit.write_config()
    implicit.start()
    raw = socket.create_connection(("127.0.0.1", implicit.port), source_address=(UNTRUSTED, 0))
    with verifying_context(crt).wrap_socket(raw, server_hostname="mx.example.test") as s:
        assert s.recv(512).startswith(b"220 ")
        s.sendall(b"QUIT\r\n")
        s.recv(512)
    wait_for_log(implicit, re.compile(r"TLS connection established from unknown\[127\.0\.0\.2\]: TLSv1\.[23] with cipher"))

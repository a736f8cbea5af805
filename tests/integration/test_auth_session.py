"""SMTP AUTH (RFC 4954) over real sockets against a running mtaserver.

A certificate made by openssl for the test, a users file with argon2id hashes made by
`hash_password`, and clients bound to 127.0.0.x addresses: 127.0.0.1 is in outbound.mynetworks,
127.0.0.2 and up play outsiders. Covered, each with its exact reply (CONFIG.md "Authentication
replies", SPEC.md, issue 12 items 5, 6, 9, 10):

- AUTH refused and not advertised before STARTTLS (538 5.7.11), advertised after it; PLAIN
  with and without an initial response, LOGIN; wrong password, "*", bad base64, unknown
  mechanism, AUTH twice, AUTH inside a transaction.
- tls: implicit (with auth: require): AUTH offered at once. auth: require (submission): 530 before STARTTLS for
  everything but EHLO HELO STARTTLS NOOP RSET QUIT, 530 at MAIL before AUTH.
- Relay permission after AUTH; X-Originating-IP, X-Authenticated-User, "with ESMTPSA".
- Sender login mismatch both ways; the null sender; mynetworks exempt.
- auth.max_failures: the blocked IP gets 421 even with the right password, another IP not.
- auth.backend dovecot against a real Dovecot (dovecot_auth.py): success, failure, Dovecot
  stopped (454), Dovecot unreachable at start (AUTH not offered, logged) and found by SIGHUP.
- SIGHUP reloads the users file. No password, nor its base64 forms, ever in the log.
- The shipped conf/mtaserver.yaml with its submission listener uncommented passes check-config.
"""

from __future__ import annotations

import base64
import re
import signal
import ssl
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml
from dovecot_auth import DovecotAuth
from smtpclient import TRUSTED, UNTRUSTED, Mta, Reply, SmtpClient, queue_id_of, wait_for_log

from mtaserver.auth.hashes import hash_password

REPO = Path(__file__).resolve().parents[2]

ALICE_PW = "Alice-S3cret-pw-7f1c"
BOB_PW = "Bob-S3cret-pw-90ad"
CAROL_PW = "Carol-S3cret-pw-c4e2"
WRONG_PW = "Wrong-Guess-pw-5b7e"
USERS = {
    "alice": (ALICE_PW, ["alice@example.test"]),
    "bob": (BOB_PW, ["bob@example.test"]),
}

AUTH_OK = "235 2.7.0 Authentication successful"
AUTH_FAILED = "535 5.7.8 Error: authentication failed"
AUTH_TEMPFAIL = "454 4.7.0 Temporary authentication failure"
ENCRYPTION = "538 5.7.11 Encryption required for requested authentication mechanism"
STARTTLS_FIRST = "530 5.7.0 Must issue a STARTTLS command first"
AUTH_REQUIRED = "530 5.7.0 Authentication required"
ALREADY = "503 5.5.1 Error: already authenticated"
IN_TX = "503 5.5.1 Error: MAIL transaction in progress"
ABORTED = "501 5.7.0 Authentication aborted"
CANNOT_DECODE = "501 5.5.2 Cannot decode response"
TOO_MANY = "421 4.7.0 mx.example.test Error: too many failed authentications"


# -- helpers -------------------------------------------------------------------------------------


def b64(data: str | bytes) -> str:
    return base64.b64encode(data.encode() if isinstance(data, str) else data).decode()


def plain(login: str, password: str) -> str:
    return b64(f"\0{login}\0{password}")


def secret_forms(*passwords: str, logins: tuple[str, ...] = ()) -> list[bytes]:
    """Each password, its base64 (AUTH LOGIN) and the PLAIN messages that carry it."""
    out = []
    for pw in passwords:
        out += [pw.encode(), b64(pw).encode()]
        out += [plain(login, pw).encode() for login in logins]
    return out


def assert_no_secrets(mta: Mta, secrets: list[bytes]) -> None:
    raw = mta.log_path.read_bytes()
    assert raw, "the log is empty: nothing was checked"
    for s in secrets:
        assert s not in raw, f"a secret reached the log: {s!r}"


def write_users(path: Path, users: dict[str, tuple[str, list[str]]]) -> Path:
    entries = {login: {"password": hash_password(pw), "addresses": addrs} for login, (pw, addrs) in users.items()}
    path.write_text(yaml.safe_dump(entries))
    return path


def auth_overrides(cert: tuple[Path, Path], users_file: Path | None, **more: Any) -> dict[str, Any]:
    crt, key = cert
    over: dict[str, Any] = {"server": {"tls": {"cert": str(crt), "key": str(key)}}, "auth": {}}
    if users_file is not None:
        over["auth"]["users_file"] = str(users_file)
    for section, values in more.items():
        over.setdefault(section, {}).update(values)
    return over


def start(make_mta: Any, overrides: dict[str, Any], *, tls: str = "starttls", auth: str = "offer") -> Mta:
    """An mtaserver with one listener of the given tls/auth on its own port."""
    m = make_mta(overrides, start=False)
    m.config["server"]["listeners"] = [
        {"name": "smtp", "address": f"127.0.0.1:{m.port}", "tls": tls, "auth": auth, "postscreen": False}
    ]
    m.write_config()
    return m.start()


def tls_client(mta: Mta, source: str = UNTRUSTED) -> tuple[SmtpClient, Reply]:
    """Greeting, EHLO, STARTTLS, EHLO again; the client and the EHLO reply under TLS."""
    c = SmtpClient(mta.port, source)
    c.greeting()
    assert "STARTTLS" in c.ehlo().lines
    assert c.cmd("STARTTLS").line == "220 2.0.0 Ready to start TLS"
    c.starttls()
    return c, c.ehlo()


def implicit_client(mta: Mta, source: str = UNTRUSTED) -> SmtpClient:
    c = SmtpClient(mta.port, source)
    ctx = ssl.create_default_context()
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    c.sock = ctx.wrap_socket(c.sock, server_hostname="mx.example.test")  # TLS before the greeting
    c.greeting()
    return c


def auth_login(c: SmtpClient, login: str, password: str) -> Reply:
    assert c.cmd("AUTH LOGIN").line == "334 VXNlcm5hbWU6"
    assert c.cmd(b64(login)).line == "334 UGFzc3dvcmQ6"
    return c.cmd(b64(password))


def sender_refused(c: SmtpClient, sender: str, rcpt: str) -> str:
    """The refusal of `sender` at MAIL or, Postfix's delayed rejection, at the RCPT after it."""
    r = c.cmd(f"MAIL FROM:<{sender}>")
    if r.code != 250:
        return r.line
    r = c.cmd(f"RCPT TO:<{rcpt}>")
    c.expect("RSET", 250)
    return r.line


def header_of(body: bytes) -> list[str]:
    return body.split(b"\r\n\r\n", 1)[0].decode().split("\r\n")


@pytest.fixture(scope="module")
def users_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_users(tmp_path_factory.mktemp("users") / "users.yaml", USERS)


@pytest.fixture
def srv(make_mta: Any, cert: tuple[Path, Path], users_file: Path) -> Mta:
    """A starttls listener with auth: offer and the users file."""
    return start(make_mta, auth_overrides(cert, users_file))


# -- the exchange ----------------------------------------------------------------------------------


def test_auth_needs_starttls_then_plain_and_login_succeed(srv: Mta) -> None:
    with SmtpClient(srv.port, UNTRUSTED) as c:
        c.greeting()
        ehlo = c.ehlo()
        assert "STARTTLS" in ehlo.lines
        assert not [x for x in ehlo.lines if x.startswith("AUTH")], f"AUTH offered in plaintext: {ehlo}"
        assert c.cmd(f"AUTH PLAIN {plain('alice', ALICE_PW)}").line == ENCRYPTION
        assert c.cmd("AUTH LOGIN").line == ENCRYPTION
        assert c.cmd("STARTTLS").line == "220 2.0.0 Ready to start TLS"
        c.starttls()
        ehlo = c.ehlo()
        assert "AUTH PLAIN LOGIN" in ehlo.lines, ehlo
        assert str(ehlo).splitlines().count("250-AUTH PLAIN LOGIN") == 1, ehlo
        assert "STARTTLS" not in ehlo.lines
        assert c.cmd(f"AUTH PLAIN {plain('alice', ALICE_PW)}").line == AUTH_OK
        assert c.cmd(f"AUTH PLAIN {plain('alice', ALICE_PW)}").line == ALREADY
        assert c.cmd("AUTH LOGIN").line == ALREADY
        assert c.cmd("QUIT").line == "221 2.0.0 Bye"
    c, _ = tls_client(srv)
    with c:
        assert auth_login(c, "bob", BOB_PW).line == AUTH_OK
    c, _ = tls_client(srv)
    with c:  # PLAIN without an initial response: an empty challenge first
        assert c.cmd("AUTH PLAIN").line == "334 "
        assert c.cmd(plain("alice", ALICE_PW)).line == AUTH_OK
    log = wait_for_log(srv, "sasl_method=LOGIN, sasl_username=bob")
    assert "unknown[127.0.0.2]: sasl_method=PLAIN, sasl_username=alice" in log
    assert_no_secrets(srv, secret_forms(ALICE_PW, BOB_PW, logins=("alice", "bob")))


def test_auth_refusals_have_their_replies(srv: Mta) -> None:
    c, _ = tls_client(srv)
    with c:
        assert c.cmd(f"AUTH PLAIN {plain('alice', WRONG_PW)}").line == AUTH_FAILED
        assert auth_login(c, "alice", WRONG_PW).line == AUTH_FAILED
        assert c.cmd(f"AUTH PLAIN {plain('nobody', WRONG_PW)}").line == AUTH_FAILED
        # "*" cancels, at either challenge
        assert c.cmd("AUTH LOGIN").line == "334 VXNlcm5hbWU6"
        assert c.cmd("*").line == ABORTED
        assert c.cmd("AUTH LOGIN").line == "334 VXNlcm5hbWU6"
        assert c.cmd(b64("alice")).line == "334 UGFzc3dvcmQ6"
        assert c.cmd("*").line == ABORTED
        assert c.cmd("AUTH PLAIN").line == "334 "
        assert c.cmd("*").line == ABORTED
        # not base64
        assert c.cmd("AUTH PLAIN not#base64!").line == CANNOT_DECODE
        assert c.cmd("AUTH LOGIN").line == "334 VXNlcm5hbWU6"
        assert c.cmd("%%%").line == CANNOT_DECODE
        assert c.cmd("AUTH CRAM-MD5").line == "504 5.5.4 Unsupported authentication mechanism"
        # inside a transaction
        c.expect("MAIL FROM:<someone@client.test>", 250, "2.1.0")
        assert c.cmd(f"AUTH PLAIN {plain('alice', ALICE_PW)}").line == IN_TX
        c.expect("RSET", 250)
        # the session is still good: the right password works
        assert c.cmd(f"AUTH PLAIN {plain('alice', ALICE_PW)}").line == AUTH_OK
    log = wait_for_log(srv, "SASL PLAIN authentication failed")
    assert "SASL LOGIN authentication failed" in log
    assert_no_secrets(srv, secret_forms(ALICE_PW, WRONG_PW, logins=("alice", "nobody")))


def test_auth_before_ehlo_is_503(srv: Mta) -> None:
    c, _ = tls_client(srv)
    with c:
        c.expect("RSET", 250)
    with SmtpClient(srv.port, UNTRUSTED) as c:
        c.greeting()
        assert c.cmd("STARTTLS").code == 220
        c.starttls()
        assert c.cmd(f"AUTH PLAIN {plain('alice', ALICE_PW)}").line == "503 5.5.1 Error: send HELO/EHLO first"


def test_implicit_tls_offers_auth_at_once(make_mta: Any, cert: tuple[Path, Path], users_file: Path) -> None:
    m = start(make_mta, auth_overrides(cert, users_file), tls="implicit", auth="require")
    with implicit_client(m) as c:
        ehlo = c.ehlo()
        assert "AUTH PLAIN LOGIN" in ehlo.lines and "STARTTLS" not in ehlo.lines, ehlo
        assert c.cmd("MAIL FROM:<alice@example.test>").line == AUTH_REQUIRED  # no STARTTLS step: TLS already
        assert c.cmd(f"AUTH PLAIN {plain('alice', ALICE_PW)}").line == AUTH_OK
        c.expect("MAIL FROM:<alice@example.test>", 250)
        c.expect("RCPT TO:<friend@remote.test>", 250)
    with implicit_client(m) as c:
        c.ehlo()
        assert auth_login(c, "bob", BOB_PW).line == AUTH_OK


# -- auth: require (submission) --------------------------------------------------------------------


def test_submission_listener_requires_starttls_then_auth(make_mta: Any, cert: tuple[Path, Path], users_file: Path) -> None:
    m = start(make_mta, auth_overrides(cert, users_file), auth="require")
    with SmtpClient(m.port, UNTRUSTED) as c:
        c.greeting()
        c.expect("NOOP", 250)
        c.expect("RSET", 250)
        assert c.cmd("HELO client.test").line == "250 mx.example.test"
        ehlo = c.ehlo()
        assert "STARTTLS" in ehlo.lines and not [x for x in ehlo.lines if x.startswith("AUTH")], ehlo
        for command in ("MAIL FROM:<alice@example.test>", "RCPT TO:<friend@remote.test>", "DATA", "VRFY alice",
                        f"AUTH PLAIN {plain('alice', ALICE_PW)}", "AUTH LOGIN"):  # fmt: skip
            assert c.cmd(command).line == STARTTLS_FIRST, command
        assert c.cmd("QUIT").line == "221 2.0.0 Bye"
    c, ehlo = tls_client(m)
    with c:
        assert "AUTH PLAIN LOGIN" in ehlo.lines, ehlo
        assert c.cmd("MAIL FROM:<alice@example.test>").line == AUTH_REQUIRED
        assert c.cmd("MAIL FROM:<>").line == AUTH_REQUIRED
        assert c.cmd(f"AUTH PLAIN {plain('alice', ALICE_PW)}").line == AUTH_OK
        qid = queue_id_of(c.send_message("alice@example.test", ["friend@remote.test"], b"Subject: submitted\r\n\r\nhi\r\n"))
    head = header_of(m.body(qid))
    assert head[2] == f"\tby mx.example.test (mtaserver) with ESMTPSA id {qid}", head
    assert "X-Originating-IP: [127.0.0.2]" in head
    assert not [h for h in head if h.startswith("X-Authenticated-User")], "add_username_header is false by default"


# -- relay permission and headers -----------------------------------------------------------------


def test_authenticated_outsider_may_relay_with_headers(make_mta: Any, cert: tuple[Path, Path], users_file: Path) -> None:
    m = start(make_mta, auth_overrides(cert, users_file, outbound={"add_username_header": True}))
    c, _ = tls_client(m)
    with c:  # TLS alone is no permission
        c.expect("MAIL FROM:<someone@client.test>", 250)
        assert c.cmd("RCPT TO:<friend@remote.test>").line == "554 5.7.1 <friend@remote.test>: Relay access denied"
        c.expect("RSET", 250)
        assert c.cmd(f"AUTH PLAIN {plain('alice', ALICE_PW)}").line == AUTH_OK
        # RFC 4954 5: the AUTH= parameter of MAIL is accepted (and not trusted)
        assert c.cmd("MAIL FROM:<alice@example.test> AUTH=<>").line == "250 2.1.0 Ok"
        assert c.cmd("RCPT TO:<friend@remote.test>").line == "250 2.1.5 Ok"
        c.expect("DATA", 354)
        c.send(b"Subject: relayed\r\n\r\nhello\r\n.\r\n")
        qid = queue_id_of(c.reply())
    head = header_of(m.body(qid))
    assert head[0] == "Received: from client.test (unknown [127.0.0.2])", head
    assert head[1].startswith("\t(using TLSv1."), head
    assert head[2] == f"\tby mx.example.test (mtaserver) with ESMTPSA id {qid}", head
    assert "X-Originating-IP: [127.0.0.2]" in head, head
    assert "X-Authenticated-User: alice" in head, head
    assert "Subject: relayed" in head
    env = m.envelope(qid)
    assert (env.client.login, env.client.protocol, env.client.trusted) == ("alice", "ESMTPSA", True)
    assert [r.address for r in env.recipients] == ["friend@remote.test"]
    wait_for_log(m, f"{qid}: client=unknown[127.0.0.2], sasl_username=alice")


def test_unauthenticated_outsider_may_not_relay(srv: Mta) -> None:
    with SmtpClient(srv.port, UNTRUSTED).hello() as c:
        c.expect("MAIL FROM:<someone@client.test>", 250)
        assert c.cmd("RCPT TO:<friend@remote.test>").line == "554 5.7.1 <friend@remote.test>: Relay access denied"
        assert c.cmd("RCPT TO:<a@example.test>").line == "250 2.1.5 Ok"  # our own domain is fine


# -- sender login mismatch ------------------------------------------------------------------------


def test_sender_login_mismatch_both_ways(srv: Mta) -> None:
    c, _ = tls_client(srv)
    with c:
        assert c.cmd(f"AUTH PLAIN {plain('alice', ALICE_PW)}").line == AUTH_OK
        assert sender_refused(c, "bob@example.test", "friend@remote.test") == (
            "553 5.7.1 <bob@example.test>: Sender address rejected: not owned by user alice"
        )
        assert sender_refused(c, "someone@client.test", "friend@remote.test") == (
            "553 5.7.1 <someone@client.test>: Sender address rejected: not owned by user alice"
        )
        # the null sender is fine for alice, and so is her own address
        c.expect("MAIL FROM:<>", 250)
        assert c.cmd("RCPT TO:<friend@remote.test>").line == "250 2.1.5 Ok"
        c.expect("RSET", 250)
        c.expect("MAIL FROM:<alice@example.test>", 250)
        assert c.cmd("RCPT TO:<friend@remote.test>").line == "250 2.1.5 Ok"
    with SmtpClient(srv.port, UNTRUSTED).hello() as c:
        assert sender_refused(c, "alice@example.test", "a@example.test") == (
            "553 5.7.1 <alice@example.test>: Sender address rejected: not logged in"
        )
        # an address of ours that nobody owns is not "ours" in this sense
        c.expect("MAIL FROM:<nobody@example.test>", 250)
        assert c.cmd("RCPT TO:<a@example.test>").line == "250 2.1.5 Ok"
    with SmtpClient(srv.port, TRUSTED) as c:  # mynetworks is exempt
        c.greeting()
        c.ehlo()
        c.expect("MAIL FROM:<alice@example.test>", 250)
        assert c.cmd("RCPT TO:<friend@remote.test>").line == "250 2.1.5 Ok"
    log = wait_for_log(srv, "not logged in; from=<alice@example.test>")
    assert "NOQUEUE: reject: " in log


# -- auth.max_failures -----------------------------------------------------------------------------


def test_max_failures_blocks_the_ip_even_with_the_right_password(
    make_mta: Any, cert: tuple[Path, Path], users_file: Path
) -> None:
    m = start(make_mta, auth_overrides(cert, users_file, auth={"max_failures": 3}))
    c, _ = tls_client(m, "127.0.0.3")
    with c:
        assert c.cmd(f"AUTH PLAIN {plain('alice', WRONG_PW)}").line == AUTH_FAILED
        assert auth_login(c, "alice", WRONG_PW).line == AUTH_FAILED
        # syntax errors and cancels are not failures
        assert c.cmd("AUTH PLAIN not#base64!").line == CANNOT_DECODE
        assert c.cmd("AUTH LOGIN").line == "334 VXNlcm5hbWU6"
        assert c.cmd("*").line == ABORTED
    c, _ = tls_client(m, "127.0.0.3")
    with c:  # the third failure, in another connection: counted per IP, not per session
        assert c.cmd(f"AUTH PLAIN {plain('bob', WRONG_PW)}").line == AUTH_FAILED
        assert c.cmd(f"AUTH PLAIN {plain('alice', ALICE_PW)}").line == TOO_MANY
        assert c.closed_by_server(5.0), "the connection stays open after 421"
    c, _ = tls_client(m, "127.0.0.3")
    with c:
        assert auth_login(c, "alice", ALICE_PW).line == TOO_MANY
        assert c.closed_by_server(5.0), "the connection stays open after 421"
    c, _ = tls_client(m, "127.0.0.4")
    with c:
        assert c.cmd(f"AUTH PLAIN {plain('alice', ALICE_PW)}").line == AUTH_OK
    wait_for_log(m, "too many failed authentications from unknown[127.0.0.3]")
    assert_no_secrets(m, secret_forms(ALICE_PW, WRONG_PW, logins=("alice", "bob")))


# -- auth.backend: dovecot -------------------------------------------------------------------------

DOVECOT_USERS = {"alice": "dove-Alice-pw-31d", "carol@example.test": "dove-Carol-pw-8e0"}
TEMPFAIL_PW = "dove-Tempfail-pw-2a9"  # for the login "tempfail", which dovecot_auth.py's passdb fails


@pytest.fixture(scope="module")
def dovecot(tmp_path_factory: pytest.TempPathFactory):
    server = DovecotAuth(DOVECOT_USERS).start()
    yield server
    server.stop(keep_log_in=tmp_path_factory.mktemp("dovecot-auth-log"))


@pytest.mark.parametrize("form", ["host:port", "unix:/path", "/path"])
def test_dovecot_backend_through_the_session(make_mta: Any, cert: tuple[Path, Path], dovecot: DovecotAuth, form: str) -> None:
    socket = {"host:port": dovecot.address, "unix:/path": f"unix:{dovecot.unix_path}", "/path": str(dovecot.unix_path)}[form]
    m = start(make_mta, auth_overrides(cert, None, auth={"backend": "dovecot", "dovecot_socket": socket}))
    c, ehlo = tls_client(m)
    with c:
        assert "AUTH PLAIN LOGIN" in ehlo.lines, ehlo
        assert c.cmd(f"AUTH PLAIN {plain('alice', DOVECOT_USERS['alice'])}").line == AUTH_OK
    c, _ = tls_client(m)
    with c:  # a Dovecot login that is an address of ours owns that address (policy/hooks.py)
        assert auth_login(c, "carol@example.test", DOVECOT_USERS["carol@example.test"]).line == AUTH_OK
        c.expect("MAIL FROM:<carol@example.test>", 250)
        assert c.cmd("RCPT TO:<friend@remote.test>").line == "250 2.1.5 Ok"
    # Dovecot penalises an address that fails: a fresh one per parameter
    bad_ip = {"host:port": "127.0.0.5", "unix:/path": "127.0.0.6", "/path": "127.0.0.7"}[form]
    c, _ = tls_client(m, bad_ip)
    with c:
        assert c.cmd(f"AUTH PLAIN {plain('alice', WRONG_PW)}").line == AUTH_FAILED
        assert auth_login(c, "mallory", WRONG_PW).line == AUTH_FAILED
    c, _ = tls_client(m)
    with c:  # Dovecot's own temporary failure (its passdb fails) is a 454, not a failure
        assert c.cmd(f"AUTH PLAIN {plain('tempfail', TEMPFAIL_PW)}").line == AUTH_TEMPFAIL
    wait_for_log(m, "SASL PLAIN authentication temporarily failed")
    assert "AUTH not offered" not in m.log()
    logins = (*DOVECOT_USERS, "mallory", "tempfail")
    assert_no_secrets(m, secret_forms(*DOVECOT_USERS.values(), TEMPFAIL_PW, WRONG_PW, logins=logins))


def test_dovecot_stopped_is_a_temporary_failure(make_mta: Any, cert: tuple[Path, Path]) -> None:
    dc = DovecotAuth({"alice": "dove-Alice-pw-31d"}).start()
    try:
        auth = {"backend": "dovecot", "dovecot_socket": dc.address, "timeout": "5s"}
        m = start(make_mta, auth_overrides(cert, None, auth=auth))
        c, _ = tls_client(m)
        with c:
            assert c.cmd(f"AUTH PLAIN {plain('alice', 'dove-Alice-pw-31d')}").line == AUTH_OK
        dc.stop_process()
        c, ehlo = tls_client(m)
        with c:
            assert "AUTH PLAIN LOGIN" in ehlo.lines, ehlo  # decided at start; a stop later is a 454 per attempt
            assert c.cmd(f"AUTH PLAIN {plain('alice', 'dove-Alice-pw-31d')}").line == AUTH_TEMPFAIL
            assert auth_login(c, "alice", "dove-Alice-pw-31d").line == AUTH_TEMPFAIL
            c.expect("NOOP", 250)
        # a temporary failure is no failure: the IP is not blocked once Dovecot is back
        dc.start()
        c, _ = tls_client(m)
        with c:
            assert c.cmd(f"AUTH PLAIN {plain('alice', 'dove-Alice-pw-31d')}").line == AUTH_OK
    finally:
        dc.stop()


def test_dovecot_unreachable_at_start_auth_not_offered_until_reload(make_mta: Any, cert: tuple[Path, Path]) -> None:
    dc = DovecotAuth({"alice": "dove-Alice-pw-31d"})  # its port is chosen; Dovecot is not running yet
    try:
        m = start(make_mta, auth_overrides(cert, None, auth={"backend": "dovecot", "dovecot_socket": dc.address}))
        wait_for_log(m, "AUTH not offered")
        c, ehlo = tls_client(m)
        with c:
            assert not [x for x in ehlo.lines if x.startswith("AUTH")], f"AUTH offered without Dovecot: {ehlo}"
            r = c.cmd(f"AUTH PLAIN {plain('alice', 'dove-Alice-pw-31d')}")
            assert r.line == "503 5.5.1 Error: authentication not enabled"
        dc.start()
        before = m.log().count("reload: applied")
        m.signal(signal.SIGHUP)
        wait_for_log(m, re.compile("(?s)" + "reload: applied.*" * (before + 1)))
        c, ehlo = tls_client(m)
        with c:
            assert "AUTH PLAIN LOGIN" in ehlo.lines, f"a reload that finds Dovecot offers AUTH: {ehlo}"
            assert c.cmd(f"AUTH PLAIN {plain('alice', 'dove-Alice-pw-31d')}").line == AUTH_OK
    finally:
        dc.stop()


# -- SIGHUP, the log, the shipped config ----------------------------------------------------------


def test_sighup_reloads_the_users_file(make_mta: Any, cert: tuple[Path, Path], tmp_path: Path) -> None:
    users = write_users(tmp_path / "users.yaml", {"alice": USERS["alice"]})
    m = start(make_mta, auth_overrides(cert, users))
    c, _ = tls_client(m)
    with c:
        assert c.cmd(f"AUTH PLAIN {plain('carol', CAROL_PW)}").line == AUTH_FAILED
    write_users(users, {"alice": USERS["alice"], "carol": (CAROL_PW, ["carol@example.test"])})
    m.signal(signal.SIGHUP)
    wait_for_log(m, "reload: applied")
    c, _ = tls_client(m)
    with c:
        assert c.cmd(f"AUTH PLAIN {plain('carol', CAROL_PW)}").line == AUTH_OK
        c.expect("MAIL FROM:<carol@example.test>", 250)  # her new address is hers at once
        assert c.cmd("RCPT TO:<friend@remote.test>").line == "250 2.1.5 Ok"
    c, _ = tls_client(m)
    with c:
        assert auth_login(c, "alice", ALICE_PW).line == AUTH_OK
    assert_no_secrets(m, secret_forms(ALICE_PW, CAROL_PW, logins=("alice", "carol")))


def test_no_password_in_the_log(make_mta: Any, cert: tuple[Path, Path], users_file: Path) -> None:
    """Every kind of AUTH line the server sees, then the raw log bytes searched for the secrets."""
    m = start(make_mta, auth_overrides(cert, users_file, auth={"max_failures": 3}))
    c, _ = tls_client(m, "127.0.0.8")
    with c:
        c.cmd(f"AUTH PLAIN {plain('alice', WRONG_PW)}")
        auth_login(c, "bob", WRONG_PW)
        c.cmd(f"AUTH PLAIN {plain('no-such-user', WRONG_PW)}")
        c.cmd(f"AUTH PLAIN {plain('alice', ALICE_PW)}")  # blocked: 421, the password still arrived
    c, _ = tls_client(m)
    with c:
        assert c.cmd("AUTH LOGIN " + b64("alice")).line == "334 UGFzc3dvcmQ6"  # the username as initial response
        assert c.cmd(b64(ALICE_PW)).line == AUTH_OK
    c, _ = tls_client(m)
    with c:
        c.cmd(f"AUTH PLAIN {b64('bob' + chr(0) + 'alice' + chr(0) + BOB_PW)}")  # alice acting for bob: refused
        c.cmd("AUTH PLAIN " + b64(BOB_PW) + "!!")  # undecodable, yet holding the secret's base64
    with SmtpClient(m.port, UNTRUSTED) as c:  # in plaintext: refused, still must not be logged
        c.greeting()
        c.ehlo()
        assert c.cmd(f"AUTH PLAIN {plain('bob', BOB_PW)}").line == ENCRYPTION
        c.cmd("QUIT")
    wait_for_log(m, "disconnect from unknown[127.0.0.2]")
    wait_for_log(m, "sasl_username=alice")
    assert_no_secrets(m, secret_forms(ALICE_PW, BOB_PW, WRONG_PW, logins=("alice", "bob", "no-such-user")))


def test_shipped_submission_block_passes_check_config(cert: tuple[Path, Path], users_file: Path, tmp_path: Path) -> None:
    shipped = (REPO / "conf" / "mtaserver.yaml").read_text()
    commented = re.compile(r"^(\s*)# (- \{name: submission,.*auth: require\})\s*$", re.MULTILINE)
    m = commented.search(shipped)
    assert m, "conf/mtaserver.yaml has no commented-out submission listener with auth: require"
    text = commented.sub(r"\1\2", shipped, count=1)
    crt, key = cert
    text = re.sub(r"(?m)^(    cert:) null", rf"\1 {crt}", text, count=1)
    text = re.sub(r"(?m)^(    key:) null", rf"\1 {key}", text, count=1)
    text = re.sub(r"(?m)^(  users_file:) null", rf"\1 {users_file}", text, count=1)
    variant = tmp_path / "mtaserver.yaml"
    variant.write_text(text)
    cfg = yaml.safe_load(text)
    [sub] = [x for x in cfg["server"]["listeners"] if x["name"] == "submission"]
    assert (sub["tls"], sub["auth"], sub["postscreen"]) == ("starttls", "require", False)
    assert (cfg["server"]["tls"]["cert"], cfg["auth"]["users_file"]) == (str(crt), str(users_file))

    def check(path: Path) -> subprocess.CompletedProcess[str]:
        cmd = [sys.executable, "-m", "mtaserver", "check-config", "-c", str(path)]
        return subprocess.run(cmd, check=False, capture_output=True, text=True, timeout=60, cwd=tmp_path)

    out = check(variant)
    assert (out.returncode, out.stdout.strip()) == (0, "ok"), out.stderr
    # The check can fail: the same listener without a users file is refused at its line.
    bare = tmp_path / "no-users.yaml"
    bare.write_text(re.sub(r"(?m)^(  users_file:) .*$", r"\1 null", text, count=1))
    out = check(bare)
    line = text[: m.start()].count("\n") + 1
    expected = f"{bare}:{line}: server.listeners[1].auth: require needs auth.users_file"
    assert out.returncode == 1 and expected in out.stderr, out.stderr

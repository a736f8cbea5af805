"""The SMTP AUTH exchange (PLAIN, LOGIN) and every reply of CONFIG.md's authentication table."""

import base64

import pytest

from mtaserver import model
from mtaserver.auth import sasl
from mtaserver.auth.sasl import AUTH_LINE_MAX, Challenge, Credentials, Failed

OFFERED = ("PLAIN", "LOGIN")


def b64(data: bytes | str) -> str:
    return base64.b64encode(data.encode() if isinstance(data, str) else data).decode()


def line(data: bytes | str) -> bytes:
    return b64(data).encode() + b"\r\n"


CATALOGUE = {  # CONFIG.md "Authentication replies", word for word, in model.py's catalogue
    "ENCRYPTION_REQUIRED": "538 5.7.11 Encryption required for requested authentication mechanism",
    "STARTTLS_FIRST": "530 5.7.0 Must issue a STARTTLS command first",
    "AUTH_REQUIRED": "530 5.7.0 Authentication required",
    "ALREADY_AUTHENTICATED": "503 5.5.1 Error: already authenticated",
    "NEED_HELO": "503 5.5.1 Error: send HELO/EHLO first",
    "IN_TRANSACTION": "503 5.5.1 Error: MAIL transaction in progress",
    "UNSUPPORTED_MECHANISM": "504 5.5.4 Unsupported authentication mechanism",
    "AUTH_ABORTED": "501 5.7.0 Authentication aborted",
    "CANNOT_DECODE": "501 5.5.2 Cannot decode response",
    "LINE_TOO_LONG": "500 5.5.6 Authentication exchange line is too long",
    "AUTH_FAILED": "535 5.7.8 Error: authentication failed",
    "AUTH_OK": "235 2.7.0 Authentication successful",
    "AUTH_TEMPFAIL": "454 4.7.0 Temporary authentication failure",
    "TOO_MANY_FAILURES": "421 4.7.0 Error: too many failed authentications",
}


@pytest.mark.parametrize("name", sorted(CATALOGUE))
def test_reply_catalogue(name):
    assert getattr(model, name).line() == CATALOGUE[name]


def test_the_line_limit_is_rfc_4954s():
    assert AUTH_LINE_MAX == 12288


# --- PLAIN


def test_plain_with_initial_response():
    ex, step = sasl.start("PLAIN", b64("\0alice\0s3cret"), OFFERED)
    assert step == Credentials("", "alice", "s3cret")
    assert ex.done


def test_plain_with_authzid_equal_to_the_login():
    _, step = sasl.start("plain", b64("alice\0alice\0pw"), OFFERED)
    assert step == Credentials("alice", "alice", "pw")


def test_plain_with_another_authzid_is_refused_as_a_failed_authentication():
    _, step = sasl.start("PLAIN", b64("bob\0alice\0pw"), OFFERED)
    assert step == Failed(sasl.AUTH_FAILED)


def test_plain_without_initial_response_sends_an_empty_challenge():
    ex, step = sasl.start("PLAIN", None, OFFERED)
    assert step == Challenge("")
    assert not ex.done
    assert ex.respond(line("\0alice\0pw")) == Credentials("", "alice", "pw")
    assert ex.done


def test_plain_utf8_credentials():
    _, step = sasl.start("PLAIN", b64("\0jürgen\0pässwörd €".encode()), OFFERED)
    assert step == Credentials("", "jürgen", "pässwörd €")


def test_plain_password_may_hold_spaces_and_tabs():
    _, step = sasl.start("PLAIN", b64("\0a\0 two words\t"), OFFERED)
    assert isinstance(step, Credentials) and step.password == " two words\t"


@pytest.mark.parametrize(
    "message",
    [b"", b"alice", b"\0alice", b"\0alice\0", b"\0\0pw", b"a\0b\0c\0d", b"\0al\xffce\0pw", b"\0alice\0\xc3"],
    ids=["empty", "no-nul", "one-nul", "empty-password", "empty-login", "three-nuls", "bad-utf8-login", "bad-utf8-pw"],
)
def test_malformed_plain_message(message):
    _, step = sasl.start("PLAIN", b64(message) if message else "=", OFFERED)
    assert step == Failed(sasl.CANNOT_DECODE)
    ex, step = sasl.start("PLAIN", None, OFFERED)
    assert ex.respond(line(message)) == Failed(sasl.CANNOT_DECODE)


def test_equals_sign_is_an_empty_initial_response():
    # PLAIN with an empty message is malformed (no NULs): proof that "=" was taken as empty, not as base64.
    _, step = sasl.start("PLAIN", "=", OFFERED)
    assert step == Failed(sasl.CANNOT_DECODE)
    ex, step = sasl.start("LOGIN", "=", OFFERED)
    assert step == Challenge(sasl.PASSWORD_CHALLENGE)  # the username was the empty string
    assert ex.respond(line("pw")) == Credentials("", "", "pw")


# --- LOGIN


def test_login_challenges_and_credentials():
    ex, step = sasl.start("LOGIN", None, OFFERED)
    assert step == Challenge("VXNlcm5hbWU6")
    assert base64.b64decode(step.text) == b"Username:"
    step = ex.respond(line("alice"))
    assert step == Challenge("UGFzc3dvcmQ6")
    assert base64.b64decode(step.text) == b"Password:"
    assert ex.respond(line("s3cret")) == Credentials("", "alice", "s3cret")
    assert ex.done


def test_login_initial_response_is_the_username():
    ex, step = sasl.start("login", b64("alice"), OFFERED)
    assert step == Challenge(sasl.PASSWORD_CHALLENGE)
    assert ex.respond(b64("pw").encode()) == Credentials("", "alice", "pw")  # no CRLF: also fine


def test_login_refuses_nul_and_bad_utf8():
    ex, _ = sasl.start("LOGIN", None, OFFERED)
    assert ex.respond(line("al\0ice")) == Failed(sasl.CANNOT_DECODE)
    ex, _ = sasl.start("LOGIN", b64("alice"), OFFERED)
    assert ex.respond(line(b"\xff\xfe")) == Failed(sasl.CANNOT_DECODE)


def test_respond_after_the_end_is_a_bug():
    ex, _ = sasl.start("PLAIN", b64("\0a\0b"), OFFERED)
    with pytest.raises(RuntimeError):
        ex.respond(b"x\r\n")


# --- the error replies


@pytest.mark.parametrize("mechanism", ["CRAM-MD5", "GSSAPI", "XOAUTH2", "PLAINX", "", "ANONYMOUS"])
def test_unknown_mechanism(mechanism):
    ex, step = sasl.start(mechanism, None, OFFERED)
    assert step == Failed(sasl.UNSUPPORTED_MECHANISM)
    assert ex.done


def test_a_known_mechanism_not_offered_here_is_unsupported():
    _, step = sasl.start("LOGIN", b64("alice"), ("PLAIN",))
    assert step == Failed(sasl.UNSUPPORTED_MECHANISM)


def test_client_cancels_with_a_star():
    for mech in OFFERED:
        ex, _ = sasl.start(mech, None, OFFERED)
        assert ex.respond(b"*\r\n") == Failed(sasl.AUTH_ABORTED)
        assert ex.done
    ex, _ = sasl.start("LOGIN", None, OFFERED)
    ex.respond(line("alice"))
    assert ex.respond(b"*\r\n") == Failed(sasl.AUTH_ABORTED)
    _, step = sasl.start("PLAIN", "*", OFFERED)
    assert step == Failed(sasl.AUTH_ABORTED)


@pytest.mark.parametrize(
    "text",
    [b"not base64!", b"YWxpY2U", b"YW=xp", b"\xc3\xa9", b"YWxp Y2U=", b"=", b"YWxpY2U=\0"],
    ids=["punctuation", "no-padding", "padding-inside", "non-ascii", "inner-space", "lone-equals", "nul"],
)
def test_bad_base64(text):
    ex, _ = sasl.start("LOGIN", None, OFFERED)
    assert ex.respond(text + b"\r\n") == Failed(sasl.CANNOT_DECODE)
    assert ex.done


def test_bad_base64_in_initial_response():
    _, step = sasl.start("PLAIN", "AGFsaWNlAHB3!", OFFERED)
    assert step == Failed(sasl.CANNOT_DECODE)
    _, step = sasl.start("LOGIN", "bäd", OFFERED)
    assert step == Failed(sasl.CANNOT_DECODE)


def test_response_line_limit():
    ex, _ = sasl.start("PLAIN", None, OFFERED)
    over = b"A" * (AUTH_LINE_MAX - 1) + b"\r\n"  # 12,289 octets with CRLF
    assert ex.respond(over) == Failed(sasl.LINE_TOO_LONG)
    assert ex.done
    # The longest allowed line, CRLF included, is decoded.
    password = "p" * 9000
    at_limit = line(f"\0alice\0{password}")
    assert len(at_limit) <= AUTH_LINE_MAX
    ex, _ = sasl.start("PLAIN", None, OFFERED)
    assert ex.respond(at_limit) == Credentials("", "alice", password)


def test_initial_response_line_limit_counts_the_whole_command_line():
    room = AUTH_LINE_MAX - len("AUTH PLAIN \r\n")
    ok = b64("\0a\0" + "p" * 9000)
    assert len(ok) <= room
    assert isinstance(sasl.start("PLAIN", ok, OFFERED)[1], Credentials)
    _, step = sasl.start("PLAIN", "A" * (room + 1), OFFERED)
    assert step == Failed(sasl.LINE_TOO_LONG)


# --- splits: every way a client may cut the exchange gives the same credentials


@pytest.mark.parametrize("login,password", [("alice", "pw"), ("bob@example.test", "with space"), ("ü", "€" * 50)])
def test_every_path_gives_the_same_credentials(login, password):
    want = Credentials("", login, password)
    results = [
        sasl.start("PLAIN", b64(f"\0{login}\0{password}"), OFFERED)[1],
    ]
    ex, _ = sasl.start("PLAIN", None, OFFERED)
    results.append(ex.respond(line(f"\0{login}\0{password}")))
    ex, _ = sasl.start("LOGIN", None, OFFERED)
    ex.respond(line(login))
    results.append(ex.respond(line(password)))
    ex, _ = sasl.start("LOGIN", b64(login), OFFERED)
    results.append(ex.respond(line(password)))
    assert results == [want] * 4


def test_credentials_repr_hides_the_password():
    text = repr(Credentials("", "alice", "hunter2"))
    assert "hunter2" not in text and "alice" in text


def test_encode_makes_the_login_challenges():
    assert sasl.encode("Username:") == sasl.USERNAME_CHALLENGE
    assert sasl.encode("Password:") == sasl.PASSWORD_CHALLENGE

"""Dovecot's auth protocol, the pure parts: escaping, the request line, replies, the handshake."""

import base64

import pytest

from mtaserver.auth import dovecot
from mtaserver.auth.dovecot import DovecotReply, DovecotUnavailable, Handshake


def test_client_hello():
    assert dovecot.client_hello(4242) == b"VERSION\t1\t2\nCPID\t4242\n"


def test_auth_request_line():
    line = dovecot.auth_request(7, "alice", "pw", client_ip="192.0.2.7", local_ip="198.51.100.1", secured=True)
    assert line.endswith(b"\n") and line.count(b"\n") == 1
    fields = line.rstrip(b"\n").decode().split("\t")
    assert fields[:5] == ["AUTH", "7", "PLAIN", "service=smtp", "nologin"]
    assert fields[5:8] == ["lip=198.51.100.1", "rip=192.0.2.7", "secured"]
    assert fields[-1].startswith("resp=")  # must be the last parameter
    assert base64.b64decode(fields[-1][5:]) == b"\0alice\0pw"


def test_auth_request_without_tls_or_addresses():
    fields = dovecot.auth_request(1, "a", "b", client_ip="", local_ip="", secured=False).decode().split("\t")
    assert "secured" not in fields and not any(f.startswith(("lip=", "rip=")) for f in fields)


def test_credentials_with_tabs_and_newlines_cannot_inject_fields():
    line = dovecot.auth_request(1, "a\tuser=root", "p\nAUTH\t2", client_ip="::1", local_ip="::1", secured=False)
    assert line.count(b"\n") == 1 and line.count(b"\t") == 7
    resp = line.rstrip(b"\n").split(b"\t")[-1]
    assert base64.b64decode(resp[5:]) == b"\0a\tuser=root\0p\nAUTH\t2"


def test_utf8_credentials_travel_as_utf8():
    line = dovecot.auth_request(1, "jürgen", "pä€", client_ip="", local_ip="", secured=True)
    assert base64.b64decode(line.rstrip(b"\n").split(b"\t")[-1][5:]) == "\0jürgen\0pä€".encode()


@pytest.mark.parametrize("raw", ["plain", "tab\there", "nl\nx", "cr\rx", "soh\x01x", "nul\0x", "\x01\t\r\n\0"])
def test_escape_round_trip(raw):
    escaped = dovecot.escape(raw)
    assert not any(c in escaped for c in "\t\r\n\0")
    assert dovecot.unescape(escaped) == raw


def test_unescape_dovecot_forms():
    assert dovecot.unescape("a\x01tb\x01nc\x01ld\x01re\x010f\x011g") == "a\tb\nc\nd\re\0f\x01g"
    assert dovecot.unescape("x\x01zy") == "xzy"  # anything else: the character itself
    assert dovecot.unescape("trailing\x01") == "trailing\x01"


def test_handshake_of_dovecot_2_3():
    state: dict = {}
    lines = ["VERSION\t1\t2", "MECH\tPLAIN\tplaintext", "MECH\tLOGIN\tplaintext", "SPID\t123", "CUID\t4",
             "COOKIE\t0123456789abcdef0123456789abcdef"]  # fmt: skip
    for line in lines:
        assert dovecot.parse_handshake_line(line, state) is None
    assert dovecot.parse_handshake_line("DONE", state) == Handshake(1, frozenset({"PLAIN", "LOGIN"}))


@pytest.mark.parametrize("line", ["VERSION\t2\t0", "VERSION\tx\t1", "VERSION"])
def test_handshake_with_another_major_version_or_garbage(line):
    with pytest.raises(DovecotUnavailable):
        dovecot.parse_handshake_line(line, {})


def test_handshake_without_version():
    with pytest.raises(DovecotUnavailable):
        dovecot.parse_handshake_line("DONE", {})


@pytest.mark.parametrize(
    "line,expected",
    [
        ("OK\t7\tuser=alice", ("OK", 7, DovecotReply(True, "alice"))),
        ("OK\t7\tuser=al\x01tice\tnologin", ("OK", 7, DovecotReply(True, "al\tice"))),
        ("OK\t8", ("OK", 8, DovecotReply(True, None))),
        ("FAIL\t9\tuser=alice", ("FAIL", 9, DovecotReply(False, "alice", False, "refused"))),
        ("FAIL\t9\tcode=temp_fail\tuser=alice", ("FAIL", 9, DovecotReply(False, "alice", True, "temp_fail"))),
        ("FAIL\t9\ttemp", ("FAIL", 9, DovecotReply(False, None, True, "temporary failure"))),
        ("FAIL\t9\tcode=user_disabled", ("FAIL", 9, DovecotReply(False, None, False, "user_disabled"))),
        ("FAIL\t9\treason=Plaintext authentication disabled",
         ("FAIL", 9, DovecotReply(False, None, False, "Plaintext authentication disabled"))),
        ("FAIL\t3\treason=Authentication request timed out", ("FAIL", 3, DovecotReply(False, None, False,
                                                                                    "Authentication request timed out"))),
        ("CONT\t4\tAAAA", ("CONT", 4, None)),
        ("OK", ("OK", 0, None)),
        ("NEWTHING\t5\tx", ("NEWTHING", 5, None)),
    ],
)  # fmt: skip
def test_parse_reply(line, expected):
    assert dovecot.parse_reply(line) == expected

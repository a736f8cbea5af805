"""The pure parts of the LMTP client: reply parsing, extensions, DATA encoding, commands.
(Whole sessions against a scripted server on a real socket: tests/integration/test_lmtp_sessions.py.)
"""

from __future__ import annotations

import re

import pytest

from mtaserver.delivery import lmtp
from mtaserver.delivery.wire import ProtocolError, data_payload, extensions, from_reply, needs_utf8, parse_reply, parse_reply_line
from mtaserver.model import Fate

# -- replies ---------------------------------------------------------------------------------


def test_reply_line_forms():
    assert parse_reply_line(b"250 2.0.0 Ok") == (250, True, "2.0.0 Ok")
    assert parse_reply_line(b"250-PIPELINING") == (250, False, "PIPELINING")
    assert parse_reply_line(b"250") == (250, True, "")
    assert parse_reply_line(b"250 ") == (250, True, "")
    assert parse_reply_line(b"550 5.1.1 <a@b> User\tunknown") == (550, True, "5.1.1 <a@b> User\tunknown")


@pytest.mark.parametrize(
    "line",
    [
        b"",
        b"25",
        b"2500 Ok",  # no separator
        b"250Ok",
        b"abc Ok",
        b"650 no such class",
        b"150 no such class",
        b" 250 Ok",
        b"250 Ok\r",  # a stray CR
        b"250 Ok\x00",
        b"250 Ok\x1b[31m",  # terminal escape
        b"250 Ok\x7f",
        b"250 caf\xc3\xa9",  # UTF-8 without SMTPUTF8
        b"250 \xff\xfe",
    ],
)
def test_bad_reply_lines_are_protocol_errors(line):
    with pytest.raises(ProtocolError):
        parse_reply_line(line)


def test_utf8_text_only_after_smtputf8_and_never_controls():
    assert parse_reply_line(b"250 caf\xc3\xa9", utf8=True) == (250, True, "café")
    with pytest.raises(ProtocolError):
        parse_reply_line(b"250 \xff", utf8=True)  # not UTF-8
    with pytest.raises(ProtocolError):
        parse_reply_line("250 x\u0085y".encode(), utf8=True)  # C1 control (NEL)
    with pytest.raises(ProtocolError):
        parse_reply_line("250 caf\u00e9\x07".encode(), utf8=True)


def test_multi_line_reply():
    r = parse_reply([b"250-mx.example.test", b"250-8BITMIME", b"250-SIZE 1000", b"250 PIPELINING"])
    assert r.code == 250
    assert r.lines == ("mx.example.test", "8BITMIME", "SIZE 1000", "PIPELINING") and r.status == ""
    assert r.line() == "250 mx.example.test 8BITMIME SIZE 1000 PIPELINING"
    assert r.encode() == b"250-mx.example.test\r\n250-8BITMIME\r\n250-SIZE 1000\r\n250 PIPELINING\r\n"
    assert extensions(r) == {"8BITMIME": "", "SIZE": "1000", "PIPELINING": ""}


def test_enhanced_status_is_the_first_lines_and_comes_off_every_line():
    lines = [b"452-4.2.2 <a@example.test> Mailbox is full", b"452-4.2.2 ", b"452 4.2.2 try later"]
    r = parse_reply(lines)
    assert (r.code, r.status, r.lines) == (452, "4.2.2", ("<a@example.test> Mailbox is full", "", "try later"))
    assert r.encode() == b"".join(line + b"\r\n" for line in lines)  # what came is what we would send
    assert r.line() == "452 4.2.2 <a@example.test> Mailbox is full try later"
    assert parse_reply([b"550 4.1.1 wrong class"]).status == "5.1.1"  # the class digit follows the code
    assert parse_reply([b"250 2.0.0x not a status"]).status == ""


def test_multi_line_reply_becomes_one_outcome_with_its_status():
    r = parse_reply([b"452-4.2.2 <a@example.test> Mailbox is full", b"452 try later"])
    o = from_reply(r, "lmtp:127.0.0.1:24")
    assert o.fate is Fate.DEFERRED and o.status == "4.2.2"
    assert o.text == "452 4.2.2 <a@example.test> Mailbox is full try later"


@pytest.mark.parametrize(
    "lines",
    [
        [],
        [b"250-a", b"251 b"],  # the code changes
        [b"250-a", b"250-b"],  # never ends
        [b"250 a", b"250 b"],  # goes on after its last line
    ],
)
def test_bad_multi_line_replies(lines):
    with pytest.raises(ProtocolError):
        parse_reply(lines)


def test_extension_keywords_are_case_insensitive():
    r = parse_reply([b"250-host", b"250-pipelining", b"250 smtputf8"])
    assert set(extensions(r)) == {"PIPELINING", "SMTPUTF8"}


# -- DATA ------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "body, wire",
    [
        (b"Subject: x\r\n\r\nhello\r\n", b"Subject: x\r\n\r\nhello\r\n.\r\n"),
        (b".\r\n", b"..\r\n.\r\n"),  # a lone dot is content
        (b".starts\r\nmid.dle\r\n.\r\n..\r\n", b"..starts\r\nmid.dle\r\n..\r\n...\r\n.\r\n"),
        (b"no final newline", b"no final newline\r\n.\r\n"),
        (b"a\r\n.", b"a\r\n..\r\n.\r\n"),  # ends in a dot, no CRLF
        (b"", b".\r\n"),
        (b"\r\n", b"\r\n.\r\n"),
    ],
)
def test_data_payload_stuffs_and_terminates(body, wire):
    assert data_payload(body) == wire


@pytest.mark.parametrize(
    "body, wire",
    [
        (b"a\n.\nb\n", b"a\r\n..\r\nb\r\n.\r\n"),  # bare LF: no end of data smuggled through
        (b"a\r.\rb", b"a\r\n..\r\nb\r\n.\r\n"),  # bare CR
        (b"a\r\n.\nb\r\n", b"a\r\n..\r\nb\r\n.\r\n"),  # <CRLF>.<LF>
        (b"a\n.\r\nb\r\n", b"a\r\n..\r\nb\r\n.\r\n"),  # <LF>.<CRLF>
        (b"a\r\r\n", b"a\r\n\r\n.\r\n"),
    ],
)
def test_data_payload_makes_every_line_ending_crlf(body, wire):
    assert data_payload(body) == wire


def test_data_payload_never_contains_an_early_end_of_data():
    body = b"x\r\n.\r\n.\n.\r.\r\n\r\n..\r\n"
    wire = data_payload(body)
    assert wire.endswith(b"\r\n.\r\n") and wire.count(b"\r\n.\r\n") == 1
    assert re.search(rb"(?<!\r)\n|\r(?!\n)", wire) is None


def test_data_payload_of_a_large_body_stuffs_every_line():
    body = (b"." + b"x" * 70 + b"\r\n") * 100_000
    wire = data_payload(body)
    assert len(wire) == len(body) + 100_000 + 3


def test_needs_utf8():
    ascii_msg = b"Subject: x\r\n\r\nbody with caf\xc3\xa9\r\n"
    assert needs_utf8("s@client.test", ["a@example.test"], ascii_msg) == (False, set())
    assert needs_utf8("s@client.test", ["\u00fc@example.test", "a@example.test"], ascii_msg) == (False, {"\u00fc@example.test"})
    assert needs_utf8("\u00fc@client.test", ["a@example.test"], ascii_msg)[0]
    assert needs_utf8("s@client.test", ["a@example.test"], b"Subject: caf\xc3\xa9\r\n\r\nx\r\n")[0]


def test_commands_refuse_control_characters():
    assert lmtp.command("RCPT TO:", "<a@example.test>") == b"RCPT TO:<a@example.test>\r\n"
    assert lmtp.command("MAIL FROM:", "<>", ["BODY=8BITMIME", "SIZE=10"]) == b"MAIL FROM:<> BODY=8BITMIME SIZE=10\r\n"
    for bad in ("<a@b>\r\nRCPT TO:<c@d>", "<a\n@b>", "<a\x00@b>"):
        with pytest.raises(ValueError):
            lmtp.command("RCPT TO:", bad)

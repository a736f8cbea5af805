"""The pure parts of the LMTP client: reply parsing, extensions, DATA encoding, commands.

Plus a few sessions against a scripted in-process server (a real socket on 127.0.0.1), for the
per-recipient logic that only shows in a whole conversation: replies after DATA, pipelining,
a refused MAIL, a lost connection, garbage, a timeout.
"""

from __future__ import annotations

import asyncio
import re

import pytest

from conftest import free_port

from mtaserver.config import Endpoint
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


# -- whole sessions against a scripted server ------------------------------------------------


class Script:
    """An LMTP server that answers each command line from a table and records what it got."""

    def __init__(self, *, greeting=b"220 lmtp.test ready\r\n", lhlo=b"250-lmtp.test\r\n250-8BITMIME\r\n250 PIPELINING\r\n",
                 rcpt=None, mail=b"250 2.1.0 Ok\r\n", data=b"354 go\r\n", after_data=None, hang_after=None):  # fmt: skip
        self.greeting, self.lhlo, self.mail, self.data = greeting, lhlo, mail, data
        self.rcpt = rcpt or {}  # address -> reply
        self.after_data = after_data  # address -> reply, or None: 250 for all
        self.hang_after = hang_after  # a command verb after which the server goes silent
        self.lines: list[bytes] = []
        self.content = b""
        self.accepted: list[str] = []

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.write(self.greeting)
        while True:
            line = await reader.readline()
            if not line:
                break
            self.lines.append(line)
            verb = line[:4].upper()
            if self.hang_after and verb == self.hang_after:
                await asyncio.sleep(10)
            if verb == b"LHLO":
                writer.write(self.lhlo)
            elif verb == b"MAIL":
                writer.write(self.mail)
            elif verb == b"RCPT":
                addr = line.decode()[9:].strip().strip("<>")
                reply = self.rcpt.get(addr, b"250 2.1.5 Ok\r\n")
                if reply.startswith(b"2"):
                    self.accepted.append(addr)
                writer.write(reply)
            elif verb == b"DATA":
                writer.write(self.data)
                if not self.data.startswith(b"354"):
                    continue
                while (chunk := await reader.readline()) != b".\r\n":
                    if not chunk:
                        return
                    self.content += chunk
                for a in self.accepted:
                    reply = (self.after_data or {}).get(a, f"250 2.0.0 <{a}> Saved\r\n".encode())
                    if not reply:  # b"": hang up here
                        await writer.drain()
                        writer.close()
                        return
                    writer.write(reply)
            elif verb == b"QUIT":
                writer.write(b"221 2.0.0 Bye\r\n")
                break
            await writer.drain()
        writer.close()


async def run_session(script: Script, rcpts: list[str], body: bytes = b"Subject: t\r\n\r\n.hi\r\n", **kw):
    server = await asyncio.start_server(script.handle, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    try:
        return await lmtp.deliver(Endpoint("127.0.0.1", port), sender="s@client.test", recipients=rcpts, body=body, lhlo_name="mx.test", **kw)
    finally:
        server.close()


async def test_one_reply_per_accepted_recipient_after_data():
    s = Script(
        rcpt={"nobody@example.test": b"550 5.1.1 <nobody@example.test> User doesn't exist\r\n"},
        after_data={"full@example.test": b"452 4.2.2 <full@example.test> Quota exceeded\r\n"},
    )
    out = await run_session(s, ["good@example.test", "nobody@example.test", "full@example.test"])
    assert out["good@example.test"].fate is Fate.SENT and out["good@example.test"].status == "2.0.0"
    assert out["nobody@example.test"].fate is Fate.BOUNCED and out["nobody@example.test"].status == "5.1.1"
    assert out["full@example.test"].fate is Fate.DEFERRED and out["full@example.test"].status == "4.2.2"
    assert out["good@example.test"].remote.startswith("lmtp:127.0.0.1:")
    assert s.content == b"Subject: t\r\n\r\n..hi\r\n"
    assert s.lines[0] == b"LHLO mx.test\r\n" and s.lines[-1] == b"QUIT\r\n"


async def test_8bitmime_only_when_asked_for_and_offered():
    s = Script()
    await run_session(s, ["a@example.test"], eightbit=True)
    assert s.lines[1] == b"MAIL FROM:<s@client.test> BODY=8BITMIME\r\n"
    s = Script(lhlo=b"250 lmtp.test\r\n")
    await run_session(s, ["a@example.test"], eightbit=True)
    assert s.lines[1] == b"MAIL FROM:<s@client.test>\r\n"


async def test_smtputf8_not_offered():
    s = Script()
    out = await run_session(s, ["\u00fc@example.test", "a@example.test"], smtputf8=True)
    assert out["\u00fc@example.test"].fate is Fate.BOUNCED and out["\u00fc@example.test"].status == "5.6.7"
    assert out["a@example.test"].fate is Fate.SENT  # an ASCII recipient of an ASCII-header message still goes
    assert b"SMTPUTF8" not in s.lines[1]


async def test_smtputf8_offered():
    s = Script(lhlo=b"250-lmtp.test\r\n250-SMTPUTF8\r\n250 PIPELINING\r\n")
    out = await run_session(s, ["\u00fc@example.test"], smtputf8=True)
    assert out["\u00fc@example.test"].fate is Fate.SENT
    assert s.lines[1] == b"MAIL FROM:<s@client.test> SMTPUTF8\r\n"
    assert s.lines[2] == "RCPT TO:<\u00fc@example.test>\r\n".encode()


@pytest.mark.parametrize("pipelining", [True, False])
async def test_refused_mail_from_refuses_every_recipient(pipelining):
    lhlo = b"250-lmtp.test\r\n250 PIPELINING\r\n" if pipelining else b"250 lmtp.test\r\n"
    s = Script(lhlo=lhlo, mail=b"550 5.7.1 sender refused\r\n", rcpt={"a@example.test": b"503 5.5.1 MAIL first\r\n", "b@example.test": b"503 5.5.1 MAIL first\r\n"})
    out = await run_session(s, ["a@example.test", "b@example.test"])
    assert {o.status for o in out.values()} == {"5.7.1"} and {o.fate for o in out.values()} == {Fate.BOUNCED}
    assert not any(line.startswith(b"DATA") for line in s.lines)


async def test_no_data_when_no_recipient_was_accepted():
    s = Script(rcpt={"a@example.test": b"550 5.1.1 unknown\r\n"})
    out = await run_session(s, ["a@example.test"])
    assert out["a@example.test"].fate is Fate.BOUNCED
    assert not any(line.startswith(b"DATA") for line in s.lines)


async def test_data_refused():
    s = Script(data=b"451 4.3.0 try later\r\n")
    out = await run_session(s, ["a@example.test", "b@example.test"])
    assert {(o.fate, o.status) for o in out.values()} == {(Fate.DEFERRED, "4.3.0")}


async def test_refused_greeting_defers():
    s = Script(greeting=b"554 5.3.2 go away\r\n")
    out = await run_session(s, ["a@example.test"])
    o = out["a@example.test"]
    assert o.fate is Fate.DEFERRED and o.status == "4.3.2" and "refused to talk to me: 554 5.3.2 go away" in o.text


async def test_garbage_reply_defers_as_protocol_error():
    s = Script(lhlo=b"250-lmtp.test\r\n250 PIPE\x1bLINING\r\n")
    out = await run_session(s, ["a@example.test"])
    o = out["a@example.test"]
    assert o.fate is Fate.DEFERRED and o.status == "4.5.0" and "protocol error" in o.text and "\x1b" not in o.text


async def test_lost_after_data_keeps_the_replies_that_arrived():
    s = Script(after_data={"b@example.test": b""})  # a's reply, then the server closes
    out = await run_session(s, ["a@example.test", "b@example.test", "c@example.test"])
    assert out["a@example.test"].fate is Fate.SENT
    for r in ("b@example.test", "c@example.test"):
        o = out[r]
        assert o.fate is Fate.DEFERRED and o.status == "4.4.2" and o.text.startswith("lost connection with lmtp:127.0.0.1:")
        assert o.text.endswith("after end of data")


async def test_connection_refused_defers_4_4_1():
    port = free_port()
    out = await lmtp.deliver(Endpoint("127.0.0.1", port), sender="", recipients=["a@example.test"], body=b"x\r\n", lhlo_name="mx.test")
    o = out["a@example.test"]
    assert o.fate is Fate.DEFERRED and o.status == "4.4.1" and f"connect to lmtp:127.0.0.1:{port}" in o.text


async def test_missing_unix_socket_defers_4_4_1(tmp_path):
    out = await lmtp.deliver(Endpoint("", 0, str(tmp_path / "nope")), sender="", recipients=["a@example.test"], body=b"x\r\n", lhlo_name="mx.test")
    o = out["a@example.test"]
    assert o.fate is Fate.DEFERRED and o.status == "4.4.1" and o.remote == f"lmtp:unix:{tmp_path / 'nope'}"


async def test_unix_socket(tmp_path):
    s = Script()
    path = str(tmp_path / "lmtp.sock")
    server = await asyncio.start_unix_server(s.handle, path)
    try:
        out = await lmtp.deliver(Endpoint("", 0, path), sender="", recipients=["a@example.test"], body=b"x\r\n", lhlo_name="mx.test")
    finally:
        server.close()
    assert out["a@example.test"].fate is Fate.SENT and s.lines[1] == b"MAIL FROM:<>\r\n"


async def test_every_phase_is_under_the_timeout():
    s = Script(hang_after=b"DATA")
    t0 = asyncio.get_running_loop().time()
    out = await run_session(s, ["a@example.test"], timeout=0.3)
    assert asyncio.get_running_loop().time() - t0 < 2
    o = out["a@example.test"]
    assert o.fate is Fate.DEFERRED and o.status == "4.4.2" and o.text.endswith("timed out after DATA")


async def test_silent_server_times_out_in_the_greeting():
    s = Script(greeting=b"")
    out = await run_session(s, ["a@example.test"], timeout=0.2)
    assert "timed out while receiving the initial server greeting" in out["a@example.test"].text

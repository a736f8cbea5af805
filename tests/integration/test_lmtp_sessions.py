"""The LMTP client in whole sessions against a scripted in-process server (a real socket on
127.0.0.1), for the per-recipient logic that only shows in a whole conversation: replies after
DATA, pipelining, a refused MAIL, a lost connection, garbage, a timeout. (Moved from tests/unit:
sockets are the integration layer.)
"""

from __future__ import annotations

import asyncio

import pytest

from conftest import free_port

from mtaserver.config import Endpoint
from mtaserver.delivery import lmtp
from mtaserver.model import Fate


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
                await asyncio.Event().wait()  # silent for good
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
    out = await run_session(s, ["a@example.test"], timeout=0.3)  # the server never answers DATA: only the timeout ends it
    o = out["a@example.test"]
    assert o.fate is Fate.DEFERRED and o.status == "4.4.2" and o.text.endswith("timed out after DATA")


async def test_silent_server_times_out_in_the_greeting():
    s = Script(greeting=b"")
    out = await run_session(s, ["a@example.test"], timeout=0.2)
    assert "timed out while receiving the initial server greeting" in out["a@example.test"].text

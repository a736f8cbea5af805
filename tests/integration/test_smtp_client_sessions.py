"""The outbound SMTP client against a scripted in-process server (a real socket on 127.0.0.1).

The server offers PIPELINING and, when it does, will not answer MAIL before it has the whole
group up to DATA: a client that waits for the MAIL reply before sending RCPT hangs, and the
test fails on its timeout. Without PIPELINING it checks the opposite, that the client never
sends a command before the previous reply. Then: refusals at every step, a refused greeting,
a server that hangs up, garbage, multi-line replies, STARTTLS (required and missing, refused,
response injection, a real handshake), AUTH, SIZE, the connection cache and stale entries.
(Moved from tests/unit/test_smtp_client.py: sockets, a subprocess and sleeps are the integration layer.)
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import ssl

import pytest
from conftest import free_port, tls_server_context

from mtaserver.delivery import smtp
from mtaserver.delivery.smtp import SmtpClient
from mtaserver.model import Fate

OK_DONE = b"250 2.0.0 Ok: queued as 1234\r\n"
TEST_TIMEOUT = 5.0


class Server:
    """An SMTP server that answers from a table and records every line it got."""

    def __init__(
        self,
        *,
        greeting: bytes = b"220 mx.test ESMTP\r\n",
        ext: tuple[str, ...] = ("PIPELINING", "SIZE 1000000", "8BITMIME", "ENHANCEDSTATUSCODES"),
        mail: bytes = b"250 2.1.0 Ok\r\n",
        rcpt: dict[str, bytes] | None = None,
        data: bytes = b"354 End data with <CR><LF>.<CR><LF>\r\n",
        data_no_rcpt: bytes = b"554 5.5.1 Error: no valid recipients\r\n",
        done: bytes = OK_DONE,
        close_after: bytes | None = None,  # b"MAIL": hang up at MAIL; b"RCPT": after the first RCPT reply
        tls: ssl.SSLContext | None = None,
        starttls_reply: bytes = b"220 2.0.0 Ready to start TLS\r\n",
        auth: bytes | None = None,  # the AUTH line of the EHLO reply, e.g. b"PLAIN LOGIN"
        auth_ok: tuple[bytes, bytes] | None = None,
        close_idle_after: int | None = None,  # hang up when idle after this many messages
        idle_reply: bytes = b"",  # ... after saying this (a 421)
        on_mail=None,  # (connection number, MAIL number in it) -> a reply to use, b"" to hang up, None
    ) -> None:
        self.on_mail = on_mail
        self.greeting, self.ext, self.mail, self.data, self.data_no_rcpt, self.done = greeting, ext, mail, data, data_no_rcpt, done
        self.rcpt = rcpt or {}
        self.close_after = close_after
        self.tls, self.starttls_reply = tls, starttls_reply
        self.auth, self.auth_ok = auth, auth_ok
        self.close_idle_after, self.idle_reply = close_idle_after, idle_reply
        self.lines: list[bytes] = []
        self.messages: list[tuple[bytes, list[bytes], bytes]] = []
        self.connections = 0
        self.groups: list[list[bytes]] = []  # what arrived before the MAIL reply went out
        self.lockstep_violations = 0
        self.tls_sessions = 0
        self.auth_lines: list[bytes] = []

    @property
    def pipelining(self) -> bool:
        return "PIPELINING" in self.ext

    def ehlo_reply(self, secure: bool) -> bytes:
        ext = [e for e in self.ext if not (secure and e == "STARTTLS")]
        if self.tls is not None and not secure and "STARTTLS" not in ext:
            ext.append("STARTTLS")
        if self.auth:
            ext.append("AUTH " + self.auth.decode())
        lines = ["mx.test", *ext]
        return b"".join(f"250{'-' if i < len(lines) - 1 else ' '}{t}\r\n".encode() for i, t in enumerate(lines))

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        try:
            await self._session(reader, writer)
        except (ConnectionError, asyncio.IncompleteReadError, ssl.SSLError):
            pass
        finally:
            writer.close()

    async def _line(self, reader: asyncio.StreamReader) -> bytes:
        line = await reader.readline()
        if line:
            self.lines.append(line)
        return line

    async def _session(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        conn_no = self.connections
        writer.write(self.greeting)
        if not self.greeting.startswith(b"220"):
            await writer.drain()
            if (await self._line(reader)).upper().startswith(b"QUIT"):
                writer.write(b"221 2.0.0 Bye\r\n")
            return
        secure = False
        delivered = 0
        mails = 0
        while True:
            if self.close_idle_after is not None and delivered >= self.close_idle_after:
                writer.write(self.idle_reply)
                await writer.drain()
                return
            line = await self._line(reader)
            if not line:
                return
            if not self.pipelining:
                await asyncio.sleep(0.01)
                if reader._buffer:  # the client sent more before our reply
                    self.lockstep_violations += 1
            verb = line[:4].upper()
            if verb in (b"EHLO", b"HELO"):
                writer.write(self.ehlo_reply(secure) if verb == b"EHLO" else b"250 mx.test\r\n")
            elif verb == b"STAR":
                writer.write(self.starttls_reply)
                await writer.drain()
                if self.starttls_reply.startswith(b"220"):
                    await writer.start_tls(self.tls)
                    secure = True
                    self.tls_sessions += 1
            elif verb == b"AUTH":
                ok = await self._auth(line, reader, writer)
                writer.write(b"235 2.7.0 Authentication successful\r\n" if ok else b"535 5.7.8 Error: authentication failed\r\n")
            elif verb == b"MAIL":
                mails += 1
                group = [line]
                if self.pipelining:  # not a word before the group is complete
                    while not group[-1].upper().startswith(b"DATA"):
                        nxt = await self._line(reader)
                        if not nxt:
                            return
                        group.append(nxt)
                self.groups.append(group)
                reply = self.on_mail(conn_no, mails) if self.on_mail else None
                if self.close_after == b"MAIL" or reply == b"":
                    return
                reply = reply or self.mail
                if reply.startswith(b"421"):
                    writer.write(reply)
                    await writer.drain()
                    return
                result = await self._transaction(group, reply, reader, writer)
                if result is None:
                    return
                delivered += result
            elif verb == b"RSET" or verb == b"NOOP":
                writer.write(b"250 2.0.0 Ok\r\n")
            elif verb == b"QUIT":
                writer.write(b"221 2.0.0 Bye\r\n")
                await writer.drain()
                return
            else:
                writer.write(b"502 5.5.2 Error: command not recognized\r\n")
            await writer.drain()

    async def _auth(self, line: bytes, reader, writer) -> bool:
        self.auth_lines.append(line)
        words = line.split()
        if words[1].upper() == b"PLAIN":
            _, user, password = base64.b64decode(words[2]).split(b"\0")
        else:
            writer.write(b"334 VXNlcm5hbWU6\r\n")
            await writer.drain()
            user = base64.b64decode(await self._line(reader))
            writer.write(b"334 UGFzc3dvcmQ6\r\n")
            await writer.drain()
            password = base64.b64decode(await self._line(reader))
        return (user, password) == self.auth_ok

    async def _transaction(self, group: list[bytes], mail_reply: bytes, reader, writer) -> bool | None:
        """Answer MAIL (and, pipelined, the RCPTs and DATA): delivered or not, None when the
        session ended."""
        mail_ok = mail_reply.startswith(b"2")
        writer.write(mail_reply)
        rcpts: list[bytes] = []
        pending = group[1:]
        while True:
            if not pending:
                await writer.drain()
                nxt = await self._line(reader)
                if not nxt:
                    return None
                await asyncio.sleep(0.01)
                if reader._buffer:
                    self.lockstep_violations += 1
                pending = [nxt]
            cmd = pending.pop(0)
            if cmd.upper().startswith(b"RCPT"):
                addr = cmd[8:].strip().strip(b"<>").decode()
                reply = self.rcpt.get(addr, b"250 2.1.5 Ok\r\n") if mail_ok else b"503 5.5.1 Error: need MAIL command\r\n"
                if reply.startswith(b"2"):
                    rcpts.append(cmd)
                writer.write(reply)
                if self.close_after == b"RCPT":
                    await writer.drain()
                    return None
            elif cmd.upper().startswith(b"DATA"):
                break
            elif cmd.upper().startswith(b"RSET"):
                writer.write(b"250 2.0.0 Ok\r\n")
                return False
            elif cmd.upper().startswith(b"QUIT"):
                writer.write(b"221 2.0.0 Bye\r\n")
                await writer.drain()
                return None
            else:
                writer.write(b"503 5.5.1 Error: bad sequence\r\n")
        writer.write(self.data if rcpts else self.data_no_rcpt)
        if not (self.data if rcpts else self.data_no_rcpt).startswith(b"354"):
            return False
        await writer.drain()
        content = b""
        while (chunk := await reader.readline()) != b".\r\n":
            if not chunk:
                return None
            content += chunk
        self.lines.append(b".\r\n")
        if not rcpts:
            writer.write(b"554 5.5.1 Error: no valid recipients\r\n")
            return False
        if self.done is None:  # hang
            await asyncio.sleep(30)
        writer.write(self.done)
        if self.done.startswith(b"2"):
            self.messages.append((group[0], rcpts, content))
            return True
        return False


@contextlib.asynccontextmanager
async def running(server: Server, client: SmtpClient | None = None):
    """Serve on 127.0.0.1 (yields the port); at the end close the client's cached connections,
    the listener and every session, and let the transports finish closing."""
    sessions: set[asyncio.Task] = set()

    async def handle(reader, writer):
        sessions.add(asyncio.current_task())
        try:
            await server.handle(reader, writer)
        finally:
            writer.close()

    srv = await asyncio.start_server(handle, "127.0.0.1", 0)
    try:
        yield srv.sockets[0].getsockname()[1]
    finally:
        if client is not None:
            client.close_idle()
        srv.close()
        await asyncio.sleep(0.02)  # the QUITs go out
        for t in sessions:
            t.cancel()
        await asyncio.gather(*sessions, return_exceptions=True)
        await asyncio.sleep(0.01)


async def deliver(server: Server, rcpts, body: bytes = b"Subject: t\r\n\r\n.hi\r\nbye\r\n", *, client: SmtpClient | None = None, **kw):
    client = client or SmtpClient(helo_name="client.test")
    async with running(server, client) as port:
        return await asyncio.wait_for(client.send("127.0.0.1", port, "s@client.test", rcpts, body, name="mx.test", **kw), TEST_TIMEOUT)


# -- PIPELINING ------------------------------------------------------------------------------


async def test_pipelined_group_is_sent_in_one_go_and_delivered():
    s = Server()
    out = await deliver(s, ["a@example.test", "b@example.test"])
    assert {r: (o.fate, o.status, o.text) for r, o in out.items()} == {
        r: (Fate.SENT, "2.0.0", "250 2.0.0 Ok: queued as 1234") for r in ("a@example.test", "b@example.test")
    }
    assert out["a@example.test"].remote.startswith("mx.test[127.0.0.1]:")
    body_size = len(b"Subject: t\r\n\r\n.hi\r\nbye\r\n")
    assert s.groups == [[
        f"MAIL FROM:<s@client.test> SIZE={body_size}\r\n".encode(),
        b"RCPT TO:<a@example.test>\r\n",
        b"RCPT TO:<b@example.test>\r\n",
        b"DATA\r\n",
    ]]  # fmt: skip
    [(mail, rcpts, content)] = s.messages
    assert content == b"Subject: t\r\n\r\n..hi\r\nbye\r\n"  # dot-stuffed
    assert s.lines[0] == b"EHLO client.test\r\n"


async def test_body_line_endings_are_normalized_and_dots_stuffed():
    s = Server()
    await deliver(s, ["a@example.test"], b"Subject: t\n\n.\n..x\r.\r\nend")
    assert s.messages[0][2] == b"Subject: t\r\n\r\n..\r\n...x\r\n..\r\nend\r\n"


async def test_many_recipients_in_one_group():
    s = Server()
    rcpts = [f"user{i}@example.test" for i in range(1000)]
    out = await deliver(s, rcpts)
    assert all(o.fate is Fate.SENT for o in out.values()) and len(out) == 1000
    assert len(s.groups[0]) == 1002 and len(s.messages[0][1]) == 1000


async def test_recipient_refused_in_a_pipelined_group():
    s = Server(rcpt={"nobody@example.test": b"550 5.1.1 <nobody@example.test>: Recipient address rejected\r\n",
                     "later@example.test": b"450 4.2.0 <later@example.test>: greylisted\r\n"})  # fmt: skip
    out = await deliver(s, ["a@example.test", "nobody@example.test", "later@example.test"])
    assert out["a@example.test"].fate is Fate.SENT
    assert (out["nobody@example.test"].fate, out["nobody@example.test"].status) == (Fate.BOUNCED, "5.1.1")
    assert (out["later@example.test"].fate, out["later@example.test"].status) == (Fate.DEFERRED, "4.2.0")
    assert "Recipient address rejected" in out["nobody@example.test"].text
    assert s.messages[0][1] == [b"RCPT TO:<a@example.test>\r\n"]


async def test_data_refused_after_no_valid_recipient_then_rset():
    s = Server(rcpt={"x@example.test": b"550 5.1.1 unknown\r\n", "y@example.test": b"550 5.1.1 unknown\r\n"})
    out = await deliver(s, ["x@example.test", "y@example.test"])
    assert {(o.fate, o.status) for o in out.values()} == {(Fate.BOUNCED, "5.1.1")}
    assert s.groups[0][-1] == b"DATA\r\n"  # DATA was in the group
    assert b"RSET\r\n" in s.lines and s.messages == []


async def test_data_354_without_a_valid_recipient_sends_an_empty_message():
    s = Server(rcpt={"x@example.test": b"550 5.1.1 unknown\r\n"}, data_no_rcpt=b"354 go ahead anyway\r\n")
    out = await deliver(s, ["x@example.test"])
    assert out["x@example.test"].fate is Fate.BOUNCED and out["x@example.test"].status == "5.1.1"
    i = s.lines.index(b"DATA\r\n")
    assert s.lines[i + 1 : i + 3] == [b".\r\n", b"RSET\r\n"]  # an empty message, then RSET


@pytest.mark.parametrize("pipelining", [True, False])
async def test_refused_mail_refuses_every_recipient(pipelining):
    ext = ("PIPELINING", "8BITMIME") if pipelining else ("8BITMIME",)
    s = Server(ext=ext, mail=b"553 5.7.1 <s@client.test>: Sender address rejected\r\n")
    out = await deliver(s, ["a@example.test", "b@example.test"])
    assert {(o.fate, o.status) for o in out.values()} == {(Fate.BOUNCED, "5.7.1")}
    assert b"RSET\r\n" in s.lines
    if not pipelining:
        assert not any(line.startswith((b"RCPT", b"DATA")) for line in s.lines)


async def test_data_refused_applies_to_the_accepted_recipients():
    s = Server(rcpt={"bad@example.test": b"550 5.1.1 unknown\r\n"}, data=b"451 4.3.0 try again\r\n")
    out = await deliver(s, ["a@example.test", "bad@example.test"])
    assert (out["a@example.test"].fate, out["a@example.test"].status) == (Fate.DEFERRED, "4.3.0")
    assert out["bad@example.test"].status == "5.1.1"


async def test_end_of_data_refused():
    s = Server(done=b"554 5.7.1 spam\r\n")
    out = await deliver(s, ["a@example.test"])
    assert (out["a@example.test"].fate, out["a@example.test"].status, out["a@example.test"].text) == (Fate.BOUNCED, "5.7.1", "554 5.7.1 spam")


# -- without PIPELINING ----------------------------------------------------------------------


async def test_without_pipelining_one_command_at_a_time():
    s = Server(ext=("SIZE 1000000", "8BITMIME"), rcpt={"bad@example.test": b"550 5.1.1 unknown\r\n"})
    out = await deliver(s, ["a@example.test", "bad@example.test", "b@example.test"], eightbit=True)
    assert out["a@example.test"].fate is Fate.SENT and out["bad@example.test"].fate is Fate.BOUNCED
    assert s.lockstep_violations == 0
    assert s.messages[0][0].startswith(b"MAIL FROM:<s@client.test> BODY=8BITMIME SIZE=")
    assert s.messages[0][2] == b"Subject: t\r\n\r\n..hi\r\nbye\r\n"


async def test_without_pipelining_no_data_when_no_recipient_was_accepted():
    s = Server(ext=(), rcpt={"x@example.test": b"550 5.1.1 unknown\r\n"})
    out = await deliver(s, ["x@example.test"])
    assert out["x@example.test"].fate is Fate.BOUNCED
    assert b"DATA\r\n" not in s.lines and b"RSET\r\n" in s.lines


async def test_helo_when_ehlo_is_refused():
    s = Server(ext=())
    s.ehlo_reply = lambda secure: b"502 5.5.2 Error: command not recognized\r\n"
    out = await deliver(s, ["a@example.test"])
    assert out["a@example.test"].fate is Fate.SENT
    assert s.lines[:2] == [b"EHLO client.test\r\n", b"HELO client.test\r\n"]
    assert s.messages[0][0] == b"MAIL FROM:<s@client.test>\r\n"  # no extensions after HELO


# -- failures ---------------------------------------------------------------------------------


async def test_greeting_554_defers_as_refused_to_talk():
    s = Server(greeting=b"554 5.7.1 mx.test go away\r\n")
    out = await deliver(s, ["a@example.test"])
    o = out["a@example.test"]
    assert o.fate is Fate.DEFERRED and o.status == "4.7.1"
    assert o.text.startswith("host mx.test[127.0.0.1]:") and "refused to talk to me: 554 5.7.1 mx.test go away" in o.text
    assert s.lines == [b"QUIT\r\n"]


async def test_greeting_without_enhanced_code():
    s = Server(greeting=b"421 busy\r\n")
    o = (await deliver(s, ["a@example.test"]))["a@example.test"]
    assert o.fate is Fate.DEFERRED and o.status == "4.4.0"


async def test_server_closes_after_mail_defers_4_4_2():
    s = Server(close_after=b"MAIL")
    out = await deliver(s, ["a@example.test", "b@example.test"])
    for o in out.values():
        assert o.fate is Fate.DEFERRED and o.status == "4.4.2"
        assert o.text.startswith("lost connection with mx.test[127.0.0.1]:") and "after MAIL FROM" in o.text


async def test_lost_after_a_refused_rcpt_keeps_that_refusal():
    s = Server(ext=("8BITMIME",), rcpt={"bad@example.test": b"550 5.1.1 unknown\r\n"}, close_after=b"RCPT")
    out = await deliver(s, ["bad@example.test", "a@example.test"])
    assert out["bad@example.test"].status == "5.1.1"
    assert out["a@example.test"].status == "4.4.2"


async def test_multi_line_replies():
    s = Server(
        mail=b"250-2.1.0 sender ok\r\n250 2.1.0 really\r\n",
        rcpt={"a@example.test": b"250-2.1.5 recipient\r\n250-2.1.5 is\r\n250 2.1.5 fine\r\n",
              "b@example.test": b"550-5.1.1 no such\r\n550 5.1.1 user here\r\n"},
        done=b"250-2.0.0 queued\r\n250 2.0.0 as ABC\r\n",
    )  # fmt: skip
    out = await deliver(s, ["a@example.test", "b@example.test"])
    assert (out["a@example.test"].fate, out["a@example.test"].text) == (Fate.SENT, "250 2.0.0 queued as ABC")
    assert (out["b@example.test"].fate, out["b@example.test"].text) == (Fate.BOUNCED, "550 5.1.1 no such user here")  # one status


@pytest.mark.parametrize(
    "where, reply",
    [
        ("greeting", b"220 mx.test\rESMTP\r\n"),  # bare CR
        ("mail", b"250 2.1.0 Ok\r\x1b[2J\r\n"),
        ("rcpt", b"2500 Ok\r\n"),
        ("rcpt", b"250-2.1.5 Ok\r\n251 2.1.5 Ok\r\n"),  # the code changes within the reply
        ("done", b"250 2.0.0 caf\xc3\xa9\r\n"),  # UTF-8 without SMTPUTF8
        ("done", b"250 " + b"x" * 3000 + b"\r\n"),  # longer than MAX_LINE
        ("data", b"250 2.0.0 Ok\r\n"),  # not 354 nor an error
        ("mail", b"354 what\r\n"),
    ],
)
async def test_garbage_is_a_protocol_error_and_defers(where, reply):
    kw = {"rcpt": {"a@example.test": reply}} if where == "rcpt" else {where: reply}
    s = Server(**kw)
    out = await deliver(s, ["a@example.test"])
    o = out["a@example.test"]
    assert o.fate is Fate.DEFERRED and o.status == "4.5.0" and o.text.startswith("protocol error from mx.test[127.0.0.1]:")
    assert "\x1b" not in o.text and "\r" not in o.text


async def test_connection_refused_defers_4_4_1():
    port = free_port()
    client = SmtpClient(helo_name="client.test")
    out = await client.send("127.0.0.1", port, "s@client.test", ["a@example.test"], b"x\r\n", name="mx.test")
    o = out["a@example.test"]
    assert o.fate is Fate.DEFERRED and o.status == "4.4.1" and o.text.startswith(f"connect to mx.test[127.0.0.1]:{port}: ")


async def test_end_of_data_timeout(monkeypatch):
    monkeypatch.setattr(smtp, "DATA_DONE_TIMEOUT", 0.3)
    s = Server(done=None)
    out = await deliver(s, ["a@example.test"])
    o = out["a@example.test"]
    assert o.fate is Fate.DEFERRED and o.status == "4.4.2" and o.text.endswith("timed out after end of data")


async def test_command_timeout(monkeypatch):
    monkeypatch.setattr(smtp, "COMMAND_TIMEOUT", 0.3)
    s = Server()

    async def silent(reader, writer):
        await asyncio.sleep(3)
        writer.close()

    s.handle = silent
    out = await deliver(s, ["a@example.test"])
    assert out["a@example.test"].text.endswith("timed out while receiving the initial server greeting")


# -- extensions -------------------------------------------------------------------------------


async def test_size_limit_bounces_before_sending():
    s = Server(ext=("PIPELINING", "SIZE 100"))
    out = await deliver(s, ["a@example.test"], b"x" * 101)
    o = out["a@example.test"]
    assert (o.fate, o.status) == (Fate.BOUNCED, "5.3.4") and "exceeds size limit 100" in o.text
    assert not any(line.startswith(b"MAIL") for line in s.lines)


async def test_smtputf8_not_offered_bounces_5_6_7():
    s = Server()
    out = await deliver(s, ["\u00fc@example.test"], smtputf8=True)
    assert (out["\u00fc@example.test"].fate, out["\u00fc@example.test"].status) == (Fate.BOUNCED, "5.6.7")
    assert not any(line.startswith(b"MAIL") for line in s.lines)


async def test_smtputf8_offered():
    s = Server(ext=("PIPELINING", "SMTPUTF8", "8BITMIME"))
    out = await deliver(s, ["\u00fc@example.test"], "Subject: caf\u00e9\r\n\r\nx\r\n".encode(), smtputf8=True, eightbit=True)
    assert out["\u00fc@example.test"].fate is Fate.SENT
    assert s.groups[0][0] == b"MAIL FROM:<s@client.test> BODY=8BITMIME SMTPUTF8\r\n"
    assert s.groups[0][1] == "RCPT TO:<\u00fc@example.test>\r\n".encode()


async def test_addresses_with_control_characters_are_never_sent():
    s = Server()
    out = await deliver(s, ["a@example.test", "b@example.test>\r\nRCPT TO:<c@example.test"])
    assert out["a@example.test"].fate is Fate.SENT
    assert (out["b@example.test>\r\nRCPT TO:<c@example.test"].fate, out["b@example.test>\r\nRCPT TO:<c@example.test"].status) == (Fate.BOUNCED, "5.1.3")
    assert not any(b"c@example.test" in line for line in s.lines)


# -- STARTTLS and AUTH ------------------------------------------------------------------------


@pytest.fixture(scope="module")
def server_tls(tmp_path_factory):
    return tls_server_context(tmp_path_factory.mktemp("tls"), "mx.test")


async def test_starttls_required_but_missing_defers_4_7_4():
    s = Server()
    out = await deliver(s, ["a@example.test"], client=SmtpClient(helo_name="client.test", tls="encrypt"))
    o = out["a@example.test"]
    assert (o.fate, o.status) == (Fate.DEFERRED, "4.7.4") and o.text.endswith("TLS is required, but was not offered")
    assert s.lines == [b"EHLO client.test\r\n", b"QUIT\r\n"]


@pytest.mark.parametrize("level", ["may", "encrypt"])
async def test_starttls_then_ehlo_again(server_tls, level):
    s = Server(tls=server_tls)
    client = SmtpClient(helo_name="client.test", tls=level)
    out = await deliver(s, ["a@example.test"], client=client)
    assert out["a@example.test"].fate is Fate.SENT
    assert s.tls_sessions == 1
    assert s.lines[:3] == [b"EHLO client.test\r\n", b"STARTTLS\r\n", b"EHLO client.test\r\n"]
    assert s.messages[0][2] == b"Subject: t\r\n\r\n..hi\r\nbye\r\n"


async def test_tls_none_does_not_starttls(server_tls):
    s = Server(tls=server_tls)
    out = await deliver(s, ["a@example.test"], client=SmtpClient(helo_name="client.test", tls="none"))
    assert out["a@example.test"].fate is Fate.SENT and s.tls_sessions == 0


async def test_starttls_refused(server_tls):
    s = Server(tls=server_tls, starttls_reply=b"454 4.7.0 TLS not available due to local problem\r\n")
    out = await deliver(s, ["a@example.test"], client=SmtpClient(helo_name="client.test", tls="may"))
    assert out["a@example.test"].fate is Fate.SENT and s.tls_sessions == 0  # may: plain text
    s = Server(tls=server_tls, starttls_reply=b"454 4.7.0 TLS not available due to local problem\r\n")
    out = await deliver(s, ["a@example.test"], client=SmtpClient(helo_name="client.test", tls="encrypt"))
    o = out["a@example.test"]
    assert (o.fate, o.status) == (Fate.DEFERRED, "4.7.4") and "refused to start TLS: 454 4.7.0" in o.text
    assert s.messages == []


async def test_plaintext_injected_after_starttls_reply_is_a_protocol_error(server_tls):
    s = Server(tls=server_tls, starttls_reply=b"220 2.0.0 Ready\r\n250-injected\r\n250 PIPELINING\r\n")
    out = await deliver(s, ["a@example.test"])
    o = out["a@example.test"]
    assert (o.fate, o.status) == (Fate.DEFERRED, "4.5.0") and "after the reply to STARTTLS" in o.text


def _broken_handshake(s: Server):
    """The first connection offers STARTTLS and then fails the handshake; later ones are plain SMTP."""
    plain = s.handle
    seen = []

    async def handle(reader, writer):
        seen.append(1)
        if len(seen) == 1:
            await not_tls(reader, writer)
        else:
            s.ext = tuple(e for e in s.ext if e != "STARTTLS")
            await plain(reader, writer)

    async def not_tls(reader, writer):
        writer.write(b"220 mx.test\r\n")
        await reader.readline()
        writer.write(b"250-mx.test\r\n250 STARTTLS\r\n")
        await reader.readline()
        writer.write(b"220 go\r\n")
        await writer.drain()
        await reader.read(100)
        writer.write(b"this is not a TLS server hello\r\n" * 10)
        await writer.drain()
        await asyncio.sleep(1)
        writer.close()

    s.handle = handle
    return seen


async def test_tls_handshake_failure_defers_4_7_5_at_encrypt():
    s = Server(ext=("STARTTLS",))
    seen = _broken_handshake(s)
    o = (await deliver(s, ["a@example.test"], client=SmtpClient(helo_name="client.test", tls="encrypt")))["a@example.test"]
    assert (o.fate, o.status) == (Fate.DEFERRED, "4.7.5") and "Cannot start TLS" in o.text
    assert len(seen) == 1 and s.messages == []


async def test_tls_handshake_failure_at_may_is_retried_in_plain_text(caplog):
    """Postfix at `may`: the host that failed the handshake gets the mail over a new plain connection."""
    s = Server(ext=("STARTTLS", "PIPELINING"))
    seen = _broken_handshake(s)
    o = (await deliver(s, ["a@example.test"], client=SmtpClient(helo_name="client.test", tls="may")))["a@example.test"]
    assert o.fate is Fate.SENT and len(seen) == 2 and len(s.messages) == 1
    assert "handshake failure" in caplog.text and "trying again in plain text" in caplog.text


async def test_relay_password_is_never_sent_without_tls(caplog):
    """Postfix's noplaintext: a relay offering AUTH without STARTTLS (or a man in the middle who
    removed it) does not get the password: deferred 4.7.0, logged."""
    s = Server(auth=b"PLAIN LOGIN", auth_ok=(b"relayuser", b"s3cret"))
    client = SmtpClient(helo_name="client.test", username="relayuser", password="s3cret")
    o = (await deliver(s, ["a@example.test"], client=client))["a@example.test"]
    assert (o.fate, o.status) == (Fate.DEFERRED, "4.7.0") and "not encrypted" in o.text
    assert s.auth_lines == [] and not any(b"AUTH" in line for line in s.lines) and s.messages == []
    assert "relay_auth.allow_plaintext" in caplog.text and "s3cret" not in caplog.text


async def test_relay_password_goes_over_tls(server_tls):
    s = Server(tls=server_tls, auth=b"PLAIN", auth_ok=(b"relayuser", b"s3cret"))
    client = SmtpClient(helo_name="client.test", username="relayuser", password="s3cret")
    o = (await deliver(s, ["a@example.test"], client=client))["a@example.test"]
    assert o.fate is Fate.SENT and s.tls_sessions == 1 and len(s.auth_lines) == 1


@pytest.mark.parametrize("offered, used", [(b"LOGIN PLAIN", b"PLAIN"), (b"LOGIN", b"LOGIN")])
async def test_auth(offered, used):
    s = Server(auth=offered, auth_ok=(b"relayuser", b"s3cret"))
    client = SmtpClient(helo_name="client.test", username="relayuser", password="s3cret", allow_plaintext_auth=True)
    out = await deliver(s, ["a@example.test"], client=client)
    assert out["a@example.test"].fate is Fate.SENT
    assert s.auth_lines[0].split()[1] == used
    assert s.lines.index(s.auth_lines[0]) < s.lines.index(s.groups[0][0])


async def test_auth_refused_defers():
    s = Server(auth=b"PLAIN", auth_ok=(b"relayuser", b"right"))
    client = SmtpClient(helo_name="client.test", username="relayuser", password="wrong", allow_plaintext_auth=True)
    o = (await deliver(s, ["a@example.test"], client=client))["a@example.test"]
    assert (o.fate, o.status) == (Fate.DEFERRED, "4.7.8") and "SASL authentication failed" in o.text and "wrong" not in o.text
    assert s.messages == []


async def test_auth_not_offered_defers():
    s = Server()
    client = SmtpClient(helo_name="client.test", username="relayuser", password="x", allow_plaintext_auth=True)
    o = (await deliver(s, ["a@example.test"], client=client))["a@example.test"]
    assert (o.fate, o.status) == (Fate.DEFERRED, "4.7.0") and s.messages == []


# -- the connection cache ---------------------------------------------------------------------


async def test_cache_reuses_one_connection_for_two_messages():
    s = Server()
    client = SmtpClient(helo_name="client.test")
    async with running(s, client) as port:
        for i in range(2):
            out = await asyncio.wait_for(client.send("127.0.0.1", port, "s@client.test", [f"r{i}@example.test"], b"m%d\r\n" % i), TEST_TIMEOUT)
            assert out[f"r{i}@example.test"].fate is Fate.SENT
    assert s.connections == 1 and len(s.messages) == 2
    assert [line for line in s.lines if line.startswith(b"EHLO")] == [b"EHLO client.test\r\n"]
    assert [m[2] for m in s.messages] == [b"m0\r\n", b"m1\r\n"]


async def test_a_refused_transaction_is_reset_and_the_connection_reused():
    s = Server(rcpt={"bad@example.test": b"550 5.1.1 unknown\r\n"})
    client = SmtpClient(helo_name="client.test")
    async with running(s, client) as port:
        a = await client.send("127.0.0.1", port, "s@client.test", ["bad@example.test"], b"x\r\n")
        b = await client.send("127.0.0.1", port, "s@client.test", ["good@example.test"], b"y\r\n")
    assert a["bad@example.test"].fate is Fate.BOUNCED and b["good@example.test"].fate is Fate.SENT
    assert s.connections == 1 and b"RSET\r\n" in s.lines


@pytest.mark.parametrize("idle_reply", [b"", b"421 4.4.2 mx.test Error: timeout exceeded\r\n"])
async def test_stale_cached_connection_gets_one_fresh_retry(idle_reply):
    s = Server(close_idle_after=1, idle_reply=idle_reply)
    client = SmtpClient(helo_name="client.test")
    async with running(s, client) as port:
        await client.send("127.0.0.1", port, "s@client.test", ["a@example.test"], b"x\r\n")
        await asyncio.sleep(0.1)  # the server hangs up the idle connection
        out = await asyncio.wait_for(client.send("127.0.0.1", port, "s@client.test", ["b@example.test"], b"y\r\n"), TEST_TIMEOUT)
    assert out["b@example.test"].fate is Fate.SENT
    assert s.connections == 2 and len(s.messages) == 2


@pytest.mark.parametrize("second_mail", [b"", b"421 4.4.2 mx.test Error: timeout exceeded\r\n"])
async def test_stale_detected_at_first_use_gets_one_fresh_retry(second_mail):
    """The cached session looks fine, but dies (or says 421) at the next MAIL: one fresh retry."""
    s = Server(on_mail=lambda conn, n: second_mail if (conn, n) == (1, 2) else None)
    client = SmtpClient(helo_name="client.test")
    async with running(s, client) as port:
        await client.send("127.0.0.1", port, "s@client.test", ["a@example.test"], b"x\r\n")
        out = await asyncio.wait_for(client.send("127.0.0.1", port, "s@client.test", ["b@example.test"], b"y\r\n"), TEST_TIMEOUT)
    assert out["b@example.test"].fate is Fate.SENT and s.connections == 2 and len(s.messages) == 2


async def test_no_retry_on_a_fresh_connection():
    s = Server(on_mail=lambda conn, n: b"421 4.3.2 shutting down\r\n")
    out = await deliver(s, ["a@example.test"])
    assert (out["a@example.test"].fate, out["a@example.test"].status) == (Fate.DEFERRED, "4.3.2") and s.connections == 1


async def test_idle_connections_are_closed_with_quit_after_the_idle_timeout(monkeypatch):
    monkeypatch.setattr(smtp, "IDLE_TIMEOUT", 0.2)
    s = Server()
    client = SmtpClient(helo_name="client.test")
    async with running(s, client) as port:
        await client.send("127.0.0.1", port, "s@client.test", ["a@example.test"], b"x\r\n")
        await asyncio.sleep(0.6)
        assert s.lines[-1] == b"QUIT\r\n" and client._idle == {}


async def test_close_idle_sends_quit():
    s = Server()
    client = SmtpClient(helo_name="client.test")
    async with running(s, client) as port:
        await client.send("127.0.0.1", port, "s@client.test", ["a@example.test"], b"x\r\n")
        client.close_idle()
        await asyncio.sleep(0.1)
        assert s.lines[-1] == b"QUIT\r\n"


async def test_max_idle_per_host():
    s = Server()
    client = SmtpClient(helo_name="client.test", max_idle_per_host=2)
    async with running(s, client) as port:
        outs = await asyncio.gather(*(client.send("127.0.0.1", port, "s@client.test", [f"r{i}@example.test"], b"x\r\n") for i in range(4)))
        assert all(o.fate is Fate.SENT for out in outs for o in out.values())
        assert s.connections == 4 and len(client._idle[("127.0.0.1", port)]) == 2

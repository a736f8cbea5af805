"""The client side of the SMTP/LMTP wire protocol, shared by delivery/smtp.py and delivery/lmtp.py.

DESCRIPTION
    Pure functions, unit-tested without sockets:

      parse_reply_line, parse_reply   one reply line / a whole reply -> model.Reply
      extensions                      the keywords of an EHLO/LHLO reply
      command                         one command line; refuses control characters
      data_payload                    a message -> the bytes after 354 (CRLF, dot-stuffed, CRLF.CRLF)
      DataStuffer                     the same, chunk by chunk (a message streamed from its queue file)
      needs_utf8                      what of an SMTPUTF8 message cannot go without SMTPUTF8
      from_reply, Outcome             a reply -> the per-recipient result (a model.Fate and its
                                      status and text) the queue manager keeps

    and `Connection`, the little that moves bytes: `send` queues a command (the transport
    sends while we wait for replies, so pipelined commands cannot deadlock against a server
    that writes replies before it reads more), `reply` reads one whole reply under a timeout,
    `flush` waits until the transport took the queued bytes, `start_tls` upgrades the stream,
    `quit` and `close` end it. A broken or timed-out connection raises `Lost`, which names
    the phase for the outcome text ("lost connection with X after RCPT TO"); a reply that is
    not a reply raises `ProtocolError`.

SECURITY
    Replies come from remote servers and are parsed strictly: a line that is not
    `DDD[ -]text` with printable text (UTF-8 only after SMTPUTF8 was agreed, and never a
    control character, C1 included), a line longer than MAX_LINE bytes, a reply of more
    than MAX_LINES lines, or a code that changes within one reply is a protocol error. The
    StreamReader's limit is MAX_LINE, so a server cannot make us buffer more than about two
    lines' worth before that error. Reply text reaches outcomes, logs and DSNs only through
    logutil.sanitize.

    Commands never carry CR, LF or another control character: `command` raises ValueError
    instead, and the callers turn that into a bounce of the address (5.1.3 / 5.1.7), so an
    address cannot end a command early or forge a second one.

    `data_payload` turns every bare CR and bare LF into CRLF before dot-stuffing, so the
    next server cannot read an end of data into the content that we did not mean (SMTP
    smuggling), and the terminating "." is always on a line of its own.

STANDARDS
    RFC 5321 2.3.8 (line endings), 4.1.1.4 and 4.5.2 (DATA, transparency), 4.2 (replies),
    4.5.3.1 (line limits, relaxed here to MAX_LINE), RFC 2920 (PIPELINING), RFC 1870 (SIZE),
    RFC 6531 (SMTPUTF8), RFC 3463 (enhanced status codes), RFC 2033 (LMTP uses the same).

CONFIG
    None here; the timeouts are the callers'.
"""

from __future__ import annotations

import asyncio
import re
import socket
import ssl
from dataclasses import dataclass

from ..logutil import sanitize_ascii as sanitize  # outcome texts reach DSNs and replies: ASCII
from ..model import Fate, Reply

MAX_LINE = 2048  # bytes per reply line, CRLF included (RFC 5321 4.5.3.1.5 says 512)
MAX_LINES = 100  # lines per reply (an EHLO reply lists a dozen extensions)
QUIT_TIMEOUT = 5.0

_LINE = re.compile(rb"([2-5][0-9][0-9])([ -]?)(.*)", re.DOTALL)
_ASCII_TEXT = re.compile(rb"[\t\x20-\x7e]*")
_BAD_IN_UTF8 = re.compile(r"[\x00-\x08\x0a-\x1f\x7f-\x9f]")  # controls, C1 included
_ANY_EOL = re.compile(rb"\r\n|\r|\n")
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")


# -- outcomes ---------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Outcome:
    fate: Fate
    status: str  # enhanced status code
    text: str  # the remote reply or our reason
    remote: str | None = None  # "host[ip]:port"
    smtp_reply: bool = True  # text is a remote SMTP reply (DSN Diagnostic-Code: smtp;)
    dsn_passed: bool = False  # the next hop took our DSN request (RFC 3461): it reports success from now on


@dataclass(frozen=True, slots=True)
class DsnRequest:
    """What the sender asked of DSNs (RFC 3461, queue envelope), passed on to a next hop that
    offers DSN: RET and ENVID with MAIL, NOTIFY and ORCPT with each RCPT (decoded here,
    xtext on the wire)."""

    ret: str | None  # FULL | HDRS
    envid: str | None
    recipients: dict[str, tuple[str | None, str | None]]  # address -> (NOTIFY, ORCPT "type;address")

    def mail_params(self) -> list[str]:
        out = [f"RET={self.ret}"] if self.ret else []
        return out + [f"ENVID={xtext(self.envid)}"] if self.envid else out

    def rcpt_params(self, address: str) -> list[str]:
        notify, orcpt = self.recipients.get(address, (None, None))
        out = [f"NOTIFY={notify}"] if notify else []
        if orcpt:
            kind, _, addr = orcpt.partition(";")
            out.append(f"ORCPT={kind};{xtext(addr, utf8=kind == 'utf-8')}")
        return out


def xtext(text: str, *, utf8: bool = False) -> str:
    """RFC 3461 4 xtext: "+" and two hex digits for '+', '=' and everything outside '!'..'~'
    (RFC 6533 utf-8-addr-xtext, `utf8`: non-ASCII characters as \\x{HEX})."""
    out = []
    for c in text:
        if utf8 and c == "\\":  # RFC 6533: a literal backslash would start a \x{...} escape
            out.append("\\x{5C}")
        elif "!" <= c <= "~" and c not in "+=":
            out.append(c)
        elif utf8 and c > "\x7f":
            out.append(f"\\x{{{ord(c):X}}}")
        else:
            out.extend(f"+{b:02X}" for b in c.encode())
    return "".join(out)


def from_reply(reply: Reply, remote: str | None, default_detail: str = "0.0") -> Outcome:
    """A reply -> sent (2xx), deferred (4xx) or bounced (5xx), with the reply's enhanced
    status code when it has one (else class.`default_detail`, the class from the reply code).
    The text is the reply on one line (Reply.line), at most 400 characters after the code."""
    code = reply.code
    text = f"{code} {sanitize(reply.line()[4:], 400)}"  # the code has three digits (parse_reply_line)
    status = reply.status or f"{str(code)[0]}.{default_detail}"
    if 200 <= code < 300:
        return Outcome(Fate.SENT, status, text, remote)
    return Outcome(Fate.BOUNCED if code >= 500 else Fate.DEFERRED, status, text, remote)


# -- pure protocol functions ------------------------------------------------------------------


class ProtocolError(Exception):
    """The server said something that is not an SMTP/LMTP reply (or not the one expected)."""


def parse_reply_line(line: bytes, *, utf8: bool = False) -> tuple[int, bool, str]:
    """One reply line without its line ending -> (code, is last line, text).

    `250-text` continues, `250 text` and a bare `250` end the reply (RFC 5321 4.2.1). The
    text must be printable: ASCII (and HT), or UTF-8 without control characters when
    `utf8` (SMTPUTF8 was agreed).
    """
    m = _LINE.fullmatch(line)
    if m is None:
        raise ProtocolError(f"malformed reply line: {sanitize(line, 100)}")
    code, sep, raw = int(m.group(1)), m.group(2), m.group(3)
    if not sep and raw:
        raise ProtocolError(f"malformed reply line: {sanitize(line, 100)}")
    if _ASCII_TEXT.fullmatch(raw):
        text = raw.decode("ascii")
    elif utf8:
        try:
            text = raw.decode("utf-8")
        except UnicodeDecodeError:
            raise ProtocolError(f"reply line is not UTF-8: {sanitize(line, 100)}") from None
        if _BAD_IN_UTF8.search(text):
            raise ProtocolError(f"control character in reply line: {sanitize(line, 100)}")
    else:
        raise ProtocolError(f"non-printable character in reply line: {sanitize(line, 100)}")
    return code, sep != b"-", text


def parse_reply(lines: list[bytes], *, utf8: bool = False) -> Reply:
    """A whole reply from its lines (line endings removed); every line has the same code,
    only the last one ends the reply. The enhanced status is the first line's (Reply.from_lines)."""
    if not lines:
        raise ProtocolError("empty reply")
    code = None
    texts = []
    for i, line in enumerate(lines):
        c, last, text = parse_reply_line(line, utf8=utf8)
        if code is not None and c != code:
            raise ProtocolError(f"reply code changed from {code} to {c} within one reply")
        if last != (i == len(lines) - 1):
            raise ProtocolError("reply continues after its last line" if last else "reply ends without a last line")
        code = c
        texts.append(text)
    assert code is not None
    return Reply.from_lines(code, texts)


def extensions(ehlo: Reply) -> dict[str, str]:
    """The service extensions of a 250 EHLO/LHLO reply: {"PIPELINING": "", "SIZE": "10240000"}."""
    out = {}
    for line in ehlo.lines[1:]:
        keyword, _, params = line.strip().partition(" ")
        if keyword:
            out[keyword.upper()] = params.strip()
    return out


def data_payload(body: bytes) -> bytes:
    """The bytes to send after 354: CRLF line endings, dot-stuffed, then CRLF.CRLF.

    Bare CR and bare LF become CRLF (RFC 5321 2.3.8), a line that starts with "." gets a
    second one (4.5.2), and a body that does not end in CRLF gets one, so the terminating
    "." is always on a line of its own.
    """
    crlf = body.count(b"\r\n")
    if body.count(b"\r") != crlf or body.count(b"\n") != crlf:
        body = _ANY_EOL.sub(b"\r\n", body)
    if body and not body.endswith(b"\r\n"):
        body += b"\r\n"
    body = body.replace(b"\r\n.", b"\r\n..")
    if body.startswith(b"."):
        body = b"." + body
    return body + b".\r\n"


class DataStuffer:
    """`data_payload` in pieces: feed the content chunk by chunk, then `end()`; the output,
    joined, equals data_payload(content) however the content was cut (a CR at the end of one
    chunk and an LF at the start of the next are one CRLF; a dot after a line end in the
    previous chunk is stuffed)."""

    __slots__ = ("_bol", "_cr")

    def __init__(self) -> None:
        self._bol = True  # the next byte starts a line
        self._cr = False  # the last chunk ended in a CR not sent yet

    def feed(self, chunk: bytes | memoryview) -> bytes:
        data = bytes(chunk)
        if not data:
            return b""  # a pending CR waits for a byte that says what it is
        out = b""
        if self._cr:
            self._cr = False
            out = b"\r\n"  # CRLF, or a bare CR made one: either way a line end
            self._bol = True
            if data.startswith(b"\n"):
                data = data[1:]
        if data.endswith(b"\r"):
            self._cr = True
            data = data[:-1]
        if not data:
            return out
        crlf = data.count(b"\r\n")
        if data.count(b"\r") != crlf or data.count(b"\n") != crlf:
            data = _ANY_EOL.sub(b"\r\n", data)
        data = data.replace(b"\r\n.", b"\r\n..")
        if self._bol and data.startswith(b"."):
            data = b"." + data
        self._bol = data.endswith(b"\r\n")
        return out + data if out else data

    def end(self) -> bytes:
        """The rest: a final line end if the content lacks one, then the terminating dot."""
        if self._cr:
            self._cr = False
            self._bol = True
            return b"\r\n.\r\n"
        return b".\r\n" if self._bol else b"\r\n.\r\n"


def needs_utf8(sender: str, recipients: list[str], body: bytes) -> tuple[bool, set[str]]:
    """What of an SMTPUTF8 message cannot go without SMTPUTF8: (sender or header, recipients).

    The body may hold 8-bit text without SMTPUTF8 (that is 8BITMIME's business); a UTF-8
    address or header may not (RFC 6531 3.2).
    """
    end = body.find(b"\r\n\r\n")
    header = body[: end + 2] if end >= 0 else body
    return (not sender.isascii() or not header.isascii()), {r for r in recipients if not r.isascii()}


def command(verb: str, arg: str = "", params: list[str] | None = None) -> bytes:
    """One command line; refuses control characters (they would end or forge a command)."""
    text = " ".join([f"{verb}{arg}", *(params or [])])
    if _CONTROL.search(text):
        raise ValueError(f"control character in {verb}")
    return text.encode("utf-8") + b"\r\n"


# -- one connection ---------------------------------------------------------------------------


class Lost(Exception):
    """The connection broke or timed out; `phase` says when (for the outcome text)."""

    def __init__(self, phase: str, *, timeout: bool = False, detail: str = "") -> None:
        super().__init__(phase)
        self.phase = phase
        self.timeout = timeout
        self.detail = detail

    def text(self, remote: str) -> str:
        if self.timeout:
            return f"conversation with {remote} timed out {self.phase}"
        return f"lost connection with {remote} {self.phase}" + (f" ({self.detail})" if self.detail else "")


def _why(exc: OSError) -> str:
    return sanitize(exc.strerror or str(exc) or type(exc).__name__, 100)


class Connection:
    """A client connection on asyncio streams: commands out, whole replies in.

    Open the streams with `limit=MAX_LINE` (open_tcp does), so that an overlong reply line
    is a protocol error rather than memory.
    """

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, remote: str, timeout: float) -> None:
        self.reader = reader
        self.writer = writer
        self.remote = remote
        self.timeout = timeout  # for each reply and flush unless the call says otherwise
        self.utf8 = False  # SMTPUTF8 agreed: reply text may be UTF-8
        self._loop = asyncio.get_running_loop()

    async def reply(self, phase: str, timeout: float | None = None) -> Reply:
        """One whole reply within `timeout` (default: the connection's)."""
        code = 0
        texts: list[str] = []
        deadline = self._loop.time() + (self.timeout if timeout is None else timeout)
        try:
            while True:
                raw = await self._line(deadline)
                c, last, text = parse_reply_line(raw[:-2] if raw.endswith(b"\r\n") else raw[:-1], utf8=self.utf8)
                if texts and c != code:
                    raise ProtocolError(f"reply code changed from {code} to {c} within one reply")
                code = c
                texts.append(text)
                if last:
                    return Reply.from_lines(code, texts)
                if len(texts) >= MAX_LINES:
                    raise ProtocolError(f"reply longer than {MAX_LINES} lines")
        except TimeoutError:
            raise Lost(phase, timeout=True) from None
        except asyncio.IncompleteReadError:
            raise Lost(phase) from None
        except asyncio.LimitOverrunError:
            raise ProtocolError(f"reply line longer than {MAX_LINE} bytes") from None
        except OSError as exc:
            raise Lost(phase, detail=_why(exc)) from None

    async def _line(self, deadline: float) -> bytes:
        # A line already received (the pipelined replies after the first one) needs no timer.
        # Otherwise a plain loop timer that fails the reader: asyncio.timeout costs several
        # times more (a task cancellation, and getpid(2) calls behind get_running_loop).
        if b"\n" in self._unread():
            return await self.reader.readuntil(b"\n")
        timer = self._loop.call_at(deadline, self._expire)
        try:
            return await self.reader.readuntil(b"\n")
        finally:
            timer.cancel()

    def _expire(self) -> None:
        """The reply did not come in time: the reader fails with TimeoutError, for good (a
        connection that timed out is closed, never reused: see usable)."""
        self.reader.set_exception(TimeoutError())

    def send(self, data: bytes) -> None:
        """Queue bytes on the transport; the transport sends them while we read replies."""
        self.writer.write(data)

    async def flush(self, phase: str, timeout: float | None = None) -> None:
        if not self.writer.transport.get_write_buffer_size():
            return  # all of it went out in the write itself (a small message always does)
        try:
            async with asyncio.timeout(self.timeout if timeout is None else timeout):
                await self.writer.drain()
        except TimeoutError:
            raise Lost(phase, timeout=True) from None
        except OSError as exc:
            raise Lost(phase, detail=_why(exc)) from None

    def _unread(self) -> bytes | bytearray:
        """Bytes received and not read yet. StreamReader has no public way to ask; its
        `_buffer` has been there since asyncio began."""
        return getattr(self.reader, "_buffer", b"")

    def buffered(self) -> int:
        return len(self._unread())

    def usable(self) -> bool:
        """Still open, nothing unread (no late reply, no 421 from an idle timeout), no EOF."""
        return not (self.writer.is_closing() or self.reader.at_eof() or self.reader.exception() is not None or self.buffered())

    async def start_tls(self, context: ssl.SSLContext, server_hostname: str | None, phase: str, timeout: float | None = None) -> None:
        """Upgrade to TLS. Handshake failures raise ssl.SSLError (or ValueError for a server
        name that is no valid IDNA name); a broken connection raises Lost."""
        t = self.timeout if timeout is None else timeout
        try:
            async with asyncio.timeout(t):
                await self.writer.start_tls(context, server_hostname=server_hostname, ssl_handshake_timeout=t)
        except TimeoutError:
            raise Lost(phase, timeout=True) from None
        except ssl.SSLError:
            raise
        except OSError as exc:
            raise Lost(phase, detail=_why(exc)) from None

    @property
    def tls_info(self) -> tuple[str, str] | None:
        """(protocol version, cipher) once TLS is up."""
        obj = self.writer.get_extra_info("ssl_object")
        if obj is None:
            return None
        cipher = obj.cipher()
        return obj.version() or "TLS", cipher[0] if cipher else "unknown"

    async def quit(self) -> None:
        """QUIT and wait (briefly) for the 221; what it says does not matter."""
        try:
            async with asyncio.timeout(min(self.timeout, QUIT_TIMEOUT)):
                self.writer.write(b"QUIT\r\n")
                await self.writer.drain()
                await self.reader.readuntil(b"\n")
        except (TimeoutError, OSError, asyncio.IncompleteReadError, asyncio.LimitOverrunError, ValueError):
            pass

    def quit_nowait(self) -> None:
        """QUIT and close without waiting: the transport sends what it holds before closing."""
        try:
            if not self.writer.is_closing():
                self.writer.write(b"QUIT\r\n")
            self.writer.close()
        except (OSError, RuntimeError):  # RuntimeError: the event loop is already closed
            pass

    async def close(self) -> None:
        self.writer.close()
        try:
            async with asyncio.timeout(1.0):
                await self.writer.wait_closed()
        except (TimeoutError, OSError, ssl.SSLError):
            pass


async def open_tcp(host: str, port: int, timeout: float) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    """Connect with TCP_NODELAY (commands are small and a pipelined group must not wait for
    Nagle) and a reply-line limit of MAX_LINE. Raises TimeoutError or OSError."""
    async with asyncio.timeout(timeout):
        reader, writer = await asyncio.open_connection(host, port, limit=MAX_LINE)
    sock = writer.get_extra_info("socket")
    if sock is not None:
        try:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        except (OSError, AttributeError):
            pass
    return reader, writer

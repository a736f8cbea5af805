"""A raw-socket SMTP client for exact-byte tests, plus small helpers the test files share.

`SmtpClient` sends exactly the bytes it is given and reads replies line by line, so tests
can pipeline, send bare <LF>/<CR>, inject plaintext before TLS and see exactly what the
server answered (code, enhanced status, text) and when it closed the connection.
"""

from __future__ import annotations

import re
import socket
import ssl
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from conftest import IN_CI, Mta, require_tool

__all__ = [
    "IN_CI", "TRUSTED", "UNTRUSTED", "UNTRUSTED2", "Mta", "Reply", "SmtpClient", "dot_stuff", "queue_id_of",
    "require_tool", "restart", "send_one", "wait_for", "wait_for_log",
]  # fmt: skip

TRUSTED = "127.0.0.1"  # in outbound.mynetworks of the test config
UNTRUSTED = "127.0.0.2"  # an outsider
UNTRUSTED2 = "127.0.0.3"


@dataclass(frozen=True)
class Reply:
    code: int
    lines: list[str]  # the text of each line, after "NNN-" / "NNN "

    @property
    def line(self) -> str:
        """The last line as sent: '250 2.0.0 Ok'."""
        return f"{self.code} {self.lines[-1]}"

    @property
    def text(self) -> str:
        return self.lines[-1]

    @property
    def status(self) -> str:
        """The enhanced status code of the last line, '' if there is none."""
        m = re.match(r"^([245]\.\d{1,3}\.\d{1,3}) ", self.lines[-1] + " ")
        return m.group(1) if m else ""

    def __str__(self) -> str:
        return "\n".join(f"{self.code}{'-' if i < len(self.lines) - 1 else ' '}{t}" for i, t in enumerate(self.lines))


class ConnectionClosed(Exception):
    pass


class SmtpClient:
    """One connection. `reply()` reads one (possibly multi-line) reply."""

    def __init__(self, port: int, source: str = TRUSTED, *, timeout: float = 5.0, host: str = "127.0.0.1") -> None:
        self.sock: socket.socket | ssl.SSLSocket = socket.create_connection((host, port), timeout=timeout, source_address=(source, 0))
        self.timeout = timeout
        self.buf = b""

    # -- context manager ---------------------------------------------------------------------

    def __enter__(self) -> SmtpClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        try:
            self.sock.close()
        except OSError:
            pass

    # -- bytes -------------------------------------------------------------------------------

    def send(self, data: bytes | str) -> None:
        if isinstance(data, str):
            data = data.encode()
        self.sock.sendall(data)

    def _fill(self) -> None:
        data = self.sock.recv(65536)
        if not data:
            raise ConnectionClosed(f"connection closed; unparsed {self.buf!r}")
        self.buf += data

    def read_line(self) -> bytes:
        while b"\r\n" not in self.buf:
            self._fill()
        line, _, self.buf = self.buf.partition(b"\r\n")
        return line

    def reply(self) -> Reply:
        code = None
        lines: list[str] = []
        while True:
            raw = self.read_line()
            m = re.match(rb"^(\d{3})([ -])(.*)$", raw, re.DOTALL)
            assert m, f"not an SMTP reply line: {raw!r}"
            c = int(m.group(1))
            assert code is None or c == code, f"code changed inside a multi-line reply: {raw!r}"
            code = c
            lines.append(m.group(3).decode("utf-8", "surrogateescape"))
            if m.group(2) == b" ":
                return Reply(code, lines)

    def replies(self, n: int) -> list[Reply]:
        return [self.reply() for _ in range(n)]

    def cmd(self, line: str | bytes) -> Reply:
        """Send one command line (CRLF appended) and read its reply."""
        if isinstance(line, str):
            line = line.encode("utf-8", "surrogateescape")
        self.send(line + b"\r\n")
        return self.reply()

    def expect(self, line: str | bytes, code: int, status: str = "") -> Reply:
        r = self.cmd(line)
        assert r.code == code, f"{line!r}: expected {code} {status}, got {r}"
        if status:
            assert r.status == status, f"{line!r}: expected {code} {status}, got {r}"
        return r

    def pending(self, wait: float = 0.3) -> bytes:
        """Whatever the server sends within `wait` seconds (nothing expected, usually)."""
        self.sock.settimeout(wait)
        try:
            while True:
                data = self.sock.recv(65536)
                if not data:
                    break
                self.buf += data
        except (TimeoutError, ssl.SSLWantReadError):
            pass
        finally:
            self.sock.settimeout(self.timeout)
        out, self.buf = self.buf, b""
        return out

    def closed_by_server(self, wait: float | None = None) -> bool:
        """True when the server closes the connection (EOF or reset) within `wait` seconds
        and sent nothing more before that."""
        self.sock.settimeout(wait if wait is not None else self.timeout)
        try:
            while True:
                data = self.sock.recv(65536)
                if not data:
                    return not self.buf
                self.buf += data
        except (ConnectionResetError, BrokenPipeError):
            return not self.buf
        except TimeoutError:
            return False
        finally:
            self.sock.settimeout(self.timeout)

    # -- session shortcuts -------------------------------------------------------------------

    def greeting(self) -> Reply:
        r = self.reply()
        assert r.code == 220, r
        return r

    def ehlo(self, name: str = "client.test") -> Reply:
        r = self.cmd(f"EHLO {name}")
        assert r.code == 250, r
        return r

    def starttls(self, ctx: ssl.SSLContext | None = None, server_hostname: str = "mx.example.test") -> None:
        """Wrap the socket in TLS (after the 220 of STARTTLS was read)."""
        assert not self.buf, f"plaintext left before the TLS handshake: {self.buf!r}"
        if ctx is None:
            ctx = ssl.create_default_context()
            ctx.check_hostname = False
            ctx.verify_mode = ssl.CERT_NONE
        self.sock = ctx.wrap_socket(self.sock, server_hostname=server_hostname)

    def hello(self, name: str = "client.test") -> SmtpClient:
        """The 220 greeting, then EHLO `name`: the client, ready for a transaction."""
        self.greeting()
        self.ehlo(name)
        return self

    def open_data(self, sender: str = "s@client.test", rcpts: Sequence[str] = ("a@example.test",), *, mail_params: str = "") -> Reply:
        """MAIL (250 2.1.0), RCPT... (250 2.1.5 each), DATA: its 354, the content is the caller's to send."""
        self.expect(f"MAIL FROM:<{sender}>{' ' + mail_params if mail_params else ''}", 250, "2.1.0")
        for r in rcpts:
            self.expect(f"RCPT TO:<{r}>", 250, "2.1.5")
        return self.expect("DATA", 354)

    def send_message(self, sender: str, rcpts: Sequence[str], content: bytes, *, mail_params: str = "") -> Reply:
        """MAIL, RCPT..., DATA, the content (dot-stuffed, ending in CRLF), '.'; the final reply."""
        self.open_data(sender, rcpts, mail_params=mail_params)
        if not content.endswith(b"\r\n"):
            content += b"\r\n"
        self.send(dot_stuff(content) + b".\r\n")
        return self.reply()


def send_one(mta: Mta, content: bytes, client: str = UNTRUSTED, *, sender: str = "s@client.test",
             rcpts: Sequence[str] = ("a@example.test",), goes_on: bool = True) -> Reply:  # fmt: skip
    """One message over a session of its own (EHLO client.test): the reply to its final dot. With
    `goes_on`, the session must go on after that verdict (a NOOP is answered 250)."""
    with SmtpClient(mta.port, client, timeout=30).hello() as c:
        r = c.send_message(sender, rcpts, content)
        if goes_on:
            assert c.cmd("NOOP").line == "250 2.0.0 Ok", "the session goes on after the verdict"
        return r


def dot_stuff(content: bytes) -> bytes:
    out = content.replace(b"\r\n.", b"\r\n..")
    return b"." + out if out.startswith(b".") else out


def queue_id_of(reply: Reply) -> str:
    m = re.fullmatch(r"2\.0\.0 Ok: queued as ([0-9A-Z]{17})", reply.text)
    assert reply.code == 250 and m, f"not a queued reply: {reply}"
    return m.group(1)


def wait_for(pred: Callable[[], object], timeout: float = 5.0, what: str = "condition") -> object:
    deadline = time.monotonic() + timeout
    while True:
        v = pred()
        if v:
            return v
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.02)


def wait_for_log(mta: Mta, text: str | re.Pattern[str], timeout: float = 5.0) -> str:
    """The log, once it contains `text` (a string or a compiled regex)."""

    def found() -> str | None:
        log = mta.log()
        ok = text.search(log) if isinstance(text, re.Pattern) else text in log
        return log if ok else None

    try:
        return wait_for(found, timeout, f"log text {text!r}")  # type: ignore[return-value]
    except AssertionError:
        raise AssertionError(f"log text {text!r} not found; log:\n{mta.log()}") from None


def restart(mta: Mta) -> Mta:
    """Start a stopped/killed Mta again and wait for *this* run's ready line (the log is appended to)."""
    before = mta.log().count("ready:")
    mta.start()
    wait_for(lambda: mta.log().count("ready:") > before, 10.0, "the restarted server's ready line")
    return mta

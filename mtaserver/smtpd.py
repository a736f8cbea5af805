"""The SMTP server session: greeting, commands, DATA spooled to disk, commit, reply.

DESCRIPTION
    `SmtpSession` is an aiosmtpd `SMTP` protocol whose command loop and DATA reader are our
    own. aiosmtpd's stock loop cannot give the replies this MTA must give (enhanced status
    codes everywhere, Postfix's texts, 421 on timeout), does not advertise or batch
    PIPELINING, reads DATA one line per await (about 90% of its profile at 100 KB) and
    keeps the message in memory, and introspects the handler on every connection
    (shared/BENCH-NOTES.md). So the session keeps aiosmtpd's protocol class and its SASL
    machinery (used by the policy work) and replaces:

      * `__init__`: no per-connection introspection; the command table is a class constant;
      * the command loop: exact replies, limits with their own replies, bare-newline policy
        on command lines, error budget, timeouts that answer 421 before closing,
        replies batched while pipelined commands are pending (RFC 2920);
      * DATA: chunked reads through the sans-IO `DataScanner`, written straight to the
        spool file, committed durably before "250 2.0.0 Ok: queued as <id>".

    One session serves one connection. The server object (`SmtpServer`) owns what sessions
    share: the current config, the queue store, per-IP connection counts, the live sessions.

SECURITY
    Talks to untrusted clients. Every buffer is bounded (command line, text line, header,
    message size, recipients, errors, time); client text reaches the log only through
    `sanitize`. Relay control is `policy.check_recipient`; nothing here relaxes it.

STANDARDS
    RFC 5321 (SMTP), RFC 1869/1870 (EHLO, SIZE), RFC 2920 (PIPELINING), RFC 3207 (STARTTLS),
    RFC 2034/3463 (enhanced status codes), RFC 6152 (8BITMIME), RFC 6531 (SMTPUTF8).

CONFIG
    server.hostname, server.banner, server.limits.*, server.tls, domains.local,
    domains.relay, outbound.mynetworks, inbound.bare_newline*, inbound.protocol_checks.
    reject_non_fqdn_sender, advanced.max_message_size, advanced.log_client_port, queue.min_free
"""

from __future__ import annotations

import asyncio
import email.utils
import logging
import ssl
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from aiosmtpd.smtp import SMTP as AiosmtpdSMTP

from . import policy
from .address import AddressError, Mailbox, needs_smtputf8, parse_path
from .datastream import BareNewline, DataProblem, DataScanner
from .logutil import sanitize
from .model import ClientInfo, Decision, Envelope, Recipient, Reply
from .values import in_networks
from .filters.chain import FilterChain, rewrite_message
from .queue.store import QueueStore, QueueWriteError, Spool

if TYPE_CHECKING:
    from .config import Config, Listener
    from .postscreen.screen import Screen, Screener

log = logging.getLogger("smtpd")

READ_LIMIT = 1 << 16  # StreamReader buffer: big DATA reads; command lines are checked separately
READ_CHUNK = 1 << 16
FORBIDDEN_COMMANDS = frozenset({"CONNECT", "GET", "POST", "PUT", "HEAD", "USER", "PASS"})  # Postfix smtpd_forbidden_commands
JUNK_COMMANDS = frozenset({"NOOP", "RSET", "VRFY", "HELP"})
JUNK_LIMIT = 100  # Postfix smtpd_junk_command_limit

_date_cache: tuple[int, str] = (0, "")


def _header_date() -> str:
    """Now as an RFC 5322 date in local time; made once a second (it is in every Received:)."""
    global _date_cache
    now = int(time.time())
    if _date_cache[0] != now:
        _date_cache = (now, email.utils.formatdate(now, localtime=True))
    return _date_cache[1]


R_OK = Reply(250, "2.0.0", "Ok")
R_MAIL_OK = Reply(250, "2.1.0", "Ok")
R_RCPT_OK = Reply(250, "2.1.5", "Ok")
R_BYE = Reply(221, "2.0.0", "Bye")
R_GO_AHEAD = Reply(354, "", "End data with <CR><LF>.<CR><LF>")
R_NEED_HELO = Reply(503, "5.5.1", "Error: send HELO/EHLO first")
R_NESTED_MAIL = Reply(503, "5.5.1", "Error: nested MAIL command")
R_NEED_MAIL = Reply(503, "5.5.1", "Error: need MAIL command")
R_NEED_RCPT = Reply(503, "5.5.1", "Error: need RCPT command")
R_UNKNOWN = Reply(502, "5.5.2", "Error: command not recognized")
R_NOT_IMPL = Reply(502, "5.5.1", "Error: command not implemented")
R_TOO_LONG = Reply(500, "5.5.2", "Error: command line too long")
R_BAD_SYNTAX = Reply(500, "5.5.2", "Error: bad syntax")
R_TOO_MANY_RCPT = Reply(452, "4.5.3", "Error: too many recipients")
R_SIZE_FIXED = Reply(552, "5.3.4", "Message size exceeds fixed limit")
R_NO_SPACE = Reply(452, "4.3.1", "Insufficient system storage")
R_UNAUTH_PIPE = Reply(503, "5.5.0", "<DATA>: Data command rejected: Improper use of SMTP command pipelining")
R_TLS_ACTIVE = Reply(554, "5.5.1", "Error: TLS already active")
R_UTF8_UNDECLARED = Reply(553, "5.6.7", "Must declare SMTPUTF8 to send unicode address")
R_VRFY = Reply(502, "5.5.1", "VRFY command is disabled")
R_AUTH_OFF = Reply(503, "5.5.1", "Error: authentication not enabled")
R_GOAWAY = Reply(221, "2.7.0", "Error: I can break rules, too. Goodbye.")
DATA_REPLIES = {
    DataProblem.BARE_LF: Reply(550, "5.5.2", "Error: bare <LF> received"),
    DataProblem.BARE_CR: Reply(550, "5.5.2", "Error: bare <CR> received"),
    DataProblem.LINE_TOO_LONG: Reply(500, "5.5.2", "Error: message line too long"),
    DataProblem.TOO_BIG: Reply(552, "5.3.4", "Error: message file too big"),
    DataProblem.HEADER_TOO_BIG: Reply(552, "5.3.4", "Error: message header too big"),
}


class ConfigHolder:
    """The config in force. A reload swaps `current`; sessions take it once, at connect."""

    def __init__(self, cfg: Config) -> None:
        self.current = cfg


class SmtpServer:
    """What the sessions of one listener in one worker process share."""

    def __init__(
        self,
        config: ConfigHolder,
        listener: Listener,
        store: QueueStore,
        tls_context: ssl.SSLContext | None = None,
        screener: Screener | None = None,
    ) -> None:
        self.config = config
        self.listener = listener
        self.store = store
        self.screener = screener if listener.postscreen else None  # None: no postscreen, no cost
        self.tls_context = tls_context if listener.tls == "starttls" else None
        self.filters = FilterChain(lambda: config.current)
        self.sessions: set[SmtpSession] = set()
        self.per_ip: dict[str, int] = {}
        self.shutting_down = False

    def protocol(self) -> SmtpSession:
        return SmtpSession(self)

    def shutdown(self) -> None:
        """Stop sessions: idle ones get 421 now, busy ones after the command they are in."""
        self.shutting_down = True
        for s in list(self.sessions):
            s.shutdown()


@dataclass(slots=True)
class _Transaction:
    sender: Mailbox
    params: dict[str, str | None]
    recipients: list[Mailbox] = field(default_factory=list)


class SmtpSession(AiosmtpdSMTP):
    """One SMTP connection. Runs `_serve()` as its task; everything else is called from it."""

    def __init__(self, server: SmtpServer) -> None:
        # aiosmtpd's __init__ introspects the handler and itself with inspect.getmembers on
        # every connection (0.6-0.8 ms); we set up the protocol base directly instead.
        loop = asyncio.get_running_loop()
        self.loop = loop
        asyncio.StreamReaderProtocol.__init__(
            self, asyncio.StreamReader(limit=READ_LIMIT, loop=loop), client_connected_cb=self._cb_client_connected, loop=loop
        )
        self.server = server
        self.cfg: Config = server.config.current
        self.limits = self.cfg.server.limits
        self.hostname = self.cfg.server.hostname
        self.transport: asyncio.Transport | None = None
        self._timer: asyncio.TimerHandle | None = None
        self._deadline: float | None = None  # loop time; None: no timeout armed
        self._task: asyncio.Task[None] | None = None
        self._out: list[bytes] = []
        self._idle = False  # waiting for a command: shutdown may interrupt
        self._closing = False
        self._shutdown = False
        self.peer_ip = ""
        self.peer_port = 0
        self.client_name = "unknown"
        self.trusted = False
        self.helo: str | None = None
        self.esmtp = False
        self.tls = server.listener.tls == "implicit"  # the TLS layer came with the connection
        self._failed = False
        self.tx: _Transaction | None = None
        self.errors = 0
        self.junk = 0
        self.last_command = "CONNECT"
        self.counts: dict[str, list[int]] = {}
        self.bare_policy = BareNewline(self.cfg.inbound.bare_newline)
        self.screen: Screen | None = None  # postscreen, while it still watches this session

    # -- transport life cycle ----------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        asyncio.StreamReaderProtocol.connection_made(self, transport)
        self.transport = transport  # type: ignore[assignment]
        peer = transport.get_extra_info("peername") or ("?", 0)
        self.peer_ip, self.peer_port = str(peer[0]), int(peer[1])
        # TCP_NODELAY: uvloop (and asyncio) set it on every TCP transport already.
        self.server.sessions.add(self)
        self.server.store.receiving += 1
        self._task = self.loop.create_task(self._serve())

    def connection_lost(self, exc: Exception | None) -> None:
        asyncio.StreamReaderProtocol.connection_lost(self, exc)
        self._stop_timer()
        self.transport = None  # the task sees EOF on its next read and ends

    def eof_received(self) -> bool:
        # Keep our side open: a client that half-closes after a pipelined QUIT still gets
        # its replies; the session ends when it has read the last buffered command.
        return bool(asyncio.StreamReaderProtocol.eof_received(self))

    # -- output ------------------------------------------------------------------------------

    def _reply(self, reply: Reply) -> None:
        if reply.is_error:
            self.errors += 1
            self._failed = True
        self._out.append(reply.encode())

    async def _flush(self) -> None:
        if self._out and self.transport is not None and not self.transport.is_closing():
            data = b"".join(self._out)
            self._out.clear()
            self.transport.write(data)
            # _paused: our base's (asyncio FlowControlMixin) record of pause_writing. Set, the
            # client does not read what we send: wait for it, within the timeout.
            if self._paused:
                self._arm(self.limits.command_timeout)
                try:
                    await self._writer.drain()
                finally:
                    self._disarm()
        else:
            self._out.clear()

    def _has_pending_line(self) -> bool:
        # StreamReader offers no public peek; aiosmtpd reads _buffer the same way.
        return b"\n" in self._reader._buffer  # type: ignore[attr-defined]

    def _pending_input(self) -> int:
        return len(self._reader._buffer)  # type: ignore[attr-defined]

    def _unread(self, data: bytes) -> None:
        """Give back bytes read past the end of DATA: pipelined commands."""
        if data:
            self._reader._buffer[:0] = data  # type: ignore[attr-defined]

    def _close(self) -> None:
        self._closing = True
        t = self.transport
        if t is not None and not t.is_closing():
            t.close()
            self.loop.call_later(5.0, t.abort)  # a client that never reads must not pin us

    # -- timers ------------------------------------------------------------------------------
    # A session arms and disarms its timeout around every read and write, about 14 times per
    # message. Arming sets a deadline; the one loop timer behind it is rescheduled only when
    # it would fire too late, and when it fires early (the deadline moved on) it re-arms
    # itself. So a busy session creates about one timer, not one per read.

    def _arm(self, seconds: float) -> None:
        deadline = self._deadline = self.loop.time() + seconds
        timer = self._timer
        if timer is None or timer.when() > deadline:
            if timer is not None:
                timer.cancel()
            self._timer = self.loop.call_at(deadline, self._tick)

    def _disarm(self) -> None:
        self._deadline = None  # the timer, when it fires, finds nothing to do

    def _stop_timer(self) -> None:
        """The session is over: drop the timer (it holds the session)."""
        self._deadline = None
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    def _tick(self) -> None:
        self._timer = None
        deadline = self._deadline
        if deadline is None:
            return
        if self.loop.time() < deadline:
            self._timer = self.loop.call_at(deadline, self._tick)
            return
        self._deadline = None
        self._on_timeout()

    def _on_timeout(self) -> None:
        log.info("timeout after %s from %s", self.last_command, self._label())
        if self.transport is not None and not self.transport.is_closing():
            self.transport.write(b"".join(self._out) + Reply(421, "4.4.2", f"{self.hostname} Error: timeout exceeded").encode())
            self._out.clear()
        self._close()

    def shutdown(self) -> None:
        self._shutdown = True
        if self._idle:
            self._goodbye(Reply(421, "4.3.2", f"{self.hostname} Service shutting down, closing transmission channel"))

    def _goodbye(self, reply: Reply) -> None:
        if self.transport is not None and not self.transport.is_closing():
            self.transport.write(b"".join(self._out) + reply.encode())
            self._out.clear()
        self._close()

    # -- the session -------------------------------------------------------------------------

    def _label(self) -> str:
        if self.cfg.advanced.log_client_port:
            return f"{self.client_name}[{self.peer_ip}]:{self.peer_port}"
        return f"{self.client_name}[{self.peer_ip}]"

    async def _serve(self) -> None:
        srv = self.server
        ip = self.peer_ip
        srv.per_ip[ip] = srv.per_ip.get(ip, 0) + 1
        try:
            limit = self.limits.connections_per_ip
            too_many = bool(limit) and srv.per_ip[ip] > limit
            screener = srv.screener
            # The client waits for the greeting, not for our bookkeeping: on a plain
            # connection the 220 goes out first, and the log line and the mynetworks lookup
            # happen while the client answers it (bench/RESULTS.md, step 11); nothing is read
            # before they are done. A refusal or postscreen logs the connection first, so its
            # own lines follow it.
            greet_first = screener is None and not too_many and not srv.shutting_down
            if not greet_first:
                log.info("connect from %s", self._label())
            if too_many:
                log.warning("NOQUEUE: reject: CONNECT from %s: too many connections", self._label())
                self._goodbye(Reply(421, "4.7.0", f"{self.hostname} Error: too many connections from {ip}"))
                return
            if srv.shutting_down:
                self._goodbye(Reply(421, "4.3.2", f"{self.hostname} Service shutting down"))
                return
            if screener is not None:
                self.screen = screener.connection(self)
                if not await self.screen.before_greeting():
                    return
            self._reply(Reply(220, "", self.cfg.server.banner.format(hostname=self.hostname)))
            await self._flush()
            if greet_first:
                log.info("connect from %s", self._label())
            self.trusted = in_networks(ip, self.cfg.outbound.mynetworks)
            if self.bare_policy is BareNewline.REJECT and self.trusted and self.cfg.inbound.bare_newline_exclude_mynetworks:
                self.bare_policy = BareNewline.NORMALIZE
            while not self._closing:
                line = await self._read_command()
                if line is None:
                    break
                if self.screen is not None and not self.screen.after_read(line):
                    break
                await self._command(line)
                if self._shutdown and not self._closing:
                    self._goodbye(Reply(421, "4.3.2", f"{self.hostname} Service shutting down, closing transmission channel"))
            await self._flush()
        except (ConnectionError, asyncio.IncompleteReadError):
            pass
        except Exception:  # a bug must cost one session, never the worker
            log.exception("session error after %s from %s", self.last_command, self._label())
            self._goodbye(Reply(421, "4.3.0", f"{self.hostname} Error: internal error"))
        finally:
            self._stop_timer()
            if self.screen is not None:
                self.screen.end()
            srv.per_ip[ip] -= 1
            if not srv.per_ip[ip]:
                del srv.per_ip[ip]
            srv.sessions.discard(self)
            srv.store.receiving -= 1
            if not self._closing:
                self._close()
            log.info("disconnect from %s%s", self._label(), self._stats())

    def _stats(self) -> str:
        parts, ok_all, n_all = [], 0, 0
        for verb, (ok, n) in self.counts.items():
            parts.append(f" {verb.lower()}={ok}" if ok == n else f" {verb.lower()}={ok}/{n}")
            ok_all, n_all = ok_all + ok, n_all + n
        parts.append(f" commands={ok_all}" if ok_all == n_all else f" commands={ok_all}/{n_all}")
        return "".join(parts)

    def _count(self, verb: str, ok: bool) -> None:
        c = self.counts.setdefault(verb, [0, 0])
        c[1] += 1
        if ok:
            c[0] += 1

    async def _read_command(self) -> bytes | None:
        """The next acceptable command line, CRLF stripped; None when the session is over.

        Lines refused here (too long, bare newline) get their reply and count as errors.
        """
        while True:
            if len(self._out) >= 64 or not self._has_pending_line():
                await self._flush()  # batched while pipelined commands wait, but never unbounded
            if self._closing:
                return None
            self._idle = True
            self._arm(self.limits.command_timeout)
            try:
                line = await self._reader.readuntil(b"\n")
            except asyncio.IncompleteReadError as exc:
                if exc.partial:
                    log.info("lost connection after %s from %s", self.last_command, self._label())
                return None
            except asyncio.LimitOverrunError:
                line = b""
            finally:
                self._idle = False
                self._disarm()
            if not line or len(line) > self.limits.command_line:
                if not line:
                    await self._skip_line()
                self._reply(R_TOO_LONG)
                if not await self._after_error():
                    return None
                continue
            if line.endswith(b"\r\n") and line.count(b"\r") == 1:
                return line[:-2]
            if self.screen is not None and not line.endswith(b"\r\n") and not self.screen.bare_newline(line):
                return None
            if self.bare_policy is BareNewline.REJECT:
                which = "<LF>" if not line.endswith(b"\r\n") or b"\n" in line[:-2] else "<CR>"
                log.warning("bare %s received after %s from %s", which[1:-1], self.last_command, self._label())
                self._goodbye(Reply(550, "5.5.2", f"Error: bare {which} received"))
                return None
            if self.bare_policy is BareNewline.NOTE:
                log.info("bare newline in command after %s from %s", self.last_command, self._label())
            return line.replace(b"\r", b"").rstrip(b"\n")

    async def _skip_line(self) -> None:
        """Discard the rest of an over-long line, within the command timeout."""
        self._arm(self.limits.command_timeout)
        try:
            while True:
                try:
                    await self._reader.readuntil(b"\n")
                    return
                except asyncio.LimitOverrunError as exc:
                    await self._reader.readexactly(exc.consumed)
        finally:
            self._disarm()

    async def _after_error(self) -> bool:
        """Error budget: past the soft limit slow down, at the hard limit say goodbye (False)."""
        if self.errors >= self.limits.hard_error_limit:
            log.warning("too many errors after %s from %s", self.last_command, self._label())
            self._goodbye(Reply(421, "4.7.0", f"{self.hostname} Error: too many errors"))
            return False
        if self.errors > self.limits.soft_error_limit and self.limits.error_sleep:
            await self._flush()
            await asyncio.sleep(self.limits.error_sleep)
        return True

    async def _command(self, line: bytes) -> None:
        if not line:
            self._reply(R_BAD_SYNTAX)
            await self._after_error()
            return
        verb_b, _, arg_b = line.partition(b" ")
        verb = verb_b.decode("ascii", "replace").upper()
        arg = arg_b.decode("utf-8", "surrogateescape").strip(" ") or None
        handler = self._COMMANDS.get(verb)
        if handler is None:
            if (verb in FORBIDDEN_COMMANDS or verb.endswith(":") or not verb[:1].isalpha()) and (
                self.screen is None or self.screen.non_smtp(line)  # postscreen enforce/ignore: 502, go on
            ):
                log.warning("non-SMTP command from %s: %s", self._label(), sanitize(line, 100))
                self._goodbye(R_GOAWAY)
                return
            self.last_command = "UNKNOWN"
            self._count("unknown", False)
            self._reply(R_UNKNOWN)
            await self._after_error()
            return
        self.last_command = verb
        if verb in JUNK_COMMANDS:
            self.junk += 1
            if self.junk > JUNK_LIMIT:
                log.warning("too many junk commands after %s from %s", verb, self._label())
                self._goodbye(Reply(421, "4.7.0", f"{self.hostname} Error: too many errors"))
                return
        self._failed = False  # set by _reply on a 4xx/5xx: per command, whatever the error budget does
        try:
            await handler(self, arg)
        except ConnectionError:
            self._count(verb, False)  # lost in the middle of the command (Postfix: data=0/1)
            raise
        self._count(verb, not self._failed)
        if self._failed:
            await self._after_error()

    # -- commands ----------------------------------------------------------------------------

    def _reset_tx(self) -> None:
        self.tx = None

    async def _cmd_helo(self, arg: str | None) -> None:
        await self._greet(arg, esmtp=False)

    async def _cmd_ehlo(self, arg: str | None) -> None:
        await self._greet(arg, esmtp=True)

    async def _greet(self, arg: str | None, *, esmtp: bool) -> None:
        if not arg:
            self._reply(Reply(501, "5.5.4", f"Syntax: {'EHLO' if esmtp else 'HELO'} hostname"))
            return
        self.helo = arg
        self.esmtp = esmtp
        self._reset_tx()
        if not esmtp:
            self._reply(Reply(250, "", self.hostname))
            return
        size = self.cfg.advanced.max_message_size
        lines = [self.hostname, "PIPELINING", f"SIZE {size}" if size else "SIZE"]
        if self.screen is not None and self.screen.hide_pipelining:
            del lines[1]
        if self.server.tls_context is not None and not self.tls:
            lines.append("STARTTLS")
        lines += ["ENHANCEDSTATUSCODES", "8BITMIME", "SMTPUTF8"]
        self._reply(Reply(250, "", "\n".join(lines)))

    async def _cmd_mail(self, arg: str | None) -> None:
        if self.helo is None:
            self._reply(R_NEED_HELO)
            return
        if self.tx is not None:
            self._reply(R_NESTED_MAIL)
            return
        try:
            sender, params = parse_path(arg, "FROM", utf8_allowed=True)
        except AddressError:
            if arg is None or not arg[:5].upper() == "FROM:":
                self._reply(Reply(501, "5.5.4", "Syntax: MAIL FROM:<address>"))
            else:
                self._reply(Reply(501, "5.1.7", "Bad sender address syntax"))
            return
        reply = self._check_mail_params(params)
        if reply is None and needs_smtputf8(sender) and "SMTPUTF8" not in params:
            reply = R_UTF8_UNDECLARED
        if reply is None:
            reply = self._check_space(params)
        if reply is not None:
            self._reply(reply)
            return
        self.tx = _Transaction(sender, params)
        self._reply(R_MAIL_OK)

    def _check_mail_params(self, params: dict[str, str | None]) -> Reply | None:
        if params and not self.esmtp:
            return Reply(555, "5.5.4", "Unsupported option: " + sanitize(next(iter(params)), 40))
        for key, value in params.items():
            if key == "SIZE":
                if value is None or not value.isdigit() or len(value) > 20:
                    return Reply(501, "5.5.4", "Bad message size syntax")
                limit = self.cfg.advanced.max_message_size
                if limit and int(value) > limit:
                    return R_SIZE_FIXED
            elif key == "BODY":
                if value is None or value.upper() not in ("7BIT", "8BITMIME"):
                    return Reply(501, "5.5.4", "Bad BODY keyword: " + sanitize(value or "", 40))
            elif key == "SMTPUTF8":
                if value is not None:
                    return Reply(501, "5.5.4", "Bad SMTPUTF8 syntax")
            elif key == "AUTH":
                pass  # RFC 4954 5: ignored unless we trust the client's authentication
            else:
                return Reply(555, "5.5.4", "Unsupported option: " + sanitize(key, 40))
        return None

    def _check_space(self, params: dict[str, str | None]) -> Reply | None:
        declared = int(params.get("SIZE") or 0)
        need = self.cfg.queue.min_free + declared + declared // 2
        if need:
            try:
                if self.server.store.free_bytes() < need:
                    log.warning("NOQUEUE: reject: MAIL from %s: 452 4.3.1 Insufficient system storage", self._label())
                    return R_NO_SPACE
            except OSError:
                return R_NO_SPACE
        return None

    async def _cmd_rcpt(self, arg: str | None) -> None:
        tx = self.tx
        if tx is None:
            self._reply(R_NEED_MAIL)
            return
        try:
            rcpt, params = parse_path(arg, "TO", utf8_allowed=True)
            if rcpt.is_null:
                raise AddressError("null recipient")
        except AddressError:
            if arg is None or not arg[:3].upper() == "TO:":
                self._reply(Reply(501, "5.5.4", "Syntax: RCPT TO:<address>"))
            else:
                self._reply(Reply(501, "5.1.3", "Bad recipient address syntax"))
            return
        if self.screen is not None:
            screened = await self.screen.rcpt(str(tx.sender), str(rcpt))
            if screened is not None:
                self._reply(screened)
                return
        if params:
            self._reply(Reply(555, "5.5.4", "Unsupported option: " + sanitize(next(iter(params)), 40)))
            return
        if needs_smtputf8(rcpt) and "SMTPUTF8" not in tx.params:
            self._reply(R_UTF8_UNDECLARED)
            return
        if not rcpt.domain and rcpt.local.lower() == "postmaster":
            # RFC 5321 4.5.1: <postmaster> without a domain must be accepted.
            rcpt = Mailbox(rcpt.local, (self.cfg.domains.local or [self.hostname])[0])
        if len(tx.recipients) >= self.limits.recipients:
            self._reply(R_TOO_MANY_RCPT)
            return
        reject = policy.check_recipient(
            rcpt,
            sender=tx.sender,
            trusted=self.trusted,
            local_domains=self.cfg.domains.local,
            relay_domains=self.cfg.domains.relay,
            reject_non_fqdn_sender=self.cfg.inbound.protocol_checks.reject_non_fqdn_sender,
        )
        if reject is not None:
            log.info(
                "NOQUEUE: reject: RCPT from %s: %s; from=<%s> to=<%s> proto=%s helo=<%s>",
                self._label(), reject.line(), sanitize(str(tx.sender)), sanitize(str(rcpt)),
                "ESMTP" if self.esmtp else "SMTP", sanitize(self.helo or ""),
            )  # fmt: skip
            self._reply(reject)
            return
        tx.recipients.append(rcpt)
        self._reply(R_RCPT_OK)

    async def _cmd_data(self, arg: str | None) -> None:
        tx = self.tx
        if tx is None:
            self._reply(R_NEED_MAIL)
            return
        if not tx.recipients:
            self._reply(R_NEED_RCPT)
            return
        if arg:
            self._reply(Reply(501, "5.5.4", "Syntax: DATA"))
            return
        if self._pending_input():
            # RFC 2920 3.1: DATA ends a pipelined group; content before 354 is a protocol
            # violation (Postfix reject_unauth_pipelining), and the classic smuggling vector.
            log.warning("improper command pipelining after DATA from %s", self._label())
            self._reply(R_UNAUTH_PIPE)
            return
        store = self.server.store
        qid = store.new_id()
        spool = store.new_spool(qid)  # in memory; a file only once it is large (then errors show at commit)
        committed = False
        try:
            self._reply(R_GO_AHEAD)
            await self._flush()  # the header is made while the client starts sending
            received = self._received_header(qid, tx)
            spool.write(received)
            scanner = await self._receive(spool)
            if scanner is None:  # connection lost or timed out: nothing was acknowledged
                raise ConnectionResetError("connection lost in DATA")
            if scanner.problems:
                problem = scanner.problems[0]
                log.warning("%s: reject: DATA from %s: %s", qid, self._label(), problem.value)
                if problem in (DataProblem.BARE_LF, DataProblem.BARE_CR):
                    self._goodbye(DATA_REPLIES[problem])  # Postfix: reply, then disconnect
                else:
                    self._reply(DATA_REPLIES[problem])
                self._reset_tx()
                return
            if scanner.normalized and self.bare_policy is BareNewline.NOTE:
                log.info("%s: bare newline normalized in message from %s", qid, self._label())
            if FilterChain.wanted(self.cfg) and not await self._filter(qid, tx, spool, len(received)):
                return
            env = Envelope(
                queue_id=qid,
                sender=str(tx.sender),
                recipients=[Recipient(address=str(r)) for r in tx.recipients],
                arrival=time.time(),
                client=ClientInfo(
                    ip=self.peer_ip, port=self.peer_port, name=self.client_name, helo=self.helo,
                    protocol=self._protocol_name(tx), trusted=self.trusted,
                ),  # fmt: skip
                body_type=(tx.params.get("BODY") or "").upper() or None,
                smtputf8="SMTPUTF8" in tx.params,
            )
            try:
                if not store.commit_inline(spool, env):
                    # Shielded: a client that hangs up mid-commit must not leave half a commit.
                    await asyncio.shield(store.commit(spool, env, announce=False))
            except QueueWriteError as exc:
                log.error("%s: queue file write error: %s", qid, exc)
                self._reply(exc.reply)
                self._reset_tx()
                return
            committed = True
            self.errors = 0
            self.junk = 0  # Postfix: "The junk command count is reset after mail is delivered."
            self._reset_tx()
            self._reply(Reply(250, "2.0.0", f"Ok: queued as {qid}"))
            try:
                await self._flush()  # the client waits for this; the wake-up and the log can wait
            finally:
                store.announce(qid)
                log.info("%s: client=%s", qid, self._label())
                log.info("%s: from=<%s>, size=%d, nrcpt=%d (queue active)", qid, sanitize(env.sender), env.size, len(env.recipients))
        finally:
            if not committed:
                store.discard(spool)

    async def _filter(self, qid: str, tx: _Transaction, spool: Spool, offset: int) -> bool:
        """The content filters (filters/chain.py): False when the message is not to be queued."""
        store = self.server.store
        verdict = await self.server.filters.run(
            size=spool.size, trusted=self.trusted,
            content=lambda: store.content_chunks(spool), whole=lambda: store.content(spool),
        )  # fmt: skip
        if verdict.decision in (Decision.CONTINUE, Decision.ACCEPT):
            if verdict.reason:
                log.info("%s: filter: %s", qid, verdict.reason)
            if verdict.headers or verdict.subject_tag:
                spool.replace(rewrite_message(await store.content(spool), offset, verdict.headers, verdict.subject_tag))
            return True
        where = f"END-OF-MESSAGE from {self._label()}"
        envelope = f"from=<{sanitize(str(tx.sender))}> to=<{sanitize(str(tx.recipients[0]))}> proto={'ESMTP' if self.esmtp else 'SMTP'} helo=<{sanitize(self.helo or '')}>"
        if verdict.decision is Decision.DISCARD:
            log.info("%s: filter-discard: %s: %s; %s", qid, where, verdict.reason, envelope)
            self._reply(Reply(250, "2.0.0", f"Ok: queued as {qid}"))  # as Postfix DISCARD: the client is not told
        else:
            assert verdict.reply is not None
            log.info("%s: filter-reject: %s: %s (%s); %s", qid, where, verdict.reply.line(), verdict.reason, envelope)
            self._reply(verdict.reply)
        self._reset_tx()
        return False

    async def _receive(self, spool: Spool) -> DataScanner | None:
        limits = self.limits
        scanner = DataScanner(
            bare_newline=self.bare_policy,
            max_line=limits.text_line,
            max_size=self.cfg.advanced.max_message_size,
            max_header=limits.header_size,
        )
        reader = self._reader
        while True:
            self._arm(limits.data_timeout)
            try:
                chunk = await reader.read(READ_CHUNK)
            except ConnectionError:
                chunk = b""  # a reset is a lost connection too
            finally:
                self._disarm()
            if not chunk:
                log.info("lost connection after DATA (%d bytes) from %s", scanner.size, self._label())
                return None
            result = scanner.feed(chunk)
            if result.content:
                spool.write(result.content)
            if result.done:
                self._unread(result.leftover)
                return scanner

    def _protocol_name(self, tx: _Transaction) -> str:
        if not self.esmtp:
            return "SMTP"
        base = "UTF8SMTP" if "SMTPUTF8" in tx.params else "ESMTP"
        return base + ("S" if self.tls else "")

    def _received_header(self, qid: str, tx: _Transaction) -> bytes:
        helo = sanitize(self.helo or "", 100).replace("(", "?").replace(")", "?")
        lines = [f"Received: from {helo} ({self.client_name} [{self.peer_ip}])"]
        if self.tls and self.transport is not None:
            ssl_obj = self.transport.get_extra_info("ssl_object")
            if ssl_obj is not None:
                lines.append(f"\t(using {ssl_obj.version()} with cipher {ssl_obj.cipher()[0]})")
        lines.append(f"\tby {self.hostname} (mtaserver) with {self._protocol_name(tx)} id {qid}")
        date = _header_date()
        if len(tx.recipients) == 1:
            lines.append(f"\tfor <{sanitize(str(tx.recipients[0]), 300)}>; {date}")
        else:
            lines[-1] += ";"
            lines.append(f"\t{date}")
        return ("\r\n".join(lines) + "\r\n").encode("ascii", "replace")

    async def _cmd_rset(self, arg: str | None) -> None:
        self._reset_tx()
        self._reply(R_OK)

    async def _cmd_noop(self, arg: str | None) -> None:
        self._reply(R_OK)

    async def _cmd_quit(self, arg: str | None) -> None:
        self._reply(R_BYE)
        await self._flush()
        self._close()

    async def _cmd_vrfy(self, arg: str | None) -> None:
        self._reply(R_VRFY)

    async def _cmd_auth(self, arg: str | None) -> None:
        self._reply(R_AUTH_OFF)

    async def _cmd_starttls(self, arg: str | None) -> None:
        if self.tls:
            self._reply(R_TLS_ACTIVE)
            return
        ctx = self.server.tls_context
        if ctx is None:
            self._reply(R_NOT_IMPL)
            return
        if arg:
            self._reply(Reply(501, "5.5.4", "Syntax: STARTTLS"))
            return
        self._reply(Reply(220, "2.0.0", "Ready to start TLS"))
        await self._flush()
        if self._pending_input():
            # CVE-2011-0411: plaintext pipelined after STARTTLS must not run inside TLS. Checked
            # after the 220 is out (bytes may arrive while it drains), with no await between
            # here and the handshake; Postfix purges its read buffer at the same point.
            n = self._pending_input()
            self._reader._buffer.clear()  # type: ignore[attr-defined]
            log.warning("discarding %d bytes of plaintext pipelined after STARTTLS from %s", n, self._label())
        self._arm(self.limits.command_timeout)
        try:
            await self._writer.start_tls(ctx)
        except (ssl.SSLError, OSError, asyncio.TimeoutError, ConnectionError) as exc:
            log.info("SSL_accept error from %s: %s", self._label(), sanitize(str(exc), 200))
            self._close()
            raise ConnectionResetError("TLS handshake failed") from None  # STARTTLS did not succeed
        finally:
            self._disarm()
        if self._closing:  # the command timeout fired during the handshake: no TLS session
            raise ConnectionResetError("timeout in the TLS handshake")
        self.transport = self._writer.transport  # type: ignore[assignment]
        self.tls = True
        # RFC 3207 4.2: forget everything learned before TLS.
        self.helo, self.esmtp = None, False
        self._reset_tx()
        ssl_obj = self.transport.get_extra_info("ssl_object")
        log.info("TLS connection established from %s: %s with cipher %s", self._label(),
                 ssl_obj.version() if ssl_obj else "?", ssl_obj.cipher()[0] if ssl_obj else "?")  # fmt: skip

    _COMMANDS: dict[str, Callable] = {
        "HELO": _cmd_helo,
        "EHLO": _cmd_ehlo,
        "MAIL": _cmd_mail,
        "RCPT": _cmd_rcpt,
        "DATA": _cmd_data,
        "RSET": _cmd_rset,
        "NOOP": _cmd_noop,
        "QUIT": _cmd_quit,
        "VRFY": _cmd_vrfy,
        "AUTH": _cmd_auth,
        "STARTTLS": _cmd_starttls,
    }


def make_tls_context(cfg: Config) -> ssl.SSLContext | None:
    tls = cfg.server.tls
    if not tls.cert or not tls.key:
        return None
    from .config import _resolve

    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.minimum_version = {
        "TLSv1": ssl.TLSVersion.TLSv1, "TLSv1.1": ssl.TLSVersion.TLSv1_1,
        "TLSv1.2": ssl.TLSVersion.TLSv1_2, "TLSv1.3": ssl.TLSVersion.TLSv1_3,
    }[tls.min_version]  # fmt: skip
    ctx.load_cert_chain(_resolve(cfg.source, tls.cert), _resolve(cfg.source, tls.key))
    return ctx

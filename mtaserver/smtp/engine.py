"""The SMTP server engine, sans-IO: bytes in, events and replies out.

DESCRIPTION
    `Engine` is the whole command side of one SMTP server session as a state machine. It
    owns no socket, no timer and no task; `smtp/protocol.py` (the asyncio shell) feeds it
    what the client sent and acts on what it returns:

        engine.feed(data)             bytes as they arrive (bounded: see `input_full`)
        ev = engine.next_event()      the next thing to do, or None (need more input, or the
                                      replies of a full batch to be written first)
        engine.take_output()          the reply bytes to write (batched while pipelined
                                      commands are pending, RFC 2920)

    Commands whose syntax and state the engine settles by itself are answered here and
    never surface: a bad argument, a command out of sequence, an over-long line, NOOP,
    RSET, VRFY, unknown verbs. Commands that need the outside world surface as events, and
    the engine waits (next_event returns None) until the shell resolves them:

        Helo         -> resolve(verdict)          the HELO/EHLO stage hooks
        Mail         -> resolve(verdict)          space check + MAIL hooks
        Rcpt         -> resolve(verdict)          RCPT hooks (postscreen, relay, policy)
        Data         -> data_started() or resolve(verdict)   DATA is then streamed by the
                        shell through a `DataScanner` (settings in `data_scanner()`) and
                        ended with `data_done(reply)`
        StartTls     -> tls_started() / the connection ends
        AuthLogin    -> auth_done(login or None, reply)      credentials to check
        AuthRefused  the exchange refused the credentials itself: count a failure
        Quit, Close  the session ends (Close: after a reply that ends it, e.g. 421)
        Pause        the error budget asks for a pause before the next reply

    The engine also reports what postscreen's deep tests watch: a bare-newline command line,
    a non-SMTP verb, input pending after a command (pipelining) through `Observe` events;
    the shell answers with `observed(go_on)`.

WHY OUR OWN ENGINE
    aiosmtpd's session was measured first (shared/BENCH-NOTES.md, bench/RESULTS.md steps
    1-3): one await per DATA line (about 90% of the 100 KB profile), handler introspection
    with inspect.getmembers in every connection's __init__ (0.6-0.8 ms a connection), no
    enhanced status code on every reply, none of Postfix's texts, no PIPELINING batching.
    This engine and its shell, measured with bench/command_cost.py (no socket, no client;
    2026-12-01, three runs, Debian's Python 3.11): HELO 10-12 us, MAIL 12-14 us per command,
    a connection with only QUIT 40-56 us, a one-message connection 334-383 us of CPU with its
    log lines (the session it replaced: 282-327 us; the difference is the RCPT policy hook,
    about 10 us, and the X-Originating-IP header, about 20 us). A whole connection costs less
    than aiosmtpd's __init__ alone. The engine is also what makes the session testable without
    sockets: tests/unit/test_smtp_engine.py feeds every script whole, byte by byte and cut at
    every position.

SECURITY
    Parses untrusted bytes. Every buffer is bounded: the command line (server.limits.
    command_line; AUTH responses 12,288 bytes), the input held (`INPUT_LIMIT`), recipients,
    errors (soft/hard limits), junk commands. Client text leaves here only inside replies
    that quote it sanitized, or through `sanitize` in the shell's logs.

STANDARDS
    RFC 5321 (SMTP), RFC 1869/1870 (EHLO, SIZE), RFC 2920 (PIPELINING), RFC 3207 (STARTTLS),
    RFC 4954 (AUTH), RFC 2034/3463 (enhanced status codes), RFC 6152 (8BITMIME),
    RFC 6531 (SMTPUTF8), RFC 3461 (DSN: RET, ENVID, NOTIFY, ORCPT), RFC 3030 (CHUNKING: BDAT).

CONFIG
    server.hostname, server.limits.*, server.listeners[].{tls,auth}, auth.mechanisms,
    inbound.bare_newline, advanced.max_message_size
"""

from __future__ import annotations

import re
from collections import deque
from dataclasses import dataclass, field

from .. import model as R
from ..address import AddressError, Mailbox, needs_smtputf8, parse_path
from ..auth import sasl
from ..datastream import BareNewline, DataProblem, DataScanner
from ..logutil import sanitize
from ..model import Decision, Reply, Verdict

FORBIDDEN_COMMANDS = frozenset({"CONNECT", "GET", "POST", "PUT", "HEAD", "USER", "PASS"})  # Postfix smtpd_forbidden_commands
JUNK_COMMANDS = frozenset({"NOOP", "RSET", "VRFY", "HELP"})
JUNK_LIMIT = 100  # Postfix smtpd_junk_command_limit
INPUT_LIMIT = 1 << 16  # bytes held unread; past it the shell stops reading until commands are consumed
OUTPUT_BATCH = 64  # replies held while pipelined commands wait (RFC 2920); then they are written
_XTEXT = re.compile(r"<>|(?:[\x21-\x2a\x2c-\x3c\x3e-\x7e]|\+[0-9A-F]{2})+")  # RFC 3461 4: xtext
_TOO_MANY_RCPT = R.TOO_MANY_RCPT.encode()
BEFORE_TLS = frozenset({"EHLO", "HELO", "STARTTLS", "NOOP", "RSET", "QUIT"})  # allowed before STARTTLS when TLS is required


@dataclass(frozen=True, slots=True)
class Settings:
    """What the engine needs of the config, taken once per connection."""

    hostname: str
    command_line: int = 512
    recipients: int = 1000
    recipient_overshoot: int = 1000  # 452s past `recipients` that do not count as errors (Postfix smtpd_recipient_overshoot_limit)
    soft_error_limit: int = 10
    hard_error_limit: int = 20
    error_sleep: float = 1.0
    max_message_size: int = 10240000
    text_line: int = 2048
    header_size: int = 102400
    hop_count: int = 50  # Received: headers, ours included, that make a mail loop (Postfix hopcount_limit)
    bare_newline: BareNewline = BareNewline.REJECT
    starttls: bool = False  # a TLS context exists for STARTTLS on this listener
    implicit_tls: bool = False  # the connection is TLS from its first byte
    require_tls: bool = False  # nothing but EHLO HELO STARTTLS NOOP RSET QUIT before STARTTLS
    auth: str = "none"  # none | offer | require (the listener's auth)
    auth_mechanisms: tuple[str, ...] = ()  # empty: no users source, AUTH not offered
    postmaster_domain: str = ""  # for <postmaster> without a domain


# -- events ------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Helo:
    name: str
    esmtp: bool


@dataclass(frozen=True, slots=True)
class Mail:
    sender: Mailbox
    params: dict[str, str | None]


@dataclass(frozen=True, slots=True)
class Rcpt:
    """`recipient` as the client gave it (hooks judge it: a bare <postmaster> needs no check,
    RFC 5321 4.5.1); `queued` is what the transaction keeps (<postmaster> qualified)."""

    recipient: Mailbox
    params: dict[str, str | None]
    queued: Mailbox | None = None
    dsn: tuple[str | None, str | None] = (None, None)  # RFC 3461 (NOTIFY, ORCPT), checked and decoded


@dataclass(frozen=True, slots=True)
class Data:
    pass


@dataclass(frozen=True, slots=True)
class Bdat:
    """RFC 3030: the next `size` bytes of input are message content (as is: no dot-stuffing,
    no end of data). The shell reads exactly them (`take_input`, then the socket; the rest
    it gives back with `unread`) and answers with `bdat_done`. The first chunk of a
    transaction starts the message (`first`); the LAST one ends it like the end of DATA."""

    size: int
    last: bool
    first: bool


@dataclass(frozen=True, slots=True)
class StartTls:
    pass


@dataclass(frozen=True, slots=True)
class AuthLogin:
    mechanism: str
    login: str
    password: str = field(repr=False)


@dataclass(frozen=True, slots=True)
class AuthRefused:
    """The exchange itself refused the credentials (535: a PLAIN authorization identity that
    is not the login); the shell counts it as a failed authentication."""

    mechanism: str
    why: str


@dataclass(frozen=True, slots=True)
class Quit:
    pass


@dataclass(frozen=True, slots=True)
class Close:
    """The engine ended the session; its last reply is in the output. Logged as
    "<what> from <client>[: <detail>]"."""

    what: str
    detail: str = ""


@dataclass(frozen=True, slots=True)
class Pause:
    seconds: float


@dataclass(frozen=True, slots=True)
class Observe:
    """For postscreen's deep tests. `kind`: bare_newline | non_smtp | pipelining. What it
    carries may be logged, so never an AUTH argument: `line` is the command line (non_smtp,
    pipelining: postscreen logs its verb), or for bare_newline the last command's name;
    `pending` is what was pipelined after it, AUTH arguments cut out."""

    kind: str
    line: bytes
    pending: bytes = b""


@dataclass(frozen=True, slots=True)
class Log:
    """Something the shell logs as "<what> from <client>[: <detail>]"; text already sanitized."""

    what: str
    detail: str = ""
    warning: bool = False


Event = Helo | Mail | Rcpt | Data | Bdat | StartTls | AuthLogin | AuthRefused | Quit | Close | Pause | Observe | Log


@dataclass(slots=True)
class Transaction:
    sender: Mailbox
    params: dict[str, str | None]
    recipients: list[Mailbox] = field(default_factory=list)
    dsn: list[tuple[str | None, str | None]] = field(default_factory=list)  # (NOTIFY, ORCPT) of each recipient
    bdat: int = -1  # BDAT bytes taken so far (RFC 3030); -1: no BDAT in this transaction


class Engine:
    """One SMTP server session's protocol state. See the module docstring."""

    def __init__(self, settings: Settings) -> None:
        self.s = settings
        self._in = bytearray()
        self._out: list[bytes] = []
        self._skipping = False  # discarding the rest of an over-long line
        self._pending: Event | None = None  # waiting for resolve()/data_started()/...
        self._queue: deque[Event] = deque()  # events to hand out before more input is read
        self._observing: Observe | None = None
        self._line: bytes | None = None  # the command line being handled (after Observe)
        self._sasl: sasl.Exchange | None = None
        self._closed = False
        self._skip = 0  # BDAT payload bytes still to discard (a refused BDAT)
        self._bdat_error = False  # a BDAT of this transaction failed: the next ones are discarded until LAST or RSET
        self._data_verb = "DATA"  # what data_done counts: DATA or BDAT
        self.tls = settings.implicit_tls
        self.helo: str | None = None
        self.esmtp = False
        self.login: str | None = None
        self.tx: Transaction | None = None
        self.errors = 0
        self.junk = 0
        self.overshoot = 0  # RCPTs refused for the recipient limit this session
        self.last_command = "CONNECT"
        self.counts: dict[str, list[int]] = {}
        self.hide_pipelining = False  # postscreen's pipelining test runs: PIPELINING not offered
        self.watch = False  # postscreen deep tests watch: report Observe events
        self.bare_newline = settings.bare_newline  # the shell relaxes it for mynetworks clients
        self._failed = False
        self._too_many = Reply(421, "4.7.0", f"{settings.hostname} {R.TOO_MANY_ERRORS.text}")

    # -- input and output ----------------------------------------------------------------------

    def feed(self, data: bytes) -> None:
        self._in += data

    @property
    def input_full(self) -> bool:
        return len(self._in) >= INPUT_LIMIT

    @property
    def pending_input(self) -> int:
        return len(self._in)

    def has_pending_line(self) -> bool:
        return b"\n" in self._in

    def peek(self, n: int) -> bytes:
        return bytes(self._in[:n])

    def take_input(self) -> bytes:
        """Everything unread (DATA streaming starts from here)."""
        data = bytes(self._in)
        self._in.clear()
        return data

    def unread(self, data: bytes) -> None:
        """Bytes read past the end of DATA: pipelined commands."""
        if data:
            self._in[:0] = data

    def discard_input(self) -> int:
        n = len(self._in)
        self._in.clear()
        return n

    def reply(self, reply: Reply) -> None:
        if reply.is_error:
            self.errors += 1
            self._failed = True
        self._out.append(reply.encode())

    def take_output(self) -> bytes:
        data = b"".join(self._out)
        self._out.clear()
        return data

    @property
    def output_pending(self) -> int:
        return len(self._out)

    def greeting(self, banner: str) -> None:
        self._out.append(Reply(220, "", banner).encode())

    # -- the command loop ----------------------------------------------------------------------

    def next_event(self) -> Event | None:
        """The next event, or None when the engine needs input or a resolution first."""
        while True:
            if self._queue:
                return self._queue.popleft()
            if self._closed or self._pending is not None or self._observing is not None:
                return None
            if len(self._out) >= OUTPUT_BATCH:
                return None  # the shell writes these first: replies never pile up unbounded
            if self._line is not None:
                line, self._line = self._line, None
                self._command(line)
                continue
            raw = self._take_line()
            if raw is None:
                return None
            self._accept_line(raw)

    def _emit(self, ev: Event) -> None:
        self._queue.append(ev)

    def _wait(self, ev: Event) -> None:
        """Hand out `ev` and read nothing more until the shell resolves it."""
        self._pending = ev
        self._queue.append(ev)

    def _line_limit(self) -> int:
        """AUTH lines (the command with its initial response, and the exchange) may be longer."""
        if self._sasl is not None or self._in[:5].upper() == b"AUTH ":
            return sasl.AUTH_LINE_MAX
        return self.s.command_line

    def _take_line(self) -> bytes | None:
        buf = self._in
        if self._skip:  # a refused BDAT's payload: not commands
            n = min(self._skip, len(buf))
            del buf[:n]
            self._skip -= n
            if self._skip:
                return None
        short = self.s.command_line  # a line this long is fine whatever it is: no more checks
        while True:
            i = buf.find(b"\n")
            if self._skipping:
                if i < 0:
                    buf.clear()
                    return None
                del buf[: i + 1]
                self._skipping = False
                self._too_long()
                continue
            if i < 0:
                if len(buf) > short and len(buf) > self._line_limit():
                    self._skipping = True
                    buf.clear()
                return None
            if i >= short and i + 1 > self._line_limit():
                del buf[: i + 1]
                self._too_long()
                continue
            line = bytes(buf[: i + 1])
            del buf[: i + 1]
            return line

    def _too_long(self) -> None:
        if self._sasl is not None:
            self._sasl = None
            self._count("AUTH", False)
            self.reply(R.LINE_TOO_LONG)
        else:
            self.reply(R.TOO_LONG)
        self._after_error()

    def _accept_line(self, line: bytes) -> None:
        """A complete line: line-ending policy, then the command (or the AUTH response)."""
        if line.endswith(b"\r\n") and line.count(b"\r") == 1:
            body = line[:-2]
        elif self.watch and self._sasl is None and not line.endswith(b"\r\n"):
            self._observe(Observe("bare_newline", self.last_command.encode()), line)
            return
        else:
            self._bare(line)
            return
        if self._sasl is not None:
            self._auth_response(body)
        elif self.watch and self._in and body[:5].upper() != b"BDAT ":
            # postscreen logs what was pipelined: only the next verb, never an AUTH argument
            # (a BDAT's payload follows it by design: not pipelining)
            self._observe(Observe("pipelining", body, _loggable_pending(body, bytes(self._in[:100]))), body)
        else:
            self._command(body)

    def _observe(self, obs: Observe, line: bytes) -> None:
        """Hand postscreen an observation (its log quotes obs.line: see _redacted); `line` is
        what the engine goes on with afterwards."""
        self._observing = obs
        self._line = line
        self._emit(obs)

    def _bare(self, line: bytes) -> None:
        """A line with a bare <LF> or <CR>: the inbound.bare_newline policy."""
        if self.bare_newline is BareNewline.REJECT:
            which = "<LF>" if not line.endswith(b"\r\n") or b"\n" in line[:-2] else "<CR>"
            self.reply(Reply(550, "5.5.2", f"Error: bare {which} received"))
            self._close_after(f"bare {which[1:-1]} received after {self.last_command}")
            return
        body = line.replace(b"\r", b"").rstrip(b"\n")
        if self.bare_newline is BareNewline.NOTE:
            self._emit(Log(f"bare newline in command after {self.last_command}"))
        if self._sasl is not None:
            self._auth_response(body)
        else:
            self._line = body

    def observed(self, go_on: bool) -> None:
        """The shell's answer to an Observe event. go_on False: postscreen ended the session
        (it sent its own reply), or, for a non-SMTP verb, smtpd's own answer applies."""
        obs, self._observing = self._observing, None
        line, self._line = self._line, None
        assert obs is not None and line is not None
        if obs.kind == "non_smtp":
            if go_on:  # postscreen enforce/ignore: 502, go on
                self.last_command = "UNKNOWN"
                self._count("unknown", False)
                self.reply(R.UNKNOWN)
                self._after_error()
            else:
                self.reply(R.GOAWAY)
                self._close_after("non-SMTP command", sanitize(line, 100))
            return
        if not go_on:
            self._closed = True
            self._in.clear()
            return
        if obs.kind == "bare_newline":
            self._bare(line)
        else:
            self._command(line)

    def _close(self, reply: Reply, why: str) -> None:
        self.reply(reply)
        self._close_after(why)

    def _close_after(self, what: str, detail: str = "") -> None:
        self._closed = True
        self._in.clear()
        self._emit(Close(what, detail))

    @property
    def closed(self) -> bool:
        return self._closed

    def _after_error(self) -> None:
        """Error budget: past the soft limit slow down, at the hard limit say goodbye."""
        if self.errors >= self.s.hard_error_limit:
            self._close(self._too_many, f"too many errors after {self.last_command}")
        elif self.errors > self.s.soft_error_limit and self.s.error_sleep:
            self._emit(Pause(self.s.error_sleep))

    def _command(self, line: bytes) -> None:
        if not line:
            self.reply(R.BAD_SYNTAX)
            self._after_error()
            return
        verb_b, _, arg_b = line.partition(b" ")
        verb = verb_b.decode("ascii", "replace").upper()
        arg = arg_b.decode("utf-8", "surrogateescape").strip(" ") or None
        handler = _COMMANDS.get(verb)
        if handler is None:
            if verb in FORBIDDEN_COMMANDS or verb.endswith(":") or not verb[:1].isalpha():
                if self.watch:
                    self._observe(Observe("non_smtp", line), line)
                    return
                self.reply(R.GOAWAY)
                self._close_after("non-SMTP command", sanitize(line, 100))
                return
            self.last_command = "UNKNOWN"
            self._count("unknown", False)
            self.reply(R.UNKNOWN)
            self._after_error()
            return
        self.last_command = verb
        if verb in JUNK_COMMANDS:
            self.junk += 1
            if self.junk > JUNK_LIMIT:
                self._close(self._too_many, f"too many junk commands after {verb}")
                return
        if self.s.require_tls and not self.tls and verb not in BEFORE_TLS:
            self._count(verb, False)
            self.reply(R.STARTTLS_FIRST)
            if verb == "BDAT":
                self._skip = _bdat_size(arg)  # its payload is not commands
            self._after_error()
            return
        self._failed = False
        ev = handler(self, arg)
        if ev is not None:
            self._wait(ev)  # counted when resolved
            return
        if self._sasl is not None or self._closed:
            return  # an AUTH exchange goes on; QUIT counted itself
        self._count(verb, not self._failed)
        if self._failed:
            self._after_error()

    def _count(self, verb: str, ok: bool) -> None:
        c = self.counts.setdefault(verb, [0, 0])
        c[1] += 1
        if ok:
            c[0] += 1

    def count_lost(self) -> None:
        """The connection was lost inside the pending command (Postfix: data=0/1)."""
        if self._pending is not None:
            self._count(self.last_command, False)
            self._pending = None

    def stats(self) -> str:
        """Postfix's disconnect statistics: " ehlo=1 mail=1 rcpt=0/1 ... commands=3/4"."""
        parts, ok_all, n_all = [], 0, 0
        for verb, (ok, n) in self.counts.items():
            parts.append(f" {verb.lower()}={ok}" if ok == n else f" {verb.lower()}={ok}/{n}")
            ok_all, n_all = ok_all + ok, n_all + n
        parts.append(f" commands={ok_all}" if ok_all == n_all else f" commands={ok_all}/{n_all}")
        return "".join(parts)

    # -- resolutions ---------------------------------------------------------------------------

    def resolve(self, verdict: Verdict) -> None:
        """The hooks' verdict on the pending Helo/Mail/Rcpt/Data event (CONTINUE, ACCEPT or
        HOLD: the command succeeds; otherwise its reply is sent)."""
        ev, self._pending = self._pending, None
        ok = verdict.decision in (Decision.CONTINUE, Decision.ACCEPT, Decision.HOLD)
        if not ok:
            # DISCARD is a content decision: before DATA it has no meaning, so it fails safe
            self._failed = False
            self.reply(verdict.reply or R.TEMPFAIL_INTERNAL)
        elif isinstance(ev, Helo):
            self._helo_ok(ev)
        elif isinstance(ev, Mail):
            self.tx = Transaction(ev.sender, ev.params)
            self.reply(R.MAIL_OK)
        elif isinstance(ev, Rcpt):
            assert self.tx is not None
            self.tx.recipients.append(ev.queued or ev.recipient)
            self.tx.dsn.append(ev.dsn)
            self.reply(R.RCPT_OK)
        self._count(self.last_command, ok)
        if not ok:
            self._after_error()

    def data_started(self) -> None:
        """DATA accepted: the 354 goes out; the shell streams the content."""
        self._pending = None
        self.reply(R.GO_AHEAD)

    def data_scanner(self) -> DataScanner:
        return DataScanner(
            bare_newline=self.bare_newline, max_line=self.s.text_line,
            max_size=self.s.max_message_size, max_header=self.s.header_size,
            max_received=self.s.hop_count - 2,  # ours is added: the client's plus ours reach the limit
        )  # fmt: skip

    def data_done(self, reply: Reply, *, close: bool = False) -> None:
        """The end of DATA: the commit's 250, a filter's verdict or a content problem."""
        ok = not reply.is_error
        self._pending = None  # BDAT LAST waited for this
        self._count(self._data_verb, ok)
        self._end_tx()
        self.reply(reply)
        if ok:
            self.errors = 0
            self.junk = 0  # Postfix: "The junk command count is reset after mail is delivered."
        elif close:
            self._close_after("DATA refused")
        else:
            self._after_error()

    def data_lost(self) -> None:
        self._pending = None
        self._count(self._data_verb, False)
        self._end_tx()

    def bdat_done(self, reply: Reply) -> None:
        """A chunk that is not the LAST was taken ("250 2.0.0 Ok: <n> bytes"); LAST ends with data_done."""
        self._pending = None
        self._count("BDAT", not reply.is_error)
        self.reply(reply)
        if reply.is_error:
            self._after_error()

    def _end_tx(self) -> None:
        self.tx = None
        self._bdat_error = False

    def tls_started(self) -> None:
        """RFC 3207 4.2: forget everything learned before TLS."""
        self._pending = None
        self._count("STARTTLS", True)
        self.tls = True
        self.helo, self.esmtp, self.tx, self.login = None, False, None, None
        self._bdat_error = False

    def auth_done(self, login: str | None, reply: Reply, *, close: bool = False) -> None:
        """The credentials were checked: `login` on success, with the reply to send."""
        self._pending = None
        self._sasl = None
        self._count("AUTH", login is not None)
        self._failed = False
        if login is not None:
            self.login = login
        self.reply(reply)
        if close:
            self._close_after("authentication refused")
        elif login is None:
            self._after_error()

    # -- commands ------------------------------------------------------------------------------

    def _cmd_helo(self, arg: str | None) -> Event | None:
        return self._greet(arg, esmtp=False)

    def _cmd_ehlo(self, arg: str | None) -> Event | None:
        return self._greet(arg, esmtp=True)

    def _greet(self, arg: str | None, *, esmtp: bool) -> Event | None:
        if not arg:
            self.reply(Reply(501, "5.5.4", f"Syntax: {'EHLO' if esmtp else 'HELO'} hostname"))
            return None
        return Helo(arg, esmtp)

    def _helo_ok(self, ev: Helo) -> None:
        self.helo = ev.name
        self.esmtp = ev.esmtp
        self._end_tx()
        if not ev.esmtp:
            self.reply(Reply(250, "", self.s.hostname))
            return
        size = self.s.max_message_size
        lines = [self.s.hostname]
        if not self.hide_pipelining:
            lines.append("PIPELINING")
        lines.append(f"SIZE {size}" if size else "SIZE")
        if self.s.starttls and not self.tls:
            lines.append("STARTTLS")
        mechs = self.auth_offered()
        if mechs and self.login is None:
            lines.append("AUTH " + " ".join(mechs))
        lines += ["ENHANCEDSTATUSCODES", "8BITMIME", "DSN", "SMTPUTF8", "CHUNKING"]
        self.reply(Reply(250, "", "\n".join(lines)))

    def auth_offered(self) -> tuple[str, ...]:
        """Mechanisms offered now: only under TLS (STARTTLS done or implicit)."""
        if self.s.auth == "none" or not self.tls:
            return ()
        return self.s.auth_mechanisms

    def _cmd_mail(self, arg: str | None) -> Event | None:
        if self.helo is None:
            self.reply(R.NEED_HELO)
            return None
        if self.tx is not None:
            self.reply(R.NESTED_MAIL)
            return None
        if self._bdat_error:
            self.reply(R.MAIL_AFTER_BDAT)
            return None
        if self.s.auth == "require" and self.login is None:
            self.reply(R.AUTH_REQUIRED)
            return None
        try:
            sender, params = parse_path(arg, "FROM", utf8_allowed=True)
        except AddressError:
            if arg is None or arg[:5].upper() != "FROM:":
                self.reply(Reply(501, "5.5.4", "Syntax: MAIL FROM:<address>"))
            else:
                self.reply(Reply(501, "5.1.7", "Bad sender address syntax"))
            return None
        reply = self._check_mail_params(params)
        if reply is None and needs_smtputf8(sender) and "SMTPUTF8" not in params:
            reply = R.UTF8_UNDECLARED
        if reply is not None:
            self.reply(reply)
            self._emit(Log("NOQUEUE: reject: MAIL", f"{sanitize(reply.line())}; from=<{sanitize(str(sender))}> proto={self.proto} helo=<{sanitize(self.helo or '')}>"))
            return None
        return Mail(sender, params)

    @property
    def proto(self) -> str:
        return "ESMTP" if self.esmtp else "SMTP"

    def _check_mail_params(self, params: dict[str, str | None]) -> Reply | None:
        if params and not self.esmtp:
            return Reply(555, "5.5.4", "Unsupported option: " + sanitize(next(iter(params)), 40))
        for key, value in params.items():
            if key == "SIZE":
                if value is None or not value.isdigit() or len(value) > 20:
                    return Reply(501, "5.5.4", "Bad message size syntax")
                limit = self.s.max_message_size
                if limit and int(value) > limit:
                    return R.SIZE_FIXED
            elif key == "BODY":
                if value is None or value.upper() not in ("7BIT", "8BITMIME"):
                    return Reply(501, "5.5.4", "Bad BODY keyword: " + sanitize(value or "", 40))
            elif key == "SMTPUTF8":
                if value is not None:
                    return Reply(501, "5.5.4", "Bad SMTPUTF8 syntax")
            elif key == "RET":  # RFC 3461 4.3
                if value is None or value.upper() not in ("FULL", "HDRS"):
                    return R.BAD_RET
            elif key == "ENVID":  # RFC 3461 4.4
                if value is None or len(value) > 100 or dsn_text(value) is None:
                    return R.BAD_ENVID
            elif key == "AUTH":
                # RFC 4954 5: an xtext mailbox or <>; kept by nobody (we do not relay it onwards)
                if value is None or not _XTEXT.fullmatch(value):
                    return Reply(501, "5.5.4", "Bad AUTH parameter syntax")
            else:
                return Reply(555, "5.5.4", "Unsupported option: " + sanitize(key, 40))
        return None

    def _cmd_rcpt(self, arg: str | None) -> Event | None:
        tx = self.tx
        if tx is None:
            self.reply(R.NEED_MAIL)
            return None
        if tx.bdat >= 0:
            self.reply(R.RCPT_AFTER_BDAT)
            return None
        try:
            rcpt, params = parse_path(arg, "TO", utf8_allowed=True)
            if rcpt.is_null:
                raise AddressError("null recipient")
        except AddressError:
            if arg is None or arg[:3].upper() != "TO:":
                self.reply(Reply(501, "5.5.4", "Syntax: RCPT TO:<address>"))
            else:
                self.reply(Reply(501, "5.1.3", "Bad recipient address syntax"))
            return None
        dsn: tuple[str | None, str | None] = _NO_DSN
        if params:
            checked = self._rcpt_params(params)
            if isinstance(checked, Reply):
                self.reply(checked)
                return None
            dsn = checked
        if needs_smtputf8(rcpt) and "SMTPUTF8" not in tx.params:
            self.reply(R.UTF8_UNDECLARED)
            return None
        queued = None
        if not rcpt.domain and rcpt.local.lower() == "postmaster":
            # RFC 5321 4.5.1: <postmaster> without a domain must be accepted.
            queued = Mailbox(rcpt.local, self.s.postmaster_domain or self.s.hostname)
        if len(tx.recipients) >= self.s.recipients:
            # A pipelining client cannot see the limit coming: its first overshooting RCPTs
            # get 452 and no error is counted, so the accepted recipients stay (Postfix).
            self.overshoot += 1
            if self.overshoot <= self.s.recipient_overshoot:
                self._out.append(_TOO_MANY_RCPT)
            else:
                self.reply(R.TOO_MANY_RCPT)
            return None
        return Rcpt(rcpt, params, queued, dsn)

    def _rcpt_params(self, params: dict[str, str | None]) -> tuple[str | None, str | None] | Reply:
        """RCPT's DSN parameters (RFC 3461 4.1, 4.2): (NOTIFY, ORCPT), or the refusal."""
        if not self.esmtp:
            return Reply(555, "5.5.4", "Unsupported option: " + sanitize(next(iter(params)), 40))
        notify = orcpt = None
        for key, value in params.items():
            if key == "NOTIFY":
                notify = dsn_notify(value or "")
                if notify is None:
                    return R.BAD_NOTIFY
            elif key == "ORCPT":
                orcpt = dsn_orcpt(value or "")
                if orcpt is None:
                    return R.BAD_ORCPT
            else:
                return Reply(555, "5.5.4", "Unsupported option: " + sanitize(key, 40))
        return notify, orcpt

    def _cmd_data(self, arg: str | None) -> Event | None:
        tx = self.tx
        self._data_verb = "DATA"
        if (tx is not None and tx.bdat >= 0) or self._bdat_error:
            self.reply(R.DATA_AFTER_BDAT)
            return None
        if tx is None:
            self.reply(R.NEED_MAIL)
            return None
        if not tx.recipients:
            self.reply(R.NEED_RCPT)
            return None
        if arg:
            self.reply(Reply(501, "5.5.4", "Syntax: DATA"))
            return None
        if self._in:
            # RFC 2920 3.1: DATA ends a pipelined group; content before 354 is a protocol
            # violation (Postfix reject_unauth_pipelining), and the classic smuggling vector.
            self.reply(R.UNAUTH_PIPE)
            self._emit(Log("improper command pipelining after DATA", warning=True))
            return None
        return Data()

    def _cmd_bdat(self, arg: str | None) -> Event | None:
        """RFC 3030 BDAT <size> [LAST], as Postfix: a refused BDAT's payload is read and
        discarded, and after a refused chunk the next ones are too, until LAST or RSET."""
        m = _BDAT.fullmatch(arg or "")
        if m is None:
            self.reply(R.BDAT_SYNTAX)  # what follows would be content read as commands: hang up
            self._close_after("malformed BDAT command", sanitize(arg or "", 100))
            return None
        size, last = int(m.group(1)), m.group(2) is not None
        self._data_verb = "BDAT"
        tx = self.tx
        if size == 0 and not last:
            return self._refuse_bdat(size, last, R.BDAT_NULL)
        if self._bdat_error:
            return self._refuse_bdat(size, last, Reply(551, "5.0.0", f"Discarded {size} bytes after earlier error"))
        if tx is None or not tx.recipients:
            return self._refuse_bdat(size, last, R.NEED_RCPT if tx is None else R.NO_VALID_RCPT)
        taken = max(tx.bdat, 0)
        limit = self.s.max_message_size
        if limit and taken + size > limit:
            return self._refuse_bdat(size, last, R.BDAT_TOO_BIG)
        first = tx.bdat < 0
        tx.bdat = taken + size
        return Bdat(size, last, first)

    def _refuse_bdat(self, size: int, last: bool, reply: Reply) -> Event | None:
        limit = self.s.max_message_size
        self.reply(reply)
        if limit and size > limit + limit // 2:
            # Postfix: more than 1.5 times the size limit is not read: answered, then hung up
            self._close_after("too much BDAT content")
            return None
        self._skip = size
        if last:
            self._end_tx()
        else:
            self._bdat_error = True
        return None

    def _cmd_rset(self, arg: str | None) -> Event | None:
        self._end_tx()
        self.reply(R.OK)
        return None

    def _cmd_noop(self, arg: str | None) -> Event | None:
        self.reply(R.OK)
        return None

    def _cmd_quit(self, arg: str | None) -> Event | None:
        self._count("QUIT", True)
        self.reply(R.BYE)
        self._closed = True
        self._emit(Quit())
        return None

    def _cmd_vrfy(self, arg: str | None) -> Event | None:
        self.reply(R.VRFY)
        return None

    def _cmd_starttls(self, arg: str | None) -> Event | None:
        if self.tls:
            self.reply(R.TLS_ACTIVE)
            return None
        if not self.s.starttls:
            self.reply(R.NOT_IMPL)
            return None
        if arg:
            self.reply(Reply(501, "5.5.4", "Syntax: STARTTLS"))
            return None
        self.reply(R.READY_TLS)
        return StartTls()

    def _cmd_auth(self, arg: str | None) -> Event | None:
        if self.s.auth == "none" or not self.s.auth_mechanisms:
            self.reply(R.AUTH_OFF)
            return None
        if self.helo is None:
            self.reply(R.NEED_HELO)
            return None
        if self.login is not None:
            self.reply(R.ALREADY_AUTHENTICATED)
            return None
        if self.tx is not None:
            self.reply(R.IN_TRANSACTION)
            return None
        if not self.auth_offered():
            self.reply(R.ENCRYPTION_REQUIRED)
            return None
        if not arg:
            self.reply(Reply(501, "5.5.4", "Syntax: AUTH mechanism"))
            return None
        mech, _, initial = arg.partition(" ")
        exchange, step = sasl.start(mech, initial.strip() or None, self.auth_offered())
        return self._sasl_step(exchange, step)

    def _auth_response(self, line: bytes) -> None:
        """A line of the AUTH exchange (not a command)."""
        assert self._sasl is not None
        ev = self._sasl_step(self._sasl, self._sasl.respond(line))
        if ev is not None:
            self._wait(ev)
        elif self._sasl is None:  # failed: counted here, the command already was not
            self._count("AUTH", False)
            self._after_error()

    def _sasl_step(self, exchange: sasl.Exchange, step: sasl.Step) -> Event | None:
        if isinstance(step, sasl.Challenge):
            self._sasl = exchange
            self._out.append(f"334 {step.text}\r\n".encode("ascii"))
            return None
        self._sasl = None
        if isinstance(step, sasl.Failed):
            self.reply(step.reply)
            if step.reply.code == 535 and exchange.mechanism is not None:
                self._emit(AuthRefused(exchange.mechanism.value, "authorization identity is not the login"))
            return None
        assert exchange.mechanism is not None
        return AuthLogin(exchange.mechanism.value, step.login, step.password)


_AUTH_LINE = re.compile(rb"(?im)^(AUTH[ \t]+\S+)[^\r\n]*")
_BDAT = re.compile(r"([0-9]{1,18})(?: +(LAST))?", re.IGNORECASE)
_NO_DSN: tuple[str | None, str | None] = (None, None)
_DSN_XTEXT = re.compile(r"(?:[\x21-\x2a\x2c-\x3c\x3e-\x7e]|\+[0-9A-F]{2})+")  # RFC 3461 4: xtext
_XTEXT_HEX = re.compile(r"\+([0-9A-F]{2})")
_UTF8_HEX = re.compile(r"\\x\{([0-9A-Fa-f]{1,6})\}")  # RFC 6533 utf-8-addr-xtext: \x{HEX}
_ADDR_TYPE = re.compile(r"[A-Za-z0-9][A-Za-z0-9-]{0,31}")
_NOTIFY_ORDER = ("SUCCESS", "FAILURE", "DELAY")


def dsn_text(value: str, *, utf8: bool = False) -> str | None:
    """xtext (RFC 3461 4) decoded, or None when `value` is not xtext or decodes to control
    characters (the text goes into DSNs and onwards to the next hop)."""
    if not _DSN_XTEXT.fullmatch(value):
        return None
    text = _XTEXT_HEX.sub(lambda m: chr(int(m.group(1), 16)), value)
    if utf8:
        try:
            text = _UTF8_HEX.sub(lambda m: chr(int(m.group(1), 16)), text)
        except (ValueError, OverflowError):
            return None
    if any(c < " " or c == "\x7f" or "\ud800" <= c <= "\udfff" for c in text):
        return None  # controls, and lone surrogates (\x{D800}): no UTF-8 encoder takes them
    return text


def dsn_notify(value: str) -> str | None:
    """NOTIFY=NEVER or a list of SUCCESS, FAILURE, DELAY (RFC 3461 4.1): its canonical form."""
    words = value.upper().split(",")
    if words == ["NEVER"]:
        return "NEVER"
    if not words or len(set(words)) != len(words) or not all(w in _NOTIFY_ORDER for w in words):
        return None
    return ",".join(w for w in _NOTIFY_ORDER if w in words)


def dsn_orcpt(value: str) -> str | None:
    """ORCPT=addr-type;xtext (RFC 3461 4.2): "type;address" decoded, at most 500 characters."""
    kind, sep, coded = value.partition(";")
    if not sep or not coded or len(value) > 500 or not _ADDR_TYPE.fullmatch(kind):
        return None
    address = dsn_text(coded, utf8=kind.lower() == "utf-8")
    return None if address is None else f"{kind.lower()};{address}"


def _bdat_size(arg: str | None) -> int:
    """The payload size of a BDAT command that is refused before its syntax is judged (0 if none)."""
    m = _BDAT.fullmatch(arg or "")
    return int(m.group(1)) if m is not None else 0


def _loggable_pending(current: bytes, pending: bytes) -> bytes:
    """What was pipelined after `current`, as postscreen may log it (Postfix logs it): never an
    AUTH argument, and nothing at all after an AUTH command (its exchange lines follow)."""
    if current[:5].upper() == b"AUTH ":
        return b"..."
    cut = _AUTH_LINE.search(pending)
    return pending if cut is None else pending[: cut.start()] + cut.group(1) + b" ..."


_COMMANDS = {
    "HELO": Engine._cmd_helo,
    "EHLO": Engine._cmd_ehlo,
    "MAIL": Engine._cmd_mail,
    "RCPT": Engine._cmd_rcpt,
    "DATA": Engine._cmd_data,
    "BDAT": Engine._cmd_bdat,
    "RSET": Engine._cmd_rset,
    "NOOP": Engine._cmd_noop,
    "QUIT": Engine._cmd_quit,
    "VRFY": Engine._cmd_vrfy,
    "AUTH": Engine._cmd_auth,
    "STARTTLS": Engine._cmd_starttls,
}


DATA_REPLIES = {
    DataProblem.BARE_LF: R.DATA_BARE_LF,
    DataProblem.BARE_CR: R.DATA_BARE_CR,
    DataProblem.LINE_TOO_LONG: R.DATA_LINE_TOO_LONG,
    DataProblem.TOO_BIG: R.DATA_TOO_BIG,
    DataProblem.HEADER_TOO_BIG: R.DATA_HEADER_TOO_BIG,
    DataProblem.TOO_MANY_HOPS: R.DATA_TOO_MANY_HOPS,
}

"""The shared vocabulary: replies, verdicts, envelopes, clients.

DESCRIPTION
    Frozen, slotted dataclasses for what crosses a boundary (session -> queue -> delivery).
    Mutable state lives only in the object that owns it (the SMTP session, the queue manager).

    `Reply` is every SMTP reply, ours and a peer's. `Verdict` is what every stage hook
    (postscreen, relay control, the policy checks, AUTH, the content filters) returns:
    a `Decision` (continue / accept / reject / tempfail / discard / hold), the reply to
    send when the decision has one, and the reason for the log. A hook never writes to the
    socket; the session applies the verdict.
SECURITY
    Holds client-supplied strings (addresses, HELO names) verbatim; whoever logs them
    passes them through `mtaserver.logutil.sanitize`.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from enum import Enum
from typing import Any

_STATUS = re.compile(r"([245])\.([0-9]{1,3})\.([0-9]{1,3})(?= |$)")  # RFC 3463 class.subject.detail


@dataclass(frozen=True, slots=True)
class Reply:
    """An SMTP reply, ours or a peer's. The enhanced status's class digit always follows the
    code's (Postfix does so). `text` holds the lines of a multi-line reply separated by "\n",
    without their codes and enhanced status (`encode` puts both back on every line)."""

    code: int
    status: str  # enhanced status code "x.y.z", "" for none (greeting, EHLO)
    text: str

    def __post_init__(self) -> None:
        if self.status and self.status[0] != str(self.code)[0]:
            object.__setattr__(self, "status", str(self.code)[0] + self.status[1:])

    @classmethod
    def from_lines(cls, code: int, texts: Sequence[str]) -> Reply:
        """A peer's reply from the text of its lines (codes removed; the wire syntax is
        delivery/wire.py's business). The enhanced status is the first line's when it has one,
        and is taken off every line that starts with it (RFC 2034: each line carries it)."""
        m = _STATUS.match(texts[0]) if texts else None
        if m is None:
            return cls(code, "", "\n".join(texts))
        token = m.group(0)
        lines = [t[len(token) + 1 :] if t.startswith(token + " ") else "" if t == token else t for t in texts]
        return cls(code, token, "\n".join(lines))

    @property
    def lines(self) -> tuple[str, ...]:
        """The text of each line (an EHLO reply: the host name, then one extension a line)."""
        return tuple(self.text.split("\n"))

    @property
    def ok(self) -> bool:
        return 200 <= self.code < 300

    @property
    def is_error(self) -> bool:
        return self.code >= 400

    def line(self) -> str:
        """The reply on one line, for logs and outcomes: code, status, the lines' text joined by spaces."""
        text = self.text if "\n" not in self.text else " ".join(t for t in self.lines if t)
        return f"{self.code} {self.status} {text}" if self.status else f"{self.code} {text}"

    def encode(self) -> bytes:
        lines = self.text.split("\n")
        out = []
        for i, t in enumerate(lines):
            sep = " " if i == len(lines) - 1 else "-"
            out.append(f"{self.code}{sep}{self.status + ' ' if self.status else ''}{t}\r\n")
        return "".join(out).encode("utf-8", "surrogateescape")

    def __str__(self) -> str:
        return self.line()


class Decision(str, Enum):
    """What a hook decides. CONTINUE: no objection, the next hook runs; ACCEPT: accepted now,
    later hooks of the same stage are skipped; REJECT/TEMPFAIL: the reply is sent (5xx/4xx);
    DISCARD: the client is told 250, the message is dropped (logged); HOLD: queued on hold."""

    CONTINUE = "continue"
    ACCEPT = "accept"
    REJECT = "reject"
    TEMPFAIL = "tempfail"
    DISCARD = "discard"
    HOLD = "hold"


@dataclass(frozen=True, slots=True)
class Verdict:
    """A hook's answer. `reply` is required for REJECT and TEMPFAIL; `reason` goes to the log.

    `headers` (name, value) are added to the message and `subject_tag` put in front of its
    Subject (DATA-END hooks only)."""

    decision: Decision
    reply: Reply | None = None
    reason: str = ""
    headers: tuple[tuple[str, str], ...] = ()
    subject_tag: str = ""

    def __post_init__(self) -> None:
        if self.decision in (Decision.REJECT, Decision.TEMPFAIL) and self.reply is None:
            raise ValueError(f"a {self.decision.value} verdict needs a reply")

    @property
    def final(self) -> bool:
        """True when no later hook of the stage runs (anything but CONTINUE)."""
        return self.decision is not Decision.CONTINUE

    @classmethod
    def reject(cls, reply: Reply, reason: str = "") -> Verdict:
        """REJECT or TEMPFAIL, by the reply's class."""
        return cls(Decision.TEMPFAIL if reply.code < 500 else Decision.REJECT, reply, reason)


CONTINUE = Verdict(Decision.CONTINUE)


class Fate(str, Enum):
    """What a delivery attempt made of one recipient: the `status=` word of its log line.
    DEFERRED is retried later, BOUNCED returned to the sender (a DSN, queue/dsn.py)."""

    SENT = "sent"
    DEFERRED = "deferred"
    BOUNCED = "bounced"


class RcptState(str, Enum):
    PENDING = "pending"
    DEFERRED = "deferred"


@dataclass(slots=True, kw_only=True)
class Recipient:
    address: str
    orcpt: str | None = None
    notify: str | None = None
    state: RcptState = RcptState.PENDING
    attempts: int = 0
    last_reply: str | None = None


@dataclass(frozen=True, slots=True, kw_only=True)
class ClientInfo:
    ip: str
    port: int
    name: str = "unknown"
    helo: str | None = None
    protocol: str = "SMTP"
    login: str | None = None
    trusted: bool = False  # mynetworks or authenticated: "originating" mail

    def label(self) -> str:
        return f"{self.name}[{self.ip}]"


@dataclass(slots=True, kw_only=True)
class Envelope:
    """What the queue keeps about one message besides its body."""

    queue_id: str
    sender: str  # "" = null reverse-path
    recipients: list[Recipient]
    arrival: float
    client: ClientInfo
    size: int = 0
    body_type: str | None = None  # 7BIT | 8BITMIME (BODY=)
    smtputf8: bool = False
    ret: str | None = None
    envid: str | None = None
    extra: dict[str, str] = field(default_factory=dict)
    # The decision trail: one entry per content filter that looked at the message, in the order
    # they ran: {"filter", "result", "detail", "score", "ms"} (filters/chain.py Step.doc()).
    trail: list[dict[str, Any]] = field(default_factory=list)


# ---------------------------------------------------------------------------------------------
# The reply catalogue of the SMTP server: one place for every fixed text it sends (Postfix's
# wording where Postfix has one). Replies that quote an argument are made where they happen.

OK = Reply(250, "2.0.0", "Ok")
MAIL_OK = Reply(250, "2.1.0", "Ok")
RCPT_OK = Reply(250, "2.1.5", "Ok")
BYE = Reply(221, "2.0.0", "Bye")
GO_AHEAD = Reply(354, "", "End data with <CR><LF>.<CR><LF>")
READY_TLS = Reply(220, "2.0.0", "Ready to start TLS")
NEED_HELO = Reply(503, "5.5.1", "Error: send HELO/EHLO first")
NESTED_MAIL = Reply(503, "5.5.1", "Error: nested MAIL command")
NEED_MAIL = Reply(503, "5.5.1", "Error: need MAIL command")
NEED_RCPT = Reply(503, "5.5.1", "Error: need RCPT command")
UNKNOWN = Reply(502, "5.5.2", "Error: command not recognized")
NOT_IMPL = Reply(502, "5.5.1", "Error: command not implemented")
TOO_LONG = Reply(500, "5.5.2", "Error: command line too long")
BAD_SYNTAX = Reply(500, "5.5.2", "Error: bad syntax")
TOO_MANY_RCPT = Reply(452, "4.5.3", "Error: too many recipients")
TOO_MANY_ERRORS = Reply(421, "4.7.0", "Error: too many errors")  # sent with the server's name in front
SIZE_FIXED = Reply(552, "5.3.4", "Message size exceeds fixed limit")
NO_SPACE = Reply(452, "4.3.1", "Insufficient system storage")
UNAUTH_PIPE = Reply(503, "5.5.0", "<DATA>: Data command rejected: Improper use of SMTP command pipelining")
TLS_ACTIVE = Reply(554, "5.5.1", "Error: TLS already active")
UTF8_UNDECLARED = Reply(553, "5.6.7", "Must declare SMTPUTF8 to send unicode address")
VRFY = Reply(502, "5.5.1", "VRFY command is disabled")
GOAWAY = Reply(221, "2.7.0", "Error: I can break rules, too. Goodbye.")
STARTTLS_FIRST = Reply(530, "5.7.0", "Must issue a STARTTLS command first")
AUTH_OFF = Reply(503, "5.5.1", "Error: authentication not enabled")
ALREADY_AUTHENTICATED = Reply(503, "5.5.1", "Error: already authenticated")
IN_TRANSACTION = Reply(503, "5.5.1", "Error: MAIL transaction in progress")
ENCRYPTION_REQUIRED = Reply(538, "5.7.11", "Encryption required for requested authentication mechanism")
AUTH_REQUIRED = Reply(530, "5.7.0", "Authentication required")
AUTH_OK = Reply(235, "2.7.0", "Authentication successful")
AUTH_FAILED = Reply(535, "5.7.8", "Error: authentication failed")
AUTH_TEMPFAIL = Reply(454, "4.7.0", "Temporary authentication failure")
LINE_TOO_LONG = Reply(500, "5.5.6", "Authentication exchange line is too long")
UNSUPPORTED_MECHANISM = Reply(504, "5.5.4", "Unsupported authentication mechanism")
AUTH_ABORTED = Reply(501, "5.7.0", "Authentication aborted")
CANNOT_DECODE = Reply(501, "5.5.2", "Cannot decode response")
TOO_MANY_FAILURES = Reply(421, "4.7.0", "Error: too many failed authentications")
TEMPFAIL_INTERNAL = Reply(451, "4.3.0", "Error: internal error")  # a stage hook failed or overran its budget
# DATA: problems found while reading (datastream.DataProblem), answered after the end of data
DATA_BARE_LF = Reply(550, "5.5.2", "Error: bare <LF> received")
DATA_BARE_CR = Reply(550, "5.5.2", "Error: bare <CR> received")
DATA_LINE_TOO_LONG = Reply(500, "5.5.2", "Error: message line too long")
DATA_TOO_BIG = Reply(552, "5.3.4", "Error: message file too big")
DATA_HEADER_TOO_BIG = Reply(552, "5.3.4", "Error: message header too big")
DATA_TOO_MANY_HOPS = Reply(554, "5.4.0", "Error: too many hops")  # a mail loop; refused, so no bounce is made
# CHUNKING (RFC 3030), Postfix's texts
NO_VALID_RCPT = Reply(554, "5.5.1", "Error: no valid recipients")
BDAT_SYNTAX = Reply(521, "5.5.4", "Syntax: BDAT count [LAST]")
BDAT_NULL = Reply(551, "5.7.1", "Null BDAT request")
BDAT_TOO_BIG = Reply(552, "5.3.4", "Chunk exceeds message size limit")
DATA_AFTER_BDAT = Reply(503, "5.5.1", "Error: DATA after BDAT")
RCPT_AFTER_BDAT = Reply(503, "5.5.1", "Error: RCPT after BDAT")
MAIL_AFTER_BDAT = Reply(503, "5.5.1", "Error: MAIL after BDAT")
# DSN parameters (RFC 3461), Postfix's texts
BAD_RET = Reply(501, "5.5.4", "Bad RET parameter syntax")
BAD_ENVID = Reply(501, "5.5.4", "Bad ENVID parameter syntax")
BAD_NOTIFY = Reply(501, "5.5.4", "Error: Bad NOTIFY parameter syntax")
BAD_ORCPT = Reply(501, "5.5.4", "Error: Bad ORCPT parameter syntax")
# the commit (queue/store.py)
QUEUE_WRITE_ERROR = Reply(451, "4.3.0", "Error: queue file write error")
# the content filters (filters/chain.py)
SCANNER_TEMPFAIL = Reply(451, "4.7.1", "Try again later: content scanner unavailable")
SPAM_REJECTED = Reply(550, "5.7.1", "Rejected: message looks like spam")
# postscreen's own replies (Postfix postscreen's texts) are in postscreen/verdict.py

"""Value types shared by the components: replies, envelopes, clients, queue ids.

DESCRIPTION
    Frozen, slotted dataclasses for what crosses a boundary (session -> queue -> delivery).
    Mutable state lives only in the object that owns it (the SMTP session, the queue manager).
SECURITY
    Holds client-supplied strings (addresses, HELO names) verbatim; whoever logs them
    passes them through `mtaserver.logutil.sanitize`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import Enum


@dataclass(frozen=True, slots=True)
class Reply:
    """An SMTP reply. The enhanced status's class digit always follows the code's (Postfix does so)."""

    code: int
    status: str  # enhanced status code "x.y.z", "" for none (greeting, EHLO)
    text: str

    def __post_init__(self) -> None:
        if self.status and self.status[0] != str(self.code)[0]:
            object.__setattr__(self, "status", str(self.code)[0] + self.status[1:])

    @property
    def is_error(self) -> bool:
        return self.code >= 400

    def line(self) -> str:
        return f"{self.code} {self.status} {self.text}" if self.status else f"{self.code} {self.text}"

    def encode(self) -> bytes:
        lines = self.text.split("\n")
        out = []
        for i, t in enumerate(lines):
            sep = " " if i == len(lines) - 1 else "-"
            out.append(f"{self.code}{sep}{self.status + ' ' if self.status else ''}{t}\r\n")
        return "".join(out).encode("utf-8", "surrogateescape")

    def __str__(self) -> str:
        return self.line()


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

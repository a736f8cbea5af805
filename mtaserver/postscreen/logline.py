"""The log lines of Postfix's postscreen and dnsblog, word for word (SPEC 13).

DESCRIPTION
    Formatters only: each returns the text of one line; the caller logs it at INFO on the
    "postscreen" logger (`log`). Operators grep for these keywords, and tools such as
    pflogsumm count them, so the words and their order stay Postfix's. The client is
    always written "[ip]:port"; elapsed times with two significant digits, like Postfix's
    format_tv ("0.12", "1.2", "12").

SECURITY
    Client bytes (pregreet data, commands) go through logutil.sanitize: escaped, capped.
"""

from __future__ import annotations

import logging

from ..logutil import sanitize
from ..model import Reply

log = logging.getLogger("postscreen")


def client(ip: str, port: int) -> str:
    return f"[{ip}]:{port}"


def elapsed(seconds: float) -> str:
    if seconds >= 10:
        return f"{seconds:.0f}"
    if seconds >= 1:
        return f"{seconds:.1f}"
    return f"{seconds:.2f}"


def connect(ip: str, port: int, server_ip: str, server_port: int) -> str:
    return f"CONNECT from {client(ip, port)} to {client(server_ip, server_port)}"


def allowlisted(ip: str, port: int) -> str:
    return f"ALLOWLISTED {client(ip, port)}"


def denylisted(ip: str, port: int) -> str:
    return f"DENYLISTED {client(ip, port)}"


def pass_line(word: str, ip: str, port: int) -> str:
    """`word`: "PASS NEW" or "PASS OLD" (verdict.Conclusion.pass_log)."""
    return f"{word} {client(ip, port)}"


def pregreet(data: bytes, seconds: float, ip: str, port: int) -> str:
    return f"PREGREET {len(data)} after {elapsed(seconds)} from {client(ip, port)}: {sanitize(data[:100], 100)}"


def hangup(seconds: float, ip: str, port: int, where: str = "in tests before SMTP handshake") -> str:
    return f"HANGUP after {elapsed(seconds)} from {client(ip, port)} {where}"


def dnsbl_rank(score: int, ip: str, port: int) -> str:
    return f"DNSBL rank {score} for {client(ip, port)}"


def dnsbl_listed(ip: str, zone: str, answer: str) -> str:
    """dnsblog's line, one per A record of a listing."""
    return f"addr {ip} listed by domain {zone} as {answer}"


def bare_newline(ip: str, port: int, line: bytes) -> str:
    return f"BARE NEWLINE from {client(ip, port)} after {sanitize(line, 100)}"


def non_smtp_command(ip: str, port: int, after: str, line: bytes) -> str:
    return f"NON-SMTP COMMAND from {client(ip, port)} after {after}: {sanitize(line, 100)}"


def pipelining(ip: str, port: int, after: str, pending: bytes) -> str:
    return f"COMMAND PIPELINING from {client(ip, port)} after {after}: {sanitize(pending, 100)}"


def command_limit(kind: str, ip: str, port: int, after: str) -> str:
    """`kind`: "TIME", "COUNT" or "LENGTH"."""
    return f"COMMAND {kind} LIMIT from {client(ip, port)} after {after}"


def noqueue_rcpt(ip: str, port: int, reply: Reply, *, sender: str, recipient: str, proto: str, helo: str) -> str:
    return (
        f"NOQUEUE: reject: RCPT from {client(ip, port)}: {reply.line()}; "
        f"from=<{sanitize(sender)}>, to=<{sanitize(recipient)}>, proto={proto}, helo=<{sanitize(helo)}>"
    )


def noqueue_connect(ip: str, port: int, why: str) -> str:
    return f"NOQUEUE: reject: CONNECT from {client(ip, port)}: {why}"


def disconnect(ip: str, port: int) -> str:
    return f"DISCONNECT {client(ip, port)}"

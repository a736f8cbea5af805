"""Clients for the content scanners: clamd (INSTREAM) and SpamAssassin's spamd (SPAMC/1.5).

DESCRIPTION
    clamd_scan(endpoint, chunks, timeout) -> AvResult
        Sends the message to clamd with the INSTREAM command: `zINSTREAM\\0`, then chunks,
        each a 4-byte big-endian length and that many bytes, then a zero length. clamd
        answers one NUL-terminated line: `stream: OK`, `stream: <name> FOUND`, or
        `... ERROR` (e.g. "INSTREAM size limit exceeded"): an error raises ScannerError.
        clamd decodes MIME itself, so the message goes as received.

    spamd_check(endpoint, message, timeout) -> SpamResult
        Sends `SYMBOLS SPAMC/1.5` with Content-length and User headers and the message; spamd
        answers `SPAMD/1.x 0 EX_OK`, a `Spam: True|False ; <score> / <threshold>` header and,
        as body, the comma-separated names of the rules that hit. Anything else raises
        ScannerError.

    parse_clamd_reply / parse_spamd_reply are the pure halves, tested without sockets.

    Every call runs under one timeout (connect, send, reply); a timeout, a refused
    connection or a reply we cannot parse is a ScannerError, which the filter chain turns
    into its on_error policy (default: tempfail, 451 4.7.1).

SECURITY
    Scanners are local, trusted services, but their replies are still bounded (MAX_REPLY)
    and parsed strictly; a virus name or rule name reaches logs and replies only through
    logutil.sanitize.

CONFIG
    antivirus.clamd.{address,timeout}, antispam.spamd.{address,timeout}
"""

from __future__ import annotations

import asyncio
import re
import struct
from collections.abc import AsyncIterator
from dataclasses import dataclass

from ..values import Endpoint

MAX_REPLY = 64 * 1024  # bytes of a scanner's reply we read at most
CLAMD_CHUNK = 256 * 1024  # clamd's StreamMaxLength applies to the sum; chunks only bound each write


class ScannerError(Exception):
    """The scanner could not give a verdict: down, slow, refused the input, or spoke garbage."""


@dataclass(frozen=True, slots=True)
class AvResult:
    virus: str | None  # None: clean


@dataclass(frozen=True, slots=True)
class SpamResult:
    is_spam: bool  # spamd's own verdict (its required_score); the chain uses its own levels
    score: float
    threshold: float
    tests: tuple[str, ...]


# ---------------------------------------------------------------------------------------------
# Pure parsing.

_CLAMD = re.compile(rb"^(?:stream|[^:]*): (?:(OK)|(.+) (FOUND)|(.+) (ERROR))$")


def parse_clamd_reply(data: bytes) -> AvResult:
    line = data.rstrip(b"\0\r\n")
    m = _CLAMD.match(line)
    if not m:
        raise ScannerError(f"clamd: unexpected reply {line[:200]!r}")
    if m[1]:
        return AvResult(None)
    if m[3]:
        return AvResult(m[2].decode("utf-8", "replace"))
    raise ScannerError(f"clamd: {m[4].decode('utf-8', 'replace')[:200]}")


_SPAMD_STATUS = re.compile(rb"^SPAMD/\d+\.\d+ (\d+) (\S+)")
_SPAMD_SPAM = re.compile(rb"^Spam: *(True|False|Yes|No) *; *(-?\d+(?:\.\d+)?) */ *(-?\d+(?:\.\d+)?)\s*$", re.IGNORECASE)


def parse_spamd_reply(data: bytes) -> SpamResult:
    head, _, body = data.partition(b"\r\n\r\n")
    lines = head.split(b"\r\n")
    status = _SPAMD_STATUS.match(lines[0])
    if not status:
        raise ScannerError(f"spamd: unexpected reply {lines[0][:200]!r}")
    if status[1] != b"0":
        raise ScannerError(f"spamd: {lines[0][:200].decode('ascii', 'replace')}")
    for line in lines[1:]:
        m = _SPAMD_SPAM.match(line)
        if m:
            tests = tuple(t for t in body.decode("ascii", "replace").strip().split(",") if t)
            return SpamResult(m[1].lower() in (b"true", b"yes"), float(m[2]), float(m[3]), tests)
    raise ScannerError("spamd: no Spam: header in the reply")


def spamd_request(message: bytes, user: str = "mtaserver") -> bytes:
    return b"SYMBOLS SPAMC/1.5\r\nContent-length: %d\r\nUser: %s\r\n\r\n" % (len(message), user.encode("ascii"))


# ---------------------------------------------------------------------------------------------
# The I/O shell.


async def _open(endpoint: Endpoint) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    if endpoint.unix_path:
        return await asyncio.open_unix_connection(endpoint.unix_path)
    return await asyncio.open_connection(endpoint.host, endpoint.port)


async def _read_all(reader: asyncio.StreamReader) -> bytes:
    data = b""
    while len(data) <= MAX_REPLY:
        chunk = await reader.read(MAX_REPLY + 1 - len(data))
        if not chunk:
            return data
        data += chunk
    raise ScannerError("reply too long")


async def clamd_scan(endpoint: Endpoint, chunks: AsyncIterator[bytes], timeout: float) -> AvResult:
    async def run() -> AvResult:
        reader, writer = await _open(endpoint)
        try:
            writer.write(b"zINSTREAM\0")
            async for chunk in chunks:
                for i in range(0, len(chunk), CLAMD_CHUNK):
                    part = chunk[i : i + CLAMD_CHUNK]
                    writer.write(struct.pack("!L", len(part)))
                    writer.write(part)
                    await writer.drain()  # clamd may stop reading (size limit): its reply says why
            writer.write(b"\0\0\0\0")
            await writer.drain()
            return parse_clamd_reply(await _read_all(reader))
        finally:
            writer.close()

    return await _guard("clamd", run(), timeout)


async def spamd_check(endpoint: Endpoint, message: bytes, timeout: float) -> SpamResult:
    async def run() -> SpamResult:
        reader, writer = await _open(endpoint)
        try:
            writer.write(spamd_request(message))
            writer.write(message)
            await writer.drain()
            if writer.can_write_eof():
                writer.write_eof()
            return parse_spamd_reply(await _read_all(reader))
        finally:
            writer.close()

    return await _guard("spamd", run(), timeout)


async def _guard(name: str, job, timeout: float):  # type: ignore[no-untyped-def]
    try:
        return await asyncio.wait_for(job, timeout)
    except ScannerError:
        raise
    except TimeoutError:
        raise ScannerError(f"{name}: no verdict within {timeout:g}s") from None
    except (OSError, asyncio.IncompleteReadError) as exc:
        raise ScannerError(f"{name}: {exc.strerror or exc}" if isinstance(exc, OSError) else f"{name}: {exc}") from None

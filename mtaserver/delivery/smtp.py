"""Outbound SMTP: one transaction to one host, per-recipient outcomes, a connection cache.

DESCRIPTION
    `SmtpClient.send(host, port, sender, recipients, body)` runs MAIL, one RCPT per
    recipient and DATA on a connection taken from the cache (or a new one: connect,
    EHLO `outbound.helo_name`, STARTTLS per `outbound.tls`, AUTH per
    `outbound.relay_auth`), and returns an `Outcome` per recipient:

      sent     2xx after DATA
      defer    4xx, or the host could not be reached / spoke garbage / timed out
      bounce   5xx (for MAIL or DATA: every recipient; for RCPT: that recipient)

    A connection that finished a transaction cleanly goes back to the cache for the next
    message to the same host (Postfix's connection cache), up to `destination_concurrency`
    idle connections per host, each kept at most IDLE_TIMEOUT.

    The protocol work is aiosmtplib's (dot-stuffing, reply parsing, STARTTLS, AUTH, timeouts,
    refusing CR/LF in commands).

SECURITY
    Talks to remote servers. Their replies reach our logs and DSNs only after control
    characters are removed (logutil.sanitize, dsn._clean).

CONFIG
    outbound.helo_name, outbound.tls, outbound.relay_auth, queue.destination_concurrency
"""

from __future__ import annotations

import asyncio
import logging
import ssl
import time
from dataclasses import dataclass
from enum import Enum
from pathlib import Path

import aiosmtplib

from ..logutil import sanitize

log = logging.getLogger("smtp")

IDLE_TIMEOUT = 10.0
CONNECT_TIMEOUT = 30.0
COMMAND_TIMEOUT = 300.0


class TlsRequired(Exception):
    pass


class Kind(str, Enum):
    SENT = "sent"
    DEFER = "deferred"
    BOUNCE = "bounced"


@dataclass(frozen=True, slots=True)
class Outcome:
    kind: Kind
    status: str  # enhanced status code
    text: str  # the remote reply or our reason
    remote: str | None = None  # "host[ip]:port"
    smtp_reply: bool = True  # text is a remote SMTP reply (DSN Diagnostic-Code: smtp;)


def _status_of(code: int, message: str, default_detail: str = "0.0") -> str:
    first = message.split(" ", 1)[0]
    parts = first.split(".")
    if len(parts) == 3 and all(p.isdigit() for p in parts) and parts[0] in "245":
        return f"{str(code)[0]}.{parts[1]}.{parts[2]}"
    return f"{str(code)[0]}.{default_detail}"


def from_reply(code: int, message: str, remote: str | None, default_detail: str = "0.0") -> Outcome:
    text = f"{code} {sanitize(message, 400)}"
    status = _status_of(code, message, default_detail)
    if 200 <= code < 300:
        return Outcome(Kind.SENT, status, text, remote)
    return Outcome(Kind.BOUNCE if code >= 500 else Kind.DEFER, status, text, remote)


class SmtpClient:
    def __init__(
        self,
        *,
        helo_name: str,
        tls: str = "may",
        username: str | None = None,
        password: str | None = None,
        max_idle_per_host: int = 20,
    ) -> None:
        self.helo_name = helo_name
        self.tls = tls
        self.username = username
        self.password = password
        self.max_idle = max_idle_per_host
        self._idle: dict[tuple[str, int], list[tuple[aiosmtplib.SMTP, float, str]]] = {}

    async def _connect(self, address: str, port: int, name: str) -> tuple[aiosmtplib.SMTP, str]:
        """Connect to `address` (an IP, or a name for the system resolver), EHLO, STARTTLS, AUTH.

        `name` is the host's DNS name: the label in logs and DSNs, and the TLS server name.
        """
        client = aiosmtplib.SMTP(
            hostname=address, port=port, local_hostname=self.helo_name, timeout=CONNECT_TIMEOUT, start_tls=False
        )
        await client.connect()
        client.timeout = COMMAND_TIMEOUT
        peer = client.transport.get_extra_info("peername") if client.transport else None
        remote = f"{name}[{peer[0]}]:{peer[1]}" if peer else f"{name}:{port}"
        try:
            await client.ehlo()
            if self.tls != "none" and client.supports_extension("STARTTLS"):
                # Postfix's "may" and "encrypt" levels both encrypt without authenticating the
                # server: MX host names are not proven by DNS, so a certificate check proves little.
                ctx = ssl.create_default_context()
                ctx.check_hostname = False
                ctx.verify_mode = ssl.CERT_NONE
                await client.starttls(server_hostname=name, validate_certs=False, tls_context=ctx)
            elif self.tls == "encrypt":
                raise TlsRequired(f"{remote}: TLS is required, but was not offered")
            if self.username and self.password is not None:
                await client.login(self.username, self.password)
        except BaseException:
            client.close()
            raise
        return client, remote

    def _take(self, key: tuple[str, int]) -> tuple[aiosmtplib.SMTP, str] | None:
        pool = self._idle.get(key)
        now = time.monotonic()
        while pool:
            client, since, remote = pool.pop()
            if client.is_connected and now - since < IDLE_TIMEOUT:
                return client, remote
            client.close()
        return None

    def _give_back(self, key: tuple[str, int], client: aiosmtplib.SMTP, remote: str) -> None:
        pool = self._idle.setdefault(key, [])
        if len(pool) < self.max_idle and client.is_connected:
            pool.append((client, time.monotonic(), remote))
        else:
            client.close()

    def close_idle(self) -> None:
        for pool in self._idle.values():
            for client, _, _ in pool:
                client.close()
        self._idle.clear()

    async def send(
        self,
        address: str,
        port: int,
        sender: str,
        recipients: list[str],
        body: bytes,
        *,
        name: str | None = None,
        smtputf8: bool = False,
        eightbit: bool = False,
    ) -> dict[str, Outcome]:
        name = name or address
        key = (address, port)
        cached = self._take(key)
        if cached is not None:
            try:
                return await self._transaction(key, *cached, sender, recipients, body, smtputf8, eightbit)
            except (aiosmtplib.SMTPServerDisconnected, ConnectionError):
                pass  # the cached connection went stale: one fresh try below
        label = f"{name}[{address}]:{port}"
        try:
            client, remote = await self._connect(address, port, name)
        except TlsRequired as exc:
            o = Outcome(Kind.DEFER, "4.7.4", str(exc), label, False)
            return {r: o for r in recipients}
        except aiosmtplib.SMTPConnectResponseError as exc:
            o = from_reply(exc.code, exc.message, label, "4.0")
            o = Outcome(Kind.DEFER, "4" + o.status[1:], f"host {label} refused to talk to me: {o.text}", label)
            return {r: o for r in recipients}
        except aiosmtplib.SMTPResponseException as exc:  # EHLO, STARTTLS or AUTH refused
            o = Outcome(Kind.DEFER, "4.7.0" if self.tls == "encrypt" else "4.0.0", f"{label}: {exc.code} {sanitize(exc.message, 300)}", label, False)
            return {r: o for r in recipients}
        except (aiosmtplib.SMTPException, OSError, asyncio.TimeoutError, ssl.SSLError) as exc:
            o = Outcome(Kind.DEFER, "4.4.1", f"connect to {label}: {sanitize(str(exc) or type(exc).__name__, 200)}", label, False)
            return {r: o for r in recipients}
        try:
            return await self._transaction(key, client, remote, sender, recipients, body, smtputf8, eightbit)
        except (aiosmtplib.SMTPException, OSError, asyncio.TimeoutError) as exc:
            client.close()
            o = Outcome(Kind.DEFER, "4.4.2", f"lost connection with {remote}: {sanitize(str(exc) or type(exc).__name__, 200)}", remote, False)
            return {r: o for r in recipients}

    async def _transaction(
        self, key, client: aiosmtplib.SMTP, remote: str, sender: str, recipients: list[str], body: bytes, smtputf8: bool, eightbit: bool
    ) -> dict[str, Outcome]:
        options = []
        if eightbit and client.supports_extension("8BITMIME"):
            options.append("BODY=8BITMIME")
        if smtputf8:
            if not client.supports_extension("SMTPUTF8"):
                o = Outcome(Kind.BOUNCE, "5.6.7", f"{remote} does not support SMTPUTF8", remote, False)
                self._give_back(key, client, remote)
                return {r: o for r in recipients}
            options.append("SMTPUTF8")
        limit = client.esmtp_extensions.get("size", "")
        if limit.isdigit() and int(limit) and len(body) > int(limit):
            o = Outcome(Kind.BOUNCE, "5.3.4", f"message size {len(body)} exceeds size limit {limit} of server {remote}", remote, False)
            self._give_back(key, client, remote)
            return {r: o for r in recipients}
        if client.supports_extension("SIZE"):
            options.append(f"SIZE={len(body)}")
        encoding = "utf-8" if smtputf8 else "ascii"
        try:
            await client.mail(sender, options=options, encoding=encoding)
        except aiosmtplib.SMTPResponseException as exc:
            await self._reset(key, client, remote)
            o = from_reply(exc.code, exc.message, remote)
            return {r: o for r in recipients}
        results: dict[str, Outcome] = {}
        accepted = []
        for r in recipients:
            try:
                await client.rcpt(r, encoding=encoding)
                accepted.append(r)
            except aiosmtplib.SMTPResponseException as exc:
                results[r] = from_reply(exc.code, exc.message, remote, "1.0" if exc.code >= 500 else "0.0")
        if not accepted:
            await self._reset(key, client, remote)
            return results
        try:
            resp = await client.data(body)
        except aiosmtplib.SMTPResponseException as exc:
            o = from_reply(exc.code, exc.message, remote)
            await self._reset(key, client, remote)
        else:
            o = from_reply(resp.code, resp.message, remote)
            self._give_back(key, client, remote)
        for r in accepted:
            results[r] = o
        return results

    async def _reset(self, key, client: aiosmtplib.SMTP, remote: str) -> None:
        try:
            await client.rset()
            self._give_back(key, client, remote)
        except (aiosmtplib.SMTPException, OSError, asyncio.TimeoutError):
            client.close()


def read_body(path: Path) -> bytes:
    return path.read_bytes()

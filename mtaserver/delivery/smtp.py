"""Outbound SMTP: one transaction to one host, per-recipient outcomes, PIPELINING, a connection cache.

DESCRIPTION
    `SmtpClient.send(address, port, sender, recipients, body, name=)` delivers one message to
    one host and returns an `Outcome` per recipient:

      sent     2xx to the recipient's RCPT and to the end of data
      defer    4xx, or the host could not be reached / refused to talk / spoke garbage /
               timed out / TLS was required and not offered (4.7.4)
      bounce   5xx (for MAIL or DATA: every recipient; for RCPT: that recipient), or a
               message the host cannot take: over its SIZE (5.3.4), SMTPUTF8 not offered (5.6.7)

    A new connection: TCP connect (CONNECT_TIMEOUT) with TCP_NODELAY, the greeting (a 4xx or
    5xx greeting defers every recipient, "refused to talk to me"; the queue manager then
    tries the next address or the fallback relay), EHLO `outbound.helo_name` (HELO when EHLO
    is refused with 5xx), STARTTLS when offered and `outbound.tls` is not none, then EHLO
    again, then AUTH PLAIN (LOGIN when PLAIN is not offered) when `outbound.relay_auth` is
    set.

    The transaction: MAIL FROM with BODY=8BITMIME (8-bit message, offered), SMTPUTF8 (asked
    for; when not offered the message bounces 5.6.7 without being tried) and SIZE= (offered;
    a message larger than the host's SIZE bounces 5.3.4 without being sent), one RCPT TO per
    recipient, DATA, the dot-stuffed message. When the host offers PIPELINING (RFC 2920),
    MAIL, every RCPT and DATA go in one write and the replies are read in order: one round
    trip instead of 2 + recipients. DATA may end the group, so it is sent before we know
    whether a recipient was accepted; with none accepted the host answers it 503/554, which
    is expected; a broken host that answers 354 anyway gets an empty message (".") and the
    transaction counts as failed. Without PIPELINING, one command at a time, and no DATA
    without an accepted recipient. The message is read from its queue file and dot-stuffed
    in pieces (delivery/content.py, wire.DataStuffer): never whole in memory.

    After a transaction that failed (MAIL, every RCPT or DATA refused) the client sends RSET;
    a connection that ended its transaction cleanly (or was reset) goes back to the cache
    for the next message to the same address and port (Postfix's connection cache), at most
    `max_idle_per_host` idle connections per host, each for at most IDLE_TIMEOUT, after which
    it is closed with QUIT. A cached connection that turns out stale (the host closed it, or
    answered the first command with 421) is dropped and the message gets one fresh
    connection. A connection that broke, timed out or spoke garbage is closed, never cached.

    A connection lost during the transaction defers (4.4.2) every recipient that has no
    reply of its own yet; a recipient refused at RCPT keeps that reply. A protocol error
    (a reply that is not a reply, bare CR, an overlong line) defers 4.5.0.

    Timeouts (Postfix's defaults): connect 30 s, every other reply 300 s (greeting, EHLO,
    STARTTLS and its handshake, AUTH, MAIL, RCPT, DATA, RSET; also each stall while sending
    each 256 KiB piece of the message), the reply to the end of data 600 s
    (smtp_data_done_timeout).

SECURITY
    Talks to remote servers: their replies are parsed strictly (delivery/wire.py: printable
    text only, line and line-count limits, UTF-8 only after SMTPUTF8 was agreed) and reach
    logs and DSNs only through logutil.sanitize. Commands never carry CR, LF or another
    control character: an address that would is bounced here (5.1.3 / 5.1.7), never sent.
    The body goes out with every bare CR and LF turned into CRLF before dot-stuffing, so no
    end of data can be smuggled to the next hop.

    STARTTLS is explicit and unauthenticated at both `may` and `encrypt` (Postfix's levels of
    those names): the certificate is not verified, because MX host names are not proven by
    DNS; the TLS server name (SNI) is the host's name. `encrypt` defers (4.7.4) a host that
    does not offer STARTTLS or refuses it, and a failed handshake (4.7.5); `may` continues in
    plain text when STARTTLS is refused, and after a failed handshake tries the host again in
    plain text on a new connection (logged), as Postfix does. Bytes that arrive with the 220
    reply to STARTTLS, before the handshake, are a protocol error (they would be read as if
    they came over TLS: response injection).

    AUTH is sent only once TLS is up (Postfix's smtp_sasl_security_options = noplaintext):
    a relay that offers AUTH without STARTTLS, or a man in the middle who removed STARTTLS
    or broke the handshake, never gets the password; the mail is deferred 4.7.0 (logged),
    unless `outbound.relay_auth.allow_plaintext` is true (a relay on a trusted network). A
    host that offers neither PLAIN nor LOGIN, or refuses the credentials, defers (4.7.0 /
    its status).

STANDARDS
    RFC 5321 (SMTP; 3.3, 4.1.1, 4.2, 4.5.2 transparency, 4.5.3.2 timeouts), RFC 2920
    (PIPELINING), RFC 3207 (STARTTLS), RFC 4954 and 4616 (AUTH, PLAIN), RFC 1870 (SIZE),
    RFC 6152 (8BITMIME), RFC 6531 (SMTPUTF8), RFC 3463 (enhanced status codes).

CONFIG
    outbound.helo_name, outbound.tls, outbound.relay_auth (allow_plaintext), queue.destination_concurrency
    (max_idle_per_host)
"""

from __future__ import annotations

import asyncio
import base64
import logging
import ssl
from pathlib import Path

from ..logutil import sanitize_ascii as sanitize  # outcome texts reach DSNs and replies: ASCII
from ..model import Fate, Reply
from .content import Content
from .wire import (
    Connection,
    DataStuffer,
    DsnRequest,
    Lost,
    Outcome,
    ProtocolError,
    command,
    extensions,
    from_reply,
    open_tcp,
)

__all__ = ["IDLE_TIMEOUT", "Outcome", "SmtpClient", "TlsRequired", "from_reply", "read_body"]

log = logging.getLogger("smtp")

IDLE_TIMEOUT = 10.0  # an idle cached connection is closed after this
CONNECT_TIMEOUT = 30.0  # smtp_connect_timeout
COMMAND_TIMEOUT = 300.0  # smtp_helo_timeout, smtp_mail_timeout, smtp_rcpt_timeout, ...
DATA_DONE_TIMEOUT = 600.0  # smtp_data_done_timeout: the reply to the end of data
SEND_CHUNK = 1 << 18  # the message goes out in pieces of this size, each under COMMAND_TIMEOUT

class _Failed(Exception):
    """The session could not get ready for a transaction: one outcome for every recipient."""

    def __init__(self, outcome: Outcome, *, polite: bool = True) -> None:
        super().__init__(outcome.text)
        self.outcome = outcome
        self.polite = polite  # the conversation is in step: end it with QUIT


class TlsRequired(_Failed):
    """`outbound.tls: encrypt` and the host does not offer (or refuses) STARTTLS: 4.7.4."""


class _TlsFailed(_Failed):
    """The host offered STARTTLS and the handshake failed (4.7.5); at `may`, tried again in plain text."""


class _Stale(Exception):
    """A cached connection was dead before the first reply of a new transaction."""


class _SmtpConnection(Connection):
    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, remote: str) -> None:
        super().__init__(reader, writer, remote, COMMAND_TIMEOUT)
        self.ext: dict[str, str] = {}
        self.expiry: asyncio.TimerHandle | None = None
        self.dsn: DsnRequest | None = None  # the sender's DSN request for the transaction in progress (send sets it)


class SmtpClient:
    def __init__(
        self,
        *,
        helo_name: str,
        tls: str = "may",
        username: str | None = None,
        password: str | None = None,
        max_idle_per_host: int = 20,
        tls_log_level: int = 1,
        allow_plaintext_auth: bool = False,
    ) -> None:
        self.helo_name = helo_name
        self.tls = tls
        self.allow_plaintext_auth = allow_plaintext_auth  # outbound.relay_auth.allow_plaintext
        self.tls_log_level = tls_log_level  # advanced.tls_log_level: 0 no TLS lines, 1 a summary per handshake
        self.username = username
        self.password = password
        self.max_idle = max_idle_per_host
        self._idle: dict[tuple[str, int], list[_SmtpConnection]] = {}
        self._closing: set[asyncio.Task[None]] = set()
        self._tls_context: ssl.SSLContext | None = None

    # -- the connection cache -----------------------------------------------------------------

    def _take(self, key: tuple[str, int]) -> _SmtpConnection | None:
        pool = self._idle.get(key)
        while pool:
            conn = pool.pop()  # the most recently used one
            if conn.expiry is not None:
                conn.expiry.cancel()
                conn.expiry = None
            if conn.usable():
                return conn
            conn.quit_nowait()
        return None

    def _give_back(self, key: tuple[str, int], conn: _SmtpConnection) -> None:
        pool = self._idle.setdefault(key, [])
        if len(pool) >= self.max_idle or not conn.usable():
            self._close_later(conn)
            return
        pool.append(conn)
        conn.expiry = asyncio.get_running_loop().call_later(IDLE_TIMEOUT, self._expire, key, conn)

    def _expire(self, key: tuple[str, int], conn: _SmtpConnection) -> None:
        conn.expiry = None
        pool = self._idle.get(key)
        if pool and conn in pool:
            pool.remove(conn)
            if not pool:
                del self._idle[key]
            self._close_later(conn)

    def _close_later(self, conn: _SmtpConnection) -> None:
        """QUIT (waiting for the 221) and close, without holding up the caller."""

        async def bye() -> None:
            await conn.quit()
            await conn.close()

        task = asyncio.get_running_loop().create_task(bye())
        task.conn = conn  # type: ignore[attr-defined]
        self._closing.add(task)
        task.add_done_callback(self._closing.discard)

    def close_idle(self) -> None:
        """Close every cached connection (QUIT, without waiting for the reply)."""
        for pool in self._idle.values():
            for conn in pool:
                if conn.expiry is not None:
                    conn.expiry.cancel()
                conn.quit_nowait()
        self._idle.clear()
        for task in list(self._closing):
            task.cancel()
            task.conn.quit_nowait()  # type: ignore[attr-defined]
        self._closing.clear()

    # -- one message ----------------------------------------------------------------------------

    async def send(
        self,
        address: str,
        port: int,
        sender: str,
        recipients: list[str],
        body: bytes | Content,
        *,
        name: str | None = None,
        smtputf8: bool = False,
        eightbit: bool = False,
        dsn: DsnRequest | None = None,
    ) -> dict[str, Outcome]:
        """Deliver one message to the host at `address` (an IP, or a name for the system
        resolver); `name` is its DNS name, for logs, DSNs and the TLS server name. `body`: the
        content in memory, or a Content read in pieces from its queue file (never whole)."""
        if not recipients:
            return {}
        body = Content.of(body)
        name = name or address
        key = (address, port)
        conn = self._take(key)
        if conn is not None:
            try:
                conn.dsn = dsn
                return await self._deliver(key, conn, sender, recipients, body, smtputf8, eightbit, reused=True)
            except _Stale:
                log.debug("%s: cached connection was stale, opening a new one", conn.remote)
        try:
            try:
                conn = await self._open(address, port, name)
            except _TlsFailed as exc:
                if self.tls != "may":
                    raise
                # Postfix at `may`: a failed handshake is tried again in plain text, on a new connection.
                log.warning("%s; trying again in plain text (outbound.tls: may)", exc.outcome.text)
                conn = await self._open(address, port, name, starttls=False)
        except _Failed as exc:
            return {r: exc.outcome for r in recipients}
        conn.dsn = dsn
        return await self._deliver(key, conn, sender, recipients, body, smtputf8, eightbit, reused=False)

    async def _deliver(
        self, key, conn: _SmtpConnection, sender: str, recipients: list[str], body: Content, smtputf8: bool, eightbit: bool, *, reused: bool
    ) -> dict[str, Outcome]:
        results: dict[str, Outcome] = {}
        remote = conn.remote
        keep = False
        try:
            keep = await self._transaction(conn, sender, recipients, body, smtputf8, eightbit, results, reused)
        except _Stale:
            raise
        except Lost as exc:
            o = Outcome(Fate.DEFERRED, "4.4.2", exc.text(remote), remote, False)
            for r in recipients:
                results.setdefault(r, o)
        except ProtocolError as exc:
            log.warning("%s: protocol error: %s", remote, exc)
            o = Outcome(Fate.DEFERRED, "4.5.0", f"protocol error from {remote}: {exc}", remote, False)
            for r in recipients:
                results.setdefault(r, o)
        finally:
            if keep:
                self._give_back(key, conn)
            else:
                conn.writer.transport.abort()
        return results

    # -- opening a session ----------------------------------------------------------------------

    async def _open(self, address: str, port: int, name: str, *, starttls: bool = True) -> _SmtpConnection:
        """Connect, greeting, EHLO, STARTTLS (unless not `starttls`), EHLO, AUTH; raises _Failed."""
        label = f"{name}[{address}]:{port}"
        try:
            reader, writer = await open_tcp(address, port, CONNECT_TIMEOUT)
        except TimeoutError:
            raise _Failed(Outcome(Fate.DEFERRED, "4.4.1", f"connect to {label}: Connection timed out", label, False)) from None
        except OSError as exc:
            why = sanitize(exc.strerror or str(exc) or type(exc).__name__, 200)
            raise _Failed(Outcome(Fate.DEFERRED, "4.4.1", f"connect to {label}: {why}", label, False)) from None
        peer = writer.get_extra_info("peername")
        remote = f"{name}[{peer[0]}]:{peer[1]}" if peer else label
        conn = _SmtpConnection(reader, writer, remote)
        try:
            await self._hello(conn, name, starttls)
            return conn
        except _Failed as exc:
            if exc.polite:
                await conn.quit()
            await conn.close()
            raise
        except Lost as exc:
            await conn.close()
            raise _Failed(Outcome(Fate.DEFERRED, "4.4.2", exc.text(remote), remote, False)) from None
        except ProtocolError as exc:
            log.warning("%s: protocol error: %s", remote, exc)
            await conn.close()
            raise _Failed(Outcome(Fate.DEFERRED, "4.5.0", f"protocol error from {remote}: {exc}", remote, False)) from None
        except BaseException:
            conn.writer.transport.abort()
            raise

    async def _hello(self, conn: _SmtpConnection, name: str, starttls: bool = True) -> None:
        remote = conn.remote
        greeting = await conn.reply("while receiving the initial server greeting")
        if greeting.code != 220:
            _expect(greeting, "the greeting")
            o = from_reply(greeting, remote, "4.0")
            raise _Failed(Outcome(Fate.DEFERRED, "4" + o.status[1:], f"host {remote} refused to talk to me: {o.text}", remote))
        await self._ehlo(conn)
        if self.tls != "none" and "STARTTLS" in conn.ext and starttls:
            conn.send(b"STARTTLS\r\n")
            reply = await conn.reply("after STARTTLS")
            _expect(reply, "STARTTLS")
            if reply.code == 220:
                if conn.buffered():
                    raise ProtocolError("data after the reply to STARTTLS, before the TLS handshake")
                try:
                    await conn.start_tls(self._tls(), name, "while performing the TLS handshake")
                except (ssl.SSLError, ValueError, Lost) as exc:
                    if isinstance(exc, Lost):
                        why = exc.text(remote)
                    else:
                        why = sanitize(getattr(exc, "reason", None) or str(exc) or type(exc).__name__, 200)
                    raise _TlsFailed(Outcome(Fate.DEFERRED, "4.7.5", f"Cannot start TLS with {remote}: handshake failure ({why})", remote, False), polite=False) from None
                info = conn.tls_info
                if info and self.tls_log_level >= 1:
                    log.info("Untrusted TLS connection established to %s: %s with cipher %s", remote, *info)
                await self._ehlo(conn)  # RFC 3207 4.2: forget what was said in plain text
            elif self.tls == "encrypt":
                o = from_reply(reply, remote)
                raise TlsRequired(Outcome(Fate.DEFERRED, "4.7.4", f"TLS is required, but host {remote} refused to start TLS: {o.text}", remote, False))
            else:
                log.info("%s: STARTTLS refused (%s), continuing in plain text", remote, sanitize(reply.line(), 200))
        elif self.tls == "encrypt":
            raise TlsRequired(Outcome(Fate.DEFERRED, "4.7.4", f"{remote}: TLS is required, but was not offered", remote, False))
        if self.username and self.password is not None:
            if conn.tls_info is None and not self.allow_plaintext_auth:
                # Postfix's smtp_sasl_security_options = noplaintext: no password over a plain
                # connection (a relay without STARTTLS, or a man in the middle who removed it).
                text = (f"SASL authentication to {remote} is configured, but the connection is not encrypted: the password is "
                        "not sent in plain text (outbound.relay_auth.allow_plaintext)")  # fmt: skip
                log.warning("%s", text)
                raise _Failed(Outcome(Fate.DEFERRED, "4.7.0", text, remote, False))
            await self._auth(conn)

    async def _ehlo(self, conn: _SmtpConnection) -> None:
        remote = conn.remote
        try:
            conn.send(command("EHLO ", self.helo_name))
        except ValueError:
            raise _Failed(Outcome(Fate.DEFERRED, "4.3.5", "bad EHLO name (outbound.helo_name)", remote, False)) from None
        reply = await conn.reply("after EHLO")
        _expect(reply, "EHLO")
        if reply.ok:
            conn.ext = extensions(reply)
            return
        if reply.code >= 500 and reply.code != 521:  # EHLO not understood: HELO (RFC 5321 3.2)
            conn.send(command("HELO ", self.helo_name))
            reply = await conn.reply("after HELO")
            _expect(reply, "HELO")
            if reply.ok:
                conn.ext = {}
                return
        o = from_reply(reply, remote)
        raise _Failed(Outcome(Fate.DEFERRED, "4" + o.status[1:], f"host {remote} refused to talk to me: {o.text}", remote))

    def _tls(self) -> ssl.SSLContext:
        """Encryption without authentication, Postfix's may and encrypt: MX names are not proven
        by DNS, so a certificate check would prove little and lose mail."""
        if self._tls_context is None:
            ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
            ctx.check_hostname = False
            ctx.verify_mode = ssl.CERT_NONE
            self._tls_context = ctx
        return self._tls_context

    async def _auth(self, conn: _SmtpConnection) -> None:
        remote = conn.remote
        offered = set(conn.ext.get("AUTH", "").upper().split())
        for keyword, params in conn.ext.items():  # the pre-RFC 4954 form: AUTH=LOGIN PLAIN
            if keyword.startswith("AUTH="):
                offered |= {keyword[5:], *params.upper().split()}
        user = (self.username or "").encode("utf-8")
        password = (self.password or "").encode("utf-8")
        if "PLAIN" in offered:
            token = base64.b64encode(b"\0" + user + b"\0" + password).decode("ascii")
            conn.send(f"AUTH PLAIN {token}\r\n".encode("ascii"))
            reply = await conn.reply("after AUTH")
        elif "LOGIN" in offered:
            conn.send(b"AUTH LOGIN\r\n")
            reply = await conn.reply("after AUTH")
            for secret in (user, password):
                if reply.code != 334:
                    break
                conn.send(base64.b64encode(secret) + b"\r\n")
                reply = await conn.reply("after AUTH")
        else:
            what = "offers no AUTH" if not offered else f"offers no AUTH mechanism we use (PLAIN, LOGIN): {sanitize(' '.join(sorted(offered)), 100)}"
            raise _Failed(Outcome(Fate.DEFERRED, "4.7.0", f"SASL authentication to {remote} is configured, but the host {what}", remote, False))
        if reply.code != 235:
            if reply.code == 334:  # a challenge we did not expect: cancel (RFC 4954 4)
                conn.send(b"*\r\n")
                reply = await conn.reply("after AUTH")
            o = from_reply(reply, remote, "7.0")
            raise _Failed(Outcome(Fate.DEFERRED, "4" + o.status[1:], f"SASL authentication failed; server {remote} said: {o.text}", remote, False))

    # -- the transaction ------------------------------------------------------------------------

    async def _transaction(
        self,
        conn: _SmtpConnection,
        sender: str,
        recipients: list[str],
        body: Content,
        smtputf8: bool,
        eightbit: bool,
        results: dict[str, Outcome],
        reused: bool,
    ) -> bool:
        """Fill `results`; True when the connection is clean and may be cached."""
        remote = conn.remote
        ext = conn.ext

        def everyone(o: Outcome) -> bool:
            for r in recipients:
                results.setdefault(r, o)
            return True

        params = []
        if eightbit and "8BITMIME" in ext:
            params.append("BODY=8BITMIME")
        if smtputf8:
            if "SMTPUTF8" not in ext:
                return everyone(Outcome(Fate.BOUNCED, "5.6.7", f"{remote} does not support SMTPUTF8", remote, False))
            params.append("SMTPUTF8")
        limit = ext.get("SIZE", "")
        if limit.isdigit() and int(limit) and len(body) > int(limit):
            return everyone(Outcome(Fate.BOUNCED, "5.3.4", f"message size {len(body)} exceeds size limit {limit} of server {remote}", remote, False))
        if "SIZE" in ext:
            params.append(f"SIZE={len(body)}")  # RFC 1870: without the stuffing and the final dot

        dsn = conn.dsn if "DSN" in ext else None  # RFC 3461: passed on only to a host that offers DSN
        if dsn is not None:
            params += dsn.mail_params()
        if not smtputf8 and not sender.isascii():
            return everyone(Outcome(Fate.BOUNCED, "5.6.7", "non-ASCII sender address without SMTPUTF8", remote, False))
        try:
            mail = command("MAIL FROM:", f"<{sender}>", params)
        except ValueError:
            return everyone(Outcome(Fate.BOUNCED, "5.1.7", "bad sender address syntax", remote, False))
        rcpts: dict[str, bytes] = {}
        for r in recipients:
            if not smtputf8 and not r.isascii():
                results[r] = Outcome(Fate.BOUNCED, "5.6.7", "non-ASCII recipient address without SMTPUTF8", remote, False)
                continue
            try:
                rcpts[r] = command("RCPT TO:", f"<{r}>", dsn.rcpt_params(r) if dsn is not None else None)
            except ValueError:
                results[r] = Outcome(Fate.BOUNCED, "5.1.3", "bad recipient address syntax", remote, False)
        todo = list(rcpts)
        if not todo:
            return True
        if smtputf8:
            conn.utf8 = True  # replies may be UTF-8 from now on (RFC 6531 3.7.4)

        pipelining = "PIPELINING" in ext
        if pipelining:
            # RFC 2920 3.1: MAIL, RCPT and DATA in one group, DATA last.
            conn.send(b"".join([mail, *rcpts.values(), b"DATA\r\n"]))
        else:
            conn.send(mail)
        mail_reply = await self._first_reply(conn, "after MAIL FROM", reused)
        _expect(mail_reply, "MAIL FROM")
        if not mail_reply.ok:
            o = from_reply(mail_reply, remote)
            for r in todo:
                results[r] = o
        accepted = []
        for r in todo:
            if not pipelining:
                if not mail_reply.ok:
                    break
                conn.send(rcpts[r])
            reply = await conn.reply("after RCPT TO")
            _expect(reply, "RCPT TO")
            if not mail_reply.ok:
                continue  # the pipelined RCPTs of a refused MAIL: their replies are noise
            if reply.ok:
                accepted.append(r)
            else:
                results[r] = from_reply(reply, remote, "1.0" if reply.code >= 500 else "0.0")

        if not pipelining:
            if not accepted:
                return await self._reset(conn)
            conn.send(b"DATA\r\n")
        data_reply = await conn.reply("after DATA")
        if data_reply.code != 354:
            _expect(data_reply, "DATA")
            if data_reply.ok:
                raise ProtocolError(f"unexpected reply to DATA: {sanitize(data_reply.line(), 200)}")
            if accepted:
                o = from_reply(data_reply, remote)
                for r in accepted:
                    results[r] = o
            # else: the DATA of a pipelined group with no valid recipient; 503/554 is expected
            return await self._reset(conn)
        if not accepted:
            # 354 without a valid recipient (a broken server): send an empty message and
            # count the transaction as failed whatever the reply.
            log.warning("%s: DATA accepted without a valid recipient; sending an empty message", remote)
            conn.send(b".\r\n")
            reply = await conn.reply("after end of data", DATA_DONE_TIMEOUT)
            _expect(reply, "end of data")
            return await self._reset(conn)

        # In pieces read from the queue file, dot-stuffed as they go, each sent under
        # COMMAND_TIMEOUT: a slow link gets time, a stalled one does not.
        stuffer = DataStuffer()
        async for chunk in body.achunks(SEND_CHUNK):
            conn.send(stuffer.feed(chunk))
            await conn.flush("while sending message content")
        conn.send(stuffer.end())
        reply = await conn.reply("after end of data", DATA_DONE_TIMEOUT)
        _expect(reply, "end of data")
        o = from_reply(reply, remote)
        if dsn is not None and o.fate is Fate.SENT:  # the next hop reports successes from now on
            o = Outcome(o.fate, o.status, o.text, o.remote, o.smtp_reply, dsn_passed=True)
        for r in accepted:
            results[r] = o
        if reply.ok:
            return True
        return await self._reset(conn)

    async def _first_reply(self, conn: _SmtpConnection, phase: str, reused: bool) -> Reply:
        """The first reply of a transaction; on a cached connection, a dead connection or a
        421 (the host timed the idle session out) is stale, not the message's failure."""
        try:
            reply = await conn.reply(phase)
        except Lost as exc:
            if reused and not exc.timeout:
                raise _Stale() from None
            raise
        if reused and reply.code == 421:
            raise _Stale()
        return reply

    async def _reset(self, conn: _SmtpConnection) -> bool:
        """RSET after a failed transaction: True when the connection may be cached. Never
        changes the outcomes, which are known by now."""
        conn.send(b"RSET\r\n")
        try:
            reply = await conn.reply("after RSET")
        except (Lost, ProtocolError):
            return False
        return reply.ok


def _expect(reply: Reply, after: str) -> None:
    """Only 2xx, 4xx and 5xx answer these commands (354 and 334 only where the caller checks)."""
    if reply.code // 100 not in (2, 4, 5):
        raise ProtocolError(f"unexpected reply to {after}: {sanitize(reply.line(), 200)}")


def read_body(path: Path) -> bytes:
    return path.read_bytes()

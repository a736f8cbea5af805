"""Local delivery by LMTP: one session per message, one reply per recipient after DATA.

DESCRIPTION
    `deliver(endpoint, sender=, recipients=, body=, lhlo_name=)` connects to the mailbox
    server's LMTP listener (TCP `host:port` or `unix:/path`), reads the greeting, sends
    LHLO, MAIL FROM, one RCPT TO per recipient and, if any was accepted, DATA and the
    dot-stuffed message. After the end of data an LMTP server answers once for each
    accepted recipient, in RCPT order (RFC 2033 4.2): that is what lets one message be
    delivered to one mailbox and refused (over quota, say) by another. Then QUIT. It
    returns an `Outcome` per recipient:

      sent     2xx to that recipient's RCPT and its reply after DATA
      defer    4xx, or the server could not be reached / spoke garbage / timed out
      bounce   5xx (for MAIL or DATA: every recipient; for RCPT or after DATA: that one)

    Failures of the connection are per recipient too: recipients whose reply after DATA
    had arrived before the connection broke keep it; the others are deferred (4.4.2), and
    may then be delivered twice, as with any at-least-once delivery.

    MAIL and the RCPTs go in one write when the server offers PIPELINING (RFC 2920); the
    replies are read while the transport sends, so a long recipient list cannot deadlock.
    BODY=8BITMIME is sent for an 8-bit message when offered, SIZE= when offered (a message
    over the server's limit bounces 5.3.4 without being sent). A message that asked for
    SMTPUTF8 gets it when offered; when it is not, the message still goes if only its
    body needs 8 bits, and bounces 5.6.7 if its sender, a recipient (that recipient) or
    its header needs UTF-8, as Postfix decides (smtp_proto.c, smtputf8_autodetect).

    The message is read from its queue file and sent in pieces (delivery/content.py): never
    whole in memory. Every phase (connect, each reply, sending the body) runs under `timeout`. No connection
    is kept between messages: LMTP is local and cheap to open, and Dovecot forks per
    connection anyway.

    The protocol machinery (reply parsing, command lines, dot-stuffing, extensions, the
    connection with its timeouts) is delivery/wire.py's, shared with the SMTP client; this
    module holds only what is LMTP's: LHLO, and one reply per recipient after DATA.

SECURITY
    Talks to the mailbox server, a trusted local service, but its replies are still parsed
    strictly: a reply line that is not `DDD[ -]text` with printable text only (UTF-8 only
    after SMTPUTF8 was agreed), longer than MAX_LINE or beyond MAX_LINES lines is a
    protocol error and defers the message. Reply text reaches logs and DSNs only through
    logutil.sanitize. Commands never carry CR, LF or other control characters: an address
    that would is refused here (5.1.3 / 5.1.7) instead of being sent.

    The message body is sent with every bare CR and bare LF turned into CRLF before
    dot-stuffing (wire.DataStuffer, as for outbound SMTP), so the mailbox server cannot read
    an end of data into the content that we did not mean (SMTP smuggling).

STANDARDS
    RFC 2033 (LMTP), RFC 5321 4.1.1.4 and 4.5.2 (DATA, transparency), 4.2 (replies),
    RFC 2920 (PIPELINING), RFC 6152 (8BITMIME), RFC 1870 (SIZE), RFC 6531 (SMTPUTF8),
    RFC 3463 (enhanced status codes).

CONFIG
    domains.local_delivery (type: lmtp, address), server.hostname (the LHLO name)
"""

from __future__ import annotations

import asyncio
import logging

from ..logutil import sanitize_ascii as sanitize  # outcome texts reach DSNs and replies: ASCII
from ..model import Fate, Reply
from ..values import Endpoint
from .content import Content
from .wire import (
    MAX_LINE,
    Connection,
    DataStuffer,
    Lost,
    Outcome,
    ProtocolError,
    command,
    extensions,
    from_reply,
    needs_utf8,
)

log = logging.getLogger("lmtp")


def remote_label(endpoint: Endpoint) -> str:
    return f"lmtp:{endpoint}"


async def _connect(endpoint: Endpoint, timeout: float) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    async with asyncio.timeout(timeout):
        if endpoint.unix_path:
            return await asyncio.open_unix_connection(endpoint.unix_path, limit=MAX_LINE)
        return await asyncio.open_connection(endpoint.host, endpoint.port, limit=MAX_LINE)


async def deliver(
    endpoint: Endpoint,
    *,
    sender: str,
    recipients: list[str],
    body: bytes | Content,
    lhlo_name: str,
    timeout: float = 300.0,
    smtputf8: bool = False,
    eightbit: bool = False,
) -> dict[str, Outcome]:
    """One LMTP session for one message; an Outcome for every recipient. `body`: in memory,
    or a Content read in pieces from its queue file (never whole)."""
    body = Content.of(body)
    remote = remote_label(endpoint)
    if not recipients:
        return {}
    try:
        reader, writer = await _connect(endpoint, timeout)
    except TimeoutError:
        o = Outcome(Fate.DEFERRED, "4.4.1", f"connect to {remote}: timed out", remote, False)
        return {r: o for r in recipients}
    except OSError as exc:
        o = Outcome(Fate.DEFERRED, "4.4.1", f"connect to {remote}: {sanitize(exc.strerror or str(exc), 200)}", remote, False)
        return {r: o for r in recipients}
    session = Connection(reader, writer, remote, timeout)
    results: dict[str, Outcome] = {}
    clean = False
    try:
        clean = await _transaction(session, lhlo_name, sender, recipients, body, smtputf8, eightbit, results)
    except Lost as exc:
        o = Outcome(Fate.DEFERRED, "4.4.2", exc.text(remote), remote, False)
        for r in recipients:
            results.setdefault(r, o)
    except ProtocolError as exc:
        log.warning("%s: protocol error: %s", remote, exc)
        o = Outcome(Fate.DEFERRED, "4.5.0", f"protocol error from {remote}: {exc}", remote, False)
        for r in recipients:
            results.setdefault(r, o)
    except ValueError:  # a control character in the LHLO name: a configuration error
        o = Outcome(Fate.DEFERRED, "4.3.5", "bad LHLO name (server.hostname)", remote, False)
        results = {r: o for r in recipients}
    finally:
        if clean:
            await session.quit()
        await session.close()
    return results


async def _transaction(
    s: Connection, lhlo_name: str, sender: str, recipients: list[str], body: Content, smtputf8: bool, eightbit: bool, results: dict[str, Outcome]
) -> bool:
    """Fill `results`; True when the session may end with QUIT."""
    remote = s.remote

    def refused(reply: Reply, what: str) -> None:
        o = from_reply(reply, remote, "0.0")
        o = Outcome(Fate.DEFERRED, "4" + o.status[1:], f"{remote} refused to talk to me: {what}{o.text}", remote, False)
        for r in recipients:
            results[r] = o

    greeting = await s.reply("while receiving the initial server greeting")
    if greeting.code != 220:
        _expect(greeting, "greeting")
        refused(greeting, "")
        return True
    s.send(command("LHLO ", lhlo_name))
    lhlo = await s.reply("after LHLO")
    _expect(lhlo, "LHLO")
    if lhlo.code // 100 != 2:
        refused(lhlo, "LHLO: ")
        return True
    ext = extensions(lhlo)

    params = []
    todo = list(recipients)
    if smtputf8:
        if "SMTPUTF8" in ext:
            params.append("SMTPUTF8")
            s.utf8 = True
        else:
            envelope_or_header, rcpts = needs_utf8(sender, recipients, body.head())
            for r in recipients:
                if envelope_or_header or r in rcpts:
                    results[r] = Outcome(Fate.BOUNCED, "5.6.7", f"SMTPUTF8 is required, but was not offered by host {remote}", remote, False)
            todo = [r for r in recipients if r not in results]
            if not todo:
                return True
    if eightbit and "8BITMIME" in ext:
        params.append("BODY=8BITMIME")
    limit = ext.get("SIZE", "")
    if limit.isdigit() and int(limit) and len(body) > int(limit):
        o = Outcome(Fate.BOUNCED, "5.3.4", f"message size {len(body)} exceeds size limit {limit} of server {remote}", remote, False)
        for r in todo:
            results[r] = o
        return True
    if "SIZE" in ext:
        params.append(f"SIZE={len(body)}")  # RFC 1870: without the stuffing and the final dot

    try:
        mail = command("MAIL FROM:", f"<{sender}>", params)
    except ValueError:
        for r in todo:
            results[r] = Outcome(Fate.BOUNCED, "5.1.7", "bad sender address syntax", remote, False)
        return True
    rcpt_cmds = {}
    for r in todo:
        try:
            rcpt_cmds[r] = command("RCPT TO:", f"<{r}>")
        except ValueError:
            results[r] = Outcome(Fate.BOUNCED, "5.1.3", "bad recipient address syntax", remote, False)
    todo = [r for r in todo if r in rcpt_cmds]
    if not todo:
        return True

    # MAIL and RCPTs: in one write with PIPELINING, else in lock step.
    pipelining = "PIPELINING" in ext
    s.send(mail)
    if pipelining:
        for r in todo:
            s.send(rcpt_cmds[r])
    mail_reply = await s.reply("after MAIL FROM")
    _expect(mail_reply, "MAIL FROM")
    accepted = []
    for r in todo:
        if not pipelining:
            if mail_reply.code // 100 != 2:
                break
            s.send(rcpt_cmds[r])
        reply = await s.reply("after RCPT TO")
        _expect(reply, "RCPT TO")
        if mail_reply.code // 100 != 2:
            continue  # the pipelined RCPTs of a refused MAIL: their replies are noise
        if reply.code // 100 == 2:
            accepted.append(r)
        else:
            results[r] = from_reply(reply, remote, "1.0" if reply.code >= 500 else "0.0")
    if mail_reply.code // 100 != 2:
        o = from_reply(mail_reply, remote)
        for r in todo:
            results[r] = o
        return True
    if not accepted:
        return True

    s.send(b"DATA\r\n")
    data_reply = await s.reply("after DATA")
    if data_reply.code != 354:
        if data_reply.code // 100 not in (4, 5):
            raise ProtocolError(f"unexpected reply to DATA: {sanitize(data_reply.line(), 200)}")
        o = from_reply(data_reply, remote)
        for r in accepted:
            results[r] = o
        return True
    stuffer = DataStuffer()  # the message in pieces from its queue file, dot-stuffed as they go
    async for chunk in body.achunks():
        s.send(stuffer.feed(chunk))
        await s.flush("while sending message content")
    s.send(stuffer.end())
    await s.flush("while sending message content")
    # RFC 2033 4.2: one reply per accepted recipient, in RCPT order.
    for r in accepted:
        reply = await s.reply("after end of data")
        _expect(reply, "end of data")
        results[r] = from_reply(reply, remote)
    return True


def _expect(reply: Reply, after: str) -> None:
    """Only 2xx, 4xx and 5xx answer these commands (354 only DATA, handled by the caller)."""
    if reply.code // 100 not in (2, 4, 5):
        raise ProtocolError(f"unexpected reply to {after}: {sanitize(reply.line(), 200)}")

"""Notifications about blocked messages: the postmaster's and the recipients' notices, the sender's bounce.

DESCRIPTION
    When a content filter's verdict blocks a message (a virus, a blocked attachment), the
    filter's `Notices` say whom to tell (filters/chain.py):

      admin       advanced.postmaster gets a notice: what was found, the envelope, the
                  Subject, the queue id, what was done (rejected / discarded / returned)
                  (inbound.notify_admin, antivirus.notify_admin: Carbonio has both switches
                  but no template reads the admin one, SPEC.md 1.1 and 4.2; here they work)
      recipients  each recipient in one of our local domains (domains.local) gets a notice
                  that a message for them was blocked, and from whom (inbound.notify_recipient,
                  antivirus.notify_recipient). Remote recipients are never told: a notice to
                  an outside address about mail someone else sent is backscatter.
      bounce      inbound.blocked_extensions_action: bounce: the sender gets a DSN (RFC 3464,
                  queue/dsn.py) with the reason and only the original's headers (the blocked
                  attachment is not sent back). Not for the null sender, nor for list mail
                  (Precedence: bulk, list, junk) or automatic mail (Auto-Submitted other than
                  "no"), as Amavis and RFC 3834 say; and only for trusted clients (the chain
                  refuses an untrusted client's message in DATA instead: no backscatter to a
                  forged sender, filters/attachment_filter.py).

    Each notification is its own commit: if a later one fails (a full disk), the client gets
    451 and, when it sends again, the ones already queued are queued again (a duplicate notice,
    never a lost one).

    Every notification is sent with the null reverse-path and `Auto-Submitted:
    auto-generated` (RFC 3834), so it never causes another, and is committed into our own
    queue (QueueStore.inject: fsync, rename) before the client gets its reply. The texts
    are built by `notice_message`, which is pure.

SECURITY
    Names from the message (file name, Subject, addresses) are sanitized and bounded before
    they go into a header or the text; the blocked content is never attached.

STANDARDS
    RFC 3464 (the bounce), RFC 3834 (Auto-Submitted), RFC 5322

CONFIG
    advanced.postmaster, domains.local, inbound.notify_*, antivirus.notify_*,
    inbound.blocked_extensions_action
"""

from __future__ import annotations

import email.utils
import logging
import re
import time
from email.header import decode_header, make_header
from typing import TYPE_CHECKING

from ..logutil import sanitize, sanitize_ascii
from ..model import ClientInfo, Decision, Fate, Verdict
from ..queue.dsn import RecipientStatus, build_dsn, split_header
from ..values import domain_matches

if TYPE_CHECKING:
    from .chain import Item, Notices

log = logging.getLogger("filter")

LOCAL = ClientInfo(ip="127.0.0.1", port=0, name="localhost", helo="localhost", protocol="local", trusted=True)
_SUBJECT = re.compile(rb"(?im)^subject:[ \t]*([^\r\n]*(?:\r\n[ \t][^\r\n]*)*)")
_BULK = re.compile(rb"(?im)^(precedence:[ \t]*(bulk|list|junk)\b|auto-submitted:[ \t]*(?!no\b)\S)")


def notice_message(*, hostname: str, to: str, about: str, what: str, done: str, sender: str,
                   recipients: list[str], subject: str, queue_id: str, now: float, admin: bool) -> bytes:  # fmt: skip
    """A plain-text notice (pure)."""
    rcpts = ", ".join(f"<{sanitize(r, 300)}>" for r in recipients[:20]) + (" ..." if len(recipients) > 20 else "")
    lines = [
        f"From: Mail Delivery System <MAILER-DAEMON@{hostname}>",
        f"To: <{sanitize(to, 300)}>" if to else "To: undisclosed-recipients:;",
        f"Subject: {about}",
        f"Date: {email.utils.formatdate(now, localtime=True)}",
        f"Message-ID: <{queue_id}.{int(now)}.{'admin' if admin else 'rcpt'}-notice@{hostname}>",
        "Auto-Submitted: auto-generated",
        "MIME-Version: 1.0",
        "Content-Type: text/plain; charset=utf-8",
        "Content-Transfer-Encoding: 8bit",
        "",
        f"This is the mail system at host {hostname}.",
        "",
        f"A message {'was' if admin else 'addressed to you was'} blocked because it contains {what}.",
        done,
        "",
        f"  Sender:     <{sanitize(sender, 300)}>",
        f"  Recipients: {rcpts}" if admin or not to else f"  Recipient:  <{sanitize(to, 300)}>",
        f"  Subject:    {subject}",
        f"  Queue ID:   {queue_id}",
        "",
        "If you expected this message, ask its sender to send the file another way." if not admin else "",
        "",
        "                   The mail system",
        "",
    ]
    return "\r\n".join(lines).encode("utf-8", "replace")


def subject_of(head: bytes) -> str:
    m = _SUBJECT.search(head)
    if m is None:
        return "(none)"
    raw = m[1].replace(b"\r\n", b"").decode("utf-8", "replace")
    try:
        raw = str(make_header(decode_header(raw)))
    except (ValueError, LookupError, UnicodeError):  # an undecodable encoded word: shown as it came
        pass
    return sanitize(raw, 200)


async def _head(msg: object, limit: int = 256 * 1024) -> bytes:
    """The header section of the message, read no further than it (never the whole message)."""
    got = b""
    async for chunk in msg.chunks():  # type: ignore[attr-defined]
        got += chunk
        if b"\r\n\r\n" in got or len(got) >= limit:
            break
    return split_header(got[:limit])


async def send_notices(msg: object, item: Item, notices: Notices, verdict: Verdict) -> None:
    """Queue the notifications `notices` asks for (raises OSError when the queue cannot take them)."""
    cfg = item.cfg
    store = msg.store  # type: ignore[attr-defined]
    qid: str = msg.queue_id  # type: ignore[attr-defined]
    hostname = cfg.server.hostname
    sender = str(item.tx.sender)
    recipients = [str(r) for r in item.tx.recipients]
    head = await _head(msg)
    subject = subject_of(head)
    now = time.time()
    if verdict.decision is Decision.REJECT:
        done = "The message was refused; its sender was told so."
    elif notices.bounce:
        done = "The message was not delivered; it was returned to its sender."
    else:
        done = "The message was not delivered."
    common = {"hostname": hostname, "what": notices.what, "done": done, "sender": sender, "subject": subject,
              "queue_id": qid, "now": now}  # fmt: skip
    if notices.bounce and verdict.decision is not Decision.REJECT and sender and not _BULK.search(head):
        dsn = build_dsn(
            kind=Fate.BOUNCED, hostname=hostname, queue_id=qid, sender=sender, arrival=now,
            recipients=[RecipientStatus(address=r, status=notices.status, diagnostic=notices.bounce, smtp_diagnostic=False)
                        for r in recipients],
            original=head, now=now, max_original=0,
        )  # fmt: skip
        new = await store.inject(sender="", recipients=[sender], body=dsn, client=LOCAL)
        log.info("%s: sender non-delivery notification: %s", qid, new)
    if notices.admin and cfg.advanced.postmaster:
        body = notice_message(to=cfg.advanced.postmaster, about=f"Blocked message from <{sanitize_ascii(sender, 200)}>",
                              admin=True, recipients=recipients, **common)  # type: ignore[arg-type]  # fmt: skip
        new = await store.inject(sender="", recipients=[cfg.advanced.postmaster], body=body, client=LOCAL)
        log.info("%s: postmaster notification: %s", qid, new)
    if notices.recipients:
        local = [r for r in recipients if "@" in r and domain_matches(r.rpartition("@")[2], cfg.domains.local)]
        if local:  # one notice for all of them (one commit), each sees only the To: of the notice
            body = notice_message(to=local[0] if len(local) == 1 else "", about="A message for you was blocked",
                                  admin=False, recipients=local, **common)  # type: ignore[arg-type]  # fmt: skip
            new = await store.inject(sender="", recipients=local, body=body, client=LOCAL)
            log.info("%s: recipient notification to %d local recipient(s): %s", qid, len(local), new)

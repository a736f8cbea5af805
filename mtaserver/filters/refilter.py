"""Requeue: a queued message through the content-filter chain again (Postfix `postsuper -r`).

DESCRIPTION
    `mtaserver queue requeue` (queue/ops.py) puts a message back into incoming/ with
    `extra["requeue"]` set. The queue manager, before it delivers such a message, runs it
    through the same FilterChain as the end of DATA (built from the current config: a
    blocked extension or a signature added since is applied), as the client that sent it
    (Envelope.client: its address, HELO, login, trusted or not), and acts on the verdict:

      queued (CONTINUE, HOLD)  the rewritten message replaces the queue file (a new file
                               committed into incoming/ or hold/ under the same id, then the
                               old one removed), with the new decision trail; then delivered
      REJECT                   the sender gets a bounce with the reply's text (the client was
                               told 250 long ago: it cannot be told now), recipients' notices
                               as the filter asks
      DISCARD                  dropped, logged, with the notices the filter asks for
      TEMPFAIL                 left as it is (deferred, retried; the flag stays)

    What our chain added the first time is removed before (`strip_ours`), so the message does
    not collect a second set. The chain records it in Envelope.extra (`added_fields`,
    `added_tag`, `signatures`): that many DKIM-Signature fields above our Received:, that many
    of our header fields right below it (X-Spam-*, Authentication-Results, X-DKIM-Policy,
    X-Originating-IP, X-Authenticated-User: nothing of another name is taken), and that tag in
    front of the Subject. A message without a record loses nothing.

    A crash between the new file and the removal of the old one leaves both in the queue;
    recovery moves active/ back over incoming/, so the old one wins, still flagged: the
    requeue runs again. Nothing is lost, nothing is delivered twice by this.

SECURITY
    Only headers in our own position and with our own names are removed: the client's
    headers of the same names further down stay (strip_forged removes forged
    Authentication-Results of ours as at the end of DATA).

CONFIG
    the chain's (filters/chain.py); server.limits.header_size
"""

from __future__ import annotations

import re
from collections.abc import AsyncIterator, Callable
from typing import Any

from ..config import Config
from ..model import Envelope, Verdict
from ..pipeline import Context, SessionView, TxView
from ..queue.store import head_end
from .chain import FilterChain, encode_tag

OURS = frozenset(
    b"x-spam-flag x-spam-score x-spam-level x-spam-status authentication-results x-dkim-policy x-originating-ip x-authenticated-user".split()
)
_FIELD = re.compile(rb"([!-9;-~]+)[ \t]*:[^\r\n]*\r\n(?:[ \t][^\r\n]*\r\n)*")


def _fields(head: bytes) -> list[tuple[bytes, int, int]]:
    """(lower-case name, start, end) of each field of a header section, until one does not parse."""
    out, pos = [], 0
    while pos < len(head):
        m = _FIELD.match(head, pos)
        if m is None:
            break
        out.append((m[1].lower(), m.start(), m.end()))
        pos = m.end()
    return out


ADDED = ("added_fields", "added_tag", "signatures")  # Envelope.extra keys: what the chain added


def strip_ours(content: bytes, fields: int, tag: str, signatures: int, limit: int = 256 * 1024) -> bytes:
    """`content` without what the chain added at the end of DATA, as Envelope.extra recorded it:
    `signatures` DKIM-Signature fields above our Received:, `fields` header fields right below
    it (only if they bear the names the chain uses), and `tag` in front of the Subject (pure)."""
    end = head_end(content, limit)
    head, body = content[:end], content[end:]
    found = _fields(head)
    i = 0
    while i < signatures and i < len(found) and found[i][0] == b"dkim-signature":
        i += 1
    if i >= len(found) or found[i][0] != b"received":
        return content  # not as we queued it: leave it alone
    keep = [head[found[i][1] : found[i][2]]]
    j = i + 1
    while j < len(found) and j - i - 1 < fields and found[j][0] in OURS:
        j += 1
    rest = head[found[j][1] if j < len(found) else found[j - 1][2] :]
    if tag:
        rest = re.sub(rb"(?im)^(subject:[ \t]*)" + re.escape(encode_tag(tag)) + rb" ?", rb"\1", rest, count=1)
    return b"".join(keep) + rest + body


def received_end(content: bytes) -> int:
    """Where our Received: field (the first one) ends: the chain adds its headers there."""
    fields = _fields(content[: 64 * 1024])
    return fields[0][2] if fields and fields[0][0] == b"received" else 0


class QueuedMessage:
    """A queued message in memory, with the interface the chain uses (smtp.protocol.Message's)."""

    def __init__(self, queue_id: str, content: bytes, store: Any, header_limit: int) -> None:
        self.queue_id = queue_id
        self.content = content
        self.store = store
        self.header_limit = header_limit
        self.header_offset = received_end(content)
        self.trail: list[dict[str, Any]] = []
        self.extra: dict[str, str] = {}

    @property
    def size(self) -> int:
        return len(self.content)

    async def chunks(self) -> AsyncIterator[bytes]:
        yield self.content

    async def whole(self) -> bytes:
        return self.content

    def snapshot(self) -> tuple[list[bytes] | None, str | None]:
        return [self.content], None

    async def edit_head(self, edit: Callable[[bytes], bytes]) -> None:
        end = head_end(self.content, self.header_offset + self.header_limit)
        self.content = edit(self.content[:end]) + self.content[end:]


PICKUP = "pickup"  # the listener name of mail from `mtaserver sendmail` (no SMTP client: no X-Originating-IP)


async def refilter(cfg: Config, chain: FilterChain, store: Any, env: Envelope, content: bytes) -> tuple[Verdict, QueuedMessage]:
    """Run `content` through `chain` as its client sent it; the verdict and the rewritten message."""
    c = env.client
    login = c.login
    session = SessionView(
        listener=PICKUP if c.protocol == "local" else "requeue", ip=c.ip, port=c.port, name=c.name, helo=c.helo, esmtp=True,
        login=login, mynetworks=bool(c.trusted and login is None),
    )  # fmt: skip
    tx = TxView(env.sender, {}, [r.address for r in env.recipients])  # type: ignore[arg-type]
    x = env.extra
    try:
        fields, signatures = int(x.get("added_fields", 0)), int(x.get("signatures", 0))
    except ValueError:
        fields = signatures = 0
    bare = strip_ours(content, fields, x.get("added_tag", ""), signatures)
    msg = QueuedMessage(env.queue_id, bare, store, cfg.server.limits.header_size)
    ctx = Context(session=session, conn=None, tx=tx)  # type: ignore[arg-type]
    ctx.message = msg
    return await chain.run(ctx), msg

"""The attachments filter: blocked file extensions, found by one MIME walk (filters/mime.py).

DESCRIPTION
    For every message while inbound.blocked_extensions is not empty (Carbonio checks mail from
    trusted clients too, SPEC.md 1.1, and so do we). The walk (filters/mime.py, shared with
    the antivirus filter's encrypted-archive check) lists every file name: MIME parts,
    forwarded messages, archive members; `blocked_extension` (filters/attachments.py) finds
    the first blocked one. What happens then, inbound.blocked_extensions_action:

      reject    550 5.7.1 Attachment type not allowed. File "<name>" has the unacceptable
                extension "<ext>" at the end of DATA (Carbonio's header_checks text)
      bounce    250 to the client, not delivered, a DSN to the sender (filters/notify.py)
      discard   250 to the client, not delivered

    and the notices of inbound.notify_admin / notify_recipient. An archive we refuse to open
    (a zip bomb, too deep, too many members) is blocked the same way, with its own reason: a
    file we cannot look into is not let through. A message whose MIME structure exceeds the
    walker's bounds (MimeError) is refused with 550 5.7.1 too.

CONFIG
    inbound.{blocked_extensions,blocked_extensions_action,notify_admin,notify_recipient,
    attachment_limits}
"""

from __future__ import annotations

from typing import Any

from ..config import Config, InboundConfig
from ..logutil import sanitize
from ..model import CONTINUE, Decision, Reply, Verdict
from .chain import Filter, Item, Notices, Outcome, Step


def attachment_limits(cfg: InboundConfig) -> Any:
    from .attachments import AttachmentLimits

    lim = getattr(cfg, "attachment_limits", None)
    if lim is None:
        return AttachmentLimits()
    return AttachmentLimits(max_depth=lim.max_depth, max_entries=lim.max_entries,
                            max_expanded=lim.max_expanded, max_archive_bytes=lim.max_archive_size)  # fmt: skip


def attachments_outcome(report: Any, cfg: InboundConfig) -> Outcome:
    """The pure decision over a MimeReport (or the MimeError the walk raised)."""
    from .attachments import blocked_extension, blocked_reply
    from .mime import MimeError

    if isinstance(report, MimeError):
        reply = Reply(550, "5.7.1", f"Message structure not accepted: {sanitize(str(report), 100)}")
        return _blocked(reply, Step("attachments", "blocked", sanitize(str(report), 200)), f"a MIME structure we refuse ({sanitize(str(report), 100)})", cfg)
    hit = blocked_extension(report, frozenset(cfg.blocked_extensions))
    if hit is None:
        return Outcome(CONTINUE, Step("attachments", "clean", f"{len(report.names)} file name(s)" if report.names else ""))
    reply = blocked_reply(hit)
    what = f"an attachment that is not allowed ({sanitize(hit[0] if isinstance(hit, tuple) else str(hit), 200)})"
    return _blocked(reply, Step("attachments", "blocked", reply.text[:300]), what, cfg)


def _blocked(reply: Reply, step: Step, what: str, cfg: InboundConfig) -> Outcome:
    action = cfg.blocked_extensions_action
    notices = Notices(what, admin=cfg.notify_admin, recipients=cfg.notify_recipient,
                      bounce=reply.text if action == "bounce" else "", status=reply.status)  # fmt: skip
    if action == "reject":
        return Outcome(Verdict(Decision.REJECT, reply, step.detail), step, notices=notices)
    return Outcome(Verdict(Decision.DISCARD, reason=f"{action}: {step.detail}"), step, notices=notices)


class AttachmentsFilter(Filter):
    name = "attachments"
    on_error = "tempfail"

    def __init__(self, cfg: Config) -> None:
        self.cfg = cfg.inbound

    async def run(self, item: Item) -> Outcome:
        return attachments_outcome(await item.mime(), self.cfg)

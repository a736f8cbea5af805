"""The attachments filter: blocked file extensions, found by one MIME walk (filters/mime.py).

DESCRIPTION
    For every message while inbound.blocked_extensions is not empty (Carbonio checks mail from
    trusted clients too, SPEC.md 1.1, and so do we). The walk (filters/mime.py, shared with
    the antivirus filter's encrypted-archive check) lists every file name: MIME parts,
    forwarded messages, archive members; `blocked_extension` (filters/attachments.py) finds
    the first blocked one. What happens then, inbound.blocked_extensions_action:

      reject    550 5.7.1 Attachment type not allowed. File "<name>" has the unacceptable
                extension "<ext>" at the end of DATA (Carbonio's header_checks text)
      bounce    250 to the client, not delivered, a DSN to the sender (filters/notify.py),
                for trusted clients (mynetworks, authenticated); an outsider's message is
                refused as with reject: its envelope sender may be forged, and a bounce to it
                would be backscatter
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

from ..config import Config, InboundConfig
from ..logutil import sanitize, sanitize_ascii
from ..model import CONTINUE, Decision, Reply, Verdict
from .attachments import limits_from, refusal
from .chain import Filter, Item, Notices, Outcome, Step
from .mime import AttachmentLimits, MimeError, MimeReport


def attachment_limits(cfg: InboundConfig) -> AttachmentLimits:
    return limits_from(cfg.attachment_limits)


def attachments_outcome(report: MimeReport | MimeError, cfg: InboundConfig, trusted: bool = True) -> Outcome:
    """The pure decision over the walk's report (or the MimeError it raised). `trusted`: the
    client is in mynetworks or authenticated (a bounce goes only to such a sender)."""
    if isinstance(report, MimeError):
        why = sanitize_ascii(str(report), 200)  # into the reply: ASCII
        reply = Reply(550, "5.7.1", f"Message structure not accepted: {why}")
        return _blocked(reply, Step("attachments", "blocked", why), f"a MIME structure we refuse ({why})", cfg, trusted)
    found = refusal(report, frozenset(cfg.blocked_extensions))
    if found is None:
        return Outcome(CONTINUE, Step("attachments", "clean", f"{len(report.names)} file name(s)" if report.names else ""))
    if found.name is not None:
        what = f'an attachment that is not allowed: "{sanitize(found.name, 100)}" (.{sanitize(found.ext or "", 64)})'
    else:
        what = f"an attachment we refuse to open ({found.reason})"
    return _blocked(found.reply, Step("attachments", "blocked", found.reason), what, cfg, trusted)


def _blocked(reply: Reply, step: Step, what: str, cfg: InboundConfig, trusted: bool) -> Outcome:
    action = cfg.blocked_extensions_action
    if action == "bounce" and not trusted:
        # The envelope sender of an outsider's mail may be forged: a bounce would go to a
        # bystander (backscatter). Refused in DATA instead, the sending MTA tells its own sender.
        action = "reject"
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
        return attachments_outcome(await item.mime(), self.cfg, item.trusted)

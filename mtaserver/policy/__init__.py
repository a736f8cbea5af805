"""Inbound policy: Postfix's smtpd restrictions at RCPT TO, the DNS facts they need, the mailboxes table.

DESCRIPTION
    restrictions.py   the pure RCPT decision (`needed`, `decide`, `check_helo_syntax`)
    lookups.py        the async DNS lookups and the shell `check_rcpt`
    mailboxes.py      the domains.mailboxes file (mailboxes and aliases)

    `check_recipient` is relay control and the address checks that need no DNS, through the
    same `restrictions.decide` the session's RCPT hook uses; `is_local` serves the queue
    manager (which recipients are delivered locally).

SECURITY
    Relay control: see restrictions.py. A routed address (source route, percent hack, bang
    path, quoted '@') never counts as one of our domains.

CONFIG
    domains.local, domains.relay, domains.mailboxes, inbound.* (see the modules)
"""

from __future__ import annotations

from collections.abc import Sequence

from ..address import Mailbox
from ..config import InboundConfig, ProtocolChecks
from ..model import Reply
from .mailboxes import Mailboxes, MailboxesError, load_mailboxes, parse_mailboxes
from .restrictions import (
    ClientName,
    ClientNameStatus,
    HostStatus,
    Need,
    RcptFacts,
    check_helo_syntax,
    decide,
    is_local_address,
    needed,
    owners_table,
)

__all__ = [
    "ClientName",
    "ClientNameStatus",
    "HostStatus",
    "Mailboxes",
    "MailboxesError",
    "Need",
    "RcptFacts",
    "check_helo_syntax",
    "check_recipient",
    "decide",
    "is_local",
    "load_mailboxes",
    "needed",
    "owners_table",
    "parse_mailboxes",
]


def check_recipient(
    rcpt: Mailbox,
    *,
    sender: Mailbox,
    trusted: bool,
    local_domains: Sequence[str],
    relay_domains: Sequence[str],
    reject_non_fqdn_sender: bool,
) -> Reply | None:
    """Relay control and the address checks that need no DNS, through `restrictions.decide`
    (the one decision): the refusal, or None. `trusted` plays mynetworks."""
    facts = RcptFacts(
        client_ip="", helo=None, sender=sender, recipient=rcpt, mynetworks=trusted,
        local_domains=local_domains, relay_domains=relay_domains,
    )  # fmt: skip
    checks = ProtocolChecks(
        reject_invalid_helo_hostname=False, reject_non_fqdn_sender=reject_non_fqdn_sender,
        reject_unknown_sender_domain=False,
    )  # fmt: skip
    cfg = InboundConfig(reject_unlisted_sender=False, reject_unlisted_recipient=False, protocol_checks=checks)
    return decide(facts, cfg).reply


def is_local(rcpt: Mailbox, local_domains: Sequence[str]) -> bool:
    """True when the address is in one of our local domains (an address literal never is)."""
    return is_local_address(rcpt, local_domains)

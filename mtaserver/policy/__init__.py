"""Inbound policy: Postfix's smtpd restrictions at RCPT TO, the DNS facts they need, the mailboxes table.

DESCRIPTION
    restrictions.py   the pure RCPT decision (`needed`, `decide`, `check_helo_syntax`)
    lookups.py        the async DNS lookups and the shell `check_rcpt`
    mailboxes.py      the domains.mailboxes file (mailboxes and aliases)

    `check_recipient` and `is_local` are the interface the SMTP session used before this
    package: relay control and the two address checks that need no DNS, in their old order
    (reject_non_fqdn_recipient, relay control, then reject_non_fqdn_sender for untrusted
    clients). They stay until the session calls `lookups.check_rcpt`.

SECURITY
    Relay control: see restrictions.py. A routed address (source route, percent hack, bang
    path, quoted '@') never counts as one of our domains.

CONFIG
    domains.local, domains.relay, domains.mailboxes, inbound.* (see the modules)
"""

from __future__ import annotations

from collections.abc import Sequence

from ..address import Mailbox
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
    is_fqdn_address,
    is_local_address,
    is_ours,
    needed,
    owners_table,
    relay_denied,
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
    """The old RCPT checks, in order: reject_non_fqdn_recipient (504 5.5.2), relay control
    (554 5.7.1) and, for untrusted clients, reject_non_fqdn_sender (504 5.5.2). None = no objection."""
    if not rcpt.domain or not (is_fqdn_address(rcpt) or is_local_address(rcpt, local_domains)):
        return Reply(504, "5.5.2", f"<{rcpt}>: Recipient address rejected: need fully-qualified address")
    if not trusted:
        if not is_ours(rcpt, local_domains, relay_domains):
            return relay_denied(rcpt)
        if reject_non_fqdn_sender and not sender.is_null and not is_fqdn_address(sender):
            return Reply(504, "5.5.2", f"<{sender}>: Sender address rejected: need fully-qualified address")
    return None


def is_local(rcpt: Mailbox, local_domains: Sequence[str]) -> bool:
    """True when the address is in one of our local domains (an address literal never is)."""
    return is_local_address(rcpt, local_domains)

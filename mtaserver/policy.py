"""RCPT-time restrictions: relay control and the address checks that always apply.

DESCRIPTION
    Pure decisions over a parsed recipient, the session's trust and the domain lists, in
    Postfix's order (smtpd_relay_restrictions, then smtpd_recipient_restrictions, delayed to
    RCPT as with smtpd_delay_reject = yes):

      1. reject_non_fqdn_recipient      504 5.5.2  (always on, as in Carbonio)
      2. permit_auth_destination        our local/relay domains, address not routed
      3. permit_mynetworks / sasl       trusted clients may relay
      4. reject_unauth_destination      554 5.7.1 <addr>: Relay access denied
      5. reject_non_fqdn_sender         504 5.5.2  (inbound.protocol_checks, untrusted only)

    `None` means "no objection". Later issues add the unlisted-recipient, HELO, client and
    sender-domain checks here.

SECURITY
    This module is what keeps the server from being an open relay: a recipient outside our
    domains is accepted only from a trusted client, and a routed address (source route,
    percent hack, bang path, quoted '@') never counts as one of our domains.
"""

from __future__ import annotations

from collections.abc import Sequence

from .address import Mailbox
from .model import Reply
from .values import domain_matches


def _is_fqdn(mb: Mailbox) -> bool:
    return mb.is_literal or "." in mb.domain_key


def check_recipient(
    rcpt: Mailbox,
    *,
    sender: Mailbox,
    trusted: bool,
    local_domains: Sequence[str],
    relay_domains: Sequence[str],
    reject_non_fqdn_sender: bool,
) -> Reply | None:
    """The restrictions of RCPT TO, in order. Returns the rejection or None."""
    if not rcpt.domain or (not _is_fqdn(rcpt) and not domain_matches(rcpt.domain, local_domains)):
        return Reply(504, "5.5.2", f"<{rcpt}>: Recipient address rejected: need fully-qualified address")
    ours = not rcpt.is_literal and (
        domain_matches(rcpt.domain, local_domains) or domain_matches(rcpt.domain, relay_domains)
    )
    if not trusted:
        if not ours or rcpt.routed:
            return Reply(554, "5.7.1", f"<{rcpt}>: Relay access denied")
        if reject_non_fqdn_sender and not sender.is_null and (not sender.domain or not _is_fqdn(sender)):
            return Reply(504, "5.5.2", f"<{sender}>: Sender address rejected: need fully-qualified address")
    return None


def is_local(rcpt: Mailbox, local_domains: Sequence[str]) -> bool:
    return not rcpt.is_literal and domain_matches(rcpt.domain, local_domains)

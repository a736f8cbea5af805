"""The RCPT-time decision: Postfix's smtpd restrictions as deployed by Carbonio, pure.

DESCRIPTION
    `decide(facts, cfg)` judges one RCPT TO from the facts of the session (client, HELO,
    sender, recipient, login, mynetworks, our domains, the mailboxes and sender-owner tables,
    and the DNS facts) and returns a `Verdict`: CONTINUE, or REJECT / TEMPFAIL with Postfix's
    reply and the restriction's name as the reason. Every check runs at RCPT
    (smtpd_delay_reject = yes), in this order (SPEC 7 step 5, the Carbonio templates of SPEC
    1.2 and 1.3):

      0. <postmaster> without a domain is accepted before anything else (RFC 5321 4.5.1)
      1. reject_non_fqdn_recipient      504 5.5.2  always, for everyone
      2. sender restrictions            permit_mynetworks, reject_sender_login_mismatch,
                                        permit_sasl_authenticated
      3. reject_unlisted_sender         550 5.1.0  implicit; trusted clients too
      4. relay restrictions             permit_sasl_authenticated, permit_mynetworks,
                                        reject_unauth_destination 554 5.7.1
      5. recipient restrictions         permit_sasl_authenticated, permit_mynetworks, then for
                                        everyone else: reject_unlisted_recipient and the seven
                                        inbound.protocol_checks in the template's order:
                                          reject_invalid_helo_hostname, reject_non_fqdn_helo_hostname,
                                          reject_non_fqdn_sender, reject_unknown_client_hostname,
                                          reject_unknown_reverse_client_hostname,
                                          reject_unknown_helo_hostname, reject_unknown_sender_domain
      6. a pending defer_if_permit      450, sent only when nothing above rejected
      7. reject_unlisted_recipient      550 5.1.1  implicit (for the trusted, who skipped 5)

    Postfix evaluates the relay restrictions before the recipient restrictions
    (smtpd_relay_before_recipient_restrictions), so a relay attempt is denied before any
    protocol check or DNS lookup. reject_non_fqdn_recipient comes first: an address without a
    qualified domain has no domain to judge relaying by.

    450 versus 550 (SPEC 1.3): a DNS temporary failure never gives a 5xx. The client-name
    checks then reply 450 at once; the HELO and sender-domain checks use defer_if_permit
    (the first such 450 is kept and sent only if the request would otherwise be accepted; any
    later explicit reject wins). A definite "unknown" answer uses
    inbound.protocol_checks.unknown_reject_code (450 or 550). A null MX (RFC 7505) is always
    550 5.7.27 for the sender. The DSN's class digit follows the reply code (model.Reply).

    DNS facts are asked for, not looked up: `needed(facts, cfg)` names the facts the decision
    would consult and that are still missing (None) - none when an earlier check already
    rejects or the client is exempt - so the async shell (lookups.py) resolves only those,
    then calls `decide`. A fact still missing at `decide` counts as a temporary DNS failure.

    `check_helo_syntax(helo, checks)` is the two syntax-only HELO checks, usable at HELO time.

SECURITY
    Relay control lives here: a recipient outside our domains is accepted only from
    mynetworks or an authenticated client, and a routed address (source route, percent hack,
    bang path, quoted '@') never counts as one of our domains. The sender login check keeps
    an outside client from using one of our users' addresses as the envelope sender. The
    replies echo client text (addresses, HELO names) back to the client only; the log reason
    is the restriction's name, never client text.

STANDARDS
    RFC 5321 (4.1.1.1 HELO, 4.1.3 address literals, 4.5.1 postmaster), RFC 1123 2.1
    (host names), RFC 3463 / RFC 7372 (enhanced status codes), RFC 7505 (null MX).

CONFIG
    inbound.reject_unlisted_sender, inbound.reject_unlisted_recipient,
    inbound.reject_sender_login_mismatch, inbound.protocol_checks.* (all read from the
    InboundConfig slice passed in); domains.local / domains.relay / outbound.mynetworks /
    domains.mailboxes reach here as facts.
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Callable, Collection, Iterable, Mapping, Sequence
from dataclasses import dataclass
from enum import Enum

from ..address import Mailbox
from ..config import InboundConfig, ProtocolChecks
from ..model import CONTINUE, Reply, Verdict
from ..values import domain_matches
from .mailboxes import Mailboxes

MAX_REPLY = 510  # Postfix smtpd_check_reject: the reply line is truncated to 510 characters

# ---------------------------------------------------------------------------------------------
# DNS facts (produced by lookups.py, or by a test)


class ClientNameStatus(str, Enum):
    """How the client's address -> name -> address lookups ended (Postfix name_status and
    reverse_name_status in one)."""

    VERIFIED = "verified"  # a PTR name whose A/AAAA records include the client address
    NO_PTR = "no_ptr"  # definitively no (usable) PTR: NXDOMAIN, no record, a malformed or numeric name
    MISMATCH = "mismatch"  # a PTR name, but its forward lookup does not exist or lacks the address
    PTR_TEMPFAIL = "ptr_tempfail"  # the PTR lookup failed temporarily
    FORWARD_TEMPFAIL = "forward_tempfail"  # a PTR name, but its forward lookup failed temporarily


@dataclass(frozen=True, slots=True)
class ClientName:
    status: ClientNameStatus
    ptr: str | None = None  # the PTR name, when there is a usable one

    @property
    def name(self) -> str:
        """Postfix's client name: the verified name, else "unknown"."""
        return self.ptr if self.status is ClientNameStatus.VERIFIED and self.ptr else "unknown"

    @property
    def reverse_name(self) -> str:
        """Postfix's reverse client name: the PTR name, verified or not, else "unknown"."""
        return self.ptr or "unknown"


class HostStatus(str, Enum):
    """The DNS answer for a HELO name (A, AAAA or MX) or a mail domain (MX, else A/AAAA)."""

    FOUND = "found"
    NOT_FOUND = "not_found"  # NXDOMAIN or no record of the types asked for, or a name not worth asking
    NULL_MX = "null_mx"  # RFC 7505 "MX 0 ."
    MALFORMED = "malformed"  # MX records whose exchange is no host name (Postfix DNS_INVAL)
    TEMPFAIL = "tempfail"  # SERVFAIL, timeout, refused: ask again later


class Need(str, Enum):
    """A DNS fact the decision wants."""

    CLIENT_NAME = "client_name"  # facts.client_name from lookups.client_name(ip)
    HELO_HOST = "helo_host"  # facts.helo_host from lookups.host_exists(helo)
    SENDER_DOMAIN = "sender_domain"  # facts.sender_domain from lookups.domain_status(sender domain)


Owners = Callable[[str], Collection[str]]  # a MAIL FROM address -> the logins that may use it


@dataclass(frozen=True, slots=True, kw_only=True)
class RcptFacts:
    """Everything one RCPT decision depends on. The three DNS facts are None until looked up."""

    client_ip: str
    helo: str | None
    sender: Mailbox
    recipient: Mailbox
    login: str | None = None  # the authenticated (SASL) login, None when not authenticated
    mynetworks: bool = False
    local_domains: Sequence[str] = ()
    relay_domains: Sequence[str] = ()
    mailboxes: Mailboxes | None = None  # None: every address of a local domain exists
    owners: Owners | None = None  # None: no sender-owner table, the login mismatch check is off
    client_name: ClientName | None = None
    helo_host: HostStatus | None = None
    sender_domain: HostStatus | None = None


def owners_table(addresses_by_login: Mapping[str, Iterable[str]]) -> Owners:
    """The sender-owner lookup from the users file (login -> the addresses it owns).

    Looked up as Postfix smtpd_sender_login_maps is: the whole address, then `@domain`, case
    folded (so a changed case cannot dodge the check)."""
    table: dict[str, set[str]] = {}
    for login, addresses in addresses_by_login.items():
        for a in addresses:
            table.setdefault(_fold_address(a), set()).add(login)

    def owners(address: str) -> Collection[str]:
        key = _fold_address(address)
        found = table.get(key)
        if found is None and "@" in key:
            found = table.get("@" + key.rpartition("@")[2])
        return frozenset(found or ())

    return owners


def _fold_address(address: str) -> str:
    return address.strip().lower().rstrip(".")


# ---------------------------------------------------------------------------------------------
# Host name syntax (Postfix valid_hostname / valid_hostaddr / valid_mailhost_addr)


def valid_hostname(name: str) -> bool:
    """Postfix valid_hostname(): ASCII letters, digits, '-' and '_' in labels of 1..63, no
    hyphen at a label's ends, at most 255 in all, not all-numeric. No trailing dot."""
    if not name or len(name) > 255:
        return False
    numeric = True
    for label in name.split("."):
        if not label or len(label) > 63 or label[0] == "-" or label[-1] == "-":
            return False
        for c in label:
            if not (c.isascii() and (c.isalnum() or c in "-_")):
                return False
            if not c.isdigit():
                numeric = False
    return not numeric


def valid_ipv4(text: str) -> bool:
    """Postfix valid_ipv4_hostaddr(): a dotted quad of 0..255 (leading zeros allowed), not 0.x.y.z
    unless all zero."""
    parts = text.split(".")
    if len(parts) != 4 or not all(p.isascii() and p.isdigit() and int(p) <= 255 for p in parts):
        return False
    return not (int(parts[0]) == 0 and text.strip("0.") != "")


def valid_hostaddr(text: str) -> bool:
    """An IPv4 dotted quad or an IPv6 address, bare (no brackets, no "IPv6:")."""
    if ":" in text:
        try:
            ipaddress.IPv6Address(text)
        except ValueError:
            return False
        return "%" not in text
    return valid_ipv4(text)


def valid_literal(helo: str) -> bool:
    """`[1.2.3.4]` or `[IPv6:...]` (Postfix reject_invalid_hostaddr -> valid_mailhost_addr)."""
    if not (len(helo) > 2 and helo.startswith("[") and helo.endswith("]")):
        return False
    inner = helo[1:-1]
    if inner[:5].lower() == "ipv6:":
        return ":" in inner[5:] and valid_hostaddr(inner[5:])
    return valid_ipv4(inner)


def _truncate_dot(name: str) -> str:
    """Postfix dup_if_truncate: drop one trailing dot, but not from "x.." ."""
    return name[:-1] if name.endswith(".") and not name.endswith("..") else name


def helo_lookup_name(helo: str) -> str | None:
    """The name reject_unknown_helo_hostname asks the DNS about, or None when the HELO argument
    is no host name worth asking about (Postfix dns_lookup answers "not found" without a query)."""
    name = _truncate_dot(helo)
    return name if valid_hostname(name) else None


# ---------------------------------------------------------------------------------------------
# Replies


_UNPRINTABLE = re.compile(r"[\x00-\x1f\x7f-\x9f\u200e\u200f\u202a-\u202e\u2066-\u2069]")


def _reply(code: int, dsn: str, text: str) -> Reply:
    """A reply that quotes the client (its HELO, its addresses) with what a terminal would
    act on (control and bidi characters) as "?", as Postfix's printable() does."""
    room = MAX_REPLY - len(f"{code} {dsn} ")
    return Reply(code, dsn, _UNPRINTABLE.sub("?", text[:room]))


def _need_fqdn_recipient(rcpt: Mailbox) -> Reply:
    return _reply(504, "5.5.2", f"<{rcpt}>: Recipient address rejected: need fully-qualified address")


def _helo_reply(code: int, dsn: str, helo: str, why: str) -> Reply:
    return _reply(code, dsn, f"<{helo}>: Helo command rejected: {why}")


def _sender_reply(code: int, dsn: str, sender: Mailbox, why: str) -> Reply:
    return _reply(code, dsn, f"<{sender}>: Sender address rejected: {why}")


def relay_denied(rcpt: Mailbox) -> Reply:
    return _reply(554, "5.7.1", f"<{rcpt}>: Relay access denied")


def user_unknown_recipient(rcpt: Mailbox) -> Reply:
    # Postfix with show_user_unknown_table_name = no: our table is domains.mailboxes, not a Postfix map
    return _reply(550, "5.1.1", f"<{rcpt}>: Recipient address rejected: User unknown")


def user_unknown_sender(sender: Mailbox) -> Reply:
    return _sender_reply(550, "5.1.0", sender, "User unknown")


# ---------------------------------------------------------------------------------------------
# Address classes


def is_fqdn_address(mb: Mailbox) -> bool:
    """A domain with a dot (after dropping one trailing dot), or an address literal."""
    return bool(mb.domain) and (mb.is_literal or "." in _truncate_dot(mb.domain))


def is_ours(rcpt: Mailbox, local_domains: Sequence[str], relay_domains: Sequence[str]) -> bool:
    """permit_auth_destination: one of our local or relay domains, and not a routed address."""
    if not rcpt.domain or rcpt.is_literal or rcpt.routed:
        return False
    return domain_matches(rcpt.domain, local_domains) or domain_matches(rcpt.domain, relay_domains)


def is_local_address(mb: Mailbox, local_domains: Sequence[str]) -> bool:
    return bool(mb.domain) and not mb.is_literal and domain_matches(mb.domain, local_domains)


def _unlisted(mb: Mailbox, facts: RcptFacts) -> bool:
    """An address of a local domain that the mailboxes table does not list (routed addresses
    are not local addresses: they never reach the table)."""
    if facts.mailboxes is None or mb.routed or not is_local_address(mb, facts.local_domains):
        return False
    return not facts.mailboxes.exists(mb)


# ---------------------------------------------------------------------------------------------
# HELO syntax checks (no DNS)


def check_helo_syntax(helo: str | None, checks: ProtocolChecks) -> Reply | None:
    """reject_invalid_helo_hostname and reject_non_fqdn_helo_hostname, when enabled: the reply,
    or None. Usable at HELO time; `decide` applies the same checks at RCPT."""
    found = _helo_syntax(helo, checks)
    return found[0] if found else None


def _helo_syntax(helo: str | None, checks: ProtocolChecks) -> tuple[Reply, str] | None:
    if helo is None:
        return None
    for enabled, reason in (
        (checks.reject_invalid_helo_hostname, "reject_invalid_helo_hostname"),
        (checks.reject_non_fqdn_helo_hostname, "reject_non_fqdn_helo_hostname"),
    ):
        if not enabled:
            continue
        if helo.startswith("["):  # both checks judge an address literal by its address (reject_invalid_hostaddr)
            if not valid_literal(helo):
                return _helo_reply(501, "5.5.2", helo, "invalid ip address"), reason
            continue
        name = _truncate_dot(helo)
        if reason == "reject_invalid_helo_hostname":
            if not valid_hostname(name) and not valid_hostaddr(name):
                return _helo_reply(501, "5.5.2", helo, "Invalid name"), reason
        elif not valid_hostname(name) or "." not in name:
            return _helo_reply(504, "5.5.2", helo, "need fully-qualified hostname"), reason
    return None


# ---------------------------------------------------------------------------------------------
# The decision


class _Run:
    """One evaluation: the pending defer_if_permit, and (when probing) the facts asked for."""

    __slots__ = ("facts", "cfg", "probe", "deferred")

    def __init__(self, facts: RcptFacts, cfg: InboundConfig, probe: set[Need] | None) -> None:
        self.facts = facts
        self.cfg = cfg
        self.probe = probe
        self.deferred: Verdict | None = None

    def defer_if_permit(self, reply: Reply, reason: str) -> None:
        if self.deferred is None:  # Postfix keeps the first reason (smtpd_check.c defer_if)
            self.deferred = Verdict.reject(reply, reason + " (defer_if_permit)")

    def missing(self, need: Need) -> bool:
        """True when probing and the fact is not known: the check is skipped, the need noted."""
        if self.probe is None:
            return False
        self.probe.add(need)
        return True


def needed(facts: RcptFacts, cfg: InboundConfig) -> frozenset[Need]:
    """The DNS facts `decide` would consult that are still None. Empty when a check before them
    rejects, when the client is exempt, or when the checks are off."""
    probe: set[Need] = set()
    _evaluate(_Run(facts, cfg, probe))
    return frozenset(probe)


def decide(facts: RcptFacts, cfg: InboundConfig) -> Verdict:
    """Judge one RCPT TO. A needed DNS fact that is still None counts as a temporary failure."""
    return _evaluate(_Run(facts, cfg, None))


def _evaluate(run: _Run) -> Verdict:
    f, cfg = run.facts, run.cfg
    rcpt, sender = f.recipient, f.sender

    # 0. RFC 5321 4.5.1 (Postfix smtpd_check_rcpt): "postmaster" needs no domain and no checks.
    if not rcpt.domain and rcpt.local.lower() == "postmaster":
        return CONTINUE

    # 1. reject_non_fqdn_recipient, for everyone; our local domains may be written short.
    if not rcpt.domain or not (is_fqdn_address(rcpt) or domain_matches(rcpt.domain, f.local_domains)):
        return Verdict.reject(_need_fqdn_recipient(rcpt), "reject_non_fqdn_recipient")

    # 2. Sender restrictions: permit_mynetworks, reject_sender_login_mismatch, permit_sasl_authenticated.
    if not sender.is_null and not f.mynetworks and cfg.reject_sender_login_mismatch and f.owners is not None:
        owners = f.owners(str(sender))
        if f.login is not None:
            if f.login.casefold() not in {o.casefold() for o in owners}:
                reply = _reply(553, "5.7.1", f"<{sender}>: Sender address rejected: not owned by user {f.login}")
                return Verdict.reject(reply, "reject_authenticated_sender_login_mismatch")
        elif owners:
            reply = _reply(553, "5.7.1", f"<{sender}>: Sender address rejected: not logged in")
            return Verdict.reject(reply, "reject_unauthenticated_sender_login_mismatch")

    # 3. Implicit reject_unlisted_sender, whoever the client is.
    if cfg.reject_unlisted_sender and not sender.is_null and _unlisted(sender, f):
        return Verdict.reject(user_unknown_sender(sender), "reject_unlisted_sender")

    # 4. Relay restrictions.
    trusted = f.login is not None or f.mynetworks
    if not trusted and not is_ours(rcpt, f.local_domains, f.relay_domains):
        return Verdict.reject(relay_denied(rcpt), "reject_unauth_destination")

    # 5. Recipient restrictions past permit_sasl_authenticated / permit_mynetworks.
    if not trusted:
        if cfg.reject_unlisted_recipient and _unlisted(rcpt, f):
            return Verdict.reject(user_unknown_recipient(rcpt), "reject_unlisted_recipient")
        rejected = _protocol_checks(run)
        if rejected is not None:
            return rejected

    # 6. Nothing rejected: a pending defer_if_permit now applies.
    if run.deferred is not None:
        return run.deferred

    # 7. Implicit reject_unlisted_recipient (already done above for untrusted clients).
    if trusted and cfg.reject_unlisted_recipient and _unlisted(rcpt, f):
        return Verdict.reject(user_unknown_recipient(rcpt), "reject_unlisted_recipient")
    return CONTINUE


def _protocol_checks(run: _Run) -> Verdict | None:
    """The seven inbound.protocol_checks, in the order of Carbonio's smtpd_recipient_restrictions."""
    f, checks = run.facts, run.cfg.protocol_checks
    helo, sender = f.helo, f.sender
    unknown_code = checks.unknown_reject_code

    syntax = _helo_syntax(helo, checks)  # reject_invalid_helo_hostname, reject_non_fqdn_helo_hostname
    if syntax is not None:
        return Verdict.reject(*syntax)

    if checks.reject_non_fqdn_sender and not sender.is_null and not is_fqdn_address(sender):
        reply = _sender_reply(504, "4.5.2", sender, "need fully-qualified address")
        return Verdict.reject(reply, "reject_non_fqdn_sender")

    if checks.reject_unknown_client_hostname or checks.reject_unknown_reverse_client_hostname:
        cn = f.client_name
        if cn is None and not run.missing(Need.CLIENT_NAME):
            cn = ClientName(ClientNameStatus.PTR_TEMPFAIL)
        if cn is not None:
            ip = f.client_ip
            status = cn.status
            if checks.reject_unknown_client_hostname and status is not ClientNameStatus.VERIFIED:
                temp = status in (ClientNameStatus.PTR_TEMPFAIL, ClientNameStatus.FORWARD_TEMPFAIL)
                why = f"Client host rejected: cannot find your hostname, [{ip}]"
                reply = _reply(450 if temp else unknown_code, "4.7.25", why)
                return Verdict.reject(reply, "reject_unknown_client_hostname")
            no_ptr = status in (ClientNameStatus.NO_PTR, ClientNameStatus.PTR_TEMPFAIL)
            if checks.reject_unknown_reverse_client_hostname and no_ptr:
                code = 450 if status is ClientNameStatus.PTR_TEMPFAIL else unknown_code
                reply = _reply(code, "4.7.1", f"Client host rejected: cannot find your reverse hostname, [{ip}]")
                return Verdict.reject(reply, "reject_unknown_reverse_client_hostname")

    if checks.reject_unknown_helo_hostname and helo is not None:
        if helo.startswith("["):
            if not valid_literal(helo):
                return Verdict.reject(_helo_reply(501, "5.5.2", helo, "invalid ip address"), "reject_unknown_helo_hostname")
        else:
            hs = f.helo_host
            if hs is None and helo_lookup_name(helo) is None:
                hs = HostStatus.NOT_FOUND  # no query for a name that is no host name
            if hs is None and not run.missing(Need.HELO_HOST):
                hs = HostStatus.TEMPFAIL
            if hs is HostStatus.TEMPFAIL:
                run.defer_if_permit(_helo_reply(450, "4.7.1", helo, "Host not found"), "reject_unknown_helo_hostname")
            elif hs in (HostStatus.NOT_FOUND, HostStatus.MALFORMED):
                why = "Malformed DNS server reply" if hs is HostStatus.MALFORMED else "Host not found"
                return Verdict.reject(_helo_reply(unknown_code, "4.7.1", helo, why), "reject_unknown_helo_hostname")
            # FOUND, NULL_MX ("Allow MTA names to have nullMX records"), or not known yet: no objection

    if checks.reject_unknown_sender_domain and sender_domain_checked(sender, f.local_domains):
        ds = f.sender_domain
        if ds is None and not run.missing(Need.SENDER_DOMAIN):
            ds = HostStatus.TEMPFAIL
        if ds is HostStatus.NULL_MX:
            why = f"Domain {_truncate_dot(sender.domain)} does not accept mail (nullMX)"
            return Verdict.reject(_sender_reply(550, "4.7.27", sender, why), "reject_unknown_sender_domain")
        if ds is HostStatus.TEMPFAIL:
            run.defer_if_permit(_sender_reply(450, "4.1.8", sender, "Domain not found"), "reject_unknown_sender_domain")
        elif ds in (HostStatus.NOT_FOUND, HostStatus.MALFORMED):
            why = "Malformed DNS server reply" if ds is HostStatus.MALFORMED else "Domain not found"
            return Verdict.reject(_sender_reply(unknown_code, "4.1.8", sender, why), "reject_unknown_sender_domain")
    return None


def sender_domain_checked(sender: Mailbox, local_domains: Sequence[str]) -> bool:
    """reject_unknown_sender_domain skips the null sender, address literals, unqualified
    addresses and our own (final destination) domains (Postfix reject_unknown_address)."""
    if sender.is_null or not sender.domain or sender.is_literal:
        return False
    return not domain_matches(sender.domain, local_domains)

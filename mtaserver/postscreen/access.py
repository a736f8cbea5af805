"""The postscreen access list: permanent allow and deny decisions by client IP.

DESCRIPTION
    `parse_access_list(entries)` turns postscreen.access_list into an `AccessList`;
    `AccessList.lookup(ip, mynetworks)` answers PERMIT, REJECT or DUNNO. Entries are
    evaluated in order and the first one that matches wins; nothing matching is DUNNO
    (Postfix postscreen_access_list, with the CIDR table written inline):

        permit_mynetworks          PERMIT when the client is in outbound.mynetworks
        "192.0.2.0/24 reject"      REJECT  (then postscreen.blacklist_action applies)
        "192.0.2.7 permit"         PERMIT  (no screening at all: ALLOWLISTED)
        "192.0.2.8 dunno"          DUNNO   (stops here: an exception to a later entry)
        "[2001:db8::]/32 reject"   IPv6, with or without brackets
        "!10.0.0.0/8 reject"       matches every address outside the network

    A bare address is a /32 (/128). An IPv4-mapped IPv6 client (::ffff:192.0.2.1) is
    looked up as its IPv4 address. A network with host bits set (192.0.2.1/24) is
    refused, as Postfix's cidr tables do: it is almost always a typo.

SECURITY
    Pure. The client IP comes from the socket, not from the client's words.

CONFIG
    postscreen.access_list (validated by config.PostscreenConfig), outbound.mynetworks
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from enum import Enum

from ..values import NetMatch, in_networks


class Access(str, Enum):
    PERMIT = "permit"
    REJECT = "reject"
    DUNNO = "dunno"


PERMIT, REJECT, DUNNO = Access.PERMIT, Access.REJECT, Access.DUNNO

IpNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network


@dataclass(frozen=True, slots=True, kw_only=True)
class AccessEntry:
    text: str  # as configured, for log and error messages
    result: Access
    network: IpNetwork | None = None  # None: permit_mynetworks
    negate: bool = False

    def matches(self, addr: ipaddress.IPv4Address | ipaddress.IPv6Address, mynetworks: Sequence[NetMatch]) -> bool:
        if self.network is None:
            return in_networks(str(addr), mynetworks)
        inside = addr.version == self.network.version and addr in self.network
        return inside != self.negate


@dataclass(frozen=True, slots=True)
class AccessList:
    entries: tuple[AccessEntry, ...] = ()

    def lookup(self, ip: str, mynetworks: Sequence[NetMatch] = ()) -> Access:
        """First matching entry's result; DUNNO when none matches or `ip` is not an address."""
        addr = _address(ip)
        if addr is None:
            return DUNNO
        for entry in self.entries:
            if entry.matches(addr, mynetworks):
                return entry.result
        return DUNNO

    def match(self, ip: str, mynetworks: Sequence[NetMatch] = ()) -> AccessEntry | None:
        """The entry that decides for `ip` (for logging), or None."""
        addr = _address(ip)
        if addr is None:
            return None
        return next((e for e in self.entries if e.matches(addr, mynetworks)), None)


def _address(ip: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
    try:
        addr = ipaddress.ip_address(ip.split("%", 1)[0].strip("[]"))
    except ValueError:
        return None
    if isinstance(addr, ipaddress.IPv6Address) and addr.ipv4_mapped:
        return addr.ipv4_mapped
    return addr


_ENTRY = re.compile(r"^\s*(!?)\s*(\S+)\s+(\S+)\s*$")


def parse_entry(text: str) -> AccessEntry:
    """One access list entry; ValueError with a message that says what is wrong."""
    if not isinstance(text, str):
        raise ValueError(f"expected a string, not {text!r}")
    stripped = text.strip()
    if stripped.lower() == "permit_mynetworks":
        return AccessEntry(text=stripped, result=PERMIT)
    m = _ENTRY.match(stripped)
    if not m:
        if stripped and " " not in stripped:
            raise ValueError(f"{text!r}: expected permit_mynetworks or 'CIDR ACTION' (ACTION: permit, reject or dunno)")
        raise ValueError(f"{text!r}: expected 'CIDR ACTION' with ACTION permit, reject or dunno")
    negate, net_text, action = m.group(1) == "!", m.group(2), m.group(3).lower()
    try:
        result = Access(action)
    except ValueError:
        raise ValueError(f"{text!r}: unknown action {m.group(3)!r} (expected permit, reject or dunno)") from None
    bare = re.sub(r"^\[([^\]]+)\]", r"\1", net_text)  # Postfix writes IPv6 as [2001:db8::]/32
    try:
        network = ipaddress.ip_network(bare, strict=True)
    except ValueError as exc:
        if "host bits set" in str(exc):
            fixed = ipaddress.ip_network(bare, strict=False)
            raise ValueError(f"{text!r}: {net_text} has host bits set (did you mean {fixed}?)") from None
        raise ValueError(f"{text!r}: {net_text!r} is not an IP address or network") from None
    return AccessEntry(text=stripped, result=result, network=network, negate=negate)


def parse_access_list(entries: Iterable[str]) -> AccessList:
    """All entries, in order; the first bad one raises ValueError naming its position."""
    parsed = []
    for i, text in enumerate(entries):
        try:
            parsed.append(parse_entry(text))
        except ValueError as exc:
            raise ValueError(f"entry {i + 1}: {exc}") from None
    return AccessList(tuple(parsed))

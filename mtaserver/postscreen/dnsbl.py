"""DNS block- and allowlists: site patterns, query names, scoring, TTLs and the lookups.

DESCRIPTION
    postscreen.dnsbl.sites holds Postfix postscreen_dnsbl_sites patterns, one or more per
    list entry (separated by commas or white space, as in main.cf):

        zone[=filter][*weight]

        zen.spamhaus.org                        listed with any answer: +1
        zen.spamhaus.org=127.0.0.[2..11]*3      only these answers count, +3 each time
        bl.example=127.0.0.[2;4;6..8]           a list of numbers and ranges in one field
        list.dnswl.org=127.0.[0..255].[1..3]*-2 negative weight: an allowlist (DNSWL)

    A filter has four fields separated by "."; each is a number 0..255 or "[...]" holding
    ";"-separated numbers and lo..hi ranges (Postfix ip_match.c); "[...]" around the whole
    filter is allowed. A weight is an integer, default 1. The same zone may appear several
    times with different filters and weights: it is queried once.

    Query (dnsblog): type A for the reversed client address under each zone: IPv4
    "d.c.b.a.zone", IPv6 the 32 nibbles in reverse, "b.a.9.8. ... .zone" (an IPv4-mapped
    IPv6 client is queried as IPv4). `query_all` asks every zone at once through the one
    shared resolver and never raises: NXDOMAIN and NODATA are "not listed"; SERVFAIL,
    refusals and timeouts are logged and count as not listed (DNS trouble fails open),
    exactly like Postfix, whose score is partial when a lookup did not finish in time.

    Scoring (`score`): for each pattern whose zone listed the client and whose filter (if
    any) matches one of the returned addresses, the weight is added once. The reply names
    the zone of the matching pattern with the largest weight (first one on a tie).

    TTL (`dnsbl_ttl`, postscreen_dnsbl.c): the reply TTL of a listing is the smallest TTL
    of its A records; of "not listed", the zone's negative-caching TTL (RFC 2308: the SOA
    of the NXDOMAIN answer). For every pattern, a listing with positive weight or a
    non-listing with negative weight feeds the "fail" TTL, the other two cases the "pass"
    TTL (each the minimum of what it is fed). The result is the fail TTL when the score is
    positive, else the pass TTL, clamped to [min_ttl, max_ttl]. Two choices of ours:
      * no TTL at all (the NXDOMAIN carried no SOA) gives dnsbl.ttl, clamped (Postfix: min_ttl);
      * a failed lookup feeds min_ttl, so a pass built on an incomplete answer is short-lived.

SECURITY
    DNS answers are untrusted: only A records are used, as 32-bit patterns, never as names.
    The zone names come from the administrator. Zone names appear in the 5xx text sent to
    clients (Postfix does the same); a zone that embeds a secret query key is shown too
    (Postfix's postscreen_dnsbl_reply_map is not implemented).

STANDARDS
    RFC 5782 (DNSBL query and answer conventions), RFC 2308 (negative caching TTL).

CONFIG
    postscreen.dnsbl.{sites,min_ttl,max_ttl,ttl,timeout}
"""

from __future__ import annotations

import asyncio
import ipaddress
import logging
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from enum import Enum
from typing import NamedTuple, Protocol

from ..dns import NotFound, Record, TempFail
from . import logline

log = logging.getLogger("postscreen")

# ---------------------------------------------------------------------------------------------
# Site patterns.


@dataclass(frozen=True, slots=True)
class ReplyFilter:
    """A Postfix IPv4 address pattern: per octet, the (lo, hi) ranges it accepts."""

    text: str
    octets: tuple[tuple[tuple[int, int], ...], ...]

    def matches(self, address: str) -> bool:
        try:
            packed = ipaddress.IPv4Address(address).packed
        except ValueError:
            return False  # Postfix: "address conversion error ... ignoring this reply"
        return all(any(lo <= b <= hi for lo, hi in ranges) for b, ranges in zip(packed, self.octets, strict=True))


@dataclass(frozen=True, slots=True, kw_only=True)
class DnsblSite:
    zone: str
    filter: ReplyFilter | None = None
    weight: int = 1
    text: str = ""


_LABEL = re.compile(r"^[a-z0-9_]([a-z0-9_-]{0,61}[a-z0-9_])?$")


def _octet(text: str, pattern: str) -> int:
    if not text.isdigit():
        raise ValueError(f"bad filter {pattern!r}: need a decimal number 0..255, not {text!r}")
    value = int(text)
    if value > 255:
        raise ValueError(f"bad filter {pattern!r}: {text} is out of range 0..255")
    return value


def parse_filter(pattern: str) -> ReplyFilter:
    """`127.0.0.[2..11]`, `127.0.[0..255].[1;3]` (ip_match.c syntax); ValueError if bad."""
    body = pattern
    if body.startswith("["):  # brackets around the whole pattern: "[127.0.0.[2..4]]"
        level = 0
        for end, ch in enumerate(body):
            level += (ch == "[") - (ch == "]")
            if level == 0:
                break
        else:
            raise ValueError(f"bad filter {pattern!r}: missing ']'")
        if end == len(body) - 1:
            body = body[1:-1]
    if not body:
        raise ValueError("empty filter after '='")
    fields = []
    rest = body
    for n in range(4):
        if rest.startswith("["):
            close = rest.find("]")
            if close < 0:
                raise ValueError(f"bad filter {pattern!r}: missing ']'")
            members = rest[1:close].split(";")
            ranges = []
            for member in members:
                lo_text, sep, hi_text = member.partition("..")
                lo = _octet(lo_text, pattern)
                hi = _octet(hi_text, pattern) if sep else lo
                if lo > hi:
                    raise ValueError(f"bad filter {pattern!r}: range {member} runs backwards")
                ranges.append((lo, hi))
            fields.append(tuple(ranges))
            rest = rest[close + 1 :]
        else:
            m = re.match(r"\d+", rest)
            if not m:
                raise ValueError(f"bad filter {pattern!r}: need a number 0..255 or '[' in field {n + 1}")
            value = _octet(m.group(0), pattern)
            fields.append(((value, value),))
            rest = rest[m.end() :]
        if n < 3:
            if not rest.startswith("."):
                raise ValueError(f"bad filter {pattern!r}: need four fields separated by '.'")
            rest = rest[1:]
    if rest:
        raise ValueError(f"bad filter {pattern!r}: garbage after the fourth field: {rest!r}")
    return ReplyFilter(pattern, tuple(fields))


def _check_zone(zone: str, site: str) -> str:
    z = zone.strip().lower().rstrip(".")
    labels = z.split(".")
    if not z or len(z) > 253 or not all(_LABEL.match(label) for label in labels):
        raise ValueError(f"bad DNSBL domain name {zone!r} in {site!r}")
    if all(label.isdigit() for label in labels):
        raise ValueError(f"bad DNSBL domain name {zone!r} in {site!r}: numeric")
    return z


def parse_site(text: str) -> DnsblSite:
    """One `zone[=filter][*weight]` pattern (Postfix psc_dnsbl_add_site)."""
    site = text.strip()
    rest, star, weight_text = site.partition("*")
    weight = 1
    if star:
        if not re.fullmatch(r"\s*[+-]?\d+", weight_text):
            raise ValueError(f"bad DNSBL weight factor {weight_text!r} in {site!r}")
        weight = int(weight_text)
    zone, eq, filter_text = rest.partition("=")
    flt = parse_filter(filter_text) if eq else None
    return DnsblSite(zone=_check_zone(zone, site), filter=flt, weight=weight, text=site)


def parse_sites(entries: Iterable[str]) -> tuple[DnsblSite, ...]:
    """Every pattern of postscreen.dnsbl.sites; an entry may hold several (", " or blanks)."""
    out = []
    for i, entry in enumerate(entries):
        if not isinstance(entry, str):
            raise ValueError(f"entry {i + 1}: expected a string like zen.spamhaus.org*2, not {entry!r}")
        for word in re.split(r"[,\s]+", entry.strip()):
            if word:
                try:
                    out.append(parse_site(word))
                except ValueError as exc:
                    raise ValueError(f"entry {i + 1}: {exc}") from None
    return tuple(out)


def zones(sites: Sequence[DnsblSite]) -> tuple[str, ...]:
    """Each zone once, in configuration order: one query per zone."""
    return tuple(dict.fromkeys(s.zone for s in sites))


def query_name(ip: str, zone: str) -> str:
    """The DNS name to ask about `ip` in `zone` (RFC 5782 2.1 and 2.4)."""
    addr = ipaddress.ip_address(ip.strip("[]"))
    if isinstance(addr, ipaddress.IPv6Address) and addr.ipv4_mapped:
        addr = addr.ipv4_mapped
    if isinstance(addr, ipaddress.IPv4Address):
        return ".".join(reversed(str(addr).split("."))) + "." + zone
    return ".".join(reversed(addr.exploded.replace(":", ""))) + "." + zone


# ---------------------------------------------------------------------------------------------
# Answers, score and TTL (pure).


class Lookup(str, Enum):
    LISTED = "listed"  # NOERROR with A records
    NOT_LISTED = "not listed"  # NXDOMAIN or NODATA
    FAILED = "failed"  # SERVFAIL, refused, timeout, network: counts as not listed


@dataclass(frozen=True, slots=True, kw_only=True)
class ZoneAnswer:
    zone: str
    status: Lookup
    addresses: tuple[str, ...] = ()  # the A records when LISTED
    ttl: int | None = None  # LISTED: smallest A TTL; NOT_LISTED: negative TTL if known
    error: str = ""  # FAILED: why


class DnsblScore(NamedTuple):
    score: int
    zone: str | None  # zone of the largest-weight matching pattern; None when nothing matched


def score(answers_by_site: Mapping[str, ZoneAnswer], sites: Sequence[DnsblSite]) -> DnsblScore:
    total, best_zone, best_weight = 0, None, 0
    for site in sites:
        answer = answers_by_site.get(site.zone)
        if answer is None or answer.status is not Lookup.LISTED:
            continue
        if site.filter is not None and not any(site.filter.matches(a) for a in answer.addresses):
            continue
        total += site.weight
        if best_zone is None or site.weight > best_weight:
            best_zone, best_weight = site.zone, site.weight
    return DnsblScore(total, best_zone)


def dnsbl_ttl(
    answers_by_site: Mapping[str, ZoneAnswer],
    sites: Sequence[DnsblSite],
    total: int,
    *,
    min_ttl: float,
    max_ttl: float,
    default_ttl: float,
) -> float:
    """Seconds the DNSBL result is remembered (see DESCRIPTION); `total` is the score."""
    fail: list[float] = []
    passed: list[float] = []
    for site in sites:
        answer = answers_by_site.get(site.zone)
        if answer is None or answer.status is Lookup.FAILED:
            reply_ttl: float | None = min_ttl  # do not remember a pass built on a failed lookup
            listed = False
        else:
            reply_ttl = answer.ttl
            listed = answer.status is Lookup.LISTED
        if reply_ttl is None:
            continue
        # Postfix keeps the TTL bookkeeping per pattern, matched by the filter or not.
        (fail if listed == (site.weight > 0) else passed).append(reply_ttl)
    chosen = fail if total > 0 else passed
    ttl = min(chosen) if chosen else default_ttl
    return float(max(min_ttl, min(max_ttl, ttl)))


# ---------------------------------------------------------------------------------------------
# The lookups (I/O).


class DnsblResolver(Protocol):
    """What query_all needs of mtaserver.dns.Resolver."""

    async def query(self, name: str, qtype: str) -> list[Record]: ...

    async def negative_ttl(self, zone: str) -> int | None: ...


@dataclass(frozen=True, slots=True, kw_only=True)
class DnsblResult:
    ip: str
    sites: tuple[DnsblSite, ...]
    answers: tuple[ZoneAnswer, ...]
    score: int
    zone: str | None  # the <dnsbl> of the reject text: largest-weight matching pattern

    @property
    def by_zone(self) -> dict[str, ZoneAnswer]:
        return {a.zone: a for a in self.answers}

    @property
    def complete(self) -> bool:
        """Every zone answered; False means the score is partial (fail open)."""
        return all(a.status is not Lookup.FAILED for a in self.answers)

    def ttl(self, *, min_ttl: float, max_ttl: float, default_ttl: float) -> float:
        return dnsbl_ttl(self.by_zone, self.sites, self.score, min_ttl=min_ttl, max_ttl=max_ttl, default_ttl=default_ttl)


async def query_all(resolver: DnsblResolver, ip: str, sites: Sequence[DnsblSite], timeout: float) -> DnsblResult:
    """Ask every zone about `ip` in parallel; whatever has not answered after `timeout` seconds
    counts as not listed. Never raises for DNS trouble (ValueError if `ip` is no address)."""
    names = {zone: query_name(ip, zone) for zone in zones(sites)}
    deadline = asyncio.get_running_loop().time() + timeout
    async with asyncio.TaskGroup() as tg:
        tasks = [tg.create_task(_lookup(resolver, ip, zone, name, deadline, timeout)) for zone, name in names.items()]
    answers = tuple(t.result() for t in tasks)
    total, zone = score({a.zone: a for a in answers}, sites)
    return DnsblResult(ip=ip, sites=tuple(sites), answers=answers, score=total, zone=zone)


async def _lookup(resolver: DnsblResolver, ip: str, zone: str, name: str, deadline: float, timeout: float) -> ZoneAnswer:
    try:
        async with asyncio.timeout_at(deadline):
            try:
                records = await resolver.query(name, "A")
            except NotFound:
                try:
                    negative = await resolver.negative_ttl(zone)
                except (TempFail, NotFound):
                    negative = None
                return ZoneAnswer(zone=zone, status=Lookup.NOT_LISTED, ttl=negative)
    except TimeoutError:
        log.warning("dnsblog reply timeout %gs for %s", timeout, zone)
        return ZoneAnswer(zone=zone, status=Lookup.FAILED, error="timeout")
    except TempFail as exc:
        log.warning("dnsblog_query: lookup error for DNS query %s: %s", name, exc)
        return ZoneAnswer(zone=zone, status=Lookup.FAILED, error=str(exc))
    except Exception as exc:  # noqa: BLE001 - a resolver bug must not take the session down: fail open
        log.warning("dnsblog_query: lookup error for DNS query %s: %r", name, exc)
        return ZoneAnswer(zone=zone, status=Lookup.FAILED, error=repr(exc))
    addresses = tuple(r.data for r in records)
    for a in addresses:
        log.info(logline.dnsbl_listed(ip, zone, a))
    return ZoneAnswer(zone=zone, status=Lookup.LISTED, addresses=addresses, ttl=min(r.ttl for r in records))

"""The DNS lookups behind the RCPT restrictions: client name, HELO host, sender domain.

DESCRIPTION
    A thin asyncio shell over `mtaserver.dns.Resolver` that turns answers into the facts
    restrictions.py judges. Nothing here decides; nothing here raises for DNS trouble: a
    SERVFAIL, a timeout or any resolver error becomes a TEMPFAIL fact.

      client_name(resolver, ip)       PTR of ip, then A (IPv4) or AAAA (IPv6) of the first
                                      PTR name; the name is Postfix's client name only when
                                      that forward lookup gives back ip (smtpd_peer.c). A PTR
                                      name that is malformed or numeric counts as none. An
                                      address listed in /etc/hosts takes its name from there,
                                      as Postfix's getnameinfo() does (127.0.0.1 is
                                      "localhost" without a DNS query).
      host_exists(resolver, name)     A, AAAA, then MX, stopping at the first answer
                                      (reject_unknown_hostname: a null MX counts as existing)
      domain_status(resolver, domain) MX; without MX records A, then AAAA
                                      (reject_unknown_mailhost); null MX and MX records that
                                      name no host are told apart
      resolve(resolver, facts, needs) the `needs` of restrictions.needed(), concurrently
      check_rcpt(resolver, facts, cfg)
                                      needed -> resolve -> decide; returns the verdict and the
                                      facts with what was looked up, for the session to keep
                                      (client name and HELO are per session)

    Combining answers of several types follows Postfix dns_lookup_rv(): the best answer wins,
    in the order found > tempfail > malformed > null MX > not found, so a temporary failure
    of one type is never reported as "not found" when another type could not say more. An
    NXDOMAIN answer ends the walk (the name does not exist, whatever the type).

SECURITY
    Answers come from the network: names are validated (restrictions.valid_hostname) before
    use and never used as anything but text. Names that are no host names are not sent to
    the resolver at all. Every lookup is bounded by the resolver's own timeout; `timeout`
    bounds a whole function when given.

STANDARDS
    RFC 1035, RFC 3596 (AAAA), RFC 1912 2.1 (PTR/forward consistency), RFC 5321 5.1
    (MX, then A/AAAA), RFC 7505 (null MX), RFC 3490 (IDNA: non-ASCII names are asked in
    their ACE form).

CONFIG
    server.dns.* through the Resolver it is given; inbound.protocol_checks via
    restrictions.needed/decide.
"""

from __future__ import annotations

import asyncio
import ipaddress
import logging
import os
from collections.abc import Awaitable, Iterable
from dataclasses import replace
from typing import TypeVar

from ..config import InboundConfig
from ..dns import DnsError, NotFound, Record, Resolver, TempFail
from ..logutil import sanitize
from ..model import Verdict
from .restrictions import (
    ClientName,
    ClientNameStatus,
    HostStatus,
    Need,
    RcptFacts,
    decide,
    helo_lookup_name,
    needed,
    valid_hostaddr,
    valid_hostname,
)

log = logging.getLogger("policy")

T = TypeVar("T")

# Postfix dns_lookup_rv(): the highest status of the types asked wins.
_RANK = {HostStatus.FOUND: 4, HostStatus.TEMPFAIL: 3, HostStatus.MALFORMED: 2, HostStatus.NULL_MX: 1, HostStatus.NOT_FOUND: 0}


def _ascii(name: str) -> str | None:
    """The DNS form of a name: one trailing dot dropped, IDNA for non-ASCII; None when invalid."""
    name = name[:-1] if name.endswith(".") and not name.endswith("..") else name
    if not name.isascii():
        try:
            name = name.encode("idna").decode("ascii")
        except UnicodeError:
            return None
    return name if valid_hostname(name) else None


async def _bounded(coro: Awaitable[T], timeout: float | None, on_timeout: T) -> T:
    if timeout is None:
        return await coro
    try:
        async with asyncio.timeout(timeout):
            return await coro
    except TimeoutError:
        return on_timeout


async def _query(resolver: Resolver, name: str, qtype: str) -> list[Record] | HostStatus:
    """The records; NOT_FOUND for NXDOMAIN or no such record; TEMPFAIL for any other trouble."""
    try:
        return await resolver.query(name, qtype)
    except NotFound:
        return HostStatus.NOT_FOUND
    except (TempFail, DnsError, OSError, ValueError):  # never let DNS trouble escape
        return HostStatus.TEMPFAIL


async def _query_nx(resolver: Resolver, name: str, qtype: str) -> tuple[list[Record] | HostStatus, bool]:
    """Like _query, and whether the answer was NXDOMAIN (the name has no records of any type)."""
    try:
        return await resolver.query(name, qtype), False
    except NotFound as exc:
        return HostStatus.NOT_FOUND, exc.nxdomain
    except (TempFail, DnsError, OSError, ValueError):
        return HostStatus.TEMPFAIL, False


# ---------------------------------------------------------------------------------------------
# The client's name


async def client_name(resolver: Resolver, ip: str, *, timeout: float | None = None) -> ClientName:
    """PTR + forward confirmation of the client address (Postfix smtpd_peer.c)."""
    return await _bounded(_client_name(resolver, ip), timeout, ClientName(ClientNameStatus.PTR_TEMPFAIL))


HOSTS_FILE = "/etc/hosts"
_hosts: tuple[float, dict[str, str]] = (-1.0, {})


def hosts_name(ip: str, path: str = HOSTS_FILE) -> str | None:
    """The first name of `ip` in the hosts file (read again when it changes), or None."""
    global _hosts
    try:
        mtime = os.stat(path).st_mtime
    except OSError:
        return None
    if mtime != _hosts[0]:
        names: dict[str, str] = {}
        try:
            with open(path, encoding="utf-8", errors="replace") as f:
                for line in f:
                    fields = line.split("#", 1)[0].split()
                    if len(fields) >= 2:
                        try:
                            key = str(ipaddress.ip_address(fields[0]))
                        except ValueError:
                            continue
                        names.setdefault(key, fields[1])
        except OSError:
            return None
        _hosts = (mtime, names)
    return _hosts[1].get(ip)


async def _client_name(resolver: Resolver, ip: str) -> ClientName:
    try:
        addr = ipaddress.ip_address(ip.split("%", 1)[0])
    except ValueError:
        return ClientName(ClientNameStatus.NO_PTR)
    if isinstance(addr, ipaddress.IPv6Address) and addr.ipv4_mapped:
        addr = addr.ipv4_mapped
    listed = hosts_name(str(addr))
    if listed is not None and valid_hostname(listed):
        return ClientName(ClientNameStatus.VERIFIED, listed)  # the hosts file names it both ways
    answer = await _query(resolver, addr.reverse_pointer, "PTR")
    if answer is HostStatus.TEMPFAIL:
        return ClientName(ClientNameStatus.PTR_TEMPFAIL)
    if not isinstance(answer, list):
        return ClientName(ClientNameStatus.NO_PTR)
    ptr = answer[0].data.rstrip(".")  # getnameinfo() gives one name: the first
    if not valid_hostname(ptr) or valid_hostaddr(ptr):
        log.info("client %s: malformed or numeric PTR name %s", ip, sanitize(ptr))
        return ClientName(ClientNameStatus.NO_PTR)
    forward = await _query(resolver, ptr, "A" if addr.version == 4 else "AAAA")
    if forward is HostStatus.TEMPFAIL:
        return ClientName(ClientNameStatus.FORWARD_TEMPFAIL, ptr)
    if isinstance(forward, list):
        for rr in forward:
            try:
                if ipaddress.ip_address(rr.data) == addr:
                    return ClientName(ClientNameStatus.VERIFIED, ptr)
            except ValueError:
                continue
    log.info("hostname %s does not resolve to address %s", sanitize(ptr), ip)
    return ClientName(ClientNameStatus.MISMATCH, ptr)


# ---------------------------------------------------------------------------------------------
# HELO host and mail domain


def _mx_status(records: list[Record]) -> HostStatus:
    """Postfix dns_get_answer for MX: any null MX wins; else found when one exchange is a host
    name (or, tolerated with a warning by Postfix, an address); else malformed."""
    if any(rr.data in (".", "") for rr in records):
        return HostStatus.NULL_MX
    if any(valid_hostname(rr.data.rstrip(".")) or valid_hostaddr(rr.data) for rr in records):
        return HostStatus.FOUND
    return HostStatus.MALFORMED


async def _walk(resolver: Resolver, name: str, types: tuple[str, ...], stop: frozenset[HostStatus]) -> HostStatus:
    best = HostStatus.NOT_FOUND
    for qtype in types:
        answer, nxdomain = await _query_nx(resolver, name, qtype)
        if isinstance(answer, list):
            status = _mx_status(answer) if qtype == "MX" else HostStatus.FOUND
        else:
            status = answer
        if _RANK[status] > _RANK[best]:
            best = status
        if status in stop or nxdomain:
            break
    return best


async def host_exists(resolver: Resolver, name: str, *, timeout: float | None = None) -> HostStatus:
    """reject_unknown_hostname's lookup: A, AAAA, MX; FOUND or NULL_MX mean the host exists."""
    dns_name = _ascii(name)
    if dns_name is None:
        return HostStatus.NOT_FOUND
    work = _walk(resolver, dns_name, ("A", "AAAA", "MX"), frozenset({HostStatus.FOUND}))
    return await _bounded(work, timeout, HostStatus.TEMPFAIL)


async def domain_status(resolver: Resolver, domain: str, *, timeout: float | None = None) -> HostStatus:
    """reject_unknown_mailhost's lookup: MX, else A, AAAA. Literals and invalid names: NOT_FOUND
    without a query (callers skip literals before asking)."""
    dns_name = _ascii(domain)
    if dns_name is None:
        return HostStatus.NOT_FOUND
    stop = frozenset({HostStatus.FOUND, HostStatus.NULL_MX, HostStatus.MALFORMED})
    work = _walk(resolver, dns_name, ("MX", "A", "AAAA"), stop)
    return await _bounded(work, timeout, HostStatus.TEMPFAIL)


# ---------------------------------------------------------------------------------------------
# The shell around restrictions.decide


async def resolve(resolver: Resolver, facts: RcptFacts, needs: Iterable[Need], *, timeout: float | None = None) -> RcptFacts:
    """Look up the facts named in `needs` (restrictions.needed), concurrently; the others are kept."""
    wanted = set(needs)
    jobs: dict[str, Awaitable[object]] = {}
    if Need.CLIENT_NAME in wanted:
        jobs["client_name"] = client_name(resolver, facts.client_ip, timeout=timeout)
    if Need.HELO_HOST in wanted and facts.helo is not None:
        name = helo_lookup_name(facts.helo)
        if name is not None:
            jobs["helo_host"] = host_exists(resolver, name, timeout=timeout)
    if Need.SENDER_DOMAIN in wanted and facts.sender.domain and not facts.sender.is_literal:
        jobs["sender_domain"] = domain_status(resolver, facts.sender.domain, timeout=timeout)
    if not jobs:
        return facts
    results = await asyncio.gather(*jobs.values())
    return replace(facts, **dict(zip(jobs, results, strict=True)))  # type: ignore[arg-type]


async def check_rcpt(
    resolver: Resolver, facts: RcptFacts, cfg: InboundConfig, *, timeout: float | None = None
) -> tuple[Verdict, RcptFacts]:
    """needed -> resolve -> decide. Returns the verdict and the facts as completed."""
    needs = needed(facts, cfg)
    if needs:
        facts = await resolve(resolver, facts, needs, timeout=timeout)
    return decide(facts, cfg), facts

"""The one DNS resolver of the process: aiodns (c-ares) with configurable servers and timeout.

DESCRIPTION
    `Resolver.query(name, qtype)` returns the answer records or raises `NotFound` (the
    name or the record type does not exist: a definitive answer) or `TempFail` (SERVFAIL,
    timeout, refused, network trouble: ask again later). Callers never see c-ares error
    numbers; the difference between "does not exist" and "cannot tell now" is what every
    mail decision depends on (RFC 5321 5.1: MX SERVFAIL must not fall back to A).

    `Resolver.negative_ttl(zone)` is the RFC 2308 negative-caching TTL of a zone, which
    DNSBL lookups need for "not listed" answers. c-ares (pycares 5) hands no records to
    the callback of an NXDOMAIN or NODATA answer, so the SOA of that answer's authority
    section is out of reach: the zone's own SOA is asked for instead (the record that
    section carries), and min(SOA TTL, SOA MINIMUM) is kept for the SOA's TTL.

    CNAME chains are followed by the DNS server, never here: a lookup is one question
    (c-ares' query does not chase CNAMEs), and of the answer only the records of the type
    asked are kept; the CNAMEs on the way are skipped. A chain the server did not finish (or
    a loop) answers no record of that type: NotFound(nxdomain=False). Nothing in mtaserver
    asks for a CNAME's target itself (MX, A/AAAA, TXT, PTR lookups all come through here), so
    the chain's length is bounded by the recursive resolver (Unbound, BIND), not by us.
    tests/integration/test_cname_chain.py counts the questions: 10 CNAMEs are one question.

SECURITY
    Answers come from the network: names are returned as text, never used as paths or
    commands; callers validate what they use.

CONFIG
    server.dns.nameservers ("ip" or "ip:port"; empty = /etc/resolv.conf), server.dns.timeout
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass

import aiodns
import pycares

from .admin import metrics


class DnsError(Exception):
    pass


class NotFound(DnsError):
    """NXDOMAIN (`nxdomain=True`) or no record of that type (NODATA)."""

    def __init__(self, message: str, *, nxdomain: bool) -> None:
        super().__init__(message)
        self.nxdomain = nxdomain


class TempFail(DnsError):
    pass


@dataclass(frozen=True, slots=True)
class Record:
    type: str
    ttl: int
    data: str  # A/AAAA: the address; MX: "pref host"; TXT: the text; PTR/CNAME: the name
    preference: int = 0


_NOTFOUND = {pycares.errno.ARES_ENOTFOUND: True, pycares.errno.ARES_ENODATA: False}


class Resolver:
    def __init__(self, nameservers: list[str] | None = None, timeout: float = 5.0) -> None:
        self._nameservers = nameservers or None
        self._timeout = timeout
        self._resolver: aiodns.DNSResolver | None = None
        self._negative: dict[str, tuple[float, int]] = {}  # zone -> (valid until, on the loop clock; negative TTL)

    def _get(self) -> aiodns.DNSResolver:
        if self._resolver is None:  # bound to the running loop: create lazily, after fork
            self._resolver = aiodns.DNSResolver(nameservers=self._nameservers, timeout=self._timeout, tries=2)
        return self._resolver

    async def query(self, name: str, qtype: str) -> list[Record]:
        try:
            async with asyncio.timeout(self._timeout * 2 + 1):
                result = await self._get().query_dns(name, qtype)
        except aiodns.error.DNSError as exc:
            code = exc.args[0] if exc.args else None
            if code in _NOTFOUND:
                raise NotFound(f"{name} {qtype}: {'no such domain' if _NOTFOUND[code] else 'no such record'}", nxdomain=_NOTFOUND[code]) from None
            metrics.dns_error(qtype, "error")
            raise TempFail(f"{name} {qtype}: {exc.args[1] if len(exc.args) > 1 else exc}") from None
        except TimeoutError:
            metrics.dns_error(qtype, "timeout")
            raise TempFail(f"{name} {qtype}: timeout") from None
        out = []
        for rr in result.answer:
            if rr.type != getattr(pycares, f"QUERY_TYPE_{qtype}"):
                continue  # CNAMEs on the way
            d = rr.data
            if qtype == "MX":
                out.append(Record("MX", rr.ttl, str(d.exchange).rstrip(".") or ".", int(d.priority)))
            elif qtype in ("A", "AAAA"):
                out.append(Record(qtype, rr.ttl, str(d.addr)))
            elif qtype == "TXT":
                txt = d.data
                out.append(Record("TXT", rr.ttl, txt.decode("utf-8", "replace") if isinstance(txt, bytes) else str(txt)))
            else:
                # pycares 5 names the field by type: PTR dname, CNAME cname, NS nsdname
                target = next((getattr(d, f) for f in ("dname", "cname", "nsdname", "name") if hasattr(d, f)), d)
                out.append(Record(qtype, rr.ttl, str(target).rstrip(".")))
        if not out:
            raise NotFound(f"{name} {qtype}: no such record", nxdomain=False)
        return out

    async def negative_ttl(self, zone: str) -> int | None:
        """RFC 2308 section 5: min(TTL, MINIMUM) of the SOA of `zone`, or None when no SOA is
        found. A name below the zone apex is walked up to its apex (never to a TLD). Raises
        TempFail when the server cannot tell now."""
        now = asyncio.get_running_loop().time()
        name = zone.rstrip(".").lower()
        cached = self._negative.get(name)
        if cached and cached[0] > now:
            return cached[1]
        probe = name
        while probe.count(".") >= 1:
            try:
                async with asyncio.timeout(self._timeout * 2 + 1):
                    result = await self._get().query_dns(probe, "SOA")
            except aiodns.error.DNSError as exc:
                code = exc.args[0] if exc.args else None
                if code not in _NOTFOUND:
                    metrics.dns_error("SOA", "error")
                    raise TempFail(f"{probe} SOA: {exc.args[1] if len(exc.args) > 1 else exc}") from None
                probe = probe.split(".", 1)[1]
                continue
            except TimeoutError:
                metrics.dns_error("SOA", "timeout")
                raise TempFail(f"{probe} SOA: timeout") from None
            soa = next((rr for rr in result.answer if rr.type == pycares.QUERY_TYPE_SOA), None)
            if soa is None:  # only a CNAME chain: no SOA of ours here
                return None
            ttl = min(int(soa.ttl), int(soa.data.minimum))
            self._negative[name] = (now + max(int(soa.ttl), 1), ttl)
            return ttl
        return None

    def close(self) -> None:
        if self._resolver is not None:
            self._resolver.cancel()
            self._resolver = None

"""The one DNS resolver of the process: aiodns (c-ares) with configurable servers and timeout.

DESCRIPTION
    `Resolver.query(name, qtype)` returns the answer records or raises `NotFound` (the
    name or the record type does not exist: a definitive answer) or `TempFail` (SERVFAIL,
    timeout, refused, network trouble: ask again later). Callers never see c-ares error
    numbers; the difference between "does not exist" and "cannot tell now" is what every
    mail decision depends on (RFC 5321 5.1: MX SERVFAIL must not fall back to A).

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
            raise TempFail(f"{name} {qtype}: {exc.args[1] if len(exc.args) > 1 else exc}") from None
        except TimeoutError:
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
                out.append(Record(qtype, rr.ttl, str(getattr(d, "name", d)).rstrip(".")))
        if not out:
            raise NotFound(f"{name} {qtype}: no such record", nxdomain=False)
        return out

    def close(self) -> None:
        if self._resolver is not None:
            self._resolver.cancel()
            self._resolver = None

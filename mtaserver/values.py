"""Value types of the configuration and their parsers: durations, sizes, endpoints, networks, domains.

DESCRIPTION
    Pure: no I/O, no asyncio. `config.py` builds its pydantic fields on these parsers; the
    policy, postscreen and delivery code take the parsed values. Nothing here imports
    another module of the package, so any module may import it.

      parse_duration   "20ms", "6s", "5m", "1h", "30d", "2w" or a number -> seconds
      parse_size       "10240000", "500K", "10M", "1G" -> bytes (K = 1024, M = 1024 * 1024, G = 1024 ** 3);
                       "10MB", "10Mb", "10 MiB", "1.5M" are refused as ambiguous (bytes or bits? 1000 or 1024?)
      parse_endpoint   "host:port", "[v6]:port", "unix:/path" -> Endpoint
      check_nexthop    "host", "host:port", "[host]", "[host]:port" (Postfix relayhost; [] = no MX lookup)
      parse_network    "192.0.2.0/24", "[::1]/128", "!10.0.0.1" -> NetMatch (mynetworks entry); host bits
                       set ("10.0.0.1/8") are refused with the network meant ("10.0.0.0/8")
      in_networks      Postfix mynetworks lookup: first matching entry wins, "!" excludes
      domain_matches   "example.test" matches itself, ".example.test" its subdomains
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(ms|[smhdw]?)\s*$")
_DURATION_UNIT = {"": 1, "ms": 0.001, "s": 1, "m": 60, "h": 3600, "d": 86400, "w": 7 * 86400}


def parse_duration(value: Any) -> float:
    """`20ms`, `6s`, `5m`, `1h`, `30d`, `2w` or a number of seconds -> seconds (float)."""
    if isinstance(value, bool):
        raise ValueError("expected a duration like 30s, 5m, 1h, 7d")
    if isinstance(value, (int, float)):
        if value < 0:
            raise ValueError("a duration cannot be negative")
        return float(value)
    if isinstance(value, str):
        m = _DURATION.match(value)
        if m:
            return float(m.group(1)) * _DURATION_UNIT[m.group(2)]
    raise ValueError(f"expected a duration like 30s, 5m, 1h, 7d, not {value!r}")


_SIZE = re.compile(r"^\s*(\d+)\s*([kKmMgG]?)\s*$")
_SIZE_UNIT = {"": 1, "k": 1024, "m": 1024**2, "g": 1024**3}
_SIZE_FORMS = "a number of bytes (10240000) or K, M, G for 1024, 1024*1024, 1024**3 bytes (500K, 10M, 1G)"


def parse_size(value: Any) -> int:
    """`10240000`, `500K`, `10M`, `1G` -> bytes (K = 1024). `10MB`, `10Mb`, `10 MiB`, `1.5M`: ValueError
    (ambiguous: bytes or bits, 1000 or 1024), so a size is never read other than as it was meant."""
    if isinstance(value, bool):
        raise ValueError(f"expected a size: {_SIZE_FORMS}")
    if isinstance(value, int):
        if value < 0:
            raise ValueError("a size cannot be negative")
        return value
    if isinstance(value, str):
        m = _SIZE.match(value)
        if m:
            return int(m.group(1)) * _SIZE_UNIT[m.group(2).lower()]
        if re.match(r"^\s*\d+(\.\d+)?\s*([kKmMgGtT]?i?[bB]|[kKmMgG]\s*$)", value):
            raise ValueError(f"{value!r} is ambiguous: write {_SIZE_FORMS}; no B, MB, MiB, no fractions")
    raise ValueError(f"expected a size: {_SIZE_FORMS}; not {value!r}")


@dataclass(frozen=True, slots=True)
class Endpoint:
    """A TCP endpoint `host:port` (`[v6]:port`), or a UNIX socket `unix:/path`."""

    host: str
    port: int
    unix_path: str | None = None

    def __str__(self) -> str:
        if self.unix_path:
            return f"unix:{self.unix_path}"
        return f"[{self.host}]:{self.port}" if ":" in self.host else f"{self.host}:{self.port}"


def parse_endpoint(value: Any, *, default_port: int | None = None) -> Endpoint:
    if isinstance(value, Endpoint):
        return value
    if not isinstance(value, str) or not value.strip():
        raise ValueError("expected host:port")
    text = value.strip()
    if text.startswith("unix:"):
        return Endpoint("", 0, text[5:])
    m = re.match(r"^\[([^\]]+)\](?::(\d+))?$", text) or re.match(r"^([^:\[\]]+)(?::(\d+))?$", text)
    if not m:
        raise ValueError(f"expected host:port or [ipv6]:port, not {value!r}")
    host, port = m.group(1), m.group(2)
    if port is None:
        if default_port is None:
            raise ValueError(f"{value!r} has no port")
        port_n = default_port
    else:
        port_n = int(port)
    if not 0 < port_n < 65536:
        raise ValueError(f"port out of range in {value!r}")
    return Endpoint(host, port_n)


def check_nexthop(value: str) -> str:
    """A Postfix relayhost: `host`, `host:port` (MX lookup) or `[host]`, `[host]:port` (no MX lookup;
    host may be an IP address, `[2001:db8::1]`). Returns it stripped; ValueError names the problem."""
    text = value.strip()
    forms = "expected host, host:port, [host] or [host]:port ([...]: no MX lookup)"
    m = re.fullmatch(r"\[([^\[\]\s]+)\](?::(\d{1,5}))?", text) or re.fullmatch(r"([^:\[\]\s]+)(?::(\d{1,5}))?", text)
    if not m:
        raise ValueError(f"{forms}, not {value!r}")
    host, port = m.group(1), m.group(2)
    if port is not None and not 0 < int(port) < 65536:
        raise ValueError(f"port out of range in {value!r}")
    try:
        ipaddress.ip_address(host)  # an IPv6 address only in brackets: the second form has no ':' in host
    except ValueError:
        if host.startswith(".") or host.endswith(".."):
            raise ValueError(f"{forms}, not {value!r}") from None
        try:
            check_domain(host)
        except ValueError:
            raise ValueError(f"{forms}; {host!r} is neither a host name nor an IP address") from None
    return text


@dataclass(frozen=True, slots=True)
class NetMatch:
    """One `mynetworks` entry: a network, possibly negated with `!`."""

    network: ipaddress.IPv4Network | ipaddress.IPv6Network
    negate: bool = False

    def __str__(self) -> str:
        return ("!" if self.negate else "") + str(self.network)


def parse_network(value: Any) -> NetMatch:
    if isinstance(value, NetMatch):
        return value
    if not isinstance(value, str):
        raise ValueError("expected a network like 192.0.2.0/24 or [::1]/128")
    text = value.strip()
    negate = text.startswith("!")
    if negate:
        text = text[1:].strip()
    text = re.sub(r"^\[([^\]]+)\]", r"\1", text)  # Postfix writes IPv6 as [::1]/128
    try:
        return NetMatch(ipaddress.ip_network(text, strict=True), negate)
    except ValueError as exc:
        if "host bits set" in str(exc):  # 10.0.0.1/8: a typo for 10.0.0.0/8 or for 10.0.0.1/32? say so, guess nothing
            meant = ipaddress.ip_network(text, strict=False)
            raise ValueError(f"{value!r} has host bits set (did you mean {meant}?)") from None
        raise ValueError(f"not a network: {value!r}") from exc


_HOSTNAME = re.compile(r"^(?=.{1,253}$)([A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?)(\.[A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?)*\.?$")


def check_domain(value: str) -> str:
    """A domain name from the config, lower case, no trailing dot; `.example.test` (its subdomains) allowed."""
    v = value.strip().lower().rstrip(".")
    bare = v.removeprefix(".")
    if not _HOSTNAME.match(bare):
        raise ValueError(f"not a domain name: {value!r}")
    return v



def domain_matches(domain: str, patterns: Iterable[str]) -> bool:
    """`example.test` matches itself; `.example.test` matches its subdomains (Postfix style)."""
    d = domain.lower().rstrip(".")
    for p in patterns:
        if p.startswith("."):
            if d.endswith(p):
                return True
        elif d == p:
            return True
    return False


def in_networks(ip: str, networks: Sequence[NetMatch]) -> bool:
    """mynetworks lookup: first matching entry wins; `!net` excludes."""
    try:
        addr = ipaddress.ip_address(ip.split("%", 1)[0])
    except ValueError:
        return False
    if isinstance(addr, ipaddress.IPv6Address) and addr.ipv4_mapped:
        addr = addr.ipv4_mapped
    for entry in networks:
        if addr.version == entry.network.version and addr in entry.network:
            return not entry.negate
    return False

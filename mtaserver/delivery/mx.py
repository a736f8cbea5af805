"""Where mail for a domain goes: next hops from relay-host syntax and MX records.

DESCRIPTION
    `parse_nexthop("[relay.example]:2525")` -> NextHop(host, port, mx=False): a bracketed host
    is used as it is; a bare host name means "look up its MX records" (Postfix relayhost
    syntax). `plan_mx(domain, records | NotFound | TempFail)` turns the answer to an MX query
    into the ordered list of hosts to try, or a final Outcome (RFC 5321 5.1):

      MX records         by preference, equal preferences in random order
      null MX (". ")     bounce 5.1.10, the domain accepts no mail (RFC 7505)
      no MX (NODATA)     the domain itself, as an implicit MX of preference 0
      NXDOMAIN           bounce 5.1.2
      SERVFAIL/timeout   defer 4.4.3, never a fallback to the A record

    Pure: the resolver's answer and the random generator are arguments.

STANDARDS
    RFC 5321 5.1, RFC 7505 (null MX).
"""

from __future__ import annotations

import random
from dataclasses import dataclass

from ..dns import NotFound, Record, TempFail
from ..model import Fate
from ..values import parse_endpoint
from .wire import Outcome


@dataclass(frozen=True, slots=True)
class NextHop:
    host: str
    port: int
    mx: bool  # look up the host's MX records first


def parse_nexthop(spec: str, default_port: int = 25) -> NextHop:
    text = spec.strip()
    if text.startswith("["):
        host, _, rest = text[1:].partition("]")
        return NextHop(host, int(rest[1:]) if rest.startswith(":") else default_port, mx=False)
    ep = parse_endpoint(text, default_port=default_port)
    return NextHop(ep.host, ep.port, mx=True)


def plan_mx(domain: str, answer: list[Record] | NotFound | TempFail, rng: random.Random | None = None) -> list[str] | Outcome:
    if isinstance(answer, TempFail):
        return Outcome(Fate.DEFERRED, "4.4.3", f"Host or domain name not found. Name service error for name={domain} type=MX: {answer}", None, False)
    if isinstance(answer, NotFound):
        if answer.nxdomain:
            return Outcome(Fate.BOUNCED, "5.1.2", f"Host or domain name not found. Name service error for name={domain} type=MX: Host not found", None, False)
        return [domain]
    mx = [r for r in answer if r.type == "MX"]
    if len(mx) == 1 and mx[0].data in (".", ""):
        return Outcome(Fate.BOUNCED, "5.1.10", f"Domain {domain} does not accept mail (nullMX)", None, False)
    rng = rng or random.Random()
    mx = [r for r in mx if r.data not in (".", "")]
    shuffled = sorted(mx, key=lambda r: (r.preference, rng.random()))
    hosts: list[str] = []
    for r in shuffled:
        if r.data.lower() not in (h.lower() for h in hosts):
            hosts.append(r.data)
    return hosts

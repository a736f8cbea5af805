"""The postscreen cache record: five expiry stamps per client IP, and the pure decisions on it.

DESCRIPTION
    Each record (Postfix postscreen_cache_map, `psc_print_tests`) is the client IP and

        "pregreet;dnsbl;pipelining;non_smtp;bare_newline"

    five decimal stamps: 0 = NEW (never passed), 1 = DISABLED (never passed, and the test
    was off when the record was written), otherwise the UNIX time at which that pass
    expires. Missing trailing fields (older writers) read as DISABLED; a record that does
    not parse at all reads as all DISABLED, as Postfix's sscanf does.

    Pure decisions, given the stamps, the enabled checks and `now`:
      checks_due      enabled checks with now > stamp (NEW and DISABLED are always due)
      is_pass_old     nothing due: the client skips every test ("PASS OLD")
      is_new          some stamp is NEW: passing all due tests logs "PASS NEW"
      record_passes   the record to write after a session in which tests passed
                      (new-and-disabled stamps become DISABLED, so enabling a test later
                      does not log "PASS NEW" again)
      allowlist_non_dnsbl   DNSWL allowlisting: every other stamp at least now + DNSBL TTL
      retain          cleanup: keep a record unless, evaluated at now - retention,
                      some enabled test would be due (psc_cache_validator)

    RecentRecords, in front of either store: each worker remembers for RECENT_TTL seconds
    the records it read or wrote, so a client that comes back within seconds (a busy
    sender, 50 sessions from one relay) costs no store round trip. A record changed by
    another worker or node, or deleted by an administrator, is seen at most RECENT_TTL
    seconds late.

    The stores that keep the records (SQLite, Redis) are in cache.py.

SECURITY
    Pure: a record read from a shared store is parsed as integers only.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, replace

from .checks import CACHED, Check

NEW = 0
DISABLED = 1

_FIELDS = {Check.PREGREET: "pregreet", Check.DNSBL: "dnsbl", Check.PIPELINING: "pipelining", Check.NON_SMTP: "non_smtp", Check.BARE_NEWLINE: "bare_newline"}


@dataclass(frozen=True, slots=True, kw_only=True)
class Stamps:
    """The five expiry stamps of one client (UNIX seconds, or NEW / DISABLED)."""

    pregreet: int = NEW
    dnsbl: int = NEW
    pipelining: int = NEW
    non_smtp: int = NEW
    bare_newline: int = NEW

    def get(self, check: Check) -> int:
        return getattr(self, _FIELDS[check])

    def with_stamps(self, stamps: Mapping[Check, int]) -> Stamps:
        return replace(self, **{_FIELDS[c]: int(v) for c, v in stamps.items()})

    def encode(self) -> str:
        return ";".join(str(self.get(c)) for c in CACHED)

    @classmethod
    def decode(cls, text: str) -> Stamps:
        """Postfix's sscanf("%lu;%lu;%lu;%lu;%lu"): leading fields that parse, the rest DISABLED."""
        values = []
        for field in text.split(";")[: len(CACHED)]:
            m = re.match(r"\s*(\d+)", field)
            if not m:
                break
            values.append(int(m.group(1)))
            if m.end() != len(field):
                break
        values += [DISABLED] * (len(CACHED) - len(values))
        return cls(**{_FIELDS[c]: v for c, v in zip(CACHED, values, strict=True)})


NEW_CLIENT = Stamps()


def checks_due(stamps: Stamps, enabled: Iterable[Check], now: float) -> frozenset[Check]:
    return frozenset(c for c in enabled if c in _FIELDS and now > stamps.get(c))


def is_pass_old(stamps: Stamps, enabled: Iterable[Check], now: float) -> bool:
    return not checks_due(stamps, enabled, now)


def is_new(stamps: Stamps) -> bool:
    return any(stamps.get(c) == NEW for c in CACHED)


def record_passes(stamps: Stamps, passed: Mapping[Check, float], enabled: Iterable[Check]) -> Stamps:
    """The record to write: passed checks get their expiry, new-and-disabled ones DISABLED."""
    on = frozenset(enabled)
    updated = {c: int(t) for c, t in passed.items()}
    for c in CACHED:
        if c not in updated and c not in on and stamps.get(c) == NEW:
            updated[c] = DISABLED
    return stamps.with_stamps(updated)


def allowlist_non_dnsbl(stamps: Stamps, now: float, ttl: float) -> Stamps:
    """DNSWL allowlisting (psc_allowlist_non_dnsbl): every non-DNSBL stamp, enabled or not,
    is raised to now + ttl unless it already expires later."""
    until = int(now + ttl)
    return stamps.with_stamps({c: max(stamps.get(c), until) for c in CACHED if c is not Check.DNSBL})


def retain(stamps: Stamps, enabled: Iterable[Check], now: float, retention: float) -> bool:
    return not checks_due(stamps, enabled, now - retention)



RECENT_TTL = 10.0  # seconds a worker trusts a record it read or wrote without asking the store
RECENT_LIMIT = 10_000  # records remembered per worker; the oldest goes first


class RecentRecords:
    """The records this worker read or wrote lately: ip -> (when, stamps). No I/O."""

    def __init__(self, ttl: float = RECENT_TTL, limit: int = RECENT_LIMIT) -> None:
        self.ttl = ttl
        self.limit = limit
        self._records: dict[str, tuple[float, Stamps]] = {}

    def get(self, ip: str, now: float) -> Stamps | None:
        hit = self._records.get(ip)
        if hit is None:
            return None
        if not 0 <= now - hit[0] < self.ttl:
            del self._records[ip]
            return None
        return hit[1]

    def put(self, ip: str, stamps: Stamps, now: float) -> None:
        self._records.pop(ip, None)
        if len(self._records) >= self.limit:
            del self._records[next(iter(self._records))]
        self._records[ip] = (now, stamps)

    def __len__(self) -> int:
        return len(self._records)

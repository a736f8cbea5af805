"""Connection rates per client IP (Postfix anvil's smtpd_client_connection_rate_limit), pure.

DESCRIPTION
    `RateCounter.hit(ip, now)` counts a new connection from `ip` and returns how many it
    made within the last `window` seconds (this one included). Each IP keeps a deque of
    its connection times, trimmed to the window and capped at `per_ip_cap` entries (a client far past any sane limit costs no more memory). At most
    `max_ips` IPs are tracked; the least recently seen is forgotten first.

    Totals across workers: app.py steers every connection of one client IP to the same
    worker (SO_REUSEPORT with a BPF program) whenever a per-IP limit is set, so the count a
    worker keeps is the client's true total.

SECURITY
    Bounded memory whatever the clients do (max_ips x per_ip_cap timestamps).

CONFIG
    server.limits.connection_rate_per_ip
"""

from __future__ import annotations

from collections import OrderedDict, deque


class RateCounter:
    def __init__(self, window: float = 60.0, *, max_ips: int = 65536, per_ip_cap: int = 10000) -> None:
        self.window = window
        self.max_ips = max_ips
        self.per_ip_cap = per_ip_cap
        self._hits: OrderedDict[str, deque[float]] = OrderedDict()

    def hit(self, ip: str, now: float) -> int:
        q = self._hits.get(ip)
        if q is None:
            if len(self._hits) >= self.max_ips:
                self._hits.popitem(last=False)
            q = self._hits[ip] = deque(maxlen=self.per_ip_cap)
        else:
            self._hits.move_to_end(ip)
        start = now - self.window
        while q and q[0] <= start:
            q.popleft()
        q.append(now)
        return len(q)

    def __len__(self) -> int:
        return len(self._hits)

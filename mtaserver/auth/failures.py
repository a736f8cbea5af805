"""Failed AUTH attempts per client address: when to stop listening to a password guesser.

DESCRIPTION
    `AuthFailures(max_failures, window)` keeps the times of the last `max_failures` failed
    authentications of each client. `blocked(ip, now)` is true once `max_failures` of them
    fell within `window` seconds of each other (less than `window` from first to last), and
    stays true until `window` seconds after the client's last failure. The session then answers every AUTH from that client, even
    one with the right password, with `421 4.7.0 Error: too many failed authentications`
    (model.TOO_MANY_FAILURES) and closes; refused attempts are not failures and do not
    extend the block. `max_failures = 0` turns the bookkeeping off. Success does not
    reset the count: a guesser that knows one password must not launder its failures.

    IPv6 clients are counted per /64 (one subscriber's allocation, RFC 6177), otherwise one
    host could rotate through 2^64 addresses; IPv4 per address.

    Memory is bounded: at most `max_clients` clients are tracked, each with at most
    `max_failures` times. Clients are kept in the order of their last failure; a new one
    evicts the one whose last failure is oldest, and entries past their window are dropped
    as `failed` walks by them. The state is per worker process: with N workers a client
    may get up to N * max_failures tries per window before each worker refuses it.

    Pure: no I/O, no clock; `now` is an argument (monotonic seconds).

SECURITY
    Reads the client address only. Bounded memory against address-rotating attackers.

CONFIG
    auth.max_failures, auth.failure_window
"""

from __future__ import annotations

import ipaddress
from collections import OrderedDict, deque

MAX_CLIENTS = 65536  # clients tracked per worker; ~100 bytes each with the default max_failures


def client_key(ip: str) -> str:
    """The unit of counting: the IPv4 address, or the IPv6 /64 (IPv4-mapped IPv6 as IPv4)."""
    try:
        addr = ipaddress.ip_address(ip.split("%", 1)[0])
    except ValueError:
        return ip
    if isinstance(addr, ipaddress.IPv6Address):
        if addr.ipv4_mapped is not None:
            return str(addr.ipv4_mapped)
        return str(ipaddress.IPv6Network((addr, 64), strict=False))
    return str(addr)


class AuthFailures:
    def __init__(self, max_failures: int, window: float = 600.0, *, max_clients: int = MAX_CLIENTS) -> None:
        if max_failures < 0 or window < 0 or max_clients < 1:
            raise ValueError("max_failures and window must be >= 0, max_clients >= 1")
        self.max_failures = max_failures
        self.window = window
        self.max_clients = max_clients
        self._times: OrderedDict[str, deque[float]] = OrderedDict()  # oldest last failure first

    def __len__(self) -> int:
        return len(self._times)

    def failed(self, ip: str, now: float) -> None:
        """Count one failed authentication of `ip` at `now`."""
        if self.max_failures == 0:
            return
        self._expire(now)
        key = client_key(ip)
        times = self._times.get(key)
        if times is None:
            times = self._times[key] = deque(maxlen=self.max_failures)
            while len(self._times) > self.max_clients:
                self._times.popitem(last=False)
        else:
            self._times.move_to_end(key)
        times.append(now)

    def blocked(self, ip: str, now: float) -> bool:
        """True when `ip` must be refused: max_failures failures within the window, the last < window ago."""
        if self.max_failures == 0:
            return False
        times = self._times.get(client_key(ip))
        if times is None or len(times) < self.max_failures:
            return False
        last = times[-1]
        return last - times[0] < self.window and now < last + self.window

    def _expire(self, now: float) -> None:
        """Drop clients whose last failure is a window old: nothing of theirs can count again."""
        while self._times:
            key, times = next(iter(self._times.items()))
            if now < times[-1] + self.window:
                break
            del self._times[key]

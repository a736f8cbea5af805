"""Issue 15, delivery hardening against real servers on loopback:

- a domain with many MX hosts costs one attempt at most outbound.mx_address_limit addresses and
  outbound.mx_session_limit sessions (Postfix smtp_mx_address_limit / smtp_mx_session_limit)
- the queue manager streams a 50 MB message to the next hop (SMTP and maildir at once): its
  process's peak RSS (VmHWM) grows by far less than the message
"""

from __future__ import annotations

import hashlib
import re
import smtplib
import socket
import threading

import pytest
from conftest import free_port
from dnsserver import Nsd, zone
from helpers import maildir_messages, send, wait_for

MB = 1024 * 1024
HOSTS = 12


class Counter:
    """Listens on 127.0.1.N:port for N in 1..HOSTS; counts connections; each gets `greeting`
    (or nothing) and is closed."""

    def __init__(self, port: int, greeting: bytes) -> None:
        self.count = 0
        self.greeting = greeting
        self.lock = threading.Lock()
        self.socks = []
        for n in range(1, HOSTS + 1):
            s = socket.create_server((f"127.0.1.{n}", port))
            s.settimeout(0.2)
            self.socks.append(s)
        self.running = True
        self.threads = [threading.Thread(target=self._serve, args=(s,), daemon=True) for s in self.socks]
        for t in self.threads:
            t.start()

    def _serve(self, s: socket.socket) -> None:
        while self.running:
            try:
                c, _ = s.accept()
            except (TimeoutError, OSError):
                continue
            with self.lock:
                self.count += 1
            try:
                if self.greeting:
                    c.sendall(self.greeting)
                    c.settimeout(2)
                    c.recv(100)  # QUIT
                    c.sendall(b"221 bye\r\n")
            except OSError:
                pass
            c.close()

    def stop(self) -> None:
        self.running = False
        for t in self.threads:
            t.join()
        for s in self.socks:
            s.close()


@pytest.fixture
def many_mx(tmp_path):
    records = "".join(f"@ MX 10 mx{n}\nmx{n} A 127.0.1.{n}\n" for n in range(1, HOSTS + 1))
    with Nsd(tmp_path, {"many.test": zone("many.test", records)}) as server:
        yield server


def _config(dns: Nsd, port: int, **outbound) -> dict:
    return {
        "server": {"dns": {"nameservers": [dns.address], "timeout": "1s"}},
        "outbound": {"smtp_port": port, **outbound},
        # one attempt within the test: the retry is an hour away
        "queue": {"manager": True, "min_backoff": "1h", "max_backoff": "2h"},
    }


@pytest.mark.parametrize("greeting, limits, expected", [
    (b"", {"mx_session_limit": 100}, 5),  # connections that never greet: sessions, bounded by the addresses (5)
    (b"421 4.3.2 busy\r\n", {"mx_address_limit": 100}, 2),  # sessions refused at the greeting: bounded by sessions (2)
    (b"421 4.3.2 busy\r\n", {"mx_address_limit": 3, "mx_session_limit": 3}, 3),
])  # fmt: skip
def test_one_attempt_tries_a_bounded_number_of_mx_hosts(make_mta, many_mx, greeting, limits, expected):
    port = free_port(*(f"127.0.1.{n}" for n in range(1, HOSTS + 1)))
    counter = Counter(port, greeting)
    try:
        mta = make_mta(_config(many_mx, port, **limits))
        send(mta, "s@client.test", ["a@many.test"])
        wait_for(lambda: "status=deferred" in mta.log(), what="the deferral")
        assert counter.count == expected, f"{counter.count} connections in one attempt"
        assert re.search(r"\d+ more host\(s\) not tried in this attempt \(outbound\.mx_(address|session)_limit\)", mta.log())
    finally:
        counter.stop()


class HashSink:
    """A minimal SMTP server that keeps only the SHA-256 and length of what it receives (no
    50 MB in memory), unstuffing dots."""

    def __init__(self) -> None:
        self.port = free_port()
        self.sock = socket.create_server(("127.0.0.1", self.port))
        self.received: list[tuple[int, str]] = []
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.thread.start()

    def _serve(self) -> None:
        while True:
            try:
                c, _ = self.sock.accept()
            except OSError:
                return
            threading.Thread(target=self._session, args=(c,), daemon=True).start()

    def _session(self, c: socket.socket) -> None:
        f = c.makefile("rb")
        c.sendall(b"220 sink\r\n")
        try:
            while line := f.readline():
                verb = line[:4].upper()
                if verb == b"EHLO":
                    c.sendall(b"250-sink\r\n250 8BITMIME\r\n")
                elif verb == b"DATA":
                    c.sendall(b"354 go\r\n")
                    h, n = hashlib.sha256(), 0
                    while (data := f.readline()) != b".\r\n":
                        if not data:
                            return
                        data = data[1:] if data.startswith(b".") else data
                        h.update(data)
                        n += len(data)
                    self.received.append((n, h.hexdigest()))
                    c.sendall(b"250 2.0.0 kept\r\n")
                elif verb == b"QUIT":
                    c.sendall(b"221 bye\r\n")
                    return
                else:
                    c.sendall(b"250 ok\r\n")
        finally:
            c.close()

    def close(self) -> None:
        self.sock.close()


def _message(total: int) -> bytes:
    head = b"Subject: big\r\n\r\n"
    line = b"." + b"x" * 76 + b"\r\n"  # every line needs dot-stuffing on the wire
    return head + line * ((total - len(head)) // len(line) + 1)


def test_a_50mb_message_is_streamed_to_the_next_hop(make_mta):
    sink = HashSink()
    try:
        mta = make_mta({
            "advanced": {"max_message_size": "100M"}, "server": {"limits": {"data_timeout": "30s"}},
            "queue": {"manager": True}, "outbound": {"relay_host": f"[127.0.0.1]:{sink.port}"},
        })  # fmt: skip
        send(mta, "s@client.test", ["a@remote.test", "user@example.test"])  # warm up: both paths once
        wait_for(lambda: len(sink.received) == 1 and maildir_messages(mta, "user@example.test"), what="the first delivery")
        before = mta.rss_kib()["VmHWM"]
        body = _message(50 * MB)
        with smtplib.SMTP("127.0.0.1", mta.port, source_address=("127.0.0.1", 0), timeout=120) as c:
            assert c.sendmail("s@client.test", ["a@remote.test", "user@example.test"], body) == {}
        wait_for(lambda: len(sink.received) == 2 and len(maildir_messages_names(mta)) == 2, timeout=120, what="the 50 MB delivery")
        after = mta.rss_kib()["VmHWM"]
        n, digest = sink.received[1]
        assert n > 50 * MB and n > len(body)  # our Received: header on top
        delivered = mta.data_dir / "mail" / "example.test" / "user" / "new"
        assert max(p.stat().st_size for p in delivered.iterdir()) > 49 * MB  # LF line endings in maildir
        growth = (after - before) / 1024
        assert growth < 20, f"peak RSS of the queue manager's process grew by {growth:.1f} MB for a 50 MB message"
        assert digest  # the content itself is checked by the dot-stuffing unit tests
    finally:
        sink.close()


def maildir_messages_names(mta) -> list[str]:
    new = mta.data_dir / "mail" / "example.test" / "user" / "new"
    return sorted(p.name for p in new.iterdir()) if new.exists() else []

#!/usr/bin/env python3
"""Where a lone client's time goes: the median time of each SMTP step, Postfix and mtaserver.

usage: .venv/bin/python bench/latency.py [--messages N] [--size BYTES] [--per-conn K] [--src TREE]

Starts the throwaway Postfix and mtaserver of bench.py (same configs, same sinks), then, for
each server in turn (alternating, 3 rounds), sends N messages one connection each, the way
`smtp-source -s 1` does (connect, greeting, HELO, MAIL, RCPT, DATA, content and dot, QUIT;
with --per-conn K, K messages per connection, as `smtp-source -d` sends them), and times each step from the moment its bytes are sent to the moment its whole reply is
in. It prints the median and 90th percentile per step, so a gap in the single-session
scenarios can be traced to the step that causes it (the commit, say, or the greeting).
Blocking sockets, one client: it measures latency, not throughput.
"""

from __future__ import annotations

import argparse
import shutil
import socket
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import bench as B  # noqa: E402

OUT = Path(__file__).resolve().parent / "out"  # where bench.py works (not /tmp: see cpu_split.py)
STEPS = ("connect+greeting", "HELO", "MAIL", "RCPT", "DATA", "content+dot", "QUIT")


def one_connection(port: int, body: bytes, messages: int = 1) -> list[list[float]]:
    """Per message, the time of each step in STEPS; the connection's own steps (connect,
    HELO, QUIT) are counted with its first and last message."""
    times: list[float] = []
    out = []
    t = time.perf_counter()
    s = socket.create_connection(("127.0.0.1", port))
    s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    f = s.makefile("rb")

    def reply() -> bytes:
        while True:
            line = f.readline()
            if not line:
                raise ConnectionError("connection closed")
            if line[3:4] != b"-":
                return line

    def step(data: bytes | None, expect: bytes) -> None:
        nonlocal t
        if data is not None:
            t = time.perf_counter()
            s.sendall(data)
        line = reply()
        times.append(time.perf_counter() - t)
        if not line.startswith(expect):
            raise RuntimeError(f"unexpected reply {line!r}")

    step(None, b"220")
    step(f"HELO {B.HELO}\r\n".encode(), b"250")
    for i in range(messages):
        if i:
            times = [0.0, 0.0]  # connect and HELO belong to the first message
        step(f"MAIL FROM:<{B.SENDER}>\r\n".encode(), b"250")
        step(f"RCPT TO:<{B.RCPT}>\r\n".encode(), b"250")
        step(b"DATA\r\n", b"354")
        step(body + b".\r\n", b"250")
        out.append(times)
    step(b"QUIT\r\n", b"221")  # goes with the last message
    for row in out[:-1]:
        row.append(0.0)
    f.close()
    s.close()
    return out


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--messages", type=int, default=1000)
    p.add_argument("--size", type=int, default=1024)
    p.add_argument("--per-conn", type=int, default=1, help="messages per connection (default 1)")
    p.add_argument("--src", help="mtaserver source tree, as for bench.py")
    a = p.parse_args()
    args = B.parse_args(["--reps", "1"])
    if a.src:
        B.MTA_SRC = Path(a.src).resolve()
    B.ensure_packages()
    line = b"X" * 70 + b"\r\n"
    body = b"Subject: latency probe\r\n\r\n" + line * max(1, a.size // len(line))
    OUT.mkdir(exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix="mtaserver-latency-", dir=OUT))
    work.chmod(0o755)  # Postfix's daemons run as postfix and must reach their queue
    pf = B.Postfix(work, args)
    mt = B.Mtaserver(work, args)
    results: dict[str, list[list[float]]] = {"postfix": [], "mtaserver": []}
    try:
        pf.setup()
        mt.setup()
        mt.start("latency")
        for server in (pf, mt):
            for _ in range(50):  # warm up
                one_connection(server.port, body)
        for _round in range(3):
            for server in (pf, mt):
                for _ in range(max(1, a.messages // 3 // a.per_conn)):
                    results[server.name] += one_connection(server.port, body, a.per_conn)
    finally:
        mt.stop()
        for server in (mt, pf):
            try:
                server.teardown()
            finally:
                server.sink.stop()
                server.cpu.close()
        shutil.rmtree(work, ignore_errors=True)
    print(f"# median / p90 per step in ms, {a.messages} messages of {a.size} bytes each, {a.per_conn} per connection"
          + (" (connect, HELO and QUIT: medians over connections)" if a.per_conn > 1 else ""))
    print("| step | Postfix median | mtaserver median | Postfix p90 | mtaserver p90 |")
    print("|---|---|---|---|---|")
    for i, name in enumerate(STEPS + ("whole message",)):
        cols = []
        for stat in (statistics.median, lambda xs: statistics.quantiles(xs, n=10)[-1]):
            for server in ("postfix", "mtaserver"):
                rows = results[server]
                if i in (0, 1, len(STEPS) - 1) and a.per_conn > 1:  # once per connection
                    rows = rows[0 :: a.per_conn] if i < 2 else rows[a.per_conn - 1 :: a.per_conn]
                xs = [sum(r) if i == len(STEPS) else r[i] for r in rows]
                cols.append(f"{stat(xs) * 1000:.3f}")
        print(f"| {name} | {cols[0]} | {cols[1]} | {cols[2]} | {cols[3]} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())

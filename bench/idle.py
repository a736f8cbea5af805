"""Idle connections: memory per connection, and a new client is still served meanwhile.

Starts mtaserver (receive only, one worker, connections_per_ip 0) on 127.0.0.1:2593, opens N
silent connections from 127.0.0.2-9 (each waits for its 220), reads the server's RSS, then
times one fresh EHLO/QUIT session. Stops the server by PID.

    .venv/bin/python bench/idle.py 10000     # raises its own fd limit (the server inherits it)
"""

import asyncio
import resource
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

PORT = 2593


def rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise RuntimeError("no VmRSS")


async def load(n: int, pid: int) -> str:
    base = rss_kib(pid)
    conns = []
    t0 = time.monotonic()
    for i in range(n):
        conns.append(await asyncio.open_connection("127.0.0.1", PORT, local_addr=(f"127.0.0.{2 + i % 8}", 0)))
    for r, _ in conns:
        assert (await r.readline()).startswith(b"220")
    t1 = time.monotonic()
    after = rss_kib(pid)
    t2 = time.monotonic()
    r, w = await asyncio.open_connection("127.0.0.1", PORT)
    await r.readline()
    w.write(b"EHLO bench.test\r\nQUIT\r\n")
    await w.drain()
    last = (await r.read()).splitlines()[-1]
    t3 = time.monotonic()
    for _, w2 in conns:
        w2.close()
    return (f"{n} idle connections opened and greeted in {t1 - t0:.1f} s; server RSS {base} -> {after} KiB "
            f"= {(after - base) * 1024 / n:.0f} bytes per connection; a new client served in {(t3 - t2) * 1000:.1f} ms "
            f"({last.decode()})")


def main() -> None:
    n = int(sys.argv[1]) if len(sys.argv) > 1 else 10000
    resource.setrlimit(resource.RLIMIT_NOFILE, (n + 1000, n + 1000))
    work = Path(tempfile.mkdtemp(prefix="mta-idle-"))
    (work / "c.yaml").write_text(
        f"server: {{hostname: mx.bench.test, data_dir: {work}/var, workers: 1,"
        f" listeners: [{{name: smtp, address: '127.0.0.1:{PORT}'}}], limits: {{connections_per_ip: 0}}}}\n"
        "domains: {local: [bench.test]}\nqueue: {manager: false}\nadvanced: {log_level: warning}\n"
    )
    mta = subprocess.Popen([sys.executable, "-m", "mtaserver", "run", "-c", str(work / "c.yaml")], stderr=open(work / "log", "wb"))
    try:
        time.sleep(1.5)
        print(asyncio.run(load(n, mta.pid)))
    finally:
        mta.send_signal(signal.SIGTERM)
        mta.wait(30)


if __name__ == "__main__":
    main()

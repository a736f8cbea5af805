"""postscreen cost: how fast DNSBL-listed clients are dropped, and what a cached client pays.

Usage:  .venv/bin/python bench/postscreen.py [--drops 2000] [--concurrency 50] [--greetings 500]

Starts (and stops, by PID) its own NSD on 127.0.0.1 serving a DNSBL zone that lists
127.0.0.2, and mtaserver processes (workers: 1, queue manager off) with JSON configs (JSON is
YAML). Stdlib only, apart from the nsd binary.

  1. drop rate: postscreen on, dnsbl action drop, greet.banner "" (pregreet off, so the
     verdict comes as soon as the DNS answer does), server.limits.connections_per_ip 0.
     N connections from 127.0.0.2, C at a time; each reads the 521 and sees the close.
     Reported: connections/s and the share that really got the 521.
  2. greeting latency: connect -> full "220 " greeting, one connection at a time, from
     127.0.0.3, (a) postscreen on and the client cached (PASS OLD: one cache lookup),
     (b) the same listener with postscreen off. Median and p99 in ms.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PY = str(ROOT / ".venv" / "bin" / "python")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_nsd(d: Path) -> tuple[subprocess.Popen[bytes], int]:
    port = free_port()
    zone = "$ORIGIN bl.test.\n$TTL 3600\n@ IN SOA ns.bl.test. h.bl.test. 1 3600 600 86400 300\n@ IN NS ns.bl.test.\nns IN A 127.0.0.1\n2.0.0.127 A 127.0.0.2\n"
    (d / "bl.test.zone").write_text(zone)
    conf = f"""server:
  ip-address: 127.0.0.1@{port}
  zonesdir: "{d}"
  username: ""
  chroot: ""
  pidfile: "{d}/nsd.pid"
  xfrdfile: "{d}/xfrd.state"
  zonelistfile: "{d}/zone.list"
  logfile: "{d}/nsd.log"
  database: ""
  server-count: 1
remote-control:
  control-enable: no
zone:
  name: "bl.test"
  zonefile: "bl.test.zone"
"""
    (d / "nsd.conf").write_text(conf)
    nsd = shutil.which("nsd") or "/usr/sbin/nsd"
    proc = subprocess.Popen([nsd, "-d", "-c", str(d / "nsd.conf")], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    time.sleep(0.5)
    return proc, port


def start_mta(d: Path, dns_port: int, *, postscreen: bool, ps: dict) -> tuple[subprocess.Popen[bytes], int]:
    d.mkdir(parents=True, exist_ok=True)
    port = free_port()
    cfg = {
        "server": {
            "hostname": "mx.bench.test", "data_dir": str(d / "var"), "workers": 1,
            "listeners": [{"name": "smtp", "address": f"127.0.0.1:{port}", "postscreen": postscreen}],
            "dns": {"nameservers": [f"127.0.0.1:{dns_port}"], "timeout": 2},
            "limits": {"connections_per_ip": 0},
        },
        "domains": {"local": ["bench.test"]},
        "outbound": {"mynetworks": ["127.0.0.1/32"]},
        "queue": {"manager": False},
        "advanced": {"log_level": "warning"},
        "postscreen": ps,
    }  # fmt: skip
    (d / "mtaserver.yaml").write_text(json.dumps(cfg))
    log = open(d / "mtaserver.log", "ab")
    proc = subprocess.Popen([PY, "-m", "mtaserver", "run", "-c", str(d / "mtaserver.yaml")], stdout=log, stderr=subprocess.STDOUT, cwd=ROOT)
    deadline = time.monotonic() + 15
    while time.monotonic() < deadline:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
            return proc, port
        except OSError:
            time.sleep(0.05)
    raise RuntimeError("mtaserver did not start: " + (d / "mtaserver.log").read_text())


def stop(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


async def one_drop(port: int) -> bool:
    reader, writer = await asyncio.open_connection("127.0.0.1", port, local_addr=("127.0.0.2", 0))
    try:
        data = await reader.read()  # until the server closes
        return data.startswith(b"521 ")
    finally:
        writer.close()


async def drops(port: int, n: int, concurrency: int) -> tuple[float, int]:
    sem = asyncio.Semaphore(concurrency)

    async def run() -> bool:
        async with sem:
            try:
                return await one_drop(port)
            except OSError:
                return False

    t0 = time.perf_counter()
    results = await asyncio.gather(*(run() for _ in range(n)))
    return time.perf_counter() - t0, sum(results)


def greeting_latencies(port: int, n: int, source: str = "127.0.0.3") -> list[float]:
    out = []
    for _ in range(n):
        t0 = time.perf_counter()
        s = socket.create_connection(("127.0.0.1", port), source_address=(source, 0))
        buf = b""
        while b"\r\n" not in buf or not buf.split(b"\r\n")[-2].startswith(b"220 "):
            chunk = s.recv(4096)
            if not chunk:
                break
            buf += chunk
        out.append(time.perf_counter() - t0)
        s.sendall(b"QUIT\r\n")
        s.close()
    return out


def pct(xs: list[float], p: float) -> float:
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(p * len(xs)))]


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--drops", type=int, default=2000)
    ap.add_argument("--concurrency", type=int, default=50)
    ap.add_argument("--greetings", type=int, default=500)
    args = ap.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="psbench-"))
    nsd, dns_port = start_nsd(tmp)
    procs = [nsd]
    try:
        drop_ps = {"access_list": [], "greet": {"banner": "", "wait": 6}, "dnsbl": {"sites": ["bl.test"], "action": "drop"}}
        mta, port = start_mta(tmp / "drop", dns_port, postscreen=True, ps=drop_ps)
        procs.append(mta)
        asyncio.run(drops(port, 100, args.concurrency))  # warm-up
        elapsed, ok = asyncio.run(drops(port, args.drops, args.concurrency))
        print(f"drop: {args.drops} connections from 127.0.0.2, {args.concurrency} at a time: {elapsed:.2f} s, "
              f"{args.drops / elapsed:.0f} conn/s, {ok} got 521")  # fmt: skip
        stop(mta)
        procs.remove(mta)

        cached_ps = {"access_list": [], "greet": {"wait": 1}, "dnsbl": {"sites": ["bl.test"], "action": "drop"}}
        on, on_port = start_mta(tmp / "on", dns_port, postscreen=True, ps=cached_ps)
        off, off_port = start_mta(tmp / "off", dns_port, postscreen=False, ps=cached_ps)
        procs += [on, off]
        first = greeting_latencies(on_port, 1)[0]  # screened once: teaser, 1 s wait, PASS NEW
        greeting_latencies(on_port, 50)
        greeting_latencies(off_port, 50)  # warm-up
        res = {}
        for name, p in (("postscreen off", off_port), ("postscreen on, PASS OLD", on_port), ("postscreen off (again)", off_port)):
            lat = greeting_latencies(p, args.greetings)
            res[name] = lat
            print(f"greeting {name}: n={len(lat)} median {statistics.median(lat) * 1000:.3f} ms, p99 {pct(lat, 0.99) * 1000:.3f} ms")
        print(f"first (screened) connection of 127.0.0.3: {first * 1000:.0f} ms (greet.wait 1 s)")
    finally:
        for p in procs:
            stop(p)
        shutil.rmtree(tmp, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())

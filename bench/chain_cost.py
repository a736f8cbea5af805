#!/usr/bin/env python3
"""What the content-filter chain costs one message: latency at the client and CPU, per filter set.

usage: .venv/bin/python bench/chain_cost.py [--messages N] [--sizes 1K,100K] [--sets off,attachments,...]

Starts a real spamd and clamd (tests/integration/scanners.py: Debian's rules, the test signature
database), then for each filter set an mtaserver (workers: 1, no queue manager) on the bench's
own config, and sends N messages, one after the other, over one SMTP session from 127.0.0.2 (an
outside client: every inbound filter applies) or from 127.0.0.1 (trusted: the set "sign").
Each message is a multipart with a text part and a base64 attachment (report.pdf) of the size's
remainder, so the MIME walk and clamd have a part to decode.

Reported per set and size:
  p50/p90 ms   the time from the client's "." to the server's 250 (one session: no connection
               cost in it); the chain's latency is this minus the set "off"'s
  mta ms/msg   CPU (user+system) of the mtaserver process per message
  scan ms/msg  CPU of spamd (all its processes) and clamd per message: what the scanners add
               on the same machine

Sets: off (no filter: antivirus, antispam and DKIM verification off, no blocked extension, no
originating headers), attachments (blocked_extensions @common), clamd, spamd, dkim (verify),
all (the four), sign (all + DKIM signing of trusted mail, sent from 127.0.0.1).
The machine is shared: run it idle, compare sets of the same run.
"""

from __future__ import annotations

import argparse
import base64
import os
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "tests" / "integration"))
sys.path.insert(0, str(REPO / "tests"))

from scanners import Clamd, Spamd  # noqa: E402

SETS = ("off", "attachments", "clamd", "spamd", "dkim", "all", "sign")


def size_of(text: str) -> int:
    return int(text[:-1]) * 1024 if text[-1] in "Kk" else int(text)


def message(size: int, i: int) -> bytes:
    head = (
        f"From: Alice <alice@example.test>\r\nTo: Bob <bob@example.test>\r\nSubject: report {i}\r\n"
        f"Date: Tue, 01 Dec 2026 12:00:00 +0000\r\nMessage-ID: <bench-{i}-{time.time_ns()}@example.test>\r\n"
        'MIME-Version: 1.0\r\nContent-Type: multipart/mixed; boundary="b1"\r\n\r\n'
        "--b1\r\nContent-Type: text/plain\r\n\r\nHello Bob,\r\nthe report is attached.\r\n"
        '--b1\r\nContent-Type: application/pdf; name="report.pdf"\r\nContent-Transfer-Encoding: base64\r\n'
        'Content-Disposition: attachment; filename="report.pdf"\r\n\r\n'
    ).encode()
    raw = os.urandom(max(0, (size - len(head) - 20) * 3 // 4))
    return head + base64.encodebytes(raw).replace(b"\n", b"\r\n") + b"--b1--\r\n"


def cpu_of(pids: list[int]) -> float:
    tick = os.sysconf("SC_CLK_TCK")
    total = 0.0
    for pid in pids:
        try:
            f = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
            total += (int(f[11]) + int(f[12]) + int(f[13]) + int(f[14])) / tick  # utime stime cutime cstime
        except (OSError, IndexError):
            pass
    return total


def children(pid: int) -> list[int]:
    out = [pid]
    for p in Path("/proc").iterdir():
        if p.name.isdigit():
            try:
                if int((p / "stat").read_text().rsplit(")", 1)[1].split()[1]) == pid:
                    out += children(int(p.name))
            except (OSError, IndexError):
                pass
    return out


class Client:
    def __init__(self, port: int, source: str) -> None:
        self.s = socket.create_connection(("127.0.0.1", port), timeout=120, source_address=(source, 0))
        self.s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)  # the "." must not wait for a delayed ACK
        self.f = self.s.makefile("rb")
        self.reply()
        self.cmd(b"EHLO bench.example.test")

    def reply(self) -> bytes:
        while True:
            line = self.f.readline()
            if not line or line[3:4] != b"-":
                return line

    def cmd(self, line: bytes) -> bytes:
        self.s.sendall(line + b"\r\n")
        return self.reply()

    def send(self, content: bytes) -> tuple[float, bytes]:
        self.s.sendall(b"MAIL FROM:<alice@example.test>\r\nRCPT TO:<bob@example.test>\r\nDATA\r\n")
        for _ in range(3):
            r = self.reply()
        assert r.startswith(b"354"), r
        self.s.sendall(content)
        start = time.perf_counter()
        self.s.sendall(b".\r\n")
        r = self.reply()
        return time.perf_counter() - start, r

    def close(self) -> None:
        self.cmd(b"QUIT")
        self.s.close()


def config(work: Path, port: int, spamd: Spamd, clamd: Clamd, which: str) -> Path:
    on = {"attachments", "clamd", "spamd", "dkim"} if which in ("all", "sign") else {which}
    cfg = {
        "server": {"hostname": "mx.example.test", "data_dir": str(work / "var"), "workers": 1,
                   "listeners": [{"name": "smtp", "address": f"127.0.0.1:{port}"}],
                   "peername_lookup": False, "limits": {"error_sleep": 0}},
        "domains": {"local": ["example.test"]},
        "inbound": {"blocked_extensions": ["@common"] if "attachments" in on else [],
                    "protocol_checks": {"reject_unknown_sender_domain": False}, "reject_sender_login_mismatch": False},
        "outbound": {"mynetworks": ["127.0.0.1/32"], "add_client_ip_header": which != "off"},
        "antispam": {"enabled": "spamd" in on, "spamd": {"address": spamd.address, "max_size": "500K"}},
        "antivirus": {"enabled": "clamd" in on, "clamd": {"address": clamd.address}, "definitions": {"freshclam": False}},
        "dkim": {"verify": "dkim" in on},
        "queue": {"manager": False},
        "admin": {"listen": None},
    }  # fmt: skip
    if which == "sign":
        from mtaserver.filters.dkim import new_key, write_key

        key_dir = work / "var" / "dkim"

        write_key(key_dir / "example.test.bench.key", new_key("rsa"), force=True)
        cfg["dkim"]["sign"] = [{"domain": "example.test", "selector": "bench", "key": "dkim/example.test.bench.key"}]
    path = work / "mtaserver.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def run_set(which: str, size: int, n: int, spamd: Spamd, clamd: Clamd) -> dict:
    work = Path(tempfile.mkdtemp(prefix=f"chain-{which}-"))
    port = free_port()
    path = config(work, port, spamd, clamd, which)
    logf = open(work / "mtaserver.log", "wb")  # noqa: SIM115
    proc = subprocess.Popen([sys.executable, "-m", "mtaserver", "run", "-c", str(path)], stdout=logf, stderr=subprocess.STDOUT, cwd=REPO)
    try:
        deadline = time.monotonic() + 20
        while b"ready:" not in (work / "mtaserver.log").read_bytes():
            if proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError((work / "mtaserver.log").read_text())
            time.sleep(0.05)
        source = "127.0.0.1" if which == "sign" else "127.0.0.2"
        c = Client(port, source)
        msgs = [message(size, i) for i in range(n + 5)]
        for m in msgs[:5]:  # warm-up: imports, first connections to the scanners
            c.send(m)
        scan_pids = children(spamd.proc.pid) + children(clamd.proc.pid)
        mta0, scan0 = cpu_of([proc.pid]), cpu_of(scan_pids)
        times = []
        for m in msgs[5:]:
            t, r = c.send(m)
            assert r.startswith(b"250"), (which, r)
            times.append(t * 1000)
        mta1, scan1 = cpu_of([proc.pid]), cpu_of(scan_pids)
        c.close()
    finally:
        proc.terminate()
        proc.wait(20)
        logf.close()
        shutil.rmtree(work, ignore_errors=True)
    times.sort()
    return {
        "p50": statistics.median(times), "p90": times[int(len(times) * 0.9) - 1],
        "mta": (mta1 - mta0) * 1000 / n, "scan": (scan1 - scan0) * 1000 / n,
    }  # fmt: skip


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--messages", type=int, default=200)
    ap.add_argument("--sizes", default="1K,100K")
    ap.add_argument("--sets", default=",".join(SETS))
    args = ap.parse_args()
    spamd = Spamd().start()
    clamd = Clamd().start()
    try:
        print(f"| set | size | p50 ms | p90 ms | mtaserver CPU ms/msg | spamd+clamd CPU ms/msg |  ({args.messages} messages, one session)")
        print("|---|---|---|---|---|---|")
        for size_text in args.sizes.split(","):
            for which in args.sets.split(","):
                r = run_set(which, size_of(size_text), args.messages, spamd, clamd)
                print(f"| {which} | {size_text} | {r['p50']:.2f} | {r['p90']:.2f} | {r['mta']:.2f} | {r['scan']:.2f} |", flush=True)
    finally:
        spamd.stop()
        clamd.stop()


if __name__ == "__main__":
    main()

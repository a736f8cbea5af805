#!/usr/bin/env python3
"""CPU per message of each mtaserver process under smtp-source load, user and system apart.

usage: .venv/bin/python bench/cpu_split.py [--workers N] [--no-delivery] [--messages N]
                                           [--sessions S] [--size BYTES] [--keep-open] [--perf] [--cprofile DIR]

Starts its own smtp-sink and mtaserver (bench/mtaserver.yaml, in a temporary directory), warms
up with 200 messages, then reads /proc/PID/task/*/stat of every mtaserver process before and
after `smtp-source -s S -m N`. With --perf it also records `perf record -g` of those processes
into perf.data in the temporary directory (kept, path printed) for `perf report`. With
--cprofile DIR every mtaserver process runs under cProfile (MTASERVER_CPROFILE=DIR) and writes
DIR/<role>-<index>-<pid>.prof when it stops (warm-up included; the CPU figures are then the
profiler's, not the server's). This is how the
figures "user / sys per message" in bench/RESULTS.md were taken; bench.py gives the totals.
"""

from __future__ import annotations

import argparse
import collections
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

BENCH = Path(__file__).resolve().parent
MTASERVER = BENCH.parent / ".venv" / "bin" / "mtaserver"
# Where bench.py works too: on this machine creating a file under /tmp took 1.5 ms against
# 0.04-0.17 ms elsewhere on the same file system (bench/RESULTS.md, step 9).
OUT = BENCH / "out"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def tree(pid: int) -> list[int]:
    out = [pid]
    for p in os.listdir("/proc"):
        if p.isdigit():
            try:
                ppid = int(open(f"/proc/{p}/stat").read().rsplit(")", 1)[1].split()[1])
            except OSError:
                continue
            if ppid == pid:
                out += tree(int(p))
    return out


def snapshot(root: int) -> dict[tuple[int, str], tuple[int, int]]:
    """(pid, tid) -> (utime, stime) in clock ticks, for every thread of the process tree."""
    d = {}
    for pid in tree(root):
        for tid in os.listdir(f"/proc/{pid}/task"):
            try:
                f = open(f"/proc/{pid}/task/{tid}/stat").read().rsplit(")", 1)[1].split()
            except OSError:
                continue
            d[(pid, tid)] = (int(f[11]), int(f[12]))
    return d


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--no-delivery", action="store_true", help="queue.manager: false (receive and queue only)")
    p.add_argument("--messages", type=int, default=5000)
    p.add_argument("--sessions", type=int, default=10)
    p.add_argument("--size", type=int, default=1024)
    p.add_argument("--keep-open", action="store_true", help="smtp-source -d: all of a session's messages on one connection")
    p.add_argument("--perf", action="store_true")
    p.add_argument("--cprofile", metavar="DIR", help="cProfile every mtaserver process into DIR (MTASERVER_CPROFILE)")
    a = p.parse_args()
    OUT.mkdir(exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix="mtaserver-cpu-", dir=OUT))
    port, sink_port = free_port(), free_port()
    cfg = (BENCH / "mtaserver.yaml").read_text()
    for k, v in {"DATA_DIR": str(work / "var"), "WORKERS": str(a.workers), "PORT": str(port), "SINK_PORT": str(sink_port),
                 "ADMIN_PORT": str(free_port()), "POSTSCREEN": "false", "ANTISPAM": "{enabled: false}",
                 "ANTIVIRUS": "{enabled: false}"}.items():  # fmt: skip
        cfg = cfg.replace(f"@{k}@", v)
    if a.no_delivery:
        cfg += "queue:\n  manager: false\n"
    (work / "mtaserver.yaml").write_text(cfg)
    sink = subprocess.Popen(["/usr/sbin/smtp-sink", "-u", "nobody", "-m", "1000", f"127.0.0.1:{sink_port}", "1024"])
    env = dict(os.environ)
    if a.cprofile:
        os.makedirs(a.cprofile, exist_ok=True)
        env["MTASERVER_CPROFILE"] = os.path.abspath(a.cprofile)
    mta = subprocess.Popen([str(MTASERVER), "run", "-c", str(work / "mtaserver.yaml")], env=env,
                           stdout=open(work / "mtaserver.log", "wb"), stderr=subprocess.STDOUT)  # fmt: skip
    try:
        for _ in range(200):
            try:
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
                break
            except OSError:
                time.sleep(0.05)

        def load(n: int) -> None:
            subprocess.run(["/usr/sbin/smtp-source", "-c", "-s", str(a.sessions), "-m", str(n), "-l", str(a.size),
                            "-f", "sender@client.test", "-t", "rcpt@bench.test", *(["-d"] if a.keep_open else []),
                            f"127.0.0.1:{port}"],
                           check=True, stdout=subprocess.DEVNULL)  # fmt: skip

        load(200)
        time.sleep(1.5)
        before = snapshot(mta.pid)
        perf = None
        if a.perf:
            pids = ",".join(str(x) for x in tree(mta.pid))
            perf = subprocess.Popen(["perf", "record", "-q", "-g", "-o", str(work / "perf.data"), "-p", pids], stderr=subprocess.DEVNULL)
        t0 = time.monotonic()
        load(a.messages)
        elapsed = time.monotonic() - t0
        if perf is not None:
            perf.send_signal(signal.SIGINT)
            perf.wait()
        time.sleep(0.1 if a.no_delivery else 1.0)  # deliveries still under way
        after = snapshot(mta.pid)
    finally:
        mta.terminate()
        mta.wait()
        sink.terminate()
        sink.wait()
    hz = os.sysconf("SC_CLK_TCK")
    per = collections.defaultdict(lambda: [0, 0])
    for (pid, tid), (u, s) in after.items():
        u0, s0 = before.get((pid, tid), (0, 0))
        per[pid][0] += u - u0
        per[pid][1] += s - s0
    us = 1e6 / hz / a.messages
    total = 0
    for pid, (u, s) in sorted(per.items()):
        if u + s:
            role = "supervisor" if pid == mta.pid else f"pid {pid}"
            print(f"{role:12s} user {u * us:6.0f} us/msg  sys {s * us:6.0f} us/msg")
            total += u + s
    print(f"total {total * us:.0f} us/msg; {a.messages / elapsed:.0f} msgs/s accepted")
    if a.perf:
        print(f"perf data: {work / 'perf.data'} (perf report -i ... --no-children --sort sym)")
    else:
        shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())

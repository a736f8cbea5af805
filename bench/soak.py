#!/usr/bin/env python3
"""Soak test: load + kill -9 + restart, many times; no acknowledged message may be lost.

usage: .venv/bin/python bench/soak.py [--cycles N] [--messages N] [--sessions S] [--per-session K]
                                      [--size BYTES] [--sink-delay SECONDS] [--seed N] [--keep]

DESCRIPTION
    Starts an aiosmtpd sink on 127.0.0.1 that records every message it is given, and a real
    `mtaserver run` (server.workers 2, the queue manager on, everything for soak.test relayed
    to the sink). Then, N cycles (default 100) of:

      load   S sessions at once (default 20), each sending up to K messages (default 5) per
             connection and connecting again, until M messages (default 300) of the cycle
             were acknowledged with "250 2.0.0 Ok: queued as <id>". Every message carries a
             unique X-Soak-Id; the token and the queue id the client was told are recorded.
      kill   at a random moment of the load (when a random share, 5-95 %, of the cycle's
             messages were acknowledged): kill -9 of, in turn, the supervisor, an SMTP
             worker, or the queue manager's process.
      restart  supervisor: its workers get SIGTERM from the kernel (PR_SET_PDEATHSIG) and
             stop; once every process of the old tree is gone a new `mtaserver run` starts
             (recovery puts active/ back into incoming/). A worker or the queue manager: the
             supervisor starts it again; the cycle waits for its "ready" line.

    Clients whose session breaks connect again (the messages they were sending when it broke
    were not acknowledged: they are not counted, though they may arrive). At the end the
    script waits for the queue to drain (incoming/, active/, deferred/ empty and every
    acknowledged message at the sink), stops the server and prints a summary:

      cycles, kills of each kind, messages acknowledged, acknowledged and delivered,
      deliveries at the sink, duplicates (deliveries beyond the first of a message: allowed,
      at-least-once), lost (acknowledged, never delivered: must be 0), delivered without an
      acknowledgement (allowed), queue ids that differ from the one the client was told, files
      in corrupt/, restart times, the wall time.

    Exit status 0 when nothing was lost and every restart happened, 1 otherwise. Not part of
    `make test`: a cycle takes about 2 s here (100 cycles: about 4 minutes on 2 cores, extrapolated).

    Work directory bench/out/soak-<time>/ (config, data_dir, server log), removed at the end
    unless --keep or something was lost.

SECURITY
    Loopback only. Every process is started here and stopped by its pid.

CONFIG
    Writes its own: server.workers 2, queue.manager true, outbound.relay_host (the sink),
    queue.min_backoff 1s / max_backoff 5s (a delivery the kill interrupted is retried soon).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import re
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

from aiosmtpd.controller import Controller

BENCH = Path(__file__).resolve().parent
ROOT = BENCH.parent
OUT = BENCH / "out"
KINDS = ("supervisor", "worker", "qmgr")
_TOKEN = re.compile(rb"^X-Soak-Id: (\S+)\r?$", re.MULTILINE)
_QID = re.compile(rb"\bid ([0-9A-HJKMNP-TV-Z]{17})\b")
_QUEUED = re.compile(r"queued as ([0-9A-HJKMNP-TV-Z]{17})")
_READY = re.compile(r"\[(\d+)\]: (?:worker (\d+) ready|(queue manager process ready))")


def log(msg: str) -> None:
    print(f"{time.strftime('%H:%M:%S')} {msg}", flush=True)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def alive(pid: int) -> bool:
    """A process that runs (a zombie is gone for us)."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


def children(pid: int) -> list[int]:
    try:
        kids = [int(k) for k in Path(f"/proc/{pid}/task/{pid}/children").read_text().split()]
    except OSError:
        return []
    return kids + [g for k in kids for g in children(k)]


# -- the sink ------------------------------------------------------------------------------------


class Sink:
    """aiosmtpd on 127.0.0.1: every message's X-Soak-Id and the queue id in our Received:."""

    def __init__(self, delay: float) -> None:
        self.delay = delay
        self.lock = threading.Lock()
        self.got: list[tuple[str, str | None]] = []  # (token, queue id), one per delivery
        self.port = free_port()
        self.controller = Controller(self, hostname="127.0.0.1", port=self.port)

    async def handle_DATA(self, server, session, envelope) -> str:
        data = envelope.content if isinstance(envelope.content, bytes) else envelope.content.encode()
        head = data.split(b"\r\n\r\n", 1)[0]
        token = _TOKEN.search(head)
        qid = _QID.search(head)
        if self.delay:
            await asyncio.sleep(self.delay)
        with self.lock:
            self.got.append((token.group(1).decode() if token else "?", qid.group(1).decode() if qid else None))
        return "250 2.0.0 Ok: recorded"


# -- the server ----------------------------------------------------------------------------------


class Server:
    def __init__(self, work: Path, sink_port: int, workers: int) -> None:
        self.work = work
        self.data = work / "var"
        self.port = free_port()
        self.workers = workers
        self.config = work / "mtaserver.yaml"
        self.log_path = work / "mtaserver.log"
        self.proc: subprocess.Popen[bytes] | None = None
        self.pids: dict[str, int] = {}  # "worker0", "worker1", "qmgr" -> pid, from the ready lines
        self._seen = 0  # log offset read so far
        cfg = {  # YAML is a superset of JSON
            "server": {
                "hostname": "mtaserver.soak.test", "data_dir": str(self.data), "workers": workers,
                "listeners": [{"name": "smtp", "address": f"127.0.0.1:{self.port}", "tls": "none", "auth": "none"}],
                "limits": {"connections_per_ip": 0, "error_sleep": 0}, "peername_lookup": False,
            },
            "domains": {"local": [], "relay": ["soak.test"]},
            "inbound": {"protocol_checks": {"reject_unknown_sender_domain": False}},
            "outbound": {"mynetworks": ["127.0.0.0/8"], "relay_host": f"[127.0.0.1]:{sink_port}", "tls": "none",
                         "add_client_ip_header": False},
            "queue": {"manager": True, "min_backoff": "1s", "max_backoff": "5s"},
            "antispam": {"enabled": False}, "antivirus": {"enabled": False}, "dkim": {"verify": False},
            "advanced": {"log_level": "info"},
            "admin": {"listen": f"127.0.0.1:{free_port()}"},
        }  # fmt: skip
        self.config.write_text(json.dumps(cfg, indent=1) + "\n")
        p = subprocess.run([sys.executable, "-m", "mtaserver", "check-config", "-c", str(self.config)],
                           capture_output=True, text=True, cwd=ROOT, check=False)  # fmt: skip
        if p.returncode != 0:
            raise SystemExit(f"check-config failed:\n{p.stdout}{p.stderr}")

    def _read_log(self) -> str:
        with open(self.log_path, "rb") as f:
            f.seek(self._seen)
            text = f.read().decode("utf-8", "replace")
        self._seen += len(text.encode("utf-8", "replace"))
        for m in _READY.finditer(text):
            self.pids[f"worker{m.group(2)}" if m.group(2) is not None else "qmgr"] = int(m.group(1))
        return text

    def start(self, timeout: float = 60.0) -> float:
        """A new `mtaserver run`; returns when every worker and the queue manager logged ready."""
        t0 = time.monotonic()
        self._seen = self.log_path.stat().st_size if self.log_path.exists() else 0
        self.pids = {}
        with open(self.log_path, "ab") as out:
            self.proc = subprocess.Popen([sys.executable, "-m", "mtaserver", "run", "-c", str(self.config)],
                                         stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, cwd=ROOT)  # fmt: skip
        self.wait_ready(lambda: len(self.pids) == self.workers + 1, timeout, "start")
        return time.monotonic() - t0

    def wait_ready(self, done, timeout: float, what: str) -> None:
        deadline = time.monotonic() + timeout
        while True:
            self._read_log()
            if done():
                return
            if self.proc is None or self.proc.poll() is not None:
                raise RuntimeError(f"mtaserver exited during {what} (status {self.proc and self.proc.returncode})")
            if time.monotonic() > deadline:
                raise RuntimeError(f"mtaserver: no ready line within {timeout:.0f} s ({what})")
            time.sleep(0.05)

    def tree(self) -> list[int]:
        return [self.proc.pid, *children(self.proc.pid)] if self.proc is not None else []

    def kill(self, kind: str, rng: random.Random) -> tuple[str, int]:
        """kill -9 of the supervisor, a worker or the queue manager; (role, pid)."""
        assert self.proc is not None
        self._read_log()
        role = "supervisor" if kind == "supervisor" else "qmgr" if kind == "qmgr" else rng.choice(
            [r for r in self.pids if r.startswith("worker")])  # fmt: skip
        pid = self.proc.pid if role == "supervisor" else self.pids[role]
        os.kill(pid, signal.SIGKILL)
        return role, pid

    def recover(self, role: str, pid: int, old_tree: list[int], timeout: float = 90.0) -> tuple[float, list[int]]:
        """After the kill: the old tree gone and a new server up (supervisor), or the process
        restarted by the supervisor. Returns the time it took and the pids of the old tree that
        had to be killed here (none expected: the kernel's SIGTERM stops them)."""
        t0 = time.monotonic()
        stragglers: list[int] = []
        if role == "supervisor":
            assert self.proc is not None
            self.proc.wait()
            deadline = time.monotonic() + timeout
            while any(alive(p) for p in old_tree) and time.monotonic() < deadline:
                time.sleep(0.05)
            stragglers = [p for p in old_tree if alive(p)]
            for p in stragglers:
                os.kill(p, signal.SIGKILL)
            while any(alive(p) for p in stragglers):
                time.sleep(0.05)
            self.start()
        else:
            self.wait_ready(lambda: self.pids.get(role, pid) != pid, timeout, f"restart of {role}")
        return time.monotonic() - t0, stragglers

    def stop(self) -> None:
        if self.proc is None:
            return
        pids = self.tree()
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(60)
            except subprocess.TimeoutExpired:
                log("mtaserver: no exit 60 s after SIGTERM: kill -9")
        for p in pids:
            if alive(p):
                os.kill(p, signal.SIGKILL)
        self.proc.wait()
        self.proc = None

    def queued(self, states=("incoming", "active", "deferred")) -> int:
        q = self.data / "queue"
        return sum(len(os.listdir(q / s)) for s in states if (q / s).is_dir())


# -- the load ------------------------------------------------------------------------------------


@dataclass
class Tally:
    acked: dict[str, str] = field(default_factory=dict)  # token -> queue id the client was told
    claimed: int = 0  # messages being sent or acknowledged in this cycle
    cycle_acked: int = 0
    refused: int = 0  # a reply other than 250 at the end of DATA (e.g. 421 while stopping)
    broken: int = 0  # sessions that broke (connection refused, reset, closed)


class SmtpError(Exception):
    pass


async def reply(reader: asyncio.StreamReader) -> tuple[int, str]:
    lines = []
    while True:
        line = await asyncio.wait_for(reader.readline(), 30)
        if not line:
            raise ConnectionResetError("connection closed")
        lines.append(line.decode("ascii", "replace").rstrip("\r\n"))
        if line[3:4] != b"-":
            return int(line[:3]), "\n".join(lines)


async def expect(reader, writer, command: bytes | None, code: int) -> str:
    if command is not None:
        writer.write(command + b"\r\n")
    got, text = await reply(reader)
    if got != code:
        raise SmtpError(text)
    return text


def message(token: str, size: int) -> bytes:
    head = (f"From: <soak@client.test>\r\nTo: <rcpt@soak.test>\r\nSubject: soak {token}\r\n"
            f"Message-ID: <{token}@client.test>\r\nX-Soak-Id: {token}\r\n\r\n").encode()  # fmt: skip
    line = b"x" * 76 + b"\r\n"
    return head + line * max(1, size // len(line))


async def session(port: int, tally: Tally, target: int, per: int, size: int, prefix: str, counter: list[int]) -> None:
    """One lane: connect, send up to `per` messages, QUIT, again, until the cycle's target."""
    while tally.cycle_acked < target:
        if tally.claimed >= target:
            await asyncio.sleep(0.05)
            continue
        writer = None
        token = None
        failed = True
        try:
            reader, writer = await asyncio.wait_for(asyncio.open_connection("127.0.0.1", port), 10)
            await expect(reader, writer, None, 220)
            await expect(reader, writer, b"EHLO client.test", 250)
            for _ in range(per):
                if tally.claimed >= target:
                    break
                tally.claimed += 1
                counter[0] += 1
                token = f"{prefix}-{counter[0]}"
                await expect(reader, writer, b"MAIL FROM:<soak@client.test>", 250)
                await expect(reader, writer, b"RCPT TO:<rcpt@soak.test>", 250)
                await expect(reader, writer, b"DATA", 354)
                writer.write(message(token, size) + b".\r\n")
                code, text = await reply(reader)
                if code != 250:
                    raise SmtpError(text)
                m = _QUEUED.search(text)
                tally.acked[token] = m.group(1) if m else "?"
                tally.cycle_acked += 1
                token = None
            writer.write(b"QUIT\r\n")
            await reply(reader)
            failed = False
        except SmtpError:
            tally.refused += 1
        except (OSError, asyncio.IncompleteReadError, TimeoutError):
            tally.broken += 1
        finally:
            if token is not None:  # sent or being sent, never acknowledged: the slot is free again
                tally.claimed -= 1
            if writer is not None:
                writer.close()
        if failed:
            await asyncio.sleep(0.1)  # the server may be (re)starting


async def cycle(server: Server, tally: Tally, n: int, kind: str, args, rng: random.Random, counter: list[int]) -> dict:
    tally.claimed = tally.cycle_acked = 0
    at = max(1, int(args.messages * rng.uniform(0.05, 0.95)))
    t0 = time.monotonic()
    lanes = [asyncio.create_task(session(server.port, tally, args.messages, args.per_session, args.size, f"c{n}", counter))
             for _ in range(args.sessions)]  # fmt: skip
    while tally.cycle_acked < at:
        await asyncio.sleep(0.005)
    old_tree = server.tree()
    at = tally.cycle_acked
    role, pid = server.kill(kind, rng)
    took, stragglers = await asyncio.to_thread(server.recover, role, pid, old_tree)
    await asyncio.gather(*lanes)
    return {"cycle": n, "killed": role, "pid": pid, "at": at, "restart_s": took, "stragglers": stragglers,
            "seconds": time.monotonic() - t0}  # fmt: skip


# -- the run -------------------------------------------------------------------------------------


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--cycles", type=int, default=100)
    ap.add_argument("--messages", type=int, default=300, help="acknowledged messages per cycle")
    ap.add_argument("--sessions", type=int, default=20, help="concurrent sessions")
    ap.add_argument("--per-session", type=int, default=5, help="messages per connection")
    ap.add_argument("--size", type=int, default=2048, help="message body bytes")
    ap.add_argument("--sink-delay", type=float, default=0.005, help="the sink's pause before its 250, seconds")
    ap.add_argument("--drain-timeout", type=float, default=300.0)
    ap.add_argument("--seed", type=int, default=None)
    ap.add_argument("--keep", action="store_true", help="keep the work directory")
    args = ap.parse_args()
    seed = args.seed if args.seed is not None else random.randrange(1 << 30)
    rng = random.Random(seed)
    OUT.mkdir(exist_ok=True)
    work = OUT / f"soak-{time.strftime('%Y%m%d-%H%M%S')}"
    work.mkdir()
    t0 = time.monotonic()
    sink = Sink(args.sink_delay)
    sink.controller.start()
    server = Server(work, sink.port, workers=2)
    tally = Tally()
    results: list[dict] = []
    failure = None
    try:
        server.start()
        log(f"soak: {args.cycles} cycles x {args.messages} messages, {args.sessions} sessions, seed {seed}, work {work}")
        counter = [0]
        for n in range(1, args.cycles + 1):
            r = asyncio.run(cycle(server, tally, n, KINDS[(n - 1) % len(KINDS)], args, rng, counter))
            results.append(r)
            log(f"cycle {n}: killed {r['killed']} (pid {r['pid']}) after {r['at']} acks, back in {r['restart_s']:.1f} s, "
                f"cycle {r['seconds']:.1f} s, {len(tally.acked)} acknowledged so far"
                + (f", {len(r['stragglers'])} process(es) of the old tree had to be killed" if r["stragglers"] else ""))
        deadline = time.monotonic() + args.drain_timeout
        while time.monotonic() < deadline:
            with sink.lock:
                seen = {t for t, _ in sink.got}
            if server.queued() == 0 and all(t in seen for t in tally.acked):
                break
            time.sleep(0.2)
        else:
            failure = f"the queue did not drain within {args.drain_timeout:.0f} s ({server.queued()} left)"
    except (RuntimeError, KeyboardInterrupt) as exc:
        failure = f"{type(exc).__name__}: {exc}"
    finally:
        corrupt = server.queued(("corrupt",))
        left = server.queued()
        server.stop()
        sink.controller.stop()

    with sink.lock:
        got = list(sink.got)
    per_token: dict[str, int] = {}
    for t, _ in got:
        per_token[t] = per_token.get(t, 0) + 1
    lost = sorted(t for t in tally.acked if t not in per_token)
    delivered = sum(1 for t in tally.acked if t in per_token)
    dups = sum(c - 1 for c in per_token.values())
    unacked = sum(1 for t in per_token if t not in tally.acked and t != "?")
    mismatched = sum(1 for t, q in got if t in tally.acked and q != tally.acked[t])
    restarts = [r["restart_s"] for r in results]
    stragglers = sum(len(r["stragglers"]) for r in results)
    kills = {k: sum(1 for r in results if r["killed"].startswith(k)) for k in KINDS}
    text = server.log_path.read_text(errors="replace") if server.log_path.exists() else ""
    crashes = len(re.findall(r"Traceback|CRITICAL", text))
    print()
    print(f"cycles                         {len(results)} of {args.cycles} (seed {seed})")
    print(f"kills                          supervisor {kills['supervisor']}, worker {kills['worker']}, "
          f"queue manager {kills['qmgr']}")
    print(f"messages acknowledged          {len(tally.acked)}")
    print(f"  delivered                    {delivered}")
    print(f"  lost                         {len(lost)}   (must be 0)")
    print(f"deliveries at the sink         {len(got)}")
    print(f"  duplicates                   {dups}")
    print(f"  never acknowledged           {unacked}   (sent when the session broke; allowed)")
    print(f"  queue id differs             {mismatched}")
    print(f"sessions broken / refused      {tally.broken} / {tally.refused}")
    print(f"left in the queue / corrupt/   {left} / {corrupt}")
    if restarts:
        print(f"restart time                   median {statistics.median(restarts):.1f} s, max {max(restarts):.1f} s")
    print(f"old processes killed by us     {stragglers}")
    print(f"Traceback/CRITICAL in the log  {crashes}")
    print(f"time                           {time.monotonic() - t0:.0f} s")
    if lost:
        print("lost: " + " ".join(f"{t}={tally.acked[t]}" for t in lost[:50]))
    if failure:
        print(f"FAILED: {failure}")
    bad = bool(lost) or failure is not None or len(results) < args.cycles
    if args.keep or bad:
        print(f"work directory kept: {work}")
    else:
        shutil.rmtree(work, ignore_errors=True)
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())

#!/usr/bin/env python3
"""The Python cost of one SMTP command in a session, without sockets, kernel or client.

usage: .venv/bin/python bench/command_cost.py [--rounds N] [--profile]

Builds one SMTP session (smtp/protocol.py; the shipped config with server.peername_lookup off, so no DNS query, a queue under bench/out/) on a fake
transport that records what is written, feeds it command lines through `data_received` as the
event loop would, and times until each reply is written: HELO alone, MAIL + HELO (HELO resets
the transaction; RSET and NOOP would soon hit the junk-command limit), MAIL + RCPT + HELO,
a whole connection with no command but QUIT (new session, greeting, QUIT, teardown), and a
whole one-message connection step by step (greeting, HELO, MAIL, RCPT, DATA, content and
dot, QUIT and teardown; log lines on, written to /dev/null; the queue on /dev/shm with fsync
off, so the commit's disk time is left out and its Python and system calls are in).
What it measures is the session's own Python per command (parsing, state, reply, timers,
the stream reader and task wake-up), the part that `bench/latency.py` cannot separate from
the kernel's. With --profile it prints the top of a cProfile of the HELO loop.
"""

from __future__ import annotations

import argparse
import asyncio
import cProfile
import logging
import os
import pstats
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

import uvloop  # noqa: E402

from mtaserver import config, logutil  # noqa: E402
from mtaserver.queue.store import QueueStore  # noqa: E402
from mtaserver.runtime import Runtime  # noqa: E402
from mtaserver.smtp.protocol import SmtpServer  # noqa: E402


class FakeTransport(asyncio.Transport):
    def __init__(self) -> None:
        super().__init__()
        self.written = asyncio.Event()

    def get_extra_info(self, name: str, default: object = None) -> object:
        return ("127.0.0.1", 40000) if name == "peername" else default

    def is_closing(self) -> bool:
        return False

    def write(self, data: bytes) -> None:
        self.written.set()

    def close(self) -> None:
        pass

    def abort(self) -> None:
        pass

    def get_write_buffer_size(self) -> int:
        return 0

    def pause_reading(self) -> None:
        pass

    def resume_reading(self) -> None:
        pass


async def measure(rounds: int, only_helo: bool) -> None:
    cfg = config.load(str(REPO / "conf" / "mtaserver.yaml"))
    cfg = cfg.model_copy(update={"server": cfg.server.model_copy(update={"peername_lookup": False})})
    out = REPO / "bench" / "out"
    out.mkdir(exist_ok=True)
    root = tempfile.mkdtemp(prefix="command-cost-", dir=out)
    store = QueueStore(root)
    store.open()
    server = SmtpServer(Runtime.build(cfg), cfg.server.listeners[0], store)
    session = server.protocol()
    transport = FakeTransport()
    session.connection_made(transport)
    await transport.written.wait()  # the greeting

    async def command(line: bytes) -> None:
        transport.written.clear()
        session.data_received(line)
        await transport.written.wait()

    helo, mail, rcpt = b"HELO client.test\r\n", b"MAIL FROM:<sender@client.test>\r\n", b"RCPT TO:<rcpt@example.test>\r\n"
    groups = {"HELO": [helo], "MAIL + HELO": [mail, helo], "MAIL + RCPT + HELO": [mail, rcpt, helo]}
    for name, lines in groups.items():
        if only_helo and name != "HELO":
            continue
        t0 = time.perf_counter()
        for _ in range(rounds):
            for line in lines:
                await command(line)
        us = (time.perf_counter() - t0) / rounds * 1e6
        print(f"{name:20s} {us:7.1f} µs per round, {us / len(lines):6.1f} µs per command")
    if not only_helo:
        # A whole connection without commands: set-up, greeting, QUIT, teardown.
        async def connection() -> None:
            s, t = server.protocol(), FakeTransport()
            s.connection_made(t)
            task = s._task
            await t.written.wait()
            t.written.clear()
            s.data_received(b"QUIT\r\n")
            await t.written.wait()
            s.connection_lost(None)
            await task

        t0 = time.perf_counter()
        for _ in range(rounds):
            await connection()
        us = (time.perf_counter() - t0) / rounds * 1e6
        print(f"{'connect + QUIT':20s} {us:7.1f} µs per connection (set-up, greeting, QUIT, teardown)")
    store.close()
    shutil.rmtree(root, ignore_errors=True)
    if not only_helo:
        await one_message(server.runtime.config, rounds)


MESSAGE_STEPS = ("greeting", "HELO", "MAIL", "RCPT", "DATA", "content+dot", "QUIT+teardown")


async def one_message(cfg: config.Config, rounds: int) -> None:
    """A one-message connection (smtp-source -s 1 -m 1), median µs of Python per step."""
    logging.disable(logging.NOTSET)  # a worker's four log lines, to /dev/null (see main)
    root = tempfile.mkdtemp(prefix="command-cost-", dir="/dev/shm")
    store = QueueStore(root, fsync=lambda fd: None)
    store.open()
    # No queue manager: store.on_commit is unset, so announce() sends nothing and the wake-up
    # datagram (at most one per queue.wakeup_delay) is not counted here.
    server = SmtpServer(Runtime.build(cfg), cfg.server.listeners[0], store)
    body = b"Subject: command cost\r\n\r\n" + (b"X" * 70 + b"\r\n") * 14 + b".\r\n"
    lines = (None, b"HELO client.test\r\n", b"MAIL FROM:<sender@client.test>\r\n",
             b"RCPT TO:<rcpt@example.test>\r\n", b"DATA\r\n", body, b"QUIT\r\n")  # fmt: skip
    times: list[list[float]] = [[] for _ in MESSAGE_STEPS]
    clock = time.perf_counter
    cpu0 = time.process_time()
    for _ in range(rounds):
        t0 = clock()
        s, t = server.protocol(), FakeTransport()
        s.connection_made(t)
        task = s._task
        for i, line in enumerate(lines):
            if line is not None:
                t.written.clear()
                t0 = clock()
                s.data_received(line)
            await t.written.wait()
            if i == len(lines) - 1:
                s.connection_lost(None)
                await task
            times[i].append(clock() - t0)
    cpu = (time.process_time() - cpu0) / rounds * 1e6
    steps = ", ".join(f"{name} {statistics.median(ts) * 1e6:.1f}" for name, ts in zip(MESSAGE_STEPS, times, strict=True))
    print(f"{'one message':20s} {cpu:7.1f} µs of CPU per connection; medians, µs: {steps}")
    store.close()
    shutil.rmtree(root, ignore_errors=True)
    logging.disable(logging.CRITICAL)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--rounds", type=int, default=5000)
    p.add_argument("--profile", action="store_true")
    a = p.parse_args()
    logging.disable(logging.CRITICAL)  # the log lines are measured elsewhere (RESULTS.md, step 5)
    if not a.profile:
        logutil.setup("info")
        with open(os.devnull, "w") as devnull:
            logging.getLogger().handlers[0].setStream(devnull)
            uvloop.run(measure(a.rounds, False))
        return 0
    prof = cProfile.Profile()
    prof.runcall(uvloop.run, measure(a.rounds, True))
    stats = pstats.Stats(prof)
    print(f"{stats.total_calls / a.rounds:.0f} Python calls per HELO (the fake transport and the set-up included)")
    stats.sort_stats("tottime").print_stats(25)
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Helpers the integration tests share: one place, imported by the test modules (no test module
imports another).

    Sink, wait_for, send, delivering, queue_empty, maildir_messages   delivery (an aiosmtpd sink as the next hop)
    cli                                                                `mtaserver queue ...` through the real command line
    RedisServer                                                        a throwaway redis-server
    nsd (fixture), start, connect, WAIT, MSG                           postscreen against NSD serving DNSBL zones
"""

from __future__ import annotations

import smtplib
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import pytest
from aiosmtpd.controller import Controller
from conftest import deep_merge, free_port, require_tool, stop_process
from dnsserver import Nsd, zone
from smtpclient import Reply, SmtpClient

# -- delivery ----------------------------------------------------------------------------------


class Sink:
    """An SMTP server that records what it accepts; replies can be scripted."""

    def __init__(self, *, rcpt_replies: dict[str, str] | None = None, data_replies: list[str] | None = None, delay: float = 0.0):
        self.messages: list[tuple[str, list[str], bytes]] = []
        self.rcpt_replies = rcpt_replies or {}
        self.data_replies = list(data_replies or [])  # consumed one per DATA, then 250
        self.delay = delay
        self.lock = threading.Lock()
        self.port = free_port()
        self.controller = Controller(self, hostname="127.0.0.1", port=self.port)

    async def handle_RCPT(self, server, session, envelope, address, rcpt_options):
        reply = self.rcpt_replies.get(address)
        if reply:
            return reply
        envelope.rcpt_tos.append(address)
        return "250 2.1.5 Ok"

    async def handle_DATA(self, server, session, envelope):
        if self.delay:
            import asyncio

            await asyncio.sleep(self.delay)
        with self.lock:
            if self.data_replies:
                return self.data_replies.pop(0)
            self.messages.append((envelope.mail_from, list(envelope.rcpt_tos), envelope.original_content or envelope.content))
        return "250 2.0.0 Ok: kept"

    def __enter__(self) -> Sink:
        self.controller.start()
        return self

    def __exit__(self, *exc) -> None:
        self.controller.stop()


def wait_for(predicate, timeout: float = 15.0, what: str = "condition"):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.05)
    raise AssertionError(f"timed out waiting for {what}")


def send(mta, sender: str, rcpts: list[str], body: bytes = b"Subject: t\r\n\r\nhello\r\n") -> None:
    with smtplib.SMTP("127.0.0.1", mta.port, source_address=("127.0.0.1", 0)) as c:
        assert c.sendmail(sender, rcpts, body) == {}


def delivering(relay: int | None = None, fallback: int | None = None, **queue) -> dict:
    out = {"queue": {"manager": True, "min_backoff": "1s", "max_backoff": "2s", **queue}, "outbound": {}}
    if relay is not None:
        out["outbound"]["relay_host"] = f"[127.0.0.1]:{relay}"
    if fallback is not None:
        out["outbound"]["fallback_relay_host"] = f"[127.0.0.1]:{fallback}"
    return out


def queue_empty(mta) -> bool:
    return not any(mta.queued(s) for s in ("incoming", "active", "deferred"))


def maildir_messages(mta, address: str) -> list[bytes]:
    local, domain = address.split("@")
    new = mta.data_dir / "mail" / domain / local / "new"
    return [p.read_bytes() for p in sorted(new.iterdir())] if new.exists() else []


# -- the queue command ---------------------------------------------------------------------------


def cli(mta, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    proc = subprocess.run(
        [sys.executable, "-m", "mtaserver", "queue", *args, "-c", str(mta.config_path)],
        capture_output=True, text=True, timeout=60, cwd=mta.tmp, check=False,
    )  # fmt: skip
    if check:
        assert proc.returncode == 0, proc.stderr
    return proc


# -- redis ---------------------------------------------------------------------------------------


class RedisServer:
    """redis-server on a free 127.0.0.1 port, no persistence; stopped by its PID."""

    def __init__(self, tmp: Path) -> None:
        self.binary = require_tool("redis-server")
        self.dir = tmp
        self.port = free_port()
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> RedisServer:
        args = [self.binary, "--port", str(self.port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no", "--dir", str(self.dir)]
        self.proc = subprocess.Popen(args, stdout=open(self.dir / "redis.log", "wb"), stderr=subprocess.STDOUT)
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError("redis-server exited: " + (self.dir / "redis.log").read_text())
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=0.2) as s:
                    s.sendall(b"PING\r\n")
                    if s.recv(16).startswith(b"+PONG"):
                        return self
            except OSError:
                time.sleep(0.05)
        raise RuntimeError("redis-server did not start")

    def stop(self) -> None:
        stop_process(self.proc)


# -- postscreen (NSD serving DNSBL zones) ------------------------------------------------------

WAIT = 0.6  # greet.wait of these tests
MSG = b"From: a@sender.test\r\nTo: u@example.test\r\nSubject: t\r\n\r\nhello\r\n"


@pytest.fixture(scope="module")
def nsd(tmp_path_factory):
    zones = {
        "bl.test": zone("bl.test", "2.0.0.127 A 127.0.0.2\n5.0.0.127 A 127.0.0.2\n6.0.0.127 A 127.0.0.1\n", negative_ttl=1, ttl=1),
        "bl2.test": zone("bl2.test", "5.0.0.127 A 127.0.0.3\n", negative_ttl=1, ttl=1),
        "wl.test": zone("wl.test", "4.0.0.127 A 127.0.5.2\n", negative_ttl=1, ttl=1),
    }
    server = Nsd(tmp_path_factory.mktemp("psnsd"), zones).start()
    yield server
    server.stop()


def start(make_mta, nsd, ps: dict[str, Any] | None = None, *, extra: dict[str, Any] | None = None, postscreen: bool = True):
    base = {
        "access_list": [],
        "greet": {"wait": WAIT},
        "dnsbl": {"sites": ["bl.test=127.0.0.[2..11]*2", "bl2.test*1", "wl.test*-2"], "threshold": 2, "timeout": 2},
    }
    m = make_mta({"server": {"dns": {"nameservers": [nsd.address], "timeout": 1}}, "postscreen": deep_merge(base, ps or {}), **(extra or {})}, start=False)
    m.config["server"]["listeners"][0]["postscreen"] = postscreen
    m.write_config()
    return m.start()


def connect(m, ip: str) -> tuple[SmtpClient, Reply, float]:
    """Connect and read the greeting. The teaser ("220-" line) is kept as the first line of
    the reply; a drop after it ("521 ...") comes back as a 521 reply with that one line."""
    t0 = time.monotonic()
    c = SmtpClient(m.port, ip)
    first = c.read_line()
    if first.startswith(b"220-"):
        last = c.reply()
        g = Reply(last.code, [first[4:].decode()] + last.lines) if last.code == 220 else last
    else:
        c.buf = first + b"\r\n" + c.buf
        g = c.reply()
    return c, g, time.monotonic() - t0

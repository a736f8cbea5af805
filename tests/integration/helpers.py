"""Helpers the integration tests share: one place, imported by the test modules (no test module
imports another).

    Sink, wait_for, send, delivering, queue_empty, maildir_messages   delivery (an aiosmtpd sink as the next hop)
    open_dir_fixture (the fixture `open_dir`), as_root                 servers that drop to another user
    until, manager_running, run_manager_until                          a QueueManager in the test's event loop
    cli                                                                `mtaserver queue ...` through the real command line
    RedisServer                                                        a throwaway redis-server
    nsd (fixture), start, connect, WAIT, MSG                           postscreen against NSD serving DNSBL zones
    resolver_fixture (the fixture `resolver`)                          the production resolver asking a module's `nsd`
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import smtplib
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from aiosmtpd.controller import Controller
from conftest import deep_merge, free_port, require_tool, stop_process
from dnsserver import Nsd, zone
from smtpclient import Reply, SmtpClient

from mtaserver.dns import Resolver

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


# -- servers that drop privileges ---------------------------------------------------------------


@pytest.fixture(name="open_dir")
def open_dir_fixture() -> Iterator[Path]:
    """A directory every user may traverse (pytest's tmp_path is root's, 0700): for servers that drop
    to another user and must still reach their data_dir and config."""
    d = Path(tempfile.mkdtemp(prefix="mtaserver-open-", dir="/tmp"))
    d.chmod(0o755)
    yield d
    shutil.rmtree(d, ignore_errors=True)


def as_root() -> None:
    if os.geteuid() != 0:
        pytest.skip("needs root (the privilege drop)")


# -- the queue manager in the test's own event loop ---------------------------------------------


async def until(predicate: Callable[[], Any], what: str = "condition", timeout: float = 15.0) -> Any:
    """Poll `predicate` in the running loop until it is true: its value (an AssertionError naming `what`
    after `timeout` seconds)."""
    try:
        async with asyncio.timeout(timeout):
            while not (value := predicate()):
                await asyncio.sleep(0.02)
    except TimeoutError:
        raise AssertionError(f"timed out waiting for {what}") from None
    return value


@contextlib.asynccontextmanager
async def manager_running(manager: Any) -> AsyncIterator[None]:
    """A QueueManager running in this loop (no control socket) while the block runs; stopped after it."""
    stop = asyncio.Event()
    task = asyncio.create_task(manager.run(stop, listen=False))
    try:
        yield
    finally:
        stop.set()
        await task


async def run_manager_until(manager: Any, done: Callable[[], Any], timeout: float = 20.0) -> None:
    async with manager_running(manager):
        await until(done, "the queue manager's work", timeout)


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
    with Nsd(tmp_path_factory.mktemp("psnsd"), zones) as server:
        yield server


@pytest.fixture(name="resolver")
async def resolver_fixture(nsd):
    """The production resolver asking the `nsd` fixture of the test module (1 s timeout)."""
    r = Resolver([nsd.address], timeout=1.0)
    yield r
    r.close()


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

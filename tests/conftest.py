"""Shared test fixtures: a real mtaserver process on a free loopback port.

Integration tests start `python -m mtaserver run -c <tmp config>` as a subprocess and talk
to it over real sockets, from 127.0.0.x source addresses when they play different clients.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import ssl
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Self

import pytest
import yaml

IN_CI = os.environ.get("CI") == "true"


def require_tool(name: str) -> str:
    """A missing external tool skips the test locally and fails it in CI."""
    path = shutil.which(name) or (f"/usr/sbin/{name}" if os.path.exists(f"/usr/sbin/{name}") else None)
    if path is None:
        if IN_CI:
            pytest.fail(f"{name} is not installed (make test installs it)")
        pytest.skip(f"{name} is not installed")
    return path


def stop_process(proc: subprocess.Popen | None, timeout: float = 5.0) -> None:
    """Stop a helper server we started: SIGTERM, then SIGKILL if it does not go."""
    if proc is None or proc.poll() is not None:
        return
    proc.terminate()
    try:
        proc.wait(timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


# Ports handed out for servers come from below the kernel's ephemeral range (32768-60999 on
# Debian): a port taken there by bind(0) and released can be grabbed as the local port of any
# outgoing connection before the server under test binds it ("Address already in use").
_PORT_LOW, _PORT_HIGH = 20000, 32000
_next_port = _PORT_LOW + (os.getpid() * 97) % (_PORT_HIGH - _PORT_LOW)


def free_port(*also: str) -> int:
    """A port free for TCP and UDP on 127.0.0.1 and on every address in `also`, outside the ephemeral
    range so that no client socket can take it between this call and the server's bind."""
    global _next_port
    for _ in range(_PORT_HIGH - _PORT_LOW):
        port = _next_port
        _next_port = _PORT_LOW + (_next_port + 1 - _PORT_LOW) % (_PORT_HIGH - _PORT_LOW)
        try:
            for host in ("127.0.0.1", *also):
                for kind in (socket.SOCK_STREAM, socket.SOCK_DGRAM):  # a DNS server binds both
                    with socket.socket(socket.AF_INET, kind) as t:
                        t.bind((host, port))
        except OSError:
            continue
        return port
    raise RuntimeError(f"no port free on 127.0.0.1 and {also}")


def deep_merge(base: dict[str, Any], over: dict[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for k, v in over.items():
        out[k] = deep_merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
    return out


class Mta:
    """One mtaserver process with its own config file and data directory."""

    def __init__(self, tmp: Path, overrides: dict[str, Any] | None = None) -> None:
        self.tmp = tmp
        self.port = free_port()
        self.data_dir = tmp / "var"
        base = {
            "server": {
                "hostname": "mx.example.test",
                "data_dir": str(self.data_dir),
                "workers": 1,
                "listeners": [{"name": "smtp", "address": f"127.0.0.1:{self.port}"}],
                "limits": {"error_sleep": 0},
                # No DNS here: the client name lookup and the DNS checks are turned on by the
                # tests that run a DNS server (tests/integration/dnsserver.py).
                "peername_lookup": False,
            },
            "inbound": {"protocol_checks": {"reject_unknown_sender_domain": False}},
            "domains": {"local": ["example.test"], "relay": ["relay.test"]},
            # 127.0.0.1 is trusted (may relay); other 127.0.0.x addresses play outsiders.
            "outbound": {"mynetworks": ["127.0.0.1/32"]},
            # Receive-only by default: messages stay in incoming/ for the test to inspect.
            # Delivery tests turn the queue manager on.
            "queue": {"manager": False},
            # No content scanners unless a test starts them (tests/integration/scanners.py).
            "antispam": {"enabled": False},
            "antivirus": {"enabled": False},
            # Many test servers run at once: each its own admin API port.
            "admin": {"listen": f"127.0.0.1:{free_port()}"},
        }
        self.config = deep_merge(base, overrides or {})
        self.config_path = tmp / "mtaserver.yaml"
        self.log_path = tmp / "mtaserver.log"
        self.proc: subprocess.Popen[bytes] | None = None
        self.write_config()

    def write_config(self, config: dict[str, Any] | None = None) -> None:
        self.config_path.write_text(yaml.safe_dump(config or self.config))

    @property
    def queue(self) -> Path:
        return self.data_dir / "queue"

    @property
    def admin_url(self) -> str:
        """The admin API's base URL (no trailing slash), from the config the server runs."""
        return f"http://{self.config['admin']['listen']}"

    def admin_token(self, role: str = "admin") -> str:
        """The first token of `role` in the admin token file (made by the server's first start)."""
        name = self.config.get("admin", {}).get("token_file", "admin.token")
        for line in (self.data_dir / name).read_text().splitlines():
            fields = line.split("#", 1)[0].split()
            if len(fields) >= 2 and fields[0] == role:
                return fields[1]
        raise LookupError(f"no {role} token in {self.data_dir / name}")

    def api(self, method: str, path: str, body: Any = None, *, token: str | None = None,
            content_type: str = "application/json") -> tuple[int, dict[str, str], Any]:  # fmt: skip
        """One request to the admin API: (status, lower-cased headers, JSON body or text).
        `body`: bytes as they are, anything else as JSON. `token`: a bearer token, or None."""
        import json
        import urllib.error
        import urllib.request

        data = None if body is None else body if isinstance(body, bytes) else json.dumps(body).encode()
        req = urllib.request.Request(self.admin_url + path, data=data, method=method)
        if token is not None:
            req.add_header("Authorization", f"Bearer {token}")
        if data is not None:
            req.add_header("Content-Type", content_type)
        try:
            with urllib.request.urlopen(req, timeout=30) as resp:
                status, headers, raw = resp.status, dict(resp.headers), resp.read()
        except urllib.error.HTTPError as exc:
            status, headers, raw = exc.code, dict(exc.headers), exc.read()
        headers = {k.lower(): v for k, v in headers.items()}
        return status, headers, json.loads(raw) if "json" in headers.get("content-type", "") else raw.decode()

    def queued(self, state: str = "incoming") -> list[str]:
        d = self.queue / state
        return sorted(os.listdir(d)) if d.exists() else []

    def body(self, qid: str, state: str = "incoming") -> bytes:
        """The message content of a queue file (what follows is the envelope)."""
        from mtaserver.queue.store import split_queue_file

        return bytes(split_queue_file((self.queue / state / qid).read_bytes())[1])

    def envelope(self, qid: str, state: str = "incoming") -> Any:
        """The envelope of a queue file."""
        from mtaserver.queue.store import parse_envelope

        return parse_envelope((self.queue / state / qid).read_bytes())

    def start(self, timeout: float = 10.0) -> Mta:
        logf = open(self.log_path, "ab")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "mtaserver", "run", "-c", str(self.config_path)],
            stdout=logf, stderr=subprocess.STDOUT, cwd=self.tmp,
        )  # fmt: skip
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"mtaserver exited: {self.log()}")
            if "ready:" in self.log():
                return self
            time.sleep(0.05)
        raise RuntimeError(f"mtaserver did not start: {self.log()}")

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def signal(self, sig: int) -> None:
        assert self.proc is not None
        self.proc.send_signal(sig)

    def stop(self, timeout: float = 15.0) -> int | None:
        if self.proc is None:
            return None
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        code = self.proc.returncode
        self.proc = None
        return code

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def kill9(self) -> None:
        """kill -9 the whole process tree we started (supervisor and workers)."""
        assert self.proc is not None
        pids = [self.proc.pid] + _children(self.proc.pid)
        for pid in pids:
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        self.proc.wait()
        self.proc = None

    def rss_kib(self, pid: int | None = None) -> dict[str, int]:
        pid = pid or (self.proc.pid if self.proc else 0)
        out = {}
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith(("VmRSS:", "VmHWM:")):
                out[line.split(":")[0]] = int(line.split()[1])
        return out


def _children(pid: int) -> list[int]:
    out = []
    try:
        kids = Path(f"/proc/{pid}/task/{pid}/children").read_text().split()
    except OSError:
        return out
    for k in kids:
        out.append(int(k))
        out.extend(_children(int(k)))
    return out


@pytest.fixture
def make_mta(tmp_path: Path) -> Iterator[Any]:
    """make_mta(overrides=None) -> a started Mta; all are stopped at the end of the test."""
    started: list[Mta] = []

    def factory(overrides: dict[str, Any] | None = None, *, start: bool = True, subdir: str = "mta") -> Mta:
        d = tmp_path / f"{subdir}{len(started)}"
        d.mkdir()
        m = Mta(d, overrides)
        started.append(m)
        return m.start() if start else m

    yield factory
    for m in started:
        m.stop()


@pytest.fixture
def mta(make_mta: Any) -> Mta:
    return make_mta()


def self_signed(d: Path, cn: str, *, days: int = 1) -> tuple[Path, Path]:
    """A self-signed certificate for `cn` and its key, made with openssl in `d`: (cert.pem, key.pem)."""
    openssl = require_tool("openssl")
    subprocess.run(
        [openssl, "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-subj", f"/CN={cn}", "-days", str(days),
         "-keyout", str(d / "key.pem"), "-out", str(d / "cert.pem")],
        check=True, capture_output=True, timeout=60,
    )  # fmt: skip
    return d / "cert.pem", d / "key.pem"


def tls_server_context(d: Path, cn: str) -> ssl.SSLContext:
    """A server-side TLS context with a self-signed certificate for `cn` (made in `d`)."""
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.load_cert_chain(*self_signed(d, cn))
    return ctx


@pytest.fixture(scope="session")
def cert(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """A self-signed certificate and key for mx.example.test, made with openssl (TLS tests)."""
    return self_signed(tmp_path_factory.mktemp("cert"), "mx.example.test")


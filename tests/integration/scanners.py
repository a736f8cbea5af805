"""Real content scanners on 127.0.0.1: SpamAssassin's spamd and ClamAV's clamd.

`spamd` and `clamd` are session fixtures: each starts one throwaway daemon in the foreground
as our child, on a free port and a temporary directory of its own, and stops it by its PID at
the end of the session. Nothing of the system's services or configuration is used or touched
(scripts/test-services.sh installs the Debian packages and keeps their services stopped).
Use them from a test module with `from scanners import clamd_fixture, spamd_fixture  # noqa: F401`
and arguments named `spamd` and `clamd`.

spamd: Debian's stock rules (/usr/share/spamassassin, no sa-update), local tests only (-L, no
DNS), no user configs (-x), no Bayes, two children running as `nobody` (--username; the parent
stays root). The site config dir holds copies of Debian's /etc/spamassassin/*.pre
plugin lists (without them no plugin implements the check and spamd cannot scan) and a
local.cf of our own; sa-compile.pre is left out, so compiled rules are not used.
It takes ~0.9 s to start and ~50 ms to check a 1 KB message on an idle machine (0.3-0.6 s
when both cores are busy).
GTUBE scores 1000 ("Spam: True ; 1000.0 / 5.0").

clamd: no downloaded database; the fixture writes one .ndb body signature for VIRUS_PAYLOAD,
named Mtaserver.Test.Virus. It matches the payload anywhere in the scanned data, including
inside a base64 MIME attachment (clamd decodes the MIME parts of a whole RFC 5322 message).
An unsigned database's names get clamd's ".UNOFFICIAL" suffix, so the INSTREAM reply is
b"stream: Mtaserver.Test.Virus.UNOFFICIAL FOUND\\0" (VIRUS_FOUND is that without the NUL).
The EICAR test string is not detected: that needs the official database. clamd starts in
~0.05 s with this database and scans a 1 KB message in under a millisecond.
"""

from __future__ import annotations

import base64
import os
import pwd
import shutil
import socket
import struct
import subprocess
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from conftest import free_port, require_tool, stop_process

GTUBE = "XJS*C4JDBQADN1.NSBN3*2IDNEN*GTUBE-STANDARD-ANTI-UBE-TEST-EMAIL*C.34X"
# Printable ASCII, so that it can stand in a text body as well as in an attachment.
VIRUS_PAYLOAD = b"MTASERVER-TEST-VIRUS-PAYLOAD-8d1f0c2a6b3e4957-NOT-A-REAL-VIRUS"
VIRUS_NAME = "Mtaserver.Test.Virus"  # in the database; clamd reports it with ".UNOFFICIAL"
VIRUS_FOUND = f"stream: {VIRUS_NAME}.UNOFFICIAL FOUND".encode()

SA_RULES = "/usr/share/spamassassin"  # Debian's spamassassin: the stock rules
SA_PRE_FILES = "/etc/spamassassin"  # ...and the plugin lists (*.pre) that load the checks


def message(body: str | bytes = "Hello Bob,\r\nsee you tomorrow at ten.\r\n", *, subject: str = "test") -> bytes:
    """A small single-part CRLF message with the usual headers."""
    head = (
        "From: Alice <alice@client.test>\r\nTo: Bob <bob@example.test>\r\n"
        f"Subject: {subject}\r\nDate: Wed, 25 Nov 2026 12:00:00 +0000\r\n"
        "Message-ID: <scanner-test@client.test>\r\nMIME-Version: 1.0\r\n"
        "Content-Type: text/plain; charset=us-ascii\r\n\r\n"
    )
    return head.encode() + (body.encode() if isinstance(body, str) else body)


def message_with_attachment(payload: bytes, filename: str = "payload.bin") -> bytes:
    """A small multipart/mixed CRLF message: a text part, then `payload` as a base64 attachment."""
    b64 = base64.encodebytes(payload).replace(b"\n", b"\r\n")
    head = (
        "From: Alice <alice@client.test>\r\nTo: Bob <bob@example.test>\r\n"
        "Subject: attachment\r\nDate: Wed, 25 Nov 2026 12:00:00 +0000\r\n"
        "Message-ID: <scanner-attachment@client.test>\r\nMIME-Version: 1.0\r\n"
        'Content-Type: multipart/mixed; boundary="=_mtaserver_test"\r\n\r\n'
        "This is a multi-part message in MIME format.\r\n"
        "--=_mtaserver_test\r\nContent-Type: text/plain; charset=us-ascii\r\n\r\n"
        "Hello Bob,\r\nthe file is attached.\r\n"
        "--=_mtaserver_test\r\n"
        f'Content-Type: application/octet-stream; name="{filename}"\r\n'
        "Content-Transfer-Encoding: base64\r\n"
        f'Content-Disposition: attachment; filename="{filename}"\r\n\r\n'
    )
    return head.encode() + b64 + b"--=_mtaserver_test--\r\n"


def spamd_request(address: str, command: str, msg: bytes | None = None, timeout: float = 30.0) -> tuple[bytes, dict[str, str], bytes]:
    """One SPAMC/1.5 request ("CHECK", "SYMBOLS", "REPORT", "PING", ...) on a fresh connection.

    Returns the status line (b"SPAMD/1.1 0 EX_OK"), the reply headers (e.g. "Spam":
    "True ; 1000.0 / 5.0") and the body (SYMBOLS: b"GTUBE,MSGID_SHORT,...").
    """
    host, port = address.rsplit(":", 1)
    req = f"{command} SPAMC/1.5\r\n".encode()
    if msg is not None:
        req += b"Content-length: %d\r\n" % len(msg)
    req += b"\r\n" + (msg or b"")
    with socket.create_connection((host, int(port)), timeout=timeout) as s:
        s.sendall(req)
        s.shutdown(socket.SHUT_WR)
        reply = b""
        while chunk := s.recv(65536):
            reply += chunk
    head, _, body = reply.partition(b"\r\n\r\n")
    status, *lines = head.split(b"\r\n")
    headers = {k.strip(): v.strip() for k, _, v in (line.decode().partition(":") for line in lines)}
    return status, headers, body


def spam_score(headers: dict[str, str]) -> tuple[bool, float, float]:
    """("True ; 1000.0 / 5.0") -> (True, 1000.0, 5.0)."""
    verdict, _, scores = headers["Spam"].partition(";")
    score, _, threshold = scores.partition("/")
    return verdict.strip() == "True", float(score), float(threshold)


def clamd_instream(address: str, data: bytes, chunk: int = 65536, timeout: float = 30.0) -> bytes:
    """Scan `data` with clamd's INSTREAM; the reply without its NUL: b"stream: OK" or
    b"stream: <name> FOUND"."""
    host, port = address.rsplit(":", 1)
    with socket.create_connection((host, int(port)), timeout=timeout) as s:
        s.sendall(b"zINSTREAM\0")
        for i in range(0, len(data), chunk):
            part = data[i : i + chunk]
            s.sendall(struct.pack(">I", len(part)) + part)
        s.sendall(struct.pack(">I", 0))
        reply = b""
        while not reply.endswith(b"\0") and (got := s.recv(4096)):
            reply += got
    return reply.rstrip(b"\0")


class _Daemon:
    """A server we run in the foreground on 127.0.0.1:<free port> in a directory of its own."""

    name = ""

    def __init__(self) -> None:
        self.host = "127.0.0.1"
        self.port = free_port()
        # mkdtemp, opened to 0755: spamd's children run as `nobody`, which cannot traverse
        # pytest's 0700 tmp directories. stop() removes it.
        self.dir = Path(tempfile.mkdtemp(prefix=f"mtaserver-{self.name}-"))
        self.dir.chmod(0o755)
        self.log_path = self.dir / f"{self.name}.log"
        self.out_path = self.dir / "stdout"
        self.proc: subprocess.Popen[bytes] | None = None
        self.startup_seconds = 0.0

    @property
    def address(self) -> str:
        return f"{self.host}:{self.port}"

    def log(self) -> str:
        return "".join(p.read_text(errors="replace") for p in (self.out_path, self.log_path) if p.exists())

    def command(self) -> list[str]:
        raise NotImplementedError

    def answers(self) -> bool:
        raise NotImplementedError

    def start(self, timeout: float = 60.0) -> _Daemon:
        t0 = time.monotonic()
        with open(self.out_path, "wb") as out:
            self.proc = subprocess.Popen(self.command(), stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT, cwd=self.dir)
        while time.monotonic() - t0 < timeout:
            if self.proc.poll() is not None:
                self.proc = None
                log = self.log()
                self.stop()
                raise RuntimeError(f"{self.name} exited: {log}")
            if self.answers():
                self.startup_seconds = time.monotonic() - t0
                return self
            time.sleep(0.05)
        log = self.log()
        self.stop()
        raise RuntimeError(f"{self.name} did not answer within {timeout} s: {log}")

    def _ask(self, request: bytes, expect: bytes) -> bool:
        try:
            with socket.create_connection((self.host, self.port), timeout=2) as s:
                s.sendall(request)
                reply = b""
                while len(reply) < len(expect) and (got := s.recv(256)):
                    reply += got
                return reply.startswith(expect)
        except OSError:
            return False

    def stop(self, *, keep_log_in: Path | None = None) -> None:
        """Stop the daemon (SIGTERM to our child by PID; it ends its own children) and remove
        its directory, first copying its log to `keep_log_in`."""
        stop_process(self.proc, timeout=15)
        self.proc = None
        if keep_log_in is not None:
            (keep_log_in / f"{self.name}.log").write_text(self.log())
        shutil.rmtree(self.dir, ignore_errors=True)

    def __enter__(self):
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


class Spamd(_Daemon):
    name = "spamd"

    def __init__(self, children: int = 2) -> None:
        self.binary = require_tool("spamd")
        super().__init__()
        self.children = children
        self.site = self.dir / "site"
        self.home = self.dir / "home"

    def write_config(self) -> None:
        self.site.mkdir()
        for pre in sorted(Path(SA_PRE_FILES).glob("*.pre")):
            if pre.name != "sa-compile.pre":  # Rule2XSBody would want /var/lib/spamassassin/compiled
                shutil.copy(pre, self.site / pre.name)
        (self.site / "local.cf").write_text(
            "# Throwaway spamd for the mtaserver test suite: stock rules, no learning.\n"
            "use_bayes 0\nbayes_auto_learn 0\nskip_rbl_checks 1\n"
        )
        nobody = pwd.getpwnam("nobody")
        self.home.mkdir()
        os.chown(self.home, nobody.pw_uid, nobody.pw_gid)

    def command(self) -> list[str]:
        self.write_config()
        return [
            self.binary,
            f"--listen={self.address}", "--allowed-ips=127.0.0.1",
            "--local",  # no DNS or other network tests
            "--nouser-config", "--username=nobody", f"--helper-home-dir={self.home}",
            f"--max-children={self.children}", "--min-children=1",
            f"--configpath={SA_RULES}", f"--siteconfigpath={self.site}",
            f"--pidfile={self.dir / 'spamd.pid'}", f"--syslog={self.log_path}",
        ]  # fmt: skip

    def answers(self) -> bool:
        return self._ask(b"PING SPAMC/1.5\r\n\r\n", b"SPAMD/1.5 0 PONG")


class Clamd(_Daemon):
    name = "clamd"

    def __init__(self, stream_max_length: str = "20M") -> None:
        self.binary = require_tool("clamd")
        super().__init__()
        self.db = self.dir / "db"
        self.conf = self.dir / "clamd.conf"
        self.stream_max_length = stream_max_length

    def write_config(self) -> None:
        self.db.mkdir()
        # An .ndb body signature: Name:TargetType(0 = any):Offset(* = anywhere):HexSignature.
        (self.db / "mtaserver-test.ndb").write_text(f"{VIRUS_NAME}:0:*:{VIRUS_PAYLOAD.hex()}\n")
        self.conf.write_text(
            f"""# Throwaway clamd for the mtaserver test suite: everything under {self.dir}.
Foreground yes
TCPSocket {self.port}
TCPAddr 127.0.0.1
DatabaseDirectory {self.db}
TemporaryDirectory {self.dir}
PidFile {self.dir}/clamd.pid
LogFile {self.log_path}
LogTime yes
StreamMaxLength {self.stream_max_length}
MaxThreads 2
SelfCheck 0
"""
        )

    def command(self) -> list[str]:
        self.write_config()
        return [self.binary, "--foreground", f"--config-file={self.conf}"]

    def answers(self) -> bool:
        return self._ask(b"zPING\0", b"PONG\0")


@pytest.fixture(scope="session", name="spamd")
def spamd_fixture(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Spamd]:
    server = Spamd().start()
    yield server
    server.stop(keep_log_in=tmp_path_factory.mktemp("spamd-log"))


@pytest.fixture(scope="session", name="clamd")
def clamd_fixture(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Clamd]:
    server = Clamd().start()
    yield server
    server.stop(keep_log_in=tmp_path_factory.mktemp("clamd-log"))

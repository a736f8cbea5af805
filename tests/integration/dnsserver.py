"""A real authoritative DNS server (NSD) on 127.0.0.1 serving test zones.

mtaserver's resolver (the production code path) is pointed at it with
`server.dns.nameservers: ["127.0.0.1:PORT"]`. A zone listed with `None` as its text has no
zone file, so NSD answers SERVFAIL for it.
"""

from __future__ import annotations

import socket
import subprocess
import time
from pathlib import Path
from typing import Self

from conftest import free_port, require_tool, stop_process


def zone(name: str, records: str, *, negative_ttl: int = 300, ttl: int = 3600) -> str:
    return (
        f"$ORIGIN {name}.\n$TTL {ttl}\n"
        f"@ IN SOA ns.{name}. hostmaster.{name}. 1 3600 600 86400 {negative_ttl}\n"
        f"@ IN NS ns.{name}.\nns IN A 127.0.0.1\n{records}\n"
    )


class Nsd:
    def __init__(self, tmp: Path, zones: dict[str, str | None]) -> None:
        self.binary = require_tool("nsd")
        self.dir = tmp / "nsd"
        self.dir.mkdir()
        self.port = free_port()
        self.zones = zones
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    def start(self) -> Nsd:
        d = self.dir
        conf = [
            "server:",
            f"  ip-address: 127.0.0.1@{self.port}",
            f'  zonesdir: "{d}"',
            '  username: ""',
            '  chroot: ""',
            f'  pidfile: "{d}/nsd.pid"',
            f'  xfrdfile: "{d}/xfrd.state"',
            f'  zonelistfile: "{d}/zone.list"',
            f'  logfile: "{d}/nsd.log"',
            '  database: ""',
            "  server-count: 1",
            "  verbosity: 1",
            "remote-control:",
            "  control-enable: no",
        ]
        for name, text in self.zones.items():
            if text is not None:
                (d / f"{name}.zone").write_text(text)
            conf += ["zone:", f'  name: "{name}"', f'  zonefile: "{name}.zone"']
        (d / "nsd.conf").write_text("\n".join(conf) + "\n")
        with open(d / "stderr", "wb") as stderr:  # the child keeps its own copy of the descriptor
            self.proc = subprocess.Popen([self.binary, "-d", "-c", str(d / "nsd.conf")], stdout=subprocess.DEVNULL, stderr=stderr)
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError("nsd exited: " + (d / "stderr").read_text() + (d / "nsd.log").read_text() if (d / "nsd.log").exists() else "")
            if self._answers():
                return self
            time.sleep(0.05)
        raise RuntimeError("nsd did not start")

    def _answers(self) -> bool:
        # A minimal SOA query for the first zone; any reply means NSD is serving.
        name = next(iter(self.zones))
        q = b"\x12\x34\x01\x00\x00\x01\x00\x00\x00\x00\x00\x00" + b"".join(bytes([len(p)]) + p.encode() for p in name.split(".")) + b"\x00\x00\x06\x00\x01"
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
            s.settimeout(0.2)
            try:
                s.sendto(q, ("127.0.0.1", self.port))
                return s.recv(512)[:2] == b"\x12\x34"
            except OSError:
                return False

    def stop(self) -> None:
        stop_process(self.proc)

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

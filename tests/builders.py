"""Builders both test layers share: MIME parts, zip and tar archives, config files, queue entries.

DESCRIPTION
    Test data that tests/unit and tests/integration both need, written once:
        b64              base64 with CRLF line ends, as a MIME part carries it
        zip_of, tar_of   an archive of {name: bytes} (tar_of's mode: "w", "w:gz", "w:bz2", ...)
        zeros_zip        200 MiB of zeros deflated to ~200 KB (a zip bomb), built once per run
        encrypted_flag   the archive with every member's "encrypted" flag set (local and central headers)
        load_config      a config file of a server line and the given YAML lines, loaded
        config_errors    the errors a config text is refused with
        commit_message   one message committed to a QueueStore (as the SMTP server would)
    Importable from both layers as `from builders import ...` (tests/ is on sys.path: its conftest.py).

SECURITY
    Test code. No sockets, subprocesses, threads or sleeps: tests/unit may use all of it
    (tests/unit/test_test_layers.py checks this module as it checks tests/unit). Files are
    written only where a caller's tmp_path says, and to a QueueStore the caller opened.

STANDARDS
    RFC 2045 (base64 transfer encoding, CRLF lines); PKWARE APPNOTE 4.3.7, 4.3.12 (general
    purpose bit 0, "encrypted").

CONFIG
    server.hostname, server.data_dir (load_config writes them); whatever the caller's lines set.
"""

from __future__ import annotations

import base64
import functools
import io
import tarfile
import time
import zipfile
from pathlib import Path
from typing import Any

import pytest

from mtaserver import config
from mtaserver.model import ClientInfo, Envelope, Recipient
from mtaserver.queue.store import QueueStore

# Lines for load_config.
MAILDIR = "domains: {local: [example.test], local_delivery: {type: maildir, path: mail}}"
NO_SCANNERS = "antispam: {enabled: false}\nantivirus: {enabled: false}"


def b64(data: bytes) -> bytes:
    return base64.encodebytes(data).replace(b"\n", b"\r\n")


def zip_of(members: dict[str, bytes], method: int = zipfile.ZIP_DEFLATED) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", method) as z:
        for name, data in members.items():
            z.writestr(name, data)
    return buf.getvalue()


def tar_of(members: dict[str, bytes], mode: str = "w") -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode=mode) as t:  # type: ignore[call-overload]
        for name, data in members.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            t.addfile(info, io.BytesIO(data))
    return buf.getvalue()


@functools.cache
def zeros_zip() -> bytes:
    """200 MiB of zeros in a ~200 KB zip (over attachment_limits.max_expanded, 100M by default)."""
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as z, z.open("zeros.bin", "w") as f:
        chunk = bytes(1 << 20)
        for _ in range(200):
            f.write(chunk)
    return buf.getvalue()


def encrypted_flag(data: bytes) -> bytes:
    """Set general purpose flag bit 0 (encrypted) of every member, local and central headers."""
    out = bytearray(data)
    for sig, off in ((b"PK\x03\x04", 6), (b"PK\x01\x02", 8)):
        i = out.find(sig)
        while i >= 0:
            out[i + off] |= 0x01
            i = out.find(sig, i + 4)
    return bytes(out)


def load_config(tmp_path: Path, *lines: str) -> Any:
    """The config of a server with its data_dir in tmp_path and `lines` (YAML) after it."""
    text = "\n".join(['server: {hostname: mx.example.test, data_dir: "' + f'{tmp_path}/var"' + "}", *lines]) + "\n"
    return config.load(str(tmp_path / "mtaserver.yaml"), text=text)


def config_errors(text: str, tmp_path: Path) -> list[str]:
    """The errors the config file `text` is refused with (the test fails if it is accepted)."""
    p = tmp_path / "m.yaml"
    p.write_text(text)
    with pytest.raises(config.ConfigError) as exc:
        config.load(p)
    return exc.value.errors


async def commit_message(
    store: QueueStore,
    rcpts: tuple[str, ...] | list[str] = ("x@remote.test",),
    *,
    sender: str = "a@client.test",
    text: bytes = b"Subject: t\r\n\r\nhello\r\n",
    arrival: float | None = None,
) -> str:
    """Commit one message (`arrival`: now unless given) from 192.0.2.1; its queue id."""
    qid = store.new_id()
    spool = store.new_spool(qid)
    spool.write(text)
    env = Envelope(queue_id=qid, sender=sender, recipients=[Recipient(address=r) for r in rcpts],
                   arrival=time.time() if arrival is None else arrival,
                   client=ClientInfo(ip="192.0.2.1", port=4711, helo="client.test"))  # fmt: skip
    await store.commit(spool, env)
    return qid

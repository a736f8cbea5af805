"""Local delivery into maildirs: one file per recipient, tmp/ then rename into new/.

DESCRIPTION
    domains.local_delivery.path/<domain>/<local part>/{tmp,new,cur}/. The message is written
    to tmp/ with a unique name, fsync'd, renamed into new/ and the directory fsync'd, so a
    reader never sees half a message and a delivered message survives a crash. A
    `Delivered-To:` header is prepended. Runs in a thread (blocking file I/O).

SECURITY
    Mailbox names come from envelope addresses: the local part and the domain are mapped to
    safe file names (no '/', no leading '.', no control characters), so an address can
    never name a path outside the maildir root.

STANDARDS
    The maildir format (cr.yp.to/proto/maildir.html): unique names time.M<usec>P<pid>Q<n>.host
"""

from __future__ import annotations

import os
import re
import socket
import time
from itertools import count
from pathlib import Path

_UNSAFE = re.compile(r"[^A-Za-z0-9._+\-=@]")
_seq = count()


def _safe(name: str) -> str:
    """A file-system-safe, reversible-enough name: anything unusual becomes %XX."""
    out = _UNSAFE.sub(lambda m: "".join(f"%{b:02X}" for b in m.group().encode("utf-8", "surrogateescape")), name)
    return "%2E" + out[1:] if out.startswith(".") else out or "%00"


def mailbox_dir(root: Path, address: str) -> Path:
    local, _, domain = address.rpartition("@")
    return root / _safe(domain.lower().rstrip(".")) / _safe(local)


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def deliver(root: Path, address: str, body: bytes) -> str:
    """Deliver one copy for `address`; returns the file name. Raises OSError on failure."""
    box = mailbox_dir(root, address)
    for sub in ("tmp", "new", "cur"):
        (box / sub).mkdir(parents=True, exist_ok=True, mode=0o700)
    now = time.time()
    name = f"{int(now)}.M{int(now * 1e6) % 1000000}P{os.getpid()}Q{next(_seq)}.{socket.gethostname()}"
    tmp = box / "tmp" / name
    header = b"Delivered-To: " + address.encode("utf-8", "surrogateescape") + b"\r\n"
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        with os.fdopen(fd, "wb", closefd=False) as out:
            out.write(header)
            out.write(body)
        os.fsync(fd)
    except BaseException:
        os.close(fd)
        os.unlink(tmp)
        raise
    os.close(fd)
    os.rename(tmp, box / "new" / name)
    _fsync_dir(box / "new")
    return name

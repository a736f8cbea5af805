"""Local delivery into maildirs: one file per recipient, tmp/ then into new/, as mail readers expect.

DESCRIPTION
    domains.local_delivery.path/<domain>/<local part>/{tmp,new,cur}/. The stored file is what a
    mail reader (Dovecot, mutt, Maildir-reading MUAs) expects of a maildir message, as Dovecot's
    own LMTP delivery writes it:
      - `Return-Path: <sender>` and `Delivered-To: <recipient>` on top (`<>` for the null sender);
      - LF line endings (the queue holds the SMTP form, CRLF; each CRLF becomes LF, nothing else
        changes, a bare CR stays);
      - written to tmp/ under a unique name, fsync'd, hard-linked into new/ (never replacing a
        file there; a rename where the file system has no hard links), new/ fsync'd, the tmp/
        name removed, so a reader never sees half a message and a delivered message survives a
        crash; directories made on the way are fsync'd into their parents.
    `body` is bytes or anything with `chunks()` yielding bytes (the queue manager's content
    reader), written piece by piece: a large message is never held whole. Runs in a thread
    (blocking file I/O).

SECURITY
    Mailbox names come from envelope addresses: the local part and the domain are mapped to
    safe file names (no '/', no leading '.', no control or format characters, no undecodable
    bytes: each of those becomes %XX of its UTF-8 bytes), so an address can never name a path
    outside the maildir root. Printable UTF-8 (an SMTPUTF8 local part) stays UTF-8, as the
    directory name a mail reader looks for. Header values never carry a control character.

STANDARDS
    The maildir format (cr.yp.to/proto/maildir.html): unique names <sec>.M<usec>P<pid>Q<n>.<host>,
    '/' and ':' in the host name written as \\057 and \\072. RFC 5321 4.4 (Return-Path at final
    delivery), RFC 6531 (UTF-8 addresses).

CONFIG
    domains.local_delivery.path (the caller resolves it).
"""

from __future__ import annotations

import errno
import os
import re
import socket
import time
from collections.abc import Iterable, Iterator
from itertools import count
from pathlib import Path
from typing import Any

_ASCII_UNSAFE = re.compile(r"[^A-Za-z0-9._+\-=@]")
_seq = count()


def _escape(ch: str) -> str:
    return "".join(f"%{b:02X}" for b in ch.encode("utf-8", "surrogateescape"))


def _safe_char(m: re.Match[str]) -> str:
    ch = m.group()
    # Printable non-ASCII (letters of any script, symbols) stays as it is; a control or format
    # character (bidi overrides, zero-width), a line separator or an undecodable byte does not.
    if not ch.isascii() and ch.isprintable() and not 0xD800 <= ord(ch) <= 0xDFFF:
        return ch
    return _escape(ch)


def _safe(name: str) -> str:
    """A file-system-safe name: printable UTF-8 as it is, anything unusual as %XX of its bytes."""
    out = _ASCII_UNSAFE.sub(_safe_char, name)
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


def _makedirs(path: Path) -> None:
    """mkdir -p with mode 0700, each directory made fsync'd into its parent."""
    if path.is_dir():
        return
    _makedirs(path.parent)
    try:
        path.mkdir(mode=0o700)
    except FileExistsError:
        return
    _fsync_dir(path.parent)


_HOST_SAFE = str.maketrans({"/": "\\057", ":": "\\072"})


def unique_name(now: float, pid: int, seq: int, host: str) -> str:
    """<sec>.M<usec>P<pid>Q<n>.<host> (maildir's unique name; '/' and ':' in host escaped). Pure."""
    return f"{int(now)}.M{int(now * 1e6) % 1000000}P{pid}Q{seq}.{host.translate(_HOST_SAFE)}"


def _header_value(text: str) -> bytes:
    """An address for a header: UTF-8, never a control character (a line break would add a header)."""
    return "".join(c for c in text if c.isprintable() or c == " ").encode("utf-8", "surrogateescape")


def trace_headers(sender: str | None, address: str) -> bytes:
    """`Return-Path: <sender>` (when the sender is known) and `Delivered-To: <address>`, LF-terminated. Pure."""
    out = b"" if sender is None else b"Return-Path: <" + _header_value(sender) + b">\n"
    return out + b"Delivered-To: " + _header_value(address) + b"\n"


def to_lf(pieces: Iterable[bytes]) -> Iterator[bytes]:
    """CRLF -> LF across piece boundaries; a lone CR stays. Pure."""
    cr = False  # the previous piece ended in CR, not yet written
    for piece in pieces:
        if not piece:
            continue
        if cr:
            piece = (b"" if piece.startswith(b"\n") else b"\r") + piece
        cr = piece.endswith(b"\r")
        if cr:
            piece = piece[:-1]
        yield piece.replace(b"\r\n", b"\n")
    if cr:
        yield b"\r"


def deliver(root: Path, address: str, body: Any, sender: str | None = None) -> str:
    """Deliver one copy for `address` (from `sender`, "" for <>); returns the file name in new/.
    `body`: bytes, or an object whose `chunks()` yields bytes. Raises OSError on failure."""
    box = mailbox_dir(root, address)
    for sub in ("tmp", "new", "cur"):
        _makedirs(box / sub)
    host = socket.gethostname()
    while True:
        name = unique_name(time.time(), os.getpid(), next(_seq), host)
        tmp = box / "tmp" / name
        try:
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
            break
        except FileExistsError:  # a stale file of an earlier process with our pid: next sequence number
            continue
    pieces = body.chunks() if hasattr(body, "chunks") else (bytes(body),)
    try:
        with os.fdopen(fd, "wb", closefd=False) as out:
            out.write(trace_headers(sender, address))
            for piece in to_lf(pieces):
                out.write(piece)
        os.fsync(fd)
    except BaseException:
        os.close(fd)
        os.unlink(tmp)
        raise
    os.close(fd)
    target = box / "new" / name
    try:
        try:
            os.link(tmp, target)  # never replaces a message already in new/ (rename would)
        except OSError as exc:
            if exc.errno not in (errno.EPERM, errno.ENOTSUP, errno.EOPNOTSUPP, errno.EMLINK, errno.EXDEV):
                raise
            os.rename(tmp, target)  # a file system without hard links
        _fsync_dir(box / "new")
    finally:
        if tmp.exists():
            os.unlink(tmp)
    return name

"""Logging setup and the one function that makes client bytes safe to log.

SECURITY
    Everything a client sent reaches the log only through `sanitize`: control characters,
    backslashes and non-ASCII bytes are escaped, and the result is capped in length, so a
    client can neither forge log lines nor flood them.
"""

from __future__ import annotations

import logging
import sys

def _escape(b: int) -> str:
    special = {0x0D: "\\r", 0x0A: "\\n", 0x09: "\\t", 0x5C: "\\\\"}
    if b in special:
        return special[b]
    return chr(b) if 0x20 <= b < 0x7F else f"\\x{b:02x}"


_TABLE = tuple(_escape(b) for b in range(256))


def sanitize(data: bytes | str, limit: int = 200) -> str:
    """Printable ASCII only; anything else as an escape. Longer input ends in '...'."""
    if isinstance(data, str):
        data = data.encode("utf-8", "surrogateescape")
    text = "".join(map(_TABLE.__getitem__, data[:limit]))
    return text + "..." if len(data) > limit else text


def setup(level: str = "info", *, program: str = "mtaserver") -> None:
    root = logging.getLogger()
    for h in list(root.handlers):
        root.removeHandler(h)
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter(f"%(asctime)s {program}/%(name)s[%(process)d]: %(message)s"))
    root.addHandler(handler)
    root.setLevel(level.upper())
    # aiosmtpd logs every peer at INFO under "mail.log"; our own lines say what matters.
    logging.getLogger("mail.log").setLevel(logging.WARNING)

"""The admin audit log: one line per state-changing admin API request.

DESCRIPTION
    `data_dir/<admin.audit_log>`, one line per request that changes (or tried to change)
    state: queue actions, flush, a postscreen cache drop, a configuration PUT/PATCH, and
    the refusals of those (wrong role, invalid document). Fields, separated by one space:

        2026-12-01T23:40:37.123Z initial 127.0.0.1 queue.hold {"ids":["..."]} {"count":2,"status":200}

    time (UTC, ISO 8601, milliseconds), token name (`-` when no token matched), client IP,
    action, selector (compact JSON), result (compact JSON). The first four are single words
    (`line.split(" ", 4)`); the rest is the two JSON values (`json.JSONDecoder().raw_decode`).

    `format_line` is pure; `AuditLog.write` appends the line with one `write` on a descriptor
    opened with O_APPEND (concurrent writers never interleave inside a line), mode 0600. The
    file is opened for each line: logrotate may move it at any time.

SECURITY
    Never writes a token: the caller passes the token's name. Selector and result values come
    from API clients; JSON escaping keeps them on one line (no forged lines).

CONFIG
    admin.audit_log, server.data_dir
"""

from __future__ import annotations

import json
import logging
import os
import time
from pathlib import Path
from typing import Any

log = logging.getLogger("admin")


def format_line(now: float, name: str, ip: str, action: str, selector: Any, result: Any) -> str:
    """One audit line (with its newline). Pure."""
    stamp = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(now)) + f".{int(now * 1000) % 1000:03d}Z"
    return " ".join([stamp, _word(name), _word(ip), _word(action), _json(selector), _json(result)]) + "\n"


def _word(text: str) -> str:
    """A field that must stay one word: anything but printable ASCII without spaces becomes '?'."""
    out = "".join(c if "!" <= c <= "~" else "?" for c in text)
    return out or "-"


def _json(value: Any) -> str:
    return json.dumps(value, separators=(",", ":"), sort_keys=True, ensure_ascii=True, default=str)


class AuditLog:
    def __init__(self, path: Path) -> None:
        self.path = path

    def write(self, name: str, ip: str, action: str, selector: Any, result: Any, *, now: float | None = None) -> None:
        """Append one line. An audit log that cannot be written is logged, never fatal to the request
        (the action has already happened by then)."""
        line = format_line(time.time() if now is None else now, name, ip, action, selector, result).encode()
        try:
            fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
            try:
                os.write(fd, line)
            finally:
                os.close(fd)
        except OSError as exc:
            log.error("admin audit log %s: cannot write: %s (action %s by %s)", self.path, exc.strerror or exc, action, name)

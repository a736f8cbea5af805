"""Logging setup and the one function that makes client bytes safe to log.

DESCRIPTION
    `setup(level, target=...)` sends every process's log to one place (advanced.log_target):
      stderr  one line per record: `2026-11-25 23:40:43,671 mtaserver/smtpd[13925]: message`
      syslog  facility mail, tagged like Postfix: `mtaserver/smtpd[13925]: message` (syslog's
              program name is "mtaserver": rsyslog stops the name at the slash)
      file    the same lines as stderr, appended to advanced.log_file; `reopen()` (SIGUSR1,
              in every process: the supervisor reopens first, then forwards the signal) closes it
              and opens the path again, so logrotate can move the file away and signal us
    `set_level` applies advanced.log_level again on reload.

SECURITY
    Everything a client sent reaches the log only through `sanitize`: control characters (C0,
    DEL, C1), format characters (bidi overrides, zero-width), line and paragraph separators,
    backslashes and bytes that are not UTF-8 are escaped (\\r \\n \\t \\\\ \\xNN of each byte), and
    the result is capped in length, so a client can neither forge log lines nor flood them;
    printable UTF-8 (an SMTPUTF8 address, a file name) stays as it is, readable. Text that goes
    back onto the wire (SMTP replies, DSN diagnostics, headers of messages without SMTPUTF8)
    uses `sanitize_ascii`, which escapes every non-ASCII byte as well.
"""

from __future__ import annotations

import logging
import logging.handlers
import os
import re
import stat
import sys
import time
from typing import TextIO

_pid = os.getpid()  # logged on every line; getpid(2) is a system call each time


def _forked() -> None:
    global _pid
    _pid = os.getpid()


os.register_at_fork(after_in_child=_forked)


def _escape(b: int) -> str:
    special = {0x0D: "\\r", 0x0A: "\\n", 0x09: "\\t", 0x5C: "\\\\"}
    if b in special:
        return special[b]
    return chr(b) if 0x20 <= b < 0x7F else f"\\x{b:02x}"


_TABLE = tuple(_escape(b) for b in range(256))
_NOT_PLAIN = re.compile(r"[^\x20-\x5b\x5d-\x7e]+")  # runs of anything but printable ASCII without the backslash


def _escape_run(m: re.Match[str]) -> str:
    out = []
    for ch in m.group():
        if ch > "\x7f" and ch.isprintable():  # printable UTF-8 stays; C1, Cf, Zl, Zp, Zs, Cs (undecodable) do not
            out.append(ch)
        else:
            out.extend(map(_TABLE.__getitem__, ch.encode("utf-8", "surrogateescape")))
    return "".join(out)


def _cut(data: bytes, limit: int) -> bytes:
    """The first `limit` bytes, less a UTF-8 sequence the cut would split."""
    cut = data[:limit]
    for k in range(1, min(4, len(cut)) + 1):
        b = cut[-k]
        if b < 0x80:
            break
        if b >= 0xC0:  # the lead byte of the last sequence: complete only with its continuation bytes
            if k < (2 if b < 0xE0 else 3 if b < 0xF0 else 4):
                cut = cut[:-k]
            break
    return cut


def sanitize(data: bytes | str, limit: int = 200) -> str:
    """For the log: printable text as it is, UTF-8 included; control and format characters,
    backslashes and bytes that are not UTF-8 as escapes. At most `limit` bytes of the input
    are shown; longer input ends in '...'."""
    if isinstance(data, str):
        data = data.encode("utf-8", "surrogateescape")
    if len(data) > limit:
        return _NOT_PLAIN.sub(_escape_run, _cut(data, limit).decode("utf-8", "surrogateescape")) + "..."
    return _NOT_PLAIN.sub(_escape_run, data.decode("utf-8", "surrogateescape"))


def sanitize_ascii(data: bytes | str, limit: int = 200) -> str:
    """For the wire (SMTP replies, DSN diagnostics, headers): printable ASCII only, anything else
    (non-ASCII too) as an escape. Longer input ends in '...'."""
    if isinstance(data, str):
        data = data.encode("utf-8", "surrogateescape")
    text = "".join(map(_TABLE.__getitem__, data[:limit]))
    return text + "..." if len(data) > limit else text


class LineFormatter(logging.Formatter):
    """`2026-11-25 23:40:43,671 mtaserver/smtpd[13925]: message`, the date made once a second.

    Same output as Formatter("%(asctime)s program/%(name)s[%(process)d]: %(message)s") at less
    than half its cost: a mail server logs about six lines per message."""

    def __init__(self, program: str) -> None:
        super().__init__()
        self.program = program
        self._second = -1
        self._stamp = ""

    def format(self, record: logging.LogRecord) -> str:
        second = int(record.created)
        if second != self._second:
            self._second, self._stamp = second, time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(second))
        line = f"{self._stamp},{int(record.msecs):03d} {self.program}/{record.name}[{_pid}]: {record.getMessage()}"
        if record.exc_info:
            record.exc_text = record.exc_text or self.formatException(record.exc_info)
        if record.exc_text:
            line += "\n" + record.exc_text
        if record.stack_info:
            line += "\n" + self.formatStack(record.stack_info)
        return line


class SyslogFormatter(logging.Formatter):
    """`mtaserver/smtpd[13925]: message`: syslog adds the time and the host."""

    def __init__(self, program: str) -> None:
        super().__init__()
        self.program = program

    def format(self, record: logging.LogRecord) -> str:
        line = f"{self.program}/{record.name}[{_pid}]: {record.getMessage()}"
        if record.exc_info:
            record.exc_text = record.exc_text or self.formatException(record.exc_info)
        if record.exc_text:
            line += "\n" + record.exc_text
        return line


def _open_log(path: str, owner: tuple[int, int] | None) -> TextIO:
    """The log file for appending. As root with an `owner` (server.user's ids: the workers open
    it again on SIGUSR1) the file is given to it only when we just made it, or when it is a
    regular file with one link owned by root: never a hard link the mail user planted to a
    file of root's (/etc/shadow), never a file of a third user."""
    flags = os.O_WRONLY | os.O_APPEND | os.O_CLOEXEC | os.O_NOFOLLOW
    try:
        fd, created = os.open(path, flags | os.O_CREAT | os.O_EXCL, 0o640), True
    except FileExistsError:
        fd, created = os.open(path, flags), False
    if owner is not None and os.geteuid() == 0:
        st = os.fstat(fd)
        if created or (stat.S_ISREG(st.st_mode) and st.st_nlink == 1 and st.st_uid == 0):
            os.fchown(fd, *owner)
    return open(fd, "a", encoding="utf-8", errors="backslashreplace")  # the handler closes it


class ReopeningFileHandler(logging.StreamHandler):
    """Appends to a file; `reopen` opens the path again (after logrotate moved the file)."""

    def __init__(self, path: str, owner: tuple[int, int] | None = None) -> None:
        super().__init__(_open_log(path, owner))
        self.path = path
        self.owner = owner

    def reopen(self) -> None:
        try:
            new = _open_log(self.path, self.owner)
        except OSError as exc:  # keep writing to the old file rather than to nowhere
            print(f"mtaserver: cannot reopen the log file {self.path}: {exc}", file=sys.stderr)
            return
        self.acquire()
        try:
            old, self.stream = self.stream, new
        finally:
            self.release()
        try:
            old.close()
        except OSError:
            pass

    def close(self) -> None:
        self.acquire()
        try:
            try:
                self.stream.close()
            except OSError:
                pass
            super().close()
        finally:
            self.release()


def setup(
    level: str = "info", *, program: str = "mtaserver", target: str = "stderr", file: str | None = None,
    syslog_socket: str = "/dev/log", owner: tuple[int, int] | None = None,
) -> None:  # fmt: skip
    """Log to `target` (stderr | syslog | file) at `level`. A syslog socket that cannot be
    reached or a file that cannot be opened falls back to stderr, saying so there.
    `owner` (uid, gid): the log file is created for them (the workers reopen it as that user)."""
    root = logging.getLogger()
    for h in list(root.handlers):
        root.removeHandler(h)
        h.close()
    # Nobody reads the caller's file and line or the thread name: skip collecting them.
    logging._srcfile = None  # documented switch (logging/__init__.py) that skips findCaller
    logging.logThreads = False
    logging.logMultiprocessing = False
    logging.logProcesses = False  # the formatter keeps the pid itself
    handler: logging.Handler | None = None
    try:
        if target == "syslog":
            handler = logging.handlers.SysLogHandler(syslog_socket, facility=logging.handlers.SysLogHandler.LOG_MAIL)
            handler.setFormatter(SyslogFormatter(program))
        elif target == "file" and file:
            handler = ReopeningFileHandler(file, owner)
            handler.setFormatter(LineFormatter(program))
    except OSError as exc:
        print(f"{program}: cannot log to {target} ({file or syslog_socket}): {exc}; logging to stderr", file=sys.stderr)
        handler = None
    if handler is None:
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(LineFormatter(program))
    root.addHandler(handler)
    root.setLevel(level.upper())
    # aiosmtpd logs every peer at INFO under "mail.log"; our own lines say what matters.
    logging.getLogger("mail.log").setLevel(logging.WARNING)


def set_level(level: str) -> None:
    """advanced.log_level again (reload)."""
    logging.getLogger().setLevel(level.upper())


def reopen() -> None:
    """SIGUSR1: every file handler opens its path again (logrotate moved the file)."""
    for h in logging.getLogger().handlers:
        if isinstance(h, ReopeningFileHandler):
            h.reopen()

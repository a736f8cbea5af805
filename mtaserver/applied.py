"""Which configuration each server process runs, so that "save and apply" means applied.

DESCRIPTION
    Every process that serves (the SMTP workers, the queue manager's) keeps
    data_dir/run/config.<pid>: the digest of the configuration file's text it runs
    (config.Config.digest), written when it starts and after each reload it applied, removed
    when it stops. The admin API changes the file, has every process reload (SIGHUP through
    the supervisor) and answers once every live process has written the new text's digest
    (`behind` is empty), or after its wait with the pids still behind: its 200 then means the
    change is in effect in every process, not only in the API's own. (The SMTP workers take
    the SIGHUP a moment after the API's process; a client's next message went to a worker
    that still ran the old config.)

    A record whose process is gone (kill -9) is removed by `behind`, and every record by
    `clear` when the server starts. Records are written as
    a temporary file and a rename (a reader never sees half a digest) and are not fsync'd: they
    describe running processes, which a crash ends.

SECURITY
    The directory is the mail user's (server.user), inside data_dir. A record is read as a pid
    in its name and a hex digest in it; anything else there is ignored.

CONFIG
    server.data_dir
"""

from __future__ import annotations

import contextlib
import os
from pathlib import Path

RUN_DIR = "run"
PREFIX = "config."


def record(data_path: Path, pid: int, digest: str) -> None:
    """Say that process `pid` runs the configuration `digest`. Raises OSError."""
    d = Path(data_path) / RUN_DIR
    d.mkdir(mode=0o750, exist_ok=True)
    tmp = d / f".{PREFIX}{pid}.tmp"
    tmp.write_text(digest, encoding="ascii")
    os.replace(tmp, d / f"{PREFIX}{pid}")


def forget(data_path: Path, pid: int) -> None:
    """Process `pid` stops: its record goes (never raises)."""
    with contextlib.suppress(OSError):
        (Path(data_path) / RUN_DIR / f"{PREFIX}{pid}").unlink()


def clear(data_path: Path) -> None:
    """At the server's start, before any process serves: the records of an instance that was
    killed go (their pids may belong to anyone by now). Never raises."""
    d = Path(data_path) / RUN_DIR
    with contextlib.suppress(OSError):
        for name in os.listdir(d):
            if name.startswith((PREFIX, f".{PREFIX}")):
                with contextlib.suppress(OSError):
                    (d / name).unlink()


def behind(data_path: Path, digest: str) -> list[int]:
    """The live processes whose record names another configuration than `digest`."""
    d = Path(data_path) / RUN_DIR
    try:
        names = os.listdir(d)
    except OSError:
        return []
    out = []
    for name in names:
        pid_text = name.removeprefix(PREFIX)
        if pid_text == name or not pid_text.isdigit():
            continue
        pid = int(pid_text)
        if not _alive(pid):
            forget(data_path, pid)
            continue
        try:
            runs = (d / name).read_text(encoding="ascii", errors="replace").strip()
        except OSError:
            continue
        if runs != digest:
            out.append(pid)
    return sorted(out)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's process: it exists
        return True
    return True

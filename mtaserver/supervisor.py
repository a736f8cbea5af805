"""Running as a daemon: the instance lock, the data directory's owner, the privilege drop.

DESCRIPTION
    The instance lock. `InstanceLock(data_dir).acquire()` takes an exclusive, non-blocking
    flock(2) on data_dir/mtaserver.lock and writes its pid inside; a second `mtaserver run` on
    the same data_dir gets `AlreadyRunning` naming that pid. The lock lives as long as the
    open file description: the kernel drops it when the last process holding it goes, kill -9
    included, so there is no stale pid file to clean up. The file itself is never removed
    (removing it would let a starting server lock a file nobody else opens again).

    The descriptor is O_CLOEXEC (a program a worker runs does not keep it) but is inherited by
    fork(2), so the supervisor and every worker hold the one lock together: the lock is free
    only when the last of them is gone. A worker never unlocks (flock(LOCK_UN) on the shared
    description would free it for all); only the process that acquired it releases it.

    kill -9 of the supervisor alone: its workers still hold the lock, so nothing else can start
    on the data_dir while they live, and each worker asked the kernel (`die_with_parent`:
    prctl PR_SET_PDEATHSIG) for a SIGTERM when its parent dies: they stop gracefully, as on
    `mtaserver stop`, and the lock is free once the last has exited. A new start in between
    is refused with the dead supervisor's pid (the pid written in the file).

    `holder_pid(data_dir)`: the pid of the process that holds the lock, None when it is free
    (0 when it is held but the pid is not written yet). `mtaserver queue ...` uses it to know
    whether a server runs, and acquires the same lock to act on the spool when none does.

    Privileges (Postfix's mail_owner): with `server.user` set, the server is started as root,
    binds its listeners, acquires the lock, gives the whole data_dir tree to
    server.user:server.group (`own_tree`), refuses to start when data_dir/queue, one of its
    directories or data_dir/metrics is a symbolic link (`symlinked_dirs`), recovers the queue
    and empties data_dir/metrics with the mail user's effective ids (`as_user`: root's work
    in the user's tree can only touch what the user could), and then every process that serves (the worker
    processes, the queue manager's; with server.user there is a supervisor even with `workers: 1`)
    drops to that user (`drop_privileges`: initgroups, setgid, setuid, and a check that root
    cannot be regained) before it opens its event loop. The supervisor stays root: it reads no
    client byte; it forks, forwards signals, restarts a dead worker on the same sockets, and
    writes the config file for the admin API after its own checks (admin/rootwriter.py).
    Everything a worker creates afterwards (queue files, status files, the postscreen cache,
    maildirs) belongs to it; what root made in data_dir meanwhile (`mtaserver dkim keygen`, a
    run as root before server.user was set) is given to it at the next start.

SECURITY
    No client data here. The pid read from the lock file is only printed. `own_tree` never
    follows a symbolic link: it walks with os.fwalk (each directory opened relative to its
    parent's descriptor and checked to be the one listed) and changes each entry relative to
    that descriptor without following it, so neither a planted link nor a directory swapped
    for a link meanwhile can give a file elsewhere to the mail user. After the drop a worker
    cannot become root again (checked), so a compromised session holds only the mail user's
    files. Files the workers read after the drop (TLS key, users file, the config file on
    reload) must be readable by server.user or server.group.

CONFIG
    server.data_dir, server.user, server.group
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import fcntl
import logging
import os
import signal
import stat
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from . import logutil
from .config import Config, resolve_path

log = logging.getLogger("master")

LOCK_NAME = "mtaserver.lock"


class AlreadyRunning(Exception):
    """Another process holds the instance lock of this data_dir."""

    def __init__(self, pid: int | None, data_dir: Path | str = "") -> None:
        self.pid = pid
        self.data_dir = str(data_dir)
        who = f"pid {pid}" if pid else "pid unknown"
        super().__init__(f"already running ({who}) on data_dir {self.data_dir}")


def _read_pid(fd: int) -> int | None:
    try:
        text = os.pread(fd, 32, 0).decode("ascii", "replace").strip()
    except OSError:
        return None
    return int(text) if text.isdigit() else None


class InstanceLock:
    """The lock one running server holds on its data_dir for its whole life (see DESCRIPTION)."""

    def __init__(self, data_dir: Path) -> None:
        self.data_dir = Path(data_dir)
        self.path = self.data_dir / LOCK_NAME
        self.fd: int | None = None

    def acquire(self) -> None:
        """Take the lock now or raise AlreadyRunning naming the holder's pid. Creates data_dir."""
        if self.fd is not None:
            return
        self.data_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC | os.O_NOFOLLOW, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as exc:
            pid = _read_pid(fd)
            os.close(fd)
            if exc.errno in (errno.EWOULDBLOCK, errno.EAGAIN):
                raise AlreadyRunning(pid, self.data_dir) from None
            raise
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode("ascii"), 0)
        self.fd = fd

    def release(self) -> None:
        """Only in the process that acquired it, when every process it forked has exited."""
        fd, self.fd = self.fd, None
        if fd is None:
            return
        try:
            os.ftruncate(fd, 0)  # no pid left behind for holder_pid to read
        except OSError:
            pass
        fcntl.flock(fd, fcntl.LOCK_UN)
        os.close(fd)


def holder_pid(data_dir: Path | str) -> int | None:
    """The pid of the process holding data_dir's instance lock; None when nobody holds it
    (0 when somebody does but has not written its pid yet)."""
    try:
        fd = os.open(Path(data_dir) / LOCK_NAME, os.O_RDONLY | os.O_CLOEXEC | os.O_NOFOLLOW)
    except FileNotFoundError:
        return None
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
        except BlockingIOError:
            return _read_pid(fd) or 0
        fcntl.flock(fd, fcntl.LOCK_UN)
        return None
    finally:
        os.close(fd)


# ---------------------------------------------------------------------------------------------
# The mail user.


@dataclass(frozen=True, slots=True)
class Identity:
    """Who the serving processes run as (server.user, server.group)."""

    user: str
    uid: int
    gid: int


def identity(user: str | None, group: str | None) -> Identity | None:
    """server.user / server.group -> the ids to run as; None: stay as started. Raises KeyError
    for an unknown name (config.py reports it as a config error before this runs)."""
    if user is None:
        return None
    import grp
    import pwd

    pw = pwd.getpwnam(user)
    gid = grp.getgrnam(group).gr_gid if group is not None else pw.pw_gid
    return Identity(user=pw.pw_name, uid=pw.pw_uid, gid=gid)


def check_can_switch(ident: Identity | None) -> str | None:
    """Why the configured identity cannot be taken from here, or None when it can."""
    if ident is None or os.geteuid() == 0:
        return None
    if os.geteuid() == ident.uid and os.getegid() == ident.gid:
        return None
    return f"server.user: running as uid {os.geteuid()}, not root: cannot switch to {ident.user} (uid {ident.uid})"


def own_tree(root: Path, ident: Identity | None) -> int:
    """Give `root` and everything under it to the mail user (only as root). Returns the number
    of entries changed. Symbolic links are changed themselves, never followed."""
    if ident is None or os.geteuid() != 0:
        return 0
    changed = 0

    def fix(name: str, dir_fd: int | None) -> None:
        nonlocal changed
        st = os.stat(name, dir_fd=dir_fd, follow_symlinks=False)
        if st.st_uid != ident.uid or st.st_gid != ident.gid:
            os.chown(name, ident.uid, ident.gid, dir_fd=dir_fd, follow_symlinks=False)
            changed += 1

    fix(str(root), None)
    for _top, dirs, files, dir_fd in os.fwalk(root, follow_symlinks=False):
        for name in dirs + files:
            try:
                fix(name, dir_fd)
            except FileNotFoundError:  # a file that went meanwhile
                pass
    return changed


def symlinked_dirs(data_dir: Path, queue_dirs: tuple[str, ...]) -> list[str]:
    """The directories root works in at start (data_dir/queue, its `queue_dirs`, data_dir/metrics)
    that are symbolic links: a start with one is refused (the mail user may have planted it)."""
    out = []
    for path in [data_dir / "queue", *(data_dir / "queue" / d for d in queue_dirs), data_dir / "metrics"]:
        try:
            if stat.S_ISLNK(os.lstat(path).st_mode):
                out.append(str(path))
        except FileNotFoundError:
            pass
    return out


@contextlib.contextmanager
def as_user(ident: Identity | None) -> Iterator[None]:
    """Work with the mail user's effective uid, gid and groups, then be root again (root keeps
    its saved uid meanwhile). A no-op without a user or when not root."""
    if ident is None or os.geteuid() != 0:
        yield
        return
    groups, egid = os.getgroups(), os.getegid()
    os.setgroups([ident.gid])
    os.setegid(ident.gid)
    os.seteuid(ident.uid)
    try:
        yield
    finally:
        os.seteuid(0)
        os.setegid(egid)
        os.setgroups(groups)


def own_file(path: Path | str, ident: Identity | None) -> None:
    """One file (a log file the supervisor creates) for the mail user, when we are root."""
    if ident is not None and os.geteuid() == 0:
        os.lchown(path, ident.uid, ident.gid)


def drop_privileges(ident: Identity | None) -> None:
    """Become server.user for good: supplementary groups, gid, uid. A no-op without a user or
    when already that user. Raises PermissionError when it cannot be done or undone-proof."""
    if ident is None:
        return
    if os.getuid() == ident.uid and os.geteuid() == ident.uid and os.getgid() == ident.gid:
        return
    why = check_can_switch(ident)
    if why is not None:
        raise PermissionError(why)
    os.initgroups(ident.user, ident.gid)  # the user's own groups (ssl-cert, say) and server.group
    os.setresgid(ident.gid, ident.gid, ident.gid)
    os.setresuid(ident.uid, ident.uid, ident.uid)
    if ident.uid != 0:
        try:
            os.setuid(0)
        except PermissionError:
            pass
        else:
            raise PermissionError("privilege drop failed: root could be regained")
    if os.getresuid() != (ident.uid,) * 3 or os.getresgid() != (ident.gid,) * 3:
        raise PermissionError("privilege drop failed: the ids did not change")


_PR_SET_PDEATHSIG = 1  # linux/prctl.h


def die_with_parent(parent: int) -> None:
    """Ask the kernel for a SIGTERM (a graceful stop) when the supervisor dies. Call it after
    drop_privileges: a change of credentials clears the request. If the parent is already gone,
    the SIGTERM is sent now (it is handled once the worker's loop runs)."""
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        if libc.prctl(_PR_SET_PDEATHSIG, int(signal.SIGTERM), 0, 0, 0) != 0:
            log.warning("prctl(PR_SET_PDEATHSIG) failed: errno %d", ctypes.get_errno())
    except (OSError, AttributeError) as exc:
        log.warning("prctl(PR_SET_PDEATHSIG) unavailable: %s", exc)
    if os.getppid() != parent:
        os.kill(os.getpid(), signal.SIGTERM)


# ---------------------------------------------------------------------------------------------
# What `mtaserver run` does with the above (app.py calls these).


def setup_logging(cfg: Config, ident: Identity | None) -> None:
    """advanced.log_* -> logutil.setup; a log file is created for the mail user."""
    adv = cfg.advanced
    path = str(resolve_path(cfg.source, adv.log_file)) if adv.log_file else None
    owner = (ident.uid, ident.gid) if ident is not None else None
    logutil.setup(adv.log_level, target=adv.log_target, file=path, syslog_socket=adv.syslog_socket, owner=owner)


def lock_instance(cfg: Config) -> InstanceLock | None:
    """The instance lock of cfg's data_dir, or None after saying on stderr (and in the log, when
    it goes elsewhere) that another server holds it."""
    lock = InstanceLock(cfg.data_path)
    try:
        lock.acquire()
    except AlreadyRunning as exc:
        print(f"mtaserver: {exc}", file=sys.stderr)
        if cfg.advanced.log_target != "stderr":
            log.error("%s", exc)
        return None
    return lock


def enter_worker(ident: Identity | None, parent: int) -> None:
    """In a forked worker, before its event loop: become the mail user, die with the supervisor."""
    drop_privileges(ident)
    die_with_parent(parent)

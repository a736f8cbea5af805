"""Composition root: the supervisor, the worker processes, signals and reload.

DESCRIPTION
    `run(path)` loads the config, recovers the queue (tmp/ swept, active/ requeued), binds
    one listening socket per listener per worker (SO_REUSEPORT: the kernel spreads new
    connections over the workers, all of one client IP to the same worker), and then
    either serves in this process (`workers: 1` without server.user) or forks the workers
    and supervises them: a worker that dies is started again on the same sockets, so no
    queued connection is lost with it. The queue manager (and the admin API) then runs in
    a process of its own. With server.user set there is always a supervisor, `workers: 1`
    included (one SMTP worker, the queue manager's process): it stays root, and writes the
    config file for the admin API over a private channel (admin/rootwriter.py).

    Signals (to the supervisor; it forwards them):
      SIGHUP   validate the file again and hot-apply it; a bad file is refused, logged with
               its `file:line: key: message` errors, and the running config stays
      SIGTERM  graceful stop: stop accepting, 421 4.3.2 to idle sessions, finish commands in
      SIGINT   progress (commits included) within `SHUTDOWN_GRACE`, then exit 0
      SIGUSR1  reopen the log file (advanced.log_target: file), the supervisor's first

    Before any of that: the instance lock on data_dir, and with server.user the data_dir tree
    is given to that user and every serving process drops to it (mtaserver/supervisor.py).

SECURITY
    Binds the listening sockets before forking, so a future privilege drop can happen in the
    workers before the first accept (STYLE 2.10).
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import errno
import gc
import logging
import os
import select
import signal
import socket
import ssl
import struct
import sys
import time
from collections.abc import Callable
from pathlib import Path

from . import applied, logutil, supervisor
from . import config as config_mod
from .admin import metrics, rootwriter
from .admin.rootwriter import RootWriter
from .admin.tokens import TokenFileError, load_tokens
from .config import Config, ConfigError, Listener
from .filters.definitions import DefinitionsUpdater
from .queue.manager import QueueManager, notify
from .queue.store import DIRS, QueueStore
from .runtime import Runtime, check_files
from .smtp.protocol import SmtpServer
from .values import Endpoint

log = logging.getLogger("master")

SHUTDOWN_GRACE = 30.0  # seconds a busy session gets to finish after SIGTERM
RESTART_DELAY = 1.0  # between a worker's death and its restart
_SIGNALS = {signal.SIGHUP, signal.SIGTERM, signal.SIGINT, signal.SIGUSR1}


def bind(ep: Endpoint, *, reuse_port: bool) -> socket.socket:
    family = socket.AF_INET6 if ":" in ep.host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    if reuse_port:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    if family == socket.AF_INET6:
        sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
    sock.bind((ep.host, ep.port))
    sock.listen(1024)
    sock.setblocking(False)
    return sock


def steering_wanted(cfg: Config) -> bool:
    """Only a per-IP limit (connections or rate) needs one client's connections in one worker.

    Steering by IP puts all of one address's sessions on one core, which is what a limit per
    IP needs and what a busy single client (a relay, a load test) does not: with no limit the
    kernel spreads connections over the workers by the whole 4-tuple.
    """
    lim = cfg.server.limits
    return lim.connections_per_ip > 0 or lim.connection_rate_per_ip > 0


def set_steering(groups: list[list[socket.socket]], workers: int, wanted: bool) -> None:
    """Attach or detach the by-IP steering on every listener's reuseport group."""
    for sock in groups[0] if groups else []:
        try:
            if wanted:
                steer_by_client_ip(sock, workers)
            else:
                sock.setsockopt(socket.SOL_SOCKET, _SO_DETACH_REUSEPORT_BPF, 0)
        except OSError as exc:
            if wanted:
                log.warning("cannot steer clients to workers by IP (%s): per-IP limits apply per worker", exc)
            elif exc.errno != errno.ENOENT:  # ENOENT: nothing was attached
                log.warning("cannot detach the by-IP steering (%s)", exc)


def steer_by_client_ip(sock: socket.socket, workers: int) -> None:
    """Make the kernel hand every connection from one client IP to the same worker.

    SO_REUSEPORT alone spreads connections by a hash of the whole 4-tuple, so the per-IP
    state each worker keeps (server.limits.connections_per_ip) would see only part of a
    client's connections. A classic BPF program on the reuseport group picks the socket by
    source address instead: index = saddr (IPv4; last 32 bits for IPv6) % workers.
    """
    off = _SKF_NET_OFF + (12 if sock.family == socket.AF_INET else 20)  # IPv4 / IPv6 saddr
    prog = [(0x20, 0, 0, off & 0xFFFFFFFF), (0x94, 0, 0, workers), (0x16, 0, 0, 0)]  # ld [off]; mod #n; ret a
    buf = ctypes.create_string_buffer(b"".join(struct.pack("=HBBI", *ins) for ins in prog))
    sock.setsockopt(socket.SOL_SOCKET, _SO_ATTACH_REUSEPORT_CBPF, struct.pack("HL", len(prog), ctypes.addressof(buf)))


_SO_ATTACH_REUSEPORT_CBPF = 51  # linux/asm-generic/socket.h
_SO_DETACH_REUSEPORT_BPF = 68
_SKF_NET_OFF = -0x100000  # linux/filter.h: load relative to the network header


def listeners_after(bound: list[Listener], new: Config) -> list[Listener]:
    """The settings each bound socket serves under `new` (in the order of `bound`, the listeners
    the sockets were bound for): the new config's listener of the same name, else of the same
    address; else (renamed and moved: a restart binds it) the one it served. Pure."""
    by_name = {x.name: x for x in new.server.listeners}
    by_address = {str(x.address): x for x in new.server.listeners}
    out = []
    for old in bound:
        lst = by_name.get(old.name) or by_address.get(str(old.address)) or old
        if (lst.tls == "implicit") != (old.tls == "implicit"):
            # The socket was bound with (or without) TLS: a session must not believe otherwise
            # (AUTH in cleartext). The switch waits for a restart; it is logged by reload().
            lst = lst.model_copy(update={"tls": old.tls})
        out.append(lst)
    return out


def bound_to(bound: list[Listener], new: Config) -> Config:
    """`new` as a worker started on sockets bound for `bound` must run it: its listeners are
    listeners_after (the supervisor restarts a dead worker on the sockets of the start)."""
    listeners = listeners_after(bound, new)
    if listeners == list(new.server.listeners):
        return new
    return new.model_copy(update={"server": new.server.model_copy(update={"listeners": listeners})})


class Worker:
    """One process serving every listener; owns its event loop, sessions and queue handle."""

    def __init__(
        self, cfg: Config, path: str, sockets: list[socket.socket], index: int, *, manager: bool,
        admin: socket.socket | None = None, root_channel: socket.socket | None = None,
    ) -> None:
        self.with_manager = manager
        self.config = cfg  # what the queue manager reads; swapped with the runtime on reload
        self.runtime: Runtime | None = None  # built after fork, in serve(): it owns loop-bound objects
        self.path = path
        self.sockets = sockets
        self.index = index
        self.store = QueueStore(
            cfg.queue_path, sync_threads=cfg.queue.sync_threads,
            spool_in_memory=cfg.queue.spool_in_memory, spool_memory_total=cfg.queue.spool_memory_total,
        )
        self.store.announce_delay = cfg.queue.wakeup_delay
        self.servers: list[SmtpServer] = []
        self._stop = asyncio.Event()
        self._implicit_tls: ssl.SSLContext | None = None  # the context the tls: implicit sockets were made with
        self.admin_socket = admin  # admin.listen, bound by run(): the queue manager's process serves the admin API
        self.root_channel = root_channel  # under server.user: to the root supervisor, which writes the config (rootwriter.py)
        self.manager: QueueManager | None = None  # the admin API's queue actions go through it
        self.reloads = 0  # reloads tried (SIGHUP or the admin API), applied or refused
        self.reload_hooks: list[Callable[[], None]] = []  # run after each (the admin API: tokens, waiting PUT/PATCH)
        self.definitions: DefinitionsUpdater | None = None  # ClamAV signature updates: in the queue manager's worker only

    def _build(self, cfg: Config, previous: Runtime | None, listeners: list[Listener] | None = None) -> Runtime:
        # One worker is enough for the periodic postscreen cache cleanup.
        return Runtime.build(cfg, previous, listeners=listeners, screener_cleanup=self.index == 0)

    def reload(self) -> None:
        """SIGHUP: validate the file and hot-apply it (or log why not); then the reload hooks run."""
        self.reloads += 1
        try:
            self._reload()
        finally:
            for hook in self.reload_hooks:
                hook()

    def _reload(self) -> None:
        try:
            new = config_mod.load(self.path)
        except ConfigError as exc:
            for line in exc.errors:
                log.error("reload refused: %s", line)
            return
        old_cfg = self.config
        old_rt = self.runtime
        rt = None
        if self.sockets:
            listeners = listeners_after([srv.listener for srv in self.servers], new)
            try:  # before anything is applied: all or nothing
                rt = self._build(new, old_rt, listeners)
            except (OSError, ValueError) as exc:
                log.error("reload refused: %s: %s", self.path, str(exc).replace("\n", "; "))
                return
        if [(x.name, str(x.address)) for x in new.server.listeners] != [(x.name, str(x.address)) for x in old_cfg.server.listeners]:
            log.warning("reload: adding, removing or moving a listener needs a restart; other settings applied")
        implicit = {x.name for x in old_cfg.server.listeners if x.tls == "implicit"} ^ {x.name for x in new.server.listeners if x.tls == "implicit"}
        if implicit:
            log.warning("reload: tls: implicit on or off needs a restart (listener %s); other settings applied", ", ".join(sorted(implicit)))
        self.config = new
        self.store.announce_delay = new.queue.wakeup_delay
        if self.definitions is not None and new.antivirus != old_cfg.antivirus:
            self.definitions.reconfigure()  # it reads self.config: update now with the new settings
        logutil.set_level(new.advanced.log_level)
        if (new.advanced.log_target, new.advanced.log_file) != (old_cfg.advanced.log_target, old_cfg.advanced.log_file):
            log.warning("reload: advanced.log_target and log_file changes need a restart; other settings applied")
        if rt is not None and self._implicit_tls is not None and new.server.tls.cert:
            # The implicit-TLS sockets keep the context they were made with: load the (renewed)
            # certificate into it, so their new handshakes use it (Runtime.build loaded it once).
            try:
                self._implicit_tls.load_cert_chain(
                    config_mod.resolve_path(new.source, new.server.tls.cert), config_mod.resolve_path(new.source, new.server.tls.key or "")
                )
            except (OSError, ssl.SSLError) as exc:  # cannot happen after a build that loaded them; say so if it does
                log.error("reload: tls: implicit listeners keep the old certificate: %s", exc)
        if rt is not None:
            asyncio.get_running_loop().create_task(rt.check_auth())  # before the first AUTH, in practice
            self.runtime = rt
            for srv, listener in zip(self.servers, listeners, strict=True):
                srv.runtime = rt  # new sessions take it; running ones finish on the old one
                srv.listener = listener
            if old_rt is not None:
                asyncio.get_running_loop().create_task(old_rt.retire(rt, delay=SHUTDOWN_GRACE))
        changed = config_mod.diff(old_cfg, new)
        rebuilt = f" (rebuilt: {', '.join(rt.changes)})" if rt is not None and rt.changes else ""
        log.info("reload: applied from %s: %s%s", self.path, f"changed {', '.join(changed)}" if changed else "no change", rebuilt)
        self._record_applied()

    def _record_applied(self) -> None:
        """data_dir/run/config.<pid>: this process runs self.config (applied.py)."""
        try:
            applied.record(self.config.data_path, os.getpid(), self.config.digest)
        except OSError as exc:
            log.warning("cannot record the configuration this process runs: %s", exc.strerror or exc)

    async def serve(self) -> None:
        loop = asyncio.get_running_loop()
        loop.add_signal_handler(signal.SIGHUP, self.reload)
        loop.add_signal_handler(signal.SIGTERM, self._stop.set)
        loop.add_signal_handler(signal.SIGINT, self._stop.set)
        loop.add_signal_handler(signal.SIGUSR1, logutil.reopen)  # logrotate: the supervisor reopened first
        # A forked worker starts with these blocked (see _supervise.spawn); a signal sent to
        # it meanwhile is pending and is handled here, by the handlers just installed.
        signal.pthread_sigmask(signal.SIG_UNBLOCK, _SIGNALS)
        self.store.open()
        cfg = self.config
        manager_task = None
        if self.with_manager and cfg.queue.manager:
            manager = QueueManager(lambda: self.config, self.store)
            self.store.on_commit = manager.announce
            self.store.inline_commit = False  # the deliveries share this loop: never block it
            manager_task = loop.create_task(manager.run(self._stop))
            manager_task.add_done_callback(_log_crash)
            self.manager = manager
        elif not self.with_manager:
            self.store.on_commit = notify(self.store.root)
        definitions_task = None
        if self.with_manager:  # one process per server updates clamd's signatures
            self.definitions = DefinitionsUpdater(lambda: self.config)
            definitions_task = loop.create_task(self.definitions.run(self._stop))
        admin = admin_task = None  # before the listeners: its import must not stall the first sessions
        if self.admin_socket is not None:  # the process with the queue manager (even with queue.manager false)
            from .admin.api import AdminServer  # late: FastAPI, uvicorn only here

            admin = AdminServer(self, self.admin_socket)
            admin_task = loop.create_task(admin.serve())
        listening = []
        if self.sockets:
            self.runtime = rt = self._build(cfg, None)
            await rt.check_auth()
            for listener, sock in zip(cfg.server.listeners, self.sockets):
                srv = SmtpServer(rt, listener, self.store)
                self.servers.append(srv)
                implicit = rt.tls_context if listener.tls == "implicit" else None  # port 465 style: TLS from the first byte
                if implicit is not None:
                    self._implicit_tls = implicit
                listening.append(await loop.create_server(srv.protocol, sock=sock, ssl=implicit))
            log.info("worker %d ready: %s", self.index, ", ".join(f"{x.name}={x.address}" for x in cfg.server.listeners))
        else:
            log.info("queue manager process ready")
        self._record_applied()
        await self._stop.wait()
        log.info("worker %d stopping", self.index)
        applied.forget(self.config.data_path, os.getpid())
        if admin is not None:
            admin.stop()  # stop accepting; open requests get a few seconds (awaited below)
        for ls in listening:
            ls.close()
        for srv in self.servers:
            srv.shutdown()
        deadline = time.monotonic() + SHUTDOWN_GRACE
        while any(srv.sessions for srv in self.servers) and time.monotonic() < deadline:
            await asyncio.sleep(0.05)
        for srv in self.servers:
            for s in list(srv.sessions):
                if s.transport is not None:
                    s.transport.abort()
        await asyncio.sleep(0)
        if admin_task is not None:
            await admin_task
        if manager_task is not None:
            await manager_task
        if definitions_task is not None:  # an update in progress is abandoned (its tools killed); the next start redoes it
            definitions_task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await definitions_task
        if self.runtime is not None:
            await self.runtime.close()
        self.store.flush_announcements()
        self.store.close()


def _log_crash(task: asyncio.Task[None]) -> None:
    if not task.cancelled() and task.exception() is not None:
        log.critical("queue manager crashed", exc_info=task.exception())
        os.kill(os.getpid(), signal.SIGTERM)  # no silent half-MTA: stop, the supervisor or admin restarts


def _run_worker(
    cfg: Config, path: str, sockets: list[socket.socket], index: int, *, manager: bool, admin: socket.socket | None = None,
    root_channel: socket.socket | None = None,
) -> None:
    import uvloop

    worker = Worker(cfg, path, sockets, index, manager=manager, admin=admin, root_channel=root_channel)
    # What exists now (modules, config) lives as long as the process: out of every collection.
    # A message makes about a thousand short-lived objects, so the young generation is
    # collected every 5,000 allocations instead of 700 (bench/RESULTS.md, step 9).
    gc.freeze()
    gc.set_threshold(5000, 10, 10)
    out = os.environ.get("MTASERVER_CPROFILE")  # a developer's switch: bench/README.md, "Profiling"
    if not out:
        uvloop.run(worker.serve())
        return
    import cProfile

    role = "qmgr" if not sockets else "smtp+qmgr" if manager else "smtp"
    with cProfile.Profile() as prof:
        try:
            uvloop.run(worker.serve())
        finally:
            prof.dump_stats(os.path.join(out, f"{role}-{index}-{os.getpid()}.prof"))


def run(path: str) -> int:
    try:
        cfg = config_mod.load(path)
    except ConfigError as exc:
        logutil.setup("info")
        for line in exc.errors:
            print(line, file=sys.stderr)
        return 1
    ident = supervisor.identity(cfg.server.user, cfg.server.group)
    supervisor.setup_logging(cfg, ident)
    why = supervisor.check_can_switch(ident)
    if why is not None:
        log.error("%s", why)
        return 1
    problems = check_files(cfg)  # a file that cannot be used is a config error, not a worker crash loop
    for key, message in problems:
        log.error("%s:%d: %s: %s", path, config_mod.key_line(path, key), key, message)
    if problems:
        return 1
    if cfg.admin.listen is not None:  # made on first start (0600, one admin token); a bad line refuses the start
        token_path = cfg.data_path / cfg.admin.token_file
        made = not os.path.lexists(token_path)
        try:
            load_tokens(token_path)
        except TokenFileError as exc:
            for line in exc.errors:
                log.error("%s", line)
            return 1
        if made:  # outside data_dir own_tree does not reach it: the API reads it as server.user
            supervisor.own_file(token_path, ident)
    lock = supervisor.lock_instance(cfg)  # before recovery: it moves active/ back to incoming/
    if lock is None:
        return 1
    try:
        return _run_locked(cfg, path, ident)
    finally:
        metrics.teardown()  # the tmpfs files go with the server (after a kill -9, the next start empties them)
        lock.release()


def _run_locked(cfg: Config, path: str, ident: supervisor.Identity | None) -> int:
    if supervisor.own_tree(cfg.data_path, ident):  # fd-relative, never following a link
        log.info("data_dir %s given to %s:%d", cfg.data_path, ident.user if ident else "", ident.gid if ident else 0)
    links = supervisor.symlinked_dirs(cfg.data_path, DIRS)
    if links:
        log.error("%s: a symbolic link where a directory belongs (planted?): remove it; not starting", ", ".join(links))
        return 1
    if cfg.admin.listen is not None and ident is not None:  # the API reads it after the drop
        tokens = cfg.data_path / cfg.admin.token_file
        try:
            with supervisor.as_user(ident):
                open(tokens, "rb").close()  # only: can it be opened
        except OSError as exc:
            log.error("admin.token_file %s cannot be read by server.user %s: %s: give it to %s (chown) or make it "
                      "readable by server.group; not starting", tokens, ident.user, exc.strerror or exc, ident.user)  # fmt: skip
            return 1
    store = QueueStore(cfg.queue_path)
    with supervisor.as_user(ident):  # root's work in the mail user's tree touches only what it could
        counts = store.recover()
        metrics.setup(metrics.directory_for(cfg.data_path), cfg.queue_path)  # on tmpfs, emptied; before any fork
        applied.clear(cfg.data_path)  # a killed instance's records: their pids may be anyone's now
    if any(counts.values()):
        log.info("queue recovery: %s", ", ".join(f"{k}={v}" for k, v in counts.items()))
    n = cfg.server.worker_count()
    try:
        socks = [[bind(lst.address, reuse_port=n > 1) for lst in cfg.server.listeners] for _ in range(n)]
    except OSError as exc:
        log.error("cannot listen: %s", exc)
        return 1
    try:
        admin = bind(cfg.admin.listen, reuse_port=False) if cfg.admin.listen is not None else None
    except OSError as exc:
        log.error("cannot listen on admin.listen %s: %s", cfg.admin.listen, exc.strerror or exc)
        return 1
    if n > 1 and steering_wanted(cfg):
        set_steering(socks, n, True)
    log.info("mtaserver starting: %d worker(s), queue %s", n, cfg.queue_path)
    if n == 1 and ident is None:  # one process (the tests and the bench rely on it)
        signal.signal(signal.SIGUSR1, lambda _sig, _frame: logutil.reopen())  # until the loop's handler
        supervisor.drop_privileges(ident)
        _run_worker(cfg, path, socks[0], 0, manager=True, admin=admin)
        log.info("mtaserver stopped")
        return 0
    # The queue manager gets a process of its own: a worker with no sockets. Under server.user
    # even with one worker: the root supervisor writes the config file for the admin API.
    return _supervise(cfg, path, socks + [[]], admin)


def _supervise(cfg: Config, path: str, socks: list[list[socket.socket]], admin: socket.socket | None = None) -> int:
    children: dict[int, int] = {}  # pid -> worker index
    stopping = False
    ident = supervisor.identity(cfg.server.user, cfg.server.group)
    me = os.getpid()
    bound = list(cfg.server.listeners)  # what socks[i] were bound for, in order
    writer: RootWriter | None = None
    theirs: socket.socket | None = None  # the queue manager's end of the channel, kept for its restarts
    if ident is not None and admin is not None:  # before any fork: the channel of admin/rootwriter.py

        def check_as_user(new: Config) -> list[tuple[str, str]]:
            signal.pthread_sigmask(signal.SIG_BLOCK, _SIGNALS)  # `forward` runs as root, after
            try:
                with supervisor.as_user(ident):  # as the workers will read them; root reads nothing of the mail user's tree
                    return check_files(new)
            finally:
                signal.pthread_sigmask(signal.SIG_UNBLOCK, _SIGNALS)

        ours, theirs = rootwriter.channel()
        writer = RootWriter(ours, path, check_files=check_as_user, reload=lambda: hup())
    wake = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC) if writer is not None else None  # SIGCHLD wakes the select loop

    def spawn(i: int) -> None:
        # Signals stay blocked across the fork: a SIGTERM that arrives meanwhile is handled
        # by `forward` once the child is in `children` (so it is forwarded to it too), and
        # the child never runs `forward` itself (it would swallow the signal and live on).
        signal.pthread_sigmask(signal.SIG_BLOCK, _SIGNALS)
        try:
            pid = os.fork()
        except BaseException:
            signal.pthread_sigmask(signal.SIG_UNBLOCK, _SIGNALS)
            raise
        if pid == 0:
            for sig in (signal.SIGHUP, signal.SIGTERM, signal.SIGINT, signal.SIGUSR1, signal.SIGCHLD):
                signal.signal(sig, signal.SIG_DFL)
            for j, group in enumerate(socks):
                if j != i:
                    for s in group:
                        s.close()
            if admin is not None and socks[i]:
                admin.close()  # the admin API is served by the queue manager's process only
            if writer is not None and theirs is not None and wake is not None:
                writer.sock.close()  # the supervisor's end: never in a child
                if socks[i]:
                    theirs.close()  # the channel is the queue manager's process's only
                signal.set_wakeup_fd(-1)
                os.close(wake[0])
                os.close(wake[1])
            code = 0
            try:
                supervisor.enter_worker(ident, me)  # server.user; a SIGTERM when the supervisor dies
                _run_worker(cfg, path, socks[i], i, manager=not socks[i], admin=None if socks[i] else admin,
                            root_channel=None if socks[i] else theirs)  # fmt: skip
            except BaseException:
                log.exception("worker %d crashed", i)
                code = 1
            finally:
                logging.shutdown()
                os._exit(code)
        children[pid] = i
        signal.pthread_sigmask(signal.SIG_UNBLOCK, _SIGNALS)

    def forward(sig: int, _frame: object) -> None:
        nonlocal stopping
        if sig in (signal.SIGTERM, signal.SIGINT):
            stopping = True
        if sig == signal.SIGUSR1:
            logutil.reopen()  # first: the file the workers then open exists, owned by server.user
        if sig == signal.SIGHUP:
            hup()
            return
        send(sig)

    def hup() -> None:
        """SIGHUP (or a change written for the admin API): validate, apply our part, forward.
        A worker started again after a crash gets this config, not the one of the start."""
        nonlocal cfg
        try:
            new = config_mod.load(path)
        except ConfigError as exc:
            for line in exc.errors:
                log.error("reload refused: %s", line)
            return
        cfg = bound_to(bound, new)  # a listener added, moved or reordered: the sockets stay those of the start
        logutil.set_level(new.advanced.log_level)
        if len(socks) > 2:  # one SMTP worker (under server.user): no reuseport group to steer
            set_steering(socks, len(socks) - 1, steering_wanted(new))
        send(signal.SIGHUP)

    def send(sig: int) -> None:
        for pid in children:
            try:
                os.kill(pid, sig)
            except ProcessLookupError:
                pass

    for sig in (signal.SIGHUP, signal.SIGTERM, signal.SIGINT, signal.SIGUSR1):
        signal.signal(sig, forward)
    for i in range(len(socks)):
        if stopping:  # SIGTERM during start-up: do not start the rest
            break
        spawn(i)

    def reap(pid: int, status: int) -> None:
        i = children.pop(pid, None)
        metrics.process_dead(pid)  # its live gauges go; its counters stay in the sums
        if i is None:
            return
        if not stopping:
            log.error("worker %d (pid %d) exited with status %d; restarting", i, pid, status)
            time.sleep(RESTART_DELAY)
            if not stopping:
                spawn(i)

    if writer is None or wake is None:
        while children:
            try:
                pid, status = os.wait()
            except ChildProcessError:
                break
            except InterruptedError:
                continue
            reap(pid, status)
        log.info("mtaserver stopped")
        return 0
    # With the channel: wait for a child's end (SIGCHLD through the wake-up pipe) or a request.
    signal.set_wakeup_fd(wake[1])
    signal.signal(signal.SIGCHLD, lambda _sig, _frame: None)
    try:
        while children:
            try:
                pid, status = os.waitpid(-1, os.WNOHANG)
            except ChildProcessError:
                break
            if pid:
                reap(pid, status)
                continue
            ready, _, _ = select.select([wake[0], writer], [], [], writer.timeout(time.monotonic()))
            if wake[0] in ready:
                with contextlib.suppress(BlockingIOError):
                    os.read(wake[0], 4096)
            if writer in ready and not stopping:
                writer.on_readable()
            writer.expire(time.monotonic())
    finally:
        signal.set_wakeup_fd(-1)
    log.info("mtaserver stopped")
    return 0


def default_config_path() -> str:
    return os.environ.get("MTASERVER_CONFIG") or str(Path("conf") / "mtaserver.yaml")

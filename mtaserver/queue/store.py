"""The on-disk queue: spool files, the envelope format, the commit, recovery.

DESCRIPTION
    data_dir/queue/
      tmp/        bodies being received (<id>.body) and envelopes being written (<id>.env)
      msg/        message bodies, written once, named by queue id
      incoming/   committed messages not yet scheduled (one envelope file each)
      active/     messages the queue manager is delivering
      deferred/   messages waiting for their next attempt
      hold/       messages held by the administrator
      corrupt/    envelope files that failed to parse; kept, never deleted

    The directory names the state; every transition is one rename(2). The commit, after
    which and only after which the client hears "250 2.0.0 Ok: queued as <id>":

      1. fsync(tmp/<id>.body); rename -> msg/<id>     } at the same time,
      2. write tmp/<id>.env, fsync it                   } in two threads
      3. fsync(msg/)            (the body's name is durable before the envelope's)
      4. rename tmp/<id>.env -> incoming/<id>
      5. fsync(incoming/)

    File fsyncs run in a thread pool so that commits of concurrent sessions overlap; the
    directory fsyncs are group commits: one fsync covers every rename made before it began.

    Envelope file: a version line, one JSON object, and an end line with the CRC-32 of the
    JSON. A file that does not parse (or whose body is missing) moves to corrupt/.

    Recovery at start (before any worker accepts): tmp/ is swept (nothing there was ever
    acknowledged), active/ moves back to incoming/ (at-least-once: a crash may cause a
    duplicate, never a loss), incoming/ is validated, and bodies with no envelope are removed.

SECURITY
    Files are created 0600 under a 0700 root. Queue ids are generated here, never taken from
    a client; envelope contents are JSON, never evaluated.

CONFIG
    server.data_dir, queue.sync_threads, queue.min_free
"""

from __future__ import annotations

import asyncio
import errno
import json
import logging
import os
import time
import zlib
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict
from pathlib import Path

from ..model import ClientInfo, Envelope, Recipient, RcptState, Reply

log = logging.getLogger("queue")

STATES = ("incoming", "active", "deferred", "hold", "corrupt")
DIRS = ("tmp", "msg", *STATES)
FORMAT_VERSION = 1
_MAGIC = b"MTAQ %d\n" % FORMAT_VERSION

# ---------------------------------------------------------------------------------------------
# Queue ids: Crockford base32, fixed width, so that sorting by name sorts by arrival.

_B32 = "0123456789ABCDEFGHJKMNPQRSTVWXYZ"  # Crockford base32: sorted in ASCII, no I L O U


def _b32(n: int, width: int) -> str:
    out = []
    for _ in range(width):
        out.append(_B32[n & 31])
        n >>= 5
    return "".join(reversed(out))


class QueueIdGenerator:
    """Unique, time-ordered ids: 11 symbols of microseconds, 4 of pid, 2 of sequence."""

    def __init__(self, pid: int | None = None, clock: Callable[[], float] = time.time) -> None:
        self._pid = (pid if pid is not None else os.getpid()) & 0xFFFFF
        self._clock = clock
        self._last = 0
        self._seq = 0

    def next(self) -> str:
        usec = int(self._clock() * 1_000_000)
        if usec <= self._last:
            usec = self._last + 1  # never reuse, never go backwards
        self._last = usec
        self._seq = (self._seq + 1) & 1023
        return _b32(usec, 11) + _b32(self._pid, 4) + _b32(self._seq, 2)


def is_queue_id(name: str) -> bool:
    return len(name) == 17 and all(c in _B32 for c in name)


# ---------------------------------------------------------------------------------------------
# Envelope format.


class CorruptEnvelope(ValueError):
    pass


def dump_envelope(env: Envelope) -> bytes:
    doc = asdict(env)
    for r in doc["recipients"]:
        r["state"] = r["state"].value if isinstance(r["state"], RcptState) else r["state"]
    body = json.dumps(doc, separators=(",", ":"), ensure_ascii=False).encode("utf-8", "surrogateescape")
    return b"%s%s\nEND %08x\n" % (_MAGIC, body, zlib.crc32(body))


def parse_envelope(data: bytes) -> Envelope:
    if not data.startswith(_MAGIC):
        raise CorruptEnvelope("bad version line")
    body, sep, trailer = data[len(_MAGIC) :].rpartition(b"\nEND ")
    if not sep or not trailer.endswith(b"\n") or len(trailer) != 9:
        raise CorruptEnvelope("no end marker")
    try:
        if int(trailer[:8], 16) != zlib.crc32(body):
            raise CorruptEnvelope("checksum mismatch")
        doc = json.loads(body.decode("utf-8", "surrogateescape"))
        doc["client"] = ClientInfo(**doc["client"])
        doc["recipients"] = [Recipient(**{**r, "state": RcptState(r["state"])}) for r in doc["recipients"]]
        env = Envelope(**doc)
    except CorruptEnvelope:
        raise
    except (ValueError, TypeError, KeyError) as exc:
        raise CorruptEnvelope(f"bad content: {exc}") from None
    if not is_queue_id(env.queue_id) or not env.recipients:
        raise CorruptEnvelope("bad queue id or no recipients")
    return env


# ---------------------------------------------------------------------------------------------
# Writing.


class QueueWriteError(Exception):
    def __init__(self, reply: Reply, cause: BaseException) -> None:
        super().__init__(str(cause))
        self.reply = reply


def write_error_reply(exc: BaseException) -> Reply:
    if isinstance(exc, OSError) and exc.errno in (errno.ENOSPC, errno.EDQUOT):
        return Reply(452, "4.3.1", "Insufficient system storage")
    if isinstance(exc, OSError) and exc.errno == errno.EFBIG:
        return Reply(552, "5.3.4", "Error: message file too big")
    return Reply(451, "4.3.0", "Error: queue file write error")


class Spool:
    """The body of one message while it arrives: tmp/<id>.body, appended to from the loop.

    Writes go to the page cache (memcpy speed); the slow part, fsync, happens at commit in
    a thread. A write error is remembered and the rest of DATA is drained, not written.
    """

    __slots__ = ("queue_id", "path", "_file", "size", "error")

    def __init__(self, queue_id: str, path: Path) -> None:
        self.queue_id = queue_id
        self.path = path
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
        self._file = os.fdopen(fd, "wb", buffering=65536)
        self.size = 0
        self.error: OSError | None = None

    def write(self, data: bytes) -> None:
        if self.error is None and data:
            try:
                self._file.write(data)
                self.size += len(data)
            except OSError as exc:
                self.error = exc

    def close(self) -> None:
        try:
            self._file.close()
        except OSError as exc:
            self.error = self.error or exc


class DirSyncer:
    """Group commit of a directory: each caller is covered by an fsync that began after it called."""

    def __init__(self, path: Path, executor: ThreadPoolExecutor, fsync: Callable[[int], None]) -> None:
        self._fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        self._executor = executor
        self._fsync = fsync
        self._waiters: list[asyncio.Future[None]] = []
        self._runner: asyncio.Task[None] | None = None

    async def sync(self) -> None:
        loop = asyncio.get_running_loop()
        fut: asyncio.Future[None] = loop.create_future()
        self._waiters.append(fut)
        if self._runner is None or self._runner.done():
            self._runner = loop.create_task(self._run(loop))
        await fut

    async def _run(self, loop: asyncio.AbstractEventLoop) -> None:
        while self._waiters:
            batch, self._waiters = self._waiters, []
            try:
                await loop.run_in_executor(self._executor, self._fsync, self._fd)
            except OSError as exc:
                for f in batch:
                    if not f.done():
                        f.set_exception(OSError(exc.errno, exc.strerror))
            else:
                for f in batch:
                    if not f.done():
                        f.set_result(None)

    def close(self) -> None:
        os.close(self._fd)


class QueueStore:
    def __init__(self, root: Path, *, sync_threads: int = 16, fsync: Callable[[int], None] = os.fsync) -> None:
        self.root = Path(root)
        self._fsync = fsync
        self._ids = QueueIdGenerator()
        self._pool: ThreadPoolExecutor | None = None
        self._sync_threads = sync_threads
        self._msg_sync: DirSyncer | None = None
        self._incoming_sync: DirSyncer | None = None
        self.on_commit: Callable[[str], None] | None = None  # the queue manager's wake-up

    # -- layout ------------------------------------------------------------------------------

    def ensure_dirs(self) -> None:
        self.root.mkdir(mode=0o700, parents=True, exist_ok=True)
        for d in DIRS:
            (self.root / d).mkdir(mode=0o700, exist_ok=True)

    def path(self, state: str, queue_id: str) -> Path:
        return self.root / state / queue_id

    def body_path(self, queue_id: str) -> Path:
        return self.root / "msg" / queue_id

    def list(self, state: str) -> list[str]:
        return sorted(n for n in os.listdir(self.root / state) if is_queue_id(n))

    def free_bytes(self) -> int:
        st = os.statvfs(self.root)
        return st.f_bavail * st.f_frsize

    def new_id(self) -> str:
        return self._ids.next()

    # -- receiving ---------------------------------------------------------------------------

    def open(self) -> None:
        """Per process, after fork: the fsync threads and directory handles."""
        self.ensure_dirs()
        self._ids = QueueIdGenerator()
        self._pool = ThreadPoolExecutor(self._sync_threads, thread_name_prefix="qsync")
        self._msg_sync = DirSyncer(self.root / "msg", self._pool, self._fsync)
        self._incoming_sync = DirSyncer(self.root / "incoming", self._pool, self._fsync)

    def close(self) -> None:
        if self._pool:
            self._pool.shutdown(wait=True)
            self._pool = None
        for s in (self._msg_sync, self._incoming_sync):
            if s:
                s.close()
        self._msg_sync = self._incoming_sync = None

    def new_spool(self, queue_id: str) -> Spool:
        return Spool(queue_id, self.root / "tmp" / f"{queue_id}.body")

    async def open_spool(self, queue_id: str) -> Spool:
        """new_spool from the event loop: creating a file can block on the journal (profile: 8%)."""
        assert self._pool is not None, "QueueStore.open() first"
        return await asyncio.get_running_loop().run_in_executor(self._pool, self.new_spool, queue_id)

    def discard(self, spool: Spool) -> None:
        spool.close()
        _unlink(spool.path)

    def _sync_body(self, spool: Spool) -> None:
        """Step 1 of the commit, in a worker thread."""
        f = spool._file
        f.flush()
        self._fsync(f.fileno())
        f.close()
        os.rename(spool.path, self.body_path(spool.queue_id))

    def _write_env(self, queue_id: str, env_data: bytes) -> None:
        """Step 2 of the commit, in another worker thread at the same time as step 1."""
        env_tmp = self.root / "tmp" / f"{queue_id}.env"
        fd = os.open(env_tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
        try:
            view = memoryview(env_data)
            while view:
                view = view[os.write(fd, view) :]
            self._fsync(fd)
        finally:
            os.close(fd)

    async def commit(self, spool: Spool, env: Envelope) -> None:
        """Make the message durable in incoming/, or raise QueueWriteError with the reply to give."""
        assert self._pool and self._msg_sync and self._incoming_sync, "QueueStore.open() first"
        qid = spool.queue_id
        env.size = spool.size
        if spool.error is not None:
            self._remove_partial(spool)
            raise QueueWriteError(write_error_reply(spool.error), spool.error)
        loop = asyncio.get_running_loop()
        try:
            # Body and envelope are made durable side by side: a single-session client waits
            # for three fsyncs in a row instead of four.
            body_job = loop.run_in_executor(self._pool, self._sync_body, spool)
            env_job = loop.run_in_executor(self._pool, self._write_env, qid, dump_envelope(env))
            for outcome in await asyncio.gather(body_job, env_job, return_exceptions=True):
                if isinstance(outcome, BaseException):
                    raise outcome
            await self._msg_sync.sync()
            # rename(2) can wait on the journal behind other fsyncs: keep it off the loop too.
            await loop.run_in_executor(self._pool, os.rename, self.root / "tmp" / f"{qid}.env", self.path("incoming", qid))
            await self._incoming_sync.sync()
        except OSError as exc:
            self._remove_partial(spool)
            raise QueueWriteError(write_error_reply(exc), exc) from exc
        if self.on_commit:
            self.on_commit(qid)

    def _remove_partial(self, spool: Spool) -> None:
        spool.close()
        qid = spool.queue_id
        for p in (spool.path, self.root / "tmp" / f"{qid}.env", self.body_path(qid), self.path("incoming", qid)):
            _unlink(p)

    # -- reading and moving ------------------------------------------------------------------

    def read(self, state: str, queue_id: str) -> Envelope:
        """Parse an envelope; a damaged one moves to corrupt/ and raises CorruptEnvelope."""
        path = self.path(state, queue_id)
        try:
            env = parse_envelope(path.read_bytes())
            if env.queue_id != queue_id:
                raise CorruptEnvelope("queue id does not match the file name")
            if not self.body_path(queue_id).exists():
                raise CorruptEnvelope("message body missing")
            return env
        except CorruptEnvelope as exc:
            self.move(queue_id, state, "corrupt")
            log.warning('saving corrupt file "%s" from queue "%s" to queue "corrupt": %s', queue_id, state, exc)
            raise

    def move(self, queue_id: str, src: str, dst: str) -> None:
        os.rename(self.path(src, queue_id), self.path(dst, queue_id))

    # -- the queue manager's operations ------------------------------------------------------

    def rewrite(self, state: str, env: Envelope) -> None:
        """Replace a committed envelope atomically (tmp + fsync + rename over it)."""
        tmp = self.root / "tmp" / f"{env.queue_id}.env"
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o600)
        try:
            view = memoryview(dump_envelope(env))
            while view:
                view = view[os.write(fd, view) :]
            self._fsync(fd)
        finally:
            os.close(fd)
        os.rename(tmp, self.path(state, env.queue_id))

    def set_due(self, state: str, queue_id: str, when: float) -> None:
        """The file's mtime carries the time of the next attempt (Postfix's deferred queue)."""
        os.utime(self.path(state, queue_id), (when, when))

    def due(self, state: str, queue_id: str) -> float:
        return os.stat(self.path(state, queue_id)).st_mtime

    def remove(self, state: str, queue_id: str) -> None:
        """Delivery is complete: the envelope goes first, so a crash never leaves one without its body."""
        _unlink(self.path(state, queue_id))
        _unlink(self.body_path(queue_id))

    async def inject(self, *, sender: str, recipients: list[str], body: bytes, client: ClientInfo) -> str:
        """Queue a message we generate ourselves (bounces, warnings) through the same commit."""
        qid = self.new_id()
        spool = self.new_spool(qid)
        spool.write(body)
        env = Envelope(queue_id=qid, sender=sender, recipients=[Recipient(address=r) for r in recipients],
                       arrival=time.time(), client=client)  # fmt: skip
        try:
            await self.commit(spool, env)
        except BaseException:
            self._remove_partial(spool)
            raise
        return qid

    # -- recovery ----------------------------------------------------------------------------

    def recover(self) -> dict[str, int]:
        """At start, before anyone accepts mail. Returns counts for the log."""
        self.ensure_dirs()
        counts = {"tmp_removed": 0, "active_requeued": 0, "corrupt": 0, "orphans_removed": 0}
        for name in os.listdir(self.root / "tmp"):
            _unlink(self.root / "tmp" / name)
            counts["tmp_removed"] += 1
        for qid in self.list("active"):
            self.move(qid, "active", "incoming")
            counts["active_requeued"] += 1
        for qid in self.list("incoming"):
            try:
                self.read("incoming", qid)
            except CorruptEnvelope:
                counts["corrupt"] += 1
        known: set[str] = set()
        for state in STATES:
            known.update(self.list(state))
        for name in os.listdir(self.root / "msg"):
            if name not in known:
                _unlink(self.root / "msg" / name)
                counts["orphans_removed"] += 1
        for d in DIRS:
            fd = os.open(self.root / d, os.O_RDONLY | os.O_DIRECTORY)
            try:
                self._fsync(fd)
            finally:
                os.close(fd)
        return counts


def _unlink(path: Path) -> None:
    try:
        os.unlink(path)
    except FileNotFoundError:
        pass

"""The on-disk queue: queue files, their format, the commit, recovery.

DESCRIPTION
    data_dir/queue/
      tmp/        queue files being written: nothing here was ever acknowledged
      incoming/   committed messages not yet scheduled
      active/     messages the queue manager is delivering
      deferred/   messages waiting for their next attempt (mtime = time of the next attempt)
      hold/       messages held by the administrator
      corrupt/    queue files that failed to parse; kept, never deleted
      status/     the queue manager's record of delivery progress (see below)
      control/    an administrator's hold or delete of a message being delivered (see below)

    One message is one queue file, named by its queue id, in the directory of its state; every
    state transition is one rename(2). A queue file is the message content as received (CRLF
    lines, dots unstuffed, our Received: header first), then the envelope as one JSON line,
    then a fixed 25-byte trailer that gives the JSON's length and CRC-32:

        <content> <json> "\nMTAQ2 <len:08x> <crc:08x>\n"

    The content length is implied (file size - json - trailer) and must equal the envelope's
    `size`; a file that is short, damaged or of another version moves to corrupt/.

    The commit, after which and only after which the client hears "250 2.0.0 Ok: queued as
    <id>", is one job in a worker thread (or, for the only session of a worker process, done
    right in the event loop, which has nothing else to do meanwhile):

      1. write tmp/<id> (the content, unless it already spilled there, and the trailer)
      2. rename tmp/<id> -> incoming/<id>
      3. fsync(incoming/<id>)
      4. fsync(incoming/)

    Postfix's cleanup writes into incoming/ and fsyncs the file, relying on the file system
    for the name; we also make the name durable. The rename comes before the fsyncs, so the
    file's fsync can carry the new name with it (ext4 does: with a journal in the same commit,
    without one by syncing the new entry's directory too), and the directory's fsync then
    finds little left to do: 0.13 of 0.53 ms here, against 0.61 ms for fsync, rename, fsync
    (bench/RESULTS.md, step 9). Until step 4 ends no client has heard 250: a crash in between
    leaves either a complete file (delivered; the client, who saw no reply, may send it again:
    at least once) or a short or damaged one, which the trailer shows and recovery moves to
    corrupt/. A failed fsync unlinks incoming/<id> and answers 4xx.

    Content stays in memory while it arrives, up to queue.spool_in_memory bytes per message
    and queue.spool_memory_total per process; a larger message spills to tmp/<id> as it
    arrives. So a small message costs one file creation, one write, two fsyncs and one
    rename, and one hand-off to a thread, none for a worker's lone session (profile: thread
    hand-offs and file creations were the largest costs of receiving).

    Delivery progress: the queue file never changes once committed. When an attempt leaves
    recipients for later, the queue manager writes the whole updated envelope (same JSON,
    with an empty content part) to status/<id>, atomically; it supersedes the envelope in the
    queue file. Removal unlinks the queue file first, then status/<id>.

    An administrator's hold or delete of a message under delivery is done when the attempt
    ends (QueueManager.control); meanwhile control/<id> holds the action word ("hold\n",
    "delete\n"), written atomically (tmp, fsync, rename, fsync of control/) and removed once the
    action is done. A crash in between must not deliver what the administrator stopped.

    Recovery at start (before any worker accepts): tmp/ is swept, active/ moves back to
    incoming/ (at-least-once: a crash may cause a duplicate, never a loss) unless control/ says
    hold (then into hold/) or delete (then removed); every control/ marker is then removed (one
    whose message is not in active/ was done already, or its message is gone). incoming/ is
    validated, and status files with no queue file are removed. The queue manager's own start
    does the same with active/ (reclaim_active).

    Anything else in a queue directory (a directory or a FIFO named like a queue id, a symlink,
    a file we may not read) stops nothing: it is never followed (O_NOFOLLOW on every open of a
    queue or status file), it is logged, and it is moved into corrupt/ when it can be (a name
    taken there gets a suffix), in recovery and when the queue manager meets it (NotOurs, a
    kind of CorruptEnvelope).

SECURITY
    Files are created 0600 under a 0700 root. Queue ids are generated here, never taken from
    a client; envelope contents are JSON, never evaluated.

CONFIG
    server.data_dir, queue.sync_threads, queue.min_free, queue.spool_in_memory,
    queue.spool_memory_total
"""

from __future__ import annotations

import asyncio
import errno
import json
import logging
import math
import os
import re
import stat
import time
import zlib
from collections.abc import AsyncIterator, Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from .. import model
from ..delivery.content import Content
from ..logutil import sanitize
from ..model import ClientInfo, Envelope, RcptState, Recipient, Reply

log = logging.getLogger("queue")

STATES = ("incoming", "active", "deferred", "hold", "corrupt")
DIRS = ("tmp", "status", "control", *STATES)
CONTROL_ACTIONS = ("hold", "delete")  # what control/<id> may ask for (see DESCRIPTION)
FORMAT_VERSION = 2
_TRAILER = re.compile(rb"\nMTAQ(\d) ([0-9a-f]{8}) ([0-9a-f]{8})\n\Z")
TRAILER_SIZE = 25  # len(b"\nMTAQ2 00000000 00000000\n")

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
# The queue file format.


class CorruptEnvelope(ValueError):
    pass


def _envelope_doc(env: Envelope) -> dict:
    # Field by field: dataclasses.asdict deep-copies generically and cost 5% of a worker's CPU
    # on small messages. Every field of Envelope, Recipient and ClientInfo must appear here
    # (tests/unit/test_store.py checks the round trip).
    c = env.client
    return {
        "queue_id": env.queue_id,
        "sender": env.sender,
        "recipients": [
            {
                "address": r.address,
                "orcpt": r.orcpt,
                "notify": r.notify,
                "state": r.state.value if isinstance(r.state, RcptState) else r.state,
                "attempts": r.attempts,
                "last_reply": r.last_reply,
            }
            for r in env.recipients
        ],
        "arrival": env.arrival,
        "client": {
            "ip": c.ip,
            "port": c.port,
            "name": c.name,
            "helo": c.helo,
            "protocol": c.protocol,
            "login": c.login,
            "trusted": c.trusted,
        },
        "size": env.size,
        "body_type": env.body_type,
        "smtputf8": env.smtputf8,
        "ret": env.ret,
        "envid": env.envid,
        "extra": dict(env.extra),
        "trail": env.trail,
    }


def envelope_trailer(env: Envelope) -> bytes:
    """What follows the content in a queue file: the envelope JSON and the fixed trailer."""
    body = json.dumps(_envelope_doc(env), separators=(",", ":"), ensure_ascii=False).encode("utf-8", "surrogateescape")
    return b"%s\nMTAQ%d %08x %08x\n" % (body, FORMAT_VERSION, len(body), zlib.crc32(body))


def envelope_doc(env: Envelope) -> dict:
    """The envelope as the JSON document a queue file holds (for `queue show` and the API)."""
    return _envelope_doc(env)


def dump_envelope(env: Envelope) -> bytes:
    """A queue file with no content: the form of status/<id> files."""
    return envelope_trailer(env)


_OPT_STR = (str, type(None))
_ENVELOPE_TYPES = (("queue_id", (str,)), ("sender", (str,)), ("recipients", (list,)), ("arrival", (int, float)), ("size", (int,)),
                   ("body_type", _OPT_STR), ("smtputf8", (bool,)), ("ret", _OPT_STR), ("envid", _OPT_STR), ("extra", (dict,)),
                   ("trail", (list,)))  # fmt: skip
_RECIPIENT_TYPES = (("address", (str,)), ("orcpt", _OPT_STR), ("notify", _OPT_STR), ("attempts", (int,)), ("last_reply", _OPT_STR))
_CLIENT_TYPES = (("ip", (str,)), ("port", (int,)), ("name", (str,)), ("helo", _OPT_STR), ("protocol", (str,)), ("login", _OPT_STR),
                 ("trusted", (bool,)))  # fmt: skip


def _check_types(obj: object, fields: tuple[tuple[str, tuple[type, ...]], ...]) -> None:
    """Every field of the JSON has the type the code that reads it expects (a bool is no number)."""
    for name, types in fields:
        v = getattr(obj, name)
        if not isinstance(v, types) or (isinstance(v, bool) and bool not in types):
            raise CorruptEnvelope(f"bad content: {name} is {type(v).__name__}")


def _envelope_from_json(body: bytes) -> Envelope:
    try:
        doc = json.loads(body.decode("utf-8", "surrogateescape"))
        doc["client"] = ClientInfo(**doc["client"])
        doc["recipients"] = [Recipient(**{**r, "state": RcptState(r["state"])}) for r in doc["recipients"]]
        env = Envelope(**doc)
    except (ValueError, TypeError, KeyError, AttributeError) as exc:
        raise CorruptEnvelope(f"bad content: {exc}") from None
    # A file of ours with a good checksum has these types; anything else (a hand-made file, a
    # bug of an older version) is damage here, not a TypeError in the queue manager later.
    _check_types(env, _ENVELOPE_TYPES)
    _check_types(env.client, _CLIENT_TYPES)
    for r in env.recipients:
        _check_types(r, _RECIPIENT_TYPES)
    if not math.isfinite(env.arrival) or not all(isinstance(k, str) and isinstance(v, str) for k, v in env.extra.items()):
        raise CorruptEnvelope("bad content: arrival or extra")
    if not all(isinstance(t, dict) for t in env.trail):
        raise CorruptEnvelope("bad content: trail")
    if not is_queue_id(env.queue_id) or not env.recipients:
        raise CorruptEnvelope("bad queue id or no recipients")
    return env


def _parse_tail(tail: bytes) -> int:
    """The JSON length from the last TRAILER_SIZE bytes of a queue file."""
    m = _TRAILER.search(tail)
    if m is None or len(tail) != TRAILER_SIZE:
        raise CorruptEnvelope("no trailer")
    if int(m[1]) != FORMAT_VERSION:
        raise CorruptEnvelope(f"format version {int(m[1])}, not {FORMAT_VERSION}")
    return int(m[2], 16)


def _checked_json(data: bytes | memoryview, crc_hex: bytes) -> bytes:
    body = bytes(data)
    if zlib.crc32(body) != int(crc_hex, 16):
        raise CorruptEnvelope("envelope checksum mismatch")
    return body


def split_queue_file(data: bytes, *, content: bool = True) -> tuple[Envelope, memoryview]:
    """A whole queue file -> (envelope, content). Raises CorruptEnvelope."""
    if len(data) < TRAILER_SIZE:
        raise CorruptEnvelope("file too short")
    tail = data[-TRAILER_SIZE:]
    jlen = _parse_tail(tail)
    start = len(data) - TRAILER_SIZE - jlen
    if start < 0:
        raise CorruptEnvelope("file shorter than its envelope")
    env = _envelope_from_json(_checked_json(memoryview(data)[start : len(data) - TRAILER_SIZE], tail[16:24]))
    if content and env.size != start:
        raise CorruptEnvelope(f"content is {start} bytes, the envelope says {env.size}")
    return env, memoryview(data)[:start]


def parse_envelope(data: bytes) -> Envelope:
    """The envelope of a whole queue file (or of a status file)."""
    return split_queue_file(data, content=False)[0]


class NotOurs(CorruptEnvelope):
    """An entry of a queue directory that is not a regular file we can read: a directory, a
    symlink (never followed), a FIFO, a socket, a file we have no permission to read."""


# O_NOFOLLOW: a symlink planted in a queue directory is never followed (ELOOP). O_NONBLOCK: a
# FIFO does not hang the open; it is no regular file and is refused right after.
_OPEN_FLAGS = os.O_RDONLY | os.O_CLOEXEC | os.O_NOFOLLOW | os.O_NONBLOCK
_NOT_OURS = (errno.ELOOP, errno.EISDIR, errno.EACCES, errno.EPERM, errno.ENXIO, errno.ENODEV, errno.EOPNOTSUPP)


def open_regular(path: Path | str) -> int:
    """A read-only descriptor of a regular file at `path`; anything else raises NotOurs
    (FileNotFoundError stays what it is: the message moved or went meanwhile)."""
    try:
        fd = os.open(path, _OPEN_FLAGS)
    except FileNotFoundError:
        raise
    except OSError as exc:
        if exc.errno in _NOT_OURS:
            raise NotOurs(f"not a regular file we can read: {exc.strerror or exc}") from None
        raise
    try:
        mode = os.fstat(fd).st_mode
    except OSError:
        os.close(fd)
        raise
    if not stat.S_ISREG(mode):
        os.close(fd)
        raise NotOurs(f"not a regular file ({stat.filemode(mode)})")
    return fd


def _pread(fd: int, n: int, offset: int) -> bytes:
    try:
        return os.pread(fd, n, offset)
    except OSError as exc:
        if exc.errno in _NOT_OURS:
            raise NotOurs(f"cannot read: {exc.strerror or exc}") from None
        raise


def read_envelope_only(path: Path | str) -> tuple[Envelope, int]:
    """The envelope and the content length of a queue file, reading only its end."""
    fd = open_regular(path)
    try:
        env, start = _envelope_at_end(fd, os.fstat(fd).st_size)
    finally:
        os.close(fd)
    return env, start


def _envelope_at_end(fd: int, size: int) -> tuple[Envelope, int]:
    """The envelope of the open queue file `fd` of `size` bytes, and where its content ends."""
    if size < TRAILER_SIZE:
        raise CorruptEnvelope("file too short")
    tail = _pread(fd, TRAILER_SIZE, size - TRAILER_SIZE)
    jlen = _parse_tail(tail)
    start = size - TRAILER_SIZE - jlen
    if start < 0:
        raise CorruptEnvelope("file shorter than its envelope")
    env = _envelope_from_json(_checked_json(_pread(fd, jlen, start), tail[16:24]))
    if env.size != start:
        raise CorruptEnvelope(f"content is {start} bytes, the envelope says {env.size}")
    return env, start


# ---------------------------------------------------------------------------------------------
# Writing.


class QueueWriteError(Exception):
    def __init__(self, reply: Reply, cause: BaseException) -> None:
        super().__init__(str(cause))
        self.reply = reply


def write_error_reply(exc: BaseException) -> Reply:
    if isinstance(exc, OSError) and exc.errno in (errno.ENOSPC, errno.EDQUOT):
        return model.NO_SPACE
    if isinstance(exc, OSError) and exc.errno == errno.EFBIG:
        return model.DATA_TOO_BIG
    return model.QUEUE_WRITE_ERROR


class MemoryBudget:
    """Bytes of message content a process may hold in memory across all sessions."""

    __slots__ = ("free",)

    def __init__(self, total: int) -> None:
        self.free = total


class Spool:
    """The content of one message while it arrives.

    In memory while it is small (chunks kept as received, no copy), in tmp/<id> once it is
    larger than `in_memory` or the process budget is spent. A write error is remembered and the
    rest of DATA is drained, not written; commit reports it.
    """

    __slots__ = ("queue_id", "path", "size", "error", "_chunks", "_file", "_limit", "_budget", "_held")

    def __init__(self, queue_id: str, path: str, in_memory: int = 0, budget: MemoryBudget | None = None) -> None:
        self.queue_id = queue_id
        self.path = path
        self.size = 0
        self.error: OSError | None = None
        self._chunks: list[bytes] = []
        self._file = None
        self._limit = in_memory
        self._budget = budget
        self._held = 0  # bytes taken from the budget

    @property
    def on_disk(self) -> bool:
        return self._file is not None

    def write(self, data: bytes) -> None:
        if self.error is not None or not data:
            return
        n = len(data)
        if self._file is None:
            budget = self._budget
            if self.size + n <= self._limit and (budget is None or budget.free >= n):
                self._chunks.append(data)
                self.size += n
                if budget is not None:
                    budget.free -= n
                    self._held += n
                return
            try:
                self._spill()
            except OSError as exc:
                self.error = exc
                return
        try:
            self._file.write(data)
            self.size += n
        except OSError as exc:
            self.error = exc

    def _spill(self) -> None:
        """Move what is held in memory to tmp/<id> and go on there (a large message)."""
        fd = os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
        self._file = os.fdopen(fd, "wb", buffering=65536)
        chunks, self._chunks = self._chunks, []
        self._release()
        for c in chunks:
            self._file.write(c)

    def _release(self) -> None:
        if self._budget is not None:
            self._budget.free += self._held
        self._held = 0

    def close(self) -> None:
        self._chunks = []
        self._release()
        if self._file is not None:
            try:
                self._file.close()
            except OSError as exc:
                self.error = self.error or exc

    def replace(self, content: bytes) -> None:
        """New content for a message held in memory (a filter rewrote its head): kept in memory
        within the same limits as DATA, else spilled to tmp/<id> like a large DATA."""
        assert self._file is None
        self._chunks = []
        self._release()
        self.size = 0
        self.write(content)

    def snapshot(self) -> tuple[list[bytes] | None, str | None]:
        """What a thread may read: (chunks, None) in memory, or (None, path) once on disk."""
        if self._file is None:
            return list(self._chunks), None
        self._file.flush()
        return None, self.path

    def edit_file_head(self, edit: Callable[[bytes], bytes], limit: int) -> None:
        """For QueueStore.edit_head, in a worker thread: a spilled spool gets a new head."""
        assert self._file is not None
        if self.error is not None:
            return
        tmp = self.path + ".edit"
        try:
            self._file.flush()
            with open(self.path, "rb") as src:
                window = src.read(limit + 4)
                end = head_end(window, limit)
                head = edit(window[:end])
                if head == window[:end]:
                    return  # nothing changed: no copy of a large message
                fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
                with os.fdopen(fd, "wb", buffering=65536) as dst:
                    dst.write(head)
                    dst.write(window[end:])
                    while chunk := src.read(1 << 20):
                        dst.write(chunk)
            os.rename(tmp, self.path)
            self._file.close()
            self._file = open(self.path, "ab", buffering=65536)  # noqa: SIM115 (closed at commit or close)
            self.size += len(head) - end
        except OSError as exc:
            self.error = exc
            _unlink(tmp)

    def _write_out(self, trailer: bytes, fsync: Callable[[int], None], publish: Callable[[], None]) -> None:
        """Commit steps 1-3: the file is complete, `publish` has renamed it, and it is durable."""
        if self._file is None:
            fd = os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
            try:
                _write_all(fd, [*self._chunks, trailer])
                publish()
                fsync(fd)
            finally:
                os.close(fd)
        else:
            f = self._file
            f.write(trailer)
            f.flush()
            publish()
            fsync(f.fileno())
            f.close()


def head_end(data: bytes, limit: int) -> int:
    """Where the header section of `data` ends (after the CRLF of its last line), looked for in
    the first `limit` bytes; without an empty line there, at the last line end before it."""
    i = data.find(b"\r\n\r\n", 0, limit + 4)
    if i >= 0:
        return i + 2
    if len(data) <= limit:
        return len(data)
    j = data.rfind(b"\r\n", 0, limit)
    return j + 2 if j >= 0 else 0


def _write_all(fd: int, chunks: list[bytes]) -> None:
    views = [memoryview(c) for c in chunks if c]
    while views:
        n = os.writev(fd, views[:1024])  # IOV_MAX
        while n:
            if n >= len(views[0]):
                n -= len(views[0])
                views.pop(0)
            else:
                views[0] = views[0][n:]
                n = 0


class QueueStore:
    def __init__(
        self, root: Path, *, sync_threads: int = 16, fsync: Callable[[int], None] = os.fsync,
        spool_in_memory: int = 256 * 1024, spool_memory_total: int = 64 * 1024 * 1024,
    ) -> None:  # fmt: skip
        self.root = Path(root)
        self._fsync = fsync
        self._ids = QueueIdGenerator()
        self._pool: ThreadPoolExecutor | None = None
        self._sync_threads = sync_threads
        self._in_memory = spool_in_memory
        self._budget = MemoryBudget(spool_memory_total)
        self._incoming_fd: int | None = None
        self._root = str(self.root)
        self._tmp = str(self.root / "tmp")
        self._incoming = str(self.root / "incoming")
        self.on_commit: Callable[[list[str]], None] | None = None  # the queue manager's wake-up
        self.announce_delay = 0.0  # seconds commits are gathered into one wake-up (queue.wakeup_delay)
        self._announcing: list[str] = []
        self._announce_timer: asyncio.TimerHandle | None = None
        self._announced_at = float("-inf")  # time.monotonic() of the last wake-up
        self.receiving = 0  # SMTP sessions open in this process (smtpd keeps the count)
        self.inline_commit = True  # a lone session commits in the event loop (see commit); not
        # where the queue manager shares the loop (workers: 1)

    # -- layout ------------------------------------------------------------------------------

    def ensure_dirs(self) -> None:
        self.root.mkdir(mode=0o700, parents=True, exist_ok=True)
        for d in DIRS:
            (self.root / d).mkdir(mode=0o700, exist_ok=True)

    def path(self, state: str, queue_id: str) -> str:
        # Strings, not Paths: the queue manager asks for about eight per message, and building
        # pathlib objects was 8% of its CPU.
        return f"{self._root}/{state}/{queue_id}"

    def status_path(self, queue_id: str) -> str:
        return f"{self._root}/status/{queue_id}"

    def list(self, state: str) -> list[str]:
        return sorted(n for n in os.listdir(self.root / state) if is_queue_id(n))

    def free_bytes(self) -> int:
        st = os.statvfs(self.root)
        return st.f_bavail * st.f_frsize

    def new_id(self) -> str:
        return self._ids.next()

    # -- receiving ---------------------------------------------------------------------------

    def open(self) -> None:
        """Per process, after fork: the fsync threads and the incoming/ directory handle."""
        self.ensure_dirs()
        self._ids = QueueIdGenerator()
        self._pool = ThreadPoolExecutor(self._sync_threads, thread_name_prefix="qsync")
        self._incoming_fd = os.open(self.root / "incoming", os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)

    def close(self) -> None:
        if self._pool:
            self._pool.shutdown(wait=True)
            self._pool = None
        if self._incoming_fd is not None:
            os.close(self._incoming_fd)
            self._incoming_fd = None

    def new_spool(self, queue_id: str) -> Spool:
        """Creates nothing on disk until the content outgrows memory (or at commit)."""
        return Spool(queue_id, f"{self._tmp}/{queue_id}", self._in_memory, self._budget)

    def discard(self, spool: Spool) -> None:
        spool.close()
        if spool.on_disk:
            _unlink(spool.path)

    async def content_chunks(self, spool: Spool) -> AsyncIterator[bytes]:
        """The content received so far, in pieces (a spilled file is read in the thread pool)."""
        if not spool.on_disk:
            for chunk in list(spool._chunks):
                yield chunk
            return
        assert self._pool is not None and spool._file is not None
        spool._file.flush()
        loop = asyncio.get_running_loop()
        f = await loop.run_in_executor(self._pool, open, spool.path, "rb")
        try:
            while chunk := await loop.run_in_executor(self._pool, f.read, 1 << 20):
                yield chunk
        finally:
            f.close()

    async def content(self, spool: Spool) -> bytes:
        """The whole content in one piece (for a scanner that wants it so)."""
        return b"".join([c async for c in self.content_chunks(spool)])

    async def edit_head(self, spool: Spool, edit: Callable[[bytes], bytes], limit: int) -> None:
        """Replace the start of the content, up to the end of the header section (at most
        `limit` bytes), by `edit(head)`. The body is not read into memory: a spilled spool is
        copied, 1 MB at a time, into a new tmp file that takes the old one's place."""
        if not spool.on_disk:
            data = b"".join(spool._chunks)
            end = head_end(data, limit)
            head = edit(data[:end])
            if head != data[:end]:  # an edit that changes nothing (no forged header to strip) costs no copy
                spool.replace(head + data[end:])
            return
        assert self._pool is not None
        await asyncio.get_running_loop().run_in_executor(self._pool, spool.edit_file_head, edit, limit)

    def _commit_job(self, spool: Spool, trailer: bytes, hold: bool = False) -> None:
        """The whole commit, in one worker thread (see DESCRIPTION). `hold`: into hold/, where
        nothing is delivered until an administrator releases it (a stage hook's HOLD)."""
        assert self._incoming_fd is not None
        qid = spool.queue_id
        tmp, final = f"{self._tmp}/{qid}", f"{self._root}/hold/{qid}" if hold else f"{self._incoming}/{qid}"
        try:
            spool._write_out(trailer, self._fsync, lambda: os.rename(tmp, final))
            if hold:
                _fsync_dir(f"{self._root}/hold", self._fsync)
            else:
                self._fsync(self._incoming_fd)
        except OSError:
            _unlink(final)  # not acknowledged: it must not be delivered either
            raise

    def commit_inline(self, spool: Spool, env: Envelope, *, hold: bool = False) -> bool:
        """The commit, here and now in the event loop, when that keeps nobody waiting: this
        process has exactly one session open (a lone client's latency: no thread hand-off,
        no task). False: nothing was done, await `commit`. Raises QueueWriteError."""
        if not (self.inline_commit and self.receiving == 1):
            return False
        trailer = self._prepare(spool, env)
        try:
            self._commit_job(spool, trailer, hold)
        except OSError as exc:
            raise self._failed(spool, exc) from exc
        finally:
            spool.close()
        return True

    async def commit(self, spool: Spool, env: Envelope, *, announce: bool = True, hold: bool = False) -> None:
        """Make the message durable in incoming/ (hold/ with `hold`), or raise QueueWriteError
        with the reply to give.

        Then tell the queue manager, unless `announce` is false: the caller then calls
        `announce` itself (the session does, once the client has its 250)."""
        assert self._pool is not None, "QueueStore.open() first"
        if not self.commit_inline(spool, env, hold=hold):
            trailer = self._prepare(spool, env)
            try:
                await asyncio.get_running_loop().run_in_executor(self._pool, self._commit_job, spool, trailer, hold)
            except OSError as exc:
                raise self._failed(spool, exc) from exc
            finally:
                spool.close()
        if announce and not hold:
            self.announce(spool.queue_id)

    def _prepare(self, spool: Spool, env: Envelope) -> bytes:
        """The trailer to write; a spool that already failed to spill is refused here."""
        env.size = spool.size
        if spool.error is not None:
            self._remove_partial(spool)
            raise QueueWriteError(write_error_reply(spool.error), spool.error)
        return envelope_trailer(env)

    def _failed(self, spool: Spool, exc: OSError) -> QueueWriteError:
        self._remove_partial(spool)
        return QueueWriteError(write_error_reply(exc), exc)

    def announce(self, queue_id: str) -> None:
        """Tell the queue manager about a committed message: at most one wake-up per `announce_delay`.

        A commit after a quiet spell wakes the manager at once; the ones that follow within
        `announce_delay` of that wake-up are gathered into the next. One wake-up per message
        made the manager turn once per message, in between the commands of the sessions it
        shares the CPU with (bench/RESULTS.md, step 10). A lost wake-up costs at most the
        manager's periodic listing of incoming/ (INCOMING_SCAN, a second)."""
        if self.on_commit is None:
            return
        self._announcing.append(queue_id)
        if self._announce_timer is not None:
            return  # gathered into the wake-up already planned
        delay = self._announced_at + self.announce_delay - time.monotonic()
        if delay <= 0:
            self.flush_announcements()
        else:
            # Only here: get_running_loop() costs a getpid(2) in Python 3.11.
            self._announce_timer = asyncio.get_running_loop().call_later(delay, self.flush_announcements)

    def flush_announcements(self) -> None:
        """Send the gathered wake-up now (at its time, and when the process stops)."""
        if self._announce_timer is not None:
            self._announce_timer.cancel()
            self._announce_timer = None
        ids, self._announcing = self._announcing, []
        if ids and self.on_commit is not None:
            self._announced_at = time.monotonic()
            self.on_commit(ids)

    def _remove_partial(self, spool: Spool) -> None:
        spool.close()
        _unlink(spool.path)

    # -- reading and moving ------------------------------------------------------------------

    def _corrupt(self, state: str, queue_id: str, exc: Exception) -> None:
        if self.set_aside(state, queue_id):
            log.warning('saving corrupt file "%s" from queue "%s" to queue "corrupt": %s', queue_id, state, exc)

    def set_aside(self, state: str, name: str) -> bool:
        """Move `state`/`name` (whatever it is: a file, a directory, a symlink, which is moved,
        never followed) into corrupt/, under a new name if that one is taken there. False: it
        is gone already, or cannot be moved (logged; it stays where it is)."""
        src = f"{self._root}/{state}/{name}"
        dst = f"{self._root}/corrupt/{name}"
        if state in ("status", "control") or os.path.lexists(dst):
            dst = f"{dst}.{state}.{time.time_ns()}"
        try:
            os.rename(src, dst)
        except FileNotFoundError:
            return False
        except OSError as exc:
            log.error('cannot move "%s" from queue "%s" to queue "corrupt": %s', sanitize_name(name), state, exc.strerror or exc)
            return False
        return True

    def _status(self, queue_id: str, env: Envelope) -> Envelope:
        """The envelope as the queue manager last recorded it, if it did."""
        try:
            data = _read_file(self.status_path(queue_id))
        except FileNotFoundError:
            return env
        except NotOurs as exc:  # set aside; the queue file's envelope holds (at least once)
            log.warning("%s: stray status entry: %s", queue_id, exc)
            self.set_aside("status", queue_id)
            return env
        newer = parse_envelope(data)
        if newer.queue_id != env.queue_id:
            raise CorruptEnvelope("status file of another message")
        newer.size = env.size
        return newer

    def read(self, state: str, queue_id: str) -> Envelope:
        """The current envelope (reads only the end of the file); a damaged file moves to corrupt/."""
        try:
            env, _ = read_envelope_only(self.path(state, queue_id))
            if env.queue_id != queue_id:
                raise CorruptEnvelope("queue id does not match the file name")
            return self._status(queue_id, env)
        except CorruptEnvelope as exc:
            self._corrupt(state, queue_id, exc)
            raise

    def peek(self, state: str, queue_id: str) -> Envelope:
        """The current envelope, like `read`, but a damaged file stays where it is (for readers
        other than the queue manager: `queue list`, the API). Raises CorruptEnvelope."""
        env, _ = read_envelope_only(self.path(state, queue_id))
        if env.queue_id != queue_id:
            raise CorruptEnvelope("queue id does not match the file name")
        return self._status(queue_id, env)

    def load(self, state: str, queue_id: str) -> tuple[Envelope, memoryview]:
        """Envelope and content in memory (see open_content for delivery); a damaged file moves to corrupt/."""
        try:
            data = _read_file(self.path(state, queue_id))
        except NotOurs as exc:
            self._corrupt(state, queue_id, exc)
            raise
        try:
            env, content = split_queue_file(data)
            if env.queue_id != queue_id:
                raise CorruptEnvelope("queue id does not match the file name")
            return self._status(queue_id, env), content
        except CorruptEnvelope as exc:
            self._corrupt(state, queue_id, exc)
            raise

    def open_content(self, state: str, queue_id: str) -> tuple[Envelope, Content]:
        """Envelope and content for delivery, reading only the file's end: the content stays
        on disk, behind an open descriptor (the caller closes the Content). A damaged file,
        or anything that is not a regular file of ours, moves to corrupt/."""
        try:
            fd = open_regular(self.path(state, queue_id))
        except NotOurs as exc:
            self._corrupt(state, queue_id, exc)
            raise
        try:
            env, start = _envelope_at_end(fd, os.fstat(fd).st_size)
            if env.queue_id != queue_id:
                raise CorruptEnvelope("queue id does not match the file name")
            return self._status(queue_id, env), Content(fd=fd, size=start)
        except CorruptEnvelope as exc:
            os.close(fd)
            self._corrupt(state, queue_id, exc)
            raise
        except BaseException:
            os.close(fd)
            raise

    def move(self, queue_id: str, src: str, dst: str) -> None:
        os.rename(self.path(src, queue_id), self.path(dst, queue_id))

    # -- the queue manager's operations ------------------------------------------------------

    def rewrite(self, state: str, env: Envelope) -> None:
        """Record delivery progress: status/<id>, replaced atomically (tmp + fsync + rename)."""
        tmp = self.root / "tmp" / f"{env.queue_id}.status"
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC | os.O_NOFOLLOW, 0o600)
        try:
            _write_all(fd, [dump_envelope(env)])
            self._fsync(fd)
        finally:
            os.close(fd)
        os.rename(tmp, self.status_path(env.queue_id))

    def set_due(self, state: str, queue_id: str, when: float) -> None:
        """The file's mtime carries the time of the next attempt (Postfix's deferred queue)."""
        os.utime(self.path(state, queue_id), (when, when), follow_symlinks=False)

    def due(self, state: str, queue_id: str) -> float:
        """The time of the next attempt as recorded (see backoff.clamp_due for reading it)."""
        return os.stat(self.path(state, queue_id), follow_symlinks=False).st_mtime

    def remove(self, state: str, queue_id: str) -> None:
        """Delivery is complete: the queue file first, then its status (a leftover status is swept)."""
        _unlink(self.path(state, queue_id))
        _unlink(self.status_path(queue_id))

    # -- an administrator's action on a message under delivery (control/) -------------------

    def control_path(self, queue_id: str) -> str:
        return f"{self._root}/control/{queue_id}"

    def write_controls(self, actions: dict[str, str]) -> dict[str, str]:
        """Record control/<id> = action (hold, delete) for each message: tmp + fsync + rename each,
        then one fsync of control/. Returns {queue id: error} of those not recorded."""
        errors: dict[str, str] = {}
        for qid, action in actions.items():
            assert action in CONTROL_ACTIONS and is_queue_id(qid)
            tmp = f"{self._tmp}/{qid}.control"
            try:
                fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC | os.O_NOFOLLOW, 0o600)
                try:
                    _write_all(fd, [action.encode() + b"\n"])
                    self._fsync(fd)
                finally:
                    os.close(fd)
                os.rename(tmp, self.control_path(qid))
            except OSError as exc:
                _unlink(tmp)
                errors[qid] = exc.strerror or str(exc)
        if len(errors) < len(actions):
            try:
                _fsync_dir(f"{self._root}/control", self._fsync)
            except OSError as exc:
                errors.update((qid, exc.strerror or str(exc)) for qid in actions if qid not in errors)
        return errors

    def remove_control(self, queue_id: str) -> None:
        """The action is done (or replaced by one that needs no record): control/<id> goes. Never
        raises: a marker left behind is removed by the next start (its message is not in active/)."""
        try:
            _unlink(self.control_path(queue_id))
        except OSError as exc:
            log.error("%s: cannot remove control/%s: %s", queue_id, queue_id, exc.strerror or exc)

    def read_controls(self) -> dict[str, str]:
        """The control/ markers: {queue id: action}. A stray entry is set aside into corrupt/, a
        marker that asks for no known action is removed (both logged)."""
        out: dict[str, str] = {}
        for name in os.listdir(self.root / "control"):
            path = f"{self._root}/control/{name}"
            try:
                action = _read_file(path).decode("ascii", "replace").strip() if is_queue_id(name) else ""
            except FileNotFoundError:
                continue
            except (NotOurs, OSError) as exc:
                log.warning('stray entry "%s" in queue "control": %s', sanitize_name(name), exc)
                self.set_aside("control", name)
                continue
            if action in CONTROL_ACTIONS:
                out[name] = action
                continue
            log.warning('stray entry "%s" in queue "control": %s', sanitize_name(name),
                        f"unknown action {sanitize(action, 20)!r}" if is_queue_id(name) else "not a queue id")  # fmt: skip
            if not self.set_aside("control", name) and os.path.lexists(path):
                _unlink(path)
        return out

    def reclaim_active(self) -> dict[str, int]:
        """What a stop left in active/ goes back to incoming/ (at least once), but a message whose
        hold or delete was asked during its attempt (control/<id>) goes into hold/ or is removed;
        then every marker is removed. For recovery and the queue manager's own start: nobody else
        works in active/ meanwhile. Returns counts: active_requeued, held, deleted, corrupt."""
        controls = self.read_controls()
        counts = {"active_requeued": 0, "held": 0, "deleted": 0, "corrupt": 0}
        for qid in self.list("active"):
            action = controls.get(qid)
            try:
                if action == "hold":
                    self.move(qid, "active", "hold")
                    log.info("%s: placed on hold (from active, asked during the delivery attempt a stop cut short)", qid)
                    counts["held"] += 1
                elif action == "delete":
                    os.unlink(self.path("active", qid))
                    _unlink(self.status_path(qid))
                    log.info("%s: removed (from active, asked during the delivery attempt a stop cut short)", qid)
                    counts["deleted"] += 1
                else:
                    self.move(qid, "active", "incoming")
                    counts["active_requeued"] += 1
            except FileNotFoundError:
                pass
            except OSError as exc:  # incoming/<id> is a directory, say: never stops the start
                if action == "delete":
                    log.warning('cannot remove "%s" from queue "active": %s', qid, exc.strerror or exc)
                else:
                    log.warning('cannot move "%s" from queue "active" to queue "%s": %s', qid, action or "incoming",
                                exc.strerror or exc)  # fmt: skip
                if self.set_aside("active", qid):
                    counts["corrupt"] += 1
        for qid in controls:
            _unlink(self.control_path(qid))
        return counts

    async def inject(self, *, sender: str, recipients: list[str], body: bytes, client: ClientInfo) -> str:
        """Queue a message we generate ourselves (bounces, warnings) through the same commit."""
        qid = self.new_id()
        spool = Spool(qid, f"{self._tmp}/{qid}", len(body))
        spool.write(body)
        env = Envelope(queue_id=qid, sender=sender, recipients=[Recipient(address=r) for r in recipients],
                       arrival=time.time(), client=client)  # fmt: skip
        await self.commit(spool, env)
        return qid

    # -- recovery ----------------------------------------------------------------------------

    def _upgrade_v1(self) -> int:
        """Queues written by format 1 (envelope files, bodies in msg/<id>) become queue files.

        Each message is rewritten as tmp/<id> (fsync), renamed over its envelope file, and only
        then loses its old body; a crash in between leaves msg/ for the next start to finish.
        """
        old = self.root / "msg"
        if not old.is_dir():
            return 0
        done: list[str] = []
        for state in STATES:
            for qid in self.list(state):
                path = self.path(state, qid)
                try:
                    data = _read_file(path)
                    if not data.startswith(_V1_MAGIC):
                        continue
                    env = _parse_v1(data)
                    content = _read_file(old / qid)
                except (CorruptEnvelope, FileNotFoundError):
                    continue  # left as it is: recovery moves it to corrupt/
                env.size = len(content)
                tmp = self.root / "tmp" / f"{qid}.upgrade"
                fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o600)
                try:
                    _write_all(fd, [content, envelope_trailer(env)])
                    self._fsync(fd)
                finally:
                    os.close(fd)
                os.rename(tmp, path)
                done.append(qid)
        _fsync_dirs(self.root, STATES, self._fsync)
        for qid in done:
            _unlink(old / qid)
        left = os.listdir(old)
        if left:  # bodies of envelopes that could not be read: kept for the administrator
            log.warning("queue upgrade: %d file(s) left in %s (their envelopes are damaged)", len(left), old)
        else:
            old.rmdir()
        return len(done)

    def recover(self) -> dict[str, int]:
        """At start, before anyone accepts mail. Returns counts for the log."""
        self.ensure_dirs()
        counts = {"tmp_removed": 0, "active_requeued": 0, "corrupt": 0, "orphans_removed": 0}
        upgraded = self._upgrade_v1()
        if upgraded:
            counts["upgraded"] = upgraded
        # A stray entry (a directory, a symlink, a FIFO, a file we cannot read) stops nothing:
        # it is logged and set aside into corrupt/ (or left where it is if it cannot be moved).
        for name in os.listdir(self.root / "tmp"):
            try:
                _unlink(self.root / "tmp" / name)
                counts["tmp_removed"] += 1
            except OSError as exc:  # a directory (EISDIR), an immutable file...
                log.warning('stray entry "%s" in queue "tmp": %s', sanitize_name(name), exc.strerror or exc)
                if self.set_aside("tmp", name):
                    counts["corrupt"] += 1
        reclaimed = self.reclaim_active()  # back to incoming/, or hold/ or removed as control/ asks
        counts["active_requeued"] += reclaimed["active_requeued"]
        counts["corrupt"] += reclaimed["corrupt"]
        for key in ("held", "deleted"):
            if reclaimed[key]:
                counts[key] = reclaimed[key]
        for qid in self.list("incoming"):
            try:
                self.read("incoming", qid)
            except CorruptEnvelope:  # NotOurs too: moved to corrupt/ by read
                counts["corrupt"] += 1
            except FileNotFoundError:
                pass
        known: set[str] = set()
        for state in STATES:
            known.update(self.list(state))
        for name in os.listdir(self.root / "status"):
            path = self.root / "status" / name
            if os.path.isfile(path) and not os.path.islink(path):
                if name not in known:
                    _unlink(path)
                    counts["orphans_removed"] += 1
                continue
            log.warning('stray entry "%s" in queue "status": not a regular file', sanitize_name(name))
            if self.set_aside("status", name):
                counts["corrupt"] += 1
        _fsync_dirs(self.root, DIRS, self._fsync)
        return counts


def _fsync_dirs(root: Path, names: tuple[str, ...], fsync: Callable[[int], None]) -> None:
    for d in names:
        fd = os.open(root / d, os.O_RDONLY | os.O_DIRECTORY)
        try:
            fsync(fd)
        finally:
            os.close(fd)


_V1_MAGIC = b"MTAQ 1\n"


def _parse_v1(data: bytes) -> Envelope:
    """Format 1's envelope file: a version line, the JSON, `END <crc32>`."""
    body, sep, trailer = data[len(_V1_MAGIC) :].rpartition(b"\nEND ")
    if not sep or len(trailer) != 9 or int(trailer[:8], 16) != zlib.crc32(body):
        raise CorruptEnvelope("format 1 envelope without a valid end marker")
    return _envelope_from_json(body)


def _read_file(path: str | Path) -> bytes:
    """The whole file: open, fstat, one read, close (io.open adds an isatty, two lseeks, a read).
    Anything but a regular file we can read raises NotOurs."""
    fd = open_regular(path)
    try:
        want = os.fstat(fd).st_size + 1  # one more: a short read of a regular file is its end
        try:
            data = os.read(fd, want)
        except OSError as exc:
            if exc.errno in _NOT_OURS:
                raise NotOurs(f"cannot read: {exc.strerror or exc}") from None
            raise
        if len(data) < want:
            return data
        parts = [data]  # it grew meanwhile (a queue file does not): read on to the end
        while chunk := os.read(fd, 1 << 20):
            parts.append(chunk)
        return b"".join(parts)
    finally:
        os.close(fd)


def _fsync_dir(path: str, fsync: Callable[[int], None]) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        fsync(fd)
    finally:
        os.close(fd)


def sanitize_name(name: str) -> str:
    """A directory entry's name for the log (anyone who can write a queue directory chose it)."""
    return sanitize(name, 100)


def _unlink(path: Path | str) -> None:
    try:
        os.unlink(path)
    except FileNotFoundError:
        pass

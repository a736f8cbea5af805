"""Queue operations: what `mtaserver queue ...` and the admin API do to the spool.

DESCRIPTION
    `QueueOps` is the one interface on the queue directories (store.py) for the CLI and the
    admin API (SPEC 5, 9.6):

      stats     messages per queue (incoming active deferred hold corrupt) and the time of the
                count: directory listings only, no file is read
      list      message summaries in queue id order (= arrival order), `limit` at a time; the
                next page starts `after` the last id of this one (keyset paging). Only the page's
                envelopes are read (the end of each file), unless a sender or recipient selector
                needs every candidate's; age selectors compare ids, which encode the arrival time
      show      one message: envelope, per-recipient status and last reply (the status file
                supersedes the queue file's envelope), next attempt (a deferred file's mtime),
                the first header lines of the content (bounded), the decision trail
      hold      incoming, active, deferred -> hold/ (Postfix postsuper -h); never delivered,
                never expired while held
      release   hold -> deferred/, due now (postsuper -H)
      requeue   incoming, active, deferred, hold -> incoming/ with every recipient pending again
                and `extra["requeue"] = "1"` in the envelope (postsuper -r); running the content
                filters again on such a message is the filter chain's decision (DESIGN.md)
      delete    hold, incoming, active, deferred (corrupt when named) -> removed, silently
                (postsuper -d); `bounce=True` first queues a non-delivery notification to the
                sender (never for the null sender), as the queue manager does for a bounce,
                naming the recipients the message still has (for one under delivery: when
                the attempt ends, those it did not deliver)
      flush     every deferred message due now (postqueue -f)
      shape     Postfix qshape: messages per recipient domain and age bucket (a message counts
                once per domain it has recipients in)

    Every action takes a `Selector` (ids, ALL, queue, sender, recipient, age) and `dry_run`,
    which touches nothing and returns what it would touch. A message moves while it is being
    listed; a listing may miss it or (between two queues) see it twice: ids are reported once;
    a page is filled past messages that went meanwhile. ALL together with ids is an error. An
    action that fails on one message (an OSError) reports it under `errors` and goes on; the
    selection (which may read every envelope) runs in a thread.

    The queue manager owns active/ (DESIGN.md "Queue on disk"). With a `manager` (inside the
    server) actions go through QueueManager.control, in its event loop: a message that is not
    being delivered is moved at once, one that is gets the action when its attempt ends.
    Without one, the caller holds the instance lock (the CLI with the server stopped) and
    files are moved here. Every move is one rename(2), as the manager's are.

    `RemoteQueueOps` has the same methods over the admin HTTP API, for the CLI when the server
    runs. The `format_*` functions render results as text like postqueue -p, qshape, postsuper.

SECURITY
    Queue ids from the caller are checked (is_queue_id) before any path is built from them.
    Nothing in a queue directory is followed: entries are stat'd without following links and
    opened with store.open_regular (O_NOFOLLOW, a regular file or NotOurs), so a symlink planted
    there shows as a stray entry and what it points to is never read (show, list, delete --bounce).
    Envelope text (addresses, replies, headers) is printed through logutil.sanitize.

STANDARDS
    RFC 3464 (the notification of `delete --bounce`, via dsn.py).

CONFIG
    server.hostname (the notification's From domain), queue.max_lifetime, queue.delay_warning
"""

from __future__ import annotations

import asyncio
import heapq
import json
import logging
import os
import re
import socket
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from ..logutil import sanitize
from ..model import Envelope, Fate, RcptState
from .dsn import RecipientStatus, build_dsn
from .store import (
    STATES,
    CorruptEnvelope,
    NotOurs,
    QueueStore,
    envelope_doc,
    head_end,
    is_queue_id,
    open_regular,
    split_queue_file,
)

if TYPE_CHECKING:
    from ..config import Config
    from .manager import QueueManager

log = logging.getLogger("queue")

ACTIONS = ("hold", "release", "requeue", "delete")
# Where each action finds messages (Postfix postsuper's defaults; corrupt/ only when named).
SOURCES = {
    "hold": ("incoming", "active", "deferred"),
    "release": ("hold",),
    "requeue": ("incoming", "active", "deferred", "hold"),
    "delete": ("incoming", "active", "deferred", "hold"),
}
NAMED_ONLY = {"delete": ("corrupt",)}  # a source only when --queue names it
SHAPE_QUEUES = ("incoming", "active", "deferred")  # qshape's default (incoming active) and the deferred mail
BUCKETS = (5, 10, 20, 40, 80, 160, 320, 640, 1280)  # minutes, qshape's
HEAD_LIMIT = 64 * 1024  # bytes of a message's header section `show` reads
HEAD_LINES = 200
MAX_LIMIT = 10000  # one page of `list`
DELETED_REASON = "message deleted from the queue by the mail system administrator"

_QID = re.compile(r"[0-9A-HJKMNP-TV-Z]{17}")  # store.is_queue_id, as one regex (stats counts 100,000 names)
_B32 = "0123456789ABCDEFGHJKMNPQRSTVWXYZ"


class OpsError(Exception):
    """A request that cannot be done as asked (bad selector, unknown queue, refused by the server)."""


# ---------------------------------------------------------------------------------------------
# Pure parts: selectors, ids and time, qshape.


@dataclass
class Selector:
    """Which messages. `ids` or `all` name them; the other fields narrow the choice.

    sender / recipient: an address (case-insensitive), or a domain (`example.test` or
    `@example.test`: the address's domain), or `<>` for the null sender. Ages in seconds
    since arrival."""

    ids: list[str] = field(default_factory=list)
    all: bool = False
    queue: str | None = None
    sender: str | None = None
    recipient: str | None = None
    older_than: float | None = None
    newer_than: float | None = None

    @property
    def needs_envelope(self) -> bool:
        return self.sender is not None or self.recipient is not None

    @property
    def narrows(self) -> bool:
        return self.needs_envelope or self.older_than is not None or self.newer_than is not None


def id_usec(queue_id: str) -> int:
    """Microseconds since the epoch at which the id was made (its first 11 symbols)."""
    n = 0
    for c in queue_id[:11]:
        n = n * 32 + _B32.index(c)
    return n


def id_time(queue_id: str) -> float:
    return id_usec(queue_id) / 1_000_000


def time_key(t: float) -> str:
    """The 11-symbol id prefix of time `t`: ids compare with it as their arrival times do."""
    n = max(0, int(t * 1_000_000))
    return "".join(_B32[(n >> (5 * i)) & 31] for i in reversed(range(11)))


@dataclass(frozen=True)
class AgeWindow:
    """The age selectors as id bounds at `now`: oldest <= id[:11] <= newest (None: no bound)."""

    newest: str | None  # older_than: arrived at or before now - older_than
    oldest: str | None  # newer_than: arrived after now - newer_than

    @classmethod
    def of(cls, sel: Selector | None, now: float) -> AgeWindow:
        if sel is None:
            return cls(None, None)
        newest = time_key(now - sel.older_than) if sel.older_than is not None else None
        # ids are truncated to microseconds: "after t" is "at or after the next microsecond"
        oldest = time_key(now - sel.newer_than + 1e-6) if sel.newer_than is not None else None
        return cls(newest, oldest)

    def __contains__(self, queue_id: str) -> bool:
        p = queue_id[:11]
        return (self.newest is None or p <= self.newest) and (self.oldest is None or p >= self.oldest)


def address_matches(pattern: str, address: str) -> bool:
    """A selector's address or domain against an envelope address (see Selector)."""
    pattern = pattern.strip().lower()
    address = address.lower()
    if pattern == "<>":
        return address == ""
    if pattern.startswith("@"):
        pattern = pattern[1:]
    elif "@" in pattern:
        return address == pattern
    return address.rpartition("@")[2].rstrip(".") == pattern.rstrip(".")


def envelope_matches(sel: Selector, env: Envelope) -> bool:
    if sel.sender is not None and not address_matches(sel.sender, env.sender):
        return False
    return sel.recipient is None or any(address_matches(sel.recipient, r.address) for r in env.recipients)


def sources(action: str, queue: str | None) -> tuple[str, ...]:
    """The queues an action looks in; ValueError for a queue it never takes messages from."""
    if action not in SOURCES:
        raise OpsError(f"unknown action {action!r}")
    allowed = SOURCES[action] + NAMED_ONLY.get(action, ())
    if queue is None:
        return SOURCES[action]
    if queue not in allowed:
        raise OpsError(f"{action}: messages are never taken from the {queue!r} queue (one of: {', '.join(allowed)})")
    return (queue,)


def check_selector(sel: Selector) -> None:
    if sel.queue is not None and sel.queue not in STATES:
        raise OpsError(f"unknown queue {sel.queue!r} (one of: {', '.join(STATES)})")
    if sel.all and sel.ids:
        raise OpsError("ALL and queue ids together: name the messages one way")
    bad = [q for q in sel.ids if not is_queue_id(q)]
    if bad:
        raise OpsError(f"not a queue id: {sanitize(bad[0], 40)}")


def age_bucket(age_seconds: float) -> int:
    """The qshape column of an age: 0 for under 5 minutes, ..., len(BUCKETS) for 1280+."""
    minutes = age_seconds / 60
    for i, limit in enumerate(BUCKETS):
        if minutes < limit:
            return i
    return len(BUCKETS)


def shape_table(messages: Iterable[tuple[Iterable[str], float]], *, now: float, queues: Iterable[str]) -> dict:
    """qshape: (recipient domains, arrival) per message -> counts per domain and age bucket."""
    width = len(BUCKETS) + 1
    total = [0] * width
    per: dict[str, list[int]] = {}
    for domains, arrival in messages:
        b = age_bucket(now - arrival)
        total[b] += 1
        for d in set(domains):
            per.setdefault(d, [0] * width)[b] += 1
    rows = sorted(per.items(), key=lambda kv: (-sum(kv[1]), kv[0]))
    return {
        "time": now,
        "queues": list(queues),
        "buckets": [str(b) for b in BUCKETS] + [f"{BUCKETS[-1]}+"],
        "total": {"total": sum(total), "counts": total},
        "domains": [{"domain": d, "total": sum(c), "counts": c} for d, c in rows],
    }


def domain_of(address: str) -> str:
    return address.rpartition("@")[2].lower().rstrip(".") if "@" in address else "(local)"


def summary(state: str, queue_id: str, env: Envelope | None, st: os.stat_result | None, error: str | None = None) -> dict:
    """One message as `queue list` shows it: postqueue -j's fields, and the next attempt."""
    out: dict[str, Any] = {"queue_name": state, "queue_id": queue_id}
    if env is None:
        out.update(arrival_time=int(id_time(queue_id)), message_size=st.st_size if st else 0, sender=None, recipients=[])
    else:
        rcpts = []
        for r in env.recipients:
            one: dict[str, Any] = {"address": r.address}
            if r.last_reply:
                one["delay_reason"] = r.last_reply
            rcpts.append(one)
        out.update(arrival_time=int(env.arrival), message_size=env.size, forced_expire=False, sender=env.sender, recipients=rcpts)
    out["next_attempt"] = st.st_mtime if st is not None and state == "deferred" else None
    if error:
        out["error"] = error
    return out


# ---------------------------------------------------------------------------------------------
# The I/O shell.


def apply(store: QueueStore, action: str, queue_id: str, *, now: float) -> str | None:
    """One action on one message, on disk, wherever the action may find it. Returns the queue
    it was taken from, None when it is in none of them (moved or removed meanwhile).
    The caller makes sure nobody is delivering it (QueueManager.control, or the instance lock)."""
    for state in SOURCES[action] + NAMED_ONLY.get(action, ()):
        try:
            if action == "hold":
                store.move(queue_id, state, "hold")
                log.info("%s: placed on hold (from %s)", queue_id, state)
            elif action == "release":
                store.set_due(state, queue_id, now)
                store.move(queue_id, state, "deferred")
                log.info("%s: released from hold", queue_id)
            elif action == "delete":
                os.unlink(store.path(state, queue_id))
                try:
                    os.unlink(store.status_path(queue_id))
                except FileNotFoundError:
                    pass
                log.info("%s: removed (from %s)", queue_id, state)
            else:
                if not _requeue(store, state, queue_id):
                    return None
                log.info("%s: requeued (from %s)", queue_id, state)
        except FileNotFoundError:
            continue
        return state
    return None


def _requeue(store: QueueStore, state: str, queue_id: str) -> bool:
    """Every recipient pending again, marked for the content filters, into incoming/."""
    try:
        env = store.peek(state, queue_id)
    except CorruptEnvelope as exc:
        log.warning("%s: not requeued: %s", queue_id, exc)
        return False
    for r in env.recipients:
        r.state = RcptState.PENDING
        r.last_reply = None
    env.extra["requeue"] = "1"
    store.rewrite(state, env)
    if state != "incoming":
        store.move(queue_id, state, "incoming")
    return True


def _read_regular(path: str) -> bytes:
    """A whole queue file, opened as store.open_regular does (never through a symlink; anything
    but a regular file raises NotOurs)."""
    with os.fdopen(open_regular(path), "rb") as f:
        return f.read()


class QueueOps:
    def __init__(
        self, store: QueueStore, manager: QueueManager | None = None, clock: Callable[[], float] = time.time,
        *, config: Callable[[], Config] | None = None,
    ) -> None:  # fmt: skip
        self.store = store
        self.manager = manager
        self.clock = clock
        self._config = config

    # -- reading -----------------------------------------------------------------------------

    def _names(self, state: str) -> list[str]:
        """The queue ids in one directory: names only (getdents), no file is opened or stat'd."""
        try:
            return list(filter(_QID.fullmatch, os.listdir(f"{self.store.root}/{state}")))
        except FileNotFoundError:
            return []

    def _scan(self, queues: Iterable[str], window: AgeWindow, after: str | None = None, first: int | None = None) -> list[tuple[str, str]]:
        """(id, queue) of the messages in these queues within the age window and after `after`,
        by id, each once (the first queue named wins), at most the `first` ones."""
        where: dict[str, str] = {}
        for state in reversed(tuple(queues)):
            names = self._names(state)
            if window.newest is not None or window.oldest is not None:  # AgeWindow.__contains__, inline
                lo, hi = window.oldest or "", window.newest or "~"
                names = [n for n in names if lo <= n[:11] <= hi]
            if after is not None:
                names = [n for n in names if n > after]
            where.update(dict.fromkeys(names, state))
        # The first page of 100,000: a partial selection, not a sort of everything.
        keys = heapq.nsmallest(first, where) if first is not None and first < len(where) // 8 else sorted(where)[:first]
        return [(k, where[k]) for k in keys]

    def locate(self, queue_id: str, queues: Iterable[str] = STATES) -> str | None:
        for state in queues:
            if os.path.lexists(self.store.path(state, queue_id)):  # a planted symlink is an entry, never followed
                return state
        return None

    def _envelope(self, state: str, queue_id: str) -> tuple[str, Envelope | None, os.stat_result | None, str | None]:
        """(queue, envelope, stat, error) of a message, following it if it moved meanwhile."""
        for _ in range(3):
            st = None
            try:
                st = os.stat(self.store.path(state, queue_id), follow_symlinks=False)
                if state == "corrupt":
                    return state, None, st, "corrupt queue file"
                return state, self.store.peek(state, queue_id), st, None
            except FileNotFoundError:
                found = self.locate(queue_id)
                if found is None:
                    break
                state = found
            except CorruptEnvelope as exc:
                return state, None, st, str(exc)
        return state, None, None, "gone"

    def stats(self) -> dict:
        now = self.clock()
        return {"time": now, "queues": {state: len(self._names(state)) for state in STATES}}

    def list(self, queue: str | None = None, selector: Selector | None = None, after: str | None = None, limit: int = 100) -> dict:
        sel = selector or Selector()
        if queue is not None:
            sel = Selector(**{**sel.__dict__, "queue": queue})
        check_selector(sel)
        if after is not None and not is_queue_id(after):
            raise OpsError("after: not a queue id")
        limit = max(1, min(limit, MAX_LIMIT))
        queues = (sel.queue,) if sel.queue else STATES
        wanted = set(sel.ids)
        out: list[dict] = []
        more = False
        first = None if wanted or sel.needs_envelope else limit + 1  # else read on until the page is full
        window = AgeWindow.of(sel, self.clock())
        cursor = after
        while True:
            batch = self._scan(queues, window, cursor, first)
            for qid, state in batch:
                if wanted and qid not in wanted:
                    continue
                if len(out) == limit:
                    more = True
                    break
                state, env, st, error = self._envelope(state, qid)
                if error == "gone":  # delivered or removed since the listing
                    continue
                if sel.needs_envelope and (env is None or not envelope_matches(sel, env)):
                    continue
                out.append(summary(state, qid, env, st, error))
            # A short page from a truncated scan (messages went meanwhile): scan on after it.
            if more or first is None or len(batch) < first:
                break
            cursor = batch[-1][0]
        return {"messages": out, "next": out[-1]["queue_id"] if more else None}

    def show(self, queue_id: str) -> dict | None:
        if not is_queue_id(queue_id):
            return None
        state = self.locate(queue_id)
        if state is None:
            return None
        state, env, st, error = self._envelope(state, queue_id)
        if error == "gone":
            return None
        out = summary(state, queue_id, env, st, error)
        if env is None:
            return out
        doc = envelope_doc(env)
        out.update(envelope=doc, recipients=doc["recipients"], trail=env.trail, headers=self._headers(state, queue_id, env.size))
        return out

    def _headers(self, state: str, queue_id: str, size: int) -> list[str]:
        try:
            fd = open_regular(self.store.path(state, queue_id))
        except (FileNotFoundError, NotOurs):  # moved meanwhile, or swapped for something not ours
            return []
        try:
            window = os.pread(fd, min(size, HEAD_LIMIT + 4), 0)
        finally:
            os.close(fd)
        head = window[: head_end(window, HEAD_LIMIT)]
        lines = head.decode("utf-8", "replace").split("\r\n")
        if lines and lines[-1] == "":
            lines.pop()
        return lines[:HEAD_LINES]

    def shape(self, queue: str | None = None) -> dict:
        if queue is not None and queue not in STATES:
            raise OpsError(f"unknown queue {queue!r} (one of: {', '.join(STATES)})")
        queues = (queue,) if queue else SHAPE_QUEUES
        now = self.clock()

        def rows() -> Iterable[tuple[list[str], float]]:
            for qid, state in self._scan(queues, AgeWindow(None, None)):
                _, env, _, _ = self._envelope(state, qid)
                if env is not None:
                    yield [domain_of(r.address) for r in env.recipients], env.arrival

        return shape_table(rows(), now=now, queues=queues)

    # -- actions -----------------------------------------------------------------------------

    def select(self, action: str, selector: Selector) -> tuple[list[tuple[str, str]], list[str]]:
        """(id, queue) of the messages an action on `selector` takes, and the named ids not found."""
        check_selector(selector)
        queues = sources(action, selector.queue)
        if not selector.ids and not selector.all and not selector.narrows:
            raise OpsError(f"{action}: name the messages: queue ids, ALL, or a selector (from, to, older_than, newer_than)")
        window = AgeWindow.of(selector, self.clock())
        missing: list[str] = []
        if selector.ids:
            chosen = []
            for qid in dict.fromkeys(selector.ids):
                state = self.locate(qid, queues)
                if state is None:
                    missing.append(qid)
                elif qid in window:
                    chosen.append((qid, state))
        else:
            chosen = self._scan(queues, window)
        if selector.needs_envelope:
            kept = []
            for qid, state in chosen:
                _, env, _, _ = self._envelope(state, qid)
                if env is not None and envelope_matches(selector, env):
                    kept.append((qid, state))
            chosen = kept
        return chosen, missing

    async def hold(self, selector: Selector, *, dry_run: bool = False) -> dict:
        return await self._act("hold", selector, dry_run)

    async def release(self, selector: Selector, *, dry_run: bool = False) -> dict:
        return await self._act("release", selector, dry_run)

    async def requeue(self, selector: Selector, *, dry_run: bool = False) -> dict:
        return await self._act("requeue", selector, dry_run)

    async def delete(self, selector: Selector, *, dry_run: bool = False, bounce: bool = False) -> dict:
        return await self._act("delete", selector, dry_run, bounce=bounce)

    async def _act(self, action: str, selector: Selector, dry_run: bool, *, bounce: bool = False) -> dict:
        # Reading names and envelopes (100,000 with --from) in a thread: this may be the manager's loop.
        chosen, missing = await asyncio.to_thread(self.select, action, selector)
        ids = [qid for qid, _ in chosen]
        out: dict[str, Any] = {"action": action, "count": len(ids), "ids": ids, "dry_run": dry_run}
        if missing:
            out["missing"] = missing
        if bounce:
            out["bounce"] = True
        if dry_run or not ids:
            return out
        bounced: list[str] = []

        async def notify_sender(qid: str) -> None:
            new = await self._bounce(qid)
            if new is not None:
                bounced.append(new)

        before = notify_sender if bounce else None
        if self.manager is not None:
            done, pending, errors = await self.manager.control(action, ids, before=before)
        else:
            now = self.clock()
            done, pending, errors = [], [], {}
            for qid in ids:
                try:
                    if before is not None:
                        await before(qid)
                    if apply(self.store, action, qid, now=now) is not None:
                        done.append(qid)
                except OSError as exc:
                    errors[qid] = exc.strerror or str(exc)
                    log.error("%s: %s failed: %s", qid, action, errors[qid])
            if action in ("release", "requeue") and done:
                self._poke(done if action == "requeue" else [SCAN_TOKEN])
        out.update(count=len(done) + len(pending), ids=done + pending)
        if bounce:
            out["bounced"] = bounced
        if pending:
            out["pending"] = pending  # being delivered: done when the attempt ends (a bounce then too)
        if errors:
            out["errors"] = errors  # left where they were
        return out

    async def _bounce(self, qid: str) -> str | None:
        """Queue a non-delivery notification to the sender of a message about to be deleted,
        naming the recipients it still has (before the message goes: a crash in between may
        duplicate a notification, never lose one). Returns its queue id, None when none is due."""
        cfg = self._config() if self._config is not None else None
        hostname = cfg.server.hostname if cfg is not None else socket.getfqdn()
        state = self.locate(qid)
        if state is None or state == "corrupt":
            return None
        try:
            # A large message is read in a thread: this may be the queue manager's loop.
            _, content = split_queue_file(await asyncio.to_thread(_read_regular, self.store.path(state, qid)))
            env = self.store.peek(state, qid)
        except (FileNotFoundError, CorruptEnvelope):
            return None
        if not env.sender or not env.recipients:
            return None  # never a notification about a notification; nobody left
        rcpts = [RecipientStatus(address=r.address, status="5.0.0", diagnostic=DELETED_REASON, smtp_diagnostic=False)
                 for r in env.recipients]  # fmt: skip
        dsn = build_dsn(kind=Fate.BOUNCED, hostname=hostname, queue_id=qid, sender=env.sender, arrival=env.arrival,
                        recipients=rcpts, original=bytes(content), now=self.clock())  # fmt: skip
        from .manager import LOCAL_CLIENT

        new = await self.store.inject(sender="", recipients=[env.sender], body=dsn, client=LOCAL_CLIENT)
        log.info("%s: sender non-delivery notification: %s", qid, new)
        return new

    def _all_due(self, ids: list[str]) -> None:
        now = self.clock()
        for qid in ids:
            try:
                self.store.set_due("deferred", qid, now)
            except FileNotFoundError:
                pass

    async def flush(self) -> dict:
        """Every deferred message due now (its mtime: however many slots the manager has free, the
        ones it cannot take at once are due when a slot frees up)."""
        ids = self._names("deferred")
        await asyncio.to_thread(self._all_due, ids)
        if self.manager is not None:
            self.manager.flush()
        else:
            self._poke([FLUSH_TOKEN])
        return {"action": "flush", "count": len(ids), "dry_run": False}

    def _poke(self, words: list[str]) -> None:
        """Wake a queue manager running in another process (its datagram socket), if any."""
        from .manager import wakeup_path

        path = wakeup_path(self.store.root)
        if not path.exists():
            return
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as s:
            try:
                s.sendto(" ".join(words[:256]).encode(), str(path))
            except OSError:
                pass  # nobody listens: the server is stopped


# Words of a wake-up datagram besides queue ids (manager.py _Wake): retry all deferred mail now;
# look at deferred/ now (released mail is due).
FLUSH_TOKEN = "!flush"
SCAN_TOKEN = "!deferred"


# ---------------------------------------------------------------------------------------------
# The same operations over the admin HTTP API (the CLI, while the server runs).


def _seconds(value: float | None) -> str | None:
    """A duration as parse_duration reads it back: `1036800s`, `1.5s` (never `1.0368e+06s`)."""
    if value is None:
        return None
    return f"{int(value)}s" if value == int(value) else f"{value:.6f}".rstrip("0") + "s"


class RemoteQueueOps:
    """QueueOps's methods as calls to a running server's admin API. Blocking (urllib): for the
    CLI, which has nothing else to do meanwhile."""

    def __init__(self, base_url: str, token: str | None, timeout: float = 60.0) -> None:
        self.base = base_url.rstrip("/")
        self.token = token
        self.timeout = timeout
        # Never through $http_proxy: the server is local, and the bearer token must not leave.
        self._opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))

    def _call(self, method: str, path: str, body: dict | None = None) -> dict | None:
        data = json.dumps(body).encode() if body is not None else None
        req = urllib.request.Request(self.base + path, data=data, method=method)
        req.add_header("Accept", "application/json")
        if data is not None:
            req.add_header("Content-Type", "application/json")
        if self.token:
            req.add_header("Authorization", f"Bearer {self.token}")
        try:
            with self._opener.open(req, timeout=self.timeout) as resp:
                return json.loads(resp.read() or b"null")
        except urllib.error.HTTPError as exc:
            if exc.code == 404 and method == "GET" and path.startswith("/api/queue/messages/"):
                return None
            detail = exc.read()[:500].decode("utf-8", "replace")
            try:
                detail = json.loads(detail).get("detail", detail)
            except (ValueError, AttributeError):
                pass
            raise OpsError(f"admin API {method} {path}: {exc.code} {sanitize(str(detail), 300)}") from None
        except (urllib.error.URLError, OSError) as exc:
            raise OpsError(f"admin API at {self.base}: {exc}") from None

    @staticmethod
    def _params(sel: Selector | None) -> dict[str, str]:
        if sel is None:
            return {}
        out = {"queue": sel.queue, "from": sel.sender, "to": sel.recipient,
               "older_than": _seconds(sel.older_than), "newer_than": _seconds(sel.newer_than)}  # fmt: skip
        return {k: v for k, v in out.items() if v is not None}

    def stats(self) -> dict:
        return self._call("GET", "/api/queue/stats") or {}

    def list(self, queue: str | None = None, selector: Selector | None = None, after: str | None = None, limit: int = 100) -> dict:
        q = self._params(selector)
        if queue:
            q["queue"] = queue
        if after:
            q["after"] = after
        q["limit"] = str(limit)
        out = self._call("GET", "/api/queue/messages?" + urllib.parse.urlencode(q)) or {}
        if selector is not None and selector.ids:  # the API has no id filter on listings
            out["messages"] = [m for m in out.get("messages", []) if m.get("queue_id") in set(selector.ids)]
        return out

    def show(self, queue_id: str) -> dict | None:
        if not is_queue_id(queue_id):
            return None
        return self._call("GET", f"/api/queue/messages/{queue_id}")

    def shape(self, queue: str | None = None) -> dict:
        return self._call("GET", "/api/queue/shape" + (f"?queue={urllib.parse.quote(queue)}" if queue else "")) or {}

    async def flush(self) -> dict:
        return self._call("POST", "/api/queue/flush", {}) or {}

    async def hold(self, selector: Selector, *, dry_run: bool = False) -> dict:
        return self._act("hold", selector, dry_run)

    async def release(self, selector: Selector, *, dry_run: bool = False) -> dict:
        return self._act("release", selector, dry_run)

    async def requeue(self, selector: Selector, *, dry_run: bool = False) -> dict:
        return self._act("requeue", selector, dry_run)

    async def delete(self, selector: Selector, *, dry_run: bool = False, bounce: bool = False) -> dict:
        return self._act("delete", selector, dry_run, bounce)

    def _act(self, action: str, sel: Selector, dry_run: bool, bounce: bool = False) -> dict:
        body: dict[str, Any] = {"ids": sel.ids, "all": sel.all, **self._params(sel), "dry_run": dry_run}
        if action == "delete":
            body["bounce"] = bounce
        return self._call("POST", f"/api/queue/{action}", body) or {}


# ---------------------------------------------------------------------------------------------
# Text output (pure): postqueue -p, qshape, postsuper.

_MARK = {"active": "*", "hold": "!", "corrupt": "#"}


def _when(t: float | None) -> str:
    return time.strftime("%a %b %d %H:%M:%S", time.localtime(t)) if t is not None else "-"


def format_stats(stats: dict) -> str:
    lines = [f"{q:<9} {n:>8}" for q, n in stats.get("queues", {}).items()]
    lines.append(f"counted at {time.strftime('%Y-%m-%d %H:%M:%S %z', time.localtime(stats.get('time', 0)))}")
    return "\n".join(lines)


def format_list_header() -> str:
    return "-Queue ID-------- --Size-- ----Arrival Time---- -Sender/Recipient-------"


def format_message(m: dict) -> str:
    """One message as postqueue -p shows it (queue id marked * active, ! held, # corrupt)."""
    qid = m["queue_id"] + _MARK.get(m["queue_name"], " ")
    sender = m.get("sender")
    who = "(corrupt: " + sanitize(m.get("error") or "", 100) + ")" if sender is None else (sanitize(sender) or "MAILER-DAEMON")
    lines = [f"{qid:<18} {m.get('message_size', 0):>8} {_when(m.get('arrival_time')):<20} {who}"]
    pad = " " * 49
    for r in m.get("recipients", []):
        if r.get("delay_reason"):
            lines.append(f"{pad}({sanitize(r['delay_reason'], 300)})")
        lines.append(f"{pad}{sanitize(r['address'])}")
    if m.get("next_attempt"):
        lines.append(f"{pad}next attempt: {_when(m['next_attempt'])}")
    return "\n".join(lines)


def format_show(m: dict) -> str:
    env = m.get("envelope") or {}
    lines = [
        f"queue id:      {m['queue_id']}",
        f"queue:         {m['queue_name']}",
        f"arrival:       {_when(m.get('arrival_time'))}",
        f"size:          {m.get('message_size')}",
    ]
    if m.get("error"):
        lines.append(f"error:         {sanitize(m['error'])}")
        return "\n".join(lines)
    c = env.get("client") or {}
    lines += [
        f"sender:        <{sanitize(env.get('sender', ''))}>",
        f"client:        {sanitize(c.get('name') or 'unknown')}[{c.get('ip')}] helo={sanitize(c.get('helo') or '')} "
        f"protocol={c.get('protocol')}" + (f" login={sanitize(c['login'])}" if c.get("login") else ""),
        f"next attempt:  {_when(m.get('next_attempt')) if m.get('next_attempt') else '-'}",
    ]
    if env.get("extra"):
        lines.append("extra:         " + ", ".join(f"{k}={sanitize(str(v))}" for k, v in env["extra"].items()))
    lines.append("recipients:")
    for r in m.get("recipients", []):
        reply = f"  last reply: {sanitize(r['last_reply'], 300)}" if r.get("last_reply") else ""
        lines.append(f"  <{sanitize(r['address'])}> {r.get('state')} attempts={r.get('attempts', 0)}{reply}")
    if m.get("trail"):
        lines.append("decision trail:")
        for t in m["trail"]:
            score = f" score={t['score']}" if t.get("score") is not None else ""
            ms = f" {t['ms']}ms" if t.get("ms") is not None else ""
            lines.append(f"  {sanitize(str(t.get('filter')))}: {sanitize(str(t.get('result')))}{score}{ms} "
                         f"{sanitize(str(t.get('detail') or ''), 300)}".rstrip())  # fmt: skip
    lines.append("headers:")
    for h in m.get("headers", []):
        fold = min(8, len(h) - len(h.lstrip(" \t")))  # a folded line's indent shown as one, not as "\t"
        lines.append(f"  {h[:fold].expandtabs(8)}{sanitize(h[fold:], 998)}")
    return "\n".join(lines)


def format_action(result: dict) -> str:
    """postsuper's report: how many, and with --dry-run which."""
    action, n = result.get("action", "?"), result.get("count", 0)
    lines = []
    for qid in result.get("missing", []):
        lines.append(f"{action}: {qid}: no such message in the queues it acts on")
    if result.get("dry_run"):
        lines.append(f"{action} (dry run): would act on {n} message(s)")
        lines += result.get("ids", [])
    else:
        lines.append(f"{action}: {n} message(s)")
        if result.get("pending"):
            lines.append(f"  {len(result['pending'])} being delivered now: done when the attempt ends")
        if result.get("bounced"):
            lines.append(f"  {len(result['bounced'])} non-delivery notification(s) queued")
    return "\n".join(lines)


def format_shape(shape: dict) -> str:
    """qshape's table: one row per domain, T = total, then the age buckets in minutes."""
    heads = ["T", *shape.get("buckets", [])]
    rows = [("TOTAL", shape["total"]["total"], shape["total"]["counts"])] if "total" in shape else []
    rows += [(sanitize(d["domain"]), d["total"], d["counts"]) for d in shape.get("domains", [])]
    name_w = max([5, *(len(r[0]) for r in rows)])
    widths = [max(len(h), *(len(str(r[1] if i == 0 else r[2][i - 1])) for r in rows)) for i, h in enumerate(heads)]
    out = [" " * name_w + " " + " ".join(h.rjust(w) for h, w in zip(heads, widths, strict=True))]
    for name, total, counts in rows:
        out.append(name.rjust(name_w) + " " + " ".join(str(v).rjust(w) for v, w in zip([total, *counts], widths, strict=True)))
    return "\n".join(out)

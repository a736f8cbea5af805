"""The queue manager: moves messages through the queue and decides their fate.

DESCRIPTION
    One per node. It takes messages from incoming/ (woken by the workers' commits, at most
    once per `queue.wakeup_delay` per worker: see QueueStore.announce) and,
    when they are due, from deferred/ (alternating, so retries are not starved by new
    mail), renames each into active/ and delivers it, at most `MAX_ACTIVE` at a time and at
    most `queue.destination_concurrency` per destination. Then, per recipient:

      sent      removed from the envelope
      deferred  kept; next attempt = backoff.next_attempt (the deferred file's mtime)
      bounced   a DSN to the sender (never for a null sender), removed from the envelope
      expired   a deferred recipient past queue.max_lifetime: bounced with the last reason

    A message with no recipient left is removed (envelope first, then body). A crash in the
    middle leaves the message in active/, which the next start moves back to incoming/:
    delivery is at least once (but a hold or delete an administrator asked for during that
    attempt, recorded in control/, is done instead: see control()). So does the queue manager's own start (a queue manager process
    that died is started again by the supervisor, with no recovery: active/ is only ever the
    queue manager's). DSNs are committed before the original is updated, so a crash may
    duplicate a DSN but never lose one.

    Routes: domains.local -> local delivery (maildir or LMTP); everything else -> outbound.relay_host
    (then outbound.fallback_relay_host within the same attempt for what the first deferred).
    With no relay host, each recipient domain's MX records are used (delivery/mx.py).
    Local domains go to maildirs, or over LMTP (delivery/lmtp.py) to a mailbox server such
    as Dovecot, at most `advanced.threads.lmtp` sessions at a time.

    Reload: the config is read again at every attempt (routes, relay hosts, queue times). The
    resolver and the SMTP client (its HELO name, TLS level, relay login and connection cache)
    are built from their config slices, and built again only when a reload changed the slice
    (`_refresh`); an attempt takes the current ones at its start and finishes on them, and a
    replaced one is closed once its last attempt is done (`_Shared`).

SECURITY
    Does not talk to clients. Reads only queue files it validates (store.load).

CONFIG
    queue.* (queue.wakeup_delay: the workers' side), domains.local, domains.local_delivery, outbound.relay_host,
    outbound.fallback_relay_host, outbound.helo_name, outbound.tls, outbound.relay_auth.*, outbound.smtp_port,
    outbound.mx_address_limit, outbound.mx_session_limit,
    server.hostname, server.dns.*, server.limits.hop_count, advanced.threads.lmtp
"""

from __future__ import annotations

import asyncio
import ipaddress
import logging
import os
import random
import re
import socket
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any, Generic, NamedTuple, TypeVar

from .. import policy
from ..address import AddressError, parse_mailbox
from ..admin import metrics
from ..config import Config, resolve_path
from ..delivery import lmtp, maildir
from ..delivery.content import Content
from ..delivery.mx import NextHop, parse_nexthop, plan_mx
from ..delivery.smtp import Outcome, SmtpClient
from ..delivery.wire import DsnRequest
from ..dns import NotFound, Resolver, TempFail
from ..logutil import sanitize
from ..model import ClientInfo, Envelope, Fate, RcptState, Recipient
from . import backoff
from .dsn import MAX_ORIGINAL, RecipientStatus, build_dsn, notify_wants
from .ops import FLUSH_TOKEN, SCAN_TOKEN, apply
from .store import CONTROL_ACTIONS, CorruptEnvelope, QueueStore, is_queue_id

log = logging.getLogger("qmgr")

MAX_ACTIVE = 200  # messages in active/ at once (Postfix qmgr_message_active_limit is 20000)
CONTROL_BATCH = 256  # messages an administrator's action moves between two turns of the event loop
SCAN_INTERVAL = 60.0  # at most this long between looks at deferred/ (Postfix queue_run_delay)
INCOMING_SCAN = 1.0  # a full listing of incoming/ at least this often (a lost wake-up costs at most this)
RESCAN = "*"  # a wake-up that asks for a full listing (the sender lost some of its earlier ones)
CONNECT_FAILED = "4.4.1"  # the status of an outcome whose connection was never made (delivery/smtp.py)
_RECEIVED = re.compile(rb"(?im)^received:")
LOCAL_CLIENT = ClientInfo(ip="127.0.0.1", port=0, name="localhost", helo="localhost", protocol="local", trusted=True)


T = TypeVar("T")


class _Shared(Generic[T]):
    """An object the attempts share (the resolver, the SMTP client) and the config slice it was
    built from. When a reload replaces it, it is `retire`d: attempts that took it finish on it,
    and it is closed when the last one `release`s it."""

    def __init__(self, obj: T, key: object, close: Callable[[T], None]) -> None:
        self.obj = obj
        self.key = key
        self.users = 0
        self.retired = False
        self._close = close

    def take(self) -> T:
        self.users += 1
        return self.obj

    def release(self) -> None:
        self.users -= 1
        if self.retired and self.users == 0:
            self._close(self.obj)

    def retire(self) -> None:
        self.retired = True
        if self.users == 0:
            self._close(self.obj)


class _Tools(NamedTuple):
    """What one attempt's remote deliveries use, from the config current at its start."""

    resolver: Resolver
    smtp: SmtpClient


def _dns_slice(cfg: Config) -> object:
    return (tuple(str(ep) for ep in cfg.server.dns.nameservers), cfg.server.dns.timeout)


def _client_slice(cfg: Config) -> object:
    """Everything SmtpClient is built from but its cache size. The password file is read here:
    a changed password with an unchanged path is a change too (the value is never logged)."""
    out = cfg.outbound
    password = _read_secret(cfg, out.relay_auth.password_file)
    return (out.helo_name or cfg.server.hostname, out.tls, out.relay_auth.username, password, cfg.advanced.tls_log_level,
            out.relay_auth.allow_plaintext)  # fmt: skip


def wakeup_path(queue_root: Path) -> Path:
    return queue_root / "qmgr.sock"


MAX_IDS_PER_WAKEUP = 256  # more commits than this in one wake-up: ask for a full listing instead


def notify(queue_root: Path) -> Callable[[list[str]], None]:
    """For worker processes: a commit callback that pokes the manager over a datagram socket.

    One datagram carries the ids committed since the last one, separated by spaces."""
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.setblocking(False)
    path = str(wakeup_path(queue_root))

    missed = False

    def poke(queue_ids: list[str]) -> None:
        # The socket queue is short (net.unix.max_dgram_qlen, 10 by default): a wake-up that
        # does not fit is lost, so the next one asks for a full listing instead.
        nonlocal missed
        lots = missed or len(queue_ids) > MAX_IDS_PER_WAKEUP
        try:
            sock.sendto(RESCAN.encode() if lots else " ".join(queue_ids).encode(), path)
            missed = False
        except OSError:
            missed = True  # the manager also lists incoming/ every INCOMING_SCAN

    return poke


class _Wake(asyncio.DatagramProtocol):
    def __init__(self, announce: Callable[[list[str]], None]) -> None:
        self.announce = announce

    def datagram_received(self, data: bytes, addr: object) -> None:
        ids = data.decode("ascii", "replace").split(" ")
        self.announce([q for q in ids if is_queue_id(q) or q in (RESCAN, FLUSH_TOKEN, SCAN_TOKEN)])


class QueueManager:
    def __init__(self, cfg: Callable[[], Config], store: QueueStore, *, clock: Callable[[], float] = time.time) -> None:
        self._cfg = cfg
        self.store = store
        self._clock = clock
        self.wake = asyncio.Event()
        self._active: set[str] = set()
        self._announced: list[str] = []  # committed since the last look, in order (wake-ups carry the ids)
        self._next_incoming_scan = 0.0
        self._tasks: set[asyncio.Task[None]] = set()
        self._slots = asyncio.Semaphore(MAX_ACTIVE)
        self._dest: dict[str, asyncio.Semaphore] = {}
        self._next_deferred_scan = 0.0
        self._flush = False
        self._chain: Any = None  # filters/chain.FilterChain for requeued messages, built when first needed
        # An administrator's action on a message being delivered: (action, what runs first: delete --bounce).
        self._pending: dict[str, tuple[str, Callable[[str], Awaitable[Any]] | None]] = {}
        self._marked: set[str] = set()  # pending ids with a control/<id> marker on disk (control)
        self._reserved: set[str] = set()  # ids an administrator's action works on now: not taken meanwhile
        self._stopped_short = False  # the last feed left work for when a slot frees up
        self._seen: Config | None = None  # the config the shared objects were last checked against
        self._resolver: _Shared[Resolver] | None = None
        self._client: _Shared[SmtpClient] | None = None
        self._refresh(cfg())

    @property
    def resolver(self) -> Resolver:
        assert self._resolver is not None
        return self._resolver.obj

    @property
    def smtp(self) -> SmtpClient:
        assert self._client is not None
        return self._client.obj

    def _refresh(self, cfg: Config) -> None:
        """Build the resolver and the SMTP client again if their config slice changed since the
        config last seen; keep them (and the client's connection cache) otherwise."""
        if cfg is self._seen:
            return
        first = self._seen is None
        self._seen = cfg
        key = _dns_slice(cfg)
        if self._resolver is None or self._resolver.key != key:
            dns = cfg.server.dns
            new_resolver = _Shared(Resolver([str(ep) for ep in dns.nameservers], dns.timeout), key, Resolver.close)
            if self._resolver is not None:
                self._resolver.retire()
            self._resolver = new_resolver
            if not first:
                log.info("reload: server.dns changed: new resolver for the next attempts")
        key = _client_slice(cfg)
        if self._client is None or self._client.key != key:
            helo, tls, username, password, tls_log_level, plaintext = key  # type: ignore[misc]
            client = SmtpClient(helo_name=helo, tls=tls, username=username, password=password,
                                max_idle_per_host=cfg.queue.destination_concurrency, tls_log_level=tls_log_level,
                                allow_plaintext_auth=plaintext)  # fmt: skip
            if self._client is not None:
                self._client.retire()
            self._client = _Shared(client, key, SmtpClient.close_idle)
            if not first:
                log.info("reload: outbound SMTP settings changed: new SMTP client (EHLO %s, tls %s) for the next attempts",
                         sanitize(helo), tls)  # fmt: skip
        else:
            self._client.obj.max_idle = cfg.queue.destination_concurrency  # only caps the idle cache

    def announce(self, queue_ids: list[str]) -> None:
        """Workers committed these to incoming/ (the store's on_commit, or a datagram)."""
        for qid in queue_ids:
            if qid == RESCAN:
                self._next_incoming_scan = 0.0
            elif qid == FLUSH_TOKEN:  # queue/ops.py in a process without the manager
                self._flush = True
            elif qid == SCAN_TOKEN:
                self._next_deferred_scan = 0.0
            else:
                self._announced.append(qid)
        if queue_ids:
            self.wake.set()

    def flush(self) -> None:
        """postqueue -f: retry all deferred mail now."""
        self._flush = True
        self.wake.set()

    async def control(
        self, action: str, queue_ids: list[str], *, before: Callable[[str], Awaitable[Any]] | None = None
    ) -> tuple[list[str], list[str], dict[str, str]]:
        """An administrator's hold, release, requeue or delete (queue/ops.py), in step with the
        deliveries: a message not being delivered is moved now (the manager does not take it
        meanwhile: it is reserved); one being delivered gets the action when its attempt ends
        (a hold then leaves it in hold/, a delete removes it; no file is touched under a
        running attempt). `before(qid)` runs first for each message (delete --bounce queues
        the notification: at the end of an attempt it names the recipients left). The loop
        turns every CONTROL_BATCH messages. Returns (done now, done when the attempt ends,
        {queue id: error} of the messages an error left where they were).

        A hold or delete left for the end of an attempt is also recorded as control/<id>
        (store.py), so that a crash meanwhile does not deliver the message: the next start
        holds or removes it. delete --bounce is not recorded (in memory only): its notification
        is queued by `before` when the attempt ends, and a start has no such step; after a
        crash the message is delivered as any interrupted attempt's is. Requeue and release
        need no record (a start puts the message back in incoming/, as a requeue does)."""
        done, later, errors = [], [], {}
        free = []
        marks: dict[str, str] = {}
        for qid in dict.fromkeys(queue_ids):
            if qid in self._active:
                self._pending[qid] = (action, before)  # the last request wins
                later.append(qid)
                if action in CONTROL_ACTIONS and before is None:
                    marks[qid] = action
                elif qid in self._marked:  # an earlier hold or delete is replaced: its record goes
                    self._marked.discard(qid)
                    self.store.remove_control(qid)
            elif qid not in self._reserved:
                free.append(qid)
        if marks:
            # Here, with no await since the ids were found active: _after_attempt cannot run in
            # between and leave a marker behind (fsyncs in the loop, as _finish's rewrite does;
            # at most MAX_ACTIVE messages are under delivery).
            failed = self.store.write_controls(marks)
            self._marked.update(qid for qid in marks if qid not in failed)
            for qid, why in failed.items():
                log.error("%s: %s when the delivery attempt ends: cannot record it in control/: %s; a crash before then "
                          "forgets it", qid, action, why)  # fmt: skip
        self._reserved.update(free)
        try:
            for i, qid in enumerate(free):
                if i and i % CONTROL_BATCH == 0:
                    await asyncio.sleep(0)
                try:
                    if before is not None:
                        await before(qid)
                    if apply(self.store, action, qid, now=self._clock()) is not None:
                        done.append(qid)
                except OSError as exc:
                    errors[qid] = exc.strerror or str(exc)
                    log.error("%s: %s failed: %s", qid, action, errors[qid])
        finally:
            self._reserved.difference_update(free)
        if action == "requeue" and done:
            self.announce(done)
        elif action == "release" and done:
            self._next_deferred_scan = 0.0
            self.wake.set()
        return done, later, errors

    async def _after_attempt(self, qid: str) -> None:
        """The action asked for while the message was being delivered (control), now that its
        attempt is over: the message is in deferred/, or still in active/ after an error, or gone."""
        pending = self._pending.pop(qid, None)
        if pending is None:
            return
        action, before = pending
        try:
            if before is not None:
                await before(qid)
            if apply(self.store, action, qid, now=self._clock()) is not None and action == "requeue":
                self.announce([qid])
        except Exception as exc:  # noqa: BLE001 - an OSError, a damaged file: logged, the message stays
            log.error("%s: %s after the delivery attempt failed: %s", qid, action, exc)
        finally:
            if qid in self._marked:  # after the action: a crash in between finds it done (the start drops the marker)
                self._marked.discard(qid)
                self.store.remove_control(qid)

    def _reclaim_active(self) -> int:
        """What a queue manager before this one left in active/ goes back to incoming/ (at least
        once, as the server's recovery at start). Only the queue manager moves files out of active/:
        one killed mid-delivery and started again by the supervisor (not a restart of the server,
        whose recovery does this) would otherwise strand its messages there until the next start.
        A hold or delete asked during the interrupted attempt (control/<id>) is done instead."""
        return self.store.reclaim_active()["active_requeued"]

    async def run(self, stop: asyncio.Event, *, listen: bool = True) -> None:
        loop = asyncio.get_running_loop()
        transport = None
        if listen:
            path = wakeup_path(self.store.root)
            try:
                path.unlink()
            except FileNotFoundError:
                pass
            sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
            sock.bind(str(path))
            os.chmod(path, 0o600)
            transport, _ = await loop.create_datagram_endpoint(lambda: _Wake(self.announce), sock=sock)
        reclaimed = self._reclaim_active()
        log.info("queue manager started" + (f": {reclaimed} message(s) from active/ back to incoming/" if reclaimed else ""))

        async def stop_wakes_us() -> None:
            await stop.wait()
            self.wake.set()

        stopper = loop.create_task(stop_wakes_us())
        try:
            while not stop.is_set():
                self.wake.clear()
                await self._feed()
                if self.wake.is_set():
                    continue
                # One Event and one timer per sleep (this runs about twice per message).
                try:
                    async with asyncio.timeout(self._sleep_time()):
                        await self.wake.wait()
                except TimeoutError:
                    pass
        finally:
            stopper.cancel()
            if transport is not None:
                transport.close()
            for t in list(self._tasks):
                t.cancel()
            await asyncio.gather(*self._tasks, return_exceptions=True)
            self.smtp.close_idle()
            self.resolver.close()
            log.info("queue manager stopped")

    def _sleep_time(self) -> float:
        now = self._clock()
        return max(0.05, min(SCAN_INTERVAL, self._next_deferred_scan - now, self._next_incoming_scan - now))

    async def _feed(self) -> None:
        """Schedule what is ready: incoming/ and due deferred/, alternating."""
        self._refresh(self._cfg())  # a reload is applied within INCOMING_SCAN, mail or not
        now = self._clock()
        self._stopped_short = False
        if now >= self._next_incoming_scan:
            # At start, every INCOMING_SCAN, and after a feed stopped short: the directory is
            # the truth (wake-ups can be lost: a full socket buffer, a restart in between).
            self._announced.clear()
            incoming = [q for q in self.store.list("incoming") if q not in self._active]
            self._next_incoming_scan = now + INCOMING_SCAN
        else:
            incoming = list(dict.fromkeys(q for q in self._announced if q not in self._active))
            self._announced.clear()
        deferred: list[str] = []
        if now >= self._next_deferred_scan or self._flush:
            next_due = now + SCAN_INTERVAL
            max_backoff = self._cfg().queue.max_backoff
            for q in self.store.list("deferred"):
                try:
                    due = self.store.due("deferred", q)
                    if (clamped := backoff.clamp_due(due, now=now, max_backoff=max_backoff)) != due:
                        # The clock was stepped back since this was written: retry within max_backoff.
                        log.warning("%s: next attempt %.0f s ahead, more than queue.max_backoff: moved to %.0f s ahead",
                                    q, due - now, clamped - now)  # fmt: skip
                        self.store.set_due("deferred", q, clamped)
                        due = clamped
                except FileNotFoundError:
                    continue
                if due <= now or self._flush:
                    deferred.append(q)
                else:
                    next_due = min(next_due, due)
            self._next_deferred_scan = next_due
            self._flush = False
        order = []
        for i in range(max(len(incoming), len(deferred))):
            order += [("incoming", q) for q in incoming[i : i + 1]] + [("deferred", q) for q in deferred[i : i + 1]]
        for n, (state, qid) in enumerate(order):
            if qid in self._reserved:
                continue  # an administrator's action moves it now
            if self._slots.locked():
                self._next_incoming_scan = 0.0  # what was not taken now is found by a full scan
                if any(st == "deferred" for st, _ in order[n:]):
                    self._next_deferred_scan = 0.0  # due (or flushed) deferred mail too: their mtime says due
                self._stopped_short = True
                return  # a finished delivery frees a slot and wakes us
            await self._slots.acquire()
            try:
                self.store.move(qid, state, "active")
            except FileNotFoundError:
                self._slots.release()  # deleted or moved by an admin meanwhile
                continue
            except OSError as exc:  # a stray entry (active/<id> is a directory, say): never stops the loop
                self._slots.release()
                log.warning('%s: cannot move from queue "%s" to queue "active": %s', qid, state, exc.strerror or exc)
                self.store.set_aside(state, qid)
                continue
            self._active.add(qid)
            task = asyncio.get_running_loop().create_task(self._process(qid))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

    async def _process(self, qid: str) -> None:
        try:
            try:
                env, body = self.store.open_content("active", qid)  # reads only the envelope, at the end
            except CorruptEnvelope:  # NotOurs too: moved to corrupt/ and logged
                return
            except FileNotFoundError:
                return
            try:
                # requeue (queue/ops.py) and mail from `mtaserver sendmail` (pickup): the content
                # filters run here, as the end of DATA runs them for SMTP
                if (env.extra.get("requeue") or env.extra.get("pickup")) and await self._refilter(env, await asyncio.to_thread(body.read_all)):
                    return
                await self._attempt(env, body)
            finally:
                body.close()
        except Exception:
            log.exception("%s: delivery attempt failed; the message stays in active/ until restart", qid)
        finally:
            try:
                if qid in self._pending:  # still ours (in _active) until the administrator's action is done
                    await self._after_attempt(qid)
            finally:
                self._active.discard(qid)
                self._slots.release()
                if self._stopped_short:
                    self.wake.set()  # otherwise nothing waits for this slot: no need to turn the main loop

    # -- requeue: the content filters again ---------------------------------------------

    async def _refilter(self, env: Envelope, body: bytes) -> bool:
        """A requeued message (queue/ops.py) or one from the sendmail pickup through the content
        filters before its delivery (filters/refilter.py says what each verdict does). The log
        lines say which of the two ("requeue:", "pickup:"). True: nothing more to do now."""
        from ..filters.chain import FilterChain
        from ..filters.refilter import ADDED, refilter
        from ..model import TEMPFAIL_INTERNAL, Decision, Verdict

        cfg = self._cfg()
        qid = env.queue_id
        what = "requeue" if env.extra.get("requeue") else "pickup"  # a requeued pickup is a requeue
        if what == "pickup":  # Postfix pickup's line: no smtpd logged a from= for this message
            log.info("%s: uid=%s from=<%s>", qid, sanitize(str(env.extra.get("uid", "?"))), sanitize(env.sender))
        try:
            if self._chain is None or self._chain.cfg is not cfg:
                self._chain = FilterChain(cfg, self._chain)
            verdict, msg = await refilter(cfg, self._chain, self.store, env, body)
        except Exception as exc:  # a bug, an unusable dkim.sign key: retried later, still flagged, never stranded in active/
            log.exception("%s: %s: the content filters failed", qid, what)
            verdict, msg = Verdict(Decision.TEMPFAIL, TEMPFAIL_INTERNAL, f"internal error: {type(exc).__name__}"), None
        d = verdict.decision
        if d is Decision.TEMPFAIL:  # retried later, still flagged
            reason = verdict.reply.line() if verdict.reply else verdict.reason
            log.info("%s: %s: content filters failed for now: %s", qid, what, sanitize(reason, 300))
            o = Outcome(Fate.DEFERRED, verdict.reply.status if verdict.reply else "4.7.1", reason, None, False)
            await self._finish(cfg, env, {r.address: o for r in env.recipients}, body)
            return True
        assert msg is not None
        env.extra.pop("requeue", None)
        env.extra.pop("pickup", None)
        for key in ADDED:
            env.extra.pop(key, None)
        env.extra.update(msg.extra)
        env.trail = msg.trail
        if d in (Decision.REJECT, Decision.DISCARD):
            if d is Decision.REJECT and verdict.reply is not None:
                o = Outcome(Fate.BOUNCED, verdict.reply.status, verdict.reply.line(), None, False)
                log.info("%s: %s: refused by the content filters: %s", qid, what, sanitize(verdict.reply.line(), 300))
                await self._finish(cfg, env, {r.address: o for r in env.recipients}, body)
            else:
                log.info("%s: %s: discarded by the content filters: %s", qid, what, sanitize(verdict.reason, 300))
                self.store.remove("active", qid)
            return True
        # Queued again, rewritten: the new file first (incoming/ or hold/), then the old one out.
        # A crash in between leaves the old one in active/, which recovery puts back, flagged.
        spool = self.store.new_spool(qid)
        spool.write(msg.content)
        hold = d is Decision.HOLD
        await self.store.commit(spool, env, announce=False, hold=hold)
        self.store.remove("active", qid)
        trail = ", ".join(f"{t['filter']}={t['result']}" for t in msg.trail) or "no filter"
        log.info("%s: %s (%s)%s", qid, "requeue: filtered again" if what == "requeue" else "pickup: filtered", trail,
                 ", held" if hold else "")  # fmt: skip
        if not hold:
            self.announce([qid])
        return True

    # -- one delivery attempt --------------------------------------------------------------

    async def _attempt(self, env: Envelope, body: Content) -> None:
        cfg = self._cfg()
        self._refresh(cfg)
        env.recipients = unique_recipients(env.recipients)
        pending = [r.address for r in env.recipients]
        results: dict[str, Outcome] = {}
        # The SMTP server's limit (Postfix hopcount_limit), for mail that did not pass its check
        # at the end of DATA (sendmail, a requeue, a limit lowered since): ours included, it is a loop.
        if len(_RECEIVED.findall(body.head())) >= cfg.server.limits.hop_count:
            o = Outcome(Fate.BOUNCED, "5.4.6", "mail forwarding loop: too many hops", None, False)
            results = {r: o for r in pending}
        else:
            local = [r for r in pending if _is_local(r, cfg)]
            remote = [r for r in pending if r not in set(local)]
            if remote:
                assert self._resolver is not None and self._client is not None
                shared = (self._resolver, self._client)
                tools = _Tools(self._resolver.take(), self._client.take())
            try:
                if local and remote:
                    for part in await asyncio.gather(self._deliver_local(cfg, env, local, body),
                                                     self._deliver_remote(cfg, tools, env, remote, body)):  # fmt: skip
                        results.update(part)
                elif local:  # one kind only (the usual case): no task of its own
                    results = await self._deliver_local(cfg, env, local, body)
                else:
                    results = await self._deliver_remote(cfg, tools, env, remote, body)
            finally:
                if remote:
                    for s in shared:
                        s.release()
        await self._finish(cfg, env, results, body)

    async def _deliver_local(self, cfg: Config, env: Envelope, rcpts: list[str], body: Content) -> dict[str, Outcome]:
        ld = cfg.domains.local_delivery
        if ld.type == "lmtp":
            assert ld.address is not None  # config validation guarantees it
            n = cfg.advanced.threads.lmtp
            sem = self._dest.get(f"lmtp/{n}") or self._dest.setdefault(f"lmtp/{n}", asyncio.Semaphore(n))
            async with sem:
                return await lmtp.deliver(ld.address, sender=env.sender, recipients=rcpts, body=body, lhlo_name=cfg.server.hostname,
                                          smtputf8=env.smtputf8, eightbit=env.body_type == "8BITMIME")  # fmt: skip
        root = cfg.data_path / ld.path  # an absolute path stays as it is
        out = {}
        for r in rcpts:
            try:
                await asyncio.to_thread(maildir.deliver, root, r, body, env.sender)  # Return-Path: <sender>
                out[r] = Outcome(Fate.SENT, "2.0.0", "delivered to maildir", "maildir", False)
            except OSError as exc:
                out[r] = Outcome(Fate.DEFERRED, "4.3.0", f"maildir delivery failed: {exc.strerror or exc}", "maildir", False)
        return out

    async def _deliver_remote(self, cfg: Config, tools: _Tools, env: Envelope, rcpts: list[str], body: Content) -> dict[str, Outcome]:
        """relay_host (or each recipient domain's MX), then the fallback relay for what was deferred."""
        out = cfg.outbound
        port = out.smtp_port
        groups: dict[NextHop, list[str]] = {}
        if out.relay_host:
            groups[parse_nexthop(out.relay_host, port)] = rcpts
        else:
            for r in rcpts:
                groups.setdefault(NextHop(r.rpartition("@")[2].lower().rstrip("."), port, mx=True), []).append(r)
        results: dict[str, Outcome] = {}
        if len(groups) == 1:  # a relay host, or one domain: no task of its own
            [(hop, group)] = groups.items()
            results.update(await self._deliver_to(cfg, tools, hop, group, env, body))
        else:
            for part in await asyncio.gather(*(self._deliver_to(cfg, tools, hop, group, env, body) for hop, group in groups.items())):
                results.update(part)
        todo = [r for r in rcpts if results[r].fate is Fate.DEFERRED]
        if todo and out.fallback_relay_host:
            first = results[todo[0]]
            log.info("%s: relay=%s, status=deferred (%s); %d recipient(s) go to the fallback relay %s",
                     env.queue_id, first.remote or "none", sanitize(first.text, 300), len(todo), out.fallback_relay_host)  # fmt: skip
            # The fallback gets what was deferred, never what was refused (5xx).
            results.update(await self._deliver_to(cfg, tools, parse_nexthop(out.fallback_relay_host, port), todo, env, body))
        return results

    async def _deliver_to(self, cfg: Config, tools: _Tools, hop: NextHop, rcpts: list[str], env: Envelope, body: Content) -> dict[str, Outcome]:
        """Try the hop's hosts (MX order) and each host's addresses until one takes the mail:
        at most outbound.mx_address_limit addresses (a host whose lookup fails takes one of
        those places) and outbound.mx_session_limit sessions (connections that were made)
        per attempt, as Postfix's smtp_mx_address_limit and smtp_mx_session_limit."""
        if hop.mx:
            try:
                answer: list | NotFound | TempFail = await tools.resolver.query(hop.host, "MX")
            except (NotFound, TempFail) as exc:
                answer = exc
            hosts = plan_mx(hop.host, answer)
            if isinstance(hosts, Outcome):
                return {r: hosts for r in rcpts}
        else:
            hosts = [hop.host]
        last: dict[str, Outcome] | None = None
        places, sessions = cfg.outbound.mx_address_limit, cfg.outbound.mx_session_limit
        for i, host in enumerate(hosts):
            if places <= 0 or sessions <= 0:
                log.info("%s: %s: %d more host(s) not tried in this attempt (outbound.mx_%s_limit)", env.queue_id,
                         sanitize(hop.host), len(hosts) - i, "address" if places <= 0 else "session")  # fmt: skip
                break
            addrs = await self._addresses(tools.resolver, host)
            if isinstance(addrs, Outcome):
                places -= 1
                last = last or {r: addrs for r in rcpts}
                continue
            addrs, places = addrs[:places], places - len(addrs[:places])
            for ip in addrs:
                if sessions <= 0:
                    break
                n = cfg.queue.destination_concurrency
                dest = f"{host.lower()}/{n}"  # a reload that changes n starts new semaphores
                sem = self._dest.get(dest) or self._dest.setdefault(dest, asyncio.Semaphore(n))
                async with sem:
                    part = await tools.smtp.send(ip, hop.port, env.sender, rcpts, body, name=host,
                                                smtputf8=env.smtputf8, eightbit=env.body_type == "8BITMIME", dsn=_dsn_request(env))  # fmt: skip
                if not all(o.fate is Fate.DEFERRED for o in part.values()):
                    return part  # this host answered for the domain: its word is final for now
                if any(o.status != CONNECT_FAILED for o in part.values()):
                    sessions -= 1  # a session was made (a connection that failed is none)
                last = part
        return last or {r: Outcome(Fate.DEFERRED, "4.4.3", f"no usable address for {hop.host}", None, False) for r in rcpts}

    async def _addresses(self, resolver: Resolver, host: str) -> list[str] | Outcome:
        try:
            ipaddress.ip_address(host)
            return [host]
        except ValueError:
            pass
        found: list[str] = []
        temp: TempFail | None = None
        for qtype in ("A", "AAAA"):
            try:
                found += [r.data for r in await resolver.query(host, qtype)]
            except TempFail as exc:
                temp = exc
            except NotFound:
                pass
        if found:
            return found
        if temp is not None:
            return Outcome(Fate.DEFERRED, "4.4.3", f"Host or domain name not found. Name service error for name={host} type=A: {temp}", None, False)
        return Outcome(Fate.DEFERRED, "4.4.3", f"Host or domain name not found. Name service error for name={host} type=A: Host not found", None, False)

    async def _finish(self, cfg: Config, env: Envelope, results: dict[str, Outcome], body: bytes | Content) -> None:
        now = self._clock()
        qid = env.queue_id
        delay = now - env.arrival
        q = cfg.queue
        bounced: list[RecipientStatus] = []
        delivered: list[RecipientStatus] = []  # NOTIFY=SUCCESS (RFC 3461)
        keep = []
        is_expired = backoff.expired(
            arrival=env.arrival, now=now, null_sender=not env.sender, max_lifetime=q.max_lifetime, bounce_lifetime=q.bounce_lifetime
        )
        for r in env.recipients:
            o = results.get(r.address)
            if o is None:
                keep.append(r)
                continue
            relay = o.remote or "none"
            log.info("%s: to=<%s>, relay=%s, delay=%.2f, dsn=%s, status=%s (%s)", qid, sanitize(r.address), relay, delay, o.status, o.fate.value, sanitize(o.text, 300))
            metrics.delivery("expired" if is_expired and o.fate is Fate.DEFERRED else o.fate.value, delay)
            if o.fate is Fate.SENT:
                if r.notify and not o.dsn_passed and notify_wants(r.notify, Fate.SENT):
                    # "relayed": the next hop takes no DSN responsibility (RFC 3464 2.3.3)
                    delivered.append(RecipientStatus(address=r.address, status=o.status, diagnostic=o.text,
                                                     remote_mta=_remote_mta(o.remote), smtp_diagnostic=o.smtp_reply, orcpt=r.orcpt,
                                                     action="delivered" if _is_local(r.address, cfg) else "relayed"))  # fmt: skip
                continue
            if o.fate is Fate.BOUNCED or is_expired:
                # An expired recipient is reported with its last temporary status, as Postfix does.
                remote_mta = _remote_mta(o.remote)
                if notify_wants(r.notify, Fate.BOUNCED):  # NOTIFY=NEVER, or without FAILURE: no bounce (RFC 3461)
                    bounced.append(RecipientStatus(address=r.address, status=o.status, diagnostic=o.text,
                                                   remote_mta=remote_mta, smtp_diagnostic=o.smtp_reply, orcpt=r.orcpt))  # fmt: skip
                continue
            r.state = RcptState.DEFERRED
            r.attempts += 1
            r.last_reply = o.text
            keep.append(r)
        if is_expired and bounced:
            log.info("%s: from=<%s>, status=expired, returned to sender", qid, sanitize(env.sender))
            metrics.queue_event("expired")
        if bounced and env.sender:
            await self._notify(cfg, env, bounced, body, Fate.BOUNCED, now)
        if delivered and env.sender:
            await self._notify(cfg, env, delivered, body, Fate.SENT, now)
        if not keep:
            # In the loop, as the moves and reads are: a hand-off to a thread cost more CPU
            # than the unlink itself (bench/RESULTS.md, step 9).
            try:
                self.store.remove("active", qid)
            except OSError as exc:
                log.error("%s: cannot remove the delivered message: %s", qid, exc)
                return
            log.info("%s: removed", qid)
            metrics.queue_event("removed")
            return
        env.recipients = keep
        if env.sender and not env.extra.get("delay_warned") and backoff.delay_warning_due(
            arrival=env.arrival, now=now, delay_warning=q.delay_warning, already_warned=False
        ):
            warn = [RecipientStatus(address=r.address, status="4.0.0", diagnostic=r.last_reply or "deferred", smtp_diagnostic=False,
                                    orcpt=r.orcpt) for r in keep if notify_wants(r.notify, Fate.DEFERRED)]  # fmt: skip
            if warn:
                await self._notify(cfg, env, warn, body, Fate.DEFERRED, now)
            env.extra["delay_warned"] = "1"
        due = backoff.next_attempt(arrival=env.arrival, now=now, min_backoff=q.min_backoff, max_backoff=q.max_backoff, jitter=random.random())
        self.store.rewrite("active", env)
        self.store.set_due("active", qid, due)
        self.store.move(qid, "active", "deferred")
        metrics.queue_event("deferred")
        self._next_deferred_scan = min(self._next_deferred_scan, due)
        self.wake.set()  # the main loop sleeps until the next due time, which may now be earlier

    async def _notify(self, cfg: Config, env: Envelope, rcpts: list[RecipientStatus], body: bytes | Content, kind: Fate, now: float) -> None:
        q = cfg.queue
        content = Content.of(body)
        # else only the header section is read (RET=HDRS: the sender asked for no more)
        whole = kind is Fate.BOUNCED and len(content) <= MAX_ORIGINAL and env.ret != "HDRS"
        original = await asyncio.to_thread(content.read_all) if whole else content.head()
        dsn = build_dsn(
            kind=kind, hostname=cfg.server.hostname, queue_id=env.queue_id, sender=env.sender, arrival=env.arrival,
            recipients=rcpts, original=original, now=now, delay_hours=q.delay_warning / 3600, lifetime_days=q.max_lifetime / 86400,
            ret_hdrs=env.ret == "HDRS", envid=env.envid,
            max_original=MAX_ORIGINAL if whole else -1,
        )  # fmt: skip
        new = await self.store.inject(sender="", recipients=[env.sender], body=dsn, client=LOCAL_CLIENT)
        what = {Fate.BOUNCED: "sender non-delivery notification", Fate.DEFERRED: "sender delay notification"}.get(
            kind, "sender delivery status notification"
        )
        log.info("%s: %s: %s", env.queue_id, what, new)
        metrics.dsn({Fate.BOUNCED: "bounce", Fate.DEFERRED: "delay"}.get(kind, "success"))
        log.info("%s: from=<>, size=%d, nrcpt=1 (queue active)", new, len(dsn))


def unique_recipients(recipients: list[Recipient]) -> list[Recipient]:
    """Each recipient once: the same address twice, or differing only in the case of its
    domain, is delivered once (the first spelling is kept, and its status stands for both)."""
    seen: set[str] = set()
    out = []
    for r in recipients:
        local, at, domain = r.address.rpartition("@")
        key = f"{local}{at}{domain.lower().rstrip('.')}" if at else r.address
        if key not in seen:
            seen.add(key)
            out.append(r)
    return out


def _remote_mta(remote: str | None) -> str | None:
    """The DSN's Remote-MTA host: `mx.example[192.0.2.1]:25` -> mx.example; `lmtp:[::1]:24` -> ::1."""
    if not remote or remote == "maildir" or remote.startswith("lmtp:unix:"):
        return None
    text = remote.removeprefix("lmtp:")
    if "[" in text and not text.startswith("["):
        return text.split("[", 1)[0]
    if text.startswith("["):
        return text[1:].split("]", 1)[0]
    return text.rsplit(":", 1)[0] if ":" in text else text


def _dsn_request(env: Envelope) -> DsnRequest | None:
    """The sender's DSN parameters to pass on (RFC 3461 6.1), None when it gave none."""
    rcpts = {r.address: (r.notify, r.orcpt) for r in env.recipients if r.notify or r.orcpt}
    if not (rcpts or env.ret or env.envid):
        return None
    return DsnRequest(env.ret, env.envid, rcpts)


def _is_local(address: str, cfg: Config) -> bool:
    try:
        return policy.is_local(parse_mailbox(address, utf8=not address.isascii()), cfg.domains.local)
    except AddressError:
        return False


def _read_secret(cfg: Config, path: str | None) -> str | None:
    if not path:
        return None
    try:
        return resolve_path(cfg.source, path).read_text().strip()
    except OSError as exc:
        log.error("cannot read outbound.relay_auth.password_file: %s", exc)
        return None

"""The SMTP server session's asyncio shell: transport, timers, DATA streaming, STARTTLS, commit.

DESCRIPTION
    `Session` is an `asyncio.Protocol` around the sans-IO `Engine` (smtp/engine.py). Bytes
    from the transport go into the engine (`data_received`); one task per connection
    (`_serve`) takes the engine's events and acts on them: runs the stage hooks of the
    pipeline (pipeline.py) for HELO, MAIL, RCPT, DATA-END and after the commit, checks AUTH
    credentials, does the STARTTLS handshake, streams DATA (or the BDAT chunks, RFC 3030)
    into the spool, commits it durably and only then answers "250 2.0.0 Ok: queued as <id>".

    `SmtpServer` owns what the sessions of one listener in one worker share: the runtime
    (config and pipeline in force; a reload swaps them, a session keeps the ones it started
    with), the queue store, the per-IP connection counts, the live sessions.

    Replies are batched while pipelined commands are waiting (RFC 2920): the output is
    written when the engine needs more input and no complete command line is pending, or
    when 64 replies are waiting.

    Timers: one loop timer behind a deadline. Arming sets the deadline; the timer is
    rescheduled only when it would fire too late, and when it fires early (the deadline
    moved on) it re-arms itself. A busy session creates about one timer, not one per read.

SECURITY
    Talks to untrusted clients: see smtp/engine.py for the bounds on input. Reading stops
    while the engine holds INPUT_LIMIT unread bytes (flow control); DATA is bounded by the
    scanner's limits and streamed to the spool. Client text reaches the log only through
    `sanitize`. Plaintext pipelined after STARTTLS is discarded (CVE-2011-0411).

STANDARDS
    RFC 5321, RFC 3207 (STARTTLS), RFC 4954 (AUTH), RFC 2920 (PIPELINING), RFC 3030 (CHUNKING),
    RFC 3461 (the DSN parameters go into the queue envelope).

CONFIG
    server.hostname, server.banner, server.limits.*, server.tls, server.listeners[],
    outbound.mynetworks, inbound.bare_newline*, advanced.max_message_size,
    advanced.log_client_port, queue.min_free, auth.*
"""

from __future__ import annotations

import asyncio
import email.utils
import logging
import ssl
import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, Any

from .. import model as R
from ..admin import metrics
from ..datastream import BareNewline, DataDeadline, DataProblem, DataScanner
from ..logutil import sanitize, sanitize_ascii
from ..model import ClientInfo, Decision, Envelope, Recipient, Reply, Verdict
from ..pipeline import Context, SessionView, Stage, TxView, run_stage
from ..queue.store import QueueStore, QueueWriteError, Spool
from ..values import in_networks
from . import engine as E

if TYPE_CHECKING:
    from ..config import Config, Listener
    from ..runtime import Runtime

log = logging.getLogger("smtpd")

DATA_BUFFER = 1 << 18  # bytes of DATA held before the spool takes them; past it, reading pauses

_date_cache: tuple[int, str] = (0, "")


def header_date() -> str:
    """Now as an RFC 5322 date in local time; made once a second (it is in every Received:)."""
    global _date_cache
    now = int(time.time())
    if _date_cache[0] != now:
        _date_cache = (now, email.utils.formatdate(now, localtime=True))
    return _date_cache[1]


class SmtpServer:
    """What the sessions of one listener in one worker process share."""

    def __init__(self, runtime: Runtime, listener: Listener, store: QueueStore) -> None:
        self.runtime = runtime
        self.listener = listener
        self.store = store
        self.sessions: set[Session] = set()
        self.per_ip: dict[str, int] = {}
        self.shutting_down = False

    def protocol(self) -> Session:
        return Session(self)

    def shutdown(self) -> None:
        """Stop sessions: idle ones get 421 now, busy ones after the command they are in."""
        self.shutting_down = True
        for s in list(self.sessions):
            s.shutdown()


@dataclass(slots=True)
class Message:
    """The spooled message, for DATA_END hooks."""

    queue_id: str
    spool: Spool
    store: QueueStore
    header_offset: int  # where the client's content starts (after our Received:)
    header_limit: int  # server.limits.header_size: how much of the header section an edit sees
    trail: list[dict[str, Any]] = field(default_factory=list)  # the content filters' decision trail
    extra: dict[str, str] = field(default_factory=dict)  # for Envelope.extra (what the chain added)

    @property
    def size(self) -> int:
        return self.spool.size

    def chunks(self) -> Any:
        return self.store.content_chunks(self.spool)

    async def whole(self) -> bytes:
        return await self.store.content(self.spool)

    def snapshot(self) -> tuple[list[bytes] | None, str | None]:
        """(chunks, None) for content in memory, (None, path) for a spool on disk (for a thread)."""
        return self.spool.snapshot()

    async def edit_head(self, edit: Callable[[bytes], bytes]) -> None:
        """Rewrite the header section (our Received: included) by `edit(head) -> head`."""
        await self.store.edit_head(self.spool, edit, self.header_offset + self.header_limit)


@dataclass(slots=True)
class _Chunked:
    """A message arriving in BDAT chunks: kept between the chunks' commands."""

    tx: E.Transaction
    qid: str
    spool: Spool
    received: int  # the length of our Received: header (where the client's content starts)
    scanner: DataScanner


class Session(asyncio.Protocol):
    """One SMTP connection. Runs `_serve()` as its task; everything else is called from it."""

    def __init__(self, server: SmtpServer) -> None:
        self.loop = asyncio.get_running_loop()
        self.server = server
        self.rt = rt = server.runtime  # the session keeps the runtime it started with, whatever a reload does
        self.cfg: Config = rt.config
        self.pipeline = rt.pipelines[server.listener]
        self.limits = self.cfg.server.limits
        self.hostname = self.cfg.server.hostname
        lst = server.listener
        self.engine = E.Engine(rt.engine_settings(lst))
        self.transport: asyncio.Transport | None = None
        self._timer: asyncio.TimerHandle | None = None
        self._deadline: float | None = None  # loop time; None: no timeout armed
        self._task: asyncio.Task[None] | None = None
        self._waiter: asyncio.Future[None] | None = None  # set by data_received/eof/lost
        self._drain: asyncio.Future[None] | None = None
        self._paused = False  # the transport asked us to stop writing
        self._reading_paused = False
        self._eof = False
        self._lost = False
        self._data: list[bytes] | None = None  # DATA streaming: chunks bypass the engine
        self._data_bytes = 0
        self._idle = False  # waiting for a command: shutdown may interrupt
        self._closing = False
        self._shutdown = False
        self.peer_ip = ""
        self.peer_port = 0
        self.client_name = "unknown"
        self.mynetworks = False
        self.ctx: Context | None = None
        self._view: SessionView | None = None
        self._hold: tuple[object, str] | None = None  # (transaction, reason): a MAIL/RCPT hook said HOLD
        self._chunked: _Chunked | None = None  # BDAT: the message between its chunks
        self.sasl_method = ""  # the AUTH mechanism that logged in (metrics: postfix's sasl_method)

    # -- transport life cycle ----------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        peer = transport.get_extra_info("peername") or ("?", 0)
        self.peer_ip, self.peer_port = str(peer[0]), int(peer[1])
        # TCP_NODELAY: uvloop (and asyncio) set it on every TCP transport already.
        self.server.sessions.add(self)
        self.server.store.receiving += 1
        self._listener = self.server.listener  # the one counted in (a reload may swap the server's)
        metrics.connected(self._listener, transport)
        self._task = self.loop.create_task(self._serve())

    def data_received(self, data: bytes) -> None:
        if self._data is not None:
            self._data.append(data)
            self._data_bytes += len(data)
            if self._data_bytes > DATA_BUFFER and not self._reading_paused and self.transport is not None:
                self._reading_paused = True
                self.transport.pause_reading()
        else:
            self.engine.feed(data)
            if self.engine.input_full and not self._reading_paused and self.transport is not None:
                self._reading_paused = True
                self.transport.pause_reading()
        self._wake()

    def eof_received(self) -> bool:
        # Keep our side open: a client that half-closes after a pipelined QUIT still gets
        # its replies; the session ends when it has handled the last buffered command.
        self._eof = True
        self._wake()
        return True

    def connection_lost(self, exc: Exception | None) -> None:
        self._lost = self._eof = True
        self._stop_timer()
        self.transport = None
        self._wake()
        if self._drain is not None and not self._drain.done():
            self._drain.set_result(None)

    def pause_writing(self) -> None:
        self._paused = True

    def resume_writing(self) -> None:
        self._paused = False
        if self._drain is not None and not self._drain.done():
            self._drain.set_result(None)

    def _wake(self) -> None:
        w = self._waiter
        if w is not None and not w.done():
            w.set_result(None)

    async def _wait_input(self) -> None:
        """Until data_received, EOF or loss (the caller arms the timeout)."""
        self._waiter = self.loop.create_future()
        try:
            await self._waiter
        finally:
            self._waiter = None

    # -- the narrow interface hooks get (pipeline.Connection) ---------------------------------

    @property
    def sessions(self) -> int:
        return len(self.server.sessions)

    @property
    def sockname(self) -> tuple[str, int]:
        sock = self.transport.get_extra_info("sockname") if self.transport is not None else None
        return (str(sock[0]), int(sock[1])) if sock else ("?", 0)

    def teaser(self, text: str) -> None:
        if self.transport is not None:
            self.transport.write(text.encode("utf-8", "replace") + b"\r\n")

    def peek(self, n: int) -> bytes:
        return self.engine.peek(n)

    def pending_input(self) -> int:
        return self.engine.pending_input

    async def wait_input(self) -> bool:
        """Until the client sent something (True) or closed (False); no timeout of its own."""
        while not self.engine.pending_input:
            if self._eof:
                return False
            await self._wait_input()
        return True

    def watch(self, active: bool, hide_pipelining: bool) -> None:
        self.engine.watch = active
        self.engine.hide_pipelining = hide_pipelining

    def close(self, reply: Reply | None) -> None:
        """Write what is pending and `reply`, then close."""
        out = self.engine.take_output()
        if reply is not None:
            out += reply.encode()
        if self.transport is not None and not self.transport.is_closing() and out:
            self.transport.write(out)
        self._close()

    # -- output ------------------------------------------------------------------------------

    async def _flush(self) -> None:
        data = self.engine.take_output()
        t = self.transport
        if not data or t is None or t.is_closing():
            return
        t.write(data)
        if self._paused:  # the client does not read what we send: wait for it, within the timeout
            self._arm(self.limits.command_timeout)
            try:
                while self._paused and self.transport is not None:
                    self._drain = self.loop.create_future()
                    await self._drain
            finally:
                self._drain = None
                self._disarm()

    def _close(self) -> None:
        self._closing = True
        t = self.transport
        if t is not None and not t.is_closing():
            t.close()
            self.loop.call_later(5.0, t.abort)  # a client that never reads must not pin us

    def _with_name(self, reply: Reply) -> Reply:
        """421 replies carry the server's name first (Postfix)."""
        return Reply(reply.code, reply.status, f"{self.hostname} {reply.text}")

    # -- timers ------------------------------------------------------------------------------

    def _arm(self, seconds: float) -> None:
        deadline = self._deadline = self.loop.time() + seconds
        timer = self._timer
        if timer is None or timer.when() > deadline:
            if timer is not None:
                timer.cancel()
            self._timer = self.loop.call_at(deadline, self._tick)

    def _disarm(self) -> None:
        self._deadline = None  # the timer, when it fires, finds nothing to do

    def _stop_timer(self) -> None:
        self._deadline = None
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    def _tick(self) -> None:
        self._timer = None
        deadline = self._deadline
        if deadline is None:
            return
        if self.loop.time() < deadline:
            self._timer = self.loop.call_at(deadline, self._tick)
            return
        self._deadline = None
        self._on_timeout()

    def _on_timeout(self) -> None:
        log.info("timeout after %s from %s", self.engine.last_command, self._label())
        self.close(Reply(421, "4.4.2", f"{self.hostname} Error: timeout exceeded"))
        self._wake()
        if self._drain is not None and not self._drain.done():
            self._drain.set_result(None)

    def shutdown(self) -> None:
        self._shutdown = True
        if self._idle:
            self.close(Reply(421, "4.3.2", f"{self.hostname} Service shutting down, closing transmission channel"))
            self._wake()

    # -- views for the hooks -----------------------------------------------------------------

    def _label(self) -> str:
        if self.cfg.advanced.log_client_port:
            return f"{self.client_name}[{self.peer_ip}]:{self.peer_port}"
        return f"{self.client_name}[{self.peer_ip}]"

    def session_view(self) -> SessionView:
        e = self.engine
        v = self._view
        if v is None or v.helo != e.helo or v.esmtp != e.esmtp or v.tls != e.tls or v.login != e.login or v.name != self.client_name:
            v = self._view = SessionView(
                listener=self.server.listener.name, ip=self.peer_ip, port=self.peer_port, name=self.client_name,
                helo=e.helo, esmtp=e.esmtp, tls=e.tls, login=e.login, mynetworks=self.mynetworks,
                log_port=self.cfg.advanced.log_client_port,
            )  # fmt: skip
        return v

    def _context(self) -> Context:
        ctx = self.ctx
        assert ctx is not None
        ctx.session = self.session_view()
        tx = self.engine.tx
        ctx.tx = None if tx is None else TxView(tx.sender, tx.params, tx.recipients)
        ctx.rcpt = None
        ctx.message = None
        return ctx

    # -- the session -------------------------------------------------------------------------

    async def _serve(self) -> None:
        srv = self.server
        ip = self.peer_ip
        srv.per_ip[ip] = srv.per_ip.get(ip, 0) + 1
        self.mynetworks = in_networks(ip, self.cfg.outbound.mynetworks)
        self.ctx = Context(session=self.session_view(), conn=self)
        try:
            limit = self.limits.connections_per_ip
            too_many = bool(limit) and srv.per_ip[ip] > limit and not self.mynetworks
            connect_hooks = self.pipeline.has(Stage.CONNECT)
            # The client waits for the greeting, not for our bookkeeping: on a plain
            # connection the 220 goes out first, and the log line happens while the client
            # answers it (bench/RESULTS.md, step 11). A refusal or a CONNECT hook
            # (postscreen) logs the connection first, so its own lines follow it.
            greet_first = not connect_hooks and not too_many and not srv.shutting_down
            if not greet_first:
                log.info("connect from %s", self._label())
            if too_many:
                log.warning("NOQUEUE: reject: CONNECT from %s: too many connections", self._label())
                metrics.rejected("connect", 421, "too many connections")
                self.close(Reply(421, "4.7.0", f"{self.hostname} Error: too many connections from {ip}"))
                return
            if srv.shutting_down:
                self.close(Reply(421, "4.3.2", f"{self.hostname} Service shutting down"))
                return
            if connect_hooks:
                verdict = await run_stage(self.pipeline, Stage.CONNECT, self.ctx)
                if self._closing or self._lost:
                    return
                if verdict.decision is Decision.DISCARD:
                    return  # the hook dealt with the connection (postscreen drop, hangup)
                if verdict.reply is not None:
                    metrics.rejected("connect", verdict.reply.code, verdict.reason)
                    self.close(verdict.reply)
                    return
            if self.mynetworks and self.cfg.inbound.bare_newline_exclude_mynetworks and self.engine.bare_newline is BareNewline.REJECT:
                self.engine.bare_newline = BareNewline.NORMALIZE
            self.engine.greeting(self.cfg.server.banner.format(hostname=self.hostname))
            await self._flush()
            if greet_first:
                log.info("connect from %s", self._label())
            if self.engine.tls and self.transport is not None:  # tls: implicit: the handshake came first
                self._log_tls(self.transport.get_extra_info("ssl_object"))
            self.rt.session_started(self)
            await self._loop()
            await self._flush()
        except ConnectionError:
            self.engine.count_lost()  # lost inside a command (Postfix: starttls=0/1)
        except Exception:  # a bug must cost one session, never the worker
            log.exception("session error after %s from %s", self.engine.last_command, self._label())
            self.close(Reply(421, "4.3.0", f"{self.hostname} Error: internal error"))
        finally:
            self._stop_timer()
            self._drop_chunked()
            if self.ctx.state:  # only hooks that kept something for this session have an end to run
                for hook in self.pipeline.hooks:
                    try:
                        hook.end(self.ctx)
                    except Exception:
                        log.exception("%s hook end failed", hook.name)
            srv.per_ip[ip] -= 1
            if not srv.per_ip[ip]:
                del srv.per_ip[ip]
            srv.sessions.discard(self)
            srv.store.receiving -= 1
            metrics.disconnected(self._listener)
            if not self._closing:
                self._close()
            log.info("disconnect from %s%s", self._label(), self.engine.stats())

    async def _loop(self) -> None:
        e = self.engine
        while True:
            ev = e.next_event()
            if ev is None:
                if e.closed or self._closing:
                    return
                if self._shutdown:
                    self.close(Reply(421, "4.3.2", f"{self.hostname} Service shutting down, closing transmission channel"))
                    return
                pending_line = e.has_pending_line()
                if e.output_pending >= E.OUTPUT_BATCH or not pending_line:
                    await self._flush()  # batched while pipelined commands wait, never more than a batch
                if self._closing:
                    return
                if self._reading_paused and not e.input_full and self.transport is not None:
                    self._reading_paused = False
                    self.transport.resume_reading()
                if pending_line or e.has_pending_line():
                    continue  # commands are waiting (the engine paused for output, or input came during the flush)
                if self._eof:
                    if e.pending_input:
                        log.info("lost connection after %s from %s", e.last_command, self._label())
                    return
                self._idle = True
                self._arm(self.limits.command_timeout)
                try:
                    await self._wait_input()
                finally:
                    self._idle = False
                    self._disarm()
                continue
            match ev:
                case E.Rcpt():
                    await self._rcpt(ev)
                case E.Mail():
                    await self._mail(ev)
                case E.Helo():
                    ctx = self._context()
                    e.resolve(await run_stage(self.pipeline, Stage.HELO, ctx) if self.pipeline.has(Stage.HELO) else R.CONTINUE)
                case E.Data():
                    await self._data_phase()
                case E.Bdat():
                    await self._bdat(ev)
                case E.Quit():
                    await self._flush()
                    self._close()
                    return
                case E.Close():
                    log.warning("%s from %s%s", ev.what, self._label(), f": {ev.detail}" if ev.detail else "")
                    self.close(None)
                    return
                case E.Pause():
                    await self._flush()
                    await asyncio.sleep(ev.seconds)
                case E.Log():
                    (log.warning if ev.warning else log.info)("%s from %s%s", ev.what, self._label(), f": {ev.detail}" if ev.detail else "")
                case E.StartTls():
                    await self._starttls()
                case E.AuthLogin():
                    await self._auth(ev)
                case E.AuthRefused():
                    self.rt.auth_failures.failed(self.peer_ip, time.monotonic())
                    metrics.auth(ev.mechanism, "failure")
                    log.warning("%s: SASL %s authentication failed: %s", self._label(), ev.mechanism, ev.why)
                case E.Observe():
                    e.observed(self.rt.observe(self, ev))
            if self._shutdown and not self._closing and not e.closed:
                self.close(Reply(421, "4.3.2", f"{self.hostname} Service shutting down, closing transmission channel"))
                return

    async def _mail(self, ev: E.Mail) -> None:
        reply = self._check_space(ev.params)
        if reply is None and self.pipeline.has(Stage.MAIL):
            ctx = self._context()
            ctx.tx = TxView(ev.sender, ev.params)
            verdict = await run_stage(self.pipeline, Stage.MAIL, ctx)
        else:
            verdict = R.CONTINUE if reply is None else Verdict.reject(reply)
        if verdict.reply is not None and verdict.reply.is_error:
            metrics.rejected("mail", verdict.reply.code, verdict.reason if reply is None else "no_space")
            log.info(
                "NOQUEUE: reject: MAIL from %s: %s; from=<%s> proto=%s helo=<%s>",
                self._label(), sanitize(verdict.reply.line()), sanitize(str(ev.sender)), self.engine.proto, sanitize(self.engine.helo or ""),
            )  # fmt: skip
        self.engine.resolve(verdict)
        if verdict.decision is Decision.HOLD:
            self._hold = (self.engine.tx, verdict.reason or "MAIL hook")

    def _check_space(self, params: dict[str, str | None]) -> Reply | None:
        declared = int(params.get("SIZE") or 0)
        need = self.cfg.queue.min_free + declared + declared // 2
        if need:
            try:
                if self.server.store.free_bytes() < need:
                    return R.NO_SPACE
            except OSError:
                return R.NO_SPACE
        return None

    async def _rcpt(self, ev: E.Rcpt) -> None:
        ctx = self._context()
        ctx.rcpt = ev.recipient
        verdict = await run_stage(self.pipeline, Stage.RCPT, ctx)
        if verdict.reply is not None and verdict.reply.is_error:
            metrics.rejected("rcpt", verdict.reply.code, verdict.reason)
        self.engine.resolve(verdict)
        if verdict.decision is Decision.HOLD:
            self._hold = (self.engine.tx, verdict.reason or "RCPT hook")

    # -- DATA --------------------------------------------------------------------------------

    async def _data_phase(self) -> None:
        e = self.engine
        tx = e.tx
        assert tx is not None
        store = self.server.store
        qid = store.new_id()
        spool = store.new_spool(qid)  # in memory; a file only once it is large (then errors show at commit)
        handed = False  # to _end_of_message, which discards it when it is not committed
        try:
            e.data_started()
            self._collect_input()
            await self._flush()  # the header is made while the client starts sending
            received = self._received_header(qid, tx)
            spool.write(received)
            scanner = await self._receive(spool, e.data_scanner())
            if scanner is None:  # connection lost or timed out: nothing was acknowledged
                e.data_lost()
                raise ConnectionResetError("connection lost in DATA")
            handed = True
            await self._end_of_message(qid, tx, spool, len(received), scanner)
        finally:
            self._data = None
            if not handed:
                store.discard(spool)

    async def _bdat(self, ev: E.Bdat) -> None:
        """One BDAT chunk (RFC 3030): its bytes go to the transaction's spool, started by the
        first chunk; the LAST one ends the message as the end of DATA does (the same hooks,
        the same commit, 250 only after it)."""
        e = self.engine
        tx = e.tx
        assert tx is not None
        store = self.server.store
        msg = self._chunked
        if ev.first or msg is None or msg.tx is not tx:
            self._drop_chunked()
            qid = store.new_id()
            spool = store.new_spool(qid)
            received = self._received_header(qid, tx)
            spool.write(received)
            msg = self._chunked = _Chunked(tx, qid, spool, len(received), e.data_scanner())
        if not await self._receive_chunk(msg, ev.size, ev.last):
            log.info("lost connection after BDAT (%d bytes) from %s", msg.scanner.size, self._label())
            e.data_lost()
            self._drop_chunked()
            raise ConnectionResetError("connection lost in BDAT")
        if not ev.last:
            e.bdat_done(Reply(250, "2.0.0", f"Ok: {ev.size} bytes"))
            return
        self._chunked = None
        await self._end_of_message(msg.qid, tx, msg.spool, msg.received, msg.scanner)

    def _drop_chunked(self) -> None:
        """A BDAT message that will not be finished (RSET, a new transaction, the session's end)."""
        msg, self._chunked = self._chunked, None
        if msg is not None:
            self.server.store.discard(msg.spool)

    async def _receive_chunk(self, msg: _Chunked, size: int, last: bool) -> bool:
        """Exactly `size` bytes of input into the message (what follows them is given back to
        the engine: pipelined commands). False: the connection was lost or timed out."""
        e = self.engine
        self._collect_input()
        deadline = DataDeadline(self.loop.time(), self.limits.data_timeout, self.limits.min_data_rate)
        need = size
        try:
            while need:
                chunk = await self._next_input(deadline)
                if chunk is None:
                    return False
                if len(chunk) > need:
                    e.unread(chunk[need:])  # the next commands
                    chunk = chunk[:need]
                need -= len(chunk)
                content = msg.scanner.feed_bdat(chunk, False)
                if content:
                    msg.spool.write(content)
        finally:
            if self._data:  # not taken (BDAT 0 LAST): the commands pipelined behind it go back
                e.unread(b"".join(self._data))
            self._data = None
            self._data_bytes = 0
            if self._reading_paused and not e.input_full and self.transport is not None:
                self._reading_paused = False
                self.transport.resume_reading()
        if last:
            content = msg.scanner.feed_bdat(b"", True)
            if content:
                msg.spool.write(content)
        return True

    async def _end_of_message(self, qid: str, tx: E.Transaction, spool: Spool, received: int, scanner: DataScanner) -> bool:
        """The end of DATA or BDAT LAST: content problems, the DATA_END hooks, the commit and its
        250. True when the message was committed; the spool is discarded here when it was not."""
        committed: list[bool] = []  # set as soon as the queue has it: a lost client changes nothing then
        try:
            await self._commit_message(qid, tx, spool, received, scanner, committed)
        finally:
            if not committed:
                self.server.store.discard(spool)
        return bool(committed)

    async def _commit_message(
        self, qid: str, tx: E.Transaction, spool: Spool, received: int, scanner: DataScanner, committed: list[bool]
    ) -> None:
        e = self.engine
        store = self.server.store
        if scanner.problems:
            problem = scanner.problems[0]
            log.warning("%s: reject: DATA from %s: %s", qid, self._label(), problem.value)
            metrics.rejected("data", E.DATA_REPLIES[problem].code, "data_format")  # 552: too big
            # Postfix: a bare newline gets its reply, then the connection closes
            e.data_done(E.DATA_REPLIES[problem], close=problem in (DataProblem.BARE_LF, DataProblem.BARE_CR))
            return
        if scanner.normalized and e.bare_newline is BareNewline.NOTE:
            log.info("%s: bare newline normalized in message from %s", qid, self._label())
        verdict = R.CONTINUE
        ctx = None
        if self.pipeline.has(Stage.DATA_END):
            ctx = self._context()
            ctx.message = Message(qid, spool, store, received, self.limits.header_size)
            verdict = await run_stage(self.pipeline, Stage.DATA_END, ctx)
            if not await self._apply_content_verdict(qid, tx, spool, received, verdict):
                return
        env = Envelope(
            queue_id=qid,
            sender=str(tx.sender),
            recipients=[Recipient(address=str(r), notify=d[0], orcpt=d[1]) for r, d in zip(tx.recipients, tx.dsn, strict=True)],
            arrival=time.time(),
            client=ClientInfo(
                ip=self.peer_ip, port=self.peer_port, name=self.client_name, helo=e.helo,
                protocol=self._protocol_name(tx), login=e.login, trusted=self.mynetworks or e.login is not None,
            ),  # fmt: skip
            body_type=(tx.params.get("BODY") or "").upper() or None,
            smtputf8="SMTPUTF8" in tx.params,
            ret=(tx.params.get("RET") or "").upper() or None,
            envid=E.dsn_text(envid) if (envid := tx.params.get("ENVID")) else None,
            trail=ctx.message.trail if ctx is not None else [],
            extra=ctx.message.extra if ctx is not None else {},
        )
        # HOLD from any hook of this transaction: queued in hold/, delivered once released
        held = verdict.reason or "DATA-END hook" if verdict.decision is Decision.HOLD else None
        if held is None and self._hold is not None and self._hold[0] is tx:
            held = self._hold[1]
        self._hold = None
        hold = held is not None
        try:
            if not store.commit_inline(spool, env, hold=hold):
                # Shielded: if this task is cancelled (a worker stopping), the commit in the
                # thread still completes; the client then gets no 250 and may send it again
                # (at-least-once), but never a half-written queue file.
                await asyncio.shield(store.commit(spool, env, announce=False, hold=hold))
        except QueueWriteError as exc:
            log.error("%s: queue file write error: %s", qid, exc)
            metrics.rejected("data", exc.reply.code, "queue_error")
            e.data_done(exc.reply)
            return
        committed.append(True)
        metrics.accepted(self.sasl_method if e.login else "")
        e.data_done(Reply(250, "2.0.0", f"Ok: queued as {qid}"))
        try:
            await self._flush()  # the client waits for this; the wake-up and the log can wait
        finally:
            if hold:
                log.info("%s: hold: %s from %s", qid, held, self._label())
            else:
                store.announce(qid)
            log.info("%s: client=%s%s", qid, self._label(), f", sasl_username={sanitize(e.login)}" if e.login else "")
            log.info("%s: from=<%s>, size=%d, nrcpt=%d (queue active)", qid, sanitize(env.sender), env.size, len(env.recipients))
        if self.pipeline.has(Stage.AFTER_COMMIT):
            ctx = self._context()
            ctx.message = env
            await run_stage(self.pipeline, Stage.AFTER_COMMIT, ctx)

    async def _apply_content_verdict(self, qid: str, tx: E.Transaction, spool: Spool, offset: int, verdict: Verdict) -> bool:
        """The DATA_END verdict: False when the message is not to be queued (replied already)."""
        from ..filters.chain import rewrite_message

        if verdict.decision in (Decision.CONTINUE, Decision.ACCEPT, Decision.HOLD):
            if verdict.reason:
                log.info("%s: filter: %s", qid, verdict.reason)
            if verdict.headers or verdict.subject_tag:
                headers, tag = verdict.headers, verdict.subject_tag
                await self.server.store.edit_head(
                    spool, lambda head: rewrite_message(head, offset, headers, tag), offset + self.limits.header_size
                )
            return True
        where = f"END-OF-MESSAGE from {self._label()}"
        envelope = (
            f"from=<{sanitize(str(tx.sender))}> to=<{sanitize(str(tx.recipients[0]))}> "
            f"proto={self.engine.proto} helo=<{sanitize(self.engine.helo or '')}>"
        )
        if verdict.decision is Decision.DISCARD:
            log.info("%s: filter-discard: %s: %s; %s", qid, where, verdict.reason, envelope)
            self.engine.data_done(Reply(250, "2.0.0", f"Ok: queued as {qid}"))  # as Postfix DISCARD: the client is not told
        else:
            assert verdict.reply is not None
            log.info("%s: filter-reject: %s: %s (%s); %s", qid, where, verdict.reply.line(), verdict.reason, envelope)
            metrics.rejected("data", verdict.reply.code, verdict.reason)
            self.engine.data_done(verdict.reply)
        return False

    async def _receive(self, spool: Spool, scanner: DataScanner) -> DataScanner | None:
        # server.limits.min_data_rate: a slow sender's reads buy it less time than they take
        deadline = DataDeadline(self.loop.time(), self.limits.data_timeout, self.limits.min_data_rate)
        while True:
            chunk = await self._next_input(deadline)
            if chunk is None:
                log.info("lost connection after DATA (%d bytes) from %s", scanner.size, self._label())
                return None
            result = scanner.feed(chunk)
            if result.content:
                spool.write(result.content)
            if result.done:
                self._data = None
                self._data_bytes = 0
                self.engine.unread(result.leftover)  # pipelined commands after the dot
                return scanner

    def _collect_input(self) -> None:
        """From here on data_received hands the message bytes to `_next_input`, beginning with
        what the engine holds already (pipelined behind DATA's 354 or the BDAT command)."""
        rest = self.engine.take_input()
        self._data = [rest] if rest else []
        self._data_bytes = len(rest)

    async def _next_input(self, deadline: DataDeadline) -> bytes | None:
        """The message bytes (DATA or BDAT) that arrived since the last call, in one piece: one
        scan of many small reads (busy workers get them in pieces), at most DATA_BUFFER and a
        read; reading resumes if a full buffer paused it. None: the connection was lost, or the
        deadline passed (the timer closed it)."""
        chunks = self._data
        assert chunks is not None
        loop = self.loop
        while not chunks:
            if self._eof or self._closing:
                return None
            self._arm(deadline.at - loop.time())
            try:
                await self._wait_input()
            finally:
                self._disarm()
        chunk = chunks.pop() if len(chunks) == 1 else b"".join(chunks)
        chunks.clear()
        self._data_bytes = 0
        deadline.progress(len(chunk), loop.time())
        if self._reading_paused and self.transport is not None:
            self._reading_paused = False  # paused by DATA_BUFFER or a full engine buffer: taken now
            self.transport.resume_reading()
        return chunk

    def _protocol_name(self, tx: E.Transaction) -> str:
        e = self.engine
        if not e.esmtp:
            return "SMTP"
        base = "UTF8SMTP" if "SMTPUTF8" in tx.params else "ESMTP"
        return base + ("S" if e.tls else "") + ("A" if e.login else "")

    def _received_header(self, qid: str, tx: E.Transaction) -> bytes:
        clean = sanitize if "SMTPUTF8" in tx.params else sanitize_ascii  # UTF-8 as UTF-8 where RFC 6532 allows it
        helo = clean(self.engine.helo or "", 100).replace("(", "?").replace(")", "?")
        lines = [f"Received: from {helo} ({self.client_name} [{self.peer_ip}])"]
        if self.engine.tls and self.transport is not None:
            ssl_obj = self.transport.get_extra_info("ssl_object")
            if ssl_obj is not None:
                lines.append(f"\t(using {ssl_obj.version()} with cipher {ssl_obj.cipher()[0]})")
        lines.append(f"\tby {self.hostname} (mtaserver) with {self._protocol_name(tx)} id {qid}")
        date = header_date()
        if len(tx.recipients) == 1:
            lines.append(f"\tfor <{clean(str(tx.recipients[0]), 300)}>; {date}")
        else:
            lines[-1] += ";"
            lines.append(f"\t{date}")
        return ("\r\n".join(lines) + "\r\n").encode("utf-8")

    # -- STARTTLS and AUTH -------------------------------------------------------------------

    async def _starttls(self) -> None:
        ctx = self.rt.tls_context
        await self._flush()
        if ctx is None or self.transport is None:
            raise ConnectionResetError("no TLS context")
        n = self.engine.discard_input()
        if n:
            # CVE-2011-0411: plaintext pipelined after STARTTLS must not run inside TLS. Checked
            # after the 220 is out, with no await between here and the handshake.
            log.warning("discarding %d bytes of plaintext pipelined after STARTTLS from %s", n, self._label())
        timeout = self.limits.command_timeout
        try:
            async with asyncio.timeout(timeout):  # the loop's own handshake timeout is a backstop
                new = await self.loop.start_tls(self.transport, self, ctx, server_side=True, ssl_handshake_timeout=timeout + 5)
        except TimeoutError:
            log.info("timeout after STARTTLS from %s", self._label())
            self._close()
            raise ConnectionResetError("timeout in the TLS handshake") from None
        except (ssl.SSLError, OSError, ConnectionError) as exc:
            log.info("SSL_accept error from %s: %s", self._label(), sanitize(str(exc) or type(exc).__name__, 200))
            self._close()
            raise ConnectionResetError("TLS handshake failed") from None
        if new is None or self._closing:
            raise ConnectionResetError("TLS handshake did not complete")
        self.transport = new  # type: ignore[assignment]
        self._eof = False
        self.engine.tls_started()
        ssl_obj = new.get_extra_info("ssl_object")
        metrics.tls_established(self._listener.name, ssl_obj)
        self._log_tls(ssl_obj)

    def _log_tls(self, ssl_obj: ssl.SSLObject | None) -> None:
        """advanced.tls_log_level (Postfix smtpd_tls_loglevel): 0 nothing; 1 one summary line per
        handshake; 2 and more also whether the session was resumed and its compression
        (3 and 4, Postfix's hex dumps of the negotiation, log as 2: OpenSSL's debug callback is
        not reachable from Python's ssl module)."""
        level = self.cfg.advanced.tls_log_level
        if level < 1:
            return
        version = ssl_obj.version() if ssl_obj else "?"
        cipher = ssl_obj.cipher() if ssl_obj else None
        log.info("TLS connection established from %s: %s with cipher %s (%s/%s bits)", self._label(), version,
                 cipher[0] if cipher else "?", cipher[2] if cipher else "?", cipher[2] if cipher else "?")  # fmt: skip
        if level >= 2 and ssl_obj is not None:
            log.info("%s: TLS session %s, compression %s", self._label(), "reused" if ssl_obj.session_reused else "new",
                     ssl_obj.compression() or "none")  # fmt: skip

    async def _auth(self, ev: E.AuthLogin) -> None:
        rt = self.rt
        now = time.monotonic()
        if rt.auth_failures.blocked(self.peer_ip, now):
            log.warning("too many failed authentications from %s", self._label())
            await self._flush()
            await asyncio.sleep(self.limits.error_sleep)  # a guesser waits for its answer (tarpit)
            self.engine.auth_done(None, self._with_name(R.TOO_MANY_FAILURES), close=True)
            return
        authenticator = rt.authenticator
        if authenticator is None:
            self.engine.auth_done(None, R.AUTH_TEMPFAIL)
            return
        self._arm(self.limits.command_timeout)
        try:
            result = await authenticator.authenticate(
                ev.login, ev.password, client_ip=self.peer_ip, local_ip=self.sockname[0], secured=self.engine.tls
            )
        finally:
            self._disarm()
        if result.ok:
            login = result.login or ev.login
            if self.pipeline.has(Stage.AUTH):
                ctx = self._context()
                ctx.session = replace(ctx.session, login=login)
                verdict = await run_stage(self.pipeline, Stage.AUTH, ctx)
                if verdict.reply is not None and verdict.reply.is_error:
                    log.warning("%s: SASL %s login %s refused: %s", self._label(), ev.mechanism, sanitize(login, 100), verdict.reason)
                    self.engine.auth_done(None, verdict.reply)
                    return
            log.info("%s: sasl_method=%s, sasl_username=%s", self._label(), ev.mechanism, sanitize(login, 100))
            self.sasl_method = ev.mechanism
            metrics.auth(ev.mechanism, "success")
            self.engine.auth_done(login, R.AUTH_OK)
            return
        if result.temporary:
            log.warning("%s: SASL %s authentication temporarily failed: %s", self._label(), ev.mechanism, sanitize(result.reason, 200))
            metrics.auth(ev.mechanism, "tempfail")
            self.engine.auth_done(None, R.AUTH_TEMPFAIL)
            return
        rt.auth_failures.failed(self.peer_ip, now)
        metrics.auth(ev.mechanism, "failure")
        log.warning("%s: SASL %s authentication failed: %s", self._label(), ev.mechanism, sanitize(result.reason or "bad credentials", 200))
        self.engine.auth_done(None, R.AUTH_FAILED)

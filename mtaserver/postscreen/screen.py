"""postscreen in the session: the async shell around the pure modules of this package.

DESCRIPTION
    `Screener` is built once per worker process (after fork) from the config: the parsed
    access list and DNSBL sites, the enabled checks, the cache store
    (`cache.open_store(postscreen.cache, data_dir)`) and one `dns.Resolver`. It also keeps
    `counters` ("<check>.<outcome>" -> count) for the metrics endpoint, and runs the cache
    cleanup in the worker that is told to.

    `PostscreenHook` (at the end) is the stage hook the pipeline runs on `postscreen: true`
    listeners: at CONNECT it makes the connection's `Screen` (kept in the hook context's
    `state`) and runs before_greeting; at RCPT, `rcpt`; the deep tests are fed by the
    session's `Observe` events (runtime.py). A Screen reaches the connection only through
    pipeline.Connection (teaser, peek, wait_input, close, watch). The call points:

      before_greeting()  (before the final "220 " line; False: the session is over)
          access list: permit -> ALLOWLISTED, nothing else; reject -> DENYLISTED and
          blacklist_action. Cache: nothing due -> PASS OLD, no teaser, no wait.
          Otherwise "220-<greet.banner>" (when the pregreet test is due), then the greet
          wait (greet.wait) watching the socket, with the DNSBL queries in parallel
          (query_all, timeout min(dnsbl.timeout, greet.wait)). A DNSWL score at or below
          dnsbl.whitelist_threshold ends the wait early and passes every other test. A
          client that hangs up is logged HANGUP (not a failure). Then the verdicts:
          drop -> the 521 reply and close; enforce -> 550 at every RCPT; ignore -> go on.

          Pregreet bytes (the client talked before the 220): they are logged (PREGREET,
          first 100 bytes escaped) and judged per greet.action. With drop the connection
          is closed. With enforce or ignore they stay unread in the session's input,
          exactly as Postfix's postscreen, which only peeks at them (recv MSG_PEEK), leaves
          them for smtpd after the hand-off: the session then answers them as the commands
          they are, after the "220 " line. Nothing the client sent is silently lost.

      deep tests, only those enabled and due, until the first RCPT:
          bare_newline(line)   a command line ending in LF without CR
          non_smtp(line)       a forbidden verb (CONNECT, GET, POST, ...) or a header-like
                               one ("Subject:"); smtpd's own answer (221 2.7.0 and close)
                               stays for drop and for unscreened sessions; with enforce or
                               ignore the session answers 502 5.5.2 and goes on
          after_read(line)     input pending after a complete command: pipelining (the
                               screened session does not offer PIPELINING: `hide_pipelining`)
          A violation is logged with Postfix's words and judged per the test's action:
          drop -> 521 and close; enforce -> 550 at every RCPT; ignore -> the test counts as
          passed for psc_min_ttl (checks.ignore_ttl).

      rcpt(sender, recipient)   at every RCPT: the first one ends the screening (the deep
          tests not violated pass); the reply to send instead of the normal handling, or
          None. Conclusion (verdict.conclude): serve -> the mail is accepted in this same
          session (better than Postfix); enforce -> 550 + "NOQUEUE: reject: RCPT ..." for
          every RCPT; deep_tests_require_reconnect -> 450 4.3.2 at RCPT, pass recorded, so
          the next connection is PASS OLD (Postfix behaviour).

      end()   the session is over: a client that left before its first RCPT keeps what it
          passed (the early tests), if nothing failed.

    The cache record is written when the screening concludes (verdict.conclude says which
    record), "PASS NEW [ip]:port" / "PASS OLD" logged when every due test passed.

    Stress mode: when a worker holds postscreen.stress.connections connections on the
    listener, new clients get the shorter stress.greet_wait (logged on entering/leaving).
    Not implemented (see conf/mtaserver.yaml):
    Postfix's "cache only for the first session of an IP" (every connection reads the
    cache), switching on all deep tests after an early failure, command count/time limits
    of Postfix's dummy engine (the real session's limits apply), dnsbl reply_map.

SECURITY
    Client bytes reach the log only through logline (sanitize). Every wait is bounded by
    greet.wait; the DNSBL answers by dnsbl.timeout; cache and DNS trouble fail open.

CONFIG
    server.listeners[].postscreen, postscreen.*, server.dns, server.data_dir
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import Counter
from typing import TYPE_CHECKING

from ..admin import metrics
from ..dns import Resolver
from ..model import CONTINUE, Decision, Reply, Verdict
from ..pipeline import Connection, Context, Hook, Stage
from . import logline
from .access import Access, parse_access_list
from .cache import NEW_CLIENT, CacheStore, RecentRecords, Stamps, allowlist_non_dnsbl, checks_due, cleanup, is_new, open_store
from .checks import DEEP, Check, enabled_checks, pass_ttl
from .dnsbl import DnsblResult, parse_sites, query_all
from .verdict import Conclusion, Judgement, Outcome, Screening, Step, conclude, dnsbl_allowlisted, dnsbl_failed, on_failure

if TYPE_CHECKING:
    from ..config import Config

log = logging.getLogger("postscreen")

PREGREET_READ = 4096  # bytes read (and put back) when a client talks before the greeting


class Screener:
    """What the screened sessions of one worker share. Build it after fork."""

    def __init__(self, cfg: Config) -> None:
        ps = cfg.postscreen
        self.cfg = cfg
        self.ps = ps
        self.access = parse_access_list(ps.access_list)
        self.sites = parse_sites(ps.dnsbl.sites)
        self.enabled = enabled_checks(ps)
        self.store: CacheStore = open_store(ps.cache, cfg.data_path)
        self.recent = RecentRecords()  # in front of the store: see cache.py
        self.resolver = Resolver([str(ep) for ep in cfg.server.dns.nameservers], cfg.server.dns.timeout)
        self.counters: Counter[str] = Counter()
        self.stress = False
        self._cleanup_task: asyncio.Task[None] | None = None

    def connection(self, conn: Connection, ip: str, port: int) -> Screen:
        return Screen(self, conn, ip, port)

    def greet_wait(self, connections: int) -> float:
        """The greet wait now: shorter in stress mode, when this worker is busy (Postfix)."""
        limit = self.ps.stress.connections
        stress = bool(limit) and connections >= limit
        if stress != self.stress:
            self.stress = stress
            log.warning("%s STRESS mode with %d connections", "entering" if stress else "leaving", connections)
            self.count("stress", "enter" if stress else "leave")
        return min(self.ps.greet.wait, self.ps.stress.greet_wait) if stress else self.ps.greet.wait

    def count(self, check: Check | str, outcome: str) -> None:
        name = check.value if isinstance(check, Check) else check
        self.counters[f"{name}.{outcome}"] += 1
        metrics.postscreen(name, outcome)

    def start_cleanup(self) -> None:
        """Run the periodic cache cleanup in this process (one worker is enough)."""
        interval = self.ps.cache.cleanup_interval
        if interval > 0 and self._cleanup_task is None:
            self._cleanup_task = asyncio.get_running_loop().create_task(self._cleanup_loop(interval))

    async def _cleanup_loop(self, interval: float) -> None:
        while True:
            await asyncio.sleep(interval)
            try:
                await cleanup(self.store, self.enabled, time.time(), self.ps.cache.retention)
            except Exception:  # never let a cleanup bug stop the worker
                log.exception("cache %s cleanup failed", self.store.name)

    async def close(self, delay: float = 0.0) -> None:
        """Stop the cleanup and close store and resolver; `delay` lets running sessions finish."""
        if self._cleanup_task is not None:
            self._cleanup_task.cancel()
            self._cleanup_task = None
        if delay:
            await asyncio.sleep(delay)
        await self.store.close()
        self.resolver.close()


class Screen:
    """The screening of one connection (see the module docstring for the call points)."""

    def __init__(self, screener: Screener, conn: Connection, ip: str, port: int) -> None:
        self.sc = screener
        self.ps = screener.ps
        self.conn = conn
        self.ip = ip
        self.port = port
        self.finished = False  # nothing more to watch: the session runs as if unscreened
        self.last_command: str | None = None
        self.screening: Screening | None = None
        self.stamps: Stamps = NEW_CLIENT
        self.deep: set[Check] = set()  # deep tests still watched in this session
        self.conclusion: Conclusion | None = None
        self.hide_pipelining = False

    # -- before the greeting --------------------------------------------------------------

    async def before_greeting(self) -> bool:
        """Run the before-220 tests. False: the session is over (dropped or hung up)."""
        sc, ps, ip, port = self.sc, self.ps, self.ip, self.port
        sock = self.conn.sockname
        log.info(logline.connect(ip, port, sock[0], sock[1]))
        denied: Judgement | None = None
        match sc.access.lookup(ip, sc.cfg.outbound.mynetworks):
            case Access.PERMIT:
                log.info(logline.allowlisted(ip, port))
                sc.count("access", "permit")
                self._finish_now()
                return True
            case Access.REJECT:
                log.info(logline.denylisted(ip, port))
                denied = on_failure(Check.DENYLIST, ps, client_ip=ip)
                sc.count(Check.DENYLIST, denied.action.value)
                if denied.step is Step.DROP:
                    return self._drop(denied)
            case _:
                pass
        now = time.time()
        stamps = None
        if denied is None or not denied.failed:  # Postfix: no cache lookup after a failure
            stamps = sc.recent.get(ip, now)
            if stamps is None:
                stamps = await sc.store.get(ip)
                if stamps is not None:
                    sc.recent.put(ip, stamps, now)
        self.stamps = stamps if stamps is not None else NEW_CLIENT
        due = checks_due(self.stamps, sc.enabled, now)
        screening = Screening(client_ip=ip, due=due, new=stamps is None or is_new(stamps))
        if denied is not None:
            screening = screening.judged(denied, now)
        if not due and not screening.any_failed:
            log.info(logline.pass_line("PASS OLD", ip, port))
            sc.count("cache", "pass_old")
            self._finish_now()
            return True
        self.screening = screening
        if due & {Check.PREGREET, Check.DNSBL}:
            if not await self._early(due):
                return False
            if self.screening is None:  # dropped
                return False
        self.deep = set(self.screening.due & DEEP) - set(self.screening.skipped)
        self.hide_pipelining = Check.PIPELINING in self.deep
        self.conn.watch(bool(self.deep), self.hide_pipelining)
        if not self.deep:
            await self._conclude()
            if self.conclusion is not None and self.conclusion.outcome is Outcome.SERVE:
                self._finish_now()
        return True

    async def _early(self, due: frozenset[Check]) -> bool:
        sc, ps, ip, port = self.sc, self.ps, self.ip, self.port
        conn = self.conn
        loop = asyncio.get_running_loop()
        start = loop.time()
        wait = sc.greet_wait(conn.sessions)
        deadline = start + wait
        pregreet_due = Check.PREGREET in due
        if pregreet_due:
            conn.teaser(f"220-{ps.greet.banner.format(hostname=conn.hostname)}")
        dns_task: asyncio.Task[DnsblResult] | None = None
        if Check.DNSBL in due:
            dns_task = loop.create_task(query_all(sc.resolver, ip, sc.sites, min(ps.dnsbl.timeout, wait)))
        read_task: asyncio.Task[bool] | None = loop.create_task(conn.wait_input())
        pregreet_failed = False
        result: DnsblResult | None = None
        allowlisted = False
        try:
            while True:
                pending = {t for t in (read_task, dns_task) if t is not None and not t.done()}
                remaining = deadline - loop.time()
                if not pending or remaining <= 0:
                    break
                done, _ = await asyncio.wait(pending, timeout=remaining, return_when=asyncio.FIRST_COMPLETED)
                if read_task is not None and read_task in done:
                    try:
                        data = conn.peek(PREGREET_READ) if read_task.result() else b""
                    except (ConnectionError, OSError):
                        data = b""
                    read_task = None
                    if not data:
                        log.info(logline.hangup(loop.time() - start, ip, port))
                        sc.count("hangup", "before_greeting")
                        self.screening = None
                        return False
                    pregreet_failed = True
                    log.info(logline.pregreet(data, loop.time() - start, ip, port))
                    verdict = on_failure(Check.PREGREET, ps, client_ip=ip)
                    sc.count(Check.PREGREET, verdict.action.value)
                    assert self.screening is not None
                    self.screening = self.screening.judged(verdict, time.time())
                    if verdict.step is Step.DROP:
                        return self._drop(verdict)
                if dns_task is not None and dns_task in done:
                    result = dns_task.result()
                    dns_task = None
                    assert self.screening is not None
                    if ps.dnsbl.whitelist_threshold < 0 and dnsbl_allowlisted(
                        result.score, threshold=ps.dnsbl.threshold, allowlist_threshold=ps.dnsbl.whitelist_threshold,
                        any_failed=self.screening.any_failed,
                    ):  # fmt: skip
                        allowlisted = True
                        break  # DNSWL: stop waiting now
                    if not pregreet_due or pregreet_failed:
                        break  # every early test is done
            if dns_task is not None:  # the greet wait ended first: its own timeout is about to fire
                result = await dns_task
                dns_task = None
        finally:
            for t in (read_task, dns_task):
                if t is not None and not t.done():
                    t.cancel()
            if read_task is not None:
                try:
                    await read_task
                except (asyncio.CancelledError, ConnectionError, OSError):
                    pass
            # Postfix peeks: whatever the client sent stays unread for the SMTP session.
        assert self.screening is not None
        now = time.time()
        screening = self.screening
        if result is not None:
            ttl = result.ttl(min_ttl=ps.dnsbl.min_ttl, max_ttl=ps.dnsbl.max_ttl, default_ttl=ps.dnsbl.ttl)
            if allowlisted:
                screening = screening.passed(Check.DNSBL, now + ttl)
                self.stamps = allowlist_non_dnsbl(self.stamps, now, ttl)
                for check in screening.due - {Check.DNSBL}:
                    screening = screening.skip(check, now + ttl)
                sc.count(Check.DNSBL, "allowlisted")
            elif not dnsbl_failed(result.score, ps.dnsbl.threshold):
                screening = screening.passed(Check.DNSBL, now + ttl)
                sc.count(Check.DNSBL, "pass")
            else:
                log.info(logline.dnsbl_rank(result.score, ip, port))
                verdict = on_failure(Check.DNSBL, ps, client_ip=ip, dnsbl_zone=result.zone)
                sc.count(Check.DNSBL, verdict.action.value)
                screening = screening.judged(verdict, now)
                if verdict.step is Step.DROP:
                    self.screening = screening
                    return self._drop(verdict)
        if pregreet_due and not pregreet_failed and not allowlisted:
            screening = screening.passed(Check.PREGREET, now + pass_ttl(Check.PREGREET, ps))
            sc.count(Check.PREGREET, "pass")
        self.screening = screening
        return True

    def _drop(self, verdict: Judgement) -> bool:
        assert verdict.reply is not None
        self.screening = None
        self.conn.close(verdict.reply)
        log.info(logline.disconnect(self.ip, self.port))
        return False

    def _finish_now(self) -> None:
        """Nothing more to watch: the session runs as if unscreened."""
        self.finished = True
        self.conn.watch(False, False)

    # -- deep tests -----------------------------------------------------------------------

    def _violation(self, check: Check) -> bool:
        """Judge a deep-test failure. True: the session goes on; False: dropped (closed)."""
        assert self.screening is not None
        self.deep.discard(check)  # skipped for the rest of the session (PIPELINING stays hidden)
        verdict = on_failure(check, self.ps, client_ip=self.ip)
        self.sc.count(check, verdict.action.value)
        self.screening = self.screening.judged(verdict, time.time())
        if verdict.step is Step.DROP:
            if check is Check.NON_SMTP:
                return False  # the caller keeps smtpd's own answer (221 2.7.0) and closes
            self._drop(verdict)
            self.finished = True
            return False
        return True

    def bare_newline(self, line: bytes) -> bool:
        """A command line ended by a bare LF. False: the session was dropped."""
        if Check.BARE_NEWLINE not in self.deep:
            return True
        log.info(logline.bare_newline(self.ip, self.port, line.rstrip(b"\r\n")))
        return self._violation(Check.BARE_NEWLINE)

    def non_smtp(self, line: bytes) -> bool:
        """A forbidden or header-like verb. True: close as smtpd does (221 2.7.0);
        False: the test is due and its action is enforce or ignore: answer 502 and go on."""
        if Check.NON_SMTP not in self.deep:
            return True
        log.info(logline.non_smtp_command(self.ip, self.port, "CONNECT" if self.last_command is None else self.last_command, line))
        return not self._violation(Check.NON_SMTP)

    def after_read(self, line: bytes, pending: bytes) -> bool:
        """A complete command was read with `pending` input after it: pipelining (never
        offered while this test runs). False: the session was dropped."""
        if Check.PIPELINING not in self.deep or not pending:
            return True
        verb = line.split(b" ", 1)[0].decode("ascii", "replace").upper()
        log.info(logline.pipelining(self.ip, self.port, verb, pending))
        return self._violation(Check.PIPELINING)

    # -- RCPT and the conclusion ----------------------------------------------------------

    async def rcpt(self, sender: str, recipient: str, *, esmtp: bool, helo: str) -> Reply | None:
        """At every RCPT: None to go on with the normal handling, or the reply to send."""
        if self.conclusion is None:
            assert self.screening is not None
            now = time.time()
            screening = self.screening
            for check in sorted(self.deep):  # reached RCPT without violating them
                screening = screening.passed(check, now + pass_ttl(check, self.ps))
                self.sc.count(check, "pass")
            self.screening = screening
            self.deep.clear()
            self.hide_pipelining = False
            await self._conclude()
        c = self.conclusion
        assert c is not None
        if c.outcome is Outcome.SERVE:
            self._finish_now()
            return None
        assert c.reply is not None
        log.info(logline.noqueue_rcpt(
            self.ip, self.port, c.reply, sender=sender, recipient=recipient,
            proto="ESMTP" if esmtp else "SMTP", helo=helo,
        ))  # fmt: skip
        return c.reply

    async def _conclude(self) -> None:
        assert self.screening is not None
        c = conclude(self.screening, stamps=self.stamps, enabled=self.sc.enabled, require_reconnect=self.ps.deep_tests_require_reconnect)
        self.conclusion = c
        self.sc.count("conclusion", c.outcome.value)
        if c.cache is not None:
            self.sc.recent.put(self.ip, c.cache, time.time())
            await self.sc.store.put(self.ip, c.cache)
        if c.pass_log is not None:
            log.info(logline.pass_line(c.pass_log, self.ip, self.port))
            self.sc.count("cache", c.pass_log.lower().replace(" ", "_"))

    def end(self) -> None:
        """The session ended before the screening concluded: keep the early passes."""
        if self.conclusion is not None or self.screening is None or self.screening.any_failed:
            return
        if not self.screening.passes:
            return
        # The deep tests were not passed (no RCPT): conclude with what passed so far.
        task = asyncio.get_running_loop().create_task(self._conclude())
        task.add_done_callback(_log_failure)


def _log_failure(task: asyncio.Task[None]) -> None:
    if not task.cancelled() and task.exception() is not None:
        log.error("postscreen: cache update failed", exc_info=task.exception())


class PostscreenHook(Hook):
    """postscreen as a stage hook: CONNECT (before the greeting) and RCPT (the conclusion)."""

    name = "postscreen"
    stages = frozenset({Stage.CONNECT, Stage.RCPT})
    timeout = None  # bounded by greet.wait and dnsbl.timeout itself

    def __init__(self, screener: Screener) -> None:
        self.screener = screener

    async def run(self, stage: Stage, ctx: Context) -> Verdict:
        if stage is Stage.CONNECT:
            screen = self.screener.connection(ctx.conn, ctx.session.ip, ctx.session.port)
            ctx.state[self.name] = screen
            if not await screen.before_greeting():
                return _CLOSED  # dropped (the screen sent its reply) or the client hung up
            return CONTINUE
        screen = ctx.state.get(self.name)
        if screen is None or screen.finished or ctx.tx is None or ctx.rcpt is None:
            return CONTINUE
        s = ctx.session
        reply = await screen.rcpt(str(ctx.tx.sender), str(ctx.rcpt), esmtp=s.esmtp, helo=s.helo or "")
        return CONTINUE if reply is None else Verdict.reject(reply, "postscreen")

    def observe(self, ctx: Context, kind: str, line: bytes, pending: bytes, last_command: str) -> bool:
        """A deep-test observation from the session: True to go on with the line."""
        screen: Screen | None = ctx.state.get(self.name)
        if screen is None or screen.finished:
            return kind != "non_smtp"
        screen.last_command = last_command
        if kind == "bare_newline":
            return screen.bare_newline(line)
        if kind == "non_smtp":
            return not screen.non_smtp(line)
        return screen.after_read(line, pending)

    def end(self, ctx: Context) -> None:
        screen: Screen | None = ctx.state.get(self.name)
        if screen is not None:
            screen.end()


_CLOSED = Verdict(Decision.DISCARD, reason="postscreen")  # at CONNECT: the session ends without a reply of its own


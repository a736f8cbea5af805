"""The content-filter chain at the end of DATA: the filters, their verdicts, the rewrite, the signature.

DESCRIPTION
    Before the 250, in the session (before-queue, SPEC.md 11.3: a verdict is a reply to the
    client, never a bounce made later). One DATA-END hook (`ChainHook`) runs, for each message:

      1. analysis: the filters that apply, concurrently, under one time budget per message
         (advanced.filter_budget), each also under its own timeout:
            attachments   blocked file names (filters/attachments.py, over filters/mime.py)
            antivirus     clamd INSTREAM, and encrypted archives (filters/clamav.py)
            dkim-verify   DKIM signatures, Authentication-Results, the sender policy (filters/dkim.py)
            antispam      spamd SYMBOLS (filters/spamassassin.py)
         Each gives an `Outcome`: a model.Verdict, its `Step` of the decision trail, header
         edits, and the notifications to send if it is the verdict that wins. A filter that
         fails (its scanner down, its timeout, the budget, a bug) gives its `on_error`:
         tempfail (451 4.7.1) or accept (no objection), and a step saying so.
      2. the verdict: the most severe one wins, REJECT > DISCARD > TEMPFAIL > HOLD >
         CONTINUE, and among equally severe ones the filter first in the order above. So a
         definitive block (a virus, a blocked attachment, spam at the kill level) is not
         delayed by another scanner being down, and a tempfail is never turned into an
         acceptance.
      3. a message that is queued (CONTINUE or HOLD) is rewritten once: forged
         Authentication-Results of ours removed, every filter's headers added after our
         Received:, the subject tag, the originating headers (X-Originating-IP,
         X-Authenticated-User); a spool that spilled to disk is rewritten on disk, a small
         one in memory, within the spool's memory budget (queue/store.py edit_head).
      4. then, for mail from trusted clients (mynetworks, authenticated) whose From domain
         has a key in dkim.sign, the DKIM signature over the rewritten message is put on top.
      5. a blocked message's notifications (the sender's bounce for
         inbound.blocked_extensions_action: bounce; the postmaster's and the local recipients'
         notices) are committed into our own queue before the client gets its reply; if that
         commit fails the client gets 451 and nothing is lost.

    Every step goes into the queue file as the message's decision trail (Envelope.trail):
    {"filter", "result", "detail", "score", "ms"}, shown by `queue show` and the admin API,
    and one log line per message lists them.

    `combine` is pure; the filters' decisions are pure functions in their modules; the
    classes here are the asyncio shell.

CONFIG
    advanced.filter_budget, advanced.threads.milter (content-filter runs at once per process),
    and each filter's own section (inbound, antivirus, antispam, dkim, outbound)
"""

from __future__ import annotations

import asyncio
import logging
import re
import time
from collections.abc import AsyncIterator, Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, replace
from typing import Any

from ..admin import metrics
from ..config import Config
from ..logutil import sanitize
from ..model import CONTINUE, SCANNER_TEMPFAIL, TEMPFAIL_INTERNAL, Decision, Verdict
from ..pipeline import Context, Hook, SessionView, Stage, TxView

log = logging.getLogger("filter")

# Most severe first: the winner of several verdicts (CONTINUE and ACCEPT never win).
SEVERITY = (Decision.REJECT, Decision.DISCARD, Decision.TEMPFAIL, Decision.HOLD)
NOTIFY_FAILED = Verdict(Decision.TEMPFAIL, TEMPFAIL_INTERNAL, "notification could not be queued")


@dataclass(frozen=True, slots=True)
class Step:
    """One filter's entry in the decision trail."""

    filter: str
    result: str  # clean virus blocked ham tagged spam pass fail none error timeout skipped ...
    detail: str = ""  # the virus, the file, the rules that hit, the signatures
    score: float | None = None
    ms: float = 0.0

    def doc(self) -> dict[str, Any]:
        detail = sanitize(self.detail, 500)  # names from the message (d=, s=, file names): never raw into the trail
        return {"filter": self.filter, "result": self.result, "detail": detail, "score": self.score, "ms": round(self.ms, 1)}

    def text(self) -> str:
        score = f" score={self.score:g}" if self.score is not None else ""
        detail = f" ({sanitize(self.detail, 500)})" if self.detail else ""
        return f"{self.filter}={self.result}{score}{detail} {self.ms:.0f}ms"


@dataclass(frozen=True, slots=True)
class Notices:
    """Whom to tell when this outcome's verdict wins (and blocks the message)."""

    what: str  # 'an attachment "a.exe" (.exe is not allowed)', "a virus (Eicar-Signature)"
    admin: bool = False
    recipients: bool = False
    bounce: str = ""  # the DSN's diagnostic for the sender ("" = no bounce)
    status: str = "5.7.1"


@dataclass(frozen=True, slots=True)
class Outcome:
    verdict: Verdict
    step: Step | None
    notices: Notices | None = None


@dataclass(frozen=True, slots=True)
class Combined:
    verdict: Verdict  # CONTINUE with every filter's headers and tag, or the winning final verdict
    winner: Outcome | None


def combine(outcomes: Sequence[Outcome]) -> Combined:
    """The chain's verdict: the most severe, the first among equals; headers of all when queued."""
    winner: Outcome | None = None
    for o in outcomes:
        d = o.verdict.decision
        if d in SEVERITY and (winner is None or SEVERITY.index(d) < SEVERITY.index(winner.verdict.decision)):
            winner = o
    if winner is not None and winner.verdict.decision is not Decision.HOLD:
        return Combined(winner.verdict, winner)
    headers: tuple[tuple[str, str], ...] = ()
    tag = ""
    reasons = []
    for o in outcomes:
        v = o.verdict
        if v.decision is Decision.CONTINUE or v is (winner and winner.verdict):
            headers += v.headers
            tag = tag or v.subject_tag
            if v.reason:
                reasons.append(v.reason)
    base = winner.verdict if winner is not None else CONTINUE
    return Combined(replace(base, headers=headers, subject_tag=tag, reason="; ".join(reasons)), winner)


# ---------------------------------------------------------------------------------------------
# rewriting the header section (pure)

_SUBJECT = re.compile(rb"(?im)^subject:[ \t]*")
_FIELD = re.compile(rb"([!-9;-~]+)[ \t]*:[^\r\n]*\r\n(?:[ \t][^\r\n]*\r\n)*")
SPAM_HEADERS = frozenset((b"x-spam-flag", b"x-spam-score", b"x-spam-level", b"x-spam-status"))
_HAS_AR = re.compile(rb"(?im)^authentication-results[ \t]*:")
_HAS_SPAM = re.compile(rb"(?im)^x-spam-(?:flag|score|level|status)[ \t]*:")
HEAD_MAX = 256 * 1024  # the header section looked at for From, Subject, forged headers
SIGN_ON_LOOP = 32 * 1024  # a larger message is signed in the filters' threads (RSA-2048: ~14 ms at 1 KB, ~50 ms at 256 KB)


def strip_fields(head: bytes, names: frozenset[bytes]) -> bytes:
    """`head` (a header section) without the fields named in `names` (lower case), continuation
    lines included; anything after a line that is not a field is kept as it is."""
    out, pos, dropped = [], 0, False
    while pos < len(head):
        m = _FIELD.match(head, pos)
        if m is None:
            break
        if m[1].lower() in names:
            dropped = True
        else:
            out.append(m[0])
        pos = m.end()
    return b"".join(out) + head[pos:] if dropped else head


def encode_tag(tag: str) -> bytes:
    """The subject tag as header bytes: ASCII as it is, anything else as an RFC 2047 word."""
    if tag.isascii():
        return tag.encode("ascii")
    from email.header import Header

    return Header(tag, "utf-8").encode().encode("ascii")


def rewrite_message(content: bytes, offset: int, headers: tuple[tuple[str, str], ...], subject_tag: str) -> bytes:
    """Add `headers` at `offset` (after our Received:) and put `subject_tag` in front of the Subject."""
    added = b"".join(f"{k}: {v}\r\n".encode("utf-8", "replace") for k, v in headers)
    if subject_tag:
        end = content.find(b"\r\n\r\n", offset)
        header_end = len(content) if end < 0 else end + 2
        m = _SUBJECT.search(content, offset, header_end)
        tag = encode_tag(subject_tag)
        if m:
            content = content[: m.end()] + tag + b" " + content[m.end() :]
        else:
            added += b"Subject: " + tag + b"\r\n"
    return content[:offset] + added + content[offset:]


def edit_head(head: bytes, offset: int, verdict: Verdict, strips: Sequence[Callable[[bytes], bytes]]) -> bytes:
    """The whole rewrite of a queued message's header section: strips, then headers and tag."""
    ours, theirs = head[:offset], head[offset:]
    for strip in strips:
        theirs = strip(theirs)
    return rewrite_message(ours + theirs, offset, verdict.headers, verdict.subject_tag)


# ---------------------------------------------------------------------------------------------
# The shell.


class Item:
    """One message in the chain: what the filters may read. The whole content and the MIME
    walk are made once, for whichever filters ask first."""

    def __init__(self, ctx: Context, cfg: Config) -> None:
        self.session: SessionView = ctx.session
        self.tx: TxView = ctx.tx  # type: ignore[assignment]
        self.message = ctx.message  # smtp.protocol.Message
        self.cfg = cfg
        self._whole: asyncio.Task[bytes] | None = None
        self._mime: asyncio.Task[Any] | None = None

    @property
    def size(self) -> int:
        return int(self.message.size)

    @property
    def trusted(self) -> bool:
        return self.session.trusted

    def chunks(self) -> AsyncIterator[bytes]:
        return self.message.chunks()

    async def whole(self) -> bytes:
        if self._whole is None:
            self._whole = asyncio.ensure_future(self.message.whole())
        return await asyncio.shield(self._whole)

    async def mime(self) -> Any:
        """The MIME walk of the message (filters/mime.py MimeReport), or the MimeError it raised."""
        if self._mime is None:
            self._mime = asyncio.ensure_future(self._walk())
        return await asyncio.shield(self._mime)

    async def _walk(self) -> Any:
        from .attachment_filter import attachment_limits
        from .mime import MimeError, MimeWalker

        limits = attachment_limits(self.cfg.inbound)

        def walk(chunks: Sequence[bytes] | None, path: str | None) -> Any:
            walker = MimeWalker(limits)
            try:
                if chunks is not None:
                    for c in chunks:
                        walker.feed(c)
                else:
                    assert path is not None
                    with open(path, "rb") as f:
                        while c := f.read(1 << 20):
                            walker.feed(c)
                return walker.close()
            except MimeError as exc:
                return exc

        chunks, path = self.message.snapshot()
        # Always in the filters' own threads, never on the loop: the walk's cost grows with the
        # number of parts, not the size (500 parts of encoded names in 64 KB: ~0.5 s).
        return await asyncio.get_running_loop().run_in_executor(filter_pool(), walk, chunks, path)

    def close(self) -> None:
        for t in (self._whole, self._mime):
            if t is not None and not t.done():
                t.cancel()


_POOL: ThreadPoolExecutor | None = None
POOL_THREADS = 2  # CPU-bound filter work (MIME walk, DKIM hashing, signing) at once per process


def filter_pool() -> ThreadPoolExecutor:
    """The threads of CPU-bound filter work: bounded, and apart from the default executor (which
    the queue's and the loop's own work use)."""
    global _POOL
    if _POOL is None:
        _POOL = ThreadPoolExecutor(POOL_THREADS, thread_name_prefix="filter")
    return _POOL


class Filter:
    """A DATA-END content filter. Subclasses set `name`, and implement `wanted` and `run`; each
    bounds its own waits (scanner timeouts, DNS budget), the chain's budget bounds them all."""

    name = "filter"
    on_error = "tempfail"  # or "accept"

    def wanted(self, item: Item) -> bool:
        return True

    async def run(self, item: Item) -> Outcome:
        raise NotImplementedError

    def failed(self, result: str, why: str, ms: float) -> Outcome:
        """This filter gave no verdict: its on_error decides."""
        step = Step(self.name, result, sanitize(why, 200), None, ms)
        metrics.filter_error(self.name, result)
        if self.on_error == "tempfail":
            return Outcome(Verdict(Decision.TEMPFAIL, SCANNER_TEMPFAIL, f"{self.name} unavailable: {step.detail}"), step)
        log.warning("%s unavailable, message accepted unchecked (on_error: accept): %s", self.name, step.detail)
        return Outcome(CONTINUE, step)


class FilterChain:
    """Builds the filters from the config (again on reload) and runs them for one message."""

    def __init__(self, cfg: Config, previous: FilterChain | None = None, resolver: Any = None) -> None:
        from .clamav import AntivirusFilter
        from .spamassassin import AntispamFilter

        self.cfg = cfg
        adv = cfg.advanced
        # Semaphores are per process and survive a reload when their size did not change.
        if previous is not None and previous.cfg.advanced.threads == adv.threads:
            self.runs, self.av_slots = previous.runs, previous.av_slots
        else:
            self.runs = asyncio.Semaphore(adv.threads.milter)
            self.av_slots = asyncio.Semaphore(adv.threads.antivirus)
        self.filters: list[Filter] = []
        if cfg.inbound.blocked_extensions:
            from .attachment_filter import AttachmentsFilter

            self.filters.append(AttachmentsFilter(cfg))
        if cfg.antivirus.enabled:
            self.filters.append(AntivirusFilter(cfg, self.av_slots))
        if cfg.dkim.verify:
            from .dkim_filter import DkimVerifyFilter

            self.filters.append(DkimVerifyFilter(cfg, resolver))
        if cfg.antispam.enabled:
            self.filters.append(AntispamFilter(cfg))
        self.signer: Any = None
        if cfg.dkim.sign:
            from .dkim_filter import load_signer

            self.signer = load_signer(cfg)
        out = cfg.outbound
        self.originating = out.add_client_ip_header or out.add_username_header
        # Headers a client must not bring along, from every client (trusted ones too): copies of
        # our own Authentication-Results while we are an authserv (dkim.verify; RFC 8601 5), and
        # X-Spam-* while spamd's verdict is ours to give (Amavis removes them too).
        self.strips: tuple[Callable[[bytes], bytes], ...] = ()
        if cfg.dkim.verify:
            from .dkim import strip_forged

            hostname = cfg.server.hostname
            # A regex search first: the field parser only runs on a head that has such a field.
            self.strips += (lambda head: strip_forged(head, hostname) if _HAS_AR.search(head) else head,)
        if cfg.antispam.enabled:
            self.strips += (lambda head: strip_fields(head, SPAM_HEADERS) if _HAS_SPAM.search(head) else head,)

    @property
    def wanted(self) -> bool:
        """Whether the chain has anything to do at all (else the hook is not installed)."""
        return bool(self.filters or self.signer or self.originating or self.strips)

    async def run(self, ctx: Context) -> Verdict:
        async with self.runs:
            item = Item(ctx, self.cfg)
            try:
                return await self._run(item)
            finally:
                item.close()

    async def _run(self, item: Item) -> Verdict:
        msg = item.message
        active = [f for f in self.filters if f.wanted(item)]
        outcomes = await self._analyse(item, active) if active else []
        orig = self._originating(item.session)
        if orig is not None:
            outcomes.append(orig)
        result = combine(outcomes)
        msg.trail = [o.step.doc() for o in outcomes if o.step is not None]
        metrics.filter_steps(msg.trail)
        if outcomes and any(o.step is not None for o in outcomes):
            log.info("%s: filters: %s", msg.queue_id, ", ".join(o.step.text() for o in outcomes if o.step is not None))
        verdict = result.verdict
        if verdict.decision in (Decision.CONTINUE, Decision.HOLD, Decision.ACCEPT):
            strips = self.strips
            if verdict.headers or verdict.subject_tag or strips:
                offset = msg.header_offset
                await msg.edit_head(lambda head: edit_head(head, offset, verdict, strips))
                # What the chain added, so that a requeue (filters/refilter.py) takes off exactly that.
                if verdict.headers:
                    msg.extra["added_fields"] = str(len(verdict.headers))
                if verdict.subject_tag:
                    msg.extra["added_tag"] = verdict.subject_tag
            if self.signer is not None and item.trusted:
                await self._sign(item)
            return replace(verdict, headers=(), subject_tag="")
        if result.winner is not None and result.winner.notices is not None:
            from .notify import send_notices

            try:
                await send_notices(msg, item, result.winner.notices, verdict)
            except Exception as exc:  # noqa: BLE001  (a full disk: the client retries, nothing is lost)
                log.error("%s: notification not queued: %s", msg.queue_id, sanitize(str(exc), 200))
                return NOTIFY_FAILED
        return verdict

    async def _analyse(self, item: Item, filters: list[Filter]) -> list[Outcome]:
        budget = self.cfg.advanced.filter_budget
        start = time.perf_counter()
        tasks = [asyncio.ensure_future(self._one(f, item)) for f in filters]
        try:
            done, pending = await asyncio.wait(tasks, timeout=budget)
        except asyncio.CancelledError:  # the worker stops: no filter outlives the message
            for t in tasks:
                t.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            raise
        for t in pending:
            t.cancel()
        outcomes = []
        ms = (time.perf_counter() - start) * 1000
        for f, t in zip(filters, tasks):
            if t in done:
                outcomes.append(t.result())
            else:
                outcomes.append(f.failed("timeout", f"no verdict within the budget of {budget:g}s", ms))
        if pending:
            await asyncio.gather(*pending, return_exceptions=True)
        return outcomes

    async def _one(self, f: Filter, item: Item) -> Outcome:
        start = time.perf_counter()
        try:
            out = await f.run(item)
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # a bug of ours: the message is not lost, the client retries
            log.exception("%s: %s filter failed", item.message.queue_id, f.name)
            return f.failed("error", f"internal error: {type(exc).__name__}", (time.perf_counter() - start) * 1000)
        if out.step is not None:
            out = replace(out, step=replace(out.step, ms=(time.perf_counter() - start) * 1000))
        return out

    def _originating(self, s: SessionView) -> Outcome | None:
        out = self.cfg.outbound
        if not s.trusted or s.listener == "pickup":  # refilter.PICKUP: a local program has no client IP to show
            return None
        headers = []
        if out.add_client_ip_header:
            headers.append(("X-Originating-IP", f"[{s.ip}]"))
        if out.add_username_header and s.login:
            headers.append(("X-Authenticated-User", s.login))
        return Outcome(Verdict(Decision.CONTINUE, headers=tuple(headers)), None) if headers else None

    async def _sign(self, item: Item) -> None:
        from .dkim_filter import from_domain

        msg = item.message
        content = await msg.whole()
        domain = from_domain(content[:HEAD_MAX])
        if domain is None:
            return
        signer = self.signer
        if len(content) <= SIGN_ON_LOOP:
            header = signer.sign(content, domain)
        else:
            header = await asyncio.get_running_loop().run_in_executor(filter_pool(), signer.sign, content, domain)
        if header:
            await msg.edit_head(lambda head: header + head)
            msg.extra["signatures"] = str(header.lower().count(b"dkim-signature:"))
            msg.trail.append(Step("dkim-sign", "signed", f"d={domain}").doc())
            log.info("%s: dkim: signed for d=%s", msg.queue_id, domain)


class ChainHook(Hook):
    """The content-filter chain as the DATA-END hook of a listener's pipeline."""

    name = "content-filter"
    stages = frozenset({Stage.DATA_END})

    def __init__(self, chain: Callable[[], FilterChain]) -> None:
        self.chain = chain

    async def run(self, stage: Stage, ctx: Context) -> Verdict:
        return await self.chain().run(ctx)


__all__ = ["ChainHook", "Combined", "Filter", "FilterChain", "Item", "Notices", "Outcome", "Step", "combine"]

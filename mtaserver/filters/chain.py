"""The content filter chain at the end of DATA: antivirus (clamd) and antispam (spamd).

DESCRIPTION
    Before the 250, in the session (before-queue, as SPEC.md 11.3 asks: a verdict is a reply
    to the client, never a bounce later). Both scanners run at the same time; `decide` turns
    their results into one model.Verdict (a DATA-END hook's answer). The order of precedence:

      1. a virus                  antivirus.action: reject -> REJECT 554 5.7.0, discard -> DISCARD
                                  (the client is told 250, the message dropped)
      2. antivirus failed         antivirus.on_error: tempfail -> TEMPFAIL 451 4.7.1 | accept
      3. spam at the kill level   antispam.blocked_spam_action: reject -> REJECT 550 5.7.1,
                                  discard -> DISCARD; deliver -> tagged as at 5
      4. antispam failed          antispam.on_error: tempfail -> TEMPFAIL 451 4.7.1 | accept (untagged)
      5. spam at the tag level    X-Spam-Flag: YES and the subject tag
      6. otherwise                no objection; every message spamd checked gets X-Spam-Score,
                                  X-Spam-Level and X-Spam-Status (Amavis in Carbonio does so)

    "accept" is Decision.CONTINUE (no objection: later DATA-END hooks still run), with the
    headers and subject tag to add; never Decision.ACCEPT, which would skip them.

    Levels: antispam.{delivery,blocking}_tolerance: low | medium | high (20/33/50 % and
    66/75/90 %), a percentage of 20 points ("40%" = 8.0), or a score (6.6).

    Which messages are scanned: antivirus, every message; antispam, messages up to
    spamd.max_size (larger ones pass unchecked, as spamc does), and mail from trusted clients
    (mynetworks, authenticated) only with antispam.check_outbound.

    `decide` and `spam_levels` are pure; FilterChain.run is the asyncio shell.

CONFIG
    antivirus.*, antispam.*
"""

from __future__ import annotations

import asyncio
import logging
import re
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field

from ..config import AntispamConfig, AntivirusConfig, Config
from ..logutil import sanitize
from ..model import CONTINUE, SCANNER_TEMPFAIL, SPAM_REJECTED, Decision, Reply, Verdict
from .scanners import AvResult, ScannerError, SpamResult, clamd_scan, spamd_check

log = logging.getLogger("filter")

TOLERANCE_TAG = {"low": 20.0, "medium": 33.0, "high": 50.0}  # percent of 20 points
TOLERANCE_KILL = {"low": 66.0, "medium": 75.0, "high": 90.0}
FULL_SCORE = 20.0  # 100 %



@dataclass
class Scanned:
    """What the scanners said: a result, a ScannerError, or None (not asked)."""

    av: AvResult | ScannerError | None = None
    spam: SpamResult | ScannerError | None = None
    tags: list[str] = field(default_factory=list)


def level(value: str | float, table: dict[str, float]) -> float:
    if isinstance(value, (int, float)):
        return float(value)
    if value in table:
        return round(table[value] * FULL_SCORE / 100, 1)
    return round(float(value.rstrip("%")) * FULL_SCORE / 100, 1)


def spam_levels(cfg: AntispamConfig) -> tuple[float, float]:
    """(tag level, kill level) in SpamAssassin points."""
    return level(cfg.delivery_tolerance, TOLERANCE_TAG), level(cfg.blocking_tolerance, TOLERANCE_KILL)


def spam_headers(result: SpamResult, tag: float, flagged: bool) -> tuple[tuple[str, str], ...]:
    stars = "*" * max(0, min(50, int(result.score)))
    status = f"{'Yes' if flagged else 'No'}, score={result.score:.1f} required={tag:.1f} tests=[{', '.join(result.tests)}]"
    out = [("X-Spam-Flag", "YES")] if flagged else []
    out += [("X-Spam-Score", f"{result.score:.1f}"), ("X-Spam-Level", stars), ("X-Spam-Status", status)]
    return tuple((k, sanitize(v, 900)) for k, v in out)


def decide(scanned: Scanned, av_cfg: AntivirusConfig, spam_cfg: AntispamConfig) -> Verdict:
    av, spam = scanned.av, scanned.spam
    if isinstance(av, AvResult) and av.virus is not None:
        name = sanitize(av.virus, 100)
        if av_cfg.action == "discard":
            return Verdict(Decision.DISCARD, reason=f"virus {name}")
        return Verdict(Decision.REJECT, Reply(554, "5.7.0", f"Rejected: virus found: {name}"), f"virus {name}")
    if isinstance(av, ScannerError):
        if av_cfg.on_error == "tempfail":
            return Verdict(Decision.TEMPFAIL, SCANNER_TEMPFAIL, f"antivirus unavailable: {sanitize(str(av), 200)}")
        log.warning("antivirus unavailable, message accepted unscanned (on_error: accept): %s", sanitize(str(av), 200))
    if isinstance(spam, ScannerError):
        if spam_cfg.on_error == "tempfail":
            return Verdict(Decision.TEMPFAIL, SCANNER_TEMPFAIL, f"antispam unavailable: {sanitize(str(spam), 200)}")
        log.warning("antispam unavailable, message accepted unchecked (on_error: accept): %s", sanitize(str(spam), 200))
        return CONTINUE
    if not isinstance(spam, SpamResult):
        return CONTINUE
    tag, kill = spam_levels(spam_cfg)
    score = f"spam score {spam.score:.1f}"
    if spam.score >= kill:
        if spam_cfg.blocked_spam_action == "reject":
            return Verdict(Decision.REJECT, SPAM_REJECTED, f"{score} >= {kill:.1f}")
        if spam_cfg.blocked_spam_action == "discard":
            return Verdict(Decision.DISCARD, reason=f"{score} >= {kill:.1f}")
    flagged = spam.score >= tag
    return Verdict(
        Decision.CONTINUE,
        reason=f"{score} >= {tag:.1f}: tagged" if flagged else "",
        headers=spam_headers(spam, tag, flagged),
        subject_tag=spam_cfg.subject_tag if flagged else "",
    )


_SUBJECT = re.compile(rb"(?im)^subject:[ \t]*")


def rewrite_message(content: bytes, offset: int, headers: tuple[tuple[str, str], ...], subject_tag: str) -> bytes:
    """Add `headers` at `offset` (after our Received:) and put `subject_tag` in front of the Subject."""
    added = b"".join(f"{k}: {v}\r\n".encode("utf-8", "replace") for k, v in headers)
    if subject_tag:
        end = content.find(b"\r\n\r\n", offset)
        header_end = len(content) if end < 0 else end + 2
        m = _SUBJECT.search(content, offset, header_end)
        tag = subject_tag.encode("utf-8", "replace")
        if m:
            content = content[: m.end()] + tag + b" " + content[m.end() :]
        else:
            added += b"Subject: " + tag + b"\r\n"
    return content[:offset] + added + content[offset:]


# ---------------------------------------------------------------------------------------------
# The shell: run the scanners that apply, under their timeouts, side by side.


class FilterChain:
    def __init__(self, cfg: Callable[[], Config]) -> None:
        self._cfg = cfg
        self._av_slots: asyncio.Semaphore | None = None
        self._av_slots_n = 0

    @staticmethod
    def wanted(cfg: Config) -> bool:
        return cfg.antivirus.enabled or cfg.antispam.enabled

    def spam_checked(self, cfg: Config, size: int, trusted: bool) -> bool:
        sa = cfg.antispam
        return sa.enabled and size <= sa.spamd.max_size and (sa.check_outbound or not trusted)

    async def run(self, *, size: int, trusted: bool, content: Callable[[], AsyncIterator[bytes]],
                  whole: Callable[[], Awaitable[bytes]]) -> Verdict:  # fmt: skip
        """`content()` yields the message in chunks (for clamd); `whole()` gives it in one piece (spamd)."""
        cfg = self._cfg()
        jobs: dict[str, asyncio.Task] = {}
        loop = asyncio.get_running_loop()
        if cfg.antivirus.enabled:
            jobs["av"] = loop.create_task(self._scan(cfg, content()))
        if self.spam_checked(cfg, size, trusted):
            jobs["spam"] = loop.create_task(self._check(cfg, whole))
        scanned = Scanned()
        for key, task in jobs.items():
            try:
                setattr(scanned, key, await task)
            except ScannerError as exc:
                setattr(scanned, key, exc)
            except Exception as exc:  # a bug of ours: the message is not lost, the client retries
                log.exception("content filter failed")
                setattr(scanned, key, ScannerError(f"internal error: {type(exc).__name__}"))
        return decide(scanned, cfg.antivirus, cfg.antispam)

    async def _scan(self, cfg: Config, chunks: AsyncIterator[bytes]) -> AvResult:
        n = cfg.advanced.threads.antivirus
        if self._av_slots is None or n != self._av_slots_n:
            self._av_slots, self._av_slots_n = asyncio.Semaphore(n), n
        async with self._av_slots:
            return await clamd_scan(cfg.antivirus.clamd.address, chunks, cfg.antivirus.clamd.timeout)

    async def _check(self, cfg: Config, whole: Callable[[], Awaitable[bytes]]) -> SpamResult:
        message = await whole()
        return await spamd_check(cfg.antispam.spamd.address, message, cfg.antispam.spamd.timeout)

"""The antispam filter: spamd's score against the tag and kill levels.

DESCRIPTION
    The message goes to spamd (SYMBOLS, filters/scanners.py) when it is at most
    antispam.spamd.max_size (larger ones pass unchecked, as spamc does), and mail from
    trusted clients (mynetworks, authenticated) only with antispam.check_outbound.

    Levels: antispam.{delivery,blocking}_tolerance: low | medium | high (20/33/50 % and
    66/75/90 %), a percentage of 20 points ("40%" = 8.0), or a score (6.6). Logs and the
    decision trail show the score both as points and as a percentage of 20 (Carbonio's panel
    speaks in percent), and keep spamd's rule names.

    `antispam_outcome` is the pure decision:
      spam at the kill level   antispam.blocked_spam_action: reject -> REJECT 550 5.7.1,
                               discard -> DISCARD; deliver -> tagged as below
      spam at the tag level    X-Spam-Flag: YES and the subject tag
      spamd failed             antispam.on_error: tempfail -> 451 4.7.1 | accept (untagged)
      otherwise                no objection; every message spamd checked gets X-Spam-Score,
                               X-Spam-Level and X-Spam-Status (Amavis in Carbonio does so)

SECURITY
    Rule names come from spamd; sanitized before they reach a header or a log.

CONFIG
    antispam.*
"""

from __future__ import annotations

from ..config import AntispamConfig, Config
from ..logutil import sanitize, sanitize_ascii
from ..model import SPAM_REJECTED, Decision, Verdict
from .chain import Filter, Item, Outcome, Step
from .scanners import ScannerError, SpamResult, spamd_check

TOLERANCE_TAG = {"low": 20.0, "medium": 33.0, "high": 50.0}  # percent of 20 points
TOLERANCE_KILL = {"low": 66.0, "medium": 75.0, "high": 90.0}
FULL_SCORE = 20.0  # 100 %


def level(value: str | float, table: dict[str, float]) -> float:
    if isinstance(value, (int, float)):
        return float(value)
    if value in table:
        return round(table[value] * FULL_SCORE / 100, 1)
    return round(float(value.rstrip("%")) * FULL_SCORE / 100, 1)


def spam_levels(cfg: AntispamConfig) -> tuple[float, float]:
    """(tag level, kill level) in SpamAssassin points."""
    return level(cfg.delivery_tolerance, TOLERANCE_TAG), level(cfg.blocking_tolerance, TOLERANCE_KILL)


def percent(score: float) -> str:
    return f"{score * 100 / FULL_SCORE:.0f}%"


def spam_headers(result: SpamResult, tag: float, flagged: bool) -> tuple[tuple[str, str], ...]:
    stars = "*" * max(0, min(50, int(result.score)))
    status = f"{'Yes' if flagged else 'No'}, score={result.score:.1f} required={tag:.1f} tests=[{', '.join(result.tests)}]"
    out = [("X-Spam-Flag", "YES")] if flagged else []
    out += [("X-Spam-Score", f"{result.score:.1f}"), ("X-Spam-Level", stars), ("X-Spam-Status", status)]
    return tuple((k, sanitize_ascii(v, 900)) for k, v in out)  # header fields: ASCII


def antispam_outcome(spam: SpamResult, cfg: AntispamConfig) -> Outcome:
    tag, kill = spam_levels(cfg)
    score = spam.score
    rules = sanitize(",".join(spam.tests), 500)
    levels = f"score {score:.1f} ({percent(score)}), tag {tag:.1f} ({percent(tag)}), kill {kill:.1f} ({percent(kill)})"
    if score >= kill and cfg.blocked_spam_action != "deliver":
        step = Step("antispam", "spam", rules, score)
        if cfg.blocked_spam_action == "reject":
            return Outcome(Verdict(Decision.REJECT, SPAM_REJECTED, f"spam: {levels}"), step)
        return Outcome(Verdict(Decision.DISCARD, reason=f"spam: {levels}"), step)
    flagged = score >= tag
    verdict = Verdict(
        Decision.CONTINUE,
        reason=f"spam tagged: {levels}" if flagged else "",
        headers=spam_headers(spam, tag, flagged),
        subject_tag=cfg.subject_tag if flagged else "",
    )
    return Outcome(verdict, Step("antispam", "tagged" if flagged else "ham", rules, score))


class AntispamFilter(Filter):
    name = "antispam"

    def __init__(self, cfg: Config) -> None:
        self.cfg = cfg.antispam
        self.on_error = cfg.antispam.on_error

    def wanted(self, item: Item) -> bool:
        sa = self.cfg
        return item.size <= sa.spamd.max_size and (sa.check_outbound or not item.trusted)

    async def run(self, item: Item) -> Outcome:
        try:
            result = await spamd_check(self.cfg.spamd.address, await item.whole(), self.cfg.spamd.timeout)
        except ScannerError as exc:
            return self.failed("error", str(exc), 0.0)
        return antispam_outcome(result, self.cfg)

"""What a postscreen test outcome makes the session do, and every reply postscreen sends.

DESCRIPTION
    `decide(check, action, ...)` maps a failed check and its configured action to a
    `Judgement` (Postfix postscreen_*_action, SPEC 2.2 and 8.6):

        drop     Step.DROP      send the 521 reply now and close
        enforce  Step.ENFORCE   let the other tests finish; then answer every RCPT with
                                the 550 reply (and log helo/sender/recipient); no mail,
                                no cache pass in this session
        ignore   Step.CONTINUE  go on as if nothing happened. Before-220 checks (denylist,
                                pregreet, DNSBL) are repeated at the next connection; a
                                deep check counts as passed for `ignore_ttl` (psc_min_ttl),
                                so it is not repeated before another result expires

    Replies by check (drop / enforce):
        denylist                   521 / 550 5.3.2 Service currently unavailable
        pregreet                   521 / 550 5.5.1 Protocol error
        DNSBL                      521 / 550 5.7.1 Service unavailable; client [ip] blocked using <zone>
        pipelining, bare newline   521 / 550 5.5.1 Protocol error
        non-SMTP command           521 5.7.0 Error: I can break rules, too. Goodbye. / 550 5.5.1 Protocol error

    `Screening` is the record of one session's screening, updated by returning new values
    (`passed`, `judged`, `skip`); `conclude` turns it into the `Conclusion`: serve the client,
    enforce, drop, or (deep_tests_require_reconnect) 450 at RCPT so that it reconnects;
    the "PASS NEW"/"PASS OLD" log word; and the cache record to write, if any (only when
    some test passed and none failed: a failure clears every pass, Postfix psc_conclude).

SECURITY
    Pure. The client IP in the DNSBL text is the socket's, the zone the administrator's.

CONFIG
    postscreen.{blacklist_action,greet.action,dnsbl.action,dnsbl.threshold,
    dnsbl.whitelist_threshold,*.action,deep_tests_require_reconnect}
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, replace
from enum import Enum
from typing import assert_never

from ..config import PostscreenConfig
from ..model import Reply
from .checks import DEEP, Action, Check, action_of, ignore_ttl
from .stamps import Stamps, record_passes

# The reply catalogue (SPEC 8.6): situations that are not a check's failure.
TOO_MANY_CONNECTIONS = Reply(421, "4.7.0", "Error: too many connections")
SERVER_PORTS_BUSY = Reply(421, "4.3.2", "All server ports are busy")
SCREENING_PORTS_BUSY = Reply(421, "4.3.2", "All screening ports are busy")
NO_SYSTEM_RESOURCES = Reply(421, "4.3.2", "No system resources")
RCPT_TEMPFAIL = Reply(450, "4.3.2", "Service currently unavailable")  # passed deep tests: come back
FINAL_TEMPFAIL = Reply(421, "4.3.2", "Service currently unavailable")  # NOFORWARD session ends

_UNAVAILABLE = "Service currently unavailable"
_PROTOCOL_ERROR = "Protocol error"


def drop_reply(check: Check, *, client_ip: str = "", dnsbl_zone: str | None = None) -> Reply:
    match check:
        case Check.DENYLIST:
            return Reply(521, "5.3.2", _UNAVAILABLE)
        case Check.DNSBL:
            return Reply(521, "5.7.1", _dnsbl_text(client_ip, dnsbl_zone))
        case Check.NON_SMTP:
            return Reply(521, "5.7.0", "Error: I can break rules, too. Goodbye.")
        case Check.PREGREET | Check.PIPELINING | Check.BARE_NEWLINE:
            return Reply(521, "5.5.1", _PROTOCOL_ERROR)
        case _:
            assert_never(check)


def enforce_reply(check: Check, *, client_ip: str = "", dnsbl_zone: str | None = None) -> Reply:
    match check:
        case Check.DENYLIST:
            return Reply(550, "5.3.2", _UNAVAILABLE)
        case Check.DNSBL:
            return Reply(550, "5.7.1", _dnsbl_text(client_ip, dnsbl_zone))
        case Check.PREGREET | Check.PIPELINING | Check.BARE_NEWLINE | Check.NON_SMTP:
            return Reply(550, "5.5.1", _PROTOCOL_ERROR)
        case _:
            assert_never(check)


def _dnsbl_text(client_ip: str, zone: str | None) -> str:
    if not client_ip or not zone:
        raise ValueError("the DNSBL reply names the client IP and the zone")
    return f"Service unavailable; client [{client_ip}] blocked using {zone}"


class Step(str, Enum):
    CONTINUE = "continue"  # ignore: carry on
    ENFORCE = "enforce"  # carry on, answer every RCPT with the judgement's reply, accept nothing
    DROP = "drop"  # send the judgement's reply and close now


@dataclass(frozen=True, slots=True, kw_only=True)
class Judgement:
    """What one failed check makes the session do (not a model.Verdict: postscreen's own step)."""

    check: Check
    action: Action
    step: Step
    reply: Reply | None  # DROP: the 521 to send now; ENFORCE: the 550 for every RCPT
    ignore_ttl: float | None = None  # ignored deep check: counts as passed for this long

    @property
    def failed(self) -> bool:
        """A failure of the session: no cache pass is written (ignore is not one)."""
        return self.step is not Step.CONTINUE


def decide(check: Check, action: Action, *, client_ip: str = "", dnsbl_zone: str | None = None, ignore_ttl: float = 0.0) -> Judgement:
    """The judgement of `check` having failed under `action`."""
    match action:
        case Action.DROP:
            return Judgement(check=check, action=action, step=Step.DROP, reply=drop_reply(check, client_ip=client_ip, dnsbl_zone=dnsbl_zone))
        case Action.ENFORCE:
            return Judgement(check=check, action=action, step=Step.ENFORCE, reply=enforce_reply(check, client_ip=client_ip, dnsbl_zone=dnsbl_zone))
        case Action.IGNORE:
            return Judgement(check=check, action=action, step=Step.CONTINUE, reply=None, ignore_ttl=ignore_ttl if check in DEEP else None)
        case _:
            assert_never(action)


def on_failure(check: Check, cfg: PostscreenConfig, *, client_ip: str, dnsbl_zone: str | None = None) -> Judgement:
    """`decide` with the action and psc_min_ttl that the configuration gives."""
    return decide(check, action_of(check, cfg), client_ip=client_ip, dnsbl_zone=dnsbl_zone, ignore_ttl=ignore_ttl(cfg))


def dnsbl_failed(score: int, threshold: int) -> bool:
    """postscreen_dnsbl_threshold is an inclusive lower bound."""
    return score >= threshold


def dnsbl_allowlisted(score: int, *, threshold: int, allowlist_threshold: int, any_failed: bool) -> bool:
    """DNSWL allowlisting (psc_allowlist_non_dnsbl): every other test counts as passed."""
    return not any_failed and score < threshold and allowlist_threshold < 0 and score <= allowlist_threshold


# ---------------------------------------------------------------------------------------------
# One session's screening, and its conclusion.


class Outcome(str, Enum):
    SERVE = "serve"  # the real SMTP session goes on (or starts, with the final 220 line)
    ENFORCE = "enforce"  # NOFORWARD: every RCPT gets `reply`; the session ends with FINAL_TEMPFAIL
    RECONNECT = "reconnect"  # deep tests passed, Postfix style: every RCPT gets 450 4.3.2
    DROP = "drop"  # `reply` was the last word; the connection is closed


@dataclass(frozen=True, slots=True, kw_only=True)
class Screening:
    """What happened so far to one client's tests. `due`: the tests run in this session."""

    client_ip: str
    due: frozenset[Check]
    new: bool  # the cache record had a NEW stamp (or there was none): passing logs PASS NEW
    passes: tuple[tuple[Check, int], ...] = ()  # (check, expiry) in the order they passed
    judgements: tuple[Judgement, ...] = ()
    skipped: frozenset[Check] = frozenset()  # passed without being run (DNSWL allowlisting)

    def passed(self, check: Check, expiry: float) -> Screening:
        return replace(self, passes=self.passes + ((check, int(expiry)),))

    def skip(self, check: Check, expiry: float) -> Screening:
        """Count `check` as passed without running it (psc_allowlist_non_dnsbl)."""
        return replace(self.passed(check, expiry), skipped=self.skipped | {check})

    def judged(self, judgement: Judgement, now: float) -> Screening:
        """Record a failure's judgement. An ignored deep check counts as passed until
        now + psc_min_ttl (Postfix "unfail"); an ignored before-220 check is just noted."""
        out = replace(self, judgements=self.judgements + (judgement,))
        if judgement.step is Step.CONTINUE and judgement.ignore_ttl is not None:
            out = out.passed(judgement.check, now + judgement.ignore_ttl)
        return out

    @property
    def any_failed(self) -> bool:
        return any(j.failed for j in self.judgements)

    @property
    def passed_checks(self) -> dict[Check, int]:
        return dict(self.passes)

    @property
    def rcpt_reply(self) -> Reply | None:
        """The reply to every RCPT of an enforced session: the last enforce wins (Postfix)."""
        enforced = [j.reply for j in self.judgements if j.step is Step.ENFORCE]
        return enforced[-1] if enforced else None


@dataclass(frozen=True, slots=True, kw_only=True)
class Conclusion:
    outcome: Outcome
    reply: Reply | None  # DROP: the reply sent; ENFORCE / RECONNECT: the reply to every RCPT
    pass_log: str | None  # "PASS NEW" / "PASS OLD" when every due test passed, else None
    cache: Stamps | None  # the record to write, or None: leave the cache alone


def conclude(screening: Screening, *, stamps: Stamps, enabled: Iterable[Check], require_reconnect: bool) -> Conclusion:
    """The end of screening (psc_conclude). `stamps`: the record read at connect (or NEW),
    after `allowlist_non_dnsbl` when the client was DNSWL-allowlisted."""
    dropped = next((j for j in screening.judgements if j.step is Step.DROP), None)
    if dropped is not None:
        return Conclusion(outcome=Outcome.DROP, reply=dropped.reply, pass_log=None, cache=None)
    if screening.any_failed:
        return Conclusion(outcome=Outcome.ENFORCE, reply=screening.rcpt_reply, pass_log=None, cache=None)
    passed = screening.passed_checks
    pass_log = None
    if passed and screening.due <= passed.keys():
        pass_log = "PASS NEW" if screening.new else "PASS OLD"
    cache = record_passes(stamps, passed, enabled) if passed else None
    if require_reconnect and (screening.due & DEEP) - screening.skipped:  # the dialogue was screened
        return Conclusion(outcome=Outcome.RECONNECT, reply=RCPT_TEMPFAIL, pass_log=pass_log, cache=cache)
    return Conclusion(outcome=Outcome.SERVE, reply=None, pass_log=pass_log, cache=cache)


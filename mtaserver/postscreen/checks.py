"""The postscreen vocabulary: the checks, the three actions, and what the config says of each.

DESCRIPTION
    `Check` names every postscreen test: the denylist (a `reject` entry of the access list),
    the two before-220 tests (pregreet, DNSBL) and the three deep tests (pipelining,
    non-SMTP command, bare newline). `CACHED` is the order of the five expiry stamps of a
    cache record (Postfix `psc_print_tests`); the denylist has no stamp.

    A check is enabled (Postfix `PSC_*_TEST_ENABLE`) when:
        pregreet      postscreen.greet.banner is not empty
        dnsbl         postscreen.dnsbl.sites is not empty
        deep tests    postscreen.<test>.enable is true
    A disabled check is never "to do".

    Pass TTLs: pregreet greet.ttl, DNSBL the DNS-derived TTL (dnsbl.py), deep tests their
    ttl. `ignore_ttl` is Postfix's psc_min_ttl: an "ignore"d deep-test failure counts as a
    pass for that long, so the test is not repeated before another result expires.

SECURITY
    Pure; reads only the validated configuration.

CONFIG
    postscreen.blacklist_action, postscreen.greet.*, postscreen.dnsbl.{sites,action,min_ttl},
    postscreen.{pipelining,non_smtp_command,bare_newline}.{enable,action,ttl}
"""

from __future__ import annotations

from enum import Enum
from typing import assert_never

from ..config import PostscreenConfig


class Action(str, Enum):
    """What a failed check does (postscreen_*_action)."""

    IGNORE = "ignore"  # log; before-220: repeat next time; deep: pass for ignore_ttl
    ENFORCE = "enforce"  # let other tests finish, then 550 at every RCPT
    DROP = "drop"  # 521 and close now


class Check(str, Enum):
    DENYLIST = "denylist"
    PREGREET = "pregreet"
    DNSBL = "dnsbl"
    PIPELINING = "pipelining"
    NON_SMTP = "non_smtp"
    BARE_NEWLINE = "bare_newline"


# The order of the stamps in a cache record: "pregreet;dnsbl;pipelining;non_smtp;bare_newline".
CACHED: tuple[Check, ...] = (Check.PREGREET, Check.DNSBL, Check.PIPELINING, Check.NON_SMTP, Check.BARE_NEWLINE)
EARLY = frozenset({Check.DENYLIST, Check.PREGREET, Check.DNSBL})  # decided before the 220 greeting
DEEP = frozenset({Check.PIPELINING, Check.NON_SMTP, Check.BARE_NEWLINE})  # watched in the SMTP dialogue


def action_of(check: Check, cfg: PostscreenConfig) -> Action:
    match check:
        case Check.DENYLIST:
            return Action(cfg.blacklist_action)
        case Check.PREGREET:
            return Action(cfg.greet.action)
        case Check.DNSBL:
            return Action(cfg.dnsbl.action)
        case Check.PIPELINING:
            return Action(cfg.pipelining.action)
        case Check.NON_SMTP:
            return Action(cfg.non_smtp_command.action)
        case Check.BARE_NEWLINE:
            return Action(cfg.bare_newline.action)
        case _:
            assert_never(check)


def enabled_checks(cfg: PostscreenConfig) -> frozenset[Check]:
    """The cached checks this configuration runs (the denylist is not a cached check)."""
    on = {
        Check.PREGREET: cfg.greet.banner != "",
        Check.DNSBL: bool(cfg.dnsbl.sites),
        Check.PIPELINING: cfg.pipelining.enable,
        Check.NON_SMTP: cfg.non_smtp_command.enable,
        Check.BARE_NEWLINE: cfg.bare_newline.enable,
    }
    return frozenset(c for c, enabled in on.items() if enabled)


def pass_ttl(check: Check, cfg: PostscreenConfig, *, dnsbl_ttl: float | None = None) -> float:
    """Seconds a pass of `check` is remembered. The DNSBL TTL comes from the DNS answers."""
    match check:
        case Check.PREGREET:
            return cfg.greet.ttl
        case Check.DNSBL:
            if dnsbl_ttl is None:
                raise ValueError("the DNSBL pass TTL comes from the DNS answers (dnsbl.DnsblResult.ttl)")
            return dnsbl_ttl
        case Check.PIPELINING:
            return cfg.pipelining.ttl
        case Check.NON_SMTP:
            return cfg.non_smtp_command.ttl
        case Check.BARE_NEWLINE:
            return cfg.bare_newline.ttl
        case Check.DENYLIST:
            raise ValueError("the denylist is never passed, only matched")
        case _:
            assert_never(check)


def ignore_ttl(cfg: PostscreenConfig) -> float:
    """Postfix psc_min_ttl: how long an ignored deep-test failure counts as a pass."""
    return min(cfg.greet.ttl, cfg.dnsbl.min_ttl, cfg.pipelining.ttl, cfg.non_smtp_command.ttl, cfg.bare_newline.ttl)

"""When to try a deferred message again, and when to give up. Pure: time is an argument.

DESCRIPTION
    Postfix's rule (qmgr_active.c): after an attempt that leaves recipients deferred, the
    next attempt is `now + clamp(age, min_backoff, max_backoff)`, so the interval doubles
    with the message's age until it reaches max_backoff. A little jitter (up to 10% of the
    delay) keeps a burst of mail deferred together from retrying together. A next-attempt
    time read back from disk is clamped to now + max_backoff (clamp_due): a clock stepped
    back must not hold mail for the size of the step.

CONFIG
    queue.min_backoff, queue.max_backoff, queue.max_lifetime, queue.bounce_lifetime,
    queue.delay_warning
"""

from __future__ import annotations

JITTER = 0.1  # at most this fraction of the delay is added


def next_attempt(*, arrival: float, now: float, min_backoff: float, max_backoff: float, jitter: float = 0.0) -> float:
    """`jitter` in [0, 1): the fraction of the delay to add (the caller draws it)."""
    age = max(0.0, now - arrival)
    delay = min(max(age, min_backoff), max_backoff)
    return now + delay * (1.0 + JITTER * jitter)


def clamp_due(due: float, *, now: float, max_backoff: float) -> float:
    """A persisted next-attempt time read back: never more than max_backoff ahead of `now`
    (the clock was stepped back since it was written; otherwise the message would wait for
    the whole step). A time within next_attempt's own reach (max_backoff plus its jitter) is
    kept as it is."""
    return due if due <= now + max_backoff * (1.0 + JITTER) else now + max_backoff


def expired(*, arrival: float, now: float, null_sender: bool, max_lifetime: float, bounce_lifetime: float) -> bool:
    """A message still deferred after its lifetime is returned to the sender.

    Bounces (null sender) use bounce_lifetime, capped at max_lifetime (Postfix).
    A lifetime of 0 means "try once".
    """
    lifetime = min(bounce_lifetime, max_lifetime) if null_sender else max_lifetime
    return now >= arrival + lifetime


def delay_warning_due(*, arrival: float, now: float, delay_warning: float, already_warned: bool) -> bool:
    return bool(delay_warning) and not already_warned and now >= arrival + delay_warning

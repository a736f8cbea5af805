"""The receive pipeline: stage hooks and their runner.

DESCRIPTION
    A session passes through stages; at each one the hooks registered for it run in order
    and each returns a `model.Verdict`:

        CONNECT       before the greeting (postscreen, connection rate)
        HELO          HELO/EHLO
        AUTH          after a successful AUTH exchange (not yet used by a built-in hook)
        MAIL          MAIL FROM (the queue space check is the session's own)
        RCPT          RCPT TO (postscreen's conclusion, relay control, the policy checks)
        DATA_END      the message is spooled, not yet committed (content filters, headers)
        AFTER_COMMIT  the message is queued (notifications, counters); verdicts ignored

    The first verdict that is not CONTINUE ends the stage: its reply is sent (REJECT,
    TEMPFAIL), or the command succeeds without the later hooks (ACCEPT: so a RCPT hook
    placed before relay control must never return it). At CONNECT,
    DISCARD ends the session without a reply (the hook closed the connection itself). HOLD at
    MAIL, RCPT or DATA_END lets the transaction go on and commits its message into hold/,
    where nothing is delivered until an administrator releases it (Postfix's HOLD action).
    Headers and subject tags of the CONTINUE verdicts of DATA_END are gathered into the
    stage's result. A hook gets a
    `Context`: read-only views of the session (`SessionView`) and the transaction
    (`TxView`), the recipient at RCPT, the spooled message at DATA_END, a per-session
    scratch dict (`state`, keyed by hook name) and the connection's narrow interface
    (`Connection`: teaser, peek, wait for input, close). It never touches the socket or
    the session's members.

    `run_stage` applies each hook's time budget (`Hook.timeout`; None = the hook bounds
    itself, as postscreen's greet wait does) and its `on_error`: a hook that raises or
    overruns gives `on_error` (by default a 451 4.3.0 tempfail: a broken check never
    accepts mail it should have judged), and the failure is logged.

    `Pipeline` is built by app.py from config slices (`build_pipeline`): a reload builds a
    new one from the new config, reusing every hook whose slice did not change, so caches
    and counters survive (`Hook.slice` says which part of the config a hook depends on).

SECURITY
    Hooks see client data (HELO, addresses) verbatim; whoever logs it sanitizes it.

CONFIG
    none directly: each hook names its own slice.
"""

from __future__ import annotations

import asyncio
import enum
import logging
from collections.abc import Awaitable, Sequence
from dataclasses import dataclass, field, replace
from typing import Any, Protocol

from .address import Mailbox
from .logutil import sanitize
from .model import CONTINUE, TEMPFAIL_INTERNAL, Decision, Reply, Verdict

log = logging.getLogger("smtpd")

HOOK_ERROR = Verdict(Decision.TEMPFAIL, TEMPFAIL_INTERNAL, "hook failed")


class Stage(str, enum.Enum):
    CONNECT = "connect"
    HELO = "helo"
    AUTH = "auth"
    MAIL = "mail"
    RCPT = "rcpt"
    DATA_END = "data-end"
    AFTER_COMMIT = "after-commit"


@dataclass(frozen=True, slots=True)
class SessionView:
    """What a hook may know of the session."""

    listener: str
    ip: str
    port: int
    name: str = "unknown"  # the verified client name (reverse lookup, forward-confirmed)
    helo: str | None = None
    esmtp: bool = False
    tls: bool = False
    login: str | None = None  # the authenticated login
    mynetworks: bool = False
    log_port: bool = False  # advanced.log_client_port: labels end in ":port"

    @property
    def trusted(self) -> bool:
        """mynetworks or authenticated: "originating" mail."""
        return self.mynetworks or self.login is not None

    @property
    def label(self) -> str:
        return self.label_as(self.name)

    def label_as(self, name: str) -> str:
        """The client as every log line names it: "name[ip]" (":port" after it when configured)."""
        return f"{name}[{self.ip}]:{self.port}" if self.log_port else f"{name}[{self.ip}]"

    @property
    def proto(self) -> str:
        return "ESMTP" if self.esmtp else "SMTP"


class TxView:
    """The transaction as a hook sees it: the sender, MAIL's parameters, the recipients
    accepted so far (a tuple made when asked for: most hooks never ask)."""

    __slots__ = ("sender", "params", "_recipients")

    def __init__(self, sender: Mailbox, params: dict[str, str | None], recipients: Sequence[Mailbox] = ()) -> None:
        self.sender = sender
        self.params = params
        self._recipients = recipients

    @property
    def recipients(self) -> tuple[Mailbox, ...]:
        return tuple(self._recipients)


class Connection(Protocol):
    """The narrow interface hooks get to the connection."""

    sessions: int  # sessions of this listener in this worker now (postscreen's stress mode)

    def teaser(self, text: str) -> None:
        """Write a line ahead of the greeting (postscreen's "220-" line)."""

    def peek(self, n: int) -> bytes:
        """Up to n bytes the client sent that nobody has read yet (they stay unread)."""

    def pending_input(self) -> int: ...

    async def wait_input(self) -> bool:
        """Wait until input is pending; False when the client closed the connection."""

    def close(self, reply: Reply | None) -> None:
        """Send what is pending and `reply` (without the server's name added), then close."""

    def watch(self, active: bool, hide_pipelining: bool) -> None:
        """postscreen's deep tests: report bare newlines, non-SMTP verbs and pipelining
        (`Observe` events) while `active`; do not offer PIPELINING while `hide_pipelining`."""

    @property
    def hostname(self) -> str: ...

    @property
    def sockname(self) -> tuple[str, int]: ...


@dataclass(slots=True)
class Context:
    session: SessionView
    conn: Connection
    tx: TxView | None = None
    rcpt: Mailbox | None = None
    message: Any = None  # DATA_END: the spooled message (smtp.protocol.Message)
    state: dict[str, Any] = field(default_factory=dict)


class Hook:
    """A stage hook. Subclasses set `name`, `stages` and implement `run`."""

    name = "hook"
    stages: frozenset[Stage] = frozenset()
    timeout: float | None = None
    on_error: Verdict = HOOK_ERROR

    def run(self, stage: Stage, ctx: Context) -> Verdict | Awaitable[Verdict]:
        raise NotImplementedError

    def end(self, ctx: Context) -> None:
        """The session is over (called for every hook when any hook kept `state` for it)."""


class Pipeline:
    """The hooks of each stage, in order."""

    def __init__(self, hooks: Sequence[Hook]) -> None:
        self.hooks = tuple(hooks)
        self.by_stage: dict[Stage, tuple[Hook, ...]] = {
            stage: tuple(h for h in self.hooks if stage in h.stages) for stage in Stage
        }

    def has(self, stage: Stage) -> bool:
        return bool(self.by_stage[stage])

    def get(self, name: str) -> Hook | None:
        return next((h for h in self.hooks if h.name == name), None)


async def run_stage(pipeline: Pipeline, stage: Stage, ctx: Context) -> Verdict:
    """Run the hooks of `stage` in order; the first final verdict wins."""
    headers: tuple[tuple[str, str], ...] = ()
    tag = ""
    reasons: list[str] = []
    for hook in pipeline.by_stage[stage]:
        verdict = await run_hook(hook, stage, ctx)
        if verdict.decision is not Decision.CONTINUE:
            if headers and verdict.decision in (Decision.ACCEPT, Decision.HOLD):
                return replace(verdict, headers=headers + verdict.headers, subject_tag=verdict.subject_tag or tag)
            return verdict
        if verdict.headers or verdict.subject_tag or verdict.reason:
            headers += verdict.headers
            tag = tag or verdict.subject_tag
            if verdict.reason:
                reasons.append(verdict.reason)
    if headers or tag or reasons:
        return Verdict(Decision.CONTINUE, None, "; ".join(reasons), headers, tag)
    return CONTINUE


async def run_hook(hook: Hook, stage: Stage, ctx: Context) -> Verdict:
    try:
        result = hook.run(stage, ctx)
        if isinstance(result, Verdict):
            return result
        if hook.timeout is None:
            return await result
        async with asyncio.timeout(hook.timeout):
            return await result
    except asyncio.CancelledError:
        raise
    except TimeoutError:
        log.warning("%s: %s hook timed out after %.1fs for %s", stage.value, hook.name, hook.timeout or 0, ctx.session.label)
        return hook.on_error
    except Exception as exc:  # a bug in one hook costs one command, never the session
        log.exception("%s: %s hook failed for %s: %s", stage.value, hook.name, ctx.session.label, sanitize(str(exc), 200))
        return hook.on_error

"""The inbound policy as stage hooks: the client name lookup and the RCPT restrictions.

DESCRIPTION
    `build(cfg, resolver, previous)` makes the `Policy` of one runtime: the mailboxes table
    (domains.mailboxes, read again at every build, so SIGHUP reloads it), the sender-owner
    table for the login mismatch check, and the hooks.

    The client's name (Postfix smtpd_peername_lookup): `session_started` starts the reverse
    lookup and its forward confirmation (lookups.client_name) right after the greeting is
    sent, so it never delays the 220. When it completes, the session's name becomes the
    verified name, or "unknown": every later log line (`name[ip]`) and the Received: header
    carry it. The RCPT hook waits for it only when a check needs it, and never longer than
    the DNS timeout; DNS trouble gives "unknown", never a stall.

    `RcptHook`, at RCPT: the facts of the request (restrictions.RcptFacts), the DNS facts the
    decision needs (restrictions.needed; HELO and sender-domain answers are kept for the
    session, so a message to 50 recipients asks once), then restrictions.decide. A refusal
    is logged as Postfix does: "NOQUEUE: reject: RCPT from name[ip]: <reply>; from=<s>
    to=<r> proto=ESMTP helo=<h>".

    Owners of sender addresses (reject_sender_login_mismatch): with auth.backend file, the
    users file's `addresses`, looked up case-folded as Postfix's smtpd_sender_login_maps
    are (restrictions.owners_table: ALICE@ is as much alice's as alice@); with dovecot
    (which has no such table), a login owns the address equal to it, and every address of
    a local domain that the mailboxes table lists (or every local address, with no table)
    is owned by its own login. So an outsider cannot use one of our addresses without
    logging in, as with the file backend.

SECURITY
    This is what keeps the server from being an open relay (restrictions.py decides).

CONFIG
    inbound.*, domains.{local,relay,mailboxes}, outbound.mynetworks, server.peername_lookup,
    server.dns.timeout, auth.backend
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Collection
from dataclasses import replace
from typing import TYPE_CHECKING, Any

from ..config import Config, Listener, resolve_path
from ..dns import Resolver
from ..logutil import sanitize
from ..model import CONTINUE, Verdict
from ..pipeline import Context, Hook, Stage
from ..values import domain_matches
from . import lookups
from .mailboxes import Mailboxes, load_mailboxes
from .restrictions import ClientName, ClientNameStatus, Need, Owners, RcptFacts, decide, needed, owners_table

if TYPE_CHECKING:
    from ..smtp.protocol import Session

log = logging.getLogger("smtpd")

NAME_TASK = "client-name"
SESSION_CACHE = 64  # DNS answers (HELO name, sender domains) a session keeps


class Policy:
    def __init__(self, cfg: Config, resolver: Resolver, mailboxes: Mailboxes | None, owners: Owners | None) -> None:
        self.cfg = cfg
        self.resolver = resolver
        self.mailboxes = mailboxes
        self.owners = owners
        self.timeout = cfg.server.dns.timeout
        pc = cfg.inbound.protocol_checks
        self.dns_checks = (
            pc.reject_unknown_client_hostname or pc.reject_unknown_reverse_client_hostname
            or pc.reject_unknown_helo_hostname or pc.reject_unknown_sender_domain
        )  # fmt: skip
        self.rcpt_hook = RcptHook(self)

    def hooks(self, listener: Listener) -> list[Hook]:
        return [self.rcpt_hook]

    def session_started(self, session: Session) -> None:
        if not self.cfg.server.peername_lookup or session.ctx is None:
            return
        listed = lookups.hosts_name(session.peer_ip)
        if listed is not None:  # /etc/hosts answers at once (127.0.0.1 is localhost): no task, no DNS
            session.client_name = listed
            session.ctx.state[NAME_TASK] = ClientName(ClientNameStatus.VERIFIED, listed)
            return
        task = asyncio.get_running_loop().create_task(lookups.client_name(self.resolver, session.peer_ip, timeout=self.timeout))
        session.ctx.state[NAME_TASK] = task

        def done(t: asyncio.Task[ClientName]) -> None:
            if not t.cancelled() and t.exception() is None:
                session.client_name = t.result().name
            elif not t.cancelled():
                log.warning("client name lookup failed for [%s]: %s", session.peer_ip, t.exception())

        task.add_done_callback(done)


def known_client_name(ctx: Context) -> ClientName | None:
    """The client name if its lookup is over (None while it runs, or when it failed)."""
    found = ctx.state.get(NAME_TASK)
    if isinstance(found, ClientName):
        return found
    if found is not None and found.done() and not found.cancelled() and found.exception() is None:
        return found.result()
    return None


async def client_name(policy: Policy, ctx: Context) -> ClientName | None:
    """The lookup started at connect, waited for within the DNS timeout."""
    task: asyncio.Task[ClientName] | ClientName | None = ctx.state.get(NAME_TASK)
    if isinstance(task, ClientName):
        return task
    if task is None:
        return await lookups.client_name(policy.resolver, ctx.session.ip, timeout=policy.timeout)
    if not task.done():
        try:
            await asyncio.wait_for(asyncio.shield(task), policy.timeout)
        except TimeoutError:
            return None
    if task.cancelled() or task.exception() is not None:
        return None
    return task.result()


class RcptHook(Hook):
    name = "policy"
    stages = frozenset({Stage.RCPT})

    def __init__(self, policy: Policy) -> None:
        self.policy = policy

    def run(self, stage: Stage, ctx: Context) -> Verdict | Awaitable[Verdict]:
        """Synchronous when no DNS fact is wanted (a trusted client, or no DNS check on): the
        common case costs no coroutine; otherwise the lookups, then the decision."""
        p = self.policy
        cfg = p.cfg
        s = ctx.session
        assert ctx.tx is not None and ctx.rcpt is not None
        cache: dict[str, Any] | None = ctx.state.get(self.name)
        facts = RcptFacts(
            client_ip=s.ip, helo=s.helo, sender=ctx.tx.sender, recipient=ctx.rcpt, login=s.login,
            mynetworks=s.mynetworks, local_domains=cfg.domains.local, relay_domains=cfg.domains.relay,
            mailboxes=p.mailboxes, owners=p.owners,
            client_name=known_client_name(ctx),
            helo_host=cache.get(f"helo {s.helo}") if cache else None,
            sender_domain=cache.get(f"domain {ctx.tx.sender.domain_key}") if cache else None,
        )  # fmt: skip
        # Only the protocol checks want DNS facts, and only for clients they judge.
        needs = needed(facts, cfg.inbound) if p.dns_checks and not s.trusted else frozenset()
        if needs:
            return self._looked_up(ctx, facts, needs)
        return self._decided(ctx, facts)

    async def _looked_up(self, ctx: Context, facts: RcptFacts, needs: frozenset[Need]) -> Verdict:
        p = self.policy
        s = ctx.session
        assert ctx.tx is not None
        cache: dict[str, Any] = ctx.state.setdefault(self.name, {})
        if Need.CLIENT_NAME in needs:
            facts = replace(facts, client_name=await client_name(p, ctx))
            needs = needs - {Need.CLIENT_NAME}
        if needs:
            facts = await lookups.resolve(p.resolver, facts, needs, timeout=p.timeout)
        if len(cache) >= SESSION_CACHE:
            cache.clear()  # a client trying one sender domain after another: answers are kept per session, bounded
        if facts.helo_host is not None:
            cache[f"helo {s.helo}"] = facts.helo_host
        if facts.sender_domain is not None:
            cache[f"domain {ctx.tx.sender.domain_key}"] = facts.sender_domain
        return self._decided(ctx, facts)

    def _decided(self, ctx: Context, facts: RcptFacts) -> Verdict:
        s = ctx.session
        assert ctx.tx is not None
        verdict = decide(facts, self.policy.cfg.inbound)
        if verdict.reply is not None and verdict.reply.is_error:
            # the view was taken before this hook waited for the client name: log the name it got
            label = s.label if facts.client_name is None else s.label_as(facts.client_name.name)
            # the reply quotes the client's HELO or address: escaped like the fields after it
            log.info(
                "NOQUEUE: reject: RCPT from %s: %s; from=<%s> to=<%s> proto=%s helo=<%s>",
                label, sanitize(verdict.reply.line(), 1024), sanitize(str(ctx.tx.sender)), sanitize(str(ctx.rcpt)), s.proto,
                sanitize(s.helo or ""),
            )  # fmt: skip
        return verdict if verdict.final else CONTINUE

    def end(self, ctx: Context) -> None:
        task = ctx.state.get(NAME_TASK)
        if isinstance(task, asyncio.Task) and not task.done():
            task.cancel()  # the client left before its name was known


def build(cfg: Config, resolver: Resolver, authenticator: Any) -> Policy:
    """The policy of a new runtime. ValueError/OSError: the mailboxes file cannot be used."""
    mailboxes = None
    if cfg.domains.mailboxes:
        mailboxes = load_mailboxes(resolve_path(cfg.source, cfg.domains.mailboxes))
    owners: Owners | None = None
    users = getattr(authenticator, "users", None)
    if users is not None:
        # folded as Postfix's smtpd_sender_login_maps lookups are: a changed case cannot dodge the check
        owners = owners_table({login: users.addresses(login) for login in users.by_login})
    elif authenticator is not None:
        owners = dovecot_owners(cfg, mailboxes)
    return Policy(cfg, resolver, mailboxes, owners)


def dovecot_owners(cfg: Config, mailboxes: Mailboxes | None) -> Owners:
    """Without a users file: a login owns the address equal to it (see the module docstring)."""
    local = cfg.domains.local

    def owners(address: str) -> Collection[str]:
        _, _, domain = address.rpartition("@")
        if not domain_matches(domain, local):
            return frozenset()
        if mailboxes is not None and not mailboxes.exists(address):
            return frozenset()
        return frozenset({address.lower()})

    return owners

"""What one worker's SMTP sessions share, built from the config; rebuilt on every reload.

DESCRIPTION
    `Runtime.build(cfg, previous)` turns a validated Config into what the sessions use: the
    TLS context, the DNS resolver, the authenticator and the AUTH failure counts, the
    connection-rate counts, the engine settings and the pipeline of stage hooks of each
    listener. A reload builds a new Runtime from the new config and swaps it in; sessions
    keep the one they started with. Every part whose config slice did not change is taken
    over from the previous Runtime, so caches and counters survive (the postscreen cache
    and its resolver, AUTH failure counts, connection rates, the Dovecot client). The old
    one is closed SHUTDOWN_GRACE later (app.py), when the sessions that started on it are
    done. `changes` says, for the reload log, what was rebuilt.

    The hooks of a listener, in stage order:

        CONNECT   connection rate (server.limits.connection_rate_per_ip), postscreen
        RCPT      postscreen's conclusion, then relay control and the inbound policy
        DATA_END  the content-filter chain (filters/chain.py: attachments, antivirus, DKIM,
                  antispam, the originating headers, the DKIM signature)

SECURITY
    The users file and TLS key are read here, at build time; a file that cannot be read
    fails the build, so a reload that cannot read it changes nothing.

CONFIG
    server.tls, server.dns, server.limits, server.listeners, auth.*, postscreen.*,
    outbound.{mynetworks,add_client_ip_header,add_username_header}, inbound.*, antivirus.*,
    antispam.*, dkim.*, advanced.{filter_budget,threads}
"""

from __future__ import annotations

import asyncio
import logging
import ssl
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from .auth.failures import AuthFailures
from .config import Config, Listener, resolve_path
from .datastream import BareNewline
from .dns import Resolver
from .filters.chain import ChainHook, FilterChain
from .model import CONTINUE, Reply, Verdict
from .pipeline import Context, Hook, Pipeline, Stage
from .smtp import engine as E
from .smtp.anvil import RateCounter

if TYPE_CHECKING:
    from .auth.backend import Authenticator
    from .postscreen.screen import Screener
    from .smtp.protocol import Session

log = logging.getLogger("master")


def make_tls_context(cfg: Config) -> ssl.SSLContext | None:
    tls = cfg.server.tls
    if not tls.cert or not tls.key:
        return None
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.minimum_version = {
        "TLSv1": ssl.TLSVersion.TLSv1, "TLSv1.1": ssl.TLSVersion.TLSv1_1,
        "TLSv1.2": ssl.TLSVersion.TLSv1_2, "TLSv1.3": ssl.TLSVersion.TLSv1_3,
    }[tls.min_version]  # fmt: skip
    ctx.load_cert_chain(resolve_path(cfg.source, tls.cert), resolve_path(cfg.source, tls.key))
    return ctx


def check_files(cfg: Config) -> list[tuple[str, str]]:
    """What `run` would refuse in the files the config names (certificate and key, users file,
    mailboxes): (key, message) pairs; empty when all can be used. No event loop needed."""
    errors = []
    try:
        make_tls_context(cfg)
    except (OSError, ssl.SSLError) as exc:
        errors.append(("server.tls", f"cannot load the certificate and key: {exc}"))
    if any(lst.auth != "none" for lst in cfg.server.listeners) and cfg.auth.backend == "file" and cfg.auth.users_file:
        from .auth import backend

        try:
            backend.build(cfg.auth, cfg.source)
        except ValueError as exc:
            errors.append(("auth.users_file", str(exc).removeprefix("auth.users_file ").replace("\n", "; ")))
    if cfg.domains.mailboxes:
        from .policy.mailboxes import load_mailboxes

        try:
            load_mailboxes(resolve_path(cfg.source, cfg.domains.mailboxes))
        except (OSError, ValueError) as exc:
            errors.append(("domains.mailboxes", str(exc).replace("\n", "; ")))
    if cfg.dkim.sign:  # every signing key must be there and load (filters/dkim.py reads them at start)
        from .filters.dkim import load_key

        for entry in cfg.dkim.sign:
            try:
                load_key(entry, cfg.data_path)
            except ValueError as exc:
                errors.append(("dkim.sign", str(exc)))
    if cfg.antivirus.enabled:  # a local custom signature file must be there to be installed
        for src in cfg.antivirus.definitions.custom_signatures:
            if "://" not in src and not (path := resolve_path(cfg.source, src)).is_file():
                errors.append(("antivirus.definitions.custom_signatures", f"{path}: no such file"))
    return errors


# -- hooks built here ---------------------------------------------------------------------------


class ConnectionRateHook(Hook):
    """Postfix anvil's smtpd_client_connection_rate_limit: new connections per minute per IP."""

    name = "connection-rate"
    stages = frozenset({Stage.CONNECT})

    def __init__(self, limit: int, counter: RateCounter) -> None:
        self.limit = limit
        self.counter = counter

    def run(self, stage: Stage, ctx: Context) -> Verdict:
        s = ctx.session
        if s.mynetworks:
            return CONTINUE
        import time

        rate = self.counter.hit(s.ip, time.monotonic())
        if rate <= self.limit:
            return CONTINUE
        log.warning("NOQUEUE: reject: CONNECT from %s: too many connections (%d in 60s)", s.label, rate)
        return Verdict.reject(Reply(421, "4.7.0", f"{ctx.conn.hostname} Error: too many connections from {s.ip}"), "connection rate")


# -- the runtime --------------------------------------------------------------------------------


@dataclass
class Runtime:
    config: Config
    tls_context: ssl.SSLContext | None
    resolver: Resolver
    screener: Screener | None
    authenticator: Authenticator | None
    auth_failures: AuthFailures
    rates: RateCounter
    filters: FilterChain
    policy: Any
    pipelines: dict[Listener, Pipeline]  # by the listener's settings (frozen, hashable)
    settings: dict[Listener, E.Settings]
    changes: list[str]

    @classmethod
    def build(
        cls, cfg: Config, previous: Runtime | None = None, *, listeners: Sequence[Listener] | None = None,
        screener_cleanup: bool = False,
    ) -> Runtime:  # fmt: skip
        """Build from `cfg`, reusing what `previous` built from an unchanged slice; pipelines
        for `listeners` (default: the config's; a worker passes the ones its sockets serve).
        Raises OSError/ValueError (a file that cannot be read) before anything is swapped."""
        old = previous.config if previous is not None else None
        changes: list[str] = []

        def same(*path: str) -> bool:
            if old is None:
                return False
            a: Any = old
            b: Any = cfg
            for p in path:
                a, b = getattr(a, p), getattr(b, p)
            return a == b

        try:
            tls = make_tls_context(cfg)
        except (OSError, ssl.SSLError) as exc:
            raise ValueError(f"server.tls: cannot load the certificate and key: {exc}") from None
        if previous is not None and same("server", "dns"):
            resolver = previous.resolver
        else:
            resolver = Resolver([str(ep) for ep in cfg.server.dns.nameservers], cfg.server.dns.timeout)
            if previous is not None:
                changes.append("resolver")
        authenticator = _build_authenticator(cfg, previous, changes)
        failures = previous.auth_failures if previous is not None else None
        if failures is None or (failures.max_failures, failures.window) != (cfg.auth.max_failures, cfg.auth.failure_window):
            failures = AuthFailures(cfg.auth.max_failures, cfg.auth.failure_window)  # new limits: counted afresh
        rates = previous.rates if previous is not None else RateCounter(60.0)
        try:
            filters = FilterChain(cfg, previous.filters if previous is not None else None, resolver)
        except (OSError, ValueError) as exc:
            raise ValueError(f"content filters (dkim.sign keys): {exc}") from None
        screener = None
        if any(lst.postscreen for lst in (cfg.server.listeners if listeners is None else listeners)):
            if previous is not None and previous.screener is not None and same("postscreen") and same("server", "dns") and same("server", "data_dir") and same("outbound", "mynetworks"):
                screener = previous.screener
            else:
                from .postscreen.screen import Screener

                screener = Screener(cfg)
                if screener_cleanup:
                    screener.start_cleanup()
                if previous is not None:
                    changes.append("postscreen")
        from .policy import hooks as policy_hooks

        try:
            policy = policy_hooks.build(cfg, resolver, authenticator)
        except (OSError, ValueError) as exc:
            raise ValueError(f"domains.mailboxes: {exc}") from None
        pipelines: dict[str, Pipeline] = {}
        settings: dict[str, E.Settings] = {}
        for lst in cfg.server.listeners if listeners is None else listeners:
            pipelines[lst] = Pipeline(_hooks(cfg, lst, screener, rates, filters, policy))
            settings[lst] = _engine_settings(cfg, lst, tls, authenticator)
        return cls(cfg, tls, resolver, screener, authenticator, failures, rates, filters, policy, pipelines, settings, changes)

    async def check_auth(self) -> None:
        """Dovecot unreachable at start: AUTH is not offered (logged) until a reload finds it."""
        check = getattr(self.authenticator, "check", None)
        if check is None:
            return
        why = await check()
        if not why:
            return
        log.warning("AUTH not offered: %s", why)
        await self.authenticator.close()  # type: ignore[union-attr]
        self.authenticator = None
        for lst in self.settings:
            self.settings[lst] = _engine_settings(self.config, lst, self.tls_context, None)

    def engine_settings(self, listener: Listener) -> E.Settings:
        return self.settings[listener]

    def session_started(self, session: Session) -> None:
        """After the greeting: start what runs beside the session (the client name lookup)."""
        if self.policy is not None:
            self.policy.session_started(session)

    def observe(self, session: Session, ev: E.Observe) -> bool:
        """postscreen's deep tests see the session's Observe events. True: go on."""
        hook = session.pipeline.get("postscreen")
        if hook is None or session.ctx is None:
            return ev.kind != "non_smtp"
        return hook.observe(session.ctx, ev.kind, ev.line, ev.pending, session.engine.last_command)  # type: ignore[attr-defined]

    async def retire(self, replaced_by: Runtime, delay: float) -> None:
        """This runtime was replaced: after `delay` (the sessions that started on it keep it and
        finish meanwhile), close what the new one did not take over."""
        await asyncio.sleep(delay)
        if self.screener is not None and self.screener is not replaced_by.screener:
            await self.screener.close()
        if self.resolver is not replaced_by.resolver:
            self.resolver.close()
        if self.authenticator is not None and self.authenticator is not replaced_by.authenticator:
            await self.authenticator.close()

    async def close(self) -> None:
        if self.screener is not None:
            await self.screener.close()
        self.resolver.close()
        if self.authenticator is not None:
            await self.authenticator.close()


def _build_authenticator(cfg: Config, previous: Runtime | None, changes: list[str]) -> Authenticator | None:
    """The users file is read again at every build (SIGHUP reloads it); dovecot's client is
    kept while its settings stay."""
    if not any(lst.auth != "none" for lst in cfg.server.listeners):
        return None
    from .auth import backend

    if (
        previous is not None and previous.authenticator is not None and cfg.auth.backend == "dovecot"
        and previous.config.auth == cfg.auth
    ):  # fmt: skip
        return previous.authenticator
    auth, why = backend.build(cfg.auth, cfg.source)
    if auth is None:
        log.info("AUTH not offered: %s", why)
        return None
    if previous is not None:
        changes.append("authenticator")
    if not cfg.server.tls.cert:  # AUTH is offered only under TLS: without a certificate, never
        log.warning("AUTH not offered: it needs TLS, and server.tls has no certificate")
    return auth


def _engine_settings(cfg: Config, lst: Listener, tls: ssl.SSLContext | None, auth: Authenticator | None) -> E.Settings:
    lim = cfg.server.limits
    # outbound.require_auth is the panel's "Enable Authentication": off, only auth: require listeners offer AUTH
    mode = lst.auth if cfg.outbound.require_auth or lst.auth == "require" else "none"
    mechanisms = tuple(m.upper() for m in cfg.auth.mechanisms) if auth is not None and mode != "none" else ()
    return E.Settings(
        hostname=cfg.server.hostname,
        command_line=lim.command_line,
        recipients=lim.recipients,
        recipient_overshoot=lim.recipient_overshoot,
        soft_error_limit=lim.soft_error_limit,
        hard_error_limit=lim.hard_error_limit,
        error_sleep=lim.error_sleep,
        max_message_size=cfg.advanced.max_message_size,
        text_line=lim.text_line,
        header_size=lim.header_size,
        hop_count=lim.hop_count,
        bare_newline=BareNewline(cfg.inbound.bare_newline),
        starttls=tls is not None and lst.tls == "starttls",
        implicit_tls=lst.tls == "implicit",
        require_tls=mode == "require" and lst.tls == "starttls" and tls is not None,
        auth=mode,
        auth_mechanisms=mechanisms,
        postmaster_domain=(cfg.domains.local or [cfg.server.hostname])[0],
    )


def _hooks(cfg: Config, lst: Listener, screener: Screener | None, rates: RateCounter, filters: FilterChain, policy: Any) -> Sequence[Hook]:
    hooks: list[Hook] = []
    if cfg.server.limits.connection_rate_per_ip:
        hooks.append(ConnectionRateHook(cfg.server.limits.connection_rate_per_ip, rates))
    if lst.postscreen and screener is not None:
        from .postscreen.screen import PostscreenHook

        hooks.append(PostscreenHook(screener))
    # Relay control and the policy: every RCPT hook before it returns CONTINUE or a refusal,
    # never ACCEPT (which would end the stage before relay control).
    hooks.extend(policy.hooks(lst))
    if filters.wanted:
        hooks.append(ChainHook(lambda: filters))
    return hooks

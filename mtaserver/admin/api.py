"""The admin HTTP API: FastAPI on an embedded uvicorn server, in the queue manager's process.

DESCRIPTION
    `AdminServer(worker, sock)` serves the FastAPI app on the socket `run` bound for
    `admin.listen` before forking, in the event loop of the process that runs the queue
    manager (worker 0 with `workers: 1`, else the process with no SMTP sockets; it serves
    even when queue.manager is false). uvicorn installs no signal handlers here: the worker
    owns SIGHUP and SIGTERM, and `stop()` ends the server when the worker stops.

    Every JSON answer names this node: `{"node": server.hostname, ...}`.

      GET  /api/health                       no token: {"status": "ok"}
      GET  /api/queue/stats                  QueueOps.stats()
      GET  /api/queue/messages?queue=&from=&to=&older_than=&newer_than=&after=&limit=
      GET  /api/queue/messages/{id}          QueueOps.show (404 when unknown)
      GET  /api/queue/shape?queue=
      POST /api/queue/{hold|release|requeue|delete}   body {"ids", "all", "queue", "from", "to",
                                             "older_than", "newer_than", "dry_run", "bounce"}
      POST /api/queue/flush
      GET  /api/services                     antispam, antivirus, authentication, DKIM: configured,
                                             reachable now (probed concurrently), last error
      GET  /api/postscreen/{ip}              the postscreen cache record (404 when none)
      DELETE /api/postscreen/{ip}            drop it (workers may use a copy read within the
                                             last RECENT_TTL seconds, stamps.py)
      GET  /api/config                       the effective configuration of this node
      GET  /api/config/raw                   the file's text (admin role: it holds the secrets)
      PUT  /api/config                       a whole document (YAML as written, or JSON: the file's
                                             document, not GET /api/config's effective values)
      PATCH /api/config                      a JSON merge patch (RFC 7396)
      GET  /api/openapi.json                 the OpenAPI document (any token; no browser UI is served:
                                             Swagger UI would load scripts from a CDN into this origin)

    PUT and PATCH (configfile.py) validate, write the file back (comments kept, atomic, the
    old one as `<file>.bak`) and apply it through the SIGHUP path: in one process the worker's
    own reload, else SIGHUP to the supervisor (which forwards it to every worker, this one
    included). The answer waits for this process's reload, then (APPLY_WAIT at most) for every
    other server process to run the new file (applied.py), and lists the keys that changed
    (config.diff); a process still behind then is named in "not_applied_by" (its log says
    why). A reload refused here after the write (it should not be: the same checks ran
    first), or a SIGHUP that cannot be sent, restores the old file and says so.

    With server.user set this process runs as the mail user and the file is root's: it
    prepares and validates the new text as above, then hands it to the root supervisor over
    the private channel made before forking (rootwriter.py), which validates it again with
    the same loader, refuses a change to any key that names a file, a directory, an identity
    or the admin surface (configfile.ROOT_ONLY: 409, the key named; edit those as root and
    `systemctl reload mtaserver`), writes the file (atomic, .bak, owner and mode kept) and
    reloads through its own SIGHUP path. The answer still waits for this process's reload;
    if it refused, the supervisor is asked to put the previous file back. Without the
    channel (no supervisor: cannot happen with server.user) the change is refused (409).

    Roles (tokens.py): read = every GET but /api/config/raw; operator = queue actions and the
    postscreen drop; admin = PUT/PATCH /api/config and the raw file. No token or an unknown one: 401 with WWW-Authenticate:
    Bearer; a known token with too low a role: 403. Every state-changing request that
    presented a known token is written to the audit log (audit.py), refused or not.

SECURITY
    Listens on loopback by default. Tokens are compared in constant time and never logged.
    The client IP is the socket's peer (proxy headers are ignored: they would let a local
    client write any IP into the audit log). `Guard`, an ASGI layer in front of the app (the
    API, /metrics and the panel alike), first answers 421 to a request whose Host header names
    none of localhost, a loopback address, the address the connection came in on (admin.listen),
    server.hostname and admin.allowed_hosts: a web page whose name an attacker points at
    127.0.0.1 (DNS rebinding) gets nothing from a browser on this machine, not even the
    token-free /metrics of a loopback listener; one warning line per minute says so. It then
    answers 401 to a request under /api/ (but /api/health) without a known token before any
    routing or body parsing, and reads every body itself up to MAX_BODY bytes (413 past it,
    declared or streamed): an unauthenticated client never gets a body parsed, nor memory
    filled. The configuration is returned with file paths only; secrets such as relay_auth's
    password file are never read here, and a password inside a URL (a Redis URL: its whole
    userinfo password, query parameters such as password=) is masked. Client text reaches the
    log only through logutil.sanitize.

STANDARDS
    RFC 6750 (bearer tokens), RFC 7396 (JSON merge patch), RFC 9110 (HTTP semantics; 7.2 Host,
    15.5.20 421 Misdirected Request).

CONFIG
    admin.listen, admin.token_file, admin.audit_log, admin.allowed_hosts, server.hostname, server.data_dir; reads
    every key for GET /api/config; postscreen.cache.* for the cache; antispam.spamd,
    antivirus.clamd, auth.*, dkim.* for the services view.
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import logging
import os
import re
import signal
import socket
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Annotated, Any, Protocol

import uvicorn
from fastapi import Depends, FastAPI, HTTPException, Query, Request
from fastapi.responses import JSONResponse, PlainTextResponse
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from pydantic import BaseModel, BeforeValidator, ConfigDict, Field
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from .. import applied
from .. import config as config_mod
from ..config import Config
from ..logutil import sanitize
from ..values import Endpoint, NetMatch, parse_duration
from . import configfile, metrics
from .audit import AuditLog
from .rootwriter import ChannelError, RootChannel
from .tokens import Role, Token, TokenFileError, find_token, load_tokens

log = logging.getLogger("admin")

MAX_BODY = 1 << 20  # bytes of a PUT/PATCH/POST body; a config file is a few tens of KB
PROBE_TIMEOUT = 2.0  # seconds each services probe may take (they run concurrently)
RELOAD_WAIT = 30.0  # seconds a PUT/PATCH waits for the supervisor's SIGHUP to reach this process
APPLY_WAIT = 10.0  # then, seconds it waits for every other server process to run the new file (applied.py)
APPLY_POLL = 0.02
SHUTDOWN_GRACE = 5.0  # seconds open API requests get when the worker stops

try:
    from importlib.metadata import version as _pkg_version

    VERSION = _pkg_version("mtaserver")
except Exception:  # noqa: BLE001 - not installed as a package (a source tree): any failure means no version
    VERSION = "0"


class ServedWorker(Protocol):
    """What the API needs of app.Worker (the process it runs in)."""

    config: Config
    path: str
    runtime: Any  # Runtime | None: None in the queue manager's own process
    store: Any  # QueueStore
    manager: Any  # QueueManager | None
    reloads: int
    reload_hooks: list[Callable[[], None]]

    def reload(self) -> None: ...


class Caller(BaseModel):
    """Who made a request: the token's name and role, the client's IP."""

    model_config = ConfigDict(frozen=True)
    name: str
    role: str
    ip: str


DurationQ = Annotated[float | None, BeforeValidator(lambda v: None if v in (None, "") else parse_duration(v))]


class ActionBody(BaseModel):
    """Which messages a queue action touches (queue/ops.py Selector), and how."""

    model_config = ConfigDict(extra="forbid", populate_by_name=True)
    ids: list[str] = []
    all: bool = False
    queue: str | None = None
    sender: str | None = Field(None, alias="from")
    recipient: str | None = Field(None, alias="to")
    older_than: DurationQ = Field(None, description="a duration: 3600, 90s, 1h, 2d")
    newer_than: DurationQ = None
    dry_run: bool = False
    bounce: bool = Field(False, description="delete only: return the message to its sender")


# ---------------------------------------------------------------------------------------------
# The effective configuration as JSON.

_SECRET_PARAMS = {"password", "pass", "passwd", "pwd", "secret", "token", "auth", "key"}
_URL = re.compile(r"[A-Za-z][A-Za-z0-9+.-]*://\S+")


def mask_url(url: str) -> str:
    """A URL with its password and secret-looking query values as `***`. The userinfo ends at
    the last `@` before the query (a password may hold `/` or `@`). Pure."""
    scheme, _, rest = url.partition("://")
    head, q, query = rest.partition("?")
    query, hashmark, fragment = query.partition("#") if q else ("", "", "")
    if "@" in head:
        userinfo, _, hostpart = head.rpartition("@")
        if ":" in userinfo:
            head = f"{userinfo.partition(':')[0]}:***@{hostpart}"
    if q:
        pairs = []
        for pair in query.split("&"):
            name, eq, _ = pair.partition("=")
            pairs.append(f"{name}=***" if eq and name.lower() in _SECRET_PARAMS else pair)
        query = "&".join(pairs)
    return f"{scheme}://{head}{q}{query}{hashmark}{fragment}"


def config_json(value: Any) -> Any:
    """A Config (or any part of it) as plain JSON values: endpoints and networks as their text,
    passwords inside URLs masked. Pure."""
    if isinstance(value, BaseModel):
        return {name: config_json(getattr(value, name)) for name in type(value).model_fields}
    if isinstance(value, dict):
        return {str(k): config_json(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [config_json(v) for v in value]
    if isinstance(value, (Endpoint, NetMatch)):
        return str(value)
    if isinstance(value, str):
        return _URL.sub(lambda m: mask_url(m.group(0)), value)
    if value is None or isinstance(value, (bool, int, float)):
        return value
    return str(value)


# ---------------------------------------------------------------------------------------------
# Services: is each configured external part reachable now?


async def _connect(ep: Endpoint) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    if ep.unix_path:
        return await asyncio.open_unix_connection(ep.unix_path)
    return await asyncio.open_connection(ep.host, ep.port)


async def probe_spamd(ep: Endpoint) -> str:
    """"" when spamd answers PING with PONG (SPAMC/1.5), else why not."""
    reader, writer = await _connect(ep)
    try:
        writer.write(b"PING SPAMC/1.5\r\n\r\n")
        await writer.drain()
        line = await reader.readline()
    finally:
        writer.close()
    if not (line.startswith(b"SPAMD/") and b"PONG" in line):
        return f"spamd at {ep}: unexpected answer {sanitize(line.decode('latin-1'), 80)!r}"
    return ""


async def probe_clamd(ep: Endpoint) -> str:
    """"" when clamd answers zPING with PONG, else why not."""
    reader, writer = await _connect(ep)
    try:
        writer.write(b"zPING\0")
        await writer.drain()
        answer = await reader.readuntil(b"\0")
    finally:
        writer.close()
    if answer.rstrip(b"\0").strip() != b"PONG":
        return f"clamd at {ep}: unexpected answer {sanitize(answer.decode('latin-1'), 80)!r}"
    return ""


async def _probe(name: str, job: Any) -> str:
    try:
        return str(await asyncio.wait_for(job, PROBE_TIMEOUT))
    except TimeoutError:
        return f"{name}: no answer within {PROBE_TIMEOUT:g}s"
    except (OSError, asyncio.IncompleteReadError, asyncio.LimitOverrunError) as exc:
        return f"{name}: {exc.strerror or exc}" if isinstance(exc, OSError) else f"{name}: {exc}"


async def probe_auth(cfg: Config) -> tuple[bool, str, str]:
    """(configured, detail, error) of the AUTH password source."""
    from ..auth import backend  # late: the API process may never need it

    offered = any(x.auth != "none" for x in cfg.server.listeners)
    try:
        authenticator, why = backend.build(cfg.auth, cfg.source)
    except ValueError as exc:
        return offered, cfg.auth.backend, str(exc).replace("\n", "; ")
    if authenticator is None:
        return False, why, ""
    try:
        if isinstance(authenticator, backend.DovecotAuthenticator):
            err = await _probe("dovecot", authenticator.check())
            return offered, f"dovecot at {authenticator.endpoint}", err
        return offered, f"users file {cfg.auth.users_file}", ""
    finally:
        await authenticator.close()


def probe_dkim(cfg: Config) -> tuple[bool, list[dict[str, Any]], str]:
    """(configured, keys, error): each signing key is readable and holds a PEM private key."""
    keys, errors = [], []
    for s in cfg.dkim.sign:
        path = s.key if os.path.isabs(s.key) else str(cfg.data_path / s.key)
        err = ""
        try:
            with open(path, "rb") as f:
                head = f.read(64 * 1024)
            if b"PRIVATE KEY-----" not in head:
                err = "no PEM private key in it"
        except OSError as exc:
            err = exc.strerror or str(exc)
        keys.append({"domain": s.domain, "selector": s.selector, "key": path, "loaded": not err})
        if err:
            errors.append(f"{s.domain} {s.selector}: {path}: {err}")
    return bool(cfg.dkim.sign) or cfg.dkim.verify, keys, "; ".join(errors)


# ---------------------------------------------------------------------------------------------
# The server.


class _Uvicorn(uvicorn.Server):
    """uvicorn without its own signal handling: the worker owns SIGHUP, SIGTERM and SIGINT."""

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        yield

    def install_signal_handlers(self) -> None:  # uvicorn < 0.29
        pass


class AdminServer:
    def __init__(self, worker: ServedWorker, sock: socket.socket) -> None:
        self.worker = worker
        self.sock = sock
        cfg = worker.config
        # The config `run` started with decides the process layout until a restart: one process,
        # or a supervisor (our parent) with SMTP workers and this queue manager process.
        self._single_process = cfg.server.worker_count() == 1 and cfg.server.user is None
        self._mail_user = cfg.server.user  # set: the file is root's; the root supervisor writes it (DESCRIPTION)
        channel = getattr(worker, "root_channel", None)
        self._root = RootChannel(channel) if channel is not None and self._mail_user is not None else None
        self.tokens: list[Token] = []
        self._token_path = self._path(cfg, cfg.admin.token_file)
        self._read_tokens(at_start=True)
        self.audit = AuditLog(self._path(cfg, cfg.admin.audit_log))
        self._reloaded = asyncio.Event()
        self._config_lock = asyncio.Lock()
        self._cache: tuple[Any, Any] | None = None  # (cache settings, store) when this process opened its own
        self._last_errors: dict[str, dict[str, Any]] = {}
        self._ops: Any = None
        worker.reload_hooks.append(self._on_reload)
        self.app = build_app(self)
        self._server = _Uvicorn(uvicorn.Config(
            Guard(self.app, self), log_config=None, access_log=False, lifespan="off", proxy_headers=False, server_header=False,
            ws="none", http="h11", timeout_graceful_shutdown=SHUTDOWN_GRACE, timeout_keep_alive=5, limit_concurrency=64,
        ))  # fmt: skip
        logging.getLogger("uvicorn.error").setLevel(logging.WARNING)  # its start/stop lines; ours say it

    @staticmethod
    def _path(cfg: Config, name: str) -> Path:
        return cfg.data_path / name  # an absolute name stays absolute

    @property
    def node(self) -> str:
        return self.worker.config.server.hostname

    # -- life --------------------------------------------------------------------------------

    async def serve(self) -> None:
        log.info("admin API ready: http://%s/api/ (%d token(s))", _sockname(self.sock), len(self.tokens))
        panel = self.app.state.panel
        panel.start()  # the charts' sampler
        try:
            await self._server.serve(sockets=[self.sock])
        except Exception:
            log.exception("admin API stopped")
        finally:
            await panel.close()
            await self._close_cache()

    def stop(self) -> None:
        """Stop accepting; open requests get SHUTDOWN_GRACE seconds. `serve()` returns after."""
        self._server.should_exit = True

    # -- tokens ------------------------------------------------------------------------------

    def _read_tokens(self, *, at_start: bool = False) -> None:
        try:
            self.tokens = load_tokens(self._token_path)
        except TokenFileError as exc:
            for line in exc.errors:
                log.error("admin token file: %s%s", line, "" if at_start else " (the old tokens stay)")
            return
        with contextlib.suppress(OSError):
            if self._token_path.stat().st_mode & 0o077:
                log.warning("admin token file %s can be read by others than its owner: chmod 600 it", self._token_path)

    def _on_reload(self) -> None:
        """After each SIGHUP reload (applied or refused): re-read the tokens, wake PUT/PATCH."""
        cfg = self.worker.config
        if cfg.admin.listen is None or (cfg.admin.listen.host, cfg.admin.listen.port) != self.sock.getsockname()[:2]:
            log.warning("reload: admin.listen changes need a restart; the admin API stays on %s", _sockname(self.sock))
        self._token_path = self._path(cfg, cfg.admin.token_file)
        self.audit.path = self._path(cfg, cfg.admin.audit_log)
        self._read_tokens()
        self._reloaded.set()

    def authorize(self, request: Request, creds: HTTPAuthorizationCredentials | None, role: Role, action: str | None) -> Caller:
        ip = request.client.host if request.client else "-"
        token = find_token(self.tokens, creds.credentials) if creds is not None else None
        if token is None:
            if action is not None:
                log.warning("admin API: %s %s from %s: no valid token", request.method, sanitize(request.url.path, 100), ip)
            error = ', error="invalid_token"' if creds is not None else ""
            challenge = f'Bearer realm="mtaserver"{error}'
            raise HTTPException(401, "a valid bearer token is required", headers={"WWW-Authenticate": challenge})
        caller = Caller(name=token.name, role=token.role.name.lower(), ip=ip)
        if token.role < role:
            if action is not None:
                self.audit.write(caller.name, ip, action, None, {"status": 403, "role": caller.role})
            log.warning("admin API: %s %s by %s (%s) from %s: needs role %s", request.method, sanitize(request.url.path, 100),
                        caller.name, caller.role, ip, role.name.lower())  # fmt: skip
            raise HTTPException(403, f"this needs role {role.name.lower()}; token {token.name} has role {caller.role}")
        return caller

    # -- queue -------------------------------------------------------------------------------

    def ops(self) -> Any:
        try:
            from ..queue.ops import QueueOps
        except ImportError:
            raise HTTPException(503, "queue operations are not available in this build") from None
        manager = getattr(self.worker, "manager", None)
        if self._ops is None or self._ops.manager is not manager:
            self._ops = QueueOps(self.worker.store, manager, config=lambda: self.worker.config)
        return self._ops

    # -- postscreen cache --------------------------------------------------------------------

    def cache_store(self) -> Any:
        rt = self.worker.runtime
        if rt is not None and getattr(rt, "screener", None) is not None:
            return rt.screener.store  # this worker screens clients: its own store
        cfg = self.worker.config
        key = (cfg.postscreen.cache, cfg.data_path)
        if self._cache is None or self._cache[0] != key:
            from ..postscreen.cache import (
                open_store,  # late: redis is imported only when configured
            )

            old, self._cache = self._cache, (key, open_store(cfg.postscreen.cache, cfg.data_path))
            if old is not None:
                asyncio.get_running_loop().create_task(old[1].close())
        return self._cache[1]

    async def _close_cache(self) -> None:
        if self._cache is not None:
            store, self._cache = self._cache[1], None
            await store.close()

    # -- services ----------------------------------------------------------------------------

    async def services(self) -> list[dict[str, Any]]:
        cfg = self.worker.config

        async def spamd() -> dict[str, Any]:
            ep = cfg.antispam.spamd.address
            err = await _probe("spamd", probe_spamd(ep)) if cfg.antispam.enabled else ""
            return {"name": "antispam", "engine": "spamd", "configured": cfg.antispam.enabled, "address": str(ep), "error": err}

        async def clamd() -> dict[str, Any]:
            ep = cfg.antivirus.clamd.address
            err = await _probe("clamd", probe_clamd(ep)) if cfg.antivirus.enabled else ""
            return {"name": "antivirus", "engine": "clamd", "configured": cfg.antivirus.enabled, "address": str(ep), "error": err}

        async def auth() -> dict[str, Any]:
            configured, detail, err = await probe_auth(cfg)
            return {"name": "authentication", "engine": cfg.auth.backend, "configured": configured, "detail": detail,
                    "error": err}  # fmt: skip

        async def dkim() -> dict[str, Any]:
            configured, keys, err = probe_dkim(cfg)
            return {"name": "dkim", "engine": "dkimpy", "configured": configured, "verify": cfg.dkim.verify, "keys": keys,
                    "error": err}  # fmt: skip

        out = list(await asyncio.gather(spamd(), clamd(), auth(), dkim()))
        now = time.time()
        for s in out:
            s["reachable"] = (not s["error"]) if s["configured"] else None  # null: not configured, not asked
            if s["error"]:
                self._last_errors[s["name"]] = {"time": now, "message": s["error"]}
            s["last_error"] = self._last_errors.get(s["name"])
        return out

    # -- live configuration ------------------------------------------------------------------

    async def change_config(self, caller: Caller, action: str, body: bytes, *, yaml_body: bool) -> JSONResponse:
        selector = {"keys": patch_keys(body)} if action == "config.patch" else {"document": len(body)}
        if self._mail_user is not None and self._root is None:
            errors = [(f"(server.user): the server runs as {self._mail_user} and {self.worker.path} is root's, with no "
                       "channel to the root supervisor here: it is not changed from here. Edit it as root, then reload "
                       "(systemctl reload mtaserver, or SIGHUP to the supervisor)")]  # fmt: skip
            self.audit.write(caller.name, caller.ip, action, selector, {"status": 409, "errors": errors})
            return JSONResponse({"node": self.node, "detail": "the configuration was not changed", "errors": errors}, 409)
        async with self._config_lock:  # one change at a time: each reads the file the last one wrote
            path = Path(self.worker.path)
            try:
                current = path.read_text(encoding="utf-8")
                # Validation loads every file the config names (check_files): not in this event loop.
                ro = self._mail_user is not None  # the root supervisor refuses these too (rootwriter.py); say it first
                if action == "config.put":
                    text, _ = await asyncio.to_thread(configfile.prepare_put, str(path), current, body, yaml_body=yaml_body,
                                                      root_only=ro)  # fmt: skip
                else:
                    text, _ = await asyncio.to_thread(configfile.prepare_patch, str(path), current, body, root_only=ro)
            except configfile.RootOnlyError as exc:
                self.audit.write(caller.name, caller.ip, action, selector, {"status": 409, "errors": exc.errors})
                return JSONResponse({"node": self.node, "detail": "the configuration was not changed", "errors": exc.errors}, 409)
            except configfile.DocumentError as exc:
                self.audit.write(caller.name, caller.ip, action, selector, {"status": 422, "errors": exc.errors})
                return JSONResponse({"node": self.node, "detail": "the configuration was not changed", "errors": exc.errors}, 422)
            except OSError as exc:
                raise HTTPException(500, f"cannot read {path}: {exc.strerror or exc}") from None
            old = self.worker.config
            if self._root is not None:
                return await self._change_as_root(caller, action, selector, text, old)
            try:
                await asyncio.to_thread(configfile.write_atomically, path, text)
            except OSError as exc:  # e.g. the server runs as server.user and the file belongs to root
                errors = [f"(file): cannot write {path} or its .bak: {exc.strerror or exc}"]
                self.audit.write(caller.name, caller.ip, action, selector, {"status": 500, "errors": errors})
                return JSONResponse({"node": self.node, "detail": "the configuration was not changed", "errors": errors}, 500)
            try:
                applied = await self._reload()
            except OSError as exc:  # the supervisor is gone, or may not be signalled
                await asyncio.to_thread(configfile.write_atomically, path, current, backup=False)
                errors = [f"(reload): cannot signal the supervisor: {exc.strerror or exc}; the previous file was put back"]
                self.audit.write(caller.name, caller.ip, action, selector, {"status": 500, "errors": errors})
                return JSONResponse({"node": self.node, "detail": "the configuration was not changed", "errors": errors}, 500)
            if not applied:
                await asyncio.to_thread(configfile.write_atomically, path, current, backup=False)
                errors = ["(reload): the server refused the new file (see its log); the previous file was put back"]
                self.audit.write(caller.name, caller.ip, action, selector, {"status": 409, "errors": errors})
                return JSONResponse({"node": self.node, "detail": "the configuration was not changed", "errors": errors}, 409)
            changed = config_mod.diff(old, self.worker.config)
            behind = await self._wait_applied(text)
            self.audit.write(caller.name, caller.ip, action, selector, {"status": 200, "changed": changed, **behind})
            log.info("admin API: configuration %s by %s from %s: %s", action.removeprefix("config."), caller.name, caller.ip,
                     f"changed {', '.join(changed)}" if changed else "no change")  # fmt: skip
            backup = str(path) + ".bak"
            return JSONResponse({"node": self.node, "applied": True, "changed": changed, "file": str(path), "backup": backup,
                                 **behind})  # fmt: skip

    async def _change_as_root(
        self, caller: Caller, action: str, selector: dict[str, Any], text: str, old: Config
    ) -> JSONResponse:
        """Under server.user: the root supervisor checks, writes and reloads (rootwriter.py); we wait for our reload."""
        count = self.worker.reloads  # before the request: its SIGHUP may come before its answer
        self._reloaded.clear()
        try:
            answer = await self._root.request("change", text)  # type: ignore[union-attr]
        except ChannelError as exc:
            errors = [f"(supervisor): {exc}; the file may have been changed (see the log)"]
            self.audit.write(caller.name, caller.ip, action, selector, {"status": 503, "errors": errors})
            return JSONResponse({"node": self.node, "detail": "the supervisor did not answer: the configuration may have been changed",
                                 "errors": errors}, 503)  # fmt: skip
        if not answer.get("ok"):
            status = int(answer.get("status") or 500)
            errors = [str(e) for e in answer.get("errors") or []] or ["(supervisor): refused"]
            self.audit.write(caller.name, caller.ip, action, selector, {"status": status, "errors": errors})
            return JSONResponse({"node": self.node, "detail": "the configuration was not changed", "errors": errors}, status)
        if not await self._wait_reload(count, old):
            try:
                put_back = await self._root.request("revert")  # type: ignore[union-attr]
            except ChannelError as exc:
                put_back = {"ok": False, "errors": [str(exc)]}
            again = "the previous file was put back"
            if not put_back.get("ok"):
                again = f"the previous file was NOT put back: {put_back.get('errors')}"
            errors = [f"(reload): this process refused the new file (see its log); {again}"]
            self.audit.write(caller.name, caller.ip, action, selector, {"status": 409, "errors": errors})
            return JSONResponse({"node": self.node, "detail": "the configuration was not changed", "errors": errors}, 409)
        changed = config_mod.diff(old, self.worker.config)
        behind = await self._wait_applied(text)
        self.audit.write(caller.name, caller.ip, action, selector, {"status": 200, "changed": changed, **behind})
        log.info("admin API: configuration %s by %s from %s (written by the supervisor): %s", action.removeprefix("config."),
                 caller.name, caller.ip, f"changed {', '.join(changed)}" if changed else "no change")  # fmt: skip
        return JSONResponse({"node": self.node, "applied": True, "changed": changed, "file": answer.get("file"),
                             "backup": answer.get("backup"), **behind})  # fmt: skip

    async def _wait_applied(self, text: str) -> dict[str, list[int]]:
        """Wait (APPLY_WAIT at most) until every server process runs the file `text` (applied.py):
        the SMTP workers take the supervisor's SIGHUP a moment after this process. {} when they
        all do, else {"not_applied_by": [pids]} (each one's log says why: a refused reload)."""
        digest = config_mod.text_digest(text)
        data_path = self.worker.config.data_path
        deadline = time.monotonic() + APPLY_WAIT
        while behind := applied.behind(data_path, digest):
            if time.monotonic() >= deadline:
                log.warning("admin API: the new configuration is not applied by process %s within %gs (see its log)",
                            ", ".join(map(str, behind)), APPLY_WAIT)  # fmt: skip
                return {"not_applied_by": behind}
            await asyncio.sleep(APPLY_POLL)
        return {}

    async def _reload(self) -> bool:
        """Apply the file as SIGHUP does; True when this process took the new config."""
        before = self.worker.config
        if self._single_process:  # workers: 1: reload here, now
            self.worker.reload()
            return self.worker.config is not before
        # Several workers: the supervisor validates and forwards SIGHUP to each, this one too.
        count = self.worker.reloads
        self._reloaded.clear()
        os.kill(os.getppid(), signal.SIGHUP)
        return await self._wait_reload(count, before)

    async def _wait_reload(self, count: int, before: Config) -> bool:
        """Wait for this process's next reload after `count`; True when it took a new config."""
        deadline = time.monotonic() + RELOAD_WAIT
        while self.worker.reloads == count:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                log.error("admin API: no reload within %gs after SIGHUP to the supervisor (pid %d)", RELOAD_WAIT, os.getppid())
                return False
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._reloaded.wait(), remaining)
            self._reloaded.clear()
        return self.worker.config is not before


# ---------------------------------------------------------------------------------------------
# The FastAPI application.


def _sockname(sock: socket.socket) -> str:
    host, port = sock.getsockname()[:2]
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def patch_keys(body: bytes) -> list[str]:
    """The dotted key paths a merge patch sets or removes (for the audit log; not the values). Pure."""
    try:
        patch = configfile.parse_body(body)
    except configfile.DocumentError:
        return []
    out: list[str] = []

    def walk(node: Any, prefix: str) -> None:
        if isinstance(node, dict) and node:
            for k, v in node.items():
                walk(v, f"{prefix}.{k}" if prefix else str(k))
        elif prefix:
            out.append(prefix)

    walk(patch, "")
    return out[:100]


def _ip(text: str) -> str:
    try:
        return str(ipaddress.ip_address(text.strip("[]")))
    except ValueError:
        raise HTTPException(422, "not an IP address") from None


async def _read_body(request: Request) -> bytes:
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > MAX_BODY:
        raise HTTPException(413, f"the body is larger than {MAX_BODY} bytes")
    data = bytearray()
    async for chunk in request.stream():
        data += chunk
        if len(data) > MAX_BODY:
            raise HTTPException(413, f"the body is larger than {MAX_BODY} bytes")
    return bytes(data)


OPEN_PATHS = ("/api/health",)  # under /api/, the only path without a token
HOST_WARN_INTERVAL = 60.0  # seconds between two log lines about refused Host headers (the others are counted)
_HOST_NAME = re.compile(r"[a-z0-9_-]+(\.[a-z0-9_-]+)*\.?")
_HOST_PORT = re.compile(r"(:[0-9]{0,5})?")


def host_name(value: str) -> str | None:
    """The name part of a Host header value (RFC 9110 7.2, `uri-host [":" port]`): lower case, no
    port, no trailing dot, an IP address in its canonical text (an IPv6 one without brackets).
    None when it is not a valid Host value. Pure."""
    v = value.strip().lower()
    if v.startswith("["):
        name, bracket, port = v[1:].partition("]")
        if not bracket or "%" in name:  # no zone id (%eth0) in a URL's host
            return None
        try:
            name = str(ipaddress.IPv6Address(name))
        except ValueError:
            return None
    else:
        name, colon, port = v.partition(":")
        port = colon + port
        if not _HOST_NAME.fullmatch(name):
            return None
        name = name.rstrip(".")
        with contextlib.suppress(ValueError):
            name = str(ipaddress.IPv4Address(name))
    if not _HOST_PORT.fullmatch(port):
        return None
    return name


def host_allowed(value: str | None, names: frozenset[str], local_ip: str | None = None) -> bool:
    """May a request with this Host header (None: none was sent) be answered? Allowed: localhost, a
    loopback address (127.0.0.0/8, ::1), `local_ip` (the address the connection came in on) and
    `names` (canonical: admin.listen's address, server.hostname, admin.allowed_hosts; "*": any).
    A browser always sends Host, so a request without one is no DNS rebinding. Pure."""
    if "*" in names or value is None:
        return True
    name = host_name(value)
    if name is None:
        return False
    if name == "localhost" or name in names or name == local_ip:
        return True
    try:
        return ipaddress.ip_address(name).is_loopback
    except ValueError:
        return False


def host_names(cfg: Config) -> frozenset[str]:
    """The `names` of host_allowed for a configuration. Pure."""
    out = {cfg.server.hostname.lower().rstrip("."), *cfg.admin.allowed_hosts}
    if cfg.admin.listen is not None and cfg.admin.listen.host:
        out.add(host_name(f"[{cfg.admin.listen.host}]" if ":" in cfg.admin.listen.host else cfg.admin.listen.host) or "")
    out.discard("")
    return frozenset(out)


class Guard:
    """ASGI layer in front of the FastAPI app (SECURITY): the Host header (DNS rebinding) and a token
    before routing, a bounded body. Every path goes through it: the API, /metrics, the panel's pages
    and its static files."""

    def __init__(self, app: ASGIApp, admin: AdminServer) -> None:
        self.app = app
        self.admin = admin
        self._names: tuple[Config | None, frozenset[str]] = (None, frozenset())
        self._quiet_until = float("-inf")  # time.monotonic() before which a refused Host is counted, not logged
        self._unlogged = 0

    def _host_ok(self, scope: Scope) -> bool:
        hosts = [v for k, v in scope["headers"] if k.lower() == b"host"]
        if len(hosts) > 1:  # RFC 9112 3.2: 400 for more than one Host; h11 refuses it already
            return False
        cfg = self.admin.worker.config
        if self._names[0] is not cfg:  # once per configuration (a reload may change the names)
            self._names = (cfg, host_names(cfg))
        local = scope.get("server")
        local_ip = host_name(f"[{local[0]}]" if ":" in local[0] else local[0]) if local else None
        return host_allowed(hosts[0].decode("latin-1") if hosts else None, self._names[1], local_ip)

    def _host_refused(self, scope: Scope) -> None:
        """The rate-limited warning: one line per HOST_WARN_INTERVAL, with the count of those not logged."""
        now = time.monotonic()
        if now < self._quiet_until:
            self._unlogged += 1
            return
        host = next((v for k, v in scope["headers"] if k.lower() == b"host"), b"")
        client = scope.get("client") or ("-", 0)
        more = f" ({self._unlogged} more refused since the last such line)" if self._unlogged else ""
        log.warning("admin API: %s %s from %s: Host %s is not a name of this server (admin.allowed_hosts): refused%s",
                    scope["method"], sanitize(scope["path"], 100), client[0], sanitize(host, 100), more)  # fmt: skip
        self._quiet_until = now + HOST_WARN_INTERVAL
        self._unlogged = 0

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        if not self._host_ok(scope):
            self._host_refused(scope)
            await _answer(send, 421, "this server does not answer for that Host name (admin.allowed_hosts)")
            return
        path, method = scope["path"], scope["method"]
        headers = {k.lower(): v for k, v in scope["headers"]}
        if path.startswith("/api/") and path not in OPEN_PATHS:
            scheme, _, presented = headers.get(b"authorization", b"").decode("latin-1").partition(" ")
            if scheme.lower() != "bearer" or find_token(self.admin.tokens, presented.strip()) is None:
                if method != "GET":
                    client = scope.get("client") or ("-", 0)
                    log.warning("admin API: %s %s from %s: no valid token", method, sanitize(path, 100), client[0])
                error = ', error="invalid_token"' if presented.strip() else ""
                challenge = f'Bearer realm="mtaserver"{error}'.encode()
                await _answer(send, 401, "a valid bearer token is required", [(b"www-authenticate", challenge)])
                return
        declared = headers.get(b"content-length", b"")
        if declared.isdigit() and int(declared) > MAX_BODY:
            await _answer(send, 413, f"the body is larger than {MAX_BODY} bytes")
            return
        if method not in ("POST", "PUT", "PATCH", "DELETE"):
            await self.app(scope, receive, send)
            return
        data = bytearray()
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                return
            data += message.get("body", b"")
            if len(data) > MAX_BODY:
                await _answer(send, 413, f"the body is larger than {MAX_BODY} bytes")
                return
            if not message.get("more_body", False):
                break
        replayed = False

        async def replay() -> Message:
            nonlocal replayed
            if not replayed:
                replayed = True
                return {"type": "http.request", "body": bytes(data), "more_body": False}
            return await receive()  # http.disconnect, when the client goes

        await self.app(scope, replay, send)


async def _answer(send: Send, status: int, detail: str, extra: list[tuple[bytes, bytes]] | None = None) -> None:
    import json

    body = json.dumps({"detail": detail}).encode()
    headers = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode()), *(extra or [])]
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})


_YAML_TYPES = ("application/yaml", "application/x-yaml", "text/yaml", "text/x-yaml", "text/plain")
_DOCUMENT = {"requestBody": {"required": True, "content": {
    "application/json": {"schema": {"type": "object"}},
    "application/yaml": {"schema": {"type": "string"}},
}}}  # fmt: skip


_bearer = HTTPBearer(auto_error=False, description="a token of admin.token_file")


def _need(role: Role, action: str | None = None) -> Callable[..., Any]:
    """The dependency that admits a caller with `role` or higher (`action`: audit a refusal as it)."""

    async def dependency(request: Request, creds: Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)]) -> Caller:
        admin: AdminServer = request.app.state.admin
        return admin.authorize(request, creds, role, action)

    return dependency


# Who may call what (tokens.py): one alias per audited action, so each refusal is logged as it.
Reader = Annotated[Caller, Depends(_need(Role.READ))]
HoldOperator = Annotated[Caller, Depends(_need(Role.OPERATOR, "queue.hold"))]
ReleaseOperator = Annotated[Caller, Depends(_need(Role.OPERATOR, "queue.release"))]
RequeueOperator = Annotated[Caller, Depends(_need(Role.OPERATOR, "queue.requeue"))]
DeleteOperator = Annotated[Caller, Depends(_need(Role.OPERATOR, "queue.delete"))]
FlushOperator = Annotated[Caller, Depends(_need(Role.OPERATOR, "queue.flush"))]
DropOperator = Annotated[Caller, Depends(_need(Role.OPERATOR, "postscreen.drop"))]
PutAdmin = Annotated[Caller, Depends(_need(Role.ADMIN, "config.put"))]
PatchAdmin = Annotated[Caller, Depends(_need(Role.ADMIN, "config.patch"))]
RawAdmin = Annotated[Caller, Depends(_need(Role.ADMIN))]


def build_app(admin: AdminServer) -> FastAPI:
    app = FastAPI(
        title="mtaserver admin API", version=VERSION, openapi_url="/api/openapi.json", docs_url=None, redoc_url=None,
        description="Queue operations, services, the postscreen cache and the live configuration of one mtaserver node.",
    )  # fmt: skip
    app.state.admin = admin

    def node(result: dict[str, Any]) -> dict[str, Any]:
        return {"node": admin.node, **result}

    # -- health ------------------------------------------------------------------------------

    @app.get("/api/health", tags=["health"])
    async def health() -> dict[str, Any]:
        return {"status": "ok"}

    # -- metrics -----------------------------------------------------------------------------

    @app.get("/metrics", tags=["metrics"], response_class=PlainTextResponse)
    async def metrics_text(
        request: Request, creds: Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)]
    ) -> PlainTextResponse:
        """Prometheus text format, every process summed (metrics.py). Numbers only: no token when
        admin.listen is a loopback address; on any other address the read role."""
        if not ipaddress.ip_address(admin.sock.getsockname()[0]).is_loopback:
            admin.authorize(request, creds, Role.READ, None)
        body = await asyncio.to_thread(metrics.render, admin.worker.store.root)
        return PlainTextResponse(body, media_type="text/plain; version=0.0.4; charset=utf-8")

    # -- queue -------------------------------------------------------------------------------

    @app.get("/api/queue/stats", tags=["queue"])
    async def queue_stats(caller: Reader) -> dict[str, Any]:
        return node(await asyncio.to_thread(admin.ops().stats))

    @app.get("/api/queue/messages", tags=["queue"])
    async def queue_list(
        caller: Reader,
        queue: str | None = None,
        sender: Annotated[str | None, Query(alias="from")] = None,
        recipient: Annotated[str | None, Query(alias="to")] = None,
        older_than: str | None = None,
        newer_than: str | None = None,
        after: str | None = None,
        limit: Annotated[int, Query(ge=1, le=10000)] = 100,
    ) -> dict[str, Any]:
        from ..queue.ops import OpsError, Selector

        try:
            sel = Selector(queue=queue, sender=sender, recipient=recipient,
                           older_than=parse_duration(older_than) if older_than else None,
                           newer_than=parse_duration(newer_than) if newer_than else None)  # fmt: skip
            return node(await asyncio.to_thread(admin.ops().list, queue, sel, after, limit))
        except (OpsError, ValueError) as exc:
            raise HTTPException(400, str(exc)) from None

    @app.get("/api/queue/messages/{queue_id}", tags=["queue"])
    async def queue_show(queue_id: str, caller: Reader) -> dict[str, Any]:
        found = await asyncio.to_thread(admin.ops().show, queue_id)
        if found is None:
            raise HTTPException(404, "no such message")
        return node(found)

    @app.get("/api/queue/shape", tags=["queue"])
    async def queue_shape(caller: Reader, queue: str | None = None) -> dict[str, Any]:
        from ..queue.ops import OpsError

        try:
            return node(await asyncio.to_thread(admin.ops().shape, queue))
        except (OpsError, ValueError) as exc:
            raise HTTPException(400, str(exc)) from None

    async def act(action: str, body: ActionBody, caller: Caller) -> dict[str, Any]:
        from ..queue.ops import OpsError, Selector

        selector = body.model_dump(by_alias=True, exclude_defaults=True)
        sel = Selector(ids=body.ids, all=body.all, queue=body.queue, sender=body.sender, recipient=body.recipient,
                       older_than=body.older_than, newer_than=body.newer_than)  # fmt: skip
        ops = admin.ops()
        outcome: dict[str, Any] = {"status": 500, "error": "internal error (see the log)"}
        try:  # the audit line is written whatever happens, a partial action included
            if action == "delete":
                result = await ops.delete(sel, dry_run=body.dry_run, bounce=body.bounce)
            else:
                result = await getattr(ops, action)(sel, dry_run=body.dry_run)
            outcome = {"status": 200, "count": result.get("count"), "dry_run": body.dry_run}
            if result.get("errors"):
                outcome["errors"] = len(result["errors"])
        except (OpsError, ValueError) as exc:
            outcome = {"status": 400, "error": str(exc)}
            raise HTTPException(400, str(exc)) from None
        finally:
            admin.audit.write(caller.name, caller.ip, f"queue.{action}", selector, outcome)
        return node(result)

    @app.post("/api/queue/hold", tags=["queue"])
    async def queue_hold(body: ActionBody, caller: HoldOperator) -> dict[str, Any]:
        return await act("hold", body, caller)

    @app.post("/api/queue/release", tags=["queue"])
    async def queue_release(body: ActionBody, caller: ReleaseOperator) -> dict[str, Any]:
        return await act("release", body, caller)

    @app.post("/api/queue/requeue", tags=["queue"])
    async def queue_requeue(body: ActionBody, caller: RequeueOperator) -> dict[str, Any]:
        return await act("requeue", body, caller)

    @app.post("/api/queue/delete", tags=["queue"])
    async def queue_delete(body: ActionBody, caller: DeleteOperator) -> dict[str, Any]:
        return await act("delete", body, caller)

    @app.post("/api/queue/flush", tags=["queue"])
    async def queue_flush(caller: FlushOperator) -> dict[str, Any]:
        from ..queue.ops import OpsError

        try:
            result = await admin.ops().flush()
        except OpsError as exc:
            admin.audit.write(caller.name, caller.ip, "queue.flush", {}, {"status": 400, "error": str(exc)})
            raise HTTPException(400, str(exc)) from None
        admin.audit.write(caller.name, caller.ip, "queue.flush", {}, {"status": 200, "count": result.get("count")})
        return node(result)

    # -- services ----------------------------------------------------------------------------

    @app.get("/api/services", tags=["services"])
    async def services(caller: Reader) -> dict[str, Any]:
        return node({"time": time.time(), "services": await admin.services()})

    # -- postscreen cache --------------------------------------------------------------------

    @app.get("/api/postscreen/{ip}", tags=["postscreen"])
    async def postscreen_get(ip: str, caller: Reader) -> dict[str, Any]:
        from ..postscreen.checks import CACHED

        addr = _ip(ip)
        store = admin.cache_store()
        stamps = await store.get(addr)
        if stamps is None:
            raise HTTPException(404, f"no postscreen cache record for {addr}")
        return node({"ip": addr, "store": store.name, "record": stamps.encode(),
                     "stamps": {c.value: stamps.get(c) for c in CACHED}})  # fmt: skip

    @app.delete("/api/postscreen/{ip}", tags=["postscreen"])
    async def postscreen_drop(ip: str, caller: DropOperator) -> dict[str, Any]:
        addr = _ip(ip)
        store = admin.cache_store()
        try:
            dropped = await store.delete(addr)
        except Exception as exc:  # noqa: BLE001 - the store's own errors (sqlite3, redis, OSError): the client is told
            admin.audit.write(caller.name, caller.ip, "postscreen.drop", {"ip": addr}, {"status": 503, "error": str(exc)})
            raise HTTPException(503, f"postscreen cache {store.name}: {exc}") from None
        admin.audit.write(caller.name, caller.ip, "postscreen.drop", {"ip": addr}, {"status": 200, "count": int(dropped)})
        return node({"ip": addr, "store": store.name, "dropped": dropped})

    # -- configuration -----------------------------------------------------------------------

    @app.get("/api/config", tags=["config"])
    async def config_get(caller: Reader) -> dict[str, Any]:
        cfg = admin.worker.config
        return node({"file": cfg.source, "config": config_json(cfg)})

    @app.get("/api/config/raw", tags=["config"], response_class=PlainTextResponse)
    async def config_raw(caller: RawAdmin) -> PlainTextResponse:
        try:
            text = Path(admin.worker.path).read_text(encoding="utf-8")
        except OSError as exc:
            raise HTTPException(500, f"cannot read the configuration file: {exc.strerror or exc}") from None
        return PlainTextResponse(text, media_type="application/yaml; charset=utf-8")

    @app.put("/api/config", tags=["config"], openapi_extra=_DOCUMENT)
    async def config_put(request: Request, caller: PutAdmin) -> JSONResponse:
        ctype = request.headers.get("content-type", "application/json").split(";")[0].strip().lower()
        return await admin.change_config(caller, "config.put", await _read_body(request), yaml_body=ctype in _YAML_TYPES)

    @app.patch("/api/config", tags=["config"], openapi_extra={"requestBody": {"required": True, "content": {
        "application/merge-patch+json": {"schema": {"type": "object"}}, "application/json": {"schema": {"type": "object"}}}}})
    async def config_patch(request: Request, caller: PatchAdmin) -> JSONResponse:
        return await admin.change_config(caller, "config.patch", await _read_body(request), yaml_body=False)

    # -- the web panel (panel/): pages at /, static files at /static/ -----------------------
    from .panel import install as install_panel

    install_panel(app, admin)
    return app

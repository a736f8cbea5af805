"""Who checks a password: the users file or Dovecot, behind one interface for the SMTP session.

DESCRIPTION
    The session completes the SASL exchange (sasl.py), then calls

        result = await authenticator.authenticate(login, password, client_ip=.., local_ip=.., secured=..)

    and answers from the result:
        ok                      235 2.7.0 (model.AUTH_OK); result.login is the login to record
        not ok, temporary       454 4.7.0 (model.AUTH_TEMPFAIL); not a failure for failures.py
        not ok                  535 5.7.8 (model.AUTH_FAILED); counts in failures.py
    `reason` is for the log (never contains the password).

    FileAuthenticator(users, executor)  verifies against the users file (users.py). The hash
        work (tens of ms for argon2id) runs in `executor` through loop.run_in_executor, so
        the event loop keeps serving other sessions; None is this process's own pool of
        HASH_THREADS threads (argon2id takes 64 MiB a check: the pool bounds memory and CPU).
        argon2-cffi, bcrypt and hashlib release the GIL while hashing.
    DovecotAuthenticator(endpoint, timeout)  asks Dovecot (dovecot.py) under `timeout`
        seconds; unreachable, slow or temporarily failing Dovecot is `temporary=True`.
        `check()` tells at start whether Dovecot answers (CONFIG.md: if not, AUTH is not
        offered, logged).

    `build(cfg, config_source_path)` returns (authenticator, "") or (None, why not): no
    users_file with backend file. A users file that does not load raises ValueError
    (a config error: the old config keeps running on SIGHUP). Every authenticator has
    `close()`; the app calls it at shutdown and when a reload replaces it.

SECURITY
    Handles passwords: passes them to the verifier only; never logs them or puts them in
    `reason`. Empty logins or passwords are refused without asking anyone.

CONFIG
    auth.backend, auth.users_file, auth.dovecot_socket, auth.timeout
"""

from __future__ import annotations

import asyncio
from concurrent.futures import Executor
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol, assert_never

from ..config import AuthConfig
from ..values import Endpoint, parse_endpoint
from .dovecot import DovecotAuthClient, DovecotUnavailable, Handshake
from .users import Users, UsersFile


@dataclass(frozen=True, slots=True, kw_only=True)
class AuthResult:
    ok: bool
    login: str | None = None  # the login to record; None unless ok
    temporary: bool = False  # the verifier could not answer: 454 4.7.0, try again later
    reason: str = ""  # for the log


class Authenticator(Protocol):
    async def authenticate(self, login: str, password: str, *, client_ip: str, local_ip: str, secured: bool) -> AuthResult:
        ...

    async def close(self) -> None:
        ...


HASH_THREADS = 2
_hash_pool: Executor | None = None


def _default_pool() -> Executor:
    """Made on first use, so each worker process (after fork) has its own."""
    global _hash_pool
    if _hash_pool is None:
        from concurrent.futures import ThreadPoolExecutor

        _hash_pool = ThreadPoolExecutor(HASH_THREADS, thread_name_prefix="auth-hash")
    return _hash_pool


class FileAuthenticator:
    """Checks passwords against the users file, off the event loop."""

    def __init__(self, users: Users, executor: Executor | None = None) -> None:
        self.users = users
        self._executor = executor

    async def authenticate(self, login: str, password: str, *, client_ip: str, local_ip: str, secured: bool) -> AuthResult:
        if not login or not password:
            return AuthResult(ok=False, reason="empty login or password")
        loop = asyncio.get_running_loop()
        good = await loop.run_in_executor(self._executor or _default_pool(), self.users.verify, login, password)
        if good:
            return AuthResult(ok=True, login=login)
        return AuthResult(ok=False, reason="unknown login" if login not in self.users else "wrong password")

    async def close(self) -> None:
        return None


class DovecotAuthenticator:
    """Checks passwords by asking Dovecot; one connection, reused, reopened after an error."""

    def __init__(self, endpoint: Endpoint, timeout: float, *, service: str = "smtp") -> None:
        self.endpoint = endpoint
        self.timeout = timeout
        self._client = DovecotAuthClient(endpoint, service=service)

    async def authenticate(self, login: str, password: str, *, client_ip: str, local_ip: str, secured: bool) -> AuthResult:
        if not login or not password:
            return AuthResult(ok=False, reason="empty login or password")
        started = asyncio.get_running_loop().time()
        try:
            async with asyncio.timeout(self.timeout):
                reply = await self._client.authenticate(login, password, client_ip=client_ip, local_ip=local_ip, secured=secured)
        except TimeoutError:
            # Only a connection that answered nothing at all meanwhile is stuck: start afresh. One
            # held-back answer (Dovecot delays a guesser's refusals) must not fail everyone's AUTH.
            if not self._client.answered_since(started):
                await self._client.close()
            return AuthResult(ok=False, temporary=True, reason=f"dovecot at {self.endpoint} did not answer in {self.timeout:g}s")
        except DovecotUnavailable as exc:
            return AuthResult(ok=False, temporary=True, reason=str(exc))
        if reply.ok:
            return AuthResult(ok=True, login=reply.user or login, reason="dovecot: ok")
        return AuthResult(ok=False, temporary=reply.temporary, reason=f"dovecot: {reply.reason}")

    async def check(self) -> str:
        """"" when Dovecot answers the handshake within the timeout, else why not."""
        try:
            async with asyncio.timeout(self.timeout):
                handshake: Handshake = await self._client.check()
        except TimeoutError:
            return f"dovecot at {self.endpoint} did not answer in {self.timeout:g}s"
        except DovecotUnavailable as exc:
            return str(exc)
        return "" if "PLAIN" in handshake.mechanisms else f"dovecot at {self.endpoint} does not offer PLAIN"

    async def close(self) -> None:
        await self._client.close()


def build(cfg: AuthConfig, config_source_path: str, *, executor: Executor | None = None) -> tuple[Authenticator | None, str]:
    """The configured authenticator, or (None, why AUTH cannot be offered). ValueError: a bad users file."""
    match cfg.backend:
        case "file":
            if not cfg.users_file:
                return None, "auth.users_file is not set"
            path = resolve(config_source_path, cfg.users_file)
            try:
                users = UsersFile.load(path)
            except OSError as exc:
                raise ValueError(f"auth.users_file {path}: {exc.strerror or exc}") from None
            except ValueError as exc:
                raise ValueError("\n".join(f"{path}: {line}" for line in str(exc).splitlines())) from None
            return FileAuthenticator(users, executor), ""
        case "dovecot":
            socket = cfg.dovecot_socket
            endpoint = parse_endpoint(f"unix:{socket}" if socket.startswith("/") else socket)
            return DovecotAuthenticator(endpoint, cfg.timeout), ""
        case _:
            assert_never(cfg.backend)


def resolve(config_source_path: str, path: str) -> Path:
    """A path from the config, relative to the config file's directory."""
    p = Path(path)
    if p.is_absolute():
        return p
    base = Path(config_source_path).resolve().parent if config_source_path else Path.cwd()
    return base / p

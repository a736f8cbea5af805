"""The postscreen cache: a temporary allowlist of five expiry stamps per client IP.

DESCRIPTION
    The record of a client (Postfix postscreen_cache_map: five expiry stamps, the client IP
    as its key), its text form and the pure decisions over it live in stamps.py; they are
    re-exported here. This module keeps records.

    A record is written only at the end of a session in which some test passed and none
    failed (verdict.py decides); the stores below just keep records.

    Stores (`CacheStore`): one small async interface, two backends.
      SqliteStore  data_dir/postscreen_cache.sqlite, WAL mode, busy timeout: several
                   worker processes share the file. One thread per store owns the
                   connection, so blocking calls never run on the event loop.
      RedisStore   cache.url (redis://host:port/db), keys "mtaserver:postscreen:<ip>":
                   shared by every node.
    Both fail open: a backend error is logged and a lookup answers "no record" (the
    client is screened as new), a write or a cleanup is skipped. `delete` (the admin
    API's drop of one record) raises instead: an administrator asked for it. Cleanup deletes a record
    only if it is unchanged since it was read, so a pass written meanwhile by another
    process or node survives.

SECURITY
    Keys are client IPs from the socket; values are written only by us. A record read
    from a shared store is parsed as integers only.

CONFIG
    postscreen.cache.{backend,url,retention,cleanup_interval}, server.data_dir
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import logging
import os
import re
import sqlite3
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from ..config import CacheConfig
from .checks import Check
from .stamps import (  # noqa: F401 (re-exported: the cache's record and its pure decisions)
    DISABLED,
    NEW,
    NEW_CLIENT,
    RECENT_LIMIT,
    RECENT_TTL,
    RecentRecords,
    Stamps,
    allowlist_non_dnsbl,
    checks_due,
    is_new,
    is_pass_old,
    record_passes,
    retain,
)

log = logging.getLogger("postscreen")

# ---------------------------------------------------------------------------------------------
# Stores.


@dataclass(frozen=True, slots=True)
class CleanupResult:
    retained: int
    dropped: int


class CacheStore(Protocol):
    name: str  # for log lines: "sqlite:/path" or "redis://host:port/db"

    async def get(self, ip: str) -> Stamps | None: ...

    async def put(self, ip: str, stamps: Stamps) -> None: ...

    async def delete(self, ip: str) -> bool: ...  # the admin API's drop; False: there was none

    async def cleanup(self, keep: Callable[[Stamps], bool]) -> CleanupResult: ...

    async def close(self) -> None: ...


def open_store(cfg: CacheConfig, data_dir: Path) -> CacheStore:
    """The store postscreen.cache asks for. Opening does no I/O; the first call connects."""
    if cfg.backend == "redis":
        assert cfg.url is not None  # config validation guarantees it
        return RedisStore(cfg.url)
    return SqliteStore(Path(data_dir) / "postscreen_cache.sqlite")


async def cleanup(store: CacheStore, enabled: Iterable[Check], now: float, retention: float) -> CleanupResult:
    """One full cleanup pass (postscreen_cache_cleanup_interval), logged like Postfix."""
    on = frozenset(enabled)
    result = await store.cleanup(lambda s: retain(s, on, now, retention))
    log.info("cache %s full cleanup: retained=%d dropped=%d entries", store.name, result.retained, result.dropped)
    return result


class SqliteStore:
    """SQLite in WAL mode; every statement autocommits; one thread owns the connection."""

    _BATCH = 1000

    def __init__(self, path: Path, *, busy_timeout: float = 5.0) -> None:
        self.path = Path(path)
        self.name = f"sqlite:{self.path}"
        self._busy_ms = int(busy_timeout * 1000)
        self._conn: sqlite3.Connection | None = None
        self._pool = concurrent.futures.ThreadPoolExecutor(max_workers=1, thread_name_prefix="postscreen-cache")
        self._closed = False

    async def _run(self, fn: Callable[..., object], *args: object) -> object:
        return await asyncio.get_running_loop().run_in_executor(self._pool, fn, *args)

    def _db(self) -> sqlite3.Connection:  # in the store's thread
        if self._conn is None:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            conn = sqlite3.connect(self.path, isolation_level=None, timeout=self._busy_ms / 1000)
            try:
                conn.execute(f"PRAGMA busy_timeout = {self._busy_ms}")
                conn.execute("PRAGMA journal_mode = WAL")
                conn.execute("PRAGMA synchronous = NORMAL")  # a lost pass costs one re-screen, not mail
                conn.execute("CREATE TABLE IF NOT EXISTS postscreen_cache (ip TEXT PRIMARY KEY, stamps TEXT NOT NULL) WITHOUT ROWID")
            except BaseException:
                conn.close()
                raise
            try:
                os.chmod(self.path, 0o600)
            except OSError:
                pass
            self._conn = conn
        return self._conn

    def _get(self, ip: str) -> str | None:
        row = self._db().execute("SELECT stamps FROM postscreen_cache WHERE ip = ?", (ip,)).fetchone()
        return row[0] if row else None

    def _put(self, ip: str, value: str) -> None:
        self._db().execute(
            "INSERT INTO postscreen_cache (ip, stamps) VALUES (?, ?) ON CONFLICT (ip) DO UPDATE SET stamps = excluded.stamps",
            (ip, value),
        )

    def _delete(self, ip: str) -> int:
        return self._db().execute("DELETE FROM postscreen_cache WHERE ip = ?", (ip,)).rowcount

    def _cleanup(self, keep: Callable[[Stamps], bool]) -> CleanupResult:
        db, retained, dropped, after = self._db(), 0, 0, ""
        while True:  # keyset pages: no read transaction stays open across the whole table
            rows = db.execute("SELECT ip, stamps FROM postscreen_cache WHERE ip > ? ORDER BY ip LIMIT ?", (after, self._BATCH)).fetchall()
            if not rows:
                return CleanupResult(retained, dropped)
            doomed = [(ip, value) for ip, value in rows if not keep(Stamps.decode(value))]
            retained += len(rows) - len(doomed)
            if doomed:
                db.execute("BEGIN IMMEDIATE")
                try:
                    for ip, value in doomed:
                        dropped += db.execute("DELETE FROM postscreen_cache WHERE ip = ? AND stamps = ?", (ip, value)).rowcount
                    db.execute("COMMIT")
                except BaseException:
                    db.execute("ROLLBACK")
                    raise
            after = rows[-1][0]

    async def get(self, ip: str) -> Stamps | None:
        try:
            value = await self._run(self._get, ip)
        except (sqlite3.Error, OSError) as exc:
            log.warning("cache %s lookup error for %s: %s", self.name, ip, exc)
            return None
        return Stamps.decode(value) if isinstance(value, str) else None

    async def put(self, ip: str, stamps: Stamps) -> None:
        try:
            await self._run(self._put, ip, stamps.encode())
        except (sqlite3.Error, OSError) as exc:
            log.warning("cache %s update error for %s: %s", self.name, ip, exc)

    async def delete(self, ip: str) -> bool:
        """Unlike a lookup, an error here is raised (sqlite3.Error, OSError): the caller asked for it."""
        return bool(await self._run(self._delete, ip))

    async def cleanup(self, keep: Callable[[Stamps], bool]) -> CleanupResult:
        try:
            result = await self._run(self._cleanup, keep)
        except (sqlite3.Error, OSError) as exc:
            log.warning("cache %s cleanup error: %s", self.name, exc)
            return CleanupResult(0, 0)
        assert isinstance(result, CleanupResult)
        return result

    def _close(self) -> None:
        if self._conn is not None:
            self._conn.close()
            self._conn = None

    async def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        await self._run(self._close)
        self._pool.shutdown(wait=True)


# Delete a key only if it still holds what cleanup read: a pass written meanwhile survives.
_DELETE_IF_UNCHANGED = "if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end return 0"


class RedisStore:
    """Redis (redis-py asyncio); every command under `timeout` seconds."""

    PREFIX = "mtaserver:postscreen:"

    def __init__(self, url: str, *, timeout: float = 2.0, prefix: str = PREFIX) -> None:
        import redis.asyncio as aioredis  # imported here: only redis users need the package

        self.name = url
        self._prefix = prefix
        self._errors: tuple[type[BaseException], ...] = (aioredis.RedisError, OSError, TimeoutError)
        self._redis = aioredis.Redis.from_url(url, socket_timeout=timeout, socket_connect_timeout=timeout, decode_responses=True)
        self._delete_if_unchanged = self._redis.register_script(_DELETE_IF_UNCHANGED)

    async def get(self, ip: str) -> Stamps | None:
        try:
            value = await self._redis.get(self._prefix + ip)
        except self._errors as exc:
            log.warning("cache %s lookup error for %s: %s", self.name, ip, exc)
            return None
        return Stamps.decode(value) if value is not None else None

    async def put(self, ip: str, stamps: Stamps) -> None:
        try:
            await self._redis.set(self._prefix + ip, stamps.encode())
        except self._errors as exc:
            log.warning("cache %s update error for %s: %s", self.name, ip, exc)

    async def delete(self, ip: str) -> bool:
        """Unlike a lookup, an error here is raised (redis errors, OSError): the caller asked for it."""
        return bool(await self._redis.delete(self._prefix + ip))

    async def cleanup(self, keep: Callable[[Stamps], bool]) -> CleanupResult:
        retained = dropped = 0
        try:
            batch: list[str] = []
            match = re.sub(r"([*?\[\]\\])", r"\\\1", self._prefix) + "*"  # the prefix is literal, not a glob
            async for key in self._redis.scan_iter(match=match, count=500):
                batch.append(key)
                if len(batch) >= 500:
                    r, d = await self._cleanup_batch(batch, keep)
                    retained, dropped, batch = retained + r, dropped + d, []
            if batch:
                r, d = await self._cleanup_batch(batch, keep)
                retained, dropped = retained + r, dropped + d
        except self._errors as exc:
            log.warning("cache %s cleanup error: %s", self.name, exc)
        return CleanupResult(retained, dropped)

    async def _cleanup_batch(self, keys: list[str], keep: Callable[[Stamps], bool]) -> tuple[int, int]:
        retained = dropped = 0
        for key, value in zip(keys, await self._redis.mget(keys), strict=True):
            if value is None:
                continue  # gone meanwhile
            if keep(Stamps.decode(value)):
                retained += 1
            else:
                dropped += int(await self._delete_if_unchanged(keys=[key], args=[value]))
        return retained, dropped

    async def close(self) -> None:
        await self._redis.aclose()

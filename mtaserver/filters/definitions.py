"""ClamAV virus definitions: custom signature files, freshclam, clamd RELOAD, on our own schedule.

DESCRIPTION
    Carbonio lets freshclam's daemon schedule itself with `Checks` (checks per day), which
    rounds every frequency to hours (SPEC 4.2). Here the queue-manager worker runs the
    schedule, so `antivirus.definitions.update_frequency` is honoured to the second, from 1s
    to weeks. One update (`DefinitionsUpdater.run_once`):

      1. each `custom_signatures` source (http(s):// URL or local file) is fetched within
         `timeout` and `max_size` into data_dir/state/definitions/ under its own file name;
      2. it is validated twice before it may reach clamd: `sigtool --list-sigs` (the
         signature names; a malformed line is refused) and `clamscan -d <file>` on an empty
         file, which loads it with libclamav as clamd will (sigtool alone accepts a body
         signature with bad hex that would make clamd's reload fail). A refused file is
         not installed; the one installed before stays;
      3. a file whose content changed is installed atomically into `database_dir` (copy to
         a `.tmp` name clamd ignores, fsync, rename, fsync the directory); a file installed
         by us whose source left the config is removed;
      4. with `freshclam: true`, freshclam runs once (`--config-file` of our generated
         freshclam.conf, no daemon) for the official databases, from `mirrors`;
      5. when anything in `database_dir` changed, clamd gets `zRELOAD\\0` on
         antivirus.clamd.address and must answer `RELOADING` (clamd >= 0.103 loads the new
         engine in the background and serves with the old one meanwhile; no restart);
      6. the status is written atomically to data_dir/state/definitions.json: last attempt,
         last success, outcome ("ok" or "failed: <why>"), the signature count of
         `database_dir` (sigtool: the header of each .cvd/.cld, the names of each plain
         file), each source's result, what we installed. One log line per update:
         `DEFINITIONS ok: 123 signatures (x.ndb installed; freshclam off; reload ok)` or
         `DEFINITIONS failed: 123 signatures (...): <why>`.

    freshclam.conf (`freshclam_conf`): one `DatabaseMirror` per host name, or one
    `PrivateMirror` per http(s)://host[:port] mirror (freshclam lets a PrivateMirror
    override DatabaseMirror and the DNS version check, so the two kinds are not mixed);
    `Checks` = 86400 / update_frequency rounded, within freshclam's 1..50, written for
    whoever runs that file as a daemon (we run it once per tick); no `NotifyClamd`, since
    we send RELOAD ourselves and only after a change; no `DatabaseCustomURL`, since the
    custom files go through our validation and atomic install instead of freshclam's.
    freshclam cannot be tested against a loopback mirror beyond failure: it accepts only
    official .cvd/.cld files signed with ClamAV's key.

    The pure parts (`freshclam_conf`, `freshclam_checks`, `next_run`, `count_listed`,
    `parse_cvd_info`, `source_file_name`, `summarize`) take their inputs and `now`.

SECURITY
    Downloads files from the configured URLs (bounded by max_size and timeout; HTTPS
    certificates verified) and runs freshclam, sigtool and clamscan as the server's user,
    with argument lists, never a shell. Nothing downloaded reaches clamd before libclamav
    has loaded it once outside clamd. The server's user needs write access to
    `database_dir` (Debian: /var/lib/clamav belongs to clamav; a group-writable directory
    or a directory of clamd's own). Tool output reaches logs only through sanitize().

STANDARDS
    clamd(8) commands (RELOAD, z-prefixed NUL-terminated); freshclam.conf(5); ClamAV
    signature formats (.ndb, .hdb, .ldb, ...); RFC 9110 (the HTTP downloads).

CONFIG
    antivirus.enabled, antivirus.clamd.address, antivirus.definitions.* (mirrors,
    custom_signatures, update_frequency, freshclam, database_dir, freshclam_path,
    sigtool_path, clamscan_path, timeout, max_size), server.data_dir
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import logging
import math
import os
import pwd
import re
import shutil
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable, Iterable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from ..config import SIGNATURE_EXTENSIONS, Config, Definitions, resolve_path
from ..logutil import sanitize
from ..values import Endpoint

log = logging.getLogger("definitions")

RETRY_AFTER = 300.0  # a failed update is tried again this soon (or at update_frequency, if shorter)
MAX_WAIT = 3600.0  # the scheduler looks at the config and the clock at least this often
MAX_OUTPUT = 1 << 20  # bytes of a tool's output we keep (sigtool --list-sigs prints one name per signature)
CLAMD_REPLY_MAX = 1024
OFFICIAL_EXTENSIONS = ("cvd", "cld", "cud")
FRESHCLAM_CHECKS = (1, 50)  # freshclam.conf(5) Checks: 1..50 per day


# -- pure ---------------------------------------------------------------------------------------


def freshclam_checks(frequency: float) -> int:
    """Checks per day for freshclam.conf: 86400 / frequency, rounded, within 1..50. Unlike
    Carbonio's integer hour arithmetic (SPEC 4.2), `1w` gives 1 and `30m` gives 48."""
    lo, hi = FRESHCLAM_CHECKS
    return max(lo, min(hi, round(86400.0 / frequency))) if frequency > 0 else hi


def freshclam_conf(d: Definitions, *, database_dir: str | None = None, owner: str | None = None, max_attempts: int = 3) -> str:
    """The freshclam.conf text for `d` (see the module header for what is and is not in it)."""
    lines = [
        "# Written by mtaserver from antivirus.definitions; it is rewritten before each run.",
        "# mtaserver runs freshclam once per update (no daemon) and sends clamd RELOAD itself,",
        "# so NotifyClamd is not set; custom signatures are installed by mtaserver, not here.",
        f"DatabaseDirectory {database_dir or d.database_dir}",
    ]
    if owner:
        lines.append(f"DatabaseOwner {owner}")  # freshclam started as root drops to this user
    lines += [f"Checks {freshclam_checks(d.update_frequency)}", f"MaxAttempts {max_attempts}"]
    private = [m for m in d.mirrors if "://" in m]
    if private:
        lines += [f"PrivateMirror {m.rstrip('/')}" for m in private]
    else:
        lines += [f"DatabaseMirror {m}" for m in d.mirrors]
    lines += ["TestDatabases yes", "Foreground yes", ""]
    return "\n".join(lines)


def next_run(last: float | None, now: float, frequency: float, *, failed: bool = False, retry: float = RETRY_AFTER) -> float:
    """When the next update is due: `frequency` after the last attempt (sooner, `retry`, after a
    failure), now when there never was one. A last attempt in the future (the clock was set
    back) waits one interval from now, never longer."""
    interval = min(frequency, retry) if failed else frequency
    if last is None:
        return now
    return min(last + interval, now + interval)


def count_listed(output: str) -> int:
    """Signatures in `sigtool --list-sigs` output: one name per line."""
    return sum(1 for line in output.splitlines() if line.strip())


_CVD_FIELD = re.compile(r"^(Version|Signatures|Build time):\s*(.+?)\s*$", re.MULTILINE)


def parse_cvd_info(output: str) -> dict[str, Any]:
    """`sigtool --info` of a .cvd/.cld -> {"version": int, "signatures": int, "build_time": str}
    (the keys found)."""
    out: dict[str, Any] = {}
    for key, value in _CVD_FIELD.findall(output):
        k = key.lower().replace(" ", "_")
        out[k] = int(value) if k != "build_time" and value.isdigit() else value
    return out


def source_file_name(source: str) -> str:
    """The file name a source installs as: the last path segment of a URL or a path."""
    if "://" in source:
        return urllib.parse.unquote(urllib.parse.urlsplit(source).path).rsplit("/", 1)[-1]
    return Path(source).name


def is_signature_file(name: str) -> bool:
    ext = name.rsplit(".", 1)[-1].lower() if "." in name else ""
    return ext in SIGNATURE_EXTENSIONS or ext in OFFICIAL_EXTENSIONS


def summarize(sources: Iterable[SourceResult], freshclam: str, reload: str) -> str:
    """The outcome: "ok", or "failed: " and every problem, `; `-separated."""
    problems = [f"{s.file}: {s.result}" for s in sources if not s.ok]
    if freshclam.startswith("failed"):
        problems.append(f"freshclam {freshclam}")
    if reload.startswith("failed"):
        problems.append(f"clamd reload {reload}")
    return "failed: " + "; ".join(problems) if problems else "ok"


# -- values -------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True, kw_only=True)
class SourceResult:
    source: str
    file: str
    result: str  # installed | unchanged | refused: <why> | failed: <why>
    signatures: int | None = None
    sha256: str | None = None

    @property
    def ok(self) -> bool:
        return self.result in ("installed", "unchanged")


@dataclass(frozen=True, slots=True, kw_only=True)
class UpdateStatus:
    last_attempt: float
    last_success: float | None
    outcome: str  # "ok" | "failed: <why>"
    signatures: int | None  # in database_dir after the update; None when it could not be counted
    sources: list[SourceResult] = field(default_factory=list)
    freshclam: str = "off"  # off | ok | failed: <why>
    reload: str = "not needed"  # not needed | ok | failed: <why>
    databases: dict[str, dict[str, Any]] = field(default_factory=dict)  # official files: version, signatures
    installed: dict[str, str] = field(default_factory=dict)  # file name -> the source we installed it from
    runs: int = 0

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def read_status(data_dir: Path | str) -> dict[str, Any]:
    """The last update's status (data_dir/state/definitions.json); {} before the first."""
    return _read_json(Path(data_dir) / "state" / "definitions.json")


def _read_json(path: Path) -> dict[str, Any]:
    try:
        doc = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    return doc if isinstance(doc, dict) else {}


# -- I/O ----------------------------------------------------------------------------------------


class UpdateError(Exception):
    """One step of an update failed; the text says why (it goes into the status)."""


class DefinitionsUpdater:
    """Runs updates (`run_once`) and their schedule (`run`); owned by the queue-manager worker.

    `cfg_getter` returns the current Config (a reload swaps it); `reconfigure()` after a
    reload that changed `antivirus` makes the scheduler run an update now.
    """

    def __init__(
        self, cfg_getter: Callable[[], Config], *, state_dir: Path | None = None, clock: Callable[[], float] = time.time,
        freshclam_attempts: int = 3,
    ) -> None:
        self._cfg = cfg_getter
        self._freshclam_attempts = freshclam_attempts  # freshclam's MaxAttempts per mirror (it waits 5 s between)
        self.state_dir = state_dir or cfg_getter().data_path / "state"
        self.state_path = self.state_dir / "definitions.json"
        self._clock = clock
        self._lock = asyncio.Lock()
        self._wake = asyncio.Event()
        self._run_now = False
        self._last: tuple[float, bool] | None = None  # (attempt, failed) as known here, if the state file cannot say
        self._counts: dict[tuple[str, int, int], tuple[int | None, dict[str, Any]]] = {}  # (name, size, mtime_ns) -> count

    # -- schedule --

    def reconfigure(self) -> None:
        """The config changed: update now with the new settings."""
        self._run_now = True
        self._wake.set()

    async def run(self, stop: asyncio.Event) -> None:
        """Update whenever `next_run` says so, until `stop` is set. An update that raises is
        logged and counts as failed; the loop goes on."""
        while not stop.is_set():
            cfg = self._cfg()
            d = cfg.antivirus.definitions
            status = _read_json(self.state_path)
            now = self._clock()
            last, failed = _float(status.get("last_attempt")), str(status.get("outcome", "ok")) != "ok"
            if self._last is not None and (last is None or self._last[0] > last):
                last, failed = self._last  # the state file could not be written: never a busy loop
            due = now if self._run_now else next_run(last, now, d.update_frequency, failed=failed)
            if not cfg.antivirus.enabled:
                due = math.inf  # nothing to update for; a reload that enables it wakes us
            if due > now:
                await self._wait(stop, min(due - now, MAX_WAIT))
                continue
            self._run_now = False
            try:
                result = await self.run_once()
                self._last = (result.last_attempt, result.outcome != "ok")
            except Exception as exc:  # never let the schedule (or the queue manager's worker) die of it
                self._last = (self._clock(), True)
                log.exception("DEFINITIONS failed: %s", sanitize(_why(exc)))  # noqa: TRY401 (the why first, then the trace)
                with contextlib.suppress(OSError):
                    self._write_status({**status, "last_attempt": self._last[0], "outcome": f"failed: {_why(exc)}"})

    async def _wait(self, stop: asyncio.Event, seconds: float) -> None:
        self._wake.clear()
        waiters = [asyncio.ensure_future(stop.wait()), asyncio.ensure_future(self._wake.wait())]
        try:
            await asyncio.wait(waiters, timeout=seconds, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for w in waiters:
                w.cancel()

    # -- one update --

    async def run_once(self) -> UpdateStatus:
        async with self._lock:
            return await self._update()

    async def _update(self) -> UpdateStatus:
        cfg = self._cfg()
        d = cfg.antivirus.definitions
        db = Path(d.database_dir)
        started = self._clock()
        previous = _read_json(self.state_path)
        installed: dict[str, str] = dict(previous.get("installed") or {})
        staging = self.state_dir / "definitions"
        staging.mkdir(parents=True, exist_ok=True)
        changed = False

        results: list[SourceResult] = []
        for src in d.custom_signatures:
            res = await self._custom(cfg, src, staging, db)
            results.append(res)
            if res.result == "installed":
                changed = True
            if res.ok:
                installed[res.file] = src
        wanted = {source_file_name(s) for s in d.custom_signatures}
        for name in sorted(set(installed) - wanted):  # its source left the config: ours to remove
            try:
                os.unlink(db / name)
                changed = True
                log.info("DEFINITIONS removed %s (no longer in antivirus.definitions.custom_signatures)", sanitize(name))
            except FileNotFoundError:
                pass
            except OSError as exc:  # stays in the manifest: tried again next time
                log.warning("DEFINITIONS cannot remove %s: %s", sanitize(name), _why(exc))
                continue
            del installed[name]

        freshclam = "off"
        if d.freshclam:
            before = _snapshot(db)
            freshclam = await self._freshclam(d)
            changed = changed or _snapshot(db) != before

        reload = "not needed"
        if changed:
            try:
                await clamd_reload(cfg.antivirus.clamd.address, timeout=cfg.antivirus.clamd.timeout)
                reload = "ok"
            except (OSError, TimeoutError, UpdateError) as exc:
                reload = f"failed: {_why(exc)}"

        signatures, databases = await self._count(d, db)
        outcome = summarize(results, freshclam, reload)
        status = UpdateStatus(
            last_attempt=started,
            last_success=started if outcome == "ok" else _float(previous.get("last_success")),
            outcome=outcome, signatures=signatures, sources=results, freshclam=freshclam, reload=reload,
            databases=databases, installed=installed, runs=int(previous.get("runs") or 0) + 1,
        )
        self._write_status(status.to_dict())
        what = ", ".join(f"{s.file} {s.result.split(':', 1)[0]}" for s in results) or "no custom signatures"
        counted = "?" if signatures is None else signatures
        brief = f"{counted} signatures ({what}; freshclam {freshclam.split(':', 1)[0]}; reload {reload.split(':', 1)[0]})"
        if outcome == "ok":
            log.info("DEFINITIONS ok: %s", sanitize(brief, 1000))
        else:
            log.warning("DEFINITIONS failed: %s: %s", sanitize(brief, 1000), sanitize(outcome.removeprefix("failed: "), 1000))
        return status

    async def _custom(self, cfg: Config, src: str, staging: Path, db: Path) -> SourceResult:
        d = cfg.antivirus.definitions
        name = source_file_name(src)
        new = staging / name
        try:
            try:
                if "://" in src:
                    await asyncio.to_thread(_download, src, new, d.max_size, d.timeout)
                else:
                    await asyncio.to_thread(_copy_bounded, resolve_path(cfg.source, src), new, d.max_size)
            except (OSError, ValueError, UpdateError) as exc:
                return SourceResult(source=src, file=name, result=f"failed: {_why(exc)}")
            try:
                count = await self._validate(d, new, staging)
            except UpdateError as exc:
                return SourceResult(source=src, file=name, result=f"refused: {exc}")
            digest = await asyncio.to_thread(_sha256, new)
            if (db / name).exists() and await asyncio.to_thread(_sha256, db / name) == digest:
                return SourceResult(source=src, file=name, result="unchanged", signatures=count, sha256=digest)
            try:
                await asyncio.to_thread(_install, new, db / name)
            except OSError as exc:
                return SourceResult(source=src, file=name, result=f"failed: install: {_why(exc)}")
            return SourceResult(source=src, file=name, result="installed", signatures=count, sha256=digest)
        finally:
            with contextlib.suppress(OSError):
                new.unlink()

    async def _validate(self, d: Definitions, path: Path, staging: Path) -> int:
        """Signatures in `path`, or UpdateError naming what sigtool or libclamav refused."""
        rc, out = await run_tool([d.sigtool_path, f"--list-sigs={path.resolve()}"], d.timeout)
        if rc != 0 or any(line.startswith("ERROR") for line in out.splitlines()):
            raise UpdateError(f"sigtool: {_last_lines(out) or f'exit {rc}'}")
        empty = staging / "empty"
        empty.write_bytes(b"")
        rc, out2 = await run_tool([d.clamscan_path, "--no-summary", f"--database={path.resolve()}", str(empty)], d.timeout)
        if rc != 0:  # 1 would be a hit in an empty file, 2 an error: neither is a database clamd can load
            raise UpdateError(f"clamscan: {_last_lines(out2) or f'exit {rc}'}")
        return count_listed(out)

    async def _freshclam(self, d: Definitions) -> str:
        conf = self.state_dir / "freshclam.conf"
        try:
            owner = pwd.getpwuid(os.stat(d.database_dir).st_uid).pw_name
        except (OSError, KeyError):
            owner = None
        _write_atomic(conf, freshclam_conf(d, owner=owner, max_attempts=self._freshclam_attempts).encode())
        try:
            rc, out = await run_tool([d.freshclam_path, f"--config-file={conf}", "--stdout"], d.timeout)
        except UpdateError as exc:
            return f"failed: {exc}"
        return "ok" if rc == 0 else f"failed: exit {rc}: {_last_lines(out, error_only=True)}"

    async def _count(self, d: Definitions, db: Path) -> tuple[int | None, dict[str, dict[str, Any]]]:
        """Signatures in `database_dir` (None if a file could not be counted) and the official
        databases' headers. Counts are cached by (name, size, mtime)."""
        total: int | None = 0
        databases: dict[str, dict[str, Any]] = {}
        seen = {}
        try:
            entries = sorted(os.scandir(db), key=lambda e: e.name)
        except OSError:
            return None, {}
        for e in entries:
            if not e.is_file() or not is_signature_file(e.name):
                continue
            st = e.stat()
            key = (e.name, st.st_size, st.st_mtime_ns)
            if key not in self._counts:
                official = e.name.rsplit(".", 1)[-1].lower() in OFFICIAL_EXTENSIONS
                try:
                    if official:
                        rc, out = await run_tool([d.sigtool_path, f"--info={Path(e.path).resolve()}"], d.timeout)
                        info = parse_cvd_info(out) if rc == 0 else {}
                        self._counts[key] = (info.get("signatures"), info)
                    else:
                        rc, out = await run_tool([d.sigtool_path, f"--list-sigs={Path(e.path).resolve()}"], d.timeout)
                        self._counts[key] = (count_listed(out) if rc == 0 else None, {})
                except UpdateError:
                    self._counts[key] = (None, {})
            seen[key] = self._counts[key]
            n, info = self._counts[key]
            if info:
                databases[e.name] = info
            total = None if total is None or n is None else total + n
        self._counts = seen
        return total, databases

    def _write_status(self, doc: dict[str, Any]) -> None:
        _write_atomic(self.state_path, json.dumps(doc, indent=1, sort_keys=True).encode())


async def run_tool(argv: Sequence[str], timeout: float) -> tuple[int, str]:
    """Run a tool (no shell), stdout and stderr together; killed past `timeout`. UpdateError
    when it cannot start or times out."""
    try:
        proc = await asyncio.create_subprocess_exec(
            *argv, stdin=asyncio.subprocess.DEVNULL, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT
        )
    except OSError as exc:
        raise UpdateError(f"{Path(argv[0]).name}: cannot run: {exc.strerror or exc}") from None
    try:
        out, _ = await asyncio.wait_for(proc.communicate(), timeout)
    except TimeoutError:
        raise UpdateError(f"{Path(argv[0]).name}: no result within {timeout:g}s") from None
    finally:  # timed out, or cancelled (shutdown): the tool does not outlive its update
        if proc.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                proc.kill()
            await proc.wait()
    return proc.returncode or 0, out[-MAX_OUTPUT:].decode("utf-8", "replace")


async def clamd_reload(address: Endpoint, *, timeout: float) -> None:
    """Ask clamd to reload its database (`zRELOAD\\0` -> `RELOADING\\0`); UpdateError otherwise."""

    async def ask() -> bytes:
        if address.unix_path:
            reader, writer = await asyncio.open_unix_connection(address.unix_path)
        else:
            reader, writer = await asyncio.open_connection(address.host, address.port)
        try:
            writer.write(b"zRELOAD\0")
            await writer.drain()
            reply = b""
            while b"\0" not in reply and len(reply) < CLAMD_REPLY_MAX and (chunk := await reader.read(256)):
                reply += chunk
            return reply
        finally:
            writer.close()
            with contextlib.suppress(OSError):
                await writer.wait_closed()

    reply = await asyncio.wait_for(ask(), timeout)
    text = reply.split(b"\0", 1)[0].strip().decode("ascii", "replace")
    if text != "RELOADING":
        raise UpdateError(f"clamd answered {text!r}")


def _download(url: str, dest: Path, max_size: int, timeout: float) -> None:
    req = urllib.request.Request(url, headers={"User-Agent": "mtaserver-definitions"})
    try:
        with urllib.request.urlopen(req, timeout=timeout) as resp:
            length = resp.headers.get("Content-Length")
            if length and length.isdigit() and int(length) > max_size:
                raise UpdateError(f"larger than max_size ({length} > {max_size} bytes)")
            _copy_stream(resp, dest, max_size)
    except urllib.error.HTTPError as exc:
        raise UpdateError(f"HTTP {exc.code} {exc.reason}") from None
    except urllib.error.URLError as exc:
        raise UpdateError(f"cannot download: {exc.reason}") from None


def _copy_bounded(src: Path, dest: Path, max_size: int) -> None:
    with open(src, "rb") as f:
        _copy_stream(f, dest, max_size)


def _copy_stream(stream: Any, dest: Path, max_size: int) -> None:
    size = 0
    with open(dest, "wb") as out:
        while chunk := stream.read(65536):
            size += len(chunk)
            if size > max_size:
                raise UpdateError(f"larger than max_size ({max_size} bytes)")
            out.write(chunk)


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(1 << 16):
            h.update(chunk)
    return h.hexdigest()


def _install(src: Path, dest: Path) -> None:
    """Copy into clamd's directory under a name clamd ignores, fsync, rename over, fsync the dir."""
    tmp = dest.with_name(f".{dest.name}.mtaserver.tmp")
    try:
        with open(src, "rb") as f, open(tmp, "wb") as out:
            shutil.copyfileobj(f, out)
            out.flush()
            os.fchmod(out.fileno(), 0o644)  # clamd runs as its own user
            os.fsync(out.fileno())
        os.replace(tmp, dest)
    except BaseException:
        with contextlib.suppress(OSError):
            tmp.unlink()
        raise
    _fsync_dir(dest.parent)


def _write_atomic(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    with open(tmp, "wb") as out:
        out.write(data)
        out.flush()
        os.fsync(out.fileno())
    os.replace(tmp, path)
    _fsync_dir(path.parent)


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _snapshot(db: Path) -> dict[str, tuple[int, int]]:
    try:
        entries = [e for e in os.scandir(db) if e.is_file() and is_signature_file(e.name)]
        return {e.name: (e.stat().st_size, e.stat().st_mtime_ns) for e in entries}
    except OSError:
        return {}


def _last_lines(out: str, n: int = 2, *, error_only: bool = False) -> str:
    lines = [x.strip() for x in out.splitlines() if x.strip()]
    if error_only:
        lines = [x for x in lines if x.startswith(("ERROR", "LibClamAV Error"))] or lines
    return " | ".join(lines[-n:])[:300]


def _why(exc: BaseException) -> str:
    if isinstance(exc, UpdateError):
        return str(exc)
    if isinstance(exc, TimeoutError):
        return "timed out"
    if isinstance(exc, OSError):
        return exc.strerror or str(exc)
    return repr(exc)


def _float(v: Any) -> float | None:
    return float(v) if isinstance(v, (int, float)) and not isinstance(v, bool) else None

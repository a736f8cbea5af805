"""The root writer: live configuration while server.user is set, written by the root supervisor.

DESCRIPTION
    With server.user set every serving process runs as the mail user and the config file is
    root's. PUT and PATCH /api/config (and the panel's Save) still apply live: the admin API
    (in the queue manager's process) prepares and validates the new text as it does without
    server.user (configfile.py), then hands it to the root supervisor over a private channel;
    the supervisor decides and writes.

    The channel: `channel()` makes an AF_UNIX SOCK_SEQPACKET socket pair before anything is
    forked. The supervisor keeps one end and never gives it to a child; the other end is given
    only to the queue manager's process (closed in the SMTP workers), and kept by the supervisor
    for that process's restarts. Packets, each whole (SEQPACKET never splits or merges them):

      API -> supervisor    b"B" + JSON {"id", "op": "change"|"revert", "size"}   a request begins
                           b"D" + up to CHUNK bytes of the new file's UTF-8 text, `size` in all
      supervisor -> API    b"A" + JSON {"id", "status", "ok", "changed", "errors", "file", "backup"}

    `RootWriter` (the supervisor's side, driven by its select loop) takes one request at a
    time: a new b"B" drops a request still incomplete; a request larger than MAX_TEXT, one
    whose packets do not all arrive within REQUEST_TIMEOUT, or a packet that is neither is
    dropped (logged). For "change" it:
      1. loads the current file and the proposed text with config.load (the same loader;
         errors `key.path: message`, 422);
      2. applies the policy, configfile.root_only_changes: a change to a key that names a file,
         a directory, an identity or the admin surface is refused, naming the key (409);
      3. checks the files the new config names (runtime.check_files) with the mail user's
         effective ids (as_user): the workers read them as that user, and root reads nothing
         through the mail user's tree on a request (422);
      4. writes the file atomically (configfile.write_atomically: the old one as <file>.bak,
         owner and mode kept), and reloads: its own SIGHUP path (validate, log level, steering,
         SIGHUP forwarded to every worker) -- the answer {ok, changed (config.diff)} follows.
    "revert" puts back the text the last "change" replaced, only while the file still holds
    what that change wrote, and reloads again: the API asks for it when its own process
    refused the reload (it should not: the same checks ran first).

    `RootChannel` (the API's side, asyncio): `await request(op, text)` sends one request and
    waits up to ANSWER_WAIT for the answer with its id (a late answer to an earlier request is
    skipped). The API's config lock makes it one request at a time.

SECURITY
    The peer is the mail user's process: everything it sends is untrusted input to root. Only
    a whole file text crosses (bounded; never a path, never a command); root parses it with the
    safe loader and validates it fully; the policy keeps every path, identity and the admin
    surface as root set them, so what root reads at the next start and where it writes stay
    root's choice. The file written is always the one the server was started with. Nothing is
    read from the peer outside a request, and a broken request is dropped, not waited for.

CONFIG
    server.user, server.group (who the checks run as); every key, through config.load and the
    policy (configfile.ROOT_ONLY).
"""

from __future__ import annotations

import asyncio
import json
import logging
import secrets
import socket
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from .. import config as config_mod
from ..config import ConfigError

log = logging.getLogger("master")

MAX_TEXT = 4 << 20  # bytes of a proposed file (a PUT body is at most 1 MiB; a PATCH adds to the current file)
CHUNK = 32 * 1024  # bytes of text per packet (well under the socket buffer: a SEQPACKET must fit whole)
REQUEST_TIMEOUT = 10.0  # seconds for all of a request's packets to arrive
ANSWER_WAIT = 60.0  # seconds the API waits for the supervisor's answer
MAX_ERRORS = 50  # error lines in one answer


def channel() -> tuple[socket.socket, socket.socket]:
    """(the supervisor's end, the queue manager's end), made before forking (DESCRIPTION)."""
    ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    ours.setblocking(False)
    return ours, theirs


def _packet(kind: bytes, obj: dict[str, Any]) -> bytes:
    return kind + json.dumps(obj, separators=(",", ":")).encode()


# ---------------------------------------------------------------------------------------------
# The supervisor's side.


class RootWriter:
    """Serves the channel in the supervisor: `on_readable()` when select says so, `expire(now)`
    on every turn of the loop. `check_files(cfg)` runs as the mail user (the caller wraps it);
    `reload()` is the supervisor's SIGHUP path."""

    def __init__(
        self, sock: socket.socket, path: str, *, check_files: Callable[[Any], list[tuple[str, str]]], reload: Callable[[], None]
    ) -> None:
        self.sock = sock
        self.path = path
        self.check_files = check_files
        self.reload = reload
        self._request: dict[str, Any] | None = None  # {"id", "op", "size", "data", "since"}
        self._last: tuple[str, str] | None = None  # (the text replaced, the text written) by the last change

    def fileno(self) -> int:
        return self.sock.fileno()

    def timeout(self, now: float) -> float | None:
        """Seconds until the request in progress expires; None when there is none."""
        return None if self._request is None else max(0.0, self._request["since"] + REQUEST_TIMEOUT - now)

    def expire(self, now: float) -> None:
        if self._request is not None and now - self._request["since"] > REQUEST_TIMEOUT:
            log.error("config channel: request %s incomplete after %gs: dropped", self._request["id"], REQUEST_TIMEOUT)
            self._request = None

    def on_readable(self) -> None:
        while True:
            try:
                packet = self.sock.recv(CHUNK + 1024)
            except (BlockingIOError, InterruptedError):
                return
            except OSError as exc:
                log.error("config channel: %s", exc.strerror or exc)
                return
            if not packet:  # the other end closed everywhere: cannot happen while we hold it
                return
            try:
                self._packet(packet, time.monotonic())
            except Exception:  # the root supervisor outlives any request (its sender may be compromised)
                log.exception("config channel: a request failed: dropped")
                self._request = None

    def _packet(self, packet: bytes, now: float) -> None:
        kind, body = packet[:1], packet[1:]
        if kind == b"B":
            if self._request is not None:
                log.error("config channel: request %s dropped: a new one began", self._request["id"])
            self._request = None
            try:
                head = json.loads(body)
                req = {"id": int(head["id"]), "op": str(head["op"]), "size": int(head["size"]), "data": bytearray(), "since": now}
            except (ValueError, KeyError, TypeError):
                log.error("config channel: a request that does not parse: dropped")
                return
            if req["op"] not in ("change", "revert") or not 0 <= req["size"] <= MAX_TEXT:
                self._answer(req["id"], 400, [f"(channel): op {req['op'][:20]!r} of {req['size']} bytes: refused"])
                return
            self._request = req
        elif kind == b"D" and self._request is not None:
            self._request["data"] += body
            if len(self._request["data"]) > self._request["size"]:
                log.error("config channel: request %s longer than announced: dropped", self._request["id"])
                self._request = None
                return
        else:
            log.error("config channel: an unexpected packet: dropped")
            self._request = None
            return
        req = self._request
        if req is not None and len(req["data"]) == req["size"]:
            self._request = None
            status, errors, extra = self._handle(req["op"], bytes(req["data"]))
            self._answer(req["id"], status, errors, **extra)

    def _answer(self, rid: int, status: int, errors: list[str], **extra: Any) -> None:
        errors = [e[:1000] for e in errors[:MAX_ERRORS]]
        answer = _packet(b"A", {"id": rid, "status": status, "ok": status == 200, "errors": errors, **extra})
        try:
            self.sock.send(answer)
        except OSError as exc:  # the API's process went, or does not read: it times out
            log.error("config channel: the answer to request %d was not sent: %s", rid, exc.strerror or exc)

    def _handle(self, op: str, data: bytes) -> tuple[int, list[str], dict[str, Any]]:
        """(status, errors, more of the answer) of one request."""
        from . import configfile

        try:
            current = Path(self.path).read_text(encoding="utf-8")
        except OSError as exc:
            return 500, [f"(file): cannot read {self.path}: {exc.strerror or exc}"], {}
        if op == "revert":
            if self._last is None or self._last[1] != current:
                return 409, ["(revert): the file is not the one the last change wrote: left as it is"], {}
            previous, self._last = self._last[0], None
            try:
                configfile.write_atomically(Path(self.path), previous, backup=False)
            except OSError as exc:
                return 500, [f"(file): cannot write {self.path}: {exc.strerror or exc}"], {}
            log.warning("config channel: the previous %s put back (the admin API's process refused the new one)", self.path)
            self.reload()
            return 200, [], {}
        try:
            text = data.decode("utf-8")
        except UnicodeDecodeError:
            return 422, ["(document): not UTF-8"], {}
        try:
            old = config_mod.load(self.path, text=current)
        except ConfigError as exc:
            errors = [configfile.strip_location(x, self.path) for x in exc.errors]
            return 409, [f"(file): the current file does not load; edit it as root: {errors[0]}", *errors[1:]], {}
        try:
            new = config_mod.load(self.path, text=text)
        except ConfigError as exc:
            return 422, [configfile.strip_location(x, self.path) for x in exc.errors], {}
        refused = configfile.root_only_changes(old, new)
        if refused:
            log.warning("config channel: change refused: %s", "; ".join(refused)[:2000])
            return 409, refused, {}
        problems = self.check_files(new)
        if problems:
            return 422, [f"{key}: {message}" for key, message in problems], {}
        try:
            configfile.write_atomically(Path(self.path), text)
        except OSError as exc:
            return 500, [f"(file): cannot write {self.path} or its .bak: {exc.strerror or exc}"], {}
        self._last = (current, text)
        changed = config_mod.diff(old, new)
        log.info(
            "config channel: %s written for the admin API: %s",
            self.path,
            f"changed {', '.join(changed)}" if changed else "no change",
        )
        self.reload()
        real = str(Path(self.path).resolve())
        return 200, [], {"changed": changed, "file": real, "backup": real + ".bak"}


# ---------------------------------------------------------------------------------------------
# The API's side.


class ChannelError(Exception):
    """No answer from the supervisor (gone, or too slow)."""


class RootChannel:
    def __init__(self, sock: socket.socket) -> None:
        sock.setblocking(False)
        self.sock = sock
        self._next = secrets.randbits(31) + 1  # not 1: a late answer meant for a restarted process's request never matches

    async def request(self, op: str, text: str = "", *, timeout: float = ANSWER_WAIT) -> dict[str, Any]:
        """Send one request; the supervisor's answer (a dict, DESCRIPTION). ChannelError when none."""
        loop = asyncio.get_running_loop()
        rid, self._next = self._next, self._next + 1
        data = text.encode("utf-8")
        try:
            async with asyncio.timeout(timeout):
                await loop.sock_sendall(self.sock, _packet(b"B", {"id": rid, "op": op, "size": len(data)}))
                for i in range(0, len(data), CHUNK):
                    await loop.sock_sendall(self.sock, b"D" + data[i : i + CHUNK])
                while True:
                    packet = await loop.sock_recv(self.sock, 256 * 1024)
                    if not packet:
                        raise ChannelError("the supervisor closed the channel")
                    if packet[:1] != b"A":
                        continue
                    try:
                        answer = json.loads(packet[1:])
                    except ValueError:
                        continue
                    if isinstance(answer, dict) and answer.get("id") == rid:
                        return answer
        except TimeoutError:
            raise ChannelError(f"no answer from the supervisor within {timeout:g}s") from None
        except OSError as exc:
            raise ChannelError(f"the channel to the supervisor: {exc.strerror or exc}") from None

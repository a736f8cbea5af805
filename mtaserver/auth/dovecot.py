"""A client of Dovecot's authentication protocol: ask Dovecot whether a login and password are good.

DESCRIPTION
    What Postfix does with `smtpd_sasl_type = dovecot`: connect to Dovecot's auth-client
    socket (`unix:/run/dovecot/auth-client`, or `host:port` for a `service auth`
    inet_listener), and per authentication send one PLAIN request with the credentials as
    its initial response:

        S: VERSION 1 2 / MECH PLAIN plaintext / ... / SPID n / CUID n / COOKIE hex / DONE
        C: VERSION 1 2 / CPID <our pid>                         (sent at connect, pipelined)
        C: AUTH <id> PLAIN service=smtp nologin lip=.. rip=.. [secured] resp=<base64 \\0login\\0password>
        S: OK <id> user=<canonical login> ...                   good
        S: FAIL <id> [user=..] [code=temp_fail | temp] [reason=..] ...   refused

    (fields separated by TAB, lines by LF). "code=temp_fail" (Dovecot 2.3+) or "temp"
    (2.2 and older) is a temporary failure (the passdb is down): the session answers 454
    4.7.0, not 535. Any other FAIL is a refusal. A CONT (Dovecot wants another round, which
    PLAIN with an initial response never needs) is answered with CANCEL and counts as a
    refusal. The credentials travel inside base64, so a TAB or LF in them cannot inject
    protocol fields; lip/rip come from our sockets and are tab-escaped all the same.

    One connection per `DovecotAuthClient` (one per worker), opened at the first request
    and reused. Requests are multiplexed by id: Dovecot delays each FAIL (auth_failure_delay,
    2 s by default, more for a penalised client IP), and one guesser must not hold up the
    AUTH of everyone else in the worker. A reader task owned by the connection hands each
    reply to the request waiting for its id. A lost connection fails every request in
    flight with DovecotUnavailable; the next request reconnects.

    `authenticate` raises DovecotUnavailable (connect refused, handshake broken, timeout,
    connection lost) and returns a DovecotReply otherwise. The caller wraps every call in
    its time budget (backend.DovecotAuthenticator does, with auth.timeout).

    The pure parts (escaping, the request line, reading replies and the handshake) are
    module functions tested without a socket; the class is the thin asyncio shell.

SECURITY
    Dovecot is trusted as an oracle but its lines are parsed defensively (bounded by the
    stream limit, unknown fields ignored). The password is sent only inside the AUTH line
    and never logged; `DovecotUnavailable` messages never contain it.

STANDARDS
    Dovecot Authentication Protocol v1.2 (doc.dovecot.org "Dovecot Authentication Protocol";
    Dovecot src/auth/auth-client-connection.c, auth-request-handler.c), RFC 4616 (PLAIN).

CONFIG
    auth.dovecot_socket, auth.timeout (through backend.py)
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import os
from dataclasses import dataclass

from ..values import Endpoint

PROTOCOL_MAJOR = 1
PROTOCOL_MINOR = 2
LINE_LIMIT = 65536  # Dovecot's own is 16384 (AUTH_CLIENT_MAX_LINE_LENGTH); extra fields may be long


class DovecotUnavailable(Exception):
    """Dovecot cannot answer now: temporary, the client may try again later."""


@dataclass(frozen=True, slots=True)
class DovecotReply:
    ok: bool
    user: str | None = None  # Dovecot's name for the login (auth_username_format may change it)
    temporary: bool = False
    reason: str = ""  # Dovecot's reason= text, or a word about the reply


@dataclass(frozen=True, slots=True)
class Handshake:
    major: int
    mechanisms: frozenset[str]


# ---------------------------------------------------------------------------------------------
# The protocol, pure.

_ESCAPES = {"\x01": "\x011", "\0": "\x010", "\t": "\x01t", "\r": "\x01r", "\n": "\x01n"}
_UNESCAPES = {"0": "\0", "1": "\x01", "t": "\t", "r": "\r", "n": "\n", "l": "\n"}


def escape(value: str) -> str:
    """Dovecot's tab-escaping (str_append_tabescaped)."""
    return "".join(_ESCAPES.get(c, c) for c in value)


def unescape(value: str) -> str:
    out, i = [], 0
    while i < len(value):
        c = value[i]
        if c == "\x01" and i + 1 < len(value):
            out.append(_UNESCAPES.get(value[i + 1], value[i + 1]))
            i += 2
            continue
        out.append(c)
        i += 1
    return "".join(out)


def client_hello(pid: int) -> bytes:
    return f"VERSION\t{PROTOCOL_MAJOR}\t{PROTOCOL_MINOR}\nCPID\t{pid}\n".encode("ascii")


def auth_request(
    request_id: int, login: str, password: str, *, client_ip: str, local_ip: str, secured: bool, service: str = "smtp"
) -> bytes:
    """The AUTH line for one PLAIN authentication (authzid empty); resp= must come last."""
    resp = base64.b64encode(b"\0" + login.encode("utf-8") + b"\0" + password.encode("utf-8")).decode("ascii")
    fields = ["AUTH", str(request_id), "PLAIN", f"service={escape(service)}", "nologin"]
    if local_ip:
        fields.append(f"lip={escape(local_ip)}")
    if client_ip:
        fields.append(f"rip={escape(client_ip)}")
    if secured:
        fields.append("secured")
    fields.append(f"resp={resp}")
    return ("\t".join(fields) + "\n").encode("utf-8")


def cancel_request(request_id: int) -> bytes:
    return f"CANCEL\t{request_id}\n".encode("ascii")


def parse_handshake_line(line: str, state: dict[str, object]) -> Handshake | None:
    """Feed the server's handshake lines one by one; returns the Handshake at DONE.

    `state` is a dict the caller keeps across calls. Raises DovecotUnavailable for a
    handshake that is not Dovecot's auth protocol v1."""
    fields = line.split("\t")
    match fields[0]:
        case "VERSION":
            if len(fields) < 3 or not fields[1].isdigit():
                raise DovecotUnavailable(f"bad VERSION line from dovecot: {line[:80]!r}")
            if int(fields[1]) != PROTOCOL_MAJOR:
                raise DovecotUnavailable(f"dovecot speaks auth protocol {fields[1]}, we speak {PROTOCOL_MAJOR}")
            state["major"] = int(fields[1])
        case "MECH":
            if len(fields) >= 2:
                mechs = state.setdefault("mechanisms", set())
                assert isinstance(mechs, set)
                mechs.add(fields[1].upper())
        case "DONE":
            if "major" not in state:
                raise DovecotUnavailable("dovecot ended its handshake without VERSION")
            mechs = state.get("mechanisms", set())
            assert isinstance(mechs, set)
            return Handshake(int(str(state["major"])), frozenset(mechs))
        case _:
            pass  # SPID, CUID, COOKIE and anything newer: not needed to authenticate
    return None


def parse_reply(line: str) -> tuple[str, int, DovecotReply | None]:
    """An answer line -> (command, request id, reply). The reply is None for CONT and unknown lines;
    id is 0 when the line names none."""
    fields = line.split("\t")
    command = fields[0]
    if len(fields) < 2 or not fields[1].isdigit():
        return command, 0, None
    request_id = int(fields[1])
    params: dict[str, str] = {}
    for f in fields[2:]:
        name, _, value = f.partition("=")
        params.setdefault(name, unescape(value))
    user = params.get("user") or None
    match command:
        case "OK":
            return command, request_id, DovecotReply(True, user, False, "")
        case "FAIL":
            temporary = params.get("code") == "temp_fail" or "temp" in params
            reason = params.get("reason") or params.get("code") or ("temporary failure" if temporary else "refused")
            return command, request_id, DovecotReply(False, user, temporary, reason)
        case _:
            return command, request_id, None


# ---------------------------------------------------------------------------------------------
# The asyncio shell.


class _Connection:
    """One handshaken connection and the reader task that routes replies to requests."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, handshake: Handshake) -> None:
        self.reader, self.writer, self.handshake = reader, writer, handshake
        self.pending: dict[int, asyncio.Future[DovecotReply]] = {}
        self.closed = False
        self.last_answer = asyncio.get_running_loop().time()  # loop time of the last line read
        self.task = asyncio.get_running_loop().create_task(self._read_replies(), name="dovecot-auth-reader")

    async def _read_replies(self) -> None:
        error = "connection closed by dovecot"
        try:
            while True:
                raw = await self.reader.readline()
                if not raw.endswith(b"\n"):
                    break
                self.last_answer = asyncio.get_running_loop().time()
                command, request_id, reply = parse_reply(raw.rstrip(b"\r\n").decode("utf-8", "replace"))
                future = self.pending.pop(request_id, None)
                if future is None or future.done():
                    continue  # an answer to a request that timed out, or a line we do not know
                if reply is None:  # CONT: PLAIN had everything in resp=; give up on this request
                    self.writer.write(cancel_request(request_id))
                    reply = DovecotReply(False, None, False, f"unexpected {command[:20]!r} from dovecot")
                future.set_result(reply)
        except (OSError, ValueError) as exc:  # ValueError: a line over LINE_LIMIT
            error = f"connection to dovecot lost: {exc}"
        finally:
            self.closed = True
            for future in self.pending.values():
                if not future.done():
                    future.set_exception(DovecotUnavailable(error))
            self.pending.clear()
            self.writer.close()

    async def request(self, request_id: int, line: bytes) -> DovecotReply:
        if self.closed:
            raise DovecotUnavailable("connection to dovecot closed")
        future: asyncio.Future[DovecotReply] = asyncio.get_running_loop().create_future()
        self.pending[request_id] = future
        try:
            self.writer.write(line)
            await self.writer.drain()
            return await future
        except OSError as exc:
            self.closed = True  # not to be reused, even before the reader task has seen the end
            self.writer.close()
            raise DovecotUnavailable(f"connection to dovecot lost: {exc}") from None
        finally:
            self.pending.pop(request_id, None)

    @property
    def usable(self) -> bool:
        return not self.closed and not self.writer.is_closing()

    async def close(self) -> None:
        self.closed = True
        self.task.cancel()
        with contextlib.suppress(asyncio.CancelledError, OSError):
            await self.task
        with contextlib.suppress(OSError):
            await self.writer.wait_closed()


class DovecotAuthClient:
    """Authenticates through Dovecot over one reused connection. Call `close()` at shutdown."""

    def __init__(self, endpoint: Endpoint, *, service: str = "smtp") -> None:
        self.endpoint = endpoint
        self.service = service
        self._conn: _Connection | None = None
        self._connecting = asyncio.Lock()
        self._last_id = 0

    async def authenticate(self, login: str, password: str, *, client_ip: str, local_ip: str, secured: bool) -> DovecotReply:
        """One PLAIN authentication. Raises DovecotUnavailable; the caller applies the timeout."""
        conn = await self._connection()
        self._last_id = self._last_id % 0xFFFFFFFF + 1  # a 32-bit id, never 0
        line = auth_request(
            self._last_id, login, password, client_ip=client_ip, local_ip=local_ip, secured=secured, service=self.service
        )  # fmt: skip
        return await conn.request(self._last_id, line)

    def answered_since(self, when: float) -> bool:
        """Dovecot answered something on the connection after `when` (loop time): it is alive,
        and a request that timed out was only held back (Dovecot delays refusals)."""
        return self._conn is not None and self._conn.last_answer > when

    async def check(self) -> Handshake:
        """Connect (if needed) and return Dovecot's handshake; DovecotUnavailable when it cannot."""
        return (await self._connection()).handshake

    async def close(self) -> None:
        conn, self._conn = self._conn, None
        if conn is not None:
            await conn.close()

    async def _connection(self) -> _Connection:
        async with self._connecting:
            if self._conn is not None and self._conn.usable:
                return self._conn
            if self._conn is not None:
                await self._conn.close()
                self._conn = None
            self._conn = await self._connect()
            return self._conn

    async def _connect(self) -> _Connection:
        ep = self.endpoint
        try:
            if ep.unix_path:
                reader, writer = await asyncio.open_unix_connection(ep.unix_path, limit=LINE_LIMIT)
            else:
                reader, writer = await asyncio.open_connection(ep.host, ep.port, limit=LINE_LIMIT)
        except OSError as exc:
            raise DovecotUnavailable(f"cannot connect to dovecot at {ep}: {exc.strerror or exc}") from None
        try:
            writer.write(client_hello(os.getpid()))
            state: dict[str, object] = {}
            while True:
                raw = await reader.readline()
                if not raw.endswith(b"\n"):
                    raise DovecotUnavailable(f"dovecot at {ep} closed the connection during the handshake")
                handshake = parse_handshake_line(raw.rstrip(b"\r\n").decode("utf-8", "replace"), state)
                if handshake is not None:
                    break
            if "PLAIN" not in handshake.mechanisms:
                raise DovecotUnavailable(f"dovecot at {ep} does not offer PLAIN (auth_mechanisms)")
        except BaseException as exc:
            writer.close()
            if isinstance(exc, (OSError, ValueError)):
                raise DovecotUnavailable(f"dovecot at {ep}: handshake failed: {exc}") from None
            raise
        return _Connection(reader, writer, handshake)

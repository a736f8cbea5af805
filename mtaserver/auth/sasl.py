"""The server side of an SMTP AUTH exchange (PLAIN, LOGIN), and the replies of AUTH.

DESCRIPTION
    Sans-IO. The session parses `AUTH <mechanism> [initial-response]`, then:

        exchange, step = sasl.start(mechanism, initial, offered)
        while isinstance(step, sasl.Challenge):
            send "334 " + step.text            # base64, "" for an empty challenge
            step = exchange.respond(line)      # the client's next line, as read (CRLF optional)
        Credentials -> ask the Authenticator (backend.py), answer AUTH_OK / AUTH_FAILED / AUTH_TEMPFAIL
        Failed      -> send step.reply

    A step is one of:
        Challenge(text)                       send "334 <text>", wait for the next line
        Credentials(authzid, login, password)  the exchange is complete; nothing is verified yet
        Failed(reply)                          the exchange is over; send the reply

    PLAIN (RFC 4616): one message `authzid NUL authcid NUL passwd`, UTF-8. Without an
    initial response the server sends an empty challenge ("334 "). The message must have
    exactly two NULs and a non-empty authcid and passwd, else 501 5.5.2. An authzid that is
    neither empty nor the login is refused with AUTH_FAILED: we do not let one login act
    for another (Postfix/Cyrus without proxy rights do the same).

    LOGIN (draft-murchison-sasl-login): challenges "Username:" and "Password:" in base64
    ("VXNlcm5hbWU6", "UGFzc3dvcmQ6"); an initial response is the username. Values are UTF-8
    and may not hold NUL (they end up in a PLAIN message to Dovecot).

    "=" as initial response means an empty one (RFC 4954 4). "*" from the client cancels
    (501 5.7.0). A line that is not strict base64 is 501 5.5.2. A line (initial response
    included) over AUTH_LINE_MAX octets is 500 5.5.6; the session that reads with a
    bounded buffer may send LINE_TOO_LONG itself and drop the exchange.

    A `Failed` whose reply is AUTH_FAILED counts as a failed authentication (failures.py);
    the syntax replies (501, 500, 504) do not, as in Postfix.

    The other AUTH replies of CONFIG.md's table are constants here so that the session and
    its tests use one spelling.

SECURITY
    Reads untrusted client text: every line is length-checked before it is decoded, base64
    is decoded strictly, UTF-8 strictly. The password is held only in the returned
    Credentials; it is never logged or put into a reply.

STANDARDS
    RFC 4954 (SMTP AUTH: 334 continuation, "*" cancel, "=" empty initial response, the
    12288-octet line, enhanced codes 5.7.8, 5.7.0, 5.5.2, 5.7.11, 4.7.0),
    RFC 4616 (PLAIN), RFC 4648 (base64), draft-murchison-sasl-login-00 (LOGIN).

CONFIG
    None: the session passes the offered mechanisms (auth.mechanisms, filtered by TLS state).
"""

from __future__ import annotations

import base64
import binascii
from collections.abc import Sequence
from dataclasses import dataclass
from enum import Enum
from typing import assert_never

from ..model import AUTH_ABORTED, AUTH_FAILED, CANNOT_DECODE, LINE_TOO_LONG, UNSUPPORTED_MECHANISM, Reply

AUTH_LINE_MAX = 12288  # RFC 4954 4: an AUTH command line or response line, CRLF included

USERNAME_CHALLENGE = "VXNlcm5hbWU6"  # base64("Username:")
PASSWORD_CHALLENGE = "UGFzc3dvcmQ6"  # base64("Password:")


@dataclass(frozen=True, slots=True)
class Challenge:
    """Send `334 <text>` and pass the client's next line to `Exchange.respond`."""

    text: str


@dataclass(frozen=True, slots=True)
class Credentials:
    """The exchange is complete. `authzid` is "" or equal to `login`."""

    authzid: str
    login: str
    password: str

    def __repr__(self) -> str:  # never show the password in a traceback or a log
        return f"Credentials(authzid={self.authzid!r}, login={self.login!r}, password=<hidden>)"


@dataclass(frozen=True, slots=True)
class Failed:
    """The exchange is over; send `reply`."""

    reply: Reply


Step = Challenge | Credentials | Failed


class Mechanism(str, Enum):
    PLAIN = "PLAIN"
    LOGIN = "LOGIN"


class _Want(Enum):
    PLAIN_MESSAGE = "plain message"
    USERNAME = "username"
    PASSWORD = "password"
    NOTHING = "nothing"  # the exchange is over


class Exchange:
    """One AUTH exchange. Created by `start`; `respond` takes each client line after a Challenge."""

    __slots__ = ("mechanism", "_want", "_username")

    def __init__(self, mechanism: Mechanism | None) -> None:
        self.mechanism = mechanism
        self._username = ""
        match mechanism:
            case None:
                self._want = _Want.NOTHING
            case Mechanism.PLAIN:
                self._want = _Want.PLAIN_MESSAGE
            case Mechanism.LOGIN:
                self._want = _Want.USERNAME
            case _:
                assert_never(mechanism)

    @property
    def first_challenge(self) -> Challenge:
        """What to send when AUTH came without an initial response."""
        return Challenge(USERNAME_CHALLENGE if self.mechanism is Mechanism.LOGIN else "")

    @property
    def done(self) -> bool:
        return self._want is _Want.NOTHING

    def respond(self, line: bytes) -> Step:
        """The client's line after a 334 (trailing CRLF or LF optional)."""
        if self._want is _Want.NOTHING:
            raise RuntimeError("respond() after the exchange ended")
        if len(line) > AUTH_LINE_MAX:
            return self._fail(LINE_TOO_LONG)
        text = line.rstrip(b"\r\n").strip(b" \t")
        if text == b"*":
            return self._fail(AUTH_ABORTED)
        data = _decode(text)
        if data is None:
            return self._fail(CANNOT_DECODE)
        return self._take(data)

    def _take(self, data: bytes) -> Step:
        match self._want:
            case _Want.PLAIN_MESSAGE:
                self._want = _Want.NOTHING
                return _plain(data)
            case _Want.USERNAME:
                name = _login_value(data)
                if name is None:
                    return self._fail(CANNOT_DECODE)
                self._username, self._want = name, _Want.PASSWORD
                return Challenge(PASSWORD_CHALLENGE)
            case _Want.PASSWORD:
                password = _login_value(data)
                if password is None:
                    return self._fail(CANNOT_DECODE)
                self._want = _Want.NOTHING
                return Credentials("", self._username, password)
            case _Want.NOTHING:
                raise RuntimeError("no response expected")
            case _:
                assert_never(self._want)

    def _fail(self, reply: Reply) -> Failed:
        self._want = _Want.NOTHING
        self._username = ""
        return Failed(reply)


def start(mechanism: str, initial: str | None, offered: Sequence[str]) -> tuple[Exchange, Step]:
    """Begin `AUTH <mechanism> [<initial>]`. `offered`: the mechanisms advertised in EHLO here."""
    name = mechanism.upper()
    if name not in {m.upper() for m in offered} or name not in Mechanism.__members__:
        return Exchange(None), Failed(UNSUPPORTED_MECHANISM)
    exchange = Exchange(Mechanism(name))
    if initial is None:
        return exchange, exchange.first_challenge
    # The initial response counts against the line limit with "AUTH <mech> " and CRLF around it.
    if len("AUTH  \r\n") + len(mechanism) + len(initial) > AUTH_LINE_MAX:
        return exchange, exchange._fail(LINE_TOO_LONG)
    if initial.strip() == "*":
        return exchange, exchange._fail(AUTH_ABORTED)
    data = b"" if initial.strip() == "=" else _decode(initial.strip().encode("ascii", "replace"))
    if data is None:
        return exchange, exchange._fail(CANNOT_DECODE)
    return exchange, exchange._take(data)


def _decode(text: bytes) -> bytes | None:
    """Strict base64 (RFC 4648, padding required), or None."""
    try:
        return base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError):
        return None


def _plain(data: bytes) -> Step:
    """RFC 4616: [authzid] NUL authcid NUL passwd."""
    parts = data.split(b"\0")
    if len(parts) != 3 or not parts[1] or not parts[2]:
        return Failed(CANNOT_DECODE)
    try:
        authzid, login, password = (p.decode("utf-8") for p in parts)
    except UnicodeDecodeError:
        return Failed(CANNOT_DECODE)
    if authzid and authzid != login:
        return Failed(AUTH_FAILED)  # acting for another identity is not supported
    return Credentials(authzid, login, password)


def _login_value(data: bytes) -> str | None:
    if b"\0" in data:
        return None
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError:
        return None


def encode(text: str) -> str:
    """base64 of UTF-8 text, for a challenge (and for tests playing the client)."""
    return base64.b64encode(text.encode("utf-8")).decode("ascii")

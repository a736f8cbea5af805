"""Envelope addresses: parse the argument of MAIL FROM and RCPT TO.

DESCRIPTION
    `parse_path("FROM:<a@b> SIZE=10", ...)` returns the mailbox and the ESMTP parameters or
    raises `AddressError`. Parsing follows RFC 5321 4.1.2 (Path, Mailbox, Dot-string,
    Quoted-string, address literals) with Postfix's tolerance for a missing pair of angle
    brackets and for a space after the colon. Pure: no I/O.

    An address is "routed" when it asks a later hop to route it further: a source route
    (`<@a,@b:u@c>`), or a local part holding `%` (percent hack), `!` (bang path) or `@`
    (quoted). Relay control treats routed addresses from untrusted clients as relay
    attempts, as Postfix's `reject_unauth_destination` does.

SECURITY
    Reads untrusted client text. Every character class is explicit; control characters,
    unbalanced quotes or brackets, and over-long paths are errors.

STANDARDS
    RFC 5321 4.1.2, 4.1.3, 4.5.3.1; RFC 6531 (SMTPUTF8: UTF-8 in local part and domain);
    RFC 1870 (SIZE), RFC 6152 (8BITMIME).
"""

from __future__ import annotations

import ipaddress
import re
from dataclasses import dataclass

MAX_PATH = 256  # RFC 5321 4.5.3.1.3, angle brackets included
MAX_LOCAL = 64  # RFC 5321 4.5.3.1.1; Postfix does not enforce it, neither do we (logged only)


class AddressError(ValueError):
    pass


@dataclass(frozen=True, slots=True)
class Mailbox:
    local: str  # as transmitted: a quoted local part keeps its quotes
    domain: str  # as transmitted; "" for an unqualified address
    routed: bool = False

    @property
    def is_null(self) -> bool:
        return not self.local and not self.domain

    @property
    def domain_key(self) -> str:
        """The domain for comparisons: lower case, without the trailing dot."""
        return self.domain.lower().rstrip(".")

    @property
    def is_literal(self) -> bool:
        return self.domain.startswith("[")

    def __str__(self) -> str:
        if self.is_null:
            return ""
        return f"{self.local}@{self.domain}" if self.domain else self.local


NULL = Mailbox("", "")

_ATEXT = r"A-Za-z0-9!#$%&'*+/=?^_`{|}~\-"
# RFC 6531 UTF-8: any non-ASCII character but the C1 controls, the line and paragraph separators
# and surrogates (what bytes that are not UTF-8 decode to with surrogateescape).
_UTF8 = r"\u00a0-\u2027\u202a-\ud7ff\ue000-\U0010ffff"
_DOT_STRING = re.compile(rf"^[{_ATEXT}]+(\.[{_ATEXT}]+)*$")
_DOT_STRING_UTF8 = re.compile(rf"^[{_ATEXT}{_UTF8}]+(\.[{_ATEXT}{_UTF8}]+)*$")
_QUOTED = re.compile(r'^"((?:[\x20\x21\x23-\x5b\x5d-\x7e]|\\[\x20-\x7e])*)"$')
_QUOTED_UTF8 = re.compile(rf'^"((?:[\x20\x21\x23-\x5b\x5d-\x7e{_UTF8}]|\\[\x20-\x7e])*)"$')
_LABEL = r"[A-Za-z0-9](?:[A-Za-z0-9\-]*[A-Za-z0-9])?"
_DOMAIN = re.compile(rf"^{_LABEL}(\.{_LABEL})*\.?$")
_LABEL_UTF8 = rf"[A-Za-z0-9{_UTF8}](?:[A-Za-z0-9\-{_UTF8}]*[A-Za-z0-9{_UTF8}])?"
_DOMAIN_UTF8 = re.compile(rf"^{_LABEL_UTF8}(\.{_LABEL_UTF8})*\.?$")
_ROUTE = re.compile(rf"^@{_LABEL}(\.{_LABEL})*(,@{_LABEL}(\.{_LABEL})*)*:")
_PARAM_KEY = re.compile(r"^[A-Za-z0-9][A-Za-z0-9\-]*$")
_PARAM_VALUE = re.compile(r"^[\x21-\x3c\x3e-\x7e]+$")
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")


def _split_local(mailbox: str) -> tuple[str, str]:
    """Split at the last '@' that is not inside a quoted local part."""
    if mailbox.startswith('"'):
        end = _closing_quote(mailbox, 0)
        rest = mailbox[end + 1 :]
        if rest and not rest.startswith("@"):
            raise AddressError("text after the quoted local part")
        return mailbox[: end + 1], rest[1:] if rest else ""
    local, at, domain = mailbox.rpartition("@")
    if not at:
        return mailbox, ""
    if not local:
        raise AddressError("empty local part")
    return local, domain


def _closing_quote(text: str, start: int) -> int:
    i = start + 1
    while i < len(text):
        c = text[i]
        if c == "\\":
            i += 2
            continue
        if c == '"':
            return i
        i += 1
    raise AddressError("unbalanced quote")


def _check_domain(domain: str, utf8: bool) -> None:
    if domain.startswith("["):
        if not domain.endswith("]"):
            raise AddressError("bad address literal")
        inner = domain[1:-1]
        try:
            if inner[:5].lower() == "ipv6:":
                ipaddress.IPv6Address(inner[5:])
            else:
                ipaddress.IPv4Address(inner)
        except ValueError:
            raise AddressError("bad address literal") from None
        return
    if len(domain) > 255 or not (_DOMAIN_UTF8 if utf8 else _DOMAIN).match(domain):
        raise AddressError("bad domain")


def parse_mailbox(text: str, *, utf8: bool = False) -> Mailbox:
    """Parse what stands between the angle brackets (without them)."""
    if text == "":
        return NULL
    if _CONTROL.search(text):  # also a final newline, which the patterns' "$" would let through
        raise AddressError("control character")
    routed = False
    m = _ROUTE.match(text)
    if m:
        text, routed = text[m.end() :], True  # RFC 5321 C: ignore the route, but note it
    local, domain = _split_local(text)
    if local.startswith('"'):
        q = (_QUOTED_UTF8 if utf8 else _QUOTED).match(local)
        if not q:
            raise AddressError("bad quoted local part")
        content = re.sub(r"\\(.)", r"\1", q.group(1))
        routed = routed or any(c in content for c in "%!@")
    else:
        if not (_DOT_STRING_UTF8 if utf8 else _DOT_STRING).match(local):
            raise AddressError("bad local part")
        routed = routed or "%" in local or "!" in local
    if domain:
        _check_domain(domain, utf8)
    return Mailbox(local, domain, routed)


def parse_path(arg: str | None, keyword: str, *, utf8_allowed: bool) -> tuple[Mailbox, dict[str, str | None]]:
    """Parse `FROM:<path> params` (keyword "FROM") or `TO:<path> params` (keyword "TO").

    `utf8_allowed`: the server offers SMTPUTF8; a non-ASCII address must then also carry the
    SMTPUTF8 parameter (checked by the caller, who knows the parameters).
    """
    if arg is None or not arg[: len(keyword) + 1].upper() == keyword + ":":
        raise AddressError("syntax")
    rest = arg[len(keyword) + 1 :].lstrip(" ")
    if _CONTROL.search(rest):
        raise AddressError("control character")
    if rest.startswith("<"):
        end = _closing_bracket(rest)
        path, params = rest[1:end], rest[end + 1 :]
        if params and not params.startswith(" "):
            raise AddressError("text after the path")
    else:  # Postfix accepts MAIL FROM:user@example.com (strict_rfc821_envelopes = no)
        path, _, params = rest.partition(" ")
        if not path or "<" in path or ">" in path:
            raise AddressError("syntax")
    if len(path) + 2 > MAX_PATH:
        raise AddressError("path too long")
    utf8 = utf8_allowed and not path.isascii()
    if not path.isascii() and not utf8_allowed:
        raise AddressError("non-ASCII address without SMTPUTF8")
    return parse_mailbox(path, utf8=utf8), parse_params(params)


def _closing_bracket(text: str) -> int:
    if '"' not in text:  # the usual case, without the walk
        end = text.find(">", 1)
        if end < 0:
            raise AddressError("unbalanced angle bracket")
        if "<" in text[1:end]:
            raise AddressError("nested angle bracket")
        return end
    i = 1
    while i < len(text):
        c = text[i]
        if c == '"':
            i = _closing_quote(text, i) + 1
            continue
        if c == ">":
            return i
        if c == "<":
            raise AddressError("nested angle bracket")
        i += 1
    raise AddressError("unbalanced angle bracket")


def parse_params(text: str) -> dict[str, str | None]:
    """ESMTP parameters (RFC 5321 4.1.2 Mail-parameters): KEY or KEY=value, keys upper-cased."""
    params: dict[str, str | None] = {}
    for word in text.split():
        key, eq, value = word.partition("=")
        if not _PARAM_KEY.match(key) or (eq and not _PARAM_VALUE.match(value)):
            raise AddressError(f"bad parameter {word[:40]!r}")
        params[key.upper()] = value if eq else None
    return params


def needs_smtputf8(mailbox: Mailbox) -> bool:
    return not (mailbox.local.isascii() and mailbox.domain.isascii())

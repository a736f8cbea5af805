"""The users file (auth.users_file): logins, their password hashes and the addresses they own.

DESCRIPTION
    A YAML mapping, one entry per login:

        alice:
          password: "$argon2id$v=19$m=65536,t=3,p=4$..."   # argon2id, bcrypt or sha512-crypt
          addresses: [alice@example.test, sales@example.test]

    `UsersFile.load(path)` (or `UsersFile.parse(text)`) returns a frozen `Users`, or raises
    ValueError whose message has one "line N: message" per problem: a login that is not a
    plain string, a duplicate login, a missing password, an unknown key, a hash of an
    unknown scheme or a malformed one, an address that is not a full mailbox. Every hash
    is checked at load, so a typo is found at start or SIGHUP, not at a client's AUTH.

    `Users.verify(login, password)` checks a password (hashes.py). A login that does not
    exist costs one argon2id verification too (hashes.dummy_verify), so the time of a
    refusal does not tell which logins exist. It is CPU-bound: call it off the event loop.

    `Users.owners(address)` is the set of logins that may use `address` as MAIL FROM
    (reject_sender_login_mismatch); `Users.addresses(login)` the addresses of one login.
    Addresses compare exactly in the local part and case-insensitively in the domain
    (CONFIG.md), a trailing dot of the domain ignored. Logins compare exactly.

SECURITY
    Written by the administrator; read at start and on SIGHUP. Error messages quote the
    login and the offending address or key, never a password or hash.

STANDARDS
    RFC 5321 4.1.2 (the address syntax, via address.parse_mailbox, UTF-8 allowed: RFC 6531).

CONFIG
    auth.users_file
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType

import yaml

from ..address import AddressError, Mailbox, parse_mailbox
from . import hashes

_KEYS = ("password", "addresses")


@dataclass(frozen=True, slots=True)
class User:
    login: str
    password: str  # the stored hash
    addresses: tuple[str, ...]

    def __repr__(self) -> str:
        return f"User(login={self.login!r}, addresses={self.addresses!r})"


@dataclass(frozen=True, slots=True)
class Users:
    """The parsed users file. Immutable; a reload builds a new one."""

    by_login: Mapping[str, User] = field(default_factory=lambda: MappingProxyType({}))
    _owners: Mapping[str, frozenset[str]] = field(default_factory=lambda: MappingProxyType({}))

    @classmethod
    def of(cls, users: list[User]) -> Users:
        owners: dict[str, set[str]] = {}
        for u in users:
            for a in u.addresses:
                owners.setdefault(_address_key(parse_mailbox(a, utf8=True)), set()).add(u.login)
        return cls(
            MappingProxyType({u.login: u for u in users}),
            MappingProxyType({k: frozenset(v) for k, v in owners.items()}),
        )

    def __len__(self) -> int:
        return len(self.by_login)

    def __contains__(self, login: object) -> bool:
        return login in self.by_login

    def verify(self, login: str, password: str) -> bool:
        """True when `login` exists and `password` matches its hash. CPU-bound (one hash)."""
        user = self.by_login.get(login)
        if user is None:
            return hashes.dummy_verify(password)
        return hashes.verify(user.password, password)

    def owners(self, address: str | Mailbox) -> frozenset[str]:
        """The logins that own `address` (empty when none does or it does not parse)."""
        if isinstance(address, str):
            try:
                address = parse_mailbox(address, utf8=True)
            except AddressError:
                return frozenset()
        if address.is_null or not address.domain:
            return frozenset()
        return self._owners.get(_address_key(address), frozenset())

    def addresses(self, login: str) -> tuple[str, ...]:
        user = self.by_login.get(login)
        return user.addresses if user else ()


def _address_key(m: Mailbox) -> str:
    return f"{m.local}@{m.domain_key}"


class UsersFile:
    """Loading and validation of the users file."""

    @staticmethod
    def load(path: str | Path) -> Users:
        """Read and validate; ValueError ("line N: ...", one line per problem) or OSError."""
        return UsersFile.parse(Path(path).read_text(encoding="utf-8"))

    @staticmethod
    def parse(text: str) -> Users:
        try:
            root = yaml.compose(text, Loader=yaml.SafeLoader)
        except yaml.YAMLError as exc:
            mark = getattr(exc, "problem_mark", None)
            raise ValueError(f"line {mark.line + 1 if mark else 1}: {getattr(exc, 'problem', None) or exc}") from None
        if root is None:
            return Users()
        if not isinstance(root, yaml.MappingNode):
            raise ValueError(f"line {_line(root)}: expected a mapping of logins")
        errors: list[str] = []
        users: list[User] = []
        seen: set[str] = set()
        for knode, vnode in root.value:
            user = _entry(knode, vnode, seen, errors)
            if user is not None:
                users.append(user)
        if errors:
            raise ValueError("\n".join(errors))
        return Users.of(users)


def _line(node: yaml.Node) -> int:
    return node.start_mark.line + 1


def _entry(knode: yaml.Node, vnode: yaml.Node, seen: set[str], errors: list[str]) -> User | None:
    """One `login: {password, addresses}` entry, its problems appended to errors."""
    n = len(errors)
    if not isinstance(knode, yaml.ScalarNode) or not knode.value:
        errors.append(f"line {_line(knode)}: a login must be a non-empty string")
        return None
    login = knode.value  # as written: "007" stays "007"
    if any(c.isspace() or ord(c) < 0x20 or c == "\x7f" for c in login):
        errors.append(f"line {_line(knode)}: login {login!r}: no spaces or control characters allowed")
    if login in seen:
        errors.append(f"line {_line(knode)}: login {login!r}: duplicate")
    seen.add(login)
    if not isinstance(vnode, yaml.MappingNode):
        errors.append(f"line {_line(vnode)}: login {login!r}: expected a mapping with password and addresses")
        return None
    password: str | None = None
    addresses: list[str] = []
    for k, v in vnode.value:
        key = k.value if isinstance(k, yaml.ScalarNode) else None
        if key == "password":
            password = _password(login, v, errors)
        elif key == "addresses":
            addresses = _addresses(login, v, errors)
        else:
            errors.append(f"line {_line(k)}: login {login!r}: unknown key {key!r} (expected {', '.join(_KEYS)})")
    if password is None and len(errors) == n:
        errors.append(f"line {_line(vnode)}: login {login!r}: password is missing")
    if len(errors) > n or password is None:
        return None
    return User(login, password, tuple(addresses))


def _password(login: str, node: yaml.Node, errors: list[str]) -> str | None:
    if not isinstance(node, yaml.ScalarNode) or node.tag != "tag:yaml.org,2002:str" or not node.value:
        errors.append(f"line {_line(node)}: login {login!r}: password must be a hash string")
        return None
    try:
        hashes.scheme_of(node.value)
    except ValueError as exc:
        errors.append(f"line {_line(node)}: login {login!r}: {exc}")
        return None
    return node.value


def _addresses(login: str, node: yaml.Node, errors: list[str]) -> list[str]:
    if isinstance(node, yaml.ScalarNode) and node.tag == "tag:yaml.org,2002:null":
        return []
    if not isinstance(node, yaml.SequenceNode):
        errors.append(f"line {_line(node)}: login {login!r}: addresses must be a list")
        return []
    out: list[str] = []
    for item in node.value:
        if not isinstance(item, yaml.ScalarNode):
            errors.append(f"line {_line(item)}: login {login!r}: an address must be a string")
            continue
        text = item.value.strip()
        try:
            m = parse_mailbox(text, utf8=True)
        except AddressError as exc:
            errors.append(f"line {_line(item)}: login {login!r}: bad address {text!r}: {exc}")
            continue
        if m.is_null or not m.domain or m.routed or m.is_literal:
            errors.append(f"line {_line(item)}: login {login!r}: bad address {text!r}: expected local@domain")
            continue
        out.append(text)
    return out

"""The mailboxes file: which addresses of our local domains exist, and where aliases lead.

DESCRIPTION
    Postfix virtual(5) style, one entry per logical line:

        alice@example.test                                 a mailbox: mail for it is delivered
        sales@example.test   alice@example.test, bob@example.test   an alias: delivered to each target
        postmaster@example.test  alice@example.test

    Targets are separated by commas and/or white space. `#` starts a comment when it opens
    a line or follows white space (a `#` inside an address, which RFC 5321 allows, stays part
    of it). A line that starts with white space continues the previous entry, as in
    Postfix. Blank lines are ignored.

    Matching: the domain case-insensitively (and without a trailing dot), the local part
    exactly. An alias target may be local or remote. Aliases expand at most `MAX_DEPTH` (10)
    levels; deeper nesting and loops are errors at load, so a loaded table always expands.
    An alias that lists itself among its targets is also delivered to its own mailbox (the
    Postfix idiom `a@d  a@d, archive@d`); that is not a loop.

    `parse_mailboxes(text)` is pure; errors say "line N: message". `load_mailboxes(path)`
    reads the file (the only I/O here). An address of a local domain that is neither a
    mailbox nor an alias is "unlisted" (restrictions.py rejects it at RCPT); with no
    mailboxes file at all every address exists (the caller passes None).

SECURITY
    The file is the operator's, not the client's; addresses from SMTP are only compared
    against it. Expansion is bounded (depth, and every alias is expanded once at load), so
    a bad file cannot make a lookup loop or blow up.

STANDARDS
    RFC 5321 2.4 (local parts are case-sensitive, domains are not), Postfix virtual(5).

CONFIG
    domains.mailboxes (the path; relative to the config file, resolved by the caller)
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

from ..address import AddressError, Mailbox, parse_mailbox

MAX_DEPTH = 10  # alias levels (CONFIG.md "The mailboxes file")

_COMMENT = re.compile(r"(?:^|(?<=\s))#.*$")
_SEPARATORS = re.compile(r"[\s,]+")

Key = tuple[str, str]  # (local part exactly as written, domain lower case without trailing dot)


class MailboxesError(ValueError):
    """A malformed mailboxes file; the message starts with "line N:" where there is a line."""


def _key(address: str | Mailbox) -> Key | None:
    """The lookup key of an address, or None when it has no domain (never listed)."""
    if isinstance(address, Mailbox):
        return (address.local, address.domain_key) if address.domain else None
    local, at, domain = address.rpartition("@")
    if not at or not local or not domain:
        return None
    return local, domain.lower().rstrip(".")


@dataclass(frozen=True, slots=True)
class Mailboxes:
    """A loaded mailboxes table. `entries` maps an address key to its alias targets (empty for a
    mailbox); `expansions` holds every alias already expanded to its final recipients."""

    entries: Mapping[Key, tuple[str, ...]]
    expansions: Mapping[Key, tuple[str, ...]] = field(default_factory=dict)

    def exists(self, address: str | Mailbox) -> bool:
        """True for a mailbox or an alias of the table."""
        key = _key(address)
        return key is not None and key in self.entries

    def is_alias(self, address: str | Mailbox) -> bool:
        key = _key(address)
        return key is not None and bool(self.entries.get(key))

    def expand(self, address: str | Mailbox) -> list[str]:
        """The final recipients of `address`: the alias targets, recursively; the address itself
        when it is a mailbox or not in the table at all."""
        key = _key(address)
        if key is not None and key in self.expansions:
            return list(self.expansions[key])
        return [str(address)]

    def __len__(self) -> int:
        return len(self.entries)


def _logical_lines(text: str) -> list[tuple[int, str]]:
    """(first line number, text) of each entry, comments removed, continuation lines joined."""
    out: list[tuple[int, str]] = []
    for n, raw in enumerate(text.splitlines(), 1):
        line = _COMMENT.sub("", raw)
        if not line.strip():
            continue
        if line[0].isspace():
            if not out:
                raise MailboxesError(f"line {n}: continuation line without an entry before it")
            first, prev = out[-1]
            out[-1] = (first, prev + " " + line.strip())
        else:
            out.append((n, line.strip()))
    return out


def _address(text: str, n: int, what: str) -> Mailbox:
    try:
        mb = parse_mailbox(text, utf8=not text.isascii())
    except AddressError as exc:
        raise MailboxesError(f"line {n}: {what} {text!r} is not an address: {exc}") from None
    if not mb.domain:
        raise MailboxesError(f"line {n}: {what} {text!r} has no domain")
    return mb


def parse_mailboxes(text: str) -> Mailboxes:
    """Parse the text of a mailboxes file; raises MailboxesError("line N: ...")."""
    entries: dict[Key, tuple[str, ...]] = {}
    first_line: dict[Key, int] = {}
    for n, line in _logical_lines(text):
        head, _, rest = line.partition(" ")
        head = head.strip().rstrip(",")
        if head.startswith("@"):
            raise MailboxesError(f"line {n}: {head!r}: catch-all entries (@domain) are not supported")
        mb = _address(head, n, "address")
        key = (mb.local, mb.domain_key)
        if key in entries:
            raise MailboxesError(f"line {n}: {head} is listed twice (first on line {first_line[key]})")
        targets: list[str] = []
        for t in _SEPARATORS.split(rest.strip()):
            if t:
                _address(t, n, "alias target")
                if t not in targets:
                    targets.append(t)
        entries[key] = tuple(targets)
        first_line[key] = n
    return Mailboxes(entries, _expand_all(entries, first_line))


def _expand_all(entries: Mapping[Key, tuple[str, ...]], first_line: Mapping[Key, int]) -> dict[Key, tuple[str, ...]]:
    """Expand every alias once; a loop or more than MAX_DEPTH levels is an error."""
    done: dict[Key, tuple[tuple[str, ...], int]] = {}  # alias -> (final recipients, levels below and including it)

    def too_deep(path: tuple[Key, ...], key: Key) -> MailboxesError:
        chain = " -> ".join(f"{k[0]}@{k[1]}" for k in (*path, key))
        return MailboxesError(f"line {first_line[(*path, key)[0]]}: aliases nest deeper than {MAX_DEPTH} levels: {chain} ...")

    def walk(key: Key, path: tuple[Key, ...]) -> tuple[tuple[str, ...], int]:
        if len(path) >= MAX_DEPTH:  # `key` would be level MAX_DEPTH + 1
            raise too_deep(path, key)
        if key not in done:
            out: list[str] = []
            height = 1
            for target in entries[key]:
                tkey = _key(target)
                assert tkey is not None  # checked at parse
                if tkey == key:
                    result: tuple[str, ...] = (target,)  # "a@d  a@d, b@d": a@d's own mailbox too
                elif tkey in path:
                    chain = " -> ".join(f"{k[0]}@{k[1]}" for k in (*path, key, tkey))
                    raise MailboxesError(f"line {first_line[tkey]}: alias loop: {chain}")
                elif entries.get(tkey):
                    result, below = walk(tkey, (*path, key))
                    height = max(height, below + 1)
                else:
                    result = (target,)  # a mailbox, or an address outside the table (remote)
                out.extend(r for r in result if r not in out)
            done[key] = (tuple(out), height)
        if len(path) + done[key][1] > MAX_DEPTH:  # reached again from deeper up, after it was expanded
            raise too_deep(path, key)
        return done[key]

    for key, targets in entries.items():
        if targets:
            walk(key, ())
    return {key: expansion for key, (expansion, _) in done.items()}


def load_mailboxes(path: str | Path) -> Mailboxes:
    """Read and parse a mailboxes file; errors name the file ("path: line N: ...")."""
    p = Path(path)
    try:
        text = p.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise MailboxesError(f"{p}: cannot read: {exc}") from None
    try:
        return parse_mailboxes(text)
    except MailboxesError as exc:
        raise MailboxesError(f"{p}: {exc}") from None

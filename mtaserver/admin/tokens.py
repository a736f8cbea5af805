"""Admin API bearer tokens: the token file, its roles, and the check of a presented token.

DESCRIPTION
    `admin.token_file` (relative to `server.data_dir`) holds one token per line:

        <role> <token> [name]        # role = read | operator | admin

    `#` starts a comment; blank lines are ignored. The name is what the audit log records
    (a token without one is named after its line: `line3`). Roles are ordered: `admin` may
    do what `operator` may, `operator` what `read` may:
        read      every GET
        operator  queue actions (hold, release, requeue, delete, flush), dropping a
                  postscreen cache record
        admin     changing the configuration (PUT/PATCH /api/config)

    `parse_tokens` is pure (text in, tokens or `file:line: message` errors out).
    `load_tokens` is the thin shell: it creates the file on first start with mode 0600
    holding one admin token named `initial`, and parses it. A bad line is a config error at
    start; on SIGHUP the API keeps its old tokens and logs the error instead.

SECURITY
    A token is compared with `hmac.compare_digest` against every known token (no early exit
    on the first match, no timing hint of which line matched). Tokens are never logged,
    never returned by the API and never put in an exception message: an error names the
    file and the line only. New tokens are `secrets.token_urlsafe(32)` (256 bits). A token
    must be at least 16 characters of the URL-safe alphabet, so a typo like a role in the
    token column is refused at start rather than accepted as a guessable secret.

CONFIG
    admin.token_file, server.data_dir
"""

from __future__ import annotations

import enum
import hmac
import os
import re
import secrets
from dataclasses import dataclass
from pathlib import Path


class Role(enum.IntEnum):
    """Ordered: a higher role may do everything a lower one may."""

    READ = 1
    OPERATOR = 2
    ADMIN = 3


ROLE_NAMES = {"read": Role.READ, "operator": Role.OPERATOR, "admin": Role.ADMIN}
MIN_TOKEN_LENGTH = 16
_TOKEN_RE = re.compile(r"[A-Za-z0-9_\-.~+/=]+")  # URL-safe base64 and what other generators print
_NAME_RE = re.compile(r"[A-Za-z0-9_\-.@:]{1,64}")  # goes into the audit log as it is


class TokenFileError(Exception):
    """A token file that cannot be used. `errors` are `file:line: message` lines (no token in them)."""

    def __init__(self, errors: list[str]) -> None:
        super().__init__("\n".join(errors))
        self.errors = errors


@dataclass(frozen=True, slots=True, kw_only=True)
class Token:
    role: Role
    secret: str
    name: str

    def __repr__(self) -> str:  # never print the secret, even in a traceback
        return f"Token(role={self.role.name.lower()}, name={self.name!r})"


def parse_tokens(text: str, filename: str) -> list[Token]:
    """The tokens of a token file's text; TokenFileError with every bad line. Pure."""
    tokens: list[Token] = []
    errors: list[str] = []
    seen_secrets: set[str] = set()
    seen_names: set[str] = set()
    for n, raw in enumerate(text.splitlines(), 1):
        line = raw.split("#", 1)[0].strip()
        if not line:
            continue
        fields = line.split()
        where = f"{filename}:{n}"
        if len(fields) not in (2, 3):
            errors.append(f"{where}: expected '<role> <token> [name]'")
            continue
        role = ROLE_NAMES.get(fields[0])
        if role is None:
            errors.append(f"{where}: unknown role {fields[0][:20]!r} (read, operator or admin)")
            continue
        secret = fields[1]
        if len(secret) < MIN_TOKEN_LENGTH or not _TOKEN_RE.fullmatch(secret):
            errors.append(f"{where}: the token must be at least {MIN_TOKEN_LENGTH} characters of A-Z a-z 0-9 _ - . ~ + / =")
            continue
        name = fields[2] if len(fields) == 3 else f"line{n}"
        if not _NAME_RE.fullmatch(name):
            errors.append(f"{where}: the name must be 1..64 characters of A-Z a-z 0-9 _ - . @ :")
            continue
        if secret in seen_secrets:
            errors.append(f"{where}: the same token is on an earlier line")
            continue
        if name in seen_names:
            errors.append(f"{where}: the name {name!r} is on an earlier line (the audit log could not tell them apart)")
            continue
        seen_secrets.add(secret)
        seen_names.add(name)
        tokens.append(Token(role=role, secret=secret, name=name))
    if errors:
        raise TokenFileError(errors)
    return tokens


def find_token(tokens: list[Token], presented: str) -> Token | None:
    """The token matching `presented`, comparing with every one in constant time each. Pure."""
    found = None
    given = presented.encode("utf-8", "surrogateescape")
    for t in tokens:
        if hmac.compare_digest(t.secret.encode(), given):
            found = t
    return found


def bearer(header: str | None) -> str | None:
    """The credentials of an `Authorization: Bearer <token>` header (RFC 6750 2.1), else None. Pure."""
    if not header:
        return None
    scheme, _, value = header.strip().partition(" ")
    value = value.strip()
    if scheme.lower() != "bearer" or not value or " " in value:
        return None
    return value


def initial_file_text(secret: str) -> str:
    """The token file written on first start. Pure (the secret is passed in)."""
    return (
        "# mtaserver admin API tokens: one per line, \"<role> <token> [name]\"; role = read | operator | admin.\n"
        "# Send as \"Authorization: Bearer <token>\". Re-read on SIGHUP.\n"
        f"admin {secret} initial\n"
    )


def new_secret() -> str:
    return secrets.token_urlsafe(32)


def load_tokens(path: Path) -> list[Token]:
    """Read the token file, creating it (0600, one admin token) when it does not exist.

    Raises TokenFileError (bad lines, or a file that cannot be read or made)."""
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        pass
    except OSError as exc:
        raise TokenFileError([f"{path}:0: cannot create the token file: {exc.strerror or exc}"]) from None
    else:
        try:
            os.write(fd, initial_file_text(new_secret()).encode())
            os.fsync(fd)
        finally:
            os.close(fd)
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise TokenFileError([f"{path}:0: cannot read the token file: {getattr(exc, 'strerror', None) or exc}"]) from None
    return parse_tokens(text, str(path))

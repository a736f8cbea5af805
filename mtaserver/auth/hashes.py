"""Password hashes of the users file: argon2id, bcrypt, sha512-crypt; make and verify them.

DESCRIPTION
    `scheme_of(hash)` names the scheme of a stored hash (or raises ValueError when the text
    is not a well-formed hash of a supported scheme): users.py checks every hash at load.
    `verify(hash, password)` is True when the password matches; a mismatch, a malformed
    hash or an over-long password is False, never an exception. `hash_password(password)`
    makes an argon2id hash (what `mtaserver auth hash` prints). `dummy_verify(password)`
    costs what verifying one argon2id hash costs and is always False: users.py runs it for
    a login that does not exist, so the time of the answer does not tell which logins do.

        argon2id       $argon2id$v=19$m=..,t=..,p=..$salt$hash   argon2-cffi (RFC 9106 low-memory
                       profile by default: m=64 MiB, t=3, p=4)
        bcrypt         $2b$ / $2y$ / $2a$ + cost + 53 chars     the `bcrypt` package; passwords
                       past 72 bytes are cut to 72 as every bcrypt implementation hashes them
        sha512-crypt   $6$[rounds=N$]salt$hash                    Ulrich Drepper's SHA-crypt spec
                       (glibc crypt(3)), implemented below in pure Python on hashlib: the stdlib
                       `crypt` module warns on import in 3.11 and is gone in 3.13, which this
                       package also supports; the tests check it against the spec's vectors
                       and against `crypt` where that module still exists.

    Every function here is CPU-bound (an argon2id verification takes tens of milliseconds):
    the backend calls them off the event loop (backend.FileAuthenticator).

SECURITY
    Passwords are untrusted client input: they are never logged or returned, compared in
    constant time (hmac.compare_digest, or inside the libraries), and capped at
    MAX_PASSWORD bytes so that a 12 KB AUTH line cannot make sha512-crypt hash 12 KB five
    thousand times. Hashes come from the administrator's users file.

STANDARDS
    RFC 9106 (Argon2), "Unix crypt using SHA-256 and SHA-512" (Drepper, 2008), bcrypt
    (Provos and Mazieres, 1999; OpenBSD $2b$).

CONFIG
    None (users.py reads auth.users_file).
"""

from __future__ import annotations

import functools
import hashlib
import hmac
import re
import secrets

import argon2
import bcrypt

MAX_PASSWORD = 4096  # bytes (UTF-8); longer passwords never match
BCRYPT_MAX = 72  # bcrypt hashes only the first 72 bytes; bcrypt >= 5 raises on longer input

_ARGON2ID = re.compile(r"^\$argon2id\$v=19\$m=[0-9]{1,10},t=[0-9]{1,10},p=[0-9]{1,3}\$[A-Za-z0-9+/]{11,}\$[A-Za-z0-9+/]{22,}$")
_BCRYPT = re.compile(r"^\$2[aby]\$(0[4-9]|[12][0-9]|3[01])\$[./A-Za-z0-9]{53}$")
_SHA512 = re.compile(r"^\$6\$(?:rounds=([0-9]{1,9})\$)?([^$:\n]{0,16})\$([./0-9A-Za-z]{86})$")
_HASHER = argon2.PasswordHasher()


def scheme_of(stored: str) -> str:
    """"argon2id", "bcrypt" or "sha512-crypt"; ValueError for anything else."""
    if stored.startswith("$argon2id$"):
        if not _ARGON2ID.match(stored):
            raise ValueError("malformed argon2id hash")
        return "argon2id"
    if stored.startswith(("$2a$", "$2b$", "$2y$")):
        if not _BCRYPT.match(stored):
            raise ValueError("malformed bcrypt hash")
        return "bcrypt"
    if stored.startswith("$6$"):
        if not _SHA512.match(stored):
            raise ValueError("malformed sha512-crypt hash")
        return "sha512-crypt"
    # Name the scheme id of a "$id$..." string; never echo anything else (it may be a plain password).
    m = re.match(r"^\$([a-z0-9-]{1,12})\$", stored)
    what = f"unknown password hash scheme ${m.group(1)}$" if m else "not a password hash"
    raise ValueError(f"{what} (expected argon2id, bcrypt $2b$ or sha512-crypt $6$)")


def verify(stored: str, password: str) -> bool:
    """True when `password` matches the stored hash. Never raises."""
    secret = password.encode("utf-8", "surrogatepass")
    if len(secret) > MAX_PASSWORD:
        return False
    try:
        if stored.startswith("$argon2id$"):
            return _HASHER.verify(stored, secret)
        if stored.startswith(("$2a$", "$2b$", "$2y$")):
            return bcrypt.checkpw(secret[:BCRYPT_MAX], stored.encode("ascii"))
        if stored.startswith("$6$"):
            return hmac.compare_digest(sha512_crypt(secret, stored).encode("ascii"), stored.encode("ascii"))
    except (argon2.exceptions.VerificationError, argon2.exceptions.InvalidHashError, ValueError, UnicodeError):
        return False
    return False


def hash_password(password: str) -> str:
    """A new argon2id hash (random salt) for the users file."""
    return _HASHER.hash(password)


@functools.cache
def _dummy_hash() -> str:
    return _HASHER.hash(secrets.token_urlsafe(24))


def dummy_verify(password: str) -> bool:
    """The cost of one argon2id verification, for a login that does not exist. Always False."""
    verify(_dummy_hash(), password)
    return False


# ---------------------------------------------------------------------------------------------
# SHA-crypt, SHA-512 variant ($6$), after Drepper's specification.

_ROUNDS_DEFAULT = 5000
_ROUNDS_MIN = 1000
_ROUNDS_MAX = 999_999_999
_CRYPT64 = "./0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz"


def sha512_crypt(password: bytes, setting: str) -> str:
    """crypt(3) with a `$6$[rounds=N$]salt[$...]` setting: the full hash string."""
    if not setting.startswith("$6$"):
        raise ValueError("not a sha512-crypt setting")
    rest = setting[3:]
    rounds, custom = _ROUNDS_DEFAULT, False
    if rest.startswith("rounds="):
        count, sep, rest = rest[7:].partition("$")
        if not sep or not count.isdigit():
            raise ValueError("bad rounds= in sha512-crypt setting")
        rounds, custom = min(max(int(count), _ROUNDS_MIN), _ROUNDS_MAX), True
    salt = rest.split("$", 1)[0][:16].encode("utf-8")
    digest = _sha512_rounds(password, salt, rounds)
    head = f"$6$rounds={rounds}$" if custom else "$6$"
    return head + salt.decode("utf-8") + "$" + _encode64(digest)


def _sha512_rounds(p: bytes, s: bytes, rounds: int) -> bytes:
    sha = hashlib.sha512
    b = sha(p + s + p).digest()
    a = sha(p + s)
    n = len(p)
    for _ in range(n // 64):
        a.update(b)
    a.update(b[: n % 64])
    i = n
    while i > 0:  # per bit of the password length: B for a 1, the password for a 0
        a.update(b if i & 1 else p)
        i >>= 1
    c = a.digest()
    h = sha()
    for _ in range(n):  # the password n times, without an n*n-byte string (n may be 4096)
        h.update(p)
    dp = h.digest()
    p_seq = (dp * (n // 64 + 1))[:n]
    ds = sha(s * (16 + c[0])).digest()
    s_seq = (ds * (len(s) // 64 + 1))[: len(s)]
    for r in range(rounds):
        h = sha(p_seq if r & 1 else c)
        if r % 3:
            h.update(s_seq)
        if r % 7:
            h.update(p_seq)
        h.update(c if r & 1 else p_seq)
        c = h.digest()
    return c


def _encode64(c: bytes) -> str:
    """The SHA-512 crypt byte order: 21 groups of three bytes (i, i+21, i+42) rotated, then byte 63."""
    out = []
    for i in range(21):
        x, y, z = (i, i + 21, i + 42)
        x, y, z = ((x, y, z), (y, z, x), (z, x, y))[i % 3]
        out.append(_b64_24(c[x], c[y], c[z], 4))
    out.append(_b64_24(0, 0, c[63], 2))
    return "".join(out)


def _b64_24(b2: int, b1: int, b0: int, n: int) -> str:
    w = (b2 << 16) | (b1 << 8) | b0
    chars = []
    for _ in range(n):
        chars.append(_CRYPT64[w & 0x3F])
        w >>= 6
    return "".join(chars)

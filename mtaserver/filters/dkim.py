"""DKIM: verify inbound signatures, the sender policy, Authentication-Results, and signing.

DESCRIPTION
    Built on dkimpy (RFC 6376 canonicalization, hashing, RSA and ed25519). This module decides
    what its answers mean for us; the content-filter chain (filters/chain.py) calls it.

    Pure part (no I/O; inputs in, values out):
      from_domain(head)        the domain of the From header when it holds exactly one address
                               (one From field, one mailbox, no parse defect), else None
      from_claims(head)        every domain written after an "@" in the From field(s): what a
                               From that does not parse still claims (for the policy)
      policy(result, from_domain, sign_domains, mode, claimed=...)
                               dkim.unsigned_from_signing_domain (CONFIG.md "DKIM sender policy"):
                               the From domain is a dkim.sign domain or a subdomain of one, and no
                               signature that passed has d= the From domain or a parent of it
                               (DMARC's relaxed alignment; a bare TLD is never a parent) ->
                                   reject  550 5.7.1 (451 4.7.5 when such a signature's key lookup
                                           was a DNS temperror: it may pass later)
                                   tag     X-DKIM-Policy: unsigned from signing domain
                                   accept  logged only
                               A From that is not exactly one address is never signed: the policy
                               applies when any domain it claims is ours.
      authentication_results(authserv_id, result, from_domain)
                               the RFC 8601 header value: "mx.example.test; dkim=pass
                               header.d=example.org header.s=sel header.b=abcdefgh", one result per
                               signature (those aligned with From first), "dkim=none" when unsigned
      strip_forged(head, authserv_id)
                               the header section without the Authentication-Results fields that
                               carry our authserv-id (RFC 8601 5: a forged copy must not reach the
                               mailbox), continuation lines included; others' are kept
      parse_key / new_key / txt_record
                               PEM key files (RSA PKCS#1 or PKCS#8, ed25519 PKCS#8) <-> dkimpy's
                               key forms, and the DNS TXT record of a key
    I/O part:
      verify(message, nameservers=..., timeout=...)
                               every DKIM-Signature (at most MAX_SIGNATURES) checked: the key
                               records are fetched concurrently with aiodns (mtaserver.dns) under
                               one time budget, then each signature goes through dkimpy's asyncio
                               path (dkim.asyncsupport.DKIM.verify, its dnsfunc answering from
                               what was fetched); a message over VERIFY_ON_LOOP is hashed by
                               dkimpy's synchronous verify in a thread instead. Results: pass | fail | neutral (the signature
                               cannot be read) | temperror (DNS could not answer now) | permerror
                               (no key, a bad key, rsa-sha1). Never raises for what a message or
                               DNS does, only for bugs.
      Signer.load(sign_cfg, data_dir), Signer.sign(message, from_domain)
                               keys loaded once; sign returns the DKIM-Signature field(s) to put
                               on top of the message (CRLF-terminated) with every key of the most
                               specific dkim.sign domain equal to or a parent of From's domain:
                               rsa-sha256 or ed25519-sha256, c=relaxed/relaxed, h= the SIGNED_HEADERS
                               present (each instance) and From once more (over-signed: no From can
                               be added). Thread-safe: each call makes its own dkimpy object, the
                               keys are immutable bytes; CPU-bound (the body is hashed), so the
                               caller runs it in a thread for large messages.
      write_key(path, pem, force)
                               the key file, mode 0600, its directory 0700 (`mtaserver dkim keygen`)

    Costs: dkimpy canonicalizes and hashes the body once per signature, about 30 MB/s (its
    asyncio path is a coroutine around that synchronous work): 3 ms for 100 KB on the loop,
    ~350 ms for 10 MB, hence the thread above VERIFY_ON_LOOP. RSA verification is one modular
    exponentiation with e=65537 (cheap); signing with a 2048-bit RSA key takes ~10 ms.

SECURITY
    Reads the untrusted message: header values reach the Authentication-Results header only as
    checked tokens (domain and selector syntax, base64 for header.b), reasons only as our fixed
    words; dkimpy's own log lines (which quote the message) go to a logger that shows nothing
    ("mtaserver.dkim.dkimpy", not propagated). A From field longer than MAX_FROM is not parsed
    (never signed by its domain). Key files hold secrets: written 0600 in a 0700 directory,
    never logged, errors name the file only.
    DNS answers come from the network and are parsed by dkimpy as key records only.

STANDARDS
    RFC 6376 (DKIM), RFC 8301 (rsa-sha1 not valid, keys >= 1024 bits), RFC 8463 (ed25519-sha256),
    RFC 8601 (Authentication-Results), RFC 6008 (header.b), RFC 7489 3.1.1 (relaxed alignment).

CONFIG
    dkim.verify, dkim.timeout, dkim.unsigned_from_signing_domain, dkim.sign[].{domain,selector,key}
    (key relative to server.data_dir), server.dns.nameservers, server.hostname (authserv-id)
"""

from __future__ import annotations

import asyncio
import base64
import logging
import os
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from enum import Enum
from pathlib import Path
from typing import TYPE_CHECKING, Literal, assert_never

import dkim
import dkim.asyncsupport
import dkim.util
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ed25519, rsa

from ..dns import NotFound, Resolver, TempFail
from ..model import CONTINUE, Decision, Reply, Verdict

if TYPE_CHECKING:
    from ..config import DkimSign

log = logging.getLogger("mtaserver.dkim")
_LIB_LOG = logging.getLogger("mtaserver.dkim.dkimpy")  # dkimpy's lines quote the message unsanitized: never shown
_LIB_LOG.addHandler(logging.NullHandler())
_LIB_LOG.propagate = False

MAX_SIGNATURES = 5  # signatures checked per message; more are ignored (each costs a DNS lookup and a body hash: 10 of 10 MB ~3.5 s)
MAX_FROM = 4096  # characters of the From field(s) parsed; longer: not exactly one address
VERIFY_ON_LOOP = 128 * 1024  # larger messages are hashed in a thread (dkimpy hashes ~30 MB/s a signature)
MIN_RSA_BITS = 1024  # RFC 8301 3.2: verifiers and signers refuse smaller RSA keys
RSA_BITS = 2048  # what keygen makes (RFC 8301: signers SHOULD use at least 2048)

# Signed when present, each instance (RFC 6376 5.4.1's list, less the fields lists and resent mail change).
SIGNED_HEADERS = (
    "from", "to", "cc", "subject", "date", "message-id", "reply-to", "in-reply-to", "references",
    "mime-version", "content-type", "content-transfer-encoding", "list-id",
)  # fmt: skip

POLICY_HEADER = ("X-DKIM-Policy", "unsigned from signing domain")

_DOMAIN = re.compile(r"^(?=.{1,253}$)[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?(\.[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?)+$")
_SELECTOR = re.compile(r"^(?=.{1,63}$)[a-z0-9]([a-z0-9_-]*[a-z0-9])?(\.[a-z0-9]([a-z0-9_-]*[a-z0-9])?)*$", re.IGNORECASE)
_CLAIM = re.compile(r"@\s*([A-Za-z0-9](?:[A-Za-z0-9.-]*[A-Za-z0-9])?)")
_B64 = re.compile(r"^[A-Za-z0-9+/]+=*$")
_TOKEN = re.compile(r"^[A-Za-z0-9!#$%&'*+.^_`{|}~-]+$")  # RFC 2045 token (no tspecials): unquoted in A-R


# ---------------------------------------------------------------------------------------------
# Results


class Result(str, Enum):
    """One signature's result (RFC 8601 2.7.1)."""

    PASS = "pass"
    FAIL = "fail"  # the signature or the body hash does not verify
    NEUTRAL = "neutral"  # the signature cannot be read (syntax, unknown tags' values)
    TEMPERROR = "temperror"  # the key could not be fetched now (DNS SERVFAIL, timeout)
    PERMERROR = "permerror"  # no key, a malformed or too small key, rsa-sha1


@dataclass(frozen=True, slots=True, kw_only=True)
class Signature:
    domain: str  # d=, lower case; "" when unreadable
    selector: str  # s=; "" when unreadable
    result: Result
    reason: str = ""  # our words, never the message's
    algorithm: str = ""  # a=
    b: str = ""  # b= without whitespace ("" when unreadable): header.b is a prefix of it

    @property
    def checked_domain(self) -> str | None:
        """d= when it is a domain name (what may go into a header), else None."""
        return self.domain if _DOMAIN.match(self.domain) else None


@dataclass(frozen=True, slots=True)
class DkimResult:
    """Every signature checked, in the message's order (top first)."""

    signatures: tuple[Signature, ...] = ()
    ignored: int = 0  # signatures past MAX_SIGNATURES

    @property
    def signed(self) -> bool:
        return bool(self.signatures)

    def summary(self) -> str:
        """For the log and the decision trail: "pass d=example.org s=sel; fail d=...", or "none"."""
        if not self.signatures:
            return "none"
        parts = []
        for s in self.signatures:
            parts.append(f"{s.result.value} d={s.domain or '?'} s={s.selector or '?'}" + (f" ({s.reason})" if s.reason else ""))
        return "; ".join(parts) + (f"; {self.ignored} more not checked" if self.ignored else "")


# ---------------------------------------------------------------------------------------------
# Header parsing (pure)


def _fields(head: bytes) -> tuple[list[tuple[bytes, bytes]], bytes]:
    """The header section's fields as (name, whole field with its line ends and continuation
    lines), and what follows the section (the empty line and beyond, or b"")."""
    fields: list[tuple[bytes, bytes]] = []
    pos = 0
    n = len(head)
    while pos < n:
        end = head.find(b"\n", pos)
        end = n if end < 0 else end + 1
        line = head[pos:end]
        if line in (b"\r\n", b"\n"):
            break
        if line[:1] in (b" ", b"\t") and fields:
            fields[-1] = (fields[-1][0], fields[-1][1] + line)
        else:
            colon = line.find(b":")
            fields.append((line[:colon].strip().lower() if colon > 0 else b"", line))
        pos = end
    return fields, head[pos:]


def _value(field: bytes) -> str:
    """A field's value, unfolded, as text (undecodable bytes replaced)."""
    value = field.split(b":", 1)[1] if b":" in field else b""
    return re.sub(r"\r?\n(?=[ \t])", "", value.decode("utf-8", "replace")).strip()


def _ascii_domain(domain: str) -> str | None:
    d = domain.strip().rstrip(".").lower()
    if not d.isascii():
        try:
            d = d.encode("idna").decode("ascii")
        except UnicodeError:
            return None
    return d if _DOMAIN.match(d) else None


def from_domain(head: bytes) -> str | None:
    """The domain of the one address of the one From field (lower case, A-labels); None when
    there is no From, several, a group or list of other than one mailbox, or a parse defect."""
    from email.errors import InvalidHeaderDefect
    from email.headerregistry import HeaderRegistry

    froms = [f for name, f in _fields(head)[0] if name == b"from"]
    if len(froms) != 1:
        return None
    value = _value(froms[0])
    if len(value) > MAX_FROM:
        return None
    try:
        header = HeaderRegistry()("from", value)
    except (ValueError, IndexError, TypeError):  # the stdlib parser's reaction to some garbage
        return None
    if any(isinstance(d, InvalidHeaderDefect) for d in header.defects) or len(header.addresses) != 1:
        return None
    address = header.addresses[0]
    if not address.username or not address.domain:
        return None
    return _ascii_domain(address.domain)


def from_claims(head: bytes) -> tuple[str, ...]:
    """Every domain written after an "@" in the From field(s), lower case: what a From that
    does not parse to one address still shows a reader."""
    out: list[str] = []
    for name, field in _fields(head)[0]:
        if name == b"from":
            for m in _CLAIM.finditer(_value(field)[:MAX_FROM]):
                d = m.group(1).lower().rstrip(".")
                if d not in out:
                    out.append(d)
    return tuple(out)


def strip_forged(head: bytes, authserv_id: str) -> bytes:
    """`head` without the Authentication-Results fields whose authserv-id is ours (compared
    case-insensitively; comments before it skipped), continuation lines included. Others' stay."""
    ours = authserv_id.strip().lower()
    fields, rest = _fields(head)
    kept = [f for name, f in fields if not (name == b"authentication-results" and _authserv_id(f) == ours)]
    return b"".join(kept) + rest


def _authserv_id(field: bytes) -> str:
    text = _value(field)
    while True:  # RFC 8601 2.2: authserv-id may follow CFWS; a comment may nest
        text = text.lstrip()
        if not text.startswith("("):
            break
        depth, i = 0, 0
        for i, c in enumerate(text):
            depth += c == "("
            depth -= c == ")"
            if depth == 0:
                break
        text = text[i + 1 :]
    if text.startswith('"'):  # a quoted-string authserv-id (RFC 5322 value)
        end = text.find('"', 1)
        return text[1:end].lower() if end > 0 else text[1:].lower()
    m = re.match(r"[^\s;()]*", text)
    return m.group(0).lower() if m else ""


# ---------------------------------------------------------------------------------------------
# Sender policy (pure)


class PolicyAction(str, Enum):
    NONE = "none"  # From is not one of our signing domains: the policy does not apply
    PASS = "pass"  # signed by its From domain
    ACCEPT = "accept"  # not signed by its From domain, mode accept: logged only
    TAG = "tag"  # ... mode tag: X-DKIM-Policy header
    REJECT = "reject"  # ... mode reject: 550 5.7.1
    TEMPFAIL = "tempfail"  # ... mode reject, and the aligned signature's key lookup was a temperror: 451 4.7.5


@dataclass(frozen=True, slots=True, kw_only=True)
class Outcome:
    action: PolicyAction
    domain: str | None = None  # the From (or claimed) domain the policy judged
    reply: Reply | None = None  # REJECT, TEMPFAIL
    header: tuple[str, str] | None = None  # TAG
    reason: str = ""

    def verdict(self) -> Verdict:
        """The content-filter verdict: REJECT/TEMPFAIL with the reply, TAG a header, else CONTINUE."""
        match self.action:
            case PolicyAction.REJECT | PolicyAction.TEMPFAIL:
                assert self.reply is not None
                return Verdict.reject(self.reply, self.reason)
            case PolicyAction.TAG:
                assert self.header is not None
                return Verdict(Decision.CONTINUE, reason=self.reason, headers=(self.header,))
            case PolicyAction.ACCEPT:
                return Verdict(Decision.CONTINUE, reason=self.reason)
            case PolicyAction.NONE | PolicyAction.PASS:
                return CONTINUE
            case _:
                assert_never(self.action)


def _within(domain: str, parent: str) -> bool:
    """`domain` is `parent` or a subdomain of it."""
    return domain == parent or domain.endswith("." + parent)


def aligned(sig_domain: str, from_domain: str) -> bool:
    """d= is the From domain or a parent of it (not a bare top-level label)."""
    return "." in sig_domain and _within(from_domain, sig_domain)


def policy(
    result: DkimResult,
    from_domain: str | None,
    sign_domains: Iterable[str],
    mode: Literal["reject", "tag", "accept"] | str,
    *,
    claimed: Sequence[str] = (),
) -> Outcome:
    """dkim.unsigned_from_signing_domain for one message. `from_domain` is from_domain(head);
    `claimed` is from_claims(head), looked at only when `from_domain` is None."""
    ours = [d.lower().rstrip(".") for d in sign_domains]
    if from_domain is not None:
        domain: str | None = from_domain if any(_within(from_domain, d) for d in ours) else None
    else:
        domain = next((c for c in claimed if any(_within(c, d) for d in ours)), None)
    if domain is None:
        return Outcome(action=PolicyAction.NONE, domain=from_domain)
    mine = [s for s in result.signatures if from_domain is not None and aligned(s.domain, from_domain)]
    if any(s.result is Result.PASS for s in mine):
        return Outcome(action=PolicyAction.PASS, domain=domain, reason=f"signed by {domain}")
    temporary = any(s.result is Result.TEMPERROR for s in mine)
    why = (
        "From is not exactly one address" if from_domain is None
        else "its signature could not be verified now (DNS)" if temporary
        else "its signature did not verify" if mine
        else "no signature from it"
    )  # fmt: skip
    reason = f"unsigned from signing domain {domain}: {why}"
    match mode:
        case "reject":
            if temporary:
                text = f"Temporary failure: the DKIM signature of {domain} cannot be verified now; try again later"
                return Outcome(action=PolicyAction.TEMPFAIL, domain=domain, reply=Reply(451, "4.7.5", text), reason=reason)
            text = f"Message rejected: {domain} signs its mail with DKIM; this message has no valid signature from it"
            return Outcome(action=PolicyAction.REJECT, domain=domain, reply=Reply(550, "5.7.1", text), reason=reason)
        case "tag":
            return Outcome(action=PolicyAction.TAG, domain=domain, header=POLICY_HEADER, reason=reason)
        case "accept":
            return Outcome(action=PolicyAction.ACCEPT, domain=domain, reason=reason)
        case _:
            raise ValueError(f"unknown dkim.unsigned_from_signing_domain {mode!r}")


# ---------------------------------------------------------------------------------------------
# Authentication-Results (pure)


def _pvalue(text: str) -> str:
    return text if _TOKEN.match(text) else '"' + text.replace("\\", "\\\\").replace('"', '\\"') + '"'


def _b_prefixes(sigs: Sequence[Signature]) -> list[str]:
    """header.b: the shortest prefix of b=, 8 characters at least, that tells the signatures apart (RFC 6008)."""
    out = []
    for s in sigs:
        if not _B64.match(s.b):
            out.append("")
            continue
        n = 8
        while n < len(s.b) and any(o is not s and o.b != s.b and o.b.startswith(s.b[:n]) for o in sigs):
            n += 1
        out.append(s.b[:n])
    return out


def authentication_results(authserv_id: str, result: DkimResult, from_domain: str | None = None) -> str:
    """The Authentication-Results value for `result`; several results are folded one a line."""
    if not result.signatures:
        return f"{authserv_id}; dkim=none"
    sigs = sorted(result.signatures, key=lambda s: not (from_domain and aligned(s.domain, from_domain)))
    parts = []
    for s, b in zip(sigs, _b_prefixes(sigs), strict=True):
        p = f"dkim={s.result.value}"
        if s.reason:
            p += f" reason={_pvalue(s.reason)}"
        if s.checked_domain:
            p += f" header.d={s.domain}"
        if _SELECTOR.match(s.selector):
            p += f" header.s={s.selector}"
        if s.algorithm in ("rsa-sha256", "ed25519-sha256", "rsa-sha1"):
            p += f" header.a={s.algorithm}"
        if b:
            p += f" header.b={_pvalue(b)}"
        parts.append(p)
    sep = "; " if len(parts) == 1 else ";\r\n\t"
    return authserv_id + sep + sep.join(parts)


# ---------------------------------------------------------------------------------------------
# Keys (pure: bytes in, bytes out)


@dataclass(frozen=True, slots=True, kw_only=True)
class Key:
    """A private key in the form dkimpy signs with, and its public half for DNS."""

    kind: Literal["rsa", "ed25519"]
    private: bytes  # rsa: PKCS#1 PEM; ed25519: base64 of the 32-byte seed
    public: str  # the p= of the TXT record: rsa SubjectPublicKeyInfo, ed25519 the raw key (RFC 8463), base64
    bits: int

    @property
    def algorithm(self) -> bytes:
        return b"rsa-sha256" if self.kind == "rsa" else b"ed25519-sha256"


_CLEAR = serialization.NoEncryption()  # key files are protected by their mode (0600), not a passphrase


def parse_key(pem: bytes) -> Key:
    """A PEM private key file (RSA PKCS#1 or PKCS#8, ed25519 PKCS#8). ValueError says what is wrong."""
    try:
        key = serialization.load_pem_private_key(pem, password=None)
    except TypeError:
        raise ValueError("the key is encrypted (a passphrase is not supported)") from None
    except ValueError:
        raise ValueError("not a PEM private key (RSA or ed25519)") from None
    if isinstance(key, rsa.RSAPrivateKey):
        if key.key_size < MIN_RSA_BITS:
            raise ValueError(f"an RSA key of {key.key_size} bits; at least {MIN_RSA_BITS} (RFC 8301)")
        private = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.TraditionalOpenSSL, _CLEAR)
        spki = key.public_key().public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
        return Key(kind="rsa", private=private, public=base64.b64encode(spki).decode(), bits=key.key_size)
    if isinstance(key, ed25519.Ed25519PrivateKey):
        raw = key.public_key().public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
        seed = base64.b64encode(key.private_bytes_raw())
        return Key(kind="ed25519", private=seed, public=base64.b64encode(raw).decode(), bits=256)
    raise ValueError(f"a {type(key).__name__.removeprefix('_')} key; DKIM signs with RSA or ed25519")


def new_key(kind: Literal["rsa", "ed25519"]) -> bytes:
    """A new private key as PEM: RSA RSA_BITS bits (PKCS#1, as opendkim-genkey) or ed25519 (PKCS#8)."""
    match kind:
        case "rsa":
            k = rsa.generate_private_key(public_exponent=65537, key_size=RSA_BITS)
            return k.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.TraditionalOpenSSL, _CLEAR)
        case "ed25519":
            e = ed25519.Ed25519PrivateKey.generate()
            return e.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, _CLEAR)
        case _:
            assert_never(kind)


def txt_record(selector: str, domain: str, key: Key) -> str:
    """The zone-file line to publish: the record's text split into strings of 255 characters."""
    text = f"v=DKIM1; k={key.kind}; p={key.public}"
    strings = " ".join(f'"{text[i : i + 255]}"' for i in range(0, len(text), 255))
    return f"{selector}._domainkey.{domain}. IN TXT {strings}"


def signed_headers(names: Iterable[bytes]) -> list[bytes]:
    """h= for a message with these field names (in order): each SIGNED_HEADERS instance, and from once more."""
    wanted = {h.encode() for h in SIGNED_HEADERS}
    out = [n.lower() for n in names if n.lower() in wanted]
    return out + [b"from"]


# ---------------------------------------------------------------------------------------------
# Signing (CPU, no I/O but loading)


@dataclass(frozen=True, slots=True, kw_only=True)
class SigningKey:
    domain: str
    selector: str
    key: Key
    path: Path


class Signer:
    """The dkim.sign keys, loaded once. Immutable after load: share it between threads."""

    def __init__(self, keys: Sequence[SigningKey]) -> None:
        self.keys = tuple(keys)

    @classmethod
    def load(cls, sign_cfg: Sequence[DkimSign], data_dir: str | os.PathLike[str]) -> Signer:
        """Every key of dkim.sign (paths relative to `data_dir`); ValueError naming the file at the first bad one."""
        return cls([load_key(entry, data_dir) for entry in sign_cfg])

    @property
    def domains(self) -> tuple[str, ...]:
        return tuple(dict.fromkeys(k.domain for k in self.keys))

    def keys_for(self, from_domain: str | None) -> tuple[SigningKey, ...]:
        """The keys of the most specific signing domain that is `from_domain` or a parent of it."""
        if not from_domain:
            return ()
        matching = [k for k in self.keys if _within(from_domain.lower(), k.domain)]
        if not matching:
            return ()
        best = max(len(k.domain) for k in matching)
        return tuple(k for k in matching if len(k.domain) == best)

    def sign(self, message: bytes, from_domain: str | None) -> bytes | None:
        """The DKIM-Signature field(s) to put on top of `message`, CRLF-terminated, one per key
        of the From domain's signing domain; None when no key applies or the message's header
        section cannot be parsed (logged)."""
        keys = self.keys_for(from_domain)
        if not keys:
            return None
        try:
            d = dkim.DKIM(message, logger=_LIB_LOG, linesep=b"\r\n")
        except (dkim.MessageFormatError, IndexError) as exc:  # IndexError: a continuation line first
            log.warning("dkim: not signed for %s: the header section cannot be parsed (%s)", keys[0].domain, type(exc).__name__)
            return None
        include = signed_headers(name for name, _ in d.headers)
        out = [
            d.sign(
                k.selector.encode(),
                k.domain.encode(),
                k.key.private,
                signature_algorithm=k.key.algorithm,
                canonicalize=(b"relaxed", b"relaxed"),
                include_headers=include,
            )
            for k in keys
        ]
        return b"".join(out)


def load_key(entry: DkimSign, data_dir: str | os.PathLike[str]) -> SigningKey:
    path = Path(data_dir) / entry.key
    try:
        pem = path.read_bytes()
    except OSError as exc:
        raise ValueError(f"{path}: cannot read the DKIM key: {exc.strerror or exc}") from None
    try:
        key = parse_key(pem)
    except ValueError as exc:
        raise ValueError(f"{path}: {exc}") from None
    return SigningKey(domain=entry.domain, selector=entry.selector, key=key, path=path)


def key_path(data_dir: str | os.PathLike[str], domain: str, selector: str) -> Path:
    """Where keygen writes a key: data_dir/dkim/<domain>.<selector>.key."""
    return Path(data_dir) / "dkim" / f"{domain}.{selector}.key"


def write_key(path: Path, pem: bytes, *, force: bool = False) -> None:
    """Write a private key file 0600 (its directory made 0700); FileExistsError unless `force`."""
    path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    if path.exists() and not force:
        raise FileExistsError(f"{path} exists (--force replaces it)")
    tmp = path.with_name(path.name + ".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        os.fchmod(fd, 0o600)
        os.write(fd, pem)
        os.fsync(fd)
    finally:
        os.close(fd)
    os.replace(tmp, path)


# ---------------------------------------------------------------------------------------------
# Verification (I/O: DNS)


@dataclass(frozen=True, slots=True)
class _Tags:
    domain: str
    selector: str
    algorithm: str
    b: str


def _tags(value: bytes) -> _Tags | Signature:
    """What the verifier needs of a DKIM-Signature value, or the Signature result when it ends there."""
    try:
        tags = dkim.util.parse_tag_value(value)
    except dkim.util.InvalidTagValueList:
        return Signature(domain="", selector="", result=Result.NEUTRAL, reason="signature syntax error")

    def text(t: bytes) -> str:
        return tags.get(t, b"").decode("ascii", "replace").strip()

    domain, selector, algorithm = text(b"d").lower().rstrip("."), text(b"s"), text(b"a").lower()
    b = re.sub(r"\s+", "", text(b"b"))  # b= may be folded
    seen = {"domain": domain, "selector": selector, "algorithm": algorithm, "b": b}
    if not _DOMAIN.match(domain) or not _SELECTOR.match(selector):
        return Signature(**seen, result=Result.NEUTRAL, reason="signature syntax error")
    if algorithm == "rsa-sha1":  # RFC 8301 3.1: MUST NOT be considered valid
        return Signature(**seen, result=Result.PERMERROR, reason="rsa-sha1 not accepted")
    return _Tags(domain, selector, algorithm, b)


def _words(exc: Exception) -> str:
    """dkimpy's message up to its first quote of the message: "body hash mismatch", "x= value is past"."""
    text = re.split(r"[(:]", str(exc), maxsplit=1)[0].strip()
    text = re.sub(r"[^A-Za-z0-9 =.,-]", "", text)[:60]
    return text or type(exc).__name__


async def _fetch(resolver: Resolver, name: str, deadline: float) -> tuple[str, str | None]:
    """("ok", the key record) | ("none", None) | ("temp", None) before `deadline` (loop time)."""
    try:
        async with asyncio.timeout_at(deadline):
            records = await resolver.query(name, "TXT")
    except NotFound:
        return "none", None
    except (TempFail, TimeoutError):
        return "temp", None
    texts = [r.data for r in records]
    # RFC 6376 3.6.2.2: several records may answer; prefer one that reads as a DKIM key.
    best = next((t for t in texts if t.lstrip().startswith("v=DKIM1")), None) or next((t for t in texts if "p=" in t), texts[0])
    return "ok", best


async def verify(
    message: bytes,
    *,
    nameservers: Sequence[object] = (),
    timeout: float = 5.0,
    resolver: Resolver | None = None,
) -> DkimResult:
    """Every DKIM-Signature of `message` (at most MAX_SIGNATURES), checked. Key records come
    from `resolver` when given (the process's), else from a resolver on `nameservers` ("host"
    or "host:port"; empty = the system's), all within `timeout` seconds."""
    on_loop = len(message) <= VERIFY_ON_LOOP
    end = re.search(rb"\n\r?\n", message)
    head = message[: end.end()] if end else message  # dkimpy splits the whole message into lines: the loop reads the head only
    try:
        d = dkim.asyncsupport.DKIM(message if on_loop else head, logger=_LIB_LOG, minkey=MIN_RSA_BITS, timeout=timeout)
    except (dkim.DKIMException, IndexError):  # IndexError: a continuation line first
        if re.search(rb"(?im)^dkim-signature[ \t]*:", head):
            return DkimResult((Signature(domain="", selector="", result=Result.PERMERROR, reason="message syntax error"),))
        return DkimResult()
    values = [v for k, v in d.headers if k.lower() == b"dkim-signature"]
    parsed = [_tags(v) for v in values[:MAX_SIGNATURES]]
    ignored = max(0, len(values) - MAX_SIGNATURES)
    if not parsed:
        return DkimResult()

    names = sorted({f"{t.selector}._domainkey.{t.domain}" for t in parsed if isinstance(t, _Tags)})
    answers: dict[str, tuple[str, str | None]] = {}
    if names:
        own = resolver is None
        r = resolver or Resolver([str(ns) for ns in nameservers], timeout)
        try:
            deadline = asyncio.get_running_loop().time() + timeout
            async with asyncio.TaskGroup() as tg:
                tasks = {n: tg.create_task(_fetch(r, n, deadline)) for n in names}
            answers = {n: t.result() for n, t in tasks.items()}
        finally:
            if own:
                r.close()

    def record(name: bytes, timeout: float = 5.0) -> str | None:  # dkimpy's dnsfunc: the TXT text or None
        return answers.get(name.decode("ascii", "replace").rstrip(".").lower(), ("none", None))[1]

    async def arecord(name: bytes, timeout: float = 5.0) -> str | None:
        return record(name)

    out: list[Signature | None] = []
    todo: list[tuple[int, dict[str, str]]] = []  # signatures whose key was found: the hashing is left
    for idx, t in enumerate(parsed):
        if isinstance(t, Signature):
            out.append(t)
            continue
        status, text = answers[f"{t.selector}._domainkey.{t.domain}"]
        sig = {"domain": t.domain, "selector": t.selector, "algorithm": t.algorithm, "b": t.b}
        if status == "temp":
            out.append(Signature(**sig, result=Result.TEMPERROR, reason="key lookup failed"))
        elif status == "none":
            out.append(Signature(**sig, result=Result.PERMERROR, reason="no key"))
        elif not _key_record_ok(text):
            out.append(Signature(**sig, result=Result.PERMERROR, reason="invalid key record"))
        else:
            out.append(None)
            todo.append((idx, sig))
    if on_loop:
        for idx, sig in todo:  # dkimpy's asyncio path; its dnsfunc answers from `answers`
            try:
                out[idx] = _judge(sig, await d.verify(idx, dnsfunc=arecord))
            except (dkim.DKIMException, ValueError) as exc:
                out[idx] = _judge(sig, exc)
    elif todo:

        def check_all() -> list[Signature]:
            done = []
            sync = dkim.DKIM(message, logger=_LIB_LOG, minkey=MIN_RSA_BITS, timeout=timeout)
            for idx, sig in todo:
                try:
                    done.append(_judge(sig, sync.verify(idx, dnsfunc=record)))
                except (dkim.DKIMException, ValueError) as exc:
                    done.append(_judge(sig, exc))
            return done

        for (idx, _), judged in zip(todo, await asyncio.to_thread(check_all), strict=True):
            out[idx] = judged
    return DkimResult(tuple(s for s in out if s is not None), ignored)


def _key_record_ok(text: str | None) -> bool:
    try:
        dkim.evaluate_pk(b"", text)
    except (dkim.DKIMException, ValueError):  # ValueError: binascii.Error of a bad p=, non-ASCII text
        return False
    return True


def _judge(sig: dict[str, str], outcome: bool | Exception) -> Signature:
    """dkimpy's answer for one signature (True, False or what it raised) as our result."""
    if outcome is True:
        return Signature(**sig, result=Result.PASS)
    if outcome is False:
        return Signature(**sig, result=Result.FAIL, reason="signature did not verify")
    if isinstance(outcome, dkim.KeyFormatError):  # too small, digest too large for the modulus
        return Signature(**sig, result=Result.PERMERROR, reason=_words(outcome))
    if isinstance(outcome, dkim.ValidationError) and "body hash mismatch" in str(outcome):
        return Signature(**sig, result=Result.FAIL, reason="body hash did not verify")
    return Signature(**sig, result=Result.NEUTRAL, reason=_words(outcome))  # unreadable tags, expired, i= outside d=

"""The configuration model: one YAML file, validated once, frozen, passed down as slices.

DESCRIPTION
    `load(path)` reads the YAML file, keeps the line of every key, validates the whole
    document with pydantic (unknown keys are errors), resolves relative paths and applies
    the `servers.<hostname>` override for this node. Every error names the file, the line
    and the key path: `conf/mtaserver.yaml:12: server.workers: ...`. The returned `Config`
    is immutable; a reload builds a new one and swaps it in only if it validated.

SECURITY
    Reads a file that only the administrator writes. Paths it names are resolved relative
    to the config file (or to `server.data_dir`), never relative to the working directory.

CONFIG
    Every key of `shared/CONFIG.md`, plus `server.limits.*`, documented in `conf/mtaserver.yaml`.
"""

from __future__ import annotations

import hashlib
import ipaddress
import os
import re
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    PrivateAttr,
    ValidationError,
    ValidationInfo,
    field_validator,
    model_validator,
)

from .values import (
    Endpoint,
    NetMatch,
    check_domain,
    check_nexthop,
    parse_duration,
    parse_endpoint,
    parse_network,
    parse_size,
)


class ConfigError(Exception):
    """A config file that cannot be used. `errors` are ready-to-print lines."""

    def __init__(self, errors: list[str]) -> None:
        super().__init__("\n".join(errors))
        self.errors = errors


Duration = Annotated[float, BeforeValidator(parse_duration)]
Size = Annotated[int, BeforeValidator(parse_size)]
EndpointT = Annotated[Endpoint, BeforeValidator(parse_endpoint)]
Network = Annotated[NetMatch, BeforeValidator(parse_network)]
PostscreenAction = Literal["ignore", "enforce", "drop"]

class Strict(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid", arbitrary_types_allowed=True)


# ---------------------------------------------------------------------------------------------
# server


class Listener(Strict):
    name: str
    address: EndpointT
    postscreen: bool = False
    tls: Literal["none", "starttls", "implicit"] = "starttls"
    auth: Literal["none", "offer", "require"] = "offer"


class TlsConfig(Strict):
    cert: str | None = None
    key: str | None = None
    min_version: Literal["TLSv1", "TLSv1.1", "TLSv1.2", "TLSv1.3"] = "TLSv1.2"

    @model_validator(mode="after")
    def _pair(self) -> TlsConfig:
        if (self.cert is None) != (self.key is None):
            raise ValueError("cert and key go together")
        return self


class DnsConfig(Strict):
    nameservers: list[EndpointT] = []
    timeout: Duration = 5.0

    @field_validator("nameservers", mode="before")
    @classmethod
    def _default_port(cls, v: Any) -> Any:
        if isinstance(v, list):
            return [parse_endpoint(x, default_port=53) if isinstance(x, str) else x for x in v]
        return v


class SmtpLimits(Strict):
    """Session limits. Each has a reply; see conf/mtaserver.yaml for the rationale of each."""

    command_line: int = Field(512, ge=64, le=65536)  # RFC 5321 4.5.3.1.4 -> 500 5.5.2
    text_line: int = Field(2048, ge=1000, le=1048576)  # RFC 5321 4.5.3.1.6 says 1000 -> drain, 500 5.5.2
    recipients: int = Field(1000, ge=1)  # Postfix smtpd_recipient_limit -> 452 4.5.3
    recipient_overshoot: int = Field(1000, ge=0)  # Postfix smtpd_recipient_overshoot_limit: 452s that are no errors
    header_size: Size = 102400  # Postfix header_size_limit -> drain, 552 5.3.4
    hop_count: int = Field(50, ge=2, le=1000)  # Postfix hopcount_limit: Received: headers -> 554 5.4.0 after DATA
    command_timeout: Duration = 300.0  # Postfix smtpd_timeout -> 421 4.4.2 and close
    data_timeout: Duration = 300.0  # no progress within DATA for this long -> 421 4.4.2
    min_data_rate: int = Field(500, ge=0)  # Postfix smtpd_min_data_rate: bytes/s inside DATA after the first data_timeout
    soft_error_limit: int = Field(10, ge=0)  # past it, each error reply is delayed by error_sleep
    hard_error_limit: int = Field(20, ge=1)  # -> 421 4.7.0 Error: too many errors, and close
    error_sleep: Duration = 1.0
    connections_per_ip: int = Field(50, ge=0)  # 0 = unlimited -> 421 4.7.0 Error: too many connections
    connection_rate_per_ip: int = Field(0, ge=0)  # new connections per minute; 0 = unlimited -> the same 421


def _fqdn() -> str:
    import socket  # here, not at the top: pure modules import this one for its types

    return socket.getfqdn() or "localhost"


class ServerConfig(Strict):
    hostname: str = Field(default_factory=lambda: _fqdn())
    banner: str = "{hostname} ESMTP mtaserver"
    data_dir: str = "var"
    workers: int | Literal["auto"] = "auto"
    listeners: list[Listener] = [Listener(name="smtp", address=parse_endpoint("127.0.0.1:2525"), postscreen=False)]
    tls: TlsConfig = TlsConfig()
    dns: DnsConfig = DnsConfig()
    limits: SmtpLimits = SmtpLimits()
    peername_lookup: bool = True  # Postfix smtpd_peername_lookup: the client's name from DNS (PTR + forward)
    user: str | None = None  # Postfix mail_owner: the serving processes drop to it after binding (started as root)
    group: str | None = None  # default: server.user's primary group

    @field_validator("user")
    @classmethod
    def _user(cls, v: str | None) -> str | None:
        if v is not None:
            import pwd  # here: a lookup in the system's user database, only when configured

            try:
                pwd.getpwnam(v)
            except KeyError:
                raise ValueError(f"no such user: {v!r}") from None
        return v

    @field_validator("group")
    @classmethod
    def _group(cls, v: str | None, info: ValidationInfo) -> str | None:
        if v is not None:
            import grp

            if "user" not in info.data:
                return v  # server.user itself failed: reported there
            if info.data["user"] is None:
                raise ValueError("needs server.user (the group of the user the server runs as)")
            try:
                grp.getgrnam(v)
            except KeyError:
                raise ValueError(f"no such group: {v!r}") from None
        return v

    @field_validator("hostname")
    @classmethod
    def _hostname(cls, v: str) -> str:
        return check_domain(v)

    @field_validator("workers")
    @classmethod
    def _workers(cls, v: int | str) -> int | str:
        if isinstance(v, int) and not 1 <= v <= 256:
            raise ValueError("workers must be auto or 1..256")
        return v

    @field_validator("listeners")
    @classmethod
    def _listeners(cls, v: list[Listener]) -> list[Listener]:
        names = [x.name for x in v]
        if len(set(names)) != len(names):
            raise ValueError("listener names must be unique")
        return v

    @model_validator(mode="after")
    def _implicit_needs_cert(self) -> ServerConfig:
        for x in self.listeners:
            if x.tls == "implicit" and not self.tls.cert:
                raise ValueError(f"listener {x.name}: tls implicit needs server.tls.cert and key")
        return self

    def worker_count(self) -> int:
        return (os.cpu_count() or 1) if self.workers == "auto" else int(self.workers)


# ---------------------------------------------------------------------------------------------
# domains, auth, inbound


class LocalDelivery(Strict):
    type: Literal["maildir", "lmtp"] = "maildir"
    path: str = "mail"
    address: EndpointT | None = None

    @model_validator(mode="after")
    def _lmtp_needs_address(self) -> LocalDelivery:
        if self.type == "lmtp" and self.address is None:
            raise ValueError("type lmtp needs an address")
        return self


class DomainsConfig(Strict):
    local: list[str] = []
    relay: list[str] = []
    local_delivery: LocalDelivery = LocalDelivery()
    mailboxes: str | None = None

    @field_validator("local", "relay")
    @classmethod
    def _domains(cls, v: list[str]) -> list[str]:
        return [check_domain(d) for d in v]


class AuthConfig(Strict):
    backend: Literal["file", "dovecot"] = "file"
    users_file: str | None = None
    dovecot_socket: str = "/run/dovecot/auth-client"  # "unix:/path", "/path" or "host:port"
    mechanisms: list[Literal["PLAIN", "LOGIN"]] = ["PLAIN", "LOGIN"]
    max_failures: int = Field(5, ge=0)  # per client IP within failure_window -> 421 4.7.0; 0 = no limit
    failure_window: Duration = 600.0
    timeout: Duration = 10.0  # one answer from the password backend (dovecot) -> 454 4.7.0

    @field_validator("dovecot_socket")
    @classmethod
    def _dovecot_socket(cls, v: str) -> str:
        parse_endpoint(f"unix:{v}" if v.startswith("/") else v)  # ValueError names the problem
        return v


class ProtocolChecks(Strict):
    reject_unknown_client_hostname: bool = False
    reject_unknown_reverse_client_hostname: bool = False
    reject_invalid_helo_hostname: bool = True
    reject_non_fqdn_helo_hostname: bool = False
    reject_unknown_helo_hostname: bool = False
    reject_non_fqdn_sender: bool = True
    reject_unknown_sender_domain: bool = True
    unknown_reject_code: Literal[450, 550] = 450


class AttachmentLimitsConfig(Strict):
    max_depth: int = Field(3, ge=1, le=10)  # archive levels opened (an archive in an archive ...); deeper: refused
    max_entries: int = Field(1000, ge=1, le=1_000_000)  # archive members listed per message; more: refused
    max_expanded: Size = Field(100 << 20, ge=1)  # a zip declaring more, or decompressing more per message: a zip bomb
    max_archive_size: Size = Field(20 << 20, ge=1)  # decoded bytes of one archive held to list it; larger: refused


class InboundConfig(Strict):
    blocked_extensions: list[str] = []  # "@common" = the panel's 27 commonly blocked extensions
    blocked_extensions_action: Literal["reject", "bounce", "discard"] = "reject"
    attachment_limits: AttachmentLimitsConfig = AttachmentLimitsConfig()
    notify_admin: bool = True
    notify_recipient: bool = True
    reject_unlisted_sender: bool = True
    reject_unlisted_recipient: bool = True
    reject_sender_login_mismatch: bool = True
    bare_newline: Literal["reject", "normalize", "note"] = "reject"
    bare_newline_exclude_mynetworks: bool = True
    protocol_checks: ProtocolChecks = ProtocolChecks()

    @field_validator("blocked_extensions")
    @classmethod
    def _ext(cls, v: list[str]) -> list[str]:
        from .filters.attachments import COMMON_BLOCKED  # late: filters import this module

        out: list[str] = []
        for e in v:
            if e.startswith("@"):
                if e.lower() != "@common":
                    raise ValueError(f"{e!r}: the only preset is @common (the commonly blocked extensions)")
                out += COMMON_BLOCKED
            elif not re.fullmatch(r"[A-Za-z0-9]{1,64}", e):
                raise ValueError(f"extension {e!r}: letters and digits only, no dot")
            else:
                out.append(e.lower())
        return list(dict.fromkeys(out))  # de-duplicated, order kept


# ---------------------------------------------------------------------------------------------
# postscreen


class GreetConfig(Strict):
    banner: str = "{hostname} ESMTP"
    wait: Duration = 6.0
    action: PostscreenAction = "ignore"
    ttl: Duration = 86400.0


class DnsblConfig(Strict):
    sites: list[str] = []
    action: PostscreenAction = "ignore"
    threshold: int = 1
    whitelist_threshold: int = 0
    min_ttl: Duration = 60.0
    max_ttl: Duration = 3600.0
    ttl: Duration = 3600.0
    timeout: Duration = 10.0

    @field_validator("sites")
    @classmethod
    def _sites(cls, v: list[str]) -> list[str]:
        from .postscreen.dnsbl import parse_sites  # late: the postscreen package imports this module

        parse_sites(v)  # ValueError: "entry 2: bad DNSBL weight factor ..."
        return v


class DeepTest(Strict):
    enable: bool = False
    action: PostscreenAction = "ignore"
    ttl: Duration = 30 * 86400.0


class CacheConfig(Strict):
    backend: Literal["sqlite", "redis"] = "sqlite"
    url: str | None = None
    retention: Duration = 7 * 86400.0
    cleanup_interval: Duration = 12 * 3600.0

    @model_validator(mode="after")
    def _redis_url(self) -> CacheConfig:
        if self.backend == "redis" and not self.url:
            raise ValueError("backend redis needs url: redis://host:port/db")
        return self


class StressConfig(Strict):
    connections: int = Field(90, ge=0)  # a worker's connections on a screened listener; 0 = never
    greet_wait: Duration = 2.0  # Postfix: postscreen_greet_wait = ${stress?{2}:{6}}s


class PostscreenConfig(Strict):
    access_list: list[str] = ["permit_mynetworks"]
    blacklist_action: PostscreenAction = "ignore"
    greet: GreetConfig = GreetConfig()
    dnsbl: DnsblConfig = DnsblConfig()
    bare_newline: DeepTest = DeepTest(action="ignore")
    non_smtp_command: DeepTest = DeepTest(action="drop")
    pipelining: DeepTest = DeepTest(action="enforce")
    deep_tests_require_reconnect: bool = False
    cache: CacheConfig = CacheConfig()
    stress: StressConfig = StressConfig()

    @field_validator("access_list")
    @classmethod
    def _access_list(cls, v: list[str]) -> list[str]:
        from .postscreen.access import parse_access_list  # late: the postscreen package imports this module

        parse_access_list(v)  # ValueError: "entry 2: '10.0.0.1/8 reject': ... host bits set ..."
        return v


# ---------------------------------------------------------------------------------------------
# outbound, antispam, dkim, antivirus


class RelayAuth(Strict):
    username: str | None = None
    password_file: str | None = None
    allow_plaintext: bool = False  # true: AUTH also over a connection without TLS (Postfix smtp_sasl_security_options)


class OutboundConfig(Strict):
    add_client_ip_header: bool = True
    add_username_header: bool = False
    require_auth: bool = True
    mynetworks: list[Network] = [parse_network("127.0.0.0/8"), parse_network("[::1]/128")]
    relay_host: str | None = None
    fallback_relay_host: str | None = None
    relay_auth: RelayAuth = RelayAuth()
    tls: Literal["none", "may", "encrypt"] = "may"
    helo_name: str | None = None
    smtp_port: int = Field(25, ge=1, le=65535)  # port of MX hosts (Postfix smtp_tcp_port)
    mx_address_limit: int = Field(5, ge=1, le=1000)  # IP addresses tried per attempt, all MX hosts (smtp_mx_address_limit)
    mx_session_limit: int = Field(2, ge=1, le=1000)  # SMTP sessions per attempt, all MX hosts (smtp_mx_session_limit)

    @field_validator("relay_host", "fallback_relay_host")
    @classmethod
    def _nexthop(cls, v: str | None) -> str | None:
        return None if v is None else check_nexthop(v)  # "[foo" would be read as [foo]: ValueError names the forms


Tolerance = str | float


class SpamdConfig(Strict):
    address: EndpointT = parse_endpoint("127.0.0.1:783")
    timeout: Duration = 30.0
    max_size: Size = 500 * 1024


class AntispamConfig(Strict):
    enabled: bool = True
    spamd: SpamdConfig = SpamdConfig()
    subject_tag: str = "[SPAM]"
    delivery_tolerance: Tolerance = "medium"
    blocking_tolerance: Tolerance = "medium"
    blocked_spam_action: Literal["discard", "deliver", "reject"] = "discard"
    check_outbound: bool = True
    on_error: Literal["tempfail", "accept"] = "tempfail"

    @field_validator("subject_tag")
    @classmethod
    def _tag(cls, v: str) -> str:
        if len(v) > 64 or any(ord(c) < 32 or ord(c) == 127 for c in v):
            raise ValueError("at most 64 characters, no control characters (a line break would make a header)")
        return v

    @field_validator("delivery_tolerance", "blocking_tolerance")
    @classmethod
    def _tolerance(cls, v: Tolerance) -> Tolerance:
        if isinstance(v, (int, float)) and not isinstance(v, bool):
            if not 0 <= v <= 100:
                raise ValueError("a score must be within 0..100")
            return float(v)
        if isinstance(v, str) and (v in ("low", "medium", "high") or re.fullmatch(r"\d{1,3}(\.\d+)?%", v)):
            return v
        raise ValueError("expected low | medium | high, a percentage like 40%, or a score like 6.6")


_DKIM_SELECTOR = re.compile(r"^[A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?(\.[A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?)*$")


class DkimSign(Strict):
    domain: str  # the d= of the signature; signs mail whose From domain is it or a subdomain of it
    selector: str  # the s=: the key's TXT record is <selector>._domainkey.<domain>
    key: str  # PEM private key (RSA or ed25519), relative to server.data_dir (`mtaserver dkim keygen` writes it)

    @field_validator("domain")
    @classmethod
    def _domain(cls, v: str) -> str:
        d = check_domain(v)
        if d.startswith(".") or "." not in d:
            raise ValueError(f"expected a domain like example.test, not {v!r}")
        return d

    @field_validator("selector")
    @classmethod
    def _selector(cls, v: str) -> str:
        if not _DKIM_SELECTOR.match(v) or len(v) > 63:  # RFC 6376 3.1: selector = sub-domain *("." sub-domain)
            raise ValueError(f"expected a selector like mail or 2026a (letters, digits, '-', '.'), not {v!r}")
        return v.lower()

    @field_validator("key")
    @classmethod
    def _key(cls, v: str) -> str:
        if not v.strip():
            raise ValueError("the key file is empty; `mtaserver dkim keygen` prints the entry to add")
        return v


class DkimConfig(Strict):
    verify: bool = True
    unsigned_from_signing_domain: Literal["reject", "tag", "accept"] = "reject"
    sign: list[DkimSign] = []
    timeout: Duration = 5.0  # DNS budget of one message's verification (all its signatures); past it: temperror

    @field_validator("sign")
    @classmethod
    def _unique(cls, v: list[DkimSign]) -> list[DkimSign]:
        seen = set()
        for s in v:
            if (s.domain, s.selector) in seen:
                raise ValueError(f"{s.selector}._domainkey.{s.domain} is listed twice")
            seen.add((s.domain, s.selector))
        return v

    @field_validator("timeout")
    @classmethod
    def _timeout(cls, v: float) -> float:
        if not 0 < v <= 60:
            raise ValueError("expected a duration between 0 and 60s")
        return v


class ClamdConfig(Strict):
    address: EndpointT = parse_endpoint("127.0.0.1:3310")
    timeout: Duration = 60.0


# ClamAV's plain-text signature databases (clamd loads these from its DatabaseDirectory by name);
# .cvd/.cld/.cud are the signed official containers, which only freshclam installs.
SIGNATURE_EXTENSIONS = (
    "hdb", "hsb", "hdu", "hsu", "mdb", "msb", "mdu", "msu", "imp", "ndb", "ndu", "ldb", "ldu", "cdb", "idb",
    "fp", "sfp", "ign", "ign2", "pdb", "gdb", "wdb", "ftm", "crb", "cat", "yar", "yara", "pwdb",
)  # fmt: skip
_MIRROR_URL = re.compile(r"^https?://(\[[0-9A-Fa-f:.]+\]|[A-Za-z0-9.-]+)(:\d{1,5})?(/[^\s]*)?$")


class Definitions(Strict):
    mirrors: list[str] = ["database.clamav.net"]  # host names (DatabaseMirror) or http(s)://host[:port] (PrivateMirror)
    custom_signatures: list[str] = []  # http(s):// URLs or local files (relative to the config file)
    update_frequency: Duration = 7200.0  # our scheduler: any duration >= 1s
    freshclam: bool = False  # run freshclam each tick for the official databases (Debian's clamav-freshclam does it otherwise)
    database_dir: str = "/var/lib/clamav"  # clamd's DatabaseDirectory: custom signatures are installed here
    freshclam_path: str = "freshclam"
    sigtool_path: str = "sigtool"
    clamscan_path: str = "clamscan"  # loads each custom file as clamd would, before it is installed
    timeout: Duration = 600.0  # one download, one freshclam run, one validation
    max_size: Size = 100 << 20  # one custom signature file

    @field_validator("mirrors")
    @classmethod
    def _mirrors(cls, v: list[str]) -> list[str]:
        for m in v:
            if "://" in m:
                if not _MIRROR_URL.match(m):
                    raise ValueError(f"mirror {m!r}: expected a host name or http(s)://host[:port]")
            else:
                if m.startswith("."):
                    raise ValueError(f"mirror {m!r}: expected a host name or http(s)://host[:port]")
                check_domain(m)
        if len({"://" in m for m in v}) > 1:
            raise ValueError("list host names (DatabaseMirror) or http(s):// URLs (PrivateMirror, which overrides them), not both")
        return v

    @field_validator("custom_signatures")
    @classmethod
    def _custom(cls, v: list[str]) -> list[str]:
        names = []
        for src in v:
            if "://" in src:
                m = re.match(r"^https?://[^/\s?#]+(/[^\s?#]*)(\?[^\s#]*)?$", src)
                if not m:
                    raise ValueError(f"{src!r}: expected an http(s)://host/path URL or a local file")
                name = m.group(1).rsplit("/", 1)[-1]
            else:
                name = Path(src).name
            ext = name.rsplit(".", 1)[-1].lower() if "." in name else ""
            if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9_.+-]{0,200}", name) or ext not in SIGNATURE_EXTENSIONS:
                raise ValueError(f"{src!r}: the file name must end with a ClamAV signature extension (.ndb, .hdb, .ldb, ...)")
            names.append(name)
        dup = sorted({n for n in names if names.count(n) > 1})
        if dup:
            raise ValueError(f"two sources install the same file {dup[0]!r}")
        return v

    @field_validator("update_frequency")
    @classmethod
    def _frequency(cls, v: float) -> float:
        if v < 1:
            raise ValueError("update_frequency must be at least 1s")
        return v

    @field_validator("database_dir")
    @classmethod
    def _database_dir(cls, v: str) -> str:
        if not v.startswith("/"):
            raise ValueError("database_dir must be an absolute path (clamd's DatabaseDirectory)")
        return v

    @model_validator(mode="after")
    def _freshclam_needs_mirror(self) -> Definitions:
        if self.freshclam and not self.mirrors:
            raise ValueError("freshclam: true needs at least one mirror")
        return self


class AntivirusConfig(Strict):
    enabled: bool = True
    clamd: ClamdConfig = ClamdConfig()
    action: Literal["reject", "discard"] = "reject"
    notify_admin: bool = True
    notify_recipient: bool = True
    block_encrypted_archives: bool = True
    definitions: Definitions = Definitions()
    on_error: Literal["tempfail", "accept"] = "tempfail"


# ---------------------------------------------------------------------------------------------
# advanced, queue, admin


class Threads(Strict):
    antivirus: int = Field(10, ge=1)
    lmtp: int = Field(20, ge=1)
    milter: int = Field(100, ge=1)


class AdvancedConfig(Strict):
    log_level: Literal["debug", "info", "warning", "error"] = "info"
    log_client_port: bool = False
    tls_log_level: int = Field(1, ge=0, le=4)
    lmtp_tls_log_level: int = Field(0, ge=0, le=4)
    log_target: Literal["stderr", "syslog", "file"] = "stderr"
    log_file: str | None = None  # log_target file: the path, relative to the config file; reopened on SIGUSR1
    syslog_socket: str = "/dev/log"  # log_target syslog: the local syslog socket (facility mail)
    threads: Threads = Threads()
    max_message_size: Size = 10240000
    postmaster: str = "postmaster@localhost"
    # The content-filter chain's time budget per message (every filter's wait included); a filter
    # without a verdict by then gives its on_error.
    filter_budget: Duration = Field(90.0, gt=0)

    @model_validator(mode="after")
    def _log_file(self) -> AdvancedConfig:
        if self.log_target == "file" and not self.log_file:
            raise ValueError("log_target file needs log_file")
        return self


class QueueConfig(Strict):
    manager: bool = True  # false: receive and queue only; nothing is delivered until it is true again
    min_backoff: Duration = 300.0
    max_backoff: Duration = 4000.0
    max_lifetime: Duration = 5 * 86400.0
    bounce_lifetime: Duration = 5 * 86400.0
    delay_warning: Duration = 4 * 3600.0
    destination_concurrency: int = Field(20, ge=1)
    min_free: Size = 0  # refuse MAIL (452 4.3.1) when the spool has less free space than this
    sync_threads: int = Field(16, ge=1, le=256)  # threads doing fsync, so commits overlap
    spool_in_memory: Size = 256 * 1024  # content held in memory while it arrives; larger spills to tmp/
    spool_memory_total: Size = 64 * 1024 * 1024  # per process, across all sessions; past it, spill
    wakeup_delay: Duration = Field(0.02, le=1.0)  # at most one wake-up of the queue manager per this, per worker

    @model_validator(mode="after")
    def _backoff(self) -> QueueConfig:
        if self.min_backoff > self.max_backoff:
            raise ValueError("min_backoff must not exceed max_backoff")
        return self


def _admin_listen(v: Any) -> Endpoint | None:
    if v is None:
        return None
    ep = parse_endpoint(v)
    if ep.unix_path:
        raise ValueError("expected host:port (a TCP address), or null for no admin API")
    return ep


def _allowed_host(v: Any) -> str:
    """An admin.allowed_hosts entry: `*`, a host name (lower case, no trailing dot) or an IP address
    (its canonical text, an IPv6 one without brackets). No port: the Host header's is not compared."""
    if not isinstance(v, str):
        raise ValueError(f"expected a host name, an IP address or *, not {v!r}")
    text = v.strip().lower()
    if text == "*":
        return text
    try:
        return str(ipaddress.ip_address(text.removeprefix("[").removesuffix("]")))
    except ValueError:
        pass
    if ":" in text:
        raise ValueError(f"{v!r}: a host name or an IP address without a port (the port of the Host header is not compared)")
    if text.startswith("."):
        raise ValueError(f"{v!r}: one host name per entry (no .domain patterns), or * for any")
    return check_domain(text)


class AdminConfig(Strict):
    listen: Annotated[Endpoint | None, BeforeValidator(_admin_listen)] = parse_endpoint("127.0.0.1:8025")  # null: no admin API
    token_file: str = Field("admin.token", min_length=1)  # relative to data_dir; "<role> <token> [name]" lines
    audit_log: str = Field("admin-audit.log", min_length=1)  # relative to data_dir; one line per state-changing request
    # Host header names the API and the panel answer besides localhost, a loopback address, admin.listen's
    # address and server.hostname (DNS rebinding: admin/api.py Guard); "*": any.
    allowed_hosts: list[Annotated[str, BeforeValidator(_allowed_host)]] = []


class Config(Strict):
    server: ServerConfig = ServerConfig()
    domains: DomainsConfig = DomainsConfig()
    auth: AuthConfig = AuthConfig()
    inbound: InboundConfig = InboundConfig()
    postscreen: PostscreenConfig = PostscreenConfig()
    outbound: OutboundConfig = OutboundConfig()
    antispam: AntispamConfig = AntispamConfig()
    dkim: DkimConfig = DkimConfig()
    antivirus: AntivirusConfig = AntivirusConfig()
    advanced: AdvancedConfig = AdvancedConfig()
    queue: QueueConfig = QueueConfig()
    admin: AdminConfig = AdminConfig()
    servers: dict[str, dict[str, Any]] = {}

    # Filled in by load(): where the file was, so relative paths resolve against it.
    source: str = ""
    # Filled in by load(): the SHA-256 of the file's text (text_digest), no key: which
    # configuration a process runs (applied.py; the admin API waits for every process's).
    _digest: str = PrivateAttr(default="")

    @property
    def digest(self) -> str:
        return self._digest

    @property
    def data_path(self) -> Path:
        return resolve_path(self.source, self.server.data_dir)

    @property
    def queue_path(self) -> Path:
        return self.data_path / "queue"


def resolve_path(source: str, path: str) -> Path:
    """`path` from the config file, relative to the file's directory unless absolute."""
    p = Path(path)
    if p.is_absolute():
        return p
    base = Path(source).resolve().parent if source else Path.cwd()
    return Path(os.path.normpath(base / p))


# ---------------------------------------------------------------------------------------------
# Loading with line numbers.


MAX_NODES = 100_000  # values in a config file, aliases counted at each use; the shipped one has about 400


def _compose(text: str, filename: str) -> tuple[Any, dict[tuple[Any, ...], int]]:
    """YAML -> (plain data, {key path: line}). Duplicate keys are errors."""
    try:
        root = yaml.compose(text, Loader=yaml.SafeLoader)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        line = mark.line + 1 if mark else 1
        raise ConfigError([f"{filename}:{line}: (yaml): {getattr(exc, 'problem', None) or exc}"]) from None
    except RecursionError:  # nesting deeper than the parser's stack: no config is that deep
        raise ConfigError([f"{filename}:1: (yaml): nested too deeply"]) from None
    lines: dict[tuple[Any, ...], int] = {}
    errors: list[str] = []
    constructor = yaml.SafeLoader("")
    budget = [MAX_NODES]

    def walk(node: yaml.Node, path: tuple[Any, ...]) -> Any:
        budget[0] -= 1
        if budget[0] < 0:  # aliases repeat their node at every use ("billion laughs")
            raise ConfigError([f"{filename}:{node.start_mark.line + 1}: (yaml): more than {MAX_NODES} values (aliases?)"])
        lines.setdefault(path, node.start_mark.line + 1)
        if isinstance(node, yaml.MappingNode):
            out: dict[Any, Any] = {}
            for knode, vnode in node.value:
                key = constructor.construct_object(knode, deep=True)
                if key in out:
                    errors.append(f"{filename}:{knode.start_mark.line + 1}: {_dotted(path + (key,))}: duplicate key")
                lines[path + (key,)] = knode.start_mark.line + 1
                out[key] = walk(vnode, path + (key,))
            return out
        if isinstance(node, yaml.SequenceNode):
            return [walk(v, path + (i,)) for i, v in enumerate(node.value)]
        return constructor.construct_object(node, deep=True)

    try:
        data = walk(root, ()) if root is not None else {}
    except TypeError as exc:  # a key that is a list or a mapping (`? [a]`): unhashable
        raise ConfigError([f"{filename}:1: (yaml): {exc}"]) from None
    except RecursionError:
        raise ConfigError([f"{filename}:1: (yaml): nested too deeply"]) from None
    if errors:
        raise ConfigError(errors)
    return data, lines


def key_line(path: str | os.PathLike[str], key: str) -> int:
    """The line of a dotted key (`auth.users_file`) in a config file that loads; 1 if not there."""
    try:
        _, lines = _compose(Path(path).read_text(encoding="utf-8"), str(path))
    except (OSError, ConfigError):
        return 1
    return _line_of(lines, tuple(key.split(".")))


def _dotted(path: tuple[Any, ...]) -> str:
    out = ""
    for p in path:
        out += f"[{p}]" if isinstance(p, int) else (f".{p}" if out else str(p))
    return out or "(top)"


def _line_of(lines: dict[tuple[Any, ...], int], loc: tuple[Any, ...]) -> int:
    for n in range(len(loc), -1, -1):
        if loc[:n] in lines:
            return lines[loc[:n]]
    return 1


def _format_errors(exc: ValidationError, filename: str, lines: dict, prefix: tuple[Any, ...] = ()) -> list[str]:
    by_loc: dict[tuple[Any, ...], list[str]] = {}
    for err in exc.errors():
        # pydantic puts the union member / validator name into loc; keep only real keys.
        loc = tuple(p for p in err["loc"] if isinstance(p, int) or not str(p).startswith(("function-", "literal[")))
        loc = prefix + tuple(p for p in loc if p not in ("int", "str", "float", "bool", "list[...]"))
        msg = err["msg"].removeprefix("Value error, ")
        if err["type"] == "extra_forbidden":
            msg = "unknown key"
        by_loc.setdefault(loc, []).append(msg)
    # A union (e.g. `auto` or a number) fails once per member: say it once, as alternatives.
    found = [(_line_of(lines, loc), _dotted(loc), "; or: ".join(msgs)) for loc, msgs in by_loc.items()]
    return [f"{filename}:{line}: {key}: {msg}" for line, key, msg in sorted(found)]


def _deep_merge(base: dict[str, Any], over: dict[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for k, v in over.items():
        out[k] = _deep_merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
    return out


def load(path: str | os.PathLike[str], *, text: str | None = None) -> Config:
    """Read and validate a config file; raise ConfigError with every problem found."""
    filename = str(path)
    if text is None:
        try:
            text = Path(path).read_text(encoding="utf-8")
        except OSError as exc:
            raise ConfigError([f"{filename}:0: (file): {exc.strerror or exc}"]) from None
    data, lines = _compose(text, filename)
    if not isinstance(data, dict):
        raise ConfigError([f"{filename}:1: (top): expected a mapping of sections"])
    source = str(Path(path).resolve())
    try:
        cfg = Config.model_validate({**data, "source": source})
    except ValidationError as exc:
        raise ConfigError(_format_errors(exc, filename, lines)) from None
    # Per-node overrides: each is validated merged over the base, errors point into servers.<name>.
    errors: list[str] = _cross_checks(cfg, filename, lines)
    effective = cfg
    for name, override in cfg.servers.items():
        if not isinstance(override, dict):
            errors.append(f"{filename}:{_line_of(lines, ('servers', name))}: servers.{name}: expected a mapping")
            continue
        if "servers" in override:
            errors.append(f"{filename}:{_line_of(lines, ('servers', name))}: servers.{name}.servers: not allowed here")
            continue
        merged = _deep_merge({k: v for k, v in data.items() if k != "servers"}, override)
        try:
            node_cfg = Config.model_validate({**merged, "source": source, "servers": cfg.servers})
        except ValidationError as exc:
            errors.extend(_override_errors(exc, filename, lines, name, override))
            continue
        if check_domain(name) == cfg.server.hostname:
            effective = node_cfg
    if errors:
        raise ConfigError(errors)
    effective._digest = text_digest(text)
    return effective


def text_digest(text: str) -> str:
    """What identifies a configuration file's text (Config.digest)."""
    return hashlib.sha256(text.encode("utf-8", "surrogatepass")).hexdigest()


def _cross_checks(cfg: Config, filename: str, lines: dict) -> list[str]:
    """What one section's validator cannot see: rules across sections."""
    errors = []
    if cfg.auth.backend == "file" and not cfg.auth.users_file:
        for i, lst in enumerate(cfg.server.listeners):
            if lst.auth == "require":
                loc = ("server", "listeners", i, "auth")
                errors.append(f"{filename}:{_line_of(lines, loc)}: {_dotted(loc)}: require needs auth.users_file (or auth.backend: dovecot)")
    return errors


def _override_errors(exc: ValidationError, filename: str, lines: dict, name: str, override: dict) -> list[str]:
    """Errors of a merged per-node config: point at the override's line when the key is in it."""
    out = []
    for line in _format_errors(exc, filename, {}, ()):
        # line is "file:1: key.path: msg"; re-anchor under servers.<name> when the override set it.
        _, _, rest = line.split(":", 2)
        key, _, msg = rest.strip().partition(": ")
        parts = tuple(int(p) if p.isdigit() else p for p in re.split(r"\.|\[|\]", key) if p)
        in_override = parts[:1] and parts[0] in override
        loc = ("servers", name) + parts if in_override else parts
        out.append(f"{filename}:{_line_of(lines, loc)}: {_dotted(loc)}: {msg}")
    return out


# ---------------------------------------------------------------------------------------------
# What a reload changes.


def diff(old: Config, new: Config) -> list[str]:
    """The key paths whose values differ between two configs, in the order of the model:
    ["outbound.helo_name", "server.listeners[0].tls"]. Pure.

    Sections and list items that are sections are compared key by key; a list that grew or
    shrank names each item added or removed ("server.listeners[2]"); any other value (a scalar,
    a list of scalars such as domains.local) is one key. `source`, the file's own path, is no key.
    """
    out: list[str] = []
    _diff(old, new, (), out)
    return out


def _diff(old: Any, new: Any, path: tuple[Any, ...], out: list[str]) -> None:
    if old == new:
        return
    if isinstance(old, BaseModel) and type(old) is type(new):
        for name in type(old).model_fields:
            if path or name != "source":
                _diff(getattr(old, name), getattr(new, name), path + (name,), out)
    elif isinstance(old, dict) and isinstance(new, dict):
        for key in [*old, *(k for k in new if k not in old)]:
            _diff(old.get(key, _MISSING), new.get(key, _MISSING), path + (key,), out)
    elif isinstance(old, list) and isinstance(new, list) and any(isinstance(x, (BaseModel, dict)) for x in old + new):
        for i in range(max(len(old), len(new))):
            _diff(old[i] if i < len(old) else _MISSING, new[i] if i < len(new) else _MISSING, path + (i,), out)
    else:
        out.append(_dotted(path))


_MISSING = object()  # a key or list item on one side only

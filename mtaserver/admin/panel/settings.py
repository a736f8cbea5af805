"""The panel's settings pages: the seed's MTA pages as forms over the YAML file, applied live.

DESCRIPTION
    Six pages mirror the admin-panel document (seed) and SPEC.md 1-4 and 6:

      GET|POST /inbound      Inbound Flow & Security     inbound.*
      GET|POST /postscreen   Postscreen Tuning           postscreen.* (beside each test: its last hour)
      GET|POST /outbound     Outbound Flow               outbound.* and the services table (live probes)
      GET|POST /antispam     Antivirus & Antispam        antispam.*, dkim.*, antivirus.*
      POST /antispam/dkim    a DKIM key made (data_dir/dkim/, 0600) and added to dkim.sign
      GET|POST /advanced     Advanced                    advanced.*
      GET|POST /server       Single Server               servers.<server.hostname>: inherited or overridden

    A page is a table of `Section`s (its cards, laid out in grids where a `Part` says) of `Field`s,
    each bound to one dotted config key and a kind of control. That one table is what
    templates/_settings.html lays out (with the controls of _fields.html) and what reads the
    form back, for every page. The mapping is pure: `page_values` (the config as form values), `form_values` (what the
    user typed, to show it again), `form_patch` (the JSON merge patch of the keys whose value
    the form changed; unchanged keys are not written, so a key the operator left out of the
    file stays out), `server_values` / `server_patch` (the same for a node's overrides) and
    `place_errors` (`key.path: message` lines at their fields).

    A POST that changes nothing writes nothing ("saved: no change"). Saving goes through the
    admin API's own path, `AdminServer.change_config(..., "config.patch",
    ...)`: configfile.prepare_patch validates exactly as the server loads (nothing is written
    when it fails), the file is written back keeping its comments, the reload of SIGHUP applies
    it (no restart), config.diff names what changed, and the audit log gets the same line as a
    PATCH /api/config by the session's token. A DKIM key made from the page is also audited
    (`dkim.keygen`).

    Sessions below the admin role (read, operator) see every page with every control disabled;
    a POST from them is refused (403) before anything is read (session.require_session).

SECURITY
    Every POST carries the session's CSRF token (session.py checks it). Form input is never
    evaluated: it becomes plain strings, numbers and lists in a merge patch, validated by
    config.load. DKIM private keys are written 0600 under data_dir/dkim/ (filters/dkim.py
    write_key) and never shown; only the public TXT record is.

STANDARDS
    RFC 7396 (JSON Merge Patch), RFC 6376 3.6.1 (the DKIM key record).

CONFIG
    Reads and writes inbound.*, postscreen.* (not cache, stress), outbound.* (not relay_auth,
    smtp_port), antispam.*, dkim.*, antivirus.*, advanced.* (not log_target, log_file,
    syslog_socket), servers.<server.hostname>; reads server.data_dir, server.hostname.
"""

from __future__ import annotations

import asyncio
import json
import logging
import math
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml
from fastapi import Depends, HTTPException, Request
from fastapi.responses import RedirectResponse, Response

from ...filters.attachments import COMMON_BLOCKED
from ...values import check_domain, parse_duration, parse_network
from ..tokens import Role
from .pages import router
from .render import render
from .session import Session, client_ip, require_session

log = logging.getLogger("admin")

MB = 1048576  # the panel's megabyte (Carbonio's mbToBytes): 1,048,576 bytes


# ---------------------------------------------------------------------------------------------
# Fields and pages.


@dataclass(frozen=True, slots=True)
class Field:
    """One control bound to one config key.

    kind: bool | text | int | choice | intchoice | duration | lines | chips | addremove |
          tolerance_tag | tolerance_kill | size_mb | dkim
    optional: a text that may be empty, meaning null (the key is removed: its default applies).
    """

    key: str
    label: str
    kind: str
    help: str = ""
    choices: tuple[tuple[str, str], ...] = ()
    optional: bool = False
    placeholder: str = ""

    @property
    def id(self) -> str:
        return "f-" + self.key.replace(".", "-").replace("_", "-")


@dataclass(frozen=True, slots=True)
class Part:
    """Fields of a section shown one under the other (columns 0) or side by side in a grid of 2 or 3
    columns (narrow screens stack them)."""

    fields: tuple[Field, ...]
    columns: int = 0


@dataclass(frozen=True, slots=True)
class Section:
    """One card of a page: its heading (empty: none), its fields in parts, and `anchor`, its HTML id
    after "section-" (empty: its position on the page)."""

    heading: str
    parts: tuple[Part, ...]
    anchor: str = ""

    @property
    def fields(self) -> tuple[Field, ...]:
        return tuple(f for part in self.parts for f in part.fields)


def grid(columns: int, *fields: Field) -> Part:
    return Part(fields, columns)


def section(heading: str, *items: Field | Part, anchor: str = "") -> Section:
    """A Section of fields and grids in page order: fields in a row make one plain part."""
    parts: list[Part] = []
    for item in items:
        if isinstance(item, Part):
            parts.append(item)
        elif parts and not parts[-1].columns:
            parts[-1] = Part((*parts[-1].fields, item))
        else:
            parts.append(Part((item,)))
    return Section(heading, tuple(parts), anchor)


@dataclass(frozen=True, slots=True)
class Page:
    """A settings page: the one description its template lays out and its form is read by."""

    name: str  # URL segment and template name
    title: str
    sections: tuple[Section, ...]

    @property
    def fields(self) -> tuple[Field, ...]:
        return tuple(f for s in self.sections for f in s.fields)

    def field(self, key: str) -> Field:
        for f in self.fields:
            if f.key == key:
                return f
        raise KeyError(key)

    @property
    def keys(self) -> tuple[str, ...]:
        return tuple(f.key for f in self.fields)


ACTIONS = (  # what each does: the Actions card of postscreen.html
    ("ignore", "Ignore (log, count, go on)"),
    ("enforce", "Enforce (550 at every RCPT)"),
    ("drop", "Drop (521, disconnect)"),
)
LOG_LEVELS = (("debug", "debug"), ("info", "info"), ("warning", "warning"), ("error", "error"))
TLS_LEVELS = tuple((str(n), f"{n}: {t}") for n, t in enumerate((
    "no TLS line", "one line per handshake", "also the session line", "as 2 (Postfix: hex dump of the handshake)",
    "as 2 (Postfix: hex dump of the session)",
)))  # fmt: skip
ON_ERROR = (("tempfail", "tempfail: 451 4.7.1, the client retries"), ("accept", "accept unchecked (logged)"))


def _deep(test: str, label: str, what: str) -> tuple[Field, ...]:
    base = f"postscreen.{test}"
    return (
        Field(f"{base}.enable", label, "bool", what),
        Field(f"{base}.action", f"{label} action", "choice", choices=ACTIONS),
        Field(f"{base}.ttl", f"{label} TTL", "duration", "how long a pass is remembered (30d, 12h, ...)"),
    )


INBOUND = Page("inbound", "Inbound Flow & Security", (
    section("Settings",
        Field("inbound.blocked_extensions", "Blocked extensions", "chips",
              "Type an extension (letters and digits only, e.g. exe) and press space; click a chip to remove it. "
              "Matched case-insensitively on the last extension of every attachment's file name, also inside "
              "forwarded messages and zip, tar and gz archives.", placeholder="exe"),
        Field("inbound.blocked_extensions_action", "When an attachment is blocked", "choice",
              "reject tells the sending server at once (no bounce); bounce is only for trusted clients, an outsider's "
              "message is refused as with reject (no backscatter)",
              choices=(("reject", "Reject: 550 5.7.1 Attachment type not allowed, at the end of DATA"),
                       ("bounce", "Bounce: accept, not delivered, a notice (headers only) to the sender"),
                       ("discard", "Discard: accept, not delivered, nobody told but the notices below"))),
        Field("inbound.notify_admin", "Notify admins about blocked extensions", "bool",
              "a notice to advanced.postmaster for every blocked attachment (Carbonio's switch does nothing; this one does)"),
        Field("inbound.notify_recipient", "Notify recipients about blocked extensions", "bool",
              "a notice to the recipients in our own domains (never to remote ones: no backscatter)")),
    section("Rejection",
        Field("inbound.reject_unlisted_sender", "Reject unlisted sender", "bool",
              "MAIL FROM in a local domain that is not a mailbox or alias: 550 5.1.0 User unknown (not \"no sender\")"),
        Field("inbound.reject_unlisted_recipient", "Reject unlisted recipient", "bool",
              "RCPT TO in a local domain that is not a mailbox or alias: 550 5.1.1 User unknown (not \"no recipient\")"),
        Field("inbound.reject_sender_login_mismatch", "Reject sender login mismatch", "bool",
              "a login may send only from the addresses it owns (553 5.7.1 not owned by user); an outsider may not use "
              "an owned address (553 5.7.1 not logged in). mynetworks is exempt"),
        Field("inbound.bare_newline", "Bare newline in SMTP (smuggling defence)", "choice",
              "only <CRLF>.<CRLF> ever ends DATA",
              choices=(("reject", "Reject: 550 5.5.2 Error: bare <LF> received, then close"),
                       ("normalize", "Normalize: treat it as <CRLF> (Postfix 3.9 default)"),
                       ("note", "Note: as normalize, and log it")))),
    section("Protocol checks (at RCPT, for clients neither in mynetworks nor authenticated)",
        Field("inbound.protocol_checks.reject_unknown_client_hostname", "Client's IP address", "bool",
              "no PTR, or its name does not resolve back to the client: 450 4.7.25 cannot find your hostname"),
        Field("inbound.protocol_checks.reject_unknown_reverse_client_hostname", "Check client hostname", "bool",
              "no PTR for the client: 450 4.7.1 cannot find your reverse hostname"),
        Field("inbound.protocol_checks.reject_invalid_helo_hostname", "Hostname in greeting violates RFC", "bool",
              "HELO neither a host name nor an address literal: 501 5.5.2 Invalid name"),
        Field("inbound.protocol_checks.reject_non_fqdn_helo_hostname", "Client should have a qualified hostname", "bool",
              "HELO without a dot: 504 5.5.2 need fully-qualified hostname"),
        Field("inbound.protocol_checks.reject_unknown_helo_hostname", "Client should have a resolving hostname", "bool",
              "HELO name with no A, AAAA or MX: 450 4.7.1 Host not found"),
        Field("inbound.protocol_checks.reject_non_fqdn_sender", "Sender address must be fully qualified", "bool",
              "MAIL FROM domain without a dot: 504 5.5.2 need fully-qualified address"),
        Field("inbound.protocol_checks.reject_unknown_sender_domain", "Sender's domain", "bool",
              "a sender domain with no MX, A or AAAA: 450 4.1.8 Domain not found (null MX: 550 5.7.27)"),
        Field("inbound.protocol_checks.unknown_reject_code", "Reply code of the 'unknown' checks", "intchoice",
              "450 (Postfix's default: the client retries) or 550 once you trust the checks; a DNS failure is always 450",
              choices=(("450", "450 (temporary)"), ("550", "550 (permanent)")))),
))  # fmt: skip

POSTSCREEN = Page("postscreen", "Postscreen Tuning", (
    section("Blacklisting",
        Field("postscreen.access_list", "Access list", "lines",
              "One entry per line, first match wins: permit_mynetworks, \"CIDR permit\", \"CIDR reject\", \"CIDR dunno\" "
              "(\"!CIDR\" = outside it). permit: no test at all; reject: the blacklist action below. Not a path, and "
              "permit_mynetworks restricts nobody", placeholder="permit_mynetworks\n192.0.2.0/24 reject"),
        Field("postscreen.blacklist_action", "Blacklist action", "choice",
              "for clients an access list entry rejects (521 / 550 5.3.2)", choices=ACTIONS),
        anchor="blacklisting"),
    section("Pregreet test",
        grid(2,
            Field("postscreen.greet.banner", "Pregreet teaser", "text",
                  "sent as \"220-...\" before the wait; a client talking before the 220 fails the pregreet test. "
                  "Empty turns the test off"),
            Field("postscreen.greet.wait", "Greet wait", "duration", "DNSBL queries run meanwhile"),
            Field("postscreen.greet.action", "Pregreet action", "choice", choices=ACTIONS),
            Field("postscreen.greet.ttl", "Pregreet TTL", "duration", "how long a pass is remembered")),
        anchor="greet"),
    section("DNS blacklisting",
        Field("postscreen.dnsbl.sites", "DNS blacklist sites", "lines",
              "DNS zones, not URLs, one per line: zone[=filter][*weight], e.g. zen.spamhaus.org=127.0.0.[2..11]*3; "
              "a negative weight is an allowlist (list.dnswl.org=127.0.[0..255].[1..3]*-2). Queried live for each new client",
              placeholder="zen.spamhaus.org=127.0.0.[2..11]*3"),
        grid(2,
            Field("postscreen.dnsbl.action", "DNS blacklist action", "choice", choices=ACTIONS),
            Field("postscreen.dnsbl.threshold", "DNS blacklist threshold", "int",
                  "the action fires when the sum of the weights is at least this"),
            Field("postscreen.dnsbl.whitelist_threshold", "DNS blacklist whitelist threshold", "int",
                  "must be negative to do anything: a score at or below it (allowlist weights) skips every other test "
                  "for the DNSBL TTL. Not being listed is not enough; 0 = off"),
            Field("postscreen.dnsbl.timeout", "DNS blacklist timeout", "duration",
                  "per query, capped by the greet wait; DNS trouble fails open"),
            Field("postscreen.dnsbl.min_ttl", "DNS blacklist min TTL", "duration", "the answers' TTL is clamped to min..max"),
            Field("postscreen.dnsbl.max_ttl", "DNS blacklist max TTL", "duration"),
            Field("postscreen.dnsbl.ttl", "DNS blacklist TTL", "duration", "used when the answers carry no TTL")),
        anchor="dnsbl"),
    *(section(label, grid(3, *_deep(test, label, what)), anchor=test) for test, label, what in (
        ("bare_newline", "Bare newline",
         "a command line ending in LF without CR (the smuggling defence for DATA is inbound.bare_newline)"),
        ("non_smtp_command", "NonSMTP command", "CONNECT, GET, POST ... or a header (\"Subject:\") as a command"),
        ("pipelining", "Pipelining",
         "a command sent before the previous reply; PIPELINING is not offered while the test is due"),
    )),
    section("",
        Field("postscreen.deep_tests_require_reconnect", "Deep tests require a reconnect", "bool",
              "Postfix's behaviour: 450 4.3.2 after passing, the client must come back. Off: the mail is accepted in "
              "the same session"),
        anchor="reconnect"),
))  # fmt: skip

OUTBOUND = Page("outbound", "Outbound Flow", (
    section("General",
        Field("outbound.add_client_ip_header", "Add client IP to the header", "bool",
              "X-Originating-IP: [ip] on mail from authenticated and mynetworks clients"),
        Field("outbound.add_username_header", "Add username to the header", "bool",
              "X-Authenticated-User: <login> on mail from authenticated clients"),
        Field("outbound.require_auth", "Enable authentication", "bool",
              "on: AUTH is offered (auth: offer listeners) and authenticated clients may relay. Off: only mynetworks may "
              "relay. Never an open relay: everyone else reaches only our domains (554 5.7.1 Relay access denied)"),
        Field("outbound.mynetworks", "My networks", "lines",
              "trusted clients, one per line: 192.0.2.0/24, [2001:db8::]/32, \"!cidr\" excludes; first match wins. They may "
              "relay and skip postscreen, the protocol checks and the spam check (not the virus and attachment checks)",
              placeholder="127.0.0.0/8")),
    section("Relay",
        Field("outbound.relay_host", "Relay host", "text",
              "all non-local mail goes here: [host]:port (that host) or host (its MX records). Empty: deliver by the "
              "recipient domain's MX. Affects every domain", optional=True, placeholder="[relay.example.com]:25"),
        Field("outbound.fallback_relay_host", "Fallback relay host", "text",
              "gets, in the same attempt, what the relay host (or the MX) deferred or could not be reached for; never "
              "what it refused with 5xx", optional=True, placeholder="[backup.example.com]:25"),
        Field("outbound.tls", "TLS to other servers", "choice", "neither level verifies the server certificate (as Postfix)",
              choices=(("none", "none"), ("may", "may: STARTTLS when offered"),
                       ("encrypt", "encrypt: STARTTLS required, else defer"))),
        Field("outbound.helo_name", "SMTP HELO name", "text", "empty: server.hostname", optional=True)),
))  # fmt: skip

TOLERANCE_HELP = "low | medium | high, or Custom: a percentage of 20 points (40%) or a SpamAssassin score (6.6)"
ANTIVIRUS = Page("antivirus", "Antivirus & Antispam", (
    section("Antispam",
        Field("antispam.enabled", "Spam check", "bool", "spamd checks every message at the end of DATA"),
        Field("antispam.subject_tag", "Add this prefix to the spam mail subject", "text",
              "at most 64 characters; empty = no prefix", placeholder="[SPAM]"),
        Field("antispam.delivery_tolerance", "Tolerance for spam delivery (tag level)", "tolerance_tag",
              "at this score mail is delivered marked as spam (X-Spam-Flag: YES and the prefix). " + TOLERANCE_HELP),
        Field("antispam.blocking_tolerance", "Tolerance for spam blocking (kill level)", "tolerance_kill",
              "at this score the blocked spam action applies. " + TOLERANCE_HELP),
        Field("antispam.blocked_spam_action", "Blocked spam", "choice",
              choices=(("discard", "Discard: accepted, never delivered"), ("deliver", "Deliver it anyway (tagged)"),
                       ("reject", "Reject: 550 5.7.1 at the end of DATA"))),
        Field("antispam.check_outbound", "Also check outbound messages", "bool",
              "also scan mail from authenticated and mynetworks clients (Carbonio's switch is bound backwards; this one is not)"),
        Field("antispam.on_error", "When spamd is down", "choice", choices=ON_ERROR),
        anchor="antispam"),
    section("DKIM",
        Field("dkim.verify", "Verify DKIM validity", "bool",
              "check signatures of received mail and add Authentication-Results"),
        Field("dkim.unsigned_from_signing_domain", "Mail from a signing domain without its signature", "choice",
              "applies when the From domain is one of the signing domains below",
              choices=(("reject", "Reject: 550 5.7.1"), ("tag", "Tag: X-DKIM-Policy header"), ("accept", "Accept (logged)"))),
        Field("dkim.sign", "Signing keys", "dkim", "mail from authenticated and mynetworks clients whose From domain is one "
              "of these (or a subdomain) is signed"),
        anchor="dkim"),
    section("Antivirus",
        Field("antivirus.enabled", "Virus check", "bool", "clamd scans every message at the end of DATA"),
        Field("antivirus.action", "Virus found", "choice",
              choices=(("reject", "Reject: 554 5.7.0 at the end of DATA"), ("discard", "Discard: 250, dropped"))),
        Field("antivirus.notify_admin", "Warn admins when a virus is found", "bool", "a notice to advanced.postmaster"),
        Field("antivirus.notify_recipient", "Warn recipients when a virus is found", "bool", "local recipients only"),
        Field("antivirus.block_encrypted_archives", "Block encrypted archives", "bool",
              "an encrypted zip member counts as a virus (Heuristics.Encrypted.Zip)"),
        Field("antivirus.on_error", "When clamd is down", "choice", choices=ON_ERROR),
        anchor="antivirus"),
    section("Antivirus definitions",
        grid(2,
            Field("antivirus.definitions.mirrors", "Definition mirrors", "addremove",
                  "host names (DatabaseMirror) or http(s)://host[:port] of private mirrors, not both kinds; used by freshclam",
                  placeholder="database.clamav.net"),
            Field("antivirus.definitions.custom_signatures", "Additional virus definitions", "addremove",
                  "ClamAV signature files (.ndb .hdb .ldb ...): http(s):// URLs or local files; each is checked with sigtool "
                  "and clamscan before clamd loads it", placeholder="https://example.com/sigs/local.ndb")),
        Field("antivirus.definitions.update_frequency", "Definition update frequency", "duration",
              "any duration from 1s to weeks (30m, 2h, 1d, 1w): our own scheduler, not freshclam's checks per day"),
        Field("antivirus.definitions.freshclam", "Also update the official databases (freshclam)", "bool",
              "off when Debian's clamav-freshclam service already does it"),
        anchor="definitions"),
))  # fmt: skip

ADVANCED = Page("advanced", "Advanced", (
    section("Logging",
        Field("advanced.log_level", "Log level", "choice", choices=LOG_LEVELS),
        Field("advanced.log_client_port", "Log the remote SMTP client port", "bool", "name[ip]:port instead of name[ip]"),
        Field("advanced.tls_log_level", "Logging of TLS activity (server and client)", "intchoice",
              "received and sent SMTP sessions", choices=TLS_LEVELS),
        Field("advanced.lmtp_tls_log_level", "LMTP client logging of TLS activity", "intchoice",
              "accepted for the panel, no effect: our LMTP client does not use TLS", choices=TLS_LEVELS)),
    section("Tuning",
        Field("advanced.threads.antivirus", "Antivirus threads", "int", "clamd scans at once, per worker process"),
        Field("advanced.threads.lmtp", "LMTP threads", "int", "LMTP deliveries at once"),
        Field("advanced.threads.milter", "Content filter threads", "int",
              "content-filter chains at once (Carbonio: MILTER threads); more wait their turn"),
        Field("advanced.filter_budget", "Content filter time budget", "duration",
              "per message, every filter together; a filter without a verdict by then gives its on_error"),
        Field("advanced.postmaster", "Postmaster", "text", "receives the notices about blocked attachments and viruses")),
    section("Mail message size",
        Field("advanced.max_message_size", "Maximum message size", "size_mb",
              "advertised in EHLO SIZE; larger mail gets 552 5.3.4. 1 MB = 1,048,576 bytes")),
))  # fmt: skip

# Single Server (SPEC 6): what Carbonio lets a server override, as our keys.
SERVER_KEYS = (
    "outbound.require_auth", "outbound.mynetworks", "outbound.relay_host", "outbound.fallback_relay_host",
    "antispam.check_outbound", "dkim.verify", "antivirus.enabled", "antispam.enabled",
    "advanced.log_level", "advanced.tls_log_level", "advanced.lmtp_tls_log_level",
)  # fmt: skip
_ALL = {f.key: f for p in (INBOUND, POSTSCREEN, OUTBOUND, ANTIVIRUS, ADVANCED) for f in p.fields}
SERVER = Page("server", "Single Server", tuple(
    section(heading, *(_ALL[k] for k in keys)) for heading, keys in (
        ("Authentication", SERVER_KEYS[:4]),
        ("Antispam & antivirus", SERVER_KEYS[4:8]),
        ("Logging", SERVER_KEYS[8:]),
    )
))  # fmt: skip

PAGES: dict[str, Page] = {p.name: p for p in (INBOUND, POSTSCREEN, OUTBOUND, ANTIVIRUS, ADVANCED, SERVER)}

TOLERANCES = {  # spamassassin.TOLERANCE_TAG / TOLERANCE_KILL: percent of 20 points
    "tolerance_tag": {"low": 20.0, "medium": 33.0, "high": 50.0},
    "tolerance_kill": {"low": 66.0, "medium": 75.0, "high": 90.0},
}


# ---------------------------------------------------------------------------------------------
# Pure helpers.

Form = Mapping[str, list[str]]  # a submitted form: every value of each name
_MISSING = object()


def get_path(data: Any, key: str, missing: Any = None) -> Any:
    """The value at a dotted key of plain data; `missing` when a part is missing. Pure."""
    node = data
    for part in key.split("."):
        if not isinstance(node, dict) or part not in node:
            return missing
        node = node[part]
    return node


def has_path(data: Any, key: str) -> bool:
    return get_path(data, key, _MISSING) is not _MISSING


def set_path(data: dict[str, Any], key: str, value: Any) -> None:
    parts = key.split(".")
    node = data
    for part in parts[:-1]:
        node = node.setdefault(part, {})
    node[parts[-1]] = value


def human_duration(seconds: Any) -> str:
    """Seconds as the largest exact unit: 2592000 -> "30d", 90 -> "90s", 0.02 -> "20ms". Pure."""
    if not isinstance(seconds, (int, float)) or isinstance(seconds, bool):
        return "" if seconds is None else str(seconds)
    if seconds and seconds < 1:
        return f"{seconds * 1000:g}ms"
    for unit, size in (("w", 604800), ("d", 86400), ("h", 3600), ("m", 60)):
        if seconds >= size and seconds % size == 0:
            return f"{int(seconds // size)}{unit}"
    return f"{seconds:g}s"


def tolerance_info(kind: str, value: Any) -> dict[str, Any]:
    """A tolerance as level, percent and score (SPEC 4.1: 100 % = 20 points). Pure.

    {"level": "medium" | "custom", "custom": "40%" | "6.6" | "", "percent": 33.0, "score": 6.6}
    (percent and score None when the value does not parse)."""
    table = TOLERANCES[kind]
    if isinstance(value, str) and value in table:
        pct = table[value]
        return {"level": value, "custom": "", "percent": pct, "score": round(pct * 20 / 100, 1)}
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return {"level": "custom", "custom": f"{value:g}", "percent": round(value * 5, 1), "score": float(value)}
    text = str(value or "").strip()
    try:
        if text.endswith("%"):
            pct = float(text[:-1])
            return {"level": "custom", "custom": text, "percent": pct, "score": round(pct * 20 / 100, 1)}
        score = float(text)
        return {"level": "custom", "custom": text, "percent": round(score * 5, 1), "score": score}
    except ValueError:
        return {"level": "custom", "custom": text, "percent": None, "score": None}


def size_info(value: Any) -> dict[str, Any]:
    """max_message_size as the seed's control: {"mode": "nolimit" | "custom", "mb": "9.77", "bytes": n}. Pure."""
    if not isinstance(value, int) or isinstance(value, bool) or value == 0:
        return {"mode": "nolimit" if value in (0, None) else "custom", "mb": "" if value in (0, None) else str(value),
                "bytes": value}  # fmt: skip
    return {"mode": "custom", "mb": f"{value / MB:.2f}".rstrip("0").rstrip("."), "bytes": value}


def _first(form: Form, name: str) -> str:
    values = form.get(name) or []
    return values[0] if values else ""


def _is_on(form: Form, name: str) -> bool:
    return _first(form, name).lower() in ("on", "true", "1", "yes")


def _lines(text: str) -> list[str]:
    return [ln.strip() for ln in text.splitlines() if ln.strip()]


def _number(text: str) -> int | float | str:
    t = text.strip()
    if re.fullmatch(r"[+-]?\d+", t):
        return int(t)
    try:
        return float(t) if re.fullmatch(r"[+-]?\d*\.\d+", t) else t
    except ValueError:
        return t


def field_value(f: Field, cfg: Any) -> Any:
    """The form value of a field from plain config data (api.config_json). Pure."""
    v = get_path(cfg, f.key)
    match f.kind:
        case "bool":
            return bool(v)
        case "duration":
            return human_duration(v)
        case "lines":
            return "\n".join(str(x) for x in v or [])
        case "chips" | "addremove":
            return [str(x) for x in v or []]
        case "tolerance_tag" | "tolerance_kill":
            return tolerance_info(f.kind, v)
        case "size_mb":
            return size_info(v)
        case "dkim":
            return [{"domain": e.get("domain", ""), "selector": e.get("selector", ""), "key": e.get("key", "")}
                    for e in v or [] if isinstance(e, dict)]  # fmt: skip
        case _:  # text, int, choice, intchoice
            return "" if v is None else str(v)


def page_values(page: Page, cfg: Any) -> dict[str, Any]:
    """Every field's form value from plain config data. Pure."""
    return {f.key: field_value(f, cfg) for f in page.fields}


def submitted(f: Field, form: Form) -> Any:
    """A field's value as the config takes it (what goes into the merge patch). Pure."""
    name = f.key
    match f.kind:
        case "bool":
            return _is_on(form, name)
        case "int" | "intchoice":
            return _number(_first(form, name))
        case "duration":
            t = _first(form, name).strip()
            return int(t) if t.isdigit() else t
        case "lines":
            return _lines(_first(form, name))
        case "chips" | "addremove":
            return [v.strip() for v in form.get(name, []) if v.strip()]
        case "tolerance_tag" | "tolerance_kill":
            level = _first(form, name)
            if level in TOLERANCES[f.kind]:
                return level
            custom = _first(form, name + ".custom").strip()
            return custom if custom.endswith("%") else _number(custom)
        case "size_mb":
            if _first(form, name) == "nolimit":
                return 0
            mb = _first(form, name + ".mb").strip()
            try:
                n = float(mb)
            except ValueError:
                return mb  # the validator names the problem
            return round(n * MB) if math.isfinite(n) and n > 0 else mb
        case "dkim":
            domains, selectors, keys = (form.get(f"{name}.{p}", []) for p in ("domain", "selector", "key"))
            removed = set(form.get(f"{name}.remove", []))
            return [{"domain": d, "selector": s, "key": k} for i, (d, s, k) in enumerate(zip(domains, selectors, keys))
                    if str(i) not in removed]  # fmt: skip
        case "text":
            t = _first(form, name).strip()
            return None if f.optional and not t else t
        case _:
            return _first(form, name)


def form_values(page: Page, form: Form) -> dict[str, Any]:
    """The form as the user typed it, as form values (shown again after an error). Pure."""
    out: dict[str, Any] = {}
    for f in page.fields:
        v = submitted(f, form)
        match f.kind:
            case "duration" | "int" | "intchoice" | "lines" | "text":
                out[f.key] = _first(form, f.key)
            case "tolerance_tag" | "tolerance_kill":
                info = tolerance_info(f.kind, v)
                out[f.key] = info if info["level"] != "custom" else {**info, "custom": _first(form, f.key + ".custom")}
            case "size_mb":
                out[f.key] = {"mode": "nolimit" if v == 0 else "custom", "mb": _first(form, f.key + ".mb"), "bytes": v}
            case _:
                out[f.key] = v
    return out


def same(f: Field, new: Any, current: Any) -> bool:
    """Whether a submitted value means what the config has now (then it is not written). Pure."""
    try:
        match f.kind:
            case "duration":
                return current is not None and parse_duration(new) == float(current)
            case "lines" | "chips" | "addremove":
                if f.key.endswith("mynetworks"):
                    return [str(parse_network(x)) for x in new] == [str(x) for x in current or []]
                if f.key.endswith("blocked_extensions"):
                    return list(dict.fromkeys(x.lower() for x in new)) == list(current or [])
                return list(new) == list(current or [])
            case "size_mb":
                if new == current:
                    return True
                shown = size_info(current)
                return isinstance(new, int) and new > 0 and shown["mode"] == "custom" and round(new / MB, 2) == round(
                    current / MB, 2)  # the user left the rounded MB figure as it was shown
            case "tolerance_tag" | "tolerance_kill":
                if isinstance(new, (int, float)) and isinstance(current, (int, float)):
                    return float(new) == float(current)
                return new == current
            case "dkim":
                return [dict(e) for e in new] == [
                    {"domain": e.get("domain"), "selector": e.get("selector"), "key": e.get("key")} for e in current or []]
            case "text":
                return (new or None) == (current or None) if f.optional else new == ("" if current is None else current)
            case _:
                return new == current
    except (ValueError, TypeError):
        return False  # it does not parse: write it, so the validator names the problem


def form_patch(page: Page, form: Form, cfg: Any) -> dict[str, Any]:
    """The merge patch of the fields whose submitted value differs from `cfg` (plain config data). Pure."""
    patch: dict[str, Any] = {}
    for f in page.fields:
        new = submitted(f, form)
        if not same(f, new, get_path(cfg, f.key)):
            set_path(patch, f.key, new)
    return patch


def changed_keys(patch: Any, prefix: str = "") -> list[str]:
    """The dotted keys a merge patch sets. Pure."""
    if not isinstance(patch, dict) or not patch:
        return [prefix] if prefix else []
    out: list[str] = []
    for k, v in patch.items():
        out += changed_keys(v, f"{prefix}.{k}" if prefix else str(k))
    return out


# -- Single Server: servers.<hostname> ------------------------------------------------------------


def node_key(servers: Any, hostname: str) -> str:
    """The key of `servers:` that selects this node (as config.load matches it), else `hostname`. Pure."""
    if isinstance(servers, dict):
        for name in servers:
            try:
                if check_domain(str(name)) == hostname:
                    return str(name)
            except ValueError:
                continue
    return hostname


def server_values(page: Page, base: Any, override: Any) -> tuple[dict[str, Any], dict[str, bool]]:
    """(form values, overridden per key): the override's value where set, else the inherited one. Pure."""
    values, overridden = {}, {}
    for f in page.fields:
        over = has_path(override, f.key)
        overridden[f.key] = over
        values[f.key] = field_value(f, override if over else base)
    return values, overridden


def _prune(node: Any) -> Any:
    if not isinstance(node, dict):
        return node
    out = {k: _prune(v) for k, v in node.items()}
    return {k: v for k, v in out.items() if not (isinstance(v, dict) and not v)}


def server_patch(page: Page, form: Form, base: Any, override: Any, name: str) -> dict[str, Any]:
    """The merge patch of `servers.<name>`: an overridden field sets its value (also when equal to the
    inherited one: the operator pinned it), an inherited one removes the key; sections left
    empty are removed, and the node's entry when nothing is left. {} when nothing changes. Pure."""
    override = override if isinstance(override, dict) else {}
    new: dict[str, Any] = json.loads(json.dumps(override))  # a deep copy of plain data
    for f in page.fields:
        if _is_on(form, "override." + f.key):
            value = submitted(f, form)
            if has_path(override, f.key) and same(f, value, get_path(override, f.key)):
                continue
            set_path(new, f.key, value)
        elif has_path(new, f.key):
            parent = get_path(new, f.key.rsplit(".", 1)[0])
            parent.pop(f.key.rsplit(".", 1)[1], None)
    new = _prune(new)
    if new == _prune(override):
        return {}
    if not new:
        return {"servers": {name: None}}
    patch: dict[str, Any] = {}
    _diff_patch(override, new, (), patch)
    return {"servers": {name: patch}}


def _diff_patch(old: Any, new: Any, path: tuple[str, ...], out: dict[str, Any]) -> None:
    for k in old:
        if k not in new:
            set_path(out, ".".join(path + (k,)), None)
    for k, v in new.items():
        if isinstance(v, dict) and isinstance(old.get(k), dict):
            _diff_patch(old[k], v, path + (k,), out)
        elif old.get(k, _MISSING) != v:
            set_path(out, ".".join(path + (k,)), v)


# -- errors at their fields ------------------------------------------------------------------------


def place_errors(page: Page, errors: list[str], prefix: str = "") -> tuple[dict[str, list[str]], list[str]]:
    """`key.path: message` lines -> ({field key: messages}, the lines no field of the page owns). A
    path under a field (`outbound.mynetworks[2]`, `dkim.sign[0].selector`) belongs to it; `prefix`
    (`servers.<name>.`) is taken off first. Pure."""
    by_key: dict[str, list[str]] = {}
    other: list[str] = []
    keys = sorted(page.keys, key=len, reverse=True)
    for line in errors:
        path, sep, message = line.partition(": ")
        if not sep:
            other.append(line)
            continue
        if prefix and path.startswith(prefix):
            path = path[len(prefix):]
        for k in keys:
            if path == k or path.startswith((k + ".", k + "[")):
                by_key.setdefault(k, []).append(message if path == k else f"{_where(page.field(k), path[len(k):])}: {message}")
                break
            if k.startswith(path + ".") and path.count(".") >= 1:  # a section-level error (greet: cert and key ...)
                by_key.setdefault(k, []).append(message)
                break
        else:
            other.append(line)
    return by_key, other


def _where(f: Field, rest: str) -> str:
    """`[2].selector` under a field, as the form shows it: "line 3" of a text area, "entry 3" of a list."""
    m = re.match(r"\[(\d+)\](.*)", rest)
    if not m:
        return rest.lstrip(".")
    n = int(m.group(1)) + 1
    return f"{'line' if f.kind == 'lines' else 'entry'} {n}{' ' + m.group(2).lstrip('.') if m.group(2) else ''}"


def _common() -> list[str]:
    return list(COMMON_BLOCKED)


def base_document(text: str) -> dict[str, Any]:
    """The file's document without `servers:` (the global values the pages edit). Pure."""
    data = yaml.safe_load(text) or {}
    return {k: v for k, v in data.items() if k != "servers"} if isinstance(data, dict) else {}



# ---------------------------------------------------------------------------------------------
# The I/O shell: routes.


PATHS = {"inbound": "/inbound", "postscreen": "/postscreen", "outbound": "/outbound", "antivirus": "/antispam",
         "advanced": "/advanced", "server": "/server"}  # render.NAV's paths  # fmt: skip
TEMPLATES = {name: f"{name}.html" for name in PATHS}
# postscreen metric test names (postscreen/checks.py Check, screen.py) per page row
PS_TESTS = {"blacklist": "denylist", "access": "access", "greet": "pregreet", "dnsbl": "dnsbl",
            "bare_newline": "bare_newline", "non_smtp_command": "non_smtp", "pipelining": "pipelining"}  # fmt: skip


@dataclass
class Result:
    """What a save did: the keys changed, or the errors (`key.path: message`)."""

    status: int = 200
    changed: list[str] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)
    not_applied_by: list[int] = field(default_factory=list)  # processes that did not take it in time (pids)


def _admin(request: Request) -> Any:
    return request.app.state.panel.admin


def _read_file(admin: Any) -> tuple[str, str]:
    path = str(admin.worker.path)
    return path, Path(path).read_text(encoding="utf-8")


def _documents(admin: Any) -> tuple[Any, Any, str]:
    """(the global config as plain data, this node's override as written, the override's key)."""
    from ... import config as config_mod
    from ..api import config_json

    cfg = admin.worker.config
    try:
        path, text = _read_file(admin)
        data = yaml.safe_load(text) or {}
        base = config_json(config_mod.load(path, text=yaml.safe_dump(base_document(text))))
    except (OSError, yaml.YAMLError, config_mod.ConfigError) as exc:  # a file broken by hand: show what runs
        log.warning("panel: cannot read the configuration file for the settings pages: %s", exc)
        data, base = {}, config_json(cfg)
    servers = data.get("servers") if isinstance(data, dict) else None
    name = node_key(servers, cfg.server.hostname)
    override = servers.get(name) if isinstance(servers, dict) else None
    return base, override if isinstance(override, dict) else {}, name


async def apply(request: Request, session: Session, patch: dict[str, Any]) -> Result:
    """The merge patch through the admin API's PATCH /api/config path (validate, write, reload, audit)."""
    from ..api import Caller

    admin = _admin(request)
    caller = Caller(name=session.name, role=session.role_name, ip=client_ip(request))
    try:
        resp = await admin.change_config(caller, "config.patch", json.dumps(patch).encode(), yaml_body=False)
    except HTTPException as exc:
        return Result(status=exc.status_code, errors=[f"(file): {exc.detail}"])
    body = json.loads(bytes(resp.body))
    if resp.status_code == 200:
        return Result(changed=list(body.get("changed") or []), not_applied_by=list(body.get("not_applied_by") or []))
    return Result(status=resp.status_code, errors=list(body.get("errors") or [str(body.get("detail", "not saved"))]))


def _saved_text(result: Result) -> str:
    text = f"saved: changed {', '.join(result.changed)}" if result.changed else "saved: no change"
    if result.not_applied_by:
        text += f" (not yet applied by process {', '.join(map(str, result.not_applied_by))}: see the server's log)"
    return text


async def _form(request: Request) -> dict[str, list[str]]:
    form = await request.form()
    return {k: [v for v in form.getlist(k) if isinstance(v, str)] for k in form}


async def _context(request: Request, page: Page, base: Any, override: Any, node: str) -> dict[str, Any]:
    """What each page shows besides its fields."""
    admin = _admin(request)
    cfg = admin.worker.config
    overrides = [k for k in page.keys if has_path(override, k)] if page.name != "server" else []
    ctx: dict[str, Any] = {"page": page, "path": PATHS[page.name], "node_key": node, "levels": TOLERANCES, "overrides": overrides}
    if page.name == "inbound":
        ctx["common"] = _common()
    elif page.name == "postscreen":
        ctx["stats"] = await _postscreen_last_hour(request.app.state.panel)
    elif page.name == "outbound":
        ctx["services"] = await admin.services()
    elif page.name == "antivirus":
        from ...filters.definitions import read_status

        ctx["definitions"] = read_status(cfg.data_path)
        ctx["dkim_records"] = await asyncio.to_thread(dkim_records, base.get("dkim", {}).get("sign") or [], cfg.data_path)
        ctx["new_key"] = {"domain": "", "selector": "", "type": "rsa"}
        ctx["new_key_errors"] = []
    elif page.name == "server":
        ctx["inherited"] = page_values(page, base)
    return ctx


async def _postscreen_last_hour(panel: Any) -> dict[str, dict[str, int]]:
    """The last hour's samples plus what happened since the last one (the metrics read now)."""
    from .history import read_metrics

    totals = dict(panel.history.totals("hour", "postscreen:"))
    try:
        now = await asyncio.to_thread(read_metrics, panel.admin.worker.store.root)
    except Exception as exc:  # noqa: BLE001 - a metrics file being rewritten: the samples alone
        log.debug("panel: metrics not read for the postscreen page: %s", exc)
        now = None
    if now is not None:
        for name, value in panel.history.peek(panel.clock(), now).items():
            if name.startswith("postscreen:"):
                totals[name] = totals.get(name, 0.0) + value
    return postscreen_stats(totals)


def postscreen_stats(totals: Mapping[str, float]) -> dict[str, dict[str, int]]:
    """{page test: {result: count}} from History totals ("postscreen:<test>:<result>"). Pure."""
    out: dict[str, dict[str, int]] = {}
    for row, test in PS_TESTS.items():
        prefix = f"postscreen:{test}:"
        counts = {n[len(prefix):]: int(v) for n, v in totals.items() if n.startswith(prefix) and v}
        out[row] = dict(sorted(counts.items()))
    return out


def dkim_records(entries: list[dict[str, Any]], data_dir: Path) -> list[dict[str, str]]:
    """For each dkim.sign entry: its key file and the TXT record to publish, or why there is none."""
    from ...filters.dkim import parse_key, txt_record

    out = []
    for e in entries:
        path = Path(data_dir) / str(e.get("key", ""))
        try:
            record, error = txt_record(e["selector"], e["domain"], parse_key(path.read_bytes())), ""
        except OSError as exc:
            record, error = "", f"{path}: {exc.strerror or exc}"
        except (ValueError, KeyError) as exc:
            record, error = "", f"{path}: {exc}"
        out.append({"domain": str(e.get("domain", "")), "selector": str(e.get("selector", "")), "key": str(e.get("key", "")),
                    "record": record, "error": error})  # fmt: skip
    return out


async def _show(request: Request, session: Session, page: Page, *, values: dict[str, Any] | None = None,
                overridden: dict[str, bool] | None = None, errors: list[str] | None = None, status: int = 200,
                extra: dict[str, Any] | None = None) -> Response:  # fmt: skip
    base, override, node = _documents(_admin(request))
    ctx = await _context(request, page, base, override, node)
    if page.name == "server":
        shown, over = server_values(page, base, override)
        values = values if values is not None else shown
        overridden = overridden if overridden is not None else over
    elif values is None:
        values = page_values(page, base)
    by_key, other = place_errors(page, errors or [], prefix=f"servers.{node}.")
    return render(request, TEMPLATES[page.name], status_code=status, title=page.title, values=values,
                  overridden=overridden or {}, errors=by_key, other_errors=other, readonly=not session.may(Role.ADMIN),
                  **{**ctx, **(extra or {})})  # fmt: skip


async def _save(request: Request, session: Session, page: Page) -> Response:
    form = await _form(request)
    base, override, node = _documents(_admin(request))
    if page.name == "server":
        patch = server_patch(page, form, base, override, node)
        typed = form_values(page, form)
        over = {f.key: _is_on(form, "override." + f.key) for f in page.fields}
        inherited = page_values(page, base)
        typed = {k: (v if over[k] else inherited[k]) for k, v in typed.items()}
    else:
        patch, typed, over = form_patch(page, form, base), form_values(page, form), None
    if not patch:
        session.flash("saved: no change")
        return RedirectResponse(PATHS[page.name], status_code=303)
    result = await apply(request, session, patch)
    if result.status == 200:
        session.flash(_saved_text(result))
        return RedirectResponse(PATHS[page.name], status_code=303)
    return await _show(request, session, page, values=typed, overridden=over, errors=result.errors, status=422)


def _routes(page: Page) -> None:
    path = PATHS[page.name]

    async def show(request: Request, session: Session = Depends(require_session(Role.READ))) -> Response:  # noqa: B008
        return await _show(request, session, page)

    async def save(request: Request, session: Session = Depends(require_session(Role.ADMIN))) -> Response:  # noqa: B008
        return await _save(request, session, page)

    router.add_api_route(path, show, methods=["GET"], name=f"settings-{page.name}")
    router.add_api_route(path, save, methods=["POST"], name=f"settings-{page.name}-save")


for _page in PAGES.values():
    _routes(_page)


@router.post("/antispam/dkim", name="settings-dkim-keygen")
async def dkim_keygen(request: Request, session: Session = Depends(require_session(Role.ADMIN))) -> Response:  # noqa: B008
    """Make a DKIM key (data_dir/dkim/<domain>.<selector>.key, 0600) and add it to dkim.sign; a key
    file that is already there is used as it is, never replaced."""
    from pydantic import ValidationError

    from ...config import DkimSign
    from ...filters.dkim import key_path, new_key, parse_key, write_key

    form = await _form(request)
    admin = _admin(request)
    domain, selector = _first(form, "dkim.new.domain").strip(), _first(form, "dkim.new.selector").strip()
    kind = "ed25519" if _first(form, "dkim.new.type") == "ed25519" else "rsa"
    typed = {"domain": domain, "selector": selector, "type": kind}
    try:
        entry = DkimSign(domain=domain, selector=selector, key="dkim/x")
    except ValidationError as exc:
        errors = [f"{e['loc'][0]}: {e['msg'].removeprefix('Value error, ')}" for e in exc.errors()]
        return await _show(request, session, ANTIVIRUS, status=422, extra={"new_key": typed, "new_key_errors": errors})
    cfg = admin.worker.config
    path = key_path(cfg.data_path, entry.domain, entry.selector)
    rel = f"dkim/{path.name}"
    try:
        if path.exists():
            parse_key(path.read_bytes())  # kept: an existing key is never replaced from the page
            made = "kept the existing key"
        else:
            pem = await asyncio.to_thread(new_key, kind)
            await asyncio.to_thread(write_key, path, pem)
            made = f"made a new {kind} key"
    except (OSError, ValueError) as exc:
        error = f"dkim.sign: {path}: {getattr(exc, 'strerror', None) or exc}"
        admin.audit.write(session.name, client_ip(request), "dkim.keygen", typed, {"status": 500, "error": error})
        return await _show(request, session, ANTIVIRUS, status=500, extra={"new_key": typed, "new_key_errors": [error]})
    admin.audit.write(session.name, client_ip(request), "dkim.keygen", typed, {"status": 200, "file": str(path), "made": made})
    log.info("panel: DKIM key %s for %s selector %s by %s: %s", path, entry.domain, entry.selector, session.name, made)
    base, _, _ = _documents(admin)
    current = [dict(e) for e in base.get("dkim", {}).get("sign") or []]
    if any(e.get("domain") == entry.domain and e.get("selector") == entry.selector for e in current):
        session.flash(f"{made} for {entry.selector}._domainkey.{entry.domain}: publish its TXT record")
        return RedirectResponse(PATHS["antivirus"], status_code=303)
    result = await apply(request, session, {"dkim": {"sign": [*current, {"domain": entry.domain, "selector": entry.selector,
                                                                            "key": rel}]}})  # fmt: skip
    if result.status != 200:
        return await _show(request, session, ANTIVIRUS, errors=result.errors, status=422, extra={"new_key": typed})
    session.flash(f"{made} for {entry.selector}._domainkey.{entry.domain}; {_saved_text(result)}; publish its TXT record")
    return RedirectResponse(PATHS["antivirus"], status_code=303)

"""`mtaserver sendmail`: Postfix's sendmail(1) for cron and local programs.

DESCRIPTION
    mtaserver sendmail [-t] [-f SENDER] [-i] [-oi] [-F NAME] [-C CONFIG] [RCPT...]

    Reads one message on stdin (LF or CRLF lines). A line holding only "." ends it, unless
    -i or -oi is given. -t adds the recipients of the To:, Cc: and Bcc: headers (of the
    Resent-To/-Cc/-Bcc ones when the message has any Resent- header) to those of the command
    line; Bcc: and Resent-Bcc: headers are always removed. -f sets the envelope sender
    (default: the invoking user at server.hostname; "" or "<>" is the null sender); -F the
    full name of a From: header we add (default: the user's GECOS name). -r is -f; the options
    Postfix accepts and ignores here (-oX, -odX, -B, -N, -R, -V, -bm, -v) are accepted. A
    leading mbox "From " line is dropped, as Postfix's sendmail does.

    The message gets, like Postfix pickup + cleanup: a Received: header first,

        Received: by mx.example.test (mtaserver, from userid 1000 (alice))
        \tid 0F1E2D3C4B5A69788; Tue, 1 Dec 2026 23:40:00 +0000

    ("\tid X\n\tfor <rcpt>; date" with one recipient), and From:, Date: and Message-ID: at
    the end of its header section when it has none. Lines are stored with CRLF, size-limited
    by advanced.max_message_size (including what we add), and committed through the same
    QueueStore.commit (fsync) into incoming/; then the queue manager is woken (manager.notify).
    Content filters (which run at the end of SMTP DATA) do not see local submissions.

    Exit status (sysexits.h): 0 queued; EX_USAGE 64 bad option or no recipient; EX_DATAERR
    65 bad address or message too large; EX_TEMPFAIL 75 the queue could not be written (disk
    full, I/O error); EX_NOPERM 77 no permission on the spool (run it as root or server.user);
    EX_CONFIG 78 the config file is unusable.

SECURITY
    Runs with the invoking user's rights. As root with server.user set it becomes server.user
    before touching the spool (the files it creates are the mail user's, as the workers'). The
    message is the local user's: it is not parsed beyond the header section, and our Received:
    names the real uid, not anything the message says.

STANDARDS
    RFC 5322 (header fields, Resent- fields, Bcc), RFC 5321 4.4 (Received:), sysexits.h.

CONFIG
    server.hostname, server.data_dir, server.user, server.group, advanced.max_message_size,
    queue.sync_threads
"""

from __future__ import annotations

import email.utils
import re
import sys
import time
from collections.abc import Iterable
from dataclasses import dataclass, field

from .address import AddressError, parse_mailbox

EX_OK = 0
EX_USAGE = 64
EX_DATAERR = 65
EX_TEMPFAIL = 75
EX_NOPERM = 77
EX_CONFIG = 78


class SendmailError(Exception):
    """What stops a submission: a message for stderr and the exit status."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


@dataclass
class Options:
    extract: bool = False  # -t
    sender: str | None = None  # -f / -r; None = the invoking user
    ignore_dots: bool = False  # -i / -oi
    full_name: str | None = None  # -F
    config: str | None = None  # -C
    recipients: list[str] = field(default_factory=list)


_WITH_ARG = {"f", "r", "F", "C", "B", "N", "R", "V", "O", "L", "X"}  # options that take a value
_UNSUPPORTED = {"s": "-bs (SMTP on stdin)", "p": "-bp (use mtaserver queue list)", "d": "-bd", "D": "-bD",
                "v": "-bv", "a": "-ba", "h": "-bh", "H": "-bH", "i": "-bi (no aliases database)",
                "l": "-bl"}  # fmt: skip


def parse_args(argv: list[str]) -> Options:
    """sendmail's command line (getopt style: "-fsender" or "-f sender"). Raises SendmailError."""
    opts = Options()
    i = 0
    while i < len(argv):
        arg = argv[i]
        i += 1
        if arg == "--":
            opts.recipients.extend(argv[i:])
            break
        if not arg.startswith("-") or arg == "-":
            opts.recipients.append(arg)
            continue
        letter, rest = arg[1], arg[2:]
        if letter in _WITH_ARG:
            if not rest:
                if i >= len(argv):
                    raise SendmailError(EX_USAGE, f"option -{letter} needs a value")
                rest = argv[i]
                i += 1
            if letter in ("f", "r"):
                opts.sender = rest
            elif letter == "F":
                opts.full_name = rest
            elif letter == "C":
                opts.config = rest
            continue  # -B -N -R -V -O -L -X: accepted, ignored
        if letter == "o":
            if rest == "i":
                opts.ignore_dots = True
            continue  # -oem, -odi, -oQ...: accepted, ignored
        if letter == "b":
            if rest in ("", "m"):
                continue
            raise SendmailError(EX_USAGE, f"unsupported mode {_UNSUPPORTED.get(rest[:1], '-b' + rest)}")
        for c in arg[1:]:  # flags, possibly grouped: -ti
            if c == "t":
                opts.extract = True
            elif c == "i":
                opts.ignore_dots = True
            elif c in ("v", "n", "U", "m", "e"):
                pass
            else:
                raise SendmailError(EX_USAGE, f"unknown option -{c}")
    return opts


# ---------------------------------------------------------------------------------------------
# The message.


def input_line(raw: bytes) -> bytes:
    """One line as read (with its LF or CRLF, or none at the end of input), without its end."""
    if raw.endswith(b"\n"):
        raw = raw[:-1]
    if raw.endswith(b"\r"):
        raw = raw[:-1]
    return raw


def is_end(line: bytes, ignore_dots: bool) -> bool:
    """A lone "." ends the message unless -i."""
    return not ignore_dots and line == b"."


_FIELD = re.compile(rb"^[\x21-\x39\x3b-\x7e]+[ \t]*:")


def split_message(lines: list[bytes]) -> tuple[list[list[bytes]], list[bytes] | None]:
    """Lines (no line ends) -> (header fields, each its lines with continuations; body lines,
    None when the message has no body). A first line that is no header field starts the body
    (a blank line is put before it when written). A leading mbox "From " line is dropped."""
    if lines and lines[0].startswith(b"From "):
        lines = lines[1:]
    headers: list[list[bytes]] = []
    for n, line in enumerate(lines):
        if headers and line[:1] in (b" ", b"\t"):
            headers[-1].append(line)
        elif _FIELD.match(line):
            headers.append([line])
        elif line == b"":
            return headers, lines[n + 1 :]
        else:
            return headers, lines[n:]
    return headers, None


def field_name(hdr: list[bytes]) -> str:
    return hdr[0].split(b":", 1)[0].strip().decode("ascii", "replace").lower()


def field_value(hdr: list[bytes]) -> str:
    """The unfolded value, for address parsing (UTF-8 tolerated)."""
    raw = b" ".join([hdr[0].split(b":", 1)[1], *hdr[1:]])
    return raw.decode("utf-8", "surrogateescape").strip()


def header_recipients(headers: list[list[bytes]]) -> list[str]:
    """-t: the addresses of To, Cc, Bcc (Resent-To, -Cc, -Bcc when any Resent- header exists)."""
    resent = any(field_name(h).startswith("resent-") for h in headers)
    names = ("resent-to", "resent-cc", "resent-bcc") if resent else ("to", "cc", "bcc")
    values = [field_value(h) for h in headers if field_name(h) in names]
    return [addr for _, addr in email.utils.getaddresses(values) if addr]


def qualify(address: str, hostname: str) -> str:
    """An address with no domain gets server.hostname (Postfix's myorigin)."""
    address = address.strip()
    if address.startswith("<") and address.endswith(">"):
        address = address[1:-1]
    return address if "@" in address or not address else f"{address}@{hostname}"


def check_address(address: str) -> str:
    """The address, or SendmailError(EX_DATAERR) naming what is wrong with it."""
    try:
        mb = parse_mailbox(address, utf8=True)
    except AddressError as exc:
        raise SendmailError(EX_DATAERR, f"bad address {address!r}: {exc}") from None
    if mb.is_null or not mb.domain:
        raise SendmailError(EX_DATAERR, f"bad address {address!r}")
    return address


def unique(addresses: Iterable[str]) -> list[str]:
    seen: set[str] = set()
    out = []
    for a in addresses:
        if a.lower() not in seen:
            seen.add(a.lower())
            out.append(a)
    return out


@dataclass(frozen=True)
class Submitter:
    """Who runs us: the real uid, its login name and GECOS full name."""

    uid: int
    login: str
    gecos: str = ""


def envelope_sender(opts: Options, who: Submitter, hostname: str) -> str:
    if opts.sender is None:
        return f"{who.login}@{hostname}"
    if opts.sender in ("", "<>"):
        return ""
    return check_address(qualify(opts.sender, hostname))


def envelope_recipients(opts: Options, headers: list[list[bytes]], hostname: str) -> list[str]:
    """Command-line recipients (split like header lists), plus the header ones with -t."""
    cmdline = []
    for arg in opts.recipients:
        found = [addr for _, addr in email.utils.getaddresses([arg]) if addr]
        if not found and arg.strip():
            raise SendmailError(EX_DATAERR, f"bad address {arg!r}")
        cmdline.extend(found)
    extracted = header_recipients(headers) if opts.extract else []
    out = unique(check_address(qualify(a, hostname)) for a in [*cmdline, *extracted])
    if not out:
        raise SendmailError(EX_USAGE, "no recipient addresses found in message header" if opts.extract
                            else "no recipients specified")  # fmt: skip
    return out


def received_header(who: Submitter, hostname: str, queue_id: str, recipients: list[str], date: str) -> bytes:
    """Postfix pickup's Received: for a local submission, naming the real uid and its login."""
    login = re.sub(r"[^A-Za-z0-9._+-]", "?", who.login)[:64]
    lines = [f"Received: by {hostname} (mtaserver, from userid {who.uid} ({login}))"]
    if len(recipients) == 1:
        lines += [f"\tid {queue_id}", f"\tfor <{recipients[0]}>; {date}"]
    else:
        lines.append(f"\tid {queue_id}; {date}")
    return "\r\n".join(lines).encode("utf-8", "surrogateescape") + b"\r\n"


def build_message(
    opts: Options, who: Submitter, headers: list[list[bytes]], body: list[bytes] | None, *, hostname: str,
    queue_id: str, sender: str, recipients: list[str], now: float,
) -> bytes:  # fmt: skip
    """The content to queue: our Received:, the headers without Bcc, the missing From/Date/
    Message-ID, the body; CRLF everywhere."""
    date = email.utils.formatdate(now, localtime=True)
    out = [received_header(who, hostname, queue_id, recipients, date)]
    present = {field_name(h) for h in headers}
    for h in headers:
        if field_name(h) not in ("bcc", "resent-bcc"):
            out.append(b"".join(line + b"\r\n" for line in h))
    if "from" not in present:
        addr = sender or f"{who.login}@{hostname}"
        name = opts.full_name if opts.full_name is not None else who.gecos.split(",", 1)[0]
        name = " ".join(re.sub(r"[\x00-\x1f\x7f]", " ", name).split())  # -F $'x\r\nBcc: v' adds no header
        out.append(f"From: {email.utils.formataddr((name, addr)) if name else addr}\r\n".encode("utf-8", "surrogateescape"))
    if "date" not in present:
        out.append(f"Date: {date}\r\n".encode("ascii"))
    if "message-id" not in present:
        stamp = time.strftime("%Y%m%d%H%M%S", time.gmtime(now))
        out.append(f"Message-ID: <{stamp}.{queue_id}@{hostname}>\r\n".encode("ascii", "replace"))
    if body is not None:
        out.append(b"\r\n")
        out.extend(line + b"\r\n" for line in body)
    return b"".join(out)


# ---------------------------------------------------------------------------------------------
# The I/O shell: stdin, the config, the privilege drop, the commit, the wake-up.


def _submitter() -> Submitter:
    import os
    import pwd

    uid = os.getuid()
    try:
        pw = pwd.getpwuid(uid)
        return Submitter(uid, pw.pw_name, pw.pw_gecos or "")
    except KeyError:
        return Submitter(uid, f"uid{uid}")


def _read_lines(stream: object, ignore_dots: bool, limit: int) -> list[bytes]:
    lines = []
    total = 0
    for raw in stream:  # type: ignore[attr-defined]
        total += len(raw)
        if limit and total > limit:
            raise SendmailError(EX_DATAERR, f"message too large (advanced.max_message_size is {limit} bytes)")
        line = input_line(raw)
        if is_end(line, ignore_dots):
            break
        lines.append(line)
    return lines


def submit(opts: Options, stdin: object) -> str:
    """Queue the message read from `stdin`; returns its queue id. Raises SendmailError."""
    import asyncio
    import os

    from . import config as config_mod
    from . import supervisor
    from .model import ClientInfo, Envelope, Recipient
    from .queue.manager import notify
    from .queue.store import QueueStore, QueueWriteError

    path = opts.config or os.environ.get("MTASERVER_CONFIG") or "conf/mtaserver.yaml"
    try:
        cfg = config_mod.load(path)
    except config_mod.ConfigError as exc:
        raise SendmailError(EX_CONFIG, "; ".join(exc.errors)) from None
    hostname = cfg.server.hostname
    who = _submitter()
    limit = cfg.advanced.max_message_size
    headers, body = split_message(_read_lines(stdin, opts.ignore_dots, limit))
    sender = envelope_sender(opts, who, hostname)
    recipients = envelope_recipients(opts, headers, hostname)
    ident = supervisor.identity(cfg.server.user, cfg.server.group)
    if os.geteuid() == 0:
        supervisor.drop_privileges(ident)  # the spool is the mail user's: so is what we write
    store = QueueStore(cfg.queue_path, sync_threads=1, spool_in_memory=1 << 62)
    try:
        store.open()
    except PermissionError as exc:
        user = cfg.server.user or "root"
        why = f"cannot write the queue {cfg.queue_path}: {exc.strerror}; run as root or {user}"
        raise SendmailError(EX_NOPERM, why) from None
    except OSError as exc:
        raise SendmailError(EX_TEMPFAIL, f"cannot open the queue {cfg.queue_path}: {exc}") from None
    try:
        qid = store.new_id()
        now = time.time()
        content = build_message(opts, who, headers, body, hostname=hostname, queue_id=qid, sender=sender,
                                recipients=recipients, now=now)  # fmt: skip
        if limit and len(content) > limit:
            raise SendmailError(EX_DATAERR, f"message too large (advanced.max_message_size is {limit} bytes)")
        spool = store.new_spool(qid)
        spool.write(content)
        utf8 = any(not a.isascii() for a in [sender, *recipients])
        env = Envelope(
            queue_id=qid, sender=sender, recipients=[Recipient(address=r) for r in recipients], arrival=now,
            client=ClientInfo(ip="127.0.0.1", port=0, name="localhost", protocol="local", trusted=True),
            body_type="8BITMIME" if any(b > 127 for b in content) else None, smtputf8=utf8,
            # "pickup": the queue manager runs the content filters (DKIM signing, the scanners)
            # before the first delivery, as Postfix's pickup -> cleanup -> non_smtpd_milters do.
            extra={"uid": str(who.uid), "pickup": "1"},
        )  # fmt: skip
        try:
            asyncio.run(store.commit(spool, env, announce=False))
        except QueueWriteError as exc:
            status = EX_NOPERM if isinstance(exc.__cause__, PermissionError) else EX_TEMPFAIL
            raise SendmailError(status, f"cannot queue the message: {exc}") from None
    finally:
        store.close()
    notify(store.root)([qid])  # a server not running: it finds the message in incoming/ at start
    return qid


def main(argv: list[str], stdin: object = None) -> int:
    try:
        opts = parse_args(argv)
        submit(opts, stdin if stdin is not None else sys.stdin.buffer)
    except SendmailError as exc:
        print(f"mtaserver sendmail: {exc}", file=sys.stderr)
        return exc.status
    except PermissionError as exc:
        print(f"mtaserver sendmail: {exc}", file=sys.stderr)
        return EX_NOPERM
    except OSError as exc:
        print(f"mtaserver sendmail: {exc}", file=sys.stderr)
        return EX_TEMPFAIL
    return EX_OK

"""Delivery status notifications (RFC 3464), built as bytes. Pure: inputs and `now` only.

DESCRIPTION
    `build_dsn(...)` returns the whole notification message, Postfix's structure (SPEC 9.5),
    for recipients BOUNCED (Action: failed), still DEFERRED (Action: delayed, a warning) or
    SENT when the sender asked for it (NOTIFY=SUCCESS; Action: delivered, or relayed when
    the next hop takes no DSN responsibility): a multipart/report with a human-readable part,
    a message/delivery-status part (Original-Envelope-Id when the sender gave ENVID, then one
    block per recipient: Final-Recipient, Original-Recipient (ORCPT when given), Action,
    Status, Remote-MTA, Diagnostic-Code) and the original message (message/rfc822), or only
    its headers (text/rfc822-headers) when it is larger than `max_original` or the sender
    asked RET=HDRS. Sent with the null sender and `Auto-Submitted: auto-replied`, so that
    no MTA answers it with another bounce.

    `notify_wants(notify, what)` is RFC 3461's rule for who gets which notification.

SECURITY
    The diagnostic text comes from remote servers: CR, LF and other control characters are
    removed before it goes into a header field.

STANDARDS
    RFC 3464 (DSN format), RFC 3461 (NOTIFY, RET, ENVID, ORCPT), RFC 3462/6522
    (multipart/report), RFC 3834 (Auto-Submitted), RFC 3463 (status codes).
"""

from __future__ import annotations

import email.utils
import re
from dataclasses import dataclass

from ..model import Fate

MAX_ORIGINAL = 50000  # Postfix bounce_size_limit
_UNSAFE = re.compile(r"[\x00-\x1f\x7f]+")


# RFC 3464 2.3.3 action-value of a DSN about recipients of this fate.
ACTION = {Fate.BOUNCED: "failed", Fate.DEFERRED: "delayed", Fate.SENT: "delivered"}
_WHAT = {Fate.BOUNCED: "FAILURE", Fate.DEFERRED: "DELAY", Fate.SENT: "SUCCESS"}


def notify_wants(notify: str | None, kind: Fate) -> bool:
    """RFC 3461 4.1: whether a recipient with this NOTIFY (None: not given; "NEVER"; or a list
    of SUCCESS, FAILURE, DELAY) gets a notification about `kind`. Without NOTIFY failures
    and delay warnings are sent and successes are not (RFC 3461 4.1, Postfix)."""
    if notify is None:
        return kind is not Fate.SENT
    return _WHAT[kind] in notify.split(",")


@dataclass(frozen=True, slots=True, kw_only=True)
class RecipientStatus:
    address: str
    status: str  # "5.1.1"
    diagnostic: str  # "550 5.1.1 <x>: user unknown" or our own reason
    remote_mta: str | None = None
    smtp_diagnostic: bool = True  # Diagnostic-Code type: smtp; (else X-mtaserver;)
    orcpt: str | None = None  # RFC 3461 ORCPT, "type;address" decoded
    action: str | None = None  # instead of the kind's (a success passed to a host without DSN: "relayed")


_FAILURE_TEXT = """\
This is the mail system at host {host}.

I'm sorry to have to inform you that your message could not
be delivered to one or more recipients. It's attached below.

For further assistance, please send mail to postmaster.

If you do so, please include this problem report. You can
delete your own text from the attached returned message.

                   The mail system
"""

_DELAY_TEXT = """\
This is the mail system at host {host}.

####################################################################
# THIS IS A WARNING ONLY.  YOU DO NOT NEED TO RESEND YOUR MESSAGE. #
####################################################################

Your message could not be delivered for more than {hours} hour(s).
It will be retried until it is {days} day(s) old.

For further assistance, please send mail to postmaster.

                   The mail system
"""


_SUCCESS_TEXT = """\
This is the mail system at host {host}.

Your message was successfully delivered to the destination(s)
listed below. If the message was delivered to mailbox you will
receive no further notifications. Otherwise you may still receive
notifications of mail delivery errors from other systems.

                   The mail system
"""


def _clean(text: str, limit: int = 900) -> str:
    return _UNSAFE.sub(" ", text)[:limit].strip()


def split_header(message: bytes) -> bytes:
    end = message.find(b"\r\n\r\n")
    return message if end < 0 else message[: end + 2]


def build_dsn(
    *,
    kind: Fate,
    hostname: str,
    queue_id: str,
    sender: str,
    arrival: float,
    recipients: list[RecipientStatus],
    original: bytes,
    now: float,
    delay_hours: float = 0,
    lifetime_days: float = 0,
    max_original: int = MAX_ORIGINAL,
    ret_hdrs: bool = False,
    envid: str | None = None,
) -> bytes:
    """`ret_hdrs`: the sender asked RET=HDRS (headers only); `envid`: its ENVID, decoded."""
    if kind not in ACTION:
        raise ValueError(f"no DSN for {kind.value} recipients")
    boundary = f"{queue_id}.{int(now)}/{hostname}"
    date = email.utils.formatdate(now, localtime=True)
    subject = {
        Fate.BOUNCED: "Undelivered Mail Returned to Sender",
        Fate.DEFERRED: "Delayed Mail (still being retried)",
        Fate.SENT: "Successful Mail Delivery Report",
    }[kind]
    orig_headers = split_header(original)
    msgid = re.search(rb"(?im)^message-id:[ \t]*(<[^>\r\n]{1,250}>)", orig_headers)
    head = [
        f"From: MAILER-DAEMON@{hostname} (Mail Delivery System)",
        f"To: <{_clean(sender)}>",
        f"Subject: {subject}",
        f"Date: {date}",
        f"Message-ID: <{queue_id}.{int(now)}.dsn@{hostname}>",
        "Auto-Submitted: auto-replied",
    ]
    if msgid:
        ref = msgid.group(1).decode("ascii", "replace")
        head += [f"In-Reply-To: {ref}", f"References: {ref}"]
    head += [
        "MIME-Version: 1.0",
        f'Content-Type: multipart/report; report-type=delivery-status;\r\n\tboundary="{boundary}"',
        "Content-Transfer-Encoding: 8bit",
    ]
    if kind is Fate.BOUNCED:
        text = _FAILURE_TEXT.format(host=hostname)
    elif kind is Fate.SENT:
        text = _SUCCESS_TEXT.format(host=hostname)
    else:
        text = _DELAY_TEXT.format(host=hostname, hours=f"{delay_hours:g}", days=f"{lifetime_days:g}")
    text += "\n" + "\n".join(f"<{_clean(r.address)}>: {_clean(r.diagnostic)}" for r in recipients) + "\n"
    report = [f"Reporting-MTA: dns; {hostname}"]
    if envid:
        report.append(f"Original-Envelope-Id: {_clean(envid, 100)}")
    report += [
        f"X-Queue-ID: {queue_id}",
        f"X-Sender: rfc822; {_clean(sender)}",
        f"Arrival-Date: {email.utils.formatdate(arrival, localtime=True)}",
    ]
    for r in recipients:
        report += [
            "",
            f"Final-Recipient: rfc822; {_clean(r.address)}",
            f"Original-Recipient: {_orcpt(r)}",
            f"Action: {r.action or ACTION[kind]}",
            f"Status: {r.status}",
        ]
        if r.remote_mta:
            report.append(f"Remote-MTA: dns; {_clean(r.remote_mta)}")
        report.append(f"Diagnostic-Code: {'smtp' if r.smtp_diagnostic else 'X-mtaserver'}; {_clean(r.diagnostic)}")
    if len(original) > max_original or ret_hdrs:
        attach_type, attach_desc, attach = "text/rfc822-headers", "Undelivered Message Headers", orig_headers
    else:
        attach_type, attach_desc, attach = "message/rfc822", "Undelivered Message", original
    if kind is Fate.DEFERRED:
        attach_type, attach_desc, attach = "text/rfc822-headers", "Delayed Message Headers", orig_headers
    elif kind is Fate.SENT:  # Postfix: the headers of what was delivered
        attach_type, attach_desc, attach = "text/rfc822-headers", "Delivered Message Headers", orig_headers
    parts = [
        "\r\n".join(head),
        "",
        "This is a MIME-encapsulated message.",
        "",
        f"--{boundary}",
        "Content-Description: Notification",
        "Content-Type: text/plain; charset=us-ascii",
        "",
        text.replace("\n", "\r\n"),
        f"--{boundary}",
        "Content-Description: Delivery report",
        "Content-Type: message/delivery-status",
        "",
        "\r\n".join(report),
        "",
        f"--{boundary}",
        f"Content-Description: {attach_desc}",
        f"Content-Type: {attach_type}",
        "",
    ]
    out = "\r\n".join(parts).encode("utf-8", "replace") + b"\r\n"
    attach = attach if attach.endswith(b"\r\n") else attach + b"\r\n"
    return out + attach + f"\r\n--{boundary}--\r\n".encode()


def _orcpt(r: RecipientStatus) -> str:
    """Original-Recipient (RFC 3464 2.3.1): the sender's ORCPT when it gave one, else the address."""
    if r.orcpt:
        kind, _, address = r.orcpt.partition(";")
        return f"{_clean(kind, 32)}; {_clean(address, 500)}"
    return f"rfc822; {_clean(r.address)}"
